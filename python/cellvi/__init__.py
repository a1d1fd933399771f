"""cellvi: deep probabilistic models for single-cell omics (the scVI family), for Python and R."""
__version__ = "0.1.0"

from . import criticism
from ._settings import settings
from .models import AUTOZI, GIMVI, CellAssign, PEAKVI, SCANVI, SCVI, SOLO, TOTALVI, LinearSCVI, load_model
from .train import TrainingError

__all__ = ["AUTOZI", "CellAssign", "GIMVI", "LinearSCVI", "PEAKVI", "SCANVI", "SCVI", "SOLO", "TOTALVI", "TrainingError", "criticism", "load_model", "settings", "__version__"]
