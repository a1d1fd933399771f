"""The data registry: what a model needs from an AnnData, recorded so it can be re-applied.

``setup_anndata`` validates the user's choices (layer, batch, labels, covariates) and records
them, with the category orders and gene names, in a :class:`Registry`. The registry turns any
AnnData with the same genes and obs columns into :class:`AnnTensors` (the numbers a model
consumes) and is saved as JSON next to a model's weights.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
import weakref
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _constants as C

_MAX_LISTED = 10
_CHUNK = 1 << 22  # values per chunk when scanning a count matrix


def _preview(values: Sequence[Any], n: int = _MAX_LISTED) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


# ----------------------------------------------------------------------------------------
# Where a setup is remembered between ``setup_anndata`` and ``Model(adata)``.
#
# Kept outside the AnnData on purpose: writing to ``uns`` of a view would turn the view into a
# full copy of the data, and the user's object must stay as it was. Entries go away with the
# AnnData they belong to.
# The tensors checked by the setup wait here for the first model built on the AnnData, so
# that the data are converted and checked once, not twice.
_SETUPS: dict[int, tuple["Registry", "AnnTensors | None"]] = {}


def remember_setup(adata, registry: "Registry", tensors: "AnnTensors | None" = None) -> None:
    key = id(adata)
    if key not in _SETUPS:
        weakref.finalize(adata, _SETUPS.pop, key, None)
    _SETUPS[key] = (registry, tensors)


def recall_setup(adata, model_name: str) -> tuple["Registry", "AnnTensors | None"]:
    """The setup of ``adata``, and its checked tensors if no model has taken them yet."""
    registry, tensors = _SETUPS.get(id(adata), (None, None))
    if registry is None:
        raise ValueError(
            f"this AnnData has not been set up for {model_name}; call "
            f"cellvi.{model_name}.setup_anndata(adata, ...) on this very object first"
        )
    if registry.model != model_name:
        raise ValueError(
            f"this AnnData was set up with {registry.model}.setup_anndata, not "
            f"{model_name}.setup_anndata; call cellvi.{model_name}.setup_anndata(adata, ...)"
        )
    _SETUPS[id(adata)] = (registry, None)  # the model keeps them now
    return registry, tensors


# ----------------------------------------------------------------------------------------
# Checks on the count matrix.


def as_csr_float32(X) -> sp.csr_matrix:
    """Return X as CSR with float32 values, without copying when it already is."""
    if sp.issparse(X):
        X = X.tocsr() if X.format != "csr" else X
        if not isinstance(X, sp.csr_matrix):  # scipy's csr_array
            X = sp.csr_matrix(X)
    else:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"the count matrix must be 2-D, got shape {X.shape}")
        X = sp.csr_matrix(X)
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise TypeError(f"the count matrix must hold numbers, got dtype {X.dtype}")
    if X.dtype != np.float32:
        X = X.astype(np.float32)
    return X


def check_counts(X: sp.csr_matrix, source: str, obs_names=None) -> None:
    """Refuse what cannot be counts; warn on non-integers. ``X`` is CSR float32.

    The stored values are scanned in chunks so that the check's temporaries stay small next
    to the matrix (it must not double the memory of a large data set).
    """
    data = X.data
    if X.shape[0] == 0:
        raise ValueError(f"{source} has no cells")
    if X.shape[1] == 0:
        raise ValueError(f"{source} has no genes")
    n_nan = n_inf = n_negative = 0
    minimum, non_integer = np.inf, None
    for start in range(0, data.size, _CHUNK):
        chunk = data[start:start + _CHUNK]
        finite = np.isfinite(chunk)
        if not finite.all():
            n_nan += int(np.isnan(chunk).sum())
            n_inf += int((~finite).sum()) - int(np.isnan(chunk).sum())
            chunk = chunk[finite]
        if chunk.size:
            minimum = min(minimum, float(chunk.min()))
            n_negative += int((chunk < 0).sum())
            if non_integer is None:
                fractional = chunk[chunk != np.round(chunk)]
                if fractional.size:
                    non_integer = float(fractional[0])
    if n_nan or n_inf:
        raise ValueError(
            f"{source} holds {n_nan} NaN and {n_inf} infinite values; the model needs raw "
            "counts (non-negative integers)"
        )
    if n_negative:
        raise ValueError(
            f"{source} holds {n_negative} negative values (minimum {minimum:g}); the model needs "
            "raw counts: pass the layer that holds them with layer=..., not scaled or centred data"
        )
    if non_integer is not None:
        warnings.warn(
            f"{source} holds non-integer values (e.g. {non_integer:g}); the model expects raw "
            "counts. This usually means normalized or log-transformed data was passed: use the "
            "raw counts (layer=... or adata.raw).",
            UserWarning,
            stacklevel=4,
        )
    totals = np.asarray(X.sum(axis=1)).ravel()
    empty = np.flatnonzero(totals <= 0)
    if empty.size:
        names = np.asarray(obs_names)[empty] if obs_names is not None else empty
        raise ValueError(
            f"{source} has {empty.size} cells with zero total counts ({_preview(names)}); "
            "remove them first, e.g. adata = adata[adata.X.sum(axis=1) > 0].copy() or "
            "scanpy.pp.filter_cells(adata, min_counts=1)"
        )


# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class AnnTensors:
    """The numbers a model consumes, cut from one AnnData (cells are rows)."""

    X: sp.csr_matrix  # float32 counts
    batch: np.ndarray  # int64 codes
    labels: np.ndarray  # int64 codes
    categorical_covariates: np.ndarray | None  # int64 (n_cells, n_covariates)
    continuous_covariates: np.ndarray | None  # float32 (n_cells, n_covariates)
    size_factor: np.ndarray | None  # float32

    @property
    def n_obs(self) -> int:
        return self.X.shape[0]


def _category_strings(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """Values as strings and the category order (categorical order, else sorted)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
        categories = [str(c) for c in values.cat.categories]
    else:
        uniques = pd.unique(values.dropna())
        try:
            uniques = sorted(uniques)
        except TypeError:  # mixed types
            uniques = sorted(uniques, key=str)
        categories = [str(c) for c in uniques]
    return values.astype(str), categories


def _obs_column(adata, key: str, role: str) -> pd.Series:
    if not isinstance(key, str):
        raise TypeError(f"{role} must be the name of an obs column (a string), got {key!r}")
    if key not in adata.obs.columns:
        raise KeyError(
            f"obs column '{key}' ({role}) not found; available: {_preview(adata.obs.columns, 30)}"
        )
    column = adata.obs[key]
    if column.isna().any():
        raise ValueError(
            f"obs column '{key}' ({role}) has {int(column.isna().sum())} missing values; "
            "fill or drop those cells first"
        )
    return column


def _codes(adata, key: str, role: str, categories: list[str]) -> np.ndarray:
    values = _obs_column(adata, key, role).astype(str)
    codes = pd.Categorical(values, categories=categories).codes.astype(np.int64)
    if (codes < 0).any():
        unknown = pd.unique(values[codes < 0])
        raise ValueError(
            f"obs column '{key}' ({role}) has categories the model was not set up with: "
            f"{_preview(unknown)}; known: {_preview(categories, 30)}"
        )
    return codes


@dataclasses.dataclass
class Registry:
    """Everything needed to rebuild a model's tensors from an AnnData, as plain JSON data."""

    model: str
    var_names: list[str]
    layer: str | None = None
    batch_key: str | None = None
    labels_key: str | None = None
    size_factor_key: str | None = None
    categorical_covariate_keys: list[str] = dataclasses.field(default_factory=list)
    continuous_covariate_keys: list[str] = dataclasses.field(default_factory=list)
    batch_categories: list[str] = dataclasses.field(default_factory=lambda: ["0"])
    label_categories: list[str] = dataclasses.field(default_factory=lambda: ["0"])
    categorical_covariate_categories: dict[str, list[str]] = dataclasses.field(
        default_factory=dict
    )
    # Label models: the value of the labels column that means "no label". It is not one of
    # ``label_categories``; unlabelled cells get the code ``n_labels``.
    unlabeled_category: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # model-specific

    # -- sizes the modules need ------------------------------------------------------------
    @property
    def n_vars(self) -> int:
        return len(self.var_names)

    @property
    def n_batch(self) -> int:
        return len(self.batch_categories)

    @property
    def n_labels(self) -> int:
        return len(self.label_categories)

    @property
    def n_cats_per_cov(self) -> list[int]:
        return [len(self.categorical_covariate_categories[k]) for k in self.categorical_covariate_keys]

    @property
    def n_continuous_cov(self) -> int:
        return len(self.continuous_covariate_keys)

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Registry":
        return cls(**d)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_anndata(
        cls,
        adata,
        model: str,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        unlabeled_category: str | None = None,
        extra: dict | None = None,
        return_tensors: bool = False,
    ) -> "Registry | tuple[Registry, AnnTensors]":
        """Validate the setup against ``adata`` and record it. Does not modify ``adata``.

        With ``unlabeled_category``, cells whose label is that value are unlabelled; the
        other values are the label categories. With ``return_tensors``, also return the
        tensors that the checks built.
        """
        if not hasattr(adata, "obs") or not hasattr(adata, "var_names"):
            raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
        if adata.n_obs == 0:
            raise ValueError("the AnnData has no cells")
        var_names = [str(v) for v in adata.var_names]
        if len(set(var_names)) != len(var_names):
            dup = pd.Index(var_names)[pd.Index(var_names).duplicated()].unique()
            raise ValueError(
                f"gene names (var_names) are duplicated: {_preview(dup)}; make them unique, "
                "e.g. adata.var_names_make_unique()"
            )
        cat_keys = _key_list(categorical_covariate_keys, "categorical_covariate_keys")
        cont_keys = _key_list(continuous_covariate_keys, "continuous_covariate_keys")
        reg = cls(
            model=model,
            var_names=var_names,
            layer=layer,
            batch_key=batch_key,
            labels_key=labels_key,
            size_factor_key=size_factor_key,
            categorical_covariate_keys=cat_keys,
            continuous_covariate_keys=cont_keys,
            extra=dict(extra or {}),
        )
        if batch_key is not None:
            reg.batch_categories = _category_strings(_obs_column(adata, batch_key, "batch_key"))[1]
        if labels_key is not None:
            reg._set_labels(adata, labels_key, unlabeled_category)
        elif unlabeled_category is not None:
            raise ValueError("unlabeled_category needs labels_key (the obs column of the labels)")
        for key in cat_keys:
            reg.categorical_covariate_categories[key] = _category_strings(
                _obs_column(adata, key, "categorical covariate")
            )[1]
        # Building the tensors runs every remaining check (layer, counts, covariates).
        tensors = reg.tensors(adata)
        return (reg, tensors) if return_tensors else reg

    def _set_labels(self, adata, labels_key: str, unlabeled_category) -> None:
        categories = _category_strings(_obs_column(adata, labels_key, "labels_key"))[1]
        self.labels_key = labels_key
        if unlabeled_category is not None:
            unlabeled_category = str(unlabeled_category)
            if unlabeled_category in categories:
                categories.remove(unlabeled_category)
            else:
                warnings.warn(
                    f"unlabeled_category '{unlabeled_category}' does not occur in obs column "
                    f"'{labels_key}': every cell is labelled, and training is fully supervised",
                    UserWarning, stacklevel=4,
                )
            if not categories:
                raise ValueError(
                    f"obs column '{labels_key}' holds no label other than the unlabeled category "
                    f"'{unlabeled_category}'; at least one labelled cell type is needed"
                )
        self.label_categories = categories
        self.unlabeled_category = unlabeled_category

    def with_labels(self, adata, labels_key: str | None, unlabeled_category, model: str) -> "Registry":
        """A copy of this setup for ``model`` with the labels of ``adata`` (default: the
        registry's own labels column) and an unlabeled category."""
        reg = copy.deepcopy(self)
        reg.model = model
        labels_key = labels_key if labels_key is not None else self.labels_key
        if labels_key is None:
            raise ValueError("no labels column: pass labels_key= (the obs column of the cell labels)")
        reg._set_labels(adata, labels_key, unlabeled_category)
        return reg

    def extended_for_query(self, adata) -> "Registry":
        """A copy of this (reference) setup that also knows the query's new batches and
        covariate categories, appended after the reference's so that reference codes stay.

        A query batch may not share a name with a reference batch (its cells would be taken
        for the reference's, through frozen weights); query labels must be known labels.
        """
        reg = copy.deepcopy(self)
        if self.batch_key is not None:
            query = _category_strings(_obs_column(adata, self.batch_key, "batch_key"))[1]
            shared = [b for b in query if b in self.batch_categories]
            if shared:
                raise ValueError(
                    f"query batch{'es' if len(shared) > 1 else ''} {_preview(shared)} in obs column "
                    f"'{self.batch_key}' also name{'' if len(shared) > 1 else 's'} a reference batch; "
                    "query batches must be new. Rename them, e.g. "
                    f"query.obs['{self.batch_key}'] = 'query_' + query.obs['{self.batch_key}'].astype(str)"
                )
            reg.batch_categories = self.batch_categories + query
        for key in self.categorical_covariate_keys:
            query = _category_strings(_obs_column(adata, key, "categorical covariate"))[1]
            known = self.categorical_covariate_categories[key]
            reg.categorical_covariate_categories[key] = known + [c for c in query if c not in known]
        if self.labels_key is not None and self.labels_key in adata.obs.columns:
            query = _category_strings(_obs_column(adata, self.labels_key, "labels_key"))[1]
            allowed = set(self.label_categories) | {self.unlabeled_category}
            unknown = [c for c in query if c not in allowed]
            if unknown:
                hint = (f"; mark cells of unknown type as '{self.unlabeled_category}'"
                        if self.unlabeled_category is not None else "")
                raise ValueError(
                    f"the query's obs column '{self.labels_key}' has label categories the reference "
                    f"never saw: {_preview(unknown)}; reference labels: "
                    f"{_preview(self.label_categories, 30)}{hint}"
                )
        return reg

    # -- applying the setup ----------------------------------------------------------------
    def check_genes(self, adata) -> None:
        """Refuse an AnnData whose genes differ from the registry's, saying which."""
        names = [str(v) for v in adata.var_names]
        if names == self.var_names:
            return
        theirs, ours = set(names), set(self.var_names)
        missing = [g for g in self.var_names if g not in theirs]
        extra = [g for g in names if g not in ours]
        if not missing and not extra:
            raise ValueError(
                "the AnnData has the model's genes in a different order; reorder it with "
                "adata = adata[:, model.var_names]"
            )
        raise ValueError(
            f"the AnnData's genes do not match the model's ({self.n_vars} genes): "
            f"{len(missing)} missing ({_preview(missing)}), {len(extra)} not in the model "
            f"({_preview(extra)}); subset or reorder with adata[:, model.var_names]"
        )

    def counts(self, adata) -> sp.csr_matrix:
        if self.layer is None:
            X, source = adata.X, "adata.X"
        else:
            if self.layer not in adata.layers:
                raise KeyError(
                    f"layer '{self.layer}' not found; available layers: "
                    f"{_preview(list(adata.layers.keys())) or '(none)'}"
                )
            X, source = adata.layers[self.layer], f"layer '{self.layer}'"
        if X is None:
            raise ValueError(f"{source} is empty (None); pass the layer holding the counts")
        X = as_csr_float32(X)
        check_counts(X, source, adata.obs_names)
        return X

    def tensors(self, adata) -> AnnTensors:
        """Cut the model's tensors from ``adata`` (checked against this registry)."""
        if adata.n_obs == 0:
            raise ValueError("the AnnData has no cells")
        self.check_genes(adata)
        n = adata.n_obs
        X = self.counts(adata)
        batch = (
            _codes(adata, self.batch_key, "batch_key", self.batch_categories)
            if self.batch_key is not None
            else np.zeros(n, dtype=np.int64)
        )
        labels = self._label_codes(adata)
        cat = None
        if self.categorical_covariate_keys:
            cat = np.stack(
                [
                    _codes(adata, k, "categorical covariate", self.categorical_covariate_categories[k])
                    for k in self.categorical_covariate_keys
                ],
                axis=1,
            )
        cont = None
        if self.continuous_covariate_keys:
            cols = []
            for k in self.continuous_covariate_keys:
                col = _obs_column(adata, k, "continuous covariate")
                if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
                    raise TypeError(
                        f"continuous covariate '{k}' must be numeric, got dtype {col.dtype}; "
                        "pass categorical columns as categorical_covariate_keys"
                    )
                col = col.to_numpy(dtype=np.float32)
                if not np.isfinite(col).all():
                    raise ValueError(f"continuous covariate '{k}' has infinite values")
                cols.append(col)
            cont = np.stack(cols, axis=1)
        size_factor = None
        if self.size_factor_key is not None:
            col = _obs_column(adata, self.size_factor_key, "size_factor_key")
            if not pd.api.types.is_numeric_dtype(col):
                raise TypeError(f"size factor column '{self.size_factor_key}' must be numeric")
            size_factor = col.to_numpy(dtype=np.float32)
            if not (np.isfinite(size_factor).all() and (size_factor > 0).all()):
                raise ValueError(
                    f"size factor column '{self.size_factor_key}' must be positive and finite"
                )
        return AnnTensors(X, batch, labels, cat, cont, size_factor)

    def _label_codes(self, adata) -> np.ndarray:
        n = adata.n_obs
        if self.labels_key is None:
            return np.zeros(n, dtype=np.int64)
        if self.unlabeled_category is None:
            return _codes(adata, self.labels_key, "labels_key", self.label_categories)
        if self.labels_key not in adata.obs.columns:  # new data to classify: no labels yet
            return np.full(n, self.n_labels, dtype=np.int64)
        # Unlabelled cells get the code n_labels, one past the label categories.
        return _codes(adata, self.labels_key, "labels_key",
                      self.label_categories + [self.unlabeled_category])

    def category_codes(self, field: str, values) -> np.ndarray:
        """Codes of category names (e.g. a ``transform_batch``) for a registry field."""
        categories = {C.BATCH_KEY: self.batch_categories, C.LABELS_KEY: self.label_categories}[
            field
        ]
        values = [values] if np.isscalar(values) else list(values)
        lookup = {c: i for i, c in enumerate(categories)}
        unknown = [v for v in values if str(v) not in lookup]
        if unknown:
            raise ValueError(
                f"unknown {field} categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{_preview(unknown)}; known: {_preview(categories, 30)}"
            )
        return np.array([lookup[str(v)] for v in values], dtype=np.int64)


def _key_list(keys, name: str) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name} has repeated names: {keys}")
    return keys
