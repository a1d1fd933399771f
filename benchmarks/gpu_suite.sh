#!/usr/bin/env bash
# Issue 15's GPU checks, in one call of the device machine (the `device` tool's `run`).
#
# The device image has torch (CUDA), numpy, scipy, pandas, h5py and pytest, but not anndata,
# scvi-tools or their other needs; those travel as wheels for its Python 3.12 in `.whl/`.
#
#   here, once:        bash benchmarks/gpu_suite.sh fetch      # pinned wheels into .whl/ (~7 MB)
#   on the device:     run(command="bash benchmarks/gpu_suite.sh run", carry=[".whl"], timeout_s=600)
#
# `run` installs the wheels into /tmp/site, checks the GPU path with a slice of the test
# suite (cellvi trains on CUDA by default: device="auto"), then times SCVI against scvi-tools
# on synthetic 100k and 1M cells x 2,000 genes (batch 128 and 1,024, float32, and cellvi in
# bf16-mixed; the 1M set has ~100M non-zeros, as bench_backed's), each step under its own time limit so that a slow one leaves the rest. Logs go
# to $OUT (the figures are copied into RESULTS.md by hand: `--record` would replace the CPU
# rows of the summary). Never run yet: no GPU has been lent to this project's sessions.
set -uo pipefail
cd "$(dirname "$0")/.."

# Wheels the device lacks (resolved 2026-12-02 against the device's package list in
# ../.library/device/KINDS.md; docrep has no wheel and is built here).
WHEELS=(anndata==0.12.19 array-api-compat==1.16.0 legacy-api-wrap==1.5 natsort==8.4.0
        scverse-misc==0.1.7 session-info2==0.4.2 zarr==3.4.2 numcodecs==0.17.1 donfig==0.8.1.post1
        google-crc32c==1.9.0 msgspec==0.23.0 fast-array-utils==1.5.1
        scvi-tools==1.4.2 ml-collections==1.1.0 mudata==0.4.1 pyro-ppl==1.9.2 pyro-api==0.1.2
        sparse==0.19.3 scanpy==1.12.4 scikit-misc==0.5.3 pynndescent==0.7.0 umap-learn==0.5.12)

fetch() {
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" || return 1
  python3 -m pip wheel -q --no-deps -w .whl docrep==0.3.2 || return 1
  ls .whl | wc -l
  du -sh .whl
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc $rc in $((SECONDS - t0)) s"; tail -n 25 "$OUT/$name.log"
}

run() {
  : "${OUT:?run on the device machine, where OUT is set}"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/python PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, anndata, scvi, cellvi; print('torch', torch.__version__, torch.cuda.get_device_name(0), \
'| anndata', anndata.__version__, '| scvi-tools', scvi.__version__)" || exit 1
  local bench=(python3 benchmarks/bench_scvi.py --tools cellvi,scvi --n-mc-samples 0 --import-repeats 1
               --threads 16 --device cuda)
  step tests 90 python3 -m pytest -q -x -p no:cacheprovider tests/python/data tests/python/train \
    tests/python/models/test_scvi.py
  # strategy="ddp" on NCCL (one rank: the device has one GPU): the tests above run gloo only
  step ddp_nccl_1gpu 60 python3 -m torch.distributed.run --standalone --nproc_per_node=1 python/examples/train_ddp.py
  step synthetic_100k_b128 70 "${bench[@]}" --synthetic 100000,2000 --epochs 2 --batch-size 128
  # 1M x 2,000 with ~100M non-zeros (bench_backed's generator, written once, ~1 GB): the
  # in-memory simulation of bench_scvi would take minutes at this size
  local one_m=/tmp/synthetic_1M.h5ad
  step write_1M 120 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; \
from bench_backed import write_h5ad; print(write_h5ad(Path('$one_m'), 1_000_000, 2000, 150.0))"
  local on_1m=(--data "$one_m" --batch-key batch --epochs 1)
  step synthetic_1M_b1024 130 "${bench[@]}" "${on_1m[@]}" --batch-size 1024
  step synthetic_1M_b128 90 "${bench[@]}" "${on_1m[@]}" --batch-size 128 --tools cellvi
  step synthetic_1M_b1024_bf16 50 "${bench[@]}" "${on_1m[@]}" --batch-size 1024 --tools cellvi --precision bf16-mixed
}

case "${1:-}" in
  fetch) fetch ;;
  run) run ;;
  *) echo "usage: bash benchmarks/gpu_suite.sh fetch|run" >&2; exit 2 ;;
esac
