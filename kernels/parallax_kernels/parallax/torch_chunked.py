"""Memory-efficient Parallax attention in pure torch: the `backend="torch"` of parallax_attention.

Forward and backward walk over query chunks; each step holds one (chunk x keys) tile per head and
nothing of size N x N survives the step. The backward is written by hand (autograd of the loop
would save every tile), following the derivation in docs/design.md, with row statistics from the forward:

    lse_i  = logsumexp_j s_ij         tbar_i = sum_j w_ij t_ij
    a_i    = sum_j w_ij v_j           (softmax output; recomputed)
    D_i    = dO_i . o_i               E_i = dO_i . a_i
    dalpha_ij = dO_i . v_j            dV_j = sum_i alpha_ij dO_i
    dt_ij  = w_ij (E_i - dalpha_ij)
    ds_ij  = w_ij (dalpha_ij (1 + tbar_i - t_ij) + E_i t_ij - D_i - E_i tbar_i)
    dQ = scale dS K     dR = dT K     dK = scale dS^T Q + dT^T R

All arithmetic is fp32 for bf16/fp16/fp32 inputs (float64 stays float64); outputs and gradients come back in the input dtype.
"""

from __future__ import annotations

import torch

from parallax_kernels.batching import fold, unfold

# Elements of one fp32 (B, H, chunk, N) tile; the chunk is sized to stay under this (64 MiB).
_TILE_ELEMENTS = 1 << 24


def default_chunk_size(batch: int, heads: int, n: int) -> int:
    per_row = max(1, batch * heads * n)
    chunk = 1 << max(0, (_TILE_ELEMENTS // per_row).bit_length() - 1)
    return int(min(max(chunk, 16), 1024, max(n, 1)))


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 for half types, float64 stays float64 (so tests can compare tightly)
    return torch.promote_types(dtype, torch.float32)


def _tile_mask(
    start: int, end: int, n_keys: int, causal: bool, document_ids: torch.Tensor | None, device
) -> torch.Tensor | None:
    """Visible keys for queries [start, end): (B or 1, 1, 1, C, n_keys) boolean, or None."""
    mask = None
    if causal:
        rows = torch.arange(start, end, device=device)[:, None]
        mask = (torch.arange(n_keys, device=device)[None, :] <= rows)[None, None, None]
    if document_ids is not None:
        doc = document_ids[:, start:end, None] == document_ids[:, None, :n_keys]
        doc = doc[:, None, None]
        mask = doc if mask is None else mask & doc
    return mask


class _ChunkedParallaxAttention(torch.autograd.Function):
    # forward returns the row statistics too (setup_context style, which torch.func needs); under vmap
    # the vmapped dim is folded into the batch (kernels/parallax_kernels/batching.py)
    @staticmethod
    def forward(q, k, v, r, causal, scale, document_ids, chunk_size):
        acc = _accumulate_dtype(q.dtype)
        b, h, n, d = q.shape
        hkv = k.shape[1]
        g = h // hkv
        qg, rg = q.reshape(b, hkv, g, n, d), r.reshape(b, hkv, g, n, d)
        out = torch.empty(b, hkv, g, n, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(b, hkv, g, n, dtype=acc, device=q.device)
        tbar = torch.empty_like(lse)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            n_keys = end if causal else n  # causal: later keys are all masked
            kc = k[:, :, None, :n_keys].to(acc)
            vc = v[:, :, None, :n_keys].to(acc)
            s = scale * (qg[:, :, :, start:end].to(acc) @ kc.transpose(-1, -2))
            mask = _tile_mask(start, end, n_keys, causal, document_ids, q.device)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            lse_c = torch.logsumexp(s, dim=-1)
            w = torch.exp(s - lse_c[..., None])
            del s
            t = rg[:, :, :, start:end].to(acc) @ kc.transpose(-1, -2)
            tbar_c = (w * t).sum(-1)
            alpha = w * (1 + tbar_c[..., None] - t)
            out[:, :, :, start:end] = (alpha @ vc).to(q.dtype)
            lse[:, :, :, start:end] = lse_c
            tbar[:, :, :, start:end] = tbar_c
        return out.reshape(b, h, n, v.shape[-1]), lse, tbar

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, r, causal, scale, document_ids, chunk_size = inputs
        out, lse, tbar = output
        ctx.mark_non_differentiable(lse, tbar)
        ctx.save_for_backward(q, k, v, r, out, lse, tbar, document_ids)
        ctx.causal, ctx.scale, ctx.chunk_size = causal, scale, chunk_size

    @staticmethod
    def vmap(info, in_dims, *args):
        return unfold(info.batch_size, _ChunkedParallaxAttention.apply(*fold(info.batch_size, in_dims, args)))

    @staticmethod
    def backward(ctx, grad_out, grad_lse, grad_tbar):
        q, k, v, r, out, lse, tbar, document_ids = ctx.saved_tensors
        causal, scale, chunk_size = ctx.causal, ctx.scale, ctx.chunk_size
        acc = _accumulate_dtype(q.dtype)
        b, h, n, d = q.shape
        hkv = k.shape[1]
        g = h // hkv
        qg, rg = q.reshape(b, hkv, g, n, d), r.reshape(b, hkv, g, n, d)
        dog = grad_out.reshape(b, hkv, g, n, -1)
        out = out.reshape(b, hkv, g, n, -1)
        dq = torch.zeros(b, hkv, g, n, d, dtype=acc, device=q.device)
        dr = torch.zeros_like(dq)
        dk = torch.zeros(k.shape, dtype=acc, device=q.device)
        dv = torch.zeros(v.shape, dtype=acc, device=q.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            n_keys = end if causal else n
            kc = k[:, :, None, :n_keys].to(acc)
            vc = v[:, :, None, :n_keys].to(acc)
            qc, rc = qg[:, :, :, start:end].to(acc), rg[:, :, :, start:end].to(acc)
            do = dog[:, :, :, start:end].to(acc)
            s = scale * (qc @ kc.transpose(-1, -2))
            mask = _tile_mask(start, end, n_keys, causal, document_ids, q.device)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            w = torch.exp(s - lse[:, :, :, start:end, None])
            del s
            t = rc @ kc.transpose(-1, -2)
            tb = tbar[:, :, :, start:end, None]
            dalpha = do @ vc.transpose(-1, -2)
            e_row = (do * (w @ vc)).sum(-1, keepdim=True)  # E_i = dO_i . a_i
            d_row = (do * out[:, :, :, start:end].to(acc)).sum(-1, keepdim=True)  # D_i
            dv[:, :, :n_keys] += torch.einsum("bhgcl,bhgcd->bhld", w * (1 + tb - t), do)
            dt = w * (e_row - dalpha)
            ds = w * (dalpha * (1 + tb - t) + e_row * t - d_row - e_row * tb)
            del w, t, dalpha
            dq[:, :, :, start:end] = scale * (ds @ kc)
            dr[:, :, :, start:end] = dt @ kc
            dk[:, :, :n_keys] += scale * torch.einsum("bhgcl,bhgcd->bhld", ds, qc)
            dk[:, :, :n_keys] += torch.einsum("bhgcl,bhgcd->bhld", dt, rc)
        return (
            dq.reshape(q.shape).to(q.dtype),
            dk.to(k.dtype),
            dv.to(v.dtype),
            dr.reshape(r.shape).to(r.dtype),
            None,
            None,
            None,
            None,
        )


def parallax_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    document_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Chunked Parallax attention; shapes as parallax_titan.ops.parallax_attention (already checked)."""
    if chunk_size is None:
        chunk_size = default_chunk_size(q.shape[0], q.shape[1], q.shape[2])
    return _ChunkedParallaxAttention.apply(q, k, v, r, causal, scale, document_ids, chunk_size)[0]
