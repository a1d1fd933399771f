"""retained_heap(): freed memory stays in the heap for the next training step (glibc)."""
import resource

import pytest
import torch

import cellvi.train._trainer as trainer
from cellvi.train._trainer import _glibc, retained_heap

pytestmark = pytest.mark.skipif(_glibc() is None, reason="the heap is tuned with glibc's mallopt only")


def _faults_of_steps(n_steps: int, n_tensors: int = 4, numel: int = 5_000_000) -> int:
    """Minor page faults over ``n_steps`` "steps" that each allocate and fill ``n_tensors``
    20 MB tensors, then free them together (as a training step frees its temporaries)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n_steps):
        tensors = [torch.ones(numel) for _ in range(n_tensors)]
        del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_inside():
    pages_per_tensor = 5_000_000 * 4 // 4096
    with retained_heap():
        _faults_of_steps(3)  # the first steps fault their memory in
        faults = _faults_of_steps(10)
    # Outside, glibc trims the 80 MB freed at the heap's top after every step, and each step
    # faults all four tensors in again (~195,000 faults for these 10 steps when measured).
    # Inside, a heap already fragmented by earlier tests may still grow for one or two of
    # the 40 tensors (seen in the full suite), never for most of them.
    assert faults < 10 * 4 * pages_per_tensor / 4


def test_nesting_and_errors_leave_no_state():
    with pytest.raises(RuntimeError, match="boom"):
        with retained_heap():
            with retained_heap():
                assert trainer._retained_heap_depth == 2
                raise RuntimeError("boom")
    assert trainer._retained_heap_depth == 0


def test_training_runs_inside(monkeypatch):
    import anndata
    import numpy as np

    import cellvi

    depths = []
    original = trainer.Trainer._run_epochs

    def spy(self, *args, **kwargs):
        depths.append(trainer._retained_heap_depth)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "_run_epochs", spy)
    rng = np.random.default_rng(0)
    adata = anndata.AnnData(rng.poisson(1.0, size=(60, 20)).astype(np.float32))
    cellvi.SCVI.setup_anndata(adata)
    cellvi.SCVI(adata, n_latent=2).train(max_epochs=1)
    assert depths == [1] and trainer._retained_heap_depth == 0
