"""Better SCVI defaults? A search with cellvi.autotune for the scib-style integration score,
then a check over seeds and data sets against Harmony and scvi-tools.

Score (``cellvi.metrics.integration_scores`` on the latent space): 0.6 x mean(label
silhouette, k-means NMI, ARI) + 0.4 x mean(batch silhouette, iLISI, graph connectivity).

Data sets
    kang      ``kang_se_12261.h5ad``: batch ``sample_id`` (8 donors), labels ``cluster_id``.
    harmony   ``harmony_pbmc_ctrl_stim_2000.h5ad``: batch ``condition`` (ctrl / stim). The
              file has no cell types. Its ctrl cells are kang's cells (954 of its 1,000 ctrl
              barcodes are kang cell names, and those cells' counts equal kang's on all 1,283
              shared genes), so they take kang's ``cluster_id``; the stim cells have no label.
              With one batch per label among the labelled cells, batch silhouette and graph
              connectivity say nothing about mixing there: the harmony score is 0.6 x bio
              (labelled cells) + 0.4 x iLISI (all cells). Genes: the 2,000 most variable
              (dispersion of log-normalised counts, z-scored within 20 bins of mean
              expression), for every tool alike.

Stages
    search    ``run_autotune`` on kang (25% of cells scored, the rest trains every trial):
              ``--trials`` TPE trials over n_latent, n_layers, n_hidden, dropout,
              gene likelihood, epochs and KL warm-up; trial 0 is SCVI's defaults (its
              epochs are drawn from the searched ones: ``max_epochs`` has no default value
              for autotune to fix). Prints the trials.
    confirm   Every setting of ``--settings`` (names in SETTINGS), Harmony on PCA, plain PCA and
              scvi-tools' SCVI with its defaults, on both data sets, ``--seeds`` seeds. Each
              model trains on 90% of the cells (seeded); the score is computed on the latent
              space of all cells, the held-out log p(x) (100 importance samples) on the other
              10%. Each run is a fresh process (``--worker``). Reports median [range] per
              setting; ``--record`` writes RESULTS.md.

The search needs Optuna (the project's .venv has it); the confirm stage needs scvi-tools and
harmonypy (``bash benchmarks/setup_reference_env.sh`` installs both into benchmarks/.venv-scvi).

    .venv/bin/python benchmarks/bench_defaults.py search --trials 20
    benchmarks/.venv-scvi/bin/python benchmarks/bench_defaults.py confirm --seeds 3 --record
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, ROOT, emit_result, fmt, git_commit, interpreter_path,  # noqa: E402
                     machine_info, median_range, run_worker)

DATA = ROOT.parent / "shared" / "data"
CASES = {
    "kang": dict(file="kang_se_12261.h5ad", batch="sample_id", labels="cluster_id"),
    "harmony": dict(file="harmony_pbmc_ctrl_stim_2000.h5ad", batch="condition", labels=None),
}
# Named SCVI settings for the confirm stage: model arguments, train arguments. Without
# max_epochs, the tool's default for the data size (400 below 20,000 cells).
SETTINGS = {
    "defaults": ({}, {}),
    "defaults-40ep": ({}, {"max_epochs": 40}),
    # the search's two best (kang, 20 trials, one seed each)
    "dropout0.2-40ep": ({"dropout_rate": 0.2}, {"max_epochs": 40}),
    "latent30-dropout0.2-kl20-20ep": ({"n_latent": 30, "dropout_rate": 0.2},
                                      {"max_epochs": 20, "plan_kwargs": {"n_epochs_kl_warmup": 20}}),
    "dropout0.2": ({"dropout_rate": 0.2}, {}),
}
N_HVG = 2000


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def _log_normalised(X):
    import numpy as np
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float32)
    library = np.asarray(X.sum(1)).ravel()
    scaled = sp.diags((1e4 / np.maximum(library, 1)).astype(np.float32)) @ X
    scaled.data = np.log1p(scaled.data)
    return scaled


def variable_genes(X, n: int = N_HVG, n_bins: int = 20):
    """Indices of the ``n`` genes with the highest dispersion (variance / mean of the
    log-normalised counts), z-scored within bins of mean expression."""
    import numpy as np
    import pandas as pd

    L = _log_normalised(X)
    mean = np.asarray(L.mean(0)).ravel()
    var = np.asarray(L.multiply(L).mean(0)).ravel() - mean ** 2
    dispersion = np.log(np.maximum(var, 1e-12) / np.maximum(mean, 1e-12))
    bins = pd.cut(mean, n_bins)
    grouped = pd.Series(dispersion).groupby(bins, observed=False)
    z = (dispersion - grouped.transform("mean").to_numpy()) / grouped.transform("std").fillna(1).to_numpy()
    z[mean == 0] = -np.inf
    return np.sort(np.argsort(-np.nan_to_num(z, nan=-np.inf))[:n])


def load_case(name: str):
    """The AnnData of a case: raw counts in X, obs 'batch' and 'label' (NaN: unknown)."""
    import anndata
    import numpy as np
    import pandas as pd

    case = CASES[name]
    adata = anndata.read_h5ad(DATA / case["file"])
    adata.obs["batch"] = adata.obs[case["batch"]].astype(str).astype("category")
    if name == "harmony":
        kang = anndata.read_h5ad(DATA / CASES["kang"]["file"], backed="r")
        labels = kang.obs["cluster_id"].astype(str)
        barcodes = adata.obs["barcode"].astype(str)
        is_ctrl = adata.obs["condition"].astype(str).to_numpy() == "ctrl"
        adata.obs["label"] = pd.Series(np.where(is_ctrl & barcodes.isin(labels.index).to_numpy(),
                                                labels.reindex(barcodes).to_numpy(), None),
                                       index=adata.obs_names, dtype=object)
        adata = adata[:, variable_genes(adata.X)].copy()
    else:
        adata.obs["label"] = adata.obs[case["labels"]].astype(str)
    return adata


def split(n_obs: int, seed: int, test_fraction: float = 0.1):
    import numpy as np

    order = np.random.default_rng(seed).permutation(n_obs)
    n_test = int(round(test_fraction * n_obs))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def score(name: str, embedding, adata) -> dict:
    """The integration scores of an embedding of all cells, and the case's total."""
    from cellvi.metrics import integration_scores

    s = integration_scores(embedding, adata.obs["batch"].to_numpy(), adata.obs["label"].to_numpy()).to_dict()
    if name == "harmony":
        s["total"] = 0.6 * s["bio"] + 0.4 * s["ilisi"]
    return s


# ------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------
def pca_embedding(adata, n_comps: int = 30, seed: int = 0):
    """PCA of log-normalised, gene-scaled counts (Seurat's usual preprocessing)."""
    import numpy as np
    import torch

    L = _log_normalised(adata.X).toarray()
    L -= L.mean(0)
    L /= np.maximum(L.std(0), 1e-8)
    np.clip(L, -10, 10, out=L)
    torch.manual_seed(seed)
    U, S, _ = torch.pca_lowrank(torch.from_numpy(L), q=n_comps, center=False, niter=4)
    return (U * S).numpy()


def worker(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    adata = load_case(args.case)
    t0 = time.perf_counter()
    out = {"tool": args.worker, "case": args.case, "seed": args.seed, "setting": args.setting}
    if args.worker in ("harmony", "pca"):
        pcs = pca_embedding(adata, seed=args.seed)
        if args.worker == "harmony":
            import harmonypy

            ho = harmonypy.run_harmony(pcs, adata.obs[["batch"]], ["batch"], random_state=args.seed, verbose=False)
            Z = np.asarray(ho.Z_corr)
            pcs = Z.T if Z.shape[0] != len(adata) else Z
        out["seconds"] = time.perf_counter() - t0
        out.update(score(args.case, pcs, adata))
        emit_result(out)
        return
    train_idx, test_idx = split(adata.n_obs, args.seed)
    model_kwargs, train_kwargs = SETTINGS[args.setting]
    if args.worker == "cellvi":
        import cellvi

        cellvi.settings.progress_bar = False
        cellvi.settings.seed = args.seed
        train = adata[train_idx].copy()
        cellvi.SCVI.setup_anndata(train, batch_key="batch")
        model = cellvi.SCVI(train, **model_kwargs)
        model.train(train_size=1.0, **train_kwargs)
        latent = model.get_latent_representation(adata)
        test = adata[test_idx].copy()
        log_px = float(np.mean(model.get_marginal_ll(test, n_mc_samples=100, return_mean=False)))
        out["epochs"] = len(model.history)
    else:
        import scvi

        scvi.settings.seed = args.seed
        scvi.settings.dl_num_workers = 0
        train = adata[train_idx].copy()
        scvi.model.SCVI.setup_anndata(train, batch_key="batch")
        model = scvi.model.SCVI(train, **model_kwargs)
        model.train(train_size=1.0, accelerator="cpu", enable_progress_bar=False, **train_kwargs)
        scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
        latent = model.get_latent_representation(adata)
        test = adata[test_idx].copy()
        log_px = float(np.mean(np.asarray(model.get_marginal_ll(test, n_mc_samples=100, return_mean=False))))
        log_px = -abs(log_px) if log_px > 0 else log_px
    out["seconds"] = time.perf_counter() - t0
    out["log_px"] = log_px
    out.update(score(args.case, latent, adata))
    emit_result(out)


# ------------------------------------------------------------------------------------------
# stage 1: the search
# ------------------------------------------------------------------------------------------
def search(args) -> None:
    import torch

    import cellvi
    from cellvi.autotune import choice, run_autotune

    cellvi.settings.progress_bar = False
    torch.set_num_threads(args.threads)
    adata = load_case("kang")
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")

    def integration_total(model, test_adata) -> float:
        return float(score("kang", model.get_latent_representation(test_adata), test_adata)["total"])

    space = {
        "model_params": {
            "n_latent": choice([10, 20, 30]),
            "n_layers": choice([1, 2]),
            "n_hidden": choice([128, 256]),
            "dropout_rate": choice([0.1, 0.2]),
            "gene_likelihood": choice(["zinb", "nb"]),
        },
        "train_params": {
            "max_epochs": choice([20, 40, 80]),
            "n_epochs_kl_warmup": choice([400, 20]),
        },
    }
    t0 = time.perf_counter()
    res = run_autotune(cellvi.SCVI, adata, metric=integration_total, mode="max", search_space=space,
                       num_samples=args.trials, scheduler=None,
                       seed=args.seed, n_jobs=args.workers, save_dir=tempfile.mkdtemp(prefix="bench-defaults-"),
                       plot=False)
    df = res.results.sort_values("metric", ascending=False)
    print(df.to_string())
    print(f"search: {len(df)} trials in {time.perf_counter() - t0:.0f} s; best {res.best_params}")
    if args.out:
        df.to_csv(args.out)


# ------------------------------------------------------------------------------------------
# stage 2: confirm over seeds and data sets
# ------------------------------------------------------------------------------------------
def confirm(args) -> None:
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        sys.exit(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    runs = []
    t0 = time.perf_counter()
    for case in args.cases.split(","):
        jobs = [("pca", "-"), ("harmony", "-")] + [("cellvi", s) for s in settings]
        jobs += [("scvi", s) for s in args.scvi_settings.split(",") if s]
        for seed in range(args.seeds):
            for tool, setting in jobs:
                label = f"{case} {tool} {setting} seed {seed}"
                out = run_worker(__file__, ["--worker", tool, "--case", case, "--seed", str(seed),
                                            "--setting", setting if setting != "-" else "defaults",
                                            "--threads", str(args.threads)],
                                 threads=args.threads, label=label, verbose=args.verbose)
                if out is None:
                    continue
                out["setting"] = setting
                runs.append(out)
                print(f"{label}: total {out['total']:.4f} (bio {out['bio']:.3f}, batch {out.get('batch', float('nan')):.3f}, "
                      f"iLISI {out['ilisi']:.3f}) log p(x) {fmt(out.get('log_px'), '.2f')} {out['seconds']:.0f} s",
                      flush=True)
        if args.dump:
            Path(args.dump).write_text(json.dumps(runs, indent=1))
    lines = table(runs)
    print("\n".join(lines))
    if args.record:
        record(lines, args, time.perf_counter() - t0)


def table(runs) -> list[str]:
    lines = ["| data | method | total | bio | batch | iLISI | held-out log p(x) | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = []
    for r in runs:
        key = (r["case"], r["tool"], r["setting"])
        if key not in keys:
            keys.append(key)
    names = {"pca": "PCA (no integration)", "harmony": "Harmony on PCA", "cellvi": "cellvi SCVI", "scvi": "scvi-tools SCVI"}
    for case, tool, setting in keys:
        rs = [r for r in runs if (r["case"], r["tool"], r["setting"]) == (case, tool, setting)]
        method = names[tool] + ("" if setting == "-" else f" {setting}")
        lines.append(f"| {case} | {method} ({len(rs)} seeds) | {median_range([r['total'] for r in rs])} | "
                     f"{median_range([r['bio'] for r in rs])} | {median_range([r.get('batch') for r in rs])} | "
                     f"{median_range([r['ilisi'] for r in rs])} | "
                     f"{median_range([r.get('log_px') for r in rs], '.2f')} | {median_range([r['seconds'] for r in rs], '.0f')} |")
    return lines


def record(lines: list[str], args, wall: float) -> None:
    info = machine_info()
    cmd = " ".join(shlex.quote(a) for a in [interpreter_path(), "benchmarks/bench_defaults.py", *sys.argv[1:]])
    text = [f"\n## SCVI settings for integration ({_dt.datetime.now():%Y-%m-%d %H:%M}, {git_commit()})\n",
            f"`{cmd}`; {info['cpu']}, {args.threads} threads; {wall / 60:.0f} min.\n",
            "Score: 0.6 x mean(label silhouette, k-means NMI, ARI) + 0.4 x mean(batch silhouette, iLISI, "
            "graph connectivity) on the latent space of all cells (`cellvi.metrics.integration_scores`); "
            "harmony: 0.6 x bio (its 954 ctrl cells labelled from kang) + 0.4 x iLISI. Models train on 90% "
            "of the cells; log p(x) on the other 10%. Median [range] over seeds.\n", *lines, ""]
    with open(RESULTS, "a") as f:
        f.write("\n".join(text) + "\n")
    print(f"appended to {RESULTS}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", choices=["search", "confirm"], default=None)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--workers", type=int, default=1,
                   help="search: local worker processes (1: the metric is defined in this script)")
    p.add_argument("--out", help="search: write the trials to this CSV")
    p.add_argument("--settings", default="defaults-40ep,dropout0.2-40ep,latent30-dropout0.2-kl20-20ep", help=f"confirm: cellvi settings ({', '.join(SETTINGS)})")
    p.add_argument("--scvi-settings", default="defaults-40ep", help="confirm: scvi-tools settings ('' for none)")
    p.add_argument("--cases", default="kang,harmony")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--record", action="store_true")
    p.add_argument("--dump", help="confirm: write every run's scores to this JSON file")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--worker", choices=["cellvi", "scvi", "harmony", "pca"], help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--setting", default="defaults", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
    elif args.stage == "search":
        search(args)
    elif args.stage == "confirm":
        confirm(args)
    else:
        sys.exit("choose a stage: search or confirm")


if __name__ == "__main__":
    main()
