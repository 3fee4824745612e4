"""Rebuild the embedded default corpus and tokenizer shipped in parallax_titan/assets/.

Source: the reStructuredText sources of the CPython 3.11 documentation, as shipped by Debian's
package `python3.11-doc` (/usr/share/doc/python3.11/html/_sources). Licence: PSF License
Version 2 (redistribution permitted with the licence notice, kept in assets/embedded_en/LICENSE).

Output (the Ultra-FineWeb parquet layout, so the real loaders read it unchanged):
  assets/embedded_en/train/part-00000.parquet   column `content`, one document per row
  assets/embedded_en/validation/part-00000.parquet   held out: a different part of the docs
  assets/tokenizer/{tokenizer.json,tokenizer_config.json}   byte-level BPE trained on train only

    apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb /tmp/pydoc
    python scripts/build_embedded_assets.py --docs /tmp/pydoc/usr/share/doc/python3.11/html/_sources
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import decoders, models, pre_tokenizers, processors, trainers, Tokenizer

ASSETS = Path(__file__).resolve().parents[1] / "parallax_titan" / "assets"
EOS = "<|endoftext|>"
# Held-out validation comes from a different part of the docs than training.
TRAIN_DIRS = ["howto", "faq", "reference", "library", "using", "extending"]
VALIDATION_DIRS = ["tutorial"]
HEADING_UNDERLINE = re.compile(r"^([=\-~*^#\"'`+])\1{3,}\s*$")
ROLE = re.compile(r":[a-z:]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")


def clean_rst(text: str) -> str:
    """Drop reST markup that is not prose (directives, anchors, heading rules); keep code."""
    out = []
    skip_indented = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(".. ") and not stripped.startswith(".. code"):
            # directives/comments/anchors: skip them and their indented body
            skip_indented = True
            continue
        if skip_indented:
            if not stripped or line.startswith((" ", "\t")):
                continue
            skip_indented = False
        if HEADING_UNDERLINE.match(stripped):
            continue
        line = ROLE.sub(r"\1", line).replace("``", "")
        out.append(line.rstrip())
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def split_documents(text: str, max_chars: int) -> list[str]:
    """Split a long page into documents of at most about max_chars at paragraph boundaries."""
    docs, cur, size = [], [], 0
    for para in text.split("\n\n"):
        if size + len(para) > max_chars and cur:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return [d for d in docs if len(d) > 200]


def collect(root: Path, dirs: list[str], budget_chars: int, max_doc_chars: int) -> list[str]:
    docs: list[str] = []
    total = 0
    for d in dirs:
        for f in sorted((root / d).rglob("*.rst.txt")):
            for doc in split_documents(clean_rst(f.read_text(encoding="utf-8")), max_doc_chars):
                if total + len(doc) > budget_chars:
                    return docs
                docs.append(doc)
                total += len(doc)
    return docs


def write_parquet(docs: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"content": docs}), path, compression="zstd", compression_level=19)


def train_tokenizer(docs: list[str], vocab_size: int, out_dir: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    # Qwen3 base-model convention: no BOS, <|endoftext|> separates documents.
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "bos_token": None,
        "pad_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 4096,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, required=True, help="the _sources folder of the CPython docs")
    ap.add_argument("--train-chars", type=int, default=2_400_000)
    ap.add_argument("--validation-chars", type=int, default=250_000)
    ap.add_argument("--vocab-size", type=int, default=2048)
    args = ap.parse_args()
    if not (args.docs / "tutorial").is_dir():
        raise SystemExit(f"--docs {args.docs}: no tutorial/ folder; expected the docs' _sources folder")

    train = collect(args.docs, TRAIN_DIRS, args.train_chars, 6000)
    validation = collect(args.docs, VALIDATION_DIRS, args.validation_chars, 6000)
    write_parquet(train, ASSETS / "embedded_en" / "train" / "part-00000.parquet")
    write_parquet(validation, ASSETS / "embedded_en" / "validation" / "part-00000.parquet")
    train_tokenizer(train, args.vocab_size, ASSETS / "tokenizer")
    print(f"train: {len(train)} docs, {sum(map(len, train)):,} chars; "
          f"validation: {len(validation)} docs, {sum(map(len, validation)):,} chars")


if __name__ == "__main__":
    main()
