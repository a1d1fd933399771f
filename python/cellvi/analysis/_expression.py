"""Queries of models with an expression decoder: normalized expression, likelihood
parameters and posterior predictive samples. Written once, for every such model.

The mixin relies on the model's Module returning, from ``generative``, the normalised
expression ``"scale"`` (sums to one over genes) and the count distribution ``"dist"``; with
``likelihood=False`` the Module may skip the distribution (only ``"scale"`` is read), and with
``genes_major=True`` it returns ``"scale_by_gene"``, the scale laid out genes first.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .. import _constants as C
from ..data import cell_indices
from ..train import as_count
from ._differential import differential_expression

# Entries of a minibatch that hold the counts; the decoder needs only the others.
_COUNT_KEYS = (C.X_KEY, C.X_NZ_INDEX_KEY, C.X_NZ_VALUE_KEY)


def _as_slice(rows: np.ndarray) -> slice | np.ndarray:
    """Output rows as a slice when they run consecutively (a plain copy, not a scatter)."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(rows[1:] > rows[:-1]):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _uses_latent_library(library_size) -> bool:
    """Whether ``library_size`` asks for each cell's own library ("latent") or a number."""
    if isinstance(library_size, str):
        if library_size != "latent":
            raise ValueError(f"library_size must be a number or 'latent', got {library_size!r}")
        return True
    return False


class PosteriorMixin:
    """Posterior sampling and decoding that queries of decoder-based models share (needs
    ``_minibatches``, ``registry``, ``module``): cells encoded once and resampled, decoded in
    chosen batches, feature selection, and the hooks of differential testing
    (:func:`~cellvi.analysis._differential.differential_expression`). It adds no public query:
    :class:`ExpressionMixin` adds expression, other models (e.g. PeakVI's accessibility) their
    own.

    The Module gives ``resample_inference(inference_out, rows, n_samples)`` and
    ``generative_inputs(tensors, inference_out, transform_batch=...)``.
    """

    @staticmethod
    def _feature_mask(names: Sequence[str] | None, available: Sequence[str], what: str = "gene_list"
                      ) -> np.ndarray | None:
        """Positions of ``names`` among ``available`` (None: all); a name that ``available``
        holds more than once (totalVI: a protein named as its gene, e.g. CD4) gives each."""
        if names is None:
            return None
        if isinstance(names, str):
            names = [names]
        lookup: dict = {}
        for i, g in enumerate(available):
            lookup.setdefault(g, []).append(i)
        missing = [g for g in names if g not in lookup]
        if missing:
            shown = ", ".join(map(str, missing[:10]))
            raise KeyError(f"{len(missing)} names of {what} are not in the model: {shown}")
        return np.array([i for g in names for i in lookup[g]], dtype=np.int64)

    # -- what differential testing compares (a model with more features overrides these) -----
    def _de_feature_names(self) -> list[str]:
        """Names of the features differential testing compares (default: the registry's)."""
        return list(self.registry.var_names)

    def _de_feature_types(self) -> list[str] | None:
        """A kind per feature (e.g. "gene"/"protein"), reported as ``feature_type``; None: one kind."""
        return None

    def _de_count_blocks(self, adata) -> list:
        """Raw counts of those features as CSR blocks, each with its own library size."""
        return [self.registry.counts(adata) if adata is not None else self._tensors().X]

    def _de_chunks(self, adata, cells: np.ndarray, transform_batch, features: np.ndarray | None):
        """(output rows, compared quantity features x cells) of one posterior sample per listed
        cell, averaged over the batches ``transform_batch`` (None: each cell's own)."""
        raise NotImplementedError

    def _cells_by_features(self, adata, indices, n_samples: int, return_mean: bool, return_numpy: bool | None,
                           feature_names: Sequence[Sequence[str]], chunks) -> list:
        """Per-cell outputs filled chunk by chunk (no concatenation): one per entry of
        ``feature_names`` (its columns), from ``chunks`` yielding ``(rows, value per output)``.
        Each is cells x features, or samples x cells x features when samples are kept; arrays,
        or DataFrames (cells and features named) unless ``return_numpy`` or samples are kept."""
        n_cells = len(cell_indices(self._anndata(adata).n_obs, indices))
        lead = (n_cells,) if n_samples == 1 or return_mean else (n_samples, n_cells)
        outs = [np.empty((*lead, len(names)), dtype=np.float32) for names in feature_names]
        for rows, *values in chunks:
            for out, value in zip(outs, values):
                out[..., rows, :] = value.cpu().numpy()
        if return_numpy or (return_numpy is None and len(lead) == 2):
            return outs
        if len(lead) == 2:
            raise ValueError("a DataFrame holds one sample per cell: pass return_mean=True or return_numpy=True")
        cells = self._obs_names(adata, indices)
        return [pd.DataFrame(out, index=cells, columns=names) for out, names in zip(outs, feature_names)]

    def _transform_batches(self, transform_batch) -> list[int | None]:
        if transform_batch is None:
            return [None]
        return self.registry.category_codes(C.BATCH_KEY, transform_batch).tolist()

    def _infer(self, tensors: dict, n_samples: int) -> dict:
        return self.module.inference(**self.module.inference_inputs(tensors), n_samples=n_samples)

    def _posterior(self, adata, indices, n_samples: int, batch_size: int | None
                   ) -> Iterator[tuple[np.ndarray, dict, dict]]:
        """(output rows, per-cell tensors, posterior samples) in chunks of the chosen cells.

        Each distinct cell is encoded once, however often ``indices`` lists it (differential
        expression draws cells with replacement); every listing gets its own latent sample.
        The generative tensors hold the per-cell covariates only (not the counts).
        """
        idx = cell_indices(self._anndata(adata).n_obs, indices)
        unique, inverse = np.unique(idx, return_inverse=True)
        by_cell = np.argsort(inverse, kind="stable")  # output rows grouped by distinct cell
        ends = np.cumsum(np.bincount(inverse, minlength=len(unique)))
        chunk = (as_count(batch_size, "batch_size") if batch_size is not None
                 else self._cells_per_chunk(n_samples * self.registry.n_vars))
        done = 0  # distinct cells handled so far
        for tensors in self._minibatches(adata, unique, batch_size):
            n = tensors[C.X_KEY].shape[0]
            inf = self._infer(tensors, 1)
            covariates = {k: v for k, v in tensors.items() if k not in _COUNT_KEYS}
            first, last = (ends[done - 1] if done else 0), ends[done + n - 1]
            rows = by_cell[first:last]
            local = torch.as_tensor(inverse[rows] - done, device=inf["qz_mean"].device)
            for start in range(0, len(rows), chunk):
                part = local[start:start + chunk]
                yield (_as_slice(rows[start:start + chunk]), {k: v[part] for k, v in covariates.items()},
                       self.module.resample_inference(inf, part, n_samples))
            done += n

    def _generate(self, tensors: dict, inference_out: dict, transform_batch: int | None = None,
                  **generative_kwargs) -> dict:
        inputs = self.module.generative_inputs(tensors, inference_out, transform_batch=transform_batch)
        return self.module.generative(**inputs, **generative_kwargs)


class ExpressionMixin(PosteriorMixin):
    """Adds expression queries to a model (needs ``_minibatches``, ``registry``, ``module``)."""

    def _gene_mask(self, gene_list: Sequence[str] | None) -> np.ndarray | None:
        return self._feature_mask(gene_list, self.registry.var_names)

    def _de_chunks(self, adata, cells: np.ndarray, transform_batch, features: np.ndarray | None):
        """(output rows, normalized expression features x cells) of one posterior sample per
        listed cell."""
        return self._expression_chunks(adata, cells, transform_batch=transform_batch, genes=features,
                                       library_size=1, n_samples=1, return_mean=True, batch_size=None,
                                       genes_major=True)

    @torch.no_grad()
    def _expression_chunks(self, adata, indices, transform_batch, genes: np.ndarray | None,
                           library_size: float | str, n_samples: int, return_mean: bool,
                           batch_size: int | None, genes_major: bool = False
                           ) -> Iterator[tuple[slice | np.ndarray, torch.Tensor]]:
        """(output rows, normalized expression) chunk by chunk: ``[samples x] cells x genes``,
        or with ``genes_major`` ``genes x [samples x] cells`` (differential expression reduces
        each gene over cells, and the decoder can produce that layout at no extra cost)."""
        batches = self._transform_batches(transform_batch)
        use_latent = _uses_latent_library(library_size)
        for rows, tensors, inf in self._posterior(adata, indices, n_samples, batch_size):
            # The same latent sample is decoded in every batch of transform_batch.
            total = None
            for b in batches:
                if use_latent:
                    value = self._generate(tensors, inf, b)["dist"].mu
                    value = value.movedim(-1, 0) if genes_major else value
                elif genes_major:
                    value = self._generate(tensors, inf, b, likelihood=False, genes_major=True)["scale_by_gene"]
                else:
                    value = self._generate(tensors, inf, b, likelihood=False)["scale"]
                if genes is not None:
                    value = value[genes] if genes_major else value[..., genes]
                total = value if total is None else total + value
            if len(batches) > 1:
                total = total / len(batches)
            if not use_latent and float(library_size) != 1.0:
                total = total * float(library_size)
            if n_samples > 1 and return_mean:
                total = total.mean(1 if genes_major else 0)
            yield rows, total

    @torch.no_grad()
    def get_normalized_expression(
        self,
        adata=None,
        indices=None,
        transform_batch=None,
        gene_list: Sequence[str] | None = None,
        library_size: float | str = 1,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
    ):
        """Expression with technical noise removed: the decoder's mean, per cell and gene.

        Computed in chunks of ``batch_size`` cells; only the genes of ``gene_list`` are kept,
        so memory is bounded by the chunk and the output.

        Parameters
        ----------
        adata, indices
            Cells to use (default: all of the model's own).
        transform_batch
            Batch category (or list, averaged) to generate every cell in; ``None``: its own.
        gene_list
            Genes to return (default: all).
        library_size
            Scale each cell to this total (``1``: proportions), or ``"latent"`` for the
            cell's own (observed or inferred) library size.
        n_samples
            Posterior samples per cell.
        batch_size
            Cells per chunk (default: up to 1,024, as many as keep a chunk near two million
            values).
        return_mean
            Average over samples; else return an array (samples x cells x genes).
        return_numpy
            Return a NumPy array instead of a DataFrame (cells x genes with names).

        Examples
        --------
        >>> expr = model.get_normalized_expression(gene_list=["CD3E", "MS4A1"], library_size=1e4)
        """
        n_samples = as_count(n_samples, "n_samples")
        genes = self._gene_mask(gene_list)
        names = self.registry.var_names if genes is None else [self.registry.var_names[i] for i in genes]
        chunks = self._expression_chunks(adata, indices, transform_batch, genes, library_size, n_samples,
                                         return_mean, batch_size)
        return self._cells_by_features(adata, indices, n_samples, return_mean, return_numpy, [names], chunks)[0]

    # Written once in ._differential (its first argument is the model).
    differential_expression = differential_expression

    @torch.no_grad()
    def get_latent_library_size(self, adata=None, indices=None, give_mean: bool = True,
                                batch_size: int | None = None) -> np.ndarray:
        """Each cell's library size (RNA total count) as the encoder sees it (cells x 1).

        The observed total, or, for a model that learns it (``use_observed_lib_size=False``),
        the mean ``exp(m + v / 2)`` of the log-normal posterior q(l | x) (``give_mean``) or
        one draw of it. (A model set up with ``size_factor_key`` decodes with those size
        factors instead; as in scvi-tools, this returns the library all the same.)

        Examples
        --------
        >>> adata.obs["library_scvi"] = model.get_latent_library_size()[:, 0]
        """
        out = []
        for tensors in self._minibatches(adata, indices, batch_size):
            inf = self.module.inference(**self.module.inference_inputs(tensors))
            if give_mean and "ql_mean" in inf:
                library = torch.exp(inf["ql_mean"] + 0.5 * inf["ql_var"])
            else:
                library = torch.exp(inf["library"])
            out.append(library.cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def get_likelihood_parameters(self, adata=None, indices=None, n_samples: int = 1,
                                  give_mean: bool = False, batch_size: int | None = None) -> dict:
        """Parameters of the count distribution per cell and gene.

        Returns a dict with ``mean`` (the NB/Poisson mean), and where the likelihood has them
        ``dispersions`` (theta) and ``dropout`` (the zero-inflation probability, as in
        scvi-tools; for AUTOZI that of its ZINB component, before the per-gene mixture with
        the NB). With ``n_samples`` > 1 and not ``give_mean``, arrays are samples x cells x
        genes; ``give_mean`` averages over the samples.

        Examples
        --------
        >>> params = model.get_likelihood_parameters(n_samples=10, give_mean=True)
        >>> params["mean"].shape, params["dropout"].max() <= 1
        """
        n_samples = as_count(n_samples, "n_samples")
        parts: dict[str, list] = {}
        for tensors in self._minibatches(adata, indices, batch_size):
            generated = self._generate(tensors, self._infer(tensors, n_samples))
            dist = generated["dist"]
            values = {"mean": dist.mu}
            if hasattr(dist, "theta"):
                values["dispersions"] = dist.theta.expand_as(dist.mu)
            if "zi_probs" in generated:  # a module whose likelihood mixes the ZINB with something else
                values["dropout"] = generated["zi_probs"]
            elif hasattr(dist, "zi_logits"):
                values["dropout"] = torch.sigmoid(dist.zi_logits)
            for key, value in values.items():
                if n_samples > 1 and give_mean:
                    value = value.mean(0)
                parts.setdefault(key, []).append(value.cpu())
        return {k: torch.cat(v, dim=-2).numpy() for k, v in parts.items()}

    @torch.no_grad()
    def posterior_predictive_sample(self, adata=None, indices=None, n_samples: int = 1,
                                    gene_list: Sequence[str] | None = None,
                                    batch_size: int | None = None) -> np.ndarray:
        """Counts drawn from the posterior predictive distribution.

        Returns cells x genes (``n_samples=1``) or cells x genes x samples.

        Examples
        --------
        >>> counts = model.posterior_predictive_sample(n_samples=5)
        """
        n_samples = as_count(n_samples, "n_samples")
        genes = self._gene_mask(gene_list)
        chunks = []
        for tensors in self._minibatches(adata, indices, batch_size):
            draw = self._generate(tensors, self._infer(tensors, n_samples))["dist"].sample()
            if genes is not None:
                draw = draw[..., genes]
            chunks.append(draw.permute(1, 2, 0) if n_samples > 1 else draw)
            chunks[-1] = chunks[-1].cpu()
        return torch.cat(chunks, dim=0).numpy()
