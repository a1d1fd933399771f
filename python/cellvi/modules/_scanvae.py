"""The semi-supervised variational autoencoder of scANVI (Xu et al. 2021).

It extends scVI's generative model with a cell type y and a second latent layer:
    y ~ Cat(uniform);  z2 ~ N(0, I);  z1 | z2, y ~ N(mu(z2, y), var(z2, y))
    x | z1, l ~ scVI's count likelihood
Inference: q(z1 | x) is scVI's encoder; q(y | z1) the classifier; q(z2 | z1, y).
For every cell the ELBO sums over y weighted by q(y | z1); the classifier also learns from
the labelled cells directly (a cross-entropy weighted by ``classification_ratio``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from .. import _constants as C
from ..nn import Classifier, GaussianEncoder
from ._base import LossOutput
from ._vae import VAE, _log_standard_normal, _normal, _rsample


class SCANVAE(VAE):
    """scANVI's module: :class:`VAE` plus the classifier and the z1 <-> (z2, y) layers."""

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        use_batch_norm: str = "both",
        use_layer_norm: str = "none",
        classification_ratio: float = 50.0,
        linear_classifier: bool = False,
        **vae_kwargs,
    ):
        if vae_kwargs.get("dispersion") == "gene-label":
            raise ValueError("scANVI does not support dispersion='gene-label' (unlabelled cells have no "
                             "label); use 'gene', 'gene-batch' or 'gene-cell'")
        if n_labels < 1:
            raise ValueError("scANVI needs at least one label category")
        super().__init__(n_input, n_labels=n_labels, n_hidden=n_hidden, n_latent=n_latent,
                         n_layers=n_layers, dropout_rate=dropout_rate, use_batch_norm=use_batch_norm,
                         use_layer_norm=use_layer_norm, **vae_kwargs)
        self.classification_ratio = float(classification_ratio)
        enc_bn = use_batch_norm in ("encoder", "both")
        enc_ln = use_layer_norm in ("encoder", "both")
        dec_bn = use_batch_norm in ("decoder", "both")
        dec_ln = use_layer_norm in ("decoder", "both")
        self.classifier = Classifier(
            n_latent, n_labels, 0 if linear_classifier else n_hidden, 0 if linear_classifier else n_layers,
            dropout_rate, use_batch_norm=enc_bn, use_layer_norm=enc_ln,
        )
        self.z2_encoder = GaussianEncoder(n_latent, n_latent, [n_labels], n_layers, n_hidden, dropout_rate,
                                          use_batch_norm=enc_bn, use_layer_norm=enc_ln)
        # p(z1 | z2, y) has the form of an encoder: an FC stack with Gaussian mean and variance.
        # Its variance is exp(...) with no floor, as in scvi-tools.
        self.z1_decoder = GaussianEncoder(n_latent, n_latent, [n_labels], n_layers, n_hidden, 0.0,
                                          var_eps=0.0, use_batch_norm=dec_bn, use_layer_norm=dec_ln)

    def classify(self, tensors: dict) -> torch.Tensor:
        """Label logits of cells, from the mean of q(z1 | x)."""
        inf = self.inference(**self.inference_inputs(tensors))
        return self.classifier(self.z_encoder.z_transform(inf["qz_mean"]))

    def _through_every_label(self, z1: torch.Tensor) -> dict:
        """Each cell's z1 under every label y: q(z2 | z1, y), one draw z2 from it, and
        p(z1 | z2, y). Per-pair values come out as (labels, cells)."""
        n_cells, n_labels = z1.shape[0], self.n_labels
        ys = torch.arange(n_labels, device=z1.device).repeat_interleave(n_cells)
        z1s = z1.repeat(n_labels, 1)
        qz2_mean, qz2_var = self.z2_encoder(z1s, [ys])
        z2 = _rsample(qz2_mean, qz2_var)
        pz1_mean, pz1_var = self.z1_decoder(z2, [ys])

        def per_pair(values: torch.Tensor) -> torch.Tensor:
            return values.sum(-1).view(n_labels, n_cells)

        return {"log_pz1": per_pair(_normal(pz1_mean, pz1_var).log_prob(z1s)),
                "log_pz2": _log_standard_normal(z2).view(n_labels, n_cells),
                "log_qz2": per_pair(_normal(qz2_mean, qz2_var).log_prob(z2)),
                # Closed-form KL(q(z2 | z1, y) || N(0, I)).
                "kl_z2": per_pair(0.5 * (qz2_var + qz2_mean.square() - 1 - torch.log(qz2_var)))}

    def log_prior_z(self, untran_z: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """An unbiased importance estimate of p(z1) (its log): p(z1) = sum over y of
        p(y) E_q(z2|z1,y)[p(z1 | z2, y) p(z2) / q(z2 | z1, y)], one z2 draw per label."""
        terms = self._through_every_label(z.reshape(-1, z.shape[-1]))
        log_w = terms["log_pz1"] + terms["log_pz2"] - terms["log_qz2"]
        return (torch.logsumexp(log_w, dim=0) - math.log(self.n_labels)).reshape(z.shape[:-1])

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0,
             labelled_tensors: dict | None = None) -> LossOutput:
        reconstruction = self._reconstruction(tensors, generative_out)
        z1 = inference_out["z"]
        # log q(z1 | x) of the sample, minus E_q(y|z1)[log p(z1 | z2, y)], plus
        # E_q(y|z1)[KL(q(z2 | z1, y) || p(z2))] + KL(q(y | z1) || p(y)).
        log_qz1 = _normal(inference_out["qz_mean"], inference_out["qz_var"]).log_prob(
            inference_out["untran_z"]).sum(-1)
        terms = self._through_every_label(z1)
        log_pz1, kl_z2 = terms["log_pz1"].T, terms["kl_z2"].T
        log_probs = F.log_softmax(self.classifier(z1), dim=-1)
        probs = log_probs.exp()
        kl_y = (probs * (log_probs + math.log(self.n_labels))).sum(-1)
        reconstruction = reconstruction + log_qz1 - (probs * log_pz1).sum(-1)
        kl_local = (probs * kl_z2).sum(-1) + kl_y
        kl_l = self._kl_library(inference_out, tensors[C.BATCH_KEY])
        loss = torch.mean(reconstruction + kl_weight * kl_local + kl_l)
        metrics = {}
        if labelled_tensors is not None:
            logits = self.classify(labelled_tensors)
            labels = labelled_tensors[C.LABELS_KEY]
            cross_entropy = F.cross_entropy(logits, labels)
            loss = loss + self.classification_ratio * cross_entropy
            metrics = {"classification_loss": cross_entropy.detach(),
                       "accuracy": (logits.argmax(-1) == labels).float().mean()}
        return LossOutput(loss, reconstruction, kl_local + kl_l, metrics)
