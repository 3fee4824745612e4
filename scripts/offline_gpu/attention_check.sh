#!/usr/bin/env bash
# The fused attention kernel on the GPU: its tests on CUDA (every backend, the full-size ones included, so
# autotuning runs), then the attention benchmark. Logs go to $OUT.
# REFERENCE=FILE also times another version of kernels/parallax_kernels/parallax/triton_fused.py in the same run (an A/B of a
# kernel change); an offline host may have no git, so make the file where there is one and copy its folder, e.g.
#   mkdir -p .kernels && git show REF:kernels/parallax_kernels/parallax/triton_fused.py > .kernels/reference_triton_parallax.py
#   REFERENCE=.kernels/reference_triton_parallax.py bash scripts/offline_gpu/attention_check.sh   # with .whl/, .kernels/
set -uo pipefail
out=${OUT:-./outputs/attention_check}
mkdir -p "$out"
if [ -n "${REFERENCE:-}" ] && [ ! -f "$REFERENCE" ]; then
  echo "attention_check.sh: REFERENCE=$REFERENCE does not exist (not copied to this host?)" >&2
  exit 2
fi
# TESTS=0 or BENCH=0 leave a part out (after a kernel change both take long: every autotuning candidate
# compiles anew); TESTS=small or TESTS=full run one of the two test parts
# SMALL_K / FULL_K: a pytest -k expression for either part, to rerun some of its tests (e.g. FULL_K=triton_atomic)
tests=${TESTS:-1}
case $tests in 0|1|small|full) ;; *) echo "attention_check.sh: TESTS=$tests is not one of 0, 1, small, full" >&2; exit 2;; esac
# one test part: its title, log name, autotune (0/1), time limit, pytest -m marker and -k expression (may be empty).
# -v: a log cut by its time limit still names each test that passed
test_part() {
  local title=$1 log="$out/gpu_tests_attention_$2.log" k=()
  [ -n "$6" ] && k=(-k "$6")
  PARALLAX_TRITON_AUTOTUNE=$3 timeout --kill-after=10 "$4" python3 -m pytest -v -p no:cacheprovider -m "$5" \
    "${k[@]}" tests/test_triton_kernel.py > "$log" 2>&1
  local rc=$?
  echo "== attention kernel tests, $title (rc=$rc; $(grep -c ' PASSED' "$log") passed, $(grep -c ' FAILED' "$log") failed)"
  grep -E "(passed|failed|Error).* in [0-9.]+s|FAILED|Error" "$log" | tail -8
}
# the small cases with each kernel's first tile config (tests/conftest.py's default; compiling every candidate for
# each of their many shapes and dtypes takes far longer than the tests)
if [ "$tests" = 1 ] || [ "$tests" = small ]; then
  test_part "small, first config" small 0 "${TEST_TIMEOUT:-240}" "not gpu" "${SMALL_K:-}"
fi
# the full-size ones autotuned, which also checks that triton_atomic's trials leave no atomics in dQ, dR
if [ "$tests" = 1 ] || [ "$tests" = full ]; then
  test_part "full size, autotuned" fullsize 1 "${TEST_TIMEOUT_GPU:-300}" gpu "${FULL_K:-}"
fi
if [ "${BENCH:-1}" = 1 ]; then
  reference=${REFERENCE:+--reference-kernel $REFERENCE}
  timeout ${BENCH_TIMEOUT:-420} python3 scripts/bench_attention.py $reference --json "$out/bench_attention.json" \
    ${BENCH_ARGS:-} > "$out/bench_attention.log" 2>&1
  echo "== bench_attention (rc=$?)"; grep -v Warning "$out/bench_attention.log" | tail -60
fi
