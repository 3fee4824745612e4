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
# TESTS=0 or BENCH=0 leave a part out (a call's 600 s may not hold both after a kernel change: every
# autotuning candidate compiles anew)
if [ "${TESTS:-1}" = 1 ]; then
  # the small cases with each kernel's first tile config (tests/conftest.py's default; compiling every
  # candidate for each of their many shapes and dtypes took the 2026-11-23 run past its time limit), then the
  # full-size ones autotuned, which also checks that triton_atomic's trials leave no atomics in dQ, dR
  PARALLAX_TRITON_AUTOTUNE=0 timeout --kill-after=10 ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider \
    -m "not gpu" tests/test_triton_kernel.py > "$out/gpu_tests_attention_small.log" 2>&1
  echo "== attention kernel tests, small, first config (rc=$?)"
  grep -E "passed|failed|Error" "$out/gpu_tests_attention_small.log" | tail -8
  PARALLAX_TRITON_AUTOTUNE=1 timeout --kill-after=10 ${TEST_TIMEOUT_GPU:-300} python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_triton_kernel.py > "$out/gpu_tests_attention_fullsize.log" 2>&1
  echo "== attention kernel tests, full size, autotuned (rc=$?)"
  grep -E "passed|failed|Error" "$out/gpu_tests_attention_fullsize.log" | tail -8
fi
if [ "${BENCH:-1}" = 1 ]; then
  reference=${REFERENCE:+--reference-kernel $REFERENCE}
  timeout ${BENCH_TIMEOUT:-420} python3 scripts/bench_attention.py $reference --json "$out/bench_attention.json" \
    ${BENCH_ARGS:-} > "$out/bench_attention.log" 2>&1
  echo "== bench_attention (rc=$?)"; grep -v Warning "$out/bench_attention.log" | tail -60
fi
