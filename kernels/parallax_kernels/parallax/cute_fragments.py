"""Register-fragment views shared by the CuTe DSL attention kernels (cute_kernel.py, cute_backward.py): wgmma
accumulators read as (row, column) tiles, and an accumulator tile turned into the 16-bit A operand of the next
wgmma without leaving registers."""

from __future__ import annotations

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
