"""Hugging Face Qwen3 <-> this repo's checkpoints.

The tensor mapping is torchtitan's `Qwen3StateDictAdapter`; Parallax adds three per-layer tensors,
exported under names that say what they are (`self_attn.r_proj`, `self_attn.r_norm`,
`self_attn.r_gate`). A softmax model exports as plain Qwen3 and loads in `transformers`; a Parallax
export declares `model_type = "parallax_qwen3"`, so `transformers` refuses it instead of silently
dropping the probe.

Converting a Qwen3 checkpoint to Parallax keeps softmax attention exact at step 0. Two starts do that
(`ProbeStart`): "zero-wr" (W_R = 0, r-norm weights at one: the paper's W_R = 0) and "zero-norm"
(W_R initialised as in training, r-norm weights at zero). They differ after the first update: with
W_R = 0 the probe's RMSNorm sees r = 0, whose gradient is scaled by 1/sqrt(eps), so one step makes the
normalised probe full-size; with zero norm weights the probe grows from zero at the optimizer's pace.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torchtitan.models.qwen3.model.state_dict_adapter import Qwen3StateDictAdapter

from parallax_titan.model.args import ParallaxModelArgs
from parallax_titan.model.checkpoint import model_state_template

PARALLAX_HF_KEYS = {
    "model.layers.{}.self_attn.r_proj.weight": "layers.{}.attention.wr.weight",
    "model.layers.{}.self_attn.r_norm.weight": "layers.{}.attention.r_norm.weight",
    "model.layers.{}.self_attn.r_gate.weight": "layers.{}.attention.probe_gate.weight",
}
PROBE_STARTS = ("zero-wr", "zero-norm")
# Floating dtypes a checkpoint may hold; anything else (int, fp8, ...) is refused by name.
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PARALLAX_MODEL_TYPE = "parallax_qwen3"


class ParallaxQwen3StateDictAdapter(Qwen3StateDictAdapter):
    """torchtitan's Qwen3 mapping plus the Parallax probe tensors (used by the TrainSpec too, so
    `[checkpoint] last_save_in_hf` writes the same names as scripts/convert_hf.py)."""

    def __init__(self, model_args, hf_assets_path: str | None):
        super().__init__(model_args, hf_assets_path)
        self.from_hf_map.update(PARALLAX_HF_KEYS)


# --- config.json ------------------------------------------------------------------------------

# (HF config key, model-args field) pairs that must agree for the tensors to mean the same thing.
CONFIG_FIELDS = (
    ("hidden_size", "dim"),
    ("num_hidden_layers", "n_layers"),
    ("num_attention_heads", "n_heads"),
    ("num_key_value_heads", "n_kv_heads"),
    ("head_dim", "head_dim"),
    ("intermediate_size", "hidden_dim"),
    ("vocab_size", "vocab_size"),
    ("rms_norm_eps", "norm_eps"),
    ("rope_theta", "rope_theta"),
    ("tie_word_embeddings", "enable_weight_tying"),
)


def hf_config_values(config: dict, source: str) -> dict:
    """The CONFIG_FIELDS values of an HF config dict (rope_theta read from either the old top-level
    key or transformers 5's `rope_parameters`); unsupported features are errors naming the key."""
    values = dict(config)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in values and "rope_theta" in rope:
        values["rope_theta"] = rope["rope_theta"]
    scaling = config.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling:
        raise ValueError(f"{source}: rope scaling {scaling} is not supported (this repo's Qwen3 uses plain RoPE)")
    if config.get("attention_bias"):
        raise ValueError(f"{source}: attention_bias = true is not supported (Qwen3 has no attention biases)")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act = {config['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
    if "head_dim" not in values and "hidden_size" in values and "num_attention_heads" in values:
        values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
    missing = [key for key, _ in CONFIG_FIELDS if key not in values]
    if missing:
        raise ValueError(f"{source}: missing config keys {missing}")
    return {key: values[key] for key, _ in CONFIG_FIELDS}


def check_config_matches(config: dict, args: ParallaxModelArgs, source: str, flavor: str) -> None:
    values = hf_config_values(config, source)
    wrong = []
    for key, field in CONFIG_FIELDS:
        ours = getattr(args, field)
        theirs = values[key]
        same = abs(float(ours) - float(theirs)) <= 1e-12 * max(1.0, abs(float(ours))) if isinstance(ours, float) else ours == theirs
        if not same:
            wrong.append(f"{key}={theirs!r} but flavor {flavor!r} has {field}={ours!r}")
    if wrong:
        raise ValueError(f"{source} does not match flavor {flavor!r}: " + "; ".join(wrong))
    if config.get("model_type", "qwen3") not in ("qwen3", PARALLAX_MODEL_TYPE):
        raise ValueError(f"{source}: model_type {config.get('model_type')!r} is not a Qwen3 checkpoint")
    probe = config.get("parallax") or {}
    if probe and args.attention != "parallax":
        raise ValueError(f"{source} is a Parallax checkpoint; flavor {flavor!r} has softmax attention")
    for key in ("probe_rope", "probe_norm", "probe_gate"):  # settings no tensor shape would reveal
        if key in probe and probe[key] != getattr(args, key):
            raise ValueError(f"{source}: parallax.{key} = {probe[key]} but flavor {flavor!r} has {key} = {getattr(args, key)}")


def hf_config_for(args: ParallaxModelArgs, dtype: torch.dtype) -> dict:
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": args.dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "intermediate_size": args.hidden_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": args.enable_weight_tying,
        "max_position_embeddings": args.max_seq_len,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "eos_token_id": args.eos_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if args.attention == "parallax":
        config["architectures"] = ["ParallaxQwen3ForCausalLM"]
        config["model_type"] = PARALLAX_MODEL_TYPE
        config["parallax"] = {
            "probe_rope": args.probe_rope,
            "probe_norm": args.probe_norm,
            "probe_gate": args.probe_gate,
            "tensors": {
                "r_proj": "W_R, (n_heads * head_dim, hidden_size): the probe r = W_R x",
                "r_norm": "per-head RMSNorm weight on r, (head_dim,)" if args.probe_norm else None,
                "r_gate": "probe gate, (n_heads, hidden_size)" if args.probe_gate else None,
            },
        }
    return config


# --- state dicts ------------------------------------------------------------------------------

def _layer_pattern(key: str) -> str:
    return re.sub(r"\.(\d+)\.", ".{}.", key, count=1)


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
    probe = {n for n in template if ".attention.wr." in n or ".attention.r_norm." in n or ".attention.probe_gate." in n}
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


# --- files ------------------------------------------------------------------------------------

def read_hf_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: expected a Hugging Face checkpoint directory")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        listed = set(json.loads(index_file.read_text())["weight_map"].values())
        absent = sorted(listed - {f.name for f in files})
        if absent:
            raise FileNotFoundError(f"{index_file} lists shards that are missing: {absent}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(file).items():
            if name in state:
                raise ValueError(f"tensor {name} appears in more than one file (second: {file})")
            state[name] = tensor
    return json.loads(config_file.read_text()), state


@dataclass
class ExportedCheckpoint:
    path: Path
    tensors: int
    bytes: int


def write_hf_checkpoint(
    path: Path, state: dict[str, torch.Tensor], args: ParallaxModelArgs, flavor: str, dtype: torch.dtype,
    source: str,
) -> ExportedCheckpoint:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf = to_hf_state(state, args, dtype)
    save_file(hf, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config_for(args, dtype)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "README.md").write_text(model_card(args, flavor, source, dtype, sorted(hf)))
    return ExportedCheckpoint(path, len(hf), sum(t.numel() * t.element_size() for t in hf.values()))


def model_card(args: ParallaxModelArgs, flavor: str, source: str, dtype: torch.dtype, names: list[str]) -> str:
    params = sum(1 for _ in names)
    if args.attention == "parallax":
        attention = (
            "**Parallax** (softmax attention plus a learned covariance correction driven by the probe "
            "r = W_R x). The probe tensors are `model.layers.N.self_attn.r_proj.weight` (W_R)"
            + (", `self_attn.r_norm.weight` (per-head RMSNorm on r)" if args.probe_norm else "")
            + (", `self_attn.r_gate.weight` (probe gate)" if args.probe_gate else "")
            + ". `transformers` has no Parallax model: `model_type` is `parallax_qwen3` so it refuses to load "
            "the weights as plain Qwen3 (which would drop the probe). Load it with parallax-titan "
            "(`scripts/convert_hf.py to-dcp`)."
        )
    else:
        attention = "**softmax** (plain Qwen3); loads with `transformers.AutoModelForCausalLM`."
    return (
        f"# {flavor}\n\n"
        f"Exported by parallax-titan `scripts/convert_hf.py` from `{source}`.\n\n"
        f"- Attention: {attention}\n"
        f"- Shape: {args.n_layers} layers, hidden {args.dim}, {args.n_heads} query / {args.n_kv_heads} KV heads "
        f"of {args.head_dim}, FFN {args.hidden_dim}, vocab {args.vocab_size}, "
        f"tied embeddings: {args.enable_weight_tying}.\n"
        f"- Tensors: {params}, stored as {str(dtype).removeprefix('torch.')}.\n"
    )
