"""CondSCVI: scVI conditioned on cell type, the single-cell reference of DestVI."""
from __future__ import annotations

import numpy as np
import torch

from .. import _constants as C
from .._settings import settings
from ..data import AnnTensors, CategoricalObsField, LayerField, Registry
from ..data._backed import row_sums
from ..modules import CondVAE
from ..train import as_count
from ._base import BaseModel
from ._mixins import VAEMixin
from ._spatial import check_reference_labels


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 10, n_iter: int = 100) -> np.ndarray:
    """Cluster labels of ``points`` into ``k`` clusters (k-means++ starts, Lloyd's iterations,
    the best of ``n_init`` runs by within-cluster sum of squares)."""
    n = len(points)
    if k >= n:
        return np.arange(n)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = [points[rng.integers(n)]]
        for _ in range(1, k):
            d2 = ((points[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(1)
            total = d2.sum()
            centres.append(points[rng.choice(n, p=d2 / total)] if total > 0 else points[rng.integers(n)])
        centres = np.asarray(centres)
        for _ in range(n_iter):
            labels = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            new = np.asarray([points[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)])
            if np.allclose(new, centres):
                break
            centres = new
        inertia = ((points - centres[labels]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    _, best = np.unique(best, return_inverse=True)  # empty clusters leave no gap
    return best


class CondSCVI(VAEMixin, BaseModel):
    """CondSCVI (Lopez et al. 2022): a VAE of single cells conditioned on their (known) cell
    type; the reference from which :class:`cellvi.DestVI` deconvolves spots.

    Each cell type has its own latent space of cell states (``n_latent`` dimensions, 5 by
    default): the encoder and decoder both see the type in every layer. DestVI then describes
    each type in each spot by a state in that space, decoded by this model's decoder.

    Parameters
    ----------
    adata
        Single-cell reference set up with :meth:`setup_anndata` (raw counts, cell types).
    n_hidden, n_latent, n_layers
        Hidden units per layer, latent dimensions, hidden layers of encoder and decoder.
    weight_obs
        Weight each cell by the inverse frequency of its type (types under 5% counted as 5%),
        so that rare types shape the networks as much as common ones.
    dropout_rate
        Dropout of encoder and decoder.
    prior
        ``"normal"``: z ~ N(0, I) (DestVI then fits its prior of the states from the cells,
        :meth:`get_vamp_prior`); ``"mog"``: a learned mixture of ``num_classes_mog`` Gaussians
        per cell type, which DestVI takes as the prior of the states.
    num_classes_mog
        Components of the ``"mog"`` prior per cell type.

    Examples
    --------
    >>> cellvi.CondSCVI.setup_anndata(sc_adata, labels_key="cell_type")
    >>> sc_model = cellvi.CondSCVI(sc_adata)
    >>> sc_model.train()
    >>> st_model = cellvi.DestVI.from_rna_model(st_adata, sc_model)
    """

    _plan_defaults = {"lr": 1e-3, "weight_decay": 1e-6, "eps": 0.01}

    def __init__(self, adata=None, n_hidden: int = 128, n_latent: int = 5, n_layers: int = 2,
                 weight_obs: bool = False, dropout_rate: float = 0.05, prior: str = "normal",
                 num_classes_mog: int = 10, *, _registry: Registry | None = None, _tensors: AnnTensors | None = None):
        kwargs = dict(n_hidden=as_count(n_hidden, "n_hidden"), n_latent=as_count(n_latent, "n_latent"),
                      n_layers=as_count(n_layers, "n_layers"), weight_obs=bool(weight_obs),
                      dropout_rate=float(dropout_rate), prior=prior,
                      num_classes_mog=as_count(num_classes_mog, "num_classes_mog"))
        if not 0.0 <= kwargs["dropout_rate"] < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        super().__init__(adata, _registry=_registry, _tensors=_tensors, **kwargs)

    @classmethod
    def setup_anndata(cls, adata, labels_key: str | None = None, layer: str | None = None,
                      batch_key: str | None = None) -> None:
        """Check the reference and record its counts, cell types and batches.

        Parameters
        ----------
        adata
            Single-cell AnnData with raw counts (cells x genes).
        labels_key
            obs column of each cell's type (required). Types with fewer than 10 cells warn.
        layer
            Layer holding the raw counts (default: ``adata.X``).
        batch_key
            obs column of the batch (injected into the decoder; DestVI decodes spots as the
            first batch unless told otherwise).

        Examples
        --------
        >>> cellvi.CondSCVI.setup_anndata(sc_adata, labels_key="cell_type", layer="counts")
        """
        check_reference_labels(adata, labels_key, cls.__name__)
        cls._setup(adata, [
            LayerField(C.X_KEY, layer),
            CategoricalObsField(C.LABELS_KEY, labels_key, "labels_key", query="known"),
            CategoricalObsField(C.BATCH_KEY, batch_key, "batch_key", query="new"),
        ])

    @property
    def cell_types(self) -> list[str]:
        """The reference's cell types, in the model's order."""
        return list(self.registry.label_categories)

    def _build_module(self) -> CondVAE:
        kwargs = self._module_kwargs()
        weight_obs = kwargs.pop("weight_obs")
        reg = self.registry
        ct_weight = None
        if weight_obs and self.adata is not None:
            counts = np.bincount(self._tensors()[C.LABELS_KEY], minlength=reg.n_labels).astype(np.float64)
            prop = np.maximum(counts / counts.sum(), 0.05)
            ct_weight = 1.0 / (prop / prop.sum())
        return CondVAE(reg.n_vars, reg.n_labels, reg.n_batch, ct_weight=ct_weight, **kwargs)

    def train(self, max_epochs: int = 300, lr: float | None = None, device: str = "auto", train_size: float = 1.0,
              validation_size: float | None = None, batch_size: int = 128, **kwargs) -> "CondSCVI":
        """Train on the reference (defaults as scvi-tools: 300 epochs, lr 1e-3, all cells).

        Parameters
        ----------
        max_epochs, lr, device, train_size, validation_size, batch_size
            As for :meth:`cellvi.SCVI.train`; by default every cell trains (``train_size=1``).
        **kwargs
            Further arguments of :meth:`cellvi.models.BaseModel.train` (``early_stopping``,
            ``n_epochs_kl_warmup``, ``progress_bar``, ``plan_kwargs`` ...).

        Examples
        --------
        >>> sc_model.train(max_epochs=200)
        >>> sc_model.history["elbo_train"].plot()
        """
        return super().train(max_epochs=max_epochs, lr=lr, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size, **kwargs)

    def _mean_counts_per_type(self, genes) -> np.ndarray | None:
        """Each cell type's mean count per cell over ``genes`` (positions among this model's
        genes) in its reference data; None when the model holds no AnnData."""
        if self.adata is None:
            return None
        tensors = self._tensors()
        counts = row_sums(tensors[C.X_KEY], genes)  # the reference may be on disk
        labels = np.asarray(tensors[C.LABELS_KEY]).ravel().astype(np.int64)
        k = self.registry.n_labels
        cells = np.bincount(labels, minlength=k)
        mean = np.bincount(labels, weights=counts, minlength=k) / np.maximum(cells, 1)
        # A type without counts on these genes cannot be seen in the spots; a floor keeps its
        # (meaningless) loading from being divided by zero.
        positive = mean[mean > 0]
        return np.maximum(mean, 0.01 * np.median(positive) if positive.size else 1.0)

    @torch.no_grad()
    def get_vamp_prior(self, adata=None, p: int = 15) -> dict[str, np.ndarray]:
        """An empirical prior of each cell type's states (DestVI's prior of gamma).

        With ``prior="normal"``, the cells of each type are split into ``p`` clusters by
        k-means of their latent means; each cluster is a Gaussian with the cluster's mean and
        variance (variance of the means plus the mean posterior variance), weighted by its
        share of the type's cells. A type with fewer than ``p`` cells gets one component per
        cell (the rest weight 0). With ``prior="mog"``, the learned mixture is returned.

        Returns
        -------
        ``{"mean_vprior": types x p x n_latent, "var_vprior": types x p x n_latent,
        "weights_vprior": types x p}``.

        Examples
        --------
        >>> prior = sc_model.get_vamp_prior(p=15)
        >>> prior["mean_vprior"].shape
        (11, 15, 5)
        """
        p = as_count(p, "p")
        module = self.module
        if module.prior == "mog":
            return {"mean_vprior": module.prior_means.detach().cpu().numpy(),
                    "var_vprior": (torch.exp(module.prior_log_std) + 1e-4).square().detach().cpu().numpy(),
                    "weights_vprior": torch.softmax(module.prior_logits, -1).detach().cpu().numpy()}
        means, variances = [], []
        for tensors in self._minibatches(adata):
            inf = module.inference(**module.inference_inputs(tensors))
            means.append(inf["qz_mean"].cpu())
            variances.append(inf["qz_var"].cpu())
        means = torch.cat(means).double().numpy()
        variances = torch.cat(variances).double().numpy()
        data = self._data(adata)
        labels = data.obs[C.LABELS_KEY].cpu().numpy()
        k, d = self.registry.n_labels, module.n_latent
        mean_v, var_v, w_v = np.zeros((k, p, d)), np.ones((k, p, d)), np.zeros((k, p))
        rng = np.random.default_rng(settings.seed)
        for c in range(k):
            cells = np.flatnonzero(labels == c)
            if cells.size == 0:
                raise ValueError(f"cell type '{self.cell_types[c]}' has no cells in this AnnData; the prior of its "
                                 "states needs them")
            clusters = kmeans(means[cells], p, rng)
            for j in range(clusters.max() + 1):
                members = cells[clusters == j]
                mean_v[c, j] = means[members].mean(0)
                var_v[c, j] = variances[members].mean(0) + means[members].var(0)
                w_v[c, j] = members.size / cells.size
        return {"mean_vprior": mean_v.astype(np.float32), "var_vprior": var_v.astype(np.float32),
                "weights_vprior": w_v.astype(np.float32)}
