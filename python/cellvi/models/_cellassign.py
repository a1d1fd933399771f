"""CellAssign: marker-based cell-type annotation (Zhang et al. 2019)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import _constants as C
from ..data import AnnTensors, Registry
from ..data._backed import is_backed_matrix, row_blocks, select_columns
from ..data._fields import (CategoricalJointObsField, CategoricalObsField, LayerField, NumericalJointObsField,
                            NumericalObsField, VALUES_FIX, as_csr_float32, check_blocks, check_values, open_backed,
                            preview)
from ..data._registry import recall_setup
from ..modules import CellAssignModule
from ._base import BaseModel

_SIZE_FACTOR_HINT = ("compute them from the library size, e.g. lib = np.asarray(adata.X.sum(axis=1)).ravel(); "
                     "adata.obs['size_factor'] = lib / lib.mean()")


class GeneSelectionField(LayerField):
    """Counts of chosen genes, picked by name from an AnnData that may hold more genes.

    Set up on an AnnData, it records all of its genes; :meth:`select` narrows it to a subset
    (e.g. the marker genes of a model). Any AnnData that holds those genes (in any order,
    with any others beside them) then yields their counts, in the recorded order; cells
    without counts in those genes are allowed. The AnnData is never modified.
    """

    def setup(self, adata, fields) -> None:
        self.var_names = [str(v) for v in adata.var_names]

    def select(self, genes: Sequence[str]) -> "GeneSelectionField":
        field = GeneSelectionField(self.key, self.layer, self.values)
        field.var_names = [str(g) for g in genes]
        return field

    def columns(self, names: Sequence[str]) -> np.ndarray | None:
        """Position of each recorded gene among ``names`` (None: they are the genes)."""
        names = pd.Index([str(v) for v in names])
        if list(names) == self.var_names:
            return None
        counts = names.value_counts()
        repeated = [g for g in self.var_names if counts.get(g, 0) > 1]
        if repeated:
            raise ValueError(f"the AnnData's gene names (var_names) repeat some of the model's genes: "
                             f"{preview(repeated)}; make them unique, e.g. adata.var_names_make_unique()")
        missing = [g for g in self.var_names if g not in counts.index]
        if missing:
            raise ValueError(f"the AnnData lacks {len(missing)} of the model's {len(self.var_names)} genes: "
                             f"{preview(missing)}; the model needs counts of each of them")
        first = pd.Index(names[~names.duplicated()])
        return np.flatnonzero(~names.duplicated())[first.get_indexer(self.var_names)]

    def array(self, adata, fields) -> sp.csr_matrix:
        X, source = self._source(adata)
        pos = self.columns(adata.var_names)
        if is_backed_matrix(X):  # stays on disk: only the chosen genes are kept of each block read
            return check_blocks(open_backed(X, source, pos),
                                lambda _, block: check_values(block.data, source, self.values, VALUES_FIX))
        if pos is not None:
            X = X[:, pos]
        X = as_csr_float32(X)
        check_values(X.data, source, self.values, VALUES_FIX)
        return X


class SizeFactorField(NumericalObsField):
    """Each cell's size factor (positive), from an obs column, with errors that say how to
    compute them."""

    def __init__(self, key: str, obs_key: str | None):
        super().__init__(key, obs_key, "size_factor_key", positive=True)

    def array(self, adata, fields) -> np.ndarray:
        key = self.obs_key
        if key not in adata.obs.columns:
            raise KeyError(f"size factors not found: obs column '{key}' (size_factor_key) does not exist; "
                           f"available: {preview(adata.obs.columns, 30)}. CellAssign needs one size factor "
                           f"per cell: {_SIZE_FACTOR_HINT}")
        col = adata.obs[key]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise TypeError(f"size factors in obs column '{key}' must be numbers, got dtype {col.dtype}")
        values = col.to_numpy(dtype=np.float64)
        nan = np.isnan(values)
        if nan.any():
            raise ValueError(f"size factors in obs column '{key}' are missing (NaN) for {int(nan.sum())} cells "
                             f"({preview(adata.obs_names[nan])}); give every cell a size factor "
                             f"({_SIZE_FACTOR_HINT}) or drop those cells")
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            raise ValueError(f"size factors in obs column '{key}' must be positive and finite; {int(bad.sum())} "
                             f"cells have {preview([f'{v:g}' for v in np.unique(values[bad])])} ({preview(adata.obs_names[bad])}). "
                             "A cell without counts has no size factor: drop such cells (e.g. adata = "
                             f"adata[adata.X.sum(axis=1) > 0].copy()) and {_SIZE_FACTOR_HINT}")
        return values.astype(np.float32)


def marker_matrix(markers, genes: Sequence[str]) -> pd.DataFrame:
    """The marker table as genes x types of 0/1 (int8), checked against the data's ``genes``."""
    if not isinstance(markers, pd.DataFrame):
        raise TypeError("cell_type_markers must be a pandas DataFrame (genes x cell types, 1 where a gene "
                        f"marks a type), got {type(markers).__name__}")
    if markers.shape[0] == 0 or markers.shape[1] == 0:
        raise ValueError(f"cell_type_markers is empty (shape {markers.shape}); it needs genes as rows and "
                         "cell types as columns")
    table = markers.copy()
    table.index = pd.Index([str(g) for g in table.index])
    table.columns = pd.Index([str(c) for c in table.columns])
    for axis, what in ((table.index, "genes (rows)"), (table.columns, "cell types (columns)")):
        if axis.has_duplicates:
            raise ValueError(f"cell_type_markers repeats {what}: {preview(axis[axis.duplicated()].unique())}")
    try:
        values = table.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("cell_type_markers must hold 0/1 (or True/False) values; got dtypes "
                        f"{preview(sorted(set(map(str, table.dtypes))))}") from None
    if not np.isin(values, (0.0, 1.0)).all():
        odd = pd.unique(values[~np.isin(values, (0.0, 1.0))])
        raise ValueError(f"cell_type_markers must hold only 0 and 1 (1: the gene marks the type); found "
                         f"{preview(odd)}")
    table = pd.DataFrame(values.astype(np.int8), index=table.index, columns=table.columns)
    empty = [c for c in table.columns if not table[c].any()]
    if empty:
        raise ValueError(f"cell type{'s' if len(empty) > 1 else ''} {preview(empty)} {'have' if len(empty) > 1 else 'has'} "
                         "no marker gene (an all-0 column of cell_type_markers); give each type at least one "
                         "marker or drop the column")
    known = set(genes)
    unknown = [g for g in table.index if g not in known]
    if unknown:
        kept = table.loc[[g for g in table.index if g in known]]
        lost = [c for c in table.columns if not kept[c].any()]
        if lost:
            raise ValueError(
                f"cell type{'s' if len(lost) > 1 else ''} {preview(lost)} {'have' if len(lost) > 1 else 'has'} "
                f"no marker gene in the data: none of {'their' if len(lost) > 1 else 'its'} markers "
                f"({preview([g for g in table.index if table.loc[g, lost].any()])}) is among adata.var_names "
                f"(e.g. {preview(list(genes)[:3])}). Name markers as the AnnData names its genes (symbols "
                "or Ensembl ids), or drop those types"
            )
        raise ValueError(
            f"{len(unknown)} marker gene{'s are' if len(unknown) > 1 else ' is'} not in the data: "
            f"{preview(unknown)}; the rows of cell_type_markers must be names in adata.var_names (e.g. "
            f"{preview(list(genes)[:3])}). Drop them, e.g. markers = markers.loc[markers.index.isin("
            "adata.var_names)], or rename them as the AnnData names its genes"
        )
    return table


class CellAssign(BaseModel):
    """CellAssign (Zhang et al. 2019): the probability of each cell type for each cell, from
    known marker genes.

    A negative-binomial mixture over cell types on the marker genes only (there is no
    encoder and no latent space): each gene has a base expression, raised in the types it
    marks by an over-expression of at least ``min_delta`` on the log scale, scaled by the
    cell's size factor and shifted by covariates. The type of a cell is summed out exactly;
    the parameters are fitted by maximum a posteriori (minibatch Adam, lr 3e-3, batches of
    1,024 cells, early stopping, as in scvi-tools) and :meth:`predict` gives each cell's
    posterior type probabilities. See :mod:`cellvi.modules._cellassign` for the equations.

    Size factors must come from all genes (e.g. library size / mean library size, or
    scran's): computed from the marker genes alone they absorb the markers' own signal. A
    gene expressed in a type it does not mark counts as base expression there, so it pulls
    such cells towards the type it marks (on kang, CD8 T cells express NKG7, GNLY and GZMB
    and are mostly called NK; FCGR3A+ monocytes express LYZ and S100A8/9 and are often called
    CD14+ monocytes): list such a gene as a marker of each type that expresses it.

    Differences from scvi-tools 1.4.2 (``scvi.external.CellAssign``), and why. Measured on
    kang_se_12261 (all 12,261 PBMCs, all 1,287 genes in the data, textbook markers: T CD3E
    CD3D IL7R; B CD79A; CD14 monocytes CD14 LYZ S100A8 S100A9; FCGR3A monocytes FCGR3A MS4A7;
    NK NKG7 GNLY GZMB; size factors library / mean; dendritic cells and megakaryocytes, 2.4%
    of cells, have no markers and count as errors), accuracy, seeds 0-2, one thread:

    - scvi-tools' CellAssign reaches 0.40-0.41 (50 or 400 epochs) with T-cell recall
      <= 0.003: B, the type with one marker, takes most T cells. This implementation, given
      scvi-tools' choices and its very initial values, fails alike (0.18-0.41, T recall
      <= 0.002). The cause is the starting point: scvi-tools draws the base expression at
      random (N(0, 1), far from the data's log means, about -4 to -1 here), the marker
      over-expression delta between 2 and 7.4 on the log scale (log delta uniform in (-2, 2),
      raised to log 2) and random type proportions. Early on every type fits badly and the
      type with fewest markers takes most cells; the T markers' over-expression is then
      fitted to the few cells with the highest CD3/IL7R counts, grows, and T never recovers
      (a degenerate local optimum). Here the base expression starts at the log mean of
      counts / size factor, every delta just above ``min_delta`` and all proportions equal:
      nothing is random, and every type starts alike. With that start alone, scvi-tools'
      other choices reach 0.834-0.835 in every seed.
    - The objective is the mixture's log-likelihood, log sum_c pi_c p(x | c), whose gradient
      is the EM gradient. scvi-tools minimises EM's expected complete-data loss,
      sum_c gamma_c (-log pi_c p(x | c)), without holding gamma fixed: that is -log p(x) +
      entropy(gamma), a penalty on uncertain cells that favours confident assignments to
      large types (and its reported ELBO sits below the likelihood by that entropy). Changed
      alone from these defaults: 0.816 (FCGR3A-monocyte recall 0.11 vs 0.23) and a lower
      held-out log-likelihood per cell in every seed (-9.90 vs -9.78 in seed 0); from a
      random start of delta it collapsed (0.39) in one seed of three.
    - The NB inverse dispersion is per gene (``dispersion="gene"``). scvi-tools' is a sum of
      ten bumps in the mean shared by all genes, placed by the data's largest count
      (``dispersion="basis"`` keeps it). Per gene fits better: held-out log-likelihood higher
      in every seed (-9.78 vs -9.85 in seed 0), half the time, and no collapse from a random
      start of the over-expression (basis: 0.41 in one seed of three); on kang its accuracy
      is 0.823 vs 0.835 with the basis.
    - The Dirichlet prior of the type proportions is flat (``dirichlet_concentration=1``).
      scvi-tools' 0.01 makes the posterior density grow without bound as a type empties, the
      very failure above; on kang from this start it makes no difference (0.822 either way
      in seed 0).
    - Batch and categorical covariates enter without their first category, so that they do
      not repeat the base expression (scvi-tools' one-hot design includes an intercept).

    These defaults reach 0.822, 0.823 and 0.823 (recall T 0.86, B 0.76, CD14 monocytes
    0.96, FCGR3A monocytes 0.23, NK 0.99), and 0.821 after 1,500 epochs without early
    stopping: longer training does not degrade them. Taking the type whose markers have the
    highest mean z-scored log-normalised expression scores 0.77-0.78. Size factors from the
    marker genes only: 0.755 (B recall 0.006); no size factors (all 1): 0.766;
    ``min_delta=1``: 0.821, ``min_delta=3``: 0.784.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`. It may hold more genes than the markers:
        the model picks the marker genes by name (the AnnData is not modified).
    cell_type_markers
        DataFrame of genes (rows, named as ``adata.var_names``) x cell types (columns), 1
        where the gene marks the type and 0 elsewhere. It is saved with the model.
    dispersion
        ``"gene"``: one NB inverse dispersion per gene; ``"basis"``: scvi-tools' inverse
        dispersion, a smooth function of the mean shared by all genes.
    dirichlet_concentration
        Concentration of the symmetric Dirichlet prior of the type proportions (1: flat;
        scvi-tools: 0.01).
    min_delta
        Least over-expression of a marker in its type, on the natural-log scale (2: a
        marker is at least e^2 = 7.4 times its base expression in its type).

    Examples
    --------
    >>> import cellvi, numpy as np, pandas as pd
    >>> lib = np.asarray(adata.X.sum(axis=1)).ravel()
    >>> adata.obs["size_factor"] = lib / lib.mean()
    >>> markers = pd.DataFrame({"T": [1, 1, 0], "B": [0, 0, 1]}, index=["CD3E", "CD3D", "CD79A"])
    >>> cellvi.CellAssign.setup_anndata(adata, size_factor_key="size_factor")
    >>> model = cellvi.CellAssign(adata, markers)
    >>> model.train()
    >>> probabilities = model.predict()
    >>> adata.obs["cellassign"] = probabilities.idxmax(axis=1)
    >>> model.save("cellassign_model/")
    """

    _plan_defaults = {"lr": 3e-3, "weight_decay": 1e-10, "n_epochs_kl_warmup": None}

    def __init__(self, adata=None, cell_type_markers: pd.DataFrame | None = None, *,
                 _registry: Registry | None = None, _tensors: AnnTensors | None = None,
                 dispersion: str = "gene", dirichlet_concentration: float = 1.0, min_delta: float = 2.0):
        if cell_type_markers is None:
            raise TypeError("CellAssign needs cell_type_markers: a DataFrame of marker genes (rows) x cell "
                            "types (columns), 1 where the gene marks the type")
        for name, value in (("dirichlet_concentration", dirichlet_concentration), ("min_delta", min_delta)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if _registry is None:
            _registry, _tensors = recall_setup(adata, type(self).__name__)
        genes_field = _registry.field(C.X_KEY)
        markers = marker_matrix(cell_type_markers, genes_field.var_names)
        if list(markers.index) != list(genes_field.var_names):
            selected = genes_field.select(markers.index)
            if _tensors is not None:
                _tensors = AnnTensors(_tensors)
                _tensors[C.X_KEY] = select_columns(_tensors[C.X_KEY], selected.columns(genes_field.var_names))
            _registry = Registry(_registry.model, [selected if k == C.X_KEY else f
                                                   for k, f in _registry.fields.items()], _registry.extra)
        super().__init__(adata, _registry=_registry, _tensors=_tensors, cell_type_markers=markers,
                         dispersion=dispersion, dirichlet_concentration=float(dirichlet_concentration),
                         min_delta=float(min_delta))

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata,
        size_factor_key: str | None = None,
        batch_key: str | None = None,
        layer: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Check ``adata`` and record its counts, size factors and covariates.

        Nothing is written into ``adata``. The genes are chosen when the model is built (the
        rows of its marker matrix), so ``adata`` may hold any genes.

        Parameters
        ----------
        adata
            AnnData with raw counts (cells x genes).
        size_factor_key
            obs column of each cell's size factor (positive), e.g. the library size over all
            genes divided by its mean (scran's pooled size factors also do).
        batch_key
            obs column of the batch: a per-gene shift of the log mean per batch.
        layer
            Layer holding the raw counts (default: ``adata.X``).
        categorical_covariate_keys, continuous_covariate_keys
            obs columns of further covariates, each a per-gene shift of the log mean.

        Examples
        --------
        >>> lib = np.asarray(adata.X.sum(axis=1)).ravel()
        >>> adata.obs["size_factor"] = lib / lib.mean()
        >>> cellvi.CellAssign.setup_anndata(adata, size_factor_key="size_factor", batch_key="donor")
        """
        if size_factor_key is None:
            raise ValueError("CellAssign needs size factors: pass size_factor_key=, the obs column of each "
                             f"cell's size factor; {_SIZE_FACTOR_HINT}")
        if not isinstance(size_factor_key, str):
            raise TypeError(f"size_factor_key must be the name of an obs column (a string), got {size_factor_key!r}")
        cls._setup(adata, [
            GeneSelectionField(C.X_KEY, layer),
            SizeFactorField(C.SIZE_FACTOR_KEY, size_factor_key),
            CategoricalObsField(C.BATCH_KEY, batch_key, "batch_key", query="append"),
            CategoricalJointObsField(C.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(C.CONT_COVS_KEY, continuous_covariate_keys),
        ])

    # -- module --------------------------------------------------------------------------------
    @property
    def cell_types(self) -> list[str]:
        """The cell types, in the order of the marker matrix's columns."""
        return list(self.init_kwargs["cell_type_markers"].columns)

    @property
    def cell_type_markers(self) -> pd.DataFrame:
        """The marker matrix the model uses (genes x cell types, 0/1)."""
        return self.init_kwargs["cell_type_markers"].copy()

    def _build_module(self) -> CellAssignModule:
        kwargs = self._module_kwargs()
        markers = kwargs.pop("cell_type_markers")
        reg = self.registry
        data = {}
        if self.adata is not None:
            tensors = self._tensors()
            s = tensors.size_factor.astype(np.float64)
            total, low, high = np.zeros(reg.n_vars), np.inf, -np.inf  # over blocks: X may be on disk
            for start, block in row_blocks(tensors.X):
                total += np.asarray((sp.diags(1.0 / s[start:start + block.shape[0]]) @ block.astype(np.float64))
                                    .sum(axis=0)).ravel()
                low, high = min(low, float(block.min())), max(high, float(block.max()))
            data["log_base_init"] = np.log(np.maximum(total / len(s), 1e-3)).astype(np.float32)
            data["count_range"] = (low, high)
        return CellAssignModule(markers.to_numpy(), n_batch=reg.n_batch, n_cats_per_cov=reg.n_cats_per_cov,
                                n_continuous_cov=reg.n_continuous_cov, **data, **kwargs)

    # -- training ------------------------------------------------------------------------------
    def train(self, max_epochs: int = 400, device: str = "auto", train_size: float = 0.9,
              validation_size: float | None = None, batch_size: int = 1024, early_stopping: bool = True,
              early_stopping_patience: int = 15, lr: float | None = None, weight_decay: float | None = None,
              eps: float | None = None, progress_bar: bool | None = None,
              plan_kwargs: dict | None = None, **kwargs) -> "CellAssign":
        """Fit the mixture to the model's AnnData (maximum a posteriori, minibatch Adam).

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        device
            ``"auto"``, ``"cpu"``, ``"cuda"``...
        train_size, validation_size
            Fractions of cells to fit on and to watch for early stopping.
        batch_size
            Cells per minibatch.
        early_stopping, early_stopping_patience
            Stop when the validation cells' log-likelihood (``elbo_validation``: exact, with
            the log prior per training cell) has not improved for this many epochs.
        lr, weight_decay, eps
            Adam's settings (default 3e-3, 1e-10, 0.01).
        plan_kwargs
            Further settings of :class:`cellvi.train.TrainingPlan`.
        **kwargs
            As for :meth:`cellvi.models.BaseModel.train` (``limit_train_batches``).

        Examples
        --------
        >>> model.train()                      # up to 400 epochs, early stopping
        >>> model.history["elbo_validation"].plot()
        """
        plan_kwargs = dict(plan_kwargs or {})
        if self.adata is not None:
            n_train = math.ceil(float(train_size) * self.adata.n_obs)
            plan_kwargs["loss_kwargs"] = {"n_obs": n_train, **plan_kwargs.get("loss_kwargs", {})}
        return super().train(max_epochs=max_epochs, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size,
                             early_stopping=early_stopping, early_stopping_patience=early_stopping_patience,
                             lr=lr, weight_decay=weight_decay, eps=eps, n_epochs_kl_warmup=None,
                             progress_bar=progress_bar, plan_kwargs=plan_kwargs, **kwargs)

    # -- queries -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, adata=None, indices=None, soft: bool = True, batch_size: int | None = None):
        """Posterior probability of each cell type for each cell.

        Parameters
        ----------
        adata
            AnnData with the model's marker genes (others are ignored), size factors and
            covariate columns; default: the model's own.
        indices
            Cells to predict (integers or a boolean mask); default: all.
        soft
            The probabilities (default); ``False``: the most probable type's name per cell.
        batch_size
            Cells per minibatch.

        Returns
        -------
        A DataFrame (cells x cell types, rows summing to 1, indexed by cell names), or with
        ``soft=False`` a Series of cell-type names indexed by cell names.

        Examples
        --------
        >>> probabilities = model.predict()
        >>> adata.obs["cell_type"] = probabilities.idxmax(axis=1)
        >>> adata.obs["confidence"] = probabilities.max(axis=1)
        """
        log_joint = []
        for tensors in self._minibatches(adata, indices, batch_size):
            gen = self.module.generative(**self.module.generative_inputs(tensors, {}))
            log_joint.append(gen["log_joint"].cpu())
        probs = torch.softmax(torch.cat(log_joint).double(), dim=-1).numpy()
        names = self._obs_names(adata, indices)
        if not soft:
            return pd.Series(np.asarray(self.cell_types, dtype=object)[probs.argmax(axis=1)], index=names,
                             name="cell_type")
        return pd.DataFrame(probs, index=names, columns=self.cell_types)
