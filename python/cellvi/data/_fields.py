"""Registry fields: each names one part of an AnnData that a model uses.

A model's setup is a list of fields. Each field
- learns what it must remember from the AnnData it is set up on (``setup``): gene or column
  names, category orders;
- turns any AnnData with the same layout into one array (``array``), checking it as it goes
  (clear errors that name the problem and the fix);
- keeps that state as JSON (``state`` / ``Field.from_state``);
- extends its categories for query data (``for_query``).

The loader serves every field's array under the field's key; sparse arrays (CSR) also give
their non-zero entries. A model with a new kind of input declares a new Field subclass (in its
own file if nothing else needs it); nothing else in ``data/`` changes.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._backed import BackedCSR, is_backed_matrix, row_blocks, uniform_index_dtype

_MAX_LISTED = 10
_CHUNK = 1 << 22  # values per chunk when scanning a matrix
_FIELD_TYPES: dict[str, type["Field"]] = {}


def preview(values: Sequence[Any], n: int = _MAX_LISTED) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


# ----------------------------------------------------------------------------------------
# Checks on matrices.


def as_csr_float32(X, what: str = "the count matrix") -> sp.csr_matrix:
    """Return X as CSR with float32 values, without copying when it already is."""
    if sp.issparse(X):
        X = X.tocsr() if X.format != "csr" else X
        if not isinstance(X, sp.csr_matrix):  # scipy's csr_array
            X = sp.csr_matrix(X)
    else:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"{what} must be 2-D, got shape {X.shape}")
        X = sp.csr_matrix(X)
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise TypeError(f"{what} must hold numbers, got dtype {X.dtype}")
    if X.dtype != np.float32:
        X = X.astype(np.float32)
    X = uniform_index_dtype(X)
    if not X.has_canonical_format or not X.data.all():
        # The likelihoods read a minibatch's stored entries as its non-zero counts: repeated
        # (row, column) entries would each count once more, and stored zeros as counts above
        # zero (a ZINB then scores them wrongly); sum the first, drop the second (in a copy:
        # the data stay the user's).
        X = X.copy()
        X.sum_duplicates()
        X.eliminate_zeros()
    return X


def scan_values(data: np.ndarray) -> dict:
    """NaN, infinite and negative counts, the minimum and a first non-integer of ``data``,
    scanned in chunks so that the temporaries stay small next to a large matrix."""
    n_nan = n_inf = n_negative = 0
    minimum, non_integer = np.inf, None
    for start in range(0, data.size, _CHUNK):
        chunk = data[start:start + _CHUNK]
        finite = np.isfinite(chunk)
        if not finite.all():
            nan = int(np.isnan(chunk).sum())
            n_nan += nan
            n_inf += int((~finite).sum()) - nan
            chunk = chunk[finite]
        if chunk.size:
            minimum = min(minimum, float(chunk.min()))
            n_negative += int((chunk < 0).sum())
            if non_integer is None:
                fractional = chunk[chunk != np.round(chunk)]
                if fractional.size:
                    non_integer = float(fractional[0])
    return {"nan": n_nan, "inf": n_inf, "negative": n_negative, "minimum": minimum,
            "non_integer": non_integer}


def check_values(data: np.ndarray, source: str, values: str, fix: str) -> None:
    """Refuse NaN/infinite values, and negative ones unless ``values == "continuous"``; warn
    on non-integers when ``values == "counts"``."""
    found = scan_values(data)
    if found["nan"] or found["inf"]:
        raise ValueError(f"{source} holds {found['nan']} NaN and {found['inf']} infinite values; "
                         f"the model needs {_WHAT[values]}")
    if values == "continuous":
        return
    if found["negative"]:
        raise ValueError(
            f"{source} holds {found['negative']} negative values (minimum {found['minimum']:g}); the "
            f"model needs {_WHAT[values]}: {fix}"
        )
    if values == "counts" and found["non_integer"] is not None:
        warnings.warn(
            f"{source} holds non-integer values (e.g. {found['non_integer']:g}); the model expects raw "
            "counts. This usually means normalized or log-transformed data was passed: use the "
            "raw counts (layer=... or adata.raw).",
            UserWarning,
            stacklevel=5,
        )


_WHAT = {"counts": "raw counts (non-negative integers)", "binary": "non-negative values (counts or 0/1)",
         "continuous": "finite values"}


VALUES_FIX = "pass the layer that holds them with layer=..., not scaled or centred data"


def check_counts(X: sp.csr_matrix, source: str, obs_names=None, values: str = "counts",
                 features: str = "genes") -> None:
    """Refuse what cannot be counts (or binary data); warn on non-integers. ``X`` is CSR;
    ``features`` names its columns in messages."""
    if X.shape[0] == 0:
        raise ValueError(f"{source} has no cells")
    if X.shape[1] == 0:
        raise ValueError(f"{source} has no {features}")
    check_values(X.data, source, values, VALUES_FIX)
    if values == "continuous":
        return
    if values == "binary":
        _check_binary(X, source, obs_names, features)
        return
    totals = np.asarray(X.sum(axis=1)).ravel()
    empty = np.flatnonzero(totals <= 0)
    if empty.size:
        names = np.asarray(obs_names)[empty] if obs_names is not None else empty
        raise ValueError(
            f"{source} has {empty.size} cells with zero total counts ({preview(names)}); "
            "remove them first, e.g. adata = adata[adata.X.sum(axis=1) > 0].copy() or "
            "scanpy.pp.filter_cells(adata, min_counts=1)"
        )


def _matrix_expression(source: str) -> str:
    """How the user reaches ``source`` ("adata.X" or "layer 'name'") in code."""
    return "adata.X" if source == "adata.X" else f"adata.layers[{source[len('layer '):]}]"


def open_backed(dataset, source: str, columns=None) -> BackedCSR:
    """The on-disk matrix of a backed AnnData, read as rows (only ``columns``, positions, when
    given), unchecked; a clear error where it cannot be (a CSC file)."""
    if getattr(dataset, "format", "csr") != "csr":
        raise ValueError(f"{source} is on disk in {dataset.format.upper()} format; training reads rows, which "
                         "needs CSR: write the file with adata.X = adata.X.tocsr(), or load it in memory")
    matrix = BackedCSR(dataset)
    return matrix if columns is None else matrix.select_columns(columns)


def check_blocks(matrix: BackedCSR, check) -> BackedCSR:
    """Run ``check(first row, block)`` over an on-disk matrix one block of rows at a time,
    passing on the first warning only (one for the whole matrix, as in memory)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start, block in matrix.row_blocks():
            check(start, block)
    if caught:
        warnings.warn(caught[0].message, caught[0].category, stacklevel=5)
    return matrix


def _checked_backed(dataset, source: str, obs_names, values: str, features: str) -> BackedCSR:
    """An on-disk count matrix, checked as :func:`check_counts` checks one in memory."""
    obs_names = pd.Index(obs_names)
    matrix = open_backed(dataset, source)
    if 0 in matrix.shape:  # no blocks to read: refused as in memory
        check_counts(sp.csr_matrix(matrix.shape, dtype=np.float32), source, obs_names, values, features)
    if values != "binary":
        return check_blocks(matrix, lambda start, block: check_counts(
            block, source, obs_names[start:start + block.shape[0]], values, features))
    n_open = 0  # binary: "every entry open" is a property of the whole matrix

    def check(start, block):
        nonlocal n_open
        check_values(block.data, source, values, VALUES_FIX)
        n_open = _check_binary(block, source, obs_names[start:start + block.shape[0]], features,
                               matrix.shape[0], n_open)
    return check_blocks(matrix, check)


def _check_binary(X: sp.csr_matrix, source: str, obs_names, features: str, n_rows: int | None = None,
                  n_open_before: int = 0) -> int:
    """Binary data (open where > 0): refuse cells with nothing open, and a matrix with nothing
    closed (every entry non-zero, e.g. all values equal), which cannot be such data. ``X``
    may be a block of rows (of ``n_rows`` in all, after ``n_open_before`` open entries);
    returns the open entries so far."""
    n_open = np.diff(X.indptr)  # open entries per cell, unless some stored values are 0
    if X.data.size and not X.data.min() > 0:
        rows = np.repeat(np.arange(X.shape[0]), n_open)
        n_open = np.bincount(rows[X.data > 0], minlength=X.shape[0])
    empty = np.flatnonzero(n_open == 0)
    if empty.size:
        names = np.asarray(obs_names)[empty] if obs_names is not None else empty
        matrix = _matrix_expression(source)
        raise ValueError(
            f"{source} has {empty.size} cells with no non-zero value (no open {features[:-1]}) "
            f"({preview(names)}); they cannot be modelled: remove them first, e.g. "
            f"adata = adata[np.asarray(({matrix} > 0).sum(axis=1)).ravel() > 0].copy()"
        )
    total = n_open_before + int(n_open.sum())
    n_rows = X.shape[0] if n_rows is None else n_rows
    if total == n_rows * X.shape[1]:
        raise ValueError(
            f"every entry of {source} ({n_rows} cells x {X.shape[1]} {features}) is non-zero: read as "
            f"binary data (open where > 0) every one of the {features} is open in every cell, and "
            "there is nothing to learn. Accessibility data are mostly zeros (a few percent of "
            "entries open); pass the raw peak counts or a 0/1 matrix, not normalized or "
            "pseudocounted values"
        )
    return total


# ----------------------------------------------------------------------------------------
# obs columns.


def category_strings(values: pd.Series) -> tuple[pd.Series, list[str]]:
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


def obs_column(adata, key: str, role: str, allow_missing: bool = False) -> pd.Series:
    if not isinstance(key, str):
        raise TypeError(f"{role} must be the name of an obs column (a string), got {key!r}")
    if key not in adata.obs.columns:
        raise KeyError(
            f"obs column '{key}' ({role}) not found; available: {preview(adata.obs.columns, 30)}"
        )
    column = adata.obs[key]
    if not allow_missing and column.isna().any():
        raise ValueError(
            f"obs column '{key}' ({role}) has {int(column.isna().sum())} missing values; "
            "fill or drop those cells first"
        )
    return column


def check_grouping(column: pd.Series, key: str, role: str) -> None:
    """Refuse, as a batch or label column, one that cannot be a grouping of the cells: numbers
    that are not whole (a continuous measurement), or a value that differs in every cell (cell
    names, barcodes, a per-cell score), which would make one group per cell."""
    n = len(column)
    if pd.api.types.is_float_dtype(column.dtype):
        values = column.to_numpy(dtype=float)
        bad = values[np.isfinite(values) & (values != np.round(values))]
        if bad.size:
            raise ValueError(
                f"obs column '{key}' ({role}) holds non-integer numbers (e.g. {bad[0]:g}): it looks "
                f"like a continuous measurement, not groups of cells. Pass it in "
                f"continuous_covariate_keys, or give {role} a column of categories (e.g. sample or "
                "donor names)"
            )
    if n >= 10 and column.nunique(dropna=True) == n:
        example = ", ".join(str(v) for v in column.iloc[:3])
        raise ValueError(
            f"obs column '{key}' ({role}) has a different value in every one of the {n} cells "
            f"({example}, ...): it would make one group per cell. Give {role} a column whose "
            "values are shared by many cells (e.g. sample, donor or cell type), or pass a numeric "
            "per-cell value in continuous_covariate_keys"
        )


def category_codes(adata, key: str, role: str, categories: list[str]) -> np.ndarray:
    values = obs_column(adata, key, role).astype(str)
    codes = pd.Categorical(values, categories=categories).codes.astype(np.int64)
    if (codes < 0).any():
        unknown = pd.unique(values[codes < 0])
        raise ValueError(
            f"obs column '{key}' ({role}) has categories the model was not set up with: "
            f"{preview(unknown)}; known: {preview(categories, 30)}"
        )
    return codes


def key_list(keys, name: str) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name} has repeated names: {keys}")
    return keys


def numeric_column(adata, key: str, role: str) -> np.ndarray:
    col = obs_column(adata, key, role)
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise TypeError(f"{role} '{key}' must be numeric, got dtype {col.dtype}; pass categorical "
                        "columns as categorical_covariate_keys")
    values = col.to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{role} '{key}' has infinite values")
    return values


# ----------------------------------------------------------------------------------------


class Field:
    """One registered part of an AnnData, served to the model under ``key``.

    Subclasses set their constructor arguments as attributes, list the names of those that
    make up their JSON state in ``_state_attrs``, and implement ``setup`` (learn from the
    AnnData) and ``array`` (the checked array of any AnnData).
    """

    _state_attrs: ClassVar[tuple[str, ...]] = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _FIELD_TYPES[cls.__name__] = cls

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self, adata, fields: dict[str, "Field"]) -> None:
        """Learn the state from ``adata`` (``fields``: the fields set up before this one)."""

    def array(self, adata, fields: dict[str, "Field"]):
        """The field's values for the cells of ``adata``: a CSR matrix, a NumPy array, or
        None (nothing to serve)."""
        raise NotImplementedError

    def for_query(self, adata, fields: dict[str, "Field"]) -> "Field":
        """A copy that also knows the query's new categories (default: an unchanged copy);
        ``fields``: the fields already extended for the query."""
        return copy.deepcopy(self)

    def prepare_query(self, query) -> None:
        """Complete a query AnnData being prepared for mapping (a fresh copy that may be
        modified), e.g. fill a modality the query lacks. Default: nothing."""

    @property
    def summary(self) -> dict:
        """Sizes the module needs (e.g. ``{"n_batch": 3}``)."""
        return {}

    # -- JSON ----------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"type": type(self).__name__, **{a: copy.deepcopy(getattr(self, a)) for a in self._state_attrs}}

    @staticmethod
    def from_state(state: dict) -> "Field":
        state = dict(state)
        kind = state.pop("type")
        cls = _FIELD_TYPES.get(kind)
        if cls is None:
            raise ValueError(f"unknown registry field type '{kind}' (saved by a newer cellvi, or a "
                             "model whose module is not imported)")
        field = cls.__new__(cls)
        for name in cls._state_attrs:
            setattr(field, name, state.get(name, getattr(cls, name, None)))
        return field

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.state() == other.state()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.state().items() if k != 'type')})"


class LayerField(Field):
    """A cells x features matrix from ``X`` or a layer, kept sparse (CSR, float32).

    ``values``: ``"counts"`` (non-negative; non-integers warn; cells with no counts are
    refused), ``"binary"`` (non-negative, read as open where > 0, e.g. accessibility counts or
    0/1; cells with nothing open and matrices with nothing closed are refused; at setup,
    features open in no cell are reported and counts above 1 are said to be read as open)
    or ``"continuous"`` (any finite value). The feature names are recorded and checked;
    ``features`` names the columns in messages (e.g. "regions").
    """

    _state_attrs = ("key", "layer", "values", "var_names", "features")
    features = "genes"  # also the value of fields saved before the attribute existed

    def __init__(self, key: str, layer: str | None = None, values: str = "counts", features: str = "genes"):
        super().__init__(key)
        if values not in _WHAT:
            raise ValueError(f"values must be one of {', '.join(_WHAT)}; got {values!r}")
        self.layer, self.values, self.var_names, self.features = layer, values, [], features

    def setup(self, adata, fields) -> None:
        var_names = [str(v) for v in adata.var_names]
        if len(set(var_names)) != len(var_names):
            dup = pd.Index(var_names)[pd.Index(var_names).duplicated()].unique()
            raise ValueError(
                f"{self.features[:-1]} names (var_names) are duplicated: {preview(dup)}; make them unique, "
                "e.g. adata.var_names_make_unique()"
            )
        self.var_names = var_names
        if self.values == "binary":
            self._report_binary(adata)

    def _report_binary(self, adata) -> None:
        """Said once, at setup: features open in no cell, and counts read as open/closed."""
        X, source = self._source(adata)
        X = open_backed(X, source) if is_backed_matrix(X) else as_csr_float32(X)
        n_open, high = np.zeros(X.shape[1], np.int64), 0.0
        for _, block in row_blocks(X):  # block by block: X may be on disk
            if block.data.size:
                if not (block.data.min() >= 0 and np.isfinite(block.data.max())):
                    return  # NaN, infinite or negative: the checks that follow refuse the matrix
                high = max(high, float(block.data.max()))
            n_open += np.bincount(block.indices[block.data > 0], minlength=X.shape[1])
        closed = np.flatnonzero(n_open == 0)
        if closed.size and closed.size < X.shape[1]:
            matrix = _matrix_expression(source)
            warnings.warn(
                f"{closed.size} of the {X.shape[1]} {self.features} are open in no cell of {source} "
                f"({preview(np.asarray(self.var_names)[closed])}); the model can only learn that they "
                f"stay closed. Drop them to save time and memory, e.g. "
                f"adata = adata[:, np.asarray(({matrix} > 0).sum(axis=0)).ravel() > 0].copy()",
                UserWarning, stacklevel=6,
            )
        if high > 1:
            warnings.warn(
                f"{source} holds counts (up to {high:g}); the model reads every value "
                "above 0 as open (1) and 0 as closed", UserWarning, stacklevel=6,
            )

    @property
    def summary(self) -> dict:
        return {"n_vars": len(self.var_names)}

    def check_names(self, adata) -> None:
        """Refuse an AnnData whose features differ from the recorded ones, saying which."""
        names = [str(v) for v in adata.var_names]
        if names == self.var_names:
            return
        theirs, ours = set(names), set(self.var_names)
        missing = [g for g in self.var_names if g not in theirs]
        extra = [g for g in names if g not in ours]
        features = self.features
        if not missing and not extra:
            raise ValueError(
                f"the AnnData has the model's {features} in a different order; reorder it with "
                "adata = adata[:, model.var_names]"
            )
        raise ValueError(
            f"the AnnData's {features} do not match the model's ({len(self.var_names)} {features}): "
            f"{len(missing)} missing ({preview(missing)}), {len(extra)} not in the model "
            f"({preview(extra)}); subset or reorder with adata[:, model.var_names]"
        )

    def _source(self, adata):
        """(the raw matrix, how messages name it)."""
        if self.layer is None:
            X, source = adata.X, "adata.X"
        else:
            if self.layer not in adata.layers:
                raise KeyError(
                    f"layer '{self.layer}' not found; available layers: "
                    f"{preview(list(adata.layers.keys())) or '(none)'}"
                )
            X, source = adata.layers[self.layer], f"layer '{self.layer}'"
        if X is None:
            raise ValueError(f"{source} is empty (None); pass the layer holding the counts")
        return X, source

    def matrix(self, adata) -> sp.csr_matrix:
        """The layer as CSR float32, checked (without checking the feature names); the X of a
        backed AnnData stays on disk (a :class:`cellvi.data._backed.BackedCSR`, checked block
        by block)."""
        X, source = self._source(adata)
        if is_backed_matrix(X):
            return _checked_backed(X, source, adata.obs_names, self.values, self.features)
        X = as_csr_float32(X)
        check_counts(X, source, adata.obs_names, self.values, self.features)
        return X

    def array(self, adata, fields) -> sp.csr_matrix:
        self.check_names(adata)
        return self.matrix(adata)


class ObsmField(Field):
    """A dense cells x columns matrix from ``adata.obsm[obsm_key]`` (e.g. protein counts).

    Column names come from a DataFrame's columns, else from ``adata.uns[names_uns_key]``, else
    ``<obsm_key>_<i>``; they are recorded and new data must have the same ones (matched by
    name, so in any order, where the new data names them; an unnamed array must have the
    model's columns in its order). ``values`` as for :class:`LayerField`; ``min_columns``
    refuses too few columns.
    """

    _state_attrs = ("key", "obsm_key", "names_uns_key", "values", "column_names", "min_columns",
                    "zeros_for_query")

    def __init__(self, key: str, obsm_key: str, names_uns_key: str | None = None,
                 values: str = "counts", min_columns: int = 1, zeros_for_query: bool = False):
        super().__init__(key)
        self.obsm_key, self.names_uns_key, self.values = obsm_key, names_uns_key, values
        self.min_columns, self.column_names = min_columns, []
        self.zeros_for_query = zeros_for_query

    def prepare_query(self, query) -> None:
        """With ``zeros_for_query``, a query without the matrix (or without some of its
        columns) gets zeros there, as a DataFrame with the model's columns (a warning says so)."""
        if not self.zeros_for_query:
            return
        have = query.obsm.get(self.obsm_key)
        if have is not None and not isinstance(have, pd.DataFrame):
            values = have.toarray() if sp.issparse(have) else np.asarray(have)
            if self._has_uns_names(query) or values.shape[1] != len(self.column_names):
                names = self._names(query, values)
            else:  # no names: the model's columns, in its order
                names = self.column_names
            have = pd.DataFrame(values, index=query.obs_names, columns=names)
        table = pd.DataFrame(0.0, index=query.obs_names, columns=self.column_names, dtype=np.float32)
        missing = list(self.column_names)
        if have is not None:
            shared = [c for c in self.column_names if c in set(map(str, have.columns))]
            have.columns = [str(c) for c in have.columns]
            table[shared] = have[shared].to_numpy(dtype=np.float32)
            missing = [c for c in self.column_names if c not in set(shared)]
        if missing:
            warnings.warn(f"the query lacks {len(missing)} of the model's {len(self.column_names)} columns of "
                          f"obsm['{self.obsm_key}'] ({preview(missing)}); they were filled with zeros and "
                          "count as not measured", UserWarning, stacklevel=4)
        query.obsm[self.obsm_key] = table

    @property
    def summary(self) -> dict:
        return {f"n_{self.key}": len(self.column_names)}

    def _raw(self, adata):
        if not isinstance(self.obsm_key, str):
            raise TypeError(f"the obsm key must be a string, got {self.obsm_key!r}")
        if self.obsm_key not in adata.obsm:
            raise KeyError(f"obsm key '{self.obsm_key}' not found; available: "
                           f"{preview(list(adata.obsm.keys())) or '(none)'}")
        return adata.obsm[self.obsm_key]

    def _names(self, adata, raw) -> list[str]:
        if isinstance(raw, pd.DataFrame):
            return [str(c) for c in raw.columns]
        n = raw.shape[1] if raw.ndim == 2 else 0
        if self.names_uns_key is not None:
            if self.names_uns_key not in adata.uns:
                raise KeyError(f"uns key '{self.names_uns_key}' (the column names of obsm "
                               f"'{self.obsm_key}') not found; available: {preview(list(adata.uns.keys()))}")
            names = [str(v) for v in np.asarray(adata.uns[self.names_uns_key]).ravel()]
            if len(names) != n:
                raise ValueError(f"uns['{self.names_uns_key}'] has {len(names)} names for the {n} columns "
                                 f"of obsm['{self.obsm_key}']")
            return names
        return [f"{self.obsm_key}_{i}" for i in range(n)]

    def _has_uns_names(self, adata) -> bool:
        return self.names_uns_key is not None and self.names_uns_key in adata.uns

    def _model_order(self, names: list[str], source: str) -> list[int] | None:
        """Positions in ``names`` of the model's columns (None: already the model's order)."""
        if names == self.column_names:
            return None
        position = {n: i for i, n in enumerate(names)}
        missing = [c for c in self.column_names if c not in position]
        if missing:
            raise ValueError(f"{source} lacks the model's columns {preview(missing)}; "
                             f"model columns: {preview(self.column_names, 30)}")
        return [position[c] for c in self.column_names]

    def setup(self, adata, fields) -> None:
        raw = self._raw(adata)
        names = self._names(adata, raw)
        if len(set(names)) != len(names):
            dup = pd.Index(names)[pd.Index(names).duplicated()].unique()
            raise ValueError(f"the column names of obsm['{self.obsm_key}'] are duplicated: {preview(dup)}")
        if len(names) < self.min_columns:
            raise ValueError(f"obsm['{self.obsm_key}'] has {len(names)} columns; the model needs at least "
                             f"{self.min_columns}")
        self.column_names = names

    def array(self, adata, fields) -> np.ndarray:
        raw = self._raw(adata)
        source = f"obsm['{self.obsm_key}']"
        if raw.shape[0] != adata.n_obs:
            raise ValueError(f"{source} has {raw.shape[0]} rows for {adata.n_obs} cells; it must be "
                             "aligned with the cells (one row per cell, in obs order)")
        if isinstance(raw, pd.DataFrame):
            order = self._model_order([str(c) for c in raw.columns], source)
            if order is not None:
                raw = raw.iloc[:, order]
            if not raw.index.astype(str).equals(adata.obs_names.astype(str)):
                raise ValueError(f"the rows of {source} (a DataFrame) are not the cells of the AnnData "
                                 "(index differs from obs_names); reindex it: "
                                 f"adata.obsm['{self.obsm_key}'] = df.loc[adata.obs_names]")
            values = raw.to_numpy()
        else:
            values = raw.toarray() if sp.issparse(raw) else np.asarray(raw)
            if values.ndim == 2 and self._has_uns_names(adata):  # matched by name, as a DataFrame's
                order = self._model_order(self._names(adata, values), source)
                if order is not None:
                    values = values[:, order]
            elif values.ndim != 2 or values.shape[1] != len(self.column_names):
                raise ValueError(f"{source} has shape {values.shape}; the model expects "
                                 f"{len(self.column_names)} columns")
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            raise TypeError(f"{source} must hold numbers, got dtype {values.dtype}")
        values = np.ascontiguousarray(values, dtype=np.float32)
        check_values(values.ravel(), source, self.values, f"pass the raw counts in obsm['{self.obsm_key}']")
        return values


def _spelled_as_in(value: str, categories: list[str]) -> str:
    """``value`` as ``categories`` spell it when it is a number written otherwise there
    ("-1.0" for a column of integers holding -1, or "-1" for one of floats), else ``value``."""
    if value in categories:
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    spellings = [str(number)] + ([str(int(number))] if number.is_integer() else [])
    return next((s for s in spellings if s in categories), value)


class CategoricalObsField(Field):
    """Codes of one categorical obs column (``obs_key=None``: one category, every cell 0).

    ``query``: what a query's categories may be (``"new"``: only unseen ones, appended, as
    batches must be; ``"append"``: unseen ones are appended; ``"known"``: only known ones).
    With ``unlabeled_category``, cells with that value or with none (NaN) get the code
    ``n_categories`` (one past the categories) and an AnnData without the column is all
    unlabelled; a number given as the category matches the column's own spelling of it (-1
    and -1.0 alike: numbers from R arrive as floats).
    """

    _state_attrs = ("key", "obs_key", "role", "query", "categories", "unlabeled_category")

    def __init__(self, key: str, obs_key: str | None, role: str | None = None, query: str = "append",
                 unlabeled_category=None):
        super().__init__(key)
        self.obs_key, self.role, self.query = obs_key, role or f"{key}_key", query
        self.categories = ["0"]
        self.unlabeled_category = None if unlabeled_category is None else str(unlabeled_category)

    @property
    def summary(self) -> dict:
        return {f"n_{self.key}": len(self.categories)}

    def setup(self, adata, fields) -> None:
        if self.obs_key is None:
            if self.unlabeled_category is not None:
                raise ValueError(f"unlabeled_category needs {self.role} (the obs column of the labels)")
            return
        column = obs_column(adata, self.obs_key, self.role, allow_missing=self.unlabeled_category is not None)
        check_grouping(column, self.obs_key, self.role)
        categories = category_strings(column)[1]
        if self.unlabeled_category is not None:
            self.unlabeled_category = _spelled_as_in(self.unlabeled_category, categories)
            if self.unlabeled_category in categories:
                categories.remove(self.unlabeled_category)
            elif not column.isna().any():  # (cells with no value are unlabelled)
                warnings.warn(
                    f"unlabeled_category '{self.unlabeled_category}' does not occur in obs column "
                    f"'{self.obs_key}': every cell is labelled, and training is fully supervised",
                    UserWarning, stacklevel=5,
                )
            if not categories:
                raise ValueError(
                    f"obs column '{self.obs_key}' holds no label other than the unlabeled category "
                    f"'{self.unlabeled_category}'; at least one labelled cell type is needed"
                )
        self.categories = categories

    def array(self, adata, fields) -> np.ndarray:
        n = adata.n_obs
        if self.obs_key is None:
            return np.zeros(n, dtype=np.int64)
        if self.unlabeled_category is None:
            return category_codes(adata, self.obs_key, self.role, self.categories)
        if self.obs_key not in adata.obs.columns:  # new data to classify: no labels yet
            return np.full(n, len(self.categories), dtype=np.int64)
        known = self.categories + [self.unlabeled_category]
        column = obs_column(adata, self.obs_key, self.role, allow_missing=True)
        values = column.astype(str)
        codes = pd.Categorical(values, categories=known).codes.astype(np.int64)
        unknown = (codes < 0) & ~column.isna().to_numpy()
        if unknown.any():
            # New data with labels of its own (e.g. to compare predictions with): only the
            # model's labels are used; the others are read as no label.
            warnings.warn(f"{int(unknown.sum())} cells have labels the model does not know "
                          f"({preview(pd.unique(values[unknown]))}) in obs column '{self.obs_key}'; they are "
                          f"read as unlabelled. The model's labels: {preview(self.categories, 30)}",
                          UserWarning, stacklevel=5)
        codes[codes < 0] = len(self.categories)  # no label (NaN) or an unknown one
        return codes

    def codes_of(self, values) -> np.ndarray:
        """Codes of category names (e.g. a ``transform_batch``)."""
        values = [values] if np.isscalar(values) else list(values)
        lookup = {c: i for i, c in enumerate(self.categories)}
        unknown = [v for v in values if str(v) not in lookup]
        if unknown:
            raise ValueError(
                f"unknown {self.key} categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{preview(unknown)}; known: {preview(self.categories, 30)}"
            )
        return np.array([lookup[str(v)] for v in values], dtype=np.int64)

    def for_query(self, adata, fields) -> "CategoricalObsField":
        field = copy.deepcopy(self)
        if self.obs_key is None or self.obs_key not in adata.obs.columns and self.query != "new":
            return field
        query = category_strings(obs_column(adata, self.obs_key, self.role,
                                            allow_missing=self.unlabeled_category is not None))[1]
        if self.query == "new":
            shared = [c for c in query if c in self.categories]
            if shared:
                plural = len(shared) > 1
                raise ValueError(
                    f"query {self.key}{'es' if plural and self.key.endswith('h') else 's' if plural else ''} "
                    f"{preview(shared)} in obs column '{self.obs_key}' also name{'' if plural else 's'} a "
                    f"reference {self.key}; query {self.key} categories must be new. Rename them, e.g. "
                    f"query.obs['{self.obs_key}'] = 'query_' + query.obs['{self.obs_key}'].astype(str)"
                )
            field.categories = self.categories + query
        elif self.query == "append":
            field.categories = self.categories + [c for c in query if c not in self.categories]
        else:
            allowed = set(self.categories) | {self.unlabeled_category}
            unknown = [c for c in query if c not in allowed]
            if unknown:
                hint = (f"; mark cells of unknown type as '{self.unlabeled_category}'"
                        if self.unlabeled_category is not None else "")
                raise ValueError(
                    f"the query's obs column '{self.obs_key}' has {self.key} categories the reference "
                    f"never saw: {preview(unknown)}; reference {self.key}: "
                    f"{preview(self.categories, 30)}{hint}"
                )
        return field


class CategoricalJointObsField(Field):
    """Codes of several categorical obs columns, stacked (cells x columns; None without any)."""

    _state_attrs = ("key", "obs_keys", "role", "categories")

    def __init__(self, key: str, obs_keys: Sequence[str] | None, role: str = "categorical covariate"):
        super().__init__(key)
        self.obs_keys, self.role = key_list(obs_keys, f"{key} keys"), role
        self.categories: dict[str, list[str]] = {}

    @property
    def summary(self) -> dict:
        return {f"n_cats_per_{self.key}": [len(self.categories[k]) for k in self.obs_keys]}

    def setup(self, adata, fields) -> None:
        self.categories = {k: category_strings(obs_column(adata, k, self.role))[1] for k in self.obs_keys}

    def array(self, adata, fields):
        if not self.obs_keys:
            return None
        return np.stack([category_codes(adata, k, self.role, self.categories[k]) for k in self.obs_keys], axis=1)

    def for_query(self, adata, fields) -> "CategoricalJointObsField":
        field = copy.deepcopy(self)
        for k in self.obs_keys:
            query = category_strings(obs_column(adata, k, self.role))[1]
            known = self.categories[k]
            field.categories[k] = known + [c for c in query if c not in known]
        return field


class NumericalObsField(Field):
    """One numeric obs column as float32 (None when ``obs_key`` is None); ``positive`` refuses
    zero and negative values (e.g. size factors)."""

    _state_attrs = ("key", "obs_key", "role", "positive")

    def __init__(self, key: str, obs_key: str | None, role: str | None = None, positive: bool = False):
        super().__init__(key)
        self.obs_key, self.role, self.positive = obs_key, role or f"{key}_key", positive

    def array(self, adata, fields):
        if self.obs_key is None:
            return None
        col = obs_column(adata, self.obs_key, self.role)
        if not pd.api.types.is_numeric_dtype(col):
            raise TypeError(f"{self.role} column '{self.obs_key}' must be numeric, got dtype {col.dtype}")
        values = col.to_numpy(dtype=np.float32)
        if not np.isfinite(values).all() or (self.positive and not (values > 0).all()):
            raise ValueError(f"{self.role} column '{self.obs_key}' must be "
                             f"{'positive and ' if self.positive else ''}finite")
        return values


class NumericalJointObsField(Field):
    """Several numeric obs columns, stacked (cells x columns, float32; None without any)."""

    _state_attrs = ("key", "obs_keys", "role")

    def __init__(self, key: str, obs_keys: Sequence[str] | None, role: str = "continuous covariate"):
        super().__init__(key)
        self.obs_keys, self.role = key_list(obs_keys, f"{key} keys"), role

    @property
    def summary(self) -> dict:
        return {f"n_{self.key}": len(self.obs_keys)}

    def array(self, adata, fields):
        if not self.obs_keys:
            return None
        return np.stack([numeric_column(adata, k, self.role) for k in self.obs_keys], axis=1)


class CellIndexField(Field):
    """Each cell's position in its AnnData (int64), for models with per-cell parameters.

    Those parameters belong to the cells the model was set up on, so their names are recorded
    (and saved: a model loaded without its AnnData still names its cells) and any other
    AnnData is refused unless it holds the same cells in the same order.
    """

    _state_attrs = ("key", "obs_names")
    obs_names = None  # saved before the names were recorded: not checked

    def setup(self, adata, fields) -> None:
        self.obs_names = [str(n) for n in adata.obs_names]

    def array(self, adata, fields) -> np.ndarray:
        if self.obs_names is not None:
            names = np.asarray(adata.obs_names, dtype=str)
            own = np.asarray(self.obs_names, dtype=str)
            if len(names) != len(own) or not np.array_equal(names, own):
                found = f"{len(names)} cells"
                if len(names) == len(own):
                    found += (f" of which {int((names != own).sum())} differ from the model's, position by position "
                              f"(the model's first cells: {preview(own[:3])}; this AnnData's: {preview(names[:3])})")
                raise ValueError(
                    f"this model has parameters for each of the {len(own)} cells it was set up on, and the AnnData "
                    f"given holds {found}. Pass the AnnData the model was trained on (the same cells in the same "
                    "order), or build and train a model for these cells")
        return np.arange(adata.n_obs, dtype=np.int64)
