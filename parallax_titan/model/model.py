"""Qwen3-Parallax: torchtitan's Qwen3 decoder whose attention is a registered type (softmax or Parallax).

Everything but the attention is torchtitan's Qwen3 (RMSNorm, q/k norm, RoPE, SwiGLU MLP, init). Each block's
`attention` is the module of the type `[parallax] attention` names (parallax_titan.model.attention):
torchtitan's Qwen3 Attention itself for "softmax", ParallaxAttention (the probe r = W_R x) for "parallax".
"""

from __future__ import annotations

import torch
from torch import nn
from torchtitan.models.qwen3.model.model import Qwen3Model, TransformerBlock

from parallax_titan.model.args import ParallaxModelArgs
from parallax_titan.model.attention import attention_type
from parallax_titan.model.attention.parallax import ParallaxAttention

__all__ = ["ParallaxAttention", "ParallaxQwen3Model", "ParallaxTransformerBlock", "document_ids_from_eos"]


def document_ids_from_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, N) document index of each token; an EOS belongs to the document it ends (torchtitan's
    block_causal convention)."""
    ends = (tokens == eos_id).to(torch.int32)
    return torch.cumsum(ends, dim=1) - ends


class ParallaxTransformerBlock(TransformerBlock):
    def __init__(self, layer_id: int, model_args: ParallaxModelArgs):
        super().__init__(layer_id, model_args)  # builds torchtitan's Attention, softmax's module
        module = attention_type(model_args.attention).module
        if type(self.attention) is not module:
            self.attention = module(model_args)


class ParallaxQwen3Model(Qwen3Model):
    def __init__(self, model_args: ParallaxModelArgs):
        super().__init__(model_args)
        # Qwen3Model builds its own blocks; rebuild them with ours (cheap: the trainer builds on meta).
        self.layers = nn.ModuleDict(
            {str(i): ParallaxTransformerBlock(i, model_args) for i in range(model_args.n_layers)}
        )

    def forward(self, tokens: torch.Tensor, attention_masks=None, positions: torch.Tensor | None = None):
        args = self.model_args
        if args.document_masking and attention_type(args.attention).document_masking == "document_ids":
            attention_masks = document_ids_from_eos(tokens, args.eos_id)
        return super().forward(tokens, attention_masks, positions)
