"""scib-style scores of an integrated embedding (a latent space, PCA after Harmony, ...).

Biological conservation (do cells of one type stay together?):
    label silhouette   mean silhouette width of the labels, rescaled to [0, 1] ((s + 1) / 2)
    NMI, ARI           k-means with as many clusters as labels, against the labels
Batch correction (do batches mix within a type?):
    batch silhouette   per label, 1 - |silhouette width of the batches| averaged over its
                       cells; the mean over labels (labels present in one batch are skipped)
    iLISI              the inverse Simpson index of the batches among each cell's 90 nearest
                       neighbours (Gaussian weights calibrated to perplexity 30), median over
                       cells, rescaled to [0, 1]: (LISI - 1) / (n_batches - 1)
    graph connectivity per label, the share of its cells in the largest connected piece of
                       the 15-nearest-neighbour graph restricted to the label; mean over labels
Total: 0.6 x mean(biological) + 0.4 x mean(batch), as in scib's benchmark. Metrics that need
labels use the labelled cells only (a label of NaN/None is "unknown").

Only NumPy and SciPy are used (k-means: SciPy's k-means++ with several restarts).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.cluster.vq import kmeans2
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

BIO_METRICS = ("label_silhouette", "nmi", "ari")
BATCH_METRICS = ("batch_silhouette", "ilisi", "graph_connectivity")
LISI_NEIGHBORS, GRAPH_NEIGHBORS = 90, 15
_DISTANCES_PER_BLOCK = 2 ** 24  # distances computed at a time (~130 MB of float64 each for d2, dist)


def _codes(values, name: str) -> tuple[np.ndarray, int]:
    """Integer codes of a label vector (-1 where missing) and the number of categories."""
    series = pd.Series(np.asarray(values, dtype=object))
    missing = series.isna().to_numpy()
    codes, uniques = pd.factorize(series.astype(str).where(~missing, None), use_na_sentinel=True)
    if len(uniques) == 0:
        raise ValueError(f"{name} has no known values")
    return codes.astype(np.int64), len(uniques)


def silhouette_samples(X: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Silhouette width of every row of ``X`` (Euclidean) for the clusters ``codes`` (0..k-1).

    s = (b - a) / max(a, b), with a the mean distance to the other members of the cell's
    cluster and b the smallest mean distance to another cluster; 0 for a cluster of one."""
    X = np.asarray(X, dtype=np.float64)
    k = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=k).astype(np.float64)
    onehot = sparse.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), k))
    squared = np.einsum("ij,ij->i", X, X)
    out = np.empty(len(codes))
    rows_per_block = max(16, _DISTANCES_PER_BLOCK // len(codes))
    for start in range(0, len(codes), rows_per_block):
        block = slice(start, start + rows_per_block)
        d2 = squared[block, None] + squared[None, :] - 2.0 * (X[block] @ X.T)
        dist = np.sqrt(np.maximum(d2, 0.0))
        sums = np.asarray((onehot.T @ dist.T).T)  # block x k: summed distance to each cluster
        own = codes[block]
        rows = np.arange(len(own))
        own_size = sizes[own]
        a = sums[rows, own] / np.maximum(own_size - 1, 1)
        means = sums / sizes
        means[rows, own] = np.inf
        b = means.min(axis=1)
        s = (b - a) / np.maximum(np.maximum(a, b), 1e-300)
        out[block] = np.where(own_size > 1, s, 0.0)
    return out


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    return np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).astype(np.float64)


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """NMI of two labelings (codes), normalized by the arithmetic mean of their entropies."""
    table = _contingency(a, b)
    n = table.sum()
    pij = table[table > 0] / n
    pa, pb = table.sum(1) / n, table.sum(0) / n
    outer = np.outer(pa, pb)[table > 0]
    mi = float(np.sum(pij * np.log(pij / outer)))
    ha = -float(np.sum(pa[pa > 0] * np.log(pa[pa > 0])))
    hb = -float(np.sum(pb[pb > 0] * np.log(pb[pb > 0])))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    return mi / max((ha + hb) / 2.0, 1e-300)


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (codes)."""
    table = _contingency(a, b)

    def pairs(x):
        return float(np.sum(x * (x - 1) / 2.0))

    total = pairs(np.array([table.sum()]))
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2.0
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def kmeans(X: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Cluster codes from k-means++ (SciPy), the best of ``n_init`` seeded restarts."""
    X = np.asarray(X, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, math.inf
    for _ in range(n_init):
        centres, codes = kmeans2(X, k, minit="++", seed=rng)
        inertia = float(np.sum((X - centres[codes]) ** 2))
        if inertia < best_inertia:
            best, best_inertia = codes, inertia
    return best


def _simpson_index(distances: np.ndarray, neighbour_codes: np.ndarray, n_batches: int,
                   perplexity: float, tol: float = 1e-5, n_steps: int = 50) -> np.ndarray:
    """Simpson index of the neighbours' batches per cell, neighbours weighted exp(-beta d)
    with beta found by bisection so that the weights' entropy is log(perplexity)."""
    n = distances.shape[0]
    beta = np.ones(n)
    low, high = np.full(n, -np.inf), np.full(n, np.inf)
    target = math.log(perplexity)
    d = distances - distances[:, :1]  # shifting the distances leaves P unchanged, avoids underflow
    for _ in range(n_steps):
        weights = np.exp(-d * beta[:, None])
        total = weights.sum(1)
        entropy = np.log(total) + beta * (d * weights).sum(1) / total
        diff = entropy - target
        if np.all(np.abs(diff) < tol):
            break
        too_flat = diff > 0  # entropy too high: sharpen (larger beta)
        low = np.where(too_flat, beta, low)
        high = np.where(too_flat, high, beta)
        beta = np.where(too_flat, np.where(np.isinf(high), beta * 2.0, (beta + high) / 2.0),
                        np.where(np.isinf(low), beta / 2.0, (beta + low) / 2.0))
    P = weights / total[:, None]
    per_batch = np.zeros((n, n_batches))
    np.add.at(per_batch, (np.repeat(np.arange(n), P.shape[1]), neighbour_codes.ravel()), P.ravel())
    return np.sum(per_batch ** 2, axis=1)


def _neighbours(X: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of each row's ``n_neighbors`` nearest other rows (at most all
    others), nearest first."""
    k = min(n_neighbors, len(X) - 1)
    if k < 1:  # a single row has no neighbours (and cKDTree would return 1-D arrays)
        return np.zeros((len(X), 0)), np.zeros((len(X), 0), dtype=np.int64)
    distances, index = cKDTree(X).query(X, k=k + 1)
    return distances[:, 1:], index[:, 1:]


def _ilisi(distances: np.ndarray, index: np.ndarray, batch_codes: np.ndarray, scale: bool) -> float:
    n_batches = int(batch_codes.max()) + 1
    lisi = 1.0 / _simpson_index(distances, batch_codes[index], n_batches, perplexity=index.shape[1] / 3.0)
    value = float(np.median(lisi))
    return (value - 1.0) / (n_batches - 1.0) if scale and n_batches > 1 else value


def _graph_connectivity(index: np.ndarray, label_codes: np.ndarray) -> float:
    n, k = index.shape
    graph = sparse.csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), index.ravel())), shape=(n, n))
    graph = graph + graph.T
    shares = []
    for label in np.unique(label_codes):
        members = np.flatnonzero(label_codes == label)
        _, pieces = connected_components(graph[members][:, members], directed=False)
        shares.append(np.bincount(pieces).max() / len(members))
    return float(np.mean(shares))


def ilisi(X: np.ndarray, batch_codes: np.ndarray, n_neighbors: int = LISI_NEIGHBORS, scale: bool = True) -> float:
    """Median inverse Simpson index of batches among each cell's neighbours (iLISI)."""
    return _ilisi(*_neighbours(X, n_neighbors), batch_codes, scale)


def graph_connectivity(X: np.ndarray, label_codes: np.ndarray, n_neighbors: int = GRAPH_NEIGHBORS) -> float:
    """Mean over labels of the share of the label's cells in the largest connected piece of
    the (symmetrised) kNN graph restricted to that label."""
    return _graph_connectivity(_neighbours(X, n_neighbors)[1], label_codes)


def batch_silhouette(X: np.ndarray, batch_codes: np.ndarray, label_codes: np.ndarray) -> float:
    """Mean over labels of the mean of 1 - |silhouette width of the batches| among the
    label's cells (labels with one batch, or no more cells than batches, are skipped)."""
    scores = []
    for label in np.unique(label_codes):
        members = np.flatnonzero(label_codes == label)
        batches, codes = np.unique(batch_codes[members], return_inverse=True)
        if len(batches) < 2 or len(members) <= len(batches):
            continue
        scores.append(float(np.mean(1.0 - np.abs(silhouette_samples(X[members], codes)))))
    return float(np.mean(scores)) if scores else float("nan")


def integration_scores(embedding, batch, labels=None, seed: int = 0) -> pd.Series:
    """scib-style integration scores of an embedding (cells x dimensions).

    Parameters
    ----------
    embedding
        Cells x dimensions (e.g. ``model.get_latent_representation()``, or Harmony's PCA).
    batch
        Batch of every cell.
    labels
        Cell type of every cell (NaN/None: unknown; those cells are left out of the metrics
        that need labels). None: only iLISI is computed, and the totals are NaN.
    seed
        Seed of the k-means restarts.

    Returns
    -------
    pandas.Series with ``label_silhouette``, ``nmi``, ``ari``, ``batch_silhouette``,
    ``ilisi``, ``graph_connectivity``, ``bio`` (mean of the first three), ``batch`` (mean of
    the next three) and ``total`` (0.6 bio + 0.4 batch). A metric that cannot be computed
    is NaN, and so are the means it enters.

    Examples
    --------
    >>> from cellvi.metrics import integration_scores
    >>> scores = integration_scores(model.get_latent_representation(), adata.obs["sample_id"],
    ...                             adata.obs["cluster_id"])
    >>> scores["total"]
    """
    X = np.asarray(embedding, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3:
        raise ValueError(f"embedding must be cells x dimensions with at least 3 cells; got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("embedding has NaN or infinite values")
    batch_codes, n_batches = _codes(batch, "batch")
    if len(batch_codes) != len(X):
        raise ValueError(f"batch has {len(batch_codes)} values for {len(X)} cells")
    if (batch_codes < 0).any():
        raise ValueError("batch has missing values; every cell needs a batch")
    scores = dict.fromkeys(BIO_METRICS + BATCH_METRICS, float("nan"))
    # One neighbour search serves iLISI and, when every cell is labelled, graph connectivity
    # (its 15 nearest are the first 15 of the 90).
    neighbours = _neighbours(X, LISI_NEIGHBORS)
    scores["ilisi"] = _ilisi(*neighbours, batch_codes, scale=True) if n_batches > 1 else float("nan")
    if labels is not None:
        label_codes, n_labels = _codes(labels, "labels")
        if len(label_codes) != len(X):
            raise ValueError(f"labels has {len(label_codes)} values for {len(X)} cells")
        known = label_codes >= 0
        Xl, ll, bl = X[known], label_codes[known], batch_codes[known]
        if n_labels > 1:
            scores["label_silhouette"] = float((np.mean(silhouette_samples(Xl, ll)) + 1.0) / 2.0)
            clusters = kmeans(Xl, n_labels, seed=seed)
            scores["nmi"] = normalized_mutual_info(ll, clusters)
            scores["ari"] = adjusted_rand_index(ll, clusters)
        scores["batch_silhouette"] = batch_silhouette(Xl, bl, ll)
        graph_index = (neighbours[1][:, :GRAPH_NEIGHBORS] if known.all()
                       else _neighbours(Xl, GRAPH_NEIGHBORS)[1])
        scores["graph_connectivity"] = _graph_connectivity(graph_index, ll)
    scores["bio"] = float(np.mean([scores[m] for m in BIO_METRICS]))
    scores["batch"] = float(np.mean([scores[m] for m in BATCH_METRICS]))
    scores["total"] = 0.6 * scores["bio"] + 0.4 * scores["batch"]
    return pd.Series(scores)
