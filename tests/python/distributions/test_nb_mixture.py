"""totalVI's protein likelihood, the two-component NB mixture: values against a float64
computation from scipy (extreme logits included), and sampling moments."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from cellvi.distributions import NegativeBinomialMixture


def reference_log_prob(x, mu1, mu2, theta1, theta2, logits):
    """float64: log(pi NB(x; mu1, theta1) + (1 - pi) NB(x; mu2, theta2)), pi = sigmoid(logits)."""
    nb1 = stats.nbinom.logpmf(x, theta1, theta1 / (theta1 + mu1))
    nb2 = stats.nbinom.logpmf(x, theta2, theta2 / (theta2 + mu2))
    log_pi, log_1m_pi = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)
    return np.logaddexp(log_pi + nb1, log_1m_pi + nb2)


def draw(n=50, p=12, seed=0):
    rng = np.random.default_rng(seed)
    mu1 = rng.uniform(0.5, 20, size=(n, p))
    mu2 = mu1 * rng.uniform(1, 30, size=(n, p))
    theta1 = rng.uniform(0.3, 10, size=p)
    theta2 = rng.uniform(0.3, 10, size=p)
    logits = rng.normal(scale=3, size=(n, p))
    logits[0] = [-200, -60, -30, -10, 0, 10, 30, 60, 200, -1e4, 1e4, 15]  # extremes
    x = rng.poisson(np.where(rng.random((n, p)) < 0.5, mu1, mu2)).astype(np.float64)
    x[1] = [0, 0, 1, 2, 5, 50, 300, 1000, 0, 3, 7, 4000]
    return x, mu1, mu2, theta1, theta2, logits


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared_theta", [False, True])
def test_log_prob_matches_float64_reference(dtype, shared_theta):
    x, mu1, mu2, theta1, theta2, logits = draw()
    if shared_theta:
        theta2 = theta1
    ref = reference_log_prob(x, mu1, mu2, theta1, theta2, logits)
    t = [torch.tensor(a, dtype=dtype) for a in (x, mu1, mu2, theta1, theta2, logits)]
    dist = NegativeBinomialMixture(t[1], t[2], t[3], t[5], theta2=None if shared_theta else t[4])
    got = dist.log_prob(t[0])
    assert torch.isfinite(got).all()
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(dist.log_prob_per_cell(t[0]).double().numpy(), ref.sum(1), rtol=tol)


def test_gradients_finite_at_extreme_logits():
    x, mu1, mu2, theta1, theta2, logits = draw()
    logits_t = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    mu1_t = torch.tensor(mu1, dtype=torch.float32, requires_grad=True)
    dist = NegativeBinomialMixture(mu1_t, torch.tensor(mu2, dtype=torch.float32),
                                   torch.tensor(theta1, dtype=torch.float32), logits_t)
    dist.log_prob(torch.tensor(x, dtype=torch.float32)).sum().backward()
    assert torch.isfinite(logits_t.grad).all() and torch.isfinite(mu1_t.grad).all()


def test_sample_moments():
    torch.manual_seed(0)
    n = 200_000
    mu1, mu2 = torch.full((n, 2), 3.0), torch.tensor([[40.0, 8.0]]).expand(n, 2)
    theta1, theta2 = torch.tensor([4.0, 2.0]), torch.tensor([10.0, 1.5])
    logits = torch.tensor([0.5, -1.0])
    dist = NegativeBinomialMixture(mu1, mu2, theta1, logits.expand(n, 2), theta2)
    samples = dist.sample()
    assert samples.shape == (n, 2)
    assert torch.all(samples == samples.round()) and torch.all(samples >= 0)
    np.testing.assert_allclose(samples.mean(0).numpy(), dist.mean[0].numpy(), rtol=0.02)
    np.testing.assert_allclose(samples.var(0).numpy(), dist.variance[0].numpy(), rtol=0.05)
    pi = torch.sigmoid(logits)
    np.testing.assert_allclose(dist.mean[0].numpy(), (pi * 3 + (1 - pi) * torch.tensor([40.0, 8.0])).numpy(),
                               rtol=1e-6)
