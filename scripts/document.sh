#!/usr/bin/env bash
# Regenerates the R package's help pages (man/) and NAMESPACE from the roxygen comments in R/,
# with Debian's roxygen2 (apt install r-cran-roxygen2). Run after changing a roxygen block or
# an export, and commit man/ and NAMESPACE with the change: the checks (scripts/check_r.sh)
# use the committed pages and do not need roxygen2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
Rscript -e 'if (!requireNamespace("roxygen2", quietly = TRUE))
              stop("roxygen2 is not installed: apt install r-cran-roxygen2", call. = FALSE)
            # load_source: evaluate R/ in a fresh environment; nothing is installed or compiled
            roxygen2::roxygenise(load_code = roxygen2::load_source)'

# R CMD check refuses help files whose names differ only in case (RunSCVI.Rd, runSCVI.Rd):
# they collide on case-insensitive file systems. Give the SingleCellExperiment twin its own
# file name; `?runSCVI` still finds it by its alias.
clashes="$(ls man | tr '[:upper:]' '[:lower:]' | sort | uniq -d)"
if [ -n "$clashes" ]; then
  echo "help files whose names differ only in case: $clashes" >&2
  echo "add '#' @rdname <name>-sce' to the SingleCellExperiment verb's roxygen block" >&2
  exit 1
fi
