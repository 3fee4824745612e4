"""The `[parallax]` TOML section (torchtitan `job.custom_config_module = "parallax_titan.job_config"`).

Each key left unset keeps the model flavor's value; a set key overrides it (applied by
ParallaxModelArgs.update_from_config, which also validates the values).
"""

# No `from __future__ import annotations`: torchtitan merges this dataclass and tyro must resolve its types.

from dataclasses import dataclass, field


@dataclass
class Parallax:
    attention: str | None = None
    """softmax | parallax"""
    probe_rope: bool | None = None
    """RoPE on the probe r at the query's positions"""
    probe_norm: bool | None = None
    """per-head RMSNorm on r with its own weight"""
    probe_init: str | None = None
    """normal | zero (zero: exactly softmax attention at initialisation)"""
    probe_gate: bool | None = None
    """gated probe r = sigmoid(w_g . x) * W_R x (the paper's ablation)"""
    attention_backend: str | None = None
    """parallax_attention backend: torch (more in parallax_titan.ops.BACKENDS)"""


@dataclass
class JobConfig:
    parallax: Parallax = field(default_factory=Parallax)
