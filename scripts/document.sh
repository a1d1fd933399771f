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
