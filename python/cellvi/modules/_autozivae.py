"""AutoZI's variational autoencoder: scVI with a per-gene choice between NB and ZINB.

Generative model for cell n, gene g (Clivio et al. 2019):
    delta_g ~ Beta(alpha_prior, beta_prior)                  one per gene (or gene and batch,
                                                             or gene and label)
    m_g | delta_g ~ Bernoulli(delta_g)                       1: the gene is not zero-inflated
    z_n, l_n, rho_n as in scVI;  pi_ng = m + (1 - m) sigmoid(h_g(z_n))   (m: minimal_dropout)
    x_ng | m_g = 1 ~ NB(mu_ng, theta_g);  x_ng | m_g = 0 ~ ZINB(mu_ng, theta_g, pi_ng)
Summing m_g out, the likelihood given delta_g is the mixture
    delta_g NB(x) + (1 - delta_g) ZINB(x; pi_ng),
and that mixture is itself a ZINB with the zero-inflation probability (1 - delta_g) pi_ng:
for x > 0 both components carry NB(x), weighted delta + (1 - delta)(1 - pi) = 1 - (1 - delta) pi;
for x = 0 the extra zeros have probability (1 - delta) pi. The reconstruction therefore runs on
the fused ZINB likelihood (``distributions._fused``) with these effective logits, at the cost of
scVI's ZINB; scvi-tools evaluates the NB and the ZINB densities in full and mixes them.

Inference: q(z | x) (and q(l | x)) as in scVI; q(delta_g) = Beta(alpha_g, beta_g), a global
(data-set level) posterior sampled once per minibatch with the reparameterisation trick. Its
KL to the prior is counted once per data set (``LossOutput.kl_global``). As in scvi-tools, the
Beta parameters are kept as logits: alpha, beta and the priors lie in (0, 1).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.distributions import Beta, kl_divergence

from .. import _constants as C
from ..distributions import ZeroInflatedNegativeBinomial
from ._base import LossOutput
from ._vae import VAE, check_choice

ZERO_INFLATIONS = ("gene", "gene-batch", "gene-label")
_EPS_GAMMA = 1e-30  # added to Gamma draws before their log
_EPS_SAMPLE = 1e-7  # delta is kept in [eps, 1 - eps]


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def beta_prior_values(alpha_prior: float | None, beta_prior: float | None) -> tuple[float | None, float | None]:
    """The prior's parameters, checked: each in (0, 1); one of them None becomes 1 - the other;
    both None: learned (empirical Bayes)."""
    for name, value in (("alpha_prior", alpha_prior), ("beta_prior", beta_prior)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < 1:
            raise ValueError(f"{name} must be a number strictly between 0 and 1 (or None), got {value!r}")
    if alpha_prior is None and beta_prior is not None:
        alpha_prior = 1.0 - float(beta_prior)
    elif beta_prior is None and alpha_prior is not None:
        beta_prior = 1.0 - float(alpha_prior)
    return (None if alpha_prior is None else float(alpha_prior),
            None if beta_prior is None else float(beta_prior))


class _StandardGamma(torch.autograd.Function):
    """Gamma(alpha, 1) draws with the implicit reparameterisation gradient (what
    ``torch.distributions.Gamma.rsample`` does, without the distribution object)."""

    @staticmethod
    def forward(ctx, alpha):
        sample = torch._standard_gamma(alpha).clamp_min_(torch.finfo(alpha.dtype).tiny)
        ctx.save_for_backward(sample, alpha)
        return sample

    @staticmethod
    def backward(ctx, grad):
        sample, alpha = ctx.saved_tensors
        return grad * torch._standard_gamma_grad(alpha, sample)


def sample_log_beta(alpha: torch.Tensor, beta: torch.Tensor, sample_shape=()) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised draws of delta ~ Beta(alpha, beta) as (log delta, log(1 - delta)).

    delta = X / (X + Y) with X ~ Gamma(alpha), Y ~ Gamma(beta), in log space, and kept in
    [1e-7, 1 - 1e-7] (as scvi-tools keeps it). With parameters below 1 the Beta puts its mass
    near 0 and 1; in float32 a draw near 1 rounds to 1, so log(1 - delta) is taken from Y
    rather than from delta.
    """
    shape = torch.Size(sample_shape)
    log_x = torch.log(_StandardGamma.apply(alpha.expand(shape + alpha.shape)) + _EPS_GAMMA)
    log_y = torch.log(_StandardGamma.apply(beta.expand(shape + beta.shape)) + _EPS_GAMMA)
    diff = log_x - log_y
    log_eps = torch.tensor(math.log(_EPS_SAMPLE), dtype=diff.dtype, device=diff.device)
    log_scale = math.log1p(-2 * _EPS_SAMPLE)

    def squeeze(log_p):  # log(eps + (1 - 2 eps) p); the clamp undoes rounding above log 1
        return torch.logaddexp(log_scale + log_p, log_eps).clamp(max=0.0)

    return squeeze(-F.softplus(-diff)), squeeze(-F.softplus(diff))


def sample_beta(alpha: torch.Tensor, beta: torch.Tensor, sample_shape=()) -> torch.Tensor:
    """Reparameterised Beta(alpha, beta) draws in [1e-7, 1 - 1e-7] (see :func:`sample_log_beta`)."""
    return torch.exp(sample_log_beta(alpha, beta, sample_shape)[0])


def effective_zi_logits(zi_logits: torch.Tensor, delta: torch.Tensor, minimal_dropout: float,
                        log_one_minus_delta: torch.Tensor | None = None) -> torch.Tensor:
    """logit((1 - delta) pi), pi = m + (1 - m) sigmoid(zi_logits): the zero-inflation of the
    NB/ZINB mixture with NB weight ``delta`` (broadcast against ``zi_logits``).

    Written without differences of nearly equal numbers: 1 - (1 - delta) pi
    = (1 - m) sigmoid(-zi_logits) + delta pi; ``log_one_minus_delta`` (default
    log1p(-delta)) may be given where delta itself has rounded to 1.
    """
    if log_one_minus_delta is None:
        log_one_minus_delta = torch.log1p(-delta)
    m = minimal_dropout
    if m > 0:
        pi = m + (1 - m) * torch.sigmoid(zi_logits)
        log_pi = torch.log(pi)
        rest = (1 - m) * torch.sigmoid(-zi_logits)
    else:
        pi = torch.sigmoid(zi_logits)
        log_pi = -F.softplus(-zi_logits)
        rest = torch.sigmoid(-zi_logits)
    return log_one_minus_delta + log_pi - torch.log(rest + delta * pi)


class AUTOZIVAE(VAE):
    """AutoZI's module: a :class:`VAE` with a ZINB decoder and Beta posteriors of each gene's
    NB weight delta (see the module docstring).

    Parameters
    ----------
    n_input
        Number of genes.
    alpha_prior, beta_prior
        Parameters of the Beta prior of delta, each in (0, 1); one None: 1 - the other;
        both None: learned.
    minimal_dropout
        Lower bound of the ZINB component's zero-inflation probability (>= 0).
    zero_inflation
        What delta depends on: ``"gene"``, ``"gene-batch"`` or ``"gene-label"``.
    **kwargs
        As for :class:`VAE` (without ``gene_likelihood``: the likelihood is AutoZI's).
    """

    def __init__(self, n_input: int, alpha_prior: float | None = 0.5, beta_prior: float | None = 0.5,
                 minimal_dropout: float = 0.01, zero_inflation: str = "gene", **kwargs):
        if "gene_likelihood" in kwargs:
            raise ValueError("AutoZI's likelihood is its own NB/ZINB mixture; gene_likelihood cannot be set")
        if zero_inflation == "gene-cell":
            raise ValueError("zero_inflation='gene-cell' is not available (nor in scvi-tools): a Beta posterior "
                             "per gene and cell cannot be learned; use 'gene', 'gene-batch' or 'gene-label'")
        check_choice("zero_inflation", zero_inflation, ZERO_INFLATIONS)
        if isinstance(minimal_dropout, bool) or not isinstance(minimal_dropout, (int, float)) \
                or not 0 <= float(minimal_dropout) < 1:
            raise ValueError(f"minimal_dropout must be a number in [0, 1), got {minimal_dropout!r}")
        super().__init__(n_input, gene_likelihood="zinb", **kwargs)
        alpha_prior, beta_prior = beta_prior_values(alpha_prior, beta_prior)
        self.zero_inflation = zero_inflation
        self.minimal_dropout = float(minimal_dropout)
        n_groups = {"gene": None, "gene-batch": self.n_batch, "gene-label": self.n_labels}[zero_inflation]
        shape = (n_input,) if n_groups is None else (n_input, n_groups)
        prior_shape = (1,) if n_groups is None else (1, n_groups)
        self.alpha_posterior_logit = nn.Parameter(torch.randn(shape))
        self.beta_posterior_logit = nn.Parameter(torch.randn(shape))
        for name, value in (("alpha_prior_logit", alpha_prior), ("beta_prior_logit", beta_prior)):
            if value is None:
                setattr(self, name, nn.Parameter(torch.randn(prior_shape)))
            else:
                self.register_buffer(name, torch.full(prior_shape, _logit(value)))

    # -- the Beta posteriors and priors ---------------------------------------------------------
    def alphas_betas(self) -> dict[str, torch.Tensor]:
        """``alpha_posterior``, ``beta_posterior`` (genes, or genes x groups) and
        ``alpha_prior``, ``beta_prior``."""
        return {"alpha_posterior": torch.sigmoid(self.alpha_posterior_logit),
                "beta_posterior": torch.sigmoid(self.beta_posterior_logit),
                "alpha_prior": torch.sigmoid(self.alpha_prior_logit),
                "beta_prior": torch.sigmoid(self.beta_prior_logit)}

    def sample_log_delta(self, sample_shape=()) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws of delta from its posterior as (log delta, log(1 - delta)), each
        ``sample_shape`` + (genes[, groups])."""
        return sample_log_beta(torch.sigmoid(self.alpha_posterior_logit),
                               torch.sigmoid(self.beta_posterior_logit), sample_shape)

    def delta_per_cell(self, delta: torch.Tensor, batch: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """delta laid out to broadcast against (samples x) cells x genes: (..., 1, genes) per
        gene, (..., cells, genes) per gene and batch or label."""
        if self.zero_inflation == "gene":
            return delta.unsqueeze(-2)
        codes = batch if self.zero_inflation == "gene-batch" else labels
        return delta.transpose(-1, -2).index_select(-2, codes.reshape(-1))

    def kl_global(self) -> torch.Tensor:
        """KL(q(delta) || p(delta)), summed over genes (and groups)."""
        ab = self.alphas_betas()
        posterior = Beta(ab["alpha_posterior"], ab["beta_posterior"], validate_args=False)
        prior = Beta(ab["alpha_prior"].expand_as(ab["alpha_posterior"]),
                     ab["beta_prior"].expand_as(ab["beta_posterior"]), validate_args=False)
        return kl_divergence(posterior, prior).sum()

    # -- the model ---------------------------------------------------------------------------
    def generative(self, z, library, batch, cat_covs=(), cont_covs=None, labels=None,
                   likelihood: bool = True, genes_major: bool = False) -> dict:
        """As :meth:`VAE.generative`; the likelihood is the NB/ZINB mixture given one draw of
        delta per sample (``"delta"``), a ZINB with the effective zero-inflation logits."""
        out = super().generative(z, library, batch, cat_covs, cont_covs, labels, likelihood, genes_major)
        if "dist" not in out:
            return out
        dist = out["dist"]
        log_delta, log_rest = self.sample_log_delta(z.shape[:-2])
        delta = torch.exp(log_delta)
        zi = effective_zi_logits(dist.zi_logits, self.delta_per_cell(delta, batch, labels), self.minimal_dropout,
                                 self.delta_per_cell(log_rest, batch, labels))
        out["dist"] = ZeroInflatedNegativeBinomial(dist.mu, dist.theta, zi)
        out["delta"] = delta
        if not self.training:  # for queries: the ZINB component's zero-inflation probability
            # (reported as "dropout"; the mixture's depends on the random delta)
            out["zi_probs"] = self.minimal_dropout + (1 - self.minimal_dropout) * torch.sigmoid(dist.zi_logits)
        return out

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0, n_obs: int = 1) -> LossOutput:
        """scVI's per-cell terms, and the Beta KL once per ``n_obs`` training cells."""
        reconstruction = self._reconstruction(tensors, generative_out)
        qz_mean, qz_var = inference_out["qz_mean"], inference_out["qz_var"]
        kl_z = 0.5 * (qz_var + qz_mean.square() - 1 - torch.log(qz_var)).sum(-1)
        kl_l = self._kl_library(inference_out, tensors[C.BATCH_KEY])
        kl_delta = self.kl_global()
        loss = torch.mean(reconstruction + kl_weight * kl_z + kl_l) + kl_delta / n_obs
        return LossOutput(loss, reconstruction, kl_z + kl_l, kl_global=kl_delta.detach())
