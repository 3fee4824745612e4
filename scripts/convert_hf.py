"""Convert between Hugging Face Qwen3 checkpoints and this repo's DCP checkpoints.

    # HF Qwen3 -> model-only DCP for `[checkpoint] initial_load_path` (softmax, or Parallax with an exact start)
    # (--hf: a full model folder, e.g. `hf download Qwen/Qwen3-0.6B --local-dir hf/Qwen3-0.6B`)
    python scripts/convert_hf.py to-dcp --hf hf/Qwen3-0.6B --flavor 0.6B-parallax --out outputs/qwen3-0.6B-parallax-init
    # a trained checkpoint (checkpoint/step-N, full or model-only) -> safetensors + config.json + model card;
    # --tokenizer is the run's [model] hf_assets_path: its eos/bos/pad ids go into config.json
    python scripts/convert_hf.py to-hf --dcp outputs/run/checkpoint/step-20000 --flavor 0.6B-parallax \
        --tokenizer assets/Qwen3-0.6B --export-tokenizer --out exported/

Any flavor mismatch (dims, heads, vocab, RoPE), missing or extra tensor, or non-float dtype is an error
naming it; nothing is loaded partially, and both directions refuse a non-empty output folder. The mapping
is torchtitan's Qwen3 state-dict adapter plus the Parallax probe tensors
(parallax_titan/model/state_dict_adapter.py); the files are written by parallax_titan/hf_interop.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from parallax_titan import checkpoint_manifest
from parallax_titan.hf_interop import check_config_matches, check_empty_output, read_hf_checkpoint, write_hf_checkpoint
from parallax_titan.model.checkpoint import load_model_dcp, save_model_dcp
from parallax_titan.model.flavors import FLAVORS
from parallax_titan.model.state_dict_adapter import from_hf_state, has_probe_tensors, PROBE_STARTS

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def flavor_args(name: str):
    if name not in FLAVORS:
        raise SystemExit(f"--flavor {name!r} is unknown; choose one of {sorted(FLAVORS)}")
    return FLAVORS[name]


def to_dcp(args: argparse.Namespace) -> None:
    model_args = flavor_args(args.flavor)
    config, hf_state = read_hf_checkpoint(args.hf)
    check_config_matches(config, model_args, str(Path(args.hf) / "config.json"), args.flavor)
    state = from_hf_state(hf_state, model_args, str(args.hf), probe_start=args.probe_start, seed=args.seed)
    save_model_dcp(state, args.out)
    checkpoint_manifest.write_manifest(args.out)  # verified when the trainer loads it (initial_load_path)
    probe = ""
    if model_args.attention == "parallax":  # the probe's tensors came with the checkpoint, or were started here
        probe = ", probe from the checkpoint" if has_probe_tensors(hf_state) else f", probe start {args.probe_start!r}"
    print(f"wrote {len(state)} tensors ({model_args.attention} attention{probe}) as fp32 DCP to {args.out}")


def to_hf(args: argparse.Namespace) -> None:
    model_args = flavor_args(args.flavor)
    check_empty_output(args.out)
    if checkpoint_manifest.has_manifest(args.dcp):
        checkpoint_manifest.verify(args.dcp, distributed=False)
    state = load_model_dcp(args.dcp, model_args)
    out = write_hf_checkpoint(args.out, state, model_args, args.flavor, DTYPES[args.dtype], str(args.dcp),
                              args.tokenizer, args.export_tokenizer)
    tokenizer = f", tokenizer files {out.tokenizer_files}" if out.tokenizer_files else ""
    print(f"wrote {out.tensors} tensors ({out.bytes / 2**20:.1f} MiB, {args.dtype}) with config.json, "
          f"generation_config.json and README.md{tokenizer} to {out.path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-dcp", help="Hugging Face Qwen3 directory -> model-only DCP checkpoint")
    p.add_argument("--hf", type=Path, required=True, help="directory with config.json and *.safetensors")
    p.add_argument("--flavor", required=True, help="this repo's flavor, e.g. 0.6B-transformer or 0.6B-parallax")
    p.add_argument("--out", type=Path, required=True, help="new DCP folder")
    p.add_argument("--probe-start", choices=PROBE_STARTS, default="zero-wr",
                   help="Parallax only: W_R = 0 with r-norm at one (default), or W_R random with r-norm at zero; "
                        "both are exactly softmax attention at step 0 (parallax_titan/model/state_dict_adapter.py says how they differ)")
    p.add_argument("--seed", type=int, default=0, help="seed of W_R for --probe-start zero-norm")
    p.set_defaults(run=to_dcp)
    p = sub.add_parser("to-hf", help="DCP checkpoint -> safetensors + config.json + model card")
    p.add_argument("--dcp", type=Path, required=True, help="a checkpoint/step-N folder")
    p.add_argument("--flavor", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                   help="the exported tensors' dtype (default bfloat16, whatever the training precision)")
    p.add_argument("--tokenizer", type=Path, required=True,
                   help="the run's tokenizer folder ([model] hf_assets_path): its eos/bos/pad ids go into config.json")
    p.add_argument("--export-tokenizer", action="store_true", help="also copy the tokenizer's files beside the weights")
    p.set_defaults(run=to_hf)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, checkpoint_manifest.CheckpointCorruptError) as error:
        sys.exit(f"convert_hf: {error}")


if __name__ == "__main__":
    main()
