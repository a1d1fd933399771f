"""AutoZI: which genes are zero-inflated (Clivio et al. 2019)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.special import betainc

from .. import _constants as C
from ..analysis import ExpressionMixin
from ..modules import AUTOZIVAE
from ._base import BaseModel
from ._mixins import VAEMixin
from ._scvi import vae_arguments, vae_settings


class AUTOZI(VAEMixin, ExpressionMixin, BaseModel):
    """AutoZI (Clivio et al. 2019): for each gene, whether its zeros need zero inflation.

    scVI's model in which each gene's counts are negative binomial (NB) with probability
    delta_g and zero-inflated NB (ZINB) otherwise; delta_g has a Beta prior, and the model
    learns a Beta posterior of it per gene (:meth:`get_alphas_betas`). A gene is called
    zero-inflated when the posterior puts more than half its mass on delta_g < 0.5
    (:meth:`get_zero_inflation`, as scvi-tools' tutorial does). The latent space, normalized
    expression and differential expression are scVI's.

    The mixture delta NB + (1 - delta) ZINB(pi) is a ZINB with zero-inflation (1 - delta) pi,
    so training costs what scVI's ZINB costs and uses its fast likelihood (see
    :mod:`cellvi.modules._autozivae`). Differences from scvi-tools 1.4.2
    (``scvi.model.AUTOZI``):

    - ``beta_prior`` is used as given; scvi-tools' per-gene model sets the prior's beta to
      ``alpha_prior`` (the same with the default 0.5 and 0.5).
    - ``alpha_prior=None, beta_prior=None`` (a learned prior) works for every
      ``zero_inflation``; scvi-tools fails to build it per batch or label.
    - :meth:`get_marginal_ll` is a per-cell importance-sampled estimate (see there);
      scvi-tools' is one estimate for the whole data set, divided by its number of cells.
    - As in scvi-tools, the training loss is scaled so that Adam runs as on scvi-tools'
      loss, which is the number of training cells times this one (see :meth:`train`), and
      with its KL warm-up of z (400 epochs, not shortened for short runs).

    The calls settle slowly: the Beta parameters learn from noisy reparameterised gradients,
    in scvi-tools as here. On kang_se_12261 (12,261 PBMCs x 1,287 genes, batch = sample, one
    thread), after 100 epochs at lr 1e-3 two scvi-tools seeds agreed on 70% of the calls and
    this implementation (its warm-up then capped) with scvi-tools on 69-73%; after 200 epochs at lr 1e-2 over 92% of
    genes had P < 0.1 or > 0.9 in every run, two scvi-tools seeds agreed on 98.4% and this
    implementation with scvi-tools on 98.1-98.5% (both called 92.5-92.9% of the genes
    zero-inflated); training speed against scvi-tools is in ``benchmarks/RESULTS.md``. Check
    that the calls are stable (e.g. two seeds) before reading them.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    n_hidden, n_latent, n_layers, dropout_rate
        Network size: hidden units per layer, latent dimensions, hidden layers, dropout.
    dispersion
        ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``: what the NB inverse
        dispersion depends on.
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal).
    alpha_prior, beta_prior
        Parameters of the Beta prior of delta, each strictly between 0 and 1. One of them
        None: 1 minus the other; both None: the prior is learned (empirical Bayes).
    minimal_dropout
        Lower bound of the ZINB component's zero-inflation probability (>= 0; 0 can make the
        mixture ill-posed: a ZINB with no extra zeros is an NB).
    zero_inflation
        What delta depends on: ``"gene"``, ``"gene-batch"`` (a delta per gene and batch) or
        ``"gene-label"`` (per gene and label).
    use_observed_lib_size
        Use each cell's total count as its library size (else it is learned).
    **kwargs
        Further settings of :class:`cellvi.modules.VAE` (``encode_covariates``,
        ``deeply_inject_covariates``, ``use_batch_norm``, ``use_layer_norm``,
        ``log_variational``).

    Examples
    --------
    >>> import cellvi, anndata
    >>> adata = anndata.read_h5ad("pbmc.h5ad")
    >>> cellvi.AUTOZI.setup_anndata(adata, batch_key="donor")
    >>> model = cellvi.AUTOZI(adata)
    >>> model.train(max_epochs=200)
    >>> calls = model.get_zero_inflation()
    >>> calls["is_zi"].mean()                      # fraction of zero-inflated genes
    >>> adata.var = adata.var.join(calls)
    """

    # Trained with the trainer's default, scvi-tools' KL warm-up (400 epochs, not capped: a
    # short run ends below full weight). The calls depend on it: on kang (lr 1e-2, 50 epochs,
    # seeds 0-1) a warm-up capped at 3/4 of the run called 0.62-0.63 of genes zero-inflated,
    # 23-24% of them confidently (P < 0.1 or > 0.9), against scvi-tools' 0.67 and 29%;
    # uncapped, 0.67-0.69 and 27-28%.

    def __init__(self, adata=None, n_hidden: int = 128, n_latent: int = 10, n_layers: int = 1,
                 dropout_rate: float = 0.1, dispersion: str = "gene", latent_distribution: str = "normal",
                 alpha_prior: float | None = 0.5, beta_prior: float | None = 0.5, minimal_dropout: float = 0.01,
                 zero_inflation: str = "gene", use_observed_lib_size: bool = True, **kwargs):
        if "gene_likelihood" in kwargs:
            raise TypeError("AUTOZI has no gene_likelihood: each gene's likelihood is a mixture of NB and ZINB "
                            "that the model learns")
        settings = vae_settings(n_hidden, n_latent, n_layers, dropout_rate, dispersion, "zinb", latent_distribution)
        del settings["gene_likelihood"]
        for name, value in (("alpha_prior", alpha_prior), ("beta_prior", beta_prior)):
            if value is not None and not isinstance(value, bool) and isinstance(value, (int, float, np.number)):
                value = float(value)
            settings[name] = value
        super().__init__(adata, **settings, minimal_dropout=minimal_dropout, zero_inflation=zero_inflation,
                         use_observed_lib_size=bool(use_observed_lib_size), **kwargs)

    @classmethod
    def setup_anndata(
        cls,
        adata,
        batch_key: str | None = None,
        labels_key: str | None = None,
        layer: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Check ``adata`` and record which of its parts the model uses.

        Nothing is written into ``adata``.

        Parameters
        ----------
        adata
            AnnData with raw counts (cells x genes; sparse or dense; a view works).
        batch_key
            obs column of the batch (needed for ``zero_inflation="gene-batch"``).
        labels_key
            obs column of cell labels (needed for ``zero_inflation="gene-label"``).
        layer
            Key in ``adata.layers`` holding the counts; ``None`` uses ``adata.X``.
        size_factor_key
            obs column of positive size factors; replaces the observed library size.
        categorical_covariate_keys, continuous_covariate_keys
            obs columns of further covariates, injected into the decoder (scvi-tools' AutoZI
            has none).

        Examples
        --------
        >>> cellvi.AUTOZI.setup_anndata(adata, batch_key="donor", layer="counts")
        """
        cls._setup(adata, layer=layer, batch_key=batch_key, labels_key=labels_key,
                   size_factor_key=size_factor_key, categorical_covariate_keys=categorical_covariate_keys,
                   continuous_covariate_keys=continuous_covariate_keys)

    def _build_module(self) -> AUTOZIVAE:
        needed = {"gene-batch": ("batch_key", self.registry.batch_key),
                  "gene-label": ("labels_key", self.registry.labels_key)}.get(self.init_kwargs["zero_inflation"])
        if needed is not None and needed[1] is None:
            raise ValueError(f"zero_inflation={self.init_kwargs['zero_inflation']!r} needs groups of cells: pass "
                             f"{needed[0]}= to AUTOZI.setup_anndata (or use zero_inflation='gene')")
        return AUTOZIVAE(**vae_arguments(self))

    def train(self, max_epochs: int | None = None, device: str = "auto", train_size: float = 0.9,
              validation_size: float | None = None, batch_size: int = 128, early_stopping: bool = False,
              early_stopping_patience: int = 45, lr: float | None = None, weight_decay: float | None = None,
              eps: float | None = None, n_epochs_kl_warmup: int | None = 400, limit_train_batches=None,
              progress_bar: bool | None = None, plan_kwargs: dict | None = None) -> "AUTOZI":
        """Train the model on its AnnData.

        Arguments as for :meth:`cellvi.SCVI.train`. The loss per minibatch is the mean over
        its cells plus the Beta KL divided by the number of training cells. scvi-tools
        minimises that times the number of training cells; Adam takes the same steps on both
        except for its ``eps`` and weight decay, so their defaults (0.01 and 1e-6, as for
        scVI) are divided by the number of training cells here, and an ``eps`` or
        ``weight_decay`` given is read on scvi-tools' scale too.

        Examples
        --------
        >>> model.train(max_epochs=200)
        >>> model.history[["elbo_train", "kl_global_train"]].plot()
        """
        plan_kwargs = dict(plan_kwargs or {})
        if self.adata is not None:
            n_train = math.ceil(float(train_size) * self.adata.n_obs)
            plan_kwargs["loss_kwargs"] = {"n_obs": n_train, **plan_kwargs.get("loss_kwargs", {})}
            eps = (0.01 if eps is None else float(eps)) / n_train
            weight_decay = (1e-6 if weight_decay is None else float(weight_decay)) / n_train
        return super().train(max_epochs=max_epochs, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size,
                             early_stopping=early_stopping, early_stopping_patience=early_stopping_patience,
                             lr=lr, weight_decay=weight_decay, eps=eps, n_epochs_kl_warmup=n_epochs_kl_warmup,
                             limit_train_batches=limit_train_batches, progress_bar=progress_bar,
                             plan_kwargs=plan_kwargs)

    # -- queries -------------------------------------------------------------------------------
    @torch.no_grad()
    def get_alphas_betas(self, as_numpy: bool = True) -> dict:
        """Parameters of the Beta posterior and prior of each gene's NB weight delta.

        Returns
        -------
        A dict (as scvi-tools returns) with ``alpha_posterior`` and ``beta_posterior``
        (one value per gene, in the model's gene order; genes x batches or labels with
        ``zero_inflation="gene-batch"`` or ``"gene-label"``) and ``alpha_prior`` and
        ``beta_prior``; NumPy arrays, or tensors with ``as_numpy=False``.

        Examples
        --------
        >>> ab = model.get_alphas_betas()
        >>> mean_delta = ab["alpha_posterior"] / (ab["alpha_posterior"] + ab["beta_posterior"])
        """
        out = {k: v.detach() for k, v in self.module.alphas_betas().items()}
        return {k: v.cpu().numpy() for k, v in out.items()} if as_numpy else out

    def _zero_inflation_groups(self) -> list[str] | None:
        mode = self.module.zero_inflation
        if mode == "gene":
            return None
        return self.registry.batch_categories if mode == "gene-batch" else self.registry.label_categories

    def get_zero_inflation(self, threshold: float = 0.5, prob_threshold: float = 0.5) -> pd.DataFrame:
        """Per gene: the Beta posterior of delta, the probability that the gene is
        zero-inflated, and the call.

        A gene is zero-inflated when its NB weight delta is below ``threshold``; its
        probability of that, ``prob_zi``, is the Beta posterior's CDF at ``threshold``, and
        ``is_zi`` is ``prob_zi > prob_threshold`` (scvi-tools' tutorial: 0.5 and 0.5).

        Parameters
        ----------
        threshold
            delta below which a gene counts as zero-inflated.
        prob_threshold
            Posterior probability above which a gene is called zero-inflated.

        Returns
        -------
        A DataFrame indexed by gene (the model's order) with columns ``alpha_posterior``,
        ``beta_posterior``, ``prob_zi`` and ``is_zi``; with ``zero_inflation="gene-batch"``
        or ``"gene-label"``, one such column per batch or label, named
        ``<column>_<category>``.

        Examples
        --------
        >>> calls = model.get_zero_inflation()
        >>> calls.sort_values("prob_zi", ascending=False).head()
        >>> zi_genes = calls.index[calls["is_zi"]]
        """
        for name, value in (("threshold", threshold), ("prob_threshold", prob_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
        ab = self.get_alphas_betas()
        alpha = ab["alpha_posterior"].astype(np.float64)
        beta = ab["beta_posterior"].astype(np.float64)
        prob = betainc(alpha, beta, float(threshold))
        values = {"alpha_posterior": alpha, "beta_posterior": beta, "prob_zi": prob, "is_zi": prob > prob_threshold}
        groups = self._zero_inflation_groups()
        if groups is None:
            return pd.DataFrame(values, index=pd.Index(self.var_names))
        columns = {f"{name}_{group}": column[:, j] for name, column in values.items()
                   for j, group in enumerate(groups)}
        return pd.DataFrame(columns, index=pd.Index(self.var_names))

    def get_marginal_ll(self, adata=None, indices=None, n_mc_samples: int = 1000,
                        batch_size: int | None = None, return_mean: bool = True):
        """Importance-sampled estimate of log p(x) per cell: a negative number, higher is better.

        Each importance sample draws z from q(z | x) and the genes' NB weights delta from
        their posterior q(delta): the estimate is of log p(x_n) with delta integrated over its
        posterior (the cell's posterior predictive density), comparable with
        :meth:`cellvi.SCVI.get_marginal_ll` of a model fitted to the same genes (which plugs
        in its fitted parameters). scvi-tools' AutoZI estimate differs: one value for the
        whole data set (delta shared by all cells, with one z draw per cell and the Beta
        prior's density ratio), divided by the number of cells.

        Parameters
        ----------
        n_mc_samples
            Importance samples per cell.
        return_mean
            The mean over cells (a float); ``False`` gives one value per cell.

        Examples
        --------
        >>> held_out = model.validation_indices
        >>> model.get_marginal_ll(indices=held_out, n_mc_samples=200)
        """
        return super().get_marginal_ll(adata, indices, n_mc_samples, batch_size, return_mean)
