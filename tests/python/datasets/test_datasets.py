"""cellvi.datasets: the shipped data sets load with what their docstrings promise."""
import numpy as np
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
