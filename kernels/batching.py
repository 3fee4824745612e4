"""vmap rules for the attention ops: fold the vmapped dimension into attention's batch dimension.

Attention treats each batch row on its own, so a vmap over K independent models (eval/mad/train.py
train_sweep trains a learning-rate sweep as one batched model) is exactly one attention call on a K x B batch.
Without a rule, the torch backend's autograd.Function cannot run under vmap at all, and the Triton op
would not either; a per-member loop would undo what the batching is for.
"""

from __future__ import annotations

import torch


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
