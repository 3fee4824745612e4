"""Softmax attention: torchtitan's Qwen3 Attention itself (wq, wk, wv, wo, per-head q/k RMSNorm, RoPE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchtitan.models.qwen3.model.model import Attention, apply_rotary_emb

from parallax_titan.model.attention.registry import AttentionType, Projected, register


def project_qkv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, N, heads, head_dim) after the q/k norms, before RoPE: shared by every attention type."""
    bs, seqlen, _ = x.shape
    # -1 heads: tensor parallelism may shard the projections
    xq = attn.wq(x).view(bs, seqlen, -1, attn.head_dim)
    xk = attn.wk(x).view(bs, seqlen, -1, attn.head_dim)
    xv = attn.wv(x).view(bs, seqlen, -1, attn.head_dim)
    if attn.q_norm is not None:
        xq = attn.q_norm(xq)
    if attn.k_norm is not None:
        xk = attn.k_norm(xk)
    return xq, xk, xv


def project(attn: Attention, x: torch.Tensor, rope_cache: torch.Tensor, positions=None) -> Projected:
    """What torchtitan's Attention.forward computes before its attention core."""
    xq, xk, xv = project_qkv(attn, x)
    xq, xk = apply_rotary_emb(xq, xk, rope_cache, positions)
    return Projected(xq, xk, xv)


def prefill(attn: Attention, q, k, v, extras, *, backend: str) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=True)


def decode(attn: Attention, q, k_cache, v_cache, extras, *, cache_seqlens, backend: str, num_splits) -> torch.Tensor:
    visible = torch.arange(k_cache.shape[2], device=q.device)[None, :] < cache_seqlens[:, None]  # (B, L)
    return F.scaled_dot_product_attention(
        q[:, :, None], k_cache, v_cache, attn_mask=visible[:, None, None], scale=attn.scaling, enable_gqa=True
    )[:, :, 0]


def parameters(args) -> int:
    d, h, hkv, dim = args.head_dim, args.n_heads, args.n_kv_heads, args.dim
    n = dim * d * (2 * h + 2 * hkv)  # wq, wo, wk, wv
    if args.qk_norm:
        n += 2 * d
    return n


SOFTMAX = register(AttentionType(
    name="softmax",
    module=Attention,
    project=project,
    prefill=prefill,
    decode=decode,
    forward_matmuls=2,  # QK^T, PV
    training_matmuls=6,  # + dP, dV, dQ, dK
    parameters=parameters,
    per_head_axes={"wq": 0, "wk": 0, "wv": 0, "wo": 1},
    document_masking="flex",
))
