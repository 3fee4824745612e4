"""CPU training smoke runs through torchtitan's Trainer (a subprocess: the CPU shim must precede any
torchtitan import, and tests import torchtitan)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOSS = re.compile(r"(?<!validate )step:\s*(\d+)\s+loss:\s*([0-9.]+)")  # training steps
VALIDATION_LOSS = re.compile(r"validate step:\s*(\d+)\s+loss:\s*([0-9.]+)")


def run_training(tmp_path: Path, *overrides: str, steps: int = 24, wandb_mode: str = "disabled", nproc: int = 1) -> str:
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    cmd = [
        sys.executable, *launch, "-m", "parallax_titan.train",
        "--job.config_file", str(REPO / "configs" / "debug_cpu.toml"),
        "--job.dump_folder", str(tmp_path / "run"),
        "--training.steps", str(steps),
        "--training.seq_len", "128",
        "--validation.seq_len", "128",
        "--validation.steps", "2",
        "--validation.freq", str(steps),
        "--checkpoint.interval", str(steps),
        "--metrics.log_freq", "1",
        "--metrics.disable_color_printing",
        *overrides,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": wandb_mode}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["debug-parallax", "debug-transformer"])
def test_quickstart_config_trains_on_cpu(tmp_path, flavor):
    log = run_training(tmp_path, "--model.flavor", flavor)
    losses = [float(m.group(2)) for m in LOSS.finditer(log)]
    assert len(losses) >= 20, log[-3000:]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.5, f"loss did not fall: first steps {losses[:4]}, last steps {losses[-4:]}"
    assert "validate step" in log
    run = tmp_path / "run"
    assert (run / "checkpoint" / "step-24").is_dir(), "no DCP checkpoint written"
    events = list((run / "tb").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    # the config logs diagnostics every 10 steps (log_freq 1 here): weights and the step's probe
    for name in ("sr_wq", "sr_ov", "sink", "entropy"):
        assert f"diagnostics/{name}/layer3" in tags, sorted(tags)
    if flavor == "debug-parallax":
        assert "diagnostics/cor/mean" in tags and "diagnostics/sr_rk/layer0" in tags


@pytest.mark.slow
@pytest.mark.parametrize("source", ["text", "shards"])
def test_muon_run_resumes_from_dcp_checkpoint_exactly(tmp_path, source):
    """Stop at step 5, resume from its DCP checkpoint (model, Muon + AdamW state, lr schedule,
    data position, for the on-the-fly text loader and the shard loader): steps 6-10 reproduce the
    uninterrupted run's losses."""
    common = ("--optimizer.name", "Muon", "--checkpoint.interval", "5", "--validation.no-enable",
              "--optimizer.muon_per_head")
    if source == "shards":
        from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN
        from parallax_titan.data.prepare import prepare

        prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, tmp_path / "shards", shard_tokens=200_000)
        common += ("--training.dataset_path", str(tmp_path / "shards"))
    full = run_training(tmp_path / "full", *common, steps=10)
    assert "Muon  hidden" in full and "optimizer routing" in full
    full_losses = {int(m.group(1)): float(m.group(2)) for m in LOSS.finditer(full)}

    import shutil

    resumed_ckpt = tmp_path / "resumed" / "run" / "checkpoint"
    resumed_ckpt.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "run" / "checkpoint" / "step-5", resumed_ckpt / "step-5")
    resumed = run_training(tmp_path / "resumed", *common, steps=10)
    assert "Training starts at step 6" in resumed, resumed[-3000:]
    resumed_losses = {int(m.group(1)): float(m.group(2)) for m in LOSS.finditer(resumed)}
    assert sorted(resumed_losses) == list(range(6, 11))
    for step in range(6, 11):
        assert resumed_losses[step] == pytest.approx(full_losses[step], abs=1e-4), (step, resumed_losses, full_losses)


def losses_by_step(log: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in LOSS.finditer(log)}


@pytest.mark.slow
def test_fsdp_over_two_ranks_keeps_the_tie_and_resumes_on_one_rank(tmp_path):
    """FSDP2 over 2 CPU ranks (gloo) trains the tied debug model; the embedding and the output head stay one
    parameter (its checkpoint holds the same values under both names); and the checkpoint resumes on 1 rank,
    with model, Muon state and data position resharded: the next steps' losses equal the 2-rank run's."""
    from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN
    from parallax_titan.data.prepare import prepare

    prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, tmp_path / "shards", shard_tokens=200_000)
    common = ("--training.dataset_path", str(tmp_path / "shards"), "--validation.no-enable", "--optimizer.name", "Muon",
              "--checkpoint.interval", "3", "--training.global_batch_size", "4")
    two_log = run_training(tmp_path / "two", *common, "--training.local_batch_size", "2", steps=6, nproc=2)
    assert "dp_shard=2" in two_log
    two = losses_by_step(two_log)
    assert sorted(two) == list(range(1, 7)) and two[6] < two[1] - 0.1, two

    import torch
    import torch.distributed.checkpoint as dcp

    final = str(tmp_path / "two" / "run" / "checkpoint" / "step-6")
    # each rank hashed the file it wrote; rank 0 wrote the manifest with both
    from parallax_titan import checkpoint_manifest

    listed = json.loads((Path(final) / checkpoint_manifest.MANIFEST).read_text())["files"]
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(listed), sorted(listed)
    assert checkpoint_manifest.problems(final, distributed=False) == []
    stored = dcp.FileSystemReader(final).read_metadata().state_dict_metadata
    tied = {name: torch.empty(tuple(stored[name].size)) for name in ("tok_embeddings.weight", "output.weight")}
    dcp.load(tied, checkpoint_id=final)
    assert torch.equal(tied["tok_embeddings.weight"], tied["output.weight"])
    assert not torch.equal(tied["tok_embeddings.weight"], torch.zeros_like(tied["output.weight"]))

    import shutil

    resumed_ckpt = tmp_path / "resumed" / "run" / "checkpoint"
    resumed_ckpt.mkdir(parents=True)
    shutil.copytree(tmp_path / "two" / "run" / "checkpoint" / "step-3", resumed_ckpt / "step-3")
    log = run_training(tmp_path / "resumed", *common, "--training.local_batch_size", "4", steps=6)
    assert "Training starts at step 4" in log, log[-3000:]
    resumed = losses_by_step(log)
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):  # the same sums in another order: equal to a few 1e-4
        assert resumed[step] == pytest.approx(two[step], abs=2e-3), (step, resumed, two)


@pytest.mark.slow
def test_trains_from_pretokenised_shards_with_held_out_validation(tmp_path):
    from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN
    from parallax_titan.data.prepare import prepare

    shards = tmp_path / "shards"
    prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, shards, validation_permille=50, shard_tokens=200_000)
    log = run_training(tmp_path, "--training.dataset_path", str(shards), "--validation.dataset_path", str(shards),
                       "--metrics.enable_wandb", steps=16, wandb_mode="offline")
    assert "Reading train shards from" in log and "Reading validation shards from" in log
    losses = [float(m.group(2)) for m in LOSS.finditer(log)]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    assert "validate step" in log
    assert list((tmp_path / "run").rglob("offline-run-*")), "no offline wandb run written"
    # the metrics JSONL has training and held-out records against tokens (seq 128 x batch 8 per step)
    import json

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("validation_metrics/loss" in r for r in records)
    assert all(r["tokens"] == r["step"] * 128 * 8 for r in records)


@pytest.mark.slow
def test_qwen3_converted_to_parallax_starts_as_softmax_and_learns_its_probe(tmp_path):
    """The continued-pretraining path: an HF Qwen3 converted with W_R = 0 gives the same first loss
    as the same checkpoint converted to softmax (exact start through the real trainer), then learns
    W_R and lowers the loss."""
    pytest.importorskip("transformers")
    from test_hf_interop import tiny_qwen3

    from parallax_titan.model.checkpoint import load_model_dcp
    from parallax_titan.model.flavors import FLAVORS
    from scripts.convert_hf import main as convert

    _, hf_dir = tiny_qwen3(tmp_path)
    first_losses = {}
    for flavor in ("debug-transformer", "debug-parallax"):
        dcp = tmp_path / f"init_{flavor}"
        convert(["to-dcp", "--hf", str(hf_dir), "--flavor", flavor, "--out", str(dcp)])
        log = run_training(tmp_path / flavor, "--model.flavor", flavor, "--validation.no-enable",
                           "--checkpoint.initial_load_path", str(dcp), "--checkpoint.initial_load_model_only",
                           steps=12)
        assert "Loading the checkpoint from" in log and str(dcp) in log, log[-3000:]
        losses = {int(m.group(1)): float(m.group(2)) for m in LOSS.finditer(log)}
        first_losses[flavor] = losses[1]
        if flavor == "debug-parallax":
            assert sum(losses[s] for s in (10, 11, 12)) / 3 < losses[1] - 0.5, losses
            state = load_model_dcp(tmp_path / flavor / "run" / "checkpoint" / "step-12", FLAVORS[flavor])
            assert min(state[f"layers.{i}.attention.wr.weight"].abs().max() for i in range(4)) > 0
    assert first_losses["debug-parallax"] == pytest.approx(first_losses["debug-transformer"], abs=1e-4)


@pytest.mark.slow
def test_nonfinite_gradient_stops_the_run_naming_step_rank_and_last_checkpoint(tmp_path):
    with pytest.raises(AssertionError) as failed:
        run_training(tmp_path, "--faults.inject_nonfinite_at_step", "5", "--checkpoint.interval", "2",
                     "--validation.no-enable", steps=8)
    log = str(failed.value)
    assert "non-finite loss or gradient at step 5 on rank(s) [0]" in log, log[-2000:]
    assert "Last complete checkpoint: " in log and "step-4" in log


@pytest.mark.slow
def test_skip_mode_drops_the_bad_update_and_trains_on(tmp_path):
    log = run_training(tmp_path, "--faults.inject_nonfinite_at_step", "5", "--faults.on_nonfinite", "skip",
                       "--faults.max_skipped_steps", "2", "--validation.no-enable", steps=8)
    assert "update skipped (1 of at most 2)" in log
    losses = {int(m.group(1)): float(m.group(2)) for m in LOSS.finditer(log)}
    assert all(math.isfinite(losses[s]) for s in range(6, 9)) and losses[8] < losses[1]


def test_without_the_guard_the_losses_are_not_kept(monkeypatch):
    """on_nonfinite = "ignore" installs no guard, and nothing else would clear the step's losses: they must not
    pile up, one a micro-batch, for the whole run."""
    import torch
    from torchtitan.train import Trainer

    from parallax_titan.trainer import ParallaxTrainer

    monkeypatch.setattr(Trainer, "forward_backward_step", lambda self, **kwargs: torch.tensor(1.0))
    trainer = ParallaxTrainer.__new__(ParallaxTrainer)  # the step alone, without building a model
    trainer._step_losses, trainer._guarded = [], False
    for _ in range(3):
        trainer.forward_backward_step()
    assert trainer._step_losses == []
    trainer._guarded = True
    trainer.forward_backward_step()
    assert len(trainer._step_losses) == 1


@pytest.mark.slow
def test_incomplete_checkpoint_folder_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "run" / "checkpoint" / "step-3").mkdir(parents=True)
    with pytest.raises(AssertionError) as failed:
        run_training(tmp_path, "--validation.no-enable", steps=4)
    assert "holds incomplete checkpoints ['step-3']" in str(failed.value)


def test_cpu_log_is_quiet_and_bool_keys_take_true_false(tmp_path):
    """`--checkpoint.enable false` is accepted; the CPU log has no lspci error, no A100 fallback or MFU
    column, no model-args JSON, no autocast/set_vital warnings and no safetensors-index warning."""
    log = run_training(tmp_path, "--checkpoint.enable", "false", "--validation.enable=false",
                       "--diagnostics.interval", "0", "--training.local_batch_size", "2", steps=2)
    assert not (tmp_path / "run" / "checkpoint").exists(), "--checkpoint.enable false was not applied"
    assert "validate step" not in log
    assert "step:  2  loss:" in log, log[-3000:]
    for noise in ("lspci", "A100", "mfu", '"dim":', "set_vital", "CPU autocast", "UserWarning",
                  "model.safetensors.index.json not found"):
        assert noise not in log, (noise, log[-3000:])
    assert "Building parallax_qwen3 debug-parallax" in log and "no MFU reported" in log
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records and not any("mfu(%)" in r for r in records)


def run_failing(tmp_path: Path, *overrides: str, steps: int = 2) -> str:
    with pytest.raises(AssertionError) as failed:
        run_training(tmp_path, *overrides, steps=steps)
    return str(failed.value)


def _jsonl_corpus(path: Path, bad_line: int | None = None) -> Path:
    from parallax_titan.data import EMBEDDED_TRAIN
    from parallax_titan.data.text import load_text_dataset

    rows = [json.dumps({"content": text}).encode() for text in load_text_dataset(EMBEDDED_TRAIN)["content"]]
    if bad_line is not None:
        rows[bad_line - 1] = b'{"content": "caf\xe9"}'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def test_a_jsonl_file_with_a_bad_line_far_in_stops_before_training_naming_file_and_line(tmp_path):
    """Before: a .jsonl file was 'does not exist'; in a folder, the bad line loaded and a short run ended at rc 0."""
    corpus = _jsonl_corpus(tmp_path / "corpus.jsonl", bad_line=500)
    log = run_failing(tmp_path, "--training.dataset_path", str(corpus), "--validation.no-enable")
    assert f"{corpus}, line 500: not UTF-8 text" in log, log[-3000:]
    assert "Training starts" not in log and "does not exist" not in log


@pytest.mark.slow
@pytest.mark.parametrize("source", ["text", "shards"])
def test_every_validation_round_reads_the_same_windows(tmp_path, source):
    """At a learning rate of 1e-30 the weights do not change (each update is below their rounding), so every
    round's held-out loss must be the same number: each round reads the same windows from the first
    (torchtitan's validator would go on where the last round stopped)."""
    from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN
    from parallax_titan.data.prepare import prepare

    data = []
    if source == "shards":
        prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, tmp_path / "shards", validation_permille=50,
                shard_tokens=200_000)
        data = ["--training.dataset_path", str(tmp_path / "shards")]
    log = run_training(tmp_path, *data, "--optimizer.lr", "1e-30", "--validation.freq", "1", "--validation.steps", "2",
                       "--training.local_batch_size", "2", "--diagnostics.interval", "0", "--checkpoint.no-enable",
                       steps=3)
    rounds = {int(m.group(1)): float(m.group(2)) for m in VALIDATION_LOSS.finditer(log)}
    assert sorted(rounds) == [1, 2, 3] and len(set(rounds.values())) == 1, rounds


def test_validation_follows_the_training_data(tmp_path):
    """With only [training] dataset_path: shards validate on their held-out split (before: the embedded corpus);
    a text folder named train on its sibling validation folder; another text path is an error."""
    from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN
    from parallax_titan.data.prepare import prepare

    shards = tmp_path / "shards"
    prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, shards, validation_permille=50, shard_tokens=200_000)
    log = run_training(tmp_path / "a", "--training.dataset_path", str(shards), "--training.local_batch_size", "2",
                       "--diagnostics.interval", "0", steps=2)
    assert f"Validation data: {shards} (the held-out 'validation' split of [training] dataset_path)" in log
    assert f"Reading validation shards from {shards}" in log and "validate step" in log
    text = _jsonl_corpus(tmp_path / "text" / "train" / "part.jsonl").parent
    (tmp_path / "text" / "validation").mkdir()
    _jsonl_corpus(tmp_path / "text" / "validation" / "part.jsonl")
    log = run_training(tmp_path / "b", "--training.dataset_path", str(text), "--training.local_batch_size", "2",
                       "--diagnostics.interval", "0", steps=2)
    assert f"Validation data: {tmp_path / 'text' / 'validation'} (the 'validation' folder beside" in log, log[-3000:]
    lone = _jsonl_corpus(tmp_path / "lone.jsonl")
    log = run_failing(tmp_path / "c", "--training.dataset_path", str(lone))
    assert f"[training] dataset_path = '{lone}' has no held-out split to validate on" in log, log[-3000:]
