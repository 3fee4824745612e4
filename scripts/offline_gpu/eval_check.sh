#!/usr/bin/env bash
# Evaluation on the GPU: a quick MAD look (baseline settings, short training; NOT the protocol) and the
# cost of the training-time diagnostics at 0.6B. Logs go to $OUT.
set -uo pipefail
out=${OUT:-./outputs/eval_check}
mkdir -p "$out"
timeout ${MAD_TIMEOUT:-330} python3 -m eval.mad.run --attention softmax parallax --baseline-only \
  --epochs ${MAD_EPOCHS:-20} --lrs 1e-3 --wds 0 --device cuda --backend torch --out "$out/mad_quick.jsonl" \
  > "$out/mad_quick.log" 2>&1
echo "== MAD quick (rc=$?)"; tail -12 "$out/mad_quick.log"
OUT=$out RUNS="parallax_muon_triton_compile" EXTRA="--diagnostics.interval 4" bash scripts/offline_gpu/train_check.sh
cp /tmp/parallax_muon_triton_compile/metrics.jsonl "$out/diagnostics_metrics.jsonl" 2>/dev/null
python3 - "$out/diagnostics_metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if "diagnostics/seconds" in r:
        print(f"step {r['step']}: diagnostics {r['diagnostics/seconds']*1e3:.0f} ms, cor mean {r.get('diagnostics/cor/mean', float('nan')):.3f}, sr_wr mean {r.get('diagnostics/sr_wr/mean', float('nan')):.1f}")
PY
