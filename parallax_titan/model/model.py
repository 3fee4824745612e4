"""Qwen3-Parallax: torchtitan's Qwen3 decoder whose attention is softmax or Parallax.

Everything but the attention is torchtitan's Qwen3 (RMSNorm, q/k norm, RoPE, SwiGLU MLP, init);
`attention = "softmax"` is torchtitan's Qwen3 Attention itself. Parallax adds the probe
r = W_R x (`wr`, a separate nn.Linear so optimizers and diagnostics find it by name), normalised by
its own per-head RMSNorm (`r_norm`) and rotated with the query's RoPE, as in the authors' code.
"""

from __future__ import annotations

import torch
from torch import nn
from torchtitan.models.qwen3.model.model import (
    Attention,
    Qwen3Model,
    TransformerBlock,
    apply_rotary_emb,
)
from torchtitan.models.utils import trunc_normal_

from parallax_titan.model.args import ParallaxModelArgs
from parallax_titan.ops import parallax_attention


def document_ids_from_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, N) document index of each token; an EOS belongs to the document it ends (torchtitan's
    block_causal convention)."""
    ends = (tokens == eos_id).to(torch.int32)
    return torch.cumsum(ends, dim=1) - ends


class ParallaxInnerAttention(nn.Module):
    """The attention core, in a module of its own like torchtitan's SDPA/flex wrappers."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def forward(self, q, k, v, r, *, scale: float, document_ids=None):
        return parallax_attention(
            q, k, v, r, causal=True, scale=scale, backend=self.backend, document_ids=document_ids
        )


class ParallaxAttention(Attention):
    def __init__(self, model_args: ParallaxModelArgs):
        super().__init__(model_args)  # wq, wk, wv, wo, q_norm, k_norm
        self.probe_rope = model_args.probe_rope
        self.probe_init = model_args.probe_init
        self.wr = nn.Linear(model_args.dim, model_args.n_heads * self.head_dim, bias=False)
        self.r_norm = (
            nn.RMSNorm(self.head_dim, eps=model_args.norm_eps, elementwise_affine=True)
            if model_args.probe_norm
            else None
        )
        self.probe_gate = (
            nn.Linear(model_args.dim, model_args.n_heads, bias=False)
            if model_args.probe_gate
            else None
        )
        self.inner_attention = ParallaxInnerAttention(model_args.attention_backend)

    def init_weights(self, init_std: float):
        super().init_weights(init_std)
        if self.probe_init == "zero":
            nn.init.zeros_(self.wr.weight)
        else:
            trunc_normal_(self.wr.weight, mean=0.0, std=0.02)
        if self.r_norm is not None:
            self.r_norm.reset_parameters()
        if self.probe_gate is not None:
            trunc_normal_(self.probe_gate.weight, mean=0.0, std=0.02)

    def forward(
        self,
        x: torch.Tensor,
        rope_cache: torch.Tensor,
        attention_masks=None,
        positions: torch.Tensor | None = None,
    ):
        bs, seqlen, _ = x.shape
        xq, xk, xv, xr = attention_inputs(self, x, rope_cache, positions)
        output = self.inner_attention(
            xq.transpose(1, 2),
            xk.transpose(1, 2),
            xv.transpose(1, 2),
            xr.transpose(1, 2),
            scale=self.scaling,
            document_ids=attention_masks,
        )
        output = output.transpose(1, 2).contiguous().view(bs, seqlen, -1)
        return self.wo(output)


def attention_inputs(attn: Attention, x: torch.Tensor, rope_cache: torch.Tensor, positions=None):
    """q, k, v and (Parallax only, else None) the probe r of an attention module, each
    (B, N, heads, head_dim), normalised and rotated: shared by training and the KV-cache decoder."""
    bs, seqlen, _ = x.shape
    # -1 heads: tensor parallelism may shard the projections
    xq = attn.wq(x).view(bs, seqlen, -1, attn.head_dim)
    xk = attn.wk(x).view(bs, seqlen, -1, attn.head_dim)
    xv = attn.wv(x).view(bs, seqlen, -1, attn.head_dim)
    if attn.q_norm is not None:
        xq = attn.q_norm(xq)
    if attn.k_norm is not None:
        xk = attn.k_norm(xk)
    if not isinstance(attn, ParallaxAttention):
        xq, xk = apply_rotary_emb(xq, xk, rope_cache, positions)
        return xq, xk, xv, None
    xr = attn.wr(x).view(bs, seqlen, -1, attn.head_dim)
    if attn.r_norm is not None:
        xr = attn.r_norm(xr)
    if attn.probe_gate is not None:
        xr = xr * torch.sigmoid(attn.probe_gate(x)).unsqueeze(-1)
    n_q = xq.shape[2]
    if attn.probe_rope:
        # r takes the query's positions: rotate q and r together, k as usual.
        qr, xk = apply_rotary_emb(torch.cat([xq, xr], dim=2), xk, rope_cache, positions)
        xq, xr = qr[:, :, :n_q], qr[:, :, n_q:]
    else:
        xq, xk = apply_rotary_emb(xq, xk, rope_cache, positions)
    return xq, xk, xv, xr


class ParallaxTransformerBlock(TransformerBlock):
    def __init__(self, layer_id: int, model_args: ParallaxModelArgs):
        super().__init__(layer_id, model_args)
        if model_args.attention == "parallax":
            self.attention = ParallaxAttention(model_args)


class ParallaxQwen3Model(Qwen3Model):
    def __init__(self, model_args: ParallaxModelArgs):
        super().__init__(model_args)
        # Qwen3Model builds its own blocks; rebuild them with ours (cheap: the trainer builds on meta).
        self.layers = nn.ModuleDict(
            {str(i): ParallaxTransformerBlock(i, model_args) for i in range(model_args.n_layers)}
        )

    def forward(self, tokens: torch.Tensor, attention_masks=None, positions: torch.Tensor | None = None):
        args = self.model_args
        if args.attention == "parallax" and args.document_masking:
            attention_masks = document_ids_from_eos(tokens, args.eos_id)
        return super().forward(tokens, attention_masks, positions)
