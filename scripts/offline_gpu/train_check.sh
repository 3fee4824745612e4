#!/usr/bin/env bash
# Short 0.6B training runs on one GPU through torchrun, on the embedded corpus and tokenizer (offline
# host): the Parallax config on the eager torch backend without compile, then as committed (the fused kernel
# and torch.compile), then with the Hopper kernels (backend cute), and the softmax Transformer twin.
# Logs go to $OUT (or ./outputs/train_check).
set -uo pipefail
out=${OUT:-./outputs/train_check}
mkdir -p "$out"
runs=${RUNS:-all}  # space-separated run names to do, or all; EXTRA: more overrides for every run
run() {  # name config steps [overrides...]
  local name=$1 config=$2 steps=$3; shift 3
  [[ $runs == all || " $runs " == *" $name "* ]] || return 0
  timeout 240 torchrun --standalone --nproc_per_node=1 -m parallax_titan.train --job.config_file "$config" \
    --model.hf_assets_path ./parallax_titan/assets/tokenizer --training.dataset embedded_en \
    --training.dataset_path ./parallax_titan/assets/embedded_en/train \
    --training.steps "$steps" --training.local_batch_size ${LOCAL_BATCH:-4} --training.global_batch_size ${LOCAL_BATCH:-4} \
    --lr_scheduler.warmup_steps 2 --checkpoint.no-enable --metrics.log_freq 1 \
    --metrics.disable_color_printing --job.dump_folder "/tmp/$name" "$@" ${EXTRA:-} > "$out/$name.log" 2>&1
  echo "== $name (rc=$?)"; grep -E "optimizer routing|step: |Error|error:" "$out/$name.log" | cut -c1-220 | tail -14
}
run parallax_muon_torch configs/0.6B_parallax_muon.toml 3 --parallax.attention_backend torch --compile.no-enable
run parallax_muon_triton_compile configs/0.6B_parallax_muon.toml 12 --parallax.attention_backend triton --compile.enable
# the Hopper forward and backward (artefacts from scripts/build_kernels.py --attention in $PARALLAX_KERNEL_DIR): same losses as triton's
run parallax_muon_cute_compile configs/0.6B_parallax_muon.toml 12 --parallax.attention_backend cute --compile.enable
run transformer_muon_compile configs/0.6B_transformer_muon.toml 12 --compile.enable
# the AdamW reference for the optimizer's cost (LOCAL_BATCH=8: the same step at a larger local batch)
run parallax_adamw_triton_compile configs/0.6B_parallax_adamw.toml 12 --parallax.attention_backend triton --compile.enable
