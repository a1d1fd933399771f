"""PeakVI: a latent space and denoised accessibility of single-cell ATAC-seq (Ashuach et al. 2022)."""
from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..autotune._space import choice, loguniform
from .. import _constants as C
from .._settings import settings
from ..analysis import PosteriorMixin
from ..analysis._differential import differential_expression
from ..data import CategoricalJointObsField, CategoricalObsField, LayerField, NumericalJointObsField, cell_indices
from ..modules import PEAKVAE
from ..train import as_count
from ._base import BaseModel
from ._mixins import MappingMixin, VAEMixin


def _optional_count(value, name: str) -> int | None:
    return None if value is None else as_count(value, name)


class PEAKVI(VAEMixin, PosteriorMixin, MappingMixin, BaseModel):
    """PeakVI (Ashuach et al. 2022): a latent space of scATAC-seq cells with batch effects
    removed, denoised accessibility and differential accessibility.

    Each region of each cell is open (any count > 0) or closed. PeakVI models
    P(open) = y * l * f: y from a decoder of the latent z (and batch), l a per-cell library
    factor read from the cell's data by its own network, f a learned per-region factor.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    n_hidden
        Hidden units per layer; default the square root of the number of regions.
    n_latent
        Latent dimensions; default the square root of ``n_hidden``.
    n_layers_encoder, n_layers_decoder
        Hidden layers of the encoders (z and library factor) and of the decoder.
    dropout_rate
        Dropout in the z encoder.
    model_depth
        Learn the per-cell library factor (else it is 1).
    region_factors
        Learn the per-region factors (else they are 1).
    use_batch_norm, use_layer_norm
        ``"none"``, ``"encoder"``, ``"decoder"`` or ``"both"``: where hidden layers normalise
        (default: LayerNorm everywhere, no BatchNorm).
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal).
    deeply_inject_covariates
        Give the batch and categorical covariates to every decoder layer, not the first only.
    encode_covariates
        Give the covariates to the encoders too.
    kl_scale
        Weight of the KL term per cell in the training loss; ``None`` (default): 1 / (cells
        in the minibatch), the weight scvi-tools' PeakVI effectively uses; ``1``: the plain
        ELBO, under which the latent space tends to collapse on scATAC data (see
        :class:`cellvi.modules.PEAKVAE`). The reported ELBO is the plain one either way.

    Examples
    --------
    >>> import cellvi, anndata
    >>> adata = anndata.read_h5ad("atac.h5ad")     # cells x peaks, counts or 0/1
    >>> cellvi.PEAKVI.setup_anndata(adata, batch_key="sample")
    >>> model = cellvi.PEAKVI(adata)
    >>> model.train()
    >>> adata.obsm["X_PeakVI"] = model.get_latent_representation()
    >>> da = model.differential_accessibility(groupby="cell_type", group1="B", group2="Mono")
    """

    # scvi-tools' PeakVI training: AdamW (decoupled weight decay), lr 1e-4, 50 epochs of KL
    # warm-up not shortened for short runs, early stopping on the validation reconstruction
    # loss (lower is better).
    _plan_defaults = {"lr": 1e-4, "weight_decay": 1e-3, "eps": 1e-8, "optimizer": "AdamW",
                      "n_epochs_kl_warmup": 50,
                      "monitor": "reconstruction_loss_validation", "monitor_mode": "min"}
    # cellvi.autotune's default search space; the defaults (n_hidden and n_latent None: sized
    # from the number of regions) join the choices in the defaults trial.
    _tune_space = {
        "model_params": {"n_hidden": choice([64, 128, 256]), "n_latent": choice([10, 20, 30]),
                         "n_layers_encoder": choice([1, 2]), "n_layers_decoder": choice([1, 2]),
                         "dropout_rate": choice([0.0, 0.1, 0.2])},
        "train_params": {"lr": loguniform(1e-5, 1e-3)},
    }

    def __init__(self, adata=None, n_hidden: int | None = None, n_latent: int | None = None,
                 n_layers_encoder: int = 2, n_layers_decoder: int = 2, dropout_rate: float = 0.1,
                 model_depth: bool = True, region_factors: bool = True, use_batch_norm: str = "none",
                 use_layer_norm: str = "both", latent_distribution: str = "normal",
                 deeply_inject_covariates: bool = False, encode_covariates: bool = False,
                 kl_scale: float | None = None, **kwargs):
        super().__init__(adata, n_hidden=_optional_count(n_hidden, "n_hidden"),
                         n_latent=_optional_count(n_latent, "n_latent"),
                         n_layers_encoder=as_count(n_layers_encoder, "n_layers_encoder"),
                         n_layers_decoder=as_count(n_layers_decoder, "n_layers_decoder"),
                         dropout_rate=float(dropout_rate), model_depth=bool(model_depth),
                         region_factors=bool(region_factors), use_batch_norm=use_batch_norm,
                         use_layer_norm=use_layer_norm, latent_distribution=latent_distribution,
                         deeply_inject_covariates=bool(deeply_inject_covariates),
                         encode_covariates=bool(encode_covariates),
                         kl_scale=None if kl_scale is None else float(kl_scale), **kwargs)

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata,
        batch_key: str | None = None,
        layer: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Check ``adata`` (cells x regions) and record which of its parts the model uses.

        Counts are accepted and read as binary: a region is open in a cell where its value is
        above 0 (a warning says so once, here). Refused with a message saying what to do:
        negative or NaN values, cells with no open region, a matrix with no closed entry
        (e.g. all values equal). Regions open in no cell are reported in a warning. Nothing
        is written into ``adata``.

        Parameters
        ----------
        adata
            AnnData of cells x regions (peaks): counts or 0/1, sparse or dense.
        batch_key
            obs column of the batch; its effect is removed from the latent space.
        layer
            Key in ``adata.layers`` holding the data; ``None`` uses ``adata.X``.
        categorical_covariate_keys, continuous_covariate_keys
            obs columns of further covariates, given to the decoder.

        Examples
        --------
        >>> cellvi.PEAKVI.setup_anndata(adata, batch_key="sample", layer="counts")
        """
        cls._setup(adata, [
            LayerField(C.X_KEY, layer, values="binary", features="regions"),
            CategoricalObsField(C.BATCH_KEY, batch_key, "batch_key", query="new"),
            CategoricalJointObsField(C.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(C.CONT_COVS_KEY, continuous_covariate_keys),
        ])

    def _build_module(self) -> PEAKVAE:
        reg = self.registry
        return PEAKVAE(n_input_regions=reg.n_vars, n_batch=reg.n_batch, n_continuous_cov=reg.n_continuous_cov,
                       n_cats_per_cov=reg.n_cats_per_cov, **self._module_kwargs())

    @property
    def region_names(self) -> list[str]:
        """The model's regions, in its order."""
        return list(self.registry.var_names)

    # -- training ------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int = 500,
        lr: float = 1e-4,
        device: str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        batch_size: int = 128,
        weight_decay: float = 1e-3,
        eps: float = 1e-8,
        early_stopping: bool = True,
        early_stopping_patience: int = 50,
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = 50,
        limit_train_batches: int | float | None = None,
        progress_bar: bool | None = None,
        plan_kwargs: dict | None = None,
    ) -> "PEAKVI":
        """Train PeakVI with its defaults (those of scvi-tools' PeakVI).

        Parameters
        ----------
        max_epochs
            Passes over the training cells (at most; see ``early_stopping``).
        lr, weight_decay, eps
            AdamW's settings (weight decay decoupled from the gradient).
        device, train_size, validation_size, batch_size, limit_train_batches, progress_bar
            As for :meth:`cellvi.SCVI.train`.
        early_stopping, early_stopping_patience
            Stop when the validation reconstruction loss has not decreased for this many
            epochs.
        n_steps_kl_warmup, n_epochs_kl_warmup
            Linear KL warm-up over this many minibatches (when given) or epochs. It is not
            shortened for short runs (a run shorter than the warm-up ends below full weight);
            ``plan_kwargs={"kl_warmup_cap": 0.75}`` ends it by three quarters of the run.
        plan_kwargs
            Further settings of :class:`cellvi.train.TrainingPlan`.

        Returns
        -------
        The model itself.

        Examples
        --------
        >>> model.train(max_epochs=200)
        >>> model.history[["reconstruction_loss_train", "reconstruction_loss_validation"]].plot()
        """
        plan = {}
        if n_steps_kl_warmup is not None:
            plan["n_steps_kl_warmup"] = as_count(n_steps_kl_warmup, "n_steps_kl_warmup", 0)
        plan.update(plan_kwargs or {})
        return super().train(max_epochs=max_epochs, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size,
                             early_stopping=early_stopping, early_stopping_patience=early_stopping_patience,
                             lr=lr, weight_decay=weight_decay, eps=eps, n_epochs_kl_warmup=n_epochs_kl_warmup,
                             limit_train_batches=limit_train_batches, progress_bar=progress_bar,
                             plan_kwargs=plan)

    # -- queries -------------------------------------------------------------------------------
    @torch.no_grad()
    def get_library_size_factors(self, adata=None, indices=None, batch_size: int | None = None) -> np.ndarray:
        """Each cell's library factor l in (0, 1), read from its data by the library network.

        Parameters
        ----------
        adata, indices
            Cells to use (default: all of the model's own).
        batch_size
            Cells per chunk.

        Returns
        -------
        One value per cell.

        Examples
        --------
        >>> adata.obs["peakvi_library"] = model.get_library_size_factors()
        """
        out = [self._infer(t, 1)["d"].cpu() for t in self._minibatches(adata, indices, batch_size)]
        return torch.cat(out).numpy().reshape(-1)

    @torch.no_grad()
    def get_region_factors(self) -> np.ndarray:
        """Each region's factor f in (0, 1), in the model's region order.

        Examples
        --------
        >>> factors = pd.Series(model.get_region_factors(), index=model.region_names)
        """
        factors = self.module.region_factor_probs()
        if factors is None:
            raise ValueError("this model has no region factors (it was built with region_factors=False)")
        return factors.cpu().numpy()

    @torch.no_grad()
    def get_normalized_accessibility(
        self,
        adata=None,
        indices=None,
        n_samples_overall: int | None = None,
        region_list: Sequence[str] | None = None,
        transform_batch=None,
        use_z_mean: bool = True,
        threshold: float | None = None,
        normalize_cells: bool = False,
        normalize_regions: bool = False,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ):
        """Denoised accessibility: the probability y that each region is open in each cell,
        free of the cell's library factor and the region's factor.

        Computed in chunks of ``batch_size`` cells. With ``threshold``, each chunk keeps only
        the values at or above it, sparse, so that the dense cells x regions matrix is never
        held at once.

        Parameters
        ----------
        adata, indices
            Cells to use (default: all of the model's own).
        n_samples_overall
            Instead of every chosen cell, this many drawn from them at random (with
            replacement).
        region_list
            Regions to return (default: all).
        transform_batch
            Batch category (or list, averaged) to decode every cell in; ``None``: its own.
        use_z_mean
            Decode the posterior mean of z (else one sample per cell).
        threshold
            Between 0 and 1: return a sparse matrix of the values >= ``threshold`` (the rest
            are 0).
        normalize_cells
            Multiply by each cell's library factor (closer to the data, not corrected for
            sequencing depth).
        normalize_regions
            Multiply by each region's factor.
        batch_size
            Cells per chunk (default: as many as keep a chunk near two million values, at
            most 1,024).
        return_numpy
            Return an array (or, with ``threshold``, a SciPy CSR matrix) instead of a
            DataFrame (with ``threshold``, a sparse DataFrame, which holds one column object
            per region: for many regions the CSR matrix is much lighter).

        Returns
        -------
        Cells x regions: DataFrame, array, or sparse matrix / sparse DataFrame.

        Examples
        --------
        >>> acc = model.get_normalized_accessibility(region_list=model.region_names[:100])
        >>> open_calls = model.get_normalized_accessibility(threshold=0.5, return_numpy=True)
        """
        if threshold is not None and not (isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
                                          and 0 <= threshold <= 1):
            raise ValueError(f"threshold must be a number between 0 and 1 (or None), got {threshold!r}")
        if normalize_regions and self.module.region_factors is None:
            raise ValueError("normalize_regions needs region factors, and this model was built with "
                             "region_factors=False")
        regions = self._feature_mask(region_list, self.registry.var_names, "region_list")
        n_obs = self._anndata(adata).n_obs
        idx = cell_indices(n_obs, indices)
        if n_samples_overall is not None:
            idx = np.random.default_rng(settings.seed).choice(idx, as_count(n_samples_overall, "n_samples_overall"))
        batches = self._transform_batches(transform_batch)
        region_index = None if regions is None else torch.as_tensor(regions, device=self.device)
        factors = self.module.region_factor_probs() if normalize_regions else None
        if factors is not None and region_index is not None:
            factors = factors[region_index]
        n_regions = self.registry.n_vars if regions is None else len(regions)
        dense = np.empty((len(idx), n_regions), dtype=np.float32) if threshold is None else None
        pieces, done = [], 0
        for tensors in self._minibatches(adata, idx, batch_size):
            inf = self._infer(tensors, 1)
            total = 0.0
            for b in batches:
                gen_in = self.module.generative_inputs(tensors, inf, transform_batch=b, use_z_mean=use_z_mean)
                total = total + self.module.generative(**gen_in)["probs"]
            total = total / len(batches) if len(batches) > 1 else total
            if region_index is not None:
                total = total[:, region_index]
            if normalize_cells:
                total = total * inf["d"]
            if factors is not None:
                total = total * factors
            values = total.cpu().numpy()
            if dense is not None:
                dense[done:done + len(values)] = values
            else:
                values[values < threshold] = 0  # this chunk only: the whole matrix is never dense
                pieces.append(sp.csr_matrix(values))
            done += len(values)
        if dense is not None:
            out = dense
        elif pieces:
            out = sp.vstack(pieces, format="csr")
        else:
            out = sp.csr_matrix((0, n_regions), dtype=np.float32)
        if return_numpy:
            return out
        names = self.registry.var_names if regions is None else [self.registry.var_names[i] for i in regions]
        cells = self._anndata(adata).obs_names[idx]
        if dense is not None:
            return pd.DataFrame(out, index=cells, columns=names)
        return pd.DataFrame.sparse.from_spmatrix(out, index=cells, columns=names)

    # -- differential accessibility ------------------------------------------------------------
    @torch.no_grad()
    def _de_chunks(self, adata, cells, transform_batch, features):
        """(output rows, accessibility probabilities y regions x cells) of one posterior sample
        of z per listed cell, averaged over ``transform_batch``."""
        batches = self._transform_batches(transform_batch)
        regions = None
        for rows, tensors, inf in self._posterior(adata, cells, 1, None):
            if features is not None and regions is None:
                regions = torch.as_tensor(features, device=inf["z"].device)
            total = None
            for b in batches:
                gen_in = self.module.generative_inputs(tensors, inf, transform_batch=b)
                probs = self.module.generative(**gen_in, regions_major=True, regions=regions)["probs_by_region"]
                total = probs if total is None else total + probs
            yield rows, total / len(batches) if len(batches) > 1 else total

    def differential_accessibility(
        self,
        adata=None,
        groupby: str | None = None,
        group1=None,
        group2=None,
        idx1=None,
        idx2=None,
        mode: str = "change",
        delta: float = 0.05,
        fdr_target: float = 0.05,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        n_samples: int = 5000,
        m_permutation: int | None = None,
        test_mode: str = "three",
        region_list: Sequence[str] | None = None,
        change: str = "lfc",
    ) -> pd.DataFrame:
        """Bayesian differential accessibility between groups of cells.

        For ``n_samples`` cells drawn from each group, the accessibility probabilities y are
        decoded from one posterior sample of z each; pairs across the groups give samples of
        the change per region: by default (``change="lfc"``, as scvi-tools 1.4 does) the log2
        ratio log2(y1 + c) - log2(y2 + c), with the offset c estimated from the data as for
        expression; with ``change="difference"`` (PeakVI's original definition) y1 - y2.
        ``"change"`` mode: the evidence that the change is at least ``delta`` in size
        (P(change >= delta) or P(change < -delta), the larger; with ``test_mode="two"`` their
        sum), regions called at ``fdr_target``; ``"vanilla"`` mode: P(y1 > y2). The machinery
        is that of :meth:`cellvi.SCVI.differential_expression`.

        Parameters
        ----------
        adata
            Cells to use (default: the model's own).
        groupby, group1, group2
            obs column and group names: ``group1`` vs ``group2`` (default: the rest); with no
            ``group1``, every group against the rest.
        idx1, idx2
            Instead of ``groupby``: indices or boolean masks of the two groups.
        mode
            ``"change"`` or ``"vanilla"``.
        delta
            Smallest change that counts (change mode): a log2 ratio (``change="lfc"``; 0.05,
            scvi-tools' default, counts almost any consistent change) or a difference of
            probabilities (``change="difference"``, e.g. 0.05-0.1).
        fdr_target
            Posterior expected false discovery rate of ``is_da_fdr``.
        batch_correction, batchid1, batchid2
            Decode each sampled cell in every batch (or those of ``batchid1``/``batchid2``)
            and average, instead of in its own batch.
        n_samples, m_permutation
            Cells sampled per group; random cross-group pairs (``None``: the samples paired
            one to one at random).
        test_mode
            ``"three"`` or ``"two"`` (see above).
        region_list
            Regions to test (default: all).
        change
            ``"lfc"`` or ``"difference"`` (see above).

        Returns
        -------
        DataFrame indexed by region, sorted by evidence (scvi-tools' columns):
        ``prob_da`` (P(DA) in change mode, P(y1 > y2) in vanilla mode), ``is_da_fdr``
        (change mode; None in vanilla mode), ``bayes_factor`` (log odds), ``effect_size``
        (``est_prob2 - est_prob1``), ``emp_effect`` (``emp_prob2 - emp_prob1``),
        ``est_prob1``/``est_prob2`` (mean decoded probability per group), ``emp_prob1``/
        ``emp_prob2`` (fraction of the group's cells where the region is open), and
        ``comparison``, ``group1``, ``group2``.

        Examples
        --------
        >>> da = model.differential_accessibility(groupby="cell_type", group1="B", group2="Mono")
        >>> da[da["is_da_fdr"]].sort_values("effect_size").head()   # open in B, closed in Mono
        """
        de = differential_expression(
            self, adata, groupby, group1, group2, idx1, idx2, mode=mode, delta=delta, fdr_target=fdr_target,
            batch_correction=batch_correction, batchid1=batchid1, batchid2=batchid2, n_samples=n_samples,
            m_permutation=m_permutation, test_mode=test_mode, gene_list=region_list, change=change)
        change = mode == "change"
        out = pd.DataFrame({
            "prob_da": de["proba_de" if change else "proba_m1"],
            "is_da_fdr": de[f"is_de_fdr_{fdr_target}"] if change else None,
            "bayes_factor": de["bayes_factor"],
            "effect_size": de["scale2"] - de["scale1"],
            "emp_effect": de["non_zeros_proportion2"] - de["non_zeros_proportion1"],
            "est_prob1": de["scale1"],
            "est_prob2": de["scale2"],
            "emp_prob1": de["non_zeros_proportion1"],
            "emp_prob2": de["non_zeros_proportion2"],
            "comparison": de["comparison"],
            "group1": de["group1"],
            "group2": de["group2"],
        }, index=de.index)
        out.index.name = "region"
        return out
