"""Cost of checkpoint checksums (parallax_titan/checkpoint_manifest.py) next to the DCP save itself.

    python scripts/bench_checksums.py --gib 2 4 --folder /tmp/ckpt_bench

Saves fp32 tensors of the given total size with torch.distributed.checkpoint (one process, like one rank),
then times writing the manifest (CRC-32 of every file, read back from the page cache as in the trainer,
right after the save) and verifying it. It prints the seconds and GiB/s of each and the manifest's share
of the save; a real step's cost follows from its size (about 12 bytes per parameter with AdamW in fp32).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from parallax_titan import checkpoint_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, nargs="+", default=[2.0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/ckpt_bench"))
    parser.add_argument("--tensor-mib", type=int, default=64, help="size of each tensor (a model has many)")
    args = parser.parse_args()
    for gib in args.gib:
        n = int(gib * 1024 / args.tensor_mib)
        state = {f"t{i}": torch.randn(args.tensor_mib << 18) for i in range(n)}  # 4-byte floats
        step = args.folder / f"step-{gib:g}GiB"
        shutil.rmtree(step, ignore_errors=True)
        t0 = time.perf_counter()
        dcp.save(state, checkpoint_id=str(step))
        t1 = time.perf_counter()
        manifest = checkpoint_manifest.write_manifest(step)
        t2 = time.perf_counter()
        found = checkpoint_manifest.problems(step, distributed=False)
        t3 = time.perf_counter()
        size = sum(f["bytes"] for f in manifest["files"].values()) / 2**30
        assert not found, found
        print(f"{size:.2f} GiB: save {t1 - t0:.2f} s, manifest {t2 - t1:.2f} s ({size / (t2 - t1):.2f} GiB/s, "
              f"{100 * (t2 - t1) / (t1 - t0):.0f}% of the save), verify {t3 - t2:.2f} s ({size / (t3 - t2):.2f} GiB/s)",
              flush=True)
        del state
        shutil.rmtree(step)


if __name__ == "__main__":
    main()
