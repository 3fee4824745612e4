#!/usr/bin/env bash
# main (efc761d, .kernels_new): the whole CuTe attention GPU suite, then the five bench shapes with cuDNN and
# FlashAttention-2 in 7 rounds; then the warp-adds branch (.gpujob/exp) at head_dim 64: default backward vs b2wa
set -u
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
trap 'tar czf $FINAL/logs.tgz -C /tmp runlogs' EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONUNBUFFERED=1 PARALLAX_TRITON_AUTOTUNE=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
t0=$(date +%s)
export PYTHONPATH=/tmp/site PARALLAX_KERNEL_DIR=$PWD/.kernels_new
mkdir -p $OUT/suite
OUT=$OUT/suite CUTE_VARIANTS="s2stov s3npstov s3erstov" TEST_TIMEOUT=300 BENCH=0 timeout 280 \
  bash scripts/offline_gpu/cute_attention_check.sh > $OUT/suite.log 2>&1
echo "== suite rc=$? at $(( $(date +%s) - t0 )) s"; grep -hE "passed|failed|left out" $OUT/suite.log $OUT/suite/*.log 2>/dev/null | tail -8
PYTHONPATH=$PWD/kernels:$PWD:/tmp/site timeout 120 python3 scripts/bench_attention.py \
  --shapes 8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 4,16,4096,64 \
  --peers parallax-cute sdpa-cudnn sdpa-flash --torch-backend-max-tokens 0 --repeat 7 \
  --json $OUT/bench_attention.json > $OUT/bench_attention.log 2>&1
echo "== bench rc=$? at $(( $(date +%s) - t0 )) s"; grep -E "^\(B|^\| |^ratio" $OUT/bench_attention.log | head -40
EXP=$PWD/.gpujob/exp; cd $EXP
PYTHONPATH=$EXP/kernels:$EXP:/tmp/site PARALLAX_KERNEL_DIR=$EXP/.kernels timeout 90 python3 scripts/bench_attention.py \
  --shapes 4,16,4096,64 --peers parallax-cute sdpa-cudnn --torch-backend-max-tokens 0 --repeat 11 \
  --cute-backward-variants b2wa --json $OUT/bench_wa_d64.json > $OUT/bench_wa_d64.log 2>&1
echo "== wa rc=$? at $(( $(date +%s) - t0 )) s"; grep -E "^\(B|^\| |^ratio|b2wa" $OUT/bench_wa_d64.log | head -20
