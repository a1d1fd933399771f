"""Count likelihoods: Poisson, negative binomial (NB), zero-inflated NB (ZINB) and the
two-component NB mixture of totalVI's proteins.

Each distribution gives ``log_prob(x)`` per entry and ``log_prob_per_cell(x, nz_index,
nz_value)``, the per-cell sum used in training. Counts are mostly zeros, and for a zero count
the terms ``x * log(...)``, ``lgamma(x + theta)`` and ``lgamma(x + 1)`` vanish, so the
per-cell sum is computed as (log-probability of zero at every entry) + (the difference at the
non-zero entries only), with hand-derived gradients for NB and ZINB (see ``_fused``).
``lgamma(x + 1)`` does not depend on the parameters and is computed without gradient.

Parameterisation: NB mean ``mu`` and inverse dispersion ``theta`` (variance mu + mu^2/theta);
ZINB adds ``zi_logits``, the logit of the probability of an extra zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._fused import count_log_likelihood_per_cell

EPS = 1e-8


def _per_cell(dense_term: torch.Tensor, nz_index: torch.Tensor, nz_term: torch.Tensor) -> torch.Tensor:
    """Row sums of ``dense_term`` plus the non-zero terms added to their rows."""
    n_genes = dense_term.shape[-1]
    return dense_term.sum(-1).index_add(0, nz_index // n_genes, nz_term)


def _lgamma_x_plus_1(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.lgamma(x + 1)


class Poisson:
    """Poisson with rate ``mu``."""

    def __init__(self, mu: torch.Tensor):
        self.mu = mu

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.log(self.mu + EPS) - self.mu - _lgamma_x_plus_1(x)

    def log_prob_per_cell(self, x, nz_index=None, nz_value=None) -> torch.Tensor:
        if nz_index is None:
            return self.log_prob(x).sum(-1)
        if self.mu.dim() != 2:  # the flat indices address one cells x genes matrix
            raise ValueError(f"the non-zero counts' likelihood needs mu of cells x genes, got shape "
                             f"{tuple(self.mu.shape)}; for several samples pass the dense counts instead")
        mu_nz = self.mu.reshape(-1)[nz_index]
        nz_term = nz_value * torch.log(mu_nz + EPS) - _lgamma_x_plus_1(nz_value)
        return _per_cell(-self.mu, nz_index, nz_term)

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        return torch.poisson(self.mu)


class NegativeBinomial:
    """NB with mean ``mu`` and inverse dispersion ``theta`` (broadcastable to ``mu``)."""

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor):
        self.mu = mu
        self.theta = theta

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def variance(self) -> torch.Tensor:
        return self.mu + self.mu**2 / self.theta

    def _log_theta_mu(self):
        return torch.log(self.theta + self.mu + EPS)

    def _nonzero_extra(self, x, mu, theta, log_theta_mu):
        """log NB(x) - log NB(0) for x > 0 (works on any matching shapes)."""
        return (
            x * (torch.log(mu + EPS) - log_theta_mu)
            + torch.lgamma(x + theta)
            - torch.lgamma(theta)
            - _lgamma_x_plus_1(x)
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        ltm = self._log_theta_mu()
        log_p0 = self.theta * (torch.log(self.theta + EPS) - ltm)
        return log_p0 + self._nonzero_extra(x, self.mu, self.theta, ltm)

    def log_prob_per_cell(self, x, nz_index=None, nz_value=None) -> torch.Tensor:
        if nz_index is None:
            return self.log_prob(x).sum(-1)
        return count_log_likelihood_per_cell(self.mu, self.theta, None, nz_index, nz_value)

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        theta = self.theta.expand_as(self.mu)
        rate = torch.distributions.Gamma(theta, theta / (self.mu + EPS)).sample()
        return torch.poisson(rate)


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """ZINB: with probability sigmoid(``zi_logits``) an extra zero, else NB(mu, theta)."""

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor):
        super().__init__(mu, theta)
        self.zi_logits = zi_logits

    @property
    def zi_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> torch.Tensor:
        return (1 - self.zi_probs) * self.mu

    @property
    def variance(self) -> torch.Tensor:
        pi = self.zi_probs
        return (1 - pi) * self.mu * (self.mu + self.theta + pi * self.mu * self.theta) / self.theta

    def _zero_parts(self):
        """log P(x=0), and log(1-pi) + log NB(0) in logit form (``nb0`` = -pi + log NB(0))."""
        ltm = self._log_theta_mu()
        nb0 = -self.zi_logits + self.theta * (torch.log(self.theta + EPS) - ltm)
        log_p0 = F.softplus(nb0) - F.softplus(-self.zi_logits)
        return log_p0, nb0, ltm

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_p0, nb0, ltm = self._zero_parts()
        nonzero = -F.softplus(-self.zi_logits) + nb0 + self._nonzero_extra(x, self.mu, self.theta, ltm)
        return torch.where(x > 0, nonzero, log_p0)

    def log_prob_per_cell(self, x, nz_index=None, nz_value=None) -> torch.Tensor:
        if nz_index is None:
            return self.log_prob(x).sum(-1)
        return count_log_likelihood_per_cell(self.mu, self.theta, self.zi_logits, nz_index, nz_value)

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        counts = super().sample()
        return torch.where(torch.rand_like(counts) < self.zi_probs, torch.zeros_like(counts), counts)


def _log_nb(x, mu, theta):
    """log NB(x; mu, theta) per entry (dense; for the protein mixture)."""
    log_theta_mu = torch.log(theta + mu + EPS)
    return (
        theta * (torch.log(theta + EPS) - log_theta_mu)
        + x * (torch.log(mu + EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - _lgamma_x_plus_1(x)
    )


class NegativeBinomialMixture:
    """Two-component NB mixture (totalVI's protein likelihood).

    With probability ``pi = sigmoid(mixture_logits)`` the count is NB(``mu1``, ``theta1``)
    (the background), else NB(``mu2``, ``theta2``) (the foreground); ``theta2`` defaults to
    ``theta1``. log p(x) = logsumexp(log pi + log NB1(x), log(1 - pi) + log NB2(x)), with
    log pi = -softplus(-logits) and log(1 - pi) = -softplus(logits), stable for any logit.
    """

    def __init__(self, mu1: torch.Tensor, mu2: torch.Tensor, theta1: torch.Tensor,
                 mixture_logits: torch.Tensor, theta2: torch.Tensor | None = None):
        self.mu1 = mu1
        self.mu2 = mu2
        self.theta1 = theta1
        self.theta2 = theta2
        self.mixture_logits = mixture_logits

    @property
    def _theta2(self) -> torch.Tensor:
        return self.theta1 if self.theta2 is None else self.theta2

    @property
    def mixture_probs(self) -> torch.Tensor:
        """Probability of the first (background) component."""
        return torch.sigmoid(self.mixture_logits)

    @property
    def mean(self) -> torch.Tensor:
        pi = self.mixture_probs
        return pi * self.mu1 + (1 - pi) * self.mu2

    @property
    def variance(self) -> torch.Tensor:
        pi = self.mixture_probs
        second_moment = (pi * (self.mu1 + self.mu1**2 * (1 + 1 / self.theta1))
                         + (1 - pi) * (self.mu2 + self.mu2**2 * (1 + 1 / self._theta2)))
        return second_moment - self.mean**2

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mixture_logits
        first = -F.softplus(-logits) + _log_nb(x, self.mu1, self.theta1)
        second = -F.softplus(logits) + _log_nb(x, self.mu2, self._theta2)
        return torch.logaddexp(first, second)

    def log_prob_per_cell(self, x, nz_index=None, nz_value=None) -> torch.Tensor:
        """Per-cell sum (protein counts are dense: the non-zero arguments are ignored)."""
        return self.log_prob(x).sum(-1)

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        mu1, mu2, logits = torch.broadcast_tensors(self.mu1, self.mu2, self.mixture_logits)
        background = torch.rand_like(mu1) < torch.sigmoid(logits)
        mu = torch.where(background, self.mu1, self.mu2)
        theta = torch.where(background, self.theta1, self._theta2).expand_as(mu)
        rate = torch.distributions.Gamma(theta, theta / (mu + EPS)).sample()
        return torch.poisson(rate)
