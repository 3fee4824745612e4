"""scripts/train.sh: how it calls torchrun (a stand-in torchrun records the call), and a real
single-process launch on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def launch(tmp_path, env, *args):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "torchrun").write_text('#!/bin/sh\necho "torchrun $@"\n')
    (fake / "torchrun").chmod(0o755)
    full_env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(REPO / "scripts" / "train.sh"), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True)


def test_single_node_is_standalone(tmp_path):
    out = launch(tmp_path, {"NGPU": "8"}, "configs/debug_cpu.toml", "--training.steps", "3")
    assert out.returncode == 0, out.stderr
    call = out.stdout.strip()
    assert "--nproc_per_node=8 --nnodes=1 --max-restarts=0 --standalone" in call
    assert call.endswith("-m parallax_titan.train --job.config_file configs/debug_cpu.toml --training.steps 3")


def test_multi_node_uses_master_address_or_rendezvous(tmp_path):
    out = launch(tmp_path, {"NGPU": "4", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"},
                 "configs/debug_cpu.toml")
    assert "--nnodes=2" in out.stdout and "--node-rank=1 --master-addr=10.0.0.1 --master-port=29500" in out.stdout
    out = launch(tmp_path, {"NGPU": "4", "NNODES": "2", "RDZV_ENDPOINT": "h:29400", "RDZV_ID": "j7"},
                 "configs/debug_cpu.toml")
    assert "--rdzv-backend=c10d --rdzv-endpoint=h:29400 --rdzv-id=j7" in out.stdout
    out = launch(tmp_path, {"NGPU": "4", "NNODES": "2"}, "configs/debug_cpu.toml")
    assert out.returncode != 0 and "set MASTER_ADDR" in out.stderr


def test_missing_config_is_a_usage_error(tmp_path):
    out = launch(tmp_path, {}, "configs/nope.toml")
    assert out.returncode == 2 and "configs/nope.toml' not found" in out.stderr


@pytest.mark.slow
def test_bench_train_collects_throughput_per_variant(tmp_path, capsys, monkeypatch):
    """Also the real launch path: bench_train -> scripts/train.sh -> torchrun -> the trainer, on CPU."""
    from scripts.bench_train import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    base = (REPO / "configs" / "debug_cpu.toml").read_text()
    configs = []
    for variant in ("transformer", "parallax"):
        path = tmp_path / f"debug_{variant}_adamw.toml"
        path.write_text(base.replace('flavor = "debug-parallax"', f'flavor = "debug-{variant}"'))
        configs.append(str(path))
    results = main(["--configs", *configs, "--steps", "4", "--warmup", "1", "--launcher", "torchrun",
                    "--out", str(tmp_path / "runs"), "--", "--training.seq_len", "64"])
    out = capsys.readouterr().out
    assert list(results) == ["debug_transformer_adamw", "debug_parallax_adamw"]
    assert all(r["steps"] == 3 and r["tokens_per_s"] > 0 and r["step_time"] > 0 for r in results.values())
    assert "| debug_transformer_adamw |" in out and "1.00x" in out
    log = (tmp_path / "runs" / "debug_parallax_adamw.log").read_text()
    assert "torchrun --nproc_per_node=1 --nnodes=1 --max-restarts=0 --standalone" in log  # train.sh's call


@pytest.mark.slow
def test_ablate_trains_evaluates_plots_and_resumes(tmp_path, capsys):
    from scripts.ablate import main

    base = (REPO / "configs" / "debug_cpu.toml").read_text()
    configs = []
    for variant in ("transformer", "parallax"):
        path = tmp_path / f"debug_{variant}.toml"
        path.write_text(base.replace('flavor = "debug-parallax"', f'flavor = "debug-{variant}"')
                        .replace('dump_folder = "./outputs/debug_cpu"', f'dump_folder = "{tmp_path / variant}"'))
        configs.append(str(path))
    argv = [*configs, "--launcher", "python", "--out", str(tmp_path / "plot"), "--eval-device", "cpu",
            "--eval-max-batches", "4",
            "--", "--training.steps", "4", "--training.seq_len", "64", "--checkpoint.interval", "4",
            "--validation.seq_len", "64", "--validation.steps", "2", "--validation.freq", "4"]
    summary = main(argv)
    assert [s["run"] for s in summary] == ["debug_transformer", "debug_parallax"]
    assert all(1 < s["perplexity"] < 2048 * 2 for s in summary)
    assert (tmp_path / "plot.png").is_file() and (tmp_path / "plot.svg").is_file()
    assert (tmp_path / "parallax" / "perplexity.json").is_file()
    capsys.readouterr()
    again = main(argv)  # complete runs are not retrained
    assert capsys.readouterr().out.count("already complete") == 2
    assert [s["perplexity"] for s in again] == [s["perplexity"] for s in summary]


def test_ablate_runs_as_a_file_from_the_repo_root(tmp_path):
    """`python scripts/ablate.py` (as documented) must find the eval/ and scripts/ packages."""
    probe = ("import runpy, sys; sys.path[0] = 'scripts'; "
             "runpy.run_path('scripts/ablate.py', run_name='ablate'); "
             "import eval.perplexity, scripts.plot_runs; print('imports ok')")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert out.returncode == 0 and "imports ok" in out.stdout, out.stderr[-2000:]
