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
