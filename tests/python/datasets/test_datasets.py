"""cellvi.datasets: the shipped data sets load with what their docstrings promise; pseudo-spots
simulated from them hold what they say."""
import numpy as np
import pytest
import pandas as pd
import scipy.sparse as sp

import cellvi.datasets


def test_pbmc_cite_small_has_counts_and_proteins():
    adata = cellvi.datasets.pbmc_cite_small()
    assert adata.shape == (400, 500)
    assert sp.issparse(adata.X)
    values = adata.X.data
    assert (values >= 0).all() and (values == np.round(values)).all()
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    proteins = adata.obsm["protein_expression"]
    assert isinstance(proteins, pd.DataFrame) and proteins.shape == (400, 14)
    assert proteins.index.equals(adata.obs_names)
    assert "CD3_TotalSeqB" in proteins.columns
    assert (proteins.to_numpy() >= 0).all() and (proteins.to_numpy() % 1 == 0).all()
    assert (np.asarray(adata.X.sum(axis=1)).ravel() > 0).all()


def test_bmmc_atac_small_has_peak_counts_of_six_types():
    adata = cellvi.datasets.bmmc_atac_small()
    assert adata.shape == (600, 2000)
    assert sp.issparse(adata.X)
    values = adata.X.data
    assert (values > 0).all() and (values == np.round(values)).all()
    assert adata.X.max() > 1  # counts, not yet binarised
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    assert adata.var_names.str.match(r"^chr[0-9XY]+:\d+-\d+$").all()
    assert adata.obs["cell_type"].value_counts().eq(100).all()
    assert set(adata.obs["cell_type"].cat.categories) == {"CD14.Mono.1", "B", "CD4.N1", "CD8.CM", "NK", "GMP"}
    assert (np.asarray((adata.X > 0).sum(axis=1)).ravel() > 0).all()
    assert (np.asarray((adata.X > 0).sum(axis=0)).ravel() > 0).all()


def test_merfish_pair_has_counts_coordinates_and_shared_genes():
    seq = cellvi.datasets.merfish_reference_small()
    spatial = cellvi.datasets.merfish_spatial_small()
    assert seq.shape == (1304, 134) and spatial.shape == (750, 134)
    assert list(seq.var_names) == list(spatial.var_names)
    for adata in (seq, spatial):
        assert sp.issparse(adata.X)
        values = adata.X.data
        assert (values > 0).all() and (values == np.round(values)).all()
        assert adata.var_names.is_unique and adata.obs_names.is_unique
        assert (np.asarray(adata.X.sum(axis=1)).ravel() > 0).all()
    assert seq.obs["cell_type"].cat.categories.size == 14
    assert spatial.obsm["spatial"].shape == (750, 2)
    np.testing.assert_allclose(spatial.obsm["spatial"], spatial.obs[["x", "y"]].to_numpy())


def test_pseudo_spots_sum_cells_with_known_proportions():
    from cellvi.datasets import pseudo_spots, split_by_label

    adata = cellvi.datasets.merfish_reference_small()
    reference, pool = split_by_label(adata, "cell_type", rng=0)
    assert reference.n_obs + pool.n_obs == adata.n_obs
    assert not set(reference.obs_names) & set(pool.obs_names)
    for label, n in adata.obs["cell_type"].value_counts().items():  # half of each label, rounded down
        assert (reference.obs["cell_type"] == label).sum() == n // 2
    spots, truth = pseudo_spots(pool, "cell_type", n_spots=50, rng=1, cells_per_spot=(3, 5))
    assert spots.shape == (50, adata.n_vars) and list(truth.index) == list(spots.obs_names)
    np.testing.assert_allclose(truth.sum(axis=1), 1.0)
    # each spot is 3-5 whole cells: fractions are multiples of 1/k for one k in 3..5
    k = np.round(1 / truth.where(truth > 0).min(axis=1)).to_numpy()
    assert set(k) <= {3.0, 4.0, 5.0}
    # the spots' counts are sums of the pool's cells: totals lie within the k smallest/largest cells
    cell_totals = np.sort(np.asarray(pool.X.sum(axis=1)).ravel())
    spot_totals = np.asarray(spots.X.sum(axis=1)).ravel()
    assert (spot_totals >= cell_totals[:3].sum() - 1e-3).all() and (spot_totals <= cell_totals[-5:].sum() + 1e-3).all()
    again, truth_again = pseudo_spots(pool, "cell_type", n_spots=50, rng=1, cells_per_spot=(3, 5))
    assert (again.X != spots.X).nnz == 0 and truth_again.equals(truth)  # seeded
    with pytest.raises(ValueError, match="cells_per_spot"):
        pseudo_spots(pool, "cell_type", 5, cells_per_spot=(4, 2))
    with pytest.raises(KeyError, match="not a column"):
        split_by_label(adata, "no_such_column")
