"""An opt-in compiled training run (TrainingPlan.compile): torch.compile of the networks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cellvi
from helpers import simulate_counts


def test_compiled_networks_train_and_come_back_eager(tmp_path):
    pytest.importorskip("torch._inductor")
    cellvi.settings.seed = 0
    adata = simulate_counts(n_cells=200, n_genes=30)
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    eager = cellvi.SCVI(adata, n_latent=4, n_hidden=16)
    eager.train(max_epochs=3, batch_size=64, n_epochs_kl_warmup=1)
    cellvi.settings.seed = 0
    model = cellvi.SCVI(adata, n_latent=4, n_hidden=16)
    names = [k for k, _ in model.module.named_parameters()]
    model.train(max_epochs=3, batch_size=64, n_epochs_kl_warmup=1, plan_kwargs={"compile": True})
    elbo = model.history["elbo_validation"].to_numpy()
    assert np.all(np.isfinite(elbo)) and elbo[-1] > elbo[0]
    # As another seed would differ (dropout draws from the compiled kernels' stream), not more.
    reference = eager.history["elbo_validation"].iloc[-1]
    assert abs(elbo[-1] - reference) < 0.03 * abs(reference), (elbo[-1], reference)
    assert [k for k, _ in model.module.named_parameters()] == names  # saved models unchanged
    assert all(child._compiled_call_impl is None for child in model.module.children())  # eager queries
    model.save(tmp_path / "m")
    loaded = cellvi.SCVI.load(tmp_path / "m", adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-6)
