#!/usr/bin/env bash
# one job, most wanted first: the five bench shapes with every peer in 7 rounds, the GPU's clocks, power and throttle
# reasons sampled beside them; the 0.6B Parallax losses with cute against triton (torch.compile, op-level SAC); the
# decode GPU tests with decode artefacts; the compute-matched (head_dim 64) losses, cute against triton; the
# head_dim-64 backward's decoupled and K-in-registers variants in 11 rounds, as time allows
set -u
T0=$(date +%s)
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
snap() { tar czf $FINAL/logs.tgz -C /tmp runlogs; }
trap snap EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/kernels:$PWD:/tmp/site PARALLAX_KERNEL_DIR=$PWD/.kernels_new
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv | tee $OUT/device.txt
Q=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv -lms 100 > $OUT/telemetry.csv 2>&1 < /dev/null &
TEL=$!
trap 'kill $TEL 2>/dev/null; snap' EXIT
el() { echo $(( $(date +%s) - T0 )); }
mark() { echo "$(date +%Y/%m/%d\ %H:%M:%S.%3N) $1" >> $OUT/marks.txt; }
mark "rounds bench start"
PARALLAX_TRITON_AUTOTUNE=0 timeout 220 python3 scripts/bench_attention.py --shapes 8,16,2048,128 4,16,4096,128 \
  2,16,8192,128 1,16,16384,128 4,16,4096,64 --peers parallax-cute sdpa-cudnn sdpa-flash --torch-backend-max-tokens 0 \
  --peer-rounds 7 --json $OUT/bench_attention_rounds.json > $OUT/bench_attention_rounds.log 2>&1
echo "== bench rc=$? at $(el) s"; mark "rounds bench end"; grep -E "^\(B|^ratio|^\| (parallax-cute|sdpa)" $OUT/bench_attention_rounds.log; snap
mkdir -p $OUT/train
OUT=$OUT/train RUNS="parallax_muon_triton_compile parallax_muon_cute_compile" bash scripts/offline_gpu/train_check.sh
echo "== d128 loss pair at $(el) s"; snap
PARALLAX_KERNEL_DIR=$PWD/.kernels_dec timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_decode.py \
  tests/test_cute_decode.py > $OUT/gpu_tests_decode.log 2>&1
echo "== decode tests rc=$? at $(el) s"; tail -1 $OUT/gpu_tests_decode.log; snap
for b in triton cute; do
  left=$(( 560 - $(el) )); [ $left -gt 60 ] || break
  timeout $left torchrun --standalone --nproc_per_node=1 -m parallax_titan.train \
    --job.config_file configs/0.6B_parallax-compute-matched_muon.toml \
    --model.hf_assets_path ./parallax_titan/assets/tokenizer --training.dataset embedded_en \
    --training.steps 12 --training.local_batch_size 4 --training.global_batch_size 4 \
    --lr_scheduler.warmup_steps 2 --checkpoint.no-enable --metrics.log_freq 1 \
    --metrics.disable_color_printing --job.dump_folder /tmp/cm_$b --parallax.attention_backend $b --compile.enable \
    > $OUT/train/compute_matched_muon_${b}_compile.log 2>&1
  echo "== compute-matched $b (rc=$?) at $(el) s"; grep -E "step: |Error|error:" $OUT/train/compute_matched_muon_${b}_compile.log | cut -c1-160 | tail -13
  snap
done
left=$(( 575 - $(el) ))
if [ $left -gt 90 ]; then
  mark "d64 variants start"
  PARALLAX_TRITON_AUTOTUNE=0 timeout $left python3 scripts/bench_attention.py --shapes 4,16,4096,64 \
    --peers parallax-cute sdpa-cudnn --torch-backend-max-tokens 0 \
    --repeat 11 --cute-backward-variants b2dc b2kr --json $OUT/bench_d64_variants.json > $OUT/bench_d64_variants.log 2>&1
  echo "== d64 variants rc=$? at $(el) s"; mark "d64 variants end"; grep -E "^\(B|^ratio|  (default|b2)" $OUT/bench_d64_variants.log
fi
