#!/usr/bin/env bash
# Builds the R package tarball (cellvi_<version>.tar.gz) into OUTDIR, carrying the Python core.
#
#   bash scripts/build_r.sh OUTDIR [R CMD build options, e.g. --no-build-vignettes]
#
# The core has one source of truth, python/ and pyproject.toml at the repository root. The R
# package carries a copy of it under inst/python, which install_cellvi() installs, so that
# `R CMD INSTALL cellvi_x.y.z.tar.gz` then `cellvi::install_cellvi()` works on a machine that
# never saw this repository. The copy is assembled here, in a staging copy of the package
# (files git tracks or would track: .gitignore is respected), so the working tree never holds
# a second, committed or stale, copy of the core.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:?usage: build_r.sh OUTDIR [R CMD build options]}"
shift
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
cd "$ROOT"
# Tracked files and new files not ignored (work in progress is built as it stands); files
# deleted in the working tree are skipped. .Rbuildignore then decides what enters the tarball.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -f "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$STAGE"

# The core: its pyproject.toml, the README it names as its readme, and the package sources
# without compiled caches.
CORE="$STAGE/inst/python"
mkdir -p "$CORE"
cp pyproject.toml README.md "$CORE/"
tar --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' -cf - python/cellvi \
  | tar -xf - -C "$CORE"

cd "$OUTDIR"
R CMD build "$@" "$STAGE"
