"""Parallax attention backward for Hopper (sm_90a) in CuTe DSL: TMA, wgmma, warp specialisation.

Per (query i, key j), with w = exp2(scale_log2 q.k - lse) rebuilt from the forward's lse (log2 domain),
t = r.k, tc = t - tbar, dalpha = dO.v, and the row dot products Drow = dO.o, E = dO.a (derived in
docs/design.md; the same arithmetic as the Triton backward, triton_fused.py):
    alpha = w (1 - tc)                 dV += alpha^T dO
    dt = w (E - dalpha)                dK += ds^T Q + dt^T R,   dR += dt K
    ds = scale w (dalpha (1 - tc) + E tc - Drow)                dQ += ds K
Eight matmuls' work per (query tile, key tile): S, T, dalpha recomputed, dV, two for dK, dQ, dR (S and T in one
chain, both dK products in one, dQ and dR in one).

Layout of one CTA (384 threads): one key tile of BN = 128 keys of one (batch, KV head); it walks every
query tile of every query head of that KV head's GQA group, so dK and dV are complete in registers at the
end (no atomics, deterministic) and are stored once.
- warpgroup 0 is the producer (`setmaxnreg` 24): one warp loads the K and V tiles once, then per query
  tile the Q, R and dO tiles (TMA) and the four per-row statistics (lse, tbar, Drow, E: one bulk copy)
  into a ring of shared-memory stages;
- warpgroups 1 and 2 (`setmaxnreg` 240) own 64 keys each. Per query tile (BM queries) each computes the
  transposed score tiles [S^T | T^T] = K [Q; R]^T in one chain (the Q and R tiles stacked as one 2 BM-row
  operand: one read of K for both, N = 2 BM) and dalpha^T = V dO^T (keys as the wgmma's M, so that their
  elementwise results serve as register A operands next), then alpha^T, ds^T, dt^T in registers;
  dV += alpha^T dO and dK += [ds^T | dt^T] [Q; R] (A from registers, B the same tiles read transposed);
  [ds^T | dt^T] also goes to shared memory, and after a barrier of the two warpgroups each computes its
  share of [dQ^T | dR^T] = K^T [ds^T | dt^T] over all 128 keys (at D = 128 one 64-row half of both, at
  D = 64 dQ^T or dR^T), leaves that chain in flight, and in the next step, while that step's score chains
  run, writes the result to shared memory and adds it to fp32 buffers with bulk reduce-adds
  (cp.reduce.async.bulk .add.f32, FlashAttention-3's choice over per-element atomics). The key tiles' adds
  into one query tile land in any order unless the variant is deterministic: then a semaphore per (query
  head, query tile, part: a warpgroup's share, or with per-warp adds a warp's) orders them by key tile (a CTA
  waits for its turn and adds; when it stages its next tile, the add has long completed, and it passes that
  turn on), so dQ and dR are bitwise reproducible run to run.
Registers: dK, dV (64 x D fp32 each) stay live through the loop, so the score tiles are 64 x 2 BM ([S^T | T^T]) and 64 x BM with BM
= 32 at D = 128 (64 at D = 64); [dQ^T | dR^T] (D x 2 BM) is split between the warpgroups.
Packed documents (the documents variant): a CTA visits the query tiles from its first key's document start
(causal: the key) to its last key's document end, every tile masked per key row with its document's bounds.
The dQ, dR buffers hold one contiguous D x BM fp32 block per (batch head, query tile), in the order of
the staging tile in shared memory (cute_variant.grad_tile_layout: bank-conflict free, its 64-row halves
contiguous), so that bulk copies add it; the launcher turns them into (B, H, N, D).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils as utils
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32
from cutlass._mlir.dialects import llvm
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.cutlass_dsl import dsl_user_op

from parallax_kernels import cute_runtime as rt
from parallax_kernels.parallax.cute_fragments import (a_operand_fragment, as_a_operand, mn_view, pack_pair,
                                                      transpose_view, visible_in_document)
from parallax_kernels.parallax.cute_variant import (BWD_ADD_PARTS, BWD_BLOCK_N, BWD_NUM_THREADS, BackwardVariant,
                                                    backward_lpt_tile, ds_turn_barrier, grad_tile_layout)

PRODUCER_REGS = 24
CONSUMER_REGS = 240
KEYS_PER_WG = 64
DS_READY_BARRIER = 1  # named barrier: both consumers' ds^T, dt^T are in shared memory (0 is __syncthreads)
ACC_BARRIER = 2  # named barriers 2, 3: one consumer warpgroup's share of the dQ^T / dR^T staging
STATS = 4  # per query row: lse, tbar, Drow, E


@dsl_user_op
def load_acquire(ptr: cute.Pointer, *, loc=None, ip=None) -> Int32:
    value = llvm.inline_asm(
        cutlass.Int32.mlir_type, [ptr.llvm_ptr], "ld.global.acquire.gpu.b32 $0, [$1];", "=r,l",
        has_side_effects=True, is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT)
    return Int32(value)


@dsl_user_op
def add_release(ptr: cute.Pointer, value: int, *, loc=None, ip=None) -> None:
    llvm.inline_asm(
        None, [ptr.llvm_ptr, Int32(value).ir_value()], "red.release.gpu.global.add.s32 [$0], $1;", "l,r",
        has_side_effects=True, is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT)


@dsl_user_op
def bulk_reduce_add_f32(smem: cute.Pointer, gmem: cute.Pointer, nbytes: int, *, loc=None, ip=None) -> None:
    """gmem[:nbytes] += smem[:nbytes] (fp32, done by the TMA unit in L2; completes as a bulk group)."""
    llvm.inline_asm(
        None, [gmem.llvm_ptr, smem.toint(loc=loc, ip=ip).ir_value(), Int32(nbytes).ir_value()],
        "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [$0], [$1], $2;", "l,r,r",
        has_side_effects=True, is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT)


def compile_variant(variant: BackwardVariant) -> tuple[bytes, str, str]:
    """Compile one backward variant for sm_90a (no GPU needed with CUTE_DSL_ARCH=sm_90a)."""
    kernel = ParallaxAttentionBackward(variant)
    ptr, dt = rt.gmem_pointer, kernel.dtype
    # q, k, v, r, dO; stats; dq, dr accumulators; their semaphores; dk, dv (written as 32-bit pairs); last the
    # documents' per-token bounds (read by the documents variant only)
    args = ([ptr(dt, 16)] * 5 + [ptr(Float32, 16)] * 3 + [ptr(Int32, 16)] + [ptr(cutlass.Uint32, 16)] * 2
            + [Int32(128)] * 6 + [Float32(1.0), Float32(1.0), ptr(Int32, 8)])
    return rt.compile_cubin(kernel, args, variant.name, smem_bytes=variant.smem_bytes)


class ParallaxAttentionBackward:
    def __init__(self, variant: BackwardVariant):
        variant.check()
        self.v = variant
        self.dtype = rt.dsl_dtype(variant.dtype)
        self.d = variant.head_dim
        self.bm = variant.bm
        self.bn = BWD_BLOCK_N
        self.stages = variant.stages
        self.causal = variant.causal

    # ---- host side (traced once per variant) -------------------------------------------------
    @cute.jit
    def __call__(
        self,
        p_q: cute.Pointer, p_k: cute.Pointer, p_v: cute.Pointer, p_r: cute.Pointer, p_do: cute.Pointer,
        p_stats: cute.Pointer, p_dq: cute.Pointer, p_dr: cute.Pointer, p_sem: cute.Pointer, p_dk: cute.Pointer,
        p_dv: cute.Pointer, n: Int32, n_pad: Int32, bh: Int32, bhkv: Int32, heads: Int32, group: Int32,
        scale_log2: Float32, scale: Float32, p_bounds: cute.Pointer, stream,
    ):
        d, bm, bn, dt = self.d, self.bm, self.bn, self.dtype
        head = n * d  # elements per (batch, head): q, k, v, r, dO are contiguous (B, H, N, D)
        q = cute.make_tensor(p_q, cute.make_layout((n, d, bh), stride=(d, 1, head)))
        r = cute.make_tensor(p_r, cute.make_layout((n, d, bh), stride=(d, 1, head)))
        do = cute.make_tensor(p_do, cute.make_layout((n, d, bh), stride=(d, 1, head)))
        k = cute.make_tensor(p_k, cute.make_layout((n, d, bhkv), stride=(d, 1, head)))
        v = cute.make_tensor(p_v, cute.make_layout((n, d, bhkv), stride=(d, 1, head)))

        k_major, mn_major = warpgroup.OperandMajorMode.K, warpgroup.OperandMajorMode.MN
        # [S^T | T^T] = K [Q; R]^T: (BN keys, 2 BM), K = D, Q and R stacked in one operand (one K read for both);
        # dalpha^T = V dO^T: (BN, BM). The two consumers split the keys.
        k_source = warpgroup.OperandSource.RMEM if self.v.k_registers else warpgroup.OperandSource.SMEM
        mma_st = sm90_utils.make_trivial_tiled_mma(dt, dt, k_major, k_major, Float32, (2, 1, 1),
                                                   (KEYS_PER_WG, 2 * bm), k_source)
        mma_s = sm90_utils.make_trivial_tiled_mma(dt, dt, k_major, k_major, Float32, (2, 1, 1), (KEYS_PER_WG, bm))
        # dV: (BN keys, D), K = BM queries; dK: K = 2 BM ([ds^T | dt^T] [Q; R]); A from registers
        mma_kv = sm90_utils.make_trivial_tiled_mma(dt, dt, k_major, mn_major, Float32, (2, 1, 1), (KEYS_PER_WG, d),
                                                   warpgroup.OperandSource.RMEM)
        # [dQ^T | dR^T] = K^T [ds^T | dt^T]: (D, 2 BM), K = BN keys; the consumers split it by rows at D = 128
        # and into dQ^T | dR^T at D = 64
        split = (2, 1, 1) if d == 128 else (1, 2, 1)
        mma_q = sm90_utils.make_trivial_tiled_mma(dt, dt, mn_major, mn_major, Float32, split, (64, 2 * bm // split[1]))
        row_major, col_major = utils.LayoutEnum.ROW_MAJOR, utils.LayoutEnum.COL_MAJOR
        kv_smem = sm90_utils.make_smem_layout_a(row_major, (bn, bm, d), dt, 1)  # (BN, D), K-major
        qr_smem = sm90_utils.make_smem_layout_b(row_major, (bn, 2 * bm, d), dt, self.stages)  # (2 BM, D): Q; R
        do_smem = sm90_utils.make_smem_layout_b(row_major, (bn, bm, d), dt, self.stages)  # (BM, D), K-major
        ds_smem = sm90_utils.make_smem_layout_b(col_major, (d, 2 * bm, bn), dt, self.v.ds_buffers)  # (2 BM, BN)

        g2s = cpasync.CopyBulkTensorTileG2SOp()
        kv_stage = cute.slice_(kv_smem, (None, None, 0))
        # Q (R) fills rows [0, BM) ([BM, 2 BM)) of a stage of the stacked tile: the same layout, 2 BM rows apart
        q_stage = cute.make_composed_layout(qr_smem.inner, 0, cute.composition(
            cute.slice_(qr_smem.outer, (None, None, 0)), cute.make_layout((bm, d), stride=(1, 2 * bm))))
        tma_q, m_q = cpasync.make_tiled_tma_atom(g2s, q, q_stage, (bm, d))
        tma_r, m_r = cpasync.make_tiled_tma_atom(g2s, r, q_stage, (bm, d))
        tma_do, m_do = cpasync.make_tiled_tma_atom(g2s, do, cute.slice_(do_smem, (None, None, 0)), (bm, d))
        tma_k, m_k = cpasync.make_tiled_tma_atom(g2s, k, kv_stage, (bn, d))
        tma_v, m_v = cpasync.make_tiled_tma_atom(g2s, v, kv_stage, (bn, d))
        self.q_bytes = cute.size(q_stage) * dt.width // 8  # its size, not its span (the R rows between)
        self.kv_bytes = cute.size_in_bytes(dt, kv_stage)

        @cute.struct
        class SharedStorage:
            q_mbar: cute.struct.MemRange[cutlass.Int64, 2 * self.stages]
            kv_mbar: cute.struct.MemRange[cutlass.Int64, 2]
            stats: cute.struct.Align[cute.struct.MemRange[Float32, STATS * bm * self.stages], 128]
            sK: cute.struct.Align[cute.struct.MemRange[dt, cute.cosize(kv_smem)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[dt, cute.cosize(kv_smem)], 1024]
            sQR: cute.struct.Align[cute.struct.MemRange[dt, cute.cosize(qr_smem)], 1024]
            sdO: cute.struct.Align[cute.struct.MemRange[dt, cute.cosize(do_smem)], 1024]
            sdST: cute.struct.Align[cute.struct.MemRange[dt, cute.cosize(ds_smem)], 1024]
            acc: cute.struct.Align[cute.struct.MemRange[Float32, 2 * d * bm], 1024]  # dQ^T, dR^T staging

        self.shared_storage = SharedStorage
        n_blocks = (n + bn - 1) // bn
        grid = [bhkv, n_blocks, 1] if self.v.lpt else [n_blocks, bhkv, 1]  # (lpt: one group; launches set G)
        self.kernel(
            mma_st, mma_s, mma_kv, mma_q, tma_q, m_q, tma_r, m_r, tma_do, m_do, tma_k, m_k, tma_v, m_v,
            p_stats, p_dq, p_dr, p_sem, p_dk, p_dv, n, n_pad, heads, group, scale_log2, scale, p_bounds,
            kv_smem, qr_smem, do_smem, ds_smem,
        ).launch(grid=grid, block=[BWD_NUM_THREADS, 1, 1], smem=SharedStorage.size_in_bytes(),
                 stream=stream, min_blocks_per_mp=1)

    # ---- device side ------------------------------------------------------------------------
    @cute.kernel
    def kernel(
        self,
        mma_st: cute.TiledMma, mma_s: cute.TiledMma, mma_kv: cute.TiledMma, mma_q: cute.TiledMma,
        tma_q: cute.CopyAtom, m_q: cute.Tensor, tma_r: cute.CopyAtom, m_r: cute.Tensor,
        tma_do: cute.CopyAtom, m_do: cute.Tensor, tma_k: cute.CopyAtom, m_k: cute.Tensor,
        tma_v: cute.CopyAtom, m_v: cute.Tensor,
        p_stats: cute.Pointer, p_dq: cute.Pointer, p_dr: cute.Pointer, p_sem: cute.Pointer, p_dk: cute.Pointer,
        p_dv: cute.Pointer, n: Int32, n_pad: Int32, heads: Int32, group: Int32, scale_log2: Float32, scale: Float32,
        p_bounds: cute.Pointer, kv_smem: cute.ComposedLayout, qr_smem: cute.ComposedLayout, do_smem: cute.ComposedLayout,
        ds_smem: cute.ComposedLayout,
    ):
        bm, bn = self.bm, self.bn
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = warp_idx // 4

        storage = utils.SmemAllocator().allocate(self.shared_storage)
        consumers = pipeline.CooperativeGroup(pipeline.Agent.Thread, 8)  # one arrive per consumer warp
        producer = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        kv_prod, kv_cons = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.kv_mbar.data_ptr(), num_stages=1, producer_group=producer,
            consumer_group=consumers, tx_count=2 * self.kv_bytes, defer_sync=True).make_participants()
        q_prod, q_cons = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.q_mbar.data_ptr(), num_stages=self.stages, producer_group=producer,
            consumer_group=consumers, tx_count=3 * self.q_bytes + STATS * 4 * bm,
            defer_sync=True).make_participants()

        sK = storage.sK.get_tensor(kv_smem.outer, swizzle=kv_smem.inner)
        sV = storage.sV.get_tensor(kv_smem.outer, swizzle=kv_smem.inner)
        sQR = storage.sQR.get_tensor(qr_smem.outer, swizzle=qr_smem.inner)  # (2 BM, D, stages): Q rows, R rows
        halves = cute.composition(sQR, cute.make_layout(((bm, 2), self.d, self.stages),
                                                        stride=((1, bm), 2 * bm, 2 * bm * self.d)))
        sQ, sR = halves[(None, 0), None, None], halves[(None, 1), None, None]  # the TMA copies' destinations
        sdO = storage.sdO.get_tensor(do_smem.outer, swizzle=do_smem.inner)
        sdST = storage.sdST.get_tensor(ds_smem.outer, swizzle=ds_smem.inner)  # (2 BM, BN, buffers): ds^T, dt^T
        sdST32 = self._as_pairs(storage.sdST.data_ptr(), ds_smem)
        sStats = storage.stats.get_tensor(cute.make_layout((STATS, bm, self.stages), stride=(1, STATS, STATS * bm)))

        # work item: (key tile, batch * KV head); causal: key tile 0 has the most query tiles and runs first. lpt:
        # the grid is (G, key tiles, B Hkv / G) for groups of G KV heads (the launcher's choice,
        # backward_lpt_heads), so that a group takes key tile 0 of each of its KV heads, then key tile 1, ...
        # Either way a lower key tile of a KV head has a lower block index (the deterministic adds wait for the
        # lower ones), and the key tile is a block index
        if cutlass.const_expr(self.v.lpt):
            x, kt, z = cute.arch.block_idx()
            gdim, _, _ = cute.arch.grid_dim()
            kt, bhk = backward_lpt_tile(x, kt, z, gdim)
            bhk = cute.arch.make_warp_uniform(bhk)
        else:
            kt, bhk, _ = cute.arch.block_idx()
        kv_heads = heads // group
        b = bhk // kv_heads
        hk = bhk - b * kv_heads
        n0 = kt * bn
        m_hi = (n + bm - 1) // bm
        m_lo = 0
        m_mid = 0  # query tiles [m_lo, m_mid) need a mask, [m_mid, m_hi) do not
        if cutlass.const_expr(self.causal):
            m_lo = n0 // bm
            m_mid = cutlass.min((n0 + bn + bm - 1) // bm, m_hi)
        if n0 + bn > n:  # keys past the sequence's end: every query tile masks them
            m_mid = m_hi
        bounds = None
        if cutlass.const_expr(self.v.documents):
            # per token of this batch row: [start, end) of its document; the CTA's keys are seen by the queries
            # from its first key's document start (causal: from the first key) to its last key's document end,
            # every tile masked (document edges vary by key)
            bounds = cute.make_tensor(p_bounds + b.to(cutlass.Int64) * n.to(cutlass.Int64) * 2,
                                      cute.make_layout((n, 2), stride=(2, 1)))
            m_lo = cutlass.max(m_lo, bounds[n0, 0] // bm)
            m_hi = (bounds[cutlass.min(n0 + bn, n) - 1, 1] + bm - 1) // bm
            m_mid = m_hi

        pipeline.pipeline_init_arrive(cluster_shape_mn=(1, 1, 1), is_relaxed=True)
        pipeline.pipeline_init_wait(cluster_shape_mn=(1, 1, 1))

        if wg == 0:  # ---- producer -------------------------------------------------------------
            cute.arch.warpgroup_reg_dealloc(PRODUCER_REGS)
            if warp_idx == 0:
                for atom in (tma_q, tma_r, tma_do, tma_k, tma_v):
                    cpasync.prefetch_descriptor(atom)
                self._produce(tma_q, m_q, tma_r, m_r, tma_do, m_do, tma_k, m_k, tma_v, m_v, sQ, sR, sdO, sK, sV,
                              sStats, p_stats, kv_prod, q_prod, n_pad, heads, group, b, hk, bhk, kt, m_lo, m_hi)
        else:  # ---- consumers ------------------------------------------------------------------
            cute.arch.warpgroup_reg_alloc(CONSUMER_REGS)
            self._consume(mma_st, mma_s, mma_kv, mma_q, sK, sV, sQR, sdO, sdST, sdST32, sStats,
                          storage.acc.data_ptr(), kv_cons, q_cons, p_dq, p_dr, p_sem, p_dk, p_dv, n, n_pad, heads,
                          group, b, hk, bhk, n0, m_lo, m_mid, m_hi, bounds, scale_log2, scale, wg - 1, tidx - 128)

    @cute.jit
    def _produce(self, tma_q, m_q, tma_r, m_r, tma_do, m_do, tma_k, m_k, tma_v, m_v, sQ, sR, sdO, sK, sV, sStats,
                 p_stats: cute.Pointer, kv_prod, q_prod, n_pad: Int32, heads: Int32, group: Int32, b: Int32,
                 hk: Int32, bhk: Int32, kt: Int32, m_lo: Int32, m_hi: Int32):
        d, bm, bn = self.d, self.bm, self.bn
        one = cute.make_layout(1)
        g_k = cute.local_tile(m_k[None, None, bhk], (bn, d), (None, 0))
        g_v = cute.local_tile(m_v[None, None, bhk], (bn, d), (None, 0))
        t_sk, t_gk = cpasync.tma_partition(tma_k, 0, one, cute.group_modes(sK, 0, 2), cute.group_modes(g_k, 0, 2))
        t_sv, t_gv = cpasync.tma_partition(tma_v, 0, one, cute.group_modes(sV, 0, 2), cute.group_modes(g_v, 0, 2))
        h_kv = kv_prod.acquire_and_advance()
        cute.copy(tma_k, t_gk[None, kt], t_sk[None, 0], tma_bar_ptr=h_kv.barrier)
        cute.copy(tma_v, t_gv[None, kt], t_sv[None, 0], tma_bar_ptr=h_kv.barrier)
        bulk = cute.make_copy_atom(cpasync.CopyBulkG2SOp(), Float32)
        s_stats = cute.make_tensor(sStats.iterator, cute.make_layout((STATS * bm, self.stages)))
        for g in cutlass.range(group, unroll=1):
            bhq = b * heads + hk * group + g
            g_q = cute.local_tile(m_q[None, None, bhq], (bm, d), (None, 0))
            g_r = cute.local_tile(m_r[None, None, bhq], (bm, d), (None, 0))
            g_do = cute.local_tile(m_do[None, None, bhq], (bm, d), (None, 0))
            t_sq, t_gq = cpasync.tma_partition(tma_q, 0, one, cute.group_modes(sQ, 0, 2), cute.group_modes(g_q, 0, 2))
            t_sr, t_gr = cpasync.tma_partition(tma_r, 0, one, cute.group_modes(sR, 0, 2), cute.group_modes(g_r, 0, 2))
            t_sdo, t_gdo = cpasync.tma_partition(tma_do, 0, one, cute.group_modes(sdO, 0, 2),
                                                 cute.group_modes(g_do, 0, 2))
            for m in cutlass.range(m_lo, m_hi, unroll=1):
                h = q_prod.acquire_and_advance()
                cute.copy(tma_q, t_gq[None, m], t_sq[None, h.index], tma_bar_ptr=h.barrier)
                cute.copy(tma_r, t_gr[None, m], t_sr[None, h.index], tma_bar_ptr=h.barrier)
                cute.copy(tma_do, t_gdo[None, m], t_sdo[None, h.index], tma_bar_ptr=h.barrier)
                row = bhq.to(cutlass.Int64) * n_pad.to(cutlass.Int64) + (m * bm).to(cutlass.Int64)
                g_stats = cute.make_tensor(p_stats + row * STATS, cute.make_layout((STATS * bm,)))
                with cute.arch.elect_one():
                    cute.copy(bulk, g_stats, s_stats[None, h.index], mbar_ptr=h.barrier)

    @cute.jit
    def _consume(self, mma_st: cute.TiledMma, mma_s: cute.TiledMma, mma_kv: cute.TiledMma, mma_q: cute.TiledMma,
                 sK, sV, sQR, sdO, sdST, sdST32, sStats, p_acc: cute.Pointer, kv_cons, q_cons, p_dq: cute.Pointer,
                 p_dr: cute.Pointer, p_sem: cute.Pointer, p_dk: cute.Pointer, p_dv: cute.Pointer, n: Int32,
                 n_pad: Int32, heads: Int32, group: Int32, b: Int32, hk: Int32, bhk: Int32, n0: Int32, m_lo: Int32,
                 m_mid: Int32, m_hi: Int32, bounds, scale_log2: Float32, scale: Float32, cw: Int32, tid: Int32):
        """One MMA warpgroup's loop: cw is 0 or 1 (the CTA's warpgroups 1 and 2), tid its thread among the 256
        of both."""
        d, bm, bn = self.d, self.bm, self.bn
        sK0, sV0 = sK[None, None, 0], sV[None, None, 0]
        thr_st, wg_st = mma_st.get_slice(tid), mma_st.get_slice(128 * cw)
        t_ak = None  # K as the score chain's A operand: shared memory, or registers filled once K is in
        if cutlass.const_expr(not self.v.k_registers):
            t_ak = wg_st.make_fragment_A(wg_st.partition_A(sK0))
        t_bqr = wg_st.make_fragment_B(wg_st.partition_B(sQR))
        acc_st = thr_st.make_fragment_C(thr_st.partition_shape_C((bn, 2 * bm)))  # [S^T | T^T], then [ds^T | dt^T]
        coords = mn_view(thr_st.partition_C(cute.make_identity_tensor((bn, 2 * bm))))
        thr_s, wg_s = mma_s.get_slice(tid), mma_s.get_slice(128 * cw)
        t_av = wg_s.make_fragment_A(wg_s.partition_A(sV0))
        t_bdo = wg_s.make_fragment_B(wg_s.partition_B(sdO))
        acc_da = thr_s.make_fragment_C(thr_s.partition_shape_C((bn, bm)))  # dalpha^T, then alpha^T

        thr_kv, wg_kv = mma_kv.get_slice(tid), mma_kv.get_slice(128 * cw)
        t_bqrt = wg_kv.make_fragment_B(wg_kv.partition_B(transpose_view(sQR)))
        t_bdot = wg_kv.make_fragment_B(wg_kv.partition_B(transpose_view(sdO)))
        acc_dk = thr_kv.make_fragment_C(thr_kv.partition_shape_C((bn, d)))
        acc_dv = thr_kv.make_fragment_C(thr_kv.partition_shape_C((bn, d)))
        acc_dk.fill(0.0)
        acc_dv.fill(0.0)

        thr_q, wg_q = mma_q.get_slice(tid), mma_q.get_slice(128 * cw)
        t_akt = wg_q.make_fragment_A(wg_q.partition_A(transpose_view(sK0)))
        t_bdst = wg_q.make_fragment_B(wg_q.partition_B(sdST))
        acc_g = thr_q.make_fragment_C(thr_q.partition_shape_C((d, 2 * bm)))  # its share of [dQ^T | dR^T]
        # staging: the dQ^T tile, then the dR^T tile, each in the bank-conflict-free order of grad_tile_layout
        (rows, cols), (row_strides, col_strides) = grad_tile_layout(d, bm)
        s_acc = cute.make_tensor(p_acc, cute.make_layout((rows, (cols, 2)),
                                                         stride=(row_strides, (col_strides, d * bm))))
        t_sacc = thr_q.partition_C(s_acc)  # this thread's values of it, as acc_g holds them

        visible = None
        if cutlass.const_expr(self.v.documents):
            visible = cute.make_rmem_tensor((cute.size(coords.shape[0]), 2), Int32)
            keys = [n0 + coords[i, 0][0] for i in range(cute.size(coords.shape[0]))]
            visible_in_document(visible, bounds, keys, n, self.causal, rows_are_queries=False)
        kv_cons.wait()
        if cutlass.const_expr(self.v.k_registers):
            t_ak = self._k_operand(thr_kv, sK0)
        held = cutlass.Int64(-1)  # (deterministic) the query tile whose dQ/dR turn this warpgroup holds
        mma_kv.set(warpgroup.Field.ACCUMULATE, True)
        # Software pipeline: a step issues its dQ^T / dR^T chain and returns with it in flight; the next step
        # stages and adds that result while its own score chains run. The first query tile (masked code,
        # correct for any tile) has no result in flight before it.
        ops = (t_ak, t_bqr, t_av, t_bdo, t_bqrt, t_bdot, t_akt, t_bdst, acc_st, acc_da, acc_dk, acc_dv, acc_g, coords,
               t_sacc, sdST32, sStats, visible, bounds, p_acc, p_dq, p_dr, p_sem, n, n_pad, n0, scale_log2, scale, cw,
               tid)
        bhq0 = b * heads + hk * group
        # prev: the tile whose [dQ^T | dR^T] chain is in flight (-1: none); last: the previous step's tile; j: steps
        # taken (decoupled: which ds^T / dt^T buffer and barrier parity a step uses)
        q_cons, mma_st, mma_s, mma_kv, mma_q, prev, last, j, held = self._step(
            Int32(m_lo), bhq0, True, False, q_cons, mma_st, mma_s, mma_kv, mma_q, cutlass.Int64(-1),
            cutlass.Int64(-1), Int32(0), held, *ops)
        for g in cutlass.range(group, unroll=1):
            bhq = bhq0 + g
            first = m_lo
            if g == 0:
                first = m_lo + 1
            # query tiles [.., m_mid) cross the causal diagonal or see keys past the end: masked
            for m in cutlass.range(first, m_mid, unroll=1):
                q_cons, mma_st, mma_s, mma_kv, mma_q, prev, last, j, held = self._step(
                    m, bhq, True, True, q_cons, mma_st, mma_s, mma_kv, mma_q, prev, last, j, held, *ops)
            for m in cutlass.range(cutlass.max(first, m_mid), m_hi, unroll=1):
                q_cons, mma_st, mma_s, mma_kv, mma_q, prev, last, j, held = self._step(
                    m, bhq, False, True, q_cons, mma_st, mma_s, mma_kv, mma_q, prev, last, j, held, *ops)
        warpgroup.wait_group(0)
        held = self._flush(acc_g, t_sacc, bounds, p_acc, p_dq, p_dr, p_sem, prev, held, n_pad, n0, cw, tid)
        if cutlass.const_expr(self.v.decoupled):  # the last tile's chain, once the other warpgroup's ds^T are in
            cute.arch.barrier(barrier_id=ds_turn_barrier(1 - cw, j - 1), number_of_threads=256)
            warpgroup.fence()  # the staging above read acc_g, which the chain writes
            mma_q = self._issue_dq(mma_q, acc_g, t_akt, t_bdst, (j - 1) % self.v.ds_buffers, cw)
            warpgroup.wait_group(0)
            held = self._flush(acc_g, t_sacc, bounds, p_acc, p_dq, p_dr, p_sem, last, held, n_pad, n0, cw, tid)

        adder, part = self._adder(cw, tid)
        if adder:  # the last bulk add has read its staging buffer before the CTA ends
            if cutlass.const_expr(self.v.deterministic):
                cute.arch.cp_async_bulk_wait_group(0, read=False)  # and completed: pass its turn on
                cute.arch.fence_proxy("async.global")
                add_release(p_sem + held * BWD_ADD_PARTS + part, 1)
            else:
                cute.arch.cp_async_bulk_wait_group(0, read=True)
        cute.arch.sync_warp()

        # ---- epilogue: dK, dV (keys of this warpgroup, rows < n) as 32-bit pairs -------------------
        kv_coords = mn_view(thr_kv.partition_C(cute.make_identity_tensor((bn, d))))
        dk = mn_view(acc_dk)
        dv = mn_view(acc_dv)
        half = d // 2
        base = bhk.to(cutlass.Int64) * n.to(cutlass.Int64) * half
        g_dk = cute.make_tensor(p_dk + base, cute.make_layout((n, half), stride=(half, 1)))
        g_dv = cute.make_tensor(p_dv + base, cute.make_layout((n, half), stride=(half, 1)))
        for i in cutlass.range_constexpr(cute.size(dk.shape[0])):
            key = n0 + kv_coords[i, 0][0]
            if key < n:
                for c in cutlass.range_constexpr(0, cute.size(dk.shape[1]), 2):
                    col = kv_coords[i, c][1]
                    g_dk[key, col // 2] = pack_pair(dk[i, c], dk[i, c + 1], self.dtype)
                    g_dv[key, col // 2] = pack_pair(dv[i, c], dv[i, c + 1], self.dtype)

    @cute.jit
    def _step(self, m: Int32, bhq: Int32, masked: cutlass.Constexpr, pending: cutlass.Constexpr, q_cons,
              mma_st: cute.TiledMma, mma_s: cute.TiledMma, mma_kv: cute.TiledMma, mma_q: cute.TiledMma,
              prev: cutlass.Int64, last: cutlass.Int64, j: Int32, held: cutlass.Int64, t_ak, t_bqr, t_av, t_bdo, t_bqrt, t_bdot, t_akt, t_bdst,
              acc_st, acc_da, acc_dk, acc_dv, acc_g, coords, t_sacc, sdST32, sStats, visible, bounds, p_acc: cute.Pointer,
              p_dq: cute.Pointer, p_dr: cute.Pointer, p_sem: cute.Pointer, n: Int32, n_pad: Int32, n0: Int32,
              scale_log2: Float32, scale: Float32, cw: Int32, tid: Int32):
        """One query tile m of query head bhq against this CTA's keys, the step's `j`th. `pending`: not the first
        step; a [dQ^T | dR^T] chain (its tile index `prev`; decoupled, -1 in the second step: none) is in flight,
        to be added here. Returns with this tile's chain in flight, or decoupled with that of the previous step's
        tile `last` (issued here, after the other warpgroup's ds^T / dt^T of it are in)."""
        bm = self.bm
        h = q_cons.wait_and_advance()
        st = h.index
        warpgroup.fence()
        for kk in cutlass.range_constexpr(cute.size(t_ak, mode=[2])):
            mma_st.set(warpgroup.Field.ACCUMULATE, kk != 0)
            cute.gemm(mma_st, acc_st, t_ak[None, None, kk], t_bqr[None, None, kk, st], acc_st)
        warpgroup.commit_group()
        for kk in cutlass.range_constexpr(cute.size(t_av, mode=[2])):
            mma_s.set(warpgroup.Field.ACCUMULATE, kk != 0)
            cute.gemm(mma_s, acc_da, t_av[None, None, kk], t_bdo[None, None, kk, st], acc_da)
        warpgroup.commit_group()
        if cutlass.const_expr(pending):  # the previous tile's dQ^T / dR^T, while this tile's chains run
            warpgroup.wait_group(2)
            held = self._flush(acc_g, t_sacc, bounds, p_acc, p_dq, p_dr, p_sem, prev, held, n_pad, n0, cw, tid)

        st_v = mn_view(acc_st)  # columns [0, half): S^T, [half, 2 half): T^T of the same queries
        da = mn_view(acc_da)
        half = cute.size(da.shape[1])
        q0 = m * bm
        # weights and centred probe scores while dalpha^T is still being computed
        warpgroup.wait_group(1)
        for c in cutlass.range_constexpr(half):
            ql = coords[0, c][1]
            lse = sStats[0, ql, st]
            tbar = sStats[1, ql, st]
            for i in cutlass.range_constexpr(cute.size(st_v.shape[0])):
                w = cute.math.exp2(st_v[i, c] * scale_log2 - lse, fastmath=True)
                if cutlass.const_expr(masked):
                    if cutlass.const_expr(self.v.documents):
                        if q0 + ql < visible[i, 0]:
                            w = Float32(0.0)
                        if q0 + ql >= visible[i, 1]:
                            w = Float32(0.0)
                    else:
                        key = n0 + coords[i, c][0]
                        limit = n
                        if cutlass.const_expr(self.causal):
                            limit = cutlass.min(n, q0 + ql + 1)
                        if key >= limit:
                            w = Float32(0.0)
                st_v[i, c] = w
                st_v[i, c + half] = st_v[i, c + half] - tbar
        warpgroup.wait_group(0)
        for c in cutlass.range_constexpr(half):
            ql = coords[0, c][1]
            drow = sStats[2, ql, st]
            e = sStats[3, ql, st]
            for i in cutlass.range_constexpr(cute.size(st_v.shape[0])):
                w = st_v[i, c]
                tc = st_v[i, c + half]
                dai = da[i, c]
                one_m = 1.0 - tc
                # in place: [S^T | T^T] becomes [ds^T | dt^T], dalpha^T becomes alpha^T
                da[i, c] = w * one_m  # alpha^T
                st_v[i, c] = w * (dai * one_m + e * tc - drow) * scale  # ds^T (scaled)
                st_v[i, c + half] = w * (e - dai)  # dt^T
        buf = st  # the ds^T / dt^T buffer: the stage's, or decoupled the step's
        if cutlass.const_expr(self.v.decoupled):
            buf = j % self.v.ds_buffers
            if cutlass.const_expr(pending):
                # the other warpgroup's ds^T / dt^T of the previous step are in; before it arrived it had added
                # the chain that read buffer j % 3 (of step j - 3) from both warpgroups' (a step after issuing
                # it), and so had this warpgroup: the buffer is free
                cute.arch.barrier(barrier_id=ds_turn_barrier(1 - cw, j - 1), number_of_threads=256)
        # [ds^T | dt^T] to shared memory as 32-bit pairs: a thread's columns 2j, 2j + 1 are adjacent queries
        for c in cutlass.range_constexpr(0, 2 * half, 2):
            col = coords[0, c][1]
            for i in cutlass.range_constexpr(cute.size(st_v.shape[0])):
                sdST32[col // 2, coords[i, c][0], buf] = pack_pair(st_v[i, c], st_v[i, c + 1], self.dtype)

        alpha_a = as_a_operand(acc_da, self.dtype, bm)
        dsdt_a = as_a_operand(acc_st, self.dtype, 2 * bm)
        warpgroup.fence()
        for kk in cutlass.range_constexpr(cute.size(alpha_a, mode=[2])):
            cute.gemm(mma_kv, acc_dv, alpha_a[None, None, kk], t_bdot[None, None, kk, st], acc_dv)
        for kk in cutlass.range_constexpr(cute.size(dsdt_a, mode=[2])):  # dK += ds^T Q + dt^T R: one chain
            cute.gemm(mma_kv, acc_dk, dsdt_a[None, None, kk], t_bqrt[None, None, kk, st], acc_dk)
        warpgroup.commit_group()

        cute.arch.fence_view_async_shared()
        if cutlass.const_expr(self.v.decoupled):
            # this warpgroup's ds^T / dt^T are in; the previous step's tile's chain (both warpgroups' ds^T / dt^T
            # of it are in: the barrier above)
            cute.arch.barrier_arrive(barrier_id=ds_turn_barrier(cw, j), number_of_threads=256)
            if cutlass.const_expr(pending):
                mma_q = self._issue_dq(mma_q, acc_g, t_akt, t_bdst, (j - 1) % self.v.ds_buffers, cw)
        else:
            # [ds^T | dt^T] of both warpgroups are in shared memory: this warpgroup's share of K^T [ds^T | dt^T]
            cute.arch.barrier(barrier_id=DS_READY_BARRIER, number_of_threads=256)
            mma_q = self._issue_dq(mma_q, acc_g, t_akt, t_bdst, st, cw)
        # dV, dK done (their A operands' registers free); the Q, R, dO tiles and statistics of this stage are
        # read (the dQ^T / dR^T chain reads K and ds^T / dt^T only): the producer may refill it
        if cutlass.const_expr(self.v.decoupled and not pending):
            warpgroup.wait_group(0)  # (no chain issued after dV, dK)
        else:
            warpgroup.wait_group(1)
        h.release()
        tile = bhq.to(cutlass.Int64) * (n_pad // bm).to(cutlass.Int64) + m.to(cutlass.Int64)
        in_flight = tile
        if cutlass.const_expr(self.v.decoupled):
            in_flight = last
        return q_cons, mma_st, mma_s, mma_kv, mma_q, in_flight, tile, j + 1, held

    @cute.jit
    def _issue_dq(self, mma_q: cute.TiledMma, acc_g, t_akt, t_bdst, buf: Int32, cw: Int32) -> cute.TiledMma:
        """Issue and commit this warpgroup's share of [dQ^T | dR^T] = K^T [ds^T | dt^T] over ds^T / dt^T buffer
        `buf`. The same chain at two code sites, one per warpgroup: at one, ptxas does not see that the staging's
        reads of acc_g, a step later, follow the chain's completion, and serialises the wgmmas."""
        if cw == 0:
            for kk in cutlass.range_constexpr(cute.size(t_akt, mode=[2])):
                mma_q.set(warpgroup.Field.ACCUMULATE, kk != 0)
                cute.gemm(mma_q, acc_g, t_akt[None, None, kk], t_bdst[None, None, kk, buf], acc_g)
        else:
            for kk in cutlass.range_constexpr(cute.size(t_akt, mode=[2])):
                mma_q.set(warpgroup.Field.ACCUMULATE, kk != 0)
                cute.gemm(mma_q, acc_g, t_akt[None, None, kk], t_bdst[None, None, kk, buf], acc_g)
        warpgroup.commit_group()
        return mma_q

    def _adder(self, cw: Int32, tid: Int32):
        """Whether this thread issues bulk adds (the lead of its warpgroup, or with warp_adds of its warp), and
        which part of a tile, of the CTA's BWD_ADD_PARTS, those adds are (the deterministic turns)."""
        if cutlass.const_expr(self.v.warp_adds):
            return tid % 32 == 0, cw * 4 + (tid % 128) // 32
        return tid % 128 == 0, cw * 4

    @cute.jit
    def _flush(self, acc_g, t_sacc, bounds, p_acc: cute.Pointer, p_dq: cute.Pointer, p_dr: cute.Pointer,
               p_sem: cute.Pointer, tile: cutlass.Int64, held: cutlass.Int64, n_pad: Int32, n0: Int32, cw: Int32,
               tid: Int32) -> cutlass.Int64:
        """Stage this warpgroup's share of a finished [dQ^T | dR^T] tile in shared memory (once the previous bulk
        add has read it), then add it to the (query tile, head) blocks `tile` of the fp32 buffers with bulk
        reduces: at D = 128 rows [64 cw, 64 cw + 64) of both, at D = 64 all of dQ^T (cw 0) or of dR^T (cw 1).
        warp_adds: a warp holds 16 of those rows, one contiguous block of the tile (grad_tile_layout), and
        stages and adds its own with no barrier wider than the warp; otherwise the warpgroup's lead thread adds
        the whole share after a barrier of the warpgroup. Returns the tile whose turn this warp (warp_adds) or
        warpgroup now holds (deterministic variant)."""
        d, bm = self.d, self.bm
        warp_adds = self.v.warp_adds
        lead, part = self._adder(cw, tid)
        if lead:
            if cutlass.const_expr(self.v.deterministic):
                # the previous add has completed (a step after it was issued): pass its tile's turn on, its
                # global writes (async proxy) ordered before the release (generic proxy)
                cute.arch.cp_async_bulk_wait_group(0, read=False)
                if held >= 0:
                    cute.arch.fence_proxy("async.global")
                    add_release(p_sem + held * BWD_ADD_PARTS + part, 1)
            else:
                cute.arch.cp_async_bulk_wait_group(0, read=True)
        cute.arch.sync_warp()  # the lead's lanes wait for it here, not at an aligned barrier
        if cutlass.const_expr(not warp_adds):
            cute.arch.barrier(barrier_id=ACC_BARRIER + cw, number_of_threads=128)
        for i in cutlass.range_constexpr(cute.size(acc_g)):
            t_sacc[i] = acc_g[i]
        cute.arch.fence_view_async_shared()
        if cutlass.const_expr(warp_adds):
            cute.arch.sync_warp()  # the warp's stores, visible to the async proxy, before its lead adds them
        else:
            cute.arch.barrier(barrier_id=ACC_BARRIER + cw, number_of_threads=128)
        adds = lead
        if cutlass.const_expr(self.v.decoupled):
            adds = lead and tile >= 0  # tile -1: no chain was in flight (what was staged is not a result)
        if adds:
            if cutlass.const_expr(self.v.deterministic):
                # this tile's semaphore of this part counts the key tiles added so far: wait for this one's
                # turn. The key tiles that see a query tile are consecutive, from key tile 0 or (with documents)
                # the one holding the start of the query tile's first row's document
                turn = p_sem + tile * BWD_ADD_PARTS + part
                ahead = n0 // self.bn
                if cutlass.const_expr(self.v.documents):
                    m_pad = (n_pad // self.bm).to(cutlass.Int64)
                    first_row = (tile - (tile // m_pad) * m_pad).to(Int32) * self.bm
                    ahead = ahead - bounds[first_row, 0] // self.bn
                seen = load_acquire(turn)
                while seen != ahead:
                    seen = load_acquire(turn)
                cute.arch.fence_proxy("async.global")  # the previous adds (acquired) before this one (async proxy)
            block = tile * (d * bm)
            rows = 64 * bm  # the rows of one 64-row wgmma tile: contiguous in grad_tile_layout
            at = 0
            if cutlass.const_expr(warp_adds):
                rows = 16 * bm  # a warp's 16 of them: contiguous too
                at = ((tid % 128) // 32) * rows
            if cutlass.const_expr(d == 128):
                at = at + cw * 64 * bm
                bulk_reduce_add_f32(p_acc + at, p_dq + block + at, rows * 4)
                bulk_reduce_add_f32(p_acc + d * bm + at, p_dr + block + at, rows * 4)
            else:
                if cw == 0:
                    bulk_reduce_add_f32(p_acc + at, p_dq + block + at, rows * 4)
                else:
                    bulk_reduce_add_f32(p_acc + d * bm + at, p_dr + block + at, rows * 4)
            cute.arch.cp_async_bulk_commit_group()
        cute.arch.sync_warp()
        if cutlass.const_expr(self.v.deterministic):
            held = tile
        return held

    # ---- pieces ---------------------------------------------------------------------------------
    @cute.jit
    def _k_operand(self, thr_kv, sK0) -> cute.Tensor:
        """This thread's part of its warpgroup's 64 keys of K as a register A operand (64, D) of a K = D wgmma.
        The A fragment's value order is the C fragment's of a (64, D) tile (as_a_operand), so each value is read
        from K at the coordinates that a (BN, D) accumulator of mma_kv gives it."""
        frag = a_operand_fragment(self.dtype, self.d)
        coords = thr_kv.partition_C(cute.make_identity_tensor((self.bn, self.d)))
        as_acc = cute.make_tensor(frag.iterator, cute.make_layout(coords.shape))
        for i in cutlass.range_constexpr(cute.size(as_acc)):
            as_acc[i] = sK0[coords[i]]
        return frag

    def _as_pairs(self, ptr: cute.Pointer, ds_smem: cute.ComposedLayout) -> cute.Tensor:
        """A ds^T / dt^T buffer as 32-bit pairs of adjacent queries, for the stores. The wgmma's swizzle
        (ds_smem.inner, on byte addresses: 2^B 16-byte chunks XORed by the row) is rebuilt on 32-bit
        element offsets, S<B, 2, 3>: recast_tensor and recast_ptr drop a swizzle the pointer carries, and
        a layout swizzle counts elements, not bytes."""
        width = min(2 * self.bm * 2, 128)  # bytes per swizzled row: the 2 BM (ds, dt) columns of one key
        bits = {32: 1, 64: 2, 128: 3}[width]
        if str(ds_smem.inner) != f"S<{bits},4,3>":
            raise RuntimeError(f"ds^T buffer swizzle {ds_smem.inner}, expected S<{bits},4,3> on bytes")
        layout = cute.make_composed_layout(cute.make_swizzle(bits, 2, 3), 0, cute.recast_layout(32, 16, ds_smem.outer))
        return cute.make_tensor(cute.recast_ptr(ptr, dtype=cutlass.Uint32), layout)
