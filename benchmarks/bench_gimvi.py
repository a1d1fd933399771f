"""gimVI (imputation of spatial genes from a single-cell reference): cellvi against scvi-tools.

Data: spacexr's MERFISH pair (../shared/data/spacexr_merfish_reference_1308.h5ad, 1,308 cells x
134 genes, of which the 4 without counts are dropped, and spacexr_merfish_spatial_750.h5ad, 750 cells x the same genes). Per seed, the
same held-out genes for both tools: ``--held-out`` spatial genes drawn at random with the seed
are removed from the spatial data; each tool trains gimVI with its defaults (ZINB reference
with a learned library, NB spatial data, adversarial weight 5) for ``--epochs`` epochs and
imputes the held-out genes in the spatial cells (``get_imputed_values(normalized=True)``).

Scores per held-out gene: Spearman and Pearson correlation over the spatial cells of the
imputed value and the measured one (the gene's counts over the cell's total of the genes the
model saw: the scale the model imputes on); the median over the held-out genes per run, then
the median and range over seeds. Speed: the wall time of ``train()`` (each tool in its own
fresh process, ``--threads`` torch threads).

``--data zeisel`` / ``--data kang``: a check on other data, a pair made from one single-cell
data set (zeisel_cortex_200genes, kang_se_12261) as no second FISH pair is at hand. Per seed
the cells are split in halves: one is the reference (every gene), the other plays the spatial
data. Its panel is ``DERIVED[data][1]`` random genes among those detected in at least 5% of the
cells, each thinned binomially with its own capture rate drawn from U(0.3, 1) (a technology
shift, as between sequencing and FISH); ``--held-out`` panel genes are removed and scored
against their thinned counts, on the same scale as above.

    benchmarks/.venv-scvi/bin/python benchmarks/bench_gimvi.py --seeds 0,1,2 --record
    benchmarks/.venv-scvi/bin/python benchmarks/bench_gimvi.py --data zeisel --held-out 10 --record
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit_result, median_range, record_section, run_per_seed  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SEQ = DATA / "spacexr_merfish_reference_1308.h5ad"
SPATIAL = DATA / "spacexr_merfish_spatial_750.h5ad"
SUMMARY_KEYS = ("gimVI imputation", "gimVI training")
# Pairs made from one single-cell data set (--data): the file and the spatial panel's size.
DERIVED = {"zeisel": (DATA / "zeisel_cortex_200genes.h5ad", 60), "kang": (DATA / "kang_se_12261.h5ad", 150)}
OTHER_DATA_KEY = "gimVI on other data"


def load(seed: int, n_held: int, data: str = "merfish"):
    """(reference, spatial without the held-out genes, held-out gene names, measured values of
    the held-out genes: spatial cells x genes, on the imputation's scale)."""
    import warnings

    import anndata
    import numpy as np

    if data != "merfish":
        return load_derived(data, seed, n_held)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq, full = anndata.read_h5ad(SEQ), anndata.read_h5ad(SPATIAL)
    seq = seq[np.asarray(seq.X.sum(1)).ravel() > 0].copy()  # 4 cells without counts: cellvi refuses them
    rng = np.random.default_rng(seed)
    held = list(full.var_names[np.sort(rng.choice(full.n_vars, n_held, replace=False))])
    keep = ~full.var_names.isin(held)
    X = full.X.toarray()
    cells = X[:, keep].sum(1) > 0
    measured = X[cells][:, ~keep] / X[cells][:, keep].sum(1, keepdims=True)
    return seq, full[cells][:, keep].copy(), held, measured


def load_derived(data: str, seed: int, n_held: int):
    """``load`` for a pair made from one single-cell data set (see the module docstring)."""
    import anndata
    import numpy as np
    import scipy.sparse as sp

    path, n_panel = DERIVED[data]
    adata = anndata.read_h5ad(path)
    X = sp.csr_matrix(adata.X).astype(np.float32)
    counted = np.asarray(X.sum(1)).ravel() > 0
    adata, X = adata[counted], X[counted]
    rng = np.random.default_rng(seed)
    cells = rng.permutation(adata.n_obs)
    seq_cells, spatial_cells = np.sort(cells[: adata.n_obs // 2]), np.sort(cells[adata.n_obs // 2:])
    detected = np.asarray((X > 0).mean(0)).ravel() >= 0.05
    panel = np.sort(rng.choice(np.flatnonzero(detected), n_panel, replace=False))
    held_pos = np.sort(rng.choice(n_panel, n_held, replace=False))
    counts = X[spatial_cells][:, panel].toarray().astype(np.int64)
    thinned = rng.binomial(counts, rng.uniform(0.3, 1.0, size=n_panel)).astype(np.float32)
    keep = np.ones(n_panel, bool)
    keep[held_pos] = False
    seen = thinned[:, keep].sum(1) > 0
    genes = adata.var_names[panel]
    seq = anndata.AnnData(X[seq_cells], var=adata.var[[]].copy())
    spatial = anndata.AnnData(sp.csr_matrix(thinned[seen][:, keep]),
                              var=adata.var.iloc[panel[keep]][[]].copy())
    measured = thinned[seen][:, ~keep] / thinned[seen][:, keep].sum(1, keepdims=True)
    return seq, spatial, list(genes[~keep]), measured


def correlations(imputed, measured) -> dict:
    """Per held-out gene Spearman and Pearson correlations (imputed vs measured)."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    out = {"spearman": [], "pearson": []}
    for j in range(measured.shape[1]):
        if np.ptp(measured[:, j]) == 0:  # never measured in these cells: no correlation
            continue
        out["spearman"].append(float(spearmanr(imputed[:, j], measured[:, j])[0]))
        out["pearson"].append(float(pearsonr(imputed[:, j], measured[:, j])[0]))
    return out


def worker(tool: str, seed: int, threads: int, epochs: int, n_held: int, data: str) -> None:
    import torch

    torch.set_num_threads(threads)
    seq, spatial, held, measured = load(seed, n_held, data)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch._dynamo's one-time import
    if tool == "cellvi":
        import cellvi

        cellvi.settings.seed = seed
        cellvi.settings.progress_bar = False
        cellvi.GIMVI.setup_anndata(seq)
        cellvi.GIMVI.setup_anndata(spatial)
        model = cellvi.GIMVI(seq, spatial)
        version = cellvi.__version__
        t0 = time.perf_counter()
        model.train(max_epochs=epochs)
        train_s = time.perf_counter() - t0
        genes = model.var_names
    else:
        import logging
        import warnings

        import scvi
        from scvi.external import GIMVI

        warnings.filterwarnings("ignore")
        logging.getLogger("scvi").setLevel(logging.ERROR)
        scvi.settings.seed = seed
        scvi.settings.num_threads = threads
        GIMVI.setup_anndata(seq)
        GIMVI.setup_anndata(spatial)
        model = GIMVI(seq, spatial)
        version = scvi.__version__
        t0 = time.perf_counter()
        model.train(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
        train_s = time.perf_counter() - t0
        genes = list(seq.var_names)
    _, imputed = model.get_imputed_values(normalized=True)
    imputed = imputed[:, [genes.index(g) for g in held]]
    emit_result({"version": version, "train_s": train_s, "held": held, **correlations(imputed, measured)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--held-out", type=int, default=13, help="spatial genes held out per seed (10%% of 134)")
    p.add_argument("--data", choices=["merfish", *DERIVED], default="merfish",
                   help="the MERFISH pair (the target), or a pair made from zeisel or kang (a check on other data)")
    p.add_argument("--record", action="store_true")
    p.add_argument("--worker", choices=["cellvi", "scvi"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.seed, args.threads, args.epochs, args.held_out, args.data)
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t_start = time.perf_counter()

    def report(seed, tool, r):
        # the per-gene correlations summarised once, here, for the table and the summary
        r["median_spearman"] = statistics.median(r["spearman"])
        r["median_pearson"] = statistics.median(r["pearson"])
        print(f"[seed {seed}] [{tool}] median Spearman {r['median_spearman']:.3f}, Pearson "
              f"{r['median_pearson']:.3f} over {len(r['spearman'])} held-out genes; train {r['train_s']:.1f} s",
              flush=True)

    runs = run_per_seed(__file__, ["cellvi", "scvi"], seeds, args.threads,
                        ["--epochs", str(args.epochs), "--held-out", str(args.held_out), "--data", args.data], report=report)
    name = {"cellvi": "cellvi", "scvi": "scvi-tools"}
    head = ["method", "seed", "median Spearman", "median Pearson", "genes with Spearman > 0", "train (s)",
            "busy cores"]
    rows = [head, ["---"] * len(head)]
    for (seed, tool), r in sorted(runs.items()):
        positive = sum(v > 0 for v in r["spearman"])
        rows.append([name[tool], str(seed), f"{r['median_spearman']:.3f}", f"{r['median_pearson']:.3f}",
                     f"{positive}/{len(r['spearman'])}", f"{r['train_s']:.1f}",
                     f"{r.get('busy_cores', float('nan')):.2f}"])
    table = ["| " + " | ".join(r) + " |" for r in rows]
    ours = [r for (s, t), r in sorted(runs.items()) if t == "cellvi"]
    ref = [r for (s, t), r in sorted(runs.items()) if t == "scvi"]
    ratios = [runs[(s, "scvi")]["train_s"] / runs[(s, "cellvi")]["train_s"] for s in seeds
              if (s, "scvi") in runs and (s, "cellvi") in runs]
    # per seed: cellvi's median Spearman against scvi-tools' (the same held-out genes)
    diffs = [runs[(s, "cellvi")]["median_spearman"] - runs[(s, "scvi")]["median_spearman"] for s in seeds
             if (s, "scvi") in runs and (s, "cellvi") in runs]
    summary = []
    if ours and ref and args.data != "merfish":
        key = f"{OTHER_DATA_KEY}: {args.data}"
        summary = [
            f"| {key} (a pair made from one data set: half the cells as the reference, {DERIVED[args.data][1]} "
            f"thinned genes of the other half as the spatial data, {args.held_out} held out; a check, no target) | "
            f"median Spearman cellvi {median_range([r['median_spearman'] for r in ours])}, scvi-tools "
            f"{median_range([r['median_spearman'] for r in ref])} over {len(ours)} seeds (cellvi minus scvi-tools per "
            f"seed {', '.join(f'{d:+.3f}' for d in diffs)}); speed per seed {', '.join(f'{v:.2f}x' for v in ratios)} | "
            + ("cellvi at least equal on the median" if statistics.median(diffs) >= 0 else "cellvi behind on the median")
            + " |"]
    elif ours and ref:
        ours_sp, ref_sp = [r["median_spearman"] for r in ours], [r["median_spearman"] for r in ref]
        summary = [
            f"| {SUMMARY_KEYS[0]} of held-out MERFISH genes, at least as good as scvi-tools (same seeds and epochs) | "
            f"median Spearman over {args.held_out} held-out genes: cellvi {median_range(ours_sp)}, scvi-tools "
            f"{median_range(ref_sp)} (median [range] over {len(ours_sp)} seeds); Pearson cellvi "
            f"{median_range([r['median_pearson'] for r in ours])}, scvi-tools {median_range([r['median_pearson'] for r in ref])} | "
            + ("met" if statistics.median(diffs) >= 0 else "**not met**")
            + f": per seed, cellvi minus scvi-tools {', '.join(f'{d:+.3f}' for d in diffs)} (median Spearman) |",
            f"| {SUMMARY_KEYS[1]} time vs scvi-tools ({args.epochs} epochs) | train() "
            f"{statistics.median([r['train_s'] for r in ours]):.1f} s vs {statistics.median([r['train_s'] for r in ref]):.1f} s "
            f"(medians); ratio per seed {', '.join(f'{v:.2f}x' for v in ratios)} | "
            + ("faster" if ratios and min(ratios) > 1 else "**slower in some seeds**") + " |",
        ]
    print("\n".join(table + [""] + summary))
    wall = time.perf_counter() - t_start
    if args.record and args.data != "merfish":
        record_section(f"gimVI on other data ({args.data}: a pair made from one single-cell data set)", wall,
                       args.threads,
                       [f"per seed: half the cells as the reference; {DERIVED[args.data][1]} random genes detected in "
                        ">= 5% of cells, binomially thinned (capture rate per gene from U(0.3, 1)), of the other half "
                        f"as the spatial data, {args.held_out} of them held out (the same for both tools); "
                        f"{args.epochs} epochs; each tool's gimVI defaults; correlations per held-out gene over the "
                        "spatial cells of the imputed and the thinned expression (counts / the cell's total of the "
                        "genes seen)"],
                       table, summary, (f"{OTHER_DATA_KEY}: {args.data}",))
    elif args.record:
        record_section("gimVI (spacexr MERFISH pair, held-out genes)", wall, args.threads,
                       [f"{args.held_out} spatial genes held out per seed (the same for both tools); {args.epochs} epochs; "
                        "each tool's gimVI defaults; correlations per held-out gene over the 750 spatial cells of the "
                        "imputed and the measured expression (counts / the cell's total of the genes seen)"],
                       table, summary, SUMMARY_KEYS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
