"""Modules: the math of each model, in pure torch."""
from ._autozivae import AUTOZIVAE
from ._base import BaseModule, LossOutput
from ._cellassign import CellAssignModule
from ._jvae import JVAE
from ._condvae import CondVAE
from ._destvae import DestVAE
from ._peakvae import PEAKVAE
from ._scanvae import SCANVAE
from ._solo import SoloClassifier
from ._stereoscope import RNAStereoscopeModule, SpatialStereoscopeModule
from ._totalvae import TOTALVAE, protein_background_prior
from ._vae import VAE

__all__ = ["AUTOZIVAE", "BaseModule", "CellAssignModule", "JVAE", "CondVAE", "DestVAE", "LossOutput", "PEAKVAE", "RNAStereoscopeModule", "SCANVAE", "SoloClassifier", "SpatialStereoscopeModule", "TOTALVAE", "VAE", "protein_background_prior"]
