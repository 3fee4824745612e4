"""Public entry point for Parallax attention: shape checks and backend selection.

`parallax_attention(q, k, v, r, *, causal=True, scale=None, backend="torch")` is a public contract:
q, r are (B, H, N, D), k, v are (B, Hkv, N, D) with H a multiple of Hkv (GQA); the result is (B, H, N, D).

    w = softmax(scale * q k^T) over visible keys, t_ij = r_i . k_j (unscaled),
    o_i = sum_j w_ij (1 + tbar_i - t_ij) v_j,  tbar_i = sum_j w_ij t_ij.

Backends register here with a function that says whether they can run; asking for one that cannot
run is an error, never a silent switch to another backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from parallax_kernels.torch_chunked import parallax_attention_torch


@dataclass(frozen=True)
class Backend:
    fn: Callable[..., torch.Tensor]
    # Returns None when the backend can run on these inputs, else the reason it cannot.
    unavailable_reason: Callable[[torch.Tensor], str | None]


def _always_available(_: torch.Tensor) -> str | None:
    return None


def _triton_fn(*args, **kwargs):
    from parallax_kernels.triton_parallax import parallax_attention_triton

    return parallax_attention_triton(*args, **kwargs)


def _triton_atomic_fn(*args, **kwargs):
    from parallax_kernels.triton_parallax import parallax_attention_triton

    return parallax_attention_triton(*args, **kwargs, atomic_dq=True)


def _triton_unavailable(x: torch.Tensor) -> str | None:
    try:
        from parallax_kernels.triton_parallax import unavailable_reason
    except ImportError as err:  # triton missing or broken
        return f"cannot import the Triton kernel ({err})"
    return unavailable_reason(x)


BACKENDS: dict[str, Backend] = {
    "torch": Backend(parallax_attention_torch, _always_available),
    "triton": Backend(_triton_fn, _triton_unavailable),
    # the same kernels with a one-kernel backward: dQ, dR through fp32 atomics, not bitwise reproducible
    # (kernels/triton_parallax.py); whether it is faster is measured in docs/benchmarks.md
    "triton_atomic": Backend(_triton_atomic_fn, _triton_unavailable),
}


def register_backend(name: str, fn: Callable[..., torch.Tensor], unavailable_reason=_always_available):
    if name in BACKENDS:
        raise ValueError(f"parallax_attention backend {name!r} is already registered")
    BACKENDS[name] = Backend(fn, unavailable_reason)


def check_backend(backend: str, example: torch.Tensor | None = None) -> None:
    """Raise if `backend` is unknown, or (given an example input) cannot run on it."""
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown parallax_attention backend {backend!r}; backends here: {sorted(BACKENDS)}"
        )
    if example is not None:
        reason = BACKENDS[backend].unavailable_reason(example)
        if reason is not None:
            raise RuntimeError(f"parallax_attention backend {backend!r} is unavailable: {reason}")


def _check_shapes(q, k, v, r, document_ids) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or r.dim() != 4:
        raise ValueError(
            "parallax_attention expects 4-D (B, H, N, D) tensors; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, r {tuple(r.shape)}"
        )
    if r.shape != q.shape:
        raise ValueError(f"r must have q's shape {tuple(q.shape)}; got {tuple(r.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    b, h, n, d = q.shape
    if k.shape[0] != b or k.shape[2] != n:
        raise ValueError(
            f"batch and sequence sizes differ: q {tuple(q.shape)} vs k {tuple(k.shape)}"
        )
    if k.shape[3] != d:
        raise ValueError(f"head_dim mismatch: q has D={d}, k and v have D={k.shape[3]}")
    if h % k.shape[1] != 0:
        raise ValueError(
            f"query heads H={h} must be a multiple of key/value heads Hkv={k.shape[1]} (GQA)"
        )
    if not (q.dtype == k.dtype == v.dtype == r.dtype):
        raise ValueError(
            f"dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}, r {r.dtype}"
        )
    if document_ids is not None and tuple(document_ids.shape) != (b, n):
        raise ValueError(
            f"document_ids must be (B, N) = {(b, n)}; got {tuple(document_ids.shape)}"
        )


def _document_ids_from_cu_seqlens(cu_seqlens, q, document_ids) -> torch.Tensor:
    if document_ids is not None:
        raise ValueError("give document_ids or cu_seqlens, not both")
    b, _, n, _ = q.shape
    if b != 1 or cu_seqlens.dim() != 1 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != n:
        raise ValueError(
            f"cu_seqlens must be 1-D [0, ..., N={n}] for a packed batch of one sequence; "
            f"got shape {tuple(cu_seqlens.shape)} for q of shape {tuple(q.shape)}"
        )
    positions = torch.arange(n, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True)[None]


def parallax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    backend: str = "torch",
    document_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Parallax attention. For packed sequences, keys in another document are invisible; give the
    documents either as `document_ids` (B, N), labels of contiguous segments (EOS-derived in the model),
    or as `cu_seqlens`, the cumulative document lengths [0, n1, n1 + n2, ..., N] of a B = 1 batch
    (flash-attn's varlen convention)."""
    if cu_seqlens is not None:
        document_ids = _document_ids_from_cu_seqlens(cu_seqlens, q, document_ids)
    _check_shapes(q, k, v, r, document_ids)
    check_backend(backend, q)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return BACKENDS[backend].fn(
        q, k, v, r, causal=causal, scale=scale, document_ids=document_ids
    )


# --- decode ------------------------------------------------------------------------------------

def _decode_torch(*args, **kwargs):
    from parallax_kernels.decode import parallax_decode_torch

    return parallax_decode_torch(*args, **kwargs)


def _decode_triton(*args, **kwargs):
    from parallax_kernels.triton_decode import parallax_decode_triton

    return parallax_decode_triton(*args, **kwargs)


def _decode_triton_unavailable(x: torch.Tensor) -> str | None:
    try:
        from parallax_kernels.triton_decode import unavailable_reason
    except ImportError as err:
        return f"cannot import the Triton decode kernel ({err})"
    return unavailable_reason(x)


def _decode_cute(*args, **kwargs):
    from parallax_kernels.cute_launch import parallax_decode_cute

    return parallax_decode_cute(*args, **kwargs)


def _decode_cute_unavailable(x: torch.Tensor) -> str | None:
    from parallax_kernels.cute_launch import unavailable_reason

    return unavailable_reason(x)


DECODE_BACKENDS: dict[str, Backend] = {
    "torch": Backend(_decode_torch, _always_available),
    "triton": Backend(_decode_triton, _decode_triton_unavailable),
    # Hopper only; compiled on first use where nvidia-cutlass-dsl is installed, else loaded from the
    # artefacts of scripts/build_kernels.py (kernels/cute_launch.py says where it looks)
    "cute": Backend(_decode_cute, _decode_cute_unavailable),
}


def _check_decode_shapes(q, k_cache, v_cache, r, cache_seqlens) -> None:
    if q.dim() != 3 or r.shape != q.shape:
        raise ValueError(f"q and r must be (B, H, D) of one shape; got q {tuple(q.shape)}, r {tuple(r.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must be (B, Hkv, L_max, D) of one shape; got {tuple(k_cache.shape)}, "
            f"{tuple(v_cache.shape)}"
        )
    b, h, d = q.shape
    if k_cache.shape[0] != b or k_cache.shape[3] != d or h % k_cache.shape[1]:
        raise ValueError(
            f"q {tuple(q.shape)} does not fit the cache {tuple(k_cache.shape)}: batch and head_dim must match "
            "and H must be a multiple of Hkv"
        )
    if tuple(cache_seqlens.shape) != (b,) or cache_seqlens.dtype.is_floating_point:
        raise ValueError(f"cache_seqlens must be an integer tensor of shape ({b},); got "
                         f"{cache_seqlens.dtype} {tuple(cache_seqlens.shape)}")
    if not (q.dtype == r.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"dtypes differ: q {q.dtype}, r {r.dtype}, k_cache {k_cache.dtype}, v_cache {v_cache.dtype}")


def parallax_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    r: torch.Tensor,
    *,
    cache_seqlens: torch.Tensor,
    scale: float | None = None,
    backend: str = "torch",
    num_splits: int | None = None,
) -> torch.Tensor:
    """One decode step of Parallax attention: q, r (B, H, D) against a contiguous KV cache
    k_cache, v_cache (B, Hkv, L_max, D); sequence b sees cache positions [0, cache_seqlens[b]).
    `num_splits` cuts each sequence's keys into that many chunks merged in the same launch (default:
    enough to fill the GPU). Returns (B, H, D)."""
    if backend not in DECODE_BACKENDS:
        raise ValueError(f"unknown parallax_decode backend {backend!r}; backends here: {sorted(DECODE_BACKENDS)}")
    _check_decode_shapes(q, k_cache, v_cache, r, cache_seqlens)
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1; got {num_splits}")
    reason = DECODE_BACKENDS[backend].unavailable_reason(q)
    if reason is not None:
        raise RuntimeError(f"parallax_decode backend {backend!r} is unavailable: {reason}")
    # checked where it costs no device sync (CPU lengths); the kernels clamp lengths to L_max anyway
    if cache_seqlens.device.type == "cpu" and cache_seqlens.numel() and int(cache_seqlens.max()) > k_cache.shape[2]:
        raise ValueError(f"cache_seqlens {cache_seqlens.tolist()} exceed the cache length {k_cache.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return DECODE_BACKENDS[backend].fn(
        q, k_cache, v_cache, r, cache_seqlens, scale=scale, num_splits=num_splits
    )
