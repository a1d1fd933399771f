#!/usr/bin/env bash
# The whole test suite: set up (if needed), then the Python tests (pytest), the R package
# tests (testthat, against the same Python environment), the Seurat v5 tests
# (test-seurat5.R, with SeuratObject 5 from a cached library of its own), the vignette,
# R CMD check on the built tarball with the install-from-tarball test (scripts/check_r.sh),
# and the R main job on a few epochs.
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

echo "== R tests on Seurat v5 objects (SeuratObject 5, own library)"
# Debian has SeuratObject 4.1 only, so the normal run above skips tests/testthat/test-seurat5.R.
# Here it runs in its own R process with SeuratObject 5.3 (and the Matrix 1.6 it needs) first
# in R_LIBS: built once per machine into a cache by ../shared/rpkgs/install_seurat_v5.sh (about
# 4 minutes; a no-op when the cache holds both), and kept out of the default library, where
# Debian's Seurat 4.3 stays.
V5LIB="${CELLVI_SEURAT_V5_LIB:-${XDG_CACHE_HOME:-$HOME/.cache}/cellvi/seurat-v5-lib}"
V5INSTALL="${CELLVI_SEURAT_V5_INSTALLER:-$ROOT/../shared/rpkgs/install_seurat_v5.sh}"
[ -f "$V5INSTALL" ] || { echo "SeuratObject 5 installer not found: $V5INSTALL (set CELLVI_SEURAT_V5_INSTALLER)" >&2; exit 1; }
bash "$V5INSTALL" "$V5LIB"
R_LIBS="$V5LIB:$RLIB" Rscript -e '
  stopifnot(utils::packageVersion("SeuratObject") >= "5.0.0")
  res <- testthat::test_file("tests/testthat/test-seurat5.R", package = "cellvi",
                             load_package = "installed", reporter = "summary",
                             stop_on_failure = TRUE)
  res <- as.data.frame(res)
  if (any(res$skipped)) stop("Seurat v5 tests were skipped: ", paste(res$test[res$skipped], collapse = "; "))
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
