#!/usr/bin/env bash
# Install-from-tarball test: what a user does on a machine that never saw this repository.
#
#   bash scripts/test_install.sh cellvi_x.y.z.tar.gz     (scripts/check_r.sh builds and passes it)
#
# 1. R CMD INSTALL the tarball into a temporary R library;
# 2. in a fresh R session with only that library and no RETICULATE_PYTHON, run
#    cellvi::install_cellvi() into a temporary virtual environment: it installs the Python
#    core that the tarball carries (inst/python), nothing from the checkout;
# 3. in another fresh R session pointed at that environment, import the core (it must come
#    from the environment, not the checkout) and train a 2-epoch scVI on pbmc_small.
# Fast on purpose: pip's own cache (~/.cache/pip, filled by scripts/setup_env.sh) serves the
# dependencies, and torch is the pinned CPU wheel that setup_env.sh installs
# (CELLVI_TORCH_SPEC, a local file on CI machines), passed as install_cellvi(torch = ...): the
# default, torch = "auto", would ask PyTorch's CPU wheel index on the network.
set -euo pipefail
TARBALL="$(cd "$(dirname "${1:?usage: test_install.sh cellvi_x.y.z.tar.gz}")" && pwd)/$(basename "$1")"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${CELLVI_TORCH_SPEC:-torch==2.13.0}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"; echo "(cleaned up in $((SECONDS - start)) s in all)"' EXIT
start=$SECONDS
echo "== install test: $(basename "$TARBALL") into a temporary library and virtualenv"
mkdir -p "$WORK/lib"
R CMD INSTALL --no-multiarch --library="$WORK/lib" "$TARBALL" >"$WORK/install.log" 2>&1 \
  || { cat "$WORK/install.log"; exit 1; }
echo "R package installed ($((SECONDS - start)) s)"

# A clean environment: nothing points at the checkout's venv.
unset RETICULATE_PYTHON VIRTUAL_ENV PYTHONPATH
export R_LIBS="$WORK/lib" R_LIBS_USER="$WORK/nolib" WORKON_HOME="$WORK/venvs"
export CELLVI_TEST_VENV="$WORK/venvs/r-cellvi-test" CELLVI_TEST_PYTHON="$(command -v "$PYTHON")"
export CELLVI_TEST_TORCH="$TORCH_SPEC"
# No byte-compiling of the installed files (torch alone has thousands of modules): Python
# compiles the few it imports when it imports them. Halves pip's time here.
export PIP_NO_COMPILE=1
Rscript -e '
  library(cellvi)
  core <- system.file("python", "pyproject.toml", package = "cellvi")
  if (!nzchar(core)) stop("the installed package carries no Python core (inst/python)")
  py <- install_cellvi(envname = Sys.getenv("CELLVI_TEST_VENV"),
                       python = Sys.getenv("CELLVI_TEST_PYTHON"),
                       torch = Sys.getenv("CELLVI_TEST_TORCH"))
  if (!file.exists(py)) stop("install_cellvi() returned no Python: ", py)
' >"$WORK/install_cellvi.log" 2>&1 || { cat "$WORK/install_cellvi.log"; exit 1; }
echo "install_cellvi() done ($((SECONDS - start)) s)"

export RETICULATE_PYTHON="$CELLVI_TEST_VENV/bin/python"
Rscript -e '
  suppressPackageStartupMessages(library(cellvi))
  stopifnot(cellvi_available())
  cv <- cellvi_python_module()
  where <- normalizePath(cv$`__file__`)
  venv <- normalizePath(Sys.getenv("CELLVI_TEST_VENV"))
  if (!startsWith(where, venv)) stop("cellvi was imported from ", where, ", not from ", venv)
  if (cv$`__version__` != as.character(packageVersion("cellvi"))) {
    stop("Python core ", cv$`__version__`, " != R package ", packageVersion("cellvi"))
  }
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 2, seed = 1,
                  model_dir = file.path(tempdir(), "m"), verbose = FALSE)
  stopifnot(identical(dim(SeuratObject::Embeddings(pbmc, "scvi")), c(80L, 10L)))
  cat("core", cv$`__version__`, "from", where, "trains from R\n")
' 2>&1 | tail -5
echo "install test passed in $((SECONDS - start)) s"
