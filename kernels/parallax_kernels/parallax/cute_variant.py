"""What one compiled CuTe DSL Parallax attention kernel, forward or backward, is specialised for (no DSL
import: the runtime side needs this on hosts without nvidia-cutlass-dsl)."""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("bfloat16", "float16")
HEAD_DIMS = (64, 128)
MMA_ROWS = 64  # rows of a consumer warpgroup's m64 wgmma tile
# registers a consumer thread gets (setmaxnreg) with two or three consumer warpgroups beside the producer's 24:
# 24 x 128 + 240 x 256 and 24 x 128 + 160 x 384 fit an SM's 65,536
CONSUMER_REGS = {2: 240, 3: 160}
MAX_SMEM_BYTES = 232448  # an H100/H200 block's shared memory, opted in (227 KB)
# keys per tile, unstacked: S, T (64 x BN each) and O1, O2 (64 x D each) live in fp32 registers of one warpgroup,
# 2 BN + 2 D values per row; BN = 64 at D = 128 keeps that at 256 values per row (128 registers a thread).
# Stacked, a warpgroup's 64 accumulator rows are 32 query rows and their 32 probe rows: BN + D values per
# accumulator row, so BN = 128 fits at both head dims
UNSTACKED_BLOCK_N = {64: 128, 128: 64}
STACKED_BLOCK_N = 128
# the forward's lpt order: query heads are taken in groups whose K and V (all of their KV heads' keys) fit this
# many bytes, about half an H100/H200's 50 MB L2, so that a group's key tiles are read from DRAM about once
LPT_KV_BYTES = 24 * 2**20


# causal sequences of at most this many tokens, without documents, run the persistent forward in the lpt order
# when a launch names no variant: their CTAs are short (at 2K tokens 1 to 16 key tiles, 8.5 on average), and one
# CTA an SM running item after item overlaps each item's start with the previous one's end; from 8K tokens the
# persistent grid was as fast or slower (docs/kernels_hopper.md)
PERSISTENT_MAX_TOKENS = 4096


def forward_order(n: int, causal: bool, documents: bool) -> dict:
    """The work order of the forward the backends launch for N tokens: {"lpt": True, "persistent": True} for causal
    sequences of at most PERSISTENT_MAX_TOKENS without documents, else {} (one CTA a work item, head by head)."""
    short = causal and not documents and n <= PERSISTENT_MAX_TOKENS
    return {"lpt": True, "persistent": True} if short else {}


def launched_forward_orders(causal: bool, documents: bool) -> list[dict]:
    """Every work order forward_order gives for a mask and documents or not, at some length (what
    scripts/build_kernels.py builds by default)."""
    short = forward_order(0, causal, documents)
    return [{}, short] if short else [{}]


def default_warpgroups(head_dim: int, stacked: bool) -> int:
    """Consumer warpgroups of the forward unless a variant names them: 3 for the stacked kernel at head_dim 64
    (the faster there: docs/kernels_hopper.md), else 2 (at head_dim 128 three spill at 160 registers)."""
    return 3 if stacked and head_dim == 64 else 2


@dataclass(frozen=True)
class AttentionVariant:
    """What one compiled forward kernel is specialised for. GQA's group size and the sequence length are
    run-time arguments."""

    dtype: str  # "bfloat16" | "float16"
    head_dim: int  # 64 | 128
    causal: bool
    block_n: int = 0  # keys per tile; 0: STACKED_BLOCK_N, unstacked UNSTACKED_BLOCK_N[head_dim]
    stages: int = 3  # K/V shared-memory stages (each: one K tile and one V tile)
    # the two consumer warpgroups take turns issuing their S, T wgmmas (named barriers), so that one's
    # softmax overlaps the other's matrix work; False: each issues as soon as its K tile is in
    pingpong: bool = True
    # rows whose running max did not move skip the O1, O2 rescale (alpha = 1; only the centre's FMA on O2)
    lazy_rescale: bool = True
    # packed documents: each query row sees the keys of its own document only (per-token bounds, see
    # document_bounds), and key tiles outside a CTA's documents are skipped
    documents: bool = False
    # one wgmma chain for S and T whose A rows are Q and R of 32 query rows (8-row groups interleaved, so a
    # thread holds S and T of the same row), one for O1 and O2 whose A rows are P1 and P2: half the
    # accumulator registers per query row, wider key tiles, 64 query rows a CTA. False: separate S and T
    # chains over 64 query rows a warpgroup (64-key tiles at head_dim 128)
    stacked: bool = True
    # (stacked only) FlashAttention-3's intra-warpgroup overlap: tile j's softmax runs while tile j - 1's P V
    # chain does, one P live beside the next S, T (the unstacked kernel spills with it). None: as `stacked`
    overlap: bool | None = None
    # the order in which CTAs take their (query tile, batch head): False, head by head (the grid's y), each
    # head's longest tiles first; True, longest first across a group of heads whose K and V fit in L2 (a 1-D
    # grid, lpt_tile), so that the last CTAs to start are short ones
    lpt: bool = False
    # a grid of at most one CTA per SM, each taking the work items (query tile, batch head) cta, cta + grid, ...
    # of the order above (head by head, or lpt): a CTA's producer loads a consumer warpgroup's Q, R rows of the
    # next item once its last S, T chain of the current one is done, and the warpgroups' turns run on into the
    # next item, so one starts it while another stores, where separate CTAs would start cold (with lpt, what the
    # backends launch for short causal sequences: forward_order)
    persistent: bool = False
    # consumer warpgroups: 2, or 3 (stacked, head_dim 64: 96 query rows a CTA at 160 registers a thread, taking
    # turns in a ring; FlashAttention-3's shape at head_dim 64, which amortises a CTA's start and end over more
    # rows and gives each warpgroup's softmax two others' chains to hide behind). 0: default_warpgroups
    warpgroups: int = 0

    def __post_init__(self):
        # block_n 0 and overlap None name defaults: store them resolved, so that both spellings are one variant
        # (one artefact name, one description in its .json)
        if self.overlap is None:
            object.__setattr__(self, "overlap", self.stacked)
        if self.block_n == 0 and self.head_dim in UNSTACKED_BLOCK_N:
            object.__setattr__(self, "block_n", STACKED_BLOCK_N if self.stacked else UNSTACKED_BLOCK_N[self.head_dim])
        if self.warpgroups == 0:
            object.__setattr__(self, "warpgroups", default_warpgroups(self.head_dim, self.stacked))

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"CuTe attention kernel: dtype {self.dtype} is not supported (bfloat16, float16)")
        if self.head_dim not in HEAD_DIMS:
            raise ValueError(f"CuTe attention kernel: head_dim {self.head_dim} is not supported (64, 128)")
        if self.bn not in (64, 128):
            raise ValueError(f"CuTe attention kernel: block_n {self.block_n} is not 64 or 128")
        if not 2 <= self.stages <= 4:
            raise ValueError(f"CuTe attention kernel: {self.stages} K/V stages; 2 to 4 are supported")
        if self.overlap and not self.stacked:
            raise ValueError("CuTe attention kernel: overlap needs stacked (without it the registers spill)")
        if self.warpgroups not in CONSUMER_REGS:
            raise ValueError(f"CuTe attention kernel: {self.warpgroups} consumer warpgroups; 2 or 3 are supported")
        if self.warpgroups == 3 and not (self.stacked and self.head_dim == 64):
            raise ValueError("CuTe attention kernel: three consumer warpgroups (160 registers a thread) need the "
                             "stacked kernel at head_dim 64 (others spill)")
        if self.smem_bytes > MAX_SMEM_BYTES:
            raise ValueError(f"CuTe attention kernel: block_n {self.bn} with {self.stages} K/V stages at head_dim "
                             f"{self.head_dim} needs {self.smem_bytes} bytes of shared memory; a block has "
                             f"{MAX_SMEM_BYTES}")

    @property
    def bn(self) -> int:
        return self.block_n or (STACKED_BLOCK_N if self.stacked else UNSTACKED_BLOCK_N.get(self.head_dim, 64))

    @property
    def wg_rows(self) -> int:
        """Query rows per consumer warpgroup: its wgmma tile's 64 rows, or stacked 32 (and their probe rows)."""
        return MMA_ROWS // 2 if self.stacked else MMA_ROWS

    @property
    def cta_rows(self) -> int:
        return self.wg_rows * self.warpgroups

    @property
    def name(self) -> str:
        mask = "causal" if self.causal else "full"
        turns = "" if self.pingpong else "_np"
        rescale = "" if self.lazy_rescale else "_er"
        docs = "_doc" if self.documents else ""
        stacked = (("_st" if self.stacked else "") + ("_ov" if self.overlap else "") + ("_lpt" if self.lpt else "")
                   + ("_ps" if self.persistent else "") + (f"_w{self.warpgroups}" if self.warpgroups != 2 else ""))
        return (f"parallax_attn_fwd_{self.dtype}_d{self.head_dim}_{mask}{docs}_n{self.bn}_s{self.stages}{turns}"
                f"{rescale}{stacked}")

    @property
    def num_threads(self) -> int:
        return 128 * (self.warpgroups + 1)

    @property
    def smem_bytes(self) -> int:
        """The kernel's shared storage: Q and R (cta_rows x D each), `stages` K and V tiles (BN x D
        each), 16-bit elements, and 1 KB for the mbarriers (each buffer is 1 KB aligned)."""
        return 1024 + 2 * self.cta_rows * self.head_dim * 2 + 2 * self.stages * self.bn * self.head_dim * 2

    def tma_boxes(self) -> tuple[list[int], list[int]]:
        """The TMA boxes (innermost first: head_dim, rows, heads) of the Q/R and the K/V descriptors: 64
        elements of D (the 128-byte swizzle's width; a D = 128 tile takes two copies), a warpgroup's query
        rows (stacked: 8, the rows of one swizzle atom, which the interleaving places apart) or BN key rows,
        one (batch, head)."""
        return [64, 8 if self.stacked else self.wg_rows, 1], [64, self.bn, 1]


def lpt_tile(cta, m_blocks, heads, kv_head_bytes, group, causal: bool, budget=LPT_KV_BYTES, lo=min, hi=max):
    """The (query tile, batch head) of forward CTA `cta` (0 .. m_blocks * heads - 1) in the lpt order: heads in
    groups of whole KV heads whose inputs (kv_head_bytes each, in budget's unit) fit `budget`, and in a group the
    tiles of all its heads by rank: causal, the last query tile (the longest) first; not, tile 0 first. Plain
    arithmetic, so that the kernel runs it on DSL integers (lo, hi: their min and max) and the tests on Python
    ints."""
    per = lo(hi(budget // kv_head_bytes, 1) * group, heads)  # query heads a group
    first = cta // (per * m_blocks) * per
    here = lo(per, heads - first)  # (the last group may be smaller)
    within = cta - first * m_blocks
    rank = within // here
    m_blk = m_blocks - 1 - rank if causal else rank
    return m_blk, first + within - rank * here


# ---- the backward (cute_backward.py) --------------------------------------------------------------
# the backward's lpt order: KV heads in groups whose inputs (K, V and their query heads' Q, R, dO) fit this many
# bytes, about two thirds of an H100/H200's 50 MB L2 (the group sizes timed on an H100: docs/kernels_hopper.md)
BWD_LPT_BYTES = 32 * 2**20


def backward_lpt_heads(kv_heads: int, kv_head_bytes: int, budget: int = BWD_LPT_BYTES) -> int:
    """KV heads a group in the backward's lpt order (B Hkv = kv_heads in all): the most that divide kv_heads and
    whose inputs (kv_head_bytes each) fit `budget`, at least one. Head by head, the last CTAs to start are the
    longest (causal: key tile 0 of the last KV heads) and SMs wait on them; with a group's longest key tiles
    first, its short ones fill the end. A group's CTAs share its Q, R, dO tiles, which stay in L2 while the
    group's inputs fit; equal groups end together."""
    fit = max(budget // kv_head_bytes, 1)
    return max(per for per in range(1, min(fit, kv_heads) + 1) if kv_heads % per == 0)


def backward_lpt_tile(x, y, z, grid_x):
    """The (key tile, batch KV head) of backward CTA (x, y, z) in the lpt order, whose grid is (G, key tiles,
    B Hkv / G) for groups of G KV heads: z is the group, y the key tile, x the KV head within the group. Blocks
    start in index order, x fastest, so a group's CTAs take key tile 0 of each of its KV heads, then key tile 1,
    ... (Python ints or the kernel's Int32.)"""
    return y, z * grid_x + x


BWD_BLOCK_N = 128  # keys per CTA: 64 per consumer warpgroup
BWD_NUM_THREADS = 384  # one producer and two consumer warpgroups
# query rows per step: dK, dV (64 x D fp32 each) stay in registers, beside S^T, T^T, dalpha^T (64 x BM each)
DEFAULT_BWD_BLOCK_M = {64: 64, 128: 32}
# each consumer warp adds its own rows of dQ^T / dR^T (BackwardVariant.warp_adds), or each warpgroup its share:
# per warp takes 0.97-0.98x the backward's time at head_dim 64, 1.03-1.04x at 128 (one H100, docs/kernels_hopper.md)
DEFAULT_BWD_WARP_ADDS = {64: True, 128: False}
# deterministic backward: turns (semaphores) per query tile, one a consumer warp (2 warpgroups of 4), which the
# launcher allocates and the kernel indexes
BWD_ADD_PARTS = 8
DECOUPLED_DS_BUFFERS = 3
DS_TURN_BARRIER = 4  # decoupled: its first named barrier (0: __syncthreads, 1: lockstep's, 2 and 3: the staging's)


def ds_turn_barrier(warpgroup, step):
    """Decoupled backward: the named barrier at which consumer warpgroup `warpgroup` (0, 1) arrives once its
    ds^T, dt^T of `step` are in shared memory, and on which the other warpgroup syncs a step later. Two a
    warpgroup, by the step's parity: one may arrive for step j + 1 before the other has synced on its step j,
    and a named barrier counts arrivals, not whose they are. (Python ints or the kernel's Int32.)"""
    return DS_TURN_BARRIER + 2 * warpgroup + step % 2


@dataclass(frozen=True)
class BackwardVariant:
    """What one compiled backward kernel is specialised for (GQA group and length are run-time)."""

    dtype: str
    head_dim: int
    causal: bool
    block_m: int = 0  # query rows per step; 0: DEFAULT_BWD_BLOCK_M[head_dim]
    stages: int = 2  # Q, R, dO shared-memory stages
    # False: the key tiles add into each query tile's fp32 dQ, dR as they finish (backend "cute");
    # True: in key order (semaphores; backend "cute_deterministic"): bitwise reproducible
    deterministic: bool = False
    # packed documents: a key is seen by the queries of its own document only; query tiles outside a CTA's
    # documents are skipped
    documents: bool = False
    # True: the KV heads in groups (backward_lpt_heads), each group's CTAs taking key tile 0 (causal: the most
    # query tiles) of all its KV heads first, then key tile 1, ...: the grid is (G, key tiles, B Hkv / G).
    # False: head by head, the grid (key tiles, B Hkv)
    lpt: bool = True
    # each warpgroup issues query tile i's [dQ^T | dR^T] chain in step i + 1, once the other warpgroup's ds^T, dt^T
    # of tile i are in (a named barrier it arrives at and the other syncs on): the warpgroups wait for each
    # other's previous tile, not the current one, so one's elementwise work can run beside the other's chains.
    # ds^T, dt^T take DECOUPLED_DS_BUFFERS buffers of their own (cute_backward.py, _step)
    decoupled: bool = False
    # the warpgroup's 64 keys of K held in registers (loaded once) as the A operand of the [S^T | T^T] chain, so
    # that its wgmmas read only [Q; R] from shared memory; 16 registers a thread, head_dim 64 only (at 128 the
    # 32 it takes are not free). Not faster than the default where timed (docs/kernels_hopper.md)
    k_registers: bool = False
    # True: each consumer warp stages and bulk-adds its own 16 rows of the warpgroup's [dQ^T | dR^T] share (a
    # contiguous block of grad_tile_layout), with no barrier of the warpgroup around the staging; False: the
    # warpgroup's lead thread adds the whole share; None: DEFAULT_BWD_WARP_ADDS[head_dim]
    warp_adds: bool | None = None

    def __post_init__(self):
        if self.block_m == 0 and self.head_dim in DEFAULT_BWD_BLOCK_M:
            object.__setattr__(self, "block_m", DEFAULT_BWD_BLOCK_M[self.head_dim])
        if self.warp_adds is None:  # resolved, so that the default and its explicit spelling are one variant
            object.__setattr__(self, "warp_adds", DEFAULT_BWD_WARP_ADDS.get(self.head_dim, False))

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"CuTe attention backward: dtype {self.dtype} is not supported (bfloat16, float16)")
        if self.head_dim not in HEAD_DIMS:
            raise ValueError(f"CuTe attention backward: head_dim {self.head_dim} is not supported (64, 128)")
        if self.bm not in (32, 64):
            raise ValueError(f"CuTe attention backward: block_m {self.block_m} is not 32 or 64")
        if not 2 <= self.stages <= 3:
            raise ValueError(f"CuTe attention backward: {self.stages} Q/R/dO stages; 2 or 3 are supported")
        if self.k_registers and self.head_dim != 64:
            raise ValueError(f"CuTe attention backward: K in registers (k_registers) is built for head_dim 64 only, "
                             f"not {self.head_dim}")
        if self.smem_bytes > MAX_SMEM_BYTES:
            raise ValueError(f"CuTe attention backward: block_m {self.bm} with {self.stages} stages at head_dim "
                             f"{self.head_dim} needs {self.smem_bytes} bytes of shared memory; a block has "
                             f"{MAX_SMEM_BYTES}")

    @property
    def bm(self) -> int:
        return self.block_m or DEFAULT_BWD_BLOCK_M.get(self.head_dim, 32)

    @property
    def name(self) -> str:
        mask = "causal" if self.causal else "full"
        order = "_ordered" if self.deterministic else ""
        docs = "_doc" if self.documents else ""
        lpt = "_lpt" if self.lpt else ""
        # the adds before the opt-ins: an opt-in's name is its head_dim default's plus its own suffix
        warp_adds = "_wa" if self.warp_adds else ""
        decoupled = "_dc" if self.decoupled else ""
        k_registers = "_kr" if self.k_registers else ""
        return (f"parallax_attn_bwd_{self.dtype}_d{self.head_dim}_{mask}{docs}_m{self.bm}_s{self.stages}{order}{lpt}"
                f"{warp_adds}{decoupled}{k_registers}")

    @property
    def num_threads(self) -> int:
        return BWD_NUM_THREADS

    @property
    def smem_bytes(self) -> int:
        """The kernel's shared storage (its struct, checked when compiled): the mbarriers and the statistics
        (4 x BM fp32 a stage) in the first whole KBs, then K, V (BN x D), `stages` x (Q and R stacked (2 BM x D),
        dO (BM x D)) and `ds_buffers` x ds^T and dt^T stacked (2 BM x BN), 16-bit, and the D x BM fp32 staging
        tiles of dQ^T and dR^T."""
        d, bm, s = self.head_dim, self.bm, self.stages
        head = -(-(128 + 16 * bm * s) // 1024) * 1024
        return (head + 2 * (2 * BWD_BLOCK_N * d + s * 3 * bm * d + self.ds_buffers * 2 * bm * BWD_BLOCK_N)
                + 8 * d * bm)

    @property
    def ds_buffers(self) -> int:
        """ds^T / dt^T buffers: one a Q/R/dO stage; decoupled, DECOUPLED_DS_BUFFERS (tile i's is read by the
        other warpgroup's chain until that warpgroup's step i + 2)."""
        return DECOUPLED_DS_BUFFERS if self.decoupled else self.stages

    def tma_boxes(self) -> tuple[list[int], list[int]]:
        """The TMA boxes (innermost first) of the Q/R/dO and the K/V descriptors."""
        return [64, self.bm, 1], [64, BWD_BLOCK_N, 1]


def grad_tile_layout(head_dim: int, bm: int) -> tuple[tuple, tuple]:
    """Where each fp32 value of a dQ^T or dR^T tile (head_dim rows, BM query columns) lives in the kernel's
    staging buffer and in the accumulator in global memory (one contiguous tile a (batch head, query
    tile)): the (shape, stride) of a CuTe layout over (row, column). The rows split as (lane / 4, the two
    8-row halves of a warp's 16, warp, 64-row wgmma tile) and the columns as (the two adjacent columns of
    a thread, lane % 4, 8-column group), the wgmma accumulator's own split, ordered so that the 32 lanes
    of a warp store one register to 32 consecutive words: no shared-memory bank conflicts (a plain
    row-major tile puts 8 lanes on each bank)."""
    return (((8, 2, 4, head_dim // 64), (2, 4, bm // 8)),
            ((4, 64, 16 * bm, 64 * bm), (32, 1, 128)))
