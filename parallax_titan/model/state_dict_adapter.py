"""Hugging Face Qwen3 <-> this repo's state-dict names (as torchtitan's
torchtitan/models/qwen3/model/state_dict_adapter.py, which it extends).

The tensor mapping is torchtitan's `Qwen3StateDictAdapter`; Parallax adds three per-layer tensors,
exported under names that say what they are (`self_attn.r_proj`, `self_attn.r_norm`,
`self_attn.r_gate`). `from_hf_state` / `to_hf_state` check every tensor (present, shaped, named) on the
way; file I/O (safetensors, config.json, DCP) is parallax_titan/hf_interop.py's.

Converting a Qwen3 checkpoint to Parallax keeps softmax attention exact at step 0. Two starts do that
(`PROBE_STARTS`): "zero-wr" (W_R = 0, r-norm weights at one: the paper's W_R = 0) and "zero-norm"
(W_R initialised as in training, r-norm weights at zero). They differ after the first update: with
W_R = 0 the probe's RMSNorm sees r = 0, whose gradient is scaled by 1/sqrt(eps), so one step makes the
normalised probe full-size; with zero norm weights the probe grows from zero at the optimizer's pace.
"""

from __future__ import annotations

import os
import re

import torch
from torchtitan.models.qwen3.model.state_dict_adapter import Qwen3StateDictAdapter

from parallax_titan.model.args import ParallaxModelArgs
from parallax_titan.model.attention import extra_parameters
from parallax_titan.model.checkpoint import model_state_template

# The attention types' own tensors (Parallax: wr -> r_proj, r_norm, probe_gate -> r_gate), from the registry.
PARALLAX_HF_KEYS = {
    f"model.layers.{{}}.self_attn.{hf}": f"layers.{{}}.attention.{name}" for name, hf in extra_parameters().items()
}
PROBE_STARTS = ("zero-wr", "zero-norm")
# Floating dtypes a checkpoint may hold; anything else (int, fp8, ...) is refused by name.
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ParallaxQwen3StateDictAdapter(Qwen3StateDictAdapter):
    """torchtitan's Qwen3 mapping plus the Parallax probe tensors (used by the TrainSpec too, so
    `[checkpoint] last_save_in_hf` writes the same names as scripts/convert_hf.py)."""

    def __init__(self, model_args, hf_assets_path: str | None):
        # torchtitan warns on every run when hf_assets_path (here: the tokenizer's folder) has no
        # model.safetensors.index.json; without one it saves a single file anyway, so only pass a folder that has it
        index = hf_assets_path and os.path.isfile(os.path.join(hf_assets_path, "model.safetensors.index.json"))
        super().__init__(model_args, hf_assets_path if index else None)
        self.hf_assets_path = hf_assets_path
        self.from_hf_map.update(PARALLAX_HF_KEYS)


# --- state dicts ------------------------------------------------------------------------------

def _layer_pattern(key: str) -> str:
    return re.sub(r"\.(\d+)\.", ".{}.", key, count=1)


def has_probe_tensors(hf_state: dict[str, torch.Tensor]) -> bool:
    """Whether an HF checkpoint holds Parallax probe tensors (from_hf_state reads them; without, it starts them)."""
    return any(_layer_pattern(name) in PARALLAX_HF_KEYS for name in hf_state)


def from_hf_state(
    hf_state: dict[str, torch.Tensor],
    args: ParallaxModelArgs,
    source: str,
    probe_start: str = "zero-wr",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """HF tensors -> this repo's fp32 model state dict; every expected tensor present with its shape,
    nothing left over, or an error naming the tensor."""
    if probe_start not in PROBE_STARTS:
        raise ValueError(f"probe start {probe_start!r} is unknown; choose one of {PROBE_STARTS}")
    for name, tensor in hf_state.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{source}: tensor {name} has dtype {tensor.dtype}; expected one of {FLOAT_DTYPES}")
    known = set(Qwen3StateDictAdapter(args, None).from_hf_map) | set(PARALLAX_HF_KEYS)
    unknown = sorted(n for n in hf_state if _layer_pattern(n) not in known)
    if unknown:
        raise ValueError(f"{source}: tensors with no place in a Qwen3 model: {unknown[:8]}")
    hf_state = {n: t for n, t in hf_state.items() if not n.endswith("rotary_emb.inv_freq")}
    template = model_state_template(args)
    state = ParallaxQwen3StateDictAdapter(args, None).from_hf(dict(hf_state))

    unexpected = sorted(set(state) - set(template))
    if unexpected:
        raise ValueError(
            f"{source}: tensors {unexpected[:8]} do not exist in flavor with attention={args.attention!r}"
        )
    probe_patterns = set(PARALLAX_HF_KEYS.values())
    probe = {n for n in template if _layer_pattern(n) in probe_patterns}
    missing = sorted(set(template) - set(state) - probe)
    if missing:
        raise ValueError(f"{source}: missing tensors {missing[:8]} (HF names: {_hf_names(missing[:8], args)})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(template[name].shape):
            raise ValueError(
                f"{source}: tensor {_hf_names([name], args)[0]} has shape {tuple(tensor.shape)}, "
                f"the flavor expects {tuple(template[name].shape)}"
            )
    state = {name: tensor.to(torch.float32) for name, tensor in state.items()}
    fresh_probe = sorted(probe - set(state))
    if fresh_probe:
        _init_probe(state, template, fresh_probe, probe_start, seed)
    return state


def _hf_names(names: list[str], args) -> list[str]:
    to_hf = {v: k for k, v in ParallaxQwen3StateDictAdapter(args, None).from_hf_map.items() if v}
    out = []
    for name in names:
        pattern = _layer_pattern(name)
        layer = re.search(r"\.(\d+)\.", name)
        hf = to_hf.get(pattern)
        out.append(hf.format(layer.group(1)) if hf and layer else (hf or name))
    return out


def _init_probe(state, template, names, probe_start: str, seed: int) -> None:
    """The probe tensors a Qwen3 checkpoint lacks, chosen so attention is exactly softmax."""
    generator = torch.Generator().manual_seed(seed)
    has_norm = any(".r_norm." in n for n in names)
    if probe_start == "zero-norm" and not has_norm:
        raise ValueError("probe start 'zero-norm' needs a flavor with probe_norm = true")
    for name in names:
        shape = template[name].shape
        if ".wr." in name:
            if probe_start == "zero-wr":
                state[name] = torch.zeros(shape)
            else:  # as ParallaxAttention.init_weights draws it
                state[name] = torch.nn.init.trunc_normal_(torch.empty(shape), std=0.02, generator=generator)
        elif ".r_norm." in name:
            state[name] = torch.ones(shape) if probe_start == "zero-wr" else torch.zeros(shape)
        else:  # probe gate: any value keeps r = 0; zero gives sigmoid = 1/2
            state[name] = torch.zeros(shape)


def to_hf_state(state: dict[str, torch.Tensor], args: ParallaxModelArgs, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    adapter = ParallaxQwen3StateDictAdapter(args, None)
    ours = {v for v in adapter.from_hf_map.values() if v}
    tied_head = {"output.weight"} if args.enable_weight_tying else set()
    unnamed = sorted(n for n in state if _layer_pattern(n) not in ours and n not in tied_head)
    if unnamed:  # torchtitan's adapter would skip them silently
        raise ValueError(f"tensors with no Hugging Face name: {unnamed[:8]}")
    hf = adapter.to_hf(state)
    return {name: tensor.detach().to(dtype).contiguous() for name, tensor in hf.items()}
