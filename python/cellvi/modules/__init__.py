"""Modules: the math of each model, in pure torch."""
from ._autozivae import AUTOZIVAE
from ._base import BaseModule, LossOutput
from ._cellassign import CellAssignModule
from ._jvae import JVAE
from ._peakvae import PEAKVAE
from ._scanvae import SCANVAE
from ._solo import SoloClassifier
from ._totalvae import TOTALVAE, protein_background_prior
from ._vae import VAE

__all__ = ["AUTOZIVAE", "BaseModule", "CellAssignModule", "JVAE", "LossOutput", "PEAKVAE", "SCANVAE", "SoloClassifier", "TOTALVAE", "VAE", "protein_background_prior"]
