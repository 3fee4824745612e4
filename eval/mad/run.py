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
--estimate prints what is still pending and roughly how long it takes, from the seconds the file records
for the same settings and models. The table also counts, per model, the settings whose best run sits at
the sweep's largest lr: many mean the sweep may stop short of the best lr. --table --by-lr prints each setting's best at each lr.

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
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from eval.mad.tasks import PROTOCOL, all_settings
from eval.mad.train import MADRun, train_setting, train_sweep
from parallax_titan.model.attention import attention_names

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
    before the next starts, and every setting at the first points rather than some fully swept and others
    not at all.
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


def seconds_per_epoch(records: list[dict]) -> dict[tuple[str, str], float]:
    """(setting, attention) -> mean seconds one run took per epoch, over the recorded runs of any optimizer
    and sweep point (a step costs about the same under either optimizer); a batched job's seconds, which
    each of its records carries, are shared among its runs."""
    per_epoch: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        per_epoch[(r["setting"], r["attention"])].append(r["seconds"] / r["epochs"] / r.get("batched_runs", 1))
    return {key: sum(v) / len(v) for key, v in per_epoch.items()}


def estimate(pending: list[tuple], records: list[dict]) -> str:
    """The pending runs per optimizer and sweep point, and their run-minutes at the recorded seconds per epoch
    (seconds_per_epoch) of the same setting and model."""
    costs = seconds_per_epoch(records)
    points: dict[tuple, list] = {}
    for setting, run, _ in pending:
        point = points.setdefault((run.optimizer, run.lr, run.weight_decay), [0, 0.0, 0])
        point[0] += 1
        if (setting.name, run.attention) in costs:
            point[1] += costs[(setting.name, run.attention)] * run.epochs
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
    launches, so batching only makes their jobs longer."""
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


def _train_all(pending: list, jobs: int, batched: bool = False):
    """Yields each run's result as it ends: in order in this process, or from `jobs` worker processes
    ("spawn": CUDA cannot be forked), each given its next job as it finishes one. A job is one run, or
    with `batched` one batch_sweeps() group."""
    train = _group if batched else _one
    if jobs <= 1:
        for job in pending:
            yield from train(*job)
        return
    queue = list(pending)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = set()
        while queue or running:
            while len(running) < jobs and queue:
                running.add(pool.submit(train, *queue.pop(0)))
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                yield from future.result()


# the flags that choose runs (what trains, or with --table what is tabled), their defaults and record fields
RUN_DEFAULTS = {"optimizer": ["adamw"], "lrs": [1e-4, 5e-4, 1e-3], "wds": [0.0, 0.1], "epochs": 200}
RUN_FIELDS = {"optimizer": "optimizer", "lrs": "lr", "wds": "weight_decay", "epochs": "epochs"}


def _read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _append_line(path: Path, line: str) -> None:
    """One record, written and flushed as its run ends: a run interrupted later loses nothing recorded."""
    with open(path, "a") as f:
        f.write(line + "\n")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", nargs="+", default=["softmax", "parallax"], choices=attention_names())
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
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    parser.add_argument("--by-lr", action="store_true",
                        help="with --table: each setting's best accuracy at each lr instead (is the sweep wide enough?)")
    parser.add_argument("--estimate", action="store_true",
                        help="only print what is pending and its run-minutes, from the seconds recorded in --out")
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
            text = estimate(pending, records)
            print(text)
            return text
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.batch_sweep:
            pending = batch_sweeps(pending, devices, args.batch_max_seq_len)
        for result in _train_all(pending, args.jobs, args.batch_sweep):
            records.append(result)
            _append_line(args.out, json.dumps(result))
    text = lr_table(records) if args.by_lr else table(records)
    print(text)
    return text


if __name__ == "__main__":
    main()
