#!/usr/bin/env bash
# this checkout (the persistent lpt forward as the default for short causal sequences): the whole attention GPU
# suite, then the five shapes with the default and the one-CTA-an-item forwards timed in 11 alternating rounds
set -u
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
trap 'tar czf $FINAL/logs.tgz -C /tmp runlogs' EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/kernels:$PWD PARALLAX_KERNEL_DIR=$PWD/.kernels_new PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
t0=$(date +%s)
CUTE_VARIANTS="s2stov s3npstov s3erstov" TEST_TIMEOUT=300 BENCH=0 OUT=$OUT/tests bash scripts/offline_gpu/cute_attention_check.sh 2>&1 | tail -8
echo "tests $(( $(date +%s) - t0 )) s"
timeout 200 python3 scripts/bench_attention.py --shapes 8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 \
  4,16,4096,64 --peers parallax-cute sdpa-cudnn --torch-backend-max-tokens 0 \
  --cute-variants s3stov s3stovw3 s3stovlpps s3stovlppsw3 --repeat 11 --json $OUT/bench_attention.json \
  > $OUT/bench_attention.log 2>&1
echo "== bench rc=$?"; grep -E "^\(B|^\| (parallax-cute|sdpa-cudnn) |^  [a-z0-9]+: |^ratio" $OUT/bench_attention.log
echo "total $(( $(date +%s) - t0 )) s"
