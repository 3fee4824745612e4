"""Parallax decode: one new query row per (batch, head) against a KV cache, in torch.

Layout (contiguous cache first): q, r (B, H, D); k_cache, v_cache (B, Hkv, L_max, D) with H a multiple
of Hkv; cache_seqlens (B,) int, sequence b sees keys [0, cache_seqlens[b]).

Split-KV arithmetic, shared with the Triton kernel (kernels/parallax_kernels/parallax_decode/triton_split.py): each split of the key
range keeps fp32 partials

    m      running max of s = scale q.k (log2 units)       d1 = sum p1,  p1 = 2^(s - m)
    tsum   sum p1 t, t = r.k                               o1 = sum p1 v
    o2c    sum p1 (t - c) v with c = tsum / d1 (t centred on the split's own tbar, so bf16 products
           of p1 (t - c) stay small; the training forward does the same)

and the merge rescales them to the common max M and re-centres o2c on the global tbar C:

    D1 = sum_s 2^(m_s - M) d1_s     TS = sum_s 2^(m_s - M) tsum_s     C = TS / D1
    O1 = sum_s 2^(m_s - M) o1_s     O2 = sum_s 2^(m_s - M) (o2c_s + (c_s - C) o1_s)
    o  = O1 / D1 - O2 / D1           (= sum_j w_j (1 + tbar - t_j) v_j)

A split with no visible key has m = -inf and contributes nothing.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

LOG2E = 1.4426950408889634


class DecodePartials(NamedTuple):
    m: torch.Tensor  # (B, H, S)
    d1: torch.Tensor  # (B, H, S)
    tsum: torch.Tensor  # (B, H, S)
    o1: torch.Tensor  # (B, H, S, D)
    o2c: torch.Tensor  # (B, H, S, D)


def split_bounds(cache_seqlens: torch.Tensor, num_splits: int, block: int = 1) -> torch.Tensor:
    """(B, S + 1) key offsets of each split: the visible range cut into `num_splits` chunks of a
    multiple of `block` keys (trailing splits may be empty)."""
    lengths = cache_seqlens.to(torch.int64)
    chunk = ((lengths + num_splits - 1) // num_splits + block - 1) // block * block
    bounds = torch.arange(num_splits + 1, device=lengths.device)[None] * chunk[:, None]
    return torch.minimum(bounds, lengths[:, None])


def decode_partials_torch(q, k_cache, v_cache, r, cache_seqlens, scale: float, num_splits: int) -> DecodePartials:
    b, h, d = q.shape
    hkv, l_max = k_cache.shape[1], k_cache.shape[2]
    rep = h // hkv
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 partials, as in the kernels (fp64 stays fp64)
    k = k_cache.repeat_interleave(rep, dim=1).to(acc)  # (B, H, L, D)
    v = v_cache.repeat_interleave(rep, dim=1).to(acc)
    s = torch.einsum("bhd,bhld->bhl", q.to(acc), k) * (scale * LOG2E)
    t = torch.einsum("bhd,bhld->bhl", r.to(acc), k)
    bounds = split_bounds(cache_seqlens, num_splits)  # (B, S + 1)
    pos = torch.arange(l_max, device=q.device)
    # split index of each key position, per batch; keys past the length get index S (dropped)
    split_of = torch.searchsorted(bounds[:, 1:].contiguous(), pos.expand(b, l_max).contiguous(), right=True)
    onehot = torch.nn.functional.one_hot(split_of, num_splits + 1)[..., :num_splits].bool()  # (B, L, S)
    onehot = onehot[:, None]  # (B, 1, L, S)
    s_split = torch.where(onehot, s[..., None], -math.inf)  # (B, H, L, S)
    m = s_split.amax(dim=2)  # (B, H, S)
    m_safe = torch.where(torch.isinf(m), 0.0, m)
    p1 = torch.exp2(s_split - m_safe[:, :, None])  # zero outside the split
    d1 = p1.sum(2)
    tsum = (p1 * t[..., None]).sum(2)
    c = torch.where(d1 > 0, tsum / torch.where(d1 > 0, d1, 1.0), 0.0)
    o1 = torch.einsum("bhls,bhld->bhsd", p1, v)
    o2c = torch.einsum("bhls,bhld->bhsd", p1 * (t[..., None] - c[:, :, None]), v)
    return DecodePartials(m, d1, tsum, o1, o2c)


def merge_partials_torch(p: DecodePartials) -> torch.Tensor:
    """(B, H, D) fp32 output from split partials (see the module docstring)."""
    big_m = p.m.amax(dim=-1, keepdim=True)
    big_m = torch.where(torch.isinf(big_m), 0.0, big_m)
    alpha = torch.exp2(p.m - big_m)  # 0 for empty splits
    d1 = (alpha * p.d1).sum(-1)
    d1_safe = torch.where(d1 > 0, d1, 1.0)
    big_c = (alpha * p.tsum).sum(-1) / d1_safe
    c_s = torch.where(p.d1 > 0, p.tsum / torch.where(p.d1 > 0, p.d1, 1.0), 0.0)
    o1 = (alpha[..., None] * p.o1).sum(-2)
    o2 = (alpha[..., None] * (p.o2c + (c_s - big_c[..., None])[..., None] * p.o1)).sum(-2)
    return (o1 - o2) / d1_safe[..., None]


TICKET_COUNTERS: dict[tuple, torch.Tensor] = {}


def ticket_counters(device: torch.device, n: int, stream: int | None = None) -> torch.Tensor:
    """Zeroed int32 tickets, one per (batch, kv head), for the kernels' in-launch merge: the program that
    draws the last ticket merges and resets its counter, so every launch leaves them at zero. One set per
    stream (default: the device's current one, whose launches run one after another): launches on two streams,
    or a CUDA graph's replay beside eager calls, may overlap and must not draw each other's tickets."""
    device = torch.device(device)
    if stream is None and device.type != "cuda":
        stream = 0
    elif stream is None:
        from parallax_kernels.cute_runtime import raw_stream

        stream = raw_stream(device)
    key = (device, n, stream)
    if key not in TICKET_COUNTERS:
        TICKET_COUNTERS[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return TICKET_COUNTERS[key]


def parallax_decode_torch(q, k_cache, v_cache, r, cache_seqlens, *, scale: float, num_splits: int | None = None):
    out = merge_partials_torch(
        decode_partials_torch(q, k_cache, v_cache, r, cache_seqlens, scale, num_splits or 1)
    )
    return out.to(q.dtype)


def parallax_decode_reference(q, k_cache, v_cache, r, cache_seqlens, *, scale: float) -> torch.Tensor:
    """The definition, densely (no splits): run in float64 for a reference."""
    b, h, d = q.shape
    rep = h // k_cache.shape[1]
    k = k_cache.repeat_interleave(rep, dim=1)
    v = v_cache.repeat_interleave(rep, dim=1)
    s = scale * torch.einsum("bhd,bhld->bhl", q, k)
    t = torch.einsum("bhd,bhld->bhl", r, k)
    visible = torch.arange(k.shape[2], device=q.device)[None, :] < cache_seqlens[:, None]
    s = s.masked_fill(~visible[:, None], -math.inf)
    w = torch.softmax(s, dim=-1)
    tbar = (w * t).sum(-1, keepdim=True)
    return torch.einsum("bhl,bhld->bhd", w * (1 + tbar - t), v)
