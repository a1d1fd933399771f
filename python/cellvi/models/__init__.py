"""User-facing models."""
from ._base import BaseModel, load_model
from ._scvi import SCVI, LinearSCVI

__all__ = ["BaseModel", "LinearSCVI", "SCVI", "load_model"]
