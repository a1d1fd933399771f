"""What the deconvolution models share (DestVI, Stereoscope): the reference's labels, the
spatial setup (the spots' counts on the genes shared with the reference, and each spot's
index for its own parameters), the choice of shared genes, and proportion tables."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from .. import _constants as C
from ..data import AnnTensors, CellIndexField, Registry
from ..data._backed import select_columns
from ..data._fields import obs_column, preview
from ..data._registry import _SETUPS, recall_setup
from ._cellassign import GeneSelectionField

MIN_CELLS_PER_TYPE = 10  # fewer reference cells than this: the type's profile is unreliable
MIN_SHARED_GENES = 10  # fewer genes in common with the reference: deconvolution is refused
MIN_SPOTS = 50  # fewer spots: DestVI warns that deconvolution is unreliable


def check_reference_labels(adata, labels_key, model: str) -> None:
    """The reference needs cell-type labels; warn about types with few cells."""
    if labels_key is None:
        raise ValueError(f"{model} needs the cell type of each reference cell: pass labels_key=, the obs column "
                         f"of cell types; obs columns: {preview(adata.obs.columns, 30)}")
    labels = obs_column(adata, labels_key, "labels_key").astype(str)
    counts = labels.value_counts()
    if len(counts) < 2:
        raise ValueError(f"obs column '{labels_key}' (labels_key) holds {len(counts)} cell type "
                         f"({preview(counts.index)}); deconvolution needs at least 2")
    small = counts[counts < MIN_CELLS_PER_TYPE]
    if len(small):
        warnings.warn(
            f"{len(small)} cell type{'s have' if len(small) > 1 else ' has'} fewer than {MIN_CELLS_PER_TYPE} "
            f"reference cells ({', '.join(f'{k}: {v}' for k, v in small.items())}); their expression profiles, "
            "and their proportions in the spots, will be unreliable. Merge them into a broader type or drop "
            "them from the reference", UserWarning, stacklevel=4)


def spatial_fields(layer: str | None) -> list:
    """The spots' counts (any genes; narrowed to the reference's later) and their indices."""
    return [GeneSelectionField(C.X_KEY, layer), CellIndexField(C.CELL_INDEX_KEY)]


def is_set_up(adata, model: str) -> bool:
    entry = _SETUPS.get(id(adata))
    return entry is not None and entry[0].model == model


def ensure_spatial_setup(model_cls, st_adata, layer: str | None) -> None:
    """Set the spots up for ``model_cls`` unless they already are; a ``layer`` given here
    always sets them up again (it must not be lost to an earlier setup of ``adata.X``)."""
    if layer is not None or not is_set_up(st_adata, model_cls.__name__):
        model_cls.setup_anndata(st_adata, layer=layer)


def shared_setup(st_adata, model: str, reference_genes: Sequence[str], min_shared_genes: int = MIN_SHARED_GENES
                 ) -> tuple[Registry, AnnTensors]:
    """The spatial setup narrowed to the reference's genes present in the spots (in the
    reference's order), with the checks: enough shared genes, no spot without counts on them."""
    registry, tensors = recall_setup(st_adata, model)
    field = registry.field(C.X_KEY)
    spatial = set(field.var_names)
    shared = [g for g in reference_genes if g in spatial]
    if len(shared) < min_shared_genes:
        raise ValueError(
            f"the spatial data share {len(shared)} genes with the reference ({len(reference_genes)} reference "
            f"genes, {len(spatial)} spatial genes; at least {min_shared_genes} needed). Name the genes alike in "
            f"both (e.g. both gene symbols; reference: {preview(list(reference_genes)[:3])}, spatial: "
            f"{preview(field.var_names[:3])})")
    selected = field.select(shared)
    if tensors is None:
        tensors = registry.tensors(st_adata)
    tensors = AnnTensors(tensors)
    columns = selected.columns(field.var_names)  # None: the spots hold exactly these genes
    if columns is not None:
        tensors[C.X_KEY] = select_columns(tensors[C.X_KEY], columns)
    totals = np.asarray(tensors[C.X_KEY].sum(axis=1)).ravel()
    empty = np.flatnonzero(totals <= 0)
    if empty.size:
        raise ValueError(
            f"{empty.size} spots have no counts in the {len(shared)} genes shared with the reference "
            f"({preview(st_adata.obs_names[empty])}); drop them first, e.g. "
            "st_adata = st_adata[np.asarray(st_adata[:, shared_genes].X.sum(axis=1)).ravel() > 0].copy()")
    registry = Registry(registry.model, [selected if k == C.X_KEY else f for k, f in registry.fields.items()],
                        registry.extra)
    return registry, tensors


def proportions_frame(values: np.ndarray, index, cell_types: Sequence[str], noise: np.ndarray | None = None,
                      noise_name: str = "noise") -> pd.DataFrame:
    """Loadings (spots x types, >= 0) as proportions: rows sum to 1 over the types (and the
    noise column when it is kept)."""
    values = np.asarray(values, dtype=np.float64)
    columns = list(cell_types)
    if noise is not None:
        values = np.column_stack([values, noise])
        columns.append(noise_name)
    values = values / values.sum(axis=1, keepdims=True)
    return pd.DataFrame(values, index=pd.Index([str(i) for i in index]), columns=columns)


def type_code(cell_type, cell_types: Sequence[str]) -> int:
    names = [str(c) for c in cell_types]
    if isinstance(cell_type, (int, np.integer)) and not isinstance(cell_type, bool) and str(cell_type) not in names:
        if not 0 <= int(cell_type) < len(names):
            raise IndexError(f"cell type index {cell_type} out of range for {len(names)} cell types")
        return int(cell_type)
    if str(cell_type) not in names:
        raise ValueError(f"unknown cell type {cell_type!r}; the model's cell types: {preview(names, 30)}")
    return names.index(str(cell_type))
