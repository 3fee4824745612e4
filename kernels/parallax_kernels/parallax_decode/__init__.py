"""Parallax decode: one query token per sequence against a KV cache; the public API and its backends.

Files: torch_split.py (split-KV arithmetic in torch, backend "torch", and the dense reference),
triton_split.py (backend "triton"), cute_kernel.py + cute_variant.py (the Hopper kernel in CuTe DSL),
cute_launch.py (its ahead-of-time artefacts and launcher, backend "cute").
"""

from __future__ import annotations

import torch

from parallax_kernels.backends import Backend, always_available


def _decode_torch(*args, **kwargs):
    from parallax_kernels.parallax_decode.torch_split import parallax_decode_torch

    return parallax_decode_torch(*args, **kwargs)


def _decode_triton(*args, **kwargs):
    from parallax_kernels.parallax_decode.triton_split import parallax_decode_triton

    return parallax_decode_triton(*args, **kwargs)


def _decode_triton_unavailable(x: torch.Tensor) -> str | None:
    try:
        from parallax_kernels.parallax_decode.triton_split import unavailable_reason
    except ImportError as err:
        return f"cannot import the Triton decode kernel ({err})"
    return unavailable_reason(x)


def _decode_cute(*args, **kwargs):
    from parallax_kernels.parallax_decode.cute_launch import parallax_decode_cute

    return parallax_decode_cute(*args, **kwargs)


def _decode_cute_unavailable(x: torch.Tensor) -> str | None:
    from parallax_kernels.parallax_decode.cute_launch import unavailable_reason

    return unavailable_reason(x)


DECODE_BACKENDS: dict[str, Backend] = {
    "torch": Backend(_decode_torch, always_available),
    "triton": Backend(_decode_triton, _decode_triton_unavailable),
    # Hopper only; compiled on first use where nvidia-cutlass-dsl is installed, else loaded from the
    # artefacts of scripts/build_kernels.py (cute_launch.py says where it looks)
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
