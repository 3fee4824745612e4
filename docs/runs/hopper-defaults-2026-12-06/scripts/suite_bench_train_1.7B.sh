#!/usr/bin/env bash
# the whole CuTe attention GPU suite, the five bench shapes with cuDNN and FlashAttention-2 and the backward's
# adds both ways in 7 rounds, then 1.7B training steps (Transformer, Parallax) with the default cute kernels
set -u
T0=$(date +%s)
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
snap() { tar czf $FINAL/logs.tgz -C /tmp runlogs; }
trap snap EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONUNBUFFERED=1 PARALLAX_TRITON_AUTOTUNE=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
el() { echo $(( $(date +%s) - T0 )); }
export PYTHONPATH=/tmp/site PARALLAX_KERNEL_DIR=$PWD/.kernels_new
mkdir -p $OUT/suite
OUT=$OUT/suite CUTE_VARIANTS="s2stov s3npstov s3erstov" TEST_TIMEOUT=300 BENCH=0 timeout 220 \
  bash scripts/offline_gpu/cute_attention_check.sh > $OUT/suite.log 2>&1
echo "== suite rc=$? at $(el) s"; grep -hE "passed|failed|left out" $OUT/suite.log | tail -4
grep -hE "FAILED|ERROR" $OUT/suite/*.log | head -5; snap
export PYTHONPATH=$PWD/kernels:$PWD:/tmp/site
timeout 130 python3 scripts/bench_attention.py --shapes 8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 \
  4,16,4096,64 --peers parallax-cute sdpa-cudnn sdpa-flash --torch-backend-max-tokens 0 --repeat 7 \
  --cute-backward-variants b2wa b2wg --json $OUT/bench_attention.json > $OUT/bench_attention.log 2>&1
echo "== bench rc=$? at $(el) s"; grep -E "^\(B|^ratio|  (default|b2w)" $OUT/bench_attention.log; snap
unset PARALLAX_TRITON_AUTOTUNE
common="--training.dataset embedded_en --training.dataset_path ./parallax_titan/assets/embedded_en/train
  --model.hf_assets_path ./parallax_titan/assets/tokenizer --training.global_batch_size 16
  --activation_checkpoint.selective_ac_option op --parallax.attention_backend cute"
left=$(( ${LIMIT:-585} - $(el) ))
if [ $left -gt 150 ]; then
  timeout $left python3 scripts/bench_train.py --size 1.7B --optimizer muon --steps 8 --warmup 3 \
    --variants transformer parallax --out $OUT/train_1.7B -- $common > $OUT/console_1.7B.txt 2>&1
  echo "== train 1.7B rc=$? at $(el) s"; grep "^|" $OUT/console_1.7B.txt | tail -4
fi
