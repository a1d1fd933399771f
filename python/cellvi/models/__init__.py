"""User-facing models."""
from ._base import BaseModel, load_model
from ._mixins import MappingMixin, VAEMixin
from ._scanvi import SCANVI
from ._scvi import SCVI, LinearSCVI

__all__ = ["BaseModel", "MappingMixin", "VAEMixin", "LinearSCVI", "SCANVI", "SCVI", "load_model"]
