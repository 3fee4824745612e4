"""Register-fragment views shared by the CuTe DSL attention kernels (cute_kernel.py, cute_backward.py): wgmma
accumulators read as (row, column) tiles, an accumulator tile turned into the 16-bit A operand of the next
wgmma without leaving registers, two adjacent columns packed into one 32-bit word, accumulator rows stored
as 16-byte chunks, a shared-memory tile read transposed, and what a thread's accumulator rows see of packed
documents."""

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
    """Two fp32 values rounded to the 16-bit `dtype` and packed into one 32-bit word (lo first): a thread's two
    adjacent accumulator columns."""
    pair = cute.make_rmem_tensor((2,), dtype)
    pair[0] = lo.to(dtype)
    pair[1] = hi.to(dtype)
    return cute.recast_tensor(pair, cutlass.Uint32)[0]


def pair_words(outputs: int, n_words: int) -> cute.Tensor:
    """Registers for `outputs` rows of n_words packed pairs each, every row contiguous (store_row_chunks' input)."""
    return cute.make_rmem_tensor(cute.make_layout((outputs, n_words), stride=(n_words, 1)), cutlass.Uint32)


def chunk_view(ptr: cute.Pointer, n, d: int) -> cute.Tensor:
    """A contiguous (n, d) 16-bit tensor addressed as 32-bit words (ptr: 16-byte aligned), as (rows, d / 8
    chunks of 8 columns, 4 words): the destination of store_row_chunks."""
    return cute.make_tensor(ptr, cute.make_layout((n, d // 8, 4), stride=(d // 2, 4, 1)))


@cute.jit
def store_row_chunks(words: cute.Tensor, outs: list, row, lane, valid):
    """Store one accumulator row of each output as 16-byte chunks. words[x, k] (pair_words) holds output x's
    columns 8k + 2 lane, + 1 of the row, as a wgmma accumulator gives them (lane: the thread's place in the
    quad of threads that share the row); outs[x] is that output's chunk_view. Each quad transposes its words in
    blocks of four (two butterfly steps of two shuffles), so that a lane holds 8 adjacent columns: a quarter of
    the store instructions that 32-bit words take, each writing whole 32-byte sectors. Every lane must call it (the
    shuffles take the whole warp); `valid` False skips only the stores (rows past the sequence)."""
    n_blocks = cute.size(words, mode=[1]) // 4
    for x in cutlass.range_constexpr(len(outs)):
        for blk in cutlass.range_constexpr(n_blocks):
            _quad_transpose(words, x, 4 * blk, lane)
    if valid:
        for x in cutlass.range_constexpr(len(outs)):
            for blk in cutlass.range_constexpr(n_blocks):
                # after the transpose this lane holds columns 8 (4 blk + lane) .. + 7
                src = cute.make_tensor(words.iterator + words.layout((x, 4 * blk)), cute.make_layout(4))
                cute.autovec_copy(src, outs[x][row, 4 * blk + lane, None])


@cute.jit
def _quad_transpose(words: cute.Tensor, x: cutlass.Constexpr, k0: cutlass.Constexpr, lane):
    """Transpose words[x, k0 .. k0 + 3] across the quad, as a 4 x 4 matrix (lane, word): afterwards lane l holds
    word l of lanes 0-3 in order. In each butterfly step the lanes whose bit differs from the word's swap that
    word with their partner."""
    for step in cutlass.range_constexpr(2):
        bit = 1 << step
        for w in cutlass.range_constexpr(4):
            if cutlass.const_expr(w & bit == 0):
                send = words[x, k0 + (w | bit)]  # (a lane whose bit is 0 sends word w | bit, the others word w)
                if lane & bit != 0:
                    send = words[x, k0 + w]
                got = cute.arch.shuffle_sync_bfly(send, offset=bit, mask=-1, mask_and_clamp=31)
                if lane & bit != 0:
                    words[x, k0 + w] = got
                else:
                    words[x, k0 + (w | bit)] = got


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
