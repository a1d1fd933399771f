"""Setup: what is accepted, what is refused with a clear message, and that the user's
AnnData is never modified."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellvi
from cellvi.data import Registry

from helpers import simulate_counts


def snapshot(adata):
    return (
        adata.obs.copy(), adata.var.copy(), dict(adata.uns), list(adata.obsm.keys()),
        list(adata.layers.keys()), adata.X.copy(),
    )


def assert_unchanged(adata, before):
    obs, var, uns, obsm, layers, X = before
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)
    assert dict(adata.uns) == uns
    assert list(adata.obsm.keys()) == obsm
    assert list(adata.layers.keys()) == layers
    dense = (lambda m: m.toarray() if sp.issparse(m) else np.asarray(m))
    assert np.array_equal(dense(adata.X), dense(X), equal_nan=True)


def with_value(adata, row, col, value):
    X = adata.X.toarray()
    X[row, col] = value
    adata.X = sp.csr_matrix(X)
    return adata


@pytest.mark.parametrize(
    "corrupt, error, message",
    [
        (lambda a: with_value(a, 3, 4, -1.0), ValueError, "negative"),
        (lambda a: with_value(a, 3, 4, np.nan), ValueError, "NaN"),
        (lambda a: with_value(a, 3, 4, np.inf), ValueError, "infinite"),
        (lambda a: a.X.__setitem__((5, slice(None)), 0) or a, ValueError, "zero total counts"),
    ],
)
def test_bad_counts_are_refused_and_adata_untouched(sim, corrupt, error, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's sparse efficiency warning
        adata = corrupt(sim)
    before = snapshot(adata)
    with pytest.raises(error, match=message):
        cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    assert_unchanged(adata, before)


def test_zero_count_cell_is_named(sim):
    sim.X = sp.csr_matrix(sim.X.toarray() * (np.arange(sim.n_obs) != 7)[:, None])
    with pytest.raises(ValueError, match="cell7"):
        cellvi.SCVI.setup_anndata(sim)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_key": "donorx"}, KeyError, "available: cell_type, batch"),
        ({"labels_key": "nope"}, KeyError, "'nope'"),
        ({"layer": "counts"}, KeyError, "layer 'counts' not found"),
        ({"categorical_covariate_keys": ["missing"]}, KeyError, "missing"),
        ({"continuous_covariate_keys": ["cell_type"]}, TypeError, "numeric"),
        ({"batch_key": 3}, TypeError, "name of an obs column"),
    ],
)
def test_bad_keys_are_refused(sim, kwargs, error, message):
    before = snapshot(sim)
    with pytest.raises(error, match=message):
        cellvi.SCVI.setup_anndata(sim, **kwargs)
    assert_unchanged(sim, before)


def test_continuous_covariate_with_nan(sim):
    sim.obs.loc["cell3", "age"] = np.nan
    with pytest.raises(ValueError, match="'age'.*missing values"):
        cellvi.SCVI.setup_anndata(sim, continuous_covariate_keys=["age"])


def test_empty_anndata_and_duplicated_genes(sim):
    with pytest.raises(ValueError, match="no cells"):
        cellvi.SCVI.setup_anndata(sim[:0].copy())
    dup = sim.copy()
    dup.var_names = ["g"] * 2 + list(dup.var_names[2:])
    with pytest.raises(ValueError, match="duplicated.*var_names_make_unique"):
        cellvi.SCVI.setup_anndata(dup)


def test_non_integer_counts_warn_with_cause(sim):
    sim.X = sim.X.multiply(1.5).tocsr()
    with pytest.warns(UserWarning, match="normalized"):
        cellvi.SCVI.setup_anndata(sim)


def test_model_needs_setup(sim):
    with pytest.raises(ValueError, match="setup_anndata"):
        cellvi.SCVI(sim)


@pytest.mark.parametrize("form", ["csc", "dense_int", "view", "int_batch", "unused_category", "layer"])
def test_accepted_inputs_train_and_leave_adata_as_it_was(form):
    adata = simulate_counts(n_cells=200, n_genes=30)
    kwargs = {"batch_key": "batch"}
    if form == "csc":
        adata.X = sp.csc_matrix(adata.X)
    elif form == "dense_int":
        adata.X = adata.X.toarray().astype(np.int64)
    elif form == "view":
        adata = adata[adata.obs["batch"] == "b0"]
        assert adata.is_view
    elif form == "int_batch":
        kwargs = {"batch_key": "batch_int"}
    elif form == "unused_category":
        adata.obs["batch"] = pd.Categorical(adata.obs["batch"], categories=["b0", "zz", "b1"])
    elif form == "layer":
        adata.layers["counts"] = adata.X.copy()
        adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
        kwargs["layer"] = "counts"
    before = snapshot(adata)
    cellvi.SCVI.setup_anndata(adata, **kwargs)
    model = cellvi.SCVI(adata, n_latent=3)
    model.train(max_epochs=2.0)
    z = model.get_latent_representation()
    model.get_normalized_expression()
    assert z.shape == (adata.n_obs, 3) and np.isfinite(z).all()
    if form == "view":
        assert adata.is_view
    if form == "unused_category":
        assert model.registry.batch_categories == ["b0", "b1"]
    if form == "int_batch":
        assert model.registry.batch_categories == ["0", "1"]
    assert_unchanged(adata, before)


def test_registry_round_trip_and_reapplication(sim):
    reg = Registry.from_anndata(
        sim, "SCVI", batch_key="batch", labels_key="cell_type",
        categorical_covariate_keys=["donor"], continuous_covariate_keys=["age"],
    )
    back = Registry.from_dict(json.loads(json.dumps(reg.to_dict())))
    assert back == reg
    assert back.batch_categories == ["b0", "b1"]
    assert back.label_categories == ["type0", "type1", "type2"]
    assert back.categorical_covariate_categories == {"donor": ["d1", "d2", "d3"]}
    assert (back.n_batch, back.n_labels, back.n_cats_per_cov, back.n_continuous_cov) == (2, 3, [3], 1)
    # Re-applied to a subset in another order, codes follow the recorded categories.
    sub = sim[::-1][:50]
    t = back.tensors(sub)
    expected = pd.Categorical(sub.obs["batch"], categories=["b0", "b1"]).codes
    np.testing.assert_array_equal(t.batch, expected)
    np.testing.assert_allclose(t.continuous_covariates[:, 0], sub.obs["age"].to_numpy())
    assert t.X.shape == (50, sim.n_vars)


def test_new_data_with_unknown_category_or_other_genes(sim):
    reg = Registry.from_anndata(sim, "SCVI", batch_key="batch")
    other = sim.copy()
    other.obs["batch"] = other.obs["batch"].replace({"b1": "b9"})
    with pytest.raises(ValueError, match="b9.*known: b0, b1"):
        reg.tensors(other)
    with pytest.raises(ValueError, match="different order"):
        reg.tensors(sim[:, ::-1])
    with pytest.raises(ValueError, match="5 missing"):
        reg.tensors(sim[:, 5:])


def test_category_codes_error(sim):
    reg = Registry.from_anndata(sim, "SCVI", batch_key="batch")
    np.testing.assert_array_equal(reg.category_codes("batch", ["b1", "b0"]), [1, 0])
    with pytest.raises(ValueError, match="unknown batch category"):
        reg.category_codes("batch", "b7")


def test_setup_checks_the_data_once_and_models_still_build(sim):
    cellvi.SCVI.setup_anndata(sim, batch_key="batch")
    first = cellvi.SCVI(sim)
    assert first._own_tensors is not None  # handed over by the setup, not rebuilt
    second = cellvi.SCVI(sim)  # the next model checks the data again itself
    assert second._own_tensors is None
    np.testing.assert_array_equal(second._tensors().batch, first._own_tensors.batch)


@pytest.mark.parametrize("role", ["batch_key", "labels_key"])
def test_a_grouping_column_that_is_continuous_or_per_cell_is_refused(sim, role):
    sim.obs["score"] = np.linspace(0.1, 3.3, sim.n_obs)  # a continuous measurement
    with pytest.raises(ValueError, match=r"obs column 'score' \(" + role + r"\) holds non-integer "
                       r"numbers \(e\.g\. 0\.1\).*continuous_covariate_keys"):
        cellvi.SCVI.setup_anndata(sim, **{role: "score"})
    sim.obs["barcode"] = [f"cell{i}" for i in range(sim.n_obs)]  # one value per cell
    with pytest.raises(ValueError, match=r"different value in every one of the 600 cells "
                       r"\(cell0, cell1, cell2, \.\.\.\)"):
        cellvi.SCVI.setup_anndata(sim, **{role: "barcode"})
    sim.obs["whole"] = sim.obs["batch_int"].astype(float)  # whole numbers as floats: groups
    cellvi.SCVI.setup_anndata(sim, **{role: "whole"})
