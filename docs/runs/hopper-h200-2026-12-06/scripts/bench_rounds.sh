#!/usr/bin/env bash
# the five bench shapes, cute against cuDNN and FlashAttention-2, every peer timed in 7 rounds in turn
set -u
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
trap 'tar czf $FINAL/logs.tgz -C /tmp runlogs' EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/kernels:$PWD:/tmp/site PARALLAX_KERNEL_DIR=$PWD/.kernels_new PARALLAX_TRITON_AUTOTUNE=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
timeout 300 python3 scripts/bench_attention.py --shapes 8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 \
  4,16,4096,64 --peers parallax-cute sdpa-cudnn sdpa-flash --torch-backend-max-tokens 0 --peer-rounds 7 \
  --json $OUT/bench_attention_rounds.json > $OUT/bench_attention_rounds.log 2>&1
echo "== bench rc=$?"; grep -vi warn $OUT/bench_attention_rounds.log | grep -E "^\(B|^ratio|^\| parallax-cute|^\| sdpa|Error|error" | head -40
