#!/usr/bin/env bash
# The CuTe DSL attention forward and backward (backends "cute", "cute_deterministic") on a Hopper GPU: their GPU
# tests, one decode-kernel test (the shared cubin launcher; where decode artefacts are there), then the
# attention benchmark. Logs go to $OUT. A host without
# nvidia-cutlass-dsl needs the artefacts built elsewhere (no GPU needed) and copied with the checkout, e.g.
#   python scripts/build_kernels.py --attention --out .kernels
#   python scripts/build_kernels.py --out .kernels --dtype bfloat16 --head-dim 128 --group 2 --block-n 32 --cluster 0
#   bash scripts/offline_gpu/cute_attention_check.sh          # with .kernels/
# TESTS=0 / BENCH=0 leave a part out, TEST_FILTER selects GPU tests (pytest -k); SHAPES and PEERS choose the
# benchmark's shapes and peers, CUTE_VARIANTS (e.g. "s3 s3st s2stov") adds forward timings of other CuTe
# variants (their artefacts built with --stages/--pingpong/--stacked/--overlap/--forward-warpgroups),
# CUTE_BACKWARD_VARIANTS (e.g. "b2 b2hh b3 b2dc b2kr b2wa b2wg") backward timings of CuTe backward variants
# (--backward-stages/--backward-block-m/--backward-decoupled/--backward-k-registers/--backward-warp-adds; b2hh,
# head by head: --backward-lpt 0; b2wa / b2wg, dQ/dR added by each warp / each warpgroup: --backward-warp-adds
# 1 / 0, the one that is not the head_dim's default (1 at head_dim 64, 0 at 128)),
# DOCUMENTS=MEAN times packed documents of about MEAN tokens (bench_attention.py --documents) instead, REPEAT=N
# times the default and those variants in N alternating rounds (bench_attention.py --repeat), PEER_ROUNDS=N the
# peers' table (bench_attention.py --peer-rounds).
set -uo pipefail
out=${OUT:-./outputs/cute_attention_check}
mkdir -p "$out"
export PYTHONPATH="$PWD/kernels:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PARALLAX_KERNEL_DIR=${PARALLAX_KERNEL_DIR:-$PWD/.kernels}
if ! ls "$PARALLAX_KERNEL_DIR"/parallax_attn_fwd_*.cubin > /dev/null 2>&1; then
  echo "cute_attention_check.sh: no attention artefacts in $PARALLAX_KERNEL_DIR (built and copied?)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/device.txt"
if [ "${TESTS:-1}" = 1 ]; then
  # the default forward's variants' test needs their artefacts (built with --stages 2, --pingpong 0 and
  # --lazy-rescale 0), which a run that times them (CUTE_VARIANTS) carries; the other layouts' test needs theirs
  # (--stacked 0 and --stacked 1 --overlap 0: both dtypes, head dims, masks and documents), the lpt order's bf16
  # head_dim-128 causal ones (--lpt 1, the default and --stacked 0), the persistent forward's bf16 ones (--lpt 0 1
  # --forward-persistent 1: both head dims, masks and documents), the two-warpgroup head_dim-64 forward's bf16
  # ones (--forward-warpgroups 2), the head-by-head backward's bf16 causal ones (--backward-lpt 0, both
  # --backward-deterministic, both head dims), the decoupled backward's bf16 ones (--dtype bfloat16
  # --backward-decoupled 1: both head dims, masks, documents and orders), the K-in-registers backward's bf16 ones
  # (--dtype bfloat16 --head-dim 64 --backward-k-registers 1), the other dQ/dR adds' bf16 ones (--dtype bfloat16
  # --backward-deterministic 0 1 with --head-dim 64 --backward-warp-adds 0 and --head-dim 128
  # --backward-warp-adds 1); TEST_FILTER (a pytest -k expression) replaces these choices
  leave_out=()
  [ -n "${CUTE_VARIANTS:-}" ] || { leave_out+=("not benchmarked_variants"); echo "forward-variant test left out (no CUTE_VARIANTS)"; }
  ls "$PARALLAX_KERNEL_DIR"/parallax_attn_fwd_*_s3.cubin > /dev/null 2>&1 \
    || { leave_out+=("not unstacked"); echo "unstacked forward tests left out (no unstacked artefacts)"; }
  ls "$PARALLAX_KERNEL_DIR"/parallax_attn_fwd_*_s3_st.cubin > /dev/null 2>&1 \
    || { leave_out+=("not stacked_only"); echo "stacked-only forward test left out (no artefacts)"; }
  ls "$PARALLAX_KERNEL_DIR"/parallax_attn_fwd_bfloat16_d128_causal_n128_s3_st_ov_lpt.cubin > /dev/null 2>&1 \
    || { leave_out+=("not lpt_default"); echo "lpt test of the default variant left out (no artefact)"; }
  # (the head_dim-64 default has three warpgroups: its artefacts end in _w3)
  for k in d128_causal d128_causal_doc d64_full d64_full_doc; do
    wgs=""; [ "${k#d64}" != "$k" ] && wgs=_w3
    for order in "" _lpt; do
      [ -e "$PARALLAX_KERNEL_DIR/parallax_attn_fwd_bfloat16_${k}_n128_s3_st_ov${order}_ps${wgs}.cubin" ] \
        || { leave_out+=("not persistent"); echo "persistent forward tests left out (no ${k}${order}_ps${wgs} artefact)"; break 2; }
    done
  done
  # the three-warpgroup test compares with the two-warpgroup head_dim-64 kernel (--forward-warpgroups 2), one
  # CTA an item and persistent (--forward-persistent 1)
  for k in d64_causal d64_full d64_causal_doc d64_full_doc; do
    [ -e "$PARALLAX_KERNEL_DIR/parallax_attn_fwd_bfloat16_${k}_n128_s3_st_ov.cubin" ] \
      && [ -e "$PARALLAX_KERNEL_DIR/parallax_attn_fwd_bfloat16_${k}_n128_s3_st_ov_ps_w3.cubin" ] \
      || { leave_out+=("not three_warpgroup"); echo "three-warpgroup forward test left out (no ${k} artefacts)"; break; }
  done
  ls "$PARALLAX_KERNEL_DIR"/parallax_attn_fwd_bfloat16_d128_causal_n64_s3_lpt.cubin > /dev/null 2>&1 \
    || { leave_out+=("not lpt_unstacked"); echo "lpt test of the unstacked variant left out (no artefact)"; }
  # (the default backward runs in the lpt order, artefacts *_lpt; the head-by-head order is opt-in; at head_dim
  # 64 the default adds dQ/dR per warp: its artefacts end in _wa before any opt-in's suffix, at 128 they do not)
  wa() { [ "${1#d64}" != "$1" ] && echo _wa; }
  for k in d64_causal_m64_s2 d64_causal_m64_s2_ordered d128_causal_m32_s2 d128_causal_m32_s2_ordered; do
    [ -e "$PARALLAX_KERNEL_DIR/parallax_attn_bwd_bfloat16_${k}$(wa $k).cubin" ] \
      || { leave_out+=("not lpt_backward"); echo "backward lpt tests left out (no head-by-head $k$(wa $k) artefact)"; break; }
  done
  for k in d64_causal_m64 d64_causal_doc_m64 d64_full_m64 d64_full_doc_m64 d128_causal_m32 d128_causal_doc_m32 \
           d128_full_m32 d128_full_doc_m32; do
    for order in "" _ordered; do
      [ -e "$PARALLAX_KERNEL_DIR/parallax_attn_bwd_bfloat16_${k}_s2${order}_lpt$(wa $k)_dc.cubin" ] \
        || { leave_out+=("not (opt_in_backward and decoupled)"); echo "decoupled backward tests left out (no ${k}_s2${order}_lpt$(wa $k)_dc)"; break 2; }
    done
  done
  for k in d64_causal_m64 d64_full_m64 d64_full_doc_m64; do
    for order in "" _ordered; do
      [ -e "$PARALLAX_KERNEL_DIR/parallax_attn_bwd_bfloat16_${k}_s2${order}_lpt_wa_kr.cubin" ] \
        || { leave_out+=("not (opt_in_backward and k_registers)"); echo "K-in-registers backward tests left out (no ${k}_s2${order}_lpt_wa_kr)"; break 2; }
    done
  done
  # the adds that are not the head_dim's default: per warpgroup at 64 (no _wa), per warp at 128 (_wa)
  for k in d64_causal_m64 d64_full_m64 d64_full_doc_m64 d128_causal_m32 d128_full_m32 d128_causal_doc_m32; do
    other=_wa; [ -n "$(wa $k)" ] && other=""
    for order in "" _ordered; do
      [ -e "$PARALLAX_KERNEL_DIR/parallax_attn_bwd_bfloat16_${k}_s2${order}_lpt${other}.cubin" ] \
        || { leave_out+=("not (opt_in_backward and warp_adds)"); echo "other-adds backward tests left out (no ${k}_s2${order}_lpt${other})"; break 2; }
    done
  done
  only=()
  if [ -n "${TEST_FILTER:-}" ]; then only=(-k "$TEST_FILTER")
  elif [ ${#leave_out[@]} -gt 0 ]; then only=(-k "$(IFS='|'; echo "${leave_out[*]}" | sed 's/|/ and /g')"); fi
  PARALLAX_TRITON_AUTOTUNE=0 timeout --kill-after=10 "${TEST_TIMEOUT:-300}" python3 -m pytest -v -p no:cacheprovider \
    -p no:logging -m gpu "${only[@]}" tests/test_cute_attention.py > "$out/gpu_tests_cute_attention.log" 2>&1
  echo "== cute attention GPU tests (rc=$?; $(grep -c ' PASSED' "$out/gpu_tests_cute_attention.log") passed," \
    "$(grep -c ' FAILED' "$out/gpu_tests_cute_attention.log") failed)"
  grep -E "(passed|failed|error).* in [0-9.]+s|FAILED|Error" "$out/gpu_tests_cute_attention.log" | tail -25
  if ls "$PARALLAX_KERNEL_DIR"/parallax_decode_*.cubin > /dev/null 2>&1; then
    timeout 120 python3 -m pytest -v -p no:cacheprovider tests/test_cute_decode.py \
      -k "test_cute_decode_matches_float64 and 32-B2H4kv2L100D128s1-dtype0" > "$out/gpu_tests_cute_decode.log" 2>&1
    echo "== cute decode GPU test, shared launcher (rc=$?)"; tail -3 "$out/gpu_tests_cute_decode.log"
  fi
fi
if [ "${BENCH:-1}" = 1 ]; then
  shapes=${SHAPES:-"8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 4,16,4096,64"}
  peers=${PEERS:-"parallax-cute parallax-cute-deterministic parallax-triton fla-parallax sdpa-flash sdpa-cudnn"}
  [ -n "${DOCUMENTS:-}" ] && peers=${PEERS:-"parallax-cute parallax-cute-deterministic parallax-triton flex-softmax"}
  timeout ${BENCH_TIMEOUT:-420} python3 scripts/bench_attention.py --shapes $shapes --peers $peers \
    --torch-backend-max-tokens 0 ${CUTE_VARIANTS:+--cute-variants $CUTE_VARIANTS} \
    ${CUTE_BACKWARD_VARIANTS:+--cute-backward-variants $CUTE_BACKWARD_VARIANTS} ${DOCUMENTS:+--documents $DOCUMENTS} \
    ${REPEAT:+--repeat $REPEAT} ${PEER_ROUNDS:+--peer-rounds $PEER_ROUNDS} --json "$out/bench_attention.json" > "$out/bench_attention.log" 2>&1
  echo "== bench_attention (rc=$?)"; grep -v Warning "$out/bench_attention.log" | tail -60
fi
