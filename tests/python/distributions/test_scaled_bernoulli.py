"""The fused Bernoulli of P = y * d * f: BCELoss's values and gradients for all three inputs."""
import torch

from cellvi.distributions import scaled_bernoulli_log_likelihood_per_cell


def test_scaled_bernoulli_matches_bce_of_the_product():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(6, 11, generator=g, dtype=torch.float64).requires_grad_()
    d = torch.rand(6, 1, generator=g, dtype=torch.float64).requires_grad_()
    f = torch.rand(11, generator=g, dtype=torch.float64).requires_grad_()
    x = (torch.rand(6, 11, generator=g) < 0.3).double() * 3  # counts: > 0 is open
    x[0, 5] = 0
    flat = x.reshape(-1)
    nz = torch.nonzero(flat).squeeze(1)
    weights = torch.rand(6, generator=g, dtype=torch.float64)  # a per-cell weight, as a loss may use

    ours = scaled_bernoulli_log_likelihood_per_cell(y, d, f, nz, flat[nz])
    grads = torch.autograd.grad((ours * weights).sum(), (y, d, f))
    reference = -torch.nn.functional.binary_cross_entropy(y * d * f, (x > 0).double(), reduction="none").sum(-1)
    ref_grads = torch.autograd.grad((reference * weights).sum(), (y, d, f))
    torch.testing.assert_close(ours, reference)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
