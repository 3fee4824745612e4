"""CuTe DSL Parallax decode kernel (tensor cores via mma.sync; compiled for sm_90a).

Same semantics and split-KV arithmetic as kernels/parallax_kernels/parallax_decode/torch_split.py and the Triton kernel; what is specific here:

- One tensor-core tile per warp holds both branches: rows 0..7 of the A operand are the G query rows
  of a KV head, rows 8..15 the G probe rows (zero-padded to 8), so one m16n8k16 MMA against a K tile
  gives s = q.k in rows 0..7 and t = r.k in rows 8..15. In the accumulator layout a thread owns row
  gid and row gid + 8 of the same columns, so it holds s and t of the same head and key: P1 (row gid)
  and P2 = P1 (t - c) (row gid + 8) are formed in place and multiply V in one more MMA, whose rows
  0..7 are O1 = P1 V and rows 8..15 are O2 = P2 V. Both branches share the running max and every
  K/V tile load.
- A CTA of 4 warps works on one (batch, kv head, split); each warp streams its own key tiles
  (cp.async into shared memory, ldmatrix into registers) with its own online state, and the CTA
  merges the 4 warp states in shared memory.
- Grid (splits, Hkv, B), sized by the caller to fill one wave; with splits > 1 each CTA writes fp32
  partials and takes a ticket from a per-(batch, kv head) counter, and the CTA that draws the last
  ticket merges the splits and resets the counter, all in the same launch. The cluster variant merges
  the splits of a (batch, kv head) in one thread-block cluster instead. The persistent variant launches
  at most one wave of CTAs, which walk the (split, kv head, batch) work items in a loop (ticket merge).

The kernel takes raw pointers, 32/64-bit integers and one float, so its compiled cubin has a plain
parameter list and can be launched without the DSL (kernels/parallax_kernels/parallax_decode/cute_launch.py): `scripts/build_kernels.py`
compiles it on any machine (no GPU needed, CUTE_DSL_ARCH=sm_90a) into an artefact that a GPU host
without nvidia-cutlass-dsl can load; where the package is installed it is compiled on first use.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.utils
from cutlass import Float32, Int32, Int64
from cutlass.cute.nvgpu import cpasync, warp

from parallax_kernels import cute_runtime as rt
from parallax_kernels.parallax_decode.cute_variant import HALF, NUM_THREADS, NUM_WARPS, ROWS, DecodeVariant

MERGE_CHUNK = 16  # splits whose partial states are loaded at once in the merge (one round trip per chunk)
MERGE_CHUNK_SMALL = 4  # the chunk when there are at most this many splits


def compile_variant(variant: DecodeVariant) -> tuple[bytes, str, str]:
    """Compile one variant for sm_90a (works without a GPU when CUTE_DSL_ARCH=sm_90a is set before
    cutlass is imported; on a Hopper host the DSL targets it anyway). Returns (cubin, ptx, kernel symbol)."""
    kernel = ParallaxDecodeKernel(variant)
    ptr, dt = rt.gmem_pointer, kernel.dtype
    args = [ptr(dt, 16)] * 5 + [ptr(Int32, 4)] + [ptr(Float32, 4)] * 3 + [ptr(Float32, 16)] * 2 + [ptr(Int32, 4)]
    args += [Int32(1)] * 5 + [Int64(8), Int64(8), Int32(8), Int64(8), Int64(8), Int32(8), Float32(1.0)]
    return rt.compile_cubin(kernel, args, variant.name)


class ParallaxDecodeKernel:
    def __init__(self, variant: DecodeVariant):
        variant.check()
        self.v = variant
        self.dtype = rt.dsl_dtype(variant.dtype)
        self.d = variant.head_dim
        self.g = variant.group
        self.bn = variant.block_n

    # ---- host side (traced once per variant) -------------------------------------------------
    @cute.jit
    def __call__(
        self,
        p_q: cute.Pointer, p_r: cute.Pointer, p_k: cute.Pointer, p_v: cute.Pointer, p_o: cute.Pointer,
        p_seqlens: cute.Pointer, p_pm: cute.Pointer, p_pd1: cute.Pointer, p_pts: cute.Pointer,
        p_po1: cute.Pointer, p_po2: cute.Pointer, p_counter: cute.Pointer,
        batch: Int32, heads: Int32, kv_heads: Int32, l_max: Int32, splits: Int32,
        k_sb: Int64, k_sh: Int64, k_sl: Int32, v_sb: Int64, v_sh: Int64, v_sl: Int32,
        scale_log2: Float32, stream,
    ):
        d = self.d
        atom_k = 64 if d % 64 == 0 else 32
        swizzled = cute.make_composed_layout(
            cute.make_swizzle(3 if atom_k == 64 else 2, 3, 3), 0,
            cute.make_layout((8, atom_k), stride=(atom_k, 1)),
        )
        s_a = cute.tile_to_shape(swizzled, (ROWS, d), (0, 1))
        s_kv = cute.tile_to_shape(swizzled, (self.bn, d), (0, 1))

        # cp.async of 16-byte vectors by the 32 lanes of one warp
        vec = 128 // self.dtype.width
        lanes_d = atom_k // vec
        g2s = cute.make_copy_atom(cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), self.dtype,
                                  num_bits_per_copy=128)
        warp_copy = cute.make_tiled_copy_tv(
            g2s, cute.make_layout((32 // lanes_d, lanes_d), stride=(lanes_d, 1)), cute.make_layout((1, vec))
        )
        tiled_mma = cute.make_tiled_mma(
            warp.MmaF16BF16Op(self.dtype, Float32, (16, 8, 16)), (1, 1, 1), permutation_mnk=(16, 16, 16)
        )
        launch = self.kernel(
            p_q, p_r, p_k, p_v, p_o, p_seqlens, p_pm, p_pd1, p_pts, p_po1, p_po2, p_counter,
            batch, heads, kv_heads, l_max, splits, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, scale_log2,
            s_a, s_kv, warp_copy, tiled_mma,
        )
        # (this launch is traced for the compile only: kernels/parallax_kernels/parallax_decode/cute_launch.py launches the cubin with its own
        # grid, which for a persistent variant is one wave of CTAs)
        if cutlass.const_expr(self.v.cluster > 0):  # one cluster of `cluster` splits per (batch, kv head)
            launch.launch(grid=[splits, kv_heads, batch], block=[NUM_THREADS, 1, 1], cluster=[self.v.cluster, 1, 1],
                          smem=self.v.smem_bytes, stream=stream)
        else:
            launch.launch(grid=[splits, kv_heads, batch], block=[NUM_THREADS, 1, 1], smem=self.v.smem_bytes,
                          stream=stream)

    # ---- device side -------------------------------------------------------------------------
    @cute.kernel
    def kernel(
        self,
        p_q: cute.Pointer, p_r: cute.Pointer, p_k: cute.Pointer, p_v: cute.Pointer, p_o: cute.Pointer,
        p_seqlens: cute.Pointer, p_pm: cute.Pointer, p_pd1: cute.Pointer, p_pts: cute.Pointer,
        p_po1: cute.Pointer, p_po2: cute.Pointer, p_counter: cute.Pointer,
        batch: Int32, heads: Int32, kv_heads: Int32, l_max: Int32, splits: Int32,
        k_sb: Int64, k_sh: Int64, k_sl: Int32, v_sb: Int64, v_sh: Int64, v_sl: Int32,
        scale_log2: Float32,
        s_a: cute.ComposedLayout, s_kv: cute.ComposedLayout, warp_copy: cute.TiledCopy, tiled_mma: cute.TiledMma,
    ):
        d = self.d
        tidx, _, _ = cute.arch.thread_idx()
        w = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        lane = cute.arch.lane_idx()

        # ---- shared memory: the A tile, per-warp K and V tiles, the merge area ----------------
        smem = cutlass.utils.SmemAllocator()
        s_a_t = smem.allocate_tensor(self.dtype, s_a, byte_alignment=1024)
        kv_elems = cute.cosize(s_kv)
        k_base = smem.allocate_array(self.dtype, NUM_WARPS * kv_elems, byte_alignment=1024)
        v_base = smem.allocate_array(self.dtype, NUM_WARPS * kv_elems, byte_alignment=1024)
        warp_off = cute.assume(w * kv_elems, divby=kv_elems)  # keeps the 1024-byte alignment visible
        sK = cute.make_tensor(k_base + warp_off, s_kv)
        sV = cute.make_tensor(v_base + warp_off, s_kv)
        state_layout = cute.make_layout((NUM_WARPS, HALF), stride=(HALF, 1))
        m_m = smem.allocate_tensor(Float32, state_layout, byte_alignment=16)
        m_d1 = smem.allocate_tensor(Float32, state_layout, byte_alignment=16)
        m_ts = smem.allocate_tensor(Float32, state_layout, byte_alignment=16)
        # the warps' O1 and O2 for the merge overlay the K and V tiles, dead by then: without a merge
        # area of its own a CTA takes about 70 KB of shared memory, room for three on an SM (at about 180
        # registers a thread, the register file holds two)
        o_layout = cute.make_layout((NUM_WARPS, HALF, d), stride=(HALF * d, d, 1))
        m_o1 = cute.make_tensor(cute.recast_ptr(k_base, dtype=Float32), o_layout)
        m_o2 = cute.make_tensor(cute.recast_ptr(v_base, dtype=Float32), o_layout)
        ticket_s = smem.allocate_tensor(Int32, cute.make_layout((4,)), byte_alignment=16)
        c_m, c_d1, c_ts = m_m, m_d1, m_ts  # (stand-ins: only the cluster merge has a CTA state of its own)
        if cutlass.const_expr(self.v.cluster > 0):  # this CTA's merged state, read by the cluster's first CTA
            cta_layout = cute.make_layout((HALF,))
            c_m = smem.allocate_tensor(Float32, cta_layout, byte_alignment=16)
            c_d1 = smem.allocate_tensor(Float32, cta_layout, byte_alignment=16)
            c_ts = smem.allocate_tensor(Float32, cta_layout, byte_alignment=16)

        ptrs = (p_q, p_r, p_k, p_v, p_o, p_seqlens, p_pm, p_pd1, p_pts, p_po1, p_po2, p_counter)
        sizes = (heads, kv_heads, l_max, splits, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, scale_log2)
        tiles = (s_a_t, sK, sV, m_m, m_d1, m_ts, m_o1, m_o2, ticket_s, c_m, c_d1, c_ts)
        if cutlass.const_expr(self.v.persistent):
            # at most one wave of CTAs (the launcher sizes the grid by the occupancy query), each walking the
            # (split, kv head, batch) items, split fastest so that a pair's splits run side by side and its
            # ticket merge follows soon after
            first, _, _ = cute.arch.block_idx()
            step, _, _ = cute.arch.grid_dim()
            for item in range(first, splits * kv_heads * batch, step):
                pair = item // splits
                self._work_item(item % splits, pair % kv_heads, pair // kv_heads, ptrs, sizes, tiles,
                                warp_copy, tiled_mma, tidx, w, lane)
                cute.arch.sync_threads()  # the next item reuses this one's shared memory
        else:
            split, hk, b = cute.arch.block_idx()
            self._work_item(split, hk, b, ptrs, sizes, tiles, warp_copy, tiled_mma, tidx, w, lane)

    @cute.jit
    def _work_item(self, split: Int32, hk: Int32, b: Int32, ptrs, sizes, tiles, warp_copy: cute.TiledCopy,
                   tiled_mma: cute.TiledMma, tidx: Int32, w: Int32, lane: Int32):
        """One (batch, kv head, split): stream its keys through the warps, merge the warps, and write o,
        or this split's partials and, for the last split to finish, the merge of them all."""
        p_q, p_r, p_k, p_v, p_o, p_seqlens, p_pm, p_pd1, p_pts, p_po1, p_po2, p_counter = ptrs
        heads, kv_heads, l_max, splits, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, scale_log2 = sizes
        s_a_t, sK, sV, m_m, m_d1, m_ts, m_o1, m_o2, ticket_s, c_m, c_d1, c_ts = tiles
        d = self.d
        g_n = self.g
        bn = self.bn

        # ---- the visible key range of this split -----------------------------------------------
        seqlens = cute.make_tensor(p_seqlens, cute.make_layout((b + 1,)))
        length = cutlass.min(seqlens[b], l_max)
        chunk = (((length + splits - 1) // splits + bn - 1) // bn) * bn
        lo = cutlass.min(split * chunk, length)
        hi = cutlass.min(lo + chunk, length)
        n_blocks = (hi - lo + bn - 1) // bn

        thr_mma = tiled_mma.get_slice(lane)
        rA = thr_mma.make_fragment_A(thr_mma.partition_A(s_a_t))
        ld_a = cute.make_tiled_copy_A(cute.make_copy_atom(warp.LdMatrix8x8x16bOp(False, 4), self.dtype), tiled_mma)
        ld_k = cute.make_tiled_copy_B(cute.make_copy_atom(warp.LdMatrix8x8x16bOp(False, 4), self.dtype), tiled_mma)
        ld_v = cute.make_tiled_copy_B(cute.make_copy_atom(warp.LdMatrix8x8x16bOp(True, 4), self.dtype), tiled_mma)
        thr_ld_a = ld_a.get_slice(lane)
        thr_ld_k = ld_k.get_slice(lane)
        thr_ld_v = ld_v.get_slice(lane)

        sVt = cute.composition(sV, cute.make_layout((d, bn), stride=(bn, 1)))
        rK = thr_mma.make_fragment_B(thr_mma.partition_B(sK))
        rVt = thr_mma.make_fragment_B(thr_mma.partition_B(sVt))
        tKs = thr_ld_k.partition_S(sK)
        tKr = thr_ld_k.retile(rK)
        tVs = thr_ld_v.partition_S(sVt)
        tVr = thr_ld_v.retile(rVt)

        acc_o = cute.make_rmem_tensor(thr_mma.partition_shape_C((ROWS, d)), Float32)
        acc_o.fill(0.0)
        acc_o_mn = self._mn_view(acc_o)

        # global K/V rows of this (batch, kv head): (L, D) with the cache's row stride
        # (the host checks that every stride is a multiple of 8 elements: 16-byte cp.async vectors)
        k_rows = cute.make_tensor(p_k + cute.assume(b.to(Int64) * k_sb + hk.to(Int64) * k_sh, divby=8),
                                  cute.make_layout((l_max, d), stride=(cute.assume(k_sl, divby=8), 1)))
        v_rows = cute.make_tensor(p_v + cute.assume(b.to(Int64) * v_sb + hk.to(Int64) * v_sh, divby=8),
                                  cute.make_layout((l_max, d), stride=(cute.assume(v_sl, divby=8), 1)))
        thr_copy = warp_copy.get_slice(lane)
        coords = thr_copy.partition_S(cute.make_identity_tensor((bn, d)))
        tKsK = thr_copy.partition_D(sK)
        tVsV = thr_copy.partition_D(sV)

        m_i = -Float32.inf
        d1 = Float32(0.0)
        t_sum = Float32(0.0)
        c = Float32(0.0)
        my_blocks = (n_blocks - w + NUM_WARPS - 1) // NUM_WARPS
        if my_blocks > 0:  # the first K and V tiles are in flight while the A tile is assembled
            self._load_tile(k_rows, tKsK, thr_copy, warp_copy, coords, lo + w * bn, hi)
            cute.arch.cp_async_commit_group()
            self._load_tile(v_rows, tVsV, thr_copy, warp_copy, coords, lo + w * bn, hi)
            cute.arch.cp_async_commit_group()

        # ---- A = [q rows of this KV head's G query heads; r rows], zero-padded ---------------------
        # (a fixed, unrolled trip count: every thread's loads are issued back to back)
        head0 = hk * g_n
        q_rows = cute.make_tensor(p_q, cute.make_layout((heads * (b + 1), d), stride=(d, 1)))
        r_rows = cute.make_tensor(p_r, cute.make_layout((heads * (b + 1), d), stride=(d, 1)))
        for it in cutlass.range_constexpr(ROWS * d // NUM_THREADS):
            i = tidx + it * NUM_THREADS
            row = i // d
            col = i % d
            val = self.dtype(0.0)
            if row < g_n:
                val = q_rows[b * heads + head0 + row, col]
            if row >= HALF and row < HALF + g_n:
                val = r_rows[b * heads + head0 + row - HALF, col]
            s_a_t[row, col] = val
        cute.arch.sync_threads()
        cute.copy(ld_a, thr_ld_a.partition_S(s_a_t), thr_ld_a.retile(rA))

        if my_blocks > 0:
            for it in range(0, my_blocks, 1):
                start = lo + (w + it * NUM_WARPS) * bn
                if it > 0:  # (the first V tile came with the first K tile; groups complete in order)
                    self._load_tile(v_rows, tVsV, thr_copy, warp_copy, coords, start, hi)
                    cute.arch.cp_async_commit_group()
                cute.arch.cp_async_wait_group(1)  # this tile's K has landed
                cute.arch.sync_warp()

                acc_s = cute.make_rmem_tensor(thr_mma.partition_shape_C((ROWS, bn)), Float32)
                acc_s.fill(0.0)
                for kk in cutlass.range_constexpr(cute.size(tKs.shape[2])):
                    cute.copy(ld_k, tKs[None, None, kk], tKr[None, None, kk])
                    cute.gemm(tiled_mma, acc_s, rA[None, None, kk], rK[None, None, kk], acc_s)
                cute.arch.sync_warp()  # every lane is done with the K tile
                if it + 1 < my_blocks:
                    self._load_tile(k_rows, tKsK, thr_copy, warp_copy, coords, start + NUM_WARPS * bn, hi)
                cute.arch.cp_async_commit_group()  # (possibly empty) keeps the wait count static

                m_i, d1, t_sum, c = self._online_update(acc_s, acc_o_mn, thr_mma, start, hi, scale_log2,
                                                        m_i, d1, t_sum, c)
                r_p = cute.make_fragment_like(acc_s, self.dtype)
                r_p.store(acc_s.load().to(self.dtype))
                p_a = self._as_a_operand(r_p)

                cute.arch.cp_async_wait_group(1)  # this tile's V has landed
                cute.arch.sync_warp()
                for kk in cutlass.range_constexpr(cute.size(tVs.shape[2])):
                    cute.copy(ld_v, tVs[None, None, kk], tVr[None, None, kk])
                    cute.gemm(tiled_mma, acc_o, p_a[None, None, kk], rVt[None, None, kk], acc_o)
                cute.arch.sync_warp()  # every lane is done with the V tile
            cute.arch.cp_async_wait_group(0)

        # ---- this warp's state into shared memory, then the CTA merges its warps -----------------
        cute.arch.sync_threads()  # every warp is done with its K and V tiles, which the merge overwrites
        c_coords = thr_mma.partition_C(cute.make_identity_tensor((ROWS, d)))
        c_mn = self._mn_view(c_coords)
        row = c_mn[0, 0][0]  # the head this thread's rows belong to (row gid of the tile)
        if lane % 4 == 0:
            m_m[w, row] = m_i
            m_d1[w, row] = d1
            m_ts[w, row] = t_sum
        for j in cutlass.range_constexpr(cute.size(acc_o_mn.shape[1])):
            col = c_mn[0, j][1]
            m_o1[w, row, col] = acc_o_mn[0, j]
            m_o2[w, row, col] = acc_o_mn[1, j]
        cute.arch.sync_threads()

        o_rows = cute.make_tensor(p_o, cute.make_layout((heads * (b + 1), d), stride=(d, 1)))
        if cutlass.const_expr(self.v.cluster > 0):
            self._cluster_merge(m_m, m_d1, m_ts, m_o1, m_o2, c_m, c_d1, c_ts, o_rows, b * heads + head0, tidx)
        elif splits == 1:
            for i in range(tidx, g_n * d, NUM_THREADS):
                gi = i // d
                col = i % d
                mm, dd, tt, o1, o2 = self._merge(m_m, m_d1, m_ts, m_o1, m_o2, NUM_WARPS, gi, col, NUM_WARPS)
                o_rows[b * heads + head0 + gi, col] = self._finish(dd, o1, o2).to(self.dtype)
        else:
            # partials, stored (B, H, S[, D]) and viewed as [split, query row(, column)], the layout
            # _merge reads; this CTA writes its split, the last CTA reads them all
            n_rows = heads * (b + 1)
            by_split = cute.make_layout((splits, n_rows), stride=(1, splits))
            by_split_d = cute.make_layout((splits, n_rows, d), stride=(d, splits * d, 1))
            pm = cute.make_tensor(p_pm, by_split)
            pd1 = cute.make_tensor(p_pd1, by_split)
            pts = cute.make_tensor(p_pts, by_split)
            po1 = cute.make_tensor(p_po1, by_split_d)
            po2 = cute.make_tensor(p_po2, by_split_d)
            for i in range(tidx, g_n * d, NUM_THREADS):
                gi = i // d
                col = i % d
                mm, dd, tt, o1, o2 = self._merge(m_m, m_d1, m_ts, m_o1, m_o2, NUM_WARPS, gi, col, NUM_WARPS)
                hrow = b * heads + head0 + gi
                po1[split, hrow, col] = o1
                po2[split, hrow, col] = o2
                if col == 0:
                    pm[split, hrow] = mm
                    pd1[split, hrow] = dd
                    pts[split, hrow] = tt
            # the barrier orders every thread's partial stores before thread 0's ticket, whose release
            # (cumulative, at GPU scope) publishes them; the last CTA's thread 0 acquires them with its
            # ticket and the barrier after it passes that on: CUTLASS's GenericBarrier pattern, with no
            # fence per thread (each one waited a round trip on the CTA's critical path)
            cute.arch.sync_threads()
            counter = cute.make_tensor(p_counter, cute.make_layout((kv_heads * (b + 1),)))
            if tidx == 0:
                ticket_s[0] = cute.arch.atomic_add(counter.iterator + (b * kv_heads + hk), Int32(1),
                                                   sem="acq_rel", scope="gpu")
            cute.arch.sync_threads()
            if ticket_s[0] == splits - 1:  # the last CTA of this (batch, kv head): merge all splits
                # a narrow chunk for few splits: a 16-wide one would load 16 states to merge 2
                if splits <= MERGE_CHUNK_SMALL:
                    self._merge_splits(pm, pd1, pts, po1, po2, o_rows, splits, b * heads + head0, tidx,
                                       MERGE_CHUNK_SMALL)
                else:
                    self._merge_splits(pm, pd1, pts, po1, po2, o_rows, splits, b * heads + head0, tidx,
                                       MERGE_CHUNK)
                if tidx == 0:
                    cute.arch.atomic_exch(counter.iterator + (b * kv_heads + hk), Int32(0), sem="relaxed", scope="gpu")

    # ---- pieces ---------------------------------------------------------------------------------
    @cute.jit
    def _load_tile(self, rows: cute.Tensor, dst: cute.Tensor, thr_copy, warp_copy: cute.TiledCopy,
                   coords: cute.Tensor, start: Int32, hi: Int32):
        """cp.async keys [start, start + block_n) of `rows` into this warp's tile; rows at or past `hi`
        are zero-filled (their scores are masked, but 0 x garbage could still be NaN)."""
        tile = cute.local_tile(rows, (self.bn, self.d), (start // self.bn, 0))  # start is a multiple of bn
        src = thr_copy.partition_S(tile)
        for m in cutlass.range_constexpr(cute.size(src.shape[1])):
            if start + coords[0, m, 0][0] < hi:
                cute.copy(warp_copy, src[None, m, None], dst[None, m, None])
            else:
                dst[None, m, None].fill(0.0)

    @cute.jit
    def _online_update(self, acc_s: cute.Tensor, acc_o_mn: cute.Tensor, thr_mma, start: Int32, hi: Int32,
                       scale_log2: Float32, m_i: Float32, d1: Float32, t_sum: Float32, c: Float32):
        """Rows gid (scores) and gid + 8 (probe dots) of this thread: turn them into P1 and P2 in place
        and rescale the output accumulators (kernels/parallax_kernels/parallax_decode/torch_split.py's recurrence)."""
        s_mn = self._mn_view(acc_s)
        cols = self._mn_view(thr_mma.partition_C(cute.make_identity_tensor((ROWS, self.bn))))
        n_cols = cute.size(s_mn.shape[1])
        row_max = -Float32.inf
        for j in cutlass.range_constexpr(n_cols):
            s = s_mn[0, j] * scale_log2
            if start + cols[0, j][1] >= hi:
                s = -Float32.inf
            s_mn[0, j] = s
            row_max = cute.arch.fmax(row_max, s)
        row_max = self._quad(row_max, True)
        m_new = cute.arch.fmax(m_i, row_max)
        m_safe = m_new
        if m_new == -Float32.inf:
            m_safe = Float32(0.0)
        alpha = cute.math.exp2(m_i - m_safe, fastmath=True)
        p_sum = Float32(0.0)
        pt_sum = Float32(0.0)
        for j in cutlass.range_constexpr(n_cols):
            p = cute.math.exp2(s_mn[0, j] - m_safe, fastmath=True)
            s_mn[0, j] = p
            p_sum += p
            pt_sum += p * s_mn[1, j]
        d1_new = d1 * alpha + self._quad(p_sum, False)
        t_sum_new = t_sum * alpha + self._quad(pt_sum, False)
        c_new = c
        if d1_new > 0.0:
            c_new = t_sum_new / d1_new
        for j in cutlass.range_constexpr(cute.size(acc_o_mn.shape[1])):
            a1 = acc_o_mn[0, j] * alpha
            acc_o_mn[0, j] = a1
            acc_o_mn[1, j] = acc_o_mn[1, j] * alpha + (c - c_new) * a1
        for j in cutlass.range_constexpr(n_cols):
            s_mn[1, j] = s_mn[0, j] * (s_mn[1, j] - c_new)
        return m_new, d1_new, t_sum_new, c_new

    @cute.jit
    def _merge_splits(self, pm, pd1, pts, po1, po2, o_rows: cute.Tensor, splits: Int32, row0: Int32, tidx: Int32,
                      chunk: cutlass.Constexpr):
        """The last CTA of a (batch, kv head): merge the splits' partials of its G query rows into o."""
        for i in range(tidx, self.g * self.d, NUM_THREADS):
            hrow = row0 + i // self.d
            col = i % self.d
            mm, dd, tt, o1, o2 = self._merge(pm, pd1, pts, po1, po2, splits, hrow, col, chunk)
            o_rows[hrow, col] = self._finish(dd, o1, o2).to(self.dtype)

    @cute.jit
    def _cluster_merge(self, m_m, m_d1, m_ts, m_o1, m_o2, c_m, c_d1, c_ts, o_rows: cute.Tensor, row0: Int32,
                       tidx: Int32):
        """The splits of one (batch, kv head) are the CTAs of one cluster. Each merges its warps into its
        own shared memory (O1, O2 in place of warp 0's, every element read and written by one thread;
        m, d1, t_sum beside them), then behind a cluster barrier the first CTA reads every CTA's state
        through distributed shared memory, merges them and writes o. The second barrier keeps the other
        CTAs, and their shared memory, alive until it has read them."""
        n = self.v.cluster
        for i in range(tidx, self.g * self.d, NUM_THREADS):
            gi = i // self.d
            col = i % self.d
            mm, dd, tt, o1, o2 = self._merge(m_m, m_d1, m_ts, m_o1, m_o2, NUM_WARPS, gi, col, NUM_WARPS)
            m_o1[0, gi, col] = o1
            m_o2[0, gi, col] = o2
            if col == 0:
                c_m[gi] = mm
                c_d1[gi] = dd
                c_ts[gi] = tt
        cute.arch.cluster_arrive()  # release: this CTA's state is in its shared memory
        cute.arch.cluster_wait()  # acquire: so is every other CTA's
        if cute.arch.block_idx_in_cluster() == 0:
            r_m = cute.make_rmem_tensor(cute.make_layout((n,)), Float32)
            r_d = cute.make_rmem_tensor(cute.make_layout((n,)), Float32)
            r_t = cute.make_rmem_tensor(cute.make_layout((n,)), Float32)
            r_x1 = cute.make_rmem_tensor(cute.make_layout((n,)), Float32)
            r_x2 = cute.make_rmem_tensor(cute.make_layout((n,)), Float32)
            for i in range(tidx, self.g * self.d, NUM_THREADS):
                gi = i // self.d
                col = i % self.d
                for p in cutlass.range_constexpr(n):  # every load issued before any is used
                    r_m[p] = cute.arch.map_dsmem_ptr(c_m.iterator + gi, Int32(p))[0]
                    r_d[p] = cute.arch.map_dsmem_ptr(c_d1.iterator + gi, Int32(p))[0]
                    r_t[p] = cute.arch.map_dsmem_ptr(c_ts.iterator + gi, Int32(p))[0]
                    r_x1[p] = cute.arch.map_dsmem_ptr(m_o1.iterator + (gi * self.d + col), Int32(p))[0]
                    r_x2[p] = cute.arch.map_dsmem_ptr(m_o2.iterator + (gi * self.d + col), Int32(p))[0]
                dd, o1, o2 = self._combine(r_m, r_d, r_t, r_x1, r_x2, n)
                o_rows[row0 + gi, col] = self._finish(dd, o1, o2).to(self.dtype)
        cute.arch.cluster_arrive()
        cute.arch.cluster_wait()

    @cute.jit
    def _combine(self, r_m, r_d, r_t, r_x1, r_x2, n: cutlass.Constexpr):
        """Merge n partial states held in registers (as _merge does for one chunk), returning d1, o1 and
        the centred o2."""
        big_m = -Float32.inf
        for u in cutlass.range_constexpr(n):
            big_m = cute.arch.fmax(big_m, r_m[u])
        m_safe = big_m
        if big_m == -Float32.inf:
            m_safe = Float32(0.0)
        dd = Float32(0.0)
        tt = Float32(0.0)
        o1 = Float32(0.0)
        o2 = Float32(0.0)
        for u in cutlass.range_constexpr(n):
            a = cute.math.exp2(r_m[u] - m_safe, fastmath=True)
            dd, tt, o1, o2 = self._accumulate(a, r_d[u], r_t[u], r_x1[u], r_x2[u], dd, tt, o1, o2)
        if dd > 0.0:
            o2 = o2 - (tt / dd) * o1
        return dd, o1, o2

    @cute.jit
    def _accumulate(self, a: Float32, d_p: Float32, t_p: Float32, x1: Float32, x2: Float32,
                    dd: Float32, tt: Float32, o1: Float32, o2: Float32):
        """Add one partial state, weighted a, to the running sums (see _merge for O2's centring)."""
        c_p = Float32(0.0)
        if d_p > 0.0:
            c_p = t_p / d_p
        return dd + a * d_p, tt + a * t_p, o1 + a * x1, o2 + a * (x2 + c_p * x1)

    @cute.jit
    def _merge(self, pm, pd1, pts, po1, po2, n: Int32, row: Int32, col: Int32, chunk: cutlass.Constexpr):
        """Merge n partial states (m, d1, t_sum, o1, o2 centred on t_sum / d1) of one query row at one
        column, indexed [p, row(, col)]: the warps of this CTA in shared memory, or the splits in global
        memory (see kernels/parallax_kernels/parallax_decode/torch_split.py). One pass, `chunk` states at a time: all of a chunk's loads are
        issued before any is used, so merging up to `chunk` splits waits on one round trip to memory, not
        one per split (indices past n - 1 re-read the last state and get weight 0). The running sums are
        rescaled to each chunk's new maximum; with O2 = sum a (o2_p + (c_p - C) o1_p)
        = sum a (o2_p + c_p o1_p) - C O1 none of them needs C before the end. An empty state has m = -inf."""
        r_m = cute.make_rmem_tensor(cute.make_layout((chunk,)), Float32)
        r_d = cute.make_rmem_tensor(cute.make_layout((chunk,)), Float32)
        r_t = cute.make_rmem_tensor(cute.make_layout((chunk,)), Float32)
        r_x1 = cute.make_rmem_tensor(cute.make_layout((chunk,)), Float32)
        r_x2 = cute.make_rmem_tensor(cute.make_layout((chunk,)), Float32)
        big_m = -Float32.inf
        dd = Float32(0.0)
        tt = Float32(0.0)
        o1 = Float32(0.0)
        o2 = Float32(0.0)
        for base in range(0, n, chunk):
            for u in cutlass.range_constexpr(chunk):
                p = cutlass.min(base + u, n - 1)
                r_m[u] = pm[p, row]
                r_d[u] = pd1[p, row]
                r_t[u] = pts[p, row]
                r_x1[u] = po1[p, row, col]
                r_x2[u] = po2[p, row, col]
            new_m = big_m
            for u in cutlass.range_constexpr(chunk):
                if base + u < n:
                    new_m = cute.arch.fmax(new_m, r_m[u])
            m_safe = new_m
            if new_m == -Float32.inf:
                m_safe = Float32(0.0)
            alpha = cute.math.exp2(big_m - m_safe, fastmath=True)
            dd = dd * alpha
            tt = tt * alpha
            o1 = o1 * alpha
            o2 = o2 * alpha
            for u in cutlass.range_constexpr(chunk):
                a = cute.math.exp2(r_m[u] - m_safe, fastmath=True)
                if base + u >= n:
                    a = Float32(0.0)
                dd, tt, o1, o2 = self._accumulate(a, r_d[u], r_t[u], r_x1[u], r_x2[u], dd, tt, o1, o2)
            big_m = new_m
        if dd > 0.0:
            o2 = o2 - (tt / dd) * o1
        return big_m, dd, tt, o1, o2

    @cute.jit
    def _finish(self, dd: Float32, o1: Float32, o2: Float32) -> Float32:
        out = Float32(0.0)
        if dd > 0.0:
            out = (o1 - o2) / dd
        return out

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

    def _mn_view(self, acc: cute.Tensor) -> cute.Tensor:
        """View an m16n8 accumulator fragment as (rows, columns): row 0 is the thread's row gid,
        row 1 its row gid + 8."""
        col_major = cute.make_layout(acc.layout.shape)
        mn = cute.make_layout(
            ((col_major.shape[0][1], col_major.shape[1]), (col_major.shape[0][0], col_major.shape[2])),
            stride=((col_major.stride[0][1], col_major.stride[1]), (col_major.stride[0][0], col_major.stride[2])),
        )
        return cute.make_tensor(acc.iterator, cute.composition(acc.layout, mn))

    def _as_a_operand(self, r_p: cute.Tensor) -> cute.Tensor:
        """The P fragment (an m16n8 accumulator over the key tile) read as the A operand of the
        m16n8k16 P.V MMA: two n8 accumulator tiles make one k16 A tile."""
        div = cute.logical_divide(r_p.layout, (None, None, 2))
        layout = cute.make_layout(
            ((div.shape[0], div.shape[2][0]), div.shape[1], div.shape[2][1]),
            stride=((div.stride[0], div.stride[2][0]), div.stride[1], div.stride[2][1]),
        )
        return cute.make_tensor(r_p.iterator, layout)
