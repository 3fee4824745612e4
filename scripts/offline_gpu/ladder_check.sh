#!/usr/bin/env bash
# The mini ladder on one offline GPU: tokenise the copied mini corpus text once, then train the
# named configs side by side (one scripts/ablate.py per config: train, held-out perplexity), and pack each
# run's metrics.jsonl, perplexity.json and log into $OUT/ladder.tgz.
#
#   copied with the checkout: .ladder/mini_text (scripts/build_mini_corpus.py output) and .ladder/Qwen3-0.6B (tokenizer.json.xz
#   and tokenizer_config.json from scripts/download_assets.py --from-package)
#   CONFIGS="configs/mini/a.toml configs/mini/b.toml ..." LADDER_TIMEOUT=480 bash scripts/offline_gpu/ladder_check.sh
# SWEEP="optimizer.lr=1e-3,1e-2" trains each config at each value instead, all side by side, each run in
# <dump_folder>/optimizer.lr=<value> (scripts/ablate.py --sweep with one value a process), packed the same way:
#   tar xzf ladder.tgz -C docs/runs/<date>; python scripts/plot_sweep.py docs/runs/<date>/*/optimizer.lr=* --out ...
# Seeds at one lr: SWEEP=debug.seed=2,3 LADDER_OVERRIDES="--optimizer.lr 5e-3" (runs in <dump_folder>/debug.seed=2, ...).
set -uo pipefail
export PYTHONUNBUFFERED=1
tmp=${LADDER_TMP:-/tmp}  # logs, plots and the packed runs before they go to $OUT
mkdir -p "$tmp"
mkdir -p assets/Qwen3-0.6B
if [[ ! -f assets/Qwen3-0.6B/tokenizer.json ]]; then
  xz -dc .ladder/Qwen3-0.6B/tokenizer.json.xz > assets/Qwen3-0.6B/tokenizer.json
  cp .ladder/Qwen3-0.6B/tokenizer_config.json assets/Qwen3-0.6B/
fi
# two copies of this script side by side (other configs or SWEEPs): the lock lets one tokenise and the other wait
mkdir -p data
exec 9> data/.mini_corpus.lock
flock 9
if [[ ! -f data/mini_corpus/manifest.json ]]; then
  start=$SECONDS
  python scripts/prepare_data.py --source .ladder/mini_text/train --validation-source .ladder/mini_text/validation \
    --tokenizer assets/Qwen3-0.6B --out data/mini_corpus > "$tmp/prepare.log" 2>&1 || { tail -20 "$tmp/prepare.log"; exit 1; }
  echo "tokenised the mini corpus in $((SECONDS - start)) s"
fi
flock -u 9
# one process per run: (config, "" or a swept value); its name and dump folder follow from the pair
key=${SWEEP:-}; key=${key%%=*}
parse_run() {  # "<config>=<value or empty>" -> config, value, name and dump (the configs' outputs/<stem> folders)
  config=${1%%=*} value=${1#*=}
  local stem; stem=$(basename "$config" .toml)
  name=$stem${value:+-$value} dump=outputs/$stem${value:+/$key=$value}
}
values=${SWEEP:-}; values=${values#*=}
runs=()
for config in $CONFIGS; do
  if [[ -n ${SWEEP:-} ]]; then
    for value in ${values//,/ }; do runs+=("$config=$value"); done
  else
    runs+=("$config=")
  fi
done
overrides=()  # LADDER_OVERRIDES="--optimizer.lr 5e-3": passed to every run (after ablate.py's `--`)
[[ -n ${LADDER_OVERRIDES:-} ]] && read -ra overrides <<< "-- $LADDER_OVERRIDES"
pids=()
for run in "${runs[@]}"; do
  parse_run "$run"
  sweep=()
  [[ -n $value ]] && sweep=(--sweep "$key=$value")
  timeout "${LADDER_TIMEOUT:-480}" python scripts/ablate.py "$config" "${sweep[@]}" --out "$tmp/plots/$name" \
    "${overrides[@]}" > "$tmp/$name.ablate.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for run in "${runs[@]}"; do
  parse_run "$run"
  echo "== $name"
  grep -E "step: *(100|400|800) |Error|error" "$dump/train.log" 2>/dev/null | cut -c1-200 | tail -4
  tail -2 "$tmp/$name.ablate.log"
  packed=$tmp/ladder/${dump#outputs/}  # the dump folders' layout, which scripts/plot_sweep.py reads
  mkdir -p "$packed"
  cp "$dump/metrics.jsonl" "$dump/perplexity.json" "$dump/train.log" "$packed/" 2>/dev/null
  cp "$tmp/$name.ablate.log" "$packed/ablate.log"
done
# the corpus the runs saw: Debian's point releases change the packages, so a rebuild can differ (by a few
# validation documents); PROVENANCE.json names each .deb
mkdir -p "$tmp/ladder"
cp .ladder/mini_text/PROVENANCE.json "$tmp/ladder/mini_text_PROVENANCE.json" || echo "no corpus provenance to pack"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
if [[ -n ${OUT:-} ]]; then tar czf "$OUT/ladder.tgz" -C "$tmp/ladder" .; fi
