"""Parallelising the model for torchtitan: qwen3's own `parallelize_qwen3` (TP, activation checkpointing,
torch.compile, FSDP2/HSDP, DDP), with two adjustments that Parallax and the tied Qwen3 flavors need.

1. Tied embeddings under FSDP2. torchtitan 0.2.2 shards `tok_embeddings` as one FSDP group and
   `[norm, output]` as another. With `enable_weight_tying` (every Qwen3 flavor used here) both hold the same
   parameter. torch >= 2.13 rejects that at the first forward ("shared with a parameter already managed
   by another FSDP group"); older versions do not check that two groups manage one parameter.
   `tied_embedding_fsdp_groups` puts the three modules in one group, which is what torch's message
   prescribes. The embedding then stays unsharded from the forward until its gradient is reduced (one
   vocab x dim table), as the output head already did.
2. Op-level selective activation checkpointing keeps the fused Parallax forward (see
   `save_parallax_attention_in_op_sac`).
"""

from __future__ import annotations

import contextlib
import importlib

import torch
from torch import nn
from torchtitan.models.llama4.infra import parallelize as llama4_parallelize
from torchtitan.models.qwen3 import parallelize_qwen3
from torchtitan.models.qwen3.infra import parallelize as qwen3_parallelize


def save_parallax_attention_in_op_sac() -> None:
    """`[activation_checkpoint] selective_ac_option = "op"` saves the outputs of the ops in qwen3's save list
    and recomputes the rest; SDPA is on it, so without this the fused Parallax forward (the attention's most
    expensive op) would be the one thing recomputed in the backward. Both fused forwards go on it: the Triton
    kernel's and the Hopper (CuTe) kernel's. A module that cannot be imported here (no Triton) is skipped, since
    its backend cannot be selected there either."""
    for module, op in (("parallax_kernels.parallax.triton_fused", "attention_fwd"),
                       ("parallax_kernels.parallax.cute_launch", "attention_fwd_cute")):
        try:
            importlib.import_module(module)  # defines torch.ops.parallax.<op>
        except ImportError:
            continue
        qwen3_parallelize._op_sac_save_list.add(getattr(torch.ops.parallax, op).default)


def has_tied_embeddings(model: nn.Module) -> bool:
    embeddings, output = getattr(model, "tok_embeddings", None), getattr(model, "output", None)
    return embeddings is not None and output is not None and output.weight is embeddings.weight


@contextlib.contextmanager
def tied_embedding_fsdp_groups(model: nn.Module):
    """While torchtitan applies FSDP to `model`: no group of its own for a tied `tok_embeddings`; it joins
    the `[norm, output]` group instead (first, so the group unshards when the forward starts)."""
    if not has_tied_embeddings(model):
        yield
        return
    original = llama4_parallelize.fully_shard  # torchtitan's apply_fsdp (used by qwen3) calls this name

    def fully_shard(module, *args, **kwargs):
        if module is model.tok_embeddings:
            return module
        if isinstance(module, list) and any(m is model.output for m in module):
            module = [model.tok_embeddings, *module]
        return original(module, *args, **kwargs)

    llama4_parallelize.fully_shard = fully_shard
    try:
        yield
    finally:
        llama4_parallelize.fully_shard = original


def parallelize_parallax(model: nn.Module, parallel_dims, job_config) -> nn.Module:
    with tied_embedding_fsdp_groups(model):
        return parallelize_qwen3(model, parallel_dims, job_config)
