"""Differential expression: cellvi against scvi-tools, same data, epochs and n_samples.

For each data set, trains cellvi's SCVI once and scvi-tools' SCVI twice (two seeds), then
times one group-pair DE call of each and compares LFC estimates: the Spearman correlation of
``lfc_mean`` between cellvi and scvi-tools, next to the same between the two scvi-tools runs
(what "as concordant as two reference runs" means).

    benchmarks/.venv-scvi/bin/python benchmarks/bench_de.py --record
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "..", "shared", "data")

CASES = {
    "harmony": dict(file="harmony_pbmc_ctrl_stim_2000.h5ad", batch_key=None, groupby="condition",
                    group1="stim", group2="ctrl"),
    "kang": dict(file="kang_se_12261.h5ad", batch_key="sample_id", groupby="cluster_id",
                 group1="CD14+ Monocytes", group2="B cells"),
}


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).correlation)


def run_case(name: str, epochs: int, n_samples: int, repeats: int) -> dict:
    import anndata
    import scvi
    import torch

    import cellvi

    case = CASES[name]
    adata = anndata.read_h5ad(os.path.join(DATA, case["file"]))
    if case["group1"] not in set(adata.obs[case["groupby"]].astype(str)):
        groups = adata.obs[case["groupby"]].astype(str).value_counts().index
        case = dict(case, group1=groups[0], group2=groups[1])
    kwargs = dict(groupby=case["groupby"], group1=case["group1"], group2=case["group2"], mode="change")

    def timed(fn):
        best = np.inf
        out = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return out, best

    cellvi.settings.seed = 0
    cellvi.settings.progress_bar = False
    ours_adata = adata.copy()
    cellvi.SCVI.setup_anndata(ours_adata, batch_key=case["batch_key"])
    ours = cellvi.SCVI(ours_adata)
    ours.train(max_epochs=epochs)
    de_ours, t_ours = timed(lambda: ours.differential_expression(n_samples=n_samples, **kwargs))

    ref_results = []
    for seed in (0, 1):
        scvi.settings.seed = seed
        ref_adata = adata.copy()
        scvi.model.SCVI.setup_anndata(ref_adata, batch_key=case["batch_key"])
        ref = scvi.model.SCVI(ref_adata)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.train(max_epochs=epochs, enable_progress_bar=False,
                      plan_kwargs={"n_epochs_kl_warmup": int(0.75 * epochs)})
        # scvi-tools 1.x calls it n_samples_overall (per group, draws paired one to one).
        de_ref, t_ref = timed(lambda: ref.differential_expression(n_samples_overall=n_samples, **kwargs))
        ref_results.append((de_ref, t_ref))
    (ref0, t_ref0), (ref1, _) = ref_results
    genes = ref0.index
    return {
        "case": name, "cells": adata.n_obs, "genes": adata.n_vars, "comparison": f"{kwargs['group1']} vs {kwargs['group2']}",
        "epochs": epochs, "n_samples": n_samples, "threads": torch.get_num_threads(),
        "cellvi_s": t_ours, "scvi_s": t_ref0, "speedup": t_ref0 / t_ours,
        "rho_cellvi_scvi": spearman(de_ours.loc[genes, "lfc_mean"], ref0["lfc_mean"]),
        "rho_scvi_scvi": spearman(ref1.loc[genes, "lfc_mean"], ref0["lfc_mean"]),
        "versions": f"cellvi {cellvi.__version__}, scvi-tools {scvi.__version__}, torch {torch.__version__}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="harmony,kang")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-samples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="DE calls timed per tool (best taken)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = [run_case(c, args.epochs, args.n_samples, args.repeats) for c in args.cases.split(",")]
    header = ("| data | comparison | cellvi DE (s) | scvi-tools DE (s) | speed-up | "
              "LFC rho cellvi vs scvi-tools | LFC rho scvi-tools seed 0 vs 1 |")
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['case']} ({r['cells']:,} x {r['genes']:,}) | {r['comparison']} | {r['cellvi_s']:.2f} | "
                     f"{r['scvi_s']:.2f} | {r['speedup']:.1f}x | {r['rho_cellvi_scvi']:.3f} | {r['rho_scvi_scvi']:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
            f.write(f"\n## {dt.datetime.utcnow():%Y-%m-%d %H:%M} UTC: differential expression\n\n"
                    f"- command: `{' '.join([os.path.relpath(sys.executable, ROOT)] + sys.argv)}`\n"
                    f"- commit: {commit}\n- machine: {cpu} ({os.cpu_count()} cores), {args.threads} torch threads; "
                    f"Python {platform.python_version()}, {rows[0]['versions']}\n"
                    f"- settings: mode change, {args.n_samples} posterior samples per group paired one to one (cellvi n_samples, scvi-tools n_samples_overall), delta 0.25; both models trained {args.epochs} epochs; "
                    "time is the best of the timed calls\n\n" + table + "\n")


if __name__ == "__main__":
    main()
