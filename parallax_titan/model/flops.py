"""Parameter and FLOP arithmetic for every flavor (closed form, checked against real modules in tests).

FLOP conventions (per token, at context length T, attention counted over all T keys as torchtitan does):
- Dense layers: 2 FLOPs per weight forward, 6 forward+backward. The LM head counts even when tied
  to the embedding (torchtitan 0.2.2 drops it then; we count the matmul that actually runs).
- Attention core, per layer and query head, one matmul = 2*D*T FLOPs:
    softmax  forward 2 (QK^T, PV),             backward 4 (dP, dV, dQ, dK)           -> 6
    parallax forward 4 (QK^T, RK^T, PV, P2V),  backward 6 (dAlpha, dV, dQ, dK x2, dR) -> 10
  Recomputation inside fused kernels is not model FLOPs and is not counted (as in MFU).
"""

from __future__ import annotations

from parallax_titan.model.args import ParallaxModelArgs

_FWD_MATMULS = {"softmax": 2, "parallax": 4}
_TRAIN_MATMULS = {"softmax": 6, "parallax": 10}


def attention_parameters(args: ParallaxModelArgs) -> int:
    """Per layer: projections, q/k norms and the probe's extras."""
    d, h, hkv, dim = args.head_dim, args.n_heads, args.n_kv_heads, args.dim
    n = dim * d * (2 * h + 2 * hkv)  # wq, wo, wk, wv
    if args.qk_norm:
        n += 2 * d
    if args.attention == "parallax":
        n += dim * h * d  # wr
        if args.probe_norm:
            n += d
        if args.probe_gate:
            n += dim * h
    return n


def count_parameters(args: ParallaxModelArgs) -> dict[str, int]:
    per_layer = attention_parameters(args) + 3 * args.dim * args.hidden_dim + 2 * args.dim
    embedding = args.vocab_size * args.dim
    head = 0 if args.enable_weight_tying else args.vocab_size * args.dim
    total = embedding + head + args.n_layers * per_layer + args.dim  # + final norm
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def attention_flops_per_token(args: ParallaxModelArgs, seq_len: int, training: bool = True) -> int:
    table = _TRAIN_MATMULS if training else _FWD_MATMULS
    return table[args.attention] * 2 * args.head_dim * seq_len * args.n_heads * args.n_layers


def training_flops_per_token(args: ParallaxModelArgs, seq_len: int) -> int:
    p = count_parameters(args)
    dense = p["non_embedding"] + (args.vocab_size * args.dim if args.enable_weight_tying else 0)
    return 6 * dense + attention_flops_per_token(args, seq_len, training=True)
