#!/usr/bin/env bash
# The main job: set up (if needed), install the R package into a temporary library, then run
# the R analysis scripts/main_job.R: scVI across donors on 3,000 Kang et al. PBMCs shipped
# with the package, UMAPs (uncorrected PCA vs scVI latent, by donor and by cell type), scVI
# markers of CD14+ monocytes vs B cells, the Seurat object with its model; all in out/.
# Arguments go to main_job.R (--max-epochs N, --out DIR). The Python version of a main job
# stays available: .venv/bin/python scripts/main_job.py --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
VENV="${CELLVI_VENV:-$ROOT/.venv}"
RLIB="$(mktemp -d)"
trap 'rm -rf "$RLIB"' EXIT
R CMD INSTALL --no-multiarch --library="$RLIB" "$ROOT" >"$RLIB/install.log" 2>&1 \
  || { cat "$RLIB/install.log"; exit 1; }
# 2 threads: the job is sized for a 2-core machine; more threads than cores only slow torch.
export R_LIBS="$RLIB" RETICULATE_PYTHON="$VENV/bin/python" \
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"
Rscript scripts/main_job.R "$@"
