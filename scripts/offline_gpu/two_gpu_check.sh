#!/usr/bin/env bash
# On a 2-GPU host, the multi-GPU proofs the CPU tests make with gloo, on GPUs with NCCL. Logs go to
# $OUT (or ./outputs/two_gpu_check). RUNS picks some of: optimizer fsdp_0.6B fsdp_1.7B bench_1.7B two_nodes
# killed_rank (default: all). Embedded corpus and tokenizer (offline host).
set -uo pipefail
out=${OUT:-./outputs/two_gpu_check}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
runs=${RUNS:-all}
config=${CONFIG:-configs/0.6B_parallax_muon.toml}  # for two_nodes and killed_rank (CONFIG=configs/debug_cpu.toml tries them on CPU)
want() { [[ $runs == all || " $runs " == *" $1 "* ]]; }
data=(--training.dataset embedded_en --training.dataset_path ./parallax_titan/assets/embedded_en/train
      --model.hf_assets_path ./parallax_titan/assets/tokenizer)
short() {  # steps dump: a short run's overrides
  echo "${data[@]}" --training.steps "$1" --training.local_batch_size 4 --training.global_batch_size 8 \
    --lr_scheduler.warmup_steps 2 --checkpoint.no-enable --validation.no-enable --metrics.log_freq 1 \
    --metrics.disable_color_printing --job.dump_folder "$2"
}
keylines() { grep -E "dp_shard|step: |Error|error:|exitcode|Signal" "$1" | cut -c1-200 | tail -${2:-12}; }

if want optimizer; then  # the Muon/AdamW step under FSDP2 on 1 and 2 ranks
  for n in 1 2; do
    timeout 200 torchrun --standalone --nproc_per_node=$n scripts/bench_optimizer.py --fsdp 2>&1 \
      | grep -v Warn | tee "$out/bench_optimizer_fsdp_$n.log" | grep "|\|device"
  done
fi
for size in 0.6B 1.7B; do  # the Parallax config sharded over both GPUs (tied embedding in one FSDP group)
  want "fsdp_$size" || continue
  NGPU=2 timeout 300 bash scripts/train.sh "configs/${size}_parallax_muon.toml" $(short 10 "/tmp/fsdp_$size") \
    > "$out/train_${size}_parallax_fsdp2.log" 2>&1
  echo "== $size parallax, FSDP over 2 GPUs (rc=$?)"; keylines "$out/train_${size}_parallax_fsdp2.log"
done
if want bench_1.7B; then  # the training benchmark at 1.7B, 2 GPUs
  timeout 480 python scripts/bench_train.py --size 1.7B --optimizer muon --nproc 2 --steps 8 --warmup 3 \
    --out /tmp/bench_1.7B --json "$out/bench_train_1.7B.json" -- "${data[@]}" --training.global_batch_size 16 \
    --metrics.disable_color_printing 2>&1 | tee "$out/bench_train_1.7B.log" | tail -7
fi
if want two_nodes; then  # two 'nodes' of one GPU each meeting through the c10d rendezvous endpoint
  for node in 0 1; do
    CUDA_VISIBLE_DEVICES=$node NNODES=2 NGPU=1 RDZV_ENDPOINT=127.0.0.1:29477 RDZV_ID=two-nodes \
      timeout 300 bash scripts/train.sh "$config" $(short 6 /tmp/two_nodes) \
      > "$out/two_nodes_$node.log" 2>&1 &
  done
  wait
  for node in 0 1; do echo "== node $node"; keylines "$out/two_nodes_$node.log" 4; done
fi
if want killed_rank; then  # kill one of two ranks: the job must end with an error, not hang
  log="$out/killed_rank.log"
  NGPU=2 bash scripts/train.sh "$config" $(short 100000 /tmp/killed) \
    > "$log" 2>&1 &
  job=$!
  for _ in $(seq 240); do grep -q "step:  3" "$log" && break; sleep 1; done
  victim=$(pgrep -P $job | tail -1)
  start=$SECONDS; kill -9 "$victim"
  timeout 400 tail --pid=$job -f /dev/null; wait $job; rc=$?
  echo "== killed rank $victim: the job exited with rc=$rc after $((SECONDS - start)) s"; keylines "$log" 6
fi
