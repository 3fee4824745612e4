"""Triton Parallax decode: split-KV over a contiguous cache, merged inside the same launch.

Grid (B, Hkv, S). A program takes the G = H / Hkv query heads that share one KV head, so each K/V
tile is read once for all of them and for both branches (q.k and r.k). It writes fp32 partials for its
split (kernels/parallax_kernels/parallax_decode/torch_split.py gives the arithmetic), then takes a ticket from a per-(b, kv head) counter;
the program that draws the last ticket merges the S partials and resets the counter to zero, so the
next launch finds it clean. This is the portable fallback with the semantics of the Hopper kernel.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from parallax_kernels.parallax_decode.torch_split import ticket_counters
from parallax_kernels.parallax.triton_fused import INTERPRET, LOG2E, SUPPORTED_DTYPES, _dot, _online_update


@triton.jit
def _decode_kernel(
    Q, R, K, V, O, SEQLENS, PM, PD1, PTS, PO1, PO2, COUNTER,
    s_qb, s_qh, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh,
    scale_log2, H, HKV, L_MAX, SPLITS: tl.constexpr,
    G: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    S_PAD: tl.constexpr, DOT_FP32: tl.constexpr,
):
    b = tl.program_id(0)
    hk = tl.program_id(1)
    split = tl.program_id(2)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_g < G
    heads = hk * G + offs_g
    q_off = b * s_qb + heads[:, None] * s_qh + offs_d[None, :]
    q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
    r = tl.load(R + q_off, mask=row_ok[:, None], other=0.0)

    length = tl.minimum(tl.load(SEQLENS + b), L_MAX)  # never read past the cache
    chunk = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_N) * BLOCK_N
    lo = tl.minimum(split * chunk, length)
    hi = tl.minimum(lo + chunk, length)
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    d1 = tl.zeros([G_PAD], tl.float32)
    t_sum = tl.zeros([G_PAD], tl.float32)
    c = tl.zeros([G_PAD], tl.float32)
    acc1 = tl.zeros([G_PAD, HEAD_DIM], tl.float32)
    acc2 = tl.zeros([G_PAD, HEAD_DIM], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        k = tl.load(k_base + offs_n[:, None] * s_kn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * s_vn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        s1 = _dot(q, tl.trans(k), DOT_FP32) * scale_log2
        t = _dot(r, tl.trans(k), DOT_FP32)
        s1 = tl.where(col_ok[None, :], s1, float("-inf"))
        m_i, d1, t_sum, c, acc1, acc2 = _online_update(s1, t, v, m_i, d1, t_sum, c, acc1, acc2, DOT_FP32)

    if SPLITS == 1:  # nothing to merge: finish here (o = a - sum w (t - tbar) v, as in training)
        d1_safe = tl.where(d1 > 0.0, d1, 1.0)
        out = (acc1 - acc2) / d1_safe[:, None]
        o_off = b * s_ob + heads[:, None] * s_oh + offs_d[None, :]
        tl.store(O + o_off, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    else:
        # partials, laid out (B, H, S[, D])
        row = (b * H + heads) * SPLITS + split
        tl.store(PM + row, m_i, mask=row_ok)
        tl.store(PD1 + row, d1, mask=row_ok)
        tl.store(PTS + row, t_sum, mask=row_ok)
        tl.store(PO1 + row[:, None] * HEAD_DIM + offs_d[None, :], acc1, mask=row_ok[:, None])
        tl.store(PO2 + row[:, None] * HEAD_DIM + offs_d[None, :], acc2, mask=row_ok[:, None])
        # acq_rel: our partial stores are released before the ticket; the last program acquires all
        ticket = tl.atomic_add(COUNTER + b * HKV + hk, 1, sem="acq_rel")
        if ticket == SPLITS - 1:
            _merge(PM, PD1, PTS, PO1, PO2, O, b, hk, s_ob, s_oh, H, SPLITS, G, HEAD_DIM, S_PAD)
            tl.atomic_xchg(COUNTER + b * HKV + hk, 0)


@triton.jit
def _merge(PM, PD1, PTS, PO1, PO2, O, b, hk, s_ob, s_oh, H, SPLITS,
           G: tl.constexpr, HEAD_DIM: tl.constexpr, S_PAD: tl.constexpr):
    """One query row at a time, all splits at once: [S_PAD] and [S_PAD, D] tiles, one round of loads
    per row (.cg: read the other programs' partials from L2, not a stale L1)."""
    offs_s = tl.arange(0, S_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < SPLITS
    for gi in tl.static_range(G):
        h = hk * G + gi
        rows = (b * H + h) * SPLITS + offs_s
        m_s = tl.load(PM + rows, mask=s_ok, other=float("-inf"), cache_modifier=".cg")
        d_s = tl.load(PD1 + rows, mask=s_ok, other=0.0, cache_modifier=".cg")
        ts_s = tl.load(PTS + rows, mask=s_ok, other=0.0, cache_modifier=".cg")
        o1_s = tl.load(PO1 + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None], other=0.0,
                       cache_modifier=".cg")
        o2_s = tl.load(PO2 + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None], other=0.0,
                       cache_modifier=".cg")
        big_m = tl.max(m_s, 0)
        big_m = tl.where(big_m == float("-inf"), 0.0, big_m)
        a_s = tl.exp2(m_s - big_m)  # 0 for empty splits
        d1 = tl.sum(a_s * d_s, 0)
        d1_safe = tl.where(d1 > 0.0, d1, 1.0)
        c = tl.sum(a_s * ts_s, 0) / d1_safe
        c_s = tl.where(d_s > 0.0, ts_s / tl.where(d_s > 0.0, d_s, 1.0), 0.0)
        o1 = tl.sum(a_s[:, None] * o1_s, 0)
        o2 = tl.sum(a_s[:, None] * (o2_s + (c_s - c)[:, None] * o1_s), 0)
        out = (o1 - o2) / d1_safe
        tl.store(O + b * s_ob + h * s_oh + offs_d, out.to(O.dtype.element_ty))


def unavailable_reason(x: torch.Tensor) -> str | None:
    if x.device.type != "cuda" and not (INTERPRET and x.device.type == "cpu"):
        return f"tensors are on {x.device.type}; the Triton decode kernel needs CUDA (or TRITON_INTERPRET=1)"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not supported (bf16, fp16, fp32)"
    d = x.shape[-1]
    if d < 16 or d > 256 or d & (d - 1):
        return f"head_dim {d} is not supported (a power of two in [16, 256])"
    return None


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


MAX_SPLITS = 32  # the merge holds [splits, D] fp32 tiles in registers
CTAS_PER_SM = 1  # H100 sweep (docs/benchmarks.md): one wave of programs was best or within 5%


def default_num_splits(batch: int, kv_heads: int, max_len: int, device: torch.device, block_n: int) -> int:
    """Enough splits for the grid to fill about one wave (CTAS_PER_SM programs per SM), never more
    than there are key tiles: small batches with long caches get split, large batches do not."""
    tiles = max(1, triton.cdiv(max_len, block_n))
    want = triton.cdiv(_sm_count(device) * CTAS_PER_SM, batch * kv_heads)
    return max(1, min(tiles, want, MAX_SPLITS))


def parallax_decode_triton(q, k_cache, v_cache, r, cache_seqlens, *, scale: float, num_splits: int | None = None,
                           block_n: int | None = None, num_warps: int = 4, num_stages: int = 3):
    b, h, d = q.shape
    hkv, l_max = k_cache.shape[1], k_cache.shape[2]
    g = h // hkv
    if q.stride(-1) != 1 or r.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("parallax_decode (triton) needs the last dimension of q, r, k_cache, v_cache contiguous")
    if q.stride() != r.stride():  # the kernel addresses q and r with one set of strides
        q, r = q.contiguous(), r.contiguous()
    splits = num_splits or default_num_splits(b, hkv, l_max, q.device, 64)
    if block_n is None:  # longer key runs per program take the larger tile (H100 sweep)
        block_n = 128 if l_max // splits >= 1024 else 64
    if splits > MAX_SPLITS:
        raise ValueError(f"num_splits {splits} exceeds the kernel's maximum {MAX_SPLITS}")
    out = torch.empty_like(q)
    f32 = dict(dtype=torch.float32, device=q.device)
    parts = 0 if splits == 1 else splits  # one split writes the output directly
    pm = torch.empty(b, h, parts, **f32)
    pd1 = torch.empty(b, h, parts, **f32)
    pts = torch.empty(b, h, parts, **f32)
    po1 = torch.empty(b, h, parts, d, **f32)
    po2 = torch.empty(b, h, parts, d, **f32)
    counter = ticket_counters(q.device, b * hkv)
    seqlens = cache_seqlens.to(device=q.device, dtype=torch.int32)
    _decode_kernel[(b, hkv, splits)](
        q, r, k_cache, v_cache, out, seqlens, pm, pd1, pts, po1, po2, counter,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        scale * LOG2E, h, hkv, l_max, splits,
        G=g, G_PAD=max(16, triton.next_power_of_2(g)), HEAD_DIM=d, BLOCK_N=block_n,
        S_PAD=max(2, triton.next_power_of_2(splits)), DOT_FP32=INTERPRET, num_warps=num_warps, num_stages=num_stages,
    )
    return out
