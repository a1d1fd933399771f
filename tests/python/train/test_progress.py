"""Training progress (a bar in a terminal, plain lines elsewhere) and the convergence warning."""
from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest

import cellvi
from cellvi.train import ConvergenceWarning, Progress, not_converged
from helpers import simulate_counts


class _Pipe(io.StringIO):
    def isatty(self):
        return False


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_when_not_a_terminal():
    out = _Pipe()
    progress = Progress(40, enabled=True, style="auto", stream=out)
    assert progress.style == "lines"
    for epoch in range(40):
        progress.update(epoch, {"loss": "1.0", "elbo": f"{-100 + epoch}"})
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("Training for 40 epochs: the first took") and "in all" in lines[0]
    epochs = [int(re.match(r"Epoch (\d+)/40", line).group(1)) for line in lines[1:]]
    assert epochs == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]  # every 10%
    assert all("elapsed" in line and "remaining ~" in line and "elbo" in line for line in lines[1:])


def test_lines_for_short_runs_and_a_bar_in_a_terminal():
    out = _Pipe()
    progress = Progress(3, enabled=True, stream=out)
    for epoch in range(3):
        progress.update(epoch, {"elbo": "-1"})
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()[1:]] == ["Epoch 1/3", "Epoch 2/3",
                                                                                  "Epoch 3/3"]
    tty = _Terminal()
    bar = Progress(5, enabled=True, style="auto", stream=tty)
    assert bar.style == "bar"
    bar.close()
    silent = _Pipe()
    off = Progress(5, enabled=False, stream=silent)
    for epoch in range(5):
        off.update(epoch, {"elbo": "-1"})
    assert silent.getvalue() == ""
    with pytest.raises(ValueError, match="progress style"):
        Progress(5, enabled=True, style="fancy")


def test_training_prints_plain_lines_when_asked(capsys):
    adata = simulate_counts(n_cells=120, n_genes=30)
    cellvi.SCVI.setup_anndata(adata)
    model = cellvi.SCVI(adata, n_latent=2)
    old = cellvi.settings.progress_style
    cellvi.settings.progress_style = "lines"
    try:
        model.train(max_epochs=10, progress_bar=True)
    finally:
        cellvi.settings.progress_style = old
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "Training for 10 epochs" in err
    assert len(re.findall(r"^Epoch \d+/10 ", err, flags=re.M)) == 10


def test_not_converged_judges_the_validation_curve():
    epochs = np.arange(200)
    rising = -1000 + 300 * (1 - np.exp(-epochs / 400))  # far from its plateau
    flat = -1000 + 300 * (1 - np.exp(-epochs / 15))      # converged long ago
    rng = np.random.default_rng(0)
    noisy_flat = flat + rng.normal(0, 2, size=200)
    assert not_converged(rising) is not None
    assert not_converged(flat) is None
    assert not_converged(noisy_flat) is None
    assert not_converged(rising[:10]) is None  # too short to judge
    assert not_converged([None] * 50) is None  # no validation set


def test_training_warns_when_not_converged():
    cellvi.settings.seed = 0
    adata = simulate_counts(n_cells=400, n_genes=30)
    cellvi.SCVI.setup_anndata(adata)
    model = cellvi.SCVI(adata, n_latent=2)
    with pytest.warns(ConvergenceWarning, match="not converged: the validation ELBO was still rising"):
        model.train(max_epochs=30, lr=3e-4, progress_bar=False)
    with warnings.catch_warnings():  # no judgement when early stopping ends the run
        warnings.simplefilter("error", ConvergenceWarning)
        model.train(max_epochs=25, early_stopping=True, early_stopping_patience=1, progress_bar=False)
