"""scVI and its linear-decoder variant (LDVAE)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from typing import Sequence

from ..analysis import ExpressionMixin
from ..autotune._space import choice, loguniform
from ..modules import VAE
from ..train import as_count
from ._base import BaseModel
from ._mixins import MappingMixin, VAEMixin


# The default search space of cellvi.autotune for scVI-like models: what the reference study
# tuned (learning rate, depth, width, latent size, dropout, count likelihood), around the
# defaults (which every range contains: the first trial is the defaults).
VAE_TUNE_SPACE = {
    "model_params": {"n_hidden": choice([64, 128, 256]), "n_latent": choice([5, 10, 20, 30]),
                     "n_layers": choice([1, 2, 3]), "dropout_rate": choice([0.0, 0.05, 0.1, 0.2]),
                     "gene_likelihood": choice(["zinb", "nb"])},
    "train_params": {"lr": loguniform(1e-4, 1e-2)},
}


def library_log_stats(model: BaseModel) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the log library size per batch (the learned library's prior)."""
    tensors = model._tensors()
    log_lib = np.log(np.asarray(tensors.X.sum(axis=1)).ravel())
    n_batch = model.registry.n_batch
    means, variances = np.zeros(n_batch, np.float32), np.ones(n_batch, np.float32)
    for b in range(n_batch):
        values = log_lib[tensors.batch == b]
        if values.size:
            means[b], variances[b] = values.mean(), max(values.var(), 1e-4)
    return means, variances


def library_prior_arguments(model: BaseModel) -> dict:
    """``library_log_means``/``library_log_vars`` of a module with a learned library size:
    from the model's data, or placeholders when it is being loaded (the saved buffers
    replace them)."""
    if model.adata is not None:
        means, variances = library_log_stats(model)
    else:
        means = np.zeros(model.registry.n_batch, np.float32)
        variances = np.ones(model.registry.n_batch, np.float32)
    return {"library_log_means": means, "library_log_vars": variances}


def vae_settings(n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood,
                 latent_distribution) -> dict:
    """The network settings every scVI-family model takes, checked (whole numbers may arrive
    as floats from R)."""
    return dict(n_hidden=as_count(n_hidden, "n_hidden"), n_latent=as_count(n_latent, "n_latent"),
                n_layers=as_count(n_layers, "n_layers"), dropout_rate=float(dropout_rate),
                dispersion=dispersion, gene_likelihood=gene_likelihood,
                latent_distribution=latent_distribution)


def vae_arguments(model: BaseModel) -> dict:
    """Arguments of a :class:`VAE` (or subclass) for ``model``: sizes from its registry, its
    own settings, and the library prior's statistics when the library size is learned."""
    kwargs = model._module_kwargs()
    reg = model.registry
    if not kwargs.get("use_observed_lib_size", True):
        kwargs.update(library_prior_arguments(model))
    return dict(n_input=reg.n_vars, n_batch=reg.n_batch, n_labels=reg.n_labels,
                n_continuous_cov=reg.n_continuous_cov, n_cats_per_cov=reg.n_cats_per_cov, **kwargs)


class SCVI(VAEMixin, ExpressionMixin, MappingMixin, BaseModel):
    """Single-cell variational inference (Lopez et al. 2018): a latent space of the counts with
    batch effects removed, and normalized expression.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    n_hidden, n_latent, n_layers, dropout_rate
        Network size: hidden units per layer, latent dimensions, hidden layers, dropout.
    dispersion
        ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``: what the NB inverse
        dispersion depends on.
    gene_likelihood
        ``"zinb"`` (default, as scvi-tools), ``"nb"`` or ``"poisson"``. For UMI counts
        (10x and other droplet data) ``"nb"`` is usually the better choice when normalized
        expression or differential expression of marker genes matters: UMI counts are
        described well by a negative binomial, and a ZINB model can explain a gene's absence
        from a cell type by zero inflation while keeping its NB mean high there; normalized
        expression leaves the zero inflation out, so the gene then looks expressed where it
        is absent. On kang (25 epochs, 5 seeds) ZINB gave 11-22 such (gene, cell type) pairs,
        as scvi-tools' ZINB does, NB 1-3 (``benchmarks/bench_expression_fidelity.py``). ZINB
        suits read counts of full-length protocols (e.g. Smart-seq2).
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal).
    **module_kwargs
        Further settings of :class:`cellvi.modules.VAE` (``use_observed_lib_size``,
        ``encode_covariates``, ``deeply_inject_covariates``, ``use_batch_norm``,
        ``use_layer_norm``, ``log_variational``).

    Examples
    --------
    >>> import cellvi, anndata
    >>> adata = anndata.read_h5ad("pbmc.h5ad")
    >>> cellvi.SCVI.setup_anndata(adata, batch_key="donor")
    >>> model = cellvi.SCVI(adata, n_latent=10)
    >>> model.train(max_epochs=100)
    >>> adata.obsm["X_scVI"] = model.get_latent_representation()
    """

    # cellvi.autotune's default search space (LinearSCVI inherits it).
    _tune_space = VAE_TUNE_SPACE

    def __init__(self, adata=None, n_hidden: int = 128, n_latent: int = 10, n_layers: int = 1,
                 dropout_rate: float = 0.1, dispersion: str = "gene", gene_likelihood: str = "zinb",
                 latent_distribution: str = "normal", **kwargs):
        super().__init__(adata, **vae_settings(n_hidden, n_latent, n_layers, dropout_rate, dispersion,
                                               gene_likelihood, latent_distribution), **kwargs)

    @classmethod
    def setup_anndata(
        cls,
        adata,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Check ``adata`` and record which of its parts the model uses.

        Nothing is written into ``adata``: the setup is remembered for this object until the
        model is built from it. Every check runs here, so a model's construction and training
        do not fail on bad input later.

        Parameters
        ----------
        adata
            AnnData with raw counts (cells x genes; sparse or dense; a view works).
        layer
            Key in ``adata.layers`` holding the counts; ``None`` uses ``adata.X``.
        batch_key
            obs column of the batch (integers or strings); its effect is removed from the latent.
        labels_key
            obs column of cell labels (used by ``dispersion="gene-label"`` and label models).
        size_factor_key
            obs column of positive size factors; replaces the observed library size.
        categorical_covariate_keys, continuous_covariate_keys
            obs columns of further covariates, injected into the decoder.

        Examples
        --------
        >>> import cellvi, anndata
        >>> adata = anndata.read_h5ad("pbmc.h5ad")
        >>> cellvi.SCVI.setup_anndata(adata, batch_key="donor")
        """
        cls._setup(adata, layer=layer, batch_key=batch_key, labels_key=labels_key,
                   size_factor_key=size_factor_key, categorical_covariate_keys=categorical_covariate_keys,
                   continuous_covariate_keys=continuous_covariate_keys)

    def _build_module(self) -> VAE:
        return VAE(**vae_arguments(self))


class LinearSCVI(SCVI):
    """scVI with a linear decoder (LDVAE; Svensson et al. 2020): each latent dimension has
    interpretable gene loadings (:meth:`get_loadings`).

    Defaults differ from :class:`SCVI`: ``gene_likelihood="nb"`` and a decoder without bias,
    with BatchNorm.

    Examples
    --------
    >>> cellvi.LinearSCVI.setup_anndata(adata, batch_key="donor")
    >>> model = cellvi.LinearSCVI(adata, n_latent=10)
    >>> model.train(max_epochs=100)
    >>> loadings = model.get_loadings()   # genes x latent dimensions
    """

    def __init__(self, adata=None, n_hidden: int = 128, n_latent: int = 10, n_layers: int = 1,
                 dropout_rate: float = 0.1, dispersion: str = "gene", gene_likelihood: str = "nb",
                 latent_distribution: str = "normal", **kwargs):
        kwargs.setdefault("use_batch_norm", "both")
        kwargs.setdefault("decoder_bias", False)
        super().__init__(adata, n_hidden, n_latent, n_layers, dropout_rate, dispersion,
                         gene_likelihood, latent_distribution, **kwargs)

    def _module_kwargs(self) -> dict:
        return {**self.init_kwargs, "linear_decoder": True}

    def get_loadings(self) -> pd.DataFrame:
        """Gene loadings of the linear decoder (genes x latent dimensions), BatchNorm folded in.

        Examples
        --------
        >>> model.get_loadings()["Z_0"].sort_values().tail(10)   # top genes of dimension 0
        """
        weights = self.module.decoder.loadings().cpu().numpy()
        return pd.DataFrame(weights, index=self.registry.var_names,
                            columns=[f"Z_{i}" for i in range(weights.shape[1])])
