"""Queries and abilities that models opt into: a model inherits only what it can answer.

- :class:`VAEMixin`: latent representation, ELBO, reconstruction error and marginal
  likelihood, for modules with an encoder (``inference`` giving ``qz_mean``/``qz_var``/``z``,
  ``z_transform`` and ``latent_distribution``) and a likelihood (``marginal_ll``).
- :class:`MappingMixin`: reference mapping (scArches-style architecture surgery).
"""
from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..data._backed import is_backed_matrix, to_memory
from ..data._fields import as_csr_float32, open_backed
from ..train import as_count, resolve_device
from ._base import BaseModel, _reference_registry


class VAEMixin:
    """Latent space and scores of fit of a variational autoencoder."""

    # -- latent space --------------------------------------------------------------------------
    @torch.no_grad()
    def get_latent_representation(self, adata=None, indices=None, give_mean: bool = True,
                                  mc_samples: int = 5000, batch_size: int | None = None) -> np.ndarray:
        """Latent coordinates of cells (cells x n_latent).

        Parameters
        ----------
        adata
            AnnData with the model's genes and obs columns; default: the model's own.
        indices
            Cells to return (integers or a boolean mask); default: all.
        give_mean
            The posterior mean (for ``latent_distribution="ln"`` estimated with
            ``mc_samples`` draws) rather than one sample.
        batch_size
            Cells per minibatch.

        Examples
        --------
        >>> adata.obsm["X_scVI"] = model.get_latent_representation()
        """
        out = []
        for tensors in self._minibatches(adata, indices, batch_size):
            inf = self.module.inference(**self.module.inference_inputs(tensors))
            if not give_mean:
                z = inf["z"]
            elif self.module.latent_distribution == "ln":
                mc = as_count(mc_samples, "mc_samples")
                qz = torch.distributions.Normal(inf["qz_mean"], inf["qz_var"].sqrt())
                z = self.module.z_transform(qz.sample((mc,))).mean(0)
            else:
                z = inf["qz_mean"]
            out.append(z.cpu())
        return torch.cat(out).numpy()

    # -- scores of fit ------------------------------------------------------------------------
    @torch.no_grad()
    def _per_cell_loss(self, adata, indices, batch_size, part: str) -> np.ndarray:
        values = []
        for tensors in self._minibatches(adata, indices, batch_size):
            _, _, out = self.module(tensors)
            values.append((-out.elbo if part == "neg_elbo" else out.reconstruction_loss).cpu())
        return torch.cat(values).numpy()

    def get_elbo(self, adata=None, indices=None, batch_size: int | None = None,
                 return_mean: bool = True):
        """Evidence lower bound of log p(x): a negative number; higher is better.

        ``return_mean=False`` gives one value per cell (one posterior sample each)."""
        elbo = -self._per_cell_loss(adata, indices, batch_size, "neg_elbo")
        return float(elbo.mean()) if return_mean else elbo

    def get_reconstruction_error(self, adata=None, indices=None, batch_size: int | None = None,
                                 return_mean: bool = True):
        """Negative log-likelihood of the counts given one posterior sample: lower is better."""
        rec = self._per_cell_loss(adata, indices, batch_size, "reconstruction")
        return float(rec.mean()) if return_mean else rec

    def get_marginal_ll(self, adata=None, indices=None, n_mc_samples: int = 1000,
                        batch_size: int | None = None, return_mean: bool = True):
        """Importance-sampled estimate of log p(x) per cell: a negative number, higher is better.

        Parameters
        ----------
        n_mc_samples
            Importance samples per cell (more: tighter and slower).
        batch_size
            Cells per minibatch; by default as many as keep the sampled tensors small on the
            CPU (e.g. 16 for 1,287 genes), 128 on a GPU.
        return_mean
            The mean over cells (a float); ``False`` gives one value per cell.

        Examples
        --------
        >>> model.get_marginal_ll(test_adata, n_mc_samples=200)
        """
        n_mc = as_count(n_mc_samples, "n_mc_samples")
        values = [self.module.marginal_ll(t, n_mc).cpu()
                  for t in self._minibatches(adata, indices, batch_size or self._marginal_ll_batch_size(n_mc))]
        ll = torch.cat(values).numpy()
        return float(ll.mean()) if return_mean else ll

    def _marginal_ll_batch_size(self, n_mc_samples: int) -> int:
        """Cells per minibatch of :meth:`get_marginal_ll`. The modules draw up to 100 samples at a
        time, so a minibatch makes (samples x cells x features) tensors; on the CPU those are
        kept to ~2M entries, so that they stay in cache (timings in benchmarks/RESULTS.md);
        other devices take 128 cells."""
        if next(self.module.parameters()).device.type != "cpu":
            return 128
        per_cell = min(n_mc_samples, 100) * max(len(self.var_names), 1)
        return int(min(128, max(1, 2 ** 21 // per_cell)))



class MappingMixin:
    """Reference mapping: a model of query data built on a trained reference."""

    # Parameters that keep their initial values for the query's new categories (not trained).
    _query_frozen_parameters: tuple[str, ...] = ()
    # Top-level submodules whose normalisation layers adapt to the query during query
    # training: their BatchNorm running statistics follow the query and their scale and shift
    # train (the other weights stay frozen). scANVI's classifier: see SCANVI.
    _query_adapted_norms: tuple[str, ...] = ()

    # -- reference mapping (scArches-style architecture surgery) -------------------------------
    @classmethod
    def prepare_query_anndata(cls, adata, reference, min_gene_fraction: float = 0.5):
        """A copy of ``adata`` with exactly the reference model's genes, in its order.

        Genes the reference does not know are dropped; reference genes absent from the query
        are filled with zeros (a warning says how many). ``adata`` itself is not modified.

        Parameters
        ----------
        adata
            The query AnnData (raw counts in the reference's layer, or in ``X``).
        reference
            A trained model, or the directory of a saved one.
        min_gene_fraction
            Refuse when fewer than this fraction of the reference's genes are in the query
            (usually a sign of different gene identifiers, e.g. symbols vs Ensembl ids).

        Returns
        -------
        A new AnnData (obs, obsm and uns copied) ready for :meth:`load_query_data`, in memory: a
        backed query (``read_h5ad(path, backed="r")``) is read block by block, keeping only
        the shared genes. A backed query whose genes already are the reference's, in its
        order, needs no preparing: pass it to :meth:`load_query_data` and it stays on disk.

        Examples
        --------
        >>> query = cellvi.SCVI.prepare_query_anndata(query, "reference_model/")
        >>> model = cellvi.SCVI.load_query_data(query, "reference_model/")
        """
        import anndata

        registry = _reference_registry(reference)
        names = pd.Index([str(v) for v in adata.var_names])
        if names.has_duplicates:
            raise ValueError(f"the query's gene names (var_names) are duplicated, e.g. "
                             f"{list(names[names.duplicated()][:5])}; make them unique first")
        position = names.get_indexer(registry.var_names)  # query column of each reference gene
        present = position >= 0
        n_ref, n_shared = registry.n_vars, int(present.sum())
        if n_shared < min_gene_fraction * n_ref:
            raise ValueError(
                f"only {n_shared} of the reference's {n_ref} genes are in the query "
                f"({100 * n_shared / n_ref:.0f}%, less than min_gene_fraction={min_gene_fraction}); "
                f"check that both use the same gene identifiers (e.g. reference genes "
                f"{registry.var_names[:3]}, query genes {list(names[:3])})"
            )
        if registry.layer is not None and registry.layer not in adata.layers:
            raise KeyError(f"the reference reads its counts from layer '{registry.layer}', which the "
                           f"query lacks; available layers: {list(adata.layers.keys())}")
        X = adata.X if registry.layer is None else adata.layers[registry.layer]
        source = "the query's " + ("adata.X" if registry.layer is None else f"layer '{registry.layer}'")
        X = open_backed(X, source) if is_backed_matrix(X) else as_csr_float32(X)
        # Select the shared columns in reference order (block by block from a file), then place
        # them among zero columns.
        shared = to_memory(X, position[present])
        target = np.flatnonzero(present)
        counts = sp.csr_matrix((shared.data, target[shared.indices], shared.indptr), shape=(X.shape[0], n_ref))
        counts.sort_indices()
        if n_shared < n_ref:
            warnings.warn(f"{n_ref - n_shared} of the reference's {n_ref} genes are missing from the query "
                          "and were filled with zeros", UserWarning, stacklevel=2)
        query = anndata.AnnData(
            X=counts if registry.layer is None else None, obs=adata.obs.copy(),
            var=pd.DataFrame(index=pd.Index(registry.var_names)),
            layers={registry.layer: counts} if registry.layer is not None else None,
            # copies: preparing (e.g. a protein panel's columns renamed or filled) must not
            # reach the user's AnnData
            obsm={k: v.copy() for k, v in adata.obsm.items()},
            uns=copy.deepcopy(dict(adata.uns)),  # e.g. the names of an obsm matrix's columns
        )
        for field in registry.fields.values():  # e.g. a missing protein panel filled with zeros
            field.prepare_query(query)
        query.uns["cellvi_query"] = {"n_genes_missing": n_ref - n_shared, "n_genes_shared": n_shared,
                                     "n_genes_dropped": int(len(names) - n_shared)}
        return query

    @classmethod
    def load_query_data(cls, adata, reference, freeze_dropout: bool = False, unfrozen: bool = False,
                        device: str = "auto") -> "BaseModel":
        """A model of the query ``adata`` built on a trained reference (architecture surgery).

        The network gets rows for the query's new batches (and new categories of other
        categorical covariates); the reference's weights are copied and frozen, BatchNorm
        running statistics included, and :meth:`train` then trains only the new rows, with
        no weight decay. The reference cells' latent representation is therefore exactly the
        reference model's. One exception: scANVI's classifier adapts its normalisation to
        the query (BatchNorm statistics and scale/shift; its other weights stay frozen), as
        scvi-tools' query training also trains that scale and shift; across a technology
        effect this is what query training changes in the predictions.

        Parameters
        ----------
        adata
            Query AnnData with the reference's genes in its order (see
            :meth:`prepare_query_anndata`) and the reference's obs columns; its batches must
            have new names.
        reference
            The trained reference model, or the directory of a saved one.
        freeze_dropout
            Also switch dropout off while training on the query.
        unfrozen
            Train every weight on the query (the reference latent then changes).
        device
            Where to put the model.

        Examples
        --------
        >>> query = cellvi.SCANVI.prepare_query_anndata(query, reference)
        >>> model = cellvi.SCANVI.load_query_data(query, reference)
        >>> model.train(max_epochs=100)
        >>> query.obs["predicted"] = model.predict()
        """
        ref = reference if isinstance(reference, BaseModel) else BaseModel.load(reference, device="cpu")
        model_cls = type(ref)
        if not isinstance(ref, MappingMixin):
            raise TypeError(f"{model_cls.__name__} models do not support reference mapping")
        if cls is not MappingMixin and model_cls is not cls:
            raise TypeError(f"the reference is a {model_cls.__name__} model; use "
                            f"cellvi.{model_cls.__name__}.load_query_data")
        if not ref.is_trained:
            raise ValueError("the reference model is not trained; train it first")
        try:
            ref.registry.check_genes(adata)
        except ValueError as err:
            raise ValueError(f"{err}. Align the query first: query = cellvi.{model_cls.__name__}."
                             "prepare_query_anndata(query, reference)") from None
        registry = ref.registry.extended_for_query(adata)
        tensors = registry.tensors(adata)
        model = model_cls(adata, _registry=registry, _tensors=tensors, **ref.init_kwargs)
        grown = _copy_weights(ref.module, model.module)
        grown = {k: v for k, v in grown.items() if k not in model_cls._query_frozen_parameters}
        model._query = {"grown": grown, "unfrozen": bool(unfrozen), "freeze_dropout": bool(freeze_dropout)}
        model._apply_query_freeze()
        model.module.to(resolve_device(device))
        model.is_trained = False
        return model

    def _apply_query_freeze(self) -> None:
        """Mark what query training may change (see :meth:`load_query_data`)."""
        query = self._query
        adapted = tuple(self._query_adapted_norms)
        for name, module in self.module.named_modules():
            frozen_norm = (not query["unfrozen"] and isinstance(module, (torch.nn.BatchNorm1d, torch.nn.LayerNorm))
                           and name.split(".")[0] not in adapted)
            frozen_dropout = query["freeze_dropout"] and isinstance(module, torch.nn.Dropout)
            module.frozen_in_eval = frozen_norm or frozen_dropout
        if query["unfrozen"]:
            return
        adapted_parameters = self._adapted_norm_parameters()
        for name, param in self.module.named_parameters():
            old_shape = query["grown"].get(name)
            param.requires_grad_(old_shape is not None or name in adapted_parameters)
            if old_shape is not None:
                reference_part = tuple(slice(0, n) for n in old_shape)
                param.register_hook(lambda grad, part=reference_part: _zero_part(grad, part))

    def _adapted_norm_parameters(self) -> set[str]:
        """Names of the scale and shift parameters of the normalisation layers in
        ``_query_adapted_norms`` (trained on the query)."""
        adapted = tuple(self._query_adapted_norms)
        names = set()
        for name, module in self.module.named_modules():
            if name.split(".")[0] in adapted and isinstance(module, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)):
                names.update(f"{name}.{p}" for p, _ in module.named_parameters())
        return names

    def _optimizer_params(self):
        """Parameter groups for query training (None: train everything as usual)."""
        if self._query is None or self._query["unfrozen"]:
            return None
        params = [p for name, p in self.module.named_parameters() if name in self._query["grown"]]
        if not params:
            raise ValueError(
                "the query adds no weights to train: the reference has no batch or categorical "
                "covariate that the query extends. Its latent needs no training: call "
                "get_latent_representation() directly, or load_query_data(..., unfrozen=True)"
            )
        adapted = self._adapted_norm_parameters()
        params += [p for name, p in self.module.named_parameters() if name in adapted]
        # No weight decay: Adam's decay would move the frozen reference rows as well.
        return [{"params": params, "weight_decay": 0.0}]



@torch.no_grad()
def _copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Copy ``source``'s weights into ``target``, whose tensors may be larger (new category
    rows or columns): the source fills the leading part. Returns the names and source shapes
    of the parameters that grew."""
    target_state = target.state_dict()
    grown = {}
    for name, value in source.state_dict().items():
        dest = target_state[name]
        if dest.shape == value.shape:
            dest.copy_(value)
            continue
        if dest.dim() != value.dim() or any(a > b for a, b in zip(value.shape, dest.shape)):
            raise ValueError(f"cannot map weight '{name}' of shape {tuple(value.shape)} onto {tuple(dest.shape)}")
        dest[tuple(slice(0, n) for n in value.shape)].copy_(value)
        grown[name] = tuple(value.shape)
    parameters = dict(target.named_parameters())
    return {name: shape for name, shape in grown.items() if name in parameters}


def _zero_part(grad: torch.Tensor, part: tuple) -> torch.Tensor:
    grad = grad.clone()
    grad[part] = 0
    return grad


