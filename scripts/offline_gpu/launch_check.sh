#!/usr/bin/env bash
# One GPU: the diagnostics' cost at 0.6B, scripts/bench_train.py over the four
# 0.6B variants through scripts/train.sh, and a short mini20M run per attention type that sizes the mini
# ladder (tokens/s and memory at the ladder's micro-batch). Embedded corpus and tokenizer (offline host);
# the model keeps its 151,936-token vocabulary either way, so throughput is the ladder's. Logs go to /tmp/lc
# and, packed into one file, to $OUT/launch_check.tgz.
set -uo pipefail
out=/tmp/lc
mkdir -p "$out"
export PYTHONUNBUFFERED=1
data=(--training.dataset embedded_en --training.dataset_path ./parallax_titan/assets/embedded_en/train
      --model.hf_assets_path ./parallax_titan/assets/tokenizer)

echo "== diagnostics cost"
timeout 120 python scripts/bench_diagnostics.py 2>&1 | tee "$out/bench_diagnostics.log" | tail -2

echo "== mini20M sizing runs"
for variant in transformer parallax; do
  NGPU=1 timeout 150 bash scripts/train.sh "configs/mini/mini20M_${variant}_muon.toml" "${data[@]}" \
    --training.steps 30 --training.local_batch_size "${MINI_BATCH:-16}" --training.global_batch_size "${MINI_BATCH:-16}" \
    --checkpoint.no-enable --validation.no-enable --metrics.log_freq 5 --metrics.disable_color_printing \
    --job.dump_folder "/tmp/mini20M_$variant" > "$out/mini20M_${variant}_probe.log" 2>&1
  echo "mini20M $variant (rc=$?)"; grep -E "step: |Error" "$out/mini20M_${variant}_probe.log" | cut -c1-200 | tail -3
done

echo "== bench_train 0.6B, Muon, op-level SAC, 4 micro-batches of 4 x 4096 per step"
timeout "${BENCH_TIMEOUT:-420}" python scripts/bench_train.py --size 0.6B --optimizer muon --steps "${BENCH_STEPS:-8}" \
  --warmup 3 --out /tmp/bench_train --json "$out/bench_train.json" -- "${data[@]}" \
  --training.global_batch_size 16 --activation_checkpoint.selective_ac_option op --metrics.disable_color_printing \
  2>&1 | tee "$out/bench_train.log"
cp /tmp/bench_train/*.log "$out/" 2>/dev/null || true
[[ -n ${OUT:-} ]] && tar czf "$OUT/launch_check.tgz" -C "$out" .
