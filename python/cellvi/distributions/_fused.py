"""Per-cell NB / ZINB log-likelihood with hand-derived gradients (the training hot path).

Autograd would record some thirty element-wise kernels over the cells x genes minibatch and
as many again backwards. Here the forward pass computes the value and its gradients with
respect to ``mu``, ``theta`` and ``zi_logits`` together, in place where possible, and the
backward pass only scales them by the incoming per-cell gradient. Terms that exist only for
non-zero counts (``x log mu``, ``lgamma(x + theta)``, their derivatives) are computed at the
non-zero entries alone.

Notation per entry: ``r = 1 / (theta + mu)``, ``d = log(theta r)``, ``a = theta d``
(= log NB(0)), ``q = sigmoid(pi)`` (the extra-zero probability), ``D = q + (1 - q) exp(a)``
(= ZINB(0)), ``w = (1 - q) exp(a) / D`` (the posterior weight of the NB component of a zero).

x = 0:  NB   l = a                    ZINB l = log D
x > 0:  NB   l = a + x log(mu r) + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
        ZINB l = -softplus(pi) + (NB's l)
The derivatives at zeros (dense) and the differences at non-zeros follow from these. On the
CPU the transcendental functions dominate a step, so each is evaluated as few times as it
can be: ``log D`` (one log, one exp, one sigmoid per entry) replaces the equal
``softplus(a - pi) - softplus(-pi)`` (two softplus and two sigmoids), digamma at the
non-zeros comes from an asymptotic series (``_digamma``) and lgamma(x + 1) from a table.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8
# Below this, D = q + (1 - q) exp(a) may have lost its digits to underflow (a zero count
# where both the extra-zero and the NB probability are below ~1e-38): the softplus form,
# which stays exact there, is used instead.
_SMALLEST_SAFE_D = 1e-30
# lgamma(k + 1) for the small integer counts that make up nearly all non-zeros.
_LOG_FACTORIAL_TABLE_SIZE = 1024
_LOG2_E = 1.0 / math.log(2.0)
_log_factorials: dict = {}


def _at(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Flat gather (index_select is several times faster on the CPU than ``t[index]``)."""
    return torch.index_select(t.reshape(-1), 0, index)


def _gather(param: torch.Tensor, shape: torch.Size, flat: torch.Tensor, cols: torch.Tensor):
    if param.shape == shape:
        return _at(param, flat)
    if param.dim() == 1 or param.shape[0] == 1:
        return _at(param, cols)
    return _at(param.expand(shape).contiguous(), flat)


def _digamma(z: torch.Tensor) -> torch.Tensor:
    """``digamma(z)`` for ``z > 0``.

    torch's CPU kernel evaluates each entry with scalar code (~20 ns per entry: a tenth of a
    ZINB training step at kang size). Here: the recurrence
    ``digamma(z) = digamma(z + n) - sum_k 1 / (z + k)``, with ``n`` the shift that brings every
    entry to at least 4, and the asymptotic series at ``w = z + n`` truncated where its next
    term is below 2e-9, in whole-tensor operations (float32 within ~1e-6 of the exact value,
    as torch's). Off the CPU torch's own kernel is fast and is used. (lgamma has no such
    shortcut: its series loses digits at large arguments, where torch's kernel does not.)"""
    if z.device.type != "cpu" or z.numel() == 0:
        return torch.digamma(z)
    z_min = float(z.min())
    if not 0 < z_min < math.inf:  # NaN, inf or outside the domain: torch's kernel gives the usual values
        return torch.digamma(z)
    n_shift = max(0, math.ceil(4.0 - z_min))
    w = z + n_shift if n_shift else z
    inv_w = torch.reciprocal(w)
    inv_w2 = inv_w * inv_w
    # digamma(w) ~ log w - 1/(2w) - 1/(12w^2) + 1/(120w^4) - 1/(252w^6) + 1/(240w^8) - 1/(132w^10)
    series = (inv_w2 * (-1.0 / 132)).add_(1.0 / 240).mul_(inv_w2).sub_(1.0 / 252).mul_(inv_w2)
    series = series.add_(1.0 / 120).mul_(inv_w2).sub_(1.0 / 12).mul_(inv_w2)
    digamma = series.sub_(inv_w, alpha=0.5).add_(torch.log(w))
    for k in range(n_shift):
        digamma.sub_(torch.reciprocal(z + k if k else z))
    return digamma


def _log_factorial(x: torch.Tensor) -> torch.Tensor:
    """``lgamma(x + 1)`` of counts: looked up for integers below the table size (nearly all
    counts), computed otherwise."""
    if x.numel() == 0 or x.device.type != "cpu":
        return torch.lgamma(x + 1)
    if float(x.max()) < _LOG_FACTORIAL_TABLE_SIZE:
        as_int = x.to(torch.int64)
        if torch.equal(as_int.to(x.dtype), x):
            table = _log_factorials.get(x.dtype)
            if table is None:
                table = torch.lgamma(torch.arange(1, _LOG_FACTORIAL_TABLE_SIZE + 1, dtype=torch.float64)).to(x.dtype)
                _log_factorials[x.dtype] = table
            return torch.index_select(table, 0, as_int)
    return torch.lgamma(x + 1)


def _zero_terms_exact(a: torch.Tensor, zi_logits: torch.Tensor):
    """ZINB's ``log D``, ``w`` and the zero-count gradient in ``pi`` in the softplus form,
    exact where D underflows (and the form used off the CPU, where it costs little)."""
    s = a - zi_logits
    w = torch.sigmoid(s)
    ll0 = F.softplus(s).sub_(F.softplus(-zi_logits))
    dpi = torch.sigmoid(-zi_logits).sub_(w)
    return ll0, w, dpi


class _CountLogLikelihood(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, theta, zi_logits, nz_index, nz_value, n_genes):
        shape = mu.shape
        per_gene_theta = theta.dim() == 1 or theta.shape[0] == 1
        # The non-zero terms are gathered from and added into flat views of the dense tensors,
        # which must therefore be row-major (a transposed mu would make reshape(-1) a copy
        # and the additions would be lost).
        mu = mu.contiguous()
        theta = theta.contiguous()
        zi_logits = zi_logits.contiguous() if zi_logits is not None else None
        with torch.no_grad():
            theta_eps = theta + EPS
            r = torch.add(mu, theta_eps).reciprocal_()
            theta_r = r * theta  # theta / (theta + mu), in [0, 1)
            # -d = log(1 + mu / theta): log1p keeps its digits where mu << theta (log(theta r)
            # would round theta r to 1 and lose ~1e-3 per entry of a = theta d at theta ~ 1e4).
            minus_d = torch.mul(mu, theta_eps.reciprocal()).log1p_()
            a = minus_d * theta.neg()
            dmr = torch.mul(mu, r).sub_(minus_d)  # d + mu r = the zero-count gradient in theta of log NB(0)
            # Dense terms (every entry as if x = 0) and their gradients; the gradient in mu is
            # kept with its sign flipped (-dmu), which the backward pass undoes per cell.
            if zi_logits is None:
                ll0 = a
                neg_dmu = theta_r
                dtheta = dmr
                dpi = w = None
            else:
                d_zero = None
                if mu.device.type == "cpu":
                    q = torch.sigmoid(zi_logits)
                    one_minus_q = torch.rsub(q, 1.0)
                    # (1 - q) NB(0), in a's memory; exp(a) as 2^(a log2 e): torch's exp2 is
                    # several times faster than its exp on the CPU; the rounding of a log2 e
                    # costs about |a| x 6e-8 relative (3e-7 for a > -5, 7e-6 near underflow)
                    nb_part = a.mul_(_LOG2_E).exp2_().mul_(one_minus_q)
                    d_zero = q.add_(nb_part)  # D
                    if float(d_zero.min()) < _SMALLEST_SAFE_D:
                        d_zero = None
                if d_zero is None:
                    if mu.device.type == "cpu":  # a went into nb_part
                        a = minus_d * theta.neg()
                    ll0, w, dpi = _zero_terms_exact(a, zi_logits)
                else:
                    ll0 = torch.log(d_zero)
                    w = nb_part.div_(d_zero)
                    dpi = one_minus_q.sub_(w)
                neg_dmu = theta_r * w
                dtheta = dmr * w
            # At the non-zero entries: the x > 0 value, which replaces the dense x = 0 one in
            # ll0 before the row sums, and the gradients' differences from the dense x = 0
            # ones, added to them. The flat indices are unique, so scatter_add_ (several
            # times faster on the CPU than index_add_) adds each once.
            x = nz_value
            cols = torch.remainder(nz_index, n_genes) if per_gene_theta else None
            mu_nz = _at(mu, nz_index)
            r_nz = _at(r, nz_index)
            theta_nz = _gather(theta, shape, nz_index, cols)
            theta_r_nz = theta_nz * r_nz
            x_theta = x + theta_nz
            if per_gene_theta:  # lgamma and digamma of theta once per gene
                flat_theta = theta.reshape(-1)
                lg_theta = _at(torch.lgamma(flat_theta), cols)
                dg_theta = _at(torch.digamma(flat_theta), cols)
            else:
                lg_theta, dg_theta = torch.lgamma(theta_nz), _digamma(theta_nz)
            x_r = x * r_nz
            x_over_mu = x / (mu_nz + EPS)
            dmr_nz = _at(dmr, nz_index)
            a_nz = (dmr_nz - mu_nz * r_nz).mul_(theta_nz)  # log NB(0) at the non-zeros, not gathered
            ll_nz = x * torch.log((mu_nz + EPS).mul_(r_nz)) + torch.lgamma(x_theta) - lg_theta - _log_factorial(x)
            ll_nz += a_nz
            dtheta_nz = _digamma(x_theta).sub_(dg_theta).sub_(x_r)
            if zi_logits is None:
                neg_dmu_nz = theta_r_nz.mul_(x_over_mu).neg_()
            else:
                one_minus_w = torch.rsub(_at(w, nz_index), 1.0)
                ll_nz -= F.softplus(_at(zi_logits, nz_index))
                neg_dmu_nz = theta_r_nz.mul_(one_minus_w - x_over_mu)
                dtheta_nz += one_minus_w * dmr_nz
                dpi.reshape(-1).scatter_add_(0, nz_index, one_minus_w.neg_())
            # ll0 is a fresh tensor here (a in the NB case, not needed after this)
            per_cell = ll0.reshape(-1).scatter_(0, nz_index, ll_nz).reshape(shape).sum(-1)
            neg_dmu.reshape(-1).scatter_add_(0, nz_index, neg_dmu_nz)
            dtheta.reshape(-1).scatter_add_(0, nz_index, dtheta_nz)
        ctx.theta_shape = theta.shape
        ctx.save_for_backward(neg_dmu, dtheta, dpi if dpi is not None else torch.empty(0))
        ctx.has_pi = dpi is not None
        return per_cell

    @staticmethod
    def backward(ctx, grad_out):
        neg_dmu, dtheta, dpi = ctx.saved_tensors
        g = grad_out.unsqueeze(-1)
        grad_mu = neg_dmu * g.neg() if ctx.needs_input_grad[0] else None
        grad_theta = None
        if ctx.needs_input_grad[1]:
            if dtheta.dim() == 2 and (len(ctx.theta_shape) == 1 or ctx.theta_shape[0] == 1):
                # per gene: g^T dtheta, one pass
                grad_theta = (grad_out @ dtheta).reshape(ctx.theta_shape)
            else:
                grad_theta = (dtheta * g).sum_to_size(ctx.theta_shape)
        grad_pi = dpi * g if ctx.has_pi and ctx.needs_input_grad[2] else None
        return grad_mu, grad_theta, grad_pi, None, None, None


def count_log_likelihood_per_cell(mu, theta, zi_logits, nz_index, nz_value) -> torch.Tensor:
    """Per-cell log-likelihood of NB (``zi_logits`` None) or ZINB counts given as non-zeros.

    ``mu``: cells x genes; ``theta``: genes, 1 x genes or cells x genes; ``nz_index``: flat
    indices (row * n_genes + col) of the non-zero counts, ``nz_value`` their values.
    """
    if mu.dim() != 2:  # the flat indices address one cells x genes matrix
        raise ValueError(f"the non-zero counts' likelihood needs mu of cells x genes, got shape {tuple(mu.shape)}; "
                         "for several samples pass the dense counts instead")
    if theta.dim() == 2 and theta.shape[0] not in (1, mu.shape[0]):
        raise ValueError(f"theta of shape {tuple(theta.shape)} does not broadcast to {tuple(mu.shape)}")
    if theta.numel() == 1:  # one dispersion for all: per gene, as the kernel reads it
        theta = theta.reshape(1).expand(mu.shape[-1])
    if zi_logits is not None and zi_logits.shape != mu.shape:  # e.g. per gene: one per entry
        zi_logits = zi_logits.expand(mu.shape).contiguous()
    return _CountLogLikelihood.apply(mu, theta, zi_logits, nz_index, nz_value, mu.shape[-1])
