"""gimVI: imputation of unmeasured genes in spatial (FISH) data from a single-cell reference."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .. import _constants as C
from ..data import AnnTensors, DeviceData, JointData, Registry, cell_indices
from ..data._fields import preview
from ..data._registry import recall_setup
from ..modules import JVAE
from ..train import as_count, split_indices
from ..train._trainer import single_threaded_global_openblas
from ._base import BaseModel, _decode_arguments

SEQ, SPATIAL = 0, 1
DATASETS = ("reference", "spatial")  # in messages
REGISTRIES_ENTRY = "registries"  # model.json: the setup of each data set, in data set order


def _log_library_stats(tensors: AnnTensors, n_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the log library size per batch of one data set."""
    log_lib = np.log(np.asarray(tensors.X.sum(axis=1)).ravel())
    means, variances = np.zeros(n_batch, np.float32), np.ones(n_batch, np.float32)
    for b in range(n_batch):
        values = log_lib[tensors.batch == b]
        if values.size:
            means[b], variances[b] = values.mean(), max(values.var(), 1e-4)
    return means, variances


class GIMVI(BaseModel):
    """gimVI (Lopez et al. 2019): a joint latent space of a single-cell RNA reference and
    spatial data that measure fewer genes (MERFISH, osmFISH, STARmap, ...), and imputation of
    the reference's other genes in the spatial cells.

    One decoder over all reference genes is shared by both data sets, each of which has its
    own encoder input layers and likelihood (by default ZINB with a learned library size for
    the reference, NB with the observed library for the spatial data). An adversarial
    classifier that tries to tell the data sets apart from the latent pushes them to mix
    (weight ``kappa`` in :meth:`train`). The spatial cells' latent decodes to every reference
    gene: :meth:`get_imputed_values`.

    Both AnnData are set up with :meth:`setup_anndata` (each its own counts, batches); the
    spatial genes must all be reference genes (names as in the reference's ``var_names``).

    Measured on spacexr's MERFISH pair (1,304 reference cells, 750 MERFISH cells, 134 genes;
    13 spatial genes held out per seed, 200 epochs, seeds 0-2; ``benchmarks/bench_gimvi.py``):
    median Spearman correlation of imputed and measured held-out genes 0.18-0.27 (scvi-tools'
    GIMVI 0.17-0.28, per seed within 0.04 of it); training speed against scvi-tools is in
    ``benchmarks/RESULTS.md``.

    Parameters
    ----------
    adata_seq
        The reference: raw counts, cells x genes (all the genes to impute).
    adata_spatial
        The spatial data: raw counts of genes that are all in ``adata_seq``.
    generative_distributions
        Likelihoods of the reference and of the spatial data (default ``["zinb", "nb"]``).
    model_library_size
        Whether to learn the library size of each (default ``[True, False]``).
    n_latent
        Latent dimensions.
    **module_kwargs
        Further settings of :class:`cellvi.modules.JVAE`: ``n_hidden`` (64),
        ``n_layers_encoder_individual`` (1), ``n_layers_encoder_shared`` (1),
        ``n_hidden_decoder`` (64), ``n_layers_decoder_individual`` (0),
        ``n_layers_decoder_shared`` (0), ``dropout_rate_encoder`` (0.2),
        ``dropout_rate_decoder`` (0.2), ``dispersion`` (``"gene-batch"``),
        ``log_variational`` (True). The defaults are scvi-tools'.

    Examples
    --------
    >>> import anndata, cellvi
    >>> seq = anndata.read_h5ad("reference.h5ad")       # cells x all genes
    >>> spatial = anndata.read_h5ad("merfish.h5ad")     # cells x a subset of them
    >>> cellvi.GIMVI.setup_anndata(seq)
    >>> cellvi.GIMVI.setup_anndata(spatial)
    >>> model = cellvi.GIMVI(seq, spatial)
    >>> model.train(max_epochs=200)
    >>> _, imputed = model.get_imputed_values(normalized=True)   # spatial cells x seq genes
    >>> z_seq, z_spatial = model.get_latent_representation()
    """

    # scvi-tools' gimVI training: Adam at lr 1e-3; KL warm-up over 400 epochs, not shortened
    # for shorter runs (see train()); a classifier of the data set (3 hidden layers) as the
    # adversary, its weight set by train(kappa=...).
    _plan_defaults = {"lr": 1e-3, "weight_decay": 1e-6, "eps": 0.01, "n_epochs_kl_warmup": 400,
                      "adversarial_classifier": True, "adversarial_n_layers": 3}

    def __init__(self, adata_seq=None, adata_spatial=None, generative_distributions: Sequence[str] | None = None,
                 model_library_size: Sequence[bool] | None = None, n_latent: int = 10, *,
                 _registries: Sequence[Registry] | None = None,
                 _tensors: Sequence[AnnTensors | None] | None = None, **module_kwargs):
        if _registries is None:
            if adata_seq is None or adata_spatial is None:
                raise TypeError("GIMVI needs both AnnData: GIMVI(adata_seq, adata_spatial)")
            if adata_seq is adata_spatial:
                raise ValueError("adata_seq and adata_spatial are the same object; pass the reference and the "
                                 "spatial data (for a test on one data set, pass a copy: adata.copy())")
            name = type(self).__name__
            registries, tensors = zip(*(recall_setup(a, name) for a in (adata_seq, adata_spatial)))
        else:
            registries = list(_registries)
            tensors = list(_tensors) if _tensors is not None else [None, None]
        self.registries: list[Registry] = list(registries)
        self.adatas = [adata_seq, adata_spatial]
        self._set_tensors: list[AnnTensors | None] = list(tensors)
        self._set_data: list[DeviceData | None] = [None, None]
        self.gene_indices = _spatial_gene_positions(*self.registries)
        for name in ("n_hidden", "n_hidden_decoder", "n_layers_encoder_individual", "n_layers_encoder_shared",
                     "n_layers_decoder_individual", "n_layers_decoder_shared"):
            if name in module_kwargs:  # (numbers from R arrive as floats)
                module_kwargs[name] = as_count(module_kwargs[name], name, 0 if "layers" in name else 1)
        generative_distributions = list(generative_distributions or ["zinb", "nb"])
        model_library_size = [bool(v) for v in (model_library_size if model_library_size is not None
                                                else [True, False])]
        for name, value in (("generative_distributions", generative_distributions),
                            ("model_library_size", model_library_size)):
            if len(value) != 2:
                raise ValueError(f"{name} needs two entries (reference, spatial), got {value}")
        super().__init__(adata_seq, _registry=self.registries[SEQ], _tensors=self._set_tensors[SEQ],
                         generative_distributions=generative_distributions, model_library_size=model_library_size,
                         n_latent=as_count(n_latent, "n_latent"), **module_kwargs)

    @classmethod
    def setup_anndata(cls, adata, batch_key: str | None = None, labels_key: str | None = None,
                      layer: str | None = None) -> None:
        """Check one of gimVI's two AnnData (the reference or the spatial data) and record
        which of its parts the model uses. Call it once for each.

        Parameters
        ----------
        adata
            AnnData with raw counts (cells x genes).
        batch_key
            obs column of the batch within this data set; batches of the two data sets are
            kept apart (the gene dispersions are per batch by default).
        labels_key
            obs column of labels (recorded; gimVI does not use them).
        layer
            Key in ``adata.layers`` holding the counts; ``None`` uses ``adata.X``.

        Examples
        --------
        >>> cellvi.GIMVI.setup_anndata(seq, batch_key="donor")
        >>> cellvi.GIMVI.setup_anndata(spatial)
        """
        cls._setup(adata, layer=layer, batch_key=batch_key, labels_key=labels_key)

    # -- construction ------------------------------------------------------------------------
    def _build_module(self) -> JVAE:
        kwargs = dict(self.init_kwargs)
        likelihoods = kwargs.pop("generative_distributions")
        learn = kwargs.pop("model_library_size")
        means, variances = [], []
        for d, reg in enumerate(self.registries):
            if not learn[d]:
                means.append(None)
                variances.append(None)
            elif self.adatas[d] is not None:
                m, v = _log_library_stats(self._tensors_of(d), reg.n_batch)
                means.append(m)
                variances.append(v)
            else:  # being loaded: the saved buffers replace these
                means.append(np.zeros(reg.n_batch, np.float32))
                variances.append(np.ones(reg.n_batch, np.float32))
        return JVAE(self.registries[SEQ].n_vars, self.gene_indices, [r.n_batch for r in self.registries],
                    likelihoods, learn, means, variances, **kwargs)

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "not trained"
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.init_kwargs.items())
        seq, spatial = self.registries
        return (f"GIMVI({kwargs}) on a reference of {seq.n_vars} genes and spatial data of {spatial.n_vars} "
                f"of them, {state}")

    # -- data ----------------------------------------------------------------------------------
    def _adatas(self, adatas=None) -> list:
        """The two AnnData of a query: ``adatas`` (either may be None: the model's own)."""
        if adatas is None:
            adatas = [None, None]
        if not isinstance(adatas, (list, tuple)) or len(adatas) != 2:
            raise TypeError("adatas must be a list of two AnnData: [adata_seq, adata_spatial] (None: the model's own)")
        out = []
        for d, adata in enumerate(adatas):
            adata = adata if adata is not None else self.adatas[d]
            if adata is None:
                raise ValueError(f"this model holds no {DATASETS[d]} AnnData (it was loaded without it); pass "
                                 "adatas=[adata_seq, adata_spatial]")
            out.append(adata)
        return out

    def _tensors_of(self, d: int) -> AnnTensors:
        if self._set_tensors[d] is None:
            if self.adatas[d] is None:
                raise ValueError(f"this model holds no {DATASETS[d]} AnnData")
            self._set_tensors[d] = self.registries[d].tensors(self.adatas[d])
        return self._set_tensors[d]

    def _tensors(self) -> AnnTensors:
        return self._tensors_of(SEQ)

    def _data_of(self, d: int, adata=None) -> DeviceData:
        device = self.device
        if adata is None or adata is self.adatas[d]:
            if self._set_data[d] is None or self._set_data[d].device != device:
                self._set_data[d] = DeviceData(self._tensors_of(d), device)
            return self._set_data[d]
        return DeviceData(self.registries[d].tensors(adata), device)

    def _data(self, adata=None) -> DeviceData:
        return self._data_of(SEQ, adata)

    def _training_data(self, train_size, validation_size):
        if self.adatas[SPATIAL] is None:
            raise ValueError("this model holds no spatial AnnData to train on (it was loaded without it)")
        # Each data set is split on its own (the same fractions), as scvi-tools does.
        splits = [split_indices(self.adatas[d].n_obs, train_size, validation_size) for d in (SEQ, SPATIAL)]
        data = JointData([self._data_of(SEQ), self._data_of(SPATIAL)])
        return data, tuple(s[0] for s in splits), tuple(s[1] for s in splits)

    # -- training ------------------------------------------------------------------------------
    def train(self, max_epochs: int | None = 200, kappa: float = 5.0, device: str = "auto",
              train_size: float = 0.9, validation_size: float | None = None, batch_size: int = 128,
              plan_kwargs: dict | None = None, **kwargs) -> "GIMVI":
        """Train on both data sets together.

        Each step takes a minibatch of ``batch_size`` cells from each data set (an epoch is a
        pass over the larger one; the smaller is cycled through). Besides the two ELBOs, an
        adversarial classifier learns to tell the data sets apart from the latent and the
        encoders are pushed to fool it, with weight ``kappa``.

        As in scvi-tools, the KL term is warmed up linearly over 400 epochs and the warm-up
        is not shortened for shorter runs (so 200 epochs end at KL weight 0.5). Reaching
        full weight by three quarters of the run (``plan_kwargs={"kl_warmup_cap": 0.75}``)
        made no clear difference to held-out genes on the MERFISH pair (100 epochs, seeds
        0-2: median Spearman 0.159, 0.208, 0.222 against 0.162, 0.167, 0.226).

        Parameters
        ----------
        max_epochs
            Passes over the larger data set (default 200, as scvi-tools).
        kappa
            Weight of the adversarial loss (0: none).
        device, train_size, validation_size, batch_size, plan_kwargs, **kwargs
            As :meth:`cellvi.SCVI.train` (the split is made in each data set).

        Examples
        --------
        >>> model.train(max_epochs=200, kappa=5)
        >>> model.history[["elbo_train", "elbo_validation"]].plot()
        """
        kappa = float(kappa)
        if not kappa >= 0:
            raise ValueError(f"kappa must be a non-negative number, got {kappa}")
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("scale_adversarial_loss", kappa)
        if kappa == 0:
            plan_kwargs.setdefault("adversarial_classifier", False)
        return super().train(max_epochs=max_epochs, device=device, train_size=train_size,
                             validation_size=validation_size, batch_size=batch_size,
                             plan_kwargs=plan_kwargs, **kwargs)

    # -- queries -------------------------------------------------------------------------------
    def _minibatches_of(self, d: int, adata, batch_size: int | None):
        data = self._data_of(d, adata)
        self.module.eval()
        batch_size = (as_count(batch_size, "batch_size") if batch_size is not None
                      else self._cells_per_chunk(self.registries[SEQ].n_vars))
        with single_threaded_global_openblas():
            yield from data.iterate(cell_indices(data.n_obs, None), batch_size)

    @torch.no_grad()
    def get_latent_representation(self, adatas: Sequence | None = None, deterministic: bool = True,
                                  batch_size: int | None = None) -> list[np.ndarray]:
        """The joint latent space of each data set's cells: ``[reference cells x n_latent,
        spatial cells x n_latent]``.

        Parameters
        ----------
        adatas
            ``[adata_seq, adata_spatial]`` set up like the model's (either None: the model's
            own); default: the model's own.
        deterministic
            The posterior mean rather than one sample.
        batch_size
            Cells per minibatch.

        Examples
        --------
        >>> z_seq, z_spatial = model.get_latent_representation()
        >>> spatial.obsm["X_gimvi"] = z_spatial
        """
        adatas = self._adatas(adatas)
        out = []
        for d in (SEQ, SPATIAL):
            zs = []
            for tensors in self._minibatches_of(d, adatas[d], batch_size):
                inf = self.module.inference(**self.module.inference_inputs(tensors, d))
                zs.append((inf["qz_mean"] if deterministic else inf["z"]).cpu())
            out.append(torch.cat(zs).numpy())
        return out

    @torch.no_grad()
    def get_imputed_values(self, adatas: Sequence | None = None, deterministic: bool = True,
                           normalized: bool = True, decode_mode: int | None = None,
                           batch_size: int | None = None) -> list[np.ndarray]:
        """Expression of every reference gene in the cells of each data set: ``[reference
        cells x genes, spatial cells x genes]``, genes in the order of ``model.var_names``
        (the reference's).

        Parameters
        ----------
        adatas
            ``[adata_seq, adata_spatial]`` set up like the model's (either None: the model's
            own); default: the model's own.
        deterministic
            Decode the posterior mean of z (and of a learned library) rather than a sample.
        normalized
            The normalized expression (``True``): expression relative to the genes of the
            decoding data set, i.e. summing to 1 over the reference genes for reference cells
            and over the spatial genes for spatial cells. ``False``: expected counts, that
            times the cell's library size (for spatial cells its total count of the spatial
            genes).
        decode_mode
            Normalize as data set 0 (reference) or 1 (spatial) instead of each cell's own:
            ``decode_mode=0`` puts spatial cells on the reference's scale (summing to 1 over
            all reference genes).
        batch_size
            Cells per minibatch.

        Examples
        --------
        >>> _, imputed = model.get_imputed_values(normalized=True)
        >>> imputed = pd.DataFrame(imputed, index=spatial.obs_names, columns=model.var_names)
        """
        if decode_mode is not None and decode_mode not in (SEQ, SPATIAL):
            raise ValueError(f"decode_mode must be None, 0 (reference) or 1 (spatial), got {decode_mode!r}")
        adatas = self._adatas(adatas)
        out = []
        for d in (SEQ, SPATIAL):
            values = []
            for tensors in self._minibatches_of(d, adatas[d], batch_size):
                inf = self.module.inference(**self.module.inference_inputs(tensors, d))
                z, library = inf["z"], inf["library"]
                if deterministic:
                    z = inf["qz_mean"]
                    library = inf.get("ql_mean", library)
                gen = self.module.generative(z, library, tensors[C.BATCH_KEY], d, decode_dataset=decode_mode,
                                             all_genes=True, likelihood=False)
                scale = gen["scale"]
                values.append((scale if normalized else scale * torch.exp(library)).cpu())
            out.append(torch.cat(values).numpy())
        return out

    # -- save / load ---------------------------------------------------------------------------
    def _saved_extra(self) -> dict:
        return {REGISTRIES_ENTRY: [reg.to_dict() for reg in self.registries]}

    @classmethod
    def _from_saved(cls, meta: dict, dir_path: str, adata=None, adata_spatial=None) -> "GIMVI":
        registries = [Registry.from_dict(r) for r in meta[REGISTRIES_ENTRY]]
        adatas = [adata, adata_spatial]
        # Check the data (genes, categories, counts) before building anything.
        tensors = [reg.tensors(a) if a is not None else None for reg, a in zip(registries, adatas)]
        return cls(*adatas, _registries=registries, _tensors=tensors,
                   **_decode_arguments(meta["init_kwargs"], dir_path))

    @classmethod
    def load(cls, dir_path: str, adata_seq=None, adata_spatial=None, device: str = "auto") -> "GIMVI":
        """Load a model saved with :meth:`save`, optionally with its two AnnData (genes and
        obs columns as when it was set up; either may be left out).

        Examples
        --------
        >>> model = cellvi.GIMVI.load("gimvi_model/", seq, spatial)
        >>> _, imputed = model.get_imputed_values()
        """
        dir_path = os.fspath(dir_path)
        meta, model_cls = cls._saved_model(dir_path)
        model = model_cls._from_saved(meta, dir_path, adata_seq, adata_spatial)
        return model._restore_saved(meta, dir_path, device)


def _spatial_gene_positions(seq: Registry, spatial: Registry) -> list[np.ndarray]:
    """Positions among the reference genes of each data set's genes; refuses spatial genes
    that the reference lacks."""
    seq_names = pd.Index(seq.var_names)
    position = seq_names.get_indexer(spatial.var_names)
    missing = np.asarray(spatial.var_names)[position < 0]
    if missing.size:
        raise ValueError(
            f"the spatial genes must all be reference genes, but {missing.size} of the {spatial.n_vars} spatial "
            f"genes are not in adata_seq.var_names: {preview(missing)} (reference genes: "
            f"{preview(seq.var_names, 5)}). Check that both use the same gene identifiers, or keep the "
            "shared genes: adata_spatial = adata_spatial[:, adata_spatial.var_names.isin(adata_seq.var_names)]"
            ".copy(), then set it up again with GIMVI.setup_anndata"
        )
    return [np.arange(seq.n_vars), position]
