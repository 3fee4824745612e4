"""The attention registry: what the rest of the code needs to know about one attention type.

An attention type is one module here (softmax.py, parallax.py) that ends with one `register(...)` call.
The model builds the block's attention from it, the KV-cache decoder and the diagnostics project and attend
through it, the FLOP and parameter arithmetic reads its counts, and the optimizer and the checkpoint mapping
read the names of its parameters. `[parallax] attention = "<name>"` picks one by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn


class Projected(NamedTuple):
    """An attention module's inputs to its core, each (B, N, heads, head_dim), normalised and rotated."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    extras: tuple[torch.Tensor, ...] = ()  # per-query tensors beyond q (Parallax: the probe r)


@dataclass(frozen=True)
class AttentionType:
    name: str
    # The block's `attention` module (wq, wk, wv, wo and the type's own parameters), built as module(model_args).
    module: type[nn.Module]
    # (attn, x, rope_cache, positions) -> Projected: the projections, norms and RoPE of the forward.
    project: Callable[..., Projected]
    # (attn, q, k, v, extras, *, backend) -> (B, heads, N, head_dim): causal attention over a prompt; q, k, v and
    # extras (B, heads, N, head_dim). `backend` is a parallax_attention backend.
    prefill: Callable[..., torch.Tensor]
    # (attn, q, k_cache, v_cache, extras, *, cache_seqlens, backend, num_splits) -> (B, heads, head_dim): one
    # query per sequence (q and extras (B, heads, head_dim)) against the first cache_seqlens[b] cache rows
    # (B, kv_heads, L, head_dim). `backend` and `num_splits` are parallax_decode's.
    decode: Callable[..., torch.Tensor]
    # Matmuls of the attention core per layer and query head, each 2 * head_dim * T FLOPs per token at context
    # T: the forward's, and the forward's plus the backward's (recomputation in fused kernels not counted).
    forward_matmuls: int
    training_matmuls: int
    # model_args -> parameters of one layer's attention module.
    parameters: Callable[..., int]
    # The type's parameters beyond softmax attention's, named under the block's `attention.` -> the name
    # Hugging Face checkpoints give them under `self_attn.` (which exist depends on the flavor's knobs).
    extra_parameters: Mapping[str, str] = field(default_factory=dict)
    # Projections whose output (or input, axis 1) is laid out head by head: name -> the heads' axis. Muon's
    # per-head option orthogonalises each head's block of these on its own.
    per_head_axes: Mapping[str, int] = field(default_factory=dict)
    # How `document_masking` keeps attention inside documents: "flex" (torchtitan's flex attention with its
    # block_causal mask) or "document_ids" (the model hands per-token document ids, from EOS, to the module).
    document_masking: str = "flex"


_TYPES: dict[str, AttentionType] = {}


def register(attention: AttentionType) -> AttentionType:
    if attention.name in _TYPES:
        raise ValueError(f"attention type {attention.name!r} is registered twice")
    if attention.document_masking not in ("flex", "document_ids"):
        raise ValueError(f"attention type {attention.name!r}: document_masking must be 'flex' or 'document_ids'")
    _TYPES[attention.name] = attention
    return attention


def attention_type(name: str) -> AttentionType:
    """The registered type called `name` (`[parallax] attention`)."""
    try:
        return _TYPES[name]
    except KeyError:
        raise ValueError(f"[parallax] attention = {name!r} is unknown; choose one of {attention_names()}") from None


def attention_names() -> tuple[str, ...]:
    return tuple(_TYPES)


def per_head_axes() -> dict[str, int]:
    """Every registered type's per-head projections (the optimizer routes by projection name)."""
    return {name: axis for t in _TYPES.values() for name, axis in t.per_head_axes.items()}


def extra_parameters() -> dict[str, str]:
    """Every registered type's extra parameters: name under the block's `attention.` -> Hugging Face name under
    `self_attn.` (the checkpoint mapping reads them from here)."""
    return {name: hf for t in _TYPES.values() for name, hf in t.extra_parameters.items()}
