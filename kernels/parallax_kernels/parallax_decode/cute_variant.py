"""What one compiled CuTe DSL decode kernel is specialised for (no DSL import: the runtime side needs
this on hosts without nvidia-cutlass-dsl)."""

from __future__ import annotations

from dataclasses import dataclass

NUM_WARPS = 4
NUM_THREADS = 32 * NUM_WARPS
ROWS = 16  # MMA tile rows: 8 query rows, 8 probe rows
HALF = 8
DTYPES = ("bfloat16", "float16")
HEAD_DIMS = (64, 128)
MAX_CLUSTER = 16  # Hopper's largest thread-block cluster (above 8 it is non-portable: the launcher opts in)


@dataclass(frozen=True)
class DecodeVariant:
    """What one compiled kernel is specialised for."""

    dtype: str  # "bfloat16" | "float16"
    head_dim: int  # 64 | 128
    group: int  # query heads per KV head, 1..8
    block_n: int = 32  # keys per warp tile
    # 0: the splits merge through global partials and a ticket counter (any split count). 2..MAX_CLUSTER:
    # the launch has exactly this many splits, one thread-block cluster per (batch, kv head), and they
    # merge through distributed shared memory behind cluster barriers (no partials, no atomics)
    cluster: int = 0
    # False: a grid of (splits, kv heads, batch) CTAs, one work item each. True: a persistent grid of at most
    # one wave of CTAs (the launcher sizes it by the occupancy query) that walk the (split, kv head, batch)
    # items in a grid-stride loop, merging splits with the ticket (not with a cluster)
    persistent: bool = False

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"CuTe decode kernel: dtype {self.dtype} is not supported (bfloat16, float16)")
        if self.head_dim not in HEAD_DIMS:
            raise ValueError(f"CuTe decode kernel: head_dim {self.head_dim} is not supported (64, 128)")
        if not 1 <= self.group <= HALF:
            raise ValueError(f"CuTe decode kernel: {self.group} query heads per KV head; at most {HALF} fit the tile")
        if self.block_n not in (16, 32, 64):
            raise ValueError(f"CuTe decode kernel: block_n {self.block_n} is not one of 16, 32, 64")
        if self.cluster != 0 and not 2 <= self.cluster <= MAX_CLUSTER:
            raise ValueError(f"CuTe decode kernel: cluster {self.cluster} is not 0 (ticket merge) or "
                             f"2..{MAX_CLUSTER} (Hopper's cluster sizes)")
        if self.persistent and self.cluster:
            raise ValueError("CuTe decode kernel: a persistent grid merges its splits with the ticket; it takes "
                             f"no cluster (cluster {self.cluster})")

    @property
    def name(self) -> str:
        suffix = (f"_c{self.cluster}" if self.cluster else "") + ("_p" if self.persistent else "")
        return f"parallax_decode_{self.dtype}_d{self.head_dim}_g{self.group}_n{self.block_n}{suffix}"

    @property
    def smem_bytes(self) -> int:
        elem = 2
        kv = 2 * NUM_WARPS * self.block_n * self.head_dim * elem
        a = ROWS * self.head_dim * elem
        merge = NUM_WARPS * HALF * 3 * 4 + 16  # the warps' m, d1, t_sum (their O1, O2 overlay the K/V tiles)
        merge += (HALF * 3 * 4 + 16) if self.cluster else 0  # the CTA's m, d1, t_sum, read by the cluster
        return kv + a + merge + 3 * 1024  # + alignment padding

    @property
    def num_threads(self) -> int:
        return NUM_THREADS
