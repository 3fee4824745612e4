"""Run the CuTe DSL decode kernel from a cubin, without the DSL: artefacts and a driver-API launcher.

An artefact is two files per kernel variant in one folder: `<name>.cubin` and `<name>.json` (the
kernel's symbol, its parameter types in order, block size, dynamic shared memory, target arch, the DSL
version that built it). `scripts/build_kernels.py` writes them on any machine; where
nvidia-cutlass-dsl is installed, `load_decode_kernel` compiles a missing variant on first use and
writes it to the same folder. Launching goes through libcuda with ctypes, on torch's current stream.
"""

from __future__ import annotations

from pathlib import Path

from parallax_kernels import cute_runtime as rt
from parallax_kernels.cute_runtime import (  # noqa: F401  (re-exported: the decode API and its tests use them)
    ARCH, ARTEFACT_ENV, CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, CubinKernel, _driver, _LaunchAttribute,
    _LaunchConfig, ParamPacker, cluster_launch_config, default_artefact_dir, dsl_installed, ptx_params,
)
from parallax_kernels.parallax_decode.cute_variant import DTYPES, HEAD_DIMS, MAX_CLUSTER, NUM_WARPS, DecodeVariant


def source_hash() -> str:
    """Hash of the decode kernel's source files: an artefact built from other source is refused, not run."""
    here = Path(__file__).resolve().parent
    return rt.source_hash(here / "cute_kernel.py", here / "cute_variant.py")


def write_artefact(folder: Path, variant: DecodeVariant, cubin: bytes, ptx: str, kernel_name: str,
                   dsl_version: str) -> Path:
    return rt.write_artefact(folder, variant, cubin, ptx, kernel_name, dsl_version, source_hash())


BUILD_COMMAND = "scripts/build_kernels.py --out {folder}"


def read_artefact(folder: Path, variant: DecodeVariant) -> tuple[dict, bytes] | None:
    return rt.read_artefact(folder, variant, source=source_hash(), params=DECODE_PARAMS,
                            kernel_file="kernels/parallax_kernels/parallax_decode/cute_kernel.py",
                            build_command=BUILD_COMMAND.format(folder=folder))


# The kernel's parameter list (kernels/parallax_kernels/parallax_decode/cute_kernel.py, ParallaxDecodeKernel.kernel): 12 pointers,
# batch, heads, kv_heads, l_max, splits, k strides (batch, head: 64-bit; row: 32-bit), v strides alike, scale.
DECODE_PARAMS = ["u64"] * 12 + ["u32"] * 5 + ["u64", "u64", "u32", "u64", "u64", "u32", "f32"]

# ---- the decode op ---------------------------------------------------------------------------------

_LOADED: dict[tuple, CubinKernel] = {}


def load_decode_kernel(variant: DecodeVariant, folder: Path | None = None) -> CubinKernel:
    """The variant's kernel on the current device (rt.load_kernel: prebuilt, or compiled now with the DSL)."""
    return rt.load_kernel(variant, folder, loaded=_LOADED, read=read_artefact, write=write_artefact,
                          compile_module="parallax_kernels.parallax_decode.cute_kernel", what="decode",
                          build_command=BUILD_COMMAND)


def unavailable_reason(x) -> str | None:
    """Why the CuTe decode kernel cannot take tensors like x here (None: it can)."""
    reason = rt.sm90_reason(x, "the CuTe decode kernel")
    if reason is not None:
        return reason
    if str(x.dtype).removeprefix("torch.") not in DTYPES:
        return f"dtype {x.dtype} is not supported ({', '.join(DTYPES)})"
    if x.shape[-1] not in HEAD_DIMS:
        return f"head_dim {x.shape[-1]} is not supported ({', '.join(map(str, HEAD_DIMS))})"
    folder = default_artefact_dir()
    if not dsl_installed() and not any(folder.glob("parallax_decode_*.cubin")):
        return (f"no prebuilt kernels in {folder} and nvidia-cutlass-dsl is not installed to compile them: "
                "run `python scripts/build_kernels.py --out DIR` on any machine with the package and set "
                f"{ARTEFACT_ENV}=DIR")
    return None


# Grid defaults, from `scripts/bench_decode.py --sweep cute` on an H200 (docs/benchmarks.md):
# - a batch whose (batch, kv head) pairs fill the GPU (B Hkv >= SMs) takes no split and 32-key warp tiles
#   (about 70 KB of shared memory, two CTAs an SM): splitting only added merge work there;
# - a smaller batch is split into about one CTA per SM, each split at least one tile per warp: past that
#   the in-launch merge of more partials cost more than the extra CTAs gained. Its caches of at least
#   LONG_CACHE keys take 64-key tiles (138 KB, one CTA an SM, twice the bytes in flight per warp): in the
#   H200 sweep they were as fast or faster than 32-key tiles in every such cell (B = 1, 8 at
#   1K-32K keys; 7.1 against 7.5 us at B = 1, L = 1024). Shorter caches keep 32-key tiles, so that every
#   warp still gets a tile.
# - a grid of one wave whose split count is 2, 4 or 8 merges in a thread-block cluster (distributed shared
#   memory, no global partials, no ticket atomics): in the H200 sweep that beat the ticket merge
#   in every such cell (B = 1, L = 1K: 6.3 against 7.3 us; B = 8: 8.3 against 9.3 us at 1K keys, 63.9
#   against 65.5 at 8K). Two waves of clusters (B = 8 with 4 splits: 80.5 against 66.8 us at 8K) and
#   non-portable 16-CTA clusters (B = 1, 8K: 18.9 against 10.8 us) were slower, so those keep the ticket.
SHORT_BLOCK_N, LONG_BLOCK_N = 32, 64
DEFAULT_CLUSTERS = (2, 4, 8)  # the cluster sizes the default picks (scripts/build_kernels.py builds them)
LONG_CACHE = 1024
MAX_SPLITS = 128  # the merge loops over the splits; this only bounds the partials' size


def default_grid(batch: int, kv_heads: int, max_len: int, sms: int, block_n: int | None = None) -> tuple[int, int]:
    """(keys per warp tile, split count) for a launch without explicit ones (see above); a given block_n
    is kept and the split count follows it."""
    pairs = batch * kv_heads
    if pairs >= sms:
        return block_n or SHORT_BLOCK_N, 1
    block_n = block_n or (LONG_BLOCK_N if max_len >= LONG_CACHE else SHORT_BLOCK_N)
    split_keys_min = NUM_WARPS * block_n
    return block_n, max(1, min(round(sms / pairs), -(-max_len // split_keys_min), MAX_SPLITS))


def default_cluster_merge(batch: int, kv_heads: int, splits: int, sms: int) -> bool:
    """Whether a launch of this many splits merges them in a cluster by default (see above)."""
    return splits in DEFAULT_CLUSTERS and batch * kv_heads * splits <= sms


def persistent_grid(items: int, sms: int, ctas_per_sm: int) -> int:
    """CTAs of a persistent launch: one wave (every SM full) or fewer when there are fewer work items."""
    if ctas_per_sm < 1:
        raise RuntimeError("parallax_decode (cute): the driver reports that no CTA of the persistent kernel fits "
                           "on an SM (registers or shared memory)")
    return max(1, min(items, sms * ctas_per_sm))


def parallax_decode_cute(q, k_cache, v_cache, r, cache_seqlens, *, scale: float, num_splits: int | None = None,
                         block_n: int | None = None, cluster_merge: bool | None = None, persistent: bool = False,
                         artefact_dir: Path | None = None):
    """q, r (B, H, D); k_cache, v_cache (B, Hkv, L_max, D) with unit stride in D and the other strides
    multiples of 8 elements; cache_seqlens (B,). Returns (B, H, D) in q's dtype. cluster_merge True: the
    splits of a (batch, kv head) run as one thread-block cluster and merge through distributed shared
    memory (2..MAX_CLUSTER = 16 splits); False: through global partials and a ticket counter (any split
    count); None: default_cluster_merge decides from the grid. persistent True: one wave of CTAs walks the
    (split, kv head, batch) work items in a loop, merging splits with the ticket (cluster_merge must not be
    True); False (the default): one CTA per work item."""
    import torch

    from parallax_kernels.parallax_decode.triton_split import _sm_count

    b, h, d = q.shape
    sms = _sm_count(q.device)
    if num_splits is None or block_n is None:
        block_n, splits = default_grid(b, k_cache.shape[1], k_cache.shape[2], sms, block_n)
        num_splits = splits if num_splits is None else num_splits
    if persistent and cluster_merge:
        raise ValueError("parallax_decode (cute): persistent=True merges splits with the ticket counter; it cannot "
                         "take cluster_merge=True")
    if cluster_merge is None:
        cluster_merge = not persistent and default_cluster_merge(b, k_cache.shape[1], num_splits, sms)
    if cluster_merge and not 2 <= num_splits <= MAX_CLUSTER:
        raise ValueError(f"parallax_decode (cute): cluster_merge needs 2..{MAX_CLUSTER} splits (one cluster of "
                         f"them per (batch, kv head)); num_splits is {num_splits}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1 or any(s % 8 for s in t.stride()[:3]):
            raise ValueError(f"parallax_decode (cute): {name} strides {t.stride()} must be unit in D and multiples "
                             "of 8 elements elsewhere (16-byte vectors)")
        if t.data_ptr() % 16:
            raise ValueError(f"parallax_decode (cute): {name} does not start on a 16-byte boundary")
    variant = DecodeVariant(dtype=str(q.dtype).removeprefix("torch."), head_dim=d, group=h // k_cache.shape[1],
                            block_n=block_n, cluster=num_splits if cluster_merge else 0, persistent=persistent)
    variant.check()
    q, r = (t if t.is_contiguous() and t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format)
            for t in (q, r))
    with torch.cuda.device(q.device):  # the kernel is loaded into, and launched on, q's device
        return _launch(variant, q, k_cache, v_cache, r, cache_seqlens, scale, num_splits, sms, artefact_dir)


def _launch(variant, q, k_cache, v_cache, r, cache_seqlens, scale, splits, sms, artefact_dir):
    import math

    import torch

    from parallax_kernels.parallax_decode.torch_split import ticket_counters

    b, h, d = q.shape
    hkv, l_max = k_cache.shape[1], k_cache.shape[2]
    kernel = load_decode_kernel(variant, artefact_dir)
    if not 1 <= splits <= MAX_SPLITS:  # the partials are sized by it
        raise ValueError(f"parallax_decode (cute): num_splits {splits} is outside 1..{MAX_SPLITS}")
    out = torch.empty_like(q)
    f32 = dict(dtype=torch.float32, device=q.device)
    pm, pd1, pts = (torch.empty(b, h, splits, **f32) for _ in range(3))
    po1, po2 = (torch.empty(b, h, splits, d, **f32) for _ in range(2))
    stream = rt.raw_stream(q.device)
    counter = ticket_counters(q.device, b * hkv, stream)
    seqlens = cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    ptrs = [t.data_ptr() for t in (q, r, k_cache, v_cache, out, seqlens, pm, pd1, pts, po1, po2, counter)]
    args = ptrs + [b, h, hkv, l_max, splits,
                   k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                   v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), scale * math.log2(math.e)]
    if variant.persistent:  # one wave at most; the CTAs walk the work items
        grid = (persistent_grid(splits * hkv * b, sms, kernel.ctas_per_sm()), 1, 1)
    else:
        grid = (splits, hkv, b)
    kernel.launch(grid, args, stream)
    return out
