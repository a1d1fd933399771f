"""Count likelihoods: values against scipy, the sparse per-cell path against the dense one,
hand-derived gradients against autograd, and sampling moments."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from cellvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial


def counts_and_nonzeros(n=40, g=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, g, generator=gen) * 3) * (torch.rand(n, g, generator=gen) < 0.4)
    flat = torch.nonzero(x.reshape(-1)).squeeze(1)
    return x, flat, x.reshape(-1)[flat]


def params(n=40, g=30, theta_shape="gene", seed=1):
    gen = torch.Generator().manual_seed(seed)
    mu = (torch.rand(n, g, generator=gen) * 5 + 0.01).double().requires_grad_()
    shape = {"gene": (g,), "cell": (n, g), "row": (1, g)}[theta_shape]
    theta = (torch.rand(*shape, generator=gen) * 3 + 0.2).double().requires_grad_()
    zi = torch.randn(n, g, generator=gen).double().requires_grad_()
    return mu, theta, zi


def test_log_prob_matches_scipy():
    x, _, _ = counts_and_nonzeros()
    mu, theta, zi = params()
    mu, theta, zi = mu.detach(), theta.detach(), zi.detach()
    th = theta.expand_as(mu).numpy()
    nb_ref = stats.nbinom.logpmf(x.numpy(), th, th / (th + mu.numpy()))
    np.testing.assert_allclose(NegativeBinomial(mu, theta).log_prob(x.double()).numpy(), nb_ref, rtol=1e-6, atol=1e-6)
    pi = torch.sigmoid(zi).numpy()
    zinb_ref = np.where(x.numpy() == 0, np.log(pi + (1 - pi) * np.exp(nb_ref)), np.log(1 - pi) + nb_ref)
    zinb = ZeroInflatedNegativeBinomial(mu, theta, zi).log_prob(x.double()).numpy()
    np.testing.assert_allclose(zinb, zinb_ref, rtol=1e-6, atol=1e-6)
    pois_ref = stats.poisson.logpmf(x.numpy(), mu.numpy())
    np.testing.assert_allclose(Poisson(mu).log_prob(x.double()).numpy(), pois_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["nb", "zinb", "poisson"])
@pytest.mark.parametrize("theta_shape", ["gene", "cell", "row"])
def test_sparse_per_cell_value_and_gradients_match_dense_autograd(kind, theta_shape):
    x, flat, values = counts_and_nonzeros()
    x, values = x.double(), values.double()
    grads = []
    for sparse in (False, True):
        mu, theta, zi = params(theta_shape=theta_shape)
        dist = {"nb": lambda: NegativeBinomial(mu, theta),
                "zinb": lambda: ZeroInflatedNegativeBinomial(mu, theta, zi),
                "poisson": lambda: Poisson(mu)}[kind]()
        ll = dist.log_prob_per_cell(x, flat, values) if sparse else dist.log_prob(x).sum(-1)
        weights = torch.linspace(-1, 2, ll.shape[0], dtype=ll.dtype)  # a non-uniform upstream gradient
        (ll * weights).sum().backward()
        grads.append((ll.detach(), mu.grad, theta.grad, zi.grad))
    for dense_part, sparse_part in zip(*grads):
        if dense_part is None:
            assert sparse_part is None
            continue
        # float64, summed in another order (index_add_ at the non-zeros): ~1e-7 apart at most
        torch.testing.assert_close(sparse_part, dense_part, rtol=1e-6, atol=1e-6)


def test_samples_have_the_right_moments():
    torch.manual_seed(0)
    mu = torch.full((20000, 2), 4.0)
    theta = torch.tensor([0.5, 5.0])
    zi = torch.full((20000, 2), -1.0)
    for dist in (NegativeBinomial(mu, theta), ZeroInflatedNegativeBinomial(mu, theta, zi), Poisson(mu)):
        draws = dist.sample()
        torch.testing.assert_close(draws.mean(0), dist.mean[0], rtol=0.05, atol=0.05)
        if hasattr(dist, "variance"):
            torch.testing.assert_close(draws.var(0), dist.variance[0], rtol=0.1, atol=0.1)


def test_fast_digamma_and_log_factorial_match_torch():
    from cellvi.distributions._fused import _digamma, _log_factorial

    z = torch.cat([torch.logspace(-4, 9, 400, dtype=torch.float64), torch.tensor([0.5, 1.0, 1.4616, 3.999, 4.0])])
    torch.testing.assert_close(_digamma(z), torch.digamma(z), rtol=1e-8, atol=1e-8)
    z32 = z.float()
    torch.testing.assert_close(_digamma(z32), torch.digamma(z32), rtol=1e-5, atol=2e-6)
    counts = torch.tensor([1.0, 2.0, 7.0, 1023.0, 1024.0, 5000.0])  # table and beyond it
    torch.testing.assert_close(_log_factorial(counts), torch.lgamma(counts.double() + 1).float())
    fractional = torch.tensor([0.5, 2.25])  # not counts: computed, not looked up
    torch.testing.assert_close(_log_factorial(fractional), torch.lgamma(fractional + 1))
    assert torch.isnan(_digamma(torch.tensor([1.0, float("nan")]))).any()
    # all infinite (a diverged dispersion): torch's values, not an OverflowError
    assert torch.equal(_digamma(torch.tensor([float("inf")] * 3)), torch.digamma(torch.tensor([float("inf")] * 3)))


def test_zinb_zero_probability_underflow_stays_exact():
    """A zero count whose extra-zero and NB probabilities are both below float32's range
    (very negative zi logit, large mean): the per-cell value and gradients stay finite and
    equal to the float64 dense reference."""
    x = torch.zeros(3, 4)
    x[0, 1] = 2.0
    flat = torch.nonzero(x.reshape(-1)).squeeze(1)
    values = x.reshape(-1)[flat]
    results = []
    for dtype in (torch.float32, torch.float64):
        mu = torch.tensor([[200.0, 3.0, 0.5, 1.0]] * 3, dtype=dtype).requires_grad_()
        theta = torch.tensor([1e4, 2.0, 1.0, 0.5], dtype=dtype).requires_grad_()
        zi = torch.tensor([[-120.0, -1.0, 0.0, 2.0]] * 3, dtype=dtype).requires_grad_()
        dist = ZeroInflatedNegativeBinomial(mu, theta, zi)
        ll = dist.log_prob_per_cell(x.to(dtype), flat, values.to(dtype)) if dtype == torch.float32 \
            else dist.log_prob(x.to(dtype)).sum(-1)
        ll.sum().backward()
        results.append([t.double() for t in (ll.detach(), mu.grad, theta.grad, zi.grad)])
    for got, expected in zip(*results):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["nb", "zinb"])
def test_sparse_per_cell_accepts_transposed_parameters(kind):
    """mu and zi_logits given as transposes (column-major) give the same value and
    gradients as their row-major copies."""
    x, flat, values = counts_and_nonzeros()
    x, values = x.double(), values.double()
    grads = []
    for transposed in (False, True):
        mu, theta, zi = params()
        mu_in = mu.detach().t().contiguous().t().requires_grad_() if transposed else mu
        zi_in = zi.detach().t().contiguous().t().requires_grad_() if transposed else zi
        dist = NegativeBinomial(mu_in, theta) if kind == "nb" else ZeroInflatedNegativeBinomial(mu_in, theta, zi_in)
        ll = dist.log_prob_per_cell(x, flat, values)
        (ll * torch.linspace(-1, 2, ll.shape[0], dtype=ll.dtype)).sum().backward()
        grads.append((ll.detach(), mu_in.grad, theta.grad, zi_in.grad if kind == "zinb" else None))
    for plain, transposed in zip(*grads):
        if plain is not None:
            torch.testing.assert_close(transposed, plain)


@pytest.mark.parametrize("theta_shape, zi_shape", [((), None), ((1,), None), ((1, 1), None),
                                                    ((6,), (6,)), ((6,), (1, 6))])
def test_fused_likelihood_takes_every_broadcastable_shape(theta_shape, zi_shape):
    """One dispersion for all, or zero-inflation per gene: the non-zeros' kernel gives the dense
    log-probability and its gradients (it used to fail on these shapes)."""
    from cellvi.distributions._fused import count_log_likelihood_per_cell

    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(4, 6, generator=gen) * 3).double()
    mu = (torch.rand(4, 6, generator=gen) + 0.5).double().requires_grad_()
    theta = (torch.rand(theta_shape, generator=gen).double() + 1).requires_grad_()
    zi = None if zi_shape is None else torch.randn(zi_shape, generator=gen).double().requires_grad_()
    flat = x.reshape(-1)
    nz = torch.nonzero(flat).squeeze(1)
    fused = count_log_likelihood_per_cell(mu, theta, zi, nz, flat[nz])
    dist = (NegativeBinomial(mu, theta.expand(4, 6)) if zi is None
            else ZeroInflatedNegativeBinomial(mu, theta, zi.expand(4, 6)))
    dense = dist.log_prob(x).sum(-1)
    torch.testing.assert_close(fused, dense)
    inputs = [mu, theta] + ([zi] if zi is not None else [])
    for a, b in zip(torch.autograd.grad(fused.sum(), inputs), torch.autograd.grad(dense.sum(), inputs)):
        torch.testing.assert_close(a, b)
