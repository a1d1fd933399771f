"""``python -m cellvi.autotune worker --storage URL --study-name NAME [--adata data.h5ad]``:
join a search started by :func:`cellvi.autotune.run_autotune` (on this machine or another)."""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellvi.autotune",
                                     description="cellvi hyperparameter search (Optuna) from the command line")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run trials of an existing study until it holds as many as asked for")
    w.add_argument("--storage", default=None,
                   help="the study's database URL, e.g. postgresql://user:pass@host:5432/db "
                        "(default: $CELLVI_AUTOTUNE_STORAGE, which keeps a password out of process lists)")
    w.add_argument("--study-name", required=True, help="the study's name (run_autotune prints it)")
    w.add_argument("--adata", default=None,
                   help="the study's data file (data.h5ad of the run directory, copied here); "
                        "default: the path recorded in the study")
    w.add_argument("--threads", type=int, default=None, help="torch threads of this worker")
    w.add_argument("--seed", type=int, default=None, help="seed of this worker's sampler")
    w.add_argument("--quiet", action="store_true", help="no line per finished trial")
    args = parser.parse_args(argv)
    if args.threads:
        # For libraries that start their thread pools later (torch's own is set by worker()).
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    from . import worker

    import cellvi

    cellvi.settings.progress_bar = False
    try:
        n = worker(args.storage, args.study_name, adata=args.adata, n_threads=args.threads, seed=args.seed,
                   verbose=not args.quiet)
    except (ValueError, ConnectionError, FileNotFoundError, ImportError) as err:
        print(f"cellvi.autotune worker: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"[autotune] worker done: {n} trial(s) run here", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
