"""Train a list of TOMLs, evaluate each, and draw the comparison.

    python scripts/ablate.py configs/mini/mini20M_{transformer,parallax}_muon.toml \
        --baseline mini20M_transformer_muon --out docs/plots/mini20M_muon [--nproc 1] [--parallel 1] \
        [-- --section.key value ...]

Overrides after `--` apply to every config.
1. Train each config, one after another or up to `--parallel N` at once, unless its final checkpoint
   (`checkpoint/step-<training.steps>`) is already complete. An interrupted run resumes from its latest checkpoint:
   torchtitan loads it from the run's folder. A ladder can therefore be completed in pieces by running the same
   command again. After a failed run no new one starts; the command stops once those running have ended.
2. Held-out perplexity of each final checkpoint (eval/perplexity.py, the TOML's [validation] data), written to
   <dump_folder>/perplexity.json.
3. scripts/plot_runs.py over their metrics.jsonl, and a summary table.

`--sweep optimizer.lr=1e-3,3e-3,1e-2` trains each config once per value, each in its own folder
(<dump_folder>/optimizer.lr=<value>), and adds scripts/plot_sweep.py's table and figure (<out>_sweep.png): each
config's held-out loss at each value and its best. A variant compared at one untuned lr may be ahead only because
it learns faster at that lr (docs/results.md). A best at the sweep's first or last value says the sweep may not
reach the best.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from parallax_titan.launch import LAUNCHERS, REPO, split_overrides, train

# Run as `python scripts/ablate.py`, Python puts scripts/ (not the repo) on the path; eval/ and
# scripts/ are imported as packages from the repo root.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class Run(NamedTuple):
    name: str
    config: Path
    overrides: list[str]
    value: str | None  # the swept value, if any
    job: Any  # the parsed JobConfig
    dump: Path
    final: Path  # the final checkpoint's folder


def run_facts(config: Path, overrides: list[str]):
    from parallax_titan.inference import model_args_from_config

    _, job = model_args_from_config(config, overrides)
    dump = Path(job.job.dump_folder)
    final = dump / job.checkpoint.folder / f"step-{job.training.steps}"
    return job, dump, final


def parse_sweep(text: str | None, overrides: list[str]) -> tuple[str, list[str]] | None:
    """"section.key=v1,v2,..." -> ("section.key", ["v1", "v2", ...]); errors name what is wrong."""
    if text is None:
        return None
    key, _, values = text.partition("=")
    swept = [v for v in values.split(",") if v]
    if key.count(".") < 1 or not swept or len(set(swept)) != len(swept):
        raise SystemExit(f"--sweep {text!r}: expected section.key=value1,value2,... with distinct values")
    if key == "job.dump_folder" or f"--{key}" in overrides or "--job.dump_folder" in overrides:
        raise SystemExit(f"--sweep {key}: the sweep sets {key} and each run's job.dump_folder; "
                         "do not also override them after `--`")
    return key, swept


def runs_to_do(configs: list[Path], overrides: list[str], sweep: tuple[str, list[str]] | None) -> list[Run]:
    """One run per config, or one per config and swept value, each swept run in its own folder under the
    config's dump folder."""
    if sweep is None:
        return [Run(config.stem, config, overrides, None, *run_facts(config, overrides)) for config in configs]
    key, values = sweep
    runs = []
    for config in configs:
        _, dump, _ = run_facts(config, overrides)
        for value in values:
            swept = [*overrides, f"--{key}", value, "--job.dump_folder", str(dump / f"{key}={value}")]
            runs.append(Run(f"{config.stem} {key}={value}", config, swept, value, *run_facts(config, swept)))
    return runs


def train_all(runs: list[Run], args) -> list[str]:
    """Train the runs not yet complete, at most `args.parallel` at once (small models share one GPU well: the
    mini ladder ran four to six side by side). After a failure no new run starts; those running finish.
    Returns one message per failed run."""
    failures: list[str] = []
    lock = threading.Lock()

    def train_one(run: Run) -> None:
        name, config, overrides, _, job, dump, final = run
        with lock:
            if failures:
                print(f"{name}: not started, after an earlier failure", flush=True)
                return
            print(f"{name}: training to step {job.training.steps} in {dump}", flush=True)
        log = dump / "train.log"
        rc = train(config, overrides, args.nproc, args.launcher, log, append=True)
        message = None
        if rc != 0:
            message = f"{name}: training exited with {rc}; see {log}. Rerun to resume from its last checkpoint."
        elif not (final / ".metadata").is_file():
            message = f"{name}: training ended without {final}; is [checkpoint] enable = true?"
        if message:
            with lock:
                failures.append(message)

    pending = []
    for run in runs:
        if (run.final / ".metadata").is_file():
            print(f"{run.name}: already complete ({run.final})")
        else:
            pending.append(run)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # each run is its own process; threads only wait
        list(pool.map(train_one, pending))
    return failures


def main(argv: list[str] | None = None) -> list[dict]:
    own, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--launcher", choices=LAUNCHERS, default="torchrun")
    parser.add_argument("--baseline", default=None, help="run name (TOML stem) to subtract in the plot; default: first")
    parser.add_argument("--out", type=Path, required=True, help="plot path without suffix")
    parser.add_argument("--eval-device", default=None)
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--eval-max-batches", type=int, default=None, help="smoke runs only: cap the evaluation")
    parser.add_argument("--sweep", default=None, metavar="SECTION.KEY=V1,V2,...",
                        help="train each config at each value of one key (e.g. optimizer.lr=1e-3,3e-3,1e-2)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="train up to N runs at once (each its own process, sharing the GPUs); then evaluate")
    args = parser.parse_args(own)
    if args.parallel < 1:
        raise SystemExit(f"--parallel {args.parallel}: must be at least 1")
    missing = [str(c) for c in args.configs if not c.is_file()]
    if missing:
        raise SystemExit(f"configs not found: {missing}")
    sweep = parse_sweep(args.sweep, overrides)
    from eval.perplexity import main as perplexity
    from scripts.plot_runs import main as plot_runs
    from scripts.plot_sweep import main as plot_sweep

    runs = runs_to_do(args.configs, overrides, sweep)
    failures = train_all(runs, args)
    if failures:
        raise SystemExit("\n".join(failures))
    summary = []
    for name, config, overrides, value, job, dump, final in runs:
        eval_args = ["--config", str(config), "--checkpoint", str(final), "--json", str(dump / "perplexity.json"),
                     "--batch-size", str(args.eval_batch_size)]
        if args.eval_device:
            eval_args += ["--device", args.eval_device]
        if args.eval_max_batches:
            eval_args += ["--max-batches", str(args.eval_max_batches)]
        eval_args += ["--", *overrides]
        result = perplexity(eval_args)
        summary.append({"run": name, "config": config.stem, "value": value,
                        "dump": str(dump), "steps": job.training.steps,
                        "held_out_loss": result.loss, "perplexity": result.perplexity, "tokens": result.tokens})
    plot_runs([*(s["dump"] for s in summary), "--labels", *(s["run"] for s in summary),
               "--baseline", args.baseline or summary[0]["run"], "--out", str(args.out)])
    print("| run | steps | held-out loss | perplexity | evaluated tokens |\n|---|---:|---:|---:|---:|")
    for s in summary:
        print(f"| {s['run']} | {s['steps']} | {s['held_out_loss']:.4f} | {s['perplexity']:.2f} | {s['tokens']:,} |")
    if sweep:  # held-out loss against the swept value, each config's best flagged when at the sweep's end
        print()
        plot_sweep([*(s["dump"] for s in summary), "--out", f"{args.out}_sweep"])
    Path(str(args.out) + ".json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
