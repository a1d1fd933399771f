"""Solo: doublet detection with a classifier on a trained scVI model (Bernstein et al. 2020)."""
from __future__ import annotations

import warnings
from typing import Sequence

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import _constants as C
from .._settings import settings
from ..data import AnnTensors, CategoricalObsField, LayerField, Registry
from ..data._fields import obs_column, preview
from ..data._registry import recall_setup
from ..modules import SoloClassifier
from ..train import as_count
from ._base import BaseModel
from ._scvi import SCVI

LABELS_KEY = "_solo_doub_sim"  # obs column of Solo's own AnnData: which cells are simulated
DOUBLET, SINGLET = "doublet", "singlet"
LIBRARY_FEATURE = "log_library"
SIMULATED_PREFIX = "sim_doublet_"
_MODULE_ARGS = ("n_hidden", "n_layers", "dropout_rate", "use_batch_norm", "use_layer_norm")


def simulate_doublets(X: sp.csr_matrix, n_doublets: int, rng: np.random.Generator
                      ) -> tuple[sp.csr_matrix, np.ndarray]:
    """Doublets as the summed counts of random pairs of two different cells (rows of ``X``).

    Returns the doublets' counts (CSR) and the pairs (n_doublets x 2 row positions).
    """
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"doublets need at least 2 cells to pair, got {n}")
    first = rng.integers(n, size=n_doublets)
    second = (first + rng.integers(1, n, size=n_doublets)) % n  # never the first cell itself
    return (X[first] + X[second]).tocsr(), np.stack([first, second], axis=1)


class SOLO(BaseModel):
    """Solo (Bernstein et al. 2020): doublet detection with a trained scVI model.

    :meth:`from_scvi_model` simulates doublets by summing the counts of random pairs of
    cells, encodes real cells and simulated doublets with the scVI model's encoder, and
    builds a classifier of the latent (posterior mean) and the log library size that tells
    simulated doublets from real cells. Real doublets resemble the simulated ones, so after
    :meth:`train`, :meth:`predict` gives each real cell's probability of being a doublet.
    Run it on one lane (10x channel) at a time: doublets form within a lane. With a scVI
    model of several batches, use ``restrict_to_batch`` or :meth:`predict_per_batch`.

    Differences from scvi-tools 1.4.2 (``scvi.external.SOLO``), and why. Measured on scds'
    cell-hashing cell lines (Stoeckius 2018: 1,917 droplets once the hashing "Negative"s are
    dropped, 216 of them doublets by their hashtags), each tool's scVI and Solo defaults:

    - Probabilities. The classifier is trained on ``doublet_ratio`` simulated doublets per
      real cell, so its odds of "doublet" carry that ratio; :meth:`predict` divides it out.
      scvi-tools reports the classifier's own probabilities, so that its calls follow
      ``doublet_ratio``: with 1, 2 and 5 it called 9.5%, 17-21% and 35-37% of the cells
      doublets (11.3% are); here 9-12% whatever the ratio, with as good or better F1
      (0.27-0.34 against 0.25-0.34; seeds 0-1).
    - The features are standardised (the log library, about 6-10, and the latent, about 0,
      enter on one scale): no change in accuracy here, and none of the network's scale
      depends on the data's depth.
    - Without ``restrict_to_batch``, doublets are simulated within each batch, each
      encoded with its batch; scvi-tools pairs cells across batches and encodes every
      doublet as the first batch. The two cells of a doublet are always different cells.
    - The library feature is the observed total count (scvi-tools uses the posterior mean
      when the scVI model learns the library size).

    Measured and left as scvi-tools has it, as nothing did better (AUROC means over seeds
    0-2 with the scVI latent fixed; 0.655 with scvi-tools' choices): the classifier (32 or
    128 hidden units, weight decay 1e-3, keeping the best epoch, 5-fold cross-fitting, an
    ensemble of 5: 0.650-0.655; 20 epochs instead of early stopping: 0.639), the
    simulation (2, 5 or 10 doublets per cell; doublets of unequal parts or of 1-2x a cell's
    depth: no better; thinned to one cell's depth: 0.52 in seed 0, so the depth is much of
    the signal) and the input (the latent alone 0.63, the library alone 0.60; adding the
    posterior variance, the detected genes or the ELBO: no gain; the encoder's hidden layer
    0.60; fine-tuning the encoder with the classifier, as the original Solo does, 0.65).
    The classifier tells scVI's training cells from cells it never saw a little (held-out
    singlets score higher, AUROC 0.59), but encoding each half of the cells with a scVI
    model of the other half gained only 0.007 (seed 0).

    End to end (seeds 0-4), AUROC and average precision: cellvi 0.645-0.658 (mean 0.654)
    and 0.250-0.275 (0.258); scvi-tools 0.647-0.666 (0.658) and 0.249-0.278 (0.264);
    cellvi's classifier on scvi-tools' latent 0.676 and 0.656 (seeds 0-1; scvi-tools' own
    0.666 and 0.657), so the difference lies in the scVI models. From a scVI model with
    ``gene_likelihood="nb"`` (what ``RunSolo`` in R trains): 0.649-0.679 (0.661) and
    0.267-0.288 (0.278), above scvi-tools' average precision in every seed: a scVI model
    with an NB likelihood is the better start for Solo. No method measured reaches an
    AUROC of 0.75 on these data: their 2,000 genes are a random subset holding a ninth of
    each cell's counts, real doublets have 1.26x a singlet's library (simulated ones 2.1x)
    and mostly look like one of their two cells; the mixture likelihood ratio with the
    true cell-line profiles reaches 0.68, scrublet 0.61-0.63, classifiers trained on the
    true labels 0.62-0.66.

    Parameters
    ----------
    adata
        Solo's own AnnData (cells x features: the latent and the log library of real and
        simulated cells, labels ``"singlet"`` / ``"doublet"``), set up with
        :meth:`setup_anndata`. Usually made by :meth:`from_scvi_model`.
    n_hidden, n_layers, dropout_rate
        The classifier's hidden layers.
    use_batch_norm, use_layer_norm
        Normalisation of the hidden layers.
    restrict_to_batch, doublet_ratio
        Recorded by :meth:`from_scvi_model` (the scVI batch scored, simulated doublets per
        real cell); informative only.
    training_cells
        Set when a saved model is loaded (its cells' features and labels); not for users.

    The classifier's inputs (the features of every real and simulated cell) are saved with
    the model, so a loaded Solo predicts without the scVI model or the data.

    Examples
    --------
    >>> cellvi.SCVI.setup_anndata(adata)
    >>> vae = cellvi.SCVI(adata, gene_likelihood="nb")
    >>> vae.train()
    >>> solo = cellvi.SOLO.from_scvi_model(vae)
    >>> solo.train()
    >>> adata.obs["doublet_score"] = solo.predict()["doublet"]
    >>> adata.obs["solo"] = solo.predict(soft=False)
    """

    # scvi-tools' classifier training: Adam, lr 1e-3; early stopping on the validation
    # cross-entropy (the trainer's per-cell term, "reconstruction_loss").
    _plan_defaults = {"lr": 1e-3, "weight_decay": 1e-6, "eps": 0.01, "n_epochs_kl_warmup": None,
                      "monitor": "reconstruction_loss_validation", "monitor_mode": "min",
                      "progress_metrics": {"cross_entropy": "reconstruction_loss", "accuracy": "accuracy"}}

    def __init__(self, adata=None, n_hidden: int = 128, n_layers: int = 1, dropout_rate: float = 0.1,
                 use_batch_norm: bool = True, use_layer_norm: bool = False, *,
                 restrict_to_batch: str | None = None, doublet_ratio: int | None = None,
                 training_cells: pd.DataFrame | None = None, _registry: Registry | None = None,
                 _tensors: AnnTensors | None = None):
        n_layers = as_count(n_layers, "n_layers", 0)
        n_hidden = as_count(n_hidden, "n_hidden")
        dropout_rate = float(dropout_rate)
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        if adata is None and _registry is not None and training_cells is not None:
            adata = _cells_anndata(training_cells, _registry)  # a loaded model: its cells come back
            _tensors = _registry.tensors(adata)
        elif _registry is None:
            _registry, _tensors = recall_setup(adata, type(self).__name__)
        _check_labels(_registry)
        if adata is not None:
            tensors = _tensors if _tensors is not None else _registry.tensors(adata)
            training_cells = _cells_table(adata, _registry, tensors)
        super().__init__(adata, _registry=_registry, _tensors=_tensors, n_hidden=n_hidden, n_layers=n_layers,
                         dropout_rate=dropout_rate, use_batch_norm=bool(use_batch_norm),
                         use_layer_norm=bool(use_layer_norm), restrict_to_batch=restrict_to_batch,
                         doublet_ratio=doublet_ratio, training_cells=training_cells)

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(cls, adata, labels_key: str = LABELS_KEY, layer: str | None = None) -> None:
        """Register Solo's own AnnData: the classifier's features (cells x features, any
        finite values) and the labels ``"singlet"`` (real cells) / ``"doublet"`` (simulated).

        :meth:`from_scvi_model` makes and registers such an AnnData; call this only to
        build a Solo from features of your own.

        Parameters
        ----------
        adata
            AnnData of features (``X`` or ``layer``) with an obs column of labels.
        labels_key
            obs column holding ``"singlet"`` and ``"doublet"``.
        layer
            Layer holding the features; ``None`` uses ``adata.X``.

        Examples
        --------
        >>> cellvi.SOLO.setup_anndata(features, labels_key="kind")
        >>> solo = cellvi.SOLO(features)
        """
        cls._setup(adata, [
            LayerField(C.X_KEY, layer, values="continuous", features="features"),
            CategoricalObsField(C.LABELS_KEY, labels_key, "labels_key", query="known"),
        ])

    def _build_module(self) -> SoloClassifier:
        kwargs = {k: v for k, v in self._module_kwargs().items() if k in _MODULE_ARGS}
        mean = scale = None
        if self.adata is not None:
            features = self._tensors().X
            features = features.toarray() if sp.issparse(features) else np.asarray(features)
            mean = features.mean(0)
            scale = np.maximum(features.std(0), 1e-6)
        return SoloClassifier(self.registry.n_vars, doublet_index=self.registry.label_categories.index(DOUBLET),
                              feature_mean=mean, feature_scale=scale, **kwargs)

    # -- from a scVI model ----------------------------------------------------------------------
    @classmethod
    def from_scvi_model(cls, scvi_model: SCVI, adata=None, restrict_to_batch=None, doublet_ratio: int = 2,
                        **classifier_kwargs) -> "SOLO":
        """A Solo of the cells of a trained scVI model, with simulated doublets.

        Parameters
        ----------
        scvi_model
            A trained :class:`cellvi.SCVI` (or :class:`cellvi.LinearSCVI`) set up with raw
            counts and at most a ``batch_key`` (categorical and continuous covariates are not
            supported: a simulated doublet has no single value of them).
        adata
            AnnData compatible with ``scvi_model`` (its genes and batch column) whose cells to
            score; default: the scVI model's own.
        restrict_to_batch
            The batch (of the scVI model's ``batch_key``) whose cells to score: doublets are
            simulated from its cells only. Without it, the cells of every batch are scored
            together by one classifier, doublets being simulated within each batch (a warning
            recommends one Solo per batch, e.g. :meth:`predict_per_batch`).
        doublet_ratio
            Simulated doublets per real cell.
        **classifier_kwargs
            ``n_hidden``, ``n_layers``, ``dropout_rate``, ``use_batch_norm``,
            ``use_layer_norm``.

        Examples
        --------
        >>> solo = cellvi.SOLO.from_scvi_model(vae, restrict_to_batch="lane1")
        >>> solo.train()
        """
        return cls._from_scvi_model(scvi_model, adata, restrict_to_batch, doublet_ratio, True, classifier_kwargs)

    @classmethod
    def _from_scvi_model(cls, scvi_model, adata, restrict_to_batch, doublet_ratio, warn: bool,
                         classifier_kwargs: dict) -> "SOLO":
        doublet_ratio = as_count(doublet_ratio, "doublet_ratio")
        adata, cells, batches = _solo_cells(scvi_model, adata, restrict_to_batch, warn)
        registry = scvi_model.registry
        counts = registry.counts(adata)  # raw counts, checked (the genes were checked above)
        rng = np.random.default_rng(settings.seed)
        parts, parents, doublet_batches = [], [], []
        for b in np.unique(batches):  # doublets form within a lane: parents from one batch
            members = cells[batches == b]
            doublets, pairs = simulate_doublets(counts[members], doublet_ratio * len(members), rng)
            parts.append(doublets)
            parents.append(members[pairs])
            doublet_batches.append(np.full(doublets.shape[0], b))
        doublets = sp.vstack(parts).tocsr()
        parents = np.concatenate(parents)
        doublet_batches = np.concatenate(doublet_batches)
        z_real = scvi_model.get_latent_representation(adata, indices=cells)
        z_doublets = scvi_model.get_latent_representation(
            _doublet_anndata(scvi_model, adata, doublets, doublet_batches, parents))
        lib_real = np.log(np.asarray(counts[cells].sum(axis=1)).ravel())
        lib_doublets = np.log(np.asarray(doublets.sum(axis=1)).ravel())
        features = np.concatenate([np.c_[z_real, lib_real], np.c_[z_doublets, lib_doublets]]).astype(np.float32)
        names = [f"latent_{i}" for i in range(z_real.shape[1])] + [LIBRARY_FEATURE]
        obs_names = list(map(str, adata.obs_names[cells])) + [f"{SIMULATED_PREFIX}{i}" for i in range(doublets.shape[0])]
        table = pd.DataFrame(features, index=pd.Index(obs_names), columns=names)
        table[LABELS_KEY] = [SINGLET] * len(cells) + [DOUBLET] * doublets.shape[0]
        solo_adata = _cells_anndata(table)
        cls.setup_anndata(solo_adata, labels_key=LABELS_KEY)
        batch_name = None if restrict_to_batch is None else str(restrict_to_batch)
        return cls(solo_adata, **classifier_kwargs, restrict_to_batch=batch_name, doublet_ratio=doublet_ratio)

    # -- training ------------------------------------------------------------------------------
    def train(self, max_epochs: int = 400, lr: float | None = None, device: str = "auto",
              train_size: float = 0.9, validation_size: float | None = None, batch_size: int = 128,
              early_stopping: bool = True, early_stopping_patience: int = 30, progress_bar: bool | None = None,
              plan_kwargs: dict | None = None, **kwargs) -> "SOLO":
        """Train the classifier to tell simulated doublets from real cells.

        Parameters
        ----------
        max_epochs
            Passes over the training cells (at most; see ``early_stopping``).
        lr
            Adam's learning rate (default 1e-3).
        device, train_size, validation_size, batch_size, progress_bar
            As for :meth:`cellvi.SCVI.train`; real and simulated cells are split together.
        early_stopping, early_stopping_patience
            Stop when the validation cells' cross-entropy (``reconstruction_loss_validation``
            in :attr:`history`) has not decreased for this many epochs.
        plan_kwargs
            Further settings of :class:`cellvi.train.TrainingPlan` (``weight_decay``, ...).
        **kwargs
            As for :meth:`cellvi.models.BaseModel.train` (``limit_train_batches``).

        Examples
        --------
        >>> solo.train()
        >>> solo.history[["reconstruction_loss_train", "reconstruction_loss_validation"]].plot()
        """
        return super().train(max_epochs=max_epochs, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size,
                             early_stopping=early_stopping, early_stopping_patience=early_stopping_patience,
                             lr=lr, n_epochs_kl_warmup=None, progress_bar=progress_bar,
                             plan_kwargs=plan_kwargs, **kwargs)

    # -- queries -------------------------------------------------------------------------------
    @torch.no_grad()
    def _logits(self) -> np.ndarray:
        """The classifier's logits of every cell (cells x 2, in ``label_categories`` order)."""
        out = [self.module.inference(**self.module.inference_inputs(t))["logits"].cpu() for t in self._minibatches()]
        return torch.cat(out).double().numpy()

    def predict(self, soft: bool = True, include_simulated_doublets: bool = False,
                return_logits: bool = False):
        """Each real cell's probability of being a doublet (and of being a singlet).

        The classifier was trained on ``doublet_ratio`` simulated doublets per real cell, and
        its odds of "doublet" carry that ratio; here it is divided out, so that a probability
        above 0.5 means the cell is in a region where simulated doublets are denser than real
        cells, whatever ``doublet_ratio`` (scvi-tools reports the classifier's own
        probabilities; see :class:`SOLO`).

        Parameters
        ----------
        soft
            The probabilities (default); ``False``: the more probable label per cell,
            ``"doublet"`` (probability above 0.5) or ``"singlet"``.
        include_simulated_doublets
            Also return the simulated doublets (named ``sim_doublet_<i>``).
        return_logits
            With ``soft``, the classifier's own logits (before the ratio is divided out)
            instead of probabilities.

        Returns
        -------
        A DataFrame indexed by cell with columns ``"doublet"`` and ``"singlet"`` (rows sum
        to 1); with ``soft=False`` a Series of labels.

        Examples
        --------
        >>> scores = solo.predict()
        >>> adata.obs["doublet_score"] = scores.loc[adata.obs_names, "doublet"]
        >>> doublets = solo.predict(soft=False) == "doublet"
        """
        logits = self._logits()
        real = self._real_cells()
        keep = np.ones(len(logits), dtype=bool) if include_simulated_doublets else real
        categories = self.registry.label_categories
        d, s_ = categories.index(DOUBLET), categories.index(SINGLET)
        # The classifier's odds carry the ratio of simulated to real cells it was trained on;
        # divided by it, they are the ratio of the two classes' densities at the cell.
        prior = np.log((~real).sum() / max(real.sum(), 1))
        logits = logits[keep]
        index = self._anndata().obs_names[keep]
        logit = logits[:, d] - logits[:, s_] - prior
        if not soft:
            return pd.Series(np.where(logit > 0, DOUBLET, SINGLET), index=index, name="prediction")
        if return_logits:
            return pd.DataFrame({DOUBLET: logits[:, d], SINGLET: logits[:, s_]}, index=index)
        p = 1.0 / (1.0 + np.exp(-logit))
        return pd.DataFrame({DOUBLET: p, SINGLET: 1.0 - p}, index=index)

    def _real_cells(self) -> np.ndarray:
        labels = self._tensors()[C.LABELS_KEY]
        return labels == self.registry.label_categories.index(SINGLET)

    @classmethod
    def from_scvi_model_per_batch(cls, scvi_model: SCVI, adata=None, batch_key: str | None = None,
                                  doublet_ratio: int = 2, **classifier_kwargs) -> dict[str, "SOLO"]:
        """One Solo per batch (lane) of the cells of a trained scVI model, not yet trained.

        Parameters
        ----------
        scvi_model
            A trained :class:`cellvi.SCVI`.
        adata
            AnnData compatible with ``scvi_model``; default: its own.
        batch_key
            obs column of the batches; default: the scVI model's ``batch_key`` (one Solo in
            all when it has none). Another column than the scVI model's splits the cells by
            it (each Solo then simulates doublets within each of the scVI model's batches).
        doublet_ratio, **classifier_kwargs
            As for :meth:`from_scvi_model`.

        Returns
        -------
        A dict of batch name -> SOLO, in the order the batches first appear in ``adata``
        (``{"all": SOLO}`` without batches).

        Examples
        --------
        >>> solos = cellvi.SOLO.from_scvi_model_per_batch(vae)
        >>> for solo in solos.values():
        ...     solo.train()
        """
        data = scvi_model._anndata(adata)
        own_key = scvi_model.registry.batch_key
        batch_key = own_key if batch_key is None else batch_key
        if batch_key is None:
            return {"all": cls._from_scvi_model(scvi_model, data, None, doublet_ratio, False, classifier_kwargs)}
        column = obs_column(data, batch_key, "batch_key").astype(str).to_numpy()
        solos = {}
        for batch in pd.unique(column):
            if batch_key == own_key:
                solos[batch] = cls._from_scvi_model(scvi_model, data, batch, doublet_ratio, False, classifier_kwargs)
            else:
                solos[batch] = cls._from_scvi_model(scvi_model, data[column == batch], None, doublet_ratio, False,
                                                    classifier_kwargs)
        return solos

    @classmethod
    def predict_per_batch(cls, scvi_model: SCVI, adata=None, batch_key: str | None = None,
                          doublet_ratio: int = 2, soft: bool = True, train_kwargs: dict | None = None,
                          **classifier_kwargs):
        """One Solo per batch, trained, and their predictions together (see
        :meth:`from_scvi_model_per_batch`).

        Parameters
        ----------
        scvi_model, adata, batch_key, doublet_ratio, **classifier_kwargs
            As for :meth:`from_scvi_model_per_batch`.
        soft
            As for :meth:`predict`.
        train_kwargs
            Arguments of :meth:`train` (e.g. ``{"max_epochs": 200}``).

        Returns
        -------
        :meth:`predict`'s result for every cell of ``adata``, in its order; with ``soft``
        also a ``batch`` column.

        Examples
        --------
        >>> cellvi.SCVI.setup_anndata(adata, batch_key="lane")
        >>> vae = cellvi.SCVI(adata)
        >>> vae.train()
        >>> scores = cellvi.SOLO.predict_per_batch(vae)
        >>> adata.obs["doublet_score"] = scores["doublet"]
        """
        data = scvi_model._anndata(adata)
        results = []
        for batch, solo in cls.from_scvi_model_per_batch(scvi_model, data, batch_key, doublet_ratio,
                                                          **classifier_kwargs).items():
            solo.train(**(train_kwargs or {}))
            out = solo.predict(soft=soft)
            results.append(out.assign(batch=batch) if soft else out)
        return pd.concat(results).loc[[str(c) for c in data.obs_names]]


# ----------------------------------------------------------------------------------------------


def _check_labels(registry: Registry) -> None:
    categories = registry.label_categories
    if sorted(categories) != [DOUBLET, SINGLET]:
        raise ValueError(f"Solo's labels must be '{DOUBLET}' (simulated) and '{SINGLET}' (real cells); the "
                         f"labels column '{registry.labels_key}' holds {preview(categories)}")


def _cells_anndata(table: pd.DataFrame, registry: Registry | None = None) -> anndata.AnnData:
    """Solo's AnnData from its table of cells (features, then the label column), laid out as
    ``registry`` reads it (its labels column and layer; default: ``X`` and LABELS_KEY)."""
    features = table.drop(columns=[LABELS_KEY])
    labels_key = LABELS_KEY if registry is None else registry.labels_key
    layer = None if registry is None else registry.layer
    values = features.to_numpy(dtype=np.float32)
    ad = anndata.AnnData(X=values if layer is None else None,
                         obs=pd.DataFrame({labels_key: table[LABELS_KEY].astype(str).to_numpy()},
                                          index=pd.Index([str(i) for i in table.index])),
                         var=pd.DataFrame(index=pd.Index([str(c) for c in features.columns])))
    if layer is not None:
        ad.layers[layer] = values
    return ad


def _cells_table(adata, registry: Registry, tensors: AnnTensors) -> pd.DataFrame:
    """The features and labels of Solo's cells, as saved with the model."""
    X = tensors.X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    table = pd.DataFrame(X.astype(np.float32), index=pd.Index([str(i) for i in adata.obs_names]),
                         columns=list(registry.var_names))
    table[LABELS_KEY] = np.asarray(registry.label_categories, dtype=object)[tensors[C.LABELS_KEY]]
    return table


def _solo_cells(scvi_model, adata, restrict_to_batch, warn: bool = True):
    """Check the scVI model and choose the cells: (adata, positions, batch code of each)."""
    if not isinstance(scvi_model, SCVI):
        raise TypeError(f"scvi_model must be a trained cellvi.SCVI model, got {type(scvi_model).__name__}")
    if not scvi_model.is_trained:
        raise ValueError("the scVI model is not trained; train it first (scvi_model.train())")
    registry = scvi_model.registry
    if registry.categorical_covariate_keys or registry.continuous_covariate_keys:
        keys = registry.categorical_covariate_keys + registry.continuous_covariate_keys
        raise ValueError(f"Solo cannot use a scVI model with covariates ({preview(keys)}): a simulated doublet "
                         "has no single value of them. Train a scVI model with at most a batch_key for Solo")
    adata = scvi_model._anndata(adata)
    tensors = scvi_model._tensors() if adata is scvi_model.adata else registry.tensors(adata)
    batches = np.asarray(tensors.batch)
    cells = np.arange(adata.n_obs)
    if restrict_to_batch is not None:
        if registry.batch_key is None:
            raise ValueError(f"restrict_to_batch={restrict_to_batch!r} was given, but the scVI model was set up "
                             "without a batch_key: it has one batch, and Solo uses all its cells")
        known = registry.batch_categories
        if str(restrict_to_batch) not in known:
            raise ValueError(f"restrict_to_batch={restrict_to_batch!r} is not a batch of the scVI model (obs column "
                             f"'{registry.batch_key}'); its batches: {preview(known, 30)}")
        code = known.index(str(restrict_to_batch))
        cells = np.flatnonzero(batches == code)
        if cells.size == 0:
            raise ValueError(f"batch '{restrict_to_batch}' has no cells in this AnnData")
        batches = batches[cells]
    elif warn and len(np.unique(batches)) > 1:
        warnings.warn("the scVI model has several batches and restrict_to_batch was not given: one classifier "
                      "scores the cells of every batch (doublets are simulated within each batch). Doublets "
                      "form within a lane; Solo per batch is better: restrict_to_batch=..., or "
                      "cellvi.SOLO.predict_per_batch(scvi_model)", UserWarning, stacklevel=4)
    for b, n in zip(*np.unique(batches, return_counts=True)):
        if n < 2:
            raise ValueError(f"batch '{registry.batch_categories[b]}' has {n} cell; doublets need pairs of cells")
    return adata, cells, batches


def _doublet_anndata(scvi_model, adata, doublets: sp.csr_matrix, batch_codes: np.ndarray,
                     parents: np.ndarray) -> anndata.AnnData:
    """An AnnData of simulated doublets that the scVI model's setup accepts: each doublet in
    its parents' batch, with the sum of their size factors when the model reads them."""
    registry = scvi_model.registry
    obs = pd.DataFrame(index=pd.Index([f"{SIMULATED_PREFIX}{i}" for i in range(doublets.shape[0])]))
    if registry.batch_key is not None:
        obs[registry.batch_key] = np.asarray(registry.batch_categories, dtype=object)[batch_codes]
    if registry.labels_key is not None:
        obs[registry.labels_key] = registry.label_categories[0]  # not read by the encoder
    if registry.size_factor_key is not None:
        factors = np.asarray(adata.obs[registry.size_factor_key], dtype=np.float64)
        obs[registry.size_factor_key] = (factors[parents[:, 0]] + factors[parents[:, 1]]).astype(np.float32)
    layer = registry.layer
    ad = anndata.AnnData(X=doublets if layer is None else sp.csr_matrix(doublets.shape, dtype=np.float32),
                         obs=obs, var=pd.DataFrame(index=pd.Index(registry.var_names)))
    if layer is not None:
        ad.layers[layer] = doublets
    return ad
