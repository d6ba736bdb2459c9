#!/usr/bin/env bash
# What one GPU session measures, in one command on the lent machine (its torch and triton;
# lark and the test tools come as wheels in .whl/, see /work/.library/device/README.md):
#
#     benchmarks/gpu_session.sh OUT [PATTERN ...]     # default: the whole suite
#
# TESTS=0 skips the GPU tests, CALIBRATE=0 the calibration (to split a session over two calls).
#
# OUT gets card.txt (card, driver, torch, triton), gpu_tests.txt (`pytest -m gpu` on the routed
# kernels), profile.json and calibrate.txt (`patternc calibrate`), log.txt and bench/ (the suite,
# benchmarks/attention.py). Each part runs even when an earlier one fails.
set -uo pipefail
out=$1
shift
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
export PATTERNC_CACHE_DIR=${PATTERNC_CACHE_DIR:-/tmp/patternc-cache} PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$out/card.txt"
if [ "${TESTS:-1}" != 0 ]; then
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_routed.py 2>&1 | tee "$out/gpu_tests.txt" | tail -3
fi
if [ "${CALIBRATE:-1}" != 0 ]; then
    { time python3 -m patternc calibrate --output "$out/profile.json"; } 2>&1 | tee "$out/calibrate.txt" | tail -25
fi
patterns=()
[ $# -gt 0 ] && patterns=(--patterns "$@")
python3 benchmarks/attention.py --out "$out/bench" "${patterns[@]}" 2>&1 | tee "$out/log.txt" | grep -v "cfg="
