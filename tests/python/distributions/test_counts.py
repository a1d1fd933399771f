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
