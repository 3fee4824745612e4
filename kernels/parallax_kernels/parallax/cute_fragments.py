"""Register-fragment views shared by the CuTe DSL attention kernels (cute_kernel.py, cute_backward.py): wgmma
accumulators read as (row, column) tiles, an accumulator tile turned into the 16-bit A operand of the next
wgmma without leaving registers, two adjacent columns packed for one 32-bit store, a shared-memory tile
read transposed, and what a thread's accumulator rows see of packed documents."""

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
    frag = a_operand_fragment(dtype, k)
    store_as_a_operand(acc, frag)
    return frag


def a_operand_fragment(dtype, k: int) -> cute.Tensor:
    """Registers for the 16-bit A operand of a (64, k) tile, to be filled by store_as_a_operand."""
    return cute.make_rmem_tensor(cute.make_layout(((2, 2, 2), 1, k // 16)), dtype)


def store_as_a_operand(acc: cute.Tensor, frag: cute.Tensor) -> None:
    """Write the fp32 accumulator `acc` into the A-operand fragment `frag` (as_a_operand's conversion)."""
    as_acc = cute.make_tensor(frag.iterator, cute.make_layout(acc.layout.shape))
    as_acc.store(acc.load().to(frag.element_type))


def pack_pair(lo, hi, dtype) -> cutlass.Uint32:
    """Two fp32 values rounded to the 16-bit `dtype` and packed into one 32-bit word (lo first), for one store of
    a thread's two adjacent accumulator columns."""
    pair = cute.make_rmem_tensor((2,), dtype)
    pair[0] = lo.to(dtype)
    pair[1] = hi.to(dtype)
    return cute.recast_tensor(pair, cutlass.Uint32)[0]


@cute.jit
def visible_in_document(out: cute.Tensor, bounds: cute.Tensor, tokens: list, n, causal: cutlass.Constexpr,
                        rows_are_queries: cutlass.Constexpr):
    """out[i] = [lo, hi): the tokens that the token tokens[i] (this thread's accumulator row i) attends to or is
    attended by: its document's [start, end) from bounds ((N, 2) int32 of one batch row). Causal: a query sees
    keys up to itself (hi at most token + 1), a key is seen by queries from itself on (lo at least token).
    Tokens past n: [0, 0), nothing."""
    for i in cutlass.range_constexpr(len(tokens)):
        token = tokens[i]
        lo = cutlass.Int32(0)
        hi = cutlass.Int32(0)
        if token < n:
            lo = bounds[token, 0]
            hi = bounds[token, 1]
            if cutlass.const_expr(causal):
                if cutlass.const_expr(rows_are_queries):
                    hi = cutlass.min(hi, token + 1)
                else:
                    lo = cutlass.max(lo, token)
        out[i, 0] = lo
        out[i, 1] = hi


def transpose_view(t: cute.Tensor) -> cute.Tensor:
    """The same shared-memory tile with its first two modes swapped (a K-major operand read MN-major)."""
    shape = (t.shape[1], t.shape[0], *t.shape[2:])
    return cute.composition(t, cute.make_ordered_layout(shape, order=(1, 0, *range(2, cute.rank(t)))))
