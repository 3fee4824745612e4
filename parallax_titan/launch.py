"""Launching training runs from Python tools (scripts/bench_train.py, scripts/ablate.py): one command
line for both, through scripts/train.sh so they get the same torchrun flags and environment as users."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = ("torchrun", "python")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """`tool args -- --section.key value ...` -> (tool args, trainer overrides)."""
    if "--" not in argv:
        return list(argv), []
    cut = argv.index("--")
    return list(argv[:cut]), list(argv[cut + 1:])


def train(config: Path, overrides: list[str], nproc: int, launcher: str, log: Path, append: bool = False) -> int:
    """Train `config` with `overrides`, output to `log`; returns the exit status. "torchrun" goes through
    scripts/train.sh (NGPU=nproc), "python" runs one process of `python -m parallax_titan.train`."""
    if launcher == "torchrun":
        script = REPO / "scripts" / "train.sh"
        if not script.is_file():
            raise FileNotFoundError(f"{script} not found: parallax_titan is imported from {REPO}, not from a checkout "
                                    "of the repository; install it with `pip install -e .` from the checkout")
        cmd = ["bash", str(script), str(config), *overrides]
    elif launcher == "python":
        cmd = [sys.executable, "-m", "parallax_titan.train", "--job.config_file", str(config), *overrides]
    else:
        raise ValueError(f"launcher {launcher!r} is unknown; choose one of {LAUNCHERS}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a" if append else "w") as out:
        return subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "NGPU": str(nproc)}).returncode
