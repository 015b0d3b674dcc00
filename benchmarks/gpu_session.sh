#!/usr/bin/env bash
# One session on a GPU machine, run from anywhere in the repository: build tlstm for the GPU
# that is there, then the stages named on the command line, in order. Logs and results go to
# $OUT (default ./gpu-out); the end of each stage's log is printed.
#
#   bash benchmarks/gpu_session.sh build tests sanitizer bench
#
#   build       python setup.py build_ext --inplace, for this GPU's architecture only
#   tests       the CUDA tests (pytest -m cuda: the CUDA params of every test parametrized by
#               device, and the CUDA-only tests)
#   sanitizer   compute-sanitizer memcheck and racecheck over tests/cuda_sanitizer_workload.py
#   sanitizer-all   the same with initcheck and synccheck too
#   crossover   stepwise against persistent peephole recurrence by batch and width (JSON)
#   crossover-tensorized   the same for the tensorized LSTM by batch, width and depth (JSON)
#   bench-quick python -m tlstm bench --quick
#   bench       python -m tlstm bench for each cell, JSON and depth plot into $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TLSTM_REQUIRE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    export TORCH_CUDA_ARCH_LIST
fi
# a test that hangs (a grid-wide barrier never met) is reported and ends the run, not the lease
TIMEOUT_ARGS=()
$PY -c "import pytest_timeout" 2>/dev/null && TIMEOUT_ARGS=(--timeout=180 --timeout-method=thread)
status=0
stage() { echo "== $1 ($(date +%T))"; }
for what in "$@"; do
    case $what in
    build)
        stage "build for sm_$TORCH_CUDA_ARCH_LIST"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
        $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
        if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
            tail -n 60 "$OUT/build.log"
            exit 1
        fi
        grep -iE "warning|error" "$OUT/build.log" | grep -v "^WARNING: Location" | head -20 ;;
    tests)
        stage tests
        timeout "${TESTS_TIMEOUT:-540}" $PY -m pytest -q -p no:cacheprovider -rfE --tb=short "${TIMEOUT_ARGS[@]}" \
            --durations=8 -m cuda tests \
            > "$OUT/tests.log" 2>&1 || status=1
        grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -n 60 ;;
    sanitizer|sanitizer-all)
        stage "$what"
        tools="memcheck or racecheck"
        [ "$what" = sanitizer-all ] && tools="memcheck or racecheck or initcheck or synccheck"
        TLSTM_RUN_SANITIZER=1 timeout "${SANITIZER_TIMEOUT:-480}" $PY -m pytest -q -p no:cacheprovider \
            -rfE --tb=short tests/test_cuda_sanitizer.py -k "$tools" > "$OUT/sanitizer.log" 2>&1 || status=1
        grep -E "ERROR SUMMARY|=====|^(FAILED|ERROR)|passed|failed" "$OUT/sanitizer.log" | tail -n 40 ;;
    crossover|crossover-tensorized)
        cell=peephole
        [ "$what" = crossover-tensorized ] && cell=tensorized
        stage "crossover of the $cell recurrences"
        PYTHONPATH=$PWD timeout "${CROSSOVER_TIMEOUT:-540}" $PY benchmarks/recurrence_crossover.py \
            --cells $cell --json "$OUT/$cell-crossover.json" > "$OUT/$what.log" 2>&1 || status=1
        cat "$OUT/$what.log" ;;
    bench-quick)
        stage bench-quick
        $PY -m tlstm bench --quick --no-progress > "$OUT/bench-quick.log" 2>&1 || status=1
        tail -n 40 "$OUT/bench-quick.log" ;;
    bench)
        # one process per cell, each under a time limit; the JSON is rewritten after every
        # configuration, so a run cut short keeps what it measured
        stage "bench peephole"
        timeout "${BENCH_PEEPHOLE_TIMEOUT:-330}" $PY -m tlstm bench --no-progress --cells peephole \
            --repeats "${BENCH_REPEATS:-10}" --json "$OUT/peephole.json" \
            > "$OUT/bench-peephole.log" 2>&1 || status=1
        grep -E "max rel err|fwdbwd  (fused|cudnn)" "$OUT/bench-peephole.log" | tail -n 60
        stage "bench tensorized"
        timeout "${BENCH_TENSORIZED_TIMEOUT:-200}" $PY -m tlstm bench --no-progress --cells tensorized \
            --repeats "${BENCH_REPEATS:-10}" --json "$OUT/tensorized.json" --plot "$OUT/depth.png" \
            > "$OUT/bench-tensorized.log" 2>&1 || status=1
        sed -n '/time against depth/,$p' "$OUT/bench-tensorized.log" | tail -n 70 ;;
    *)
        echo "unknown stage $what"
        exit 2 ;;
    esac
done
stage done
exit $status
