#!/usr/bin/env bash
# The GPU check in one command, run from the repository root, for a machine that has python3 with
# torch (CUDA) and transformers but no diffusers and no internet (the lent device machines): the
# wheels it lacks travel in .whl/ (see README, "Benchmarks": diffusers, and peft with its needs for
# lcm_fast). Every benchmark runs as a module (python3 -m benchmarks.<name>), so the repository
# root is on the import path without any setup.
# First benchmarks.sampler_steps (a short run, cut at 60 s: planned sampler steps against
# diffusers' own, beside a stand-in model, $OUT/sampler_steps.jsonl). Then benchmarks.generate's
# JSON lines go to $OUT (default ./gpu-check/): no phase starts after DEADLINE seconds; generate
# stops at LIMIT seconds. Then, while the whole script is under TOTAL seconds,
# benchmarks.feature_cache times a full and a shallow feature-caching step at 512 px
# ($OUT/feature_cache.jsonl).
#
#   OUT=/tmp/out LIMIT=490 DEADLINE=380 TOTAL=575 bash benchmarks/gpu_check.sh [generate options]
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
PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout 60 python3 -m benchmarks.sampler_steps \
    2>"$OUT/sampler_steps.err" | tee "$OUT/sampler_steps.jsonl"
tail -n 5 "$OUT/sampler_steps.err"
PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout "${LIMIT:-490}" \
    python3 -m benchmarks.generate --deadline-s "${DEADLINE:-380}" "$@" \
    2>"$OUT/generate.err" | tee "$OUT/generate.jsonl"
status=$?
tail -n 20 "$OUT/generate.err"
left=$(( ${TOTAL:-575} - SECONDS ))
if [ "$left" -gt 40 ]; then
    PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout "$(( left - 5 ))" \
        python3 -m benchmarks.feature_cache --time-size 512 --repeats 5 \
        2>"$OUT/feature_cache.err" | tee "$OUT/feature_cache.jsonl"
    tail -n 5 "$OUT/feature_cache.err"
fi
exit $status
