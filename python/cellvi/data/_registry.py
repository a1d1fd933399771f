"""The data registry: what a model needs from an AnnData, recorded so it can be re-applied.

``setup_anndata`` validates the user's choices (layer, batch, labels, covariates) and records
them, with the category orders and gene names, in a :class:`Registry`. The registry turns any
AnnData with the same genes and obs columns into :class:`AnnTensors` (the numbers a model
consumes) and is saved as JSON next to a model's weights.
"""
from __future__ import annotations

import copy
import weakref
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _constants as C
from ._fields import (CategoricalJointObsField, CategoricalObsField, Field, LayerField,
                      NumericalJointObsField, NumericalObsField, as_csr_float32, check_counts)

__all__ = ["AnnTensors", "Registry", "as_csr_float32", "check_counts", "recall_setup", "remember_setup",
           "standard_fields"]

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


class AnnTensors(dict):
    """The arrays a model consumes, cut from one AnnData: field key -> CSR matrix or NumPy
    array (cells are rows). Entries read as attributes too (``tensors.X``, ``tensors.batch``);
    the standard optional entries read as None when the model has none."""

    _OPTIONAL = (C.CAT_COVS_KEY, C.CONT_COVS_KEY, C.SIZE_FACTOR_KEY)

    def __getattr__(self, name: str):
        if name in self:
            return self[name]
        if name in self._OPTIONAL:
            return None
        raise AttributeError(f"no registered field '{name}'; fields: {', '.join(self)}")

    @property
    def n_obs(self) -> int:
        return next(iter(self.values())).shape[0]


def standard_fields(layer: str | None = None, batch_key: str | None = None, labels_key: str | None = None,
                    size_factor_key: str | None = None,
                    categorical_covariate_keys: Sequence[str] | None = None,
                    continuous_covariate_keys: Sequence[str] | None = None,
                    unlabeled_category=None) -> list[Field]:
    """The fields of the scVI family's setup: counts, batch, labels, size factor and covariates.

    Batches of query data must be new; labels must be known ones; other categorical
    covariates may add categories.
    """
    return [
        LayerField(C.X_KEY, layer),
        CategoricalObsField(C.BATCH_KEY, batch_key, "batch_key", query="new"),
        CategoricalObsField(C.LABELS_KEY, labels_key, "labels_key", query="known",
                            unlabeled_category=unlabeled_category),
        NumericalObsField(C.SIZE_FACTOR_KEY, size_factor_key, "size_factor_key", positive=True),
        CategoricalJointObsField(C.CAT_COVS_KEY, categorical_covariate_keys),
        NumericalJointObsField(C.CONT_COVS_KEY, continuous_covariate_keys),
    ]


class Registry:
    """A model's setup: the list of its fields and their state, as plain JSON data.

    ``tensors(adata)`` turns any AnnData with the same layout into :class:`AnnTensors`. The
    fields of the scVI family's setup (counts in ``X``, ``batch``, ``labels``, covariates) are
    also readable through the properties below.
    """

    def __init__(self, model: str, fields: Sequence[Field], extra: dict | None = None):
        self.model = model
        self.fields: dict[str, Field] = {}
        for field in fields:
            if field.key in self.fields:
                raise ValueError(f"two registry fields share the key '{field.key}'")
            self.fields[field.key] = field
        self.extra = dict(extra or {})

    def __eq__(self, other) -> bool:
        return isinstance(other, Registry) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Registry({self.model}: {', '.join(map(repr, self.fields.values()))})"

    def field(self, key: str) -> Field:
        try:
            return self.fields[key]
        except KeyError:
            raise KeyError(f"the {self.model} setup has no field '{key}'; fields: {', '.join(self.fields)}") from None

    def _get(self, key: str, attr: str, default=None):
        field = self.fields.get(key)
        return getattr(field, attr, default) if field is not None else default

    # -- the scVI family's fields ------------------------------------------------------------
    @property
    def var_names(self) -> list[str]:
        return self.field(C.X_KEY).var_names

    @property
    def layer(self) -> str | None:
        return self._get(C.X_KEY, "layer")

    @property
    def batch_key(self) -> str | None:
        return self._get(C.BATCH_KEY, "obs_key")

    @property
    def labels_key(self) -> str | None:
        return self._get(C.LABELS_KEY, "obs_key")

    @property
    def size_factor_key(self) -> str | None:
        return self._get(C.SIZE_FACTOR_KEY, "obs_key")

    @property
    def categorical_covariate_keys(self) -> list[str]:
        return list(self._get(C.CAT_COVS_KEY, "obs_keys", []))

    @property
    def continuous_covariate_keys(self) -> list[str]:
        return list(self._get(C.CONT_COVS_KEY, "obs_keys", []))

    @property
    def batch_categories(self) -> list[str]:
        return self._get(C.BATCH_KEY, "categories", ["0"])

    @property
    def label_categories(self) -> list[str]:
        return self._get(C.LABELS_KEY, "categories", ["0"])

    @property
    def unlabeled_category(self) -> str | None:
        return self._get(C.LABELS_KEY, "unlabeled_category")

    @property
    def categorical_covariate_categories(self) -> dict[str, list[str]]:
        return self._get(C.CAT_COVS_KEY, "categories", {})

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
        return {"model": self.model, "fields": [f.state() for f in self.fields.values()],
                "extra": copy.deepcopy(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> "Registry":
        if "fields" not in d:  # saved before registries were lists of fields (format 1)
            return cls._from_flat_dict(d)
        return cls(d["model"], [Field.from_state(s) for s in d["fields"]], d.get("extra"))

    @classmethod
    def _from_flat_dict(cls, d: dict) -> "Registry":
        fields = standard_fields(d.get("layer"), d.get("batch_key"), d.get("labels_key"),
                                 d.get("size_factor_key"), d.get("categorical_covariate_keys"),
                                 d.get("continuous_covariate_keys"), d.get("unlabeled_category"))
        fields[0].var_names = list(d["var_names"])
        fields[1].categories = list(d.get("batch_categories", ["0"]))
        fields[2].categories = list(d.get("label_categories", ["0"]))
        fields[4].categories = {k: list(v) for k, v in d.get("categorical_covariate_categories", {}).items()}
        return cls(d["model"], fields, d.get("extra"))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_anndata(cls, adata, model: str, fields: Sequence[Field] | None = None,
                     extra: dict | None = None, return_tensors: bool = False,
                     **standard) -> "Registry | tuple[Registry, AnnTensors]":
        """Set ``fields`` up on ``adata`` (default: :func:`standard_fields` of the keyword
        arguments ``layer``, ``batch_key``, ...) and check every one. Does not modify ``adata``.

        With ``return_tensors``, also return the tensors that the checks built.
        """
        if not hasattr(adata, "obs") or not hasattr(adata, "var_names"):
            raise TypeError(f"expected an AnnData, got {type(adata).__name__}")
        if adata.n_obs == 0:
            raise ValueError("the AnnData has no cells")
        if fields is None:
            fields = standard_fields(**standard)
        elif standard:
            raise TypeError(f"pass either fields or the standard setup arguments, not both ({', '.join(standard)})")
        fields = [copy.deepcopy(f) for f in fields]
        done: dict[str, Field] = {}
        for field in fields:
            field.setup(adata, done)
            done[field.key] = field
        reg = cls(model, fields, extra)
        tensors = reg.tensors(adata)  # every remaining check (counts, codes, covariates)
        return (reg, tensors) if return_tensors else reg

    def with_labels(self, adata, labels_key: str | None, unlabeled_category, model: str) -> "Registry":
        """A copy of this setup for ``model`` with the labels of ``adata`` (default: the
        registry's own labels column) and an unlabeled category."""
        labels_key = labels_key if labels_key is not None else self.labels_key
        if labels_key is None:
            raise ValueError("no labels column: pass labels_key= (the obs column of the cell labels)")
        fields = [copy.deepcopy(f) for f in self.fields.values()]
        labels = CategoricalObsField(C.LABELS_KEY, labels_key, "labels_key", query="known",
                                     unlabeled_category=unlabeled_category)
        labels.setup(adata, self.fields)
        fields = [labels if f.key == C.LABELS_KEY else f for f in fields]
        return Registry(model, fields, self.extra)

    def extended_for_query(self, adata) -> "Registry":
        """A copy of this (reference) setup that also knows the query's new categories (of
        every categorical field), appended after the reference's so that reference codes stay.

        A query batch may not share a name with a reference batch (its cells would be taken
        for the reference's, through frozen weights); query labels must be known labels.
        """
        extended: dict[str, Field] = {}
        for key, field in self.fields.items():
            extended[key] = field.for_query(adata, extended)
        return Registry(self.model, list(extended.values()), self.extra)

    # -- applying the setup ----------------------------------------------------------------
    def check_genes(self, adata) -> None:
        """Refuse an AnnData whose genes differ from the registry's, saying which."""
        self.field(C.X_KEY).check_names(adata)

    def counts(self, adata) -> sp.csr_matrix:
        """The checked count matrix (``X`` field) of ``adata``, without the gene check."""
        return self.field(C.X_KEY).matrix(adata)

    def tensors(self, adata) -> AnnTensors:
        """Cut the model's tensors from ``adata`` (checked against this registry)."""
        if adata.n_obs == 0:
            raise ValueError("the AnnData has no cells")
        out = AnnTensors()
        for key, field in self.fields.items():
            value = field.array(adata, self.fields)
            if value is not None:
                out[key] = value
        return out

    def category_codes(self, field: str, values) -> np.ndarray:
        """Codes of category names (e.g. a ``transform_batch``) for a categorical field."""
        return self.field(field).codes_of(values)
