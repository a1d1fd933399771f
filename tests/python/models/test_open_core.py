"""The core is open: a new model is a declaration (its fields, module, plan) plus its math.

A toy model written here, outside the package, uses field kinds no shipped model needs (a
binary layer, a continuous obsm matrix, cell indices), a global loss term, its own watched
metric, a scheduler and a table argument; it trains, records history, saves and loads with
no change to ``data/`` or ``train/``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import cellvi
from cellvi import _constants as C
from cellvi.data import CategoricalObsField, CellIndexField, LayerField, ObsmField, Registry
from cellvi.data._loader import DeviceData
from cellvi.models import BaseModel
from cellvi.modules import BaseModule, LossOutput

from helpers import simulate_counts


class ToyModule(BaseModule):
    """Bernoulli accessibility with a per-cell logit offset and per-region logits regularised
    towards a prior table (a global term), plus a Gaussian fit of an obsm matrix."""

    def __init__(self, n_regions, n_cells, n_obsm, prior_logits: np.ndarray):
        super().__init__()
        self.cell_offset = nn.Parameter(torch.zeros(n_cells))
        self.region_logits = nn.Parameter(torch.zeros(n_regions))
        self.obsm_mean = nn.Parameter(torch.zeros(n_obsm))
        self.register_buffer("prior_logits", torch.as_tensor(prior_logits, dtype=torch.float32))

    def inference_inputs(self, tensors):
        return {"cells": tensors[C.CELL_INDEX_KEY]}

    def generative_inputs(self, tensors, inference_out, **_):
        return {"cells": tensors[C.CELL_INDEX_KEY]}

    def inference(self, cells, n_samples=1):
        return {"z": self.cell_offset[cells][:, None]}

    def generative(self, cells):
        return {"logits": self.cell_offset[cells][:, None] + self.region_logits}

    def loss(self, tensors, inference_out, generative_out, kl_weight=1.0, n_obs=1):
        x = (tensors["access"] > 0).float()
        rec = nn.functional.binary_cross_entropy_with_logits(generative_out["logits"], x, reduction="none").sum(-1)
        rec = rec + 0.5 * (tensors["signal"] - self.obsm_mean).square().sum(-1)
        kl_global = 0.5 * (self.region_logits - self.prior_logits).square().sum()
        loss = rec.mean() + kl_weight * kl_global / n_obs
        return LossOutput(loss, rec, torch.zeros_like(rec), {"mean_offset": self.cell_offset.mean().detach()},
                          kl_global=kl_global.detach())


class ToyModel(BaseModel):
    _plan_defaults = {"lr": 5e-2, "reduce_lr_on_plateau": True, "lr_patience": 2,
                      "monitor": "mean_offset_train"}  # any history column, e.g. an extra metric

    @classmethod
    def setup_anndata(cls, adata, layer=None, signal_obsm_key="signal", group_key=None):
        cls._setup(adata, [LayerField("access", layer, values="binary"),
                           ObsmField("signal", signal_obsm_key, values="continuous"),
                           CategoricalObsField(C.BATCH_KEY, group_key, "group_key", query="append"),
                           CellIndexField(C.CELL_INDEX_KEY)])

    def __init__(self, adata=None, prior_table: pd.DataFrame | None = None, **kwargs):
        super().__init__(adata, prior_table=prior_table, **kwargs)

    def _build_module(self):
        reg = self.registry
        table = self.init_kwargs["prior_table"]
        return ToyModule(len(reg.field("access").var_names), self.adata.n_obs, len(reg.field("signal").column_names),
                         table.loc[reg.field("access").var_names, "logit"].to_numpy())


def toy_data():
    adata = simulate_counts(n_cells=150, n_genes=25)
    adata.obsm["signal"] = np.random.default_rng(0).normal(2.0, 1.0, size=(150, 3)).astype(np.float32)
    return adata


def test_a_new_kind_of_model_is_a_declaration(tmp_path):
    cellvi.settings.seed = 0
    adata = toy_data()
    ToyModel.setup_anndata(adata, group_key="batch")
    reg = ToyModel(adata, prior_table=pd.DataFrame({"logit": np.linspace(-1, 1, 25)},
                                                   index=adata.var_names)).registry
    assert list(reg.fields) == ["access", "signal", C.BATCH_KEY, C.CELL_INDEX_KEY]
    tensors = reg.tensors(adata)
    assert sp.issparse(tensors["access"]) and tensors["signal"].shape == (150, 3)
    np.testing.assert_array_equal(tensors[C.CELL_INDEX_KEY], np.arange(150))
    # The loader serves every field, with the non-zeros of the sparse one.
    batch = DeviceData(tensors).minibatch(torch.tensor([3, 7]))
    assert set(batch) == {"access", *C.nz_keys("access"), "signal", C.BATCH_KEY, C.CELL_INDEX_KEY}
    # The JSON state round-trips, field by field.
    assert Registry.from_dict(reg.to_dict()) == reg

    table = pd.DataFrame({"logit": np.linspace(-1, 1, 25)}, index=adata.var_names)
    ToyModel.setup_anndata(adata, group_key="batch")
    model = ToyModel(adata, prior_table=table)
    model.train(max_epochs=15, train_size=1.0, batch_size=50, plan_kwargs={"loss_kwargs": {"n_obs": 150}})
    history = model.history
    assert {"kl_global_train", "mean_offset_train", "lr"} <= set(history.columns)
    assert history["reconstruction_loss_train"].iloc[-1] < history["reconstruction_loss_train"].iloc[0]
    # The ELBO counts the global term once per data set.
    row = history.iloc[-1]
    assert row["elbo_train"] == pytest.approx(-row["reconstruction_loss_train"] - row["kl_global_train"] / 150,
                                              rel=1e-5)

    model.save(tmp_path / "toy")
    loaded = cellvi.load_model(tmp_path / "toy", adata, device="cpu")
    pd.testing.assert_frame_equal(loaded.init_kwargs["prior_table"], table, check_dtype=False)
    for key, value in model.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    assert "prior_table=<DataFrame 25x1>" in repr(loaded)


def test_array_arguments_are_saved_beside_the_weights(tmp_path):
    cellvi.settings.seed = 0
    adata = toy_data()
    ToyModel.setup_anndata(adata)
    table = pd.DataFrame({"logit": np.arange(25, dtype=np.float64)}, index=adata.var_names)
    model = ToyModel(adata, prior_table=table)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / C.ARGUMENTS_FILE).exists()
    with np.load(tmp_path / "m" / C.ARGUMENTS_FILE, allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["prior_table/0"], np.arange(25))


def test_plan_settings_are_checked():
    adata = toy_data()
    cellvi.SCVI.setup_anndata(adata)
    model = cellvi.SCVI(adata, n_latent=2)
    with pytest.raises(TypeError, match="unknown plan_kwargs.*'nonsense'"):
        model.train(max_epochs=1, plan_kwargs={"nonsense": 1})
    with pytest.raises(ValueError, match="lr must be a positive number"):
        model.train(max_epochs=1, lr=-1.0)
    with pytest.raises(ValueError, match="watches 'elbo_test'"):
        model.train(max_epochs=1, plan_kwargs={"monitor": "elbo_test"}, early_stopping=True)
    with pytest.raises(ValueError, match="optimizer must be one of Adam, AdamW, got 'SGD'"):
        model.train(max_epochs=1, plan_kwargs={"optimizer": "SGD"})
    with pytest.raises(ValueError, match="monitor_mode must be 'max' or 'min', got 'lower'"):
        model.train(max_epochs=1, plan_kwargs={"monitor_mode": "lower"})


def test_scvi_with_scheduler_and_adversarial_classifier():
    cellvi.settings.seed = 0
    adata = simulate_counts(n_cells=200, n_genes=30)
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.SCVI(adata, n_latent=3)
    model.train(max_epochs=4, plan_kwargs={"reduce_lr_on_plateau": True, "adversarial_classifier": True,
                                           "n_steps_kl_warmup": 4})
    history = model.history
    assert {"lr", "adversarial_classifier_loss_train"} <= set(history.columns)
    assert history["kl_weight"].iloc[-1] == 1.0  # 4 steps of warm-up (2 epochs) are over
