#!/usr/bin/env bash
# Where the training step's GPU time goes: scripts/bench_train.py's runs with torch.profiler on their last step
# (torchtitan's [profiling]; the trace is written after it, so no timed step carries the export), then
# scripts/trace_summary.py over the traces, each variant against the first.
# On the embedded corpus and tokenizer (offline host); SIZE, VARIANTS, BACKEND, STEPS choose the runs. HOST_OPS=false
# records the GPU activity and the launch calls only ([profiling] host_ops): a smaller trace without the profiler's
# per-op records on the host, whose gaps the summary names by the kernel's category, not by the host ops behind them.
# The summary and the runs' logs go to $OUT (or ./outputs/profile_train); the traces stay in $RUNS_DIR.
# Its bench_train table counts the profiled steps (the last two run under the profiler): time with bench_train.py
# alone.
set -euo pipefail
out=${OUT:-./outputs/profile_train}
runs_dir=${RUNS_DIR:-/tmp/profile_train}
size=${SIZE:-0.6B}
variants=(${VARIANTS:-transformer parallax parallax-compute-matched})
steps=${STEPS:-8}
mkdir -p "$out" "$runs_dir"
python3 scripts/bench_train.py --size "$size" --optimizer muon --variants "${variants[@]}" --steps "$steps" \
  --warmup 3 --out "$runs_dir" --json "$out/bench_train.json" -- \
  --training.dataset embedded_en --training.dataset_path ./parallax_titan/assets/embedded_en/train \
  --model.hf_assets_path ./parallax_titan/assets/tokenizer --training.global_batch_size 16 \
  --activation_checkpoint.selective_ac_option op --parallax.attention_backend "${BACKEND:-cute}" \
  --profiling.enable_profiling --profiling.profile_freq "$steps" --profiling.profiler_warmup 1 \
  --profiling.host_ops "${HOST_OPS:-true}" \
  --metrics.disable_color_printing | tee "$out/bench_train.txt"
traces=() labels=()
for v in "${variants[@]}"; do
  name="${size}_${v}_muon"
  cp "$runs_dir/$name.log" "$out/" 2>/dev/null || true
  traces+=("$runs_dir/$name/profile_traces/iteration_$steps/rank0_trace.json")
  labels+=("$v")
done
python3 scripts/trace_summary.py "${traces[@]}" --labels "${labels[@]}" --top "${TOP:-40}" | tee "$out/trace_summary.md"
