"""The trainer's per-epoch callback (what the search's pruning reports through)."""
import numpy as np
import pytest
import torch

import cellvi
from cellvi.train import StopTraining, epoch_callback
from helpers import simulate_counts


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model():
    cellvi.settings.seed = 0
    adata = simulate_counts(n_cells=120, n_genes=30)
    cellvi.SCVI.setup_anndata(adata)
    return cellvi.SCVI(adata, n_latent=3, n_hidden=16)


def test_callback_sees_every_epoch_and_may_stop_training():
    model = _model()
    seen = []

    def cb(trainer, row):
        seen.append(row["epoch"])
        held = trainer.evaluate(np.arange(10), "heldout")  # another set of cells, same trainer
        assert np.isfinite(held["elbo_heldout"])
        if row["epoch"] == 1:
            raise StopTraining

    with epoch_callback(cb):
        model.train(max_epochs=5, progress_bar=False)
    assert seen == [0, 1]
    assert len(model.history) == 2 and model.is_trained
    # outside the block, training runs all its epochs without the callback
    model.train(max_epochs=3, progress_bar=False)
    assert seen == [0, 1] and len(model.history) == 3


def test_other_exceptions_propagate_and_leave_the_model_as_it_was():
    model = _model()

    class Pruned(Exception):
        pass

    def cb(trainer, row):
        raise Pruned

    with pytest.raises(Pruned), epoch_callback(cb):
        model.train(max_epochs=4, progress_bar=False)
    assert model.history.empty and not model.is_trained
