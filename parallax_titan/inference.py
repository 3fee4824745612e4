"""A trained model outside the trainer: model args from a run's TOML, weights from its DCP checkpoint,
its tokenizer. Shared by generation, evaluation and diagnostics."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from parallax_titan.model.args import ParallaxModelArgs


@dataclass
class LoadedModel:
    model: torch.nn.Module
    args: ParallaxModelArgs
    tokenizer: Tokenizer
    eos_id: int | None
    job: object  # the parsed torchtitan JobConfig the model was built from


def model_args_from_config(config_file: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """The flavor's args after the TOML's `[parallax]`/`[training]` settings, exactly as the trainer
    builds them, and the parsed job config."""
    import parallax_titan.register  # noqa: F401  (TrainSpec, [parallax] section)
    from torchtitan.config import ConfigManager, JobConfig

    from parallax_titan.job_config import normalize_bool_flags
    from parallax_titan.model.flavors import FLAVORS

    job = ConfigManager().parse_args(normalize_bool_flags(["--job.config_file", str(config_file), *overrides], JobConfig))
    if job.model.flavor not in FLAVORS:
        raise ValueError(f"{config_file}: [model] flavor {job.model.flavor!r} is unknown")
    args = copy.deepcopy(FLAVORS[job.model.flavor])
    args.update_from_config(job)
    return args, job


def load_tokenizer(assets_path: str | Path) -> Tokenizer:
    path = Path(assets_path) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ([model] hf_assets_path = {assets_path})")
    return Tokenizer.from_file(str(path))


def load_model(
    config_file: str | Path,
    checkpoint: str | Path | None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attention_backend: str | None = None,
    max_seq_len: int | None = None,
) -> LoadedModel:
    """`checkpoint`: a `checkpoint/step-N` folder, or None for the freshly initialised model (tests)."""
    from parallax_titan.model.checkpoint import load_model_dcp
    from parallax_titan.model.model import ParallaxQwen3Model

    args, job = model_args_from_config(config_file, overrides)
    if attention_backend is not None:
        args.attention_backend = attention_backend
        args.validate()
    if max_seq_len is not None:
        args.max_seq_len = max_seq_len  # RoPE table size; positions beyond training are extrapolation
    model = ParallaxQwen3Model(args)
    if checkpoint is None:
        with torch.no_grad():
            model.init_weights()
    else:
        state = load_model_dcp(checkpoint, args)
        model.load_state_dict(state)
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = load_tokenizer(job.model.hf_assets_path)
    # the EOS id update_from_config read from this tokenizer (None if it names none)
    return LoadedModel(model, args, tokenizer, getattr(args, "eos_id", None), job)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") != "" else "cpu"
