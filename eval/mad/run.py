"""Run the MAD protocol for this repo's attention types and print the table.

    python -m eval.mad.run --attention softmax parallax --out runs/mad.jsonl            # full protocol
    python -m eval.mad.run --attention softmax parallax --baseline-only --epochs 20 \
        --lrs 5e-4 --wds 0 --out runs/mad_quick.jsonl                                     # a quick look

Full protocol (MAD): 66 task settings (each task's baseline and one-factor changes) x lr {1e-4, 5e-4, 1e-3}
x weight decay {0, 0.1}, 200 epochs, batch 128. A setting's score is its best run over the sweep; a task's
score is the mean over its settings; the average is over the six tasks. Results append to --out (JSONL)
as each run ends, and runs already there are skipped, so an interrupted protocol resumes. --table only
prints the table of an existing file (of the settings that --tasks, --baseline-only, --settings and
--max-seq-len choose, and of the runs that --optimizer, --lrs, --wds and --epochs choose, when given);
--estimate prints what is pending and its cost from the seconds the file records, to size a time-limited
piece. In a time-limited call --start-deadline starts no job late,
and --end-deadline none that the recorded seconds say would not finish (a cheaper one starts instead);
--costs-from adds another file's recorded seconds to that pricing (a new sweep in a file of its own).
The table also counts, per model, the settings whose best run sits at the sweep's largest lr: many
mean the sweep may stop short of the best lr. --table --by-lr prints each setting's best at each lr.

MAD models are tiny (width 128, 2 blocks), so one run leaves a GPU mostly idle: --jobs N trains N runs at
once in worker processes, spread round-robin over the --device list (e.g. --jobs 16 --device cuda:0 cuda:1),
and --compile trains through torch.compile with CUDA graphs. Every run is seeded on its own, so the
results depend on neither. Runs go optimizer by optimizer, and within one sweep point by sweep point (all
settings at the first lr and weight decay, in --lrs/--wds order, then the next), and the table compares the
models of each optimizer only on runs all of them have, so a protocol completed in pieces can be read at any point.

--batch-sweep trains each setting's sweep points (same model, same seed) as one batched model instead
(eval/mad/train.py train_sweep): a step then launches each kernel once for all of them, which is what a
launch-bound tiny model needs. Each run's arithmetic is unchanged (on CPU the results are identical to
separate runs, tested); a job is then a whole setting, so a protocol cut short has some settings at every
sweep point and others at none, instead of every setting at the first points. It pays where a step is
launch-bound (short sequences: six runs for about twice one run's time on an H200); the sequence-1,024
settings are bound by arithmetic, and --batch-max-seq-len 256 keeps those beyond 256 one run a job.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from eval.mad.claims import RunClaims
from eval.mad.tasks import PROTOCOL, all_settings
from eval.mad.train import MADRun, train_setting, train_sweep

SHORT = {"in-context-recall": "CR", "fuzzy-in-context-recall": "FR", "noisy-in-context-recall": "NR",
         "selective-copying": "SC", "compression": "C", "memorization": "M"}


def run_key(r: dict) -> tuple:
    return (r["setting"], r["attention"], r["optimizer"], r["lr"], r["weight_decay"], r["epochs"], r["seed"])


def planned_key(setting, run: MADRun) -> tuple:
    """run_key() of the record that training `run` on `setting` will write."""
    return (setting.name, run.attention, run.optimizer, run.lr, run.weight_decay, run.epochs, run.seed)


def setting_bests(records: list[dict]) -> dict[tuple[str, str, str, str], float]:
    """(attention, optimizer, task, setting) -> the best test accuracy over that setting's sweep runs."""
    best: dict[tuple, float] = {}
    for r in records:
        key = (r["attention"], r["optimizer"], r["task"], r["setting"])
        best[key] = max(best.get(key, 0.0), r["test_acc"])
    return best


def scores(records: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """(attention, optimizer) -> {task: mean over settings of the best sweep run, "average": ...}."""
    per_task: dict[tuple, list[float]] = defaultdict(list)
    for (attention, optimizer, task, _), acc in setting_bests(records).items():
        per_task[(attention, optimizer, task)].append(acc)
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (attention, optimizer, task), accs in per_task.items():
        out[(attention, optimizer)][task] = sum(accs) / len(accs)
    for model, tasks in out.items():
        tasks["average"] = sum(tasks.values()) / len(tasks)
    return out


def common_runs(records: list[dict]) -> list[dict]:
    """The records whose (setting, lr, weight decay) every attention model of the same optimizer has
    run: a protocol still in progress then compares the models on the same runs, and one optimizer's
    runs in progress leave the other optimizer's comparison as it is."""
    models = defaultdict(set)
    have = defaultdict(set)
    for r in records:
        models[r["optimizer"]].add(r["attention"])
        have[(r["optimizer"], r["setting"], r["lr"], r["weight_decay"], r["epochs"])].add(r["attention"])
    return [r for r in records
            if have[(r["optimizer"], r["setting"], r["lr"], r["weight_decay"], r["epochs"])] == models[r["optimizer"]]]


def table(records: list[dict]) -> str:
    everything = records
    records = common_runs(records)
    results = scores(records)
    tasks = [t for t in PROTOCOL if any(t in r for r in results.values())]
    settings = defaultdict(set)
    for r in records:
        settings[r["task"]].add(r["setting"])
    lines = ["| model | optimizer | " + " | ".join(f"{SHORT[t]} ({len(settings[t])})" for t in tasks) + " | average |",
             "|---|---|" + "---:|" * (len(tasks) + 1)]
    for (attention, optimizer), values in sorted(results.items()):
        cells = " | ".join(f"{values[t]:.3f}" if t in values else "-" for t in tasks)
        lines.append(f"| {attention} | {optimizer} | {cells} | {values['average']:.3f} |")
    points = defaultdict(set)
    for r in records:
        points[(r["attention"], r["optimizer"], r["setting"])].add((r["lr"], r["weight_decay"]))
    for (attention, optimizer) in sorted(results):
        counts = sorted(len(v) for k, v in points.items() if k[:2] == (attention, optimizer))
        lines.append(f"\n{attention}/{optimizer}: {len(counts)} settings; sweep points per setting: "
                     f"{counts[0]}..{counts[-1]} (epochs {sorted({r['epochs'] for r in records})})")
    for (attention, optimizer), (at_edge, of) in sorted(sweep_edges(records).items()):
        lines.append(f"{attention}/{optimizer}: best run at the sweep's largest lr in {at_edge} of {of} settings")
    for optimizer, (ahead, behind, level) in sorted(head_to_head(records).items()):
        lines.append(f"{optimizer}: parallax's best above softmax's by more than 0.01 in {ahead} settings, "
                     f"below in {behind}, within 0.01 in {level}")
    if len(records) < len(everything):
        lines.append(f"({len(everything) - len(records)} runs left out: not yet run for every model)")
    return "\n".join(lines)


def best_by_lr(records: list[dict]) -> dict[tuple, dict[float, float]]:
    """(setting, attention, optimizer) -> {lr: best test accuracy over the weight decays run at that lr}."""
    out: dict[tuple, dict[float, float]] = defaultdict(dict)
    for r in records:
        at = out[(r["setting"], r["attention"], r["optimizer"])]
        at[r["lr"]] = max(at.get(r["lr"], 0.0), r["test_acc"])
    return out


def sweep_edges(records: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """(attention, optimizer) -> (settings whose best run is at the largest lr, settings with more than one lr).
    A best run strictly above every smaller lr's says the sweep may stop short of the best lr (MAD's sweep
    was chosen for 200 epochs; shorter training wants larger steps)."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for (_, attention, optimizer), accs in best_by_lr(records).items():
        if len(accs) < 2:
            continue
        top = max(accs)
        count = counts[(attention, optimizer)]
        count[0] += accs[top] > max(acc for lr, acc in accs.items() if lr != top)
        count[1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def head_to_head(records: list[dict], margin: float = 0.01) -> dict[str, tuple[int, int, int]]:
    """optimizer -> settings where Parallax's best run beats softmax's by more than `margin`, trails by more,
    or is within it (records as the table compares them: runs both models have)."""
    best = setting_bests(records)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for (attention, optimizer, task, setting), acc in best.items():
        if attention == "parallax" and ("softmax", optimizer, task, setting) in best:
            diff = acc - best[("softmax", optimizer, task, setting)]
            counts[optimizer][0 if diff > margin else 1 if diff < -margin else 2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in counts.items()}


def lr_table(records: list[dict]) -> str:
    """One row per setting, model and optimizer: the best accuracy at each lr (over weight decays)."""
    best = best_by_lr(records)
    lrs = sorted({lr for accs in best.values() for lr in accs})
    lines = ["| setting | model | optimizer | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|---|---|" + "---:|" * len(lrs)]
    for (setting, attention, optimizer), accs in sorted(best.items()):
        cells = " | ".join(f"{accs[lr]:.3f}" if lr in accs else "-" for lr in lrs)
        lines.append(f"| {setting} | {attention} | {optimizer} | {cells} |")
    return "\n".join(lines)


def plan(settings: list, runs: list[MADRun], done: set[tuple], devices: list[str]) -> list[tuple]:
    """(setting, run, device) for every run not in `done`. Optimizers outermost, then sweep points (lr,
    weight decay), each in the order given: a protocol cut short has one optimizer's table complete
    before the next starts (the tenth session spent a call on Muon's first point while AdamW's last runs
    waited), and every setting at the first points rather than some fully swept and others not at all.
    Within a sweep point the costliest settings (examples x length) go first, so that workers running
    side by side finish together instead of one long run trailing."""
    points = list(dict.fromkeys((run.optimizer, run.lr, run.weight_decay) for run in runs))
    pending = []
    for point in points:
        for setting in sorted(settings, key=lambda s: -s.num_train_examples * s.seq_len):
            for run in runs:
                if (run.optimizer, run.lr, run.weight_decay) == point and planned_key(setting, run) not in done:
                    pending.append((setting, run, devices[len(pending) % len(devices)]))
    return pending


def recorded_costs(records: list[dict]) -> dict[tuple, dict[int, float]]:
    """(setting, attention, optimizer) -> {runs in the job: mean seconds per epoch of such a job}, from the
    recorded runs at any sweep point (as recorded: under the concurrency those runs had). A batched job's
    records each carry the whole job's seconds."""
    per_epoch: dict[tuple, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        per_epoch[(r["setting"], r["attention"], r["optimizer"])][r.get("batched_runs", 1)].append(
            r["seconds"] / r["epochs"])
    return {key: {n: sum(v) / len(v) for n, v in sizes.items()} for key, sizes in per_epoch.items()}


def job_seconds(setting, runs: list[MADRun], costs: dict) -> float | None:
    """A job's expected seconds (one run, or a batched group of runs of one setting and model), from the
    recorded jobs of the nearest size, scaled up for a larger group: by how much the model's jobs of the
    two sizes differ elsewhere (batch_growth), else in proportion (at most that); None with no record to go by. With
    no record under the job's optimizer, the same setting and model under another optimizer stands in:
    a step of these models costs about the same under either (tenth session: the first 16 Muon runs took
    183-246 s, AdamW's runs of the same settings and models 58-421 s, both set more by what shared the
    GPU than by the optimizer), and a rough price lets --end-deadline hold back a job a time limit would cut."""
    by_size = costs.get((setting.name, runs[0].attention, runs[0].optimizer))
    if not by_size:
        by_size = next((sizes for (name, attention, _), sizes in sorted(costs.items())
                        if (name, attention) == (setting.name, runs[0].attention)), None)
    if not by_size:
        return None
    size = min(by_size, key=lambda k: (abs(k - len(runs)), k))
    growth = max(1.0, len(runs) / size)
    if len(runs) > size:
        measured = batch_growth(costs, runs[0].attention, size, len(runs))
        growth = growth if measured is None else min(growth, max(1.0, measured))
    return by_size[size] * growth * max(run.epochs for run in runs)


def batch_growth(costs: dict, attention: str, small: int, large: int) -> float | None:
    """How much longer a job of `large` runs took than one of `small`, for this model: the median, over the
    settings (and optimizers) with recorded jobs of both sizes, of the ratio of their seconds. None without
    such a pair. Batching is what makes a job of four short runs cost about twice one run, not four times
    (AdamW's records, eleventh session: 1.6-3.6 for most settings, set as much by what shared the GPU)."""
    ratios = sorted(sizes[large] / sizes[small] for (_, model, _), sizes in costs.items()
                    if model == attention and small in sizes and large in sizes)
    if not ratios:
        return None
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2


def estimate(pending: list[tuple], records: list[dict]) -> str:
    """The pending runs' cost, per optimizer and sweep point, one run a job (job_seconds)."""
    costs = recorded_costs(records)
    points: dict[tuple, list] = {}
    for setting, run, _ in pending:
        seconds = job_seconds(setting, [run], costs)
        point = points.setdefault((run.optimizer, run.lr, run.weight_decay), [0, 0.0, 0])
        point[0] += 1
        if seconds is not None:
            point[1] += seconds
        else:
            point[2] += 1
    lines = [f"{len(pending)} runs pending"]
    for (optimizer, lr, wd), (count, seconds, unknown) in points.items():
        lines.append(f"{optimizer} lr={lr:g} wd={wd:g}: {count} runs, about {seconds / 60:.0f} run-minutes"
                     + (f" ({unknown} with no record to go by)" if unknown else ""))
    return "\n".join(lines)


def batch_sweeps(pending: list[tuple], devices: list[str], max_seq_len: int | None = None) -> list[tuple]:
    """(setting, runs, device) per setting and model: the pending runs that differ only in their sweep
    point, to train as one batched model (train_sweep), in the order plan() first reaches them. Settings
    longer than `max_seq_len` stay one run a job: they are bound by attention's arithmetic, not by
    launches, so batching only makes their jobs longer (docs/results.md, seventh session)."""
    groups: dict[tuple, list] = {}
    for setting, run, _ in pending:
        key = (setting.name, run.attention, run.optimizer)
        if max_seq_len is not None and setting.seq_len > max_seq_len:
            key += (run.lr, run.weight_decay)
        groups.setdefault(key, [setting, []])[1].append(run)
    return [(setting, runs, devices[i % len(devices)]) for i, (setting, runs) in enumerate(groups.values())]


def _one(setting, run, device) -> list[dict]:
    return [train_setting(setting, run, device)]


def _group(setting, runs, device) -> list[dict]:
    return train_sweep(setting, runs, device) if len(runs) > 1 else _one(setting, runs[0], device)


def _train_all(pending: list, jobs: int, start_deadline: float | None = None, batched: bool = False,
               end_deadline: float | None = None, costs: dict | None = None, claims: RunClaims | None = None):
    """Yields each run's result as it ends: in order in this process, or from `jobs` worker processes
    ("spawn": CUDA cannot be forked), each given its next job as it finishes one. A job is one run, or
    with `batched` one batch_sweeps() group. No job starts once `start_deadline` seconds have passed,
    nor one whose expected seconds (job_seconds from `costs`) would take it past `end_deadline`: the
    next job in the queue that fits starts instead. Those started finish. A call with a time limit then
    ends with whole runs, instead of losing the ones a kill would cut short. With `claims`, a job starts
    with only those of its runs that no other runner on the same results file has taken (claims.py)."""
    clock = time.monotonic()
    train = _group if batched else _one

    def expected_seconds(job) -> float | None:
        if end_deadline is None:
            return None
        return job_seconds(job[0], job[1] if batched else [job[1]], costs or {})

    def next_job():
        while True:
            elapsed = time.monotonic() - clock
            if start_deadline is not None and elapsed >= start_deadline:
                return None
            fits = [i for i, (_, seconds) in enumerate(queue) if seconds is None or elapsed + seconds <= end_deadline]
            if not fits:
                return None
            job = queue.pop(fits[0])[0]
            if claims is None or (job := claimed(job)) is not None:
                return job

    def claimed(job):
        """The job cut to the runs this runner could claim, or None if another runner has taken them all."""
        nonlocal skipped
        setting, runs, device = job if batched else (job[0], [job[1]], job[2])
        free = set(claims.claim([planned_key(setting, run) for run in runs]))
        mine = [run for run in runs if planned_key(setting, run) in free]
        skipped += len(runs) - len(mine)
        if not mine:
            return None
        return (setting, mine, device) if batched else job

    skipped = 0  # runs left to another runner

    queue = [(job, expected_seconds(job)) for job in pending]  # each job priced once
    if jobs <= 1:
        while (job := next_job()) is not None:
            yield from train(*job)
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            running = set()
            while queue or running:
                while len(running) < jobs and (job := next_job()) is not None:
                    running.add(pool.submit(train, *job))
                if not running:
                    break
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield from future.result()
    if skipped:
        print(f"{skipped} runs left to another runner of this results file, which had taken them (claims.py)")
    if queue:
        print(f"{len(queue)} jobs not started: past --start-deadline, or expected to end past --end-deadline")


# the flags that choose runs (what trains, or with --table what is tabled), their defaults and record fields
RUN_DEFAULTS = {"optimizer": ["adamw"], "lrs": [1e-4, 5e-4, 1e-3], "wds": [0.0, 0.1], "epochs": 200}
RUN_FIELDS = {"optimizer": "optimizer", "lrs": "lr", "wds": "weight_decay", "epochs": "epochs"}


def _read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _append_line(path: Path, line: str) -> None:
    """One record, one write() to a file opened O_APPEND: two runners appending to one results file (two pieces
    of a call at once, scripts/device/mad_check.sh) never interleave or overwrite each other's lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = (line + "\n").encode()
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: a short write appending a record")
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", nargs="+", default=["softmax", "parallax"], choices=["softmax", "parallax"])
    # the run-choosing flags default to None so that --table can tell which were given; RUN_DEFAULTS fills them
    parser.add_argument("--optimizer", nargs="+", default=None, choices=["adamw", "muon"], help="default: adamw")
    parser.add_argument("--tasks", nargs="+", default=None, help=f"default: all of {list(PROTOCOL)}")
    parser.add_argument("--baseline-only", action="store_true", help="each task's baseline setting only")
    parser.add_argument("--settings", nargs="+", default=None, metavar="NAME",
                        help="only these settings, by name (e.g. 'in-context-recall[seq_len=1024]')")
    parser.add_argument("--max-seq-len", type=int, default=None, metavar="N",
                        help="only settings of at most N positions (the short ones, cheap when batched)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="default: 1e-4 5e-4 1e-3")
    parser.add_argument("--wds", type=float, nargs="+", default=None, help="default: 0 0.1")
    parser.add_argument("--epochs", type=int, default=None, help="default: 200")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--max-train-examples", type=int, default=None, help="cap (smoke runs only)")
    parser.add_argument("--device", nargs="+", default=None, help="one or more; runs are spread over them")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, in worker processes")
    parser.add_argument("--start-deadline", type=float, default=None, metavar="SECONDS",
                        help="start no run after this many seconds (those started finish): for time-limited calls")
    parser.add_argument("--end-deadline", type=float, default=None, metavar="SECONDS",
                        help="start no job expected to end after this many seconds (from the seconds recorded in "
                             "--out for the same setting, model, optimizer and job size); a cheaper one that fits "
                             "starts instead, and a job with no record starts until --start-deadline")
    parser.add_argument("--backend", default=None, help="attention backend (default: triton on CUDA, else torch)")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile (CUDA graphs on a GPU); same results, fewer launches")
    parser.add_argument("--batch-sweep", action="store_true",
                        help="train a setting's sweep points as one batched model (torch.func.vmap): one "
                             "kernel launch per step for all of them, each run's arithmetic unchanged")
    parser.add_argument("--batch-max-seq-len", type=int, default=None, metavar="N",
                        help="with --batch-sweep: batch only settings of at most N positions; longer ones train "
                             "one run per job (they are bound by arithmetic, not launches)")
    parser.add_argument("--out", type=Path, required=True, help="JSONL of results (appended; resumable)")
    parser.add_argument("--costs-from", type=Path, nargs="+", default=[], metavar="JSONL",
                        help="other results files whose recorded seconds also price jobs for --end-deadline and "
                             "--estimate (e.g. the protocol's file, for a new sweep in a file of its own); their "
                             "runs are neither skipped nor tabled")
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    parser.add_argument("--by-lr", action="store_true",
                        help="with --table: each setting's best accuracy at each lr instead (is the sweep wide enough?)")
    parser.add_argument("--estimate", action="store_true",
                        help="only print what is pending and its cost, from the seconds recorded in --out")
    args = parser.parse_args(argv)
    given = {name for name in RUN_DEFAULTS if getattr(args, name) is not None}
    for name, default in RUN_DEFAULTS.items():
        if name not in given:
            setattr(args, name, default)
    if args.batch_sweep and args.compile:
        parser.error("--batch-sweep and --compile cannot be combined (a batched sweep trains eagerly)")
    if args.batch_max_seq_len is not None and not args.batch_sweep:
        parser.error("--batch-max-seq-len only applies with --batch-sweep")
    if args.by_lr and not args.table:
        parser.error("--by-lr only applies with --table")
    records = _read_records(args.out)
    repeated = [key for key, n in Counter(map(run_key, records)).items() if n > 1]
    if repeated:
        # a setting's score is its best run: a run recorded twice would count its better copy
        parser.error(f"--out {args.out} records {len(repeated)} runs twice (the first: {repeated[0]}); "
                     "keep one line of each")
    for path in args.costs_from:
        if not path.is_file():
            parser.error(f"--costs-from {path} does not exist")
    settings = all_settings(args.tasks, args.baseline_only)
    if args.settings:
        names = {st.name for st in settings}
        unknown = [n for n in args.settings if n not in names]
        if unknown:
            parser.error(f"--settings {unknown} are not among the chosen tasks' settings: {sorted(names)}")
        settings = [st for st in settings if st.name in args.settings]
    if args.max_seq_len is not None:
        settings = [st for st in settings if st.seq_len <= args.max_seq_len]
    if args.table and (args.tasks or args.baseline_only or args.settings or args.max_seq_len is not None):
        # the table of the chosen settings only: e.g. one file's runs on the settings another file has reached
        chosen = {st.name for st in settings}
        records = [r for r in records if r["setting"] in chosen]
    if args.table and given:
        # and of the chosen runs only: e.g. two lrs that every setting has, or one optimizer
        allowed = {"optimizer": args.optimizer, "lrs": args.lrs, "wds": args.wds, "epochs": [args.epochs]}
        records = [r for r in records if all(r[RUN_FIELDS[name]] in allowed[name] for name in given)]
    if not args.table:
        # the seconds that price pending jobs: this file's runs, and those of --costs-from
        priced = records + [r for path in args.costs_from for r in _read_records(path)]
        import torch
        from dataclasses import replace

        devices = args.device or ["cuda" if torch.cuda.is_available() else "cpu"]
        backend = args.backend or ("triton" if devices[0].startswith("cuda") else "torch")
        done = {run_key(r) for r in records}
        if args.max_train_examples:
            settings = [replace(s, num_train_examples=min(s.num_train_examples, args.max_train_examples),
                                num_test_examples=min(s.num_test_examples, args.max_train_examples)) for s in settings]
        runs = [MADRun(attention=attention, optimizer=optimizer, lr=lr, weight_decay=wd, epochs=args.epochs,
                       seed=args.seed, backend=backend, compile=args.compile)
                for optimizer in args.optimizer for lr, wd in itertools.product(args.lrs, args.wds)
                for attention in args.attention]
        pending = plan(settings, runs, done, devices)
        if args.estimate:
            text = estimate(pending, priced)
            print(text)
            return text
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.batch_sweep:
            pending = batch_sweeps(pending, devices, args.batch_max_seq_len)
        claims = RunClaims(args.out, lambda: set(map(run_key, _read_records(args.out))))
        try:
            for result in _train_all(pending, args.jobs, args.start_deadline, args.batch_sweep, args.end_deadline,
                                     recorded_costs(priced), claims):
                records.append(result)
                _append_line(args.out, json.dumps(result))
        finally:
            claims.release()
    text = lr_table(records) if args.by_lr else table(records)
    print(text)
    return text


if __name__ == "__main__":
    main()
