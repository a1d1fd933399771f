"""Mixed precision (``TrainingPlan.precision="bf16-mixed"``): networks in bfloat16, the loss in
float32, everything kept between steps in float32."""
import numpy as np
import pytest
import torch

import cellvi
from cellvi.distributions import _fused
from cellvi.modules._base import _as_float32
from helpers import simulate_counts


def _train(adata, **plan):
    cellvi.settings.seed = 0
    model = cellvi.SCVI(adata, n_latent=4, n_hidden=32)
    model.train(max_epochs=8, batch_size=64, n_epochs_kl_warmup=2, plan_kwargs=plan)
    return model


def test_bf16_mixed_trains_with_a_float32_loss(monkeypatch):
    adata = simulate_counts(n_cells=300, n_genes=40)
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    reference = _train(adata)
    seen = []
    original = _fused.count_log_likelihood_per_cell

    def recording(mu, theta, zi_logits, *args):
        seen.append((mu.dtype, theta.dtype, zi_logits.dtype, torch.is_autocast_enabled("cpu")))
        return original(mu, theta, zi_logits, *args)

    monkeypatch.setattr("cellvi.distributions._counts.count_log_likelihood_per_cell", recording)
    cellvi.settings.seed = 0
    model = cellvi.SCVI(adata, n_latent=4, n_hidden=32)
    network_dtypes = set()
    linear = next(m for m in model.module.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, out: network_dtypes.add((out.dtype, torch.is_grad_enabled())))
    model.train(max_epochs=8, batch_size=64, n_epochs_kl_warmup=2,
                plan_kwargs={"precision": "bf16-mixed", "adversarial_classifier": True})
    assert (torch.bfloat16, True) in network_dtypes  # training steps: the networks in bfloat16
    assert (torch.float32, False) in network_dtypes  # validation: float32
    assert seen and all(s == (torch.float32, torch.float32, torch.float32, False) for s in seen)
    elbo = model.history["elbo_validation"].to_numpy()
    assert np.all(np.isfinite(elbo)) and elbo[-1] > elbo[0]
    # bfloat16 rounding perturbs the run about as much as another seed would, not more
    assert abs(elbo[-1] - reference.history["elbo_validation"].iloc[-1]) < 0.03 * abs(elbo[-1])
    assert all(p.dtype == torch.float32 for p in model.module.parameters())
    latent = model.get_latent_representation()
    assert latent.dtype == np.float32 and np.all(np.isfinite(latent))


def test_cast_up_copies_containers_and_distributions_without_changing_them():
    class Dist:
        def __init__(self, mu):
            self.mu, self.name = mu, "nb"

    low = torch.ones(3, dtype=torch.bfloat16)
    dist = Dist(low)
    out = _as_float32({"dist": dist, "pair": (low, 2), "ints": torch.arange(3)})
    assert out["dist"].mu.dtype == torch.float32 and out["dist"].name == "nb"
    assert dist.mu.dtype == torch.bfloat16  # the original is left as it was
    assert out["pair"][0].dtype == torch.float32 and out["pair"][1] == 2
    assert out["ints"].dtype == torch.int64


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        cellvi.train.TrainingPlan(precision="fp8")


def _sparse_counts(n_cells=200, n_genes=1000, density=0.02):
    """Counts sparse enough (2%) for the first layer to read them as sparse input."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = sp.random(n_cells, n_genes, density=density, format="csr", random_state=0, dtype=np.float32)
    X.data = np.ceil(X.data * 3)
    X[np.asarray(X.sum(1)).ravel() == 0, 0] = 1
    obs = pd.DataFrame({"batch": rng.choice(["a", "b"], n_cells)}, index=[f"c{i}" for i in range(n_cells)])
    return anndata.AnnData(X, obs=obs)


@pytest.mark.parametrize("kind", ["sparse input", "totalVI", "gimVI", "DestVI"])
def test_bf16_mixed_trains_every_kind_of_model(kind):
    """The model shapes with their own products: a sparse first layer (no bfloat16 sparse
    kernel: it stays float32), proteins, two data sets at once (JVAE's own forward), and
    DestVI's mixture of per-type decoders."""
    plan = {"precision": "bf16-mixed"}
    cellvi.settings.seed = 0
    adata = simulate_counts(n_cells=200, n_genes=40)
    if kind == "sparse input":
        adata = _sparse_counts()
        cellvi.SCVI.setup_anndata(adata, batch_key="batch")
        model = cellvi.SCVI(adata, n_latent=4)
    elif kind == "totalVI":
        adata.obsm["protein_expression"] = np.random.default_rng(0).poisson(20, (200, 6)).astype(np.float32)
        cellvi.TOTALVI.setup_anndata(adata, batch_key="batch", protein_expression_obsm_key="protein_expression")
        model = cellvi.TOTALVI(adata, n_latent=4)
    elif kind == "gimVI":
        spatial = adata[:80, :20].copy()
        cellvi.GIMVI.setup_anndata(adata)
        cellvi.GIMVI.setup_anndata(spatial)
        model = cellvi.GIMVI(adata, spatial, n_latent=4)
    else:
        cellvi.CondSCVI.setup_anndata(adata, labels_key="cell_type")
        reference = cellvi.CondSCVI(adata)
        reference.train(max_epochs=3, plan_kwargs=plan)
        model = cellvi.DestVI.from_rna_model(adata[:60].copy(), reference)
    model.train(max_epochs=3, plan_kwargs=plan)
    losses = model.history["loss_train"].to_numpy()
    assert np.all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in model.module.parameters())


def test_autocast_check_on_torch_before_2_4(monkeypatch):
    """torch < 2.4 (the package allows >= 2.2) has no device argument to is_autocast_enabled."""
    from cellvi.modules import _base

    def old_is_autocast_enabled():  # CUDA only, no argument
        return False

    monkeypatch.setattr(torch, "is_autocast_enabled", old_is_autocast_enabled)
    monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: True)
    assert _base._autocast_enabled("cpu") is True
    assert _base._autocast_enabled("cuda") is False
