"""What every model shares: setup, construction, training, save/load, latent space and scores
of fit. A concrete model names its Module, builds it from the registry and adds only the
queries unique to it."""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .. import _constants as C
from .._settings import settings
from ..data import AnnTensors, DeviceData, Registry
from ..data._registry import recall_setup, remember_setup
from ..modules import BaseModule
from ..train import Trainer, as_count, resolve_device, split_indices
from ..train._trainer import single_threaded_global_openblas

logger = logging.getLogger("cellvi")

_MODEL_CLASSES: dict[str, type["BaseModel"]] = {}


def _version() -> str:
    from .. import __version__

    return __version__


class BaseModel:
    """Base of the user-facing models: ``setup_anndata`` -> ``Model(adata)`` -> ``train()`` ->
    queries -> ``save()`` / ``load()``. Subclasses implement ``_build_module``."""

    _module_class: type[BaseModule] = BaseModule

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _MODEL_CLASSES[cls.__name__] = cls

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Check ``adata`` and record which of its parts the model uses.

        Nothing is written into ``adata``: the setup is remembered for this object until the
        model is built from it. Every check runs here, so a model's construction and training
        do not fail on bad input later.

        Parameters
        ----------
        adata
            AnnData with raw counts (cells x genes; sparse or dense; a view works).
        layer
            Key in ``adata.layers`` holding the counts; ``None`` uses ``adata.X``.
        batch_key
            obs column of the batch (integers or strings); its effect is removed from the latent.
        labels_key
            obs column of cell labels (used by ``dispersion="gene-label"`` and label models).
        size_factor_key
            obs column of positive size factors; replaces the observed library size.
        categorical_covariate_keys, continuous_covariate_keys
            obs columns of further covariates, injected into the decoder.

        Examples
        --------
        >>> import cellvi, anndata
        >>> adata = anndata.read_h5ad("pbmc.h5ad")
        >>> cellvi.SCVI.setup_anndata(adata, batch_key="donor")
        """
        registry, tensors = Registry.from_anndata(
            adata, cls.__name__, layer=layer, batch_key=batch_key, labels_key=labels_key,
            size_factor_key=size_factor_key, categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys, return_tensors=True,
        )
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

    def _build_module(self) -> BaseModule:
        raise NotImplementedError

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
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.init_kwargs.items())
        return (f"{type(self).__name__}({kwargs}) on {r.n_vars} genes, {r.n_batch} batches, "
                f"{state}")

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

    @staticmethod
    def _indices(n_obs: int, indices) -> np.ndarray:
        if indices is None:
            return np.arange(n_obs)
        indices = np.asarray(indices)
        if indices.dtype == bool:
            if indices.shape != (n_obs,):
                raise ValueError(f"a boolean indices mask must have length {n_obs}, got {indices.shape}")
            return np.flatnonzero(indices)
        if not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"indices must be integers or a boolean mask, got dtype {indices.dtype}")
        if indices.size and (indices.min() < -n_obs or indices.max() >= n_obs):
            raise IndexError(f"indices out of range for {n_obs} cells")
        return np.where(indices < 0, indices + n_obs, indices)

    def _minibatches(self, adata=None, indices=None, batch_size: int | None = None
                     ) -> Iterator[dict[str, torch.Tensor]]:
        """Eval-mode minibatches of the chosen cells, in order."""
        data = self._data(adata)
        self.module.eval()
        batch_size = as_count(batch_size, "batch_size") if batch_size is not None else 1024
        with single_threaded_global_openblas():
            yield from data.iterate(self._indices(data.n_obs, indices), batch_size)

    def _obs_names(self, adata, indices) -> pd.Index:
        adata = self._anndata(adata)
        return adata.obs_names[self._indices(adata.n_obs, indices)]

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
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        eps: float = 0.01,
        n_epochs_kl_warmup: int | None = 400,
        limit_train_batches: int | float | None = None,
        progress_bar: bool | None = None,
    ) -> "BaseModel":
        """Train the model (again, if already trained) on its AnnData.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; default ``min(round(20000 / n_cells * 400), 400)``.
        device
            ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        train_size, validation_size
            Fractions of cells to train on and to validate on (default: the rest).
        batch_size
            Cells per minibatch.
        early_stopping, early_stopping_patience
            Stop when the validation ELBO has not improved for this many epochs.
        lr, weight_decay, eps
            Adam's settings.
        n_epochs_kl_warmup
            Epochs of linear KL warm-up, capped at three quarters of ``max_epochs``.
        limit_train_batches
            Train on at most this many minibatches per epoch (a fraction if a float <= 1).
        progress_bar
            Show a progress bar (default: ``cellvi.settings.progress_bar``).

        Returns
        -------
        The model itself.

        Examples
        --------
        >>> model = cellvi.SCVI(adata)
        >>> model.train(max_epochs=50)
        >>> model.history[["elbo_train", "elbo_validation"]].plot()
        """
        if self.adata is None:
            raise ValueError("this model holds no AnnData to train on (it was loaded without one)")
        n_obs = self.adata.n_obs
        if max_epochs is None:
            max_epochs = min(round(20000 / n_obs * 400), 400)
        max_epochs = as_count(max_epochs, "max_epochs")
        train_idx, val_idx = split_indices(n_obs, train_size, validation_size)
        self.module.to(resolve_device(device))
        trainer = Trainer(
            self.module, self._data(), train_idx, val_idx, max_epochs=max_epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, eps=eps,
            n_epochs_kl_warmup=n_epochs_kl_warmup, early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            limit_train_batches=limit_train_batches, progress_bar=progress_bar,
        )
        self.train_indices, self.validation_indices = train_idx, val_idx
        self._history = []
        try:
            trainer.fit()
        finally:
            self._history = trainer.history
        self.is_trained = True
        return self

    # -- latent space --------------------------------------------------------------------------
    @torch.no_grad()
    def get_latent_representation(self, adata=None, indices=None, give_mean: bool = True,
                                  mc_samples: int = 5000, batch_size: int | None = None) -> np.ndarray:
        """Latent coordinates of cells (cells x n_latent).

        Parameters
        ----------
        adata
            AnnData with the model's genes and obs columns; default: the model's own.
        indices
            Cells to return (integers or a boolean mask); default: all.
        give_mean
            The posterior mean (for ``latent_distribution="ln"`` estimated with
            ``mc_samples`` draws) rather than one sample.
        batch_size
            Cells per minibatch.

        Examples
        --------
        >>> adata.obsm["X_scVI"] = model.get_latent_representation()
        """
        out = []
        for tensors in self._minibatches(adata, indices, batch_size):
            inf = self.module.inference(**self.module.inference_inputs(tensors))
            if not give_mean:
                z = inf["z"]
            elif self.module.z_encoder.latent_distribution == "ln":
                mc = as_count(mc_samples, "mc_samples")
                qz = torch.distributions.Normal(inf["qz_mean"], inf["qz_var"].sqrt())
                z = self.module.z_encoder.z_transform(qz.sample((mc,))).mean(0)
            else:
                z = inf["qz_mean"]
            out.append(z.cpu())
        return torch.cat(out).numpy()

    # -- scores of fit ------------------------------------------------------------------------
    @torch.no_grad()
    def _per_cell_loss(self, adata, indices, batch_size, part: str) -> np.ndarray:
        values = []
        for tensors in self._minibatches(adata, indices, batch_size):
            _, _, out = self.module(tensors)
            values.append((-out.elbo if part == "neg_elbo" else out.reconstruction_loss).cpu())
        return torch.cat(values).numpy()

    def get_elbo(self, adata=None, indices=None, batch_size: int | None = None,
                 return_mean: bool = True):
        """Evidence lower bound of log p(x): a negative number; higher is better.

        ``return_mean=False`` gives one value per cell (one posterior sample each)."""
        elbo = -self._per_cell_loss(adata, indices, batch_size, "neg_elbo")
        return float(elbo.mean()) if return_mean else elbo

    def get_reconstruction_error(self, adata=None, indices=None, batch_size: int | None = None,
                                 return_mean: bool = True):
        """Negative log-likelihood of the counts given one posterior sample: lower is better."""
        rec = self._per_cell_loss(adata, indices, batch_size, "reconstruction")
        return float(rec.mean()) if return_mean else rec

    def get_marginal_ll(self, adata=None, indices=None, n_mc_samples: int = 1000,
                        batch_size: int | None = None, return_mean: bool = True):
        """Importance-sampled estimate of log p(x) per cell: a negative number, higher is better.

        Parameters
        ----------
        n_mc_samples
            Importance samples per cell (more: tighter and slower).
        return_mean
            The mean over cells (a float); ``False`` gives one value per cell.

        Examples
        --------
        >>> model.get_marginal_ll(test_adata, n_mc_samples=200)
        """
        n_mc = as_count(n_mc_samples, "n_mc_samples")
        values = [self.module.marginal_ll(t, n_mc).cpu()
                  for t in self._minibatches(adata, indices, batch_size or 128)]
        ll = torch.cat(values).numpy()
        return float(ll.mean()) if return_mean else ll

    # -- save / load ---------------------------------------------------------------------------
    def save(self, dir_path: str, overwrite: bool = False) -> None:
        """Save weights (``weights.npz``) and setup, settings and history (``model.json``).

        No pickle is written; the directory loads in Python or R without the AnnData.

        Examples
        --------
        >>> model.save("my_model/")
        >>> model = cellvi.SCVI.load("my_model/", adata)
        """
        dir_path = os.fspath(dir_path)
        if os.path.exists(dir_path) and os.listdir(dir_path) and not overwrite:
            raise FileExistsError(f"'{dir_path}' exists and is not empty; pass overwrite=True to replace it")
        tmp = f"{dir_path.rstrip(os.sep)}.tmp-cellvi"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        state = {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}
        np.savez(os.path.join(tmp, C.WEIGHTS_FILE), **state)
        meta = {
            "format_version": C.SAVE_FORMAT_VERSION,
            "cellvi_version": _version(),
            "model": type(self).__name__,
            "init_kwargs": self.init_kwargs,
            "registry": self.registry.to_dict(),
            "is_trained": self.is_trained,
            "history": self._history,
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
        json_path = os.path.join(dir_path, C.MODEL_JSON_FILE)
        if not os.path.exists(json_path):
            raise FileNotFoundError(f"no saved cellvi model in '{dir_path}' ({C.MODEL_JSON_FILE} missing)")
        with open(json_path) as f:
            meta = json.load(f)
        if meta.get("format_version", 0) > C.SAVE_FORMAT_VERSION:
            raise ValueError(f"'{dir_path}' was saved by a newer cellvi ({meta.get('cellvi_version')}); upgrade cellvi")
        name = meta["model"]
        model_cls = _MODEL_CLASSES.get(name)
        if model_cls is None:
            raise ValueError(f"'{dir_path}' holds a {name} model, which this cellvi does not know")
        if cls is not BaseModel and not issubclass(model_cls, cls):
            raise TypeError(f"'{dir_path}' holds a {name} model; load it with cellvi.{name}.load")
        registry = Registry.from_dict(meta["registry"])
        # Check the data (genes, categories, counts) before building anything.
        tensors = registry.tensors(adata) if adata is not None else None
        model = model_cls(adata, _registry=registry, _tensors=tensors, **meta["init_kwargs"])
        with np.load(os.path.join(dir_path, C.WEIGHTS_FILE), allow_pickle=False) as weights:
            state = {k: torch.from_numpy(weights[k]) for k in weights.files}
        model.module.load_state_dict(state)
        model.module.to(resolve_device(device))
        model.module.eval()
        model.is_trained = meta["is_trained"]
        model._history = meta["history"]
        return model


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
