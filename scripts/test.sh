#!/usr/bin/env bash
# The whole test suite: set up (if needed), then the Python tests (pytest), the R package
# tests (testthat, against the same Python environment), the vignette, R CMD check on the
# built tarball with the install-from-tarball test (scripts/check_r.sh), and the R main job
# on a few epochs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
VENV="${CELLVI_VENV:-$ROOT/.venv}"

echo "== Python tests"
"$VENV/bin/python" -m pytest tests/python "$@"

echo "== R tests"
RLIB="$(mktemp -d)"; export RLIB
trap 'rm -rf "$RLIB"' EXIT
R CMD INSTALL --no-multiarch --library="$RLIB" "$ROOT" >"$RLIB/install.log" 2>&1 || { cat "$RLIB/install.log"; exit 1; }
export RETICULATE_PYTHON="$VENV/bin/python" R_LIBS="$RLIB"
Rscript -e '
  res <- testthat::test_dir("tests/testthat", package = "cellvi", load_package = "installed",
                            reporter = "summary", stop_on_failure = TRUE)
  invisible(res)'

echo "== Vignette"
Rscript -e 'rmarkdown::render("vignettes/cellvi.Rmd", output_dir = Sys.getenv("RLIB"), quiet = TRUE)'
test -s "$RLIB/cellvi.html"
echo "vignette rendered"

echo "== R CMD check (built tarball) and install-from-tarball test"
bash scripts/check_r.sh

echo "== Main job (R script, 5 epochs)"
Rscript scripts/main_job.R --max-epochs 5 --out "$RLIB/main_job"
test -s "$RLIB/main_job/umap_pca_vs_scvi.png" && test -s "$RLIB/main_job/markers_cd14mono_vs_b.csv"
