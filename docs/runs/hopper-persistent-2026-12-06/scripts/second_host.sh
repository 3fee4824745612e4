#!/usr/bin/env bash
# the five shapes on another host: the default (persistent lpt for causal sequences of at most 4096 tokens) and the
# one-CTA-an-item forward (s3stov, s3stovw3) in 5 alternating rounds, cuDNN beside them
set -u
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
trap 'tar czf $FINAL/logs.tgz -C /tmp runlogs' EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/kernels:$PWD PARALLAX_KERNEL_DIR=$PWD/.kernels_new PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
timeout 100 python3 scripts/bench_attention.py --shapes 8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 \
  4,16,4096,64 --peers parallax-cute sdpa-cudnn --torch-backend-max-tokens 0 \
  --cute-variants s3stov s3stovw3 --repeat 5 --json $OUT/bench_attention.json > $OUT/bench_attention.log 2>&1
echo "== bench rc=$?"; grep -E "^\(B|^\| (parallax-cute|sdpa-cudnn) |^  [a-z0-9]+: |^ratio" $OUT/bench_attention.log
