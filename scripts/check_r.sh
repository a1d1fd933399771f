#!/usr/bin/env bash
# R CMD build, then R CMD check --no-manual on the tarball: fails on any ERROR or WARNING, and
# on any NOTE not listed (and explained) below. Then, unless --no-install-test, the
# install-from-tarball test (scripts/test_install.sh) on the same tarball.
#
#   bash scripts/check_r.sh [--no-install-test]
#
# What the check skips, and why (keeping CI time modest):
#   --no-build-vignettes / --ignore-vignettes: the vignette trains several models; the test
#       command renders it on its own (scripts/test.sh, "Vignette"), against the same Python.
#   --no-tests: the testthat suite runs on its own in scripts/test.sh ("R tests").
#   --no-manual: no LaTeX on the CI machines; the help pages are still parsed and checked
#       (Rd syntax, cross-references, usage against code, undocumented arguments).
# Examples do run: those that need Python are guarded by cellvi_available() (cheap
# conversions run against RETICULATE_PYTHON) or wrapped in \donttest{} (model training: run
# them with example(..., run.donttest = TRUE)).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INSTALL_TEST=1
[ "${1:-}" = "--no-install-test" ] && INSTALL_TEST=0
VENV="${CELLVI_VENV:-$ROOT/.venv}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
[ -x "$VENV/bin/python" ] && export RETICULATE_PYTHON="${RETICULATE_PYTHON:-$VENV/bin/python}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
echo "== R CMD build"
bash "$ROOT/scripts/build_r.sh" "$WORK" --no-build-vignettes >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log"; exit 1; }
TARBALL="$(ls "$WORK"/cellvi_*.tar.gz)"
echo "built $(basename "$TARBALL") ($(du -h "$TARBALL" | cut -f1)) in $((SECONDS - start)) s"

echo "== R CMD check --no-manual"
cd "$WORK"
# _R_CHECK_FORCE_SUGGESTS_=false: a machine without one of the suggested packages (scater,
# Seurat) still checks the rest; the code tests for them with requireNamespace().
status=0
_R_CHECK_FORCE_SUGGESTS_=false R CMD check --no-manual --no-tests --no-build-vignettes \
  --ignore-vignettes "$TARBALL" >"$WORK/check.out" 2>&1 || status=$?
LOG="$WORK/cellvi.Rcheck/00check.log"
[ -f "$LOG" ] || { cat "$WORK/check.out"; exit 1; }

# NOTEs that are expected, one pattern per line (matched in the NOTE's line or the 3 lines
# after it), each with its reason. Today the check ends "Status: OK" (no NOTE).
ALLOWED_NOTES=(
  # Not raised today (the tarball is 1.7 MB), anticipated: R notes an installed size over
  # 5 MB ("sub-directories of 1Mb or more: extdata, python"), which the shipped data sets
  # (inst/extdata, and the core's own under inst/python) will reach as they grow. Shipping
  # them is the point: install_cellvi() and the main job need no network and no checkout.
  "installed package size"
)
problems=$(grep -E "\.\.\. (ERROR|WARNING)$" "$LOG" || true)
notes=$(grep -E "\.\.\. NOTE$" "$LOG" || true)
unexpected=""
while IFS= read -r line; do
  [ -z "$line" ] && continue
  ok=0
  for pattern in "${ALLOWED_NOTES[@]}"; do
    grep -A3 -F -- "$line" "$LOG" | grep -qi -- "$pattern" && ok=1
  done
  [ "$ok" = 1 ] || unexpected="$unexpected$line"$'\n'
done <<<"$notes"
if [ "$status" -ne 0 ] || [ -n "$problems" ] || [ -n "$unexpected" ]; then
  cat "$LOG"
  echo "R CMD check failed (exit $status):"
  [ -n "$problems" ] && echo "$problems"
  [ -n "$unexpected" ] && printf 'NOTEs not explained in scripts/check_r.sh:\n%s' "$unexpected"
  exit 1
fi
grep -E "^Status:" "$LOG"
[ -n "$notes" ] && printf 'expected NOTEs (see scripts/check_r.sh):\n%s\n' "$notes"
echo "R CMD check passed in $((SECONDS - start)) s"

if [ "$INSTALL_TEST" = 1 ]; then
  bash "$ROOT/scripts/test_install.sh" "$TARBALL"
fi
