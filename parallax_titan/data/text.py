"""Raw-text sources in the Ultra-FineWeb layout: parquet (or jsonl) files with the text in TEXT_COLUMN,
from the hub (streamed with `datasets`) or from a local folder (a cluster's shared filesystem)."""

from __future__ import annotations

import os
from pathlib import Path

from datasets import load_dataset

TEXT_COLUMN = "content"  # Ultra-FineWeb's text column, named in this one place
ULTRAFINEWEB_HUB = "openbmb/Ultra-FineWeb"


def _local_files(folder: str) -> tuple[str, list[str]]:
    """The parquet files (else jsonl) under a folder, sorted so every rank sees one order."""
    root = Path(folder)
    for kind, patterns in (("parquet", ("*.parquet",)), ("json", ("*.jsonl", "*.json"))):
        files = sorted(str(f) for p in patterns for f in root.rglob(p))
        if files:
            return kind, files
    raise FileNotFoundError(f"dataset_path {folder}: no .parquet or .jsonl files under it")


def load_text_dataset(path: str, split: str = "en", streaming: bool = True):
    """A local folder of parquet/jsonl files, or a hub dataset id streamed by `datasets` (split = the
    language config of Ultra-FineWeb: "en" or "zh")."""
    if os.path.isdir(path):
        kind, files = _local_files(path)
        ds = load_dataset(kind, data_files=files, split="train")
    elif os.path.isabs(path) or path.startswith((".", "~")):
        raise FileNotFoundError(f"dataset_path {path} does not exist")
    else:
        ds = load_dataset(path, split=split, streaming=streaming)
    # a streamed dataset may not know its columns up front (None): then the first row will tell
    if ds.column_names is not None and TEXT_COLUMN not in ds.column_names:
        raise ValueError(
            f"dataset {path}: no text column {TEXT_COLUMN!r}; columns are {ds.column_names}"
        )
    return ds


def text_of(sample: dict) -> str:
    return sample[TEXT_COLUMN]
