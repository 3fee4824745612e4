#!/usr/bin/env bash
# On a 2-GPU host: the Muon/AdamW step under FSDP2 on 1 and 2 ranks (same host), then a short 0.6B
# Parallax run sharded over both GPUs (fused kernel, torch.compile, selective AC, Muon). Logs to $OUT.
set -uo pipefail
out=${OUT:-./outputs/two_gpu_check}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
for n in 1 2; do
  timeout 200 torchrun --standalone --nproc_per_node=$n scripts/bench_optimizer.py --fsdp 2>&1 \
    | grep -v Warn | tee "$out/bench_optimizer_fsdp_$n.log" | grep "|\|device"
done
timeout 300 torchrun --standalone --nproc_per_node=2 -m parallax_titan.train --job.config_file configs/0.6B_parallax_muon.toml \
  --model.hf_assets_path ./parallax_titan/assets/tokenizer --training.dataset embedded_en \
  --training.steps 10 --training.local_batch_size 4 --training.global_batch_size 8 --lr_scheduler.warmup_steps 2 \
  --checkpoint.no-enable --metrics.log_freq 1 --metrics.disable_color_printing --job.dump_folder /tmp/fsdp2 \
  > "$out/train_0.6B_parallax_fsdp2.log" 2>&1
echo "== 0.6B parallax, FSDP over 2 GPUs (rc=$?)"
grep -E "dp_shard|step: |Error|error:" "$out/train_0.6B_parallax_fsdp2.log" | cut -c1-200 | tail -12
