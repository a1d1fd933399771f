"""Bernoulli likelihood of binary data (e.g. chromatin accessibility: open where x > 0).

Per cell, log p(x) = sum over features of log(1 - p), plus, at the open entries only,
log(p) - log(1 - p). Accessibility matrices are 1-5% non-zero, so the second sum runs over the
minibatch's non-zero entries (which the loader gives) rather than the dense matrix.

The values and gradients are those of ``torch.nn.BCELoss`` (with a minus sign): each log is
clamped at -100, and the gradient with respect to ``p`` is ``(x - p) / max(p (1 - p), 1e-12)``,
which stays finite where a probability reaches exactly 0 or 1. (The clamped logs under plain
autograd would give NaN there: the clamp's zero gradient times log's infinite one.)
"""
from __future__ import annotations

import torch

_LOG_MIN = -100.0  # BCELoss's clamp of each log
_GRAD_EPS = 1e-12  # BCELoss's floor of p (1 - p) in its gradient


def _clamped_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x).clamp_min_(_LOG_MIN)


class _BernoulliLogLikelihood(torch.autograd.Function):
    """Per-cell log-likelihood of open entries given as non-zeros; the gradient (BCELoss's)
    is computed in the forward pass and only scaled in the backward."""

    @staticmethod
    def forward(ctx, probs, nz_index, nz_value):
        n_cols = probs.shape[-1]
        with torch.no_grad():
            q = 1 - probs
            per_cell = _clamped_log(q).sum(-1)  # every entry as if closed
            # d BCE / dp as if every entry were closed: p / max(p q, eps), in q's buffer.
            grad = q.mul_(probs).clamp_min_(_GRAD_EPS)
            torch.div(probs, grad, out=grad)
            p_nz = probs.reshape(-1).index_select(0, nz_index)
            q_nz = 1 - p_nz
            opened = (nz_value > 0).to(probs.dtype)  # an explicitly stored 0 stays closed
            rows = torch.div(nz_index, n_cols, rounding_mode="floor")
            per_cell.index_add_(0, rows, opened * (_clamped_log(p_nz) - _clamped_log(q_nz)))
            # At an open entry the gradient is (p - 1) / max(p q, eps): subtract 1 / max(p q, eps).
            grad.view(-1).index_add_(0, nz_index, -opened / (p_nz * q_nz).clamp_min_(_GRAD_EPS))
        ctx.save_for_backward(grad)
        return per_cell

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        # The log-likelihood is minus the BCE.
        return grad * grad_out.neg().unsqueeze(-1), None, None


def bernoulli_log_likelihood_per_cell(probs: torch.Tensor, nz_index: torch.Tensor,
                                      nz_value: torch.Tensor) -> torch.Tensor:
    """Per-cell Bernoulli log-likelihood, ``-BCELoss(reduction="none")(probs, x > 0).sum(-1)``.

    ``probs``: cells x features; ``nz_index``: flat indices (row * n_features + col) of the
    non-zero entries of ``x`` and ``nz_value`` their values (an entry is open where its value
    is > 0; every other entry is closed).
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must be cells x features, got shape {tuple(probs.shape)}")
    return _BernoulliLogLikelihood.apply(probs, nz_index, nz_value)


class Bernoulli:
    """Bernoulli with success (open) probability ``probs``; any ``x > 0`` counts as a success."""

    def __init__(self, probs: torch.Tensor):
        self.probs = probs

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-entry log-probability (dense), with BCELoss's clamped logs."""
        p = self.probs
        return torch.where(x > 0, _clamped_log(p), _clamped_log(1 - p))

    def log_prob_per_cell(self, x, nz_index=None, nz_value=None) -> torch.Tensor:
        if nz_index is None or self.probs.dim() != 2:
            return self.log_prob(x).sum(-1)
        return bernoulli_log_likelihood_per_cell(self.probs, nz_index, nz_value)

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        return torch.bernoulli(self.probs)


class _ScaledBernoulliLogLikelihood(torch.autograd.Function):
    """As ``_BernoulliLogLikelihood`` for P = y * d * f (y: cells x features, d: cells x 1,
    f: features), with the products' gradients folded in: one set of passes over the dense
    minibatch instead of autograd's chain through two products."""

    @staticmethod
    def forward(ctx, probs, cell_factor, feature_factor, nz_index, nz_value):
        n_cols = probs.shape[-1]
        with torch.no_grad():
            df = cell_factor * feature_factor  # d_c f_r, later d BCE / d y in place
            P = probs * df
            q = 1 - P
            per_cell = _clamped_log(q).sum(-1)
            grad = q.mul_(P).clamp_min_(_GRAD_EPS)
            torch.div(P, grad, out=grad)  # d BCE / d P as if every entry were closed
            p_nz = P.reshape(-1).index_select(0, nz_index)
            q_nz = 1 - p_nz
            opened = (nz_value > 0).to(probs.dtype)
            rows = torch.div(nz_index, n_cols, rounding_mode="floor")
            per_cell.index_add_(0, rows, opened * (_clamped_log(p_nz) - _clamped_log(q_nz)))
            grad.view(-1).index_add_(0, nz_index, -opened / (p_nz * q_nz).clamp_min_(_GRAD_EPS))
            grad_probs = df.mul_(grad)  # dBCE/dy = dBCE/dP * d f
            grad_y_probs = grad.mul_(probs)  # dBCE/dP * y: its row sums against f give dBCE/dd
            grad_cell = grad_y_probs @ feature_factor  # dBCE/dd per cell
        ctx.save_for_backward(grad_probs, grad_y_probs, grad_cell, cell_factor)
        return per_cell

    @staticmethod
    def backward(ctx, grad_out):
        grad_probs, grad_y_probs, grad_cell, cell_factor = ctx.saved_tensors
        g = grad_out.neg()  # the log-likelihood is minus the BCE
        out_probs = grad_probs * g.unsqueeze(-1) if ctx.needs_input_grad[0] else None
        out_cell = (grad_cell * g).unsqueeze(-1) if ctx.needs_input_grad[1] else None
        out_feature = grad_y_probs.t() @ (cell_factor.reshape(-1) * g) if ctx.needs_input_grad[2] else None
        return out_probs, out_cell, out_feature, None, None


def scaled_bernoulli_log_likelihood_per_cell(probs: torch.Tensor, cell_factor: torch.Tensor,
                                             feature_factor: torch.Tensor, nz_index: torch.Tensor,
                                             nz_value: torch.Tensor) -> torch.Tensor:
    """``bernoulli_log_likelihood_per_cell(probs * cell_factor * feature_factor, ...)`` (the
    same values and gradients), computed in one function: ``probs`` cells x features,
    ``cell_factor`` cells x 1, ``feature_factor`` features."""
    if probs.dim() != 2 or cell_factor.shape != (probs.shape[0], 1) or feature_factor.shape != probs.shape[-1:]:
        raise ValueError(f"shapes do not fit: probs {tuple(probs.shape)}, cell_factor {tuple(cell_factor.shape)}, "
                         f"feature_factor {tuple(feature_factor.shape)}")
    return _ScaledBernoulliLogLikelihood.apply(probs, cell_factor, feature_factor, nz_index, nz_value)
