"""CellAssign: the mixture's math, recovery of known types from simulated NB counts, marker
genes picked from wider data, save/load, errors that leave the AnnData as it was, and on real
PBMCs (kang) with textbook markers: types far above chance, T cells included."""
from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellvi
from cellvi import _constants as C
from cellvi.modules import CellAssignModule
from cellvi.modules._cellassign import log_nb_log_mean
from conftest import shared_data

TYPES = ["alpha", "beta", "gamma", "delta"]
MARKERS_PER_TYPE = 3


def simulate_markers(n_cells=800, n_other=30, seed=0, over=2.5):
    """NB counts of marker genes (MARKERS_PER_TYPE per type, raised by ``over`` on the log
    scale in their type) and of ``n_other`` genes that mark nothing, with size factors;
    genes shuffled so that markers are scattered among the others. Returns (adata, markers,
    true types)."""
    rng = np.random.default_rng(seed)
    n_markers = len(TYPES) * MARKERS_PER_TYPE
    types = rng.choice(len(TYPES), size=n_cells, p=[0.4, 0.3, 0.2, 0.1])
    rho = np.zeros((n_markers, len(TYPES)))
    for t in range(len(TYPES)):
        rho[t * MARKERS_PER_TYPE:(t + 1) * MARKERS_PER_TYPE, t] = 1
    base = rng.normal(-1.0, 0.5, size=n_markers + n_other)
    size_factor = rng.lognormal(0.0, 0.3, size=n_cells)
    log_mu = np.log(size_factor)[:, None] + base
    log_mu[:, :n_markers] += over * rho[:, types].T
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, np.exp(log_mu) / theta)).astype(np.float32)
    genes = np.array([f"marker{j}" for j in range(n_markers)] + [f"other{j}" for j in range(n_other)])
    order = rng.permutation(len(genes))
    adata = anndata.AnnData(sp.csr_matrix(counts[:, order]),
                            obs=pd.DataFrame({"sf": size_factor.astype(np.float32),
                                              "batch": rng.choice(["b1", "b2"], size=n_cells),
                                              "age": rng.normal(size=n_cells)},
                                             index=[f"cell{i}" for i in range(n_cells)]),
                            var=pd.DataFrame(index=genes[order]))
    markers = pd.DataFrame(rho.astype(int), index=genes[:n_markers], columns=TYPES)
    return adata, markers, np.array(TYPES)[types]


def snapshot(adata):
    return adata.X.copy(), adata.obs.copy(), adata.var.copy(), dict(adata.uns), list(adata.obsm)


def assert_unchanged(adata, before):
    X, obs, var, uns, obsm = before
    assert (adata.X != X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)
    assert dict(adata.uns) == uns and list(adata.obsm) == obsm


@pytest.fixture(scope="module")
def trained():
    """(adata, markers, truth, model) on simulated data; do not mutate."""
    cellvi.settings.seed = 0
    adata, markers, truth = simulate_markers()
    cellvi.CellAssign.setup_anndata(adata, size_factor_key="sf")
    model = cellvi.CellAssign(adata, markers)
    model.train(max_epochs=150, batch_size=128)
    return adata, markers, truth, model


# -- the math ----------------------------------------------------------------------------------


def test_nb_log_density_matches_torch():
    x = torch.tensor([[0.0, 1.0, 7.0], [3.0, 0.0, 40.0]])
    mu = torch.tensor([[0.2, 1.5, 9.0], [2.0, 0.01, 30.0]])
    theta = torch.tensor([0.5, 2.0, 10.0])
    ours = log_nb_log_mean(x, mu.log(), theta, torch.lgamma(x + 1))
    reference = torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta)).log_prob(x)
    torch.testing.assert_close(ours, reference)


def test_objective_is_the_mixture_log_likelihood():
    torch.manual_seed(0)
    rho = np.array([[1, 0], [0, 1], [0, 0]])
    module = CellAssignModule(rho, log_base_init=np.array([-1.0, 0.0, 0.5]), min_delta=1.0)
    with torch.no_grad():
        module.type_logits.copy_(torch.tensor([0.3, -0.2]))
    x = torch.tensor([[5.0, 0.0, 2.0], [0.0, 4.0, 1.0], [1.0, 1.0, 0.0]])
    sf = torch.tensor([1.0, 2.0, 0.5])
    gen = module.generative(x, sf)
    # By hand: log sum_c pi_c prod_g NB(x_g; s exp(b_g + rho_gc delta_gc), theta_g)
    delta, theta = module.delta.detach(), torch.exp(module.log_theta.detach())
    log_pi = torch.log_softmax(module.type_logits.detach(), -1)
    by_hand = []
    for n in range(3):
        per_type = []
        for c in range(2):
            mu = sf[n] * torch.exp(module.log_base.detach() + delta[:, c])
            nb = torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta))
            per_type.append(log_pi[c] + nb.log_prob(x[n]).sum())
        by_hand.append(torch.logsumexp(torch.stack(per_type), 0))
    torch.testing.assert_close(gen["log_px"].detach(), torch.stack(by_hand))
    torch.testing.assert_close(gen["gamma"].sum(-1).detach(), torch.ones(3))
    out = module.loss({}, {}, gen, n_obs=10)
    torch.testing.assert_close(out.reconstruction_loss, -gen["log_px"])
    torch.testing.assert_close(out.loss, -gen["log_px"].mean() - module.log_prior() / 10)
    # Markers stay over-expressed by at least min_delta, only in their own type.
    assert (module.delta[rho == 1] >= 1.0).all() and (module.delta[rho == 0] == 0).all()


# -- simulated data ---------------------------------------------------------------------------


def test_known_types_are_recovered(trained):
    adata, markers, truth, model = trained
    probs = model.predict()
    assert list(probs.columns) == TYPES and list(probs.index) == list(adata.obs_names)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert ((probs >= 0) & (probs <= 1)).all().all()
    accuracy = (probs.idxmax(axis=1).to_numpy() == truth).mean()
    assert accuracy > 0.97, accuracy
    for t in TYPES:  # the rarest type (10% of cells) too
        assert (probs.idxmax(axis=1).to_numpy()[truth == t] == t).mean() > 0.9, t
    np.testing.assert_array_equal(model.predict(soft=False), probs.idxmax(axis=1).to_numpy())
    # The fitted over-expression is near the simulated 2.5 on the log scale.
    delta = model.module.delta.detach().numpy()[model.cell_type_markers.to_numpy() == 1]
    assert np.abs(np.median(delta) - 2.5) < 0.4, delta
    assert model.history["elbo_train"].iloc[-1] > model.history["elbo_train"].iloc[0]


def test_extra_genes_in_the_data_are_ignored(trained):
    adata, markers, truth, model = trained
    # The model holds the marker genes only, in the marker matrix's order.
    assert model.var_names == list(markers.index)
    assert "12 genes" in repr(model) and "cell_type_markers=<DataFrame 12x4>" in repr(model)
    # Predicting on the markers alone (in another order) or with yet more genes changes nothing.
    narrow = adata[:, list(markers.index)[::-1]].copy()
    pd.testing.assert_frame_equal(model.predict(narrow), model.predict())
    wide = anndata.concat([adata, anndata.AnnData(sp.csr_matrix(np.ones((adata.n_obs, 2), np.float32)),
                                                  obs=adata.obs, var=pd.DataFrame(index=["new1", "new2"]))],
                          axis=1, merge="first")
    wide.obs = adata.obs.copy()
    pd.testing.assert_frame_equal(model.predict(wide), model.predict())
    # Training on the marker genes alone gives the same model (same seed).
    cellvi.settings.seed = 0
    alone = adata[:, list(markers.index)].copy()
    cellvi.CellAssign.setup_anndata(alone, size_factor_key="sf")
    other = cellvi.CellAssign(alone, markers)
    other.train(max_epochs=150, batch_size=128)
    pd.testing.assert_frame_equal(other.predict(), model.predict())


def test_save_and_load_give_identical_predictions(trained, tmp_path):
    adata, markers, truth, model = trained
    model.save(tmp_path / "ca")
    loaded = cellvi.CellAssign.load(tmp_path / "ca", adata, device="cpu")
    pd.testing.assert_frame_equal(loaded.predict(), model.predict())
    pd.testing.assert_frame_equal(loaded.cell_type_markers, model.cell_type_markers)
    assert loaded.is_trained and len(loaded.history) == len(model.history)
    # Without the AnnData: the marker matrix and genes come from the directory.
    bare = cellvi.load_model(tmp_path / "ca", device="cpu")
    assert isinstance(bare, cellvi.CellAssign) and bare.cell_types == TYPES
    pd.testing.assert_frame_equal(bare.predict(adata), model.predict())


def test_covariates_enter_the_mean():
    cellvi.settings.seed = 0
    adata, markers, truth = simulate_markers(n_cells=300)
    cellvi.CellAssign.setup_anndata(adata, size_factor_key="sf", batch_key="batch",
                                    continuous_covariate_keys=["age"])
    model = cellvi.CellAssign(adata, markers)
    assert model.module.beta.shape == (12, 2)  # one batch column (b2 vs b1) and age
    model.train(max_epochs=40, batch_size=64)
    assert model.module.beta.detach().abs().sum() > 0
    assert (model.predict(soft=False) == truth).mean() > 0.9


def test_basis_dispersion_as_in_scvi_tools():
    cellvi.settings.seed = 0
    adata, markers, truth = simulate_markers(n_cells=300)
    cellvi.CellAssign.setup_anndata(adata, size_factor_key="sf")
    model = cellvi.CellAssign(adata, markers, dispersion="basis", dirichlet_concentration=0.01)
    model.train(max_epochs=40, batch_size=64)
    probs = model.predict()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs.idxmax(axis=1).to_numpy() == truth).mean() > 0.9


# -- errors ---------------------------------------------------------------------------------


def test_size_factor_errors_name_the_problem_and_the_fix():
    adata, markers, _ = simulate_markers(n_cells=50)
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"needs size factors: pass size_factor_key=.*lib / lib.mean\(\)"):
        cellvi.CellAssign.setup_anndata(adata)
    with pytest.raises(KeyError, match=r"obs column 'size' \(size_factor_key\) does not exist; available: sf, "
                                       r"batch, age.*lib / lib.mean\(\)"):
        cellvi.CellAssign.setup_anndata(adata, size_factor_key="size")
    for value, pattern in ((np.nan, r"missing \(NaN\) for 1 cells \(cell3\)"),
                           (0.0, r"must be positive and finite; 1 cells have 0 \(cell3\).*drop such cells"),
                           (-1.0, r"must be positive and finite; 1 cells have -1"),
                           (np.inf, r"must be positive and finite; 1 cells have inf")):
        bad = adata.copy()
        bad.obs.loc["cell3", "sf"] = value
        with pytest.raises(ValueError, match=pattern):
            cellvi.CellAssign.setup_anndata(bad, size_factor_key="sf")
    bad = adata.copy()
    bad.obs["sf"] = "one"
    with pytest.raises(TypeError, match="must be numbers"):
        cellvi.CellAssign.setup_anndata(bad, size_factor_key="sf")
    assert_unchanged(adata, before)


def test_marker_errors_name_the_problem_and_the_fix():
    adata, markers, _ = simulate_markers(n_cells=50)
    before = snapshot(adata)
    cellvi.CellAssign.setup_anndata(adata, size_factor_key="sf")
    unknown = pd.concat([markers, pd.DataFrame([[1, 0, 0, 0]], index=["CD3E"], columns=TYPES)])
    with pytest.raises(ValueError, match=r"1 marker gene is not in the data: CD3E; the rows of cell_type_markers "
                                         r"must be names in adata.var_names.*markers.index.isin"):
        cellvi.CellAssign(adata, unknown)
    absent = markers.copy()
    absent.index = [g if not markers.loc[g, "gamma"] else f"ENSG{g}" for g in markers.index]
    with pytest.raises(ValueError, match=r"cell type gamma has no marker gene in the data: none of its markers "
                                         r"\(ENSGmarker6, ENSGmarker7, ENSGmarker8\) is among adata.var_names"):
        cellvi.CellAssign(adata, absent)
    empty = markers.assign(epsilon=0)
    with pytest.raises(ValueError, match=r"cell type epsilon has no marker gene \(an all-0 column"):
        cellvi.CellAssign(adata, empty)
    with pytest.raises(ValueError, match=r"only 0 and 1.*found 2"):
        cellvi.CellAssign(adata, markers * 2)
    with pytest.raises(TypeError, match="must be a pandas DataFrame"):
        cellvi.CellAssign(adata, markers.to_numpy())
    with pytest.raises(TypeError, match="needs cell_type_markers"):
        cellvi.CellAssign(adata)
    with pytest.raises(ValueError, match="repeats genes"):
        cellvi.CellAssign(adata, pd.concat([markers, markers.iloc[:1]]))
    with pytest.raises(ValueError, match="min_delta must be a positive number"):
        cellvi.CellAssign(adata, markers, min_delta=0)
    # Predicting on data that lacks a marker gene says which.
    model = cellvi.CellAssign(adata, markers)
    with pytest.raises(ValueError, match=r"lacks 1 of the model's 12 genes: marker0"):
        model.predict(adata[:, [g for g in adata.var_names if g != "marker0"]].copy())
    assert_unchanged(adata, before)


# -- real data --------------------------------------------------------------------------------

KANG_MARKERS = {"T": ["CD3E", "CD3D", "IL7R"], "B": ["CD79A"], "CD14 Mono": ["CD14", "LYZ", "S100A8", "S100A9"],
                "FCGR3A Mono": ["FCGR3A", "MS4A7"], "NK": ["NKG7", "GNLY", "GZMB"]}
KANG_TRUTH = {"CD4 T cells": "T", "CD8 T cells": "T", "B cells": "B", "CD14+ Monocytes": "CD14 Mono",
              "FCGR3A+ Monocytes": "FCGR3A Mono", "NK cells": "NK"}


def test_kang_pbmc_types_from_textbook_markers():
    """3,000 kang cells, all 1,287 genes in the data, markers by Ensembl id, default settings.

    On all 12,261 cells the defaults reach 0.82 (scvi-tools 1.4.2: 0.40; the best marker
    z-score: 0.77); cells of types without markers (dendritic cells, megakaryocytes) count as
    errors. Here, measured: 0.82, recall T 0.79, B 0.95, CD14 Mono 0.91, FCGR3A Mono 0.57,
    NK 0.97. Always predicting T (the commonest type) scores 0.50.
    """
    kang = shared_data("kang_se_12261.h5ad")
    rng = np.random.default_rng(0)
    adata = kang[np.sort(rng.choice(kang.n_obs, 3000, replace=False))].copy()
    symbols = pd.Series(adata.var_names, index=adata.var["feature"].astype(str))
    markers = pd.DataFrame(0, index=[symbols[g] for genes in KANG_MARKERS.values() for g in genes],
                           columns=list(KANG_MARKERS))
    for cell_type, genes in KANG_MARKERS.items():
        markers.loc[[symbols[g] for g in genes], cell_type] = 1
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.obs["size_factor"] = lib / lib.mean()
    before = snapshot(adata)
    cellvi.settings.seed = 0
    cellvi.CellAssign.setup_anndata(adata, size_factor_key="size_factor")
    model = cellvi.CellAssign(adata, markers)
    model.train()
    predicted = model.predict(soft=False)
    truth = adata.obs["cluster_id"].astype(str).map(KANG_TRUTH).fillna("no marker").to_numpy()
    accuracy = (predicted == truth).mean()
    majority = (truth == "T").mean()
    assert accuracy > 0.75 and accuracy > majority + 0.2, accuracy
    recall = {t: (predicted[truth == t] == t).mean() for t in KANG_MARKERS}
    for cell_type, bound in {"T": 0.7, "B": 0.85, "CD14 Mono": 0.85, "FCGR3A Mono": 0.3, "NK": 0.9}.items():
        assert recall[cell_type] > bound, recall
    assert_unchanged(adata, before)
    assert model.var_names == list(markers.index)
