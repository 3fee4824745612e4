"""scripts/train.sh: how it calls torchrun (a stand-in torchrun records the call), and a real
single-process launch on CPU."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def launch(tmp_path, env, *args):
    from conftest import stand_in_commands

    path = stand_in_commands(tmp_path / "bin", {"torchrun": 'echo "torchrun $@"\n'})
    full_env = {**os.environ, "PATH": path, **env}
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


def _log_span(log: Path) -> tuple[str, str]:
    """The first and last torchtitan timestamps of a train.log ("2026-12-03 01:13:15,635" sorts as text)."""
    stamps = re.findall(r"^\[titan\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", log.read_text(), re.MULTILINE)
    assert stamps, f"no timestamps in {log}"
    return stamps[0], stamps[-1]


@pytest.mark.slow
def test_ablate_parallel_stops_starting_runs_after_a_failure_and_names_it(tmp_path, capsys):
    """--parallel 2 over three configs, the first of which cannot train: the second starts beside it, the
    third never starts, and the error names the failed run and its log."""
    from scripts.ablate import main

    base = (REPO / "configs" / "debug_cpu.toml").read_text()
    configs = []
    for name in ("broken", "fine", "never"):
        text = base.replace('dump_folder = "./outputs/debug_cpu"', f'dump_folder = "{tmp_path / name}"')
        # "fine" trains long enough (12 steps) that "broken", which fails while building its data, ends first
        text = text.replace("steps = 40", "steps = 12").replace("interval = 20", "interval = 12")
        if name == "broken":
            text = text.replace('dataset = "embedded_en"', 'dataset = "no_such_dataset"')
        (tmp_path / f"{name}.toml").write_text(text)
        configs.append(str(tmp_path / f"{name}.toml"))
    argv = [*configs, "--launcher", "python", "--out", str(tmp_path / "plot"), "--parallel", "2",
            "--", "--training.seq_len", "64", "--validation.no-enable", "--diagnostics.interval", "0"]
    with pytest.raises(SystemExit, match=r"broken: training exited with \d+; see .*broken/train.log") as error:
        main(argv)
    assert "fine" not in str(error.value) and not (tmp_path / "never").exists()
    assert "no_such_dataset" in (tmp_path / "broken" / "train.log").read_text()
    assert (tmp_path / "fine" / "checkpoint" / "step-12" / ".metadata").is_file()
    # a run starts only while no failure is recorded, so "fine" started before "broken" had failed (the logs'
    # timestamps cannot show this reliably: "broken" may log its last line before "fine" logs its first)
    out = capsys.readouterr().out
    assert "fine: training to step 12" in out and "never: not started, after an earlier failure" in out


@pytest.mark.slow
def test_ablate_sweeps_one_key_each_run_in_its_own_folder(tmp_path, capsys):
    """--sweep optimizer.lr=...: one run per value, in <dump_folder>/optimizer.lr=<value>, trained at that lr,
    and a table of each config's best value."""
    from scripts.ablate import main

    config = tmp_path / "debug_parallax.toml"
    config.write_text((REPO / "configs" / "debug_cpu.toml").read_text()
                      .replace('dump_folder = "./outputs/debug_cpu"', f'dump_folder = "{tmp_path / "parallax"}"'))
    argv = [str(config), "--launcher", "python", "--out", str(tmp_path / "plot"), "--eval-device", "cpu",
            "--eval-max-batches", "2", "--sweep", "optimizer.lr=1e-4,3e-3", "--parallel", "2",
            "--", "--training.steps", "3", "--training.seq_len", "64", "--checkpoint.interval", "3",
            "--validation.no-enable", "--validation.seq_len", "64", "--diagnostics.interval", "0"]
    summary = main(argv)
    assert [(s["run"], s["value"]) for s in summary] == [("debug_parallax optimizer.lr=1e-4", "1e-4"),
                                                        ("debug_parallax optimizer.lr=3e-3", "3e-3")]
    first_lr = []
    for s in summary:
        dump = tmp_path / "parallax" / f"optimizer.lr={s['value']}"
        assert s["dump"] == str(dump) and (dump / "checkpoint" / "step-3" / ".metadata").is_file()
        first_lr.append(json.loads((dump / "metrics.jsonl").read_text().splitlines()[0])["lr"])
    assert first_lr[1] / first_lr[0] == pytest.approx(30)  # each trained at its lr (same warmup): 3e-3 / 1e-4
    spans = [_log_span(tmp_path / "parallax" / f"optimizer.lr={s['value']}" / "train.log") for s in summary]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # --parallel 2: the two trained side by side
    assert summary[0]["held_out_loss"] != summary[1]["held_out_loss"]
    best = min(summary, key=lambda s: s["held_out_loss"])  # scripts/plot_sweep.py's table and figure
    assert f"**{best['held_out_loss']:.4f}** | {best['value']} | yes |" in capsys.readouterr().out
    assert (tmp_path / "plot_sweep.png").is_file()


def test_ablate_sweep_parsing_errors():
    from scripts.ablate import parse_sweep

    assert parse_sweep("optimizer.lr=1e-3,3e-3", []) == ("optimizer.lr", ["1e-3", "3e-3"])
    for bad in ("lr=1e-3", "optimizer.lr=", "optimizer.lr=1e-3,1e-3"):
        with pytest.raises(SystemExit, match="expected section.key=value1,value2"):
            parse_sweep(bad, [])
    with pytest.raises(SystemExit, match="do not also override them"):
        parse_sweep("optimizer.lr=1e-3,3e-3", ["--optimizer.lr", "1e-2"])
    with pytest.raises(SystemExit, match="do not also override them"):
        parse_sweep("optimizer.lr=1e-3,3e-3", ["--job.dump_folder", "x"])


def _stand_in_path(tmp_path, python_also: str = "") -> str:
    """A PATH whose `python` records each call in tmp_path/calls.txt (then runs `python_also`, shell) and whose
    `nvidia-smi` does nothing: ladder_check.sh without a GPU or the packages."""
    from conftest import stand_in_commands

    return stand_in_commands(tmp_path / "bin", {"python": f'echo "$@" >> {tmp_path / "calls.txt"}\n{python_also}',
                                                "nvidia-smi": ""})


def _run_ladder_script(tmp_path, **env):
    """scripts/offline_gpu/ladder_check.sh with the stand-in `python` (the corpus and tokenizer are taken as
    prepared); returns the finished process and the recorded calls, sorted."""
    for made in ("assets/Qwen3-0.6B/tokenizer.json", "data/mini_corpus/manifest.json", ".ladder/mini_text/PROVENANCE.json"):
        (tmp_path / made).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / made).write_text("{}")
    from conftest import run_offline_gpu_script

    out = run_offline_gpu_script("ladder_check.sh", cwd=tmp_path, LADDER_TMP=str(tmp_path), PATH=_stand_in_path(tmp_path),
                            **env)
    assert out.returncode == 0, out.stderr
    return out, sorted((tmp_path / "calls.txt").read_text().splitlines())


@pytest.mark.parametrize("sweep", ["", "optimizer.lr=1e-3,1e-2"])
def test_the_ladder_script_starts_one_ablate_per_config_or_per_config_and_swept_value(tmp_path, sweep):
    """scripts/offline_gpu/ladder_check.sh on a GPU host starts its runs side by side."""
    (tmp_path / "out").mkdir()
    out, calls = _run_ladder_script(tmp_path, SWEEP=sweep, CONFIGS="configs/mini/a.toml configs/mini/b.toml",
                                    OUT=str(tmp_path / "out"))
    if not sweep:
        assert calls == [f"scripts/ablate.py configs/mini/{c}.toml --out {tmp_path}/plots/{c}" for c in "ab"]
    else:
        assert calls == [f"scripts/ablate.py configs/mini/{c}.toml --sweep optimizer.lr={v} --out {tmp_path}/plots/{c}-{v}"
                         for c in "ab" for v in ("1e-2", "1e-3")]
        assert "== a-1e-3" in out.stdout and "== b-1e-2" in out.stdout
    with tarfile.open(tmp_path / "out" / "ladder.tgz") as packed:  # the dump folders' layout
        logs = sorted(m.name for m in packed.getmembers() if m.isfile())
    assert logs == ([f"./{c}/ablate.log" for c in "ab"] if not sweep else
                    [f"./{c}/optimizer.lr={v}/ablate.log" for c in "ab" for v in ("1e-2", "1e-3")]) \
        + ["./mini_text_PROVENANCE.json"]  # which corpus build the runs saw


def test_the_ladder_script_passes_its_overrides_to_every_run(tmp_path):
    """LADDER_OVERRIDES go after ablate.py's `--`: seeds swept at one lr, each in <dump>/debug.seed=<value>."""
    _, calls = _run_ladder_script(tmp_path, SWEEP="debug.seed=2,3", CONFIGS="configs/mini/a.toml",
                                  LADDER_OVERRIDES="--optimizer.lr 5e-3 --training.steps 10")
    assert calls == [
        f"scripts/ablate.py configs/mini/a.toml --sweep debug.seed={v} --out {tmp_path}/plots/a-{v} "
        "-- --optimizer.lr 5e-3 --training.steps 10" for v in (2, 3)]
    assert (tmp_path / "ladder" / "a" / "debug.seed=3" / "ablate.log").is_file()


def test_two_ladder_scripts_side_by_side_tokenise_the_corpus_once(tmp_path):
    """Two copies of scripts/offline_gpu/ladder_check.sh started together (other configs): one tokenises the
    corpus, the other waits on the lock and finds it done, instead of both writing data/mini_corpus at once."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import run_offline_gpu_script

    (tmp_path / "assets/Qwen3-0.6B").mkdir(parents=True)
    (tmp_path / "assets/Qwen3-0.6B/tokenizer.json").write_text("{}")
    env = {"PATH": _stand_in_path(tmp_path,  # prepare_data.py takes a second, then writes the manifest
                                  'case "$1" in *prepare_data.py) sleep 1; mkdir -p data/mini_corpus; '
                                  'echo {} > data/mini_corpus/manifest.json;; esac\n')}
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda c: run_offline_gpu_script("ladder_check.sh", cwd=tmp_path, CONFIGS=f"configs/mini/{c}.toml",
                                                         LADDER_TMP=str(tmp_path / c), **env), "ab"))
    assert all(out.returncode == 0 for out in outs), [out.stderr for out in outs]
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert sum("prepare_data.py" in call for call in calls) == 1
    assert sorted(call.split()[1] for call in calls if "ablate.py" in call) == ["configs/mini/a.toml", "configs/mini/b.toml"]


def test_ablate_runs_as_a_file_from_the_repo_root(tmp_path):
    """`python scripts/ablate.py` (as documented) must find the eval/ and scripts/ packages."""
    probe = ("import runpy, sys; sys.path[0] = 'scripts'; "
             "runpy.run_path('scripts/ablate.py', run_name='ablate'); "
             "import eval.perplexity, scripts.plot_runs; print('imports ok')")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert out.returncode == 0 and "imports ok" in out.stdout, out.stderr[-2000:]


def _cpu_env(**extra):
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled", **extra}


def _short_run(dump, steps):
    return ["configs/debug_cpu.toml", "--job.dump_folder", str(dump), "--training.steps", str(steps),
            "--training.seq_len", "64", "--training.local_batch_size", "2", "--training.global_batch_size", "4",
            "--validation.no-enable", "--checkpoint.no-enable", "--metrics.log_freq", "1",
            "--metrics.disable_color_printing", "--diagnostics.interval", "0"]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_meet_through_the_rendezvous_endpoint(tmp_path):
    """Two launches of scripts/train.sh, one 'node' of one process each, find each other through the c10d
    rendezvous endpoint (the path a multi-node job takes) and train one FSDP job of 2 ranks together."""
    env = _cpu_env(NNODES="2", NGPU="1", RDZV_ENDPOINT=f"127.0.0.1:{_free_port()}", RDZV_ID="two-nodes")
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    nodes = [subprocess.Popen(["bash", "scripts/train.sh", *_short_run(tmp_path / "run", 3)], cwd=REPO, env=env,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT) for log in logs]
    codes = [node.wait(timeout=600) for node in nodes]
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], [t[-2000:] for t in text]
    assert any("dp_shard=2" in t for t in text)
    assert any("step:  3" in t for t in text)


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_with_an_error_instead_of_a_hang(tmp_path):
    import signal
    import time

    log = tmp_path / "job.log"
    job = subprocess.Popen(["bash", "scripts/train.sh", *_short_run(tmp_path / "run", 100000)], cwd=REPO,
                           env=_cpu_env(NGPU="2"), stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while "step:  2" not in log.read_text():
            assert job.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers  # train.sh execs torchrun, whose children are the two ranks
        os.kill(int(workers[1]), signal.SIGKILL)
        code = job.wait(timeout=120)  # the other rank must not wait forever for its peer
    finally:
        if job.poll() is None:
            job.kill()
    assert code != 0
    text = log.read_text()
    # torchrun reports the SIGKILLed rank, unless it loses a race of its own teardown: it SIGTERMs the
    # survivor while that rank is writing its @record error file, then fails to parse the cut-short file
    # (JSONDecodeError in ProcessFailure). Either way the job ended with an error, which is the point here.
    reported = "exitcode  : -9" in text or "Signal 9" in text
    teardown_race = "error_file_data = json.load(fp)" in text and "JSONDecodeError" in text
    assert reported or teardown_race, text[-3000:]
    deadline = time.time() + 30
    while any(_alive(int(pid)) for pid in workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(_alive(int(pid)) for pid in workers), "a rank outlived the job"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie has exited and only waits to be reaped
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
