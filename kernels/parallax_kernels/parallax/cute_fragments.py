"""Register-fragment views shared by the CuTe DSL attention kernels (cute_kernel.py, cute_backward.py): wgmma
accumulators read as (row, column) tiles, an accumulator tile turned into the 16-bit A operand of the next
wgmma without leaving registers, two adjacent columns packed for one 32-bit store, and a shared-memory tile
read transposed."""

from __future__ import annotations

import cutlass
import cutlass.cute as cute


def mn_view(acc: cute.Tensor) -> cute.Tensor:
    """View a wgmma accumulator fragment ((2, 2, N/8), M reps, N reps) as (rows, columns): row 0 is the thread's
    row (warp 16 + lane / 4), row 1 that row + 8 (then the M reps); columns in pairs of 2 per 8."""
    flat = cute.make_layout(acc.layout.shape)
    mn = cute.make_layout(
        ((flat.shape[0][1], flat.shape[1]), (flat.shape[0][0], flat.shape[0][2], flat.shape[2])),
        stride=((flat.stride[0][1], flat.stride[1]), (flat.stride[0][0], flat.stride[0][2], flat.stride[2])),
    )
    return cute.make_tensor(acc.iterator, cute.composition(acc.layout, mn))


def as_a_operand(acc: cute.Tensor, dtype, k: int) -> cute.Tensor:
    """The fp32 accumulator of a (64, k) tile converted to the 16-bit A operand of a K = k wgmma: the C
    fragment's value order ((2, 2, k/8)) is the A fragment's ((2, 2, 2), 1, k/16)."""
    frag = cute.make_rmem_tensor(cute.make_layout(((2, 2, 2), 1, k // 16)), dtype)
    as_acc = cute.make_tensor(frag.iterator, cute.make_layout(acc.layout.shape))
    as_acc.store(acc.load().to(dtype))
    return frag


def pack_pair(lo, hi, dtype) -> cutlass.Uint32:
    """Two fp32 values rounded to the 16-bit `dtype` and packed into one 32-bit word (lo first), for one store of
    a thread's two adjacent accumulator columns."""
    pair = cute.make_rmem_tensor((2,), dtype)
    pair[0] = lo.to(dtype)
    pair[1] = hi.to(dtype)
    return cute.recast_tensor(pair, cutlass.Uint32)[0]


def transpose_view(t: cute.Tensor) -> cute.Tensor:
    """The same shared-memory tile with its first two modes swapped (a K-major operand read MN-major)."""
    shape = (t.shape[1], t.shape[0], *t.shape[2:])
    return cute.composition(t, cute.make_ordered_layout(shape, order=(1, 0, *range(2, cute.rank(t)))))
