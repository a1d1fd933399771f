"""What every model shares: setup, construction, training, save/load, latent space and scores
of fit. A concrete model names its Module, builds it from the registry and adds only the
queries unique to it."""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
import uuid
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import _constants as C
from .._settings import settings
from ..data import AnnTensors, DeviceData, Field, ObsmField, Registry, cell_indices
from ..data._registry import recall_setup, remember_setup
from ..modules import BaseModule
from ..train import Trainer, TrainingError, TrainingPlan, as_count, resolve_device, split_indices
from ..train._distributed import STRATEGIES, Distributed, is_secondary_rank
from ..train._trainer import single_threaded_global_openblas

logger = logging.getLogger("cellvi")

_MODEL_CLASSES: dict[str, type["BaseModel"]] = {}


def _version() -> str:
    from .. import __version__

    return __version__


def default_max_epochs(model_cls, n_cells: int) -> int:
    """Epochs of ``model_cls.train(max_epochs=None)``: the default its ``train`` declares
    (e.g. PEAKVI's 500), or, where it declares none, scvi-tools' rule for ``n_cells`` cells,
    ``min(round(20000 / n_cells * 400), 400)``, at least 1."""
    declared = inspect.signature(model_cls.train).parameters.get("max_epochs")
    if declared is not None and type(declared.default) is int:
        return declared.default
    return max(1, min(round(20000 / n_cells * 400), 400))


class BaseModel:
    """Base of the user-facing models: ``setup_anndata`` -> ``Model(adata)`` -> ``train()`` ->
    queries -> ``save()`` / ``load()``.

    It holds what every model shares: setup, construction, data access, training, save/load.
    Queries are opted into with mixins (``VAEMixin``: latent, ELBO, marginal likelihood;
    ``ExpressionMixin``: expression and differential expression; ``MappingMixin``: reference
    mapping). A subclass implements ``setup_anndata`` (its registry fields) and
    ``_build_module``, and may declare its training defaults in ``_plan_defaults``.
    """

    # Training-plan settings that differ from TrainingPlan's defaults (see train()).
    _plan_defaults: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _MODEL_CLASSES[cls.__name__] = cls

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(cls, adata, **kwargs) -> None:
        """Check ``adata`` and record which of its parts the model uses (each model documents
        its own arguments)."""
        raise NotImplementedError(f"{cls.__name__} defines no setup_anndata")

    @classmethod
    def _setup(cls, adata, fields: Sequence[Field] | None = None, **standard) -> None:
        """Check and remember the setup of ``adata`` for this class: the model's ``fields``
        (default: the scVI family's standard fields of the keyword arguments).

        Nothing is written into ``adata``: the setup is remembered for this object until the
        model is built from it, with the tensors the checks built.
        """
        registry, tensors = Registry.from_anndata(adata, cls.__name__, fields=fields, return_tensors=True,
                                                  **standard)
        remember_setup(adata, registry, tensors)

    # -- construction ------------------------------------------------------------------------
    def __init__(self, adata=None, *, _registry: Registry | None = None,
                 _tensors: AnnTensors | None = None, **init_kwargs):
        if _registry is None:
            _registry, _tensors = recall_setup(adata, type(self).__name__)
        self.registry = _registry
        self.adata = adata
        self.init_kwargs = init_kwargs
        self._own_tensors = _tensors  # the model's AnnData as tensors (CPU), checked once
        self._own_data: DeviceData | None = None  # the same on the model's device
        self.module = self._build_module()
        self.module.eval()
        self.is_trained = False
        self._history: list[dict] = []
        # Set by train(): positions of the training and validation cells (a list of arrays,
        # one per data set, for a model of several); saved.
        self.train_indices = self.validation_indices = None
        # Set by MappingMixin.load_query_data: which weights the query may train (saved).
        self._query: dict | None = None

    def _build_module(self) -> BaseModule:
        raise NotImplementedError

    def _module_kwargs(self) -> dict:
        """The Module's settings: the model's own (saved with it); a subclass may add what it fixes."""
        return dict(self.init_kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def var_names(self) -> list[str]:
        """The model's genes, in its order."""
        return list(self.registry.var_names)

    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch training record: ``elbo_train``, ``reconstruction_loss_train``,
        ``kl_local_train``, ``kl_weight``, ``loss_train`` and their ``_validation`` twins."""
        return pd.DataFrame(self._history).set_index("epoch") if self._history else pd.DataFrame()

    def __repr__(self) -> str:
        r = self.registry
        state = "trained" if self.is_trained else "not trained"
        kwargs = ", ".join(f"{k}={_short(v)}" for k, v in self.init_kwargs.items())
        sizes = [f"{r.n_vars} {getattr(r.field(C.X_KEY), 'features', 'genes')}"] if C.X_KEY in r.fields else []
        for key, field in r.fields.items():
            if key == C.BATCH_KEY:
                sizes.append(f"{r.n_batch} batches")
            elif isinstance(field, ObsmField):
                sizes.append(f"{len(field.column_names)} {key}")
        return f"{type(self).__name__}({kwargs}) on {', '.join(sizes)}, {state}"

    # -- data --------------------------------------------------------------------------------
    def _anndata(self, adata=None):
        """``adata``, or the model's own AnnData when it is None."""
        if adata is not None:
            return adata
        if self.adata is None:
            raise ValueError("this model holds no AnnData (it was loaded without one); pass adata=...")
        return self.adata

    def _tensors(self) -> AnnTensors:
        """The model's own AnnData as tensors (CPU), built once."""
        if self._own_tensors is None:
            self._own_tensors = self.registry.tensors(self._anndata())
        return self._own_tensors

    def _data(self, adata=None) -> DeviceData:
        """Tensors of ``adata`` (default: the model's own) on the model's device."""
        device = self.device
        if adata is None or adata is self.adata:
            if self._own_data is None or self._own_data.device != device:
                self._own_data = DeviceData(self._tensors(), device)
            return self._own_data
        return DeviceData(self.registry.tensors(adata), device)

    def _minibatches(self, adata=None, indices=None, batch_size: int | None = None
                     ) -> Iterator[dict[str, torch.Tensor]]:
        """Eval-mode minibatches of the chosen cells, in order."""
        data = self._data(adata)
        self.module.eval()
        batch_size = (as_count(batch_size, "batch_size") if batch_size is not None
                      else self._cells_per_chunk(self.registry.n_vars))
        with single_threaded_global_openblas():
            yield from data.iterate(cell_indices(data.n_obs, indices), batch_size)

    @staticmethod
    def _cells_per_chunk(values_per_cell: int) -> int:
        """Default cells per chunk of a query: up to 1,024, fewer for wide data, so that a
        chunk holds about two million values. Buffers of that size (8 MB) are reused by the
        allocator; 1,024 cells x 9,000 genes (37 MB) would be mapped afresh for every chunk,
        and their page faults cost about as much as the decoder's matrix product."""
        return max(16, min(1024, 2**21 // max(1, values_per_cell)))

    def _obs_names(self, adata, indices) -> pd.Index:
        """Names of the chosen cells of ``adata`` (default: the model's own cells, which a
        model with per-cell parameters knows even when loaded without its AnnData)."""
        if adata is None and self.adata is None:
            own = getattr(self.registry.fields.get(C.CELL_INDEX_KEY), "obs_names", None)
            if own is not None:
                return pd.Index(own)[cell_indices(len(own), indices)]
        adata = self._anndata(adata)
        return adata.obs_names[cell_indices(adata.n_obs, indices)]

    # -- training ------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        device: str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        batch_size: int = 128,
        early_stopping: bool = False,
        early_stopping_patience: int = 45,
        lr: float | None = None,
        weight_decay: float | None = None,
        eps: float | None = None,
        n_epochs_kl_warmup: int | None = 400,
        limit_train_batches: int | float | None = None,
        progress_bar: bool | None = None,
        plan_kwargs: dict | None = None,
        strategy: str | None = None,
    ) -> "BaseModel":
        """Train the model (again, if already trained) on its AnnData.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; ``None``: the model's default (see
            :func:`default_max_epochs`), for scVI ``min(round(20000 / n_cells * 400), 400)``.
        device
            ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        train_size, validation_size
            Fractions of cells to train on and to validate on (default: the rest).
        batch_size
            Cells per minibatch.
        early_stopping, early_stopping_patience
            Stop when the watched metric (the validation ELBO) has not improved for this many
            epochs; the model keeps the last epoch's weights, not the best epoch's (as
            scvi-tools does by default).
        lr, weight_decay, eps
            Adam's settings (default: the model's; 1e-3, 1e-6 and 0.01 for scVI).
        n_epochs_kl_warmup
            Epochs of linear KL warm-up (as scvi-tools: a shorter run ends below full weight;
            ``plan_kwargs={"kl_warmup_cap": 0.75}`` ends it by three quarters of the run).
        limit_train_batches
            Train on at most this many minibatches per epoch (a fraction if a float <= 1).
        progress_bar
            Show a progress bar (default: ``cellvi.settings.progress_bar``).
        plan_kwargs
            Further settings of :class:`cellvi.train.TrainingPlan` (e.g.
            ``reduce_lr_on_plateau=True``, ``n_steps_kl_warmup``, ``adversarial_classifier``).
        strategy
            ``None``: this process trains alone. ``"ddp"``: data-parallel over the processes
            of a ``torchrun`` run (one per GPU, or several on CPUs): every process runs the
            same script on the same data; each step, each process trains on its slice of a
            minibatch of ``processes x batch_size`` cells and the gradients are averaged, so
            the run is a single run with that larger minibatch (BatchNorm aside). Each process
            takes GPU ``LOCAL_RANK`` when ``device`` is a GPU; the processes agree on the seed
            (rank 0's), every one ends with the same weights and history, and only rank 0
            shows progress and writes in :meth:`save`. See ``python/examples/train_ddp.py``.

        Returns
        -------
        The model itself. A run that fails (an error, e.g. a :class:`cellvi.TrainingError`
        when the loss turns NaN) leaves the model as it was before the call: weights, split,
        history; the failed run's history is the error's ``history``. An interrupted run
        (Ctrl-C) keeps what it reached.

        Examples
        --------
        >>> model = cellvi.SCVI(adata)
        >>> model.train(max_epochs=50)
        >>> model.history[["elbo_train", "elbo_validation"]].plot()
        >>> # in a script started with `torchrun --nproc_per_node=4 script.py`:
        >>> model.train(max_epochs=50, strategy="ddp")
        """
        if self.adata is None:
            raise ValueError("this model holds no AnnData to train on (it was loaded without one)")
        if max_epochs is None:
            max_epochs = self._default_max_epochs()
        max_epochs = as_count(max_epochs, "max_epochs")
        given = {"lr": lr, "weight_decay": weight_decay, "eps": eps, "n_epochs_kl_warmup": n_epochs_kl_warmup}
        settings_ = {**self._plan_defaults, **{k: v for k, v in given.items() if v is not None}}
        if n_epochs_kl_warmup is None:
            settings_["n_epochs_kl_warmup"] = None
        unknown = set(plan_kwargs or {}) - {f.name for f in dataclasses.fields(TrainingPlan)}
        if unknown:
            raise TypeError(f"unknown plan_kwargs {sorted(unknown)}; TrainingPlan takes "
                            f"{', '.join(f.name for f in dataclasses.fields(TrainingPlan))}")
        plan = TrainingPlan(**{**settings_, **(plan_kwargs or {})})
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be None or 'ddp', got {strategy!r}")
        device = resolve_device(device)
        distributed = None
        if strategy == "ddp":
            distributed = Distributed.start(device)
            device = distributed.device
            distributed.agree_on_seed()  # before the split: every rank must split alike
        self.module.to(device)
        data, train_idx, val_idx = self._training_data(train_size, validation_size)
        trainer = Trainer(
            self.module, data, train_idx, val_idx, max_epochs=max_epochs,
            batch_size=batch_size, plan=plan, early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            limit_train_batches=limit_train_batches, progress_bar=progress_bar,
            optimizer_params=self._optimizer_params(),
            labelled_indices=self._labelled_indices(train_idx), distributed=distributed,
        )
        # A run that fails (diverged, a plan watching a metric the history lacks, ...) leaves
        # the model as it was: weights, split and history; the failed run's history goes with
        # a TrainingError (``err.history``). An interrupted run (Ctrl-C) keeps what it reached.
        before = ({k: v.detach().clone() for k, v in self.module.state_dict().items()},
                  self.train_indices, self.validation_indices, self._history)
        self.train_indices, self.validation_indices = train_idx, val_idx
        self._history = []
        try:
            trainer.fit()
        except Exception as err:
            state, self.train_indices, self.validation_indices, self._history = before
            self.module.load_state_dict(state)
            if isinstance(err, TrainingError):
                err.history = pd.DataFrame(trainer.history).set_index("epoch") if trainer.history else None
            raise
        except BaseException:
            self._history = trainer.history
            raise
        self._history = trainer.history
        self.is_trained = True
        return self

    def _default_max_epochs(self) -> int:
        return default_max_epochs(type(self), self.adata.n_obs)

    def _training_data(self, train_size: float, validation_size: float | None):
        """(data on the module's device, training cells, validation cells): one data set's
        cells split at random (seeded). A model of several data sets returns a
        :class:`cellvi.data.JointData` with one split per data set."""
        train_idx, val_idx = split_indices(self.adata.n_obs, train_size, validation_size, self._split_groups())
        return self._data(), train_idx, val_idx

    def _split_groups(self):
        """One code per cell whose groups are split into training and validation cells each on
        its own (see :func:`cellvi.train.split_indices`), or None: one split of all cells."""
        return None

    def _optimizer_params(self):
        """Parameters (or parameter groups) to train; None: all of the module's."""
        return None

    def _labelled_indices(self, train_indices: np.ndarray):
        """Cells to cycle through as labelled minibatches (semi-supervised models only), or
        a function of the epoch that draws them anew every epoch."""
        return None

    # -- save / load ---------------------------------------------------------------------------
    def save(self, dir_path: str, overwrite: bool = False) -> None:
        """Save weights (``weights.npz``) and setup, settings, history and an id of this save
        (``model.json``);
        array and table arguments of the model (e.g. a marker matrix) go to
        ``arguments.npz``, their names and labels to ``model.json``, the training and
        validation cells of the last :meth:`train` (``train_indices``,
        ``validation_indices``) to ``split.npz``.

        No pickle is written; the directory loads in Python or R without the AnnData.

        Parameters
        ----------
        dir_path
            The directory to write (created). Saving replaces the whole directory, so an
            existing one must be empty, or hold a saved model and ``overwrite`` be True; a
            directory with other files is refused.
        overwrite
            Replace a model saved in ``dir_path``.

        Examples
        --------
        >>> model.save("my_model/")
        >>> model = cellvi.SCVI.load("my_model/", adata)
        """
        dir_path = os.fspath(dir_path)
        if is_secondary_rank():  # data-parallel training: rank 0 holds the same model and writes it
            logger.info("save(%r) skipped on this rank: only rank 0 writes", dir_path)
            return
        _check_save_target(dir_path, overwrite)
        dir_path = os.path.abspath(dir_path)
        tmp = f"{dir_path}.tmp-cellvi"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        state = {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}
        np.savez(os.path.join(tmp, C.WEIGHTS_FILE), **state)
        init_kwargs, arrays = _encode_arguments(self.init_kwargs)
        if arrays:
            np.savez(os.path.join(tmp, C.ARGUMENTS_FILE), **arrays)
        split = _split_arrays(self.train_indices, self.validation_indices)
        if split:
            np.savez(os.path.join(tmp, C.SPLIT_FILE), **split)
        meta = {
            "format_version": C.SAVE_FORMAT_VERSION,
            "cellvi_version": _version(),
            "model": type(self).__name__,
            "init_kwargs": init_kwargs,
            "registry": self.registry.to_dict(),
            "is_trained": self.is_trained,
            "history": self._history,
            "query": self._query,
            # Tells this save from a later one into the same directory (R records it).
            "save_id": uuid.uuid4().hex,
            **self._saved_extra(),
        }
        with open(os.path.join(tmp, C.MODEL_JSON_FILE), "w") as f:
            json.dump(meta, f, indent=1, default=_json_default)
        # Replace the target only once everything is written.
        if os.path.exists(dir_path):
            shutil.rmtree(dir_path)
        os.replace(tmp, dir_path)

    @classmethod
    def load(cls, dir_path: str, adata=None, device: str = "auto") -> "BaseModel":
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            The saved directory.
        adata
            Optional AnnData with the model's genes (same order) and obs columns; it becomes
            the model's own data. Without it, queries need an ``adata`` argument.
        device
            Where to put the model (``"auto"``, ``"cpu"``, ``"cuda"``).
        """
        dir_path = os.fspath(dir_path)
        meta, model_cls = cls._saved_model(dir_path)
        model = model_cls._from_saved(meta, dir_path, adata)
        return model._restore_saved(meta, dir_path, device)

    @classmethod
    def _saved_model(cls, dir_path: str) -> tuple[dict, type["BaseModel"]]:
        """The saved ``model.json`` and the class it names (which must be ``cls`` or a subclass)."""
        meta = _read_model_json(dir_path)
        name = meta["model"]
        model_cls = _MODEL_CLASSES.get(name)
        if model_cls is None:
            raise ValueError(f"'{dir_path}' holds a {name} model, which this cellvi does not know")
        if cls is not BaseModel and not issubclass(model_cls, cls):
            raise TypeError(f"'{dir_path}' holds a {name} model; load it with cellvi.{name}.load")
        return meta, model_cls

    @classmethod
    def _from_saved(cls, meta: dict, dir_path: str, adata=None) -> "BaseModel":
        """The model of a saved directory, built (untrained) on ``adata`` or on no data."""
        registry = Registry.from_dict(meta["registry"])
        # Check the data (genes, categories, counts) before building anything.
        tensors = registry.tensors(adata) if adata is not None else None
        return cls(adata, _registry=registry, _tensors=tensors, **_decode_arguments(meta["init_kwargs"], dir_path))

    def _saved_extra(self) -> dict:
        """Further entries of ``model.json`` (e.g. the registries of further data sets)."""
        return {}

    def _restore_saved(self, meta: dict, dir_path: str, device: str = "auto") -> "BaseModel":
        """Weights, state and history of a saved directory into this freshly built model."""
        model = self
        with np.load(os.path.join(dir_path, C.WEIGHTS_FILE), allow_pickle=False) as weights:
            state = {k: torch.from_numpy(weights[k]) for k in weights.files}
        model.module.load_state_dict(state)
        model.module.to(resolve_device(device))
        model.module.eval()
        model.is_trained = meta["is_trained"]
        model._history = meta["history"]
        split_path = os.path.join(dir_path, C.SPLIT_FILE)
        if os.path.exists(split_path):
            with np.load(split_path, allow_pickle=False) as split:
                model.train_indices, model.validation_indices = _split_from_arrays(dict(split))
        if meta.get("query") is not None:  # only models with MappingMixin save one
            model._query = meta["query"]
            model._query["grown"] = {k: tuple(v) for k, v in model._query["grown"].items()}
            model._apply_query_freeze()
        return model


# What a saved model's directory may hold (and a file a file browser leaves there).
_SAVED_MODEL_FILES = frozenset({C.MODEL_JSON_FILE, C.WEIGHTS_FILE, C.ARGUMENTS_FILE, C.SPLIT_FILE, ".DS_Store"})


def _check_save_target(dir_path: str, overwrite: bool) -> None:
    """Refuse to save where files would be lost: over a file, into a non-empty directory
    without ``overwrite``, or (even with it) into a directory holding anything but a saved
    model's files, since saving replaces the whole directory. (R's .check_model_dir applies
    the same rule to a verb's model_dir.)"""
    if not os.path.exists(dir_path):
        return
    if not os.path.isdir(dir_path):
        raise FileExistsError(f"'{dir_path}' is a file; give the path of a directory to save the model in")
    entries = os.listdir(dir_path)
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"'{dir_path}' exists and is not empty; pass overwrite=True to replace the model "
                              "saved there, or choose another directory")
    foreign = sorted(e for e in entries if e not in _SAVED_MODEL_FILES)
    if foreign:
        raise FileExistsError(
            f"'{dir_path}' holds files that are not a saved cellvi model's ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); saving replaces the whole directory, so it is refused even "
            f"with overwrite=True. Save into a new or empty directory, e.g. "
            f"'{os.path.join(dir_path, 'cellvi_model')}'")


def _read_model_json(dir_path: str) -> dict:
    json_path = os.path.join(dir_path, C.MODEL_JSON_FILE)
    if not os.path.exists(json_path):
        raise FileNotFoundError(f"no saved cellvi model in '{dir_path}' ({C.MODEL_JSON_FILE} missing)")
    with open(json_path) as f:
        meta = json.load(f)
    if meta.get("format_version", 0) > C.SAVE_FORMAT_VERSION:
        raise ValueError(f"'{dir_path}' was saved by a newer cellvi ({meta.get('cellvi_version')}); upgrade cellvi")
    return meta


def _reference_registry(reference) -> Registry:
    """The registry of a model, or of a saved model directory (read without the weights)."""
    if isinstance(reference, BaseModel):
        return reference.registry
    if isinstance(reference, (str, os.PathLike)):
        return Registry.from_dict(_read_model_json(os.fspath(reference))["registry"])
    raise TypeError(f"reference must be a cellvi model or a saved model directory, got {type(reference).__name__}")


def _encode_arguments(init_kwargs: dict) -> tuple[dict, dict]:
    """Model arguments as JSON, with arrays and DataFrames replaced by references to entries
    of ``arguments.npz`` (a DataFrame: one entry per column, its labels in the JSON)."""
    plain, arrays = {}, {}
    for name, value in init_kwargs.items():
        if isinstance(value, np.ndarray):
            arrays[name] = _storable(value)
            plain[name] = {"__array__": name}
        elif isinstance(value, pd.DataFrame):
            for i, column in enumerate(value.columns):
                arrays[f"{name}/{i}"] = _storable(value[column].to_numpy())
            plain[name] = {"__table__": name, "index": [str(v) for v in value.index],
                           "columns": [str(c) for c in value.columns]}
        else:
            plain[name] = value
    return plain, arrays


def _storable(values: np.ndarray) -> np.ndarray:
    """An array NumPy saves without pickle (object columns become strings)."""
    return values.astype(str) if values.dtype == object else values


def _decode_arguments(init_kwargs: dict, dir_path: str) -> dict:
    """The inverse of :func:`_encode_arguments`."""
    refs = {k: v for k, v in init_kwargs.items() if isinstance(v, dict) and ("__array__" in v or "__table__" in v)}
    if not refs:
        return dict(init_kwargs)
    out = dict(init_kwargs)
    with np.load(os.path.join(dir_path, C.ARGUMENTS_FILE), allow_pickle=False) as arrays:
        for name, ref in refs.items():
            if "__array__" in ref:
                out[name] = arrays[ref["__array__"]]
            else:
                out[name] = pd.DataFrame({c: arrays[f"{ref['__table__']}/{i}"] for i, c in enumerate(ref["columns"])},
                                         index=pd.Index(ref["index"]))
    return out


def _short(value) -> str:
    """An argument as the model's repr shows it (arrays and tables by their shape)."""
    if isinstance(value, (np.ndarray, pd.DataFrame)):
        return f"<{type(value).__name__} {'x'.join(map(str, value.shape))}>"
    return repr(value)


def _split_arrays(train, validation) -> dict:
    """The split as arrays for ``split.npz`` (int32 where positions fit): ``train`` and
    ``validation``, or ``train_<k>`` and ``validation_<k>`` per data set of a joint model."""
    if train is None or validation is None:
        return {}
    def small(a):
        a = np.asarray(a, dtype=np.int64)
        return a.astype(np.int32) if a.size == 0 or a.max() < 2**31 else a
    if isinstance(train, (list, tuple)):
        out = {}
        for k, (t, v) in enumerate(zip(train, validation)):
            out[f"train_{k}"], out[f"validation_{k}"] = small(t), small(v)
        return out
    return {"train": small(train), "validation": small(validation)}


def _split_from_arrays(arrays: dict):
    if "train" in arrays:
        return arrays["train"].astype(np.int64), arrays["validation"].astype(np.int64)
    n = len([k for k in arrays if k.startswith("train_")])
    return ([arrays[f"train_{k}"].astype(np.int64) for k in range(n)],
            [arrays[f"validation_{k}"].astype(np.int64) for k in range(n)])


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot save {type(value).__name__} to JSON")


def load_model(dir_path: str, adata=None, device: str = "auto") -> BaseModel:
    """Load any saved cellvi model, whatever its class.

    Examples
    --------
    >>> model = cellvi.load_model("my_model/", adata)
    """
    return BaseModel.load(dir_path, adata, device)
