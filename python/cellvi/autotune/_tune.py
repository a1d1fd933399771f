"""Hyperparameter search on Optuna: one study per search, trials trained on a fixed train split
and scored on fixed held-out cells, run by workers that share the study's storage (a SQLite
file in the run directory by default, a PostgreSQL database across machines).

The driver (:func:`run_autotune`) checks everything, creates or resumes the study, records in
it all a worker needs (model class, setup, split, space, metric, epochs), starts local workers
and collects the result. A worker (:func:`worker`, ``python -m cellvi.autotune worker``) reads
that record, rebuilds the same split from the same data, and runs trials until the study has
as many as asked for. Nothing here is specific to one model: a model only declares its
default search space (``_tune_space``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd

from ._space import SECTIONS, Spec, check_space, choice, describe, loguniform, space_from_json, space_to_json

logger = logging.getLogger("cellvi")

METRICS = {"marginal_ll": "max", "elbo_validation": "max", "reconstruction_validation": "min"}
SCHEDULERS = ("asha", "median", None)
CONFIG_ATTR = "cellvi_config"
TARGET_ATTR = "cellvi_target_trials"
STORAGE_ENV = "CELLVI_AUTOTUNE_STORAGE"
# Arguments of train() that the search sets itself: every trial trains on all of the train
# split (the held-out cells are the validation), quietly.
RESERVED_TRAIN = ("train_size", "validation_size", "progress_bar", "plan_kwargs")
# A generic space for models that declare none: whichever of these the model takes.
GENERIC_MODEL_SPACE = {"n_hidden": choice([64, 128, 256]), "n_latent": choice([5, 10, 20, 30]),
                       "n_layers": choice([1, 2, 3]), "dropout_rate": choice([0.0, 0.05, 0.1, 0.2])}
GENERIC_TRAIN_SPACE = {"lr": loguniform(1e-4, 1e-2)}


def _optuna():
    try:
        import optuna
    except ImportError as err:
        raise ImportError("cellvi.autotune needs Optuna; install it with: pip install 'cellvi[autotune]'") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The heartbeat (failing the trials of dead workers) and multivariate TPE are marked
    # experimental; what they warn about is our choice, not the user's.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# -- model introspection -----------------------------------------------------------------------
def _model_class(model_cls):
    from ..models._base import _MODEL_CLASSES, BaseModel

    if isinstance(model_cls, str):
        if model_cls not in _MODEL_CLASSES:
            raise ValueError(f"unknown model {model_cls!r}; models: {', '.join(sorted(_MODEL_CLASSES))}")
        return _MODEL_CLASSES[model_cls]
    if not (isinstance(model_cls, type) and issubclass(model_cls, BaseModel)):
        raise TypeError(f"model_cls must be a cellvi model class such as cellvi.SCVI, got {model_cls!r}")
    return model_cls


def _parameters(fn) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named parameters of ``fn`` (without self/adata) and whether it takes ``**kwargs``."""
    params = dict(inspect.signature(fn).parameters)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items()
             if k not in ("self", "adata") and p.kind not in (inspect.Parameter.VAR_KEYWORD,
                                                               inspect.Parameter.VAR_POSITIONAL)}
    return named, var_kw


def _train_parameters(model_cls) -> dict[str, inspect.Parameter]:
    """Arguments of ``model_cls.train`` (an override that passes ``**kwargs`` on takes the base's too)."""
    from ..models._base import BaseModel

    named, var_kw = _parameters(model_cls.train)
    if var_kw:
        base, _ = _parameters(BaseModel.train)
        named = {**base, **named}
    return named


def _plan_fields() -> dict[str, Any]:
    from ..train import TrainingPlan

    out = {}
    for f in dataclasses.fields(TrainingPlan):
        out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return out


def default_search_space(model_cls) -> dict[str, dict[str, Spec]]:
    """The search space a model declares (``_tune_space``), or a generic one: the learning rate
    and whichever of ``n_hidden``, ``n_latent``, ``n_layers``, ``dropout_rate`` the model takes.

    Examples
    --------
    >>> from cellvi.autotune import default_search_space
    >>> default_search_space(cellvi.SCVI)["model_params"]["gene_likelihood"]
    choice(['zinb', 'nb'])
    """
    model_cls = _model_class(model_cls)
    declared = getattr(model_cls, "_tune_space", None)
    if declared:
        return check_space(declared)
    init, _ = _parameters(model_cls.__init__)
    train = _train_parameters(model_cls)
    space = {"model_params": {k: v for k, v in GENERIC_MODEL_SPACE.items() if k in init},
             "train_params": {k: v for k, v in GENERIC_TRAIN_SPACE.items() if k in train}}
    return check_space(space)


# -- the run's fixed parts -------------------------------------------------------------------
def _split(n_obs: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train cells, held-out cells): a seeded permutation, the same on every worker."""
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction between 0 and 1, got {test_size!r}")
    n_test = int(round(test_size * n_obs))
    if n_test < 1 or n_obs - n_test < 2:
        raise ValueError(f"test_size={test_size} of {n_obs} cells leaves {n_test} held-out and {n_obs - n_test} "
                         "training cells; the search needs at least 1 and 2")
    perm = np.random.default_rng(seed).permutation(n_obs)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _fingerprint(adata, registry_json: dict) -> str:
    """A short hash of the cells, genes and setup: workers and resumed runs must see the same data."""
    h = hashlib.sha1()
    h.update(str(adata.n_obs).encode())
    for names in (adata.obs_names, adata.var_names):
        h.update("\x00".join(map(str, names)).encode())
    h.update(json.dumps(registry_json, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _json_plain(value):
    from ..models._base import _json_default

    return json.loads(json.dumps(value, default=_json_default))


def _metric_name(metric) -> str:
    if isinstance(metric, str):
        return metric
    module, qualname = getattr(metric, "__module__", None), getattr(metric, "__qualname__", "")
    if module and qualname and "<" not in qualname and module != "__main__":
        return f"{module}:{qualname}"
    return f"<callable {getattr(metric, '__name__', type(metric).__name__)}>"


def _import_metric(name: str):
    if name.startswith("<callable"):
        raise ValueError(f"the study's metric is {name}, which another process cannot import; define the "
                         "metric function at the top level of an importable module, or use n_jobs=1 and no "
                         "remote workers")
    module, qualname = name.split(":", 1)
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _safe_url(url: str) -> str:
    """The storage URL without its password (for messages and records)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _storage(url: str, check: bool = True):
    """An Optuna RDB storage of ``url``; a clear error when it cannot be reached."""
    optuna = _optuna()
    shown = _safe_url(url)
    kwargs: dict = {}
    if url.startswith("sqlite"):
        # Several local workers write to one file: wait for the lock rather than fail.
        kwargs["connect_args"] = {"timeout": 120}
    elif url.startswith("postgres"):
        kwargs["connect_args"] = {"connect_timeout": 10}
        kwargs["pool_pre_ping"] = True
    url = _with_driver(url)
    try:
        # The heartbeat lets a worker that was killed mid-trial have its trial marked failed.
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=15, grace_period=60)
    except ImportError:
        raise ImportError(f"the storage {shown} needs a database driver; for PostgreSQL install it "
                          "with: pip install 'cellvi[autotune]' (psycopg)") from None
    except Exception as err:  # sqlalchemy's OperationalError and friends: say what and how to fix
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConnectionError(
            f"cannot use the study storage {shown}: {first}. Check that the database server runs and "
            "accepts connections from this machine, the host, port, user and password in the URL, and that the "
            "database exists (createdb NAME)") from None


def _with_driver(url: str) -> str:
    """A ``postgresql://`` URL with the PostgreSQL driver that is installed: SQLAlchemy's
    default driver changed from psycopg2 (2.0) to psycopg 3 (2.1), and either may be there."""
    scheme, rest = url.split("://", 1)
    if scheme not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return f"postgresql+{driver}://{rest}"
    return url


def _resolve_storage(storage, run_dir: str) -> str:
    if storage is None:
        return "sqlite:///" + os.path.abspath(os.path.join(run_dir, "study.db"))
    if not isinstance(storage, str):
        raise TypeError(f"storage must be None, a database URL or a .db file path, got {storage!r}")
    if "://" not in storage:
        return "sqlite:///" + os.path.abspath(storage)
    if not storage.split("://", 1)[0].startswith(("sqlite", "postgresql", "postgres", "mysql")):
        raise ValueError(f"storage {storage!r} is not a database URL Optuna can use; give None (a SQLite file in "
                         "the run directory), 'sqlite:///path/study.db' or 'postgresql://user:pass@host:5432/db'")
    return storage


# -- one worker's view of the study ------------------------------------------------------------
class _Context:
    """Everything a trial needs, rebuilt identically in every worker from the study's record."""

    def __init__(self, config: dict, adata, registry=None, tensors=None, metric_fn: Callable | None = None):
        from ..data import AnnTensors
        from ..data._registry import Registry

        self.config = config
        self.model_cls = _model_class(config["model"])
        self.space = space_from_json(config["search_space"])
        self.registry = registry if registry is not None else Registry.from_dict(config["registry"])
        if config.get("fingerprint") and _fingerprint(adata, config["registry"]) != config["fingerprint"]:
            raise ValueError("this AnnData is not the one the study was started with (cells, genes or setup "
                             "differ); give the worker the study's data file (--adata)")
        if tensors is None:
            tensors = self.registry.tensors(adata)
        self.adata = adata
        self.train_idx, self.test_idx = _split(adata.n_obs, config["test_size"], config["seed"])
        cut = lambda idx: AnnTensors({k: v[idx] for k, v in tensors.items()})  # noqa: E731
        self.train_tensors, self.test_tensors = cut(self.train_idx), cut(self.test_idx)
        self.train_adata, self.test_adata = adata[self.train_idx], adata[self.test_idx]
        self.metric = config["metric"]
        self.metric_fn = metric_fn
        if self.metric not in METRICS and metric_fn is None:
            self.metric_fn = _import_metric(self.metric)
        self._test_data = None

    # the trial's arguments -------------------------------------------------------------------
    def arguments(self, params: dict) -> tuple[dict, dict]:
        """(model arguments, train() arguments) of a trial's parameters plus the fixed ones."""
        cfg = self.config
        model_kwargs = {**cfg["model_kwargs"], **{k: v for k, v in params.items() if k in self.space["model_params"]}}
        train_in = {k: v for k, v in params.items() if k in self.space["train_params"]}
        train_params = _train_parameters(self.model_cls)
        plan = dict(cfg["train_kwargs"].get("plan_kwargs") or {})
        train_kwargs = {k: v for k, v in cfg["train_kwargs"].items() if k != "plan_kwargs"}
        for name, value in train_in.items():
            if name in train_params:
                train_kwargs[name] = value
            else:
                plan[name] = value
        train_kwargs.setdefault("max_epochs", cfg["max_epochs"])
        if isinstance(train_kwargs["max_epochs"], float):
            train_kwargs["max_epochs"] = int(train_kwargs["max_epochs"])
        train_kwargs.update(train_size=1.0, progress_bar=False)
        if "validation_size" in train_params:
            train_kwargs["validation_size"] = None
        if plan:
            train_kwargs["plan_kwargs"] = plan
        return model_kwargs, train_kwargs

    def build(self, model_kwargs: dict):
        return self.model_cls(self.train_adata, _registry=self.registry, _tensors=self.train_tensors, **model_kwargs)

    def test_data(self, device):
        from ..data import DeviceData

        if self._test_data is None or self._test_data.device != device:
            self._test_data = DeviceData(self.test_tensors, device)
        return self._test_data

    # one trial ---------------------------------------------------------------------------
    def train(self, params: dict, report: Callable[[int, float], None] | None = None) -> tuple[Any, float, int]:
        """Train a model with ``params`` on the train split; returns (model, metric, epochs).
        ``report(epoch, value)`` gets the held-out value after every epoch (for pruning)."""
        from .._settings import settings

        model_kwargs, train_kwargs = self.arguments(params)
        # Every trial starts from the same seed: differences come from the parameters, not
        # from the draw of initial weights or minibatch order. (The user's setting is put
        # back afterwards.)
        with settings.seeded(self.config["seed"]):
            return self._train(params, model_kwargs, train_kwargs, report)

    def _train(self, params, model_kwargs, train_kwargs, report):
        import torch

        from ..train import epoch_callback

        model = self.build(model_kwargs)
        # Pruning watches the held-out ELBO (the reconstruction loss for that metric), turned
        # to the study's direction (a function minimised: the negative ELBO, a loss).
        heldout_name = "reconstruction_loss_heldout" if self.metric == "reconstruction_validation" else "elbo_heldout"
        natural = "min" if heldout_name == "reconstruction_loss_heldout" else "max"
        sign = 1.0 if natural == self.config["mode"] else -1.0
        state = {"epochs": 0, "last": None}

        def on_epoch(trainer, row):
            data = self.test_data(trainer.data.device)
            held = trainer.evaluate(np.arange(len(self.test_idx)), "heldout", data=data)
            state["epochs"] = row["epoch"] + 1
            state["last"] = held
            if report is not None:
                report(state["epochs"], sign * held[heldout_name])

        with epoch_callback(on_epoch):
            model.train(**train_kwargs)
        torch.manual_seed(self.config["seed"])  # the same Monte Carlo draws for every trial's score
        value = self.score(model, state["last"])
        return model, value, state["epochs"]

    def score(self, model, last_heldout: dict | None) -> float:
        metric = self.metric
        if metric == "elbo_validation":
            return float(last_heldout["elbo_heldout"])
        if metric == "reconstruction_validation":
            return float(last_heldout["reconstruction_loss_heldout"])
        if metric == "marginal_ll":
            n_mc = int(self.config["metric_kwargs"].get("n_mc_samples", 100))
            # Few cells per chunk: a chunk holds n_mc x cells x genes values. Chunks of up to
            # ~2 MB reuse the allocator's cached buffers; larger ones take fresh memory (page
            # faults) for every chunk, which made the score several times slower.
            batch_size = self.config["metric_kwargs"].get(
                "batch_size", max(1, 2**19 // (n_mc * max(1, self.registry.n_vars))))
            return float(model.get_marginal_ll(self.test_adata, n_mc_samples=n_mc, batch_size=batch_size))
        return float(self.metric_fn(model, self.test_adata))


# -- trials ------------------------------------------------------------------------------------
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")
OVER_BUDGET_ATTR = "over_budget"  # a trial a worker started after the target was reached
DUPLICATE_ATTR = "duplicate_of"  # a trial whose parameters a finished trial already had


def _counted(trial) -> bool:
    """Whether a trial is one of the search's (not one started past its target)."""
    return not trial.user_attrs.get(OVER_BUDGET_ATTR, False)


def _counts(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _pruner(config: dict):
    """The study's pruner. Defaults chosen on kang (20 trials of 10 epochs): Optuna's
    successive halving promotes only the best of fewer than ``reduction_factor`` trials at a
    rung, so with the defaults of ASHA (rungs from epoch 1, reduction factor 3) 17 of 20
    trials were stopped after 1-3 epochs, mostly before any trial had finished: a trial that
    starts slower than the defaults (lower learning rate, wider network) never got a
    chance. Here rungs start at a fifth of the epochs, half the trials go on at each rung,
    and nothing is pruned until ``n_startup_trials`` (4) trials have finished."""
    optuna = _optuna()
    name, kw = config["scheduler"], dict(config.get("scheduler_kwargs") or {})
    max_epochs = int(config["max_epochs"])
    if name == "asha":
        n_startup = int(kw.pop("n_startup_trials", 4))
        kw.setdefault("min_resource", max(1, max_epochs // 5))
        kw.setdefault("reduction_factor", 2)
        return _AfterStartup(optuna.pruners.SuccessiveHalvingPruner(**kw), n_startup)
    if name == "median":
        kw.setdefault("n_startup_trials", 4)
        kw.setdefault("n_warmup_steps", max(1, max_epochs // 5))
        return optuna.pruners.MedianPruner(**kw)
    return optuna.pruners.NopPruner()


def _after_startup_class():
    optuna = _optuna()

    class AfterStartup(optuna.pruners.BasePruner):
        """``pruner``'s verdicts once ``n_startup_trials`` trials have finished; before, it
        still sees every report (successive halving records each trial's value per rung)."""

        def __init__(self, pruner, n_startup_trials: int):
            self.pruner, self.n_startup_trials = pruner, n_startup_trials

        def prune(self, study, trial) -> bool:
            verdict = self.pruner.prune(study, trial)
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            return verdict and len(done) >= self.n_startup_trials

    return AfterStartup


def _AfterStartup(pruner, n_startup_trials: int):
    return _after_startup_class()(pruner, n_startup_trials)


def _sampler(config: dict, worker_seed: int):
    optuna = _optuna()
    target = int(config.get("num_samples", 20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental
        return optuna.samplers.TPESampler(seed=worker_seed, multivariate=True,
                                          n_startup_trials=min(10, max(2, target // 3)))


def _progress_line(study, trial, target: int | None) -> str:
    state = trial.state.name.lower()
    of = f" ({trial.number + 1}/{target})" if target else ""
    parts = [f"[autotune] trial {trial.number}{of} {state}"]
    if trial.state.name == "COMPLETE":
        parts.append(f"metric={trial.value:.6g}")
    elif trial.state.name == "PRUNED" and trial.intermediate_values:
        step = max(trial.intermediate_values)
        parts.append(f"pruned at epoch {step}")
    if trial.user_attrs.get("error"):
        parts.append(f"error: {trial.user_attrs['error']}")
    if DUPLICATE_ATTR in trial.user_attrs:
        parts.append(f"same parameters as trial {trial.user_attrs[DUPLICATE_ATTR]}: its result reused")
    try:
        best = study.best_trial
        parts.append(f"best={best.value:.6g} (trial {best.number})")
    except ValueError:
        pass
    if "epochs" in trial.user_attrs:
        parts.append(f"{trial.user_attrs['epochs']} epochs {trial.user_attrs.get('seconds', float('nan')):.1f} s")
    params = ", ".join(f"{k}={describe(v)}" for k, v in trial.params.items())
    if trial.user_attrs.get("defaults"):
        params = "model defaults: " + params
    return " | ".join(parts) + (f" | {params}" if params else "")


def _objective(ctx: _Context, models_dir: str | None):
    optuna = _optuna()
    from ..train import TrainingError

    def objective(trial):
        # Two workers can both see one slot left and both start a trial: the one numbered
        # past the study's target stops at once and is left out of the results.
        if trial.number >= int(trial.study.user_attrs.get(TARGET_ATTR, trial.number + 1)):
            trial.set_user_attr(OVER_BUDGET_ATTR, True)
            raise optuna.TrialPruned("over the study's number of trials")
        params = {}
        with warnings.catch_warnings():
            # the defaults trial may hold a value outside a numeric range: on purpose
            warnings.filterwarnings("ignore", message="Fixed parameter")
            for section in SECTIONS:
                for name, spec in ctx.space[section].items():
                    params[name] = spec.suggest(trial, name)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        # TPE proposes a finished trial's parameters again now and then (often, in small
        # categorical spaces). Trials are deterministic on the fixed split, so the earlier
        # result is this one's: reuse it rather than train the same model twice.
        for done in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if done.params == trial.params and done.number != trial.number:
                trial.set_user_attr(DUPLICATE_ATTR, done.number)
                trial.set_user_attr("epochs", done.user_attrs.get("epochs"))
                trial.set_user_attr("seconds", 0.0)
                return done.value
        start = time.time()
        epochs = {"n": 0}

        def report(epoch: int, value: float):
            epochs["n"] = epoch
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("epochs", epoch)
                trial.set_user_attr("seconds", time.time() - start)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            model, value, n_epochs = ctx.train(params, report)
        except optuna.TrialPruned:
            raise
        except (TrainingError, ValueError, RuntimeError) as err:
            # A setting that makes training diverge (or run out of memory) fails its trial,
            # not the search.
            trial.set_user_attr("error", str(err).splitlines()[0][:300])
            trial.set_user_attr("epochs", epochs["n"])
            trial.set_user_attr("seconds", time.time() - start)
            return float("nan")
        trial.set_user_attr("epochs", n_epochs)
        trial.set_user_attr("seconds", time.time() - start)
        if not math.isfinite(value):
            trial.set_user_attr("error", f"the metric is {value}")
            return float("nan")
        if models_dir is not None and _better_than_completed(trial.study, value):
            # Keep the model of the best trial so far: the result needs no retraining.
            with contextlib.suppress(OSError):
                model.save(os.path.join(models_dir, f"trial_{trial.number}"), overwrite=True)
        return value

    return objective


def _better_than_completed(study, value: float) -> bool:
    try:
        best = study.best_value
    except ValueError:
        return True
    return value > best if study.direction.name == "MAXIMIZE" else value < best


def _run_trials(study, ctx: _Context, worker_seed: int, verbose: bool, models_dir: str | None) -> int:
    """Run trials until the study holds its target number; returns how many this worker ran."""
    optuna = _optuna()
    study.sampler = _sampler(ctx.config, worker_seed)
    study.pruner = _pruner(ctx.config)
    objective = _objective(ctx, models_dir)
    ran = 0

    def progress(study_, trial):
        if verbose and _counted(trial):
            print(_progress_line(study_, trial, study_.user_attrs.get(TARGET_ATTR)), flush=True)

    while True:
        optuna.storages.fail_stale_trials(study)
        target = int(study.user_attrs.get(TARGET_ATTR, 0))
        counts = _counts(study)
        # Enqueued trials (WAITING) are part of the target; running ones will finish.
        if sum(counts.get(s, 0) for s in (*_FINISHED, "RUNNING")) >= target:
            return ran
        study.optimize(objective, n_trials=1, callbacks=[progress], gc_after_trial=True)
        ran += 1


def _load_study(storage: str, study_name: str):
    optuna = _optuna()
    store = _storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise ValueError(f"no study named {study_name!r} in {_safe_url(storage)}; studies there: "
                         f"{', '.join(names) or 'none'}. Start the search with run_autotune() first") from None
    if CONFIG_ATTR not in study.user_attrs:
        raise ValueError(f"study {study_name!r} was not created by cellvi.autotune.run_autotune")
    return study


def worker(storage: str | None = None, study_name: str | None = None, adata=None, n_threads: int | None = None,
           seed: int | None = None, verbose: bool = True) -> int:
    """Join a search as a worker: run trials of the study until it has as many as asked for.

    Start the search with :func:`run_autotune` (it creates the study); then start workers on
    any machine that reaches the database. A worker reads from the study which model, data
    setup, split, search space, metric and epochs to use.

    Parameters
    ----------
    storage
        The study's database URL (e.g. ``postgresql://user:pass@host:5432/db``); default: the
        environment variable ``CELLVI_AUTOTUNE_STORAGE``.
    study_name
        The study's name (printed by :func:`run_autotune`).
    adata
        The AnnData, or the path of the study's data file (``data.h5ad`` in the run directory,
        copied to this machine); default: the path recorded in the study.
    n_threads
        torch threads of this worker (default: torch's).
    seed
        Seed of this worker's sampler (default: from the host name and process id, so that
        workers propose different trials).
    verbose
        Print a line per finished trial.

    Returns
    -------
    The number of trials this worker ran.

    Examples
    --------
    >>> cellvi.autotune.worker("postgresql://tune:secret@db-host:5432/tune", "SCVI_marginal_ll",
    ...                        adata="/scratch/SCVI_marginal_ll/data.h5ad")

    or, from a shell: ``python -m cellvi.autotune worker --storage URL --study-name NAME
    --adata data.h5ad``.
    """
    storage = storage or os.environ.get(STORAGE_ENV)
    if not storage:
        raise ValueError(f"no storage given: pass storage=URL or set {STORAGE_ENV}")
    if not study_name:
        raise ValueError("study_name is required (run_autotune prints it)")
    if n_threads:
        import torch

        torch.set_num_threads(int(n_threads))
    storage = _resolve_storage(storage, ".")
    study = _load_study(storage, study_name)
    config = study.user_attrs[CONFIG_ATTR]
    if adata is None:
        adata = config.get("data_path")
        if not adata:
            raise ValueError("the study records no data file; pass adata= (the AnnData or its .h5ad path)")
    if isinstance(adata, (str, os.PathLike)):
        path = os.fspath(adata)
        if not os.path.exists(path):
            raise FileNotFoundError(f"data file {path!r} not found on this machine; copy the run directory's "
                                    "data.h5ad here and pass its path (--adata)")
        import anndata

        adata = anndata.read_h5ad(path)
    ctx = _Context(config, adata)
    models_dir = config.get("models_dir")
    if models_dir and not os.path.isdir(models_dir):
        models_dir = None  # another machine: the driver retrains the best trial if needed
    if seed is None:
        seed = int(hashlib.sha1(f"{socket.gethostname()}:{os.getpid()}".encode()).hexdigest()[:7], 16)
    return _run_trials(study, ctx, seed, verbose, models_dir)


# -- the result --------------------------------------------------------------------------------
@dataclasses.dataclass
class AutotuneResult:
    """What :func:`run_autotune` returns.

    Attributes
    ----------
    results
        One row per trial: ``trial`` (0 is the model's defaults), ``state`` (complete, pruned,
        fail), ``metric``, ``epochs`` trained, ``seconds``, ``defaults``, then the parameters,
        ``error`` and ``duplicate_of`` (the finished trial whose parameters this one repeats and
        whose result it reuses without training; -1 for none).
    best_params
        ``{"model_params": {...}, "train_params": {...}}`` of the best trial.
    best_metric, default_metric
        The metric of the best trial and of the defaults trial (what tuning gained).
    model
        The best trial's model (trained on the train split), on the whole AnnData.
    model_dir
        Where that model is saved (``run_dir/best_model``).
    study
        The Optuna study (more analysis: ``optuna.visualization``).
    run_dir, storage, study_name, plot_path, test_indices
        The run directory, the study's storage URL (password hidden), its name, the plot
        file (None without matplotlib) and the held-out cells.
    """

    results: pd.DataFrame
    best_params: dict
    best_metric: float
    default_metric: float | None
    model: Any
    model_dir: str
    study: Any
    run_dir: str
    storage: str
    study_name: str
    metric: str
    mode: str
    plot_path: str | None
    test_indices: np.ndarray

    def __repr__(self) -> str:
        counts = self.results["state"].value_counts().to_dict() if len(self.results) else {}
        gain = ""
        if self.default_metric is not None:
            gain = f", defaults {self.default_metric:.6g}"
        return (f"AutotuneResult({self.study_name}: {len(self.results)} trials {counts}; best {self.metric} "
                f"{self.best_metric:.6g}{gain}; best_params={self.best_params})")


def trials_dataframe(study, space: dict | None = None) -> pd.DataFrame:
    """The study's trials as a table: trial, state, metric, epochs, seconds, defaults, parameters."""
    rows = []
    names = [n for section in SECTIONS for n in (space or {}).get(section, {})]
    for t in study.get_trials(deepcopy=False):
        if not _counted(t):
            continue
        row = {"trial": t.number, "state": t.state.name.lower(),
               "metric": t.value if t.value is not None else float("nan"),
               "epochs": t.user_attrs.get("epochs", np.nan), "seconds": t.user_attrs.get("seconds", np.nan),
               "defaults": bool(t.user_attrs.get("defaults", False))}
        for n in names or t.params:
            row[n] = t.params.get(n, np.nan)
        if t.user_attrs.get("error"):
            row["error"] = t.user_attrs["error"]
        row["duplicate_of"] = t.user_attrs.get(DUPLICATE_ATTR, -1)
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        # a string column ("" when none), which converts cleanly to R
        df["error"] = df["error"].fillna("") if "error" in df else ""
    return df


def _split_params(params: dict, space: dict) -> dict:
    return {section: {k: v for k, v in params.items() if k in space[section]} for section in SECTIONS}


# -- the driver --------------------------------------------------------------------------------
def _model_defaults(model_cls, probe, space: dict, max_epochs: int) -> dict:
    """The model's own value of each searched parameter (the defaults trial): what the model
    would use if the argument were not given (``probe``: a model built without them). A
    searched ``max_epochs`` takes the run's ``max_epochs`` (what every other trial trains for
    when it is not searched), not a value the sampler draws."""
    out = {}
    init, _ = _parameters(model_cls.__init__)
    module_params, _ = _parameters(type(probe.module).__init__)
    for name in space["model_params"]:
        if name in probe.init_kwargs:
            out[name] = probe.init_kwargs[name]
        elif name in init and init[name].default is not inspect.Parameter.empty:
            out[name] = init[name].default
        elif name in module_params and module_params[name].default is not inspect.Parameter.empty:
            out[name] = module_params[name].default
        if name in out and out[name] is None:
            # A size the model derives from the data (PEAKVI's n_hidden and n_latent): the
            # value it resolved to, so the defaults trial shows it and runs the same model.
            resolved = getattr(probe.module, name, None)
            if isinstance(resolved, (bool, int, float, str)):
                out[name] = resolved
    train = _train_parameters(model_cls)
    plan = {**_plan_fields(), **getattr(model_cls, "_plan_defaults", {})}
    for name in space["train_params"]:
        default = train[name].default if name in train else inspect.Parameter.empty
        if (default is None or default is inspect.Parameter.empty) and name in plan:
            default = plan[name]
        if name == "max_epochs" and (default is None or default is inspect.Parameter.empty):
            default = max_epochs
        if default is not inspect.Parameter.empty and default is not None:
            out[name] = default
    return out


def _check_names(model_cls, probe, space: dict, model_kwargs: dict, train_kwargs: dict) -> None:
    init, init_var_kw = _parameters(model_cls.__init__)
    allowed_model = set(init)
    if init_var_kw:
        module_params, module_var_kw = _parameters(type(probe.module).__init__)
        allowed_model |= set(module_params)
        if module_var_kw:
            allowed_model = None  # anything may be accepted: the probe builds below will tell
    if allowed_model is not None:
        unknown = sorted(set(space["model_params"]) - allowed_model)
        if unknown:
            raise ValueError(f"{model_cls.__name__} takes no model parameter(s) {unknown}; it takes: "
                             f"{', '.join(sorted(allowed_model))}")
    train = _train_parameters(model_cls)
    allowed_train = (set(train) | set(_plan_fields())) - set(RESERVED_TRAIN)
    for where, names in (("train_params", space["train_params"]), ("train_kwargs", train_kwargs)):
        bad = sorted(set(names) & set(RESERVED_TRAIN) - ({"plan_kwargs"} if where == "train_kwargs" else set()))
        if bad:
            raise ValueError(f"{where} may not set {bad}: the search trains every trial on the whole train split "
                             "and scores it on the held-out cells")
        unknown = sorted(set(names) - allowed_train - {"plan_kwargs"})
        if unknown:
            raise ValueError(f"{model_cls.__name__}.train takes no parameter(s) {unknown} (in {where}); it takes: "
                             f"{', '.join(sorted(allowed_train))}")


def _probe_values(ctx: _Context, space: dict) -> None:
    """Build a model with each choice of each model parameter (cheap: no training), so that a
    value the model refuses fails now, before any trial."""
    for name, spec in space["model_params"].items():
        values = spec.values if spec.kind == "choice" else [spec.low, spec.high]
        for value in values:
            kwargs = {**ctx.config["model_kwargs"], name: value}
            try:
                ctx.build(kwargs)
            except TypeError as err:
                raise ValueError(f"{ctx.model_cls.__name__} does not take model parameter {name!r}: {err}") from None
            except ValueError as err:
                raise ValueError(f"search_space['model_params']['{name}'] = {spec!r}: {name}={value!r} is refused "
                                 f"by {ctx.model_cls.__name__}: {err}") from None


def _python_executable() -> str:
    """The Python to start workers with (inside R, sys.executable may be R itself)."""
    exe = sys.executable or ""
    if os.path.basename(exe).startswith("python") and os.path.exists(exe):
        return exe
    for name in ("python3", "python"):
        for base in (os.path.join(sys.exec_prefix, "bin"), os.path.join(sys.prefix, "bin"), sys.exec_prefix):
            cand = os.path.join(base, name + (".exe" if os.name == "nt" else ""))
            if os.path.exists(cand):
                return cand
    raise RuntimeError("cannot find the Python executable to start workers; use n_jobs=1")


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _start_local_workers(n_jobs: int, storage: str, study_name: str, data_path: str, seed: int,
                         run_dir: str) -> list[tuple[subprocess.Popen, str, Any]]:
    threads = max(1, _available_cores() // n_jobs)  # no oversubscription: the cores split evenly
    env = dict(os.environ)
    env[STORAGE_ENV] = storage  # not on the command line: a password would show in process lists
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = []
    for i in range(n_jobs):
        log_path = os.path.join(run_dir, f"worker_{i}.log")
        log = open(log_path, "w")
        cmd = [_python_executable(), "-m", "cellvi.autotune", "worker", "--study-name", study_name,
               "--adata", data_path, "--threads", str(threads), "--seed", str(seed + 1000 * (i + 1))]
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log_path, log))
    return procs


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _wait(study, procs, verbose: bool, seen: set, poll: float = 2.0) -> None:
    """Wait for the local workers (printing a line per finished trial), then for trials that
    workers on other machines still run."""
    optuna = _optuna()

    def report():
        target = study.user_attrs.get(TARGET_ATTR)
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if t.state.name in _FINISHED and t.number not in seen:
                seen.add(t.number)
                if verbose and _counted(t):
                    print(_progress_line(study, t, target), flush=True)

    try:
        while procs and any(p.poll() is None for p, _, _ in procs):
            time.sleep(poll)
            report()
            failed = [(p, path) for p, path, _ in procs if p.poll() not in (None, 0)]
            if failed:
                p, path = failed[0]
                raise RuntimeError(f"a local autotune worker exited with status {p.returncode}; its log "
                                   f"({path}) ends with:\n{_tail(path)}")
        while any(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False)):
            optuna.storages.fail_stale_trials(study)
            time.sleep(poll)
            report()
        report()
    finally:
        for p, _, log in procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            log.close()


def run_autotune(
    model_cls,
    adata,
    metric: str | Callable = "marginal_ll",
    mode: str | None = None,
    search_space: dict | None = None,
    num_samples: int = 20,
    test_size: float = 0.25,
    max_epochs: int | None = None,
    scheduler: str | None = "asha",
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    n_jobs: int = 1,
    save_dir: str | None = None,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    metric_kwargs: dict | None = None,
    scheduler_kwargs: dict | None = None,
    plot: bool = True,
    verbose: bool = True,
) -> AutotuneResult:
    """Search a model's hyperparameters with Optuna (TPE sampling, optional pruning) and return
    the trials and the best model.

    Every trial trains on the same training cells and is scored on the same held-out cells
    (``test_size`` of them, drawn with ``seed``). The first trial is the model's defaults, so
    the table shows what tuning gained. The study lives in a database: by default a SQLite
    file in the run directory (call again with the same ``study_name`` to add trials), or a
    PostgreSQL server that workers on other machines join with :func:`worker`.

    Parameters
    ----------
    model_cls
        A cellvi model class (``cellvi.SCVI``) or its name (``"SCVI"``).
    adata
        AnnData set up beforehand with ``model_cls.setup_anndata``.
    metric
        ``"marginal_ll"`` (held-out log p(x), importance sampled; the default),
        ``"elbo_validation"`` (held-out ELBO), ``"reconstruction_validation"`` (held-out
        reconstruction loss), or a function ``f(model, test_adata) -> float``.
    mode
        ``"max"`` or ``"min"``; default: the metric's (max for likelihoods, min for losses,
        max for a function).
    search_space
        ``{"model_params": {name: spec}, "train_params": {name: spec}}`` with specs from
        :func:`choice`, :func:`uniform`, :func:`loguniform`, :func:`randint`; model
        parameters go to the model's constructor, train parameters to ``train()`` (or to its
        ``plan_kwargs``). Default: the model's own space (:func:`default_search_space`).
    num_samples
        Trials to run in this call (added to those a resumed study holds).
    test_size
        Fraction of cells held out for scoring.
    max_epochs
        Epochs per trial (default: the model's default for the training cells; set it lower
        for a faster search). A ``max_epochs`` in ``train_params`` searches it instead; the
        defaults trial then trains this many epochs (added to the choices if need be).
    scheduler
        Pruning of unpromising trials from the held-out value reported after every epoch:
        ``"asha"`` (asynchronous successive halving), ``"median"`` or None.
    seed
        Seed of the split, of every trial's training and of the sampler.
    storage
        None (a SQLite file ``study.db`` in the run directory), a ``.db`` path, or a database
        URL such as ``postgresql://user:password@host:5432/dbname`` for workers on several
        machines.
    study_name
        Default ``"{model}_{metric}"``; the same name resumes the study.
    n_jobs
        Local worker processes (each with ``cores // n_jobs`` torch threads). With 1, trials
        run in this process.
    save_dir
        Where run directories go (default ``./cellvi_autotune``); the run directory is
        ``save_dir/study_name``. It holds the SQLite file, the data file for workers, the
        best model (``best_model/``), the plot (``search.png``) and worker logs.
    model_kwargs, train_kwargs
        Fixed arguments of the model and of ``train()`` for every trial (e.g.
        ``train_kwargs={"batch_size": 256}``).
    metric_kwargs
        For ``"marginal_ll"``: ``{"n_mc_samples": 100}`` importance samples per cell (and
        ``batch_size``, cells per chunk).
    scheduler_kwargs
        Arguments of Optuna's pruner (``SuccessiveHalvingPruner``: ``min_resource``
        (default max_epochs // 5), ``reduction_factor`` (2); ``MedianPruner``:
        ``n_warmup_steps`` (max_epochs // 5)) and ``n_startup_trials`` (4: no pruning
        before that many trials have finished).
    plot
        Write ``search.png`` (metric per trial and parameter importance; needs matplotlib).
    verbose
        Print a line per finished trial.

    Returns
    -------
    :class:`AutotuneResult` with ``results`` (the trials table), ``best_params``, the best
    ``model``, its ``model_dir`` and the Optuna ``study``.

    Examples
    --------
    >>> import cellvi
    >>> from cellvi.autotune import run_autotune, choice, loguniform
    >>> cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    >>> res = run_autotune(cellvi.SCVI, adata, max_epochs=20, num_samples=10,
    ...                    search_space={"model_params": {"n_latent": choice([10, 20, 30])},
    ...                                  "train_params": {"lr": loguniform(1e-4, 1e-2)}})
    >>> res.results[["trial", "state", "metric", "n_latent", "lr"]]
    >>> res.best_params
    >>> latent = res.model.get_latent_representation()
    """
    optuna = _optuna()
    model_cls = _model_class(model_cls)
    from ..data._registry import recall_setup

    # -- check everything before anything starts ------------------------------------------------
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)} or a function "
                             "f(model, test_adata) -> float")
        if metric == "marginal_ll" and not hasattr(model_cls, "get_marginal_ll"):
            raise ValueError(f"{model_cls.__name__} cannot compute the marginal likelihood (metric='marginal_ll'); "
                             "use metric='elbo_validation' or 'reconstruction_validation', or a function")
        metric_fn = None
        mode = mode or METRICS[metric]
    elif callable(metric):
        metric_fn = metric
        mode = mode or "max"
    else:
        raise TypeError(f"metric must be a name or a function f(model, test_adata) -> float, got {metric!r}")
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be 'asha', 'median' or None, got {scheduler!r}")
    from ..models._base import default_max_epochs
    from ..train import as_count

    registry, tensors = recall_setup(adata, model_cls.__name__)
    if tensors is None:
        tensors = registry.tensors(adata)
    num_samples = as_count(num_samples, "num_samples")
    n_jobs = as_count(n_jobs, "n_jobs")
    seed = as_count(seed, "seed", 0)
    space = check_space(search_space) if search_space is not None else default_search_space(model_cls)
    model_kwargs, train_kwargs = dict(model_kwargs or {}), dict(train_kwargs or {})
    metric_kwargs = dict(metric_kwargs or {})
    metric_name = _metric_name(metric)
    if metric_fn is not None and n_jobs > 1 and metric_name.startswith("<callable"):
        raise ValueError("with n_jobs > 1 the metric function must be importable by the worker processes: define "
                         "it at the top level of a module (not in __main__, not a lambda)")
    train_idx, test_idx = _split(adata.n_obs, test_size, seed)
    if max_epochs is not None and "max_epochs" in train_kwargs:
        raise ValueError(f"max_epochs is given twice (max_epochs={max_epochs!r} and train_kwargs['max_epochs']="
                         f"{train_kwargs['max_epochs']!r}); pass it once")
    if max_epochs is None:
        max_epochs = train_kwargs.pop("max_epochs", None)
    if max_epochs is None:
        max_epochs = default_max_epochs(model_cls, len(train_idx))
    max_epochs = as_count(max_epochs, "max_epochs")
    registry_json = _json_plain(registry.to_dict())
    config = {
        "model": model_cls.__name__, "metric": metric_name, "mode": mode, "search_space": space_to_json(space),
        "test_size": float(test_size), "seed": seed, "max_epochs": max_epochs, "scheduler": scheduler,
        "scheduler_kwargs": _json_plain(scheduler_kwargs or {}), "model_kwargs": _json_plain(model_kwargs),
        "train_kwargs": _json_plain(train_kwargs), "metric_kwargs": _json_plain(metric_kwargs),
        "registry": registry_json, "fingerprint": _fingerprint(adata, registry_json), "num_samples": num_samples,
    }
    ctx = _Context(config, adata, registry=registry, tensors=tensors, metric_fn=metric_fn)
    probe = ctx.build(model_kwargs)
    _check_names(model_cls, probe, space, model_kwargs, train_kwargs)
    _probe_values(ctx, space)
    defaults = _model_defaults(model_cls, probe, space, max_epochs)
    for name, value in defaults.items():
        spec = space["model_params"].get(name) or space["train_params"].get(name)
        if spec.kind == "choice" and not spec.contains(value):
            # The defaults trial must be able to take the default: add it to the choices.
            spec.values.append(value)
    config["search_space"] = space_to_json(space)
    ctx.space = space_from_json(config["search_space"])
    del probe

    study_name = study_name or f"{model_cls.__name__}_{metric_name if isinstance(metric, str) else 'custom'}"
    study_name = str(study_name)
    run_dir = os.path.abspath(os.path.join(save_dir or "cellvi_autotune", _safe_dir(study_name)))
    storage_url = _resolve_storage(storage, run_dir)
    if storage_url.startswith("sqlite"):
        os.makedirs(os.path.dirname(storage_url[len("sqlite:///"):]) or ".", exist_ok=True)
    store = _storage(storage_url)  # connects: a bad URL fails here, before anything is written

    # -- the study: created, or resumed when its record matches ---------------------------------
    os.makedirs(run_dir, exist_ok=True)
    models_dir = os.path.join(run_dir, "models")
    os.makedirs(models_dir, exist_ok=True)
    config["models_dir"] = models_dir
    study = optuna.create_study(storage=store, study_name=study_name, load_if_exists=True,
                                direction="maximize" if mode == "max" else "minimize")
    previous = study.user_attrs.get(CONFIG_ATTR)
    if previous is not None:
        keys = [k for k in config if k not in ("num_samples", "models_dir", "data_path")]
        differ = [k for k in keys if previous.get(k) != config[k]]
        if differ:
            raise ValueError(f"study {study_name!r} in {_safe_url(storage_url)} was run with other settings "
                             f"({', '.join(differ)} differ); pass another study_name to start a new search, or "
                             "the same settings to add trials to it")
        config["data_path"] = previous.get("data_path")
    data_path = os.path.join(run_dir, "data.h5ad")
    if n_jobs > 1 or not storage_url.startswith("sqlite"):
        # Workers (local processes, other machines) read the data from a file.
        if not os.path.exists(data_path):
            _write_data(adata, data_path)
        config["data_path"] = data_path
    study.set_user_attr(CONFIG_ATTR, config)
    ctx.config = config
    counts = _counts(study)
    if previous is None:
        study.enqueue_trial(defaults, user_attrs={"defaults": True})
        counts["WAITING"] = counts.get("WAITING", 0) + 1
    # Workers run until the study holds this many trials (enqueued ones included).
    target = sum(counts.get(s, 0) for s in (*_FINISHED, "RUNNING")) + num_samples
    study.set_user_attr(TARGET_ATTR, target)
    if verbose:
        print(f"[autotune] {model_cls.__name__}: {num_samples} trial(s) of study {study_name!r} "
              f"({_safe_url(storage_url)}), {len(train_idx)} training / {len(test_idx)} held-out cells, "
              f"{max_epochs} epochs, metric {metric_name} ({mode}), {n_jobs} local worker(s); run directory "
              f"{run_dir}", flush=True)

    # -- run ------------------------------------------------------------------------------------
    if n_jobs == 1:
        _run_trials(study, ctx, seed, verbose, models_dir)
        _wait(study, [], verbose, seen={t.number for t in study.get_trials(deepcopy=False)})
    else:
        seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.name in _FINISHED}
        procs = _start_local_workers(n_jobs, storage_url, study_name, data_path, seed, run_dir)
        _wait(study, procs, verbose, seen)

    # -- the result -----------------------------------------------------------------------------
    results = trials_dataframe(study, space)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        errors = results["error"].dropna().unique().tolist() if "error" in results else []
        raise RuntimeError(f"no trial of study {study_name!r} completed" +
                           (f"; errors: {'; '.join(errors[:3])}" if errors else "") +
                           f". See the worker logs in {run_dir}")
    best = study.best_trial
    if DUPLICATE_ATTR in best.user_attrs:  # its model is the original trial's (saved with it)
        best = next(t for t in complete if t.number == best.user_attrs[DUPLICATE_ATTR])
    default_trials = [t for t in complete if t.user_attrs.get("defaults")]
    best_params = _split_params(best.params, space)
    model, model_dir = _best_model(ctx, best, run_dir, models_dir, adata, verbose)
    plot_path = _plot(study, results, run_dir, metric_name, mode) if plot else None
    return AutotuneResult(results=results, best_params=best_params, best_metric=float(best.value),
                          default_metric=float(default_trials[0].value) if default_trials else None, model=model,
                          model_dir=model_dir, study=study, run_dir=run_dir, storage=_safe_url(storage_url),
                          study_name=study_name, metric=metric_name, mode=mode, plot_path=plot_path,
                          test_indices=test_idx)


def _safe_dir(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "study"


def _write_data(adata, path: str) -> None:
    """The AnnData for workers, written once (atomically: a worker never reads half a file)."""
    tmp = path + ".tmp"
    copy = adata.copy() if adata.is_view else adata
    try:
        copy.write_h5ad(tmp)
    except Exception:
        # Unwritable entries in uns/obsp (e.g. objects) are not needed for training: drop them.
        import anndata

        slim = anndata.AnnData(X=copy.X, obs=copy.obs, var=copy.var, obsm=dict(copy.obsm),
                               layers=dict(copy.layers))
        slim.write_h5ad(tmp)
    os.replace(tmp, path)


def _best_model(ctx: _Context, best, run_dir: str, models_dir: str, adata, verbose: bool):
    """The best trial's model: the one a worker saved, or trained again (a worker on another
    machine ran it), saved to ``run_dir/best_model`` and loaded on the whole AnnData."""
    model_dir = os.path.join(run_dir, "best_model")
    marker = os.path.join(run_dir, "best_model.json")
    saved_trial = None
    if os.path.exists(marker):
        with open(marker) as f:
            saved_trial = json.load(f).get("trial")
    trial_dir = os.path.join(models_dir, f"trial_{best.number}")
    if saved_trial != best.number or not os.path.isdir(model_dir):
        if os.path.isdir(trial_dir):
            if os.path.isdir(model_dir):
                shutil.rmtree(model_dir)
            shutil.move(trial_dir, model_dir)
        else:
            if verbose:
                print(f"[autotune] training the best trial ({best.number}) again: its model was not saved here",
                      flush=True)
            model, _, _ = ctx.train(dict(best.params))
            model.save(model_dir, overwrite=True)
        with open(marker, "w") as f:
            json.dump({"trial": best.number, "value": best.value, "params": best.params}, f, indent=1)
    # The other trials' models are no longer needed.
    shutil.rmtree(models_dir, ignore_errors=True)
    os.makedirs(models_dir, exist_ok=True)
    return ctx.model_cls.load(model_dir, adata=adata, device="cpu"), model_dir


def _plot(study, results: pd.DataFrame, run_dir: str, metric: str, mode: str) -> str | None:
    """``search.png``: the metric of every trial (best so far as a line, the defaults marked)
    and the parameters' importance. Optional: None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no plot of the search")
        return None
    importance = {}
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (results["state"] == "complete").sum() >= 3:
            importance = _optuna().importance.get_param_importances(study)
    fig, axes = plt.subplots(1, 2 if importance else 1, figsize=(11 if importance else 6, 4), squeeze=False)
    ax = axes[0, 0]
    done = results[results["state"] == "complete"].sort_values("trial")
    ax.scatter(done["trial"] + 1, done["metric"], s=18, color="tab:blue", label="complete")
    pruned = results[results["state"] == "pruned"]
    if len(pruned) and len(done):
        # Pruned trials have no final score: marked along the bottom of the axis.
        ax.scatter(pruned["trial"] + 1, [ax.get_ylim()[0]] * len(pruned), marker="x", color="tab:gray",
                   label="pruned (not scored)")
    best = done["metric"].cummax() if mode == "max" else done["metric"].cummin()
    ax.step(done["trial"] + 1, best, where="post", color="tab:orange", label="best so far")
    d = done[done["defaults"]]
    if len(d):
        ax.scatter(d["trial"] + 1, d["metric"], s=60, facecolors="none", edgecolors="tab:red",
                   label="model defaults")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{study.study_name}")
    ax.legend(fontsize=8)
    if importance:
        ax2 = axes[0, 1]
        names = list(importance)[::-1]
        ax2.barh(names, [importance[n] for n in names], color="tab:green")
        ax2.set_xlabel("importance (fANOVA)")
        ax2.set_title("parameter importance")
    fig.tight_layout()
    path = os.path.join(run_dir, "search.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
