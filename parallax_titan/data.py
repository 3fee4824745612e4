"""Datasets for torchtitan's text dataloader (`[training] dataset = ...`, `dataset_path = ...`).

All read the Ultra-FineWeb layout: parquet (or jsonl) files whose text is in column TEXT_COLUMN.
- "ultrafineweb": the hub dataset openbmb/Ultra-FineWeb streamed with `datasets` (split "en"), or,
  when `dataset_path` is a local folder, the same files from disk (a cluster's shared filesystem).
- "embedded_en" / "embedded_en_validation": the small corpus shipped in parallax_titan/assets
  (README there), read by the same local-folder path: what the CPU quickstart and tests train on.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from datasets import load_dataset
from torchtitan.hf_datasets import DatasetConfig
from torchtitan.hf_datasets.text_datasets import DATASETS

TEXT_COLUMN = "content"
ULTRAFINEWEB_HUB = "openbmb/Ultra-FineWeb"
ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED_TRAIN = str(ASSETS / "embedded_en" / "train")
EMBEDDED_VALIDATION = str(ASSETS / "embedded_en" / "validation")
EMBEDDED_TOKENIZER = str(ASSETS / "tokenizer")


def _local_files(folder: str) -> tuple[str, list[str]]:
    """The parquet files (else jsonl) under a folder, sorted so every rank sees one order."""
    root = Path(folder)
    for kind, patterns in (("parquet", ("*.parquet",)), ("json", ("*.jsonl", "*.json"))):
        files = sorted(str(f) for p in patterns for f in root.rglob(p))
        if files:
            return kind, files
    raise FileNotFoundError(f"dataset_path {folder}: no .parquet or .jsonl files under it")


def load_text_dataset(path: str, split: str = "en", streaming: bool = True):
    """A local folder of parquet/jsonl files, or a hub dataset id streamed by `datasets`."""
    if os.path.isdir(path):
        kind, files = _local_files(path)
        ds = load_dataset(kind, data_files=files, split="train")
    elif os.path.isabs(path) or path.startswith((".", "~")):
        raise FileNotFoundError(f"dataset_path {path} does not exist")
    else:
        ds = load_dataset(path, split=split, streaming=streaming)
    if TEXT_COLUMN not in ds.column_names:
        raise ValueError(
            f"dataset {path}: no text column {TEXT_COLUMN!r}; columns are {ds.column_names}"
        )
    return ds


def text_of(sample: dict) -> str:
    return sample[TEXT_COLUMN]


def register_datasets() -> None:
    entries = {
        "ultrafineweb": DatasetConfig(
            path=ULTRAFINEWEB_HUB, loader=partial(load_text_dataset, split="en"), sample_processor=text_of
        ),
        "embedded_en": DatasetConfig(
            path=EMBEDDED_TRAIN, loader=load_text_dataset, sample_processor=text_of
        ),
        "embedded_en_validation": DatasetConfig(
            path=EMBEDDED_VALIDATION, loader=load_text_dataset, sample_processor=text_of
        ),
    }
    for name, config in entries.items():
        DATASETS.setdefault(name, config)
