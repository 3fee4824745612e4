"""Tokenise a text source into pre-tokenised shards (the fast path for real runs).

    python scripts/prepare_data.py --source openbmb/Ultra-FineWeb --lang en --tokenizer ./assets/Qwen3-0.6B \
        --out /data/ufw-qwen3 [--max-docs N] [--validation-permille 5] [--shard-tokens 100000000]
    python scripts/prepare_data.py --source parallax_titan/assets/embedded_en/train \
        --tokenizer parallax_titan/assets/tokenizer --out /tmp/embedded-shards

--source: a hub dataset id (streamed) or a local folder of parquet/jsonl files (text column `content`).
Documents are tokenised in batches by the `tokenizers` library's parallel encoder (all cores; a tqdm
bar shows progress) and each is terminated with EOS. A document goes to the held-out "validation" split
when a hash of its text falls below --validation-permille / 1000, so the split does not depend on order
and training never sees those documents. Output: parallax_titan/data/shards.py's layout and manifest.
A local source is checked first (UTF-8 text, valid JSON lines: errors name the file and line); --out must
be new or empty, and a failed run leaves nothing there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parallax_titan.data.prepare import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True)
    ap.add_argument("--lang", default="en", help="Ultra-FineWeb language config when streaming the hub: en | zh")
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json and tokenizer_config.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--validation-permille", type=int, default=5)
    ap.add_argument("--validation-source", default=None,
                    help="a second local/hub source that becomes the whole validation split (held-out sources)")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000)
    ap.add_argument("--max-docs", type=int, default=None)
    args = ap.parse_args()
    try:
        manifest = prepare(args.source, args.lang, args.tokenizer, args.out, args.validation_permille,
                           args.shard_tokens, args.max_docs, validation_source=args.validation_source)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # nothing was written to --out
        sys.exit(f"prepare_data: {error}")
    for name, split in manifest["splits"].items():
        print(f"{name}: {split['num_docs']:,} documents, {split['num_tokens']:,} tokens, {len(split['shards'])} shards")


if __name__ == "__main__":
    main()
