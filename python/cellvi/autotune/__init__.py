"""Hyperparameter search for every cellvi model, on Optuna.

>>> from cellvi.autotune import run_autotune, choice, loguniform
>>> res = run_autotune(cellvi.SCVI, adata, max_epochs=20, num_samples=20)
>>> res.results           # one row per trial; trial 0 is the model's defaults
>>> res.best_params, res.model

Optuna is an optional dependency (``pip install 'cellvi[autotune]'``); importing this
package does not import it.
"""
from ._space import Spec, choice, loguniform, randint, uniform
from ._tune import AutotuneResult, default_search_space, run_autotune, trials_dataframe, worker

__all__ = ["AutotuneResult", "Spec", "choice", "default_search_space", "loguniform", "randint", "run_autotune",
           "trials_dataframe", "uniform", "worker"]
