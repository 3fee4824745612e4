#!/usr/bin/env bash
# Launch training with torchrun: one node or many.
#
#   scripts/train.sh CONFIG.toml [--section.key value ...]
#
# One node:   NGPU=8 scripts/train.sh configs/0.6B_parallax_muon.toml
# Many nodes: run the same command on every node with
#   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0's address> [MASTER_PORT=29500] scripts/train.sh ...
# or with a rendezvous endpoint instead of node ranks (elastic-style, any start order):
#   NNODES=4 RDZV_ENDPOINT=<host>:29400 RDZV_ID=<job id> scripts/train.sh ...
#
# Environment it sets unless you do (documented in docs/training.md):
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=3  a failed collective tears the process down instead of hanging
#   TORCH_NCCL_DUMP_ON_TIMEOUT=1       flight-recorder dump when a collective times out
#   OMP_NUM_THREADS=1                  no CPU oversubscription by the data loader and tokenizer
# Collective timeouts come from the TOML's [comm] init_timeout_seconds / train_timeout_seconds; a rank that
# dies makes torchrun stop the others (--max-restarts 0), so the job exits non-zero instead of waiting.
set -euo pipefail
if [[ $# -lt 1 || ! -f $1 ]]; then
  echo "usage: scripts/train.sh CONFIG.toml [--section.key value ...]  (config '${1:-}' not found)" >&2
  exit 2
fi
config=$1; shift
ngpu=${NGPU:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}
[[ $ngpu -ge 1 ]] || ngpu=1
nnodes=${NNODES:-1}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-3}
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
launch=(--nproc_per_node="$ngpu" --nnodes="$nnodes" --max-restarts="${MAX_RESTARTS:-0}")
if [[ -n ${RDZV_ENDPOINT:-} ]]; then
  launch+=(--rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-parallax}")
elif [[ $nnodes -gt 1 ]]; then
  : "${MASTER_ADDR:?set MASTER_ADDR (the address of node 0) or RDZV_ENDPOINT for a multi-node launch}"
  launch+=(--node-rank="${NODE_RANK:?set NODE_RANK for a multi-node launch}" --master-addr="$MASTER_ADDR"
           --master-port="${MASTER_PORT:-29500}")
else
  launch+=(--standalone)
fi
set -x
exec torchrun "${launch[@]}" -m parallax_titan.train --job.config_file "$config" "$@"
