"""Parameter and FLOP arithmetic for every flavor (closed form, checked against real modules in tests).

`args` is a ParallaxModelArgs (or anything with its fields); the attention's share comes from its registered
type (parallax_titan.model.attention). FLOP conventions (per token, at context length T, attention counted
over all T keys as torchtitan does):
- Dense layers: 2 FLOPs per weight forward, 6 forward+backward. The LM head counts even when tied
  to the embedding (torchtitan 0.2.2 drops it then; we count the matmul that actually runs).
- Attention core, per layer and query head, one matmul = 2*D*T FLOPs, times the type's matmul count
  (softmax: 2 forward, 6 with the backward; parallax: 4 and 10). Recomputation inside fused kernels is not
  model FLOPs and is not counted (as in MFU).
- `causal=True` counts the keys a causal query attends to instead: query i meets i + 1 keys, (T + 1) / 2 on
  average, so the attention core is (T + 1) / (2 T) of the count above (recomputation still not counted).
"""

from __future__ import annotations

from parallax_titan.model.attention import attention_type


def count_parameters(args) -> dict[str, int]:
    attention = attention_type(args.attention).parameters(args)
    per_layer = attention + 3 * args.dim * args.hidden_dim + 2 * args.dim  # + SwiGLU MLP, two norms
    embedding = args.vocab_size * args.dim
    head = 0 if args.enable_weight_tying else args.vocab_size * args.dim
    total = embedding + head + args.n_layers * per_layer + args.dim  # + final norm
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def attention_flops_per_token(args, seq_len: int, training: bool = True, causal: bool = False) -> float:
    kind = attention_type(args.attention)
    matmuls = kind.training_matmuls if training else kind.forward_matmuls
    keys = (seq_len + 1) / 2 if causal else seq_len  # keys a query meets, on average
    return matmuls * 2 * args.head_dim * keys * args.n_heads * args.n_layers


def training_flops_per_token(args, seq_len: int, causal: bool = False) -> float:
    p = count_parameters(args)
    dense = p["non_embedding"] + (args.vocab_size * args.dim if args.enable_weight_tying else 0)
    return 6 * dense + attention_flops_per_token(args, seq_len, training=True, causal=causal)
