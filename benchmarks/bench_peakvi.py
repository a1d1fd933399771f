"""PeakVI (scATAC-seq): cellvi against scvi-tools, in one run.

Both tools get the same data, the same split, the same seed and the same settings; every run
trains in its own fresh subprocess (``--worker TOOL``), and per seed the tools are interleaved.

Data
    ``--data FILE.h5ad`` (default ``../shared/data/granja2019_bmmc_scatac_10kpeaks.h5ad``:
    14,125 bone-marrow cells x 10,000 peaks, fragment counts; batch ``Group`` (2 donors),
    labels ``BioClassification`` (16 types)). Per seed a random ``--test-fraction`` (10%) of
    the cells is held out: no tool trains on them.

Settings (the same in both tools)
    PEAKVI with each tool's defaults (square-root sizes, 2 + 2 layers, dropout 0.1, layer norm,
    no batch norm), ``batch_key=Group``; ``train(max_epochs=--epochs, batch_size=128,
    lr=1e-4, weight_decay=1e-3, train_size=1.0, early_stopping=False)``: every training cell
    is trained on, nothing watches a validation set. KL warm-up linear per step over
    W = ``--kl-warmup`` epochs (default half the epochs): cellvi gets ``plan_kwargs=
    {"n_steps_kl_warmup": S}``, scvi-tools ``n_epochs_kl_warmup=None, n_steps_kl_warmup=S``,
    S = W x minibatches per epoch (scvi-tools' per-epoch schedule would be a staircase).

Measures, per tool and seed
    cells/s           training cells x epochs / wall time of ``train()`` (setup excluded;
                      torch's one-time optimizer import loaded before the clock in both).
    held-out ELBO     per cell on the held-out cells (``get_elbo``, higher is better).
    AUROC             of each tool's accessibility estimates of the held-out cells
                      (``get_normalized_accessibility`` with its defaults) against their
                      observed accessibility (count > 0), over all cells x regions; also with
                      ``normalize_cells=True, normalize_regions=True`` (the Bernoulli
                      parameter of the observation itself).
    latent            of the training cells (``get_latent_representation``): silhouette of
                      the labels (Euclidean), and NMI / ARI of k-means (k = number of labels,
                      10 starts, seeded) against the labels; computed by the driver, the same
                      code for both tools.
    background load   the machine's busy CPU seconds beyond the worker's own, over its wall
                      time (0 on a quiet machine).

Examples
--------
    bash benchmarks/setup_reference_env.sh            # once: scvi-tools + cellvi in one venv
    benchmarks/.venv-scvi/bin/python benchmarks/bench_peakvi.py --epochs 30 --seeds 0,1,2 --record
    benchmarks/.venv-scvi/bin/python benchmarks/bench_peakvi.py --epochs 1 --max-cells 1500  # smoke
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, ROOT, VENV_HINT, busy_seconds, emit_result, fmt,  # noqa: E402
                     git_commit, interpreter_path, machine_info, run_worker, update_summary)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "granja2019_bmmc_scatac_10kpeaks.h5ad"
TOOL_NAMES = {"cellvi": "cellvi", "scvi": "scvi-tools"}
SUMMARY_KEYS = ("PeakVI training >= 2x scvi-tools", "PeakVI held-out ELBO within 0.5%",
                "PeakVI accessibility AUROC", "PeakVI latent")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help=f"an .h5ad of cells x regions (default: {DEFAULT_DATA})")
    p.add_argument("--batch-key", default="Group")
    p.add_argument("--labels-key", default="BioClassification")
    p.add_argument("--max-cells", type=int, default=None, help="subsample to this many cells first (seeded; smoke tests)")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--kl-warmup", type=float, default=None, help="KL warm-up in epochs (default: half the epochs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tools", default="cellvi,scvi")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--record", action="store_true", help=f"append the results to {RESULTS.relative_to(ROOT)}")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--worker", choices=sorted(TOOL_NAMES), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def prepare(args, seed: int, workdir: Path) -> dict:
    """train.h5ad and heldout.h5ad (CSR float32 counts, obs batch and labels) and the config."""
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    path = args.data or DEFAULT_DATA
    if not path.exists():
        sys.exit(f"data file '{path}' not found; pass --data FILE.h5ad")
    src = anndata.read_h5ad(path)
    for key in (args.batch_key, args.labels_key):
        if key not in src.obs:
            sys.exit(f"obs column '{key}' not found; available: {', '.join(src.obs.columns)}")
    rng = np.random.default_rng(seed)
    keep = np.arange(src.n_obs)
    if args.max_cells and args.max_cells < src.n_obs:
        keep = np.sort(rng.choice(src.n_obs, args.max_cells, replace=False))
    n = len(keep)
    test = np.zeros(n, dtype=bool)
    test[rng.choice(n, int(round(args.test_fraction * n)), replace=False)] = True
    obs = pd.DataFrame({"batch": pd.Categorical(src.obs[args.batch_key].astype(str).to_numpy()[keep]),
                        "label": pd.Categorical(src.obs[args.labels_key].astype(str).to_numpy()[keep])},
                       index=src.obs_names[keep])
    adata = anndata.AnnData(X=sp.csr_matrix(src.X, dtype=np.float32)[keep], obs=obs,
                            var=pd.DataFrame(index=src.var_names))
    adata[~test].copy().write_h5ad(workdir / "train.h5ad")
    adata[test].copy().write_h5ad(workdir / "heldout.h5ad")
    n_train = int((~test).sum())
    warmup = float(args.kl_warmup) if args.kl_warmup is not None else args.epochs / 2
    steps = math.ceil(n_train / args.batch_size)
    config = {
        "seed": seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "kl_warmup_epochs": warmup, "steps_per_epoch": steps, "kl_warmup_steps": int(round(warmup * steps)),
        "threads": args.threads, "n_cells": n, "n_regions": adata.n_vars, "n_train": n_train,
        "n_test": int(test.sum()), "n_labels": int(obs["label"].nunique()),
        "density": float(adata.X.nnz / (adata.n_obs * adata.n_vars)),
        "dataset": f"{path.name} ({src.n_obs:,} x {adata.n_vars:,})" + (f", subsampled to {n:,} cells" if n < src.n_obs else ""),
    }
    (workdir / "config.json").write_text(json.dumps(config, indent=1))
    return config


# ------------------------------------------------------------------------------------------
# workers: one tool, one seed, one fresh process
# ------------------------------------------------------------------------------------------
def _load_optimizer_machinery() -> None:
    """torch._dynamo (~1.2 s, imported once per process by the first optimizer) before the
    clock, in both tools."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def worker_cellvi(cfg, train, heldout) -> dict:
    import cellvi

    cellvi.settings.seed = cfg["seed"]
    cellvi.settings.progress_bar = False
    t0 = time.perf_counter()
    cellvi.PEAKVI.setup_anndata(train, batch_key="batch")
    model = cellvi.PEAKVI(train)
    setup_s = time.perf_counter() - t0
    _load_optimizer_machinery()
    t0 = time.perf_counter()
    model.train(max_epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], train_size=1.0,
                early_stopping=False, plan_kwargs={"n_steps_kl_warmup": cfg["kl_warmup_steps"]},
                device="cpu", progress_bar=False)
    train_s = time.perf_counter() - t0
    return {"version": cellvi.__version__, "setup_s": setup_s, "train_s": train_s, "model": model,
            "final_kl_weight": float(model.history["kl_weight"].iloc[-1])}


def worker_scvi(cfg, train, heldout) -> dict:
    import logging
    import warnings

    import scvi

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = cfg["seed"]
    scvi.settings.num_threads = cfg["threads"]
    t0 = time.perf_counter()
    scvi.model.PEAKVI.setup_anndata(train, batch_key="batch")
    model = scvi.model.PEAKVI(train)
    setup_s = time.perf_counter() - t0
    _load_optimizer_machinery()
    t0 = time.perf_counter()
    model.train(max_epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], train_size=1.0,
                early_stopping=False, n_epochs_kl_warmup=None, n_steps_kl_warmup=cfg["kl_warmup_steps"],
                accelerator="cpu", devices=1, enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    return {"version": scvi.__version__, "setup_s": setup_s, "train_s": train_s, "model": model}


WORKERS = {"cellvi": worker_cellvi, "scvi": worker_scvi}


def auroc(scores, labels) -> float:
    """Area under the ROC curve from ranks (ties averaged); ``labels`` boolean."""
    import numpy as np
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels, dtype=bool).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def run_as_worker(args) -> None:
    import anndata
    import numpy as np
    import torch

    cfg = json.loads((args.workdir / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    train = anndata.read_h5ad(args.workdir / "train.h5ad")
    heldout = anndata.read_h5ad(args.workdir / "heldout.h5ad")
    out = WORKERS[args.worker](cfg, train, heldout)
    model = out.pop("model")
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    elbo = float(model.get_elbo(heldout))
    out["heldout_elbo"] = -elbo if elbo > 0 else elbo
    out["elbo_s"] = time.perf_counter() - t0
    observed = np.asarray(heldout.X.todense() > 0)
    t0 = time.perf_counter()
    est = model.get_normalized_accessibility(heldout)
    out["accessibility_s"] = time.perf_counter() - t0
    out["auroc"] = auroc(np.asarray(est), observed)
    full = model.get_normalized_accessibility(heldout, normalize_cells=True, normalize_regions=True)
    out["auroc_observation"] = auroc(np.asarray(full), observed)
    np.save(args.workdir / f"latent_{args.worker}.npy", np.asarray(model.get_latent_representation(train)))
    out.update(tool=args.worker, torch=torch.__version__, n_train=train.n_obs, n_heldout=heldout.n_obs,
               epochs=cfg["epochs"], cells_per_s=train.n_obs * cfg["epochs"] / out["train_s"])
    emit_result(out)


def latent_scores(latent, labels, seed: int) -> dict:
    """Label silhouette and k-means NMI / ARI of a latent space."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    codes = np.unique(labels, return_inverse=True)[1]
    clusters = KMeans(n_clusters=int(codes.max()) + 1, n_init=10, random_state=seed).fit_predict(latent)
    return {"silhouette": float(silhouette_score(latent, codes)),
            "nmi": float(normalized_mutual_info_score(codes, clusters)),
            "ari": float(adjusted_rand_score(codes, clusters))}


# ------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------
def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_measured(args, tool: str, workdir: Path) -> dict | None:
    busy0, own0, t0 = busy_seconds(), _children_cpu(), time.perf_counter()
    r = run_worker(__file__, ["--worker", tool, "--workdir", str(workdir)], args.threads,
                   verbose=args.verbose, label=tool)
    busy1, own1, wall = busy_seconds(), _children_cpu(), time.perf_counter() - t0
    if r is not None and busy0 is not None and busy1 is not None:
        r["background_cores"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return r


FIGURES = ("cells_per_s", "heldout_elbo", "auroc", "auroc_observation", "silhouette", "nmi", "ari")


def summarise(runs: dict) -> dict:
    out = {}
    for tool in TOOL_NAMES:
        rs = [r for (_, t), r in runs.items() if t == tool]
        out[tool] = {k: (statistics.median(v), min(v), max(v))
                     for k in FIGURES if rs and (v := [r[k] for r in rs if k in r])}
        out[tool]["seeds"] = len(rs)
    pairs = [(runs[(s, "cellvi")], runs[(s, "scvi")]) for (s, t) in runs if t == "cellvi" and (s, "scvi") in runs]
    out["pairs"] = {
        "speed_ratio": [c["cells_per_s"] / r["cells_per_s"] for c, r in pairs],
        "elbo_rel": [(c["heldout_elbo"] - r["heldout_elbo"]) / abs(r["heldout_elbo"]) for c, r in pairs],
        **{f"{k}_diff": [c[k] - r[k] for c, r in pairs] for k in ("auroc", "silhouette", "nmi", "ari")},
    }
    out["runs"] = list(runs.values())
    return out


def results_table(runs: dict) -> list[str]:
    head = ["tool", "seed", "train (s)", "cells/s", "vs scvi-tools", "held-out ELBO/cell", "AUROC",
            "AUROC (x cell, region factors)", "label silhouette", "k-means NMI", "k-means ARI",
            "peak RSS (MiB)", "background load (cores)"]
    rows = [head, ["---"] * len(head)]
    for (seed, tool), r in sorted(runs.items(), key=lambda kv: (kv[0][0], list(TOOL_NAMES).index(kv[0][1]))):
        ref = runs.get((seed, "scvi"), {}).get("cells_per_s")
        ratio = r["cells_per_s"] / ref if ref else None
        rows.append([TOOL_NAMES[tool], str(seed), fmt(r.get("train_s"), ".1f"), fmt(r.get("cells_per_s"), ",.0f"),
                     fmt(ratio, ".2f") + ("x" if ratio is not None else ""), fmt(r.get("heldout_elbo"), ".2f"),
                     fmt(r.get("auroc"), ".4f"), fmt(r.get("auroc_observation"), ".4f"),
                     fmt(r.get("silhouette"), ".3f"), fmt(r.get("nmi"), ".3f"), fmt(r.get("ari"), ".3f"),
                     fmt(r.get("rss_mib"), ",.0f"), fmt(r.get("background_cores"), ".2f")])
    return ["| " + " | ".join(row) + " |" for row in rows]


def _per_seed(values, spec, suffix=""):
    return ", ".join(format(v, spec) + suffix for v in values)


def _status(values, ok) -> str:
    med = statistics.median(values)
    return "met" if all(ok(v) for v in values) else ("met on the median" if ok(med) else "**not met**")


def summary_rows(summary: dict, cfg: dict) -> list[str]:
    p, ours, ref = summary["pairs"], summary.get("cellvi", {}), summary.get("scvi", {})
    if not p["speed_ratio"]:
        return []
    n = len(p["speed_ratio"])
    where = f"granja scATAC {cfg['n_train']:,} training cells x {cfg['n_regions']:,} peaks, batch {cfg['batch_size']}, {cfg['epochs']} epochs, {n} seeds"
    load = [r.get("background_cores") for r in summary["runs"] if r.get("background_cores") is not None]
    load_note = "" if not load else ("; quiet machine" if max(load) < 0.05 else f"; other load {min(load):.2f}-{max(load):.2f} cores")
    rows = [
        f"| {SUMMARY_KEYS[0]} ({where}) | {ours['cells_per_s'][0]:,.0f} vs {ref['cells_per_s'][0]:,.0f} cells/s (medians); "
        f"per seed {_per_seed(p['speed_ratio'], '.2f', 'x')}, median **{statistics.median(p['speed_ratio']):.2f}x**{load_note} | "
        f"{_status(p['speed_ratio'], lambda v: v >= 2)} |",
        f"| {SUMMARY_KEYS[1]} of scvi-tools (10% held-out cells) | {ours['heldout_elbo'][0]:.2f} vs {ref['heldout_elbo'][0]:.2f} "
        f"(per seed {_per_seed([100 * v for v in p['elbo_rel']], '+.2f', '%')}) | {_status(p['elbo_rel'], lambda v: abs(v) <= 0.005)} |",
        f"| {SUMMARY_KEYS[2]} against held-out cells' observed accessibility >= scvi-tools - 0.005 | "
        f"{ours['auroc'][0]:.4f} vs {ref['auroc'][0]:.4f} (difference per seed {_per_seed(p['auroc_diff'], '+.4f')}) | "
        f"{_status(p['auroc_diff'], lambda v: v >= -0.005)} |",
        f"| {SUMMARY_KEYS[3]}: label silhouette, k-means NMI and ARI >= scvi-tools - 0.02 | silhouette {ours['silhouette'][0]:.3f} "
        f"vs {ref['silhouette'][0]:.3f}, NMI {ours['nmi'][0]:.3f} vs {ref['nmi'][0]:.3f}, ARI {ours['ari'][0]:.3f} vs "
        f"{ref['ari'][0]:.3f} (medians; differences per seed: silhouette {_per_seed(p['silhouette_diff'], '+.3f')}, NMI "
        f"{_per_seed(p['nmi_diff'], '+.3f')}, ARI {_per_seed(p['ari_diff'], '+.3f')}) | "
        f"{_status([min(a, b, c) for a, b, c in zip(p['silhouette_diff'], p['nmi_diff'], p['ari_diff'])], lambda v: v >= -0.02)} |",
    ]
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_as_worker(args)
        return 0
    tools, seeds = _csv(args.tools), [int(s) for s in _csv(args.seeds)]
    if bad := [t for t in tools if t not in TOOL_NAMES]:
        sys.exit(f"unknown tool(s) {bad}; choose from {', '.join(TOOL_NAMES)}")
    if "scvi" in tools and importlib.util.find_spec("scvi") is None:
        sys.exit(f"scvi-tools is not installed in {sys.executable}; run bash benchmarks/setup_reference_env.sh, "
                 f"then {VENV_HINT.relative_to(ROOT)} {Path(__file__).relative_to(ROOT)} ...")
    import anndata
    import numpy as np
    import torch

    runs, failed, cfg = {}, 0, None
    t_start = time.perf_counter()
    for seed in seeds:
        workdir = Path(tempfile.mkdtemp(prefix="bench_peakvi_"))
        try:
            cfg = prepare(args, seed, workdir)
            labels = anndata.read_h5ad(workdir / "train.h5ad").obs["label"].astype(str).to_numpy()
            print(f"data: {cfg['dataset']} (density {cfg['density']:.3f}); seed {seed}: {cfg['n_train']:,} training / "
                  f"{cfg['n_test']:,} held-out cells; {cfg['epochs']} epochs, KL warm-up {cfg['kl_warmup_steps']} steps",
                  flush=True)
            for tool in tools:
                r = run_measured(args, tool, workdir)
                if r is None:
                    failed += 1
                    continue
                r.update(latent_scores(np.load(workdir / f"latent_{tool}.npy"), labels, seed))
                runs[(seed, tool)] = r
                print(f"[seed {seed}] [{tool}] " + str({k: round(v, 4) for k, v in r.items() if isinstance(v, float)}),
                      flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if not runs:
        return 1
    wall = time.perf_counter() - t_start
    summary = summarise(runs)
    lines = ["Per seed:", "", *results_table(runs), ""]
    rows = summary_rows(summary, cfg)
    print("\n".join(lines + rows))
    print(f"whole benchmark: {wall / 60:.1f} min")
    if args.record:
        machine = machine_info()
        versions = {t: r["version"] for (_, t), r in runs.items()}
        section = [
            "## PeakVI (scATAC-seq)", "",
            f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}; whole benchmark {wall / 60:.1f} min",
            f"- command: `{interpreter_path()} {Path(__file__).resolve().relative_to(ROOT)} "
            f"{' '.join(shlex.quote(a) for a in sys.argv[1:])}`",
            f"- commit: {git_commit()}",
            f"- machine: {machine['cpu']} ({machine['cores']} cores), {args.threads} torch threads, CPU; torch "
            f"{torch.__version__}, cellvi {versions.get('cellvi', '-')}, scvi-tools {versions.get('scvi', '-')}",
            f"- data: {cfg['dataset']}, density {cfg['density']:.3f}; per seed a random {args.test_fraction:g} of "
            f"cells ({cfg['n_test']:,}) held out; batch key {args.batch_key}, labels {args.labels_key} "
            f"({cfg['n_labels']} types) for the latent scores",
            f"- settings: PEAKVI defaults of each tool; {cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']:g}, "
            f"weight decay 1e-3, train_size 1.0, no early stopping; KL warm-up linear over {cfg['kl_warmup_steps']} steps",
            "", *lines, *rows,
        ]
        update_summary(rows, SUMMARY_KEYS)
        text = RESULTS.read_text()
        RESULTS.write_text(text.rstrip("\n") + "\n\n" + "\n".join(section).rstrip("\n") + "\n")
        print(f"recorded in {RESULTS}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
