"""Pre-tokenised shards: the fast path for real runs (no tokenisation on the training hosts).

Layout of a shard folder (written by scripts/prepare_data.py):
    manifest.json                    format, tokenizer (sha256 of tokenizer.json, size, EOS id),
                                     source, and per split the shard files with token/document counts
    {split}-{i:05d}.tokens.bin       uint32 token ids; every document ends with EOS
    {split}-{i:05d}.docs.npy         uint64 offset of each document's first token in the shard

Reading: a split's shards form one token stream, cut into windows of seq_len + 1 tokens (stride
seq_len). Each epoch visits the windows in a permutation fixed by (seed, epoch); data-parallel rank r
of W takes every W-th window of it, so ranks read distinct data and one seed gives one stream. The
state (epoch, position) rides in torchtitan's checkpoint: resuming yields exactly the windows the
uninterrupted run would have seen next.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.distributed.checkpoint.stateful import Stateful
from torch.utils.data import IterableDataset

FORMAT = "parallax-shards-v1"
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.uint32


def tokenizer_fingerprint(tokenizer_dir: str) -> dict[str, Any]:
    """sha256 of tokenizer.json, its size and EOS id: what a shard set is tied to."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    tok = Tokenizer.from_file(str(path))
    config_path = Path(tokenizer_dir) / "tokenizer_config.json"
    eos = None
    if config_path.is_file():
        eos = json.loads(config_path.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
    return {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "eos_token": eos,
        "eos_id": tok.token_to_id(eos) if eos else None,
    }


class ShardWriter:
    """Appends tokenised documents to the shards of one split, closing a shard at `shard_tokens`."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split, self.shard_tokens = Path(folder), split, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._tokens: list[np.ndarray] = []
        self._starts: list[int] = []
        self._size = 0

    def add(self, tokens: np.ndarray) -> None:
        self._starts.append(self._size)
        self._tokens.append(tokens.astype(TOKEN_DTYPE, copy=False))
        self._size += len(tokens)
        if self._size >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._tokens:
            return
        name = f"{self.split}-{len(self.shards):05d}"
        np.concatenate(self._tokens).tofile(self.folder / f"{name}.tokens.bin")
        np.save(self.folder / f"{name}.docs.npy", np.asarray(self._starts, dtype=np.uint64))
        self.shards.append({"tokens": f"{name}.tokens.bin", "docs": f"{name}.docs.npy",
                            "num_tokens": self._size, "num_docs": len(self._starts)})
        self._tokens, self._starts, self._size = [], [], 0


def write_manifest(folder: Path, tokenizer: dict, source: dict, splits: dict[str, list[dict]]) -> dict:
    manifest = {
        "format": FORMAT,
        "dtype": "uint32",
        "tokenizer": tokenizer,
        "source": source,
        "splits": {
            name: {"shards": shards, "num_tokens": sum(s["num_tokens"] for s in shards),
                   "num_docs": sum(s["num_docs"] for s in shards)}
            for name, shards in splits.items()
        },
    }
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def is_shard_folder(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, MANIFEST))


@dataclass
class ShardSplit:
    """A split's shards, memory-mapped and checked against their manifest."""

    folder: Path
    split: str
    tokens: list[np.memmap]
    offsets: list[int]  # position of each shard's first token in the split's stream
    num_tokens: int

    @classmethod
    def open(cls, folder: str, split: str, tokenizer: dict | None = None) -> "ShardSplit":
        folder_path = Path(folder)
        manifest_path = folder_path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no shard manifest {manifest_path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"corrupt shard manifest {manifest_path}: {err}") from None
        if manifest.get("format") != FORMAT or "splits" not in manifest or "tokenizer" not in manifest:
            raise ValueError(f"corrupt shard manifest {manifest_path}: expected format {FORMAT!r} with "
                             f"'tokenizer' and 'splits'")
        if tokenizer is not None and manifest["tokenizer"].get("sha256") != tokenizer["sha256"]:
            raise ValueError(
                f"shards in {folder} were tokenised with tokenizer sha256 {manifest['tokenizer'].get('sha256')} "
                f"(vocab {manifest['tokenizer'].get('vocab_size')}), but training uses sha256 "
                f"{tokenizer['sha256']} (vocab {tokenizer['vocab_size']}): re-run scripts/prepare_data.py"
            )
        if split not in manifest["splits"]:
            raise ValueError(f"{manifest_path}: no split {split!r}; splits are {sorted(manifest['splits'])}")
        maps = []
        for shard in manifest["splits"][split]["shards"]:
            path = folder_path / shard["tokens"]
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} listed in {manifest_path} is missing")
            expected = shard["num_tokens"] * np.dtype(TOKEN_DTYPE).itemsize
            if path.stat().st_size != expected:
                raise ValueError(f"shard {path} is truncated or corrupt: {path.stat().st_size} bytes, "
                                 f"manifest says {shard['num_tokens']} tokens ({expected} bytes)")
            if shard["num_tokens"] == 0:
                raise ValueError(f"shard {path} is empty")
            maps.append(np.memmap(path, dtype=TOKEN_DTYPE, mode="r"))
        offsets = np.cumsum([0] + [len(m) for m in maps]).tolist()
        return cls(folder_path, split, maps, offsets[:-1], offsets[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's concatenated stream (may span shards)."""
        pieces = []
        for m, offset in zip(self.tokens, self.offsets):
            lo, hi = max(start - offset, 0), min(start + length - offset, len(m))
            if lo < hi:
                pieces.append(np.asarray(m[lo:hi]))
        return np.concatenate(pieces)


class ShardTokenDataset(IterableDataset, Stateful):
    """Windows of seq_len + 1 tokens from a shard split, as torchtitan's text datasets yield them."""

    def __init__(self, folder: str, split: str, seq_len: int, dp_rank: int = 0, dp_world_size: int = 1,
                 seed: int = 0, infinite: bool = True, tokenizer: dict | None = None):
        self.data = ShardSplit.open(folder, split, tokenizer)
        self.seq_len, self.rank, self.world = seq_len, dp_rank, dp_world_size
        self.seed, self.infinite = seed, infinite
        self.num_windows = (self.data.num_tokens - 1) // seq_len
        if self.num_windows < dp_world_size:
            raise ValueError(f"split {split!r} of {folder} has {self.data.num_tokens} tokens: fewer than one "
                             f"window of {seq_len + 1} per data-parallel rank ({dp_world_size} ranks)")
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
        usable = (self.num_windows // self.world) * self.world  # equal counts on every rank
        return perm[:usable][self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        while True:
            order = self._order(self.epoch)
            while self.position < len(order):
                start = int(order[self.position]) * self.seq_len
                self.position += 1
                window = torch.from_numpy(self.data.read(start, self.seq_len + 1).astype(np.int64))
                yield {"input": window[:-1]}, window[1:]
            if not self.infinite:
                return
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        # what the window order depends on goes along, so that a resume under other settings is refused
        return {"epoch": self.epoch, "position": self.position, "world": self.world, "seq_len": self.seq_len,
                "seed": self.seed, "num_tokens": self.data.num_tokens}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resumes on any number of data-parallel ranks: rank r's k-th window is the epoch order's
        (k * world + r)-th, so the ranks together have taken position * world windows of the epoch. The
        windows and their order depend on seq_len, the seed and the split's tokens: a state saved under other
        values would resume at a place that means other data, so it is refused."""
        for key, name, here in (("seq_len", "[training] seq_len", self.seq_len), ("seed", "[debug] seed", self.seed),
                                ("num_tokens", f"the {self.data.split!r} split's token count", self.data.num_tokens)):
            if key in state_dict and int(state_dict[key]) != here:
                raise ValueError(
                    f"the checkpoint's data position in {self.data.folder} was saved with {name} = "
                    f"{state_dict[key]}, and this run has {here}: it would resume on other windows. Resume with "
                    f"the checkpoint's value, or start a new run (--job.dump_folder)")
        saved_world = int(state_dict.get("world", self.world))
        consumed = int(state_dict["position"]) * saved_world
        if consumed % self.world:
            raise ValueError(f"cannot resume these shards on {self.world} data-parallel ranks: the checkpoint's "
                             f"{saved_world} ranks took {consumed} windows of epoch {state_dict['epoch']}, "
                             f"not a multiple of {self.world}")
        self.epoch, self.position = int(state_dict["epoch"]), consumed // self.world
