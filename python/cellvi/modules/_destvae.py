"""DestVI's spatial module (Lopez et al. 2022): each spot is a mixture of cell types, each
at its own state in CondSCVI's latent space.

For spot s with library l_s (observed total count), cell type c of K, gene g:
    gamma_sc ~ p(gamma | c)                 the type's empirical (VampPrior) mixture of
                                           Gaussians over CondSCVI's latent space
    r_scg = softmax_g(f(gamma_sc, c) + b_c + beta)   the frozen CondSCVI decoder, with a
                                           per-gene shift beta (platform effect)
    v_s = softplus(V_s) >= 0               loadings of the K types and one noise "type"
                                           whose profile is softmax(eta)
    x_sg ~ NB(l_s (sum_c v_sc r_scg + v_s0 softmax(eta)_g), theta_g)
v_sc is type c's share of the spot's counts. A type whose cells hold more counts takes a
larger share of the counts than of the cells, so the proportions of cells divide each
loading by the type's mean count per cell (on these genes, in the reference), ``type_counts``:
p_sc = (v_sc / n_c) / sum_c' (v_sc' / n_c'). With amortization, gamma_s and/or
V_s come from networks of the spot's normalised expression instead of free per-spot
parameters. beta ~ N(0, 1) and eta ~ N(0, 1) (weights ``beta_reg``, ``eta_reg``) once per
data set; ``l1_reg`` adds an L1 penalty on the loadings (sparser proportions).

The objective (maximum a posteriori over V, gamma, beta, eta and the networks):
    mean_s [ -log p(x_s | ...) + kl_weight (-log p(gamma_s) + l1_reg sum_c v_sc) ]
    + (beta and eta terms) / n_spots
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import _constants as C
from ..distributions import NegativeBinomial
from ..nn import FCLayers
from ._base import BaseModule, LossOutput
from ._condvae import ConditionalDecoder
from ._vae import check_choice

AMORTIZATIONS = ("both", "latent", "proportion", "none")
NORMALIZED_DEPTH = 1e4  # the amortization networks read log(1 + counts scaled to this depth)


def inverse_softplus(y: torch.Tensor | float) -> torch.Tensor:
    y = torch.as_tensor(y, dtype=torch.float32)
    return y + torch.log(-torch.expm1(-y))


class DestVAE(BaseModule):
    """DestVI's deconvolution module (pure torch; knows nothing of AnnData).

    Parameters
    ----------
    n_spots, n_genes, n_labels
        Spots, genes (those shared with the reference) and cell types.
    n_latent, n_hidden, n_layers, n_batch_reference, dropout_decoder
        The CondSCVI decoder's sizes (its weights are loaded with :meth:`load_reference`).
    vamp_prior_p
        Components of each type's prior over its states.
    amortization
        ``"both"``: proportions and states from networks of the spot's expression;
        ``"latent"``: states only; ``"proportion"``: proportions only; ``"none"``: free
        per-spot parameters for both.
    l1_reg, beta_reg, eta_reg
        Weights of the L1 penalty on the loadings and of the N(0, 1) priors of beta and eta.
    dropout_amortization
        Dropout of the amortization networks.
    """

    def __init__(self, n_spots: int, n_genes: int, n_labels: int, n_latent: int = 5, n_hidden: int = 128,
                 n_layers: int = 2, n_batch_reference: int = 1, dropout_decoder: float = 0.05,
                 vamp_prior_p: int = 15, amortization: str = "both", l1_reg: float = 0.0, beta_reg: float = 1.0,
                 eta_reg: float = 1.0, dropout_amortization: float = 0.05, reference_batch: int = 0):
        super().__init__()
        check_choice("amortization", amortization, AMORTIZATIONS)
        self.n_spots, self.n_genes, self.n_labels, self.n_latent = n_spots, n_genes, n_labels, n_latent
        self.amortization = amortization
        self.l1_reg, self.beta_reg, self.eta_reg = float(l1_reg), float(beta_reg), float(eta_reg)
        self.reference_batch = int(reference_batch)
        # The reference's decoder, frozen: no gradient, and its dropout off even in training
        # (a fixed map; dropout there would only add noise to the spots' likelihood).
        self.decoder = ConditionalDecoder(n_latent, n_genes, n_labels, n_batch_reference, n_hidden, n_layers,
                                          dropout_decoder)
        self.decoder.frozen_in_eval = True
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        self.px_r = nn.Parameter(torch.zeros(n_genes))
        self.beta = nn.Parameter(torch.zeros(n_genes))
        self.eta = nn.Parameter(torch.zeros(n_genes))
        self.register_buffer("mean_vprior", torch.zeros(n_labels, vamp_prior_p, n_latent))
        self.register_buffer("var_vprior", torch.ones(n_labels, vamp_prior_p, n_latent))
        self.register_buffer("mp_vprior", torch.full((n_labels, vamp_prior_p), 1.0 / vamp_prior_p))
        # Mean count per cell of each type on this module's genes in the reference (turns the
        # loadings, shares of counts, into shares of cells); all equal until load_reference.
        self.register_buffer("type_counts", torch.ones(n_labels))
        n_v = n_labels + 1
        # Start from equal loadings summing to 1 (the library carries the depth).
        v0 = float(inverse_softplus(1.0 / n_v))
        if amortization in ("both", "proportion"):
            self.V_encoder = nn.Sequential(
                FCLayers(n_genes, n_hidden, (), n_layers, n_hidden, 0.0, use_batch_norm=False, use_layer_norm=True),
                nn.Linear(n_hidden, n_v))
            nn.init.zeros_(self.V_encoder[-1].weight)
            nn.init.constant_(self.V_encoder[-1].bias, v0)
            self.V = None
        else:
            self.V = nn.Parameter(torch.full((n_spots, n_v), v0))
        if amortization in ("both", "latent"):
            self.gamma_encoder = nn.Sequential(
                FCLayers(n_genes, n_hidden, (), n_layers, n_hidden, dropout_amortization, use_batch_norm=False,
                         use_layer_norm=True),
                nn.Linear(n_hidden, n_labels * n_latent))
            self.gamma = None
        else:
            self.gamma = nn.Parameter(torch.zeros(n_spots, n_labels, n_latent))

    # -- the reference ------------------------------------------------------------------------
    @torch.no_grad()
    def load_reference(self, decoder_state: dict, px_r: torch.Tensor, mean_vprior, var_vprior, mp_vprior,
                       type_counts=None) -> None:
        """Take CondSCVI's decoder (already restricted to this module's genes), dispersion,
        the VampPrior and each type's mean count per cell (None: all equal); per-spot states
        start at each type's prior mean."""
        self.decoder.load_state_dict(decoder_state)
        self.px_r.copy_(torch.as_tensor(px_r))
        self.mean_vprior.copy_(torch.as_tensor(np.asarray(mean_vprior), dtype=torch.float32))
        self.var_vprior.copy_(torch.as_tensor(np.asarray(var_vprior), dtype=torch.float32))
        self.mp_vprior.copy_(torch.as_tensor(np.asarray(mp_vprior), dtype=torch.float32))
        if type_counts is not None:
            self.type_counts.copy_(torch.as_tensor(np.asarray(type_counts), dtype=torch.float32))
        prior_mean = (self.mp_vprior.unsqueeze(-1) * self.mean_vprior).sum(1)  # K x d
        if self.gamma is not None:
            self.gamma.copy_(prior_mean.expand_as(self.gamma))
        else:
            # The state network starts at the prior mean of every type (zero weights, bias).
            last = self.gamma_encoder[-1]
            last.weight.mul_(0.01)
            last.bias.copy_(prior_mean.reshape(-1))

    # -- tensor dict -> arguments ---------------------------------------------------------------
    def inference_inputs(self, tensors: dict) -> dict:
        return {"x": tensors[C.X_KEY], "cell_index": tensors[C.CELL_INDEX_KEY]}

    def generative_inputs(self, tensors: dict, inference_out: dict, **overrides) -> dict:
        return {"gamma": inference_out["gamma"], "v": inference_out["v"], "library": inference_out["library"]}

    # -- the model --------------------------------------------------------------------------------
    def inference(self, x, cell_index, n_samples: int = 1) -> dict:
        """Each spot's states gamma (spots x K x n_latent) and loadings v (spots x K + 1)."""
        total = x.sum(-1, keepdim=True)
        h = torch.log1p(x * (NORMALIZED_DEPTH / total))  # depth-free input of the networks
        idx = cell_index.long()
        m = x.shape[0]
        if self.gamma is None:
            gamma = self.gamma_encoder(h).reshape(m, self.n_labels, self.n_latent)
        else:
            gamma = torch.index_select(self.gamma, 0, idx)
        raw_v = self.V_encoder(h) if self.V is None else torch.index_select(self.V, 0, idx)
        return {"gamma": gamma, "v": F.softplus(raw_v), "library": torch.log(total)}

    def type_profiles(self, gamma: torch.Tensor) -> torch.Tensor:
        """Each type's normalised expression at its state (spots x K x genes)."""
        m = gamma.shape[0]
        y = torch.arange(self.n_labels, device=gamma.device).repeat(m)
        cats = [y] + ([torch.full_like(y, self.reference_batch)] if self.decoder.n_batch > 1 else [])
        h = self.decoder.hidden(gamma.reshape(m * self.n_labels, self.n_latent), cats)
        # Every spot holds every type, so the decoder's output bias, its per-type bias and beta
        # make one types x genes bias, added once: spots x types x genes is the step's
        # largest tensor, and each pass over it costs about as much as the product.
        bias = self.decoder.per_ct_bias + self.decoder.output.bias + self.beta
        logits = torch.matmul(h, self.decoder.output.weight.t()).view(m, self.n_labels, -1) + bias
        return torch.softmax(logits, dim=-1)

    def generative(self, gamma, v, library) -> dict:
        r = self.type_profiles(gamma)
        noise = torch.softmax(self.eta, -1)
        scale = torch.einsum("mk,mkg->mg", v[:, : self.n_labels], r) + v[:, self.n_labels:] * noise
        theta = torch.exp(self.px_r)
        return {"scale": scale, "profiles": r, "dist": NegativeBinomial(scale * torch.exp(library), theta)}

    def log_prior_gamma(self, gamma: torch.Tensor) -> torch.Tensor:
        """log p(gamma_s) summed over the types: each type's mixture of Gaussians (spots)."""
        g = gamma.unsqueeze(2)  # m x K x 1 x d
        var = self.var_vprior
        log_comp = (-0.5 * (g - self.mean_vprior).square() / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)
        return torch.logsumexp(log_comp + torch.log(self.mp_vprior + 1e-8), dim=-1).sum(-1)

    def log_prior_global(self) -> torch.Tensor:
        return -0.5 * (self.beta_reg * self.beta.square().sum() + self.eta_reg * self.eta.square().sum())

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0, n_obs: int = 1) -> LossOutput:
        rec = -generative_out["dist"].log_prob_per_cell(
            tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY), tensors.get(C.X_NZ_VALUE_KEY))
        local = -self.log_prior_gamma(inference_out["gamma"])
        if self.l1_reg:
            local = local + self.l1_reg * inference_out["v"][:, : self.n_labels].sum(-1)
        neg_global = -self.log_prior_global()
        loss = torch.mean(rec + kl_weight * local) + neg_global / n_obs
        return LossOutput(loss, rec, local, kl_global=neg_global.detach())
