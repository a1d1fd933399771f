"""DestVI: multi-resolution deconvolution of spatial transcriptomics (Lopez et al. 2022)."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .. import _constants as C
from ..data import AnnTensors, Registry
from ..modules import DestVAE
from ..modules._vae import check_choice
from ..train import as_count
from ._base import BaseModel
from ._condscvi import CondSCVI
from ._spatial import (MIN_SHARED_GENES, MIN_SPOTS, ensure_spatial_setup, proportions_frame, shared_setup,
                       spatial_fields, type_code)

MAX_BATCH_SIZE = 128


def destvi_batch_size(n_spots: int) -> int:
    """DestVI's default minibatch: a tenth of the spots, at least 1, at most 128.

    The DestVI study found deconvolution degrades when a minibatch holds a large share of
    the spots (few optimizer steps per epoch over per-spot parameters); scvi-tools' fixed
    128 is the whole data set below 128 spots.
    """
    return min(max(int(n_spots) // 10, 1), MAX_BATCH_SIZE)


class DestVI(BaseModel):
    """DestVI (Lopez et al. 2022): each spot's cell-type proportions and, for each type, its
    state in the spot (a point of the :class:`cellvi.CondSCVI` reference's latent space).

    Build it with :meth:`from_rna_model` from a trained CondSCVI. A spot's expression is a
    mixture of the reference's per-type expression, each decoded at the type's own state
    in that spot, plus a noise profile; a per-gene factor absorbs differences between the
    platforms. The states' prior is an empirical mixture over the reference's cells (the
    VampPrior, :meth:`cellvi.CondSCVI.get_vamp_prior`). See :mod:`cellvi.modules._destvae`.

    The default minibatch holds a tenth of the spots, between 1 and 128
    (``min(max(n_spots // 10, 1), 128)``): the DestVI study found that deconvolution
    degrades when a minibatch holds a large share of the spots. Below 50 spots
    :meth:`from_rna_model` warns that deconvolution is unreliable.

    Differences from scvi-tools 1.4.2 (``scvi.model.DestVI``):

    - :meth:`from_rna_model` works from a CondSCVI with its defaults (there it raises
      ``KeyError: 'prior'``, and with ``prior="normal"`` fails in ``register_buffer`` with
      a NumPy array), and with ``prior="mog"`` takes the learned mixture as the prior.
    - The spatial data need not hold the reference's genes in its order: the genes shared
      with the reference are used (the decoder's softmax restricted to them), and too few
      shared genes is an error that gives the count.
    - The reference's decoder is frozen with its dropout off; the amortization networks read
      the spot's expression scaled to a common depth (proportions do not follow the depth);
      the loadings start equal and the states at their prior's mean.
    - No data augmentation from the prior and no per-type mixture of states (scvi-tools
      1.4.2 additions, not in the study).

    Each training step decodes every spot of the minibatch under every cell type over all
    shared genes, so time grows with genes x cell types: the defaults (2,000 epochs) took
    ~1.5 min for 500 spots at 134 genes and ~20 min at 10,237 genes on 2 CPU cores (14 and
    11 types). Training on a few thousand informative genes (e.g. highly variable genes of
    the reference that the spots share) keeps it short.

    Parameters
    ----------
    adata
        Spatial AnnData set up with :meth:`setup_anndata` (done by :meth:`from_rna_model`).
    cell_types, n_spots, n_latent, n_hidden, n_layers, n_batch_reference, dropout_decoder,
    vamp_prior_p, reference_batch
        Set by :meth:`from_rna_model` from the reference (saved with the model).
    amortization, l1_reg, beta_reg, eta_reg, dropout_amortization
        See :meth:`from_rna_model`.

    Examples
    --------
    >>> cellvi.CondSCVI.setup_anndata(sc_adata, labels_key="cell_type")
    >>> sc_model = cellvi.CondSCVI(sc_adata)
    >>> sc_model.train()
    >>> st_model = cellvi.DestVI.from_rna_model(st_adata, sc_model)
    >>> st_model.train()
    >>> proportions = st_model.get_proportions()
    >>> b_cells = st_model.get_scale_for_ct("B")   # B-cell expression in each spot
    """

    _plan_defaults = {"lr": 3e-3, "weight_decay": 1e-6, "eps": 0.01, "n_epochs_kl_warmup": 200}

    def __init__(self, adata=None, *, cell_types: Sequence[str], n_spots: int, n_latent: int = 5,
                 n_hidden: int = 128, n_layers: int = 2, n_batch_reference: int = 1, dropout_decoder: float = 0.05,
                 vamp_prior_p: int = 15, amortization: str = "both", l1_reg: float = 0.0, beta_reg: float = 1.0,
                 eta_reg: float = 1.0, dropout_amortization: float = 0.05, reference_batch: int = 0,
                 _registry: Registry | None = None, _tensors: AnnTensors | None = None):
        for name, value in (("l1_reg", l1_reg), ("beta_reg", beta_reg), ("eta_reg", eta_reg)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        super().__init__(adata, _registry=_registry, _tensors=_tensors, cell_types=[str(c) for c in cell_types],
                         n_spots=int(n_spots), n_latent=int(n_latent), n_hidden=int(n_hidden), n_layers=int(n_layers),
                         n_batch_reference=int(n_batch_reference), dropout_decoder=float(dropout_decoder),
                         vamp_prior_p=int(vamp_prior_p), amortization=amortization, l1_reg=float(l1_reg),
                         beta_reg=float(beta_reg), eta_reg=float(eta_reg),
                         dropout_amortization=float(dropout_amortization), reference_batch=int(reference_batch))

    @classmethod
    def setup_anndata(cls, adata, layer: str | None = None) -> None:
        """Record the spots' counts (any genes: those shared with the reference are chosen by
        :meth:`from_rna_model`, which calls this when it has not been called).

        Parameters
        ----------
        adata
            Spatial AnnData, spots x genes, raw counts; coordinates in ``obsm["spatial"]``
            are kept for plots and not used by the model.
        layer
            Layer holding the raw counts (default: ``adata.X``).

        Examples
        --------
        >>> cellvi.DestVI.setup_anndata(st_adata, layer="counts")
        """
        cls._setup(adata, spatial_fields(layer))

    @property
    def cell_types(self) -> list[str]:
        return list(self.init_kwargs["cell_types"])

    def _build_module(self) -> DestVAE:
        kwargs = self._module_kwargs()
        cell_types = kwargs.pop("cell_types")
        return DestVAE(n_genes=self.registry.n_vars, n_labels=len(cell_types), **kwargs)

    @classmethod
    def from_rna_model(cls, st_adata, sc_model: CondSCVI, vamp_prior_p: int | None = 15, l1_reg: float = 0.0,
                       amortization: str = "both", layer: str | None = None, reference_batch=None,
                       beta_reg: float = 1.0, eta_reg: float = 1.0, dropout_amortization: float = 0.05,
                       min_shared_genes: int = MIN_SHARED_GENES) -> "DestVI":
        """A DestVI of the spots ``st_adata`` on a trained CondSCVI reference.

        Parameters
        ----------
        st_adata
            Spatial AnnData (spots x genes, raw counts). Set up with :meth:`setup_anndata`
            if it was not already.
        sc_model
            A trained :class:`cellvi.CondSCVI`.
        vamp_prior_p
            Components per cell type of the prior of the states (k-means clusters of the
            reference's cells, :meth:`cellvi.CondSCVI.get_vamp_prior`); ``None``: a standard
            normal. With a ``prior="mog"`` CondSCVI, its learned mixture is used instead.
        l1_reg
            Weight of an L1 penalty on the loadings: larger gives sparser proportions.
        amortization
            ``"both"`` (default): proportions and states from networks of each spot's
            expression; ``"latent"``: states only; ``"proportion"``: proportions only;
            ``"none"``: free parameters per spot.
        layer
            Layer of ``st_adata`` holding the counts, when this call sets it up.
        reference_batch
            With a CondSCVI of several batches, the batch whose decoder describes the spots
            (default: the first).
        beta_reg, eta_reg
            Weights of the N(0, 1) priors of the per-gene platform shift and of the noise
            profile.
        dropout_amortization
            Dropout of the amortization networks.
        min_shared_genes
            Fewest genes shared with the reference that are accepted.

        Examples
        --------
        >>> st_model = cellvi.DestVI.from_rna_model(st_adata, sc_model)
        >>> st_model = cellvi.DestVI.from_rna_model(st_adata, sc_model, amortization="latent", l1_reg=10)
        """
        if not isinstance(sc_model, CondSCVI):
            raise TypeError(f"sc_model must be a trained cellvi.CondSCVI, got {type(sc_model).__name__}")
        if not sc_model.is_trained:
            raise ValueError("the CondSCVI reference is not trained; train it first (sc_model.train())")
        ensure_spatial_setup(cls, st_adata, layer)
        reference_genes = sc_model.var_names
        registry, tensors = shared_setup(st_adata, cls.__name__, reference_genes, min_shared_genes)
        shared = registry.var_names
        genes = torch.as_tensor([reference_genes.index(g) for g in shared], dtype=torch.long)
        sc = sc_model.module
        if sc.prior == "mog" or vamp_prior_p is not None:
            if sc.prior != "mog" and sc_model.adata is None:
                raise ValueError(
                    "the CondSCVI reference holds no AnnData (it was loaded without one), and the states' prior "
                    "is drawn from its cells (vamp_prior_p): load it with its data, "
                    "cellvi.CondSCVI.load(dir, sc_adata), or pass vamp_prior_p=None for a standard normal prior")
            prior = sc_model.get_vamp_prior(p=15 if vamp_prior_p is None else vamp_prior_p)
        else:
            k = sc_model.registry.n_labels
            prior = {"mean_vprior": np.zeros((k, 1, sc.n_latent)), "var_vprior": np.ones((k, 1, sc.n_latent)),
                     "weights_vprior": np.ones((k, 1))}
        batch_code = 0
        if reference_batch is not None:
            batch_code = int(sc_model.registry.category_codes(C.BATCH_KEY, reference_batch)[0])
        n_spots = st_adata.n_obs
        if n_spots < MIN_SPOTS:
            warnings.warn(f"{n_spots} spots: with fewer than {MIN_SPOTS} spots DestVI's deconvolution is unreliable "
                          "(too little data to fit the platform effect and the noise profile)", UserWarning,
                          stacklevel=2)
        model = cls(st_adata, _registry=registry, _tensors=tensors, cell_types=sc_model.cell_types,
                    n_spots=n_spots, n_latent=sc.n_latent, n_hidden=sc.n_hidden, n_layers=sc.n_layers,
                    n_batch_reference=sc.n_batch, dropout_decoder=sc_model.init_kwargs["dropout_rate"],
                    vamp_prior_p=prior["weights_vprior"].shape[1], amortization=amortization, l1_reg=l1_reg,
                    beta_reg=beta_reg, eta_reg=eta_reg, dropout_amortization=dropout_amortization,
                    reference_batch=batch_code)
        # The reference decoder on the shared genes: its softmax over them is the reference's
        # expression conditioned on those genes.
        state = {k: v.detach().cpu().clone() for k, v in sc.decoder.state_dict().items()}
        state["output.weight"] = state["output.weight"][genes]
        state["output.bias"] = state["output.bias"][genes]
        state["per_ct_bias"] = state["per_ct_bias"][:, genes]
        type_counts = sc_model._mean_counts_per_type(genes.numpy())
        if type_counts is None:
            warnings.warn("the CondSCVI reference holds no AnnData, so its cell types' counts per cell are unknown: "
                          "get_proportions() gives each type's share of the spot's counts, not of its cells; "
                          "load the reference with its AnnData for proportions of cells", UserWarning, stacklevel=2)
        model.module.load_reference(state, sc.px_r.detach().cpu()[genes], prior["mean_vprior"],
                                    prior["var_vprior"], prior["weights_vprior"], type_counts)
        model.module.to(sc_model.device)
        return model

    # -- training ------------------------------------------------------------------------------
    def train(self, max_epochs: int = 2000, lr: float | None = None, device: str = "auto", train_size: float = 1.0,
              validation_size: float | None = None, batch_size: int | None = None,
              n_epochs_kl_warmup: int | None = 200, plan_kwargs: dict | None = None, **kwargs) -> "DestVI":
        """Fit proportions and states to the spots (maximum a posteriori, minibatch Adam).

        Parameters
        ----------
        max_epochs
            Passes over the spots (scvi-tools' default, 2,000).
        lr
            Adam's learning rate (default 3e-3).
        device, train_size, validation_size
            As for :meth:`cellvi.SCVI.train`; by default every spot trains.
        batch_size
            Spots per minibatch; default ``min(max(n_spots // 10, 1), 128)`` (see
            :class:`DestVI`).
        n_epochs_kl_warmup
            Epochs over which the prior of the states (and the L1 penalty) reach full weight.
        plan_kwargs
            Further settings of :class:`cellvi.train.TrainingPlan`.
        **kwargs
            As for :meth:`cellvi.models.BaseModel.train` (``progress_bar``, ``early_stopping``...).

        Examples
        --------
        >>> st_model.train()                       # 2,000 epochs
        >>> st_model.train(max_epochs=500, batch_size=64)
        """
        if self.adata is None:
            raise ValueError("this model holds no AnnData to train on (it was loaded without one)")
        n_obs = self.adata.n_obs
        if batch_size is None:
            batch_size = destvi_batch_size(n_obs)
        plan_kwargs = dict(plan_kwargs or {})
        n_train = math.ceil(float(train_size) * n_obs)
        plan_kwargs["loss_kwargs"] = {"n_obs": n_train, **plan_kwargs.get("loss_kwargs", {})}
        return super().train(max_epochs=max_epochs, lr=lr, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size,
                             n_epochs_kl_warmup=n_epochs_kl_warmup, plan_kwargs=plan_kwargs, **kwargs)

    # -- queries -------------------------------------------------------------------------------
    @torch.no_grad()
    def _inference(self, adata, indices=None, batch_size=None):
        # Another AnnData is accepted only when it holds the model's own spots, in order
        # (checked by the registry's CellIndexField): the parameters are per spot.
        for tensors in self._minibatches(adata, indices, batch_size):
            yield self.module.inference(**self.module.inference_inputs(tensors))

    def get_proportions(self, keep_noise: bool = False, indices=None, batch_size: int | None = None,
                        adata=None, share_of: str = "cells") -> pd.DataFrame:
        """Each spot's cell-type proportions.

        The model's loadings are each type's share of the spot's counts. Cells of different
        types hold different counts (in the MERFISH reference of the tests, 18 to 52 per cell
        on average), so by default each loading is divided by its type's mean count per cell
        on the shared genes in the reference, which gives shares of cells (what a spot's
        composition means): on MERFISH pseudo-spots they track the true fractions of cells
        better (RMSE per seed 0.0956, 0.0907, 0.0932 against 0.1006, 0.0948, 0.0984 as shares
        of counts). Stereoscope's proportions stay shares of counts (see
        :meth:`cellvi.SpatialStereoscope.get_proportions`).

        Parameters
        ----------
        keep_noise
            Add a ``"noise"`` column: the noise profile's share of the spot's counts; the
            types share the rest, and rows sum to 1 over the types and the noise.
        indices
            Spots to return (integers or a boolean mask); default: all.
        batch_size
            Spots per minibatch.
        adata
            The model's spots (needed when it was loaded without them); an AnnData of other
            spots, or of the same spots in another order, is refused.
        share_of
            ``"cells"`` (default): shares of the spot's cells; ``"counts"``: shares of its
            counts (the loadings as they are, what scvi-tools reports).

        Returns
        -------
        A DataFrame of spots (the spatial AnnData's obs names) x cell types, non-negative,
        rows summing to 1.

        Examples
        --------
        >>> props = st_model.get_proportions()
        >>> st_adata.obs[[f"prop.{c}" for c in props]] = props.to_numpy()
        """
        check_choice("share_of", share_of, ("cells", "counts"))
        v = torch.cat([out["v"].cpu() for out in self._inference(adata, indices, batch_size)]).double().numpy()
        k = len(self.cell_types)
        counts = v / v.sum(1, keepdims=True)  # shares of the spot's counts, noise included
        types = counts[:, :k]
        if share_of == "cells":
            cells = types / self.module.type_counts.cpu().double().numpy()
            types = cells / cells.sum(1, keepdims=True) * types.sum(1, keepdims=True)
        return proportions_frame(types, self._obs_names(adata, indices), self.cell_types,
                                 noise=counts[:, k] if keep_noise else None)

    def get_gamma(self, indices=None, batch_size: int | None = None, return_numpy: bool = False, adata=None):
        """Each cell type's state in each spot (its coordinates in CondSCVI's latent space).

        Parameters
        ----------
        indices
            Spots to return; default: all.
        batch_size
            Spots per minibatch.
        return_numpy
            Return an array spots x n_latent x cell types instead of a dict.
        adata
            The model's spots (needed when it was loaded without them); an AnnData of other
            spots, or of the same spots in another order, is refused.

        Returns
        -------
        A dict of cell type -> DataFrame (spots x latent dimensions ``"0"``, ``"1"``, ...),
        or with ``return_numpy`` the array.

        Examples
        --------
        >>> gamma = st_model.get_gamma()
        >>> gamma["B"].head()
        """
        gamma = torch.cat([out["gamma"].cpu() for out in self._inference(adata, indices, batch_size)]).numpy()
        gamma = np.transpose(gamma, (0, 2, 1))  # spots x n_latent x types
        if return_numpy:
            return gamma
        index = pd.Index([str(i) for i in self._obs_names(adata, indices)])
        columns = [str(i) for i in range(gamma.shape[1])]
        return {ct: pd.DataFrame(gamma[:, :, i], index=index, columns=columns)
                for i, ct in enumerate(self.cell_types)}

    @torch.no_grad()
    def get_scale_for_ct(self, cell_type, indices=None, batch_size: int | None = None, adata=None) -> pd.DataFrame:
        """Normalised expression of one cell type in each spot: the reference decoder at the
        type's state in the spot, with the platform's per-gene factor.

        Parameters
        ----------
        cell_type
            A cell type's name (or position in :attr:`cell_types`).
        indices
            Spots to return; default: all.
        batch_size
            Spots per minibatch.
        adata
            The model's spots (needed when it was loaded without them); an AnnData of other
            spots, or of the same spots in another order, is refused.

        Returns
        -------
        A DataFrame of spots x genes (the genes shared with the reference), rows summing to 1.

        Examples
        --------
        >>> b = st_model.get_scale_for_ct("B")
        >>> b["CD19"].sort_values().tail()      # spots where B cells express CD19 most
        """
        c = type_code(cell_type, self.cell_types)
        out = []
        for inf in self._inference(adata, indices, batch_size):
            out.append(self.module.type_profiles(inf["gamma"])[:, c].cpu())
        values = torch.cat(out).double().numpy()
        return pd.DataFrame(values, index=pd.Index([str(i) for i in self._obs_names(adata, indices)]),
                            columns=self.var_names)
