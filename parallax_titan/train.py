"""`python -m parallax_titan.train --job.config_file configs/X.toml [--section.key value ...]`

A thin wrapper over torchtitan's own entry point (`torchrun ... -m torchtitan.train` trains as well on
GPUs, but with torchtitan's Trainer: no checkpoint checksums, non-finite guard or diagnostics probe, and
its checkpoints count as incomplete here). What it adds:
- on a machine without CUDA it installs parallax_titan.cpu_shim first, so the Trainer runs on CPU
  with gloo (the shim must precede any torchtitan import, which is why this wrapper exists);
- started without torchrun, it fills in the single-process rendezvous variables;
- it registers this repo's TrainSpec and datasets even if the TOML forgot `custom_import`;
- it runs parallax_titan.trainer.ParallaxTrainer (diagnostics probe, non-finite guard, checkpoint checksums);
- `--section.key true|false` works for bool keys (tyro itself takes `--section.key` / `--section.no-key`);
- it silences what means nothing to the user, each at its source and by its exact message: torchdata's
  `set_vital` deprecation warning; on CPU also the autocast warning for float32 (autocast is off there
  by design), the model-args dump (`--job.print_config` prints the whole config) and the MFU column
  (cpu_shim leaves the peak unknown instead of torchtitan's A100 fallback).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import warnings

import torch


def _single_process_env() -> None:
    if "LOCAL_RANK" in os.environ:
        return  # launched by torchrun
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )


class _QuietCPULog(logging.Filter):
    """torchtitan's log lines that say nothing on CPU: the model-args JSON (kept: its first line) and the
    MFU column, whose peak is unknown there."""

    MODEL_ARGS = re.compile(r"^(Building \S+ \S+?)\s*with \{", re.S)
    MFU = re.compile(r"\s+(\x1b\[\d+m)?mfu: nan%")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            if m := self.MODEL_ARGS.match(record.msg):
                record.msg = f"{m.group(1)} (model args: --job.print_config)"
            elif "mfu: nan%" in record.msg:
                record.msg = self.MFU.sub("", record.msg)
            elif record.msg == "Peak FLOPS used for computing MFU: nan":
                record.msg = "Peak FLOPS of this device unknown: no MFU reported"
        return True


def _quiet(cpu: bool) -> None:
    warnings.filterwarnings("ignore", message=r"'set_vital' is deprecated", category=UserWarning)
    if cpu:
        warnings.filterwarnings("ignore", message=r"In CPU autocast, but the target dtype is not supported",
                                category=UserWarning)
        logging.getLogger().addFilter(_QuietCPULog())  # torchtitan logs through the root logger


def _config_manager():
    """torchtitan's ConfigManager, taking `--section.key false` for bool keys."""
    from torchtitan.config import ConfigManager

    from parallax_titan.job_config import normalize_bool_flags

    class BoolValueConfigManager(ConfigManager):
        def parse_args(self, args: list[str] | None = None):
            from torchtitan.config import JobConfig

            return super().parse_args(normalize_bool_flags(sys.argv[1:] if args is None else args, JobConfig))

    return BoolValueConfigManager


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cpu = not torch.cuda.is_available()
    if cpu:
        from parallax_titan import cpu_shim

        cpu_shim.install()
        print("parallax_titan.train: no CUDA device; training on CPU (gloo) via cpu_shim", flush=True)
    _quiet(cpu)
    _single_process_env()

    import parallax_titan.register  # noqa: F401  (TrainSpec + datasets)
    import torchtitan.train
    from torchtitan.train import main as torchtitan_main

    torchtitan.train.ConfigManager = _config_manager()

    from parallax_titan.trainer import ParallaxTrainer

    torchtitan_main(ParallaxTrainer)


if __name__ == "__main__":
    main()
