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
    return _dense_attention(q, k, v, r, scale)[0]


def _dense_attention(q, k, v, r, scale: float) -> tuple[dict[str, float], torch.Tensor]:
    """The statistics and the attention output (H, N, D) in fp32, from one dense evaluation."""
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
                "alpha_max": float(w.max())}, a
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
    }, o


def stable_rank(singular_values: torch.Tensor) -> torch.Tensor:
    """||W||_F^2 / ||W||_2^2 from (..., k) singular values."""
    sv = singular_values.double()
    return (sv**2).sum(-1) / sv.max(-1).values.clamp_min(1e-300) ** 2


# Stable ranks come from d x d Gram matrices (d = head_dim) and power iteration: no dim x dim products,
# no SVD, QR or eigh, which run as many small serial solver calls on a GPU. Measured at 0.6B on an
# H100: about 11 s per call with float64 SVD/QR, 7 s with batched eigh (docs/benchmarks.md).

POWER_ITERATIONS = 200  # Rayleigh-quotient error ~ (lambda2 / lambda1)^(2 * iterations)


def _gram(w: torch.Tensor) -> torch.Tensor:
    w = w.to(torch.promote_types(w.dtype, torch.float32))
    return w @ w.transpose(-1, -2)


def _top_eigenvalue(apply, start: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of a PSD-similar operator x -> apply(x) on (batch, d, 1) vectors."""
    x = start / start.norm(dim=-2, keepdim=True)
    for _ in range(POWER_ITERATIONS):
        y = apply(x)
        x = y / y.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
    return apply(x).norm(dim=-2)[..., 0]


def _start(batch: int, d: int, like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)  # fixed: results do not depend on global RNG state
    return (torch.rand(batch, d, 1, generator=g, dtype=torch.float64) + 0.5).to(like)


def _stable_rank_of(w: torch.Tensor) -> torch.Tensor:
    """Per head for w (heads, d, dim): ||w||_F^2 / sigma_max^2 = trace(G) / lambda_max(G), G = w w^T."""
    gram = _gram(w)
    top = _top_eigenvalue(lambda x: gram @ x, _start(gram.shape[0], gram.shape[-1], gram))
    return gram.diagonal(dim1=-2, dim2=-1).sum(-1) / top.clamp_min(torch.finfo(top.dtype).tiny)


def circuit_stable_rank(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Per head, the stable rank of left_h^T right_h (dim x dim) for left, right (heads, d, dim):
    ||.||_F^2 = trace(G_l G_r) and sigma_max^2 = lambda_max(G_r G_l), both from d x d Grams."""
    g_left, g_right = _gram(left), _gram(right)
    top = _top_eigenvalue(lambda x: g_right @ (g_left @ x), _start(g_left.shape[0], g_left.shape[-1], g_left))
    frobenius = (g_left * g_right).sum((-2, -1))  # trace(G_l G_r), both symmetric
    return frobenius / top.clamp_min(torch.finfo(top.dtype).tiny)


def weight_stats(wq, wk, wv, wo, wr, n_heads: int, n_kv_heads: int) -> dict[str, float]:
    """Full (unsharded) projection weights of one attention layer; wr None for softmax."""
    d = wq.shape[0] // n_heads
    rep = n_heads // n_kv_heads
    q = wq.view(n_heads, d, -1)
    k = wk.view(n_kv_heads, d, -1).repeat_interleave(rep, 0)
    v = wv.view(n_kv_heads, d, -1).repeat_interleave(rep, 0)
    o = wo.view(wo.shape[0], n_heads, d).permute(1, 2, 0)  # (H, d, dim): W_O^h transposed
    stats = {
        "sr_wq": float(_stable_rank_of(q).mean()),
        "sr_wk": float(_stable_rank_of(k[::rep]).mean()),
        "sr_qk": float(circuit_stable_rank(q, k).mean()),
        "sr_ov": float(circuit_stable_rank(o, v).mean()),  # (W_O^h W_V^g) = (W_O^h^T)^T W_V^g
    }
    if wr is not None:
        r = wr.view(n_heads, d, -1)
        stats["sr_wr"] = float(_stable_rank_of(r).mean())
        stats["sr_rk"] = float(circuit_stable_rank(r, k).mean())
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


@torch.no_grad()
def model_weight_stats(model) -> dict[int, dict[str, float]]:
    args = model.model_args
    out = {}
    for i, block in model.layers.items():
        attn = block.attention
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
                attn = block.attention
                q, k, v, r = attention_inputs(attn, block.attention_norm(x), rope, None)
                q, k, v = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)
                r = r[0].transpose(0, 1) if r is not None else None
                out[int(i)], o = _dense_attention(q, k, v, r, attn.scaling)
                o = o.to(x.dtype)
                x = x + attn.wo(o.transpose(0, 1).reshape(1, tokens.shape[1], -1))
                x = x + block.feed_forward(block.ffn_norm(x))
    return out


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
