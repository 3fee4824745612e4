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
# autotuning candidate compiles anew); TESTS=small or TESTS=full run one of the two test parts
# SMALL_K / FULL_K: a pytest -k expression for either part, to finish in a second call what a first one's time
# limit cut (e.g. FULL_K=triton_atomic)
small_k=(); [ -n "${SMALL_K:-}" ] && small_k=(-k "$SMALL_K")
full_k=(); [ -n "${FULL_K:-}" ] && full_k=(-k "$FULL_K")
tests=${TESTS:-1}
case $tests in 0|1|small|full) ;; *) echo "attention_check.sh: TESTS=$tests is not one of 0, 1, small, full" >&2; exit 2;; esac
if [ "$tests" = 1 ] || [ "$tests" = small ]; then
  # the small cases with each kernel's first tile config (tests/conftest.py's default; compiling every
  # candidate for each of their many shapes and dtypes took the 2026-11-23 run past its time limit).
  # -v: a log cut by its time limit still names each test that passed
  PARALLAX_TRITON_AUTOTUNE=0 timeout --kill-after=10 ${TEST_TIMEOUT:-240} python3 -m pytest -v -p no:cacheprovider \
    -m "not gpu" "${small_k[@]}" tests/test_triton_kernel.py > "$out/gpu_tests_attention_small.log" 2>&1
  rc=$? log="$out/gpu_tests_attention_small.log"
  echo "== attention kernel tests, small, first config (rc=$rc; $(grep -c ' PASSED' "$log") passed, $(grep -c ' FAILED' "$log") failed)"
  grep -E "(passed|failed|Error).* in [0-9.]+s|FAILED|Error" "$log" | tail -8
fi
if [ "$tests" = 1 ] || [ "$tests" = full ]; then
  # the full-size ones autotuned, which also checks that triton_atomic's trials leave no atomics in dQ, dR
  PARALLAX_TRITON_AUTOTUNE=1 timeout --kill-after=10 ${TEST_TIMEOUT_GPU:-300} python3 -m pytest -v -p no:cacheprovider -m gpu \
    "${full_k[@]}" tests/test_triton_kernel.py > "$out/gpu_tests_attention_fullsize.log" 2>&1
  rc=$? log="$out/gpu_tests_attention_fullsize.log"
  echo "== attention kernel tests, full size, autotuned (rc=$rc; $(grep -c ' PASSED' "$log") passed, $(grep -c ' FAILED' "$log") failed)"
  grep -E "(passed|failed|Error).* in [0-9.]+s|FAILED|Error" "$log" | tail -8
fi
if [ "${BENCH:-1}" = 1 ]; then
  reference=${REFERENCE:+--reference-kernel $REFERENCE}
  timeout ${BENCH_TIMEOUT:-420} python3 scripts/bench_attention.py $reference --json "$out/bench_attention.json" \
    ${BENCH_ARGS:-} > "$out/bench_attention.log" 2>&1
  echo "== bench_attention (rc=$?)"; grep -v Warning "$out/bench_attention.log" | tail -60
fi
