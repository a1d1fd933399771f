"""What every model shares: setup, construction, training, save/load, latent space and scores
of fit. A concrete model names its Module, builds it from the registry and adds only the
queries unique to it."""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import _constants as C
from .._settings import settings
from ..data import AnnTensors, DeviceData, Registry, cell_indices
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
        cls._setup(adata, layer=layer, batch_key=batch_key, labels_key=labels_key,
                   size_factor_key=size_factor_key, categorical_covariate_keys=categorical_covariate_keys,
                   continuous_covariate_keys=continuous_covariate_keys)

    @classmethod
    def _setup(cls, adata, **fields) -> None:
        """Check and remember the setup (the registry's ``fields``) of ``adata`` for this class."""
        registry, tensors = Registry.from_anndata(adata, cls.__name__, return_tensors=True, **fields)
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
        # Set by load_query_data: which weights the query may train (saved with the model).
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
        allocator; 1,024 cells x 9,000 genes (37 MB) are mapped afresh for every chunk, and
        their page faults took as long as the decoder's matrix product (2 cores)."""
        return max(16, min(1024, 2**21 // max(1, values_per_cell)))

    def _obs_names(self, adata, indices) -> pd.Index:
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
            optimizer_params=self._query_optimizer_params(),
            labelled_indices=self._labelled_indices(train_idx),
        )
        self.train_indices, self.validation_indices = train_idx, val_idx
        self._history = []
        try:
            trainer.fit()
        finally:
            self._history = trainer.history
        self.is_trained = True
        return self

    def _labelled_indices(self, train_indices: np.ndarray) -> np.ndarray | None:
        """Cells to cycle through as labelled minibatches (semi-supervised models only)."""
        return None

    # -- reference mapping (scArches-style architecture surgery) -------------------------------
    @classmethod
    def prepare_query_anndata(cls, adata, reference, min_gene_fraction: float = 0.5):
        """A copy of ``adata`` with exactly the reference model's genes, in its order.

        Genes the reference does not know are dropped; reference genes absent from the query
        are filled with zeros (a warning says how many). ``adata`` itself is not modified.

        Parameters
        ----------
        adata
            The query AnnData (raw counts in the reference's layer, or in ``X``).
        reference
            A trained model, or the directory of a saved one.
        min_gene_fraction
            Refuse when fewer than this fraction of the reference's genes are in the query
            (usually a sign of different gene identifiers, e.g. symbols vs Ensembl ids).

        Returns
        -------
        A new AnnData (obs and obsm copied) ready for :meth:`load_query_data`.

        Examples
        --------
        >>> query = cellvi.SCVI.prepare_query_anndata(query, "reference_model/")
        >>> model = cellvi.SCVI.load_query_data(query, "reference_model/")
        """
        import anndata

        from ..data._registry import as_csr_float32
        registry = _reference_registry(reference)
        names = pd.Index([str(v) for v in adata.var_names])
        if names.has_duplicates:
            raise ValueError(f"the query's gene names (var_names) are duplicated, e.g. "
                             f"{list(names[names.duplicated()][:5])}; make them unique first")
        position = names.get_indexer(registry.var_names)  # query column of each reference gene
        present = position >= 0
        n_ref, n_shared = registry.n_vars, int(present.sum())
        if n_shared < min_gene_fraction * n_ref:
            raise ValueError(
                f"only {n_shared} of the reference's {n_ref} genes are in the query "
                f"({100 * n_shared / n_ref:.0f}%, less than min_gene_fraction={min_gene_fraction}); "
                f"check that both use the same gene identifiers (e.g. reference genes "
                f"{registry.var_names[:3]}, query genes {list(names[:3])})"
            )
        if registry.layer is not None and registry.layer not in adata.layers:
            raise KeyError(f"the reference reads its counts from layer '{registry.layer}', which the "
                           f"query lacks; available layers: {list(adata.layers.keys())}")
        X = as_csr_float32(adata.X if registry.layer is None else adata.layers[registry.layer])
        # Select the shared columns in reference order, then place them among zero columns.
        shared = X[:, position[present]].tocsr()
        target = np.flatnonzero(present)
        counts = sp.csr_matrix((shared.data, target[shared.indices], shared.indptr), shape=(X.shape[0], n_ref))
        counts.sort_indices()
        if n_shared < n_ref:
            warnings.warn(f"{n_ref - n_shared} of the reference's {n_ref} genes are missing from the query "
                          "and were filled with zeros", UserWarning, stacklevel=2)
        query = anndata.AnnData(
            X=counts if registry.layer is None else None, obs=adata.obs.copy(),
            var=pd.DataFrame(index=pd.Index(registry.var_names)),
            layers={registry.layer: counts} if registry.layer is not None else None,
            obsm={k: v for k, v in adata.obsm.items()},
        )
        query.uns["cellvi_query"] = {"n_genes_missing": n_ref - n_shared, "n_genes_shared": n_shared,
                                     "n_genes_dropped": int(len(names) - n_shared)}
        return query

    @classmethod
    def load_query_data(cls, adata, reference, freeze_dropout: bool = False, unfrozen: bool = False,
                        device: str = "auto") -> "BaseModel":
        """A model of the query ``adata`` built on a trained reference (architecture surgery).

        The network gets rows for the query's new batches (and new categories of other
        categorical covariates); the reference's weights are copied and frozen, BatchNorm
        running statistics included, and :meth:`train` then trains only the new rows, with
        no weight decay. The reference cells' latent representation is therefore exactly the
        reference model's.

        Parameters
        ----------
        adata
            Query AnnData with the reference's genes in its order (see
            :meth:`prepare_query_anndata`) and the reference's obs columns; its batches must
            have new names.
        reference
            The trained reference model, or the directory of a saved one.
        freeze_dropout
            Also switch dropout off while training on the query.
        unfrozen
            Train every weight on the query (the reference latent then changes).
        device
            Where to put the model.

        Examples
        --------
        >>> query = cellvi.SCANVI.prepare_query_anndata(query, reference)
        >>> model = cellvi.SCANVI.load_query_data(query, reference)
        >>> model.train(max_epochs=100)
        >>> query.obs["predicted"] = model.predict()
        """
        ref = reference if isinstance(reference, BaseModel) else BaseModel.load(reference, device="cpu")
        model_cls = type(ref)
        if cls is not BaseModel and model_cls is not cls:
            raise TypeError(f"the reference is a {model_cls.__name__} model; use "
                            f"cellvi.{model_cls.__name__}.load_query_data")
        if not ref.is_trained:
            raise ValueError("the reference model is not trained; train it first")
        try:
            ref.registry.check_genes(adata)
        except ValueError as err:
            raise ValueError(f"{err}. Align the query first: query = cellvi.{model_cls.__name__}."
                             "prepare_query_anndata(query, reference)") from None
        registry = ref.registry.extended_for_query(adata)
        tensors = registry.tensors(adata)
        model = model_cls(adata, _registry=registry, _tensors=tensors, **ref.init_kwargs)
        grown = _copy_weights(ref.module, model.module)
        model._query = {"grown": grown, "unfrozen": bool(unfrozen), "freeze_dropout": bool(freeze_dropout)}
        model._apply_query_freeze()
        model.module.to(resolve_device(device))
        model.is_trained = False
        return model

    def _apply_query_freeze(self) -> None:
        """Mark what query training may change (see :meth:`load_query_data`)."""
        query = self._query
        for module in self.module.modules():
            frozen_norm = not query["unfrozen"] and isinstance(module, (torch.nn.BatchNorm1d, torch.nn.LayerNorm))
            frozen_dropout = query["freeze_dropout"] and isinstance(module, torch.nn.Dropout)
            module.frozen_in_eval = frozen_norm or frozen_dropout
        if query["unfrozen"]:
            return
        for name, param in self.module.named_parameters():
            old_shape = query["grown"].get(name)
            param.requires_grad_(old_shape is not None)
            if old_shape is not None:
                reference_part = tuple(slice(0, n) for n in old_shape)
                param.register_hook(lambda grad, part=reference_part: _zero_part(grad, part))

    def _query_optimizer_params(self):
        """Parameter groups for query training (None: train everything as usual)."""
        if self._query is None or self._query["unfrozen"]:
            return None
        params = [p for name, p in self.module.named_parameters() if name in self._query["grown"]]
        if not params:
            raise ValueError(
                "the query adds no weights to train: the reference has no batch or categorical "
                "covariate that the query extends. Its latent needs no training: call "
                "get_latent_representation() directly, or load_query_data(..., unfrozen=True)"
            )
        # No weight decay: Adam's decay would move the frozen reference rows as well.
        return [{"params": params, "weight_decay": 0.0}]

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
            "query": self._query,
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
        meta = _read_model_json(dir_path)
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
        if meta.get("query") is not None:
            model._query = meta["query"]
            model._query["grown"] = {k: tuple(v) for k, v in model._query["grown"].items()}
            model._apply_query_freeze()
        return model


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


@torch.no_grad()
def _copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Copy ``source``'s weights into ``target``, whose tensors may be larger (new category
    rows or columns): the source fills the leading part. Returns the names and source shapes
    of the parameters that grew."""
    target_state = target.state_dict()
    grown = {}
    for name, value in source.state_dict().items():
        dest = target_state[name]
        if dest.shape == value.shape:
            dest.copy_(value)
            continue
        if dest.dim() != value.dim() or any(a > b for a, b in zip(value.shape, dest.shape)):
            raise ValueError(f"cannot map weight '{name}' of shape {tuple(value.shape)} onto {tuple(dest.shape)}")
        dest[tuple(slice(0, n) for n in value.shape)].copy_(value)
        grown[name] = tuple(value.shape)
    parameters = dict(target.named_parameters())
    return {name: shape for name, shape in grown.items() if name in parameters}


def _zero_part(grad: torch.Tensor, part: tuple) -> torch.Tensor:
    grad = grad.clone()
    grad[part] = 0
    return grad


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
