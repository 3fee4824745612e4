"""`python -m parallax_titan.train --job.config_file configs/X.toml [--section.key value ...]`

A thin wrapper over torchtitan's own entry point (`torchrun ... -m torchtitan.train` works as well
on GPUs). What it adds:
- on a machine without CUDA it installs parallax_titan.cpu_shim first, so the Trainer runs on CPU
  with gloo (the shim must precede any torchtitan import, which is why this wrapper exists);
- started without torchrun, it fills in the single-process rendezvous variables;
- it registers this repo's TrainSpec and datasets even if the TOML forgot `custom_import`;
- it runs parallax_titan.trainer.ParallaxTrainer, which feeds the activation diagnostics a probe.
"""

from __future__ import annotations

import os
import socket
import sys

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


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if not torch.cuda.is_available():
        from parallax_titan import cpu_shim

        cpu_shim.install()
        print("parallax_titan.train: no CUDA device; training on CPU (gloo) via cpu_shim", flush=True)
    _single_process_env()

    import parallax_titan.register  # noqa: F401  (TrainSpec + datasets)
    from torchtitan.train import main as torchtitan_main

    from parallax_titan.trainer import ParallaxTrainer

    torchtitan_main(ParallaxTrainer)


if __name__ == "__main__":
    main()
