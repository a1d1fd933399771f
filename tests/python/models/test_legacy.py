"""Models saved before the registry became a list of fields (save format 1) still load and
give the same latent space."""
from __future__ import annotations

import os

import numpy as np
import pytest

import cellvi

from helpers import simulate_counts

HERE = os.path.join(os.path.dirname(__file__), "legacy")


def legacy_data():
    """The AnnData the format-1 models were trained on (simulated, so not shipped)."""
    adata = simulate_counts(n_cells=120, n_genes=20)
    adata.obs["lab"] = adata.obs["cell_type"].astype(str).where(np.arange(120) % 3 == 0, "Unknown")
    return adata


@pytest.mark.parametrize("name, cls", [("scvi_format1", cellvi.SCVI), ("scanvi_format1", cellvi.SCANVI)])
def test_format1_models_load_and_answer_as_before(name, cls):
    adata = legacy_data()
    model = cellvi.load_model(os.path.join(HERE, name), adata, device="cpu")
    assert type(model) is cls and model.is_trained
    assert model.registry.batch_categories == ["b0", "b1"]
    expected = np.load(os.path.join(HERE, f"{name}_latent.npy"))
    np.testing.assert_allclose(model.get_latent_representation(), expected, rtol=1e-5, atol=1e-6)
    if cls is cellvi.SCANVI:
        assert model.registry.unlabeled_category == "Unknown"
        assert set(model.predict()) <= set(model.registry.label_categories)
