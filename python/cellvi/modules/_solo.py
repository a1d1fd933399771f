"""Solo (Bernstein et al. 2020): a doublet classifier on a trained scVI model's view of cells.

For each cell n (observed, or a simulated doublet: the summed counts of two random observed
cells) the features are f_n = (E[z_n | x_n], log l_n), the posterior mean of scVI's latent
and the log library size. A feed-forward network gives the logits of the two classes
("doublet": simulated, "singlet": observed) and is trained by cross-entropy:

    logits_n = W h(f_n) + b,      loss_n = -log softmax(logits_n)[y_n]

Features are standardised with the training cells' means and standard deviations (saved
with the weights), so that the log library (around 5-10) and the latent (around 0) enter
on one scale.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .. import _constants as C
from ..nn import Classifier
from ._base import BaseModule, LossOutput


class SoloClassifier(BaseModule):
    """Solo's classifier (pure torch; knows nothing of AnnData).

    Parameters
    ----------
    n_input
        Features per cell (the latent dimensions and the log library).
    n_hidden, n_layers, dropout_rate, use_batch_norm, use_layer_norm
        The hidden layers (``n_layers=0``: logistic regression on the features).
    doublet_index
        Which of the two classes is "doublet" (the other is "singlet").
    feature_mean, feature_scale
        Standardisation of the features (default: none; the model sets them from its data).
    """

    def __init__(self, n_input: int, n_hidden: int = 128, n_layers: int = 1, dropout_rate: float = 0.1,
                 use_batch_norm: bool = True, use_layer_norm: bool = False, doublet_index: int = 0,
                 feature_mean: torch.Tensor | None = None, feature_scale: torch.Tensor | None = None):
        super().__init__()
        self.n_input = n_input
        self.doublet_index = int(doublet_index)
        mean = torch.zeros(n_input) if feature_mean is None else torch.as_tensor(feature_mean, dtype=torch.float32)
        scale = torch.ones(n_input) if feature_scale is None else torch.as_tensor(feature_scale, dtype=torch.float32)
        self.register_buffer("feature_mean", mean.reshape(n_input).clone())
        self.register_buffer("feature_scale", scale.reshape(n_input).clone())
        self.classifier = Classifier(n_input, 2, n_hidden, n_layers, dropout_rate, use_batch_norm, use_layer_norm)

    def inference_inputs(self, tensors: dict) -> dict:
        return {"features": tensors[C.X_KEY]}

    def inference(self, features: torch.Tensor, n_samples: int = 1) -> dict:
        """The class logits of each cell (cells x 2)."""
        return {"logits": self.classifier((features - self.feature_mean) / self.feature_scale)}

    def generative_inputs(self, tensors: dict, inference_out: dict, **overrides) -> dict:
        return {}

    def generative(self) -> dict:
        return {}

    def doublet_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """log P(doublet) - log P(singlet) per cell."""
        return logits[:, self.doublet_index] - logits[:, 1 - self.doublet_index]

    def loss(self, tensors: dict, inference_out: dict, generative_out: dict, kl_weight: float = 1.0) -> LossOutput:
        """Cross-entropy per cell (as ``reconstruction_loss``: the trainer's per-cell term)."""
        logits = inference_out["logits"]
        labels = tensors[C.LABELS_KEY].reshape(-1).long()
        ce = F.cross_entropy(logits, labels, reduction="none")
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return LossOutput(ce.mean(), ce, torch.zeros_like(ce), extra_metrics={"accuracy": accuracy.detach()})
