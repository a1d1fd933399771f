"""Helpers shared by the benchmark drivers (bench_scvi.py, bench_scanvi.py): where things are,
the worker subprocesses (one tool, one fresh interpreter) and what a recorded section says
about the machine and the commit. Standard library only, so importing it costs nothing."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang_se_12261.h5ad"
RESULTS = HERE / "RESULTS.md"
VENV_HINT = HERE / ".venv-scvi" / "bin" / "python"
RESULT_MARKER = "BENCH_RESULT "


def worker_env(threads: int) -> dict:
    """The environment of a worker: BLAS/OpenMP held to ``threads``, warnings off."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def emit_result(out: dict) -> None:
    """A worker's last word: its results as one marked JSON line on stdout."""
    print(RESULT_MARKER + json.dumps(out), flush=True)


def run_worker(script: Path | str, worker_args: list[str], threads: int, verbose: bool = False,
               label: str = "worker", extra_env: dict | None = None) -> dict | None:
    """Run ``script worker_args...`` in a fresh interpreter (this one) and return the dict it
    emitted with :func:`emit_result`, plus ``process_s`` (the subprocess' wall time); None,
    with its output on stderr, if it failed. ``extra_env`` is added to the worker's environment
    (e.g. a PYTHONPATH that puts another cellvi tree first)."""
    cmd = [sys.executable, str(Path(script).resolve()), *worker_args]
    env = worker_env(threads)
    env.update(extra_env or {})
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if verbose and res.stderr.strip():
        print(f"--- [{label}] stderr ---\n{res.stderr.rstrip()}\n---", file=sys.stderr)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if res.returncode != 0 or not lines:
        print(f"[{label}] worker failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}",
              file=sys.stderr)
        return None
    out = json.loads(lines[-1][len(RESULT_MARKER):])
    out["process_s"] = wall
    return out


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def median_range(values, spec: str = ".3f") -> str:
    """``median [min, max]`` of the values that are there (None and NaN left out; "-" if none)."""
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}, {max(values):{spec}}]"


def interpreter_path() -> str:
    """This interpreter, relative to the repository root when it lives inside it."""
    return os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable


SUMMARY_HEADER = "| target (issue) | figure | status |"


def update_summary(rows: list[str], keys: tuple[str, ...]) -> None:
    """Put ``rows`` into RESULTS.md's summary table, at its end, replacing the rows of the same
    targets: those starting with one of ``keys`` that ``rows`` also has (a run that measures
    only some targets leaves the others' rows as they are)."""
    if not rows or not RESULTS.exists():
        return
    lines = RESULTS.read_text().split("\n")
    if SUMMARY_HEADER not in lines:
        return
    start = lines.index(SUMMARY_HEADER)
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    replaced = [k for k in keys if any(r.startswith(f"| {k}") for r in rows)]
    keep = [ln for ln in lines[start + 2:end] if not any(ln.startswith(f"| {k}") for k in replaced)]
    RESULTS.write_text("\n".join(lines[:start + 2] + keep + rows + lines[end:]))


def scvi_for_worker(seed: int, threads: int):
    """scvi-tools, imported for a worker: its warnings and loggers (and Lightning's) quiet,
    seed and threads set."""
    import logging
    import warnings

    import scvi

    warnings.filterwarnings("ignore")
    for name in ("scvi", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = seed
    scvi.settings.num_threads = threads
    return scvi


def run_per_seed(script: Path | str, variants, seeds: list[int], threads: int, extra_args: list[str] = (),
                 report=None) -> dict:
    """Per seed, each variant (tool) in its own fresh process, alternating: ``script --worker
    VARIANT --seed S --threads T *extra_args``. Returns {(seed, variant): result}, each result
    with ``busy_cores`` (the machine's busy cores over the run: ~threads on a quiet machine);
    ``report(seed, variant, result)`` is called after each run (a progress line)."""
    runs = {}
    for seed in seeds:
        for variant in variants:
            busy0, t0 = busy_seconds(), time.perf_counter()
            r = run_worker(script, ["--worker", variant, "--seed", str(seed), "--threads", str(threads),
                                    *extra_args], threads, label=variant)
            if r is None:
                continue
            busy1 = busy_seconds()
            if busy0 is not None and busy1 is not None:
                r["busy_cores"] = (busy1 - busy0) / (time.perf_counter() - t0)
            runs[(seed, variant)] = r
            if report is not None:
                report(seed, variant, r)
    return runs


def record_section(title: str, wall_s: float, threads: int, notes: list[str], body: list[str],
                   summary_rows: list[str] = (), summary_keys: tuple[str, ...] = ()) -> None:
    """Append a dated section (command, commit, machine, ``notes`` as bullets, then ``body``)
    to RESULTS.md, after putting ``summary_rows`` into its summary table."""
    import datetime as _dt
    import shlex

    machine = machine_info()
    script = Path(sys.argv[0]).resolve()
    command = f"{interpreter_path()} {os.path.relpath(script, ROOT)} {' '.join(shlex.quote(a) for a in sys.argv[1:])}"
    section = [f"## {title}", "",
               f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}; whole benchmark {wall_s / 60:.1f} min",
               f"- command: `{command.strip()}`",
               f"- commit: {git_commit()}",
               f"- machine: {machine['cpu']} ({machine['cores']} cores), {threads} torch threads",
               *[f"- {n}" for n in notes], "", *body, ""]
    update_summary(list(summary_rows), tuple(summary_keys))
    RESULTS.write_text(RESULTS.read_text().rstrip("\n") + "\n\n" + "\n".join(section).rstrip("\n") + "\n")
    print(f"recorded in {RESULTS}")
