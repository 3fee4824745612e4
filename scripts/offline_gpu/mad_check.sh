#!/usr/bin/env bash
# The MAD protocol on this host's GPU, resumable. The runner appends each finished run to $MAD_RESULTS and
# skips the runs already there, so running this again (with the same or another MAD_ARGS) continues where
# the last run stopped. MAD_RESULTS defaults to $OUT/mad_protocol.jsonl (started empty); a MAD_RESULTS that
# is set but missing is an error, so that a mistyped path does not start the protocol over.
# MAD_ARGS chooses the piece (settings, optimizers, epochs, sweep points; default: the full protocol);
# MAD_FLAGS the attention backend and compile (default: the fused Triton kernel, eager); JOBS the runs
# trained at once in worker processes (default 8). The log goes to $OUT/mad_protocol.log, the table to stdout.
# PROBE=1 first trains one baseline run per model eager and compiled, 2 epochs, to time the two paths, then
# the six sweep points of that baseline as one batched model (--batch-sweep), to time that path; PROBE_ONLY=1
# stops after the probe. PROBE_LONG=1 times a sequence-1,024 setting alone and six at once.
# MPS=1 shares the GPU between the worker processes through an MPS server, so that their small kernels run
# side by side instead of in time slices (same numerics; only the seconds change).
set -uo pipefail
out=${OUT:-./outputs/mad_check}
mkdir -p "$out"
if [ -n "${MAD_RESULTS:-}" ] && [ ! -f "$MAD_RESULTS" ]; then
  echo "mad_check.sh: MAD_RESULTS=$MAD_RESULTS does not exist; set it to the JSONL to resume, or leave it unset" >&2
  exit 2
fi
results=${MAD_RESULTS:-$out/mad_protocol.jsonl}
flags=${MAD_FLAGS:---backend triton}
if [ "${MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if nvidia-cuda-mps-control -d && python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    trap 'echo quit | nvidia-cuda-mps-control' EXIT
    echo "== MPS server on"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "== MPS did not start: time-sliced processes"
  fi
fi
if [ "${PROBE:-0}" = 1 ]; then
  for mode in eager compile; do
    flag=$([ $mode = compile ] && echo --compile)
    python3 -m eval.mad.run --attention softmax parallax --tasks in-context-recall --baseline-only --epochs 2 \
      --lrs 1e-3 --wds 0 --device cuda $flags $flag --out "$out/probe_$mode.jsonl" > "$out/probe_$mode.log" 2>&1
    echo "== probe $mode (rc=$?)"; grep -E "acc=|Error" "$out/probe_$mode.log" | tail -4
  done
  python3 -m eval.mad.run --attention softmax parallax --tasks in-context-recall --baseline-only --epochs 2 \
    --device cuda $flags --batch-sweep --jobs 2 --out "$out/probe_batched.jsonl" > "$out/probe_batched.log" 2>&1
  echo "== probe batched sweep, 6 sweep points a model (rc=$?)"; grep -E "acc=|Error" "$out/probe_batched.log" | tail -12
fi
# PROBE_LONG=1: the costliest kind of setting (sequence 1,024), one run per model alone on the GPU, then six
# at once as separate processes: what one run costs, and what sharing the GPU between processes costs
if [ "${PROBE_LONG:-0}" = 1 ]; then
  long=(--tasks in-context-recall --settings "in-context-recall[seq_len=1024]" --epochs 1 --device cuda $flags)
  python3 -m eval.mad.run --attention softmax parallax "${long[@]}" --lrs 1e-3 --wds 0 \
    --out "$out/probe_long_alone.jsonl" > "$out/probe_long_alone.log" 2>&1
  echo "== probe long, alone (rc=$?)"; grep -E "acc=|Error" "$out/probe_long_alone.log" | tail -4
  python3 -m eval.mad.run --attention softmax parallax "${long[@]}" --lrs 1e-4 5e-4 1e-3 --wds 0 --jobs 6 \
    --out "$out/probe_long_jobs6.jsonl" > "$out/probe_long_jobs6.log" 2>&1
  echo "== probe long, 6 processes (rc=$?)"; grep -E "acc=|Error" "$out/probe_long_jobs6.log" | tail -8
fi
[ "${PROBE_ONLY:-0}" = 1 ] && exit 0
echo "== MAD: MAD_ARGS=${MAD_ARGS:-} JOBS=${JOBS:-8} -> $results" >> "$out/mad_protocol.log"
PYTHONWARNINGS=ignore::UserWarning python3 -m eval.mad.run \
  --attention softmax parallax --device cuda $flags --jobs ${JOBS:-8} --out "$results" ${MAD_ARGS:-} \
  >> "$out/mad_protocol.log" 2>&1
echo "== MAD (rc=$?): $(cat "$results" 2>/dev/null | wc -l) runs in $results"
grep -E "Error|error" "$out/mad_protocol.log" | tail -5
python3 -m eval.mad.run --table --out "$results"
