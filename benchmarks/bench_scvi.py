"""Speed and fit of cellvi's SCVI against scvi-tools (and a bare torch loop), in one run.

Every tool gets the same data, the same held-out cells, the same seed and the same settings:
minibatch 128, ZINB likelihood (``--gene-likelihood``), 1 hidden layer of 128 units, 10 latent
dimensions, the batch key as batch, Adam (lr 1e-3, eps 0.01, weight decay 1e-6), the same
number of epochs and the same KL warm-up.

Data
    ``--data FILE.h5ad`` (default: ``../shared/data/kang_se_12261.h5ad`` next to the repository
    root, batch key ``sample_id``; counts in ``X`` or ``--layer``), or
    ``--synthetic N_CELLS,N_GENES``: simulated counts for scale tests. The simulation draws 6
    cell types (Dirichlet proportions) and 3 batches; each cell has a rank-8 latent state (its
    type's centre plus N(0, 0.3^2) noise), gene log-rates are a baseline (N(0, 1.2^2)) plus the
    latent state times random loadings plus a per-batch, per-gene shift (N(0, 0.25^2));
    softmax over genes times a log-normal library size (median 1,500) gives the mean, and counts
    are negative binomial (Gamma-Poisson) with per-gene inverse dispersion around 3. The
    matrix is CSR float32; obs ``batch`` and ``cell_type``. Same seed, same matrix.
    ``--max-cells N`` subsamples N cells first (seeded).

Split
    ``--test-fraction`` (10%) of the cells, drawn with the seed, are held out: no tool trains on
    them. Each tool trains on all the other cells (``train_size=1.0``, no validation split).
    (If that would leave a last minibatch of 1 or 2 cells, those 1-2 cells move to the test set:
    scvi-tools keeps such a batch and BatchNorm fails on a batch of one.)

KL warm-up
    cellvi warms up linearly per step over ``min(n_epochs_kl_warmup, 0.75 * max_epochs)``
    epochs. scvi-tools' ``n_epochs_kl_warmup`` is a per-epoch staircase (weight epoch/W, constant
    within an epoch), so it is given the same ramp per step instead:
    ``plan_kwargs={"n_epochs_kl_warmup": None, "n_steps_kl_warmup": round(W * steps_per_epoch)}``.
    The bare loop uses the same per-step ramp.

Measures, per tool (each tool trains in its own fresh subprocess, ``--worker TOOL``)
    import (s)      ``import cellvi`` / ``import scvi`` in a fresh interpreter that has already
                    imported torch and anndata (median of ``--import-repeats``).
    train (s)       wall time of the ``train()`` call (progress bar off).
    cells/s         training cells x epochs / train time.
    test log p(x)   held-out marginal log-likelihood per cell (importance sampling with
                    ``--n-mc-samples`` samples; mean over test cells; a negative number, higher
                    is better). Both tools return log p(x) (scvi-tools 1.x: "not the negative
                    log-likelihood"); a positive value would be flipped and flagged.
    peak RSS        the worker's resident-memory high-water mark (``getrusage``) after training,
                    and its growth over the mark after imports and data loading.
    peak over base  the highest RSS sampled (every 100 ms) from just after loading the data to the end of
                    training (not the log p(x) step), minus the RSS before any data was read; "peak / CSR" divides it by the
                    size of the training count matrix (CSR data + indices + indptr). The whole
                    loaded AnnData (train and test) is inside this figure.

Repeats and an older cellvi
    ``--repeats N`` trains every tool N times (same data, same seed; tools interleaved, each
    run in a fresh process) and reports the run with the median training time, with the range
    of cells/s over the runs. ``--cellvi-tree DIR`` adds a third tool, "cellvi (old)": the
    cellvi of another checkout (e.g. a ``git worktree`` of an earlier commit), imported from
    ``DIR/python`` put first on PYTHONPATH, so that two versions of cellvi are compared in one
    session on the same data, seed and settings.

Examples
--------
    bash benchmarks/setup_reference_env.sh            # once: scvi-tools + cellvi in one venv
    benchmarks/.venv-scvi/bin/python benchmarks/bench_scvi.py --epochs 20 --bare-loop --record
    benchmarks/.venv-scvi/bin/python benchmarks/bench_scvi.py --synthetic 100000,2000 --epochs 5
    benchmarks/.venv-scvi/bin/python benchmarks/bench_scvi.py --epochs 1 --max-cells 2000  # smoke
    benchmarks/.venv-scvi/bin/python benchmarks/bench_scvi.py --repeats 3 --cellvi-tree /tmp/oldtree
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_DATA, HERE, RESULTS, ROOT, VENV_HINT, busy_seconds,  # noqa: E402
                     emit_result, git_commit, interpreter_path, machine_info, worker_env)
from _common import fmt as _fmt  # noqa: E402
from _common import run_worker as _run_script  # noqa: E402

TOOL_NAMES = {"cellvi": "cellvi", "old": "cellvi (old)", "scvi": "scvi-tools", "bare": "bare torch loop"}
IMPORT_NAMES = {"cellvi": "cellvi", "old": "cellvi", "scvi": "scvi"}
BATCH_KEY = "batch"  # the batch column in the prepared files


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", type=Path, default=None,
                      help=f"an .h5ad of raw counts (default: {DEFAULT_DATA})")
    data.add_argument("--synthetic", metavar="N_CELLS,N_GENES", default=None,
                      help="simulate negative binomial counts of this size instead")
    p.add_argument("--batch-key", default=None,
                   help="obs column of the batch (default: sample_id for the default data, "
                        "'batch' for --synthetic)")
    p.add_argument("--layer", default=None, help="layer holding the counts (default: X)")
    p.add_argument("--max-cells", type=int, default=None, help="subsample to this many cells (seeded)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held-out fraction (default 0.1)")
    p.add_argument("--tools", default="cellvi,scvi",
                   help="comma-separated: cellvi, scvi, bare (default: cellvi,scvi)")
    p.add_argument("--bare-loop", action="store_true", help="also run a bare torch loop of the same network")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--gene-likelihood", choices=["zinb", "nb"], default="zinb")
    p.add_argument("--kl-warmup", type=float, default=400,
                   help="n_epochs_kl_warmup; effective warm-up is min(this, 0.75 * epochs) epochs "
                        "(default 400, both tools' default)")
    p.add_argument("--n-mc-samples", type=int, default=100,
                   help="importance samples per held-out cell for log p(x) (default 100; 0 skips)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true",
                   help="both tools' training precision (cellvi: plan_kwargs precision; scvi-tools: Lightning's)")
    p.add_argument("--compile", action="store_true",
                   help="cellvi with plan_kwargs={'compile': True} (torch.compile of its networks; opt-in)")
    p.add_argument("--import-repeats", type=int, default=3, help="fresh-interpreter imports timed per tool")
    p.add_argument("--repeats", type=int, default=1,
                   help="train every tool this many times (interleaved); report the median run (default 1)")
    p.add_argument("--cellvi-tree", type=Path, default=None,
                   help="also run the cellvi of this checkout (its python/ first on PYTHONPATH) as 'cellvi (old)'")
    p.add_argument("--record", action="store_true", help=f"append the results to {RESULTS.relative_to(ROOT)}")
    p.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    # internal: one tool's training in a fresh process
    p.add_argument("--worker", choices=sorted(TOOL_NAMES), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def selected_tools(args) -> list[str]:
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if args.bare_loop and "bare" not in tools:
        tools.append("bare")
    if args.cellvi_tree is not None and "old" not in tools:
        tools.insert(tools.index("cellvi") + 1 if "cellvi" in tools else 0, "old")
    if "old" in tools and args.cellvi_tree is None:
        sys.exit("tool 'old' needs --cellvi-tree DIR")
    unknown = [t for t in tools if t not in TOOL_NAMES]
    if unknown:
        sys.exit(f"unknown tool(s) {unknown} in --tools; choose from {', '.join(TOOL_NAMES)}")
    return list(dict.fromkeys(tools))


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def simulate_blocks(n_cells: int, n_genes: int, seed: int = 0, n_types: int = 6, n_batches: int = 3,
                    rank: int = 8, chunk: int = 5000, library_mean: float = 1500.0):
    """(obs DataFrame, iterator of CSR float32 blocks of ``chunk`` cells) of the simulation
    below: a larger-than-memory file can be written block by block."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.2, n_genes)
    loadings = rng.normal(0.0, 0.5, (rank, n_genes))
    centres = rng.normal(0.0, 1.0, (n_types, rank))
    batch_shift = rng.normal(0.0, 0.25, (n_batches, n_genes))
    theta = np.exp(rng.normal(np.log(3.0), 0.5, n_genes))
    types = rng.choice(n_types, n_cells, p=rng.dirichlet(np.full(n_types, 2.0)))
    batches = rng.integers(n_batches, size=n_cells)
    library = np.exp(rng.normal(np.log(library_mean), 0.4, n_cells))
    obs = pd.DataFrame({
        "batch": pd.Categorical([f"batch{b}" for b in batches]),
        "cell_type": pd.Categorical([f"type{t}" for t in types]),
    }, index=[f"cell{i}" for i in range(n_cells)])

    def blocks():
        for start in range(0, n_cells, chunk):
            stop = min(start + chunk, n_cells)
            z = centres[types[start:stop]] + rng.normal(0.0, 0.3, (stop - start, rank))
            logits = base + z @ loadings + batch_shift[batches[start:stop]]
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            mu = p * library[start:stop, None]
            rate = rng.gamma(theta, mu / theta)  # Gamma(shape theta, mean mu) -> NB(mu, theta)
            yield sp.csr_matrix(rng.poisson(rate).astype(np.float32))

    return obs, blocks()


def simulate_counts(n_cells: int, n_genes: int, seed: int = 0, n_types: int = 6,
                    n_batches: int = 3, rank: int = 8, chunk: int = 5000):
    """Negative binomial counts from a low-rank model with cell types and batches (see the
    module docstring). Returns an AnnData with CSR float32 counts."""
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    obs, blocks = simulate_blocks(n_cells, n_genes, seed, n_types, n_batches, rank, chunk)
    X = sp.vstack(list(blocks), format="csr", dtype=np.float32)
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    return anndata.AnnData(X=X, obs=obs, var=var)


def load_data(args):
    """The AnnData to benchmark on (CSR float32 counts in X, obs['batch'] categorical) and a
    one-line description."""
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    if args.synthetic:
        try:
            n_cells, n_genes = (int(v) for v in args.synthetic.split(","))
        except ValueError:
            sys.exit(f"--synthetic wants N_CELLS,N_GENES (e.g. 100000,2000), got {args.synthetic!r}")
        t0 = time.perf_counter()
        adata = simulate_counts(n_cells, n_genes, seed=args.seed)
        batch_key = args.batch_key or "batch"
        desc = (f"synthetic NB counts, {n_cells:,} x {n_genes:,} (6 types, 3 batches, seed {args.seed}; "
                f"simulated in {time.perf_counter() - t0:.1f} s)")
    else:
        path = args.data or DEFAULT_DATA
        if not path.exists():
            sys.exit(f"data file '{path}' not found; pass --data FILE.h5ad or --synthetic N_CELLS,N_GENES")
        adata = anndata.read_h5ad(path)
        batch_key = args.batch_key or ("sample_id" if args.data is None else None)
        desc = f"{path.name} ({adata.n_obs:,} x {adata.n_vars:,})"
    if batch_key is not None and batch_key not in adata.obs:
        sys.exit(f"obs column '{batch_key}' not found; available: {', '.join(map(str, adata.obs.columns))}")
    X = adata.layers[args.layer] if args.layer else adata.X
    X = sp.csr_matrix(X, dtype=np.float32)
    batch = (adata.obs[batch_key].astype(str) if batch_key else pd.Series("0", index=adata.obs_names))
    obs = pd.DataFrame({BATCH_KEY: pd.Categorical(batch.to_numpy())}, index=adata.obs_names)
    out = anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=adata.var_names))
    desc += f", batch key {batch_key} ({obs[BATCH_KEY].cat.categories.size} batches)"
    if args.max_cells and args.max_cells < out.n_obs:
        rng = np.random.default_rng(args.seed)
        keep = np.sort(rng.choice(out.n_obs, args.max_cells, replace=False))
        out = out[keep].copy()
        desc += f", subsampled to {out.n_obs:,} cells"
    return out, desc


def split_cells(n_obs: int, test_fraction: float, batch_size: int, seed: int):
    """Seeded held-out split; never leaves a last training minibatch of 1-2 cells."""
    import numpy as np

    perm = np.random.default_rng(seed + 1).permutation(n_obs)
    n_test = int(round(test_fraction * n_obs))
    remainder = (n_obs - n_test) % batch_size
    if remainder in (1, 2):
        n_test += remainder
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def prepare(args, workdir: Path) -> dict:
    adata, desc = load_data(args)
    train_idx, test_idx = split_cells(adata.n_obs, args.test_fraction, args.batch_size, args.seed)
    adata[train_idx].copy().write_h5ad(workdir / "train.h5ad")
    adata[test_idx].copy().write_h5ad(workdir / "test.h5ad")
    epochs = args.epochs
    warmup = min(float(args.kl_warmup), 0.75 * epochs) if args.kl_warmup else 0.0
    n_train = len(train_idx)
    steps = math.ceil(n_train / args.batch_size)
    if steps > 1 and n_train % args.batch_size == 1:
        steps -= 1
    config = {
        "epochs": epochs, "batch_size": args.batch_size, "gene_likelihood": args.gene_likelihood,
        "n_hidden": 128, "n_latent": 10, "n_layers": 1, "dropout_rate": 0.1,
        "lr": 1e-3, "eps": 0.01, "weight_decay": 1e-6,
        "kl_warmup_arg": args.kl_warmup, "kl_warmup_epochs": warmup, "steps_per_epoch": steps,
        "kl_warmup_steps": int(round(warmup * steps)),
        "n_mc_samples": args.n_mc_samples, "threads": args.threads, "device": args.device,
        "compile": args.compile, "precision": args.precision, "seed": args.seed, "n_train": n_train, "n_test": len(test_idx),
        "n_genes": adata.n_vars, "n_batch": int(adata.obs[BATCH_KEY].cat.categories.size),
        "dataset": desc,
    }
    (workdir / "config.json").write_text(json.dumps(config, indent=1))
    return config


# ------------------------------------------------------------------------------------------
# workers: one tool, one fresh process
# ------------------------------------------------------------------------------------------
def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_PEAK = None  # the worker's PeakRSS sampler
_TRAINING_PEAK = None  # its reading when training ended (log p(x) afterwards is not counted)


def _mark_training_peak() -> None:
    global _TRAINING_PEAK
    if _PEAK is not None:
        _TRAINING_PEAK = max(_PEAK.peak, _rss_now_mib())


class PeakRSS:
    """Samples the current RSS every 100 ms in a thread; ``peak`` is the highest seen (MiB)."""

    def __enter__(self):
        import threading

        self.peak = _rss_now_mib()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.1):
                self.peak = max(self.peak, _rss_now_mib())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_now_mib())


def _per_cell_mean(values) -> float:
    import numpy as np

    values = np.asarray(values, dtype=np.float64).ravel()
    return float(values.mean())


def _whole(value):
    """A whole float as an int (400.0 -> 400), 0 as None (no warm-up)."""
    if not value:
        return None
    return int(value) if float(value).is_integer() else value


def worker_cellvi(cfg, train, test) -> dict:
    import cellvi

    cellvi.settings.seed = cfg["seed"]
    cellvi.settings.progress_bar = False
    t0 = time.perf_counter()
    cellvi.SCVI.setup_anndata(train, batch_key=BATCH_KEY)
    model = cellvi.SCVI(train, n_hidden=cfg["n_hidden"], n_latent=cfg["n_latent"],
                        n_layers=cfg["n_layers"], dropout_rate=cfg["dropout_rate"],
                        gene_likelihood=cfg["gene_likelihood"])
    setup_s = time.perf_counter() - t0
    rss_before = _maxrss_mib()
    t0 = time.perf_counter()
    model.train(max_epochs=cfg["epochs"], device=cfg["device"], train_size=1.0,
                batch_size=cfg["batch_size"], lr=cfg["lr"], eps=cfg["eps"],
                weight_decay=cfg["weight_decay"], n_epochs_kl_warmup=_whole(cfg["kl_warmup_arg"]),
                plan_kwargs={"kl_warmup_cap": 0.75, "compile": cfg.get("compile", False),
                             "precision": cfg.get("precision", "32-true")}, progress_bar=False)
    train_s = time.perf_counter() - t0
    rss_train = _maxrss_mib()
    _mark_training_peak()
    assert len(model.train_indices) == train.n_obs and len(model.validation_indices) == 0
    hist = model.history
    out = {"version": cellvi.__version__, "setup_s": setup_s, "train_s": train_s,
           "rss_before_train_mib": rss_before, "rss_train_mib": rss_train, "source": cellvi.__file__,
           "final_elbo_train": float(hist["elbo_train"].iloc[-1]),
           "final_kl_weight": float(hist["kl_weight"].iloc[-1])}
    if cfg["n_mc_samples"] > 0:
        t0 = time.perf_counter()
        ll = model.get_marginal_ll(test, n_mc_samples=cfg["n_mc_samples"],
                                   batch_size=cfg["batch_size"], return_mean=False)
        out["mll_s"] = time.perf_counter() - t0
        out["test_log_px"] = _per_cell_mean(ll)
    return out


def worker_scvi(cfg, train, test) -> dict:
    import logging
    import warnings

    import scvi

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    scvi.settings.seed = cfg["seed"]
    scvi.settings.num_threads = cfg["threads"]
    scvi.settings.progress_bar_style = "tqdm"
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(train, batch_key=BATCH_KEY)
    model = scvi.model.SCVI(train, n_hidden=cfg["n_hidden"], n_latent=cfg["n_latent"],
                            n_layers=cfg["n_layers"], dropout_rate=cfg["dropout_rate"],
                            gene_likelihood=cfg["gene_likelihood"])
    setup_s = time.perf_counter() - t0
    plan_kwargs = {"lr": cfg["lr"], "eps": cfg["eps"], "weight_decay": cfg["weight_decay"],
                   "n_epochs_kl_warmup": None,
                   "n_steps_kl_warmup": cfg["kl_warmup_steps"] or None}
    accelerator = "gpu" if str(cfg["device"]).startswith("cuda") else "cpu"
    rss_before = _maxrss_mib()
    t0 = time.perf_counter()
    model.train(max_epochs=cfg["epochs"], accelerator=accelerator, devices=1, train_size=1.0,
                batch_size=cfg["batch_size"], early_stopping=False, plan_kwargs=plan_kwargs,
                enable_progress_bar=False, precision=cfg.get("precision", "32-true"))
    train_s = time.perf_counter() - t0
    rss_train = _maxrss_mib()
    _mark_training_peak()
    hist = model.history
    out = {"version": scvi.__version__, "setup_s": setup_s, "train_s": train_s,
           "rss_before_train_mib": rss_before, "rss_train_mib": rss_train,
           # scvi-tools logs "elbo_train" as reconstruction loss + KL: the negative ELBO
           "final_elbo_train": -abs(float(hist["elbo_train"].iloc[-1, 0]))}
    if "kl_weight" in hist:
        out["final_kl_weight"] = float(hist["kl_weight"].iloc[-1, 0])
    if cfg["n_mc_samples"] > 0:
        t0 = time.perf_counter()
        # By default scvi-tools runs one forward pass per importance sample; let it draw them
        # in chunks as cellvi does (the chunk must divide n_mc_samples: scvi-tools divides the
        # sum over all passes by n_mc_samples).
        n_mc = cfg["n_mc_samples"]
        per_pass = max(d for d in range(1, min(n_mc, 100) + 1) if n_mc % d == 0)
        ll = model.get_marginal_ll(test, n_mc_samples=n_mc, batch_size=cfg["batch_size"],
                                   return_mean=False, n_mc_samples_per_pass=per_pass)
        out["mll_s"] = time.perf_counter() - t0
        value = _per_cell_mean(ll.cpu().numpy() if hasattr(ll, "cpu") else ll)
        if value > 0:  # an old convention: the negative log-likelihood
            value, out["note"] = -value, "scvi-tools returned a positive value; sign flipped"
        out["test_log_px"] = value
    return out


def worker_bare(cfg, train, test) -> dict:
    """A plain torch loop of scVI's network: encoder log1p(x) -> 128 (BN, ReLU, dropout) ->
    mean, variance of a 10-d Gaussian; decoder [z, one-hot batch] -> 128 (BN, ReLU) -> softmax
    scale (times the observed library), ZINB dropout logits; per-gene inverse dispersion; the
    likelihood written densely; Adam; the same per-step KL warm-up."""
    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(cfg["seed"])
    device = torch.device(cfg["device"])
    zinb = cfg["gene_likelihood"] == "zinb"
    n_genes, n_batch, n_hidden, n_latent = cfg["n_genes"], cfg["n_batch"], cfg["n_hidden"], cfg["n_latent"]
    eps = 1e-8

    def bn(n):
        return nn.BatchNorm1d(n, momentum=0.01, eps=1e-3)

    class BareVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(n_genes, n_hidden), bn(n_hidden), nn.ReLU(),
                                         nn.Dropout(cfg["dropout_rate"]))
            self.z_mean = nn.Linear(n_hidden, n_latent)
            self.z_logvar = nn.Linear(n_hidden, n_latent)
            self.decoder = nn.Sequential(nn.Linear(n_latent + n_batch, n_hidden), bn(n_hidden), nn.ReLU())
            self.scale = nn.Linear(n_hidden, n_genes)
            self.dropout_logit = nn.Linear(n_hidden, n_genes) if zinb else None
            self.log_theta = nn.Parameter(torch.randn(n_genes))

        def encode(self, x):
            h = self.encoder(torch.log1p(x))
            return self.z_mean(h), torch.exp(self.z_logvar(h)) + 1e-4

        def log_lik(self, x, z, onehot, log_lib):
            """log p(x | z, l) per cell; z may carry leading sample dimensions."""
            onehot = onehot.expand(*z.shape[:-1], n_batch)
            h = self.decoder(torch.cat([z, onehot], -1).reshape(-1, n_latent + n_batch))
            h = h.reshape(*z.shape[:-1], n_hidden)
            mu = torch.exp(log_lib) * torch.softmax(self.scale(h), -1)
            theta = torch.exp(self.log_theta)
            log_theta_mu = torch.log(theta + mu + eps)
            nb_zero = theta * (torch.log(theta + eps) - log_theta_mu)  # log NB(0)
            nb = (nb_zero + x * (torch.log(mu + eps) - log_theta_mu)
                  + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1))
            if not zinb:
                return nb.sum(-1)
            pi = self.dropout_logit(h)  # logit of the extra-zero probability
            softplus_neg_pi = F.softplus(-pi)
            at_zero = F.softplus(nb_zero - pi) - softplus_neg_pi
            above_zero = nb - pi - softplus_neg_pi
            return torch.where(x < eps, at_zero, above_zero).sum(-1)

    def kl_normal(mean, var):
        return 0.5 * (var + mean ** 2 - 1.0 - torch.log(var)).sum(-1)

    def tensors_of(adata):
        import scipy.sparse as sp

        X = sp.csr_matrix(adata.X, dtype=np.float32)
        batch = torch.as_tensor(adata.obs[BATCH_KEY].cat.codes.to_numpy().astype(np.int64))
        if X.shape[0] * X.shape[1] * 4 < 2 * 1024 ** 3:
            dense = torch.from_numpy(X.toarray()).to(device)
            get = lambda idx: dense[idx]  # noqa: E731
        else:  # too big to densify: slice the CSR per minibatch
            get = lambda idx: torch.from_numpy(X[idx.cpu().numpy()].toarray()).to(device)  # noqa: E731
        return get, F.one_hot(batch, n_batch).float().to(device), X.shape[0]

    def batches_of(n, batch_size, generator=None):
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        chunks = list(torch.split(order, batch_size))
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            last = chunks.pop()
            chunks[-1] = torch.cat([chunks[-1], last])
        return chunks

    t0 = time.perf_counter()
    model = BareVAE().to(device)
    setup_s = time.perf_counter() - t0
    rss_before = _maxrss_mib()
    t0 = time.perf_counter()
    get_x, onehot, n = tensors_of(train)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], eps=cfg["eps"], weight_decay=cfg["weight_decay"])
    gen = torch.Generator().manual_seed(cfg["seed"] + 2)
    warmup_steps = cfg["kl_warmup_steps"]
    step, elbo_sum, kl_weight = 0, 0.0, 1.0
    for _ in range(cfg["epochs"]):
        model.train()
        elbo_sum = torch.zeros((), device=device)
        for idx in batches_of(n, cfg["batch_size"], gen):
            x = get_x(idx)
            log_lib = torch.log(x.sum(-1, keepdim=True))
            mean, var = model.encode(x)
            z = mean + var.sqrt() * torch.randn_like(mean)
            rec = -model.log_lik(x, z, onehot[idx], log_lib)
            kl = kl_normal(mean, var)
            kl_weight = min(1.0, step / warmup_steps) if warmup_steps else 1.0
            loss = (rec + kl_weight * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elbo_sum += -(rec + kl).detach().sum()
    train_s = time.perf_counter() - t0
    rss_train = _maxrss_mib()
    _mark_training_peak()
    out = {"version": f"torch {torch.__version__}", "setup_s": setup_s, "train_s": train_s,
           "rss_before_train_mib": rss_before, "rss_train_mib": rss_train,
           "final_elbo_train": float(elbo_sum) / n, "final_kl_weight": kl_weight}
    if cfg["n_mc_samples"] > 0:
        model.eval()
        get_t, onehot_t, n_t = tensors_of(test)
        t0 = time.perf_counter()
        values = []
        with torch.no_grad():
            for idx in batches_of(n_t, cfg["batch_size"]):
                x = get_t(idx)
                log_lib = torch.log(x.sum(-1, keepdim=True))
                mean, var = model.encode(x)
                sd = var.sqrt()
                log_w = []
                for start in range(0, cfg["n_mc_samples"], 50):
                    k = min(50, cfg["n_mc_samples"] - start)
                    noise = torch.randn(k, *mean.shape, device=device)
                    z = mean + sd * noise
                    log_q = (-0.5 * noise ** 2 - torch.log(sd) - 0.5 * math.log(2 * math.pi)).sum(-1)
                    log_p = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
                    log_w.append(model.log_lik(x, z, onehot_t[idx], log_lib) + log_p - log_q)
                values.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(cfg["n_mc_samples"]))
        out["mll_s"] = time.perf_counter() - t0
        out["test_log_px"] = _per_cell_mean(torch.cat(values).cpu().numpy())
    return out


WORKERS = {"cellvi": worker_cellvi, "old": worker_cellvi, "scvi": worker_scvi, "bare": worker_bare}


def run_as_worker(args) -> None:
    import anndata
    import torch

    cfg = json.loads((args.workdir / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    rss_base = _rss_now_mib()  # interpreter, torch and anndata, before any data
    train = anndata.read_h5ad(args.workdir / "train.h5ad")
    test = anndata.read_h5ad(args.workdir / "test.h5ad")
    X = train.X
    csr_mib = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20
    rss_loaded = _maxrss_mib()
    global _PEAK
    with PeakRSS() as _PEAK:
        out = WORKERS[args.worker](cfg, train, test)
    out.update(tool=args.worker, torch=torch.__version__, threads_after=torch.get_num_threads(),
               rss_loaded_mib=rss_loaded, rss_peak_mib=_maxrss_mib(), n_train=train.n_obs,
               n_test=test.n_obs, epochs=cfg["epochs"], rss_base_mib=rss_base,
               train_csr_mib=csr_mib, peak_over_base_mib=_TRAINING_PEAK - rss_base)
    out["cells_per_s"] = train.n_obs * cfg["epochs"] / out["train_s"]
    emit_result(out)


# ------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------
def tool_env(tool: str, args) -> dict:
    """Extra environment of a tool's processes: the old cellvi tree first on PYTHONPATH."""
    if tool != "old":
        return {}
    path = str((args.cellvi_tree / "python").resolve())
    return {"PYTHONPATH": os.pathsep.join([path, *filter(None, [os.environ.get("PYTHONPATH")])])}


def tree_commit(tree: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def time_import(tool: str, repeats: int, threads: int, extra_env: dict | None = None) -> float | None:
    code = (f"import torch, anndata, time; t = time.perf_counter(); import {IMPORT_NAMES[tool]}; "
            "print(time.perf_counter() - t)")
    env = {**worker_env(threads), **(extra_env or {})}
    times = []
    for _ in range(repeats):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(f"[{tool}] import failed:\n{res.stderr[-2000:]}", file=sys.stderr)
            return None
        times.append(float(res.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def run_worker(tool: str, args, workdir: Path) -> dict | None:
    """One worker, and the machine's other load while it ran: busy cores beyond the worker's
    own, over its wall time (0 on a quiet machine)."""
    busy0, own0, t0 = busy_seconds(), _children_cpu(), time.perf_counter()
    r = _run_script(__file__, ["--worker", tool, "--workdir", str(workdir)], args.threads,
                    verbose=args.verbose, label=tool, extra_env=tool_env(tool, args))
    busy1, own1, wall = busy_seconds(), _children_cpu(), time.perf_counter() - t0
    if r is not None and busy0 is not None and busy1 is not None:
        r["background_cores"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return r


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def median_run(runs: list[dict]) -> dict:
    """The run with the median training time (the lower middle one for an even count), with
    every run's cells/s as ``cells_per_s_runs``."""
    ordered = sorted(runs, key=lambda r: r["train_s"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["cells_per_s_runs"] = [r["cells_per_s"] for r in runs]
    out["background_runs"] = [r.get("background_cores") for r in runs]
    return out


def results_table(results: dict[str, dict], import_s: dict[str, float | None]) -> list[str]:
    ref = results.get("scvi", {}).get("cells_per_s")
    repeated = any(len(r.get("cells_per_s_runs", [])) > 1 for r in results.values())
    head = ["tool", "version", "import (s)", "train (s)", "cells/s", *(["cells/s, all runs"] if repeated else []),
            "vs scvi-tools",
            "test log p(x)/cell", "final train ELBO", "log p(x) time (s)", "peak RSS (MiB)",
            "RSS growth in train (MiB)", "train CSR (MiB)", "peak over base (MiB)", "peak / CSR",
            "background load (cores)" + (", all runs" if repeated else "")]
    rows = [head, ["---"] * len(head)]
    for tool, r in results.items():
        speed = r.get("cells_per_s")
        rows.append([
            TOOL_NAMES[tool], str(r.get("version", "")), _fmt(import_s.get(tool), ".2f"),
            _fmt(r.get("train_s"), ".1f"), _fmt(speed, ",.0f"),
            *([", ".join(f"{v:,.0f}" for v in r.get("cells_per_s_runs", []))] if repeated else []),
            _fmt(speed / ref if ref and speed else None, ".2f") + ("x" if ref and speed else ""),
            _fmt(r.get("test_log_px"), ".2f"), _fmt(r.get("final_elbo_train"), ".2f"),
            _fmt(r.get("mll_s"), ".1f"), _fmt(r.get("rss_train_mib"), ",.0f"),
            _fmt(r["rss_train_mib"] - r["rss_loaded_mib"] if "rss_train_mib" in r else None, ",.0f"),
            _fmt(r.get("train_csr_mib"), ",.0f"), _fmt(r.get("peak_over_base_mib"), ",.0f"),
            _fmt(r["peak_over_base_mib"] / r["train_csr_mib"] if "peak_over_base_mib" in r else None, ".2f"),
            ", ".join(_fmt(v, ".2f") for v in r.get("background_runs", [r.get("background_cores")])),
        ])
    return ["| " + " | ".join(row) + " |" for row in rows]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_as_worker(args)
        return 0
    tools = selected_tools(args)
    if "scvi" in tools and importlib.util.find_spec("scvi") is None:
        sys.exit(
            f"scvi-tools is not installed in this interpreter ({sys.executable}).\n"
            f"Create the reference environment once:  bash {HERE.relative_to(ROOT)}/setup_reference_env.sh\n"
            f"then run the benchmark with:           {VENV_HINT.relative_to(ROOT)} "
            f"{Path(__file__).relative_to(ROOT)} ...\n(or leave scvi out: --tools cellvi --bare-loop)"
        )
    if "cellvi" in tools and importlib.util.find_spec("cellvi") is None:
        sys.exit(f"cellvi is not importable from {sys.executable}; run: pip install -e {ROOT}")
    import torch

    workdir = Path(tempfile.mkdtemp(prefix="bench_scvi_"))
    try:
        t0 = time.perf_counter()
        cfg = prepare(args, workdir)
        print(f"data: {cfg['dataset']}; {cfg['n_train']:,} training / {cfg['n_test']:,} held-out cells "
              f"({time.perf_counter() - t0:.1f} s to prepare)")
        print(f"settings: {cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['gene_likelihood']}, "
              f"KL warm-up {cfg['kl_warmup_epochs']:g} epochs ({cfg['kl_warmup_steps']} steps), "
              f"{args.threads} threads, seed {args.seed}, {cfg['n_mc_samples']} importance samples",
              flush=True)
        import_s, runs = {}, {}
        for tool in tools:
            if tool in IMPORT_NAMES and args.import_repeats > 0:
                import_s[tool] = time_import(tool, args.import_repeats, args.threads, tool_env(tool, args))
        for rep in range(args.repeats):  # tools interleaved: slow drifts of the machine hit all
            for tool in tools:
                print(f"[{tool}] training{f' (run {rep + 1} of {args.repeats})' if args.repeats > 1 else ''} ...",
                      flush=True)
                r = run_worker(tool, args, workdir)
                if r is None:
                    continue
                runs.setdefault(tool, []).append(r)
                print(f"[{tool}] {r['cells_per_s']:,.0f} cells/s, train {r['train_s']:.1f} s, "
                      f"test log p(x) {_fmt(r.get('test_log_px'), '.2f')}"
                      + (f" ({r['note']})" if r.get("note") else "")
                      + (f" (cellvi from {r['source']})" if tool == "old" else ""), flush=True)
        results = {tool: median_run(rs) for tool, rs in runs.items()}
        if "old" in results:
            results["old"]["version"] = f"{results['old']['version']} ({tree_commit(args.cellvi_tree)})"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not results:
        print("no tool finished", file=sys.stderr)
        return 1
    table = results_table(results, import_s)
    print()
    print("\n".join(table))
    if args.record:
        record(args, cfg, results, table, torch.__version__)
    return 0 if sum(map(len, runs.values())) == len(tools) * args.repeats else 1


def record(args, cfg, results, table, torch_version) -> None:
    machine = machine_info()
    scvi_version = results.get("scvi", {}).get("version")
    if scvi_version is None and importlib.util.find_spec("scvi") is not None:
        from importlib.metadata import version

        scvi_version = version("scvi-tools")
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    interpreter = interpreter_path()
    lines = [
        f"## {when}: {cfg['dataset']}",
        "",
        f"- command: `{interpreter} {Path(__file__).resolve().relative_to(ROOT)} {argv}`",
        f"- commit: {git_commit()}",
        f"- machine: {machine['cpu']} ({machine['cores']} cores), {args.threads} torch threads, "
        f"device {args.device}; Python {machine['python']}, torch {torch_version}, "
        f"scvi-tools {scvi_version or 'not installed'}",
        f"- settings: {cfg['n_train']:,} training / {cfg['n_test']:,} held-out cells x {cfg['n_genes']:,} "
        f"genes, {cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['gene_likelihood']}, "
        f"n_hidden {cfg['n_hidden']}, n_latent {cfg['n_latent']}, n_layers {cfg['n_layers']}, "
        f"KL warm-up {cfg['kl_warmup_epochs']:g} epochs, seed {cfg['seed']}, "
        f"log p(x) with {cfg['n_mc_samples']} importance samples"
        + (f"; each tool trained {args.repeats} times (interleaved, same seed): the row is the run with the "
           "median training time, 'all runs' lists every run's cells/s" if args.repeats > 1 else "")
        + (f"; 'cellvi (old)' is the cellvi of {args.cellvi_tree} (commit {tree_commit(args.cellvi_tree)}), "
           "imported from its python/ first on PYTHONPATH" if "old" in results else ""),
        "",
        *table,
        "",
    ]
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by `benchmarks/bench_scvi.py --record`; "
                           "newest last. cells/s = training cells x epochs / wall time of train().\n\n")
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nappended to {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
