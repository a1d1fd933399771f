"""CondSCVI's conditional VAE (Lopez et al. 2022): the single-cell reference of DestVI.

For cell n of type y_n (known) with library l_n (observed total count):
    z_n ~ p(z | y_n)                       N(0, I), or a mixture of Gaussians per cell type
    rho_n = softmax(f(z_n, y_n) + b_{y_n})  normalised expression; f a decoder with the cell
                                           type (and batch) injected in every layer, b a
                                           per-type bias of the logits
    x_ng ~ NB(l_n rho_ng, theta_g)
Inference: q(z_n | x_n, y_n) = N(mu, sigma^2) from log(1 + x_n) with the type injected.

DestVI reuses the decoder (f, b, theta) frozen: a spot's expression is a mixture of these
per-type profiles, each at its own latent state gamma (see :mod:`._destvae`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .. import _constants as C
from ..distributions import NegativeBinomial
from ..nn import FCLayers, GaussianEncoder
from ._base import BaseModule, LossOutput
from ._vae import check_choice

PRIORS = ("normal", "mog")
N_MOG_SAMPLES = 10  # draws of z for the Monte Carlo KL against a mixture prior


class ConditionalDecoder(nn.Module):
    """f(z, y[, batch]) -> normalised expression over genes: a layer-normed FC stack with the
    cell type (and batch) injected in every layer, a linear map to the genes, a per-type bias
    of the logits, and softmax. DestVI loads it from a CondSCVI and keeps it frozen."""

    def __init__(self, n_latent: int, n_genes: int, n_labels: int, n_batch: int = 1, n_hidden: int = 128,
                 n_layers: int = 2, dropout_rate: float = 0.05):
        super().__init__()
        self.n_labels, self.n_batch = n_labels, n_batch
        cats = [n_labels] + ([n_batch] if n_batch > 1 else [])
        self.hidden = FCLayers(n_latent, n_hidden, cats, n_layers, n_hidden, dropout_rate,
                               use_batch_norm=False, use_layer_norm=True, inject_covariates=True)
        self.output = nn.Linear(n_hidden, n_genes)
        self.per_ct_bias = nn.Parameter(torch.zeros(n_labels, n_genes))

    def logits(self, z: torch.Tensor, y: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised log expression (rows of z x genes); ``y`` and ``batch`` are codes."""
        cats = [y] + ([batch] if self.n_batch > 1 else [])
        return self.output(self.hidden(z, cats)) + torch.index_select(self.per_ct_bias, 0, y)

    def forward(self, z, y, batch=None) -> torch.Tensor:
        return torch.softmax(self.logits(z, y, batch), dim=-1)


class CondVAE(BaseModule):
    """CondSCVI's module (pure torch; knows nothing of AnnData).

    Parameters
    ----------
    n_input
        Genes.
    n_labels
        Cell types (conditioning every layer of encoder and decoder).
    n_batch
        Batches (injected into the decoder when > 1).
    n_hidden, n_latent, n_layers, dropout_rate
        Network sizes (CondSCVI's defaults: 128, 5, 2, 0.05).
    ct_weight
        Weight of each cell type's cells in the loss (``weight_obs``); default all 1.
    prior
        ``"normal"``: z ~ N(0, I); ``"mog"``: z | y ~ a mixture of ``num_classes_mog``
        Gaussians per cell type, learned (and then DestVI's prior of the states).
    num_classes_mog
        Components of the mixture prior per cell type.
    """

    def __init__(self, n_input: int, n_labels: int, n_batch: int = 1, n_hidden: int = 128, n_latent: int = 5,
                 n_layers: int = 2, dropout_rate: float = 0.05, ct_weight: np.ndarray | None = None,
                 prior: str = "normal", num_classes_mog: int = 10):
        super().__init__()
        check_choice("prior", prior, PRIORS)
        self.n_input, self.n_labels, self.n_batch = n_input, n_labels, n_batch
        self.n_hidden, self.n_latent, self.n_layers = n_hidden, n_latent, n_layers
        self.prior, self.num_classes_mog = prior, num_classes_mog
        self.z_encoder = GaussianEncoder(n_input, n_latent, [n_labels], n_layers, n_hidden, dropout_rate,
                                         use_batch_norm=False, use_layer_norm=True, inject_covariates=True)
        self.decoder = ConditionalDecoder(n_latent, n_input, n_labels, n_batch, n_hidden, n_layers, dropout_rate)
        self.px_r = nn.Parameter(torch.randn(n_input))
        weight = torch.ones(n_labels) if ct_weight is None else torch.as_tensor(np.asarray(ct_weight), dtype=torch.float32)
        self.register_buffer("ct_weight", weight)
        if prior == "mog":
            self.prior_means = nn.Parameter(torch.randn(n_labels, num_classes_mog, n_latent))
            self.prior_log_std = nn.Parameter(torch.full((n_labels, num_classes_mog, n_latent), -2.0))
            self.prior_logits = nn.Parameter(torch.zeros(n_labels, num_classes_mog))

    latent_distribution = "normal"

    def z_transform(self, z: torch.Tensor) -> torch.Tensor:
        return z

    # -- tensor dict -> arguments ---------------------------------------------------------------
    def inference_inputs(self, tensors: dict) -> dict:
        return {"x": tensors[C.X_KEY], "y": tensors[C.LABELS_KEY], "batch": tensors.get(C.BATCH_KEY)}

    def generative_inputs(self, tensors: dict, inference_out: dict, **overrides) -> dict:
        return {"z": inference_out["z"], "library": inference_out["library"], "y": tensors[C.LABELS_KEY],
                "batch": tensors.get(C.BATCH_KEY)}

    # -- the model --------------------------------------------------------------------------------
    def inference(self, x, y, batch=None, n_samples: int = 1) -> dict:
        qz_mean, qz_var = self.z_encoder(torch.log1p(x), [y])
        shape = (n_samples, *qz_mean.shape) if n_samples > 1 else qz_mean.shape
        z = qz_mean + qz_var.sqrt() * torch.randn(shape, device=qz_mean.device, dtype=qz_mean.dtype)
        library = torch.log(x.sum(-1, keepdim=True))
        return {"qz_mean": qz_mean, "qz_var": qz_var, "untran_z": z, "z": z, "library": library}

    def generative(self, z, library, y, batch=None) -> dict:
        lead = z.shape[:-1]
        z2 = z.reshape(-1, z.shape[-1])
        n_rep = z2.shape[0] // y.shape[0]
        y2 = y.repeat(n_rep) if n_rep > 1 else y
        b2 = None if batch is None else (batch.repeat(n_rep) if n_rep > 1 else batch)
        scale = self.decoder(z2, y2, b2).reshape(*lead, -1)
        mu = scale * torch.exp(library)
        theta = torch.exp(self.px_r)
        return {"scale": scale, "dist": NegativeBinomial(mu, theta), "theta": theta}

    def prior_log_prob(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(z | y), summed over latent dimensions (``z``: [samples x] cells x n_latent)."""
        if self.prior == "normal":
            return (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
        means, log_std = self.prior_means[y], self.prior_log_std[y]  # cells x K x d
        std = torch.exp(log_std) + 1e-4
        zk = z.unsqueeze(-2)  # [...] x cells x 1 x d
        log_comp = (-0.5 * ((zk - means) / std).square() - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(log_comp + torch.log_softmax(self.prior_logits[y], -1), dim=-1)

    def kl_z(self, qz_mean, qz_var, y) -> torch.Tensor:
        if self.prior == "normal":
            return 0.5 * (qz_var + qz_mean.square() - 1 - torch.log(qz_var)).sum(-1)
        # No closed form against a mixture: E_q[log q(z) - log p(z | y)] by Monte Carlo.
        sd = qz_var.sqrt()
        z = qz_mean + sd * torch.randn(N_MOG_SAMPLES, *qz_mean.shape, device=qz_mean.device)
        log_q = (-0.5 * ((z - qz_mean) / sd).square() - torch.log(sd) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return (log_q - self.prior_log_prob(z, y)).mean(0)

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0) -> LossOutput:
        y = tensors[C.LABELS_KEY]
        rec = -generative_out["dist"].log_prob_per_cell(
            tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY), tensors.get(C.X_NZ_VALUE_KEY))
        kl = self.kl_z(inference_out["qz_mean"], inference_out["qz_var"], y)
        weight = self.ct_weight[y]
        loss = torch.mean(weight * (rec + kl_weight * kl))
        return LossOutput(loss, rec, kl)

    @torch.no_grad()
    def marginal_ll(self, tensors: dict, n_mc_samples: int = 1000, chunk: int = 100) -> torch.Tensor:
        """Importance-sampled log p(x | y) per cell, with q(z | x, y) as the proposal."""
        inf = self.inference(**self.inference_inputs(tensors))
        mean, sd = inf["qz_mean"], inf["qz_var"].sqrt()
        y, batch, x = tensors[C.LABELS_KEY], tensors.get(C.BATCH_KEY), tensors[C.X_KEY]
        log_w = []
        for start in range(0, n_mc_samples, chunk):
            k = min(chunk, n_mc_samples - start)
            z = mean + sd * torch.randn(k, *mean.shape, device=mean.device)
            log_q = (-0.5 * ((z - mean) / sd).square() - torch.log(sd) - 0.5 * math.log(2 * math.pi)).sum(-1)
            gen = self.generative(z, inf["library"], y, batch)
            log_w.append(gen["dist"].log_prob(x.expand(k, *x.shape)).sum(-1) + self.prior_log_prob(z, y) - log_q)
        return torch.logsumexp(torch.cat(log_w), 0) - math.log(n_mc_samples)
