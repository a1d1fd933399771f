"""User-facing models."""
from ._autozi import AUTOZI
from ._base import BaseModel, load_model
from ._cellassign import CellAssign
from ._gimvi import GIMVI
from ._condscvi import CondSCVI
from ._destvi import DestVI
from ._mixins import MappingMixin, VAEMixin
from ._peakvi import PEAKVI
from ._scanvi import SCANVI
from ._scvi import SCVI, LinearSCVI
from ._solo import SOLO
from ._stereoscope import RNAStereoscope, SpatialStereoscope
from ._totalvi import TOTALVI

__all__ = ["AUTOZI", "BaseModel", "CellAssign", "GIMVI", "CondSCVI", "DestVI", "MappingMixin", "VAEMixin", "LinearSCVI", "PEAKVI", "RNAStereoscope", "SCANVI", "SCVI", "SOLO", "SpatialStereoscope", "TOTALVI", "load_model"]
