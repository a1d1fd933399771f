"""totalVI: joint model of RNA and surface proteins of CITE-seq cells (Gayoso et al. 2021)."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..autotune._space import choice, loguniform
from .. import _constants as C
from .._settings import settings
from ..analysis import ExpressionMixin
from ..analysis._expression import _uses_latent_library
from ..data import ObsmField, standard_fields
from ..data._fields import preview
from ..modules import TOTALVAE
from ..modules._totalvae import protein_background_prior
from ..train import as_count
from ._base import BaseModel
from ._mixins import MappingMixin, VAEMixin
from ._scvi import library_prior_arguments


class ProteinField(ObsmField):
    """Protein counts (cells x proteins) in obsm, and the panel each batch measured.

    A protein whose counts are all zero in a batch was not measured there (a batch of
    RNA-only cells has no panel at all): ``batch_mask[batch]`` lists, per protein, whether it
    was. With ``override_missing_proteins`` every protein counts as measured everywhere.
    """

    _state_attrs = ObsmField._state_attrs + ("override_missing_proteins", "batch_mask")

    def __init__(self, obsm_key: str, names_uns_key: str | None = None, override_missing_proteins: bool = False):
        super().__init__(C.PROTEIN_KEY, obsm_key, names_uns_key, values="counts", min_columns=2,
                         zeros_for_query=True)
        self.override_missing_proteins = bool(override_missing_proteins)
        self.batch_mask: dict[str, list[bool]] = {}

    def setup(self, adata, fields) -> None:
        super().setup(adata, fields)
        proteins = self.array(adata, fields)
        self.batch_mask = self._masks(adata, fields, proteins, fields[C.BATCH_KEY].categories)
        if not any(any(m) for m in self.batch_mask.values()):
            raise ValueError(f"obsm['{self.obsm_key}'] holds no protein counts at all (every value is 0); "
                             "totalVI needs protein counts for at least one batch")
        missing = {b: m for b, m in self.batch_mask.items() if not all(m)}
        if missing:
            described = "; ".join(f"batch '{b}': {'all' if not any(m) else sum(not v for v in m)} of "
                                  f"{len(m)}" for b, m in list(missing.items())[:5])
            warnings.warn(f"proteins with no counts in a batch are taken as not measured there and left out "
                          f"of its likelihood ({described}); proteins are imputed for those cells. Pass "
                          "override_missing_proteins=True if those zeros are real measurements.",
                          UserWarning, stacklevel=4)

    def _masks(self, adata, fields, proteins: np.ndarray, batches: list[str]) -> dict[str, list[bool]]:
        codes = fields[C.BATCH_KEY].array(adata, fields)
        masks = {}
        for code, name in enumerate(batches):
            in_batch = codes == code
            if self.override_missing_proteins:
                masks[name] = [True] * proteins.shape[1]
            elif in_batch.any():
                masks[name] = (proteins[in_batch].sum(0) > 0).tolist()
        return masks

    def for_query(self, adata, fields) -> "ProteinField":
        field = super().for_query(adata, fields)
        batch = fields[C.BATCH_KEY]
        new = [b for b in batch.categories if b not in self.batch_mask]
        if new:
            masks = self._masks(adata, fields, self.array(adata, fields), batch.categories)
            field.batch_mask.update({b: masks[b] for b in new if b in masks})
        return field

    def mask_array(self, batches: list[str]) -> np.ndarray | None:
        """Batches x proteins, True where measured; None when every batch measured all."""
        n = len(self.column_names)
        mask = np.array([self.batch_mask.get(b, [True] * n) for b in batches], dtype=bool)
        return None if mask.all() else mask


class TOTALVI(VAEMixin, ExpressionMixin, MappingMixin, BaseModel):
    """totalVI (Gayoso et al. 2021): a joint latent space of RNA and protein counts of CITE-seq
    cells, denoised RNA and proteins (foreground, background removed), and proteins imputed
    for cells whose batch did not measure them.

    RNA counts follow scVI's negative binomial (``gene_likelihood="nb"``; ZINB optional);
    protein counts a negative-binomial mixture of a background and a foreground component,
    with a per-batch prior of the background (initialised from the data when there are more
    than 10 proteins).

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    n_latent
        Latent dimensions.
    gene_dispersion
        ``"gene"``, ``"gene-batch"`` or ``"gene-label"``.
    protein_dispersion
        ``"protein"``, ``"protein-batch"`` or ``"protein-label"``.
    gene_likelihood
        ``"nb"`` or ``"zinb"``.
    latent_distribution
        ``"normal"`` or ``"ln"``.
    empirical_protein_background_prior
        Initialise the background prior from each batch's data (default: when there are
        more than 10 proteins).
    **module_kwargs
        Further settings of :class:`cellvi.modules.TOTALVAE` (``n_hidden=256``,
        ``n_layers_encoder=2``, ``n_layers_decoder=1``, ``dropout_rate_encoder=0.2``,
        ``dropout_rate_decoder=0.2``, ``encode_covariates=True``, ``use_observed_lib_size``,
        ``use_batch_norm``, ``use_layer_norm``).

    Examples
    --------
    >>> import cellvi, anndata
    >>> adata = anndata.read_h5ad("cite.h5ad")   # proteins in adata.obsm["protein_expression"]
    >>> cellvi.TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein_expression",
    ...                              batch_key="batch")
    >>> model = cellvi.TOTALVI(adata)
    >>> model.train()
    >>> adata.obsm["X_totalVI"] = model.get_latent_representation()
    >>> rna, protein = model.get_normalized_expression(n_samples=25)
    """

    # A query batch's protein efficiency stays 1 (as in scvi-tools): its proteins, often not
    # measured, cannot inform it.
    _query_frozen_parameters = ("log_per_batch_efficiency",)
    # The KL warm-up (which also weighs the protein likelihood and, through 1 - weight, the
    # adversarial classifier) runs 0.75 * n_cells steps, as in scvi-tools, however short the
    # run (the trainer's default: no kl_warmup_cap).
    # cellvi.autotune's default search space, around totalVI's defaults (n_latent 20, 256
    # hidden units, 2 encoder layers, encoder dropout 0.2, NB genes, lr 4e-3).
    _tune_space = {
        "model_params": {"n_latent": choice([10, 20, 30]), "n_hidden": choice([128, 256, 512]),
                         "n_layers_encoder": choice([1, 2, 3]), "dropout_rate_encoder": choice([0.1, 0.2, 0.3]),
                         "gene_likelihood": choice(["nb", "zinb"])},
        "train_params": {"lr": loguniform(1e-4, 1e-2)},
    }

    def __init__(self, adata=None, n_latent: int = 20, gene_dispersion: str = "gene",
                 protein_dispersion: str = "protein", gene_likelihood: str = "nb",
                 latent_distribution: str = "normal", empirical_protein_background_prior: bool | None = None,
                 **module_kwargs):
        for name in ("n_hidden", "n_layers_encoder", "n_layers_decoder"):
            if name in module_kwargs:
                module_kwargs[name] = as_count(module_kwargs[name], name)
        super().__init__(adata, n_latent=as_count(n_latent, "n_latent"), gene_dispersion=gene_dispersion,
                         protein_dispersion=protein_dispersion, gene_likelihood=gene_likelihood,
                         latent_distribution=latent_distribution,
                         empirical_protein_background_prior=empirical_protein_background_prior,
                         **module_kwargs)

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata,
        protein_expression_obsm_key: str = "protein_expression",
        protein_names_uns_key: str | None = None,
        batch_key: str | None = None,
        layer: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        override_missing_proteins: bool = False,
    ) -> None:
        """Check ``adata`` and record its RNA counts, protein counts and covariates.

        Nothing is written into ``adata``.

        Parameters
        ----------
        adata
            AnnData with raw RNA counts (cells x genes) and protein counts in obsm.
        protein_expression_obsm_key
            obsm key of the protein counts: a DataFrame (cells x proteins, protein names as
            columns) or an array.
        protein_names_uns_key
            For an array: the uns key of the protein names (default ``<obsm key>_<i>``).
        batch_key
            obs column of the batch. Proteins with no counts in a batch are that batch's
            missing panel: left out of its likelihood and imputed.
        layer, size_factor_key, categorical_covariate_keys, continuous_covariate_keys
            As for :meth:`cellvi.SCVI.setup_anndata`.
        override_missing_proteins
            Treat zero counts as measured everywhere (no missing panels).

        Examples
        --------
        >>> cellvi.TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein_expression",
        ...                              batch_key="batch")
        """
        fields = standard_fields(layer=layer, batch_key=batch_key, size_factor_key=size_factor_key,
                                 categorical_covariate_keys=categorical_covariate_keys,
                                 continuous_covariate_keys=continuous_covariate_keys)
        fields.append(ProteinField(protein_expression_obsm_key, protein_names_uns_key, override_missing_proteins))
        cls._setup(adata, fields)

    # -- module --------------------------------------------------------------------------------
    @property
    def protein_names(self) -> list[str]:
        """The model's proteins, in its order."""
        return list(self._protein_field.column_names)

    @property
    def _protein_field(self) -> ProteinField:
        return self.registry.field(C.PROTEIN_KEY)

    @property
    def _protein_mask(self) -> np.ndarray | None:
        return self._protein_field.mask_array(self.registry.batch_categories)

    def _module_kwargs(self) -> dict:
        kwargs = dict(self.init_kwargs)
        kwargs.pop("empirical_protein_background_prior")
        return kwargs

    def _build_module(self) -> TOTALVAE:
        reg = self.registry
        kwargs = self._module_kwargs()
        n_proteins = len(self.protein_names)
        mask = self._protein_mask
        use_size_factor = reg.size_factor_key is not None
        if not kwargs.get("use_observed_lib_size", True) and not use_size_factor:
            kwargs.update(library_prior_arguments(self))
        empirical = self.init_kwargs["empirical_protein_background_prior"]
        if empirical is None:
            empirical = n_proteins > 10
        if empirical:
            if self.adata is not None:
                tensors = self._tensors()
                mean, scale = protein_background_prior(tensors[C.PROTEIN_KEY], tensors.batch, reg.n_batch, mask,
                                                       rng=settings.seed)
            else:  # being loaded: the saved parameters replace these
                mean = np.zeros((n_proteins, reg.n_batch), np.float32)
                scale = np.ones((n_proteins, reg.n_batch), np.float32)
            kwargs["protein_background_prior_mean"], kwargs["protein_background_prior_scale"] = mean, scale
        return TOTALVAE(n_input_genes=reg.n_vars, n_input_proteins=n_proteins, n_batch=reg.n_batch,
                        n_labels=reg.n_labels, n_continuous_cov=reg.n_continuous_cov,
                        n_cats_per_cov=reg.n_cats_per_cov, protein_batch_mask=mask,
                        use_size_factor_key=use_size_factor, **kwargs)

    # -- training ------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        lr: float = 4e-3,
        device: str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        batch_size: int = 256,
        early_stopping: bool = True,
        early_stopping_patience: int = 45,
        reduce_lr_on_plateau: bool = True,
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = None,
        adversarial_classifier: bool | None = None,
        weight_decay: float = 1e-6,
        eps: float = 0.01,
        limit_train_batches: int | float | None = None,
        progress_bar: bool | None = None,
        plan_kwargs: dict | None = None,
    ) -> "TOTALVI":
        """Train totalVI.

        Parameters
        ----------
        max_epochs
            Default ``min(round(20000 / n_cells * 400), 400)``.
        lr
            Adam's learning rate.
        device, train_size, validation_size, batch_size, limit_train_batches, progress_bar
            As for :meth:`cellvi.SCVI.train`.
        early_stopping, early_stopping_patience
            Stop when the validation ELBO has not improved for this many epochs.
        reduce_lr_on_plateau
            Multiply the learning rate by 0.6 when the validation ELBO has not improved for
            30 epochs.
        n_steps_kl_warmup, n_epochs_kl_warmup
            KL warm-up in minibatches (default: as scvi-tools, ``0.75 * n_cells`` optimizer
            steps, i.e. half as many minibatches when the adversarial classifier also steps)
            or, when given, in epochs. As in scvi-tools it is not shortened for short runs (a run shorter than
            the warm-up ends below full weight); ``plan_kwargs={"kl_warmup_cap": 0.75}``
            ends it by three quarters of the run instead. The warm-up weight also scales the
            protein likelihood, and ``1 - weight`` the adversarial classifier's loss.
        adversarial_classifier
            Train a batch classifier on the latent space and push the encoder to fool it
            (default: on when some batch misses proteins).
        weight_decay, eps
            Adam's settings.
        plan_kwargs
            Further settings of :class:`cellvi.train.TrainingPlan`.

        Examples
        --------
        >>> model.train(max_epochs=200)
        >>> model.history[["elbo_train", "elbo_validation"]].plot()
        """
        if adversarial_classifier is None:
            adversarial_classifier = self._protein_mask is not None
        plan = {"reduce_lr_on_plateau": bool(reduce_lr_on_plateau),
                "adversarial_classifier": bool(adversarial_classifier)}
        if n_epochs_kl_warmup is None:
            if n_steps_kl_warmup is not None:
                plan["n_steps_kl_warmup"] = as_count(n_steps_kl_warmup, "n_steps_kl_warmup", 0)
            else:
                n_obs = self.adata.n_obs if self.adata is not None else 1
                # scvi-tools' default is 0.75 * n_cells steps, counted per optimizer step: with
                # the adversarial classifier (two optimizers) that is half as many minibatches.
                plan["n_steps_kl_warmup"] = int(0.75 * n_obs) // (2 if adversarial_classifier else 1)
        plan.update(plan_kwargs or {})
        return super().train(max_epochs=max_epochs, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size,
                             early_stopping=early_stopping, early_stopping_patience=early_stopping_patience,
                             lr=lr, weight_decay=weight_decay, eps=eps,
                             n_epochs_kl_warmup=n_epochs_kl_warmup, limit_train_batches=limit_train_batches,
                             progress_bar=progress_bar, plan_kwargs=plan)

    # -- queries -------------------------------------------------------------------------------
    def _protein_mask_of(self, proteins: np.ndarray | None) -> np.ndarray | None:
        return self._feature_mask(proteins, self.protein_names, "protein_list")

    @torch.no_grad()
    def _joint_chunks(self, adata, indices, transform_batch, genes, proteins, library_size, n_samples,
                      return_mean, batch_size, include_protein_background, sample_protein_mixing,
                      scale_protein, measured_batches_only=False, genes_major=False):
        """(output rows, RNA, proteins) chunk by chunk: ``[samples x] cells x features``, or
        features first with ``genes_major``.

        With ``measured_batches_only`` each protein is decoded in the batches of
        ``transform_batch`` that measured it (averaged), which is how proteins are imputed.
        """
        batches = self._transform_batches(transform_batch)
        use_latent = _uses_latent_library(library_size)
        mask = self._protein_mask
        n_proteins = len(self.protein_names)
        if measured_batches_only and mask is not None:
            weights = torch.as_tensor(mask[batches].astype(np.float32))  # batches x proteins
            if (weights.sum(0) == 0).any():
                unmeasured = [self.protein_names[i] for i in np.flatnonzero(weights.sum(0).numpy() == 0)]
                raise ValueError(f"no batch of transform_batch measured {preview(unmeasured)}")
        else:
            weights = torch.ones(len(batches), n_proteins)
        weights = weights / weights.sum(0)
        for rows, tensors, inf in self._posterior(adata, indices, n_samples, batch_size):
            rna_total = protein_total = 0.0
            for i, b in enumerate(batches):
                gen = self._generate(tensors, inf, b)
                rna = gen["rate"] if use_latent else gen["scale"]
                background = torch.sigmoid(gen["mixing"])
                if sample_protein_mixing:
                    background = torch.bernoulli(background)
                protein = gen["rate_fore"] * (1 - background)
                if include_protein_background:
                    protein = protein + gen["rate_back"] * background
                if scale_protein:
                    protein = protein / protein.sum(-1, keepdim=True)
                rna_total = rna_total + rna / len(batches)
                protein_total = protein_total + protein * weights[i].to(protein.device)
            if genes is not None:
                rna_total = rna_total[..., genes]
            if proteins is not None:
                protein_total = protein_total[..., proteins]
            if not use_latent and float(library_size) != 1.0:
                rna_total = rna_total * float(library_size)
            if n_samples > 1 and return_mean:
                rna_total, protein_total = rna_total.mean(0), protein_total.mean(0)
            if genes_major:
                rna_total, protein_total = rna_total.movedim(-1, 0), protein_total.movedim(-1, 0)
            yield rows, rna_total, protein_total

    @torch.no_grad()
    def get_normalized_expression(
        self,
        adata=None,
        indices=None,
        transform_batch=None,
        gene_list: Sequence[str] | None = None,
        protein_list: Sequence[str] | None = None,
        library_size: float | str = 1,
        n_samples: int = 1,
        sample_protein_mixing: bool = False,
        scale_protein: bool = False,
        include_protein_background: bool = False,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
    ):
        """Denoised RNA and protein expression per cell.

        RNA: the decoder's normalized expression (times ``library_size``). Proteins: the
        foreground rate times the probability of the foreground (background removed), plus
        the background with ``include_protein_background``.

        Parameters
        ----------
        adata, indices
            Cells to use (default: all of the model's own).
        transform_batch
            Batch (or list, averaged) to generate every cell in; ``None``: its own. Cells of
            a batch without the protein panel get their proteins imputed by generating them
            in batches that measured it: see :meth:`get_imputed_proteins`.
        gene_list, protein_list
            Features to return (default: all).
        library_size
            Scale RNA to this total per cell (``1``: proportions), or ``"latent"`` for the
            cell's own library size.
        n_samples
            Posterior samples per cell.
        sample_protein_mixing
            Draw background/foreground membership instead of using its probability.
        scale_protein
            Make each cell's proteins sum to one.
        include_protein_background
            Add the background component to the proteins.
        batch_size
            Cells per chunk.
        return_mean
            Average over samples; else arrays of samples x cells x features.
        return_numpy
            Arrays instead of DataFrames.

        Returns
        -------
        ``(rna, protein)``: DataFrames (cells x genes, cells x proteins) or arrays.

        Examples
        --------
        >>> rna, protein = model.get_normalized_expression(n_samples=25, include_protein_background=True)
        """
        return self._rna_and_proteins(adata, indices, transform_batch, gene_list, protein_list, library_size,
                                      n_samples, sample_protein_mixing, scale_protein, include_protein_background,
                                      batch_size, return_mean, return_numpy, measured_batches_only=False)

    def get_imputed_proteins(self, adata=None, indices=None, protein_list: Sequence[str] | None = None,
                             n_samples: int = 25, include_protein_background: bool = True,
                             batch_size: int | None = None, return_numpy: bool | None = None):
        """Proteins of every cell as the batches that measured them would have seen them.

        Each protein is decoded in every batch that measured it (averaged), so cells from
        batches without the panel (e.g. RNA-only data) get imputed values on the measured
        scale; cells of measuring batches get their denoised proteins, batch-averaged.

        Returns
        -------
        DataFrame cells x proteins (or an array).

        Examples
        --------
        >>> proteins = model.get_imputed_proteins()
        >>> proteins.loc[rna_only_cells, "CD4"]
        """
        measuring = [b for b in self.registry.batch_categories
                     if any(self._protein_field.batch_mask.get(b, [True]))]
        _, protein = self._rna_and_proteins(
            adata, indices, measuring, [], protein_list, 1, as_count(n_samples, "n_samples"), False, False,
            include_protein_background, batch_size, True, return_numpy, measured_batches_only=True)
        return protein

    def _rna_and_proteins(self, adata, indices, transform_batch, gene_list, protein_list, library_size, n_samples,
                          sample_protein_mixing, scale_protein, include_protein_background, batch_size,
                          return_mean, return_numpy, measured_batches_only):
        n_samples = as_count(n_samples, "n_samples")
        genes = self._gene_mask(gene_list)
        proteins = self._protein_mask_of(protein_list)
        gene_names = self.registry.var_names if genes is None else [self.registry.var_names[i] for i in genes]
        protein_names = self.protein_names if proteins is None else [self.protein_names[i] for i in proteins]
        chunks = self._joint_chunks(adata, indices, transform_batch, genes, proteins, library_size, n_samples,
                                    return_mean, batch_size, include_protein_background, sample_protein_mixing,
                                    scale_protein, measured_batches_only)
        return tuple(self._cells_by_features(adata, indices, n_samples, return_mean, return_numpy,
                                             [gene_names, protein_names], chunks))

    @torch.no_grad()
    def get_protein_foreground_probability(self, adata=None, indices=None, transform_batch=None,
                                           protein_list: Sequence[str] | None = None, n_samples: int = 1,
                                           batch_size: int | None = None, return_mean: bool = True,
                                           return_numpy: bool | None = None):
        """Probability that each protein's counts in each cell come from the foreground
        (1 - the background mixing probability), averaged over ``transform_batch``.

        Examples
        --------
        >>> fg = model.get_protein_foreground_probability()
        >>> (fg["CD3"] > 0.5).mean()
        """
        n_samples = as_count(n_samples, "n_samples")
        proteins = self._protein_mask_of(protein_list)
        batches = self._transform_batches(transform_batch)
        names = self.protein_names if proteins is None else [self.protein_names[i] for i in proteins]

        def chunks():
            for rows, tensors, inf in self._posterior(adata, indices, n_samples, batch_size):
                total = 0.0
                for b in batches:
                    total = total + (1 - torch.sigmoid(self._generate(tensors, inf, b)["mixing"])) / len(batches)
                if proteins is not None:
                    total = total[..., proteins]
                if n_samples > 1 and return_mean:
                    total = total.mean(0)
                yield rows, total

        return self._cells_by_features(adata, indices, n_samples, return_mean, return_numpy, [names], chunks())[0]

    @torch.no_grad()
    def posterior_predictive_sample(self, adata=None, indices=None, n_samples: int = 1,
                                    gene_list: Sequence[str] | None = None,
                                    protein_list: Sequence[str] | None = None,
                                    batch_size: int | None = None) -> np.ndarray:
        """RNA and protein counts drawn from the posterior predictive distribution, side by
        side (cells x (genes + proteins), or cells x features x samples).

        Examples
        --------
        >>> counts = model.posterior_predictive_sample(n_samples=5)
        """
        n_samples = as_count(n_samples, "n_samples")
        genes = self._gene_mask(gene_list)
        proteins = self._protein_mask_of(protein_list)
        chunks = []
        for tensors in self._minibatches(adata, indices, batch_size):
            gen = self._generate(tensors, self._infer(tensors, n_samples))
            rna, protein = gen["dist"].sample(), gen["protein_dist"].sample()
            if genes is not None:
                rna = rna[..., genes]
            if proteins is not None:
                protein = protein[..., proteins]
            draw = torch.cat([rna, protein], dim=-1)
            chunks.append((draw.permute(1, 2, 0) if n_samples > 1 else draw).cpu())
        return torch.cat(chunks, dim=0).numpy()

    # -- differential expression over genes and proteins together ------------------------------
    def _de_feature_names(self) -> list[str]:
        return list(self.registry.var_names) + self.protein_names

    def _de_feature_types(self) -> list[str] | None:
        # Rows are named by feature, and a protein may share its name with a gene (e.g. CD4).
        return ["gene"] * self.registry.n_vars + ["protein"] * len(self.protein_names)

    def _de_count_blocks(self, adata) -> list:
        if adata is None:
            tensors = self._tensors()
            return [tensors.X, sp.csr_matrix(tensors[C.PROTEIN_KEY])]
        fields = self.registry.fields
        return [self.registry.counts(adata), sp.csr_matrix(fields[C.PROTEIN_KEY].array(adata, fields))]

    def _de_chunks(self, adata, cells, transform_batch, features, protein_prior_count: float = 0.1,
                   include_protein_background: bool = False, sample_protein_mixing: bool = False,
                   scale_protein: bool = False):
        for rows, rna, protein in self._joint_chunks(
                adata, cells, transform_batch, None, None, 1, 1, True, None, include_protein_background,
                sample_protein_mixing, scale_protein, genes_major=True):
            joint = torch.cat([rna, protein + protein_prior_count], dim=0)
            yield rows, (joint if features is None else joint[torch.as_tensor(features)])

    def differential_expression(self, adata=None, groupby: str | None = None, group1=None, group2=None,
                                idx1=None, idx2=None, mode: str = "change", delta: float = 0.25,
                                protein_prior_count: float = 0.1, pseudocounts: float | None = 1e-5,
                                include_protein_background: bool = False, sample_protein_mixing: bool = False,
                                scale_protein: bool = False, **kwargs) -> pd.DataFrame:
        """Bayesian differential expression of genes and proteins together.

        As :meth:`cellvi.SCVI.differential_expression`, over the genes followed by the
        proteins (denoised, plus ``protein_prior_count``), with scvi-tools' totalVI defaults
        (``mode="change"``, ``delta=0.25``, ``pseudocounts=1e-5``; ``None`` estimates them as
        SCVI does). ``gene_list`` may name genes and proteins (a name that a gene and a protein
        share gives both rows; ``gene_list=model.protein_names`` tests the proteins alone);
        the column ``feature_type`` says which row is which.

        ``include_protein_background``, ``sample_protein_mixing`` and ``scale_protein`` shape
        the proteins' values as in :meth:`get_normalized_expression` (by default the
        foreground alone, its expected value, not rescaled).

        Examples
        --------
        >>> de = model.differential_expression(groupby="cell_type", group1="B", group2="T")
        >>> de.loc[model.protein_names]   # the proteins' rows
        """
        return ExpressionMixin.differential_expression(
            self, adata, groupby, group1, group2, idx1, idx2, mode=mode, delta=delta, pseudocounts=pseudocounts,
            chunk_kwargs={"protein_prior_count": float(protein_prior_count),
                          "include_protein_background": bool(include_protein_background),
                          "sample_protein_mixing": bool(sample_protein_mixing),
                          "scale_protein": bool(scale_protein)}, **kwargs)
