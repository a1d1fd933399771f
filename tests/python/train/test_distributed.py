"""Data-parallel training (strategy="ddp"): two gloo processes on the CPU under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cellvi
from helpers import simulate_counts

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
BATCH, EPOCHS = 32, 4


def torchrun(out, *extra):
    """Two gloo ranks of the worker; (out, each rank's JSON)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
           "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", WORKER, str(out), str(BATCH), str(EPOCHS), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    return torchrun(tmp_path_factory.mktemp("ddp"))


def test_backed_data_in_several_windows_train_alike_on_every_rank(ddp_run, tmp_path):
    # Data larger than memory on several processes: every rank takes its slice of each
    # minibatch and holds only those cells; the ranks stay identical step by step.
    path = tmp_path / "sim.h5ad"
    simulate_counts(n_cells=300, n_genes=60, batch_strength=0.3).write_h5ad(path)
    out, (r0, r1) = torchrun(tmp_path, str(path))
    w0, w1 = (np.load(out / f"weights_rank{r}.npy") for r in (0, 1))
    assert w0.shape[0] == EPOCHS * 5  # the in-memory run's steps (whole minibatches per window)
    np.testing.assert_array_equal(w0, w1)
    assert r0["history"] == r1["history"]
    # Each epoch the ranks hold disjoint cells that together are the training cells.
    training = sorted(set(range(300)) - set(r0["validation"]))
    assert len(r0["planned"]) == len(r1["planned"]) == EPOCHS
    for rows0, rows1 in zip(r0["planned"], r1["planned"]):
        assert not set(rows0) & set(rows1)
        assert sorted(rows0 + rows1) == training
        assert abs(len(rows0) - len(rows1)) <= 5  # one near-half slice of each of 5 steps
    # Another order of cells (windows of 96 shuffled apart): the same fit within noise.
    in_memory = ddp_run[1][0]["elbo"]
    assert abs(r0["elbo"] - in_memory) < 0.02 * abs(in_memory), (r0["elbo"], in_memory)


def test_ranks_hold_identical_weights_after_every_step(ddp_run):
    out, _ = ddp_run
    w0, w1 = (np.load(out / f"weights_rank{r}.npy") for r in (0, 1))
    # 270 training cells in minibatches of 2 x 32: 4 full steps and a last one of 14 per epoch
    assert w0.shape[0] == EPOCHS * 5
    np.testing.assert_array_equal(w0, w1)
    assert np.abs(np.diff(w0, axis=0)).max() > 0  # and they did train
    np.testing.assert_array_equal(np.load(out / "buffers_rank0.npy"), np.load(out / "buffers_rank1.npy"))


def test_ranks_agree_on_history_split_and_seed(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0["history"] == r1["history"]
    assert r0["validation"] == r1["validation"] and r0["seed"] == r1["seed"] == 0
    assert len(r0["history"]["elbo_validation"]) == EPOCHS


def test_only_rank_0_writes(ddp_run):
    out, _ = ddp_run
    assert (out / "model_rank0").is_dir()
    assert not (out / "model_rank1").exists()
    loaded = cellvi.SCVI.load(out / "model_rank0")
    final = np.load(out / "weights_rank0.npy")[-1]
    np.testing.assert_allclose(torch.cat([p.detach().reshape(-1) for p in loaded.module.parameters()]).double().numpy(),
                               final, rtol=0, atol=0)


def test_matches_one_process_with_the_whole_minibatch(ddp_run):
    _, (r0, _) = ddp_run
    cellvi.settings.seed = 0
    adata = simulate_counts(n_cells=300, n_genes=60, batch_strength=0.3)
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.SCVI(adata, n_latent=5)
    model.train(max_epochs=EPOCHS, batch_size=2 * BATCH, n_epochs_kl_warmup=2)
    assert [int(i) for i in model.validation_indices] == r0["validation"]
    torch.manual_seed(0)
    single = float(model.get_elbo(indices=model.validation_indices))
    # The same cells per step and the same averaged loss; BatchNorm's statistics per half
    # minibatch and the random draws differ (measured: -158.71 vs -158.75).
    assert abs(r0["elbo"] - single) < 0.005 * abs(single), (r0["elbo"], single)
    history = np.asarray(r0["history"]["elbo_train"])
    assert history[-1] > history[0]


def test_strategy_errors(sim):
    cellvi.SCVI.setup_anndata(sim)
    model = cellvi.SCVI(sim)
    with pytest.raises(ValueError, match="strategy must be None or 'ddp'"):
        model.train(max_epochs=1, strategy="dp")
    if not torch.distributed.is_initialized():
        with pytest.raises(ValueError, match="torchrun"):
            model.train(max_epochs=1, strategy="ddp")


def test_average_gradients_leaves_unused_parameters_alone():
    from cellvi.train._distributed import Distributed

    if torch.distributed.is_initialized():
        pytest.skip("a process group is already running")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1, store=torch.distributed.HashStore())
    try:
        used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
        (used * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        Distributed(0, 1, torch.device("cpu")).average_gradients([used, unused])
        torch.testing.assert_close(used.grad, torch.tensor([1.0, 2.0, 3.0]))
        assert unused.grad is None  # an optimizer with weight decay must not move it
    finally:
        torch.distributed.destroy_process_group()
