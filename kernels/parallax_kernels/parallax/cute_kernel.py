"""Parallax attention forward for Hopper (sm_90a) in CuTe DSL: TMA, wgmma, warp specialisation.

Same outputs and arithmetic as the Triton forward (kernels/parallax_kernels/parallax/triton_fused.py):
o, a (the softmax output), lse (log2 domain) and tbar, so that its backward runs unchanged on them.
Per key tile: S1 = scale Q K^T (log2 domain), T = R K^T, online max m shared by both branches,
P1 = exp2(S1 - m), P2 = P1 (T - c) centred on the running tbar estimate c, O1 += P1 V, O2 += P2 V.

Layout of one CTA (384 threads, 64 query rows of one (batch, head); the default, "stacked", at head_dim 128;
at head_dim 64 three consumer warpgroups, below):
- warpgroup 0 is the producer: after `setmaxnreg` down to 24 registers, one warp issues the TMA loads
  (cp.async.bulk.tensor) of the Q and R tiles once, then of each K and V tile into a ring of shared-memory
  stages (3 by default), each stage guarded by a full and an empty mbarrier;
- warpgroups 1 and 2 are consumers (`setmaxnreg` up to 240), 32 query rows each, whose m64 A tile holds those
  queries and their probes, interleaved in 8-row groups: rows 16 g + i hold q and rows 16 g + 8 + i hold r of
  query 8 g + i. One wgmma chain against a K tile gives every thread S and T of the same query row in its two
  row halves; the P1 and P2 it makes from them are one A operand ([P1; P2], the same interleaving), and one
  chain against the V tile accumulates O1 and O2 of that row in the same thread: half the accumulator
  registers per query row that separate chains need, so the key tile is 128 wide at both head dims. TMA
  writes each 8-row group (one 128-byte swizzle atom) with its own copy;
- with the overlap (the default), a warpgroup issues tile j's S, T chain and tile j - 1's P V chain together
  and runs tile j's softmax while the second one runs (FlashAttention-3's intra-warpgroup overlap); the two
  warpgroups take turns issuing (named barriers), so that one's softmax also overlaps the other's matrix work;
- the consumers write o, a from registers (16-byte chunks of a row, gathered by shuffles in each quad of
  threads) and lse, tbar per row.
Causal CTAs run in reverse order of their query tile (the longest first). Tiles wholly below the diagonal
and inside the sequence skip the mask; a warpgroup whose rows end before a key tile only releases it.
Rows whose running max did not move skip the O1, O2 rescale (alpha = 1 exactly; the centre's shift of O2
is still applied).
Packed documents (the documents variant): a CTA loads the key tiles from its first row's document start to its
last row's document end, and every tile is masked per row with the row's document bounds [start, end).

Three consumer warpgroups (AttentionVariant.warpgroups 3, the stacked kernel's default at head_dim 64): 512
threads, 96 query rows a CTA, the consumers at 160 registers (24 x 128 + 160 x 384 fit the register file),
taking their turns to issue in a ring (warpgroup 0, 1, 2, 0, ...), so that each one's softmax has two others'
chains beside it.

Unstacked (AttentionVariant.stacked False): 64 query rows a consumer warpgroup (128 a CTA), S from Q and T
from R as two chains against the same K tile, O1 and O2 as two against the same V tile; S, T (64 x BN) and
O1, O2 (64 x D) are then all fp32 accumulators of one warpgroup, twice FlashAttention's, so the key tile is
BN = 64 at D = 128 (128 at D = 64) and there is no room for the overlap (it spills). Persistent
(AttentionVariant.persistent; what the backends launch for short causal sequences, in the lpt order): at most
one CTA an SM, each taking work items of the head-by-head or the lpt order one after another. Each consumer
warpgroup's Q and R rows are a stage of their own, so the producer loads a warpgroup's rows of the next item
once its last S, T chain of the current one is done, and the warpgroups' turns run on from one item into the
next: warpgroup 0 starts the next item while the last one finishes the current item's P V and stores.

The kernel takes raw pointers, sizes and the three TMA descriptors (CUtensorMap, by value), so the
compiled cubin can be launched without the DSL (cute_launch.py builds the descriptors with the CUDA
driver's cuTensorMapEncodeTiled).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils as utils
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32
from cutlass.cute.nvgpu import cpasync, warpgroup

from parallax_kernels import cute_runtime as rt
from parallax_kernels.parallax.cute_fragments import (a_operand_fragment, as_a_operand, chunk_view, mn_view,
                                                       pack_pair, pair_words, store_as_a_operand, store_row_chunks,
                                                       visible_in_document)
from parallax_kernels.parallax.cute_variant import CONSUMER_REGS, LPT_KV_BYTES, MMA_ROWS, AttentionVariant, lpt_tile

PRODUCER_REGS = 24
TURN_BARRIER = 1  # named barriers 1, 2 (3): the consumer warpgroups' turns to issue S, T (0 is __syncthreads)


def compile_variant(variant: AttentionVariant) -> tuple[bytes, str, str]:
    """Compile one variant for sm_90a (without a GPU when CUTE_DSL_ARCH=sm_90a is set before cutlass
    is imported). Returns (cubin, ptx, kernel symbol)."""
    kernel = ParallaxAttentionForward(variant)
    ptr, dt = rt.gmem_pointer, kernel.dtype
    # o and a are addressed as 32-bit words (the epilogue stores 16-byte chunks of them); the last pointer is
    # the documents' per-token bounds (read by the documents variant only)
    args = ([ptr(dt, 16)] * 4 + [ptr(cutlass.Uint32, 16)] * 2 + [ptr(Float32, 16)] * 2 + [Int32(128)] * 5
            + [Float32(1.0), ptr(Int32, 8)])
    return rt.compile_cubin(kernel, args, variant.name, smem_bytes=variant.smem_bytes)


class ParallaxAttentionForward:
    def __init__(self, variant: AttentionVariant):
        variant.check()
        self.v = variant
        self.dtype = rt.dsl_dtype(variant.dtype)
        self.d = variant.head_dim
        self.bn = variant.bn
        self.stages = variant.stages
        self.causal = variant.causal
        self.q_box = variant.tma_boxes()[0][1]  # rows of one Q (R) copy: a warpgroup's 64, or stacked 8

    # ---- host side (traced once per variant) -------------------------------------------------
    @cute.jit
    def __call__(
        self,
        p_q: cute.Pointer, p_k: cute.Pointer, p_v: cute.Pointer, p_r: cute.Pointer,
        p_o: cute.Pointer, p_a: cute.Pointer, p_lse: cute.Pointer, p_tbar: cute.Pointer,
        n: Int32, bh: Int32, bhkv: Int32, heads: Int32, group: Int32, scale_log2: Float32, p_bounds: cute.Pointer,
        stream,
    ):
        d, bn, dt = self.d, self.bn, self.dtype
        head = n * d  # elements per (batch, head): q, k, v, r are contiguous (B, H, N, D)
        q = cute.make_tensor(p_q, cute.make_layout((n, d, bh), stride=(d, 1, head)))
        r = cute.make_tensor(p_r, cute.make_layout((n, d, bh), stride=(d, 1, head)))
        k = cute.make_tensor(p_k, cute.make_layout((n, d, bhkv), stride=(d, 1, head)))
        vt = cute.make_tensor(p_v, cute.make_layout((d, n, bhkv), stride=(1, d, head)))  # V^T: B of P V

        k_major = warpgroup.OperandMajorMode.K
        mma_qk = sm90_utils.make_trivial_tiled_mma(dt, dt, k_major, k_major, Float32, (1, 1, 1), (MMA_ROWS, bn))
        mma_pv = sm90_utils.make_trivial_tiled_mma(dt, dt, k_major, warpgroup.OperandMajorMode.MN, Float32,
                                                   (1, 1, 1), (MMA_ROWS, d), warpgroup.OperandSource.RMEM)
        row_major = utils.LayoutEnum.ROW_MAJOR
        # Q and R: one (64, D) A tile per consumer warpgroup each (stacked: one holding both); K: (BN, D) per
        # stage; V^T: (D, BN) per stage
        q_smem = sm90_utils.make_smem_layout_a(row_major, (MMA_ROWS, bn, d), dt, self.v.warpgroups)
        k_smem = sm90_utils.make_smem_layout_b(row_major, (MMA_ROWS, bn, d), dt, self.stages)
        v_smem = sm90_utils.make_smem_layout_b(utils.LayoutEnum.COL_MAJOR, (MMA_ROWS, d, bn), dt, self.stages)

        g2s = cpasync.CopyBulkTensorTileG2SOp()
        # what one TMA copy of Q (R) fills in a warpgroup's A tile: all 64 rows, or stacked one 8-row group
        q_rows = cute.slice_(q_smem, (None, None, 0))
        if cutlass.const_expr(self.v.stacked):
            q_rows = cute.make_composed_layout(q_smem.inner, 0, cute.composition(
                q_rows.outer, cute.make_layout((self.q_box, d), stride=(1, MMA_ROWS))))
        tma_q, m_q = cpasync.make_tiled_tma_atom(g2s, q, q_rows, (self.q_box, d))
        tma_r, m_r = cpasync.make_tiled_tma_atom(g2s, r, q_rows, (self.q_box, d))
        tma_k, m_k = cpasync.make_tiled_tma_atom(g2s, k, cute.slice_(k_smem, (None, None, 0)), (bn, d))
        tma_v, m_v = cpasync.make_tiled_tma_atom(g2s, vt, cute.slice_(v_smem, (None, None, 0)), (d, bn))
        self.q_bytes = self.v.wg_rows * d * dt.width // 8  # the Q (R) rows of one warpgroup
        self.kv_bytes = cute.size_in_bytes(dt, cute.slice_(k_smem, (None, None, 0)))
        a_tiles = 1 if self.v.stacked else 2  # (64, D) A tiles per warpgroup: [Q; R] stacked, or Q and R

        @cute.struct
        class SharedStorage:
            q_mbar: cute.struct.MemRange[cutlass.Int64, 2 * self.v.warpgroups]
            k_mbar: cute.struct.MemRange[cutlass.Int64, 2 * self.stages]
            v_mbar: cute.struct.MemRange[cutlass.Int64, 2 * self.stages]
            sQR: cute.struct.Align[cute.struct.MemRange[dt, a_tiles * cute.cosize(q_smem)], 1024]  # Q then R
            sK: cute.struct.Align[cute.struct.MemRange[dt, cute.cosize(k_smem)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[dt, cute.cosize(v_smem)], 1024]

        self.shared_storage = SharedStorage
        m_blocks = (n + self.v.cta_rows - 1) // self.v.cta_rows
        grid = [m_blocks * bh, 1, 1] if self.v.lpt or self.v.persistent else [m_blocks, bh, 1]
        self.kernel(
            mma_qk, mma_pv, tma_q, m_q, tma_r, m_r, tma_k, m_k, tma_v, m_v,
            p_o, p_a, p_lse, p_tbar, n, heads, group, scale_log2, p_bounds, q_smem, k_smem, v_smem,
        ).launch(grid=grid, block=[self.v.num_threads, 1, 1], smem=SharedStorage.size_in_bytes(),
                 stream=stream, min_blocks_per_mp=1)

    # ---- device side ------------------------------------------------------------------------
    @cute.kernel
    def kernel(
        self,
        mma_qk: cute.TiledMma, mma_pv: cute.TiledMma,
        tma_q: cute.CopyAtom, m_q: cute.Tensor, tma_r: cute.CopyAtom, m_r: cute.Tensor,
        tma_k: cute.CopyAtom, m_k: cute.Tensor, tma_v: cute.CopyAtom, m_v: cute.Tensor,
        p_o: cute.Pointer, p_a: cute.Pointer, p_lse: cute.Pointer, p_tbar: cute.Pointer,
        n: Int32, heads: Int32, group: Int32, scale_log2: Float32, p_bounds: cute.Pointer,
        q_smem: cute.ComposedLayout, k_smem: cute.ComposedLayout, v_smem: cute.ComposedLayout,
    ):
        d = self.d
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = warp_idx // 4

        storage = utils.SmemAllocator().allocate(self.shared_storage)
        consumers = pipeline.CooperativeGroup(pipeline.Agent.Thread, 4 * self.v.warpgroups)  # one arrive per warp
        producer = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        # Q and R: one stage per consumer warpgroup (its rows of both), waited on and released by its 4 warps, so
        # that in the persistent grid a warpgroup's next rows load once its own last S, T chain is done
        q_pipe = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.q_mbar.data_ptr(), num_stages=self.v.warpgroups, producer_group=producer,
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 4), tx_count=2 * self.q_bytes,
            defer_sync=True)
        q_prod = q_pipe.make_producer()
        k_prod, k_cons = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.k_mbar.data_ptr(), num_stages=self.stages, producer_group=producer,
            consumer_group=consumers, tx_count=self.kv_bytes, defer_sync=True).make_participants()
        v_prod, v_cons = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.v_mbar.data_ptr(), num_stages=self.stages, producer_group=producer,
            consumer_group=consumers, tx_count=self.kv_bytes, defer_sync=True).make_participants()

        # the A tiles (64, D, warpgroups, Q then R; stacked: one), and where the TMA copies put Q and R in them
        a_tiles = 1 if self.v.stacked else 2
        sQR = storage.sQR.get_tensor(
            cute.append(q_smem.outer, cute.make_layout(a_tiles, stride=cute.cosize(q_smem))), swizzle=q_smem.inner)
        # (rows, D, copies of a warpgroup, warpgroups): stacked, Q's 8-row group g at rows 16 g, R's at 16 g + 8
        if cutlass.const_expr(self.v.stacked):
            groups = cute.composition(sQR[None, None, None, 0], cute.make_layout(
                (8, 2, d, self.v.wg_rows // 8, self.v.warpgroups), stride=(1, 8, MMA_ROWS, 16, MMA_ROWS * d)))
            sQ, sR = groups[None, 0, None, None, None], groups[None, 1, None, None, None]
        else:  # (64, D, warpgroups)
            sQ, sR = sQR[None, None, None, 0], sQR[None, None, None, 1]
        sK = storage.sK.get_tensor(k_smem.outer, swizzle=k_smem.inner)
        sV = storage.sV.get_tensor(v_smem.outer, swizzle=v_smem.inner)

        bidx, by, _ = cute.arch.block_idx()
        gdim, _, _ = cute.arch.grid_dim()
        m_blocks = gdim  # (one CTA an item in the head-by-head order: the grid's x is the query tiles)
        if cutlass.const_expr(self.v.lpt or self.v.persistent):
            m_blocks = (n + self.v.cta_rows - 1) // self.v.cta_rows
        # work items (query tile, batch * head): one a CTA (lpt: the grid's x covers every item once), or
        # persistent, items bidx, bidx + gdim, ... of the head-by-head or the lpt order
        bh_count = gdim // m_blocks
        if cutlass.const_expr(self.v.persistent):
            bh_count = cute.size(m_q, mode=[2])
        args = (by, m_blocks, bh_count, n, heads, group, p_bounds)
        if cutlass.const_expr(not self.v.persistent):
            # computed once for both sides (computed in each, the registers of some variants spill)
            item = self._work_item(bidx, *args)

        pipeline.pipeline_init_arrive(cluster_shape_mn=(1, 1, 1), is_relaxed=True)
        pipeline.pipeline_init_wait(cluster_shape_mn=(1, 1, 1))

        if wg == 0:  # ---- producer -------------------------------------------------------------
            cute.arch.warpgroup_reg_dealloc(PRODUCER_REGS)
            if warp_idx == 0:
                cpasync.prefetch_descriptor(tma_q)
                cpasync.prefetch_descriptor(tma_r)
                cpasync.prefetch_descriptor(tma_k)
                cpasync.prefetch_descriptor(tma_v)
                loads = (tma_q, m_q, tma_r, m_r, tma_k, m_k, tma_v, m_v, sQ, sR, sK, sV)
                if cutlass.const_expr(self.v.persistent):
                    for w in cutlass.range(bidx, m_blocks * bh_count, gdim, unroll=1):
                        q_prod, k_prod, v_prod = self._produce(self._work_item(w, *args), *loads, q_prod, k_prod,
                                                               v_prod)
                else:
                    self._produce(item, *loads, q_prod, k_prod, v_prod)
        else:  # ---- consumers ------------------------------------------------------------------
            cute.arch.warpgroup_reg_alloc(CONSUMER_REGS[self.v.warpgroups])
            cw = wg - 1
            rest = (sQR, sK, sV, p_o, p_a, p_lse, p_tbar, n, scale_log2, cw, tidx - 128 * wg)
            if cutlass.const_expr(self.v.persistent):
                items = m_blocks * bh_count
                for w in cutlass.range(bidx, items, gdim, unroll=1):
                    # the turns run on from one item into the next (the first item starts them); the warpgroup's
                    # Q, R stage flips phase every item
                    rank = (w - bidx) // gdim
                    more = cutlass.max(cutlass.min(items - (w + gdim), 1), 0)
                    k_cons, v_cons, mma_qk, mma_pv = self._consume(
                        self._work_item(w, *args), mma_qk, mma_pv, q_pipe, rank % 2, 1 - cutlass.min(rank, 1), more,
                        k_cons, v_cons, *rest)
            else:
                self._consume(item, mma_qk, mma_pv, q_pipe, Int32(0), Int32(1), Int32(0), k_cons, v_cons, *rest)

    @cute.jit
    def _produce(self, item, tma_q: cute.CopyAtom, m_q: cute.Tensor, tma_r: cute.CopyAtom, m_r: cute.Tensor,
                 tma_k: cute.CopyAtom, m_k: cute.Tensor, tma_v: cute.CopyAtom, m_v: cute.Tensor, sQ, sR, sK, sV,
                 q_prod, k_prod, v_prod):
        """A work item's loads (item: _work_item's): its Q and R tiles once, then its K and V tiles into the ring."""
        d, bn = self.d, self.bn
        m_blk, bh, bhk, cta_lo, n_tiles, _ = item
        g_q = cute.local_tile(m_q[None, None, bh], (self.q_box, d), (None, 0))
        g_r = cute.local_tile(m_r[None, None, bh], (self.q_box, d), (None, 0))
        g_k = cute.local_tile(m_k[None, None, bhk], (bn, d), (None, 0))
        g_v = cute.local_tile(m_v[None, None, bhk], (d, bn), (0, None))
        t_sq, t_gq = cpasync.tma_partition(tma_q, 0, cute.make_layout(1), cute.group_modes(sQ, 0, 2),
                                           cute.group_modes(g_q, 0, 2))
        t_sr, t_gr = cpasync.tma_partition(tma_r, 0, cute.make_layout(1), cute.group_modes(sR, 0, 2),
                                           cute.group_modes(g_r, 0, 2))
        t_sk, t_gk = cpasync.tma_partition(tma_k, 0, cute.make_layout(1), cute.group_modes(sK, 0, 2),
                                           cute.group_modes(g_k, 0, 2))
        t_sv, t_gv = cpasync.tma_partition(tma_v, 0, cute.make_layout(1), cute.group_modes(sV, 0, 2),
                                           cute.group_modes(g_v, 0, 2))
        for x in cutlass.range_constexpr(self.v.warpgroups):
            # warpgroup x's rows (persistent: once its last S, T chain of the previous item is done)
            hq = q_prod.acquire_and_advance()
            if cutlass.const_expr(self.v.stacked):
                # 8-row copies in a loop: unrolled, their addresses overflow the producer's 24 registers
                copies = self.v.wg_rows // self.q_box
                for g in cutlass.range(copies, unroll=1):
                    tile = (m_blk * self.v.warpgroups + x) * copies + g
                    cute.copy(tma_q, t_gq[None, tile], t_sq[None, g, x], tma_bar_ptr=hq.barrier)
                    cute.copy(tma_r, t_gr[None, tile], t_sr[None, g, x], tma_bar_ptr=hq.barrier)
            else:
                tile = m_blk * self.v.warpgroups + x
                cute.copy(tma_q, t_gq[None, tile], t_sq[None, x], tma_bar_ptr=hq.barrier)
                cute.copy(tma_r, t_gr[None, tile], t_sr[None, x], tma_bar_ptr=hq.barrier)
        for j in cutlass.range(cta_lo, n_tiles, unroll=1):
            hk = k_prod.acquire_and_advance()
            cute.copy(tma_k, t_gk[None, j], t_sk[None, hk.index], tma_bar_ptr=hk.barrier)
            hv = v_prod.acquire_and_advance()
            cute.copy(tma_v, t_gv[None, j], t_sv[None, hv.index], tma_bar_ptr=hv.barrier)
        return q_prod, k_prod, v_prod

    @cute.jit
    def _work_item(self, w: Int32, by: Int32, m_blocks: Int32, bh_count: Int32, n: Int32, heads: Int32, group: Int32,
                   p_bounds: cute.Pointer):
        """Work item w's query tile, batch head and KV head, the key tiles [cta_lo, n_tiles) it loads, and its
        batch row's document bounds (documents only). w is the CTA's x index (its batch head the y index), or
        persistent its place in the head-by-head order, or lpt its place in the lpt order; causal, the longest
        tiles come first."""
        d, bn = self.d, self.bn
        m_blk, bh = w, by
        if cutlass.const_expr(self.v.persistent and not self.v.lpt):
            bh = w // m_blocks
            m_blk = w - bh * m_blocks
        if cutlass.const_expr(self.v.lpt):
            m_blk, bh = lpt_tile(w, m_blocks, bh_count, n * (4 * d), group, self.causal,
                                 budget=Int32(LPT_KV_BYTES), lo=cutlass.min, hi=cutlass.max)
            # (the same in every thread: kept in uniform registers, beside the consumers' 240)
            m_blk, bh = cute.arch.make_warp_uniform(m_blk), cute.arch.make_warp_uniform(bh)
        elif cutlass.const_expr(self.causal):
            m_blk = m_blocks - 1 - m_blk
        b = bh // heads
        h = bh - b * heads
        kv_heads = heads // group
        bhk = b * kv_heads + h // group
        cta_hi = n
        if cutlass.const_expr(self.causal):
            cta_hi = cutlass.min((m_blk + 1) * self.v.cta_rows, n)
        cta_lo = 0  # key tiles [cta_lo, n_tiles) are loaded
        bounds = None
        if cutlass.const_expr(self.v.documents):
            # per token of this batch row: [start, end) of its document; the CTA's rows see keys from the first
            # row's start to the last row's end
            bounds = cute.make_tensor(p_bounds + b.to(cutlass.Int64) * n.to(cutlass.Int64) * 2,
                                      cute.make_layout((n, 2), stride=(2, 1)))
            cta_lo = bounds[m_blk * self.v.cta_rows, 0] // bn
            cta_hi = cutlass.min(cta_hi, bounds[cutlass.min((m_blk + 1) * self.v.cta_rows, n) - 1, 1])
        n_tiles = (cta_hi + bn - 1) // bn
        return m_blk, bh, bhk, cta_lo, n_tiles, bounds

    @cute.jit
    def _consume(self, item, mma_qk: cute.TiledMma, mma_pv: cute.TiledMma, q_pipe, q_phase: Int32, starts: Int32,
                 more: Int32, k_cons, v_cons, sQR, sK, sV, p_o, p_a, p_lse, p_tbar, n: Int32, scale_log2: Float32,
                 cw: Int32, tid: Int32):
        """A work item (_work_item's) for consumer warpgroup cw: its key tiles, then its outputs. q_phase: the
        phase of the warpgroup's Q, R stage; starts 1: the CTA's first item (the turns start); more 1: another item
        follows in this CTA (the last warpgroup hands the turn on after this item's last tile)."""
        m_blk, bh, _, cta_lo, n_tiles, bounds = item
        turn_end = n_tiles + more  # _pass_turn hands the turn on after tiles j with j + 1 < turn_end
        d, bn = self.d, self.bn
        thr_qk = mma_qk.get_slice(tid)
        thr_pv = mma_pv.get_slice(tid)
        t_rk = thr_qk.make_fragment_B(thr_qk.partition_B(sK))
        t_rv = thr_pv.make_fragment_B(thr_pv.partition_B(sV))
        # one (A tile, accumulator) pair per chain against K, and an accumulator per chain against V: S from Q
        # and T from R, O1 and O2; stacked, one of each, holding both branches
        chains = 1 if self.v.stacked else 2
        a_qr = [thr_qk.make_fragment_A(thr_qk.partition_A(sQR[None, None, None, x]))[None, None, None, cw]
                for x in range(chains)]
        acc_st = [thr_qk.make_fragment_C(thr_qk.partition_shape_C((MMA_ROWS, bn))) for _ in range(chains)]
        acc_o = [thr_pv.make_fragment_C(thr_pv.partition_shape_C((MMA_ROWS, d))) for _ in range(chains)]
        for x in cutlass.range_constexpr(chains):
            acc_o[x].fill(0.0)
        # a thread's accumulator rows as (branch 1, branch 2) pairs of (view, row): S and T, O1 and O2 of one
        # query row. Separate chains: rows 0 and 1 of both views are two query rows; stacked: rows 0 and 1 of
        # the one view are the two branches of one query row
        s_v, t_v = mn_view(acc_st[0]), mn_view(acc_st[chains - 1])
        o1_v, o2_v = mn_view(acc_o[0]), mn_view(acc_o[chains - 1])
        pairs = ((0, 1),) if self.v.stacked else ((0, 0), (1, 1))
        coords = mn_view(thr_qk.partition_C(cute.make_identity_tensor((MMA_ROWS, bn))))
        row0 = m_blk * self.v.cta_rows + cw * self.v.wg_rows  # first query row of this warpgroup
        rows = [self._query_row(coords[i, 0][0]) for i, _ in pairs]  # this thread's query rows, from row0
        # per query row of this thread: running max m, d1 = sum P1, t_sum = sum P1 t, centre c
        state = cute.make_rmem_tensor((4, len(pairs)), Float32)
        for i in cutlass.range_constexpr(len(pairs)):
            state[0, i] = -Float32.inf
            state[1, i] = 0.0
            state[2, i] = 0.0
            state[3, i] = 0.0
        views = (s_v, t_v, o1_v, o2_v)

        # key tiles [cta_lo, mid) need no mask; [mid, wg_tiles) do; [wg_tiles, n_tiles) are past this
        # warpgroup's last row (causal, or its documents' end) and are only waited on and released
        wg_tiles = n_tiles
        mid = n // bn
        if cutlass.const_expr(self.causal):
            wg_tiles = (cutlass.min(row0 + self.v.wg_rows, n) + bn - 1) // bn
            mid = cutlass.min(mid, row0 // bn)
        mid = cutlass.min(mid, wg_tiles)
        # documents: per row of this thread, the keys [lo, hi) it sees; every tile is masked (document edges
        # vary by row)
        seen = None
        if cutlass.const_expr(self.v.documents):
            seen = cute.make_rmem_tensor((len(pairs), 2), Int32)
            visible_in_document(seen, bounds, [row0 + x for x in rows], n, self.causal, rows_are_queries=True)
            wg_tiles = cta_lo  # rows past the end: release only
            if row0 < n:
                wg_hi = bounds[cutlass.min(row0 + self.v.wg_rows, n) - 1, 1]
                if cutlass.const_expr(self.causal):
                    wg_hi = cutlass.min(wg_hi, row0 + self.v.wg_rows)
                wg_tiles = cutlass.max(cutlass.min((wg_hi + bn - 1) // bn, n_tiles), cta_lo)
            mid = cta_lo

        q_stage = pipeline.PipelineState(self.v.warpgroups, Int32(0), cw, q_phase)
        q_pipe.consumer_wait(q_stage)  # this warpgroup's Q, R rows
        if cutlass.const_expr(self.v.pingpong):
            if cw == self.v.warpgroups - 1:
                if starts == 1:  # warpgroup 0 takes the first turn
                    cute.arch.barrier_arrive(barrier_id=TURN_BARRIER + 0, number_of_threads=256)
        if cutlass.const_expr(self.v.overlap):
            # the first tile (masked: it may be either kind) as usual but for its P V, then each tile with the
            # previous one's P V in flight, then the last P V; loops of 0 or 1 trip stand for the ifs
            p_ops = [a_operand_fragment(self.dtype, bn) for _ in range(chains)]
            rescale = cute.make_rmem_tensor((2, len(pairs)), Float32)
            first = cutlass.min(cta_lo + 1, wg_tiles)
            for j in cutlass.range(cta_lo, first, unroll=1):
                k_cons, mma_qk = self._scores(j, True, mma_qk, a_qr, t_rk, acc_st, views, pairs, rows, state, coords,
                                              seen, k_cons, n, row0, scale_log2, cw, turn_end)
                for x in cutlass.range_constexpr(chains):  # its P1, P2, for the next tile to multiply
                    store_as_a_operand(acc_st[x], p_ops[x])
            mid = cutlass.max(mid, first)
            for j in cutlass.range(first, mid, unroll=1):
                k_cons, v_cons, mma_qk, mma_pv = self._tile_overlapped(
                    j, False, mma_qk, mma_pv, a_qr, t_rk, t_rv, acc_st, acc_o, p_ops, rescale, views, pairs, rows,
                    state, coords, seen, k_cons, v_cons, n, row0, scale_log2, cw, turn_end)
            for j in cutlass.range(mid, wg_tiles, unroll=1):
                k_cons, v_cons, mma_qk, mma_pv = self._tile_overlapped(
                    j, True, mma_qk, mma_pv, a_qr, t_rk, t_rv, acc_st, acc_o, p_ops, rescale, views, pairs, rows,
                    state, coords, seen, k_cons, v_cons, n, row0, scale_log2, cw, turn_end)
            if cutlass.const_expr(self.v.persistent):  # its last S, T chain is done: its next rows may load
                q_pipe.consumer_release(q_stage)
            for j in cutlass.range(cta_lo, first, unroll=1):  # the last tile's P V
                hv = v_cons.wait_and_advance()
                warpgroup.fence()
                mma_pv = self._issue_pv(mma_pv, p_ops, t_rv, acc_o, hv.index)
                warpgroup.wait_group(0)
                hv.release()
        else:
            for j in cutlass.range(cta_lo, mid, unroll=1):
                k_cons, v_cons, mma_qk, mma_pv = self._tile(j, False, mma_qk, mma_pv, a_qr, t_rk, t_rv, acc_st,
                                                            acc_o, views, pairs, rows, state, coords, seen, k_cons,
                                                            v_cons, n, row0, scale_log2, cw, turn_end)
            for j in cutlass.range(mid, wg_tiles, unroll=1):
                k_cons, v_cons, mma_qk, mma_pv = self._tile(j, True, mma_qk, mma_pv, a_qr, t_rk, t_rv, acc_st,
                                                            acc_o, views, pairs, rows, state, coords, seen, k_cons,
                                                            v_cons, n, row0, scale_log2, cw, turn_end)
            if cutlass.const_expr(self.v.persistent):
                q_pipe.consumer_release(q_stage)
        for j in cutlass.range(wg_tiles, n_tiles, unroll=1):
            hk = k_cons.wait_and_advance()
            if cutlass.const_expr(self.v.pingpong):  # keep the turns paired
                cute.arch.barrier(barrier_id=TURN_BARRIER + cw, number_of_threads=256)
                self._pass_turn(cw, j, turn_end)
            hk.release()
            hv = v_cons.wait_and_advance()
            hv.release()

        # ---- epilogue: a = O1 / d1, o = a - O2 / d1, lse = m + log2 d1, tbar = c ------------------
        base = bh.to(cutlass.Int64) * n.to(cutlass.Int64)
        # o and a leave as 16-byte chunks (store_row_chunks): a quarter of the store instructions of 32-bit pairs
        g_a, g_o = chunk_view(p_a + base * (d // 2), n, d), chunk_view(p_o + base * (d // 2), n, d)
        g_lse = cute.make_tensor(p_lse + base, cute.make_layout((n,)))
        g_tbar = cute.make_tensor(p_tbar + base, cute.make_layout((n,)))
        n_words = cute.size(o1_v.shape[1]) // 2  # 32-bit pairs a row: columns 8k + 2 lane, + 1 for k < n_words
        for i in cutlass.range_constexpr(len(pairs)):
            i1, i2 = pairs[i]
            row = row0 + rows[i]
            d1 = state[1, i]
            if d1 <= 0.0:  # (rows past the sequence's end)
                d1 = Float32(1.0)
            inv = cute.arch.rcp_approx(d1)
            words = pair_words(2, n_words)  # a, o
            for k in cutlass.range_constexpr(n_words):
                a0 = o1_v[i1, 2 * k] * inv
                a1 = o1_v[i1, 2 * k + 1] * inv
                words[0, k] = pack_pair(a0, a1, self.dtype)
                words[1, k] = pack_pair(a0 - o2_v[i2, 2 * k] * inv, a1 - o2_v[i2, 2 * k + 1] * inv, self.dtype)
            store_row_chunks(words, [g_a, g_o], row, tid % 4, row < n)
            if row < n:
                if tid % 4 == 0:
                    g_lse[row] = state[0, i] + cute.math.log2(d1, fastmath=True)
                    g_tbar[row] = state[3, i]
        return k_cons, v_cons, mma_qk, mma_pv

    @cute.jit
    def _tile(self, j: Int32, masked: cutlass.Constexpr, mma_qk: cute.TiledMma, mma_pv: cute.TiledMma, a_qr, t_rk,
              t_rv, acc_st, acc_o, views, pairs: cutlass.Constexpr, rows, state, coords, seen, k_cons, v_cons,
              n: Int32, row0: Int32, scale_log2: Float32, cw: Int32, turn_end: Int32):
        """One key tile j for this warpgroup's rows: S, T, then the softmax, then O1, O2."""
        k_cons, mma_qk = self._scores(j, masked, mma_qk, a_qr, t_rk, acc_st, views, pairs, rows, state, coords, seen,
                                      k_cons, n, row0, scale_log2, cw, turn_end)
        # P1 and P2 (stacked: [P1; P2], interleaved as S and T were) as A operands against the same V stage
        p_ops = [as_a_operand(acc, self.dtype, self.bn) for acc in acc_st]
        hv = v_cons.wait_and_advance()
        warpgroup.fence()
        mma_pv = self._issue_pv(mma_pv, p_ops, t_rv, acc_o, hv.index)
        warpgroup.wait_group(0)
        hv.release()
        return k_cons, v_cons, mma_qk, mma_pv

    @cute.jit
    def _scores(self, j: Int32, masked: cutlass.Constexpr, mma_qk: cute.TiledMma, a_qr, t_rk, acc_st, views,
                pairs: cutlass.Constexpr, rows, state, coords, seen, k_cons, n: Int32, row0: Int32,
                scale_log2: Float32, cw: Int32, turn_end: Int32):
        """Key tile j's S, T chain in this warpgroup's turn, then its softmax (O rescaled in place): the tile up to
        its P V (and, in the overlapped loop, its first tile)."""
        hk = k_cons.wait_and_advance()
        if cutlass.const_expr(self.v.pingpong):  # this warpgroup's turn
            cute.arch.barrier(barrier_id=TURN_BARRIER + cw, number_of_threads=256)
        warpgroup.fence()
        mma_qk = self._issue_st(mma_qk, a_qr, t_rk, acc_st, hk.index)
        if cutlass.const_expr(self.v.pingpong):
            self._pass_turn(cw, j, turn_end)
        warpgroup.wait_group(0)
        hk.release()
        self._softmax(j, masked, views, pairs, rows, state, coords, seen, n, row0, scale_log2, None)
        return k_cons, mma_qk

    @cute.jit
    def _tile_overlapped(self, j: Int32, masked: cutlass.Constexpr, mma_qk: cute.TiledMma, mma_pv: cute.TiledMma,
                         a_qr, t_rk, t_rv, acc_st, acc_o, p_ops, rescale, views, pairs: cutlass.Constexpr, rows,
                         state, coords, seen, k_cons, v_cons, n: Int32, row0: Int32, scale_log2: Float32, cw: Int32,
                         turn_end: Int32):
        """Key tile j with the previous tile's P V in flight (FlashAttention-3's intra-warpgroup overlap): issue
        S, T of tile j and O1, O2 += P V of tile j - 1 (p_ops), run tile j's softmax while the second chain
        runs, then rescale O (after that chain, which accumulates into it) and turn tile j's P1, P2 into p_ops."""
        hk = k_cons.wait_and_advance()
        hv = v_cons.wait_and_advance()  # tile j - 1's
        if cutlass.const_expr(self.v.pingpong):  # this warpgroup's turn
            cute.arch.barrier(barrier_id=TURN_BARRIER + cw, number_of_threads=256)
        warpgroup.fence()
        mma_qk = self._issue_st(mma_qk, a_qr, t_rk, acc_st, hk.index)
        mma_pv = self._issue_pv(mma_pv, p_ops, t_rv, acc_o, hv.index)
        if cutlass.const_expr(self.v.pingpong):
            self._pass_turn(cw, j, turn_end)
        warpgroup.wait_group(1)  # S, T done; P V may still run
        hk.release()
        self._softmax(j, masked, views, pairs, rows, state, coords, seen, n, row0, scale_log2, rescale)
        warpgroup.wait_group(0)
        hv.release()
        self._rescale(views, pairs, rescale)
        for x in cutlass.range_constexpr(len(p_ops)):
            store_as_a_operand(acc_st[x], p_ops[x])
        return k_cons, v_cons, mma_qk, mma_pv

    @cute.jit
    def _issue_st(self, mma_qk: cute.TiledMma, a_qr, t_rk, acc_st, stage: Int32):
        """S = Q K^T and T = R K^T (stacked: one chain for both) against K stage `stage`, committed as one group
        (returns the MMA, whose accumulate field it sets: a loop that calls it carries the MMA)."""
        for x in cutlass.range_constexpr(len(a_qr)):
            for kk in cutlass.range_constexpr(cute.size(a_qr[x], mode=[2])):
                mma_qk.set(warpgroup.Field.ACCUMULATE, kk != 0)
                cute.gemm(mma_qk, acc_st[x], a_qr[x][None, None, kk], t_rk[None, None, kk, stage], acc_st[x])
        warpgroup.commit_group()
        return mma_qk

    @cute.jit
    def _issue_pv(self, mma_pv: cute.TiledMma, p_ops, t_rv, acc_o, stage: Int32):
        """O1 += P1 V and O2 += P2 V (stacked: one chain for both) against V stage `stage`, one group."""
        mma_pv.set(warpgroup.Field.ACCUMULATE, True)
        for x in cutlass.range_constexpr(len(p_ops)):
            for kk in cutlass.range_constexpr(cute.size(p_ops[x], mode=[2])):
                cute.gemm(mma_pv, acc_o[x], p_ops[x][None, None, kk], t_rv[None, None, kk, stage], acc_o[x])
        warpgroup.commit_group()
        return mma_pv

    @cute.jit
    def _softmax(self, j: Int32, masked: cutlass.Constexpr, views, pairs: cutlass.Constexpr, rows, state, coords,
                 seen, n: Int32, row0: Int32, scale_log2: Float32, rescale):
        """Tile j's online softmax on the S, T accumulators, in place: S becomes P1 = exp2(S1 - m) and T becomes
        P2 = P1 (T - c) with the updated max m and centre c (state). O's rescale by alpha and its centre shift
        are applied here (rescale None) or left in `rescale` (2 x pairs: alpha, shift) for _rescale."""
        s, t, o1, o2 = views
        n_cols = cute.size(s.shape[1])
        for i in cutlass.range_constexpr(len(pairs)):
            i1, i2 = pairs[i]  # S, O1 in row i1 of their views; T, O2 in row i2 of theirs
            row = row0 + rows[i]
            row_max = -Float32.inf
            for c in cutlass.range_constexpr(n_cols):
                v = s[i1, c]  # raw q.k: the scale (> 0) is applied once to the max and inside exp2
                if cutlass.const_expr(masked):
                    col = j * self.bn + coords[i1, c][1]
                    if cutlass.const_expr(self.v.documents):
                        if col < seen[i, 0]:
                            v = -Float32.inf
                        if col >= seen[i, 1]:
                            v = -Float32.inf
                    else:
                        limit = n
                        if cutlass.const_expr(self.causal):
                            limit = cutlass.min(n, row + 1)
                        if col >= limit:
                            v = -Float32.inf
                s[i1, c] = v
                row_max = cute.arch.fmax(row_max, v)
            row_max = self._quad(row_max, True) * scale_log2
            m_old = state[0, i]
            m_new = cute.arch.fmax(m_old, row_max)
            m_safe = m_new
            if m_new == -Float32.inf:  # nothing visible yet in this row
                m_safe = Float32(0.0)
            alpha = cute.math.exp2(m_old - m_safe, fastmath=True)
            p_sum = Float32(0.0)
            pt_sum = Float32(0.0)
            for c in cutlass.range_constexpr(n_cols):
                p = cute.math.exp2(s[i1, c] * scale_log2 - m_safe, fastmath=True)
                s[i1, c] = p
                p_sum += p
                pt_sum += p * t[i2, c]
            d1 = state[1, i] * alpha + self._quad(p_sum, False)
            t_sum = state[2, i] * alpha + self._quad(pt_sum, False)
            c_old = state[3, i]
            c_new = c_old
            if d1 > 0.0:
                c_new = t_sum / d1
            # centre moves from c_old to c_new: O2 gains (c_old - c_new) O1, like the max rescale
            shift = c_old - c_new
            if cutlass.const_expr(rescale is None):
                self._rescale_pair(o1, o2, i1, i2, alpha, shift)
            else:
                rescale[0, i] = alpha
                rescale[1, i] = shift
            for c in cutlass.range_constexpr(n_cols):
                t[i2, c] = s[i1, c] * (t[i2, c] - c_new)
            state[0, i] = m_new
            state[1, i] = d1
            state[2, i] = t_sum
            state[3, i] = c_new

    # ---- pieces ---------------------------------------------------------------------------------
    @cute.jit
    def _rescale(self, views, pairs: cutlass.Constexpr, rescale):
        """O's rescale and centre shift that _softmax left in `rescale`."""
        _, _, o1, o2 = views
        for i in cutlass.range_constexpr(len(pairs)):
            self._rescale_pair(o1, o2, pairs[i][0], pairs[i][1], rescale[0, i], rescale[1, i])

    @cute.jit
    def _rescale_pair(self, o1: cute.Tensor, o2: cute.Tensor, i1: cutlass.Constexpr, i2: cutlass.Constexpr,
                      alpha: Float32, shift: Float32):
        """O1 *= alpha, O2 = alpha O2 + shift alpha O1 on one query row (only the shift where alpha is 1, exactly,
        with lazy_rescale)."""
        if cutlass.const_expr(self.v.lazy_rescale):
            if alpha == 1.0:  # (exact: the same values as the full rescale)
                for c in cutlass.range_constexpr(cute.size(o1.shape[1])):
                    o2[i2, c] = o2[i2, c] + shift * o1[i1, c]
            else:
                self._rescale_row(o1, o2, i1, i2, alpha, shift)
        else:
            self._rescale_row(o1, o2, i1, i2, alpha, shift)

    @cute.jit
    def _rescale_row(self, o1: cute.Tensor, o2: cute.Tensor, i1: cutlass.Constexpr, i2: cutlass.Constexpr,
                     alpha: Float32, shift: Float32):
        for c in cutlass.range_constexpr(cute.size(o1.shape[1])):
            a1 = o1[i1, c] * alpha
            o1[i1, c] = a1
            o2[i2, c] = o2[i2, c] * alpha + shift * a1

    def _query_row(self, acc_row):
        """The query row (from the warpgroup's first) of accumulator row acc_row: stacked, rows 16 g + i hold
        query 8 g + i (and 16 g + 8 + i its probe)."""
        if self.v.stacked:
            return acc_row // 16 * 8 + acc_row % 8
        return acc_row

    @cute.jit
    def _pass_turn(self, cw: Int32, j: Int32, turn_end: Int32):
        """Let the next consumer warpgroup issue its S, T wgmmas for tile j (the last one: warpgroup 0 for tile
        j + 1): they take turns in a ring, so one's softmax runs while the tensor cores work on the others' tiles.
        turn_end: the item's key tiles, plus one where another item follows in this CTA (persistent), whose first
        tile warpgroup 0 then takes: the last warpgroup skips only a hand-over that would never be taken."""
        if cutlass.const_expr(self.v.warpgroups == 2):  # constant barrier ids: the two-warpgroup kernels' own code
            if cw == 0:
                cute.arch.barrier_arrive(barrier_id=TURN_BARRIER + 1, number_of_threads=256)
            elif j + 1 < turn_end:
                cute.arch.barrier_arrive(barrier_id=TURN_BARRIER + 0, number_of_threads=256)
        else:
            if cw < self.v.warpgroups - 1:
                cute.arch.barrier_arrive(barrier_id=TURN_BARRIER + cw + 1, number_of_threads=256)
            elif j + 1 < turn_end:
                cute.arch.barrier_arrive(barrier_id=TURN_BARRIER + 0, number_of_threads=256)

    @cute.jit
    def _quad(self, val: Float32, is_max: cutlass.Constexpr) -> Float32:
        """Reduce over the 4 lanes that share an accumulator row."""
        for off in cutlass.range_constexpr(2):
            other = cute.arch.shuffle_sync_bfly(val, offset=2 >> off, mask=-1, mask_and_clamp=31)
            if cutlass.const_expr(is_max):
                val = cute.arch.fmax(val, other)
            else:
                val = val + other
        return val
