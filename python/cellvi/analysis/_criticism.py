"""Posterior predictive checks: how well do a model's generated counts resemble the data?

Per gene: mean, variance and zero fraction, observed and generated. Per cell: Spearman
correlations across genes, in two pairs, each an observed score with its reference, the same
score computed on a draw of the model in place of the data (what the model would score if
the data were exactly as it says):

- observed vs one posterior predictive draw, against draw vs an independent draw;
- observed vs the posterior mean, against draw vs the posterior mean.

Compare each score with its own reference, not with 1 and not across pairs: sparse counts
hold many ties and much sampling noise, so even a perfect model scores low per-cell rank
correlations on cells with small libraries, and a noise-free mean scores above two noisy
draws.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from .. import _constants as C
from ..train import as_count


@dataclasses.dataclass
class PosteriorPredictiveCheck:
    """Result of :func:`posterior_predictive_check`."""

    per_gene: pd.DataFrame
    per_cell: pd.DataFrame
    figure: object  # matplotlib Figure, or None with plot=False


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (ties averaged)."""
    from scipy.stats import rankdata  # scipy.stats is slow to import: only when needed

    ra = rankdata(a, axis=1, method="average")
    rb = rankdata(b, axis=1, method="average")
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / denom, np.nan)


@torch.no_grad()
def posterior_predictive_check(model, adata=None, indices=None, n_samples: int = 2,
                               batch_size: int | None = 256, plot: bool = True
                               ) -> PosteriorPredictiveCheck:
    """Compare observed counts with the model's posterior predictive distribution.

    Parameters
    ----------
    model
        A trained model with an expression decoder (e.g. ``cellvi.SCVI``).
    adata, indices
        Cells to check (default: all of the model's own).
    n_samples
        Posterior predictive draws per cell (at least 2: the draw-vs-draw reference needs
        two).
    batch_size
        Cells per chunk.
    plot
        Also draw a matplotlib Figure of the per-gene and per-cell statistics.

    Returns
    -------
    ``PosteriorPredictiveCheck`` with ``per_gene`` (``observed_mean``, ``generated_mean``,
    ``observed_variance``, ``generated_variance``, ``observed_zero_fraction``,
    ``generated_zero_fraction``), ``per_cell`` (``library_size``; ``spearman_draw``:
    observed vs one predictive draw, with its reference ``spearman_draw_vs_draw``, that draw
    vs a second one; ``spearman_mean``: observed vs posterior mean, with its reference
    ``spearman_draw_vs_mean``, a draw vs the posterior mean) and ``figure``.

    Examples
    --------
    >>> ppc = cellvi.criticism.posterior_predictive_check(model)
    >>> ppc.per_cell[["spearman_draw", "spearman_draw_vs_draw"]].median()
    >>> ppc.figure.savefig("ppc.png")
    """
    n_samples = as_count(n_samples, "n_samples", minimum=2)
    n_genes = model.registry.n_vars
    sums = {k: np.zeros(n_genes) for k in ("x", "x2", "x0", "g", "g2", "g0")}
    cells: dict[str, list] = {k: [] for k in ("library_size", "spearman_draw", "spearman_draw_vs_draw",
                                            "spearman_mean", "spearman_draw_vs_mean")}
    n_cells = 0
    for tensors in model._minibatches(adata, indices, batch_size):
        inf = model._infer(tensors, n_samples)
        dist = model._generate(tensors, inf)["dist"]
        x = tensors[C.X_KEY].cpu().numpy().astype(np.float64)
        mean = dist.mean.mean(0).cpu().numpy()
        draws = dist.sample().cpu().numpy().astype(np.float64)  # samples x cells x genes
        n_cells += x.shape[0]
        sums["x"] += x.sum(0)
        sums["x2"] += (x**2).sum(0)
        sums["x0"] += (x == 0).sum(0)
        sums["g"] += draws.sum((0, 1)) / n_samples
        sums["g2"] += (draws**2).sum((0, 1)) / n_samples
        sums["g0"] += (draws == 0).sum((0, 1)) / n_samples
        cells["library_size"].append(x.sum(1))
        cells["spearman_draw"].append(_row_spearman(x, draws[0]))
        cells["spearman_draw_vs_draw"].append(_row_spearman(draws[1], draws[0]))
        cells["spearman_mean"].append(_row_spearman(x, mean))
        cells["spearman_draw_vs_mean"].append(_row_spearman(draws[1], mean))
    obs_mean, gen_mean = sums["x"] / n_cells, sums["g"] / n_cells
    per_gene = pd.DataFrame(
        {
            "observed_mean": obs_mean,
            "generated_mean": gen_mean,
            "observed_variance": sums["x2"] / n_cells - obs_mean**2,
            "generated_variance": sums["g2"] / n_cells - gen_mean**2,
            "observed_zero_fraction": sums["x0"] / n_cells,
            "generated_zero_fraction": sums["g0"] / n_cells,
        },
        index=pd.Index(model.registry.var_names, name="gene"),
    )
    per_cell = pd.DataFrame({k: np.concatenate(v) for k, v in cells.items()},
                            index=model._obs_names(adata, indices))
    figure = _plot(per_gene, per_cell) if plot else None
    return PosteriorPredictiveCheck(per_gene, per_cell, figure)


def _plot(per_gene: pd.DataFrame, per_cell: pd.DataFrame):
    import matplotlib.pyplot as plt  # imported here: `import cellvi` does not load matplotlib

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for ax, stat, log in ((axes[0, 0], "mean", True), (axes[0, 1], "variance", True),
                          (axes[1, 0], "zero_fraction", False)):
        obs, gen = per_gene[f"observed_{stat}"], per_gene[f"generated_{stat}"]
        ax.scatter(obs, gen, s=4, alpha=0.5)
        lo, hi = max(min(obs.min(), gen.min()), 1e-4 if log else 0), max(obs.max(), gen.max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
        if log:
            ax.set(xscale="log", yscale="log")
        ax.set(xlabel=f"observed {stat.replace('_', ' ')}", ylabel=f"generated {stat.replace('_', ' ')}",
               title=f"Per gene: {stat.replace('_', ' ')}")
    ax = axes[1, 1]
    # Each observed score next to its reference, the same score of a model draw: a gap
    # between the two of a pair is misfit; the pairs are not comparable with each other.
    order = np.argsort(per_cell["library_size"].to_numpy())
    library = per_cell["library_size"].to_numpy()[order]
    for column, label, colour, style in (
            ("spearman_draw", "observed vs draw", "C0", "-"), ("spearman_draw_vs_draw", "draw vs draw", "C0", "--"),
            ("spearman_mean", "observed vs mean", "C1", "-"), ("spearman_draw_vs_mean", "draw vs mean", "C1", "--")):
        values = per_cell[column].to_numpy()[order]
        ax.scatter(library, values, s=3, alpha=0.2, color=colour)
        ax.plot(library, _running_median(values), color=colour, ls=style, lw=1.5, label=label)
    ax.set(xscale="log", xlabel="library size", ylabel="Spearman across genes",
           title="Per cell: observed (solid) vs model reference (dashed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _running_median(values: np.ndarray, window: int = 101) -> np.ndarray:
    """Median over a sliding window (values sorted by library size), NaNs ignored."""
    half = min(window, len(values)) // 2
    return np.array([np.nanmedian(values[max(0, i - half):i + half + 1]) for i in range(len(values))])
