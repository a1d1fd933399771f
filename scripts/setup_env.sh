#!/usr/bin/env bash
# Installs what cellvi needs on a fresh Debian machine; safe to run again (it skips what is there).
#   - Debian's R 4.2 with reticulate, testthat, Seurat and SingleCellExperiment, and OpenBLAS:
#     torch, loaded inside R, calls the BLAS that R loaded; R's reference BLAS makes torch's
#     matrix products ~30x slower

#   - a Python virtual environment (.venv) with the CPU torch wheel and cellvi (editable)
#   - PostgreSQL (Debian's postgresql): the autotune tests start a server of their own
# The venv is also the Python that R uses through reticulate, so it holds numpy<2: Debian's
# reticulate 1.28 cannot load NumPy 2. (The core itself works with NumPy 1.26 and 2.x.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CELLVI_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${CELLVI_TORCH_SPEC:-torch==2.13.0}"  # the CPU wheel; unpinned torch pulls CUDA

R_PACKAGES="python3-venv postgresql libopenblas0-pthread r-base-core r-cran-reticulate r-cran-testthat r-cran-seurat r-bioc-singlecellexperiment r-cran-matrix r-cran-rmarkdown r-cran-knitr pandoc"
missing=""
for p in $R_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[setup] installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
# pip warns about every missing entry of this machine's extra local index: keep the log readable.
quiet_pip() { $PIP "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  quiet_pip install -q "$TORCH_SPEC"
fi
stamp="$VENV/.cellvi-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "[setup] installing cellvi and its dependencies"
  quiet_pip install -q -e "$ROOT[test,plot,r,autotune]" "numpy<2"
  touch "$stamp"
fi
