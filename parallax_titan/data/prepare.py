"""Tokenise a text source into pre-tokenised shards (scripts/prepare_data.py is its command line).

Documents are tokenised in batches by the `tokenizers` library's parallel encoder (a tqdm bar shows
progress) and each is terminated with EOS. A document goes to the held-out "validation" split when a
hash of its text falls below validation_permille / 1000: the split does not depend on order, and
training never sees those documents.

The shards are written into a hidden sibling folder that becomes `out` only when the manifest is
written, so a failure (a bad source row, a full disk, Ctrl-C) leaves no partial output; `out` must be
new or empty.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from parallax_titan.data.shards import ShardWriter, tokenizer_fingerprint, write_manifest
from parallax_titan.data.text import load_text_dataset, TEXT_COLUMN


def is_validation(text: str, permille: int) -> bool:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") % 1000 < permille


def _documents(source: str, lang: str, max_docs: int | None):
    docs = (row[TEXT_COLUMN] for row in load_text_dataset(source, split=lang, streaming=True))
    return itertools.islice(docs, max_docs) if max_docs is not None else docs


def prepare(source: str, lang: str, tokenizer_dir: str, out: Path, validation_permille: int = 5,
            shard_tokens: int = 100_000_000, max_docs: int | None = None, batch_docs: int = 1024,
            validation_source: str | None = None) -> dict:
    """`validation_source`: a second text source that becomes the whole validation split (held-out
    sources rather than held-out documents); the hash split is then off."""
    fingerprint = tokenizer_fingerprint(tokenizer_dir)
    if fingerprint["eos_id"] is None:
        raise ValueError(f"tokenizer {tokenizer_dir}: no eos_token in tokenizer_config.json to end documents with")
    tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose a new output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # mkdtemp's 0700 would hide the shards from other users
    try:
        manifest = _prepare_into(partial, source, lang, tokenizer, fingerprint, validation_permille, shard_tokens,
                                 max_docs, batch_docs, validation_source)
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _prepare_into(out: Path, source, lang, tokenizer, fingerprint, validation_permille, shard_tokens, max_docs,
                  batch_docs, validation_source) -> dict:
    writers = {name: ShardWriter(out, name, shard_tokens) for name in ("train", "validation")}
    streams = [(_documents(source, lang, max_docs), None)]  # None: the hash decides
    if validation_source is not None:
        validation_permille = 0
        streams = [(streams[0][0], "train"), (_documents(validation_source, lang, max_docs), "validation")]
    skipped = 0
    eos = np.array([fingerprint["eos_id"]], dtype=np.uint32)
    with tqdm(desc="tokenising", unit="doc") as bar:
        for docs, fixed_split in streams:
            while batch := list(itertools.islice(docs, batch_docs)):
                texts = [t for t in batch if isinstance(t, str) and t.strip()]
                skipped += len(batch) - len(texts)
                for text, enc in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False)):
                    split = fixed_split or ("validation" if is_validation(text, validation_permille) else "train")
                    writers[split].add(np.concatenate([np.asarray(enc.ids, dtype=np.uint32), eos]))
                bar.update(len(batch))
    for w in writers.values():
        w.flush()
    if skipped:
        print(f"skipped {skipped} empty or non-text documents")
    source_info = {"source": source, "lang": lang, "text_column": TEXT_COLUMN, "max_docs": max_docs,
                   "validation_permille": validation_permille, "validation_source": validation_source,
                   "skipped_docs": skipped}
    return write_manifest(out, fingerprint, source_info, {n: w.shards for n, w in writers.items()})
