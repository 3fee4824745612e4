"""Parallax attention: softmax attention's projections plus the probe r = W_R x (`wr`, a separate nn.Linear so
optimizers and diagnostics find it by name), normalised by its own per-head RMSNorm (`r_norm`) and rotated
with the query's RoPE, as in the authors' code; optionally gated per token and head (`probe_gate`)."""

from __future__ import annotations

import torch
from torch import nn
from torchtitan.models.qwen3.model.model import Attention, apply_rotary_emb
from torchtitan.models.utils import trunc_normal_

from parallax_titan.model.attention import softmax
from parallax_titan.model.attention.registry import AttentionType, Projected, register
from parallax_titan.ops import parallax_attention, parallax_decode


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
    def __init__(self, model_args):
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
        attention_masks=None,  # per-token document ids under document_masking, else None
        positions: torch.Tensor | None = None,
    ):
        bs, seqlen, _ = x.shape
        xq, xk, xv, (xr,) = project(self, x, rope_cache, positions)
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


def project(attn: ParallaxAttention, x: torch.Tensor, rope_cache: torch.Tensor, positions=None) -> Projected:
    xq, xk, xv = softmax.project_qkv(attn, x)
    bs, seqlen, _ = x.shape
    xr = attn.wr(x).view(bs, seqlen, -1, attn.head_dim)
    if attn.r_norm is not None:
        xr = attn.r_norm(xr)
    if attn.probe_gate is not None:
        xr = xr * torch.sigmoid(attn.probe_gate(x)).unsqueeze(-1)
    xq, xk = apply_rotary_emb(xq, xk, rope_cache, positions)
    if attn.probe_rope:  # r takes the query's rotation
        xr = rotate(xr, rope_cache, positions)
    return Projected(xq, xk, xv, (xr,))


def rotate(x: torch.Tensor, rope_cache: torch.Tensor, positions=None) -> torch.Tensor:
    """RoPE on one (B, N, heads, head_dim) tensor, by torchtitan's Qwen3 rotation (which takes a q and a k: here
    a k of no heads). The probe is rotated on its own: concatenated to q it would be copied into a shared buffer
    (and its gradient sliced out of one) for no arithmetic saved."""
    rotated, _ = apply_rotary_emb(x, x[:, :, :0], rope_cache, positions)
    return rotated


def prefill(attn: ParallaxAttention, q, k, v, extras, *, backend: str) -> torch.Tensor:
    (r,) = extras
    return parallax_attention(q, k, v, r, causal=True, scale=attn.scaling, backend=backend)


def decode(attn: ParallaxAttention, q, k_cache, v_cache, extras, *, cache_seqlens, backend: str,
           num_splits) -> torch.Tensor:
    (r,) = extras
    return parallax_decode(q, k_cache, v_cache, r, cache_seqlens=cache_seqlens, scale=attn.scaling,
                           backend=backend, num_splits=num_splits)


def parameters(args) -> int:
    n = softmax.parameters(args) + args.dim * args.n_heads * args.head_dim  # + wr
    if args.probe_norm:
        n += args.head_dim
    if args.probe_gate:
        n += args.dim * args.n_heads
    return n


PARALLAX = register(AttentionType(
    name="parallax",
    module=ParallaxAttention,
    project=project,
    prefill=prefill,
    decode=decode,
    forward_matmuls=4,  # QK^T, RK^T, PV, P2V
    training_matmuls=10,  # + dAlpha, dV, dQ, dK x2, dR
    parameters=parameters,
    extra_parameters={"wr.weight": "r_proj.weight", "r_norm.weight": "r_norm.weight",
                      "probe_gate.weight": "r_gate.weight"},
    per_head_axes={**softmax.SOFTMAX.per_head_axes, "wr": 0},
    document_masking="document_ids",
))
