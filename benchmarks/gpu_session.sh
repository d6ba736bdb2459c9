#!/usr/bin/env bash
# What one GPU session measures, in one command on the lent machine (its torch and triton;
# lark comes as a wheel in .whl/, see /work/.library/device/README.md):
#
#     benchmarks/gpu_session.sh OUT [PATTERN ...]     # default: the whole suite
#
# Each part can be switched off to split a session over several calls: TESTS=0 (the GPU tests),
# CALIBRATE=0 (`patternc calibrate`), FORWARD=0 (benchmarks/attention.py), BACKWARD=0
# (benchmarks/backward.py), DOCS=0 (benchmarks/documents.py), OVERHEAD=0 (benchmarks/overhead.py),
# SELECTION=0 (benchmarks/routed_selection.py), BENCH=0 (benchmarks/bench_cli_gpu.sh), STEP=0
# (benchmarks/training_step.py), KERNELS=0 (benchmarks/backward_kernels.py), FIRST=0
# (benchmarks/first_call.py), TRAIN=0 (examples/train_tiny.py, patternc eager, compiled and
# compiled with CUDA graphs vs dense).
#
# OUT gets card.txt (card, driver, torch, triton), gpu_tests.txt, profile.json and calibrate.txt,
# log.txt and bench/ (forward), bwd_log.txt and bwd/ (forward+backward), train_*.json and
# train_tiny.png. Each part runs even when an earlier one fails.
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
    # default configs: autotuning every new shape of every test would compile every candidate
    PATTERNC_AUTOTUNE=0 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$out/gpu_tests.txt" | tail -3
fi
if [ "${CALIBRATE:-1}" != 0 ]; then
    { time python3 -m patternc calibrate --output "$out/profile.json"; } 2>&1 | tee "$out/calibrate.txt" | tail -25
fi
patterns=()
[ $# -gt 0 ] && patterns=(--patterns "$@")
if [ "${FORWARD:-1}" != 0 ]; then
    python3 benchmarks/attention.py --out "$out/bench" "${patterns[@]}" 2>&1 | tee "$out/log.txt" | grep -v "cfg="
fi
if [ "${BACKWARD:-1}" != 0 ]; then
    python3 benchmarks/backward.py --out "$out/bwd" "${patterns[@]}" 2>&1 | tee "$out/bwd_log.txt" | grep -v "^  "
fi
if [ "${DOCS:-1}" != 0 ]; then
    python3 benchmarks/documents.py --out "$out/documents" 2>&1 | tee "$out/documents_log.txt" | tail -6
fi
if [ "${OVERHEAD:-1}" != 0 ]; then
    python3 benchmarks/overhead.py --out "$out/overhead" 2>&1 | tee "$out/overhead_log.txt" | tail -12
fi
if [ "${SELECTION:-1}" != 0 ]; then
    python3 benchmarks/routed_selection.py --out "$out/selection" 2>&1 | tee "$out/selection_log.txt" | tail -12
fi
if [ "${BENCH:-1}" != 0 ]; then
    benchmarks/bench_cli_gpu.sh "$out/bench_cli" >"$out/bench_cli_log.txt" 2>&1
    tail -20 "$out/bench_cli_log.txt"
fi
if [ "${STEP:-1}" != 0 ]; then
    python3 benchmarks/training_step.py --out "$out/step" >"$out/step_log.txt" 2>&1
    tail -12 "$out/step_log.txt"
fi
if [ "${KERNELS:-1}" != 0 ]; then
    python3 benchmarks/backward_kernels.py --out "$out/backward_kernels" >"$out/backward_kernels_log.txt" 2>&1
    grep -A2 "^## " "$out/backward_kernels/backward_kernels.md"
fi
if [ "${FIRST:-1}" != 0 ]; then
    python3 benchmarks/first_call.py --out "$out/first_call" --backward --sequential 2>&1 | tail -4
fi
if [ "${TRAIN:-1}" != 0 ]; then
    for mode in patternc compiled graphs dense; do
        flags=$([ $mode = compiled ] && echo --compile; [ $mode = graphs ] && echo --compile reduce-overhead
               [ $mode = dense ] && echo --dense)
        python3 examples/train_tiny.py --seq-len "${TRAIN_SEQ:-8192}" --steps "${TRAIN_STEPS:-200}" $flags \
            --log "$out/train_$mode.json" 2>&1 | tail -2
    done
    python3 examples/train_tiny.py --plot "$out/train_tiny.png" "$out"/train_*.json
fi
