"""Solo (doublet detection): cellvi against scvi-tools on cell-hashing doublets.

Data: scds_chcl_hashing_2000.h5ad (Stoeckius 2018 cell lines, 2,000 droplets x 2,000 genes);
truth ``hto_classification_global`` (Doublet / Singlet; the hashing "Negative"s dropped, which
leaves 1,917 droplets, 216 of them doublets).

Per seed, each in a fresh process, both tools with their defaults end to end: scVI
(``train()`` with no arguments) then ``SOLO.from_scvi_model`` and ``train()``, doublet
scores from ``predict()``. cellvi runs twice: from a scVI model with ``gene_likelihood="nb"``
(what ``RunSolo`` in R trains, and what the docs advise) and from the default zinb one.
Reported: AUROC and average precision of the doublet score against the hashing labels, the
share of cells called doublets (``predict(soft=False)``), and the wall time of both trainings.

``--data kang`` / ``--data pbmc5k``: a check on other data (10x PBMC: kang_se_12261,
totalvi_pbmc5k_rna_3994) with doublets made here, as no other data with known doublets is at
hand. Per seed, 2,300 random cells stay singlets and 200 droplets are made by summing the
counts of two other random cells each (8% doublets, homotypic pairs included, as in a lane);
the cells used in doublets are not kept as singlets. Solo's simulation is the same kind of
sum, so the scores are higher than on real doublets: this checks that the tools agree, and
that the called share follows the true rate, on other data.

    benchmarks/.venv-scvi/bin/python benchmarks/bench_solo.py --seeds 0,1,2 --record
    benchmarks/.venv-scvi/bin/python benchmarks/bench_solo.py --data kang --seeds 0,1,2 --record
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit_result, median_range, record_section, run_per_seed, scvi_for_worker  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "scds_chcl_hashing_2000.h5ad"
VARIANTS = {"cellvi-nb": "cellvi (scVI nb)", "cellvi-zinb": "cellvi (scVI zinb, default)",
            "scvi": "scvi-tools (defaults)"}
SUMMARY_KEYS = ("Solo AUROC", "Solo average precision")
# Data with doublets made here (--data): the file; singlets and doublets per seed.
MADE = {"kang": ROOT.parent / "shared" / "data" / "kang_se_12261.h5ad",
        "pbmc5k": ROOT.parent / "shared" / "data" / "totalvi_pbmc5k_rna_3994.h5ad"}
N_SINGLETS, N_DOUBLETS = 2300, 200
OTHER_DATA_KEY = "Solo on other data"


def load(data: str = "chcl", seed: int = 0):
    """(droplets, truth: whether each is a doublet)."""
    import anndata
    import numpy as np
    import scipy.sparse as sp

    if data == "chcl":
        adata = anndata.read_h5ad(DATA)
        adata = adata[adata.obs["hto_classification_global"].astype(str) != "Negative"].copy()
        truth = (adata.obs["hto_classification_global"].astype(str) == "Doublet").to_numpy()
        return adata, truth
    source = anndata.read_h5ad(MADE[data])
    X = sp.csr_matrix(source.X).astype(np.float32)
    rng = np.random.default_rng(seed)
    cells = rng.permutation(source.n_obs)[: N_SINGLETS + 2 * N_DOUBLETS]
    singlets, first, second = np.split(cells, [N_SINGLETS, N_SINGLETS + N_DOUBLETS])
    droplets = sp.vstack([X[singlets], X[first] + X[second]]).tocsr()
    truth = np.r_[np.zeros(N_SINGLETS, bool), np.ones(N_DOUBLETS, bool)]
    order = rng.permutation(len(truth))
    adata = anndata.AnnData(droplets[order], var=source.var[[]].copy())
    adata.obs_names = [f"droplet{i}" for i in range(adata.n_obs)]
    return adata, truth[order]


def worker(variant: str, seed: int, threads: int, data: str) -> None:
    import numpy as np
    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score

    torch.set_num_threads(threads)
    adata, truth = load(data, seed)
    if variant.startswith("cellvi"):
        import cellvi

        cellvi.settings.seed = seed
        cellvi.settings.progress_bar = False
        cellvi.SCVI.setup_anndata(adata)
        vae = cellvi.SCVI(adata, gene_likelihood=variant.split("-")[1])
        t0 = time.perf_counter()
        vae.train()
        scvi_s = time.perf_counter() - t0
        solo = cellvi.SOLO.from_scvi_model(vae)
        t0 = time.perf_counter()
        solo.train()
        solo_s = time.perf_counter() - t0
        version = cellvi.__version__
    else:
        scvi = scvi_for_worker(seed, threads)
        scvi.model.SCVI.setup_anndata(adata)
        vae = scvi.model.SCVI(adata)
        kw = dict(accelerator="cpu", devices=1, enable_progress_bar=False)
        t0 = time.perf_counter()
        vae.train(**kw)
        scvi_s = time.perf_counter() - t0
        solo = scvi.external.SOLO.from_scvi_model(vae)
        t0 = time.perf_counter()
        solo.train(**kw)
        solo_s = time.perf_counter() - t0
        version = scvi.__version__
    score = solo.predict(soft=True)["doublet"].to_numpy()
    called = np.asarray(solo.predict(soft=False)).astype(str) == "doublet"
    emit_result({"version": version, "auroc": float(roc_auc_score(truth, score)),
                 "ap": float(average_precision_score(truth, score)), "called": float(called.mean()),
                 "scvi_s": scvi_s, "solo_s": solo_s})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", choices=["chcl", *MADE], default="chcl",
                   help="the cell-hashing doublets (the target), or doublets made from kang or pbmc5k cells "
                        "(a check on other data)")
    p.add_argument("--record", action="store_true")
    p.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.seed, args.threads, args.data)
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    def report(seed, variant, r):
        print(f"[seed {seed}] [{variant}] AUROC {r['auroc']:.3f}, AP {r['ap']:.3f}, called {r['called']:.3f}, "
              f"scVI {r['scvi_s']:.1f} s, Solo {r['solo_s']:.1f} s", flush=True)

    t_start = time.perf_counter()
    runs = run_per_seed(__file__, VARIANTS, seeds, args.threads, ["--data", args.data], report=report)
    head = ["method", "seed", "AUROC", "average precision", "called doublets", "scVI train (s)",
            "Solo train (s)", "busy cores"]
    rows = [head, ["---"] * len(head)]
    for variant in VARIANTS:
        for seed in seeds:
            r = runs.get((seed, variant))
            if r:
                rows.append([VARIANTS[variant], str(seed), f"{r['auroc']:.3f}", f"{r['ap']:.3f}",
                             f"{r['called']:.3f}", f"{r['scvi_s']:.1f}", f"{r['solo_s']:.1f}",
                             f"{r.get('busy_cores', float('nan')):.2f}"])
    table = ["| " + " | ".join(r) + " |" for r in rows]

    def values(variant, key):
        return [runs[(s, variant)][key] for s in seeds if (s, variant) in runs]

    def stat(variant, key):
        vals = values(variant, key)
        return (statistics.median(vals), min(vals), max(vals)) if vals else None

    summary = []
    if args.data != "chcl" and stat("cellvi-nb", "auroc") and stat("scvi", "auroc"):
        share = N_DOUBLETS / (N_SINGLETS + N_DOUBLETS)
        summary = [
            f"| {OTHER_DATA_KEY}: {args.data} ({N_DOUBLETS} doublets made by summing two cells among "
            f"{N_SINGLETS:,} singlets; a check, no target) | AUROC cellvi nb "
            f"{median_range(values('cellvi-nb', 'auroc'))}, zinb {median_range(values('cellvi-zinb', 'auroc'))}, "
            f"scvi-tools {median_range(values('scvi', 'auroc'))}; average precision cellvi nb "
            f"{median_range(values('cellvi-nb', 'ap'))}, scvi-tools {median_range(values('scvi', 'ap'))}; "
            f"called doublets (true share {share:.3f}) cellvi nb {median_range(values('cellvi-nb', 'called'))}, "
            f"scvi-tools {median_range(values('scvi', 'called'))} | "
            + ("cellvi nb at least equal on AUROC and AP"
               if all(stat("cellvi-nb", k)[0] >= stat("scvi", k)[0] for k in ("auroc", "ap")) else "mixed") + " |"]
    elif stat("cellvi-nb", "auroc") and stat("scvi", "auroc"):
        a, az, s = stat("cellvi-nb", "auroc"), stat("cellvi-zinb", "auroc"), stat("scvi", "auroc")
        ap, apz, aps = stat("cellvi-nb", "ap"), stat("cellvi-zinb", "ap"), stat("scvi", "ap")
        summary = [
            f"| {SUMMARY_KEYS[0]} on scds cell-hashing doublets >= 0.75 (scvi-tools 1.4: 0.66) | cellvi from an nb "
            f"scVI {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}], from the default zinb scVI "
            + (f"{az[0]:.3f} [{az[1]:.3f}, {az[2]:.3f}]" if az else "-")
            + f"; scvi-tools {s[0]:.3f} [{s[1]:.3f}, {s[2]:.3f}] (medians [range] over {len(seeds)} seeds) | "
            + ("met" if a[1] >= 0.75 else "**not met** (no method measured reaches 0.75 on these data: "
               "see the SOLO docstring)") + " |",
            f"| {SUMMARY_KEYS[1]} >= scvi-tools' | cellvi nb {ap[0]:.3f} [{ap[1]:.3f}, {ap[2]:.3f}], zinb "
            + (f"{apz[0]:.3f} [{apz[1]:.3f}, {apz[2]:.3f}]" if apz else "-")
            + f"; scvi-tools {aps[0]:.3f} [{aps[1]:.3f}, {aps[2]:.3f}] | "
            + ("met (nb scVI, as RunSolo trains)" if ap[0] >= aps[0] else "**not met**") + " |",
        ]
    print("\n".join(table + [""] + summary))
    wall = time.perf_counter() - t_start
    if args.record and args.data != "chcl":
        record_section(f"Solo on other data ({args.data}, doublets made by summing cells)", wall, args.threads,
                       [f"per seed: {N_SINGLETS:,} random cells as singlets and {N_DOUBLETS} droplets summing two "
                        "other random cells each; each tool's scVI and Solo defaults, no batch key"],
                       table, summary, (f"{OTHER_DATA_KEY}: {args.data}",))
    elif args.record:
        record_section("Solo (scds cell-hashing doublets)", wall, args.threads,
                       ["1,917 droplets (Negatives dropped), 216 hashing doublets; each tool's scVI and Solo defaults"],
                       table, summary, SUMMARY_KEYS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
