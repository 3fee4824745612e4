"""The `[parallax]` TOML section (torchtitan `job.custom_config_module = "parallax_titan.job_config"`).

Each key left unset keeps the model flavor's value; a set key overrides it (applied by
ParallaxModelArgs.update_from_config, which also validates the values).
"""

# No `from __future__ import annotations`: torchtitan merges this dataclass and tyro must resolve its types.

import dataclasses
import typing
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
    """parallax_attention backend: torch | triton | triton_atomic (one-kernel backward, dQ/dR by atomics) | cute
    (Hopper forward and backward, dQ/dR added in any order) | cute_deterministic (the same, in key order)"""
    document_masking: bool | None = None
    """keep attention inside each EOS-terminated document of a packed sequence"""


@dataclass
class Optimizer:
    """Keys added to torchtitan's [optimizer] (name = "Muon" | "AdamW"; lr, betas, eps and
    weight_decay are torchtitan's and serve the AdamW groups and, unless overridden, Muon)."""

    muon_lr: float | None = None
    """Muon's lr (default: [optimizer] lr; with match_rms_adamw one lr serves both)"""
    muon_weight_decay: float | None = None
    """Muon's decoupled weight decay (default: [optimizer] weight_decay)"""
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    """Newton-Schulz quintic iterations"""
    muon_scaling: str = "match_rms_adamw"
    """match_rms_adamw (0.2 sqrt(max(out, in))) | spectral (sqrt(max(1, out/in)))"""
    muon_per_head: bool = False
    """orthogonalise q/k/v/o and W_R per head instead of as one matrix"""
    muon_ns_dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float32"""
    embed_lr: float | None = None
    """AdamW lr for embeddings and output head (default: lr)"""
    embed_weight_decay: float | None = None
    """weight decay for embeddings and output head (default: weight_decay)"""
    scalar_weight_decay: float | None = None
    """weight decay for norms and other 1-D parameters (default: weight_decay, as torchtitan)"""


@dataclass
class LRScheduler:
    weight_decay_anneal: bool = False
    """anneal every group's weight decay over the decay phase: wd (1 - t)^gamma"""
    weight_decay_anneal_gamma: float = 2.0


@dataclass
class Diagnostics:
    """Parallax diagnostics (parallax_titan/diagnostics.py) logged with the metrics."""

    interval: int = 0
    """every this many steps (0: off); activation statistics need `python -m parallax_titan.train`"""
    tokens: int = 512
    """probe length: the first sequence of that step's batch, cut to this many tokens"""


@dataclass
class Faults:
    """What a non-finite loss or gradient norm does, and which checkpoint a resume may use
    (parallax_titan.trainer)."""

    on_nonfinite: str = "stop"
    """stop: raise with the step, the ranks and the last complete checkpoint | skip: drop the update | ignore"""
    max_skipped_steps: int = 10
    """with skip: stop once this many updates were dropped"""
    inject_nonfinite_at_step: int = 0
    """testing aid (0: off): make one gradient NaN at this step, to exercise the guard"""
    resume_from_newest_valid: bool = False
    """on resume, skip checkpoint steps that are incomplete or fail their checksums and load the newest one
    that verifies (off: such a step is an error naming it and its bad file)"""


@dataclass
class Metrics:
    jsonl_file: str = "metrics.jsonl"
    """every logged metric, one JSON record per step, in the dump folder ("" : off); scripts/plot_runs.py reads it"""


@dataclass
class Profiling:
    """Added to torchtitan's [profiling]."""

    host_ops: bool = True
    """record the host's operators (with their shapes) beside the GPU activity, as torchtitan does; false: the GPU
    activity and the launch calls only (a smaller trace, without the profiler's per-op records on the host)"""


@dataclass
class JobConfig:
    parallax: Parallax = field(default_factory=Parallax)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    metrics: Metrics = field(default_factory=Metrics)
    profiling: Profiling = field(default_factory=Profiling)
    faults: Faults = field(default_factory=Faults)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _bool_fields(*config_classes) -> dict[str, bool]:
    """`section.key` -> whether None is allowed too, for every bool key of the config classes."""
    out: dict[str, bool] = {}
    for cls in config_classes:
        for section in dataclasses.fields(cls):
            section_cls = typing.get_type_hints(cls).get(section.name)
            if not dataclasses.is_dataclass(section_cls):
                continue
            for key, hint in typing.get_type_hints(section_cls).items():
                args = set(typing.get_args(hint))
                if hint is bool or args == {bool, type(None)}:
                    out[f"{section.name}.{key}"] = hint is not bool
    return out


def normalize_bool_flags(argv: list[str], *config_classes) -> list[str]:
    """`--checkpoint.enable false` (or `=false`, `true`, `0`, ...) in the form torchtitan's command line
    (tyro) takes: `--checkpoint.no-enable` / `--checkpoint.enable` for a bool key, `False` / `True` for
    an optional one (tyro takes `--checkpoint.no-enable` only and says "Unrecognized options: false")."""
    fields = _bool_fields(JobConfig, *config_classes)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, value = (arg.split("=", 1) + [None])[:2] if arg.startswith("--") and "=" in arg else (arg, None)
        key = name[2:].replace("-", "_") if name.startswith("--") else None
        if key in fields and value is None and i + 1 < len(argv) and argv[i + 1].lower() in _TRUE + _FALSE:
            value, i = argv[i + 1], i + 1
        if key in fields and value is not None and value.lower() in _TRUE + _FALSE:
            truth = value.lower() in _TRUE
            if fields[key]:  # bool | None: tyro takes a value
                out += [name, str(truth)]
            else:
                section, field_name = name[2:].split(".", 1)
                out.append(name if truth else f"--{section}.no-{field_name}")
        else:
            out.append(arg)
        i += 1
    return out
