"""SCANVI: setup, semi-supervised training, prediction, initialisation from SCVI, save/load,
and label recovery on real data."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import cellvi
from conftest import shared_data
from helpers import simulate_counts


def with_hidden_labels(adata, fraction: float, seed: int = 0, key: str = "labels"):
    """Keep ``fraction`` of the true cell types in obs[key]; the rest become "Unknown"."""
    rng = np.random.default_rng(seed)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs[key] = np.where(rng.random(adata.n_obs) < fraction, truth, "Unknown")
    return truth


@pytest.fixture(scope="module")
def sim_scanvi():
    cellvi.settings.seed = 0
    adata = simulate_counts(n_cells=800, batch_strength=0.3)
    truth = with_hidden_labels(adata, 0.1)
    cellvi.SCANVI.setup_anndata(adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = cellvi.SCANVI(adata, n_latent=5)
    model.train(max_epochs=15)
    return adata, truth, model


def test_semi_supervised_training_learns_the_labels(sim_scanvi):
    adata, truth, model = sim_scanvi
    h = model.history
    assert {"classification_loss_train", "accuracy_train", "elbo_validation"} <= set(h.columns)
    assert h["classification_loss_train"].iloc[-1] < h["classification_loss_train"].iloc[0] / 2
    assert h["elbo_train"].iloc[-1] > h["elbo_train"].iloc[0]
    hidden = adata.obs["labels"].to_numpy() == "Unknown"
    assert (model.predict()[hidden] == truth[hidden]).mean() > 0.95


def test_predict_names_probabilities_indices_and_new_data(sim_scanvi):
    adata, _, model = sim_scanvi
    labels = model.predict()
    assert labels.shape == (adata.n_obs,) and set(labels) <= {"type0", "type1", "type2"}
    soft = model.predict(soft=True)
    assert list(soft.columns) == ["type0", "type1", "type2"]
    assert list(soft.index) == list(adata.obs_names)
    np.testing.assert_allclose(soft.to_numpy().sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(soft.idxmax(axis=1).to_numpy(), labels)
    picked = model.predict(indices=[3, 1], soft=True)
    assert list(picked.index) == [adata.obs_names[3], adata.obs_names[1]]
    # New cells need no labels column; labels of their own that the model does not know, or
    # none (NaN), are read as unlabelled (with a warning for the unknown ones).
    new = adata[:50].copy()
    del new.obs["labels"]
    np.testing.assert_array_equal(model.predict(new), labels[:50])
    new.obs["labels"] = pd.Categorical(["their_own_type"] * 25 + [np.nan] * 25)
    with pytest.warns(UserWarning, match="25 cells have labels the model does not know .*their_own_type"):
        np.testing.assert_array_equal(model.predict(new), labels[:50])


def test_every_scvi_query_works(sim_scanvi):
    adata, _, model = sim_scanvi
    assert model.get_latent_representation().shape == (adata.n_obs, 5)
    expr = model.get_normalized_expression(gene_list=["gene1", "gene2"])
    assert expr.shape == (adata.n_obs, 2)
    de = model.differential_expression(groupby="cell_type", group1="type0", group2="type1", n_samples=50,
                                       mode="change")
    assert {"proba_de", "lfc_mean", "bayes_factor"} <= set(de.columns)
    assert np.isfinite(model.get_elbo()) and model.get_elbo() < 0


def test_save_load_round_trip(sim_scanvi, tmp_path):
    adata, _, model = sim_scanvi
    model.save(tmp_path / "m")
    loaded = cellvi.load_model(tmp_path / "m", adata)
    assert isinstance(loaded, cellvi.SCANVI)
    pd.testing.assert_frame_equal(loaded.predict(soft=True), model.predict(soft=True))
    loaded_without_data = cellvi.SCANVI.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded_without_data.predict(adata), model.predict())


def test_from_scvi_model_starts_from_its_weights():
    cellvi.settings.seed = 1
    adata = simulate_counts(n_cells=500, batch_strength=0.3)
    truth = with_hidden_labels(adata, 0.2)
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    scvi = cellvi.SCVI(adata, n_latent=4, dispersion="gene-batch")
    with pytest.raises(ValueError, match="not trained"):
        cellvi.SCANVI.from_scvi_model(scvi, "Unknown", labels_key="labels")
    scvi.train(max_epochs=10)
    scanvi = cellvi.SCANVI.from_scvi_model(scvi, "Unknown", labels_key="labels", classification_ratio=20)
    assert scanvi.init_kwargs["dispersion"] == "gene-batch"
    assert scanvi.module.classification_ratio == 20
    np.testing.assert_array_equal(scanvi.get_latent_representation(), scvi.get_latent_representation())
    scanvi.train()
    assert len(scanvi.history) == 10  # a third of the default 400 epochs, capped at 10
    assert (scanvi.predict() == truth).mean() > 0.9
    with pytest.raises(KeyError, match="nope"):
        cellvi.SCANVI.from_scvi_model(scvi, "Unknown", labels_key="nope")


def test_labelled_and_unlabelled_cells_are_split_apart(sim_scanvi):
    # As scvi-tools: ceil(0.9 n) of each group trains, whatever the seed, so the classifier's
    # share of labelled cells does not vary with the draw.
    adata, _, model = sim_scanvi
    labelled = (adata.obs["labels"] != "Unknown").to_numpy()
    for seed in range(4):
        cellvi.settings.seed = seed
        _, train, val = model._training_data(0.9, None)
        assert labelled[train].sum() == math.ceil(0.9 * labelled.sum())
        assert (~labelled[train]).sum() == math.ceil(0.9 * (~labelled).sum())
        assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == adata.n_obs
    cellvi.settings.seed = 0
    # split_indices itself: each group split on its own, the validation fraction taken of
    # each group, and a one-cell group trains
    from cellvi.train import split_indices

    groups = np.repeat([0, 1, 2], [5, 20, 75])
    train, val = split_indices(100, 0.5, 0.2, groups=groups)
    assert [int((groups[train] == g).sum()) for g in range(3)] == [3, 10, 38]
    assert [int((groups[val] == g).sum()) for g in range(3)] == [1, 4, 15]
    train, val = split_indices(10, 0.9, groups=np.r_[0, np.ones(9, int)])
    assert 0 in train and len(train) == 10 and len(val) == 0
    with pytest.raises(ValueError, match="one code per cell"):
        split_indices(100, 0.5, groups=groups[:10])


def test_n_samples_per_label_caps_the_labelled_cells_and_redraws_them_every_epoch(sim_scanvi):
    adata, _, model = sim_scanvi
    model._n_samples_per_label = 5
    draw = model._labelled_indices(np.arange(adata.n_obs))
    model._n_samples_per_label = None
    epochs = [draw(epoch) for epoch in range(3)]
    for chosen in epochs:
        labels = adata.obs["labels"].to_numpy()[chosen]
        assert len(chosen) == 15 and (pd.Series(labels).value_counts() == 5).all()
        assert (adata.obs["labels"].to_numpy()[chosen] != "Unknown").all()
    assert not np.array_equal(epochs[0], epochs[1])  # a new subset each epoch
    # And through the trainer: a short run with the cap trains and keeps learning the labels.
    cellvi.settings.seed = 0
    capped = cellvi.SCANVI(adata, n_latent=5)
    capped.train(max_epochs=8, n_samples_per_label=10)
    assert len(capped.history) == 8
    assert capped.history["loss_train"].iloc[-1] < capped.history["loss_train"].iloc[0]


def test_setup_errors_and_warnings():
    adata = simulate_counts(n_cells=100)
    with pytest.raises(KeyError, match="'labels'"):
        cellvi.SCANVI.setup_anndata(adata, labels_key="labels", unlabeled_category="Unknown")
    with pytest.warns(UserWarning, match="fully supervised"):
        cellvi.SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category="Unknown")
    adata.obs["none"] = "Unknown"
    with pytest.raises(ValueError, match="no label other than"):
        cellvi.SCANVI.setup_anndata(adata, labels_key="none", unlabeled_category="Unknown")
    with pytest.raises(ValueError, match="set up with SCVI"):
        cellvi.SCVI.setup_anndata(adata)
        cellvi.SCANVI(adata)
    cellvi.SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category="type0")
    with pytest.raises(ValueError, match="gene-label"):
        cellvi.SCANVI(adata, dispersion="gene-label")
    # Cells without a value (NaN) are unlabelled; a number matches the column's own spelling
    # of it (-1.0 from R for a column of integers holding -1).
    adata.obs["partial"] = pd.Categorical(np.where(np.arange(100) % 2 == 0, adata.obs["cell_type"], None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # half the cells are unlabelled: not "fully supervised"
        cellvi.SCANVI.setup_anndata(adata, labels_key="partial", unlabeled_category="Unknown")
    model = cellvi.SCANVI(adata)
    assert model.registry.label_categories == ["type0", "type1", "type2"]
    assert (model._tensors().labels[1::2] == 3).all() and (model._tensors().labels[::2] < 3).all()
    adata.obs["coded"] = np.where(np.arange(100) % 2 == 0, pd.Categorical(adata.obs["cell_type"]).codes, -1)
    cellvi.SCANVI.setup_anndata(adata, labels_key="coded", unlabeled_category=-1.0)
    model = cellvi.SCANVI(adata)
    assert "-1" not in model.registry.label_categories and (model._tensors().labels[1::2] == 3).all()
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        model.train(max_epochs=1, batch_size=1)


def test_kang_labels_recovered_from_ten_percent():
    adata = shared_data("kang_se_12261.h5ad")
    adata.obs["cell_type"] = adata.obs["cluster_id"]
    truth = with_hidden_labels(adata, 0.1, seed=0)
    cellvi.settings.seed = 0
    cellvi.SCANVI.setup_anndata(adata, labels_key="labels", unlabeled_category="Unknown", batch_key="sample_id")
    model = cellvi.SCANVI(adata)
    model.train(max_epochs=8)
    hidden = adata.obs["labels"].to_numpy() == "Unknown"
    accuracy = (model.predict()[hidden] == truth[hidden]).mean()
    chance = pd.Series(truth[hidden]).value_counts(normalize=True).max()  # always the commonest type
    assert chance < 0.45 and accuracy > 0.85


def test_marginal_ll_uses_the_hierarchical_prior(sim_scanvi):
    adata, _, model = sim_scanvi
    cellvi.settings.seed = 0
    ll = model.get_marginal_ll(indices=np.arange(40), n_mc_samples=100, return_mean=False)
    elbo = model.get_elbo(indices=np.arange(40), return_mean=False)
    assert np.isfinite(ll).all() and (ll < 0).all()
    assert ll.mean() > elbo.mean() - 1.0  # log p(x) is bounded below by the ELBO (up to noise)
    # The estimate of log p(z1) is not the standard normal's.
    z = torch.randn(7, 5)
    module = model.module
    assert not torch.allclose(module.log_prior_z(z, z), cellvi.modules.VAE.log_prior_z(module, z, z))
