"""vmap rules for the attention ops: fold the vmapped dimension into attention's batch dimension.

Attention treats each batch row on its own, so a vmap over K independent models (eval/mad/train.py
train_sweep trains a learning-rate sweep as one batched model) is exactly one attention call on a K x B batch.
Without a rule, the torch backend's autograd.Function cannot run under vmap at all, and the Triton op
would not either; a per-member loop would undo what the batching is for.

Softmax attention (the Transformer baseline) gets the same treatment through `folded_sdpa`: SDPA has
vmap rules of its own, but on an H200 (torch 2.11) the one for the cuDNN backend gave wrong gradients,
and the batched softmax sweep non-finite losses (scripts/offline_gpu/vmap_sdpa_check.py compares the two
per SDPA backend; docs/results.md has the numbers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def fold(batch_size: int, in_dims, args):
    """Tensors among args with their vmapped dim (or a broadcast one, for in_dim None) moved to the
    front and merged with the next dim (attention's batch); other args pass through."""
    out = []
    for x, dim in zip(args, in_dims):
        if isinstance(x, torch.Tensor):
            x = x.movedim(dim, 0) if dim is not None else x.expand(batch_size, *x.shape)
            x = x.flatten(0, 1)
        out.append(x)
    return out


def unfold(batch_size: int, outputs):
    """Split the merged batch of each output back into (vmapped dim, batch) and say so (out_dims 0)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.unflatten(0, (batch_size, -1)), 0
    return tuple(x.unflatten(0, (batch_size, -1)) for x in outputs), tuple(0 for _ in outputs)


def _sdpa(q, k, v, scale, is_causal, enable_gqa, backends):
    with sdpa_kernel(backends, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=is_causal, enable_gqa=enable_gqa)


class _FoldedSDPA(torch.autograd.Function):
    @staticmethod
    def forward(q, k, v, scale, is_causal, enable_gqa, backends):
        return _sdpa(q, k, v, scale, is_causal, enable_gqa, backends)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, *ctx.options = inputs
        ctx.save_for_backward(q, k, v)
        device = q.device.type
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)

    @staticmethod
    def backward(ctx, grad_out):
        # recomputed, as activation checkpointing does (autocast replayed): what SDPA saves for its
        # backward is private to each backend, and one more attention forward is cheap next to the model
        leaves = [x.detach().requires_grad_() for x in ctx.saved_tensors]
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(leaves[0].device.type, dtype=dtype, enabled=enabled):
            out = _sdpa(*leaves, *ctx.options)
        return (*torch.autograd.grad(out, leaves, grad_out), None, None, None, None)

    @staticmethod
    def vmap(info, in_dims, *args):
        return unfold(info.batch_size, _FoldedSDPA.apply(*fold(info.batch_size, in_dims, args)))


def folded_sdpa(q, k, v, *, scale: float | None = None, is_causal: bool = True, enable_gqa: bool = False,
                backends: list[SDPBackend] | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention (restricted to `backends`, in that priority) whose vmap rule folds
    the vmapped dim into the batch: under vmap, one ordinary SDPA call on the merged batch."""
    backends = list(backends) if backends is not None else [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                                            SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return _FoldedSDPA.apply(q, k, v, scale, is_causal, enable_gqa, backends)
