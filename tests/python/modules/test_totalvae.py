"""totalVI's module: shapes and finiteness of every output, the loss terms as scvi-tools 1.4
defines them (encoder input, protein efficiencies, background and mixing penalties, warm-up
weights), the protein batch mask and panels, sample dimensions, the sparse RNA path, a few
optimiser steps, the marginal likelihood, and the empirical prior of the protein background."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cellvi import _constants as C
from cellvi.distributions import NegativeBinomial, NegativeBinomialMixture, ZeroInflatedNegativeBinomial
from cellvi.modules import TOTALVAE, protein_background_prior
from cellvi.modules._totalvae import PANEL_KEY, _two_gaussians
from cellvi.nn import TotalVIDecoder

N_CELLS, N_GENES, N_PROTEINS = 64, 50, 8


def simulate(n=N_CELLS, g=N_GENES, p=N_PROTEINS, n_batch=2, seed=0, sparse_keys=False):
    """Tensor dict of CITE-seq-like counts from three cell types: RNA NB, proteins a mixture
    of a background (log rate ~ N(1, 0.3)) and a type-specific foreground."""
    rng = np.random.default_rng(seed)
    types = rng.integers(3, size=n)
    batch = rng.integers(n_batch, size=n)
    profiles = rng.gamma(0.6, 1.0, size=(3, g))
    library = rng.lognormal(np.log(400), 0.3, size=n)
    mean = profiles[types] / profiles[types].sum(1, keepdims=True) * library[:, None]
    x = rng.poisson(rng.gamma(5.0, mean / 5.0)).astype(np.float32)
    x[x.sum(1) == 0, 0] = 1
    back = np.exp(rng.normal(1.0, 0.3, size=(n, p)))
    fore = back * np.where(rng.random((3, p)) < 0.5, 20.0, 1.5)[types]
    y = rng.poisson(np.where(rng.random((n, p)) < 0.4, back, fore)).astype(np.float32)
    tensors = {
        C.X_KEY: torch.tensor(x), C.PROTEIN_KEY: torch.tensor(y),
        C.BATCH_KEY: torch.tensor(batch, dtype=torch.int64),
        C.LABELS_KEY: torch.tensor(types, dtype=torch.int64),
    }
    if sparse_keys:
        flat = torch.nonzero(tensors[C.X_KEY].reshape(-1)).squeeze(1)
        tensors[C.X_NZ_INDEX_KEY], tensors[C.X_NZ_VALUE_KEY] = flat, tensors[C.X_KEY].reshape(-1)[flat]
    return tensors


def small_module(**kwargs) -> TOTALVAE:
    torch.manual_seed(0)
    kwargs = {"n_batch": 2, "n_labels": 3, "n_hidden": 32, "n_latent": 5, **kwargs}
    return TOTALVAE(N_GENES, N_PROTEINS, **kwargs)


def library_prior(tensors, n_batch=2):
    log_lib = torch.log(tensors[C.X_KEY].sum(1)).numpy()
    codes = tensors[C.BATCH_KEY].numpy()
    return (np.array([log_lib[codes == b].mean() for b in range(n_batch)]),
            np.array([log_lib[codes == b].var() for b in range(n_batch)]))


def forward(module, tensors, seed=0, **kwargs):
    torch.manual_seed(seed)
    return module(tensors, **kwargs)


@pytest.mark.parametrize("options", [
    {},
    {"gene_likelihood": "zinb"},
    {"gene_dispersion": "gene-batch", "protein_dispersion": "protein-label"},
    {"gene_dispersion": "gene-label", "protein_dispersion": "protein-batch", "latent_distribution": "ln"},
    {"use_batch_norm": "none", "use_layer_norm": "both", "encode_covariates": False},
    {"use_observed_lib_size": False},
])
def test_forward_returns_finite_per_cell_parts(options):
    tensors = simulate()
    if not options.get("use_observed_lib_size", True):
        options = {**options, **dict(zip(("library_log_means", "library_log_vars"), library_prior(tensors)))}
    module = small_module(**options)
    inf, gen, out = forward(module, tensors)
    n = N_CELLS
    assert inf["qz_mean"].shape == inf["z"].shape == (n, 5) and inf["library"].shape == (n, 1)
    assert ("ql_mean" in inf) == (not options.get("use_observed_lib_size", True))
    for key in ("scale", "rate"):
        assert gen[key].shape == (n, N_GENES)
    for key in ("back_alpha", "back_beta", "rate_back", "fore_scale", "rate_fore", "mixing"):
        assert gen[key].shape == (n, N_PROTEINS) and torch.isfinite(gen[key]).all()
    torch.testing.assert_close(gen["scale"].sum(-1), torch.ones(n))
    assert torch.all(gen["back_beta"] > 0) and torch.all(gen["fore_scale"] >= 1)
    torch.testing.assert_close(gen["rate_fore"], gen["rate_back"] * gen["fore_scale"])
    assert isinstance(gen["protein_dist"], NegativeBinomialMixture)
    # efficiencies start at 1: the scaled rates are the rates
    torch.testing.assert_close(gen["protein_efficiency"], torch.ones(n, N_PROTEINS))
    torch.testing.assert_close(gen["rate_back_scaled"], gen["rate_back"])
    torch.testing.assert_close(gen["protein_dist"].mu2, gen["rate_fore_scaled"])
    torch.testing.assert_close(module.z_transform(inf["untran_z"]), inf["z"])
    assert module.latent_distribution == options.get("latent_distribution", "normal")
    zinb = options.get("gene_likelihood") == "zinb"
    assert isinstance(gen["dist"], ZeroInflatedNegativeBinomial if zinb else NegativeBinomial)
    assert (gen["dropout"] is not None) == zinb
    assert gen["theta_protein"].shape[-1] == N_PROTEINS
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.reconstruction_loss.shape == out.kl_local.shape == (n,)
    assert torch.isfinite(out.reconstruction_loss).all() and torch.isfinite(out.kl_local).all()
    assert torch.all(out.kl_local >= 0)
    metrics = out.extra_metrics
    assert set(metrics) == {"reconstruction_loss_rna", "reconstruction_loss_protein"}
    torch.testing.assert_close(metrics["reconstruction_loss_rna"] + metrics["reconstruction_loss_protein"],
                               out.reconstruction_loss.mean().detach())
    out.loss.backward()  # gradients reach the background prior and the dispersions
    assert module.background_pro_alpha.grad is not None and module.py_r.grad is not None


def test_covariates_and_size_factors():
    tensors = simulate()
    rng = np.random.default_rng(1)
    tensors[C.CAT_COVS_KEY] = torch.tensor(rng.integers(3, size=(N_CELLS, 2)), dtype=torch.int64)
    tensors[C.CONT_COVS_KEY] = torch.tensor(rng.normal(size=(N_CELLS, 1)), dtype=torch.float32)
    tensors[C.SIZE_FACTOR_KEY] = torch.tensor(rng.uniform(0.5, 2, size=N_CELLS), dtype=torch.float32)
    module = small_module(n_continuous_cov=1, n_cats_per_cov=(3, 3), use_size_factor_key=True,
                          use_observed_lib_size=False)  # size factors: never a learned library
    assert not hasattr(module, "l_encoder")
    module.eval()
    _, gen, out = forward(module, tensors)
    torch.testing.assert_close(gen["rate"], gen["scale"] * tensors[C.SIZE_FACTOR_KEY][:, None])
    assert torch.isfinite(out.loss)
    # with size factors the expression is softplus of the logits, not a softmax over genes
    inf = module.inference(**module.inference_inputs(tensors))
    gen = module.generative(**module.generative_inputs(tensors, inf))
    dec_in = torch.cat([inf["z"], tensors[C.CONT_COVS_KEY]], dim=-1)
    cats = [tensors[C.BATCH_KEY], *tensors[C.CAT_COVS_KEY].unbind(-1)]
    torch.testing.assert_close(gen["scale"], torch.nn.functional.softplus(module.decoder.gene_logits(dec_in, cats)))
    assert not torch.allclose(gen["scale"].sum(-1), torch.ones(N_CELLS))
    only = module.generative(**module.generative_inputs(tensors, inf), likelihood=False)["scale"]
    torch.testing.assert_close(only, gen["scale"])
    by_gene = module.generative(**module.generative_inputs(tensors, inf), genes_major=True)["scale_by_gene"]
    torch.testing.assert_close(by_gene, gen["scale"].t())


def reference_loss_parts(module, tensors, inf, gen, panel):
    """The per-cell terms as scvi-tools 1.4's TOTALVAE writes them, from torch.distributions."""
    from torch.distributions import Bernoulli, LogNormal, Normal, kl_divergence

    batch = tensors[C.BATCH_KEY]
    mask = (module.protein_batch_mask[panel] > 0 if module.protein_batch_mask is not None
            else torch.ones(N_CELLS, N_PROTEINS, dtype=torch.bool))
    efficiency = torch.exp(module.log_per_batch_efficiency).T[batch]
    protein = NegativeBinomialMixture(efficiency * gen["rate_back"], efficiency * gen["rate_fore"],
                                      gen["theta_protein"], gen["mixing"])
    rec_gene = -gen["dist"].log_prob(tensors[C.X_KEY]).sum(-1)
    rec_protein = -(protein.log_prob(tensors[C.PROTEIN_KEY]) * mask).sum(-1)
    kl_z = kl_divergence(Normal(inf["qz_mean"], inf["qz_var"].sqrt()), Normal(0.0, 1.0)).sum(-1)
    prior = Normal(module.background_pro_alpha.T[panel], torch.exp(module.background_pro_log_beta.T[panel]))
    kl_back = (kl_divergence(Normal(gen["back_alpha"], gen["back_beta"]), prior) * mask).sum(-1)
    kl_back = kl_back - LogNormal(0.0, 1.0).log_prob(efficiency).sum(-1)
    kl_back = kl_back - 1e-3 * Bernoulli(logits=gen["mixing"]).log_prob(torch.ones_like(gen["mixing"])).sum(-1)
    return rec_gene, rec_protein, kl_z, kl_back


@pytest.mark.parametrize("panels", [False, True])
def test_loss_terms_as_scvi_tools_defines_them(panels):
    """Masked protein likelihood with the batch efficiencies, masked background KL plus the
    unmasked efficiency prior and mixing penalty; warm-up weights on protein reconstruction,
    KL(z) and the background term; ELBO = -(reconstruction + kl_local) unweighted."""
    tensors = simulate()
    n_panel = 3 if panels else 2
    mask = np.ones((n_panel, N_PROTEINS), dtype=bool)
    mask[1, 5:] = False
    options = {"protein_batch_mask": mask}
    if panels:
        tensors[PANEL_KEY] = torch.tensor(np.random.default_rng(2).integers(3, size=N_CELLS))
        mask[2, :2] = False
        options["n_panel"] = 3
    module = small_module(**options).eval()
    with torch.no_grad():
        module.log_per_batch_efficiency.normal_(0.0, 0.5)
        module.background_pro_alpha.normal_(1.0, 0.5)
        module.background_pro_log_beta.normal_(-0.5, 0.3)
    panel = tensors[PANEL_KEY] if panels else tensors[C.BATCH_KEY]
    inf, gen, out = forward(module, tensors, kl_weight=0.3, protein_reconstruction_weight=2.0)
    rec_gene, rec_protein, kl_z, kl_back = reference_loss_parts(module, tensors, inf, gen, panel)
    torch.testing.assert_close(out.reconstruction_loss, rec_gene + rec_protein)
    torch.testing.assert_close(out.kl_local, kl_z + kl_back)
    torch.testing.assert_close(out.loss, torch.mean(rec_gene + 0.3 * 2.0 * rec_protein + 0.3 * (kl_z + kl_back)))
    # no warm-up weight: everything counts once
    full = module.loss(tensors, inf, gen, kl_weight=1.0)
    torch.testing.assert_close(full.loss, (full.reconstruction_loss + full.kl_local).mean())


def test_learned_library_kl_is_never_weighted():
    tensors = simulate()
    means, variances = library_prior(tensors)
    module = small_module(use_observed_lib_size=False, library_log_means=means, library_log_vars=variances).eval()
    inf, gen, _ = forward(module, tensors)
    out = module.loss(tensors, inf, gen, kl_weight=0.0)
    batch = tensors[C.BATCH_KEY]
    prior = torch.distributions.Normal(torch.as_tensor(means, dtype=torch.float32)[batch][:, None],
                                       torch.as_tensor(variances, dtype=torch.float32)[batch][:, None].sqrt())
    kl_l = torch.distributions.kl_divergence(torch.distributions.Normal(inf["ql_mean"], inf["ql_var"].sqrt()),
                                             prior).sum(-1)
    rec_gene = -gen["dist"].log_prob(tensors[C.X_KEY]).sum(-1)
    torch.testing.assert_close(out.loss, torch.mean(rec_gene + kl_l))


@pytest.mark.parametrize("log_variational", [True, False])
def test_encoder_reads_counts_scaled_by_their_cell_mean(log_variational):
    tensors = simulate()
    module = small_module(log_variational=log_variational).eval()
    x, y = tensors[C.X_KEY], tensors[C.PROTEIN_KEY]
    expected = torch.cat([x / (1 + x.mean(1, keepdim=True)), y / (1 + y.mean(1, keepdim=True))], dim=1)
    if log_variational:
        expected = torch.log1p(expected)
    torch.testing.assert_close(module.encoder_input(x, y), expected)
    inf = module.inference(**module.inference_inputs(tensors))
    qz_mean, qz_var = module.z_encoder(expected, [tensors[C.BATCH_KEY]])
    torch.testing.assert_close(inf["qz_mean"], qz_mean)
    torch.testing.assert_close(inf["qz_var"], qz_var)


def test_initial_background_prior_and_efficiencies():
    module = small_module()
    assert module.n_panel == 2
    torch.testing.assert_close(module.background_pro_alpha.detach(), torch.full((N_PROTEINS, 2), 3.0))
    torch.testing.assert_close(module.background_pro_log_beta.detach(), torch.zeros(N_PROTEINS, 2))
    torch.testing.assert_close(module.log_per_batch_efficiency.detach(), torch.zeros(N_PROTEINS, 2))
    panels = small_module(n_panel=3)
    assert panels.background_pro_alpha.shape == (N_PROTEINS, 3)
    assert panels.log_per_batch_efficiency.shape == (N_PROTEINS, 2)
    with pytest.raises(ValueError, match="panel"):
        forward(panels, simulate())  # three panels, and no panel codes in the tensors
    with pytest.raises(ValueError, match="n_panel"):
        small_module(n_panel=3, protein_batch_mask=np.ones((2, N_PROTEINS), dtype=bool))


def test_efficiency_scales_the_likelihood_not_the_normalized_rates():
    tensors = simulate()
    module = small_module().eval()
    inf = module.inference(**module.inference_inputs(tensors))
    torch.manual_seed(4)
    plain = module.generative(**module.generative_inputs(tensors, inf))
    with torch.no_grad():
        module.log_per_batch_efficiency[:, 1] = torch.linspace(-1, 1, N_PROTEINS)
    torch.manual_seed(4)
    gen = module.generative(**module.generative_inputs(tensors, inf))
    torch.testing.assert_close(gen["rate_back"], plain["rate_back"])
    torch.testing.assert_close(gen["rate_fore"], plain["rate_fore"])
    efficiency = torch.where((tensors[C.BATCH_KEY] == 1)[:, None], torch.exp(torch.linspace(-1, 1, N_PROTEINS)),
                             torch.ones(N_PROTEINS))
    torch.testing.assert_close(gen["protein_efficiency"], efficiency)
    torch.testing.assert_close(gen["rate_back_scaled"], efficiency * gen["rate_back"])
    torch.testing.assert_close(gen["rate_fore_scaled"], efficiency * gen["rate_fore"])
    torch.testing.assert_close(gen["protein_dist"].mu1, gen["rate_back_scaled"])
    # the efficiency follows the batch the cells are decoded in
    torch.manual_seed(4)
    moved = module.generative(**module.generative_inputs(tensors, inf, transform_batch=1))
    torch.testing.assert_close(moved["protein_efficiency"][0], torch.exp(torch.linspace(-1, 1, N_PROTEINS)))


def test_background_sd_activation():
    torch.manual_seed(0)
    z = torch.randn(10, 4)
    for activation, fn in (("softplus", torch.nn.functional.softplus), ("exp", torch.exp)):
        torch.manual_seed(0)
        decoder = TotalVIDecoder(4, 6, 3, (2,), n_hidden=8, activation_function_bg=activation).eval()
        cats = [torch.zeros(10, dtype=torch.int64)]
        out = decoder(z, cats)
        raw = decoder.back_log_beta(torch.cat([decoder.back_hidden(z, cats), z], dim=-1), cats)
        torch.testing.assert_close(out["back_beta"], fn(raw) + 1e-8)
    module = small_module(extra_decoder_kwargs={"activation_function_bg": "exp"})
    assert module.decoder.activation_function_bg == "exp"
    with pytest.raises(ValueError, match="activation_function_bg"):
        TotalVIDecoder(4, 6, 3, activation_function_bg="relu")


def test_sparse_rna_path_matches_dense():
    module = small_module(gene_likelihood="zinb").eval()
    dense, sparse = simulate(), simulate(sparse_keys=True)
    out_dense, out_sparse = forward(module, dense)[2], forward(module, sparse)[2]
    torch.testing.assert_close(out_sparse.reconstruction_loss, out_dense.reconstruction_loss)
    torch.testing.assert_close(out_sparse.loss, out_dense.loss)


def test_unmeasured_proteins_do_not_enter_the_loss():
    """Batch 1 measured only the first 5 proteins: its other counts and its prior for them
    change nothing (given the same posterior and decoder draws)."""
    mask = np.ones((2, N_PROTEINS), dtype=bool)
    mask[1, 5:] = False
    module = small_module(protein_batch_mask=mask).eval()
    assert "protein_batch_mask" in module.state_dict()
    tensors = simulate()
    inf, gen, out = forward(module, tensors)
    changed = dict(tensors)
    y = tensors[C.PROTEIN_KEY].clone()
    in_b1 = tensors[C.BATCH_KEY] == 1
    y[in_b1, 5:] = y[in_b1, 5:] * 7 + 100
    changed[C.PROTEIN_KEY] = y
    again = module.loss(changed, inf, gen)
    torch.testing.assert_close(again.reconstruction_loss, out.reconstruction_loss)
    torch.testing.assert_close(again.kl_local, out.kl_local)
    # while a measured protein's counts do count
    y2 = tensors[C.PROTEIN_KEY].clone()
    y2[in_b1, 0] += 100
    assert not torch.allclose(module.loss({**tensors, C.PROTEIN_KEY: y2}, inf, gen).reconstruction_loss,
                              out.reconstruction_loss)
    out.loss.backward()
    grad = module.background_pro_alpha.grad
    assert torch.all(grad[5:, 1] == 0) and torch.all(grad[:5, 1] != 0) and torch.all(grad[:, 0] != 0)
    # without a mask every protein counts
    full = small_module().eval()
    inf, gen, out = forward(full, tensors)
    assert not torch.allclose(full.loss(changed, inf, gen).reconstruction_loss, out.reconstruction_loss)


def test_sample_dimensions():
    tensors = simulate()
    for options in ({}, {"use_observed_lib_size": False, **dict(zip(("library_log_means", "library_log_vars"),
                                                                      library_prior(tensors)))}):
        module = small_module(gene_dispersion="gene-batch", **options).eval()
        inf = module.inference(**module.inference_inputs(tensors), n_samples=3)
        assert inf["z"].shape == (3, N_CELLS, 5) and inf["library"].shape == (3, N_CELLS, 1)
        gen = module.generative(**module.generative_inputs(tensors, inf))
        assert gen["rate"].shape == (3, N_CELLS, N_GENES)
        for key in ("rate_back", "rate_fore", "mixing", "back_alpha"):
            assert gen[key].shape == (3, N_CELLS, N_PROTEINS)
        assert gen["dist"].log_prob(tensors[C.X_KEY]).shape == (3, N_CELLS, N_GENES)
        assert gen["protein_dist"].log_prob(tensors[C.PROTEIN_KEY]).shape == (3, N_CELLS, N_PROTEINS)
        out = module.loss(tensors, inf, gen)
        assert out.reconstruction_loss.shape == out.kl_local.shape == (N_CELLS,)
        assert torch.isfinite(out.loss)
        # sample 1 of the 3 decoded alone gives the same parameters
        one = {"z": inf["z"][1], "library": inf["library"][1]}
        torch.manual_seed(0)
        gen1 = module.generative(**module.generative_inputs(tensors, one))
        torch.testing.assert_close(gen1["rate"], gen["rate"][1])
        torch.testing.assert_close(gen1["back_alpha"], gen["back_alpha"][1])
        # fresh draws of chosen cells without encoding again; the gene-only outputs
        rows = torch.tensor([0, 0, 5])
        res = module.resample_inference(module.inference(**module.inference_inputs(tensors)), rows, n_samples=4)
        assert res["z"].shape == (4, 3, 5) and res["library"].shape == (4, 3, 1)
        assert not torch.equal(res["z"][:, 0], res["z"][:, 1])
        sub = {k: v[rows] for k, v in tensors.items()}
        scale = module.generative(**module.generative_inputs(sub, res), likelihood=False)["scale"]
        assert scale.shape == (4, 3, N_GENES)
        by_gene = module.generative(**module.generative_inputs(sub, res), genes_major=True)["scale_by_gene"]
        torch.testing.assert_close(by_gene, scale.movedim(-1, 0))


def test_a_few_optimiser_steps_lower_the_loss():
    tensors = simulate(n=128, seed=3)
    module = small_module()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)

    def evaluate():
        module.eval()
        with torch.no_grad():
            value = np.mean([forward(module, tensors, seed=s)[2].loss.item() for s in range(5)])
        module.train()
        return value

    before = evaluate()
    torch.manual_seed(1)
    for _ in range(40):
        loss = module(tensors)[2].loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert np.isfinite(after) and after < 0.8 * before


@pytest.mark.parametrize("observed", [True, False])
def test_marginal_ll_is_finite_and_above_the_elbo(observed):
    torch.manual_seed(0)  # the initial weights: independent of the tests that ran before
    tensors = simulate()
    options = {} if observed else dict(zip(("library_log_means", "library_log_vars"), library_prior(tensors)),
                                       use_observed_lib_size=False)
    mask = np.ones((2, N_PROTEINS), dtype=bool)
    mask[1, 6:] = False
    module = small_module(protein_batch_mask=mask, **options)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(50):  # a briefly trained posterior, so that the ELBO is not far off
        loss = module(tensors)[2].loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    torch.manual_seed(0)
    log_p = module.marginal_ll(tensors, n_mc_samples=200, chunk=64)
    assert log_p.shape == (N_CELLS,) and torch.isfinite(log_p).all()
    again = module.marginal_ll(tensors, n_mc_samples=200, chunk=200)
    assert (log_p - again).abs().mean() < 0.05 * log_p.abs().mean()
    with torch.no_grad():
        elbo = torch.stack([forward(module, tensors, seed=s)[2].elbo for s in range(30)]).mean(0)
    # Jensen: E log w <= log E w, so the estimate sits above the ELBO, but not far above.
    assert log_p.mean() > elbo.mean()
    # (0.136-0.159 of |ELBO| over seeds 0-4 after 50 steps of this small module)
    assert (log_p - elbo).mean() < 0.2 * elbo.abs().mean()


def test_background_prior_given_to_the_module():
    mean = np.tile(np.array([[0.5, 1.5]], dtype=np.float32), (N_PROTEINS, 1))
    scale = np.full((N_PROTEINS, 2), 0.2, dtype=np.float32)
    module = small_module(protein_background_prior_mean=mean, protein_background_prior_scale=scale)
    np.testing.assert_allclose(module.background_pro_alpha.detach().numpy(), mean)
    np.testing.assert_allclose(module.background_pro_log_beta.detach().exp().numpy(), scale, rtol=1e-6)
    shared = small_module(protein_background_prior_mean=mean[:, 0], protein_background_prior_scale=scale[:, 0])
    assert shared.background_pro_alpha.shape == (N_PROTEINS, 1)
    assert torch.isfinite(forward(shared, simulate())[2].loss)
    with pytest.raises(ValueError):
        small_module(protein_background_prior_mean=mean)
    with pytest.raises(ValueError):
        small_module(protein_batch_mask=np.ones((3, N_PROTEINS), dtype=bool))
    with pytest.raises(ValueError):
        small_module(gene_dispersion="gene-cell")
    with pytest.raises(ValueError):
        small_module(use_observed_lib_size=False)


def test_state_dict_round_trip():
    mask = np.ones((2, N_PROTEINS), dtype=bool)
    mask[0, :2] = False
    module = small_module(protein_batch_mask=mask).eval()
    arrays = {k: v.numpy().copy() for k, v in module.state_dict().items()}  # as saved to .npz
    torch.manual_seed(5)
    fresh = TOTALVAE(N_GENES, N_PROTEINS, n_batch=2, n_labels=3, n_hidden=32, n_latent=5,
                     protein_batch_mask=mask)
    fresh.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
    fresh.eval()
    tensors = simulate()
    torch.testing.assert_close(forward(fresh, tensors)[2].loss, forward(module, tensors)[2].loss)


# -- the empirical prior of the protein background ------------------------------------------

def two_component_proteins(n, n_back=30, n_fore=10, seed=0):
    """log1p counts: background ~ N(1, 0.3), foreground ~ N(4, 0.5)."""
    rng = np.random.default_rng(seed)
    log1p = np.concatenate([rng.normal(1.0, 0.3, size=(n, n_back)), rng.normal(4.0, 0.5, size=(n, n_fore))], 1)
    return np.expm1(np.clip(log1p, 0, None))


def test_two_gaussians_recovers_components_and_flags_constant_rows():
    values = np.log1p(two_component_proteins(40))
    values[3] = 2.0  # all equal: cannot be fitted
    mean, sd, ok = _two_gaussians(values)
    assert not ok[3] and ok.sum() == 39
    np.testing.assert_allclose(mean[ok].mean(), 1.0, atol=0.05)
    np.testing.assert_allclose(np.sqrt(np.mean(sd[ok] ** 2)), 0.3, atol=0.06)


def test_two_gaussians_agrees_with_scikit_learn():
    mixture = pytest.importorskip("sklearn.mixture")
    values = np.log1p(two_component_proteins(10, seed=4))
    mean, sd, _ = _two_gaussians(values)
    for row in range(10):
        gmm = mixture.GaussianMixture(2, random_state=0).fit(values[row][:, None])
        lower = np.argmin(gmm.means_[:, 0])
        np.testing.assert_allclose(mean[row], gmm.means_[lower, 0], atol=1e-3)
        np.testing.assert_allclose(sd[row], np.sqrt(gmm.covariances_[lower, 0, 0]), atol=1e-3)


def test_protein_background_prior():
    proteins = np.vstack([two_component_proteins(200, seed=1), two_component_proteins(50, seed=2)])
    codes = np.repeat([0, 1], [200, 50])
    mask = np.ones((3, 40), dtype=bool)
    mask[1, 3:] = False  # batch 1 measured 3 proteins only; batch 2 has no cells
    mean, scale = protein_background_prior(proteins, codes, 3, mask, n_cells=100, rng=0)
    assert mean.shape == scale.shape == (40, 3)
    assert np.all(mean == mean[:1]) and np.all(scale == scale[:1])
    assert abs(mean[0, 0] - 1.0) < 0.1
    assert 0.02 < scale[0, 0] < 0.04  # sqrt(100 * 0.3^2) / 100 = 0.03
    assert (mean[0, 1], scale[0, 1]) == (0.0, pytest.approx(0.05))
    assert (mean[0, 2], scale[0, 2]) == (0.0, 1.0)
    again = protein_background_prior(proteins, codes, 3, mask, n_cells=100, rng=0)
    np.testing.assert_array_equal(again[0], mean)
    # no protein counts in an unmasked batch: every drawn cell counts as (0, 0.05)
    zeros = proteins.copy()
    zeros[codes == 1] = 0
    mean, scale = protein_background_prior(zeros, codes, 2, rng=0)
    assert (mean[0, 1], scale[0, 1]) == (0.0, pytest.approx(0.005)) and abs(mean[0, 0] - 1) < 0.1
    # cells without protein counts are drawn too (as scvi-tools does), pulling the mean to 0
    half = proteins[:200].copy()
    half[::2] = 0
    mean, _ = protein_background_prior(half, np.zeros(200, dtype=int), 1, rng=0)
    assert 0.3 < mean[0, 0] < 0.7
    # without a mask, fewer than 5 proteins are still fitted
    mean, scale = protein_background_prior(proteins[:200, 28:32], np.zeros(200, dtype=int), 1, rng=0)
    assert scale[0, 0] != pytest.approx(0.05) and mean[0, 0] > 0
