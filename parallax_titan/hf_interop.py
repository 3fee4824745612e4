"""Hugging Face checkpoint files <-> this repo's checkpoints: safetensors, config.json, the tokenizer's
files, the model card. The tensor mapping is parallax_titan/model/state_dict_adapter.py's.

A softmax model exports as plain Qwen3 and loads in `transformers`; a Parallax export declares
`model_type = "parallax_qwen3"`, so `transformers` refuses it instead of silently dropping the probe.
The exported config's eos/bos/pad token ids are the run's tokenizer's (`[model] hf_assets_path`), never
Qwen3's defaults: a model trained with another vocabulary would otherwise never stop generating.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from parallax_titan.model.args import ParallaxModelArgs
from parallax_titan.model.state_dict_adapter import (  # noqa: F401  (re-exported for scripts/convert_hf.py)
    FLOAT_DTYPES,
    PARALLAX_HF_KEYS,
    PROBE_STARTS,
    ParallaxQwen3StateDictAdapter,
    from_hf_state,
    to_hf_state,
)

PARALLAX_MODEL_TYPE = "parallax_qwen3"


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


# The files `transformers.AutoTokenizer` reads from a folder (those present are exported).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja")
SPECIAL_TOKENS = ("eos", "bos", "pad")


def tokenizer_special_ids(tokenizer_dir: str | Path) -> dict:
    """eos/bos/pad token ids (None where the tokenizer names none) and the vocabulary size of a
    tokenizer folder, as the trainer reads it: tokenizer.json plus tokenizer_config.json's token names."""
    from tokenizers import Tokenizer

    folder = Path(tokenizer_dir)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"tokenizer file {tokenizer_file} does not exist (pass the run's [model] hf_assets_path)")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    ids = {"vocab_size": tokenizer.get_vocab_size(with_added_tokens=True)}
    for kind in SPECIAL_TOKENS:
        token = config.get(f"{kind}_token")
        token = token.get("content") if isinstance(token, dict) else token
        token_id = tokenizer.token_to_id(token) if token else None
        if token and token_id is None:
            raise ValueError(f"{config_file}: {kind}_token {token!r} is not in {tokenizer_file}")
        ids[f"{kind}_token_id"] = token_id
    return ids


def hf_config_for(args: ParallaxModelArgs, dtype: torch.dtype, special_ids: dict | None = None) -> dict:
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
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    for kind in SPECIAL_TOKENS:  # the run's tokenizer's, not the flavor's Qwen3 defaults
        key = f"{kind}_token_id"
        config[key] = special_ids[key] if special_ids else (args.eos_id if kind == "eos" else None)
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
    tokenizer_files: list[str]


def write_hf_checkpoint(
    path: Path, state: dict[str, torch.Tensor], args: ParallaxModelArgs, flavor: str, dtype: torch.dtype,
    source: str, tokenizer_dir: str | Path, export_tokenizer: bool = False,
) -> ExportedCheckpoint:
    """safetensors, config.json and generation_config.json (eos/bos/pad ids of `tokenizer_dir`, the run's
    tokenizer), README.md, and with `export_tokenizer` the tokenizer's files, into a new or empty folder."""
    from safetensors.torch import save_file

    path = Path(path)
    check_empty_output(path)
    special = tokenizer_special_ids(tokenizer_dir)
    if special["vocab_size"] > args.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_dir} has {special['vocab_size']} tokens but flavor {flavor!r} has "
                         f"vocab_size {args.vocab_size}: it is not the tokenizer this model was trained with")
    hf = to_hf_state(state, args, dtype)
    path.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config_for(args, dtype, special)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {k: config[k] for k in ("eos_token_id", "bos_token_id", "pad_token_id") if config[k] is not None}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    copied = []
    if export_tokenizer:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, path / name)
                copied.append(name)
    (path / "README.md").write_text(model_card(args, flavor, source, dtype, sorted(hf), special, copied))
    return ExportedCheckpoint(path, len(hf), sum(t.numel() * t.element_size() for t in hf.values()), copied)


def check_empty_output(path: Path) -> None:
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not empty; choose a new output folder")


def model_card(args: ParallaxModelArgs, flavor: str, source: str, dtype: torch.dtype, names: list[str],
               special: dict, tokenizer_files: list[str]) -> str:
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
        f"- Tokenizer: {special['vocab_size']} tokens; eos id {special['eos_token_id']}, bos id "
        f"{special['bos_token_id']}, pad id {special['pad_token_id']}"
        + (f" (files: {', '.join(tokenizer_files)}).\n" if tokenizer_files else
           " (not exported: `scripts/convert_hf.py to-hf --export-tokenizer` writes its files here).\n")
    )
