#!/usr/bin/env bash
# Create (or update) benchmarks/.venv-scvi: one interpreter that imports both cellvi (editable,
# from this checkout) and the reference implementation scvi-tools, for benchmarks/bench_scvi.py.
#
# Usage:  bash benchmarks/setup_reference_env.sh            (from anywhere; idempotent)
#         PYTHON=python3.11 SCVI_TOOLS_VERSION=1.4.2 bash benchmarks/setup_reference_env.sh
#
# torch is pinned and installed FIRST: `pip install torch==2.13.0` takes a CPU build from a local
# wheel, whereas an unpinned torch (as scvi-tools would pull) downloads several GB of CUDA
# packages. The same pin is passed as a constraint to every later install, so the resolver can
# never replace it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv-scvi"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
SCVI_TOOLS_VERSION="${SCVI_TOOLS_VERSION:-1.4.2}"

if [ ! -x "$VENV/bin/python" ]; then
    echo ">> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

CONSTRAINTS="$VENV/constraints.txt"
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

installed_version() {  # prints the installed version of a distribution, or nothing
    "$PY" - "$1" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

# 1. torch, pinned, before anything that depends on it.
if [[ "$(installed_version torch)" != "$TORCH_VERSION"* ]]; then
    echo ">> installing torch==$TORCH_VERSION (CPU wheel)"
    "$PY" -m pip install "torch==$TORCH_VERSION"
else
    echo ">> torch $(installed_version torch) already installed"
fi

# 2. scvi-tools, with torch held at the pin.
if [ "$(installed_version scvi-tools)" != "$SCVI_TOOLS_VERSION" ]; then
    echo ">> installing scvi-tools==$SCVI_TOOLS_VERSION"
    "$PY" -m pip install -c "$CONSTRAINTS" "scvi-tools==$SCVI_TOOLS_VERSION"
else
    echo ">> scvi-tools $SCVI_TOOLS_VERSION already installed"
fi

# 3. cellvi from this checkout (editable: the benchmark always measures the working tree).
echo ">> installing cellvi (editable) from $ROOT"
"$PY" -m pip install -c "$CONSTRAINTS" -e "$ROOT"

# 4. harmonypy: the Harmony baseline of bench_defaults.py (integration scores).
HARMONYPY_VERSION="${HARMONYPY_VERSION:-2.1.0}"
if [ "$(installed_version harmonypy)" != "$HARMONYPY_VERSION" ]; then
    echo ">> installing harmonypy==$HARMONYPY_VERSION"
    "$PY" -m pip install -c "$CONSTRAINTS" "harmonypy==$HARMONYPY_VERSION"
fi

# Check: both import, and torch is still the pinned build.
"$PY" - "$TORCH_VERSION" <<'EOF'
import sys
import torch
import cellvi
import scvi
assert torch.__version__.startswith(sys.argv[1]), f"torch {torch.__version__} != {sys.argv[1]}"
print(f">> ok: torch {torch.__version__}, scvi-tools {scvi.__version__}, cellvi {cellvi.__version__}")
EOF
echo ">> run the benchmark with: $PY $HERE/bench_scvi.py --help"
