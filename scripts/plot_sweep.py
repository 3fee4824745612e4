"""Held-out loss against a swept value, one line per config; beside it each config's held-out curve at its best value.

    python scripts/plot_sweep.py outputs/mini20M_*_muon/optimizer.lr=* --out docs/plots/mini20M_lr_muon

Each run folder is named <section.key>=<value> inside its config's dump folder, the layout `scripts/ablate.py
--sweep` writes, and holds the perplexity.json of eval/perplexity.py (ablate.py writes it). Prints a markdown
table: one row per config, its held-out loss at each value, its best in bold, and whether that best is at either
end of the values it ran (then the sweep may stop short of the best). A config compared at one untuned lr may look
ahead only because it learns faster at that lr (docs/results.md). Seeds (<...>.seed=<n>) are repeats, so their
table gives each config's mean and spread instead, and the figure every seed's curve.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.plot_runs import VALIDATION_KEY, read_jsonl, save_figure  # noqa: E402

plt.rcParams["svg.fonttype"] = "none"


@dataclass(frozen=True)
class SweepRun:
    config: str  # the config's dump folder name: the swept run's parent
    key: str
    value: str
    loss: float
    folder: Path
    metrics: dict = field(default_factory=dict, compare=False)  # its metrics.jsonl, read once ({} if none)
    data_sha256: str = ""  # which held-out data: perplexity.json's digest of the evaluated tokens ("" in older files)
    tokens: int = 0  # how many tokens it evaluated (0 if not recorded)


def read_run(folder: Path) -> SweepRun:
    key, sep, value = folder.name.partition("=")
    if not sep or not key or not value:
        raise SystemExit(f"{folder}: a swept run's folder is named <section.key>=<value> (scripts/ablate.py --sweep)")
    result = folder / "perplexity.json"
    if not result.is_file():
        raise SystemExit(f"{result}: not found; evaluate the run first (eval/perplexity.py; ablate.py does it)")
    metrics = read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else {}
    evaluated = json.loads(result.read_text())
    # the folder as given, not resolved: a link may stand in for a run trained outside the sweep
    return SweepRun(folder.parent.name, key, value, float(evaluated["loss"]), folder, metrics,
                    evaluated.get("data_sha256", ""), evaluated.get("tokens", 0))


def held_out_note(runs: list[SweepRun]) -> str:
    """A warning when the runs were evaluated on different held-out data (a rebuilt corpus, another
    --max-batches): their losses are then not comparable cell for cell. Empty when they agree.
    Runs are told apart by their digest; an older run without one counts as the digest of the runs that
    evaluated as many tokens, when exactly one digest did (nothing else can tell them apart), and otherwise
    by its token count alone."""
    digests_by_count: dict[int, set[str]] = {}
    for r in runs:
        if r.data_sha256:
            digests_by_count.setdefault(r.tokens, set()).add(r.data_sha256)
    groups: dict[str, list[str]] = {}
    for r in runs:
        same_count = digests_by_count.get(r.tokens, set())
        data = r.data_sha256 or (next(iter(same_count)) if len(same_count) == 1 else "") or \
            (f"{r.tokens:,} tokens" if r.tokens else "")
        if data:
            groups.setdefault(data, []).append(f"{r.config} {r.value}")
    if len(groups) < 2:
        return ""
    return "note: these runs were evaluated on different held-out data; compare across groups with care:\n" + \
        "\n".join(f"  {data[:16]}: {', '.join(names)}" for data, names in groups.items())


def _numeric(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def ordered_values(runs: list[SweepRun]) -> list[str]:
    """Numeric values in increasing order; others in the order first given."""
    values = list(dict.fromkeys(r.value for r in runs))
    return sorted(values, key=float) if _numeric(values) else values


def configs_of(runs: list[SweepRun]) -> list[str]:
    return list(dict.fromkeys(r.config for r in runs))


def best_runs(runs: list[SweepRun]) -> dict[str, SweepRun]:
    return {c: min((r for r in runs if r.config == c), key=lambda r: r.loss) for c in configs_of(runs)}


def seed_sweep(runs: list[SweepRun]) -> bool:
    """Seeds are repeats, not settings: their table gives mean and spread, not a best."""
    return runs[0].key.rpartition(".")[2] == "seed"


def seed_table(runs: list[SweepRun]) -> str:
    values = ordered_values(runs)
    lines = [f"| config \\ {runs[0].key} | {' | '.join(values)} | mean | spread (max - min) |",
             "|---|" + "---:|" * (len(values) + 2)]
    for config in configs_of(runs):
        mine = {r.value: r.loss for r in runs if r.config == config}
        cells = [f"{mine[v]:.4f}" if v in mine else "" for v in values]
        losses = list(mine.values())
        lines.append(f"| {config} | {' | '.join(cells)} | {sum(losses) / len(losses):.4f} | "
                     f"{max(losses) - min(losses):.4f} |")
    return "\n".join(lines)


def sweep_table(runs: list[SweepRun]) -> str:
    if seed_sweep(runs):
        return seed_table(runs)
    values = ordered_values(runs)
    best = best_runs(runs)
    lines = [f"| config \\ {runs[0].key} | {' | '.join(values)} | best | at the sweep's end |",
             "|---|" + "---:|" * (len(values) + 1) + "---|"]
    for config in configs_of(runs):
        mine = {r.value: r for r in runs if r.config == config}
        cells = []
        for v in values:
            cell = f"{mine[v].loss:.4f}" if v in mine else ""
            cells.append(f"**{cell}**" if v == best[config].value else cell)
        ran = [v for v in values if v in mine]
        edge = "yes" if len(ran) > 1 and best[config].value in (ran[0], ran[-1]) else "no"
        lines.append(f"| {config} | {' | '.join(cells)} | {best[config].value} | {edge} |")
    return "\n".join(lines)


def diagnostic_table(runs: list[SweepRun], name: str) -> str:
    """Each run's last-logged `diagnostics/<name>/mean` (the layer mean parallax_titan/diagnostics.py logs), laid
    out as sweep_table; blank where a run logged none."""
    values = ordered_values(runs)
    key = f"diagnostics/{name}/mean"
    lines = [f"| {name} (layer mean, last logged) \\ {runs[0].key} | {' | '.join(values)} |",
             "|---|" + "---:|" * len(values)]
    for config in configs_of(runs):
        mine = {r.value: r.metrics.get(key) for r in runs if r.config == config}
        cells = [f"{mine[v][1][-1]:.3g}" if mine.get(v) is not None else "" for v in values]
        lines.append(f"| {config} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(runs: list[SweepRun], out: Path, title: str | None) -> list[Path]:
    values = ordered_values(runs)
    seeds = seed_sweep(runs)
    numeric = _numeric(values) and not seeds  # seeds are labels: evenly spaced ticks, points not joined
    position = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    best = best_runs(runs)
    # each config's best run's held-out curve; for seeds, every run's (a best seed means nothing)
    shown = runs if seeds else list(best.values())
    curves = {r: r.metrics[VALIDATION_KEY] for r in shown if VALIDATION_KEY in r.metrics}
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(13 if curves else 6.5, 4.6), squeeze=False)
    ax = axes[0][0]
    for i, config in enumerate(configs_of(runs)):
        mine = sorted((position[r.value], r.loss) for r in runs if r.config == config)
        ax.plot([m[0] for m in mine], [m[1] for m in mine], marker="o", color=f"C{i}", label=config,
                linestyle="none" if seeds else "-")
        if not seeds:
            ax.plot(position[best[config].value], best[config].loss, marker="*", ms=14, color=f"C{i}")
    if numeric and min(position.values()) > 0 and max(position.values()) >= 10 * min(position.values()):
        ax.set_xscale("log")  # lrs and the like span decades; seeds do not
    if not numeric:
        ax.set_xticks(range(len(values)), values)
    ax.set(xlabel=runs[0].key, ylabel="held-out loss (nats/token)",
           title="final held-out loss" + ("" if seeds else " (★ each config's best)"))
    if curves:
        ax_curve = axes[0][1]
        color = {config: f"C{i}" for i, config in enumerate(configs_of(runs))}
        for r, (x, y) in curves.items():
            ax_curve.plot(x, y, marker="o", ms=3, color=color[r.config], label=f"{r.config} at {r.key}={r.value}")
        # the first evaluation (at init) would set the scale and flatten the rest
        later = [v for x, y in curves.values() for v in (y[1:] if len(y) > 1 else y)]
        ax_curve.set_ylim(min(later) - 0.05 * (max(later) - min(later) + 1e-9), max(later) * 1.02)
        ax_curve.set(xlabel="tokens", ylabel="held-out loss (nats/token)",
                     title="held-out loss of each run" if seeds else "held-out loss at each config's best")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="swept run folders, <config dump>/<section.key>=<value>")
    parser.add_argument("--out", type=Path, required=True, help="plot path without suffix")
    parser.add_argument("--title", default=None)
    parser.add_argument("--diagnostics", nargs="*", default=[], metavar="NAME",
                        help="also tabulate these diagnostics per run (e.g. sr_wr cor), from metrics.jsonl")
    args = parser.parse_args(argv)
    runs = [read_run(folder) for folder in args.runs]
    keys = sorted({r.key for r in runs})
    if len(keys) > 1:
        raise SystemExit(f"the runs sweep different keys {keys}; plot one key at a time")
    seen = {}
    for r in runs:
        if (r.config, r.value) in seen:
            raise SystemExit(f"{r.folder} and {seen[r.config, r.value]}: the same config and value twice")
        seen[r.config, r.value] = r.folder
    note = held_out_note(runs)
    table = "\n\n".join([sweep_table(runs), *([note] if note else []),
                          *(diagnostic_table(runs, name) for name in args.diagnostics)])
    print(table)
    print("wrote " + ", ".join(str(p) for p in plot(runs, args.out, args.title)))
    return table


if __name__ == "__main__":
    main()
