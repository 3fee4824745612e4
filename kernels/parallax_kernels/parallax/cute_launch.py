"""Backend "cute" of parallax_attention: the CuTe DSL forward (cute_kernel.py) and backward
(cute_backward.py), launched from their ahead-of-time cubins.

The forward is a torch.library op, `parallax::attention_fwd_cute`, returning what the Triton forward
returns (o, a, lse in the log2 domain, tbar; contiguous (B, H, N, D) and (B, H, N)), so torch.compile
and selective activation checkpointing treat it like the Triton op; its autograd runs the op
`parallax::attention_bwd_cute` on those tensors. With packed documents (document_ids) both run their
documents variants, which take each token's document bounds [start, end) (triton_fused.document_bounds).

Artefacts: `scripts/build_kernels.py --attention` compiles the variants (forward and backward, dtype x
head_dim x causal) on any machine with nvidia-cutlass-dsl (no GPU needed) into `<name>.cubin` +
`<name>.json` in $PARALLAX_KERNEL_DIR (default ~/.cache/parallax_titan/kernels); a host with the package
compiles a missing variant on first use. The TMA descriptors the kernels take by value are built here
with the CUDA driver.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import torch

from parallax_kernels import cute_runtime as rt
from parallax_kernels.batching import fold, unfold
from parallax_kernels.parallax.cute_variant import (BWD_ADD_PARTS, BWD_BLOCK_N, DTYPES, HEAD_DIMS, AttentionVariant,
                                                    BackwardVariant, backward_lpt_heads, forward_order)

ARCH = rt.ARCH
# the kernel's parameters (cute_kernel.py ParallaxAttentionForward.kernel): the two tiled MMAs (empty
# structs), then per operand Q, R, K, V^T its CUtensorMap and its TMA tensor's two dynamic sizes (N and
# B H or B Hkv, int32), then the o, a, lse, tbar pointers, N, H, the GQA group, scale * log2(e) and the
# documents' bounds pointer ((B, N, 2) int32; read by the documents variants only)
ATTENTION_PARAMS = ["b8[1]", "b8[1]"] + ["b8[128]", "b8[8]"] * 4 + ["u64"] * 4 + ["u32"] * 3 + ["f32", "u64"]
# the backward's (cute_backward.py ParallaxAttentionBackward.kernel): four tiled MMAs, Q, R, dO, K, V
# (descriptor and sizes each), the stats, dQ and dR accumulator, semaphore, dK and dV pointers, N, N_pad,
# H, the group, scale * log2(e), scale and the documents' bounds pointer
BACKWARD_PARAMS = ["b8[1]"] * 4 + ["b8[128]", "b8[8]"] * 5 + ["u64"] * 6 + ["u32"] * 4 + ["f32"] * 2 + ["u64"]
_HERE = Path(__file__).resolve().parent
MAX_GRID_Y = 65535
LOG2E = math.log2(math.e)


def _kernel_module(variant) -> str:
    return "cute_backward" if isinstance(variant, BackwardVariant) else "cute_kernel"


def source_hash(module: str = "cute_kernel") -> str:
    return rt.source_hash(_HERE / f"{module}.py", _HERE / "cute_fragments.py", _HERE / "cute_variant.py")


def write_artefact(folder: Path, variant: AttentionVariant | BackwardVariant, cubin: bytes, ptx: str,
                   kernel_name: str, dsl_version: str) -> Path:
    return rt.write_artefact(folder, variant, cubin, ptx, kernel_name, dsl_version,
                             source_hash(_kernel_module(variant)))


BUILD_COMMAND = "scripts/build_kernels.py --attention --out {folder}"


def read_artefact(folder: Path, variant: AttentionVariant | BackwardVariant) -> tuple[dict, bytes] | None:
    module = _kernel_module(variant)
    params = BACKWARD_PARAMS if isinstance(variant, BackwardVariant) else ATTENTION_PARAMS
    return rt.read_artefact(folder, variant, source=source_hash(module), params=params,
                            kernel_file=f"kernels/parallax_kernels/parallax/{module}.py",
                            build_command=BUILD_COMMAND.format(folder=folder))


_LOADED: dict[tuple, rt.CubinKernel] = {}


def load_attention_kernel(variant: AttentionVariant | BackwardVariant, folder: Path | None = None) -> rt.CubinKernel:
    """The variant's kernel on the current device (rt.load_kernel: prebuilt, or compiled now with the DSL)."""
    return rt.load_kernel(variant, folder, loaded=_LOADED, read=read_artefact, write=write_artefact,
                          compile_module=f"parallax_kernels.parallax.{_kernel_module(variant)}", what="attention",
                          build_command=BUILD_COMMAND)


def unavailable_reason(x: torch.Tensor, deterministic: bool = False) -> str | None:
    """Why backend "cute" (deterministic: "cute_deterministic") cannot take tensors like x here (None: it can)."""
    reason = rt.sm90_reason(x, "the CuTe attention kernel")
    if reason is not None:
        return reason
    if str(x.dtype).removeprefix("torch.") not in DTYPES:
        return f"dtype {x.dtype} is not supported ({', '.join(DTYPES)})"
    if x.shape[-1] not in HEAD_DIMS:
        return f"head_dim {x.shape[-1]} is not supported ({', '.join(map(str, HEAD_DIMS))})"
    if torch.compiler.is_compiling():
        # Dynamo cannot trace the file-system and package lookups below (a graph break inside an activation-
        # checkpointed block is an error); the launch makes the same check at the first step and raises the
        # same advice (load_attention_kernel).
        return None
    folder = rt.default_artefact_dir()
    # the variants the backends launch for this dtype and head_dim (a mask and documents or not); builds of other
    # variants (benchmarks' opt-ins) say nothing of them
    dtype, d = str(x.dtype).removeprefix("torch."), x.shape[-1]
    masks = [(causal, docs) for causal in (True, False) for docs in (False, True)]
    forward = [AttentionVariant(dtype, d, causal, documents=docs) for causal, docs in masks]
    backward = [BackwardVariant(dtype, d, causal, deterministic=deterministic, documents=docs) for causal, docs in masks]
    missing = [kind for kind, variants in (("forward", forward),
                                           ("key-ordered backward" if deterministic else "backward", backward))
               if not any((folder / f"{v.name}.cubin").exists() for v in variants)]
    if not rt.dsl_installed() and missing:
        return (f"no prebuilt attention {' or '.join(missing)} kernels in {folder} and nvidia-cutlass-dsl is not "
                "installed to compile them: run `python scripts/build_kernels.py --attention --out DIR` on any "
                f"machine with the package and set {rt.ARTEFACT_ENV}=DIR")
    return None


def _bounds(document_ids: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N, 2) int32: per token, [start, end) of its document (None without documents)."""
    if document_ids is None:
        return None
    from parallax_kernels.parallax.triton_fused import document_bounds

    return torch.stack(document_bounds(document_ids), dim=-1).contiguous()


class _ForwardPlan:
    """What a forward launch needs that depends on the shapes, dtype, mask, device and artefacts alone: made once
    per such key (_forward_plan), so that a call only allocates its outputs, looks up four TMA descriptors and
    launches. The launch sits on the host's critical path: where the host issues a layer's work just in time
    (the first micro-batch of a step), the GPU waits for it."""

    __slots__ = ("launch", "stats_shape", "descriptor_q", "descriptor_kv", "sizes_q", "sizes_kv", "n", "h",
                 "group")

    def __init__(self, q_shape, k_shape, dtype: torch.dtype, device: torch.device, causal: bool, documents: bool,
                 artefact_dir: Path | None, variant_fields: dict):
        b, h, n, d = q_shape
        hkv = k_shape[1]
        name = str(dtype).removeprefix("torch.")
        fields = variant_fields or forward_order(n, causal, documents)  # the backends' choice unless one is named
        variant = AttentionVariant(dtype=name, head_dim=d, causal=causal, documents=documents, **fields)
        variant.check()
        one_dim = variant.lpt or variant.persistent  # a 1-D grid over the work items, else (query tiles, B H)
        if b * h > MAX_GRID_Y and not one_dim:  # the grid's y dimension holds the (batch, head) pairs
            raise ValueError(f"parallax_attention backend 'cute': B * H = {b * h} (batch, head) pairs; the launch "
                             f"takes at most {MAX_GRID_Y}")
        m_blocks = -(-n // variant.cta_rows)
        if one_dim and max(m_blocks * b * h, n * 4 * d if variant.lpt else 0) >= 2**31:  # the kernel's 32-bit counts
            raise ValueError(f"parallax_attention backend 'cute', {'lpt' if variant.lpt else 'persistent'} order: "
                             f"(B, H, N, D) = {(b, h, n, d)} needs {m_blocks * b * h} work items"
                             + (f" and {n * 4 * d} bytes of K and V a head" if variant.lpt else "")
                             + "; each count must be below 2^31")
        grid = (m_blocks * b * h, 1, 1) if one_dim else (m_blocks, b * h, 1)
        if variant.persistent:  # one CTA an SM at most (a CTA takes a whole SM's shared memory)
            from parallax_kernels.parallax_decode.triton_split import _sm_count

            grid = (min(m_blocks * b * h, _sm_count(device)), 1, 1)
        self.launch = load_attention_kernel(variant, artefact_dir).prepared(grid)
        self.stats_shape, self.n, self.h, self.group = (b, h, n), n, h, h // hkv
        box_q, box_kv = variant.tma_boxes()
        self.descriptor_q = _descriptor_layout(q_shape, dtype, box_q)
        self.descriptor_kv = _descriptor_layout(k_shape, dtype, box_kv)
        self.sizes_q, self.sizes_kv = struct.pack("<ii", n, b * h), struct.pack("<ii", n, b * hkv)


_PLANS: dict[tuple, _ForwardPlan] = {}


def _forward_plan(q, k, causal: bool, documents: bool, artefact_dir: Path | None, variant_fields: dict):
    # the variables naming the default artefact folder are part of the key: the kernel is loaded from where they name
    key = (q.shape, k.shape, q.dtype, q.device, causal, documents, artefact_dir, *rt.default_dir_inputs(),
           tuple(sorted(variant_fields.items())))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _ForwardPlan(q.shape, k.shape, q.dtype, q.device, causal, documents, artefact_dir,
                                          variant_fields)
    return plan


def _launch(q, k, v, r, causal: bool, scale: float, document_ids: torch.Tensor | None = None,
            artefact_dir: Path | None = None, **variant_fields):
    """Launch the forward (q, k, v, r contiguous, 16-byte aligned). Without `variant_fields` the variant the
    backends launch (forward_order: for short causal sequences the persistent lpt one); with them (block_n,
    stages, pingpong, lazy_rescale, stacked, overlap, lpt, persistent, warpgroups), exactly that variant, the
    other fields the AttentionVariant defaults (one CTA a work item, head by head), for benchmarks and tests."""
    bounds = _bounds(document_ids)
    plan = _forward_plan(q, k, causal, bounds is not None, artefact_dir, variant_fields)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    a = torch.empty_like(o)
    lse = torch.empty(plan.stats_shape, dtype=torch.float32, device=q.device)
    tbar = torch.empty_like(lse)
    sizes_q, sizes_kv = plan.sizes_q, plan.sizes_kv
    args = [b"\0", b"\0", plan.descriptor_q(q.data_ptr()), sizes_q, plan.descriptor_q(r.data_ptr()), sizes_q,
            plan.descriptor_kv(k.data_ptr()), sizes_kv, plan.descriptor_kv(v.data_ptr()), sizes_kv,
            o.data_ptr(), a.data_ptr(), lse.data_ptr(), tbar.data_ptr(), plan.n, plan.h, plan.group,
            scale * LOG2E, bounds.data_ptr() if bounds is not None else 0]
    plan.launch(args, rt.raw_stream(q.device))
    return o, a, lse, tbar


def _launch_backward(grad_o, q, k, v, r, o, a, lse, tbar, causal: bool, scale: float,
                     document_ids: torch.Tensor | None = None, artefact_dir: Path | None = None,
                     lpt_heads: int | None = None, **variant_fields):
    """Launch the backward (every tensor contiguous, 16-byte aligned); returns dq, dk, dv, dr. `lpt_heads`: KV
    heads a group in the lpt order (a divisor of B Hkv; default backward_lpt_heads's choice)."""
    from parallax_kernels.parallax.cute_backward_io import backward_statistics, gradients_from_tiles

    b, h, n, d = q.shape
    hkv = k.shape[1]
    dtype = str(q.dtype).removeprefix("torch.")
    bounds = _bounds(document_ids)
    variant = BackwardVariant(dtype=dtype, head_dim=d, causal=causal, documents=bounds is not None, **variant_fields)
    variant.check()
    n_blocks = -(-n // BWD_BLOCK_N)
    if variant.lpt:
        if lpt_heads is None:  # a KV head's inputs: K, V and its query heads' Q, R, dO
            lpt_heads = backward_lpt_heads(b * hkv, n * d * q.element_size() * (2 + 3 * (h // hkv)))
        elif not isinstance(lpt_heads, int) or lpt_heads < 1 or (b * hkv) % lpt_heads:
            raise ValueError(f"parallax_attention backend 'cute', lpt order: lpt_heads={lpt_heads} KV heads a "
                             f"group must divide B * Hkv = {b * hkv}")
        if n_blocks > MAX_GRID_Y:
            raise ValueError(f"parallax_attention backend 'cute', lpt order: N = {n} needs {n_blocks} key tiles; "
                             f"the backward launch takes at most {MAX_GRID_Y}")
    elif lpt_heads is not None:
        raise ValueError("parallax_attention backend 'cute': lpt_heads is for the lpt order (lpt=True)")
    kv_rows = b * hkv // lpt_heads if variant.lpt else b * hkv  # groups (the grid's z), or (batch, KV head) pairs
    if kv_rows > MAX_GRID_Y:
        raise ValueError(f"parallax_attention backend 'cute': B * Hkv = {b * hkv} (batch, KV head) pairs"
                         + (f" in groups of {lpt_heads}" if variant.lpt else "")
                         + f"; the backward launch takes at most {MAX_GRID_Y} rows of CTAs")
    kernel = load_attention_kernel(variant, artefact_dir)
    # per query row (lse, tbar, Drow, E), padded to whole query tiles; padding rows get lse = inf (weight 0)
    n_pad = -(-n // variant.bm) * variant.bm
    stats = backward_statistics(grad_o, o, a, lse, tbar, n_pad)
    # dQ, dR accumulate in fp32, one contiguous D x BM block per (batch head, query tile) (grad_tile_layout)
    m_tiles = n_pad // variant.bm
    acc = torch.zeros(2, b * h, m_tiles, d * variant.bm, dtype=torch.float32, device=q.device)
    # deterministic: per (batch head, query tile) the number of key tiles whose part p of dQ and dR is added
    # (p = 4 warpgroup + warp: each consumer warp adds its own rows, cute_backward._flush)
    turns = (torch.zeros(b * h, m_tiles, BWD_ADD_PARTS, dtype=torch.int32, device=q.device)
             if variant.deterministic else None)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty_like(dk)
    box_q, box_kv = variant.tma_boxes()
    sizes_q, sizes_kv = struct.pack("<ii", n, b * h), struct.pack("<ii", n, b * hkv)
    descriptors = [part for t, box, sizes in ((q, box_q, sizes_q), (r, box_q, sizes_q), (grad_o, box_q, sizes_q),
                                              (k, box_kv, sizes_kv), (v, box_kv, sizes_kv))
                   for part in (_tma_descriptor(t, box), sizes)]
    args = [b"\0"] * 4 + descriptors + [
        stats.data_ptr(), acc[0].data_ptr(), acc[1].data_ptr(), turns.data_ptr() if turns is not None else 0,
        dk.data_ptr(), dv.data_ptr(), n, n_pad, h, h // hkv, scale * LOG2E, scale,
        bounds.data_ptr() if bounds is not None else 0]
    grid = (lpt_heads, n_blocks, kv_rows) if variant.lpt else (n_blocks, kv_rows, 1)
    kernel.launch(grid, args, rt.raw_stream(q.device))
    dq, dr = gradients_from_tiles(acc, (b, h, n, d), q.dtype, variant.bm)
    return dq, dk, dv, dr


def _descriptor_layout(shape, dtype: torch.dtype, box: list[int]):
    """The TMA descriptor of contiguous (B, heads, N, D) tensors of this shape and dtype, as a function of the
    tensor's address: dims innermost first (D, N, B heads)."""
    b, heads, n, d = shape
    es = dtype.itemsize
    name = str(dtype).removeprefix("torch.")
    dims, strides, box = (d, n, b * heads), (d * es, n * d * es), tuple(box)
    return lambda address: rt.encode_tma_tiled(name, address, dims, strides, box)


def _tma_descriptor(t: torch.Tensor, box: list[int]) -> bytes:
    """The TMA descriptor of a contiguous (B, heads, N, D) tensor."""
    return _descriptor_layout(t.shape, t.dtype, box)(t.data_ptr())


def _aligned(x: torch.Tensor) -> torch.Tensor:
    # TMA reads contiguous (B, H, N, D) tensors from 16-byte aligned addresses
    return x if x.is_contiguous() and x.data_ptr() % 16 == 0 else x.clone(memory_format=torch.contiguous_format)


@torch.library.custom_op("parallax::attention_fwd_cute", mutates_args=())
def attention_fwd_cute(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor, causal: bool, scale: float,
    deterministic: bool = False, document_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward; `deterministic` selects its backward's dQ/dR order (attention_bwd_cute); `document_ids`
    (B, N) labels packed documents (contiguous segments)."""
    q, k, v, r = (_aligned(x) for x in (q, k, v, r))
    with torch.cuda.device(q.device):  # the kernel is loaded into, and launched on, q's device
        return _launch(q, k, v, r, causal, scale, document_ids)


@attention_fwd_cute.register_fake
def _(q, k, v, r, causal, scale, deterministic=False, document_ids=None):
    b, h, n, _ = q.shape
    stats = q.new_empty(b, h, n, dtype=torch.float32)
    return q.new_empty(q.shape), q.new_empty(q.shape), stats, torch.empty_like(stats)


def _setup_context(ctx, inputs, output):
    q, k, v, r, causal, scale = inputs[:6]
    o, a, lse, tbar = output
    document_ids = inputs[7] if len(inputs) > 7 else None
    ctx.save_for_backward(q, k, v, r, o, a, lse, tbar, document_ids)
    ctx.causal, ctx.scale = causal, scale
    ctx.deterministic = inputs[6] if len(inputs) > 6 else False


@torch.library.custom_op("parallax::attention_bwd_cute", mutates_args=())
def attention_bwd_cute(
    grad_o: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor, o: torch.Tensor,
    a: torch.Tensor, lse: torch.Tensor, tbar: torch.Tensor, causal: bool, scale: float, deterministic: bool = False,
    document_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_o, q, k, v, r, o, a = (_aligned(x) for x in (grad_o, q, k, v, r, o, a))
    with torch.cuda.device(q.device):
        return _launch_backward(grad_o, q, k, v, r, o, a, lse.contiguous(), tbar.contiguous(), causal, scale,
                                document_ids, deterministic=deterministic)


@attention_bwd_cute.register_fake
def _(grad_o, q, k, v, r, o, a, lse, tbar, causal, scale, deterministic=False, document_ids=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), r.new_empty(r.shape)


def _backward(ctx, grad_o, grad_a, grad_lse, grad_tbar):
    q, k, v, r, o, a, lse, tbar, document_ids = ctx.saved_tensors
    # made contiguous outside the op, where torch.compile can fuse the copy into grad_o's producer (the
    # model's output transpose hands back a transposed gradient)
    grad_o = grad_o.contiguous()
    dq, dk, dv, dr = attention_bwd_cute(grad_o, q, k, v, r, o, a, lse, tbar, ctx.causal, ctx.scale,
                                        ctx.deterministic, document_ids)
    return dq, dk, dv, dr, None, None, None, None


attention_fwd_cute.register_autograd(_backward, setup_context=_setup_context)


@attention_fwd_cute.register_vmap
def _(info, in_dims, *args):  # the vmapped dim joins the batch: one launch
    return unfold(info.batch_size, attention_fwd_cute(*fold(info.batch_size, in_dims, args)))


@attention_bwd_cute.register_vmap
def _(info, in_dims, *args):
    return unfold(info.batch_size, attention_bwd_cute(*fold(info.batch_size, in_dims, args)))


def parallax_attention_cute(q, k, v, r, *, causal: bool, scale: float, document_ids=None,
                            deterministic: bool = False) -> torch.Tensor:
    """Fused Parallax attention, CuTe DSL forward and backward; shapes as parallax_attention (already
    checked). The key tiles add their dQ, dR shares in any order (backend "cute": not bitwise
    reproducible); deterministic=True orders them (backend "cute_deterministic": slower)."""
    # The kernels read contiguous (B, H, N, D) tensors. Made so here, outside the op, torch.compile writes them
    # in that layout in the kernels that produce them (the model's norms and RoPE of (B, N, H, D) tensors), and
    # the op saves the contiguous ones for its backward; inside the op each would be a copy more per pass.
    q, k, v, r = (x.contiguous() for x in (q, k, v, r))
    return attention_fwd_cute(q, k, v, r, causal, scale, deterministic, document_ids)[0]
