"""Parallax diagnostics (PAPER.md): what the probe does to attention, and the shape of the weights.

Activation statistics, per layer, from one probe sequence (dense, fp32, causal):
  cor           ||o - a|| / ||a||: the covariance correction over the softmax output a = sum_j w_ij v_j
  sink          mean over queries i >= 1 of w_i0, the first token's softmax weight
  entropy       mean over queries of -sum_j w_ij log w_ij (nats), the base softmax entropy
  neg_frac      fraction of visible (i, j) with effective weight alpha_ij = w_ij (1 + tbar_i - t_ij) < 0
  alpha_max     largest |alpha_ij|
Weight statistics, per layer, stable rank ||W||_F^2 / ||W||_2^2 averaged over heads:
  sr_wq, sr_wk, sr_wr        one head's rows of W_Q, W_K, W_R (head_dim x dim)
  sr_qk, sr_rk, sr_ov        the circuits W_Q^h^T W_K^g, W_R^h^T W_K^g, W_O^h W_V^g (dim x dim, g = h's KV head)
Softmax layers report cor = neg_frac = 0 and no probe ranks.

`DiagnosticsLogger` logs both every `[diagnostics] interval` steps during training (the probe is the
first sequence of that step's batch, cut to `[diagnostics] tokens`); `scripts/diagnose.py` runs them on
a checkpoint.
"""

from __future__ import annotations

import contextlib

import torch

from parallax_titan.model.model import ParallaxAttention, attention_inputs


# --- the statistics, on plain tensors -----------------------------------------------------------

def attention_stats(q, k, v, r, scale: float) -> dict[str, float]:
    """q, r (H, N, D); k, v (Hkv, N, D); r None for softmax attention. Causal."""
    q, k, v = q.float(), k.float(), v.float()
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    n = q.shape[1]
    visible = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    s = (scale * q @ k.transpose(-1, -2)).masked_fill(~visible, float("-inf"))
    w = torch.softmax(s, dim=-1)
    a = w @ v
    entropy = -(w * torch.log(w.clamp_min(1e-30))).sum(-1).mean()
    sink = w[:, 1:, 0].mean() if n > 1 else w[:, :, 0].mean()
    if r is None:
        return {"cor": 0.0, "sink": float(sink), "entropy": float(entropy), "neg_frac": 0.0,
                "alpha_max": float(w.max())}
    t = r.float() @ k.transpose(-1, -2)
    tbar = (w * t).sum(-1, keepdim=True)
    alpha = w * (1 + tbar - t)
    o = alpha @ v
    neg = ((alpha < 0) & visible).sum() / (visible.sum() * q.shape[0])
    return {
        "cor": float((o - a).norm() / a.norm().clamp_min(1e-30)),
        "sink": float(sink),
        "entropy": float(entropy),
        "neg_frac": float(neg),
        "alpha_max": float(alpha.masked_fill(~visible, 0).abs().max()),
    }


def stable_rank(singular_values: torch.Tensor) -> torch.Tensor:
    """||W||_F^2 / ||W||_2^2 from (..., k) singular values."""
    sv = singular_values.double()
    return (sv**2).sum(-1) / sv.max(-1).values.clamp_min(1e-300) ** 2


def circuit_stable_rank(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Per head, the stable rank of left_h^T right_h (dim x dim) for left, right (heads, d, dim), through
    the d x d product of their QR factors (same nonzero singular values, no dim x dim matrix)."""
    _, r_left = torch.linalg.qr(left.double().transpose(-1, -2))
    _, r_right = torch.linalg.qr(right.double().transpose(-1, -2))
    return stable_rank(torch.linalg.svdvals(r_left @ r_right.transpose(-1, -2)))


def weight_stats(wq, wk, wv, wo, wr, n_heads: int, n_kv_heads: int) -> dict[str, float]:
    """Full (unsharded) projection weights of one attention layer; wr None for softmax."""
    d = wq.shape[0] // n_heads
    rep = n_heads // n_kv_heads
    q = wq.double().view(n_heads, d, -1)
    k = wk.double().view(n_kv_heads, d, -1).repeat_interleave(rep, 0)
    v = wv.double().view(n_kv_heads, d, -1).repeat_interleave(rep, 0)
    o = wo.double().view(wo.shape[0], n_heads, d).permute(1, 2, 0)  # (H, d, dim): W_O^h transposed
    stats = {
        "sr_wq": float(stable_rank(torch.linalg.svdvals(q)).mean()),
        "sr_wk": float(stable_rank(torch.linalg.svdvals(k[::rep])).mean()),
        "sr_qk": float(circuit_stable_rank(q, k).mean()),
        "sr_ov": float(circuit_stable_rank(o, v).mean()),  # (W_O^h W_V^g) = (W_O^h^T)^T W_V^g
    }
    if wr is not None:
        rr = wr.double().view(n_heads, d, -1)
        stats["sr_wr"] = float(stable_rank(torch.linalg.svdvals(rr)).mean())
        stats["sr_rk"] = float(circuit_stable_rank(rr, k).mean())
    return stats


# --- on a model ---------------------------------------------------------------------------------

def _full(t: torch.Tensor) -> torch.Tensor:
    """A parameter as one whole tensor (gathers an FSDP DTensor: every rank must call this)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@contextlib.contextmanager
def _unsharded(module):
    """FSDP2 modules keep sharded parameters between forwards; gather them while we read them."""
    if hasattr(module, "unshard"):
        module.unshard()
        try:
            yield
        finally:
            module.reshard()
    else:
        yield


def _attention(block):
    return block.attention


@torch.no_grad()
def model_weight_stats(model) -> dict[int, dict[str, float]]:
    args = model.model_args
    out = {}
    for i, block in model.layers.items():
        attn = _attention(block)
        wr = _full(attn.wr.weight) if isinstance(attn, ParallaxAttention) else None
        full = [_full(m.weight) for m in (attn.wq, attn.wk, attn.wv, attn.wo)]
        n_heads = full[0].shape[0] // attn.head_dim
        out[int(i)] = weight_stats(*full, wr, n_heads, n_heads * args.n_kv_heads // args.n_heads)
    return out


@torch.no_grad()
def model_activation_stats(model, tokens: torch.Tensor) -> dict[int, dict[str, float]]:
    """tokens (N,) or (1, N): walks the layers by hand (same math as the forward, dense attention) so
    it runs outside compiled graphs and FSDP's forward hooks."""
    tokens = tokens.reshape(1, -1)
    out = {}
    with _unsharded(model):
        x = model.tok_embeddings(tokens)
        rope = model.rope_cache
        for i, block in model.layers.items():
            with _unsharded(block):
                attn = _attention(block)
                q, k, v, r = attention_inputs(attn, block.attention_norm(x), rope, None)
                q, k, v = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)
                r = r[0].transpose(0, 1) if r is not None else None
                out[int(i)] = attention_stats(q, k, v, r, attn.scaling)
                o = _attention_output(q, k, v, r, attn.scaling).to(x.dtype)
                x = x + attn.wo(o.transpose(0, 1).reshape(1, tokens.shape[1], -1))
                x = x + block.feed_forward(block.ffn_norm(x))
    return out


def _attention_output(q, k, v, r, scale):
    from parallax_kernels.reference import parallax_attention_reference

    dtype = q.dtype
    q, k, v = q.float()[None], k.float()[None], v.float()[None]
    r = torch.zeros_like(q) if r is None else r.float()[None]
    return parallax_attention_reference(q, k, v, r, causal=True, scale=scale)[0].to(dtype)


def flatten(stats: dict[int, dict[str, float]], prefix: str = "diagnostics") -> dict[str, float]:
    """{layer: {name: value}} -> {"diagnostics/<name>/layer<i>": value, "diagnostics/<name>/mean": ...}."""
    flat: dict[str, float] = {}
    names = sorted({n for layer in stats.values() for n in layer})
    for name in names:
        values = [layer[name] for layer in stats.values() if name in layer]
        for i, layer in sorted(stats.items()):
            if name in layer:
                flat[f"{prefix}/{name}/layer{i}"] = layer[name]
        flat[f"{prefix}/{name}/mean"] = sum(values) / len(values)
    return flat
