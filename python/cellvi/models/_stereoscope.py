"""Stereoscope (Andersson et al. 2020): RNAStereoscope (the reference) and
SpatialStereoscope (the spots)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import _constants as C
from ..data import AnnTensors, CategoricalObsField, LayerField, Registry
from ..data._backed import row_blocks
from ..modules import RNAStereoscopeModule, SpatialStereoscopeModule
from ..modules._destvae import inverse_softplus
from ._base import BaseModel
from ._spatial import (MIN_SHARED_GENES, check_reference_labels, ensure_spatial_setup, proportions_frame, shared_setup,
                       spatial_fields, type_code)


class RNAStereoscope(BaseModel):
    """Stereoscope's single-cell model: per-cell-type, per-gene negative-binomial parameters
    from a labelled reference (Andersson et al. 2020), for :class:`SpatialStereoscope`.

    A cell of type c with library l has counts NB(total_count = l w_gc, logits = o_g). There
    is no encoder: the parameters are fitted by maximum likelihood (minibatch Adam). Unlike
    scvi-tools (random start), w starts at each type's mean of counts / library, which is
    close to its optimum: far fewer epochs are needed (default 100; scvi-tools 400).

    Parameters
    ----------
    adata
        Reference AnnData set up with :meth:`setup_anndata`.

    Examples
    --------
    >>> cellvi.RNAStereoscope.setup_anndata(sc_adata, labels_key="cell_type")
    >>> sc_model = cellvi.RNAStereoscope(sc_adata)
    >>> sc_model.train()
    >>> st_model = cellvi.SpatialStereoscope.from_rna_model(st_adata, sc_model)
    >>> st_model.train()
    >>> proportions = st_model.get_proportions()
    """

    _plan_defaults = {"lr": 0.01, "weight_decay": 0.0, "eps": 0.01, "n_epochs_kl_warmup": None}

    def __init__(self, adata=None, *, _registry: Registry | None = None, _tensors: AnnTensors | None = None):
        super().__init__(adata, _registry=_registry, _tensors=_tensors)

    @classmethod
    def setup_anndata(cls, adata, labels_key: str | None = None, layer: str | None = None) -> None:
        """Check the reference and record its counts and cell types.

        Parameters
        ----------
        adata
            Single-cell AnnData with raw counts (cells x genes).
        labels_key
            obs column of each cell's type (required). Types with fewer than 10 cells warn.
        layer
            Layer holding the raw counts (default: ``adata.X``).

        Examples
        --------
        >>> cellvi.RNAStereoscope.setup_anndata(sc_adata, labels_key="cell_type")
        """
        check_reference_labels(adata, labels_key, cls.__name__)
        cls._setup(adata, [LayerField(C.X_KEY, layer),
                           CategoricalObsField(C.LABELS_KEY, labels_key, "labels_key", query="known")])

    @property
    def cell_types(self) -> list[str]:
        return list(self.registry.label_categories)

    def _build_module(self) -> RNAStereoscopeModule:
        reg = self.registry
        w_init = None
        if self.adata is not None:
            t = self._tensors()
            y = np.asarray(t[C.LABELS_KEY]).ravel()
            total = np.zeros((reg.n_labels, reg.n_vars))  # each type's sum of per-cell shares
            for start, block in row_blocks(t.X):  # X may be on disk
                lib = np.asarray(block.sum(axis=1)).ravel()
                per_unit = sp.diags(1.0 / lib) @ block.astype(np.float64)
                labels = y[start:start + block.shape[0]]
                onehot = sp.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))),
                                       shape=(reg.n_labels, len(labels)))
                total += np.asarray((onehot @ per_unit).todense())
            n = np.maximum(np.bincount(y, minlength=reg.n_labels), 1)
            w_init = (total / n[:, None]).T  # genes x types
            w_init = np.maximum(w_init, 1e-6 / reg.n_vars).astype(np.float32)
        return RNAStereoscopeModule(reg.n_vars, reg.n_labels, w_init=w_init)

    def train(self, max_epochs: int = 100, lr: float | None = None, device: str = "auto", train_size: float = 1.0,
              validation_size: float | None = None, batch_size: int = 128, **kwargs) -> "RNAStereoscope":
        """Fit the per-type parameters (maximum likelihood, Adam at lr 0.01, every cell).

        Parameters
        ----------
        max_epochs
            Passes over the cells (default 100: training starts at the per-type means).
        lr, device, train_size, validation_size, batch_size
            As for :meth:`cellvi.SCVI.train`.
        **kwargs
            As for :meth:`cellvi.models.BaseModel.train`.

        Examples
        --------
        >>> sc_model.train(max_epochs=50)
        """
        return super().train(max_epochs=max_epochs, lr=lr, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size, n_epochs_kl_warmup=None,
                             **kwargs)

    def get_params(self) -> tuple[np.ndarray, np.ndarray]:
        """(w, o): the per-type NB total count per unit library (genes x types, >= 0) and the
        per-gene logits.

        Examples
        --------
        >>> w, o = sc_model.get_params()
        """
        return self.module.w.detach().cpu().numpy(), self.module.px_o.detach().cpu().numpy()


class SpatialStereoscope(BaseModel):
    """Stereoscope's spatial model: each spot's cell-type proportions from the per-type NB
    parameters of an :class:`RNAStereoscope` (Andersson et al. 2020).

    A spot's counts are NB with the total counts of the reference's types summed with
    per-spot loadings, a per-gene platform factor, and a noise type; see
    :mod:`cellvi.modules._stereoscope`. Build it with :meth:`from_rna_model`.

    Differences from scvi-tools 1.4.2 (``scvi.external.SpatialStereoscope``): the spots may
    hold other genes than the reference (the shared ones are used; too few is an error that
    gives the count); the loadings are relative to each spot's depth and start equal
    (scvi-tools: absolute and random, so that Adam's steps of the learning rate are small next
    to loadings that must reach the hundreds); default 400 epochs as there. The objective is
    the mean over spots (scvi-tools: n_obs times it, which makes Adam's eps of 0.01
    effectively 0.01 / n_obs). Adam's eps is 3e-3 here: it sets how far spots with small
    gradients (few counts) move from the equal start, i.e. how strongly shallow spots are
    shrunk towards even proportions. Measured on pseudo-spots of 2-10 cells (the MERFISH
    reference, 3 splits; checked on Zeisel's cortex and the lymph-node reference): 1e-2 leaves
    the proportions too even (Jensen-Shannon divergence above scvi-tools'), near-zero eps
    (scvi-tools' equivalent) makes shallow spots too sparse (RMSE above scvi-tools'), 3e-3
    beats scvi-tools on per-spot and per-type Pearson, RMSE and JSD on all of them.
    :meth:`get_scale_for_ct` gives each type's profile normalised to sum to 1 over the genes,
    as DestVI's does (scvi-tools: expected counts per unit loading, whose totals differ
    between types), so it compares genes within a type, and types by their shares of a gene.

    Parameters
    ----------
    adata
        Spatial AnnData set up with :meth:`setup_anndata` (done by :meth:`from_rna_model`).
    cell_types, n_spots, prior_weight
        Set by :meth:`from_rna_model` (saved with the model).

    Examples
    --------
    >>> st_model = cellvi.SpatialStereoscope.from_rna_model(st_adata, sc_model)
    >>> st_model.train()
    >>> st_model.get_proportions().head()
    """

    _plan_defaults = {"lr": 0.01, "weight_decay": 0.0, "eps": 3e-3, "n_epochs_kl_warmup": None}

    def __init__(self, adata=None, *, cell_types: Sequence[str], n_spots: int, prior_weight: str = "n_obs",
                 _registry: Registry | None = None, _tensors: AnnTensors | None = None):
        super().__init__(adata, _registry=_registry, _tensors=_tensors, cell_types=[str(c) for c in cell_types],
                         n_spots=int(n_spots), prior_weight=prior_weight)

    @classmethod
    def setup_anndata(cls, adata, layer: str | None = None) -> None:
        """Record the spots' counts (any genes: those shared with the reference are chosen by
        :meth:`from_rna_model`, which calls this when it has not been called).

        Parameters
        ----------
        adata
            Spatial AnnData, spots x genes, raw counts.
        layer
            Layer holding the raw counts (default: ``adata.X``).

        Examples
        --------
        >>> cellvi.SpatialStereoscope.setup_anndata(st_adata)
        """
        cls._setup(adata, spatial_fields(layer))

    @property
    def cell_types(self) -> list[str]:
        return list(self.init_kwargs["cell_types"])

    def _build_module(self) -> SpatialStereoscopeModule:
        kwargs = self._module_kwargs()
        k = len(kwargs["cell_types"])
        g = self.registry.n_vars
        # The reference's parameters are set by from_rna_model (or loaded with the weights).
        return SpatialStereoscopeModule(kwargs["n_spots"], np.zeros((g, k), np.float32), np.zeros(g, np.float32),
                                        prior_weight=kwargs["prior_weight"])

    @classmethod
    def from_rna_model(cls, st_adata, sc_model: RNAStereoscope, prior_weight: str = "n_obs",
                       layer: str | None = None, min_shared_genes: int = MIN_SHARED_GENES) -> "SpatialStereoscope":
        """A SpatialStereoscope of the spots ``st_adata`` on a trained RNAStereoscope.

        Parameters
        ----------
        st_adata
            Spatial AnnData (spots x genes, raw counts); set up with :meth:`setup_anndata`
            if it was not already.
        sc_model
            A trained :class:`RNAStereoscope`.
        prior_weight
            ``"n_obs"``: the prior of the noise profile counts once per data set;
            ``"minibatch"``: once per minibatch (weighs it more).
        layer
            Layer of ``st_adata`` holding the counts, when this call sets it up.
        min_shared_genes
            Fewest genes shared with the reference that are accepted.

        Examples
        --------
        >>> st_model = cellvi.SpatialStereoscope.from_rna_model(st_adata, sc_model)
        """
        if not isinstance(sc_model, RNAStereoscope):
            raise TypeError(f"sc_model must be a trained cellvi.RNAStereoscope, got {type(sc_model).__name__}")
        if not sc_model.is_trained:
            raise ValueError("the RNAStereoscope reference is not trained; train it first (sc_model.train())")
        ensure_spatial_setup(cls, st_adata, layer)
        registry, tensors = shared_setup(st_adata, cls.__name__, sc_model.var_names, min_shared_genes)
        genes = [sc_model.var_names.index(g) for g in registry.var_names]
        w, o = sc_model.get_params()
        w, o = w[genes], o[genes]
        model = cls(st_adata, _registry=registry, _tensors=tensors, cell_types=sc_model.cell_types,
                    n_spots=st_adata.n_obs, prior_weight=prior_weight)
        module = model.module
        with torch.no_grad():
            module.w.copy_(torch.as_tensor(w))
            module.px_o.copy_(torch.as_tensor(o))
            # Equal loadings of the types that fit the spot's depth (the module scales them by
            # it), a tenth of that for the noise.
            k = w.shape[1]
            v_init = np.column_stack([np.ones((st_adata.n_obs, k)), np.full(st_adata.n_obs, 0.1)])
            module.V.copy_(inverse_softplus(torch.as_tensor(v_init, dtype=torch.float32)))
            mean_profile = w.mean(1)
            module.eta.copy_(inverse_softplus(torch.as_tensor(np.maximum(mean_profile, 1e-6), dtype=torch.float32)))
        return model

    def train(self, max_epochs: int = 400, lr: float | None = None, device: str = "auto", train_size: float = 1.0,
              validation_size: float | None = None, batch_size: int = 128, plan_kwargs: dict | None = None,
              **kwargs) -> "SpatialStereoscope":
        """Fit each spot's loadings, the platform factor and the noise profile (Adam, lr 0.01,
        eps 3e-3: see the class notes; ``eps=`` overrides it).

        Parameters
        ----------
        max_epochs, lr, device, train_size, validation_size, batch_size
            As for :meth:`cellvi.SCVI.train`; by default every spot trains.
        plan_kwargs, **kwargs
            As for :meth:`cellvi.models.BaseModel.train`.

        Examples
        --------
        >>> st_model.train(max_epochs=200)
        """
        if self.adata is None:
            raise ValueError("this model holds no AnnData to train on (it was loaded without one)")
        plan_kwargs = dict(plan_kwargs or {})
        n_train = math.ceil(float(train_size) * self.adata.n_obs)
        plan_kwargs["loss_kwargs"] = {"n_obs": n_train, **plan_kwargs.get("loss_kwargs", {})}
        return super().train(max_epochs=max_epochs, lr=lr, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size, n_epochs_kl_warmup=None,
                             plan_kwargs=plan_kwargs, **kwargs)

    def get_proportions(self, keep_noise: bool = False, indices=None) -> pd.DataFrame:
        """Each spot's cell-type proportions: the loadings normalised, i.e. each type's share
        of the spot's counts (as in scvi-tools and the Stereoscope paper).

        Unlike DestVI's (:meth:`cellvi.DestVI.get_proportions`), they are not turned into
        shares of cells by dividing each type by its mean count per cell in the reference: on
        pseudo-spots with known fractions of cells that division made Stereoscope's
        proportions slightly worse (MERFISH, seeds 0-2: RMSE 0.0891, 0.0843, 0.0867 against
        0.0886, 0.0844, 0.0862, per-spot Pearson 0.698-0.732 against 0.709-0.741; lymph node,
        seeds 0-1: RMSE 0.0886, 0.0916 against 0.0872, 0.0910).

        Parameters
        ----------
        keep_noise
            Add a ``"noise"`` column; rows then sum to 1 over the types and the noise.
        indices
            Spots to return (integers or a boolean mask); default: all.

        Returns
        -------
        A DataFrame of spots x cell types, non-negative, rows summing to 1.

        Examples
        --------
        >>> props = st_model.get_proportions()
        >>> props.idxmax(axis=1).value_counts()
        """
        from ..data import cell_indices

        v = self.module.loadings.detach().cpu().double().numpy()
        idx = cell_indices(v.shape[0], indices)
        v = v[idx]
        k = len(self.cell_types)
        names = self._obs_names(None, idx)
        return proportions_frame(v[:, :k], names, self.cell_types, noise=v[:, k] if keep_noise else None)

    @torch.no_grad()
    def get_scale_for_ct(self, cell_type, indices=None) -> pd.DataFrame:
        """Normalised expression of one cell type in each spot (Stereoscope has no per-spot
        state: the reference's profile with the platform factor, the same in every spot).

        Parameters
        ----------
        cell_type
            A cell type's name (or position in :attr:`cell_types`).
        indices
            Spots to return; default: all.

        Returns
        -------
        A DataFrame of spots x genes (shared with the reference), rows summing to 1.

        Examples
        --------
        >>> st_model.get_scale_for_ct("B").iloc[0].sort_values().tail()
        """
        from ..data import cell_indices

        c = type_code(cell_type, self.cell_types)
        module = self.module
        mean = (module.type_rates()[:, c] * torch.exp(module.px_o)).double().cpu().numpy()
        idx = cell_indices(module.n_spots, indices)
        names = self._obs_names(None, idx)
        return pd.DataFrame(np.tile(mean / mean.sum(), (len(idx), 1)), index=pd.Index([str(i) for i in names]),
                            columns=self.var_names)
