#!/usr/bin/env bash
# The GPU check of issue 7 in one command, for a machine that has python3 with torch (CUDA) and
# transformers but no diffusers and no internet (the lent device machines): the wheels it lacks
# travel in .whl/ (see README, "Benchmarks"). Writes generate.py's JSON lines to $OUT (default
# ./gpu-check/). No phase starts after DEADLINE seconds; the whole run stops at LIMIT seconds.
#
#   OUT=/tmp/out LIMIT=560 DEADLINE=420 bash benchmarks/gpu_check.sh [generate.py options]
set -u -o pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv \
    | tee "$OUT/nvidia-smi.csv"
PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout "${LIMIT:-560}" \
    python3 benchmarks/generate.py --deadline-s "${DEADLINE:-420}" "$@" \
    2>"$OUT/generate.err" | tee "$OUT/generate.jsonl"
status=$?
tail -n 20 "$OUT/generate.err"
exit $status
