"""Checkpoint checksums (parallax_titan/checkpoint_manifest.py and the trainer's use of them): a corrupt,
truncated or incomplete step is an error naming the file, or skipped with [faults] resume_from_newest_valid."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from parallax_titan import checkpoint_manifest as cm

REPO = Path(__file__).resolve().parents[1]


def small_step(tmp_path) -> Path:
    step = tmp_path / "step-7"
    dcp.save({"w": torch.arange(40_000, dtype=torch.float32), "b": torch.ones(3)}, checkpoint_id=str(step))
    cm.write_manifest(step, 7)
    return step


def corrupt_middle(path: Path, nbytes: int = 4096) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2 - nbytes // 2)
        f.write(os.urandom(nbytes))


def test_manifest_lists_every_file_and_verifies(tmp_path):
    step = small_step(tmp_path)
    manifest = json.loads((step / cm.MANIFEST).read_text())
    assert set(manifest["files"]) == {".metadata", "__0_0.distcp"} and manifest["step"] == 7
    assert cm.problems(step) == []


@pytest.mark.parametrize("damage, expected", [
    ("random", "__0_0.distcp: CRC-32"),
    ("truncate", "__0_0.distcp: 100 bytes, the manifest says"),
    ("metadata", ".metadata: CRC-32"),
    ("missing", "__0_0.distcp: missing"),
    ("no_manifest", "has no checksums.json"),
])
def test_damage_is_named_by_file(tmp_path, damage, expected):
    step = small_step(tmp_path)
    data = step / "__0_0.distcp"
    if damage == "random":
        corrupt_middle(data)
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "metadata":
        size = (step / ".metadata").stat().st_size
        (step / ".metadata").write_bytes(b"x" * size)
    elif damage == "missing":
        data.unlink()
    else:
        (step / cm.MANIFEST).unlink()
    with pytest.raises(cm.CheckpointCorruptError, match=expected.replace(".", r"\.")):
        cm.verify(step)


def test_command_line_verify_and_write(tmp_path):
    step = small_step(tmp_path)
    corrupt_middle(step / "__0_0.distcp")
    run = lambda *a: subprocess.run([sys.executable, "-m", "parallax_titan.checkpoint_manifest", *a, str(step)],
                                    cwd=REPO, capture_output=True, text=True)
    bad = run("verify")
    assert bad.returncode == 1 and "__0_0.distcp: CRC-32" in bad.stdout
    assert run("write").returncode == 0 and run("verify").returncode == 0


# --- through the trainer --------------------------------------------------------------------------

def train(dump: Path, *overrides: str, steps: int = 4) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "parallax_titan.train", "--job.config_file", str(REPO / "configs" / "debug_cpu.toml"),
           "--job.dump_folder", str(dump), "--training.steps", str(steps), "--training.seq_len", "64",
           "--training.local_batch_size", "2", "--validation.no-enable", "--checkpoint.interval", "2",
           "--diagnostics.interval", "0", "--metrics.log_freq", "1", "--metrics.disable_color_printing",
           "--metrics.no-enable_tensorboard", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                          text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    dump = tmp_path_factory.mktemp("ckpt") / "run"
    rc, log = train(dump)
    assert rc == 0, log[-3000:]
    return dump


def copy_run(finished_run, tmp_path) -> Path:
    dump = tmp_path / "run"
    shutil.copytree(finished_run, dump)
    return dump


@pytest.mark.slow
def test_every_saved_step_has_a_manifest_that_verifies(finished_run):
    for step in ("step-2", "step-4"):
        assert cm.problems(finished_run / "checkpoint" / step) == [], step


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["random", "truncate", "metadata"])
def test_resuming_a_damaged_step_is_an_error_naming_the_file(finished_run, tmp_path, damage):
    dump = copy_run(finished_run, tmp_path)
    step = dump / "checkpoint" / "step-4"
    if damage == "random":
        corrupt_middle(step / "__0_0.distcp")
    elif damage == "truncate":
        (step / "__0_0.distcp").write_bytes((step / "__0_0.distcp").read_bytes()[:1000])
    else:
        (step / ".metadata").write_bytes(os.urandom((step / ".metadata").stat().st_size))
    rc, log = train(dump, steps=6)
    assert rc != 0
    bad_file = ".metadata" if damage == "metadata" else "__0_0.distcp"
    assert f"{step / bad_file}: " in log and "fails verification" in log, log[-3000:]
    assert "resume_from_newest_valid" in log
    assert "EOFError" not in log and "metadata is None" not in log


@pytest.mark.slow
def test_resume_from_newest_valid_skips_the_bad_step_and_the_guard_names_the_verified_one(finished_run, tmp_path):
    dump = copy_run(finished_run, tmp_path)
    corrupt_middle(dump / "checkpoint" / "step-4" / "__0_0.distcp")
    os.makedirs(dump / "checkpoint" / "step-6")  # an interrupted save: no manifest
    rc, log = train(dump, "--faults.resume_from_newest_valid", "--faults.inject_nonfinite_at_step", "3", steps=8)
    assert "skipping incomplete checkpoints ['step-6']" in log, log[-3000:]
    assert "resuming from" in log and "step-2, the newest checkpoint that verifies" in log
    assert "Training starts at step 3" in log
    assert rc != 0 and "non-finite loss or gradient at step 3" in log
    assert f"Last complete checkpoint: {dump / 'checkpoint' / 'step-2'}" in log, log[-3000:]


@pytest.mark.slow
def test_rerunning_a_finished_run_says_nothing_was_trained(finished_run, tmp_path):
    dump = copy_run(finished_run, tmp_path)
    rc, log = train(dump)
    assert rc == 0, log[-3000:]
    assert "Nothing to train: the checkpoint is at step 4 and [training] steps = 4" in log


@pytest.mark.slow
def test_async_saves_get_their_manifest_after_torchtitan_waits_for_them(tmp_path):
    rc, log = train(tmp_path / "run", "--checkpoint.async_mode", "async")
    assert rc == 0, log[-3000:]
    for step in ("step-2", "step-4"):  # step-2: written at step 4's save, once the async save is done
        assert cm.problems(tmp_path / "run" / "checkpoint" / step) == [], step
