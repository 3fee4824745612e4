"""Parallax attention (training and prefill): the public API, its shape checks and its backends.

`parallax_attention(q, k, v, r, *, causal=True, scale=None, backend="torch")` is a public contract:
q, r are (B, H, N, D), k, v are (B, Hkv, N, D) with H a multiple of Hkv (GQA); the result is (B, H, N, D).

    w = softmax(scale * q k^T) over visible keys, t_ij = r_i . k_j (unscaled),
    o_i = sum_j w_ij (1 + tbar_i - t_ij) v_j,  tbar_i = sum_j w_ij t_ij.

Files: reference.py (the dense definition, float64 tests), torch_chunked.py (backend "torch"),
triton_fused.py (backends "triton" and "triton_atomic"), cute_kernel.py, cute_backward.py + cute_variant.py (the
Hopper forward and backward in CuTe DSL) and cute_launch.py (their artefacts, launches and ops: backends "cute" and
"cute_deterministic").
"""

from __future__ import annotations

import torch

from parallax_kernels.backends import Backend, always_available
from parallax_kernels.parallax.torch_chunked import parallax_attention_torch


def _triton_fn(*args, **kwargs):
    from parallax_kernels.parallax.triton_fused import parallax_attention_triton

    return parallax_attention_triton(*args, **kwargs)


def _triton_atomic_fn(*args, **kwargs):
    from parallax_kernels.parallax.triton_fused import parallax_attention_triton

    return parallax_attention_triton(*args, **kwargs, atomic_dq=True)


def _triton_unavailable(x: torch.Tensor) -> str | None:
    try:
        from parallax_kernels.parallax.triton_fused import unavailable_reason
    except ImportError as err:  # triton missing or broken
        return f"cannot import the Triton kernel ({err})"
    return unavailable_reason(x)


def _cute_fn(*args, **kwargs):
    from parallax_kernels.parallax.cute_launch import parallax_attention_cute

    return parallax_attention_cute(*args, **kwargs)


def _cute_deterministic_fn(*args, **kwargs):
    from parallax_kernels.parallax.cute_launch import parallax_attention_cute

    return parallax_attention_cute(*args, **kwargs, deterministic=True)


def _cute_unavailable(x: torch.Tensor, deterministic: bool = False) -> str | None:
    try:
        from parallax_kernels.parallax.cute_launch import unavailable_reason
    except ImportError as err:
        return f"cannot import the CuTe attention launcher ({err})"
    return unavailable_reason(x, deterministic)


def _cute_deterministic_unavailable(x: torch.Tensor) -> str | None:
    return _cute_unavailable(x, deterministic=True)


BACKENDS: dict[str, Backend] = {
    "torch": Backend(parallax_attention_torch, always_available),
    "triton": Backend(_triton_fn, _triton_unavailable),
    # the same kernels with a one-kernel backward: dQ, dR through fp32 atomics, not bitwise reproducible
    # (triton_fused.py); whether it is faster is measured in docs/benchmarks.md
    "triton_atomic": Backend(_triton_atomic_fn, _triton_unavailable),
    # the CuTe DSL Hopper forward and backward (sm_90a, prebuilt cubins; cute_launch.py): the key tiles add
    # their dQ, dR shares as they finish ("cute", not bitwise reproducible, like triton_atomic) or in key
    # order ("cute_deterministic", bitwise reproducible and slower: docs/kernels_hopper.md)
    "cute": Backend(_cute_fn, _cute_unavailable),
    "cute_deterministic": Backend(_cute_deterministic_fn, _cute_deterministic_unavailable),
}


def check_backend(backend: str, example: torch.Tensor | None = None) -> None:
    """Raise if `backend` is unknown or (given an example input) cannot run on it."""
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
    if document_ids is not None and document_ids.device != q.device:
        raise ValueError(f"document_ids is on {document_ids.device}, q on {q.device}: give them on one device")


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
