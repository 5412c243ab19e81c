#!/usr/bin/env bash
# GPU check for a short device loan: under 8 minutes on one GPU.
#  1. the test suite's GPU-marked tests (`pytest -m gpu`: training loop on CUDA in bf16, inference, precision
#     choice; they skip without CUDA), at most 3 minutes;
#  2. benchmarks/speed.py --device cuda --precision bf16 (segsynth's loop vs a plain loop, fp32 vs bf16, data
#     wait), at most 4.5 minutes.
# Results go to $OUT when it is set (the device machine's return folder), else benchmarks/results/speed/:
#   gpu_tests.txt, gpu_tests.xml, speed_cuda.json + .png, nvidia_smi.txt, gpu_check.json (exit codes, seconds).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke  # here: the same steps on CPU with tiny sizes (checks the plumbing)
# PY=/path/to/python overrides the interpreter (default .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-benchmarks/results/speed}
mkdir -p "$DEST"
START=$(date +%s)

if [ "$SMOKE" = 1 ]; then
    export OMP_NUM_THREADS=1
    DEVICE=cpu
    SPEED_ARGS=(--device cpu --precision fp32 --sizes 32 --batch 2 --steps 2 --warmup 1 --rounds 1
                --bf16-steps 1 --features 4,4,8,8,16,4 --volumes 1)
else
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))" >&2
        exit 2
    fi
    DEVICE=cuda
    SPEED_ARGS=(--device cuda --precision bf16 --sizes 64,128,256 --batch 16 --steps 30 --warmup 5 --rounds 2)
    nvidia-smi > "$DEST/nvidia_smi.txt" 2>&1 || true
fi

echo "== GPU-marked tests ($PY)"
T0=$(date +%s)
timeout 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests --junitxml "$DEST/gpu_tests.xml" \
    2>&1 | tee "$DEST/gpu_tests.txt"
RC_TESTS=${PIPESTATUS[0]}
[ "$SMOKE" = 1 ] && [ "$RC_TESTS" = 5 ] && RC_TESTS=0  # smoke on CPU: all skipped is fine
T_TESTS=$(( $(date +%s) - T0 ))

echo "== speed benchmark (${SPEED_ARGS[*]})"
T0=$(date +%s)
timeout 270 "$PY" benchmarks/speed.py "${SPEED_ARGS[@]}" --json "$DEST/speed_$DEVICE.json" 2>&1 \
    | tee "$DEST/speed.txt"
RC_SPEED=${PIPESTATUS[0]}
T_SPEED=$(( $(date +%s) - T0 ))

cat > "$DEST/gpu_check.json" <<EOF
{"device": "$DEVICE", "smoke": $SMOKE, "tests_exit_code": $RC_TESTS, "tests_seconds": $T_TESTS,
 "speed_exit_code": $RC_SPEED, "speed_seconds": $T_SPEED, "total_seconds": $(( $(date +%s) - START )),
 "speed_json": "speed_$DEVICE.json"}
EOF
echo "gpu_check: tests exit $RC_TESTS (${T_TESTS}s), speed exit $RC_SPEED (${T_SPEED}s) -> $DEST"
[ "$RC_TESTS" = 0 ] && [ "$RC_SPEED" = 0 ]
