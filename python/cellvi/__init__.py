"""cellvi: deep probabilistic models for single-cell omics (the scVI family), for Python and R."""
__version__ = "0.1.0"

from . import criticism, metrics
from ._settings import settings
from .models import (AUTOZI, GIMVI, PEAKVI, SCANVI, SCVI, SOLO, TOTALVI, CellAssign, CondSCVI, DestVI, LinearSCVI,
                     RNAStereoscope, SpatialStereoscope, load_model)
from .train import TrainingError

__all__ = ["AUTOZI", "CellAssign", "GIMVI", "CondSCVI", "DestVI", "LinearSCVI", "PEAKVI", "RNAStereoscope", "SCANVI", "SCVI", "SOLO", "SpatialStereoscope", "TOTALVI", "TrainingError", "criticism", "load_model", "metrics", "settings", "__version__"]
