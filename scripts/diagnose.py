"""Parallax diagnostics of a checkpoint (parallax_titan/diagnostics.py), one row per layer.

    python scripts/diagnose.py --config configs/debug_cpu.toml --checkpoint outputs/debug_cpu/checkpoint/step-40 \
        [--text-file FILE | default: the embedded validation text] [--tokens N] [--json out.json] \
        [-- --section.key value ...]     (the overrides the run was trained with, if any)

The probe is the text's first N tokens (default: 512, or the model's max_seq_len where that is shorter).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from parallax_titan.diagnostics import model_stats
from parallax_titan.inference import default_device, load_model

COLUMNS = ("cor", "sink", "entropy", "neg_frac", "alpha_max", "sr_wq", "sr_wk", "sr_wr", "sr_qk", "sr_rk", "sr_ov")


def probe_text(path: str | None) -> str:
    if path:
        return open(path, encoding="utf-8").read()
    import pyarrow.parquet as pq

    from parallax_titan.data import EMBEDDED_VALIDATION, TEXT_COLUMN

    files = sorted(Path(EMBEDDED_VALIDATION).glob("*.parquet"))
    return "\n\n".join(pq.read_table(files[0], columns=[TEXT_COLUMN]).column(TEXT_COLUMN).to_pylist()[:20])


def main(argv: list[str] | None = None) -> dict:
    from parallax_titan.launch import split_overrides

    argv, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--text-file", default=None)
    parser.add_argument("--tokens", type=int, default=None, help="default: 512, or the model's max_seq_len if shorter")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        loaded = load_model(args.config, args.checkpoint, overrides=overrides, device=args.device,
                            attention_backend="torch")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"diagnose: {error}")
    longest = loaded.args.max_seq_len  # the model's RoPE table
    if args.tokens is not None and args.tokens > longest:
        sys.exit(f"diagnose: --tokens {args.tokens} exceeds the model's max_seq_len {longest} (its RoPE table, the "
                 f"run's [training] seq_len)")
    ids = loaded.tokenizer.encode(probe_text(args.text_file)).ids[: args.tokens or min(512, longest)]
    if len(ids) < 2:
        sys.exit("diagnose: the probe text has fewer than 2 tokens")
    tokens = torch.tensor(ids, device=args.device)
    stats = model_stats(loaded.model, tokens)
    print(f"{args.checkpoint}: {loaded.args.attention} attention, probe of {len(ids)} tokens")
    print("| layer | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for layer, values in sorted(stats.items()):
        print(f"| {layer} | " + " | ".join(f"{values[c]:.3g}" if c in values else "-" for c in COLUMNS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "tokens": len(ids), "layers": stats}, f, indent=1)
    return stats


if __name__ == "__main__":
    main()
