"""Fused Parallax attention in Triton: the `backend="triton"` of parallax_attention.

Forward (one pass over K/V tiles per query tile; both score branches share the online max, the
rescale and the K/V loads):
    S1 = scale Q K^T (log2 domain), T = R K^T, m = running max of S1,
    P1 = exp2(S1 - m), d1 = sum P1, O1 = P1 V, a = O1 / d1 (softmax output), tbar = sum P1 T / d1,
    P2 = P1 (T - c), O2 = P2 V with c the running tbar estimate, o = a - O2 / d1
  The paper's form o = (1 + d2/d1) O1/d1 - O2/d1 (P2 = P1 T) is the same with c = 0; centring T on
  the running tbar (re-centring costs one FMA on O2 per tile, like the max rescale) avoids the
  cancellation between two terms of size |tbar| |a|, which costs accuracy in bf16.
It stores o, a, lse (log2 domain) and tbar: the backward needs lse and tbar to rebuild the weights,
and a for E_i = dO_i . a_i.

Backward (FlashAttention-2 style: recompute tiles, no N x N tensor; derived in docs/design.md):
    Drow_i = dO_i . o_i, E_i = dO_i . a_i                     (row dot products, a small kernel)
    dalpha = dO V^T, alpha = w (1 + tbar - t), dV = alpha^T dO
    dt = w (E - dalpha), ds = w (dalpha (1 + tbar - t) + E t - Drow - E tbar)
       = w (dalpha (1 - tc) + E tc - Drow) with tc = t - tbar (the form used, for accuracy)
    dQ = scale ds K, dR = dt K, dK = scale ds^T Q + dt^T R
  one kernel per key tile for dK, dV (looping over the query heads of its GQA group, so no atomics)
  and one per query tile for dQ, dR: 11 tile matmuls, S1, T and dalpha computed twice. Backend
  "triton_atomic" instead adds each key tile's dQ, dR shares into fp32 buffers with atomics from the
  first kernel (FlashAttention 2's choice): 8 matmuls and one recomputation, but the sums' order varies,
  so dQ, dR are not bitwise reproducible run to run. "triton" stays the deterministic default.

In the forward and the dQ/dR kernel, masks are built only where a tile needs one: the causal diagonal,
the sequence's end, and (with documents) every tile. Key tiles that every row sees whole run in a loop of
their own without one (the FlashAttention Triton tutorial's split of the causal loop). The dK/dV kernel
keeps one masked loop (see there).

Document masking: keys in another document (document_ids differ) are invisible; per-token document
start/end bounds let tiles that lie wholly outside a query's document be skipped. document_ids must
label contiguous segments (packed documents), as the model builds them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from parallax_kernels.batching import fold, unfold

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# PARALLAX_TRITON_AUTOTUNE=0: use each kernel's first config, no tuning (fast tests).
AUTOTUNE = os.environ.get("PARALLAX_TRITON_AUTOTUNE", "1") != "0"


def _configs(kind: str):
    if INTERPRET:  # the CPU interpreter: one small tile, no tuning
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    if kind == "fwd":
        shapes = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 128, 4, 3)]
    else:
        # the last three: thin-by-wide tiles as in the FlashAttention Triton tutorial's backward,
        # at 8 warps, and 32 x 64 at 8 warps, where neither backward kernel spills at head_dim 128 (every other
        # candidate does: scripts/kernel_resources.py, docs/benchmarks.md)
        shapes = [(64, 64, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2), (64, 32, 4, 3),
                  (32, 128, 8, 2), (128, 32, 8, 2), (32, 64, 8, 2)]
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]
    return configs if AUTOTUNE else configs[:1]


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    # Triton's CPU interpreter (3.9) miscomputes tl.dot on bf16/fp16 operands; upcasting is what
    # the tensor cores do anyway (exact products, fp32 accumulation). Off on GPUs.
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    if a.dtype == tl.float32:  # fp32 inputs: full fp32 products, not TF32 (fp32 is not the fast path)
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _query_tile_keys(pid_m, b, N_CTX, DOC_START, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key range [lo, hi) a query tile can see: up to its last row if causal, from its first row's
    document start (rounded down to a key tile) if documents are masked."""
    lo = 0
    hi = N_CTX
    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, N_CTX)
    if HAS_DOC:
        first = tl.load(DOC_START + b * N_CTX + pid_m * BLOCK_M)
        lo = (first // BLOCK_N) * BLOCK_N
    return lo, hi


@triton.jit
def _unmasked_keys_end(pid_m, lo, N_CTX, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """End of the key tiles [lo, mid) that every row of query tile pid_m sees whole: below its
    diagonal and inside the sequence. They need no mask; the tiles from mid on (the diagonal, the
    sequence's end) do. With documents every tile is masked: their edges vary by row."""
    mid = (N_CTX // BLOCK_N) * BLOCK_N
    if CAUSAL:
        mid = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N
    if HAS_DOC:
        mid = lo
    return mid


@triton.jit
def _load_kv_tile(k_base, v_base, offs_n, offs_d, s_kn, s_vn, N_CTX):
    col_ok = offs_n < N_CTX
    k = tl.load(k_base + offs_n[:, None] * s_kn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(v_base + offs_n[:, None] * s_vn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    return k, v, col_ok


@triton.jit
def _online_update(s1, t, v, m_i, d1, t_sum, c, acc1, acc2, DOT_FP32: tl.constexpr):
    """One key tile of the streaming forward (shared with the decode kernel): rescale to the new
    running max, accumulate d1 = sum P1, t_sum = sum P1 t, acc1 = sum P1 v and acc2 = sum P1 (t - c) v."""
    m_new = tl.maximum(m_i, tl.max(s1, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p1 = tl.exp2(s1 - m_safe[:, None])
    d1 = d1 * alpha + tl.sum(p1, 1)
    t_sum = t_sum * alpha + tl.sum(p1 * t, 1)
    # Centre t on the running tbar so P2 = P1 (t - c) stays small in bf16: moving the centre
    # from c to c_new adds (c - c_new) * sum P1 v to acc2 (like the max rescale, one FMA).
    c_new = tl.where(d1 > 0.0, t_sum / tl.where(d1 > 0.0, d1, 1.0), c)
    acc1 = acc1 * alpha[:, None]
    acc2 = acc2 * alpha[:, None] + (c - c_new)[:, None] * acc1
    p2 = p1 * (t - c_new[:, None])
    acc1 += _dot(p1.to(v.dtype), v, DOT_FP32)
    acc2 += _dot(p2.to(v.dtype), v, DOT_FP32)
    return m_new, d1, t_sum, c_new, acc1, acc2


@triton.autotune(configs=_configs("fwd"), key=["N_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_DOC"])
@triton.jit
def _fwd_kernel(
    Q, K, V, R, O, A, LSE, TBAR, DOC, DOC_START,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
    N_CTX, N_BUCKET, H, GROUP, scale_log2,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX
    q_off = b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :]
    q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
    r = tl.load(R + q_off, mask=row_ok[:, None], other=0.0)
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    d1 = tl.zeros([BLOCK_M], tl.float32)
    t_sum = tl.zeros([BLOCK_M], tl.float32)  # sum P1 t (uncentred), for tbar
    c = tl.zeros([BLOCK_M], tl.float32)  # running centre of t: the current tbar estimate
    acc1 = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)  # sum P1 v
    acc2 = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)  # sum P1 (t - c) v

    lo, hi = _query_tile_keys(pid_m, b, N_CTX, DOC_START, CAUSAL, HAS_DOC, BLOCK_M, BLOCK_N)
    mid = _unmasked_keys_end(pid_m, lo, N_CTX, CAUSAL, HAS_DOC, BLOCK_M, BLOCK_N)
    for start_n in range(lo, mid, BLOCK_N):  # no mask to build
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v, _ = _load_kv_tile(k_base, v_base, offs_n, offs_d, s_kn, s_vn, N_CTX)
        s1 = _dot(q, tl.trans(k), DOT_FP32) * scale_log2
        t = _dot(r, tl.trans(k), DOT_FP32)
        m_i, d1, t_sum, c, acc1, acc2 = _online_update(s1, t, v, m_i, d1, t_sum, c, acc1, acc2, DOT_FP32)
    if HAS_DOC:
        doc_q = tl.load(DOC + b * N_CTX + offs_m, mask=row_ok, other=-1)
    for start_n in range(mid, hi, BLOCK_N):  # the diagonal, the sequence's end, document edges
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v, col_ok = _load_kv_tile(k_base, v_base, offs_n, offs_d, s_kn, s_vn, N_CTX)
        s1 = _dot(q, tl.trans(k), DOT_FP32) * scale_log2
        t = _dot(r, tl.trans(k), DOT_FP32)
        valid = col_ok[None, :]
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= offs_n[None, :])
        if HAS_DOC:
            doc_k = tl.load(DOC + b * N_CTX + offs_n, mask=col_ok, other=-2)
            valid = valid & (doc_q[:, None] == doc_k[None, :])
        s1 = tl.where(valid, s1, float("-inf"))
        m_i, d1, t_sum, c, acc1, acc2 = _online_update(s1, t, v, m_i, d1, t_sum, c, acc1, acc2, DOT_FP32)

    d1_safe = tl.where(d1 > 0.0, d1, 1.0)  # padded rows beyond N_CTX
    a = acc1 / d1_safe[:, None]
    tbar = c  # = t_sum / d1 after the last tile
    # o = sum w (1 + tbar - t) v = a - sum w (t - tbar) v: no cancellation once centred
    o = a - acc2 / d1_safe[:, None]
    o_off = b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :]
    tl.store(O + o_off, o.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(A + o_off, a.to(A.dtype.element_ty), mask=row_ok[:, None])
    row_off = pid_bh * N_CTX + offs_m
    tl.store(LSE + row_off, m_i + tl.log2(d1_safe), mask=row_ok)
    tl.store(TBAR + row_off, tbar, mask=row_ok)


@triton.jit
def _bwd_tile(q, r, do, k, v, lse, tb, drow, e, offs_m, offs_n, doc_q, doc_k, N_CTX, scale_log2,
              CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, MASKED: tl.constexpr, DOT_FP32: tl.constexpr):
    """One (query tile x key tile) of the backward: weights w, centred probe scores t - tbar, and
    the score gradients dt, ds, each [BLOCK_M, BLOCK_N]. MASKED=False: a tile every row sees whole."""
    s1 = _dot(q, tl.trans(k), DOT_FP32) * scale_log2
    t = _dot(r, tl.trans(k), DOT_FP32)
    w = tl.exp2(s1 - lse[:, None])
    if MASKED:
        valid = (offs_m[:, None] < N_CTX) & (offs_n[None, :] < N_CTX)
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= offs_n[None, :])
        if HAS_DOC:
            valid = valid & (doc_q[:, None] == doc_k[None, :])
        w = tl.where(valid, w, 0.0)
    tc = t - tb[:, None]  # centred probe scores t - tbar
    dalpha = _dot(do, tl.trans(v), DOT_FP32)
    dt = w * (e[:, None] - dalpha)
    ds = w * (dalpha * (1.0 - tc) + e[:, None] * tc - drow[:, None])
    return w, tc, dt, ds


@triton.jit
def _dkdv_rows(dk, dv, k, v, offs_n, doc_k, start, end, b, h, Q, R, DO, LSE, TBAR, DROW, E, DQ, DR, DOC,
               s_qb, s_qh, s_qn, s_ob, s_oh, s_on, s_dqb, s_dqh, s_dqn, N_CTX, H, scale, scale_log2,
               HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, ATOMIC_DQ: tl.constexpr,
               BLOCK_M: tl.constexpr, DOT_FP32: tl.constexpr):
    """Query tiles [start, end) of head h against one key tile: their share of dK, dV (and of dQ, dR
    with ATOMIC_DQ, added with atomics)."""
    offs_d = tl.arange(0, HEAD_DIM)
    row_base = (b * H + h) * N_CTX
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_CTX
        q_off = b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :]
        q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
        r = tl.load(R + q_off, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0)
        tb = tl.load(TBAR + row_base + offs_m, mask=row_ok, other=0.0)
        drow = tl.load(DROW + row_base + offs_m, mask=row_ok, other=0.0)
        e = tl.load(E + row_base + offs_m, mask=row_ok, other=0.0)
        doc_q = offs_m
        if HAS_DOC:
            doc_q = tl.load(DOC + b * N_CTX + offs_m, mask=row_ok, other=-1)
        w, tc, dt, ds = _bwd_tile(q, r, do, k, v, lse, tb, drow, e, offs_m, offs_n, doc_q, doc_k,
                                  N_CTX, scale_log2, CAUSAL, HAS_DOC, True, DOT_FP32)
        alpha = w * (1.0 - tc)
        dv += _dot(tl.trans(alpha.to(do.dtype)), do, DOT_FP32)
        dk += scale * _dot(tl.trans(ds.to(q.dtype)), q, DOT_FP32) + _dot(tl.trans(dt.to(r.dtype)), r, DOT_FP32)
        if ATOMIC_DQ:
            dq_off = b * s_dqb + h * s_dqh + offs_m[:, None] * s_dqn + offs_d[None, :]
            dq_part = scale * _dot(ds.to(k.dtype), k, DOT_FP32)
            tl.atomic_add(DQ + dq_off, dq_part, mask=row_ok[:, None], sem="relaxed")
            tl.atomic_add(DR + dq_off, _dot(dt.to(k.dtype), k, DOT_FP32), mask=row_ok[:, None], sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_dkdv(
    Q, K, V, R, DO, LSE, TBAR, DROW, E, DK, DV, DQ, DR, DOC, DOC_START, DOC_END,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
    s_dkb, s_dkh, s_dkn, s_dqb, s_dqh, s_dqn,
    N_CTX, N_BUCKET, H, HKV, GROUP, scale, scale_log2,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """dK, dV of one key tile; with ATOMIC_DQ also this tile's share of dQ, dR, added into fp32 DQ, DR
    (zeroed by the caller) with atomics, so that the backward is one kernel instead of two."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N_CTX
    k = tl.load(K + b * s_kb + hk * s_kh + offs_n[:, None] * s_kn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(V + b * s_vb + hk * s_vh + offs_n[:, None] * s_vn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    lo = 0
    hi = N_CTX
    if CAUSAL:
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    doc_k = offs_n
    if HAS_DOC:
        doc_k = tl.load(DOC + b * N_CTX + offs_n, mask=col_ok, other=-2)
        last = tl.minimum(pid_n * BLOCK_N + BLOCK_N, N_CTX) - 1
        hi = tl.load(DOC_END + b * N_CTX + last)
        if not CAUSAL:  # queries before the first key's document cannot see this tile
            lo = (tl.load(DOC_START + b * N_CTX + pid_n * BLOCK_N) // BLOCK_M) * BLOCK_M
    # one loop, every tile masked: a separate loop for the unmasked tiles (as the forward and dQ/dR
    # kernels have) grew its stack frame 4x on sm_90, registers at 255 (scripts/kernel_resources.py)
    for g in range(GROUP):
        h = hk * GROUP + g
        dk, dv = _dkdv_rows(dk, dv, k, v, offs_n, doc_k, lo, hi, b, h, Q, R, DO, LSE, TBAR, DROW, E, DQ, DR, DOC,
                            s_qb, s_qh, s_qn, s_ob, s_oh, s_on, s_dqb, s_dqh, s_dqn, N_CTX, H, scale, scale_log2,
                            HEAD_DIM, CAUSAL, HAS_DOC, ATOMIC_DQ, BLOCK_M, DOT_FP32)
    dkv_off = b * s_dkb + hk * s_dkh + offs_n[:, None] * s_dkn + offs_d[None, :]
    tl.store(DK + dkv_off, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + dkv_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dqdr_keys(dq, dr, q, r, do, lse, tb, drow, e, offs_m, doc_q, start, end, b, k_base, v_base, DOC,
               s_kn, s_vn, N_CTX, scale_log2, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr,
               MASKED: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr):
    """Key tiles [start, end) against one query tile: their share of dQ (unscaled) and dR."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v, col_ok = _load_kv_tile(k_base, v_base, offs_n, offs_d, s_kn, s_vn, N_CTX)
        doc_k = offs_n
        if HAS_DOC:
            doc_k = tl.load(DOC + b * N_CTX + offs_n, mask=col_ok, other=-2)
        w, tc, dt, ds = _bwd_tile(q, r, do, k, v, lse, tb, drow, e, offs_m, offs_n, doc_q, doc_k,
                                  N_CTX, scale_log2, CAUSAL, HAS_DOC, MASKED, DOT_FP32)
        dq += _dot(ds.to(k.dtype), k, DOT_FP32)
        dr += _dot(dt.to(k.dtype), k, DOT_FP32)
    return dq, dr


_BWD_KEY = ["N_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_DOC"]
_bwd_dkdv_kernel = triton.autotune(configs=_configs("bwd"), key=_BWD_KEY)(_bwd_dkdv)
# the one-kernel backward: autotuning runs each config on the real buffers, so it must put DQ, DR back
# as they were (zeros) after each trial, or the trials' atomics would stay in the gradients
_bwd_fused_kernel = triton.autotune(configs=_configs("bwd"), key=_BWD_KEY, restore_value=["DQ", "DR"])(_bwd_dkdv)


@triton.autotune(configs=_configs("bwd"), key=_BWD_KEY)
@triton.jit
def _bwd_dqdr_kernel(
    Q, K, V, R, DO, LSE, TBAR, DROW, E, DQ, DR, DOC, DOC_START,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
    s_dqb, s_dqh, s_dqn,
    N_CTX, N_BUCKET, H, GROUP, scale, scale_log2,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX
    q_off = b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :]
    q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
    r = tl.load(R + q_off, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    row = pid_bh * N_CTX + offs_m
    lse = tl.load(LSE + row, mask=row_ok, other=0.0)
    tb = tl.load(TBAR + row, mask=row_ok, other=0.0)
    drow = tl.load(DROW + row, mask=row_ok, other=0.0)
    e = tl.load(E + row, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    dr = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh

    lo, hi = _query_tile_keys(pid_m, b, N_CTX, DOC_START, CAUSAL, HAS_DOC, BLOCK_M, BLOCK_N)
    mid = _unmasked_keys_end(pid_m, lo, N_CTX, CAUSAL, HAS_DOC, BLOCK_M, BLOCK_N)
    doc_q = offs_m
    if HAS_DOC:
        doc_q = tl.load(DOC + b * N_CTX + offs_m, mask=row_ok, other=-1)
    dq, dr = _dqdr_keys(dq, dr, q, r, do, lse, tb, drow, e, offs_m, doc_q, lo, mid, b, k_base, v_base, DOC,
                        s_kn, s_vn, N_CTX, scale_log2, HEAD_DIM, CAUSAL, HAS_DOC, False, BLOCK_N, DOT_FP32)
    dq, dr = _dqdr_keys(dq, dr, q, r, do, lse, tb, drow, e, offs_m, doc_q, mid, hi, b, k_base, v_base, DOC,
                        s_kn, s_vn, N_CTX, scale_log2, HEAD_DIM, CAUSAL, HAS_DOC, True, BLOCK_N, DOT_FP32)
    tl.store(DQ + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dqn + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])
    tl.store(DR + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dqn + offs_d[None, :], dr.to(DR.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def row_dots(do_ptrs, o_ptrs, a_ptrs, inside):
    """Per row of a (rows, HEAD_DIM) block: Drow = dO . o and E = dO . a in fp32, each tensor read once; rows
    not `inside` give 0. Shared with the CuTe backward's statistics kernel (cute_backward_io.py)."""
    do = tl.load(do_ptrs, mask=inside[:, None], other=0.0).to(tl.float32)
    o = tl.load(o_ptrs, mask=inside[:, None], other=0.0).to(tl.float32)
    a = tl.load(a_ptrs, mask=inside[:, None], other=0.0).to(tl.float32)
    return tl.sum(do * o, 1), tl.sum(do * a, 1)


@triton.jit
def _bwd_preprocess_kernel(DO, O, A, DROW, E, s_ob, s_oh, s_on, s_db, s_dh, s_dn, N_CTX, H,
                           HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    o_off = b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :]
    do_off = b * s_db + h * s_dh + offs_m[:, None] * s_dn + offs_d[None, :]
    inside = offs_m < N_CTX
    drow, e = row_dots(DO + do_off, O + o_off, A + o_off, inside)
    row = pid_bh * N_CTX + offs_m
    tl.store(DROW + row, drow, mask=inside)
    tl.store(E + row, e, mask=inside)


def row_dot_products(do, o, a, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(Drow, E) of the backward, (B, H, N) fp32; `fused=False` is the plain torch version."""
    if not fused:
        return (do.float() * o.float()).sum(-1), (do.float() * a.float()).sum(-1)
    b, h, n, d = o.shape
    drow = torch.empty(b, h, n, dtype=torch.float32, device=o.device)
    e = torch.empty_like(drow)
    block = 64
    _bwd_preprocess_kernel[(triton.cdiv(n, block), b * h)](
        do, o, a, drow, e, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
        n, h, HEAD_DIM=d, BLOCK=block,
    )
    return drow, e


# --- launchers ---------------------------------------------------------------------------------

SUPPORTED_HEAD_DIMS = (8, 16, 32, 64, 128)
# tl.dot needs K >= 16: smaller heads (MAD's width-128 models have 16 heads of 8) are zero-padded to
# this; zero columns change no dot product and give zero output columns, which are cut off again
MIN_KERNEL_HEAD_DIM = 16
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def unavailable_reason(x: torch.Tensor) -> str | None:
    if x.device.type != "cuda" and not (INTERPRET and x.device.type == "cpu"):
        return f"tensors are on {x.device.type}; the Triton kernel needs CUDA (or TRITON_INTERPRET=1 for CPU tests)"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not supported (bf16, fp16, fp32)"
    if x.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {x.shape[-1]} is not supported (one of {SUPPORTED_HEAD_DIMS})"
    return None


def document_bounds(doc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: index where its document starts, and (exclusive) where it ends."""
    b, n = doc.shape
    idx = torch.arange(n, device=doc.device).expand(b, n)
    new = torch.ones_like(doc, dtype=torch.bool)
    new[:, 1:] = doc[:, 1:] != doc[:, :-1]
    start = torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=1).values
    last = torch.ones_like(new)
    last[:, :-1] = new[:, 1:]
    end_rev = torch.where(last, idx + 1, torch.full_like(idx, n)).flip(1).cummin(dim=1).values.flip(1)
    return start.to(torch.int32).contiguous(), end_rev.to(torch.int32).contiguous()


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("parallax::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
    causal: bool, scale: float, document_ids: torch.Tensor | None, atomic_dq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # atomic_dq is the backward's (one kernel, atomics for dQ/dR); the forward only carries it there
    q, k, v, r = (_last_dim_contiguous(x) for x in (q, k, v, r))
    if r.stride() != q.stride():  # the kernels address q and r with one set of strides
        q, r = q.contiguous(), r.contiguous()
    b, h, n, d = q.shape
    hkv = k.shape[1]
    # outputs are always contiguous (B, H, N, D): the fake implementation promises exactly this
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    a = torch.empty_like(o)
    lse = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
    tbar = torch.empty_like(lse)
    has_doc = document_ids is not None
    doc = document_ids.to(torch.int32).contiguous() if has_doc else lse
    start = document_bounds(document_ids)[0] if has_doc else lse
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), b * h)  # noqa: E731
    _fwd_kernel[grid](
        q, k, v, r, o, a, lse, tbar, doc, start,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        n, triton.next_power_of_2(n), h, h // hkv, scale * LOG2E,
        HEAD_DIM=d, CAUSAL=causal, HAS_DOC=has_doc, DOT_FP32=INTERPRET,
    )
    return o, a, lse, tbar


@attention_fwd.register_fake
def _(q, k, v, r, causal, scale, document_ids, atomic_dq):
    b, h, n, _ = q.shape
    stats = q.new_empty(b, h, n, dtype=torch.float32)
    return q.new_empty(q.shape), q.new_empty(q.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("parallax::attention_bwd", mutates_args=())
def attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
    o: torch.Tensor, a: torch.Tensor, lse: torch.Tensor, tbar: torch.Tensor,
    causal: bool, scale: float, document_ids: torch.Tensor | None, atomic_dq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, r = (_last_dim_contiguous(x) for x in (q, k, v, r))
    do = grad_out.contiguous() if grad_out.stride() != o.stride() else grad_out
    if r.stride() != q.stride():
        q, r = q.contiguous(), r.contiguous()
    b, h, n, d = q.shape
    hkv = k.shape[1]
    drow, e = row_dot_products(do, o, a)
    # atomic_dq: the key-tile kernel adds its dQ/dR shares into fp32 zeros (not bitwise reproducible:
    # the order of the adds varies); else a second kernel per query tile writes them (deterministic)
    new_grad = torch.zeros if atomic_dq else torch.empty
    dq, dr = (new_grad(q.shape, dtype=torch.float32 if atomic_dq else q.dtype, device=q.device) for _ in range(2))
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty_like(dk)
    has_doc = document_ids is not None
    if has_doc:
        doc = document_ids.to(torch.int32).contiguous()
        start, end = document_bounds(document_ids)
    else:
        doc = start = end = lse
    grid_kv = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), b * hkv)  # noqa: E731
    (_bwd_fused_kernel if atomic_dq else _bwd_dkdv_kernel)[grid_kv](
        q, k, v, r, do, lse, tbar, drow, e, dk, dv, dq, dr, doc, start, end,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2), dq.stride(0), dq.stride(1), dq.stride(2),
        n, triton.next_power_of_2(n), h, hkv, h // hkv, scale, scale * LOG2E,
        HEAD_DIM=d, CAUSAL=causal, HAS_DOC=has_doc, ATOMIC_DQ=atomic_dq, DOT_FP32=INTERPRET,
    )
    if atomic_dq:
        return dq.to(q.dtype), dk, dv, dr.to(q.dtype)
    grid_q = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), b * h)  # noqa: E731
    _bwd_dqdr_kernel[grid_q](
        q, k, v, r, do, lse, tbar, drow, e, dq, dr, doc, start,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        n, triton.next_power_of_2(n), h, h // hkv, scale, scale * LOG2E,
        HEAD_DIM=d, CAUSAL=causal, HAS_DOC=has_doc, DOT_FP32=INTERPRET,
    )
    return dq, dk, dv, dr


@attention_bwd.register_fake
def _(grad_out, q, k, v, r, o, a, lse, tbar, causal, scale, document_ids, atomic_dq):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), r.new_empty(r.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, r, causal, scale, document_ids, atomic_dq = inputs
    o, a, lse, tbar = output
    ctx.save_for_backward(q, k, v, r, o, a, lse, tbar, document_ids)
    ctx.causal, ctx.scale, ctx.atomic_dq = causal, scale, atomic_dq


def _backward(ctx, grad_o, grad_a, grad_lse, grad_tbar):
    q, k, v, r, o, a, lse, tbar, document_ids = ctx.saved_tensors
    # grad_o in o's layout, made so outside the op where torch.compile can fuse the copy into its producer
    grad_o = grad_o.contiguous()
    dq, dk, dv, dr = attention_bwd(grad_o, q, k, v, r, o, a, lse, tbar, ctx.causal, ctx.scale, document_ids,
                                   ctx.atomic_dq)
    return dq, dk, dv, dr, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# under vmap (an ensemble of models, eval/mad/train.py train_sweep) the vmapped dim joins the batch: one launch
@attention_fwd.register_vmap
def _(info, in_dims, *args):
    return unfold(info.batch_size, attention_fwd(*fold(info.batch_size, in_dims, args)))


@attention_bwd.register_vmap
def _(info, in_dims, *args):
    return unfold(info.batch_size, attention_bwd(*fold(info.batch_size, in_dims, args)))


def parallax_attention_triton(q, k, v, r, *, causal: bool, scale: float, document_ids=None,
                              atomic_dq: bool = False) -> torch.Tensor:
    """Fused Parallax attention; shapes as parallax_titan.ops.parallax_attention (already checked).
    atomic_dq: the backward in one kernel, dQ/dR accumulated with fp32 atomics (backend "triton_atomic")."""
    d = q.shape[-1]
    if d < MIN_KERNEL_HEAD_DIM:  # exact: see MIN_KERNEL_HEAD_DIM (the scale is already that of d)
        q, k, v, r = (torch.nn.functional.pad(x, (0, MIN_KERNEL_HEAD_DIM - d)) for x in (q, k, v, r))
    return attention_fwd(q, k, v, r, causal, scale, document_ids, atomic_dq)[0][..., :d]
