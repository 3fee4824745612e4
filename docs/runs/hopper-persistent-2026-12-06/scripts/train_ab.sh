#!/usr/bin/env bash
# training steps, 0.6B (Transformer, Parallax, compute-matched Parallax; Muon, cute backend): this checkout (the
# persistent lpt forward at 4096 tokens) and HEAD's (.gpujob/base: one CTA a work item), alternating
set -u
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
trap 'tar czf $FINAL/logs.tgz -C /tmp runlogs' EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
common="--training.dataset embedded_en --training.dataset_path ./parallax_titan/assets/embedded_en/train
  --model.hf_assets_path ./parallax_titan/assets/tokenizer --training.global_batch_size 16
  --activation_checkpoint.selective_ac_option op --parallax.attention_backend cute"
t0=$(date +%s)
train() {  # $1 label, $2 checkout, $3 kernel dir
  (cd $2 && PYTHONPATH=$2/kernels:$2:/tmp/site PARALLAX_KERNEL_DIR=$3 timeout 200 python3 scripts/bench_train.py \
    --size 0.6B --optimizer muon --steps 8 --warmup 3 --variants transformer parallax-compute-matched \
    --out /tmp/bt_$1 -- $common > $OUT/console_$1.txt 2>&1)
  echo "== $1 rc=$? at $(( $(date +%s) - t0 )) s"; grep "^|" $OUT/console_$1.txt | tail -4
}
train base1 $PWD/.gpujob/base $PWD/.gpujob/base/.kernels
train new3 $PWD $PWD/.kernels_new
if [ $(( $(date +%s) - t0 )) -lt 260 ]; then train base2 $PWD/.gpujob/base $PWD/.gpujob/base/.kernels; fi
mkdir -p $OUT/logs; for d in /tmp/bt_*; do [ -d $d ] && cp -r $d $OUT/logs/; done
