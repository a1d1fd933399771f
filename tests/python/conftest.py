"""Shared fixtures: small simulated and real AnnData, built once per session."""
from __future__ import annotations

import os
import warnings

import anndata
import pytest
import torch

import cellvi
from helpers import simulate_counts

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")

torch.set_num_threads(2)
cellvi.settings.progress_bar = False


@pytest.fixture
def sim():
    """A fresh simulated AnnData (each test may set it up its own way)."""
    return simulate_counts()


@pytest.fixture(scope="session")
def sim_trained():
    """(adata, SCVI) trained briefly on simulated data with batch_key="batch"; do not mutate."""
    cellvi.settings.seed = 0
    adata = simulate_counts(batch_strength=0.3)
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.SCVI(adata, n_latent=5)
    # The warm-up ends halfway, so that the tests see a model trained at full KL weight
    # (the default 400-epoch warm-up would end this short run near weight 0.05).
    model.train(max_epochs=20, n_epochs_kl_warmup=10)
    return adata, model


def shared_data(name: str) -> anndata.AnnData:
    path = os.path.join(DATA_DIR, name)
    if not os.path.exists(path):
        pytest.skip(f"shared data set {name} not found at {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return anndata.read_h5ad(path)


@pytest.fixture(scope="session")
def zeisel():
    return shared_data("zeisel_cortex_200genes.h5ad")
