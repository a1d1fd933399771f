"""Bayesian differential expression from a model's normalized expression (and, with
``change="difference"``, differential accessibility from accessibility probabilities).

For two groups of cells, normalized expression ("scale", rho) is sampled from the posterior
for cells drawn at random from each group; pairs across the groups (one to one in random
order, or ``m_permutation`` random pairs) give samples of the log2 fold change per gene (or of
the difference rho1 - rho2). In ``"vanilla"`` mode the evidence is P(rho1 > rho2); in
``"change"`` mode it is P(|LFC| >= delta) (or P(|difference| >= delta)), and genes are called
DE controlling the posterior expected false discovery rate. Nothing is written to the AnnData.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import _constants as C
from .._settings import settings
from ..data import cell_indices
from ..train import as_count, seeded_generator

_EPS = 1e-8
_GENE_CHUNK = 256
CHANGES = ("lfc", "difference")  # the effect size: log2 fold change, or plain difference


def _group_indices(n_obs: int, idx, name: str) -> np.ndarray:
    idx = np.unique(cell_indices(n_obs, idx, name))
    if idx.size == 0:
        raise ValueError(f"{name} selects no cells")
    return idx


def _comparisons(adata, groupby, group1, group2, idx1, idx2) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(group1 name, group2 name, idx1, idx2) for each comparison asked for."""
    n = adata.n_obs
    if groupby is None:
        if idx1 is None:
            raise ValueError("pass groupby (an obs column) or idx1 (cells of the first group)")
        if group1 is not None or group2 is not None:
            raise ValueError("group1/group2 name groups of `groupby`; pass groupby too")
        i1 = _group_indices(n, idx1, "idx1")
        i2 = np.setdiff1d(np.arange(n), i1) if idx2 is None else _group_indices(n, idx2, "idx2")
        if np.intersect1d(i1, i2).size:
            raise ValueError(f"idx1 and idx2 overlap in {np.intersect1d(i1, i2).size} cells; the groups must be disjoint")
        if i2.size == 0:
            raise ValueError("the second group is empty (idx1 selects every cell)")
        return [("idx1", "idx2" if idx2 is not None else "rest", i1, i2)]
    if idx1 is not None or idx2 is not None:
        raise ValueError("pass either groupby (with group1/group2) or idx1/idx2, not both")
    if groupby not in adata.obs.columns:
        raise KeyError(f"obs column '{groupby}' not found; available: {', '.join(map(str, adata.obs.columns[:30]))}")
    column = adata.obs[groupby]
    # Groups are named as strings; in a numeric column by value (1, 1.0 and "1" are one group;
    # a categorical column is not numeric, its categories are its names).
    # Cells with a missing value (NaN, None) are in no group, nor in "the rest".
    numeric = pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)

    def key(value) -> str:
        if numeric:
            try:
                number = float(value)
            except (TypeError, ValueError):
                return str(value)
            return str(int(number)) if number.is_integer() else str(number)
        return str(value)

    if isinstance(column.dtype, pd.CategoricalDtype):  # codes: no string per cell
        names, codes = np.array([str(c) for c in column.cat.categories], dtype=object), column.cat.codes.to_numpy()
    else:
        present = ~column.isna().to_numpy()
        values = column.to_numpy()[present]
        unique, inverse = np.unique(values if numeric else values.astype(str), return_inverse=True)
        names = np.array([key(v) for v in unique], dtype=object)
        codes = np.full(n, -1, dtype=np.int64)
        codes[present] = inverse
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    order = [str(n) for n, count in zip(names, counts) if count]  # category order, or sorted
    code_of = {name: i for i, name in enumerate(map(str, names)) if counts[i]}

    def cells_of(group) -> np.ndarray:
        group = key(group)
        if group not in code_of:
            raise ValueError(f"group '{group}' not found in obs column '{groupby}'; groups: {', '.join(order[:30])}")
        return np.flatnonzero(codes == code_of[group])

    if np.isscalar(group1):
        group1 = [group1]
    firsts = order if group1 is None else [key(g) for g in group1]
    out = []
    for g1 in firsts:
        i1 = cells_of(g1)
        if group2 is None:
            i2 = np.flatnonzero((codes >= 0) & (codes != code_of[g1]))
            g2 = "rest"
        else:
            i2 = cells_of(group2)
            g2 = key(group2)
            if g2 == g1:
                raise ValueError(f"group1 and group2 are both '{g1}'")
        if i2.size == 0:
            raise ValueError(f"no cells outside group '{g1}' to compare with")
        out.append((g1, g2, i1, i2))
    return out


def _raw_statistics(X: sp.csr_matrix, idx: np.ndarray, genes: np.ndarray | None) -> dict:
    sub = X[idx]
    n = sub.shape[0]
    library = np.asarray(sub.sum(axis=1)).ravel()  # over all genes, before any gene subset
    detected = sp.csr_matrix(((sub.data > 0).astype(np.float32), sub.indices, sub.indptr), shape=sub.shape)

    def column_means(weights, matrix):  # a row vector times the matrix: one sparse pass
        means = np.asarray(weights @ matrix, dtype=np.float64).ravel() / n
        return means if genes is None else means[genes]

    ones = np.ones(n, dtype=np.float32)
    return {
        "raw_mean": column_means(ones, sub),
        "non_zeros_proportion": column_means(ones, detected),
        "raw_normalized_mean": column_means((1e4 / np.maximum(library, 1)).astype(np.float32), sub),
    }


def _sample_scales(model, adata, cells: np.ndarray, batches, n_samples: int, features, rng,
                   chunk_kwargs: dict) -> tuple[torch.Tensor, np.ndarray]:
    """Posterior normalized expression of cells drawn with replacement, features x samples
    (the statistics reduce each feature over samples, several times faster along contiguous
    memory than down the columns of a samples x features array), and the batch each sample
    was generated in ("": the cell's own).

    With ``batches`` (batch correction) the samples are pooled over those batches: an equal
    share of the ``n_samples`` draws (the remainder one more each to the first batches, so
    that groups generated in different numbers of batches still draw ``n_samples`` each) is
    generated as if in each batch, laid out batch after batch.
    """
    choices = [None] if batches is None else list(batches)
    shares = [max(1, n_samples // len(choices) + (i < n_samples % len(choices))) for i in range(len(choices))]
    n_features = len(model._de_feature_names()) if features is None else len(features)
    # NumPy asks the kernel for huge pages for an array this size, so it faults in few pages;
    # a fresh torch buffer this large spends longer in page faults than in being filled.
    by_feature = torch.from_numpy(np.empty((n_features, sum(shares)), dtype=np.float32))
    offsets = [int(o) for o in np.concatenate([[0], np.cumsum(shares)[:-1]])]
    for batch, share, offset in zip(choices, shares, offsets):
        drawn = np.sort(rng.choice(cells, size=share, replace=True))
        for rows, values in model._de_chunks(adata, drawn, None if batch is None else [batch], features,
                                             **chunk_kwargs):
            rows = (slice(rows.start + offset, rows.stop + offset) if isinstance(rows, slice)
                    else rows + offset)
            by_feature[:, rows] = values.cpu()
    return by_feature, np.repeat(np.array(["" if b is None else b for b in choices], dtype=object), shares)


def _pairs(batch1: np.ndarray, batch2: np.ndarray, m_permutation: int | None, generator: torch.Generator
           ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Which sample of group 1 meets which of group 2 (sample positions; None: in order).

    When both groups were generated in the same set of batches (batch correction), samples
    meet only samples generated in the same batch, so that the fold change compares the
    groups within a batch and the batch effect cancels; each batch gives its share of the
    pairs. Otherwise the pairs ignore batches.
    """
    same_batches = set(batch1.tolist()) == set(batch2.tolist())
    strata = np.unique(batch1) if same_batches else np.array([None])
    firsts, seconds = [], []
    for stratum in strata:
        in1 = np.arange(len(batch1)) if stratum is None else np.flatnonzero(batch1 == stratum)
        in2 = np.arange(len(batch2)) if stratum is None else np.flatnonzero(batch2 == stratum)
        in1, in2 = torch.from_numpy(in1), torch.from_numpy(in2)
        if m_permutation is None:
            # One to one in random order: the samples are stored sorted by cell, and pairing
            # them in that order would match cells by their position in the AnnData (often by
            # sample) rather than at random, which narrows the LFC distribution.
            # (The groups draw as many samples, except with fewer samples than batches, where
            # each batch still gets one: the larger group then pairs a random part of its own.)
            n = min(len(in1), len(in2))
            firsts.append(in1 if len(in1) == n else in1[torch.randperm(len(in1), generator=generator)[:n]])
            seconds.append(in2[torch.randperm(len(in2), generator=generator)[:n]])
        else:
            share = max(1, m_permutation // len(strata))
            firsts.append(in1[torch.randint(len(in1), (share,), generator=generator)])
            seconds.append(in2[torch.randint(len(in2), (share,), generator=generator)])
    first, second = torch.cat(firsts), torch.cat(seconds)
    in_order = m_permutation is None and torch.equal(first, torch.arange(len(batch1)))
    return (None if in_order else first), second


def _raw_statistics_of_blocks(blocks: list, idx: np.ndarray, features: np.ndarray | None) -> dict:
    """Raw statistics of each count block (e.g. genes, then proteins), each normalized by its
    own library size, side by side, then the chosen features."""
    parts = [_raw_statistics(X, idx, None) for X in blocks]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return out if features is None else {k: v[features] for k, v in out.items()}


def estimate_pseudocounts(by_gene1: torch.Tensor, by_gene2: torch.Tensor, raw_mean1: np.ndarray,
                          raw_mean2: np.ndarray, threshold_counts: float = 0.01,
                          quantile: float = 0.9) -> float:
    """The offset added to normalized expression before the log in ``"change"`` mode.

    ``by_gene1``/``by_gene2`` are each group's sampled normalized expression, genes x
    samples. Genes that a group barely expresses (mean raw count below ``threshold_counts``)
    still get some normalized expression from the model; the ``quantile`` of their largest
    sampled value is that group's "expression of nothing". The larger of the two groups'
    levels, divided by the number of genes, is the offset (at least 1e-10): it shrinks the
    fold changes of genes neither group expresses towards zero. This is scvi-tools' default.
    """
    levels = []
    for samples, raw_mean in ((by_gene1, raw_mean1), (by_gene2, raw_mean2)):
        silent = raw_mean < threshold_counts
        if silent.any():
            largest = samples.amax(1).numpy()[silent]
            levels.append(float(np.quantile(largest, quantile)))
        else:
            levels.append(1e-10)
    return max(1e-10, max(levels) / by_gene1.shape[0])


def _pair_statistics(t1: torch.Tensor, t2: torch.Tensor, mode: str, delta: float, pseudocounts: float,
                     pairs: tuple[torch.Tensor | None, torch.Tensor], test_mode: str = "three",
                     change: str = "lfc") -> dict:
    """Per-gene statistics over cross-group pairs of samples (genes x samples ``t1``, ``t2``;
    ``pairs``: the sample positions that meet, see :func:`_pairs`), in gene chunks (bounded
    memory).

    With ``change="lfc"``, in ``"change"`` mode the evidence uses ``pseudocounts`` and the LFC
    summaries (``lfc_*``) a thousandth of it (closer to the plain fold change, as scvi-tools
    reports them); a zero offset becomes 1e-8, so that no log is -inf. With
    ``change="difference"`` the effect is t1 - t2 (no offset) and its summaries are
    ``diff_*``.
    """
    n_pairs = len(pairs[1])
    # Scratch space reused by every chunk: fresh buffers would be page-faulted in each time.
    n_genes = t1.shape[0]
    chunk = -(-n_genes // -(-n_genes // _GENE_CHUNK))  # equal chunks of at most _GENE_CHUNK genes
    scratch = torch.empty((4, chunk, n_pairs))
    parts: dict[str, list] = {}

    def fraction(mask):  # an int32 count of the bytes, then one division: the fastest way
        return mask.view(torch.uint8).sum(1, dtype=torch.int32).double() / n_pairs

    for start in range(0, n_genes, chunk):
        x1 = t1[start:start + chunk]
        x2 = t2[start:start + chunk]
        a, b, c1, c2 = scratch[:, :len(x1)]
        # gather with an expanded index: faster here than index_select or x[:, index]
        if pairs[0] is not None:
            x1 = torch.gather(x1, 1, pairs[0].expand(len(x1), -1), out=c1)
        x2 = torch.gather(x2, 1, pairs[1].expand(len(x2), -1), out=c2)
        stats = {}
        if change == "difference":
            effect, prefix = torch.sub(x1, x2, out=a), "diff"
            if mode == "change":
                up, down = fraction(effect >= delta), fraction(effect < -delta)
                stats["proba_de"] = torch.maximum(up, down) if test_mode == "three" else up + down
            else:
                stats["proba_m1"], stats["proba_m2"] = fraction(x1 > x2), fraction(x1 < x2)
        else:
            if mode == "change":
                # LFC >= delta  <=>  x1 + o >= c (x2 + o)  <=>  x1 - c x2 >= (c - 1) o, with
                # c = 2^delta; likewise LFC < -delta  <=>  x1 - x2 / c < -(c - 1) o / c. The
                # evidence needs no logarithms.
                o, c = pseudocounts or _EPS, 2.0 ** delta
                up = fraction(torch.add(x1, x2, alpha=-c, out=a) >= (c - 1) * o)
                down = fraction(torch.add(x1, x2, alpha=-1 / c, out=a) < -(c - 1) * o / c)
                stats["proba_de"] = torch.maximum(up, down) if test_mode == "three" else up + down
                offset = 1e-3 * pseudocounts or _EPS
            else:
                stats["proba_m1"], stats["proba_m2"] = fraction(x1 > x2), fraction(x1 < x2)
                offset = pseudocounts or _EPS
            effect = torch.add(x1, offset, out=a).log2_().sub_(torch.add(x2, offset, out=b).log2_())
            prefix = "lfc"
        _summaries(stats, effect, prefix, n_pairs, b)
        for k, v in stats.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v).numpy().astype(np.float64) for k, v in parts.items()}


def _summaries(stats: dict, effect: torch.Tensor, prefix: str, n_pairs: int, scratch: torch.Tensor) -> None:
    """Mean, median, sd, min and max of each row of ``effect`` into ``stats`` (``scratch``: a
    buffer of its shape, overwritten)."""
    # Two passes (the mean, then squares about it) with torch's pairwise float32 sums, which
    # keep float32 accurate: several times faster than torch.std_mean or float64 accumulation.
    mean = effect.sum(1) / n_pairs
    centred = torch.sub(effect, mean[:, None], out=scratch)
    variance = torch.linalg.vecdot(centred, centred) / max(n_pairs - 1, 1)
    # The lower middle draw for an even count; np.median averages the middle two, which
    # for 5,000 draws differ by about sd/4,000, against a Monte Carlo error of sd/57.
    stats.update({f"{prefix}_mean": mean, f"{prefix}_median": effect.median(1).values,
                  f"{prefix}_std": variance.sqrt(), f"{prefix}_min": effect.amin(1),
                  f"{prefix}_max": effect.amax(1)})


def fdr_calls(proba_de: np.ndarray, fdr_target: float) -> np.ndarray:
    """Genes called DE so that the posterior expected FDR stays at or below ``fdr_target``.

    Genes are ranked by P(DE); the expected FDR of the top k is the mean of (1 - P(DE)) over
    them, which grows with k; the largest k within the target is called.
    """
    order = np.argsort(-proba_de, kind="stable")
    expected_fdr = np.cumsum(1 - proba_de[order]) / np.arange(1, len(order) + 1)
    n_called = int(np.sum(expected_fdr <= fdr_target))
    is_de = np.zeros(len(proba_de), dtype=bool)
    is_de[order[:n_called]] = True
    return is_de


def differential_expression(
    model,
    adata=None,
    groupby: str | None = None,
    group1=None,
    group2=None,
    idx1=None,
    idx2=None,
    mode: str = "vanilla",
    delta: float = 0.25,
    fdr_target: float = 0.05,
    batch_correction: bool = False,
    batchid1: Sequence[str] | None = None,
    batchid2: Sequence[str] | None = None,
    n_samples: int = 5000,
    m_permutation: int | None = None,
    pseudocounts: float | None = None,
    test_mode: str = "three",
    gene_list: Sequence[str] | None = None,
    change: str = "lfc",
    chunk_kwargs: dict | None = None,
) -> pd.DataFrame:
    """Bayesian differential expression between groups of cells.

    Normalized expression is sampled from the posterior for ``n_samples`` cells drawn from
    each group; the draws of the two groups, paired one to one at random (or ``m_permutation``
    random pairs), give samples of each gene's log2 fold change (LFC). The AnnData is never
    modified.

    Parameters
    ----------
    model
        A trained model with an expression decoder (called as ``model.differential_expression``).
    adata
        Cells to use (default: the model's own).
    groupby, group1, group2
        obs column and group names: ``group1`` vs ``group2`` (default: the rest); with no
        ``group1``, every group against the rest (one-vs-rest), concatenated.
    idx1, idx2
        Instead of ``groupby``: integer indices or boolean masks of the two groups
        (``idx2`` default: all other cells).
    mode
        ``"vanilla"``: evidence P(rho1 > rho2) (``proba_m1``); ``"change"``: evidence that
        the LFC exceeds ``delta`` in size (``proba_de``, see ``test_mode``), with genes
        called at ``fdr_target``.
    delta
        LFC threshold of ``"change"`` mode.
    fdr_target
        Posterior expected false discovery rate for ``is_de_fdr_<target>``.
    batch_correction
        Generate the sampled cells as if in each batch (``batchid1`` for group 1,
        ``batchid2`` for group 2; default all), an equal share of the samples per batch,
        instead of in their own batch; when both groups use the same batches, the fold
        changes pair samples generated in the same batch, so the batch effect cancels and
        the spread between batches stays in the LFC distribution (as scvi-tools does). Use
        it to compare conditions across batches; pick ``batchid1``/``batchid2`` when the
        batch is confounded with the condition.
    n_samples, m_permutation
        Cells sampled per group; random cross-group pairs for the LFC distribution
        (``None``: the ``n_samples`` draws paired one to one at random, as scvi-tools does
        by default).
    pseudocounts
        Added to the normalized expression before the log. ``None`` (change mode):
        estimated from the expression the model gives to genes a group does not express,
        over all genes whatever ``gene_list`` holds (see :func:`estimate_pseudocounts`);
        vanilla mode then uses 0.
    test_mode
        ``"three"``: ``proba_de`` = max(P(LFC >= delta), P(LFC < -delta)) (scvi-tools'
        default); ``"two"``: P(|LFC| >= delta).
    gene_list
        Genes to test (default: all).
    change
        The effect size: ``"lfc"``, the log2 fold change (``delta`` a log2 fold change,
        summaries ``lfc_*``); ``"difference"``, the plain difference group 1 - group 2, for
        quantities on a fixed scale such as probabilities (``delta`` a difference, summaries
        ``diff_*``; no pseudocounts).
    chunk_kwargs
        Model-specific arguments of how the model computes the compared quantity (passed to
        its ``_de_chunks``), e.g. totalVI's ``protein_prior_count``; a model's own
        ``differential_expression`` sets them from its documented arguments.

    Returns
    -------
    DataFrame indexed by gene, sorted by evidence: ``proba_de``/``proba_not_de`` (change)
    or ``proba_m1``/``proba_m2`` (vanilla), ``bayes_factor`` (log odds), ``scale1``,
    ``scale2``, ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max``,
    ``raw_mean1/2``, ``non_zeros_proportion1/2``, ``raw_normalized_mean1/2`` (counts per
    10,000), ``is_de_fdr_<target>`` (change), ``comparison``, ``group1``, ``group2``.

    Examples
    --------
    >>> de = model.differential_expression(groupby="condition", group1="stim", group2="ctrl",
    ...                                    mode="change")
    >>> de[de["is_de_fdr_0.05"]].head()
    """
    if mode not in ("vanilla", "change"):
        raise ValueError(f"mode must be 'vanilla' or 'change', got {mode!r}")
    if change not in CHANGES:
        raise ValueError(f"change must be one of {', '.join(CHANGES)}, got {change!r}")
    if mode == "change" and (delta is None or not float(delta) > 0):
        what = "log2 fold change" if change == "lfc" else "difference"
        raise ValueError(f"delta must be a positive {what} threshold, got {delta!r}")
    if test_mode not in ("two", "three"):
        raise ValueError(f"test_mode must be 'two' or 'three', got {test_mode!r}")
    if pseudocounts is not None and not (np.isfinite(pseudocounts) and pseudocounts >= 0):
        raise ValueError(f"pseudocounts must be a non-negative number or None, got {pseudocounts!r}")
    if not 0 < fdr_target < 1:
        raise ValueError(f"fdr_target must be in (0, 1), got {fdr_target}")
    n_samples = as_count(n_samples, "n_samples")
    chunk_kwargs = dict(chunk_kwargs or {})
    if m_permutation is not None:
        m_permutation = as_count(m_permutation, "m_permutation")
    data_adata = model._anndata(adata)
    registry = model.registry
    if (batchid1 is not None or batchid2 is not None) and not batch_correction:
        raise ValueError("batchid1/batchid2 choose batches to generate in; pass batch_correction=True too")
    if batch_correction:
        batches1 = registry.batch_categories if batchid1 is None else [str(b) for b in np.atleast_1d(batchid1)]
        batches2 = registry.batch_categories if batchid2 is None else [str(b) for b in np.atleast_1d(batchid2)]
        registry.category_codes(C.BATCH_KEY, batches1 + batches2)  # unknown batch ids fail here
        shared = set(batches1) & set(batches2)
        if shared and shared != set(batches1) | set(batches2):
            warnings.warn("batchid1 and batchid2 share some batches but not all: the fold changes pair "
                          "samples across batches, so the batch effect does not cancel; pass the same "
                          "batches for both groups, or batches that do not overlap", UserWarning, stacklevel=2)
    else:
        batches1 = batches2 = None
    all_names = model._de_feature_names()
    genes = model._feature_mask(gene_list, all_names)
    gene_names = all_names if genes is None else [all_names[i] for i in genes]
    feature_types = model._de_feature_types()
    if feature_types is not None:
        feature_types = np.asarray(feature_types, dtype=object)
        feature_types = feature_types if genes is None else feature_types[genes]
    comparisons = _comparisons(data_adata, groupby, group1, group2, idx1, idx2)
    blocks = model._de_count_blocks(adata)
    rng = np.random.default_rng(settings.seed)
    generator = seeded_generator(3)

    from tqdm.auto import tqdm  # imported here: `import cellvi` stays light

    frames = []
    # A bar for one-vs-rest over many groups; one comparison takes seconds and shows none.
    for name1, name2, i1, i2 in tqdm(comparisons, desc="Differential expression", unit="comparison",
                                     disable=not settings.progress_bar or len(comparisons) == 1):
        offset = pseudocounts
        if change == "difference":
            offset = 0.0  # a difference needs no offset
        elif offset is None and mode == "vanilla":
            offset = 0.0
        # The estimated offset is one number over all genes, so that a gene's result does
        # not depend on which other genes were asked for: all genes are sampled for it.
        sampled = None if offset is None else genes
        s1, batch1 = _sample_scales(model, adata, i1, batches1, n_samples, sampled, rng, chunk_kwargs)
        s2, batch2 = _sample_scales(model, adata, i2, batches2, n_samples, sampled, rng, chunk_kwargs)
        raw = {suffix: _raw_statistics_of_blocks(blocks, idx, sampled) for suffix, idx in (("1", i1), ("2", i2))}
        if offset is None:
            offset = estimate_pseudocounts(s1, s2, raw["1"]["raw_mean"], raw["2"]["raw_mean"])
            if genes is not None:
                index = torch.from_numpy(genes)
                s1, s2 = s1[index], s2[index]
                raw = {suffix: {k: v[genes] for k, v in values.items()} for suffix, values in raw.items()}
        pairs = _pairs(batch1, batch2, m_permutation, generator)
        stats = _pair_statistics(s1, s2, mode, delta, offset, pairs, test_mode, change)
        n_genes = len(gene_names)
        if mode == "change":
            evidence = {"proba_de": stats.pop("proba_de")}
            evidence["proba_not_de"] = 1.0 - evidence["proba_de"]
        else:
            evidence = {"proba_m1": stats.pop("proba_m1"), "proba_m2": stats.pop("proba_m2")}
        p, q = evidence.values()
        columns = {**evidence, "bayes_factor": np.log(p + _EPS) - np.log(q + _EPS),
                   "scale1": s1.mean(1).numpy(), "scale2": s2.mean(1).numpy(),
                   "pseudocounts": np.full(n_genes, offset), "delta": np.full(n_genes, delta if mode == "change" else np.nan),
                   **stats, **{k + suffix: v for suffix, values in raw.items() for k, v in values.items()}}
        if mode == "change":
            columns[f"is_de_fdr_{fdr_target}"] = fdr_calls(columns["proba_de"], fdr_target)
        order = np.argsort(-columns["proba_de" if mode == "change" else "bayes_factor"], kind="stable")
        # Built from a dict in one go: column by column insertion cost more than the raw statistics.
        frame = pd.DataFrame({k: v[order] for k, v in columns.items()},
                             index=pd.Index(np.asarray(gene_names, dtype=object)[order], name="gene"))
        if feature_types is not None:
            frame["feature_type"] = feature_types[order]
        frame["comparison"] = f"{name1} vs {name2}"
        frame["group1"] = name1
        frame["group2"] = name2
        frames.append(frame)
    return pd.concat(frames) if len(frames) > 1 else frames[0]
