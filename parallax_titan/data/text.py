"""Raw-text sources in the Ultra-FineWeb layout: parquet (or jsonl) files with the text in TEXT_COLUMN,
from the hub (streamed with `datasets`) or from local files (a cluster's shared filesystem).

Local sources are checked before training starts: every row's text must be valid UTF-8 and every jsonl
line valid JSON, or the error names the file and line (parquet: the file and row). `datasets` itself
loads such rows and fails only when training reaches them, naming neither. A passed check is recorded
beside the dataset's cache, so a corpus is read through once per version, not once per rank and run. A
hub source is streamed and cannot be checked up front.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from datasets import load_dataset

TEXT_COLUMN = "content"  # Ultra-FineWeb's text column, named in this one place
ULTRAFINEWEB_HUB = "openbmb/Ultra-FineWeb"
KINDS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


class TextSourceError(ValueError):
    pass


def _local_files(path: str) -> tuple[str, list[str]]:
    """The parquet files (else jsonl) of a file or under a folder, sorted so every rank sees one order."""
    root = Path(path)
    if root.is_file():
        if root.name == "manifest.json":
            raise TextSourceError(f"dataset_path {path} is a shard manifest: pass the folder that holds it, "
                                  f"{root.parent}")
        if root.suffix not in KINDS:
            raise TextSourceError(f"dataset_path {path} is a {root.suffix or 'suffix-less'} file; expected a "
                                  ".parquet, .jsonl or .json file, or a folder of them")
        return KINDS[root.suffix], [str(root)]
    for kind, patterns in (("parquet", ("*.parquet",)), ("json", ("*.jsonl", "*.json"))):
        files = sorted(str(f) for p in patterns for f in root.rglob(p))
        if files:
            return kind, files
    raise FileNotFoundError(f"dataset_path {path}: no .parquet or .jsonl files under it")


def first_bad_jsonl_line(files: list[str]) -> str | None:
    """Where the first line that is not UTF-8 or not JSON is, or None."""
    for file in files:
        with open(file, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    return (f"{file}, line {number}: not UTF-8 text (byte {raw[err.start:err.start + 1]!r} at "
                            f"offset {err.start} of the line)")
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as err:
                    return f"{file}, line {number}: invalid JSON ({err.msg.removesuffix(' at')}, column {err.colno})"
                if not isinstance(row, dict):
                    return f"{file}, line {number}: a JSON {type(row).__name__}, not an object with {TEXT_COLUMN!r}"
    return None


def first_bad_parquet_row(files: list[str]) -> str | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:
        column = pq.read_table(file, columns=[TEXT_COLUMN]).column(TEXT_COLUMN)
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        for row, value in enumerate(column.cast(pa.binary()).to_pylist()):
            try:
                None if value is None else value.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"{file}, row {row}: {TEXT_COLUMN!r} is not UTF-8 text ({err.reason} at byte {err.start})"
    return None


def _checked_marker(ds) -> Path | None:
    """A file beside the dataset's arrow cache that records a passed check of this version of the corpus
    (`datasets` fingerprints the source files' contents), so that the ranks and runs that load it again
    do not read every byte again; None when the dataset has no cache files."""
    if not ds.cache_files:
        return None
    return Path(ds.cache_files[0]["filename"]).parent / f"parallax-text-checked-{ds._fingerprint}"


def _validate_text(ds) -> None:
    """Arrow's full check of the text column (UTF-8 included): reads every byte."""
    ds.data.table.column(TEXT_COLUMN).validate(full=True)


def _check_local(ds, kind: str, files: list[str], path: str) -> None:
    """Every row's text decodes (arrow's own UTF-8 check, fast); if not, find the file and row. Once per
    version of the corpus (_checked_marker)."""
    import pyarrow as pa

    marker = _checked_marker(ds)
    if marker is not None and marker.exists():
        return
    try:
        _validate_text(ds)
    except pa.ArrowInvalid:
        where = first_bad_jsonl_line(files) if kind == "json" else first_bad_parquet_row(files)
        raise TextSourceError(f"dataset {path}: {where or 'text that is not UTF-8'}") from None
    if marker is not None:
        try:
            marker.touch()
        except OSError:  # a read-only cache: every load checks again
            pass


def load_text_dataset(path: str, split: str = "en", streaming: bool = True):
    """A local parquet/jsonl file or folder of them, or a hub dataset id streamed by `datasets` (split = the
    language config of Ultra-FineWeb: "en" or "zh")."""
    local = os.path.exists(path)
    if local:
        kind, files = _local_files(path)
        try:
            ds = load_dataset(kind, data_files=files, split="train")
        except Exception as err:  # arrow's JSON errors name no file or line
            where = first_bad_jsonl_line(files) if kind == "json" else None
            if where is None:
                raise
            raise TextSourceError(f"dataset {path}: {where}") from None
    elif os.path.isabs(path) or path.startswith((".", "~")):
        raise FileNotFoundError(f"dataset_path {path} does not exist")
    else:
        try:
            ds = load_dataset(path, split=split, streaming=streaming)
        except ConnectionError as err:  # `datasets` names the hub id, not the settings that can replace it
            raise ConnectionError(
                f"dataset {path} is a hub id and the hub cannot be reached: {err}. Offline, name local data (a "
                "shard folder of scripts/prepare_data.py, or parquet/jsonl files) where the hub id came from: "
                "--training.dataset_path (also the default of --validation.dataset_path, docs/data.md), "
                "--validation.dataset_path, or scripts/prepare_data.py --source") from err
    # a streamed dataset may not know its columns up front (None): then the first row will tell
    if ds.column_names is not None and TEXT_COLUMN not in ds.column_names:
        raise ValueError(
            f"dataset {path}: no text column {TEXT_COLUMN!r}; columns are {ds.column_names}"
        )
    if local:
        _check_local(ds, kind, files, path)
    return ds


def text_of(sample: dict) -> str:
    return sample[TEXT_COLUMN]
