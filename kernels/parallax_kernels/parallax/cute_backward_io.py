"""What the CuTe backward (cute_backward.py) reads and writes beside its inputs, made by two small Triton kernels
that run at memory speed (cute_launch.py launches them around the backward):

- `backward_statistics`: per query row (lse, tbar, Drow = dO.o, E = dO.a) as 4 consecutive fp32, padded to whole
  query tiles (padding rows get lse = inf: weight 0), the layout the backward's producer copies per tile;
- `gradients_from_tiles`: the fp32 dQ and dR accumulators, one D x BM tile per (batch head, query tile) in the
  staging order of cute_variant.grad_tile_layout, into (B, H, N, D) in the inputs' dtype, both in one launch.

Plain torch operations for the same work (a permuted copy per gradient reads the tiles with a stride) run at
about a third of the memory's bandwidth (docs/kernels_hopper.md, around the kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from parallax_kernels.parallax.cute_variant import grad_tile_layout
from parallax_kernels.parallax.triton_fused import row_dots

STATS = 4  # lse, tbar, Drow, E
MAX_OFFSET = 2**31 - 1  # the kernels index with 32-bit offsets


def _check_offsets(what: str, elements: int, shape) -> None:
    if elements > MAX_OFFSET:
        raise ValueError(f"parallax_attention backend 'cute': the backward's {what} for q of shape {tuple(shape)} has "
                         f"{elements} elements; its kernels index at most {MAX_OFFSET} (split the batch)")


@triton.jit
def _statistics_kernel(DO, O, A, LSE, TBAR, STATS_OUT, N_CTX, N_PAD, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = rows < N_CTX
    cols = tl.arange(0, HEAD_DIM)
    at = (bh * N_CTX + rows)[:, None] * HEAD_DIM + cols[None, :]
    drow, e = row_dots(DO + at, O + at, A + at, inside)
    lse = tl.load(LSE + bh * N_CTX + rows, mask=inside, other=float("inf"))
    tbar = tl.load(TBAR + bh * N_CTX + rows, mask=inside, other=0.0)
    out = STATS_OUT + (bh * N_PAD + rows) * 4
    stored = rows < N_PAD
    tl.store(out, lse, mask=stored)
    tl.store(out + 1, tbar, mask=stored)
    tl.store(out + 2, drow, mask=stored)
    tl.store(out + 3, e, mask=stored)


def backward_statistics(grad_o, o, a, lse, tbar, n_pad: int) -> torch.Tensor:
    """(B H, n_pad, 4) fp32: lse, tbar, Drow, E per query row; rows past N: inf, 0, 0, 0. grad_o, o, a are
    contiguous (B, H, N, D); lse, tbar contiguous (B, H, N)."""
    b, h, n, d = o.shape
    _check_offsets("statistics and inputs", max(b * h * n * d, b * h * n_pad * STATS), o.shape)
    stats = torch.empty(b * h, n_pad, STATS, dtype=torch.float32, device=o.device)
    block = 64
    _statistics_kernel[(triton.cdiv(n_pad, block), b * h)](grad_o, o, a, lse, tbar, stats, n, n_pad, HEAD_DIM=d,
                                                           BLOCK=block)
    return stats


@triton.jit
def _tiles_kernel(ACC, DQ, DR, N_CTX, M_TILES, HEADS_TOTAL, HEAD_DIM: tl.constexpr, BM: tl.constexpr):
    """One (query tile, batch head, gradient) tile: grad_tile_layout's offsets, gathered from the 16 KB tile (one
    read from memory, the rest from L1), stored as BM rows x HEAD_DIM, HEAD_DIM fastest."""
    m = tl.program_id(0)
    bh = tl.program_id(1)
    which = tl.program_id(2)  # 0: dQ, 1: dR
    q = tl.arange(0, BM)[:, None]  # the tile's column (query)
    dd = tl.arange(0, HEAD_DIM)[None, :]  # its row (head dimension)
    # grad_tile_layout: rows (8, 2, 4, D / 64) : (4, 64, 16 BM, 64 BM), columns (2, 4, BM / 8) : (32, 1, 128)
    row_off = (dd % 8) * 4 + ((dd // 8) % 2) * 64 + ((dd // 16) % 4) * (16 * BM) + (dd // 64) * (64 * BM)
    col_off = (q % 2) * 32 + ((q // 2) % 4) + (q // 8) * 128
    tile = (which * HEADS_TOTAL + bh) * M_TILES + m
    values = tl.load(ACC + tile * (HEAD_DIM * BM) + row_off + col_off)
    rows = m * BM + q
    at = (bh * N_CTX + rows) * HEAD_DIM + dd
    if which == 0:
        tl.store(DQ + at, values.to(DQ.dtype.element_ty), mask=rows < N_CTX)
    else:
        tl.store(DR + at, values.to(DR.dtype.element_ty), mask=rows < N_CTX)


def gradients_from_tiles(acc: torch.Tensor, shape: tuple[int, int, int, int], dtype: torch.dtype, bm: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """acc (2, B H, m_tiles, D BM) fp32: the dQ then the dR tiles in grad_tile_layout's order. Returns dq, dr:
    contiguous (B, H, N, D) in `dtype`, two tensors (a custom op's outputs may not share storage)."""
    b, h, n, d = shape
    _check_offsets("fp32 dQ and dR buffer", acc.numel(), shape)
    if grad_tile_layout(d, bm) != (((8, 2, 4, d // 64), (2, 4, bm // 8)), ((4, 64, 16 * bm, 64 * bm), (32, 1, 128))):
        raise RuntimeError(f"grad_tile_layout({d}, {bm}) is not the layout _tiles_kernel reads")
    m_tiles = acc.shape[2]
    dq = torch.empty(b, h, n, d, dtype=dtype, device=acc.device)
    dr = torch.empty_like(dq)
    _tiles_kernel[(m_tiles, b * h, 2)](acc, dq, dr, n, m_tiles, b * h, HEAD_DIM=d, BM=bm)
    return dq, dr
