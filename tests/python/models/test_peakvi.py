"""PeakVI: the non-zero Bernoulli likelihood against torch's BCELoss, setup and its errors, and
on real scATAC-seq data (Granja 2019 bone marrow, a subset): lineages separated in the latent
space far above chance, differential accessibility that agrees with the raw data, accessibility
in chunks (dense and thresholded), save/load and reference mapping."""
from __future__ import annotations

import inspect
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellvi
from cellvi import _constants as C
from cellvi.distributions import Bernoulli, bernoulli_log_likelihood_per_cell
from cellvi.modules import PEAKVAE
from cellvi.nn import SparseRows
from conftest import shared_data

LINEAGES = {"11_CD14.Mono.1": "Mono", "12_CD14.Mono.2": "Mono", "16_Pre.B": "B", "17_B": "B",
            "01_HSC": "Progenitor", "05_CMP.LMPP": "Progenitor", "06_CLP.1": "Progenitor",
            "07_GMP": "Progenitor", "15_CLP.2": "Progenitor"}


def lineage(cell_type: str) -> str:
    return LINEAGES.get(cell_type, "T/NK" if any(k in cell_type for k in ("CD4", "CD8", "NK")) else "other")


def simulate_accessibility(n_cells=200, n_regions=120, n_types=3, seed=0) -> anndata.AnnData:
    """Peak counts (0-3) of a few cell types, each with its own open regions; ``batch``: 2."""
    rng = np.random.default_rng(seed)
    types = rng.integers(n_types, size=n_cells)
    profile = np.where(rng.random((n_types, n_regions)) < 0.3, 0.5, 0.03)
    depth = rng.uniform(0.5, 1.0, size=n_cells)
    is_open = rng.random((n_cells, n_regions)) < profile[types] * depth[:, None]
    counts = (is_open * rng.integers(1, 4, size=is_open.shape)).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1  # every cell has something open
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{t}" for t in types]),
                        "batch": rng.choice(["b0", "b1"], size=n_cells)},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"chr1:{1000 * j}-{1000 * j + 500}" for j in range(n_regions)])
    return anndata.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


def setup_quietly(adata, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cellvi.PEAKVI.setup_anndata(adata, **kwargs)


# ---- the likelihood ----------------------------------------------------------------------------

def test_nonzero_bernoulli_likelihood_equals_bce_values_and_gradients():
    torch.manual_seed(0)
    p = torch.rand(40, 70)
    # Probabilities at exactly 0 and 1 (where the logs are clamped), open and closed.
    p[0, :6] = torch.tensor([0.0, 1.0, 0.0, 1.0, 1e-30, 1 - 1e-7])
    x = torch.poisson(torch.rand(40, 70) * 0.3)
    x[0, :6] = torch.tensor([0.0, 0.0, 2.0, 1.0, 1.0, 0.0])
    x[1:] = x[1:] * (torch.rand(39, 70) < 0.5)
    dense = sp.csr_matrix(x.numpy())
    dense.data[:3] = 0  # explicitly stored zeros count as closed
    flat = torch.from_numpy(np.repeat(np.arange(40), np.diff(dense.indptr)) * 70 + dense.indices)
    values = torch.from_numpy(dense.data)
    x = torch.from_numpy(dense.toarray())
    weights = torch.randn(40)  # a non-uniform upstream gradient

    p_nz, p_bce = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    ll = bernoulli_log_likelihood_per_cell(p_nz, flat, values)
    bce = torch.nn.BCELoss(reduction="none")(p_bce, (x > 0).float()).sum(-1)
    (ll * weights).sum().backward()
    (-bce * weights).sum().backward()
    torch.testing.assert_close(ll, -bce, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(p_nz.grad, p_bce.grad, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(p_nz.grad).all()  # BCELoss's finite gradient at p = 0 and 1
    torch.testing.assert_close(Bernoulli(p).log_prob(x).sum(-1), -bce.detach(), rtol=1e-5, atol=1e-4)


def test_peakvae_reconstruction_is_bce_of_p_times_library_times_region_factor():
    torch.manual_seed(0)
    adata = simulate_accessibility(n_cells=64, n_regions=50)
    module = PEAKVAE(50, n_batch=2)
    with torch.no_grad():
        module.region_factors.normal_()  # factors away from their initial 1/2
    X = adata.X
    tensors = {C.X_KEY: torch.from_numpy(X.toarray()), C.BATCH_KEY: torch.zeros(64, dtype=torch.long),
               C.X_NZ_INDEX_KEY: torch.from_numpy(np.repeat(np.arange(64), np.diff(X.indptr)) * 50 + X.indices),
               C.X_NZ_VALUE_KEY: torch.from_numpy(X.data)}
    module.train()
    torch.manual_seed(1)
    inf, gen, out = module(tensors)
    grads = torch.autograd.grad(out.reconstruction_loss.sum(), list(module.parameters()), allow_unused=True,
                                retain_graph=True)
    probs = gen["probs"] * inf["d"] * torch.sigmoid(module.region_factors)
    reference = torch.nn.BCELoss(reduction="none")(probs, (tensors[C.X_KEY] > 0).float()).sum(-1)
    ref_grads = torch.autograd.grad(reference.sum(), list(module.parameters()), allow_unused=True)
    torch.testing.assert_close(out.reconstruction_loss, reference, rtol=1e-5, atol=1e-4)
    for g, r in zip(grads, ref_grads):
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    # KL to N(0, I); the training loss weighs it by 1 / (cells in the minibatch), as scvi-tools.
    qz = torch.distributions.Normal(inf["qz_mean"], inf["qz_var"].sqrt())
    kl = torch.distributions.kl_divergence(qz, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(out.kl_local, kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, (reference + kl / 64).mean(), rtol=1e-5, atol=1e-4)
    module.kl_scale = 1.0  # the plain ELBO
    torch.testing.assert_close(module.loss(tensors, inf, gen).loss, (reference + kl).mean(), rtol=1e-5, atol=1e-4)
    # The encoders read the non-zeros (SparseRows) when given them (by default below 5%
    # non-zero, as scATAC data): the same numbers as dense.
    module.eval()
    inputs = module.inference_inputs(tensors)
    rows = SparseRows(tensors[C.X_NZ_INDEX_KEY], tensors[C.X_NZ_VALUE_KEY], *tensors[C.X_KEY].shape)
    sparse, dense = module.inference(**{**inputs, "x_sparse": rows}), module.inference(**{**inputs, "x_sparse": None})
    for key in ("qz_mean", "qz_var", "d"):
        torch.testing.assert_close(sparse[key], dense[key])


# ---- setup ---------------------------------------------------------------------------------

def _snapshot(adata):
    return (adata.X.copy(), adata.obs.copy(), adata.var.copy(), list(adata.uns), list(adata.layers),
            list(adata.obsm))


def _assert_unchanged(adata, before):
    X, obs, var, uns, layers, obsm = before
    assert type(adata.X) is type(X)
    if sp.issparse(X):
        assert np.array_equal(adata.X.indptr, X.indptr) and np.array_equal(adata.X.indices, X.indices)
        X, now = X.data, adata.X.data
    else:
        now = adata.X
    assert now.dtype == X.dtype and np.array_equal(now, X, equal_nan=True)
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)
    assert (list(adata.uns), list(adata.layers), list(adata.obsm)) == (uns, layers, obsm)


def _with_x(adata, X):
    adata.X = X
    return adata


@pytest.mark.parametrize("corrupt, message", [
    (lambda a: _with_x(a, a.X.multiply(-1).tocsr()), "negative values"),
    (lambda a: (a.X.data.__setitem__(slice(0, 4), np.nan), a)[1], "4 NaN"),
    (lambda a: _with_x(a, np.full(a.shape, 2.0, dtype=np.float32)), "every entry of adata.X .* is non-zero"),
    (lambda a: _with_x(a, sp.csr_matrix(np.vstack([np.zeros((2, a.n_vars), np.float32),
                                                   a.X[2:].toarray()]))),
     r"2 cells with no non-zero value \(no open region\) \(cell0, cell1\).*remove them first"),
])
def test_bad_input_is_refused_clearly_and_adata_left_unchanged(corrupt, message):
    adata = corrupt(simulate_accessibility())
    before = _snapshot(adata)
    with pytest.raises(ValueError, match=message):
        setup_quietly(adata, batch_key="batch")
    _assert_unchanged(adata, before)


def test_counts_are_binarised_and_closed_regions_reported_once_at_setup():
    adata = simulate_accessibility()
    X = adata.X.toarray()
    X[:, [5, 9]] = 0
    adata.X = sp.csr_matrix(X)
    adata.layers["binary"] = (adata.X > 0).astype(np.float32)
    before = _snapshot(adata)
    with pytest.warns(UserWarning) as record:
        cellvi.PEAKVI.setup_anndata(adata, batch_key="batch")
    messages = [str(w.message) for w in record]
    assert any("2 of the 120 regions are open in no cell" in m and "chr1:5000-5500" in m for m in messages)
    assert any("reads every value above 0 as open" in m for m in messages)
    _assert_unchanged(adata, before)
    # The same data as 0/1 in a layer: no word about counts.
    model = cellvi.PEAKVI(adata)
    with pytest.warns(UserWarning) as record:
        cellvi.PEAKVI.setup_anndata(adata, batch_key="batch", layer="binary")
    assert not any("above 0 as open" in str(w.message) for w in record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # queries do not warn again
        z_counts = model.get_latent_representation()
    assert "120 regions, 2 batches" in repr(model)
    assert z_counts.shape == (200, model.module.n_latent)


def test_network_follows_peakvi_defaults():
    adata = simulate_accessibility(n_regions=120)
    setup_quietly(adata, batch_key="batch")
    module = cellvi.PEAKVI(adata).module
    # Square-root rule: int(sqrt(120)) = 10 hidden units, int(sqrt(10)) = 3 latent dimensions.
    assert (module.n_hidden, module.n_latent) == (10, 3)
    kinds = {type(m).__name__ for m in module.modules()}
    assert {"LayerNorm", "LeakyReLU"} <= kinds and "BatchNorm1d" not in kinds and "ReLU" not in kinds
    assert module.z_encoder.var_eps == 0.0
    # Batch in the decoder's first layer only; the encoders read the regions alone.
    decoder_layers = module.z_decoder.hidden.layers
    assert [len(layer["linear"].cat_weights) for layer in decoder_layers] == [1, 0]
    assert all(len(layer["linear"].cat_weights) == 0 for layer in module.z_encoder.encoder.layers)
    assert torch.equal(module.region_factors, torch.zeros(120))


# ---- real scATAC-seq data ------------------------------------------------------------------

@pytest.fixture(scope="module")
def granja():
    """1,500 cells and the 2,500 most often open of the 10,000 peaks; obs["lineage"]."""
    adata = shared_data("granja2019_bmmc_scatac_10kpeaks.h5ad")
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 1500, replace=False))].copy()
    n_open = np.asarray((adata.X > 0).sum(0)).ravel()
    adata = adata[:, np.sort(np.argsort(-n_open)[:2500])].copy()
    adata = adata[np.asarray((adata.X > 0).sum(1)).ravel() > 0].copy()
    adata.obs["lineage"] = [lineage(str(t)) for t in adata.obs["BioClassification"]]
    return adata


@pytest.fixture(scope="module")
def trained(granja):
    """PeakVI on ``granja`` (batch: donor), 30 epochs at lr 1e-3 (the default 1e-4 needs ~200)."""
    cellvi.settings.seed = 0
    with pytest.warns(UserWarning, match="above 0 as open"):
        cellvi.PEAKVI.setup_anndata(granja, batch_key="Group")
    model = cellvi.PEAKVI(granja)
    model.train(max_epochs=30, lr=1e-3)
    return model


def knn_accuracy(z, labels, k=15) -> float:
    d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1)[:, :k]
    codes, labels = np.unique(np.asarray(labels), return_inverse=True)
    votes = np.apply_along_axis(np.bincount, 1, labels[neighbours], minlength=len(codes))
    return float((votes.argmax(1) == labels).mean())


def test_training_fits_and_latent_separates_lineages_far_above_chance(trained, granja):
    history = trained.history
    assert len(history) == 30  # 30 epochs, early stopping did not trigger
    assert history["reconstruction_loss_train"].iloc[-1] < history["reconstruction_loss_train"].iloc[0] - 50
    assert history["elbo_validation"].iloc[-1] > history["elbo_validation"].iloc[0]
    assert history["kl_local_validation"].iloc[-1] > 5  # the posterior has not collapsed
    z = trained.get_latent_representation()
    assert z.shape == (granja.n_obs, 7)  # int(sqrt(int(sqrt(2500)))) = 7
    labels = granja.obs["lineage"].to_numpy()
    shuffled = knn_accuracy(z, np.random.default_rng(0).permutation(labels))
    # 0.89 here (scvi-tools' PeakVI: 0.85 after 200 epochs at its lr); shuffled labels ~0.4.
    accuracy = knn_accuracy(z, labels)
    assert accuracy > 0.75 and accuracy > shuffled + 0.3, (accuracy, shuffled)
    # Scores of fit: the ELBO bounds the importance-sampled log-likelihood from below.
    cells = np.arange(0, granja.n_obs, 10)
    elbo = trained.get_elbo(indices=cells)
    assert elbo < 0 and trained.get_reconstruction_error(indices=cells) > 0
    assert trained.get_marginal_ll(indices=cells, n_mc_samples=50) > elbo


def test_differential_accessibility_agrees_with_raw_data(trained, granja):
    da = trained.differential_accessibility(groupby="lineage", group1="Mono", group2="B")
    assert list(da.columns[:9]) == ["prob_da", "is_da_fdr", "bayes_factor", "effect_size", "emp_effect",
                                    "est_prob1", "est_prob2", "emp_prob1", "emp_prob2"]
    assert len(da) == granja.n_vars and da.index.name == "region"
    mono = (granja.obs["lineage"] == "Mono").to_numpy()
    raw_open = granja[mono].X > 0
    np.testing.assert_allclose(da.loc[granja.var_names, "emp_prob1"], np.asarray(raw_open.mean(0)).ravel())
    np.testing.assert_allclose(da["effect_size"], da["est_prob2"] - da["est_prob1"])
    called = da[da["is_da_fdr"]]
    assert 50 < len(called) < granja.n_vars
    # The strongest calls: large raw differences of the open fraction, in the same direction.
    top = called.loc[called["effect_size"].abs().sort_values(ascending=False).index[:50]]
    assert (np.sign(top["emp_effect"]) == np.sign(top["effect_size"])).mean() >= 0.95
    assert top["emp_effect"].abs().mean() > 4 * da["emp_effect"].abs().mean()
    assert ((top["effect_size"] > 0).any() and (top["effect_size"] < 0).any())  # open in either
    # And the regions whose raw open fractions differ most are mostly called.
    largest_raw = da["emp_effect"].abs().sort_values(ascending=False).index[:50]
    assert da.loc[largest_raw, "is_da_fdr"].mean() >= 0.7
    # With change="difference", delta is a difference of probabilities: regions called with
    # differences of 0.1-0.2 are called at delta 0.05 and not when at least 0.3 is asked for.
    moderate = called.index[called["effect_size"].abs().between(0.1, 0.2)]
    assert len(moderate) >= 10
    by_difference = {delta: trained.differential_accessibility(
        groupby="lineage", group1="Mono", group2="B", delta=delta, region_list=list(moderate),
        change="difference") for delta in (0.05, 0.3)}
    assert by_difference[0.3]["prob_da"].mean() < 0.5 < by_difference[0.05]["prob_da"].mean()
    # The default log2-ratio change orders the regions much as the difference does.
    both = trained.differential_accessibility(groupby="lineage", group1="Mono", group2="B", change="difference")
    assert both.loc[da.index, "bayes_factor"].corr(da["bayes_factor"], method="spearman") > 0.7
    vanilla = trained.differential_accessibility(idx1=mono, idx2=~mono, mode="vanilla", n_samples=500)
    assert vanilla["is_da_fdr"].isna().all() and vanilla["prob_da"].between(0, 1).all()


def test_accessibility_in_chunks_dense_and_thresholded(trained, granja):
    cells = np.arange(0, granja.n_obs, 3)
    dense = trained.get_normalized_accessibility(indices=cells, batch_size=97)
    assert isinstance(dense, pd.DataFrame) and dense.shape == (len(cells), granja.n_vars)
    assert list(dense.index) == list(granja.obs_names[cells]) and list(dense.columns) == list(granja.var_names)
    values = dense.to_numpy()
    assert ((values > 0) & (values < 1)).all()
    # Another chunking gives the same numbers, and the thresholded output is the dense one cut.
    again = trained.get_normalized_accessibility(indices=cells, batch_size=64, return_numpy=True)
    np.testing.assert_allclose(again, values, rtol=1e-5, atol=1e-6)
    cut = trained.get_normalized_accessibility(indices=cells, threshold=np.float32(0.3), batch_size=50,
                                               return_numpy=True)  # any real number, NumPy's too
    assert sp.isspmatrix_csr(cut)
    expected = np.where(values >= 0.3, values, 0)
    np.testing.assert_allclose(cut.toarray(), expected, rtol=1e-5, atol=1e-6)
    assert cut.nnz == np.count_nonzero(expected) and 0 < cut.nnz < values.size
    frame = trained.get_normalized_accessibility(indices=cells, threshold=0.3)
    assert all(isinstance(t, pd.SparseDtype) for t in frame.dtypes)
    np.testing.assert_allclose(frame.sparse.to_dense().to_numpy(), expected, rtol=1e-5, atol=1e-6)
    # Region subsets, library and region factors.
    regions = list(granja.var_names[[7, 3, 100]])
    sub = trained.get_normalized_accessibility(indices=cells, region_list=regions)
    np.testing.assert_allclose(sub.to_numpy(), dense[regions].to_numpy(), rtol=1e-5, atol=1e-6)
    library = trained.get_library_size_factors(indices=cells)
    factors = trained.get_region_factors()
    assert library.shape == (len(cells),) and ((library > 0) & (library < 1)).all()
    assert factors.shape == (granja.n_vars,) and ((factors > 0) & (factors < 1)).all()
    both = trained.get_normalized_accessibility(indices=cells, normalize_cells=True, normalize_regions=True,
                                                return_numpy=True)
    np.testing.assert_allclose(both, values * library[:, None] * factors[None, :], rtol=1e-4, atol=1e-6)
    # Cells with more open regions get larger library factors.
    n_open = np.asarray((granja.X[cells] > 0).sum(1)).ravel()
    assert np.corrcoef(library, np.log(n_open))[0, 1] > 0.5
    with pytest.raises(ValueError, match="threshold must be a number between 0 and 1"):
        trained.get_normalized_accessibility(threshold=2)
    with pytest.raises(KeyError, match="1 names of region_list are not in the model: nope"):
        trained.get_normalized_accessibility(region_list=["nope"])


def test_save_load_round_trip_gives_identical_latent(trained, granja, tmp_path):
    trained.save(tmp_path / "peakvi")
    loaded = cellvi.PEAKVI.load(tmp_path / "peakvi", granja, device="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), trained.get_latent_representation())
    assert loaded.init_kwargs == trained.init_kwargs and loaded.is_trained
    pd.testing.assert_frame_equal(loaded.history, trained.history)
    # Without its AnnData, on new data with the model's regions.
    bare = cellvi.load_model(tmp_path / "peakvi", device="cpu")
    subset = granja[:100]
    np.testing.assert_array_equal(bare.get_latent_representation(subset),
                                  trained.get_latent_representation(indices=np.arange(100)))
    np.testing.assert_array_equal(bare.get_region_factors(), trained.get_region_factors())


def test_query_batch_maps_onto_a_reference(granja):
    cellvi.settings.seed = 0
    in_reference = (granja.obs["Group"] == "BMMC_D6T1").to_numpy()
    reference, query = granja[in_reference].copy(), granja[~in_reference].copy()
    setup_quietly(reference, batch_key="Group")
    ref_model = cellvi.PEAKVI(reference)
    ref_model.train(max_epochs=3, lr=1e-3)
    prepared = cellvi.PEAKVI.prepare_query_anndata(query, ref_model)
    model = cellvi.PEAKVI.load_query_data(prepared, ref_model)
    trainable = [name for name, p in model.module.named_parameters() if p.requires_grad]
    assert trainable == ["z_decoder.hidden.layers.0.linear.cat_weights.0"]  # the new batch's row
    model.train(max_epochs=3, lr=1e-3)
    # The reference is untouched; the query cells get a finite latent.
    np.testing.assert_allclose(model.get_latent_representation(reference), ref_model.get_latent_representation(),
                               atol=1e-5)
    z = model.get_latent_representation()
    assert z.shape == (prepared.n_obs, ref_model.module.n_latent) and np.isfinite(z).all()


def test_training_defaults_are_peakvis(monkeypatch):
    cellvi.settings.seed = 0
    adata = simulate_accessibility(n_cells=150)
    setup_quietly(adata, batch_key="batch")
    model = cellvi.PEAKVI(adata)
    seen = {}
    original = cellvi.train.Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.update(plan=self.plan, optimizer=self.optimizer, patience=self.patience,
                    early_stopping=self.early_stopping, max_epochs=self.max_epochs, batch_size=self.batch_size,
                    n_validation=len(self.validation_indices))

    monkeypatch.setattr(cellvi.train.Trainer, "__init__", spy)
    model.train(limit_train_batches=1, max_epochs=2)
    monkeypatch.undo()
    plan = seen["plan"]
    assert isinstance(seen["optimizer"], torch.optim.AdamW)
    group = seen["optimizer"].param_groups[0]
    assert (group["lr"], group["weight_decay"], group["eps"]) == (1e-4, 1e-3, 1e-8)
    assert (plan.n_epochs_kl_warmup, plan.kl_warmup_cap) == (50, None)
    assert (plan.monitor, plan.monitor_mode) == ("reconstruction_loss_validation", "min")
    assert seen["early_stopping"] and seen["patience"] == 50 and seen["batch_size"] == 128
    assert seen["n_validation"] == 15  # train_size 0.9
    assert inspect.signature(cellvi.PEAKVI.train).parameters["max_epochs"].default == 500
    # Early stopping watches the validation reconstruction loss, lower being better.
    model.train(max_epochs=300, lr=3e-2, early_stopping_patience=3, train_size=0.5, batch_size=32)
    rec = model.history["reconstruction_loss_validation"].to_numpy()
    assert len(rec) < 300
    assert rec[-3:].min() >= rec[:-3].min()  # the last 3 epochs did not improve on the best
    best_before = np.minimum.accumulate(rec)
    assert all((rec[i:i + 3] >= best_before[i - 1]).sum() < 3 for i in range(1, len(rec) - 3))
