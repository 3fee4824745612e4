"""Model flavors: {debug, mini20M, mini60M, 0.6B, 1.7B} x {transformer, parallax, transformer-param-matched,
parallax-compute-matched}.

Base shapes are torchtitan's Qwen3 flavors (0.6B, 1.7B); `debug` is a few-million-parameter model
that trains on a CPU. The paper's two controls are derived here from the Parallax flavor, not typed in:

- transformer-param-matched (Transformer-dagger): softmax attention with extra query heads, as many as
  W_R's parameters buy (each query head costs wq + wo = 2*dim*head_dim, W_R costs n_heads*head_dim*dim,
  so n_heads/2 more heads, rounded to keep n_heads a multiple of n_kv_heads). The remainder left
  unmatched is the probe's RMSNorm weight (head_dim per layer).
- parallax-compute-matched (Parallax-dagger): head_dim halved, so its 4 attention matmuls cost what
  softmax's 2 cost at the full head_dim (forward attention FLOPs equal); the projection parameters
  this saves move into the FFN width, rounded to a multiple of FFN_MULTIPLE_OF, so its non-embedding
  parameters match the Parallax flavor's. The rounding is the remainder (< 0.5%).
"""

from __future__ import annotations

from dataclasses import replace

from torchtitan.models.qwen3 import qwen3_args

from parallax_titan.model.args import ParallaxModelArgs
from parallax_titan.model.flops import count_parameters

VARIANTS = (
    "transformer",
    "parallax",
    "transformer-param-matched",
    "parallax-compute-matched",
)


def _from_qwen3(name: str, **overrides) -> ParallaxModelArgs:
    base = qwen3_args[name]
    keep = {f: getattr(base, f) for f in (
        "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "head_dim", "hidden_dim",
        "norm_eps", "rope_theta", "qk_norm", "max_seq_len", "enable_weight_tying",
    )}
    keep.update(overrides)
    return ParallaxModelArgs(**keep)


BASES: dict[str, tuple[ParallaxModelArgs, int]] = {
    # name: (Parallax shape, FFN rounding multiple)
    "debug": (
        ParallaxModelArgs(
            dim=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64, hidden_dim=768,
            vocab_size=2048, max_seq_len=2048, rope_theta=10000, qk_norm=True,
            enable_weight_tying=True,
        ),
        8,
    ),
    # The mini ladder: Qwen3's shape rules (head_dim 64 here, GQA 2, tied embeddings, Qwen3's
    # vocabulary) at about 20M and 60M non-embedding parameters.
    "mini20M": (
        ParallaxModelArgs(
            dim=384, n_layers=12, n_heads=6, n_kv_heads=3, head_dim=64, hidden_dim=1024,
            vocab_size=151936, max_seq_len=1024, rope_theta=1000000, qk_norm=True, enable_weight_tying=True,
        ),
        16,  # finer FFN rounding than the large sizes: one step of 64 would be ~3% of the parameters here
    ),
    "mini60M": (
        ParallaxModelArgs(
            dim=576, n_layers=16, n_heads=8, n_kv_heads=4, head_dim=64, hidden_dim=1536,
            vocab_size=151936, max_seq_len=1024, rope_theta=1000000, qk_norm=True, enable_weight_tying=True,
        ),
        16,
    ),
    "0.6B": (_from_qwen3("0.6B"), 64),
    "1.7B": (_from_qwen3("1.7B"), 64),
}


def param_matched_transformer(parallax: ParallaxModelArgs) -> ParallaxModelArgs:
    softmax = replace(parallax, attention="softmax")
    probe = count_parameters(parallax)["total"] - count_parameters(softmax)["total"]
    per_head = 2 * parallax.dim * parallax.head_dim * parallax.n_layers
    extra = round(probe / per_head / parallax.n_kv_heads) * parallax.n_kv_heads
    return replace(softmax, n_heads=parallax.n_heads + extra)


def compute_matched_parallax(parallax: ParallaxModelArgs, multiple_of: int) -> ParallaxModelArgs:
    if parallax.head_dim % 2:
        raise ValueError(f"head_dim {parallax.head_dim} cannot be halved")
    half = replace(parallax, head_dim=parallax.head_dim // 2)
    saved = count_parameters(parallax)["total"] - count_parameters(half)["total"]
    extra_hidden = saved / (3 * parallax.dim * parallax.n_layers)
    hidden = round((parallax.hidden_dim + extra_hidden) / multiple_of) * multiple_of
    return replace(half, hidden_dim=hidden)


def build_flavors() -> dict[str, ParallaxModelArgs]:
    flavors: dict[str, ParallaxModelArgs] = {}
    for name, (parallax, multiple_of) in BASES.items():
        flavors[f"{name}-parallax"] = parallax
        flavors[f"{name}-transformer"] = replace(parallax, attention="softmax")
        flavors[f"{name}-transformer-param-matched"] = param_matched_transformer(parallax)
        flavors[f"{name}-parallax-compute-matched"] = compute_matched_parallax(parallax, multiple_of)
    return flavors


FLAVORS = build_flavors()
