#!/usr/bin/env bash
# the five bench shapes with cuDNN and FlashAttention-2 and the backward's adds both ways in 7 rounds, then
# 0.6B training steps (Transformer, Parallax, compute-matched Parallax) and 1.7B if time is left
set -u
T0=$(date +%s)
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
snap() { tar czf $FINAL/logs.tgz -C /tmp runlogs; }
trap snap EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/kernels:$PWD:/tmp/site PARALLAX_KERNEL_DIR=$PWD/.kernels_new
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
el() { echo $(( $(date +%s) - T0 )); }
PARALLAX_TRITON_AUTOTUNE=0 timeout 130 python3 scripts/bench_attention.py --shapes 8,16,2048,128 4,16,4096,128 \
  2,16,8192,128 1,16,16384,128 4,16,4096,64 --peers parallax-cute sdpa-cudnn sdpa-flash --torch-backend-max-tokens 0 \
  --repeat 7 --cute-backward-variants b2wa b2wg --json $OUT/bench_attention.json > $OUT/bench_attention.log 2>&1
echo "== bench rc=$? at $(el) s"; grep -E "^\(B|^ratio|  (default|b2w)" $OUT/bench_attention.log; snap
common="--training.dataset embedded_en --training.dataset_path ./parallax_titan/assets/embedded_en/train
  --model.hf_assets_path ./parallax_titan/assets/tokenizer --training.global_batch_size 16
  --activation_checkpoint.selective_ac_option op --parallax.attention_backend cute"
timeout 200 python3 scripts/bench_train.py --size 0.6B --optimizer muon --steps 8 --warmup 3 \
  --variants transformer parallax parallax-compute-matched --out $OUT/train_0.6B -- $common > $OUT/console_0.6B.txt 2>&1
echo "== train 0.6B rc=$? at $(el) s"; grep "^|" $OUT/console_0.6B.txt | tail -5; snap
left=$(( ${LIMIT:-585} - $(el) ))
if [ $left -gt 200 ]; then
  timeout $left python3 scripts/bench_train.py --size 1.7B --optimizer muon --steps 8 --warmup 3 \
    --variants transformer parallax --out $OUT/train_1.7B -- $common > $OUT/console_1.7B.txt 2>&1
  echo "== train 1.7B rc=$? at $(el) s"; grep "^|" $OUT/console_1.7B.txt | tail -4
fi
