#!/usr/bin/env bash
# Decode on the GPU: the decode tests on CUDA, then the decode benchmark. Logs go to $OUT.
set -uo pipefail
out=${OUT:-./outputs/decode_check}
mkdir -p "$out"
python3 -m pytest -q -p no:cacheprovider tests/test_decode.py > "$out/gpu_tests_decode.log" 2>&1
echo "== decode tests (rc=$?)"; tail -3 "$out/gpu_tests_decode.log"
timeout ${BENCH_TIMEOUT:-420} python3 scripts/bench_decode.py --json "$out/bench_decode.json" ${BENCH_ARGS:-} \
  > "$out/bench_decode.log" 2>&1
echo "== bench_decode (rc=$?)"; cat "$out/bench_decode.log" | grep -v Warning | tail -40
