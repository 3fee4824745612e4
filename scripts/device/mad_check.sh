#!/usr/bin/env bash
# The MAD protocol on one GPU, in pieces across sessions. $MAD_RESULTS (default
# docs/runs/mad/mad_protocol.jsonl, committed after each session) is copied to $OUT, the runner appends
# to the copy and skips what is done, and the copy comes back to be committed. MAD_FLAGS picks the
# attention backend and compile (default: the fused Triton kernel, eager; a short run spends more on
# compiling than CUDA graphs save), MAD_ARGS the piece (settings, epochs, sweep points). One call can run
# several pieces, the script once per piece with its own MAD_ARGS: each resumes from the copy the one before
# left in $OUT, and their logs follow one another in mad_protocol.log. Two pieces can also run at once into one
# $OUT: the copy is made under a lock, each runner appends whole lines to it and claims a job's runs before it
# starts them (eval/mad/claims.py), so pieces that overlap share the runs instead of training some twice, and
# the second joins the first's MPS server (MPS=join below).
# PROBE=1 first trains one baseline run per model eager and compiled, 2 epochs, to time the two paths,
# then the six sweep points of that baseline as one batched model (--batch-sweep), to time that path.
# PROBE_LONG=1 (below) times a sequence-1,024 setting alone and six at once.
set -uo pipefail
out=${OUT:-./outputs/mad_check}
mkdir -p "$out"
results=${MAD_RESULTS:-docs/runs/mad/mad_protocol.jsonl}
copy="$out/$(basename "$results")"
# a results file that is not there is an error, not a fresh start: the runner would redo what is done
# (a MAD_RESULTS path that was not carried cost the ninth session a call that way)
if [ ! -f "$results" ]; then
  echo "mad_check.sh: MAD_RESULTS=$results does not exist (not carried?); set it to the JSONL to resume" >&2
  exit 2
fi
# a copy that extends the results file is an earlier piece's in this same $OUT (one call running several
# pieces one after another): resume from it. Anything else (a stale copy) is replaced by the results file.
# (under a lock: a piece started beside another must not copy over the copy the other is appending to)
exec {lock}> "$out/.copy.lock"
flock "$lock"
if [ "$copy" -ef "$results" ]; then
  :
elif [ -f "$copy" ] && cmp -s -n "$(stat -c %s "$results")" "$results" "$copy"; then
  echo "== resuming from $copy ($(wc -l < "$copy") runs), left by an earlier piece of this call"
else
  cp "$results" "$copy"
fi
flock -u "$lock"
flags=${MAD_FLAGS:---backend triton}
# MPS=1: the worker processes share the GPU through an MPS server, so that their small kernels run side by
# side instead of in time slices (same numerics; only the seconds change). Stopped when this script ends;
# if it does not come up, the runs go on time-sliced and the log says so. MPS=join: a piece started beside
# one with MPS=1 sends its workers to that script's server and leaves it running; start the MPS=1 piece first,
# with the longer MAD_TIMEOUT (its `quit` at the end takes no new clients but waits for those still running).
if [ "${MPS:-0}" = join ] || [ "${MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log  # the one server both use
fi
if [ "${MPS:-0}" = join ]; then
  if echo get_server_list | nvidia-cuda-mps-control > /dev/null 2>&1; then
    echo "== joined the MPS server at $CUDA_MPS_PIPE_DIRECTORY"
  else
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "== no MPS server to join: time-sliced processes"
  fi
elif [ "${MPS:-0}" = 1 ]; then
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
# no run starts in the last MAD_MARGIN seconds, nor one whose recorded seconds say it would end past the
# limit (a cheaper one starts instead), so the time limit rarely cuts one short (costliest runs go first)
# MAD_TIMEOUT=0: the probe only (a call's 600 s hold the probe or a protocol piece, not both)
limit=${MAD_TIMEOUT:-900}
[ "$limit" -gt 0 ] || exit 0
echo "== piece: MAD_ARGS=${MAD_ARGS:-} JOBS=${JOBS:-8} MAD_TIMEOUT=$limit" >> "$out/mad_protocol.log"
PYTHONWARNINGS=ignore::UserWarning timeout --kill-after=10 $limit python3 -m eval.mad.run \
  --attention softmax parallax --device cuda $flags --jobs ${JOBS:-8} --out "$copy" \
  --start-deadline $((limit - ${MAD_MARGIN:-120})) --end-deadline $((limit - 10)) ${MAD_ARGS:-} \
  >> "$out/mad_protocol.log" 2>&1
echo "== MAD protocol piece (rc=$?): $(cat "$copy" 2>/dev/null | wc -l) runs in the file"
grep -E "Error|error" "$out/mad_protocol.log" | tail -5
python3 -m eval.mad.run --table --out "$copy"
