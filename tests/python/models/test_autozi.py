"""AutoZI: the NB/ZINB mixture as one ZINB (values and gradients against the two densities
mixed), the Beta posterior's draws and KL, recovery of known zero-inflated genes from
simulated counts, per-batch zero inflation, save/load, errors, and the marginal likelihood
against scVI's NB fit of the same genes."""
from __future__ import annotations

import contextlib

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.special import betainc
from torch.distributions import Beta, kl_divergence

import cellvi
from cellvi import _constants as C
from cellvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial
from cellvi.modules import AUTOZIVAE
from cellvi.modules._autozivae import effective_zi_logits, sample_beta, sample_log_beta


def simulate_zi(n_cells=1000, n_genes=40, n_zi=20, pi=0.5, seed=0, n_batches=1):
    """NB counts of three cell types (means about 1-20 per cell, inverse dispersion 8); in the
    first ``n_zi`` genes (after shuffling: the genes named ``zi*``) each count is replaced by a
    zero with probability ``pi``. Returns (adata, boolean truth per gene)."""
    rng = np.random.default_rng(seed)
    types = rng.integers(3, size=n_cells)
    profiles = np.exp(rng.normal(np.log(5.0), 0.7, size=(3, n_genes)))
    size = rng.lognormal(0.0, 0.25, size=n_cells)
    mean = size[:, None] * profiles[types]
    theta = 8.0
    counts = rng.poisson(rng.gamma(theta, mean / theta))
    truth = np.zeros(n_genes, dtype=bool)
    truth[:n_zi] = True
    dropped = rng.random((n_cells, n_genes)) < pi
    counts = np.where(dropped & truth, 0, counts).astype(np.float32)
    counts[counts.sum(1) == 0, -1] = 1
    names = np.array([f"zi{j}" if truth[j] else f"nb{j}" for j in range(n_genes)])
    order = rng.permutation(n_genes)
    obs = pd.DataFrame({"batch": [f"b{b}" for b in rng.integers(n_batches, size=n_cells)],
                        "cell_type": [f"t{t}" for t in types]},
                       index=[f"cell{i}" for i in range(n_cells)])
    adata = anndata.AnnData(sp.csr_matrix(counts[:, order]), obs=obs, var=pd.DataFrame(index=names[order]))
    return adata, truth[order]


@contextlib.contextmanager
def one_thread():
    """Tiny networks gain nothing from a second thread, and on a busy machine a thread pool
    waiting on a descheduled thread made 1,200 steps take minutes instead of seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained():
    """(adata, truth, AUTOZI) trained on simulated counts; do not mutate."""
    cellvi.settings.seed = 0
    adata, truth = simulate_zi()
    cellvi.AUTOZI.setup_anndata(adata)
    model = cellvi.AUTOZI(adata, n_latent=5)
    # The Beta posteriors move slowly (noisy reparameterised gradients, as in scvi-tools: on
    # these data both reach about 0.6 of genes right after 300 epochs at lr 1e-3 and 0.85-0.9
    # after 60 epochs at lr 1e-2); 1,200 steps at lr 1e-2 reach 0.95-1 (seeds 0 and 1).
    with one_thread():
        model.train(max_epochs=150, lr=1e-2)
    return adata, truth, model


# -- the math ----------------------------------------------------------------------------------


def _mixture_log_prob(x, mu, theta, zi_logits, delta, m):
    """scvi-tools' AutoZI likelihood written out: log(delta NB(x) + (1 - delta) ZINB(x; pi)),
    pi = m + (1 - m) sigmoid(zi_logits)."""
    pi = m + (1 - m) * torch.sigmoid(zi_logits)
    zinb = ZeroInflatedNegativeBinomial(mu, theta, torch.log(pi) - torch.log1p(-pi)).log_prob(x)
    nb = NegativeBinomial(mu, theta).log_prob(x)
    return torch.logaddexp(torch.log(delta) + nb, torch.log1p(-delta) + zinb)


@pytest.mark.parametrize("m", [0.01, 0.0])
def test_mixture_is_a_zinb_with_effective_zero_inflation(m):
    torch.manual_seed(0)
    n, g = 7, 5
    x = torch.poisson(torch.full((n, g), 1.5))
    x[0] = 0
    mu = torch.rand(n, g, dtype=torch.float64) * 4 + 0.1
    theta = torch.rand(g, dtype=torch.float64) * 5 + 0.5
    zi_logits = (torch.randn(n, g, dtype=torch.float64) * 3).requires_grad_()
    delta = torch.tensor([1e-7, 0.2, 0.5, 0.9, 1 - 1e-7], dtype=torch.float64, requires_grad=True)
    expected = _mixture_log_prob(x.double(), mu, theta, zi_logits, delta, m)
    zi = effective_zi_logits(zi_logits, delta, m)
    got = ZeroInflatedNegativeBinomial(mu, theta, zi).log_prob(x.double())
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # Gradients away from delta = 1 (there the extra zeros' mass, 1e-9, is below the
    # precision of the ZINB's softplus, which is linear above 20).
    delta = torch.tensor([1e-7, 0.2, 0.5, 0.9, 0.999], dtype=torch.float64, requires_grad=True)
    expected = _mixture_log_prob(x.double(), mu, theta, zi_logits, delta, m)
    got = ZeroInflatedNegativeBinomial(mu, theta, effective_zi_logits(zi_logits, delta, m)).log_prob(x.double())
    g_expected = torch.autograd.grad(expected.sum(), (zi_logits, delta))
    g_got = torch.autograd.grad(got.sum(), (zi_logits, delta))
    for a, b in zip(g_got, g_expected):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    zi = effective_zi_logits(zi_logits, delta, m)
    # the training path (fused, non-zeros only) gives the same per-cell sums
    xs = sp.csr_matrix(x.numpy())
    rows = np.repeat(np.arange(n), np.diff(xs.indptr))
    nz_index = torch.from_numpy(rows * g + xs.indices)
    nz_value = torch.from_numpy(xs.data).double()
    fused = ZeroInflatedNegativeBinomial(mu, theta, zi).log_prob_per_cell(x.double(), nz_index, nz_value)
    torch.testing.assert_close(fused, expected.sum(-1), rtol=1e-9, atol=1e-8)


def test_effective_zero_inflation_is_finite_at_extreme_logits():
    zi_logits = torch.tensor([[-80.0, -20.0, 0.0, 20.0, 80.0]], requires_grad=True)
    delta = torch.tensor([1e-7, 0.3, 0.5, 0.7, 1 - 1e-7], requires_grad=True)
    for m in (0.01, 0.0):
        zi = effective_zi_logits(zi_logits, delta, m)
        assert torch.isfinite(zi).all()
        grads = torch.autograd.grad(zi.sum(), (zi_logits, delta))
        assert all(torch.isfinite(gr).all() for gr in grads)
    # delta near 1: no zero inflation left; delta near 0: the ZINB's own
    zi = effective_zi_logits(torch.zeros(1, 2), torch.tensor([1 - 1e-7, 1e-7]), 0.0)
    assert torch.sigmoid(zi)[0, 0] < 1e-6
    torch.testing.assert_close(torch.sigmoid(zi)[0, 1], torch.tensor(0.5), atol=1e-6, rtol=0)


def test_beta_draws_have_the_posterior_mean_and_a_gradient():
    torch.manual_seed(0)
    alpha = torch.tensor([0.3, 0.5, 0.9], requires_grad=True)
    beta = torch.tensor([0.8, 0.5, 0.2], requires_grad=True)
    draws = sample_beta(alpha, beta, (20000,))
    assert draws.shape == (20000, 3)
    assert (draws >= 1e-7).all() and (draws <= 1).all()
    # log(1 - delta) is exact where a float32 delta is too close to 1 to tell 1 - delta
    log_delta, log_rest = sample_log_beta(torch.tensor([0.99]), torch.tensor([0.01]), (5000,))
    assert (torch.exp(log_delta) > 1 - 2e-7).float().mean() > 0.5
    assert torch.isfinite(log_rest).all() and log_rest.min() >= np.log(1e-7) - 1e-4
    torch.testing.assert_close(torch.exp(log_delta) + torch.exp(log_rest), torch.ones(5000, 1))
    mean = (alpha / (alpha + beta)).detach()
    torch.testing.assert_close(draws.mean(0).detach(), mean, atol=0.015, rtol=0)
    draws.mean(0).sum().backward()
    assert torch.isfinite(alpha.grad).all() and torch.isfinite(beta.grad).all()
    # d E[delta] / d alpha = beta / (alpha + beta)^2 (reparameterised draws carry it)
    expected = (beta / (alpha + beta) ** 2).detach()
    torch.testing.assert_close(alpha.grad, expected, atol=0.05, rtol=0.1)


def test_module_loss_parts():
    torch.manual_seed(0)
    module = AUTOZIVAE(6, n_batch=2, n_latent=3, n_hidden=8, zero_inflation="gene-batch")
    x = torch.poisson(torch.full((4, 6), 2.0))
    x[:, 0] += 1
    tensors = {C.X_KEY: x, C.BATCH_KEY: torch.tensor([0, 1, 1, 0]), C.LABELS_KEY: torch.zeros(4, dtype=torch.long)}
    module.eval()
    inf, gen, out = module(tensors, n_obs=50)
    assert gen["delta"].shape == (6, 2)
    dist = gen["dist"]
    delta_cells = gen["delta"].T[tensors[C.BATCH_KEY]]
    # the reconstruction is the two densities mixed with the drawn delta of each cell's batch
    raw = module.decoder(inf["z"], [tensors[C.BATCH_KEY]])[2]
    expected = _mixture_log_prob(x, dist.mu, dist.theta, raw, delta_cells, 0.01).sum(-1)
    torch.testing.assert_close(-out.reconstruction_loss, expected, rtol=1e-4, atol=1e-4)
    ab = module.alphas_betas()
    kl = kl_divergence(Beta(ab["alpha_posterior"], ab["beta_posterior"]),
                       Beta(torch.full((6, 2), 0.5), torch.full((6, 2), 0.5))).sum()
    torch.testing.assert_close(out.kl_global, kl)
    kl_z = 0.5 * (inf["qz_var"] + inf["qz_mean"] ** 2 - 1 - torch.log(inf["qz_var"])).sum(-1)
    torch.testing.assert_close(out.loss, (out.reconstruction_loss + kl_z).mean() + kl / 50)


def test_priors():
    m = AUTOZIVAE(3, alpha_prior=0.3, beta_prior=None)
    ab = m.alphas_betas()
    torch.testing.assert_close(ab["alpha_prior"], torch.tensor([0.3]))
    torch.testing.assert_close(ab["beta_prior"], torch.tensor([0.7]))
    # scvi-tools' per-gene module takes the prior's beta from alpha_prior; here it is beta_prior
    ab = AUTOZIVAE(3, alpha_prior=0.2, beta_prior=0.6).alphas_betas()
    torch.testing.assert_close(ab["beta_prior"], torch.tensor([0.6]))
    learned = AUTOZIVAE(3, n_labels=4, alpha_prior=None, beta_prior=None, zero_inflation="gene-label")
    names = dict(learned.named_parameters())
    assert names["alpha_prior_logit"].shape == (1, 4) and names["beta_prior_logit"].shape == (1, 4)


# -- the model ------------------------------------------------------------------------------------


def test_calls_recover_the_zero_inflated_genes(trained):
    adata, truth, model = trained
    calls = model.get_zero_inflation()
    assert list(calls.columns) == ["alpha_posterior", "beta_posterior", "prob_zi", "is_zi"]
    assert list(calls.index) == list(adata.var_names)
    accuracy = (calls["is_zi"].to_numpy() == truth).mean()
    assert accuracy >= 0.9, calls.assign(truth=truth)
    # confident: the zero-inflated genes' probabilities far above the others'
    assert calls["prob_zi"][truth].median() > 0.8 and calls["prob_zi"][~truth].median() < 0.3
    ab = model.get_alphas_betas()
    assert set(ab) == {"alpha_posterior", "beta_posterior", "alpha_prior", "beta_prior"}
    assert ab["alpha_posterior"].shape == (adata.n_vars,)
    np.testing.assert_allclose(calls["prob_zi"], betainc(ab["alpha_posterior"].astype(float),
                                                         ab["beta_posterior"].astype(float), 0.5))
    # a stricter call is a subset
    strict = model.get_zero_inflation(prob_threshold=0.99)["is_zi"]
    assert (~strict | calls["is_zi"]).all()
    hist = model.history
    assert np.isfinite(hist["elbo_validation"]).all() and (hist["kl_global_train"] > 0).all()


def test_latent_and_expression(trained):
    adata, _, model = trained
    latent = model.get_latent_representation()
    assert latent.shape == (adata.n_obs, 5) and np.isfinite(latent).all()
    expr = model.get_normalized_expression(n_samples=2, return_numpy=True)
    assert expr.shape == (adata.n_obs, adata.n_vars)
    np.testing.assert_allclose(expr.sum(1), 1.0, rtol=1e-4)
    # "dropout" is the ZINB component's probability, so at least minimal_dropout (the
    # mixture's, (1 - delta) pi, falls below it for genes whose delta is near 1)
    params = model.get_likelihood_parameters(indices=np.arange(20), n_samples=3, give_mean=True)
    assert params["dropout"].shape == (20, adata.n_vars)
    assert (params["dropout"] >= 0.01 - 1e-6).all() and (params["dropout"] <= 1).all()


def test_save_load(trained, tmp_path):
    adata, _, model = trained
    model.save(tmp_path / "autozi")
    loaded = cellvi.AUTOZI.load(tmp_path / "autozi", adata)
    pd.testing.assert_frame_equal(loaded.get_zero_inflation(), model.get_zero_inflation())
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-5)
    bare = cellvi.load_model(tmp_path / "autozi")
    assert type(bare) is cellvi.AUTOZI and bare.is_trained
    pd.testing.assert_frame_equal(bare.get_zero_inflation(), model.get_zero_inflation())
    assert bare.init_kwargs["alpha_prior"] == 0.5 and bare.init_kwargs["zero_inflation"] == "gene"


def test_per_batch_zero_inflation_and_learned_prior(tmp_path):
    cellvi.settings.seed = 0
    adata, truth = simulate_zi(n_cells=400, n_genes=12, n_zi=6, n_batches=2)
    cellvi.AUTOZI.setup_anndata(adata, batch_key="batch")
    model = cellvi.AUTOZI(adata, n_latent=3, n_hidden=32, zero_inflation="gene-batch",
                          alpha_prior=None, beta_prior=None)
    with one_thread():
        model.train(max_epochs=3)
    ab = model.get_alphas_betas()
    assert ab["alpha_posterior"].shape == (12, 2) and ab["alpha_prior"].shape == (1, 2)
    calls = model.get_zero_inflation()
    assert list(calls.columns) == [f"{c}_{b}" for c in ("alpha_posterior", "beta_posterior", "prob_zi", "is_zi")
                                   for b in ("b0", "b1")]
    model.save(tmp_path / "gb")
    loaded = cellvi.load_model(tmp_path / "gb", adata)
    pd.testing.assert_frame_equal(loaded.get_zero_inflation(), calls)
    assert np.isfinite(model.get_marginal_ll(n_mc_samples=5))


def test_marginal_ll_against_scvi_nb():
    """On counts with zero-inflated genes, AutoZI's held-out log p(x) is comparable with (and
    here above) that of scVI's NB fit of the same genes; the estimate is per cell."""
    cellvi.settings.seed = 0
    adata, _ = simulate_zi(n_cells=800, seed=1)
    cellvi.AUTOZI.setup_anndata(adata)
    with one_thread():
        autozi = cellvi.AUTOZI(adata, n_latent=5).train(max_epochs=40, lr=1e-2)
        cellvi.SCVI.setup_anndata(adata)
        nb = cellvi.SCVI(adata, n_latent=5, gene_likelihood="nb")
        nb.train(max_epochs=40, lr=1e-2, plan_kwargs={"kl_warmup_cap": None})  # AutoZI's warm-up
    held_out = autozi.validation_indices
    np.testing.assert_array_equal(held_out, nb.validation_indices)  # same seeded split
    per_cell = autozi.get_marginal_ll(indices=held_out, n_mc_samples=50, return_mean=False)
    assert per_cell.shape == (len(held_out),) and np.isfinite(per_cell).all()
    ll_autozi = per_cell.mean()
    ll_nb = nb.get_marginal_ll(indices=held_out, n_mc_samples=50)
    # the same scale (nats per cell over 40 genes), and zero inflation is worth something
    assert abs(ll_autozi - ll_nb) < 0.1 * abs(ll_nb)
    assert ll_autozi > ll_nb
    # and the importance-sampled estimate lies above the ELBO
    assert ll_autozi > autozi.get_elbo(indices=held_out)


def test_errors_name_the_problem(sim):
    cellvi.AUTOZI.setup_anndata(sim)
    with pytest.raises(ValueError, match="gene-cell"):
        cellvi.AUTOZI(sim, zero_inflation="gene-cell")
    with pytest.raises(ValueError, match="zero_inflation must be one of"):
        cellvi.AUTOZI(sim, zero_inflation="cell")
    with pytest.raises(ValueError, match="alpha_prior must be a number strictly between 0 and 1"):
        cellvi.AUTOZI(sim, alpha_prior=1.5)
    with pytest.raises(ValueError, match="minimal_dropout"):
        cellvi.AUTOZI(sim, minimal_dropout=-0.1)
    with pytest.raises(TypeError, match="no gene_likelihood"):
        cellvi.AUTOZI(sim, gene_likelihood="nb")
    for mode, key in (("gene-batch", "batch_key"), ("gene-label", "labels_key")):
        with pytest.raises(ValueError, match=f"needs groups of cells: pass {key}="):
            cellvi.AUTOZI(sim, zero_inflation=mode)
    model = cellvi.AUTOZI(sim)
    with pytest.raises(ValueError, match="threshold must be a number strictly between 0 and 1"):
        model.get_zero_inflation(threshold=1.0)
    cellvi.SCVI.setup_anndata(sim)
    with pytest.raises(ValueError, match="set up with SCVI.setup_anndata, not AUTOZI.setup_anndata"):
        cellvi.AUTOZI(sim)
    with pytest.raises(KeyError, match="obs column 'nope'"):
        cellvi.AUTOZI.setup_anndata(sim, batch_key="nope")
