#!/usr/bin/env bash
# The fused attention kernel on the GPU: its tests on CUDA (every backend, the full-size ones included, so
# autotuning runs), then the attention benchmark. Logs go to $OUT.
# REFERENCE=FILE also times another version of kernels/triton_parallax.py in the same run (an A/B of a
# kernel change); the device has no git, so make the file here and carry its folder, e.g.
#   mkdir -p .kernels && git show REF:kernels/triton_parallax.py > .kernels/reference_triton_parallax.py
#   REFERENCE=.kernels/reference_triton_parallax.py bash scripts/device/attention_check.sh   # carry [".whl", ".kernels"]
set -uo pipefail
out=${OUT:-./outputs/attention_check}
mkdir -p "$out"
if [ -n "${REFERENCE:-}" ] && [ ! -f "$REFERENCE" ]; then
  echo "attention_check.sh: REFERENCE=$REFERENCE does not exist (not carried?)" >&2
  exit 2
fi
timeout --kill-after=10 ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernel.py \
  > "$out/gpu_tests_attention.log" 2>&1
echo "== attention kernel tests (rc=$?)"; grep -E "passed|failed|Error" "$out/gpu_tests_attention.log" | tail -8
reference=${REFERENCE:+--reference-kernel $REFERENCE}
timeout ${BENCH_TIMEOUT:-420} python3 scripts/bench_attention.py $reference --json "$out/bench_attention.json" \
  ${BENCH_ARGS:-} > "$out/bench_attention.log" 2>&1
echo "== bench_attention (rc=$?)"; grep -v Warning "$out/bench_attention.log" | tail -60
