"""Checksums of a checkpoint step: `step-N/checksums.json`, written after every file of the step.

DCP writes `__<rank>_<i>.distcp` files and then `.metadata`; neither carries a checksum, so a truncated
or overwritten file loads as an EOFError, an assertion, or silently as wrong weights. The trainer
(parallax_titan.trainer) therefore writes this manifest once a save has finished (size and CRC-32 of
every file in the step folder) and checks it before loading; a step folder without it is incomplete.

CRC-32 (zlib, streamed in 8 MiB blocks, several files at once: zlib releases the GIL) detects
truncation, torn writes and random corruption; it is not a defence against deliberate tampering.
With several ranks, each rank hashes the files it wrote (`__<rank>_*`), rank 0 the rest, and rank 0
writes the manifest; verification splits the files over the ranks the same way.

    python -m parallax_titan.checkpoint_manifest verify outputs/run/checkpoint/step-100
    python -m parallax_titan.checkpoint_manifest write  outputs/run/checkpoint/step-100   # trust as is
"""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MANIFEST = "checksums.json"
FORMAT = "parallax-checkpoint-checksums-v1"
BLOCK = 8 << 20


class CheckpointCorruptError(RuntimeError):
    pass


def file_checksum(path: str | os.PathLike) -> dict:
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(BLOCK):
            crc = zlib.crc32(block, crc)
    return {"bytes": os.path.getsize(path), "crc32": f"{crc:08x}"}


def checksum_files(folder: Path, names: list[str], threads: int = 4) -> dict[str, dict]:
    with ThreadPoolExecutor(max(1, min(threads, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda n: file_checksum(folder / n), names)))


def step_files(folder: str | os.PathLike) -> list[str]:
    """Every file under a step folder (relative paths), the manifest itself excepted."""
    folder = Path(folder)
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    return sorted(n for n in names if n != MANIFEST and not n.endswith(MANIFEST + ".tmp"))


def has_manifest(folder: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(folder, MANIFEST))


def remove_manifest(folder: str | os.PathLike) -> None:
    """Before a save into an existing step folder: the step is incomplete until the save finishes."""
    try:
        os.remove(os.path.join(folder, MANIFEST))
    except FileNotFoundError:
        pass


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def write_manifest(folder: str | os.PathLike, step: int | None = None) -> dict:
    """Hash the finished step and write its manifest (atomically, last). Called by every rank when
    torch.distributed is initialised (each hashes its own `__<rank>_*` files)."""
    folder = Path(folder)
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    names = step_files(folder)
    mine = [n for n in names if re.fullmatch(rf"__{rank}_\d+\.distcp", n)] if world > 1 else names
    entries = checksum_files(folder, mine)
    if dist:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(entries, gathered, dst=0)
        if rank == 0:
            for part in gathered:
                entries.update(part)
            rest = [n for n in step_files(folder) if n not in entries]
            entries.update(checksum_files(folder, rest))
    if rank != 0:
        return {}
    manifest = {"format": FORMAT, "algorithm": "crc32", "step": step, "files": dict(sorted(entries.items()))}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CheckpointCorruptError(
            f"checkpoint {folder} has no {MANIFEST}: the save did not finish (or the step was written "
            f"without checksums). If you trust its files, `python -m parallax_titan.checkpoint_manifest write "
            f"{folder}` records them")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError(f"expected format {FORMAT!r} with 'files'")
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointCorruptError(f"checkpoint manifest {path} is unreadable: {err}") from None
    return manifest


def problems(folder: str | os.PathLike, distributed: bool = True) -> list[str]:
    """What is wrong with a step folder against its manifest ([] when it verifies). With torch.distributed
    initialised and `distributed`, every rank must call it: the files are split over the ranks."""
    folder = Path(folder)
    dist = _dist() if distributed else None
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    found: list[str] = []
    try:
        listed = read_manifest(folder)["files"]
    except CheckpointCorruptError as err:
        listed, found = {}, [str(err)]
    if ".metadata" in step_files(folder) and listed and ".metadata" not in listed:
        found.append(f"{folder / MANIFEST} does not list .metadata")
    names = sorted(listed)[rank::world]
    present = [n for n in names if (folder / n).is_file()]
    found += [f"{folder / n}: missing" for n in names if n not in present]
    for name, got in checksum_files(folder, present).items():
        want = listed[name]
        if got["bytes"] != want["bytes"]:
            found.append(f"{folder / name}: {got['bytes']} bytes, the manifest says {want['bytes']} (truncated?)")
        elif got["crc32"] != want.get("crc32"):
            found.append(f"{folder / name}: CRC-32 {got['crc32']}, the manifest says {want.get('crc32')} (corrupt)")
    if dist:  # every rank takes part, whatever it found
        everyone = [None] * world
        dist.all_gather_object(everyone, found)
        found = sorted({p for part in everyone for p in part})
    return found


def verify(folder: str | os.PathLike, distributed: bool = True) -> None:
    found = problems(folder, distributed)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise CheckpointCorruptError(f"checkpoint {folder} fails verification: " + "; ".join(found[:3]) + more)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("verify", "write"))
    parser.add_argument("step_folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = False
    for folder in args.step_folders:
        if not folder.is_dir():
            sys.exit(f"{folder} is not a folder")
        if args.command == "write":
            manifest = write_manifest(folder)
            print(f"{folder}: recorded {len(manifest['files'])} files")
            continue
        found = problems(folder, distributed=False)
        print(f"{folder}: " + ("OK" if not found else "FAILED\n  " + "\n  ".join(found)))
        failed |= bool(found)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
