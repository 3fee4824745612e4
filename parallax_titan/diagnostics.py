"""Parallax diagnostics: what the probe does to attention, and the shape of the weights.

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

from parallax_titan.model.attention import attention_type
from parallax_titan.model.attention.parallax import ParallaxAttention


def diagnostics_interval(job_config) -> int:
    return getattr(getattr(job_config, "diagnostics", None), "interval", 0)


def diagnostics_due(job_config, step: int) -> bool:
    """Whether `step` logs the diagnostics (the trainer hands the probe over at the same steps)."""
    interval = diagnostics_interval(job_config)
    return bool(interval) and step % interval == 0


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


# Stable ranks come from d x d Gram matrices (d = head_dim) and power iteration: no dim x dim products,
# no SVD, QR or eigh, which run as many small serial solver calls on a GPU. Measured at 0.6B on an
# H100: about 11 s per call with float64 SVD/QR, 7 s with batched eigh (docs/benchmarks.md).
# Every stable rank of a model is one batch of one power iteration: its cost is kernel launches, so one
# loop for all layers and all six statistics instead of one loop each.

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


def batched_stable_ranks(grams: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
    """Per head, for each (G_l, G_r) pair of (heads, d, d) Grams: the stable rank of left^T right, i.e.
    trace(G_l G_r) / lambda_max(G_r G_l); G_r None means a single weight (G_r = I: trace(G) / lambda_max(G))."""
    left = torch.cat([g for g, _ in grams])
    eye = torch.eye(left.shape[-1], dtype=left.dtype, device=left.device)
    right = torch.cat([g if g is not None else eye.expand_as(l) for l, g in grams])
    top = _top_eigenvalue(lambda x: right @ (left @ x), _start(left.shape[0], left.shape[-1], left))
    frobenius = (left * right).sum((-2, -1))  # trace(G_l G_r), both symmetric
    return list((frobenius / top.clamp_min(torch.finfo(top.dtype).tiny)).split([g.shape[0] for g, _ in grams]))


def _layer_grams(wq, wk, wv, wo, wr, n_heads: int, n_kv_heads: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The Gram pairs of one attention layer's statistics (full, unsharded weights; wr None for softmax)."""
    d = wq.shape[0] // n_heads
    rep = n_heads // n_kv_heads
    g_q = _gram(wq.view(n_heads, d, -1))
    g_k = _gram(wk.view(n_kv_heads, d, -1))
    g_k_per_q = g_k.repeat_interleave(rep, 0)
    g_v = _gram(wv.view(n_kv_heads, d, -1)).repeat_interleave(rep, 0)
    g_o = _gram(wo.view(wo.shape[0], n_heads, d).permute(1, 2, 0))  # (H, d, dim): W_O^h transposed
    grams = {"sr_wq": (g_q, None), "sr_wk": (g_k, None), "sr_qk": (g_q, g_k_per_q),
             "sr_ov": (g_o, g_v)}  # (W_O^h W_V^g) = (W_O^h^T)^T W_V^g
    if wr is not None:
        g_r = _gram(wr.view(n_heads, d, -1))
        grams.update(sr_wr=(g_r, None), sr_rk=(g_r, g_k_per_q))
    return grams


def _head_means(layers: list[dict[str, tuple]]) -> list[dict[str, float]]:
    """One batched power iteration over every layer's Gram pairs; per layer {name: mean over heads}."""
    flat = [(i, name, pair) for i, grams in enumerate(layers) for name, pair in grams.items()]
    ranks = batched_stable_ranks([pair for _, _, pair in flat])
    means = torch.stack([r.mean() for r in ranks]).tolist()  # one device sync
    out: list[dict[str, float]] = [{} for _ in layers]
    for (i, name, _), value in zip(flat, means):
        out[i][name] = value
    return out


def weight_stats(wq, wk, wv, wo, wr, n_heads: int, n_kv_heads: int) -> dict[str, float]:
    """Full (unsharded) projection weights of one attention layer; wr None for softmax."""
    return _head_means([_layer_grams(wq, wk, wv, wo, wr, n_heads, n_kv_heads)])[0]


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
    layers = {}
    for i, block in model.layers.items():
        attn = block.attention
        wr = _full(attn.wr.weight) if isinstance(attn, ParallaxAttention) else None  # the probe's ranks
        full = [_full(m.weight) for m in (attn.wq, attn.wk, attn.wv, attn.wo)]
        n_heads = full[0].shape[0] // attn.head_dim
        layers[int(i)] = _layer_grams(*full, wr, n_heads, n_heads * args.n_kv_heads // args.n_heads)
    return dict(zip(layers, _head_means(list(layers.values()))))


@torch.no_grad()
def model_activation_stats(model, tokens: torch.Tensor) -> dict[int, dict[str, float]]:
    """tokens (N,) or (1, N): walks the layers by hand (same math as the forward, dense attention) so
    it runs outside compiled graphs and FSDP's forward hooks."""
    tokens = tokens.reshape(1, -1)
    out = {}
    project = attention_type(model.model_args.attention).project
    with _unsharded(model):
        x = model.tok_embeddings(tokens)
        rope = model.rope_cache
        for i, block in model.layers.items():
            with _unsharded(block):
                attn = block.attention
                q, k, v, extras = project(attn, block.attention_norm(x), rope, None)
                q, k, v = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)
                # the dense evaluation knows softmax and Parallax attention: r is Parallax's one extra
                r = extras[0][0].transpose(0, 1) if isinstance(attn, ParallaxAttention) else None
                out[int(i)], o = _dense_attention(q, k, v, r, attn.scaling)
                o = o.to(x.dtype)
                x = x + attn.wo(o.transpose(0, 1).reshape(1, tokens.shape[1], -1))
                x = x + block.feed_forward(block.ffn_norm(x))
    return out


def model_stats(model, tokens: torch.Tensor | None) -> dict[int, dict[str, float]]:
    """Per layer, the weight statistics and (given probe tokens) the activation statistics."""
    stats = model_weight_stats(model)  # collective under FSDP: every rank must call this
    if tokens is not None:
        for layer, values in model_activation_stats(model, tokens).items():
            stats[layer].update(values)
    return stats


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
