"""CellAssign (Zhang et al. 2019): marker-based cell-type annotation as a negative-binomial
mixture over cell types; no encoder, no latent space.

For cell n with size factor s_n, marker gene g and cell type c (rho_gc = 1 when g is a
marker of c):
    pi ~ Dirichlet(alpha)                                  type proportions
    c_n ~ Categorical(pi)
    log mu_ngc = log s_n + b_g + rho_gc * delta_gc + X_n beta_g
    x_ng | c_n = c ~ NB(mu_ngc, theta)
b_g is the base expression of gene g (in every type it does not mark), delta_gc >= min_delta
the over-expression of a marker in its type (log scale), X_n the covariates (batch and
categorical covariates one-hot without their first category, continuous ones as given).
log delta_gc ~ N(m, v) over the marker entries, with m and log v learned (shrinkage).
The inverse dispersion theta is per gene (``dispersion="gene"``) or, as in scvi-tools, a
sum of Gaussian bumps in the mean (``dispersion="basis"``): theta(mu) =
sum_k a_k exp(-(mu - m_k)^2 / (2 h^2)) with m_k evenly spaced over the observed counts.

The objective is the log-likelihood of the mixture, log p(x_n) = log sum_c pi_c p(x_n | c)
per cell, plus the log prior of pi and delta once per data set (maximum a posteriori).
Its gradient is EM's: that of sum_c gamma_nc log pi_c p(x_n | c) with the posterior type
probabilities gamma_nc held fixed (scvi-tools also differentiates gamma, which adds the
entropy of gamma to the loss; see :class:`cellvi.CellAssign`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import _constants as C
from ._base import BaseModule, LossOutput

DISPERSIONS = ("gene", "basis")
N_BASIS = 10  # bumps of the mean-dependent dispersion (dispersion="basis")
THETA_MIN = 1e-10  # the basis dispersion's lower bound
DELTA_INIT_EXCESS = 0.1  # initial log delta - log(min_delta)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log_nb_log_mean(x: torch.Tensor, log_mu: torch.Tensor, theta: torch.Tensor,
                    lgamma_x1: torch.Tensor) -> torch.Tensor:
    """log NB(x; mu, theta) per entry, from log mu (stable for large over-expression);
    ``lgamma_x1`` is lgamma(x + 1), broadcastable."""
    log_theta = torch.log(theta)
    log_theta_mu = torch.logaddexp(log_theta, log_mu)
    return (theta * (log_theta - log_theta_mu) + x * (log_mu - log_theta_mu)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - lgamma_x1)


class CellAssignModule(BaseModule):
    """CellAssign's mixture (pure torch; knows nothing of AnnData).

    Parameters
    ----------
    rho
        Marker matrix (genes x types), 1 where a gene marks a type.
    log_base_init
        Initial base expression b_g (log scale; e.g. the log mean of counts / size factor).
    count_range
        Smallest and largest count of the data (places the basis of ``dispersion="basis"``).
    n_batch, n_cats_per_cov, n_continuous_cov
        Covariates of the log mean.
    dispersion
        ``"gene"`` (one inverse dispersion per gene) or ``"basis"`` (a function of the mean).
    dirichlet_concentration
        Concentration of the symmetric Dirichlet prior of the type proportions (1: flat).
    min_delta
        Least over-expression (log scale) of a marker in its type.
    """

    def __init__(self, rho: np.ndarray, log_base_init: np.ndarray | None = None,
                 count_range: tuple[float, float] = (0.0, 1.0), n_batch: int = 1,
                 n_cats_per_cov: Sequence[int] = (), n_continuous_cov: int = 0,
                 dispersion: str = "gene", dirichlet_concentration: float = 1.0, min_delta: float = 2.0):
        super().__init__()
        if dispersion not in DISPERSIONS:
            raise ValueError(f"dispersion must be one of {', '.join(DISPERSIONS)}; got {dispersion!r}")
        for name, value in (("dirichlet_concentration", dirichlet_concentration), ("min_delta", min_delta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        rho = torch.as_tensor(np.asarray(rho, dtype=np.float32))
        n_genes, n_types = rho.shape
        self.n_genes, self.n_labels = n_genes, n_types
        self.dispersion = dispersion
        self.min_delta = float(min_delta)
        self.n_batch = n_batch
        self.n_cats_per_cov = list(n_cats_per_cov)
        self.register_buffer("rho", rho)
        self.register_buffer("dirichlet_concentration", torch.full((n_types,), float(dirichlet_concentration)))
        base = torch.zeros(n_genes) if log_base_init is None else torch.as_tensor(log_base_init, dtype=torch.float32)
        self.log_base = nn.Parameter(base.clone())
        self.type_logits = nn.Parameter(torch.zeros(n_types))
        # log delta = log(min_delta) + softplus(u): the bound holds without clamping. Every
        # marker starts just above it (u = softplus^-1(0.1)): no type starts out favoured.
        self.delta_free = nn.Parameter(torch.full((n_genes, n_types), math.log(math.expm1(DELTA_INIT_EXCESS))))
        self.log_delta_mean = nn.Parameter(torch.zeros(1))
        self.log_delta_log_var = nn.Parameter(torch.zeros(1))
        if dispersion == "gene":
            self.log_theta = nn.Parameter(torch.zeros(n_genes))
        else:
            low, high = float(count_range[0]), float(count_range[1])
            high = max(high, low + 1.0)
            means = torch.linspace(low, high, N_BASIS)
            self.register_buffer("basis_means", means)
            self.register_buffer("basis_bandwidth", (means[1] - means[0]).reshape(()))
            self.log_basis_weights = nn.Parameter(torch.zeros(N_BASIS))
        n_design = (n_batch - 1) + sum(n - 1 for n in self.n_cats_per_cov) + n_continuous_cov
        self.beta = nn.Parameter(torch.zeros(n_genes, n_design)) if n_design > 0 else None

    # -- parameters as the equations name them ---------------------------------------------------
    @property
    def delta(self) -> torch.Tensor:
        """Over-expression of each marker in its type (log scale; genes x types, 0 elsewhere)."""
        return torch.exp(self.log_delta) * self.rho

    @property
    def log_delta(self) -> torch.Tensor:
        return math.log(self.min_delta) + F.softplus(self.delta_free)

    @property
    def type_proportions(self) -> torch.Tensor:
        return torch.softmax(self.type_logits, -1)

    def theta(self, log_mu: torch.Tensor) -> torch.Tensor:
        if self.dispersion == "gene":
            return torch.exp(self.log_theta)[:, None]  # (g, 1): broadcasts over cells and types
        mu = torch.exp(log_mu).unsqueeze(-1)
        bumps = torch.exp(-0.5 * ((mu - self.basis_means) / self.basis_bandwidth).square())
        return (torch.exp(self.log_basis_weights) * bumps).sum(-1) + THETA_MIN

    # -- tensors --------------------------------------------------------------------------------
    def design(self, tensors: dict) -> torch.Tensor | None:
        """Covariates of each cell: one-hot codes without their first category, then the
        continuous ones (cells x columns; None without covariates)."""
        parts = []
        if self.n_batch > 1:
            parts.append(F.one_hot(tensors[C.BATCH_KEY].long(), self.n_batch)[:, 1:])
        cats, cont = self.covariates(tensors)
        for codes, n in zip(cats, self.n_cats_per_cov):
            if n > 1:
                parts.append(F.one_hot(codes.long(), n)[:, 1:])
        if cont is not None:
            parts.append(cont)
        return torch.cat([p.float() for p in parts], -1) if parts else None

    def inference_inputs(self, tensors: dict) -> dict:
        return {}

    def inference(self, n_samples: int = 1) -> dict:
        return {}  # no encoder: the cell type is summed out exactly

    def generative_inputs(self, tensors: dict, inference_out: dict, **overrides) -> dict:
        return {"x": tensors[C.X_KEY], "size_factor": tensors[C.SIZE_FACTOR_KEY],
                "design": self.design(tensors)}

    def generative(self, x: torch.Tensor, size_factor: torch.Tensor, design: torch.Tensor | None = None) -> dict:
        """Per cell and type: the log mean (cells x genes x types), log p(x | type) + log pi
        (``log_joint``), log p(x) and the posterior type probabilities ``gamma``."""
        log_mu = torch.log(size_factor).reshape(-1, 1) + self.log_base
        if design is not None and self.beta is not None:
            log_mu = log_mu + design @ self.beta.T
        log_mu = log_mu.unsqueeze(-1) + self.delta  # (n, g, c)
        theta = self.theta(log_mu)
        x3 = x.unsqueeze(-1)
        lgamma_x1 = torch.lgamma(x3 + 1)
        log_px_c = log_nb_log_mean(x3, log_mu, theta, lgamma_x1).sum(1)  # (n, c)
        log_joint = log_px_c + torch.log_softmax(self.type_logits, -1)
        log_px = torch.logsumexp(log_joint, -1)
        return {"log_mu": log_mu, "theta": theta, "log_joint": log_joint, "log_px": log_px,
                "gamma": torch.exp(log_joint - log_px.unsqueeze(-1))}

    # -- objective ------------------------------------------------------------------------------
    def log_prior(self) -> torch.Tensor:
        """log p(pi) + log p(delta) (Dirichlet and the log-normal shrinkage prior)."""
        alpha = self.dirichlet_concentration
        log_pi = torch.log_softmax(self.type_logits, -1)
        lp = torch.lgamma(alpha.sum()) - torch.lgamma(alpha).sum() + ((alpha - 1) * log_pi).sum()
        log_delta = self.log_delta
        log_sd = 0.5 * self.log_delta_log_var
        z = (log_delta - self.log_delta_mean) * torch.exp(-log_sd)
        density = -0.5 * z.square() - log_sd - HALF_LOG_2PI
        return lp + (density * self.rho).sum()

    def loss(self, tensors: dict, inference_out: dict, generative_out: dict, kl_weight: float = 1.0,
             n_obs: int = 1) -> LossOutput:
        """-log p(x_n) per cell, and -log prior once per ``n_obs`` training cells."""
        rec = -generative_out["log_px"]
        neg_log_prior = -self.log_prior()
        loss = rec.mean() + neg_log_prior / n_obs
        return LossOutput(loss, rec, torch.zeros_like(rec), kl_global=neg_log_prior.detach())
