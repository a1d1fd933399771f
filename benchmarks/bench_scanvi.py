"""scANVI label transfer and reference mapping: cellvi against scvi-tools, in one run.

Both tools get the same data, the same label mask, the same seed, the same epochs and the same
settings (minibatch 128, ZINB, 10 latent dimensions, Adam lr 1e-3, eps 0.01, weight decay
1e-6, both tools' defaults), and each part runs in its own fresh subprocess per tool
(``--worker TOOL --part PART``).

Data
    ``--data FILE.h5ad`` (default ``../shared/data/kang_se_12261.h5ad``): counts in ``X``, obs
    ``sample_id`` (as strings) is the batch, ``cluster_id`` the cell type (8 types).

Parts
    A  semi-supervised annotation. ``--label-fraction`` (10%) of the cells, drawn with the seed,
       keep their type; the others are set to "Unknown". SCVI (1 hidden layer of 128, batch
       as batch) trains E1 epochs, then ``SCANVI.from_scvi_model`` trains E2 epochs on all
       cells. Measures: the accuracy of ``predict()`` on the hidden cells (and its balanced
       accuracy, the mean over types of the per-type recall), the training times.
    B  reference mapping (scArches). Reference: the cells of all donors but ``--query-batches``
       (101 and 1039), all labelled; query: those donors, labels "Unknown". Reference SCVI with
       the scArches settings (n_layers=2, encode_covariates=True, dropout_rate=0.2,
       use_layer_norm="both", use_batch_norm="none") trains E1 epochs, SCANVI from it E2.
       Then the query is mapped: ``prepare_query_anndata`` + ``SCANVI.load_query_data`` +
       ``train(E3)`` (new batch weights only, weight decay 0 on them: cellvi forces it,
       scvi-tools gets ``plan_kwargs={"weight_decay": 0.0}``). Measures: query label accuracy
       against the true ``cluster_id``; the mapping time (prepare + load + train).
    R  retraining instead of mapping: SCVI (same settings) E1 epochs + SCANVI E2 epochs from
       scratch on reference + query (query cells unlabelled). Measures its time (the ratio
       retrain / mapping is the speed-up of mapping) and, for comparison, the accuracy it
       reaches on the query cells.
    Every model trains on all its cells (``train_size=1.0``, no validation split).

KL warm-up
    As in bench_scvi.py: every train() call warms up linearly per step over
    ``min(400, 0.75 * epochs)`` epochs (cellvi's default); scvi-tools gets the same per-step
    ramp (``n_epochs_kl_warmup=None, n_steps_kl_warmup=...``) instead of its per-epoch staircase
    over 400 epochs.

Examples
--------
    bash benchmarks/setup_reference_env.sh            # once: scvi-tools + cellvi in one venv
    benchmarks/.venv-scvi/bin/python benchmarks/bench_scanvi.py --epochs 20,10,20 --seeds 0,1 --record
    benchmarks/.venv-scvi/bin/python benchmarks/bench_scanvi.py --epochs 1,1,1 --tools cellvi  # smoke
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_DATA, RESULTS, ROOT, VENV_HINT, emit_result, fmt,  # noqa: E402
                     git_commit, interpreter_path, machine_info, run_worker, update_summary)

TOOL_NAMES = {"cellvi": "cellvi", "scvi": "scvi-tools"}
PARTS = ("A", "B", "R")
UNKNOWN = "Unknown"
BATCH_KEY, TYPE_KEY = "batch", "cell_type"  # columns of the prepared file
LABELS_A, LABELS_B, IS_QUERY = "labels_a", "labels_b", "is_query"
SCARCHES = dict(n_layers=2, encode_covariates=True, dropout_rate=0.2, use_layer_norm="both",
                use_batch_norm="none")
SUMMARY_ACCURACY = "scANVI label accuracy within 1 point of scvi-tools or better"
SUMMARY_MAPPING = "query mapping >= 5x faster than retraining on reference + query"


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help=f"an .h5ad of raw counts (default: {DEFAULT_DATA})")
    p.add_argument("--batch-key", default="sample_id", help="obs column of the batch (default sample_id)")
    p.add_argument("--labels-key", default="cluster_id", help="obs column of the cell type (default cluster_id)")
    p.add_argument("--query-batches", default="101,1039",
                   help="comma-separated batches that form the query of part B (default 101,1039)")
    p.add_argument("--label-fraction", type=float, default=0.1,
                   help="fraction of cells that keep their label in part A (default 0.1)")
    p.add_argument("--epochs", default="20,10,20",
                   help="E1,E2,E3: SCVI epochs, SCANVI epochs, query epochs (default 20,10,20)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--kl-warmup", type=float, default=400,
                   help="n_epochs_kl_warmup; effective warm-up is min(this, 0.75 * epochs) per train() call")
    p.add_argument("--tools", default="cellvi,scvi", help="comma-separated: cellvi, scvi (default both)")
    p.add_argument("--parts", default="A,B,R", help="comma-separated: A, B, R (default all)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each runs every part (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--record", action="store_true", help=f"append the results to {RESULTS.relative_to(ROOT)}")
    p.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    # internal: one tool, one part, in a fresh process
    p.add_argument("--worker", choices=sorted(TOOL_NAMES), help=argparse.SUPPRESS)
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def prepare(args, seed: int, workdir: Path) -> dict:
    """Write the benchmark's AnnData (CSR float32 counts; obs batch, cell_type, the two label
    columns and the query flag) and its config to ``workdir``."""
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
            sys.exit(f"obs column '{key}' not found; available: {', '.join(map(str, src.obs.columns))}")
    batch = src.obs[args.batch_key].astype(str).to_numpy()
    types = src.obs[args.labels_key].astype(str).to_numpy()
    query_batches = _csv(args.query_batches)
    missing = sorted(set(query_batches) - set(batch))
    if missing:
        sys.exit(f"query batch(es) {missing} not in obs '{args.batch_key}'; available: {sorted(set(batch))}")
    n = src.n_obs
    rng = np.random.default_rng(seed)
    labelled = np.zeros(n, dtype=bool)
    labelled[rng.choice(n, int(round(args.label_fraction * n)), replace=False)] = True
    is_query = np.isin(batch, query_batches)
    categories = sorted(set(types)) + [UNKNOWN]
    obs = pd.DataFrame({
        BATCH_KEY: pd.Categorical(batch),
        TYPE_KEY: pd.Categorical(types, categories=categories[:-1]),
        LABELS_A: pd.Categorical(np.where(labelled, types, UNKNOWN), categories=categories),
        LABELS_B: pd.Categorical(np.where(is_query, UNKNOWN, types), categories=categories),
        IS_QUERY: is_query,
    }, index=src.obs_names)
    adata = anndata.AnnData(X=sp.csr_matrix(src.X, dtype=np.float32), obs=obs,
                            var=pd.DataFrame(index=src.var_names))
    adata.write_h5ad(workdir / "data.h5ad")
    e1, e2, e3 = (int(v) for v in _csv(args.epochs))
    config = {
        "seed": seed, "epochs": [e1, e2, e3], "batch_size": args.batch_size,
        "kl_warmup": args.kl_warmup, "threads": args.threads, "n_cells": n, "n_genes": adata.n_vars,
        "n_labelled_a": int(labelled.sum()), "n_types": len(categories) - 1, "n_batches": len(set(batch)),
        "query_batches": query_batches, "n_query": int(is_query.sum()), "n_reference": int((~is_query).sum()),
        "dataset": f"{path.name} ({n:,} x {adata.n_vars:,}), batch {args.batch_key} "
                   f"({len(set(batch))} batches), labels {args.labels_key} ({len(categories) - 1} types)",
    }
    (workdir / "config.json").write_text(json.dumps(config, indent=1))
    return config


def accuracy(predicted, truth) -> tuple[float, float]:
    """Accuracy and balanced accuracy (mean per-type recall) in percent."""
    import numpy as np

    predicted, truth = np.asarray(predicted, dtype=str), np.asarray(truth, dtype=str)
    correct = predicted == truth
    recalls = [correct[truth == t].mean() for t in np.unique(truth)]
    return 100.0 * float(correct.mean()), 100.0 * float(np.mean(recalls))


def warmup_steps(cfg, n_cells: int, epochs: int) -> int:
    """cellvi's warm-up (min(W, 0.75 * epochs) epochs, linear per step) in steps."""
    steps = math.ceil(n_cells / cfg["batch_size"])
    if steps > 1 and n_cells % cfg["batch_size"] == 1:
        steps -= 1
    return int(round(min(float(cfg["kl_warmup"]), 0.75 * epochs) * steps))


# ------------------------------------------------------------------------------------------
# the two tools behind one interface: the parts below are written once
# ------------------------------------------------------------------------------------------
class CellviTool:
    def __init__(self, cfg):
        import cellvi

        self.lib, self.cfg = cellvi, cfg
        cellvi.settings.seed = cfg["seed"]
        cellvi.settings.progress_bar = False
        self.version = cellvi.__version__

    def scvi(self, adata, **kwargs):
        self.lib.SCVI.setup_anndata(adata, batch_key=BATCH_KEY)
        return self.lib.SCVI(adata, **kwargs)

    def scanvi_from(self, scvi_model, labels_key):
        return self.lib.SCANVI.from_scvi_model(scvi_model, UNKNOWN, labels_key=labels_key)

    def train(self, model, n_cells, epochs, query=False):
        model.train(max_epochs=epochs, train_size=1.0, batch_size=self.cfg["batch_size"],
                    n_epochs_kl_warmup=_whole(self.cfg["kl_warmup"]), plan_kwargs={"kl_warmup_cap": 0.75},
                    device="cpu", progress_bar=False)

    def map_query(self, query, reference):
        """(query model, its AnnData, prepare seconds, load seconds)."""
        t0 = time.perf_counter()
        query = self.lib.SCANVI.prepare_query_anndata(query, reference)
        t1 = time.perf_counter()
        model = self.lib.SCANVI.load_query_data(query, reference)
        return model, query, t1 - t0, time.perf_counter() - t1

    @staticmethod
    def predict(model, adata=None):
        return model.predict(adata)


class ScviTool:
    def __init__(self, cfg):
        import logging
        import warnings

        import scvi

        warnings.filterwarnings("ignore")
        for name in ("lightning", "lightning.pytorch", "scvi"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.lib, self.cfg = scvi, cfg
        scvi.settings.seed = cfg["seed"]
        scvi.settings.num_threads = cfg["threads"]
        scvi.settings.progress_bar_style = "tqdm"
        self.version = scvi.__version__

    def scvi(self, adata, **kwargs):
        self.lib.model.SCVI.setup_anndata(adata, batch_key=BATCH_KEY)
        return self.lib.model.SCVI(adata, **kwargs)

    def scanvi_from(self, scvi_model, labels_key):
        return self.lib.model.SCANVI.from_scvi_model(scvi_model, unlabeled_category=UNKNOWN,
                                                     labels_key=labels_key)

    def train(self, model, n_cells, epochs, query=False):
        plan_kwargs = {"n_epochs_kl_warmup": None,
                       "n_steps_kl_warmup": warmup_steps(self.cfg, n_cells, epochs) or None}
        if query:
            plan_kwargs["weight_decay"] = 0.0
        model.train(max_epochs=epochs, train_size=1.0, batch_size=self.cfg["batch_size"],
                    accelerator="cpu", devices=1, plan_kwargs=plan_kwargs, enable_progress_bar=False)

    def map_query(self, query, reference):
        SCANVI = self.lib.model.SCANVI
        t0 = time.perf_counter()
        SCANVI.prepare_query_anndata(query, reference)  # in place
        t1 = time.perf_counter()
        model = SCANVI.load_query_data(query, reference, accelerator="cpu")
        return model, query, t1 - t0, time.perf_counter() - t1

    @staticmethod
    def predict(model, adata=None):
        return model.predict(adata)


TOOLS = {"cellvi": CellviTool, "scvi": ScviTool}


def _whole(value):
    """A whole float as an int (400.0 -> 400), 0 as None (no warm-up)."""
    if not value:
        return None
    return int(value) if float(value).is_integer() else value


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def scvi_then_scanvi(tool, adata, labels_key, e1, e2, **scvi_kwargs) -> tuple:
    """SCVI for e1 epochs, then SCANVI from it for e2: (scanvi model, times). ``total_cpu_s``
    is the process' CPU time (all threads) over the same span."""
    cpu0 = time.process_time()
    model, setup_s = _timed(lambda: tool.scvi(adata, **scvi_kwargs))
    _, scvi_s = _timed(lambda: tool.train(model, adata.n_obs, e1))
    scanvi, init_s = _timed(lambda: tool.scanvi_from(model, labels_key))
    _, scanvi_s = _timed(lambda: tool.train(scanvi, adata.n_obs, e2))
    return scanvi, {"setup_s": setup_s, "scvi_train_s": scvi_s, "scanvi_init_s": init_s,
                    "scanvi_train_s": scanvi_s, "total_s": setup_s + scvi_s + init_s + scanvi_s,
                    "total_cpu_s": time.process_time() - cpu0}


def part_a(tool, cfg, adata) -> dict:
    """Semi-supervised: a seeded fraction of the labels, accuracy on the hidden cells."""
    import numpy as np

    e1, e2, _ = cfg["epochs"]
    model, times = scvi_then_scanvi(tool, adata, LABELS_A, e1, e2)
    predicted, predict_s = _timed(lambda: np.asarray(tool.predict(model), dtype=str))
    hidden = (adata.obs[LABELS_A] == UNKNOWN).to_numpy()
    truth = adata.obs[TYPE_KEY].astype(str).to_numpy()
    acc, bacc = accuracy(predicted[hidden], truth[hidden])
    acc_lab, _ = accuracy(predicted[~hidden], truth[~hidden])
    return {**times, "predict_s": predict_s, "acc_hidden": acc, "bacc_hidden": bacc,
            "acc_labelled": acc_lab, "n_hidden": int(hidden.sum()), "n_labelled": int((~hidden).sum())}


def part_b(tool, cfg, adata) -> dict:
    """Reference (scArches settings) + query mapping; accuracy on the query."""
    import numpy as np

    e1, e2, e3 = cfg["epochs"]
    is_query = adata.obs[IS_QUERY].to_numpy()
    reference = adata[~is_query].copy()
    query = adata[is_query].copy()
    truth = query.obs[TYPE_KEY].astype(str).to_numpy()
    ref_model, times = scvi_then_scanvi(tool, reference, LABELS_B, e1, e2, **SCARCHES)
    ref_acc, _ = accuracy(tool.predict(ref_model), reference.obs[TYPE_KEY].astype(str))
    t0, cpu0 = time.perf_counter(), time.process_time()
    model, query, prepare_s, load_s = tool.map_query(query, ref_model)
    _, train_s = _timed(lambda: tool.train(model, query.n_obs, e3, query=True))
    mapping_s, mapping_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    predicted = np.asarray(tool.predict(model), dtype=str)
    acc, bacc = accuracy(predicted, truth)
    return {"ref_" + k: v for k, v in times.items()} | {
        "ref_acc_train": ref_acc, "prepare_s": prepare_s, "load_s": load_s, "query_train_s": train_s,
        "mapping_s": mapping_s, "mapping_cpu_s": mapping_cpu_s, "acc_query": acc, "bacc_query": bacc,
        "n_query": int(query.n_obs), "n_reference": int(reference.n_obs)}


def part_r(tool, cfg, adata) -> dict:
    """Retraining SCVI + SCANVI on reference + query instead of mapping."""
    import numpy as np

    e1, e2, _ = cfg["epochs"]
    model, times = scvi_then_scanvi(tool, adata, LABELS_B, e1, e2, **SCARCHES)
    is_query = adata.obs[IS_QUERY].to_numpy()
    predicted = np.asarray(tool.predict(model), dtype=str)
    acc, bacc = accuracy(predicted[is_query], adata.obs[TYPE_KEY].astype(str).to_numpy()[is_query])
    return {"retrain_" + k: v for k, v in times.items()} | {"acc_query_retrain": acc, "bacc_query_retrain": bacc}


PART_FUNCS = {"A": part_a, "B": part_b, "R": part_r}


def run_as_worker(args) -> None:
    import anndata
    import torch

    cfg = json.loads((args.workdir / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    adata = anndata.read_h5ad(args.workdir / "data.h5ad")
    tool = TOOLS[args.worker](cfg)
    out = PART_FUNCS[args.part](tool, cfg, adata)
    out.update(tool=args.worker, part=args.part, version=tool.version, torch=torch.__version__,
               threads_after=torch.get_num_threads())
    emit_result(out)


# ------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------
def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_measured(args, tool: str, part: str, workdir: Path) -> dict | None:
    """One worker, and the machine's other load while it ran: ``background_cores`` = busy CPU
    seconds of the whole machine minus the worker's own, over the wall time (0 on a quiet
    machine; 1 means another process kept a core busy throughout)."""
    busy0, own0, t0 = _busy_seconds(), _children_cpu(), time.perf_counter()
    r = run_worker(__file__, ["--worker", tool, "--part", part, "--workdir", str(workdir)],
                   args.threads, verbose=args.verbose, label=f"{tool} {part}")
    busy1, own1, wall = _busy_seconds(), _children_cpu(), time.perf_counter() - t0
    if r is not None and busy0 is not None and busy1 is not None:
        r[f"background_cores_{part}"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return r


def _ratio(r: dict, num: str, den: str) -> float | None:
    return r[num] / r[den] if num in r and den in r and r[den] > 0 else None


def results_tables(runs: dict, cfg: dict) -> list[str]:
    """runs[(seed, tool)] = merged results of its parts -> markdown lines (one table per part)."""
    def table(head, rows):
        return ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |",
                *("| " + " | ".join(r) + " |" for r in rows)]

    def x(value):
        return fmt(value, ".1f") + ("x" if value is not None else "")

    a_rows, b_rows, r_rows = [], [], []
    for (seed, tool), r in runs.items():
        name = [TOOL_NAMES[tool], str(seed)]
        if "acc_hidden" in r:
            a_rows.append(name + [fmt(r.get("scvi_train_s"), ".1f"), fmt(r.get("scanvi_train_s"), ".1f"),
                                  fmt(r.get("total_s"), ".1f"), fmt(r.get("total_cpu_s"), ".1f"),
                                  fmt(r.get("acc_hidden"), ".2f"), fmt(r.get("bacc_hidden"), ".2f"),
                                  fmt(r.get("background_cores_A"), ".2f")])
        if "acc_query" in r:
            b_rows.append(name + [
                fmt(r.get("ref_scvi_train_s"), ".1f"), fmt(r.get("ref_scanvi_train_s"), ".1f"),
                fmt(r.get("ref_acc_train"), ".2f"), fmt(r.get("prepare_s"), ".2f"), fmt(r.get("load_s"), ".2f"),
                fmt(r.get("query_train_s"), ".2f"), fmt(r.get("mapping_s"), ".2f"), fmt(r.get("acc_query"), ".2f"),
                fmt(r.get("bacc_query"), ".2f"), fmt(r.get("background_cores_B"), ".2f")])
        if "retrain_total_s" in r:
            r_rows.append(name + [
                fmt(r.get("mapping_s"), ".2f"), fmt(r.get("mapping_cpu_s"), ".2f"),
                fmt(r.get("retrain_total_s"), ".1f"), fmt(r.get("retrain_total_cpu_s"), ".1f"),
                x(_ratio(r, "retrain_total_s", "mapping_s")), x(_ratio(r, "retrain_total_cpu_s", "mapping_cpu_s")),
                fmt(r.get("acc_query_retrain"), ".2f"), fmt(r.get("bacc_query_retrain"), ".2f"),
                fmt(r.get("background_cores_R"), ".2f")])
    lines = []
    if a_rows:
        lines += [f"A: scANVI with {cfg['n_labelled_a']:,} of {cfg['n_cells']:,} cells labelled "
                  f"(accuracy on the {cfg['n_cells'] - cfg['n_labelled_a']:,} others)", "",
                  *table(["tool", "seed", "SCVI train (s)", "SCANVI train (s)", "total (s)", "total CPU (s)",
                          "hidden-label accuracy (%)", "balanced accuracy (%)", "background load (cores)"],
                         a_rows), ""]
    if b_rows:
        lines += ["B: reference (scArches settings) and query mapping; mapping = prepare + load + query train", "",
                  *table(["tool", "seed", "ref SCVI train (s)", "ref SCANVI train (s)", "ref training accuracy (%)",
                          "prepare (s)", "load (s)", "query train (s)", "mapping (s)", "query accuracy (%)",
                          "query balanced accuracy (%)", "background load (cores)"], b_rows), ""]
    if r_rows:
        lines += ["R: retraining SCVI + SCANVI from scratch on reference + query, against mapping (B)", "",
                  *table(["tool", "seed", "mapping (s)", "mapping CPU (s)", "retrain (s)", "retrain CPU (s)",
                          "retrain / mapping", "same, CPU time", "query accuracy, retrained (%)",
                          "query balanced accuracy, retrained (%)", "background load (cores)"], r_rows), ""]
    return lines


def summarise(runs: dict) -> dict:
    """Means over seeds per tool of the figures behind the targets, the per-seed differences
    cellvi - scvi-tools of the accuracies, and cellvi's per-seed retrain / mapping ratios."""
    keys = ("acc_hidden", "acc_query", "mapping_s", "retrain_total_s", "acc_query_retrain")
    out = {}
    for tool in TOOL_NAMES:
        rs = [r for (s, t), r in runs.items() if t == tool]
        vals = {k: [r[k] for r in rs if k in r] for k in keys}
        out[tool] = {k: statistics.mean(v) for k, v in vals.items() if v}
        out[tool]["seeds"] = len(rs)
        out[tool]["ratios"] = [_ratio(r, "retrain_total_s", "mapping_s") for r in rs
                               if _ratio(r, "retrain_total_s", "mapping_s") is not None]
    for key in ("acc_hidden", "acc_query"):
        out["diff_" + key] = [r[key] - runs[(seed, "scvi")][key] for (seed, tool), r in runs.items()
                              if tool == "cellvi" and key in r and key in runs.get((seed, "scvi"), {})]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_as_worker(args)
        return 0
    tools, parts = _csv(args.tools), [p.upper() for p in _csv(args.parts)]
    seeds = [int(s) for s in _csv(args.seeds)]
    bad = [t for t in tools if t not in TOOL_NAMES] + [p for p in parts if p not in PARTS]
    if bad:
        sys.exit(f"unknown tool(s)/part(s) {bad}; tools: {', '.join(TOOL_NAMES)}; parts: {', '.join(PARTS)}")
    if len(_csv(args.epochs)) != 3:
        sys.exit(f"--epochs wants E1,E2,E3 (e.g. 20,10,20), got {args.epochs!r}")
    if "scvi" in tools and importlib.util.find_spec("scvi") is None:
        sys.exit(f"scvi-tools is not installed in this interpreter ({sys.executable}).\n"
                 f"Create the reference environment once:  bash benchmarks/setup_reference_env.sh\n"
                 f"then run: {VENV_HINT.relative_to(ROOT)} {Path(__file__).relative_to(ROOT)} ...")
    if "cellvi" in tools and importlib.util.find_spec("cellvi") is None:
        sys.exit(f"cellvi is not importable from {sys.executable}; run: pip install -e {ROOT}")
    import torch

    runs, failed, cfg = {}, 0, None
    t_start = time.perf_counter()
    for seed in seeds:
        workdir = Path(tempfile.mkdtemp(prefix="bench_scanvi_"))
        try:
            cfg = prepare(args, seed, workdir)
            e1, e2, e3 = cfg["epochs"]
            print(f"data: {cfg['dataset']}; seed {seed}: {cfg['n_labelled_a']:,} labelled cells in A; "
                  f"reference {cfg['n_reference']:,} / query {cfg['n_query']:,} cells "
                  f"({'+'.join(cfg['query_batches'])}); epochs E1={e1}, E2={e2}, E3={e3}", flush=True)
            for part in parts:  # tools interleaved per part: slow drifts of the machine hit both
                for tool in tools:
                    print(f"[seed {seed}] [{tool}] part {part} ...", flush=True)
                    r = run_measured(args, tool, part, workdir)
                    if r is None:
                        failed += 1
                        continue
                    runs.setdefault((seed, tool), {"version": r["version"]}).update(r)
                    shown = {k: round(v, 2) for k, v in r.items() if isinstance(v, float)}
                    print(f"[seed {seed}] [{tool}] part {part}: {shown}", flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if not runs:
        print("no tool finished", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t_start
    lines = results_tables(runs, cfg)
    print()
    print("\n".join(lines))
    print(f"whole benchmark: {wall / 60:.1f} min")
    summary = summarise(runs)
    if args.record:
        record(args, cfg, runs, lines, summary, wall, torch.__version__)
    return 0 if failed == 0 else 1


# ------------------------------------------------------------------------------------------
# recording
# ------------------------------------------------------------------------------------------
def summary_rows(summary: dict, cfg: dict) -> list[str]:
    """The two rows of the summary table at the top of RESULTS.md (only those this run measured)."""
    ours, ref = summary.get("cellvi", {}), summary.get("scvi", {})
    rows = []
    n = ours.get("seeds", 0)

    def seeds_note(diffs):
        if len(diffs) < 2:
            return ""
        return f"; mean of {len(diffs)} seeds, per seed {min(diffs):+.1f} to {max(diffs):+.1f}"

    diffs = {k: summary.get("diff_" + k, []) for k in ("acc_hidden", "acc_query")}
    if diffs["acc_hidden"] and diffs["acc_query"]:
        d_hidden, d_query = statistics.mean(diffs["acc_hidden"]), statistics.mean(diffs["acc_query"])
        below = sum(d < -1.0 for d in diffs["acc_hidden"] + diffs["acc_query"])
        if d_hidden < -1.0 or d_query < -1.0:
            status = "**not met**"
        elif below:
            status = f"met on the mean ({below} of {len(diffs['acc_hidden']) + len(diffs['acc_query'])} per-seed figures below -1)"
        else:
            status = "met"
        rows.append(
            f"| {SUMMARY_ACCURACY} (kang: {cfg['n_labelled_a']:,} cells labelled; query donors "
            f"{' + '.join(cfg['query_batches'])}) | hidden labels "
            f"{ours['acc_hidden']:.1f}% vs {ref['acc_hidden']:.1f}% ({d_hidden:+.1f}{seeds_note(diffs['acc_hidden'])}); "
            f"query {ours['acc_query']:.1f}% vs {ref['acc_query']:.1f}% ({d_query:+.1f}{seeds_note(diffs['acc_query'])}) | "
            f"{status} |")
    if ours.get("ratios"):
        ratios = ours["ratios"]
        mean_ratio = ours["retrain_total_s"] / ours["mapping_s"]
        per_seed = f" (mean of {n} seeds; per seed {', '.join(f'{x:.1f}x' for x in ratios)})" if n > 1 else ""
        ref_part = (f"; scvi-tools {ref['mapping_s']:.1f} s vs {ref['retrain_total_s']:.1f} s "
                    f"({ref['retrain_total_s'] / ref['mapping_s']:.1f}x)"
                    if "mapping_s" in ref and "retrain_total_s" in ref else "")
        rows.append(
            f"| {SUMMARY_MAPPING} (kang, {cfg['n_query']:,} query cells) | cellvi mapping {ours['mapping_s']:.1f} s vs "
            f"retraining {ours['retrain_total_s']:.1f} s: **{mean_ratio:.1f}x**{per_seed}{ref_part} | "
            + ("met" if min(ratios) >= 5.0 else "**not met**") + " |")
    return rows


def record(args, cfg, runs, lines, summary, wall, torch_version) -> None:
    machine = machine_info()
    versions = {t: r["version"] for (_, t), r in runs.items()}
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    e1, e2, e3 = cfg["epochs"]
    parts = [p.upper() for p in _csv(args.parts)]
    only = "" if set(parts) == set(PARTS) else f" (part{'s' if len(parts) > 1 else ''} {', '.join(parts)} only)"
    section = [
        f"## scANVI and reference mapping{only}",
        "",
        f"- date: {when}; whole benchmark {wall / 60:.1f} min",
        f"- command: `{interpreter_path()} {Path(__file__).resolve().relative_to(ROOT)} {argv}`",
        f"- commit: {git_commit()}",
        f"- machine: {machine['cpu']} ({machine['cores']} cores), {args.threads} torch threads, CPU; "
        f"Python {machine['python']}, torch {torch_version}, cellvi {versions.get('cellvi', '-')}, "
        f"scvi-tools {versions.get('scvi', '-')}",
        f"- data: {cfg['dataset']}",
        f"- settings: epochs E1={e1} (SCVI), E2={e2} (SCANVI from SCVI), E3={e3} (query); batch "
        f"{cfg['batch_size']}, zinb, n_latent 10, n_hidden 128, KL warm-up min({_whole(cfg['kl_warmup'])}, 0.75 x epochs) "
        f"per train() call, linear per step in both tools; all cells trained on (train_size=1.0); "
        f"each tool and part in a fresh process, tools interleaved",
    ]
    if "A" in parts:
        section.append(f"- A: {cfg['n_labelled_a']:,} of {cfg['n_cells']:,} cells labelled (seeded); SCVI 1 layer; "
                       f"accuracy on the other {cfg['n_cells'] - cfg['n_labelled_a']:,}")
    if "B" in parts or "R" in parts:
        section.append(
            f"- B: reference {cfg['n_reference']:,} cells ({cfg['n_batches'] - len(cfg['query_batches'])} donors, "
            f"all labelled), query {cfg['n_query']:,} cells (donors {' + '.join(cfg['query_batches'])}, unlabelled); "
            "SCVI n_layers=2, encode_covariates, dropout 0.2, layer norm, no batch norm; mapping = "
            "prepare_query_anndata + SCANVI.load_query_data + train(E3), weight decay 0 on the new weights; "
            f"R retrains the same SCVI (E1) + SCANVI (E2) on all {cfg['n_cells']:,} cells")
    section += ["", *lines]
    update_summary(summary_rows(summary, cfg), (SUMMARY_ACCURACY, SUMMARY_MAPPING))
    text = RESULTS.read_text()
    RESULTS.write_text(text.rstrip("\n") + "\n\n" + "\n".join(section).rstrip("\n") + "\n")
    print(f"\nrecorded in {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
