#!/usr/bin/env bash
# `patternc bench` on the GPU, run as a user runs it (the README's `patternc bench` example comes
# from here), in one command on the lent machine:
#
#     benchmarks/bench_cli_gpu.sh OUT        # or OUT=dir benchmarks/bench_cli_gpu.sh
#
# OUT gets one NAME.txt per case (the table, or the error, and the command's time) and swa_8k.json;
# each case runs even when an earlier one fails, and the exit status of each is in its .txt.
set -uo pipefail
out=${1:-${OUT:?give the output folder as the first argument or in OUT}}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
export PATTERNC_CACHE_DIR=${PATTERNC_CACHE_DIR:-/tmp/patternc-cache} PYTHONUNBUFFERED=1

run_case() {  # run_case NAME ARGS...: patternc bench ARGS, its output and time into OUT/NAME.txt
    local name=$1
    shift
    { time python3 -m patternc bench "$@"; echo "exit status $?"; } >"$out/$name.txt" 2>&1
    echo "== patternc bench $*"
    cat "$out/$name.txt"
}

run_case swa_8k examples/llm.pat -p swa -n 8192
python3 -m patternc bench examples/llm.pat -p swa -n 8192 --json >"$out/swa_8k.json" 2>&1
run_case swa_8k_backward examples/llm.pat -p swa -n 8192 --backward
run_case dilated_8k examples/llm.pat -p dilated -n 8192
run_case causal_8k_gqa examples/llm.pat -p causal -n 8192 --heads 32 --kv-heads 8
run_case moba_8k examples/routed.pat -p moba -n 8192
run_case natten2d examples/vision.pat -p natten2d     # the grid fixes the length: no -n
