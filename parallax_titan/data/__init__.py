"""Data for torchtitan's trainer: `[training] dataset = "ultrafineweb"` (or "embedded_en") with
`dataset_path` choosing one of three sources by what the path is:

  (a) unset or a hub id          stream openbmb/Ultra-FineWeb from the hub (`datasets`, split en|zh)
  (b) a folder of parquet/jsonl  the same files from disk, tokenised on the fly (torchtitan's loader)
  (c) a folder with manifest.json  pre-tokenised shards from scripts/prepare_data.py (the fast path)

`dataset_path` may also name one .parquet/.jsonl file. The embedded default corpus
(parallax_titan/assets/embedded_en) is a folder of type (b), and tests turn it into (c).

Validation reads `[validation] dataset_path` when it is set (shards: their held-out "validation" split).
Unset, it follows `[training] dataset_path` (`validation_source` says how): a shard folder validates on
its own "validation" split, a local text folder named `train` on its sibling `validation` folder, and any
other training path is an error, since validating on the `[validation] dataset`'s default corpus would
measure other data. With neither path set, each `dataset` name reads its own default path, and a validation
dataset whose default source is the training stream itself (the same hub corpus and split) is an error.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from functools import partial
from pathlib import Path

from torchdata.stateful_dataloader import StatefulDataLoader
from torchtitan.components.dataloader import ParallelAwareDataloader
from torchtitan.components.validate import Validator
from torchtitan.hf_datasets import DatasetConfig
from torchtitan.hf_datasets.text_datasets import build_text_dataloader, build_text_validation_dataloader, DATASETS
from torchtitan.tools.logging import logger

from parallax_titan.data.shards import is_shard_folder, ShardTokenDataset, tokenizer_fingerprint
from parallax_titan.data.text import load_text_dataset, TEXT_COLUMN, text_of, ULTRAFINEWEB_HUB

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_TRAIN = str(ASSETS / "embedded_en" / "train")
EMBEDDED_VALIDATION = str(ASSETS / "embedded_en" / "validation")
EMBEDDED_TOKENIZER = str(ASSETS / "tokenizer")

__all__ = [
    "EMBEDDED_TOKENIZER", "EMBEDDED_TRAIN", "EMBEDDED_VALIDATION", "TEXT_COLUMN",
    "build_dataloader", "build_validator", "register_datasets",
]


def register_datasets() -> None:
    """Text sources (a), (b) in torchtitan's dataset table."""
    entries = {
        "ultrafineweb": DatasetConfig(
            path=ULTRAFINEWEB_HUB, loader=partial(load_text_dataset, split="en"), sample_processor=text_of
        ),
        "ultrafineweb_zh": DatasetConfig(
            path=ULTRAFINEWEB_HUB, loader=partial(load_text_dataset, split="zh"), sample_processor=text_of
        ),
        "embedded_en": DatasetConfig(path=EMBEDDED_TRAIN, loader=load_text_dataset, sample_processor=text_of),
        "embedded_en_validation": DatasetConfig(
            path=EMBEDDED_VALIDATION, loader=load_text_dataset, sample_processor=text_of
        ),
    }
    for name, config in entries.items():
        DATASETS.setdefault(name, config)


def _shard_loader(folder, split, seq_len, batch_size, dp_rank, dp_world_size, job_config, infinite, dataloader_cfg):
    seed = job_config.debug.seed if job_config.debug.seed is not None else 0
    dataset = ShardTokenDataset(
        folder, split, seq_len, dp_rank=dp_rank, dp_world_size=dp_world_size, seed=seed, infinite=infinite,
        tokenizer=tokenizer_fingerprint(job_config.model.hf_assets_path),
    )
    logger.info(f"Reading {split} shards from {folder}: {dataset.data.num_tokens:,} tokens, "
                f"{dataset.num_windows:,} windows of {seq_len + 1}")
    return ShardDataloader(
        dataset, dp_rank=dp_rank, dp_world_size=dp_world_size, **{**asdict(dataloader_cfg), "batch_size": batch_size}
    )


class ShardDataloader(ParallelAwareDataloader):
    """torchtitan's loader for the shard dataset, with a checkpoint state that resumes on another number of
    data-parallel ranks. torchtitan keys the state by rank and refuses a different world size. Here every
    rank stores the same state, since the ranks consume in lockstep and ShardTokenDataset converts its
    position between world sizes."""

    STATE_KEY = "shard_windows"

    def state_dict(self) -> dict:
        return {self.STATE_KEY: pickle.dumps(StatefulDataLoader.state_dict(self)), "world_size": self.dp_world_size}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.STATE_KEY not in state_dict:  # empty, or torchtitan's per-rank layout
            super().load_state_dict(state_dict)
            return
        StatefulDataLoader.load_state_dict(self, pickle.loads(state_dict[self.STATE_KEY]))


def build_dataloader(dp_world_size, dp_rank, tokenizer, job_config, infinite: bool = True):
    t = job_config.training
    if is_shard_folder(t.dataset_path):
        return _shard_loader(t.dataset_path, "train", t.seq_len, t.local_batch_size, dp_rank, dp_world_size,
                             job_config, infinite, t.dataloader)
    return build_text_dataloader(dp_world_size, dp_rank, tokenizer, job_config, infinite)


def _default_source(name: str) -> tuple[str, str | None] | None:
    """(path, split) that `dataset = name` reads without a dataset_path; None for a name not registered."""
    config = DATASETS.get(name)
    if config is None:
        return None
    return config.path, getattr(config.loader, "keywords", {}).get("split")


def _check_not_training_stream(t, v) -> None:
    """Validation on a dataset's default source must not read the very stream the training reads (a hub corpus
    has no held-out split of its own here): that would report training loss as held-out loss."""
    train = _default_source(t.dataset)
    if train is not None and t.dataset_path:
        train = (t.dataset_path, train[1])
    if train is not None and train == _default_source(v.dataset):
        raise ValueError(
            f"[validation] dataset = {v.dataset!r} would read the training data itself: [training] dataset = "
            f"{t.dataset!r} with dataset_path {t.dataset_path or 'unset'} streams {train[0]} (split {train[1]}) too. "
            "Set [validation] dataset_path (--validation.dataset_path) to held-out data, e.g. a shard folder of "
            "scripts/prepare_data.py, or turn validation off (--validation.no-enable)")


def validation_source(job_config) -> tuple[str | None, str]:
    """The validation path and why: set, derived from the training path, or the dataset's default."""
    v, t = job_config.validation, job_config.training
    if v.dataset_path:
        return v.dataset_path, "[validation] dataset_path"
    if not t.dataset_path:
        _check_not_training_stream(t, v)
        return None, f"the default path of [validation] dataset = {v.dataset!r}"
    if is_shard_folder(t.dataset_path):
        return t.dataset_path, "the held-out 'validation' split of [training] dataset_path"
    if not os.path.exists(t.dataset_path):  # a hub id: the validation dataset streams its own source
        _check_not_training_stream(t, v)
        return None, (f"[training] dataset_path {t.dataset_path!r} is a hub id; the default path of "
                      f"[validation] dataset = {v.dataset!r}")
    sibling = os.path.join(os.path.dirname(os.path.normpath(t.dataset_path)), "validation")
    if os.path.basename(os.path.normpath(t.dataset_path)) == "train" and os.path.isdir(sibling):
        return sibling, "the 'validation' folder beside [training] dataset_path"
    raise ValueError(
        f"[training] dataset_path = {t.dataset_path!r} has no held-out split to validate on (it is not a shard "
        f"folder, nor a 'train' folder with a 'validation' folder beside it), and [validation] dataset_path is "
        f"unset: validation would read [validation] dataset = {v.dataset!r}'s default corpus instead. Set "
        f"[validation] dataset_path (--validation.dataset_path), or turn validation off (--validation.no-enable)")


class ShardAwareValidator(Validator):
    """torchtitan's Validator, whose dataloader may also be a shard folder's validation split, and which reads the
    same held-out windows every round: torchtitan's keeps one dataloader, whose dataset goes on where the last
    round stopped, so each round would read the windows after the last round's (less the batch prefetched when
    it stopped), and the losses of different rounds would measure different data. (Validator.__init__ only
    stores its arguments and builds the dataloader; this does the same, and builds the dataloader anew before
    every round after the first.)"""

    def __init__(self, job_config, dp_world_size, dp_rank, tokenizer, parallel_dims, loss_fn,
                 validation_context, maybe_enable_amp, metrics_processor, pp_schedule=None,
                 pp_has_first_stage=None, pp_has_last_stage=None):
        v = job_config.validation
        path, why = validation_source(job_config)
        v.dataset_path = path  # torchtitan's text validator reads it from here
        shown = path or (DATASETS[v.dataset].path if v.dataset in DATASETS else v.dataset)
        logger.info(f"Validation data: {shown} ({why})")
        self._rounds = 0
        shards = is_shard_folder(v.dataset_path)
        if shards:
            self._build_loader = partial(
                _shard_loader, v.dataset_path, "validation", v.seq_len, v.local_batch_size, dp_rank, dp_world_size,
                job_config, infinite=v.steps != -1, dataloader_cfg=v.dataloader)
        else:
            self._build_loader = partial(build_text_validation_dataloader, job_config=job_config,
                                         dp_world_size=dp_world_size, dp_rank=dp_rank, tokenizer=tokenizer,
                                         infinite=v.steps != -1)
        self.job_config, self.tokenizer, self.parallel_dims, self.loss_fn = job_config, tokenizer, parallel_dims, loss_fn
        self.validation_dataloader = self._build_loader()
        if shards and v.steps != -1:
            split = self.validation_dataloader.dataset
            per_rank, wanted = split.num_windows // dp_world_size, v.steps * v.local_batch_size
            if wanted > per_rank:
                logger.warning(f"Validation reads {v.steps} x {v.local_batch_size} windows a rank a round, and the "
                               f"'validation' split of {v.dataset_path} holds {per_rank} a rank: windows repeat "
                               f"within a round (set [validation] steps to at most {per_rank // v.local_batch_size})")
        self.validation_context, self.maybe_enable_amp = validation_context, maybe_enable_amp
        self.metrics_processor = metrics_processor
        self.pp_schedule, self.pp_has_first_stage, self.pp_has_last_stage = (
            pp_schedule, pp_has_first_stage, pp_has_last_stage)
        if v.steps == -1:  # (torchtitan's own warning)
            logger.warning("Setting validation steps to -1 might cause hangs because of unequal sample counts "
                           "across ranks when dataset is exhausted.")

    def validate(self, model_parts, step: int) -> None:
        if self._rounds:  # from the first window again
            self.validation_dataloader = self._build_loader()
        self._rounds += 1
        return super().validate(model_parts, step)


def build_validator(**kwargs) -> ShardAwareValidator:
    return ShardAwareValidator(**kwargs)

