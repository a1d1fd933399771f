#!/usr/bin/env bash
# The main job: set up (if needed), then train scVI on shipped real data and write
# out/latent.csv, out/scvi_model/ and out/scvi_main.png. Extra arguments go to main_job.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${CELLVI_VENV:-$ROOT/.venv}/bin/python" scripts/main_job.py "$@"
