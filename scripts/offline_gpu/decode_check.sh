#!/usr/bin/env bash
# Decode on the GPU: the decode tests on CUDA (Triton and CuTe kernels), then the decode benchmark.
# Logs go to $OUT. A host without nvidia-cutlass-dsl runs the CuTe kernel from cubins built
# elsewhere (no GPU needed) and copied with the checkout in .kernels/ (git-ignored):
#   python scripts/build_kernels.py --out .kernels      # then run this with .whl/ and .kernels/ copied
set -uo pipefail
out=${OUT:-./outputs/decode_check}
mkdir -p "$out"
export PARALLAX_KERNEL_DIR=${PARALLAX_KERNEL_DIR:-$PWD/.kernels}
timeout --kill-after=10 ${TEST_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider tests/test_decode.py tests/test_cute_decode.py > "$out/gpu_tests_decode.log" 2>&1
echo "== decode tests (rc=$?)"; grep -E "passed|failed|Error" "$out/gpu_tests_decode.log" | tail -8
timeout ${BENCH_TIMEOUT:-420} python3 scripts/bench_decode.py --json "$out/bench_decode.json" ${BENCH_ARGS:-} \
  > "$out/bench_decode.log" 2>&1
echo "== bench_decode (rc=$?)"; cat "$out/bench_decode.log" | grep -v Warning | tail -40
