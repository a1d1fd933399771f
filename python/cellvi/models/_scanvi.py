"""scANVI: scVI with cell-type labels, trained semi-supervised; annotates unlabelled cells."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .._settings import settings
from ..analysis import ExpressionMixin
from ..modules import SCANVAE
from ..train import as_count
from ._base import BaseModel, default_max_epochs
from ._mixins import MappingMixin, VAEMixin, _copy_weights
from ._scvi import SCVI, VAE_TUNE_SPACE, vae_arguments, vae_settings


class SCANVI(VAEMixin, ExpressionMixin, MappingMixin, BaseModel):
    """Single-cell ANnotation using Variational Inference (Xu et al. 2021).

    A latent space like scVI's, plus a classifier that predicts each cell's label; it learns
    from the labelled cells and from the structure of all cells. Every SCVI query (latent,
    normalized expression, differential expression, criticism, reference mapping) works the
    same way.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood, latent_distribution
        As for :class:`SCVI` (``dispersion="gene-label"`` is not supported).
    classification_ratio
        Weight of the labelled cells' classification loss against the ELBO.
    linear_classifier
        A linear classifier on the latent space instead of one with hidden layers.
    **module_kwargs
        Further settings of :class:`cellvi.modules.VAE` (e.g. ``encode_covariates``).

    Examples
    --------
    >>> cellvi.SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category="Unknown",
    ...                             batch_key="donor")
    >>> model = cellvi.SCANVI(adata)
    >>> model.train(max_epochs=100)
    >>> adata.obs["predicted"] = model.predict()
    >>> adata.obsm["X_scANVI"] = model.get_latent_representation()
    """

    # cellvi.autotune's default search space: scVI's.
    _tune_space = VAE_TUNE_SPACE
    # Query training adapts the classifier's normalisation to the query: its BatchNorm
    # statistics follow the query's latent distribution and its scale and shift train on the
    # query's ELBO (scvi-tools 1.4's query training trains that scale and shift too). Without
    # it, query training left the predictions exactly as the reference made them; across a
    # simulated technology effect (benchmarks/bench_scanvi_crosstech.py) it adds ~2 points.
    _query_adapted_norms = ("classifier",)

    def __init__(self, adata=None, n_hidden: int = 128, n_latent: int = 10, n_layers: int = 1,
                 dropout_rate: float = 0.1, dispersion: str = "gene", gene_likelihood: str = "zinb",
                 latent_distribution: str = "normal", classification_ratio: float = 50.0,
                 linear_classifier: bool = False, **kwargs):
        super().__init__(
            adata, **vae_settings(n_hidden, n_latent, n_layers, dropout_rate, dispersion,
                                  gene_likelihood, latent_distribution),
            classification_ratio=float(classification_ratio), linear_classifier=bool(linear_classifier),
            **kwargs,
        )
        self._from_scvi = False
        self._n_samples_per_label: int | None = None

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata,
        labels_key: str,
        unlabeled_category,
        layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Check ``adata`` and record its labels and the other parts the model uses.

        Parameters
        ----------
        labels_key
            obs column of the cell labels.
        unlabeled_category
            The value of that column that marks a cell without a label (e.g. ``"Unknown"``);
            cells with no value (NaN) are unlabelled too. If no cell is unlabelled, training
            is fully supervised (with a warning).
        layer, batch_key, size_factor_key, categorical_covariate_keys, continuous_covariate_keys
            As for :meth:`cellvi.SCVI.setup_anndata`.

        Examples
        --------
        >>> adata.obs["labels"] = adata.obs["cell_type"].where(is_annotated, "Unknown")
        >>> cellvi.SCANVI.setup_anndata(adata, labels_key="labels", unlabeled_category="Unknown")
        """
        if labels_key is None:
            raise ValueError("SCANVI needs labels_key: the obs column of the cell labels")
        cls._setup(adata, layer=layer, batch_key=batch_key, labels_key=labels_key,
                   unlabeled_category=unlabeled_category, size_factor_key=size_factor_key,
                   categorical_covariate_keys=categorical_covariate_keys,
                   continuous_covariate_keys=continuous_covariate_keys)

    @classmethod
    def from_scvi_model(cls, scvi_model: SCVI, unlabeled_category, labels_key: str | None = None,
                        adata=None, **scanvi_kwargs) -> "SCANVI":
        """A scANVI model that starts from a trained scVI model's weights (usually trained
        only a few more epochs: the default ``max_epochs`` of :meth:`train` is then small).

        Parameters
        ----------
        scvi_model
            A trained :class:`SCVI` (or :class:`LinearSCVI`).
        unlabeled_category
            The value of the labels column that marks unlabelled cells.
        labels_key
            obs column of the labels; default: the one ``scvi_model`` was set up with.
        adata
            AnnData to train on; default: the scVI model's own.
        **scanvi_kwargs
            ``classification_ratio``, ``linear_classifier``.

        Examples
        --------
        >>> scanvi = cellvi.SCANVI.from_scvi_model(scvi, "Unknown", labels_key="cell_type")
        >>> scanvi.train()
        """
        if not isinstance(scvi_model, SCVI):
            raise TypeError(f"scvi_model must be a cellvi SCVI or LinearSCVI model, got {type(scvi_model).__name__}")
        if not scvi_model.is_trained:
            raise ValueError("the scVI model is not trained; train it first")
        if scvi_model._query is not None:
            raise ValueError("the scVI model is a query model; build scANVI from the reference and map the query with SCANVI.load_query_data")
        adata = scvi_model._anndata(adata)
        registry = scvi_model.registry.with_labels(adata, labels_key, unlabeled_category, cls.__name__)
        tensors = registry.tensors(adata)
        model = cls(adata, _registry=registry, _tensors=tensors,
                    **{**scvi_model._module_kwargs(), **scanvi_kwargs})
        _copy_weights(scvi_model.module, model.module)  # the VAE part; scANVI's own layers stay new
        model._from_scvi = True
        return model

    # -- module --------------------------------------------------------------------------------
    def _build_module(self) -> SCANVAE:
        return SCANVAE(**vae_arguments(self))

    # -- training ------------------------------------------------------------------------------
    def train(self, max_epochs: int | None = None, n_samples_per_label: int | None = None,
              **kwargs) -> "SCANVI":
        """Train semi-supervised: every minibatch of all cells comes with a minibatch of
        labelled training cells for the classifier.

        Parameters
        ----------
        max_epochs
            Default as for SCVI; for a model made by :meth:`from_scvi_model`, a third of that,
            between 2 and 10.
        n_samples_per_label
            Use at most this many labelled cells of each label for the classification loss,
            drawn anew every epoch (balances rare and common types); default: all.
        **kwargs
            As for :meth:`cellvi.SCVI.train` (``batch_size``, ``lr``, ``device``, ...).
            ``train_size`` applies to the labelled and the unlabelled cells separately (as in
            scvi-tools): ``ceil(train_size * n)`` of the ``n`` labelled cells always train.

        Examples
        --------
        >>> model.train(max_epochs=100, n_samples_per_label=100)
        """
        if max_epochs is None and self._from_scvi and self.adata is not None:
            max_epochs = int(min(10, max(2, round(default_max_epochs(BaseModel, self.adata.n_obs) / 3.0))))
        self._n_samples_per_label = (as_count(n_samples_per_label, "n_samples_per_label")
                                     if n_samples_per_label is not None else None)
        return super().train(max_epochs, **kwargs)

    def _split_groups(self):
        # Labelled and unlabelled cells are split apart, as scvi-tools does: the classifier
        # then always trains on ceil(train_size * n) of the n labelled cells. One split of all
        # cells let that number vary from seed to seed (80 instead of 81 of 90 in one case).
        return self._is_labelled()

    def _is_labelled(self) -> np.ndarray:
        """Whether each cell has a label (unlabelled cells have code n_labels)."""
        return np.asarray(self._tensors().labels) < self.registry.n_labels

    def _labelled_indices(self, train_indices: np.ndarray):
        labels = self._tensors().labels[train_indices]
        n_labels, cap = self.registry.n_labels, self._n_samples_per_label
        if cap is None:
            return train_indices[self._is_labelled()[train_indices]]
        by_label = [train_indices[labels == k] for k in range(n_labels)]
        rng = np.random.default_rng(settings.seed)

        def draw(epoch: int) -> np.ndarray:
            # A new subset every epoch (as scvi-tools does), so that over training the
            # classifier sees every labelled cell of a common type, a few at a time.
            return np.sort(np.concatenate([rng.permutation(cells)[:cap] for cells in by_label]))

        return draw

    # -- queries -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, adata=None, indices=None, soft: bool = False, batch_size: int | None = None):
        """Predicted labels of cells.

        Parameters
        ----------
        adata
            AnnData with the model's genes (and batch column); default: the model's own. A
            labels column is not needed.
        indices
            Cells to predict (integers or a boolean mask); default: all.
        soft
            Return the probability of every label (a DataFrame, cells x labels) instead of
            the most probable label's name.
        batch_size
            Cells per minibatch.

        Returns
        -------
        An array of label names, or with ``soft=True`` a DataFrame indexed by cell names.

        Examples
        --------
        >>> adata.obs["predicted"] = model.predict()
        >>> confidence = model.predict(soft=True).max(axis=1)
        """
        probs = [torch.softmax(self.module.classify(tensors), dim=-1).cpu()
                 for tensors in self._minibatches(adata, indices, batch_size)]
        probs = torch.cat(probs).numpy()
        categories = self.registry.label_categories
        if soft:
            return pd.DataFrame(probs, index=self._obs_names(adata, indices), columns=categories)
        return np.asarray(categories, dtype=object)[probs.argmax(axis=1)]
