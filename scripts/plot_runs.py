"""Compare runs: loss / perplexity against tokens, the difference to a baseline, and diagnostics per layer.

    python scripts/plot_runs.py outputs/0.6B_transformer_muon outputs/0.6B_parallax_muon \
        --labels Transformer Parallax --baseline Transformer --out docs/plots/ladder

Each run is a dump folder. Its metrics come from `metrics.jsonl` (written by this repo's metrics processor)
or, failing that, TensorBoard event files under it (then tokens = step x --tokens-per-step). Writes
<out>.png and <out>.svg with three panels: training loss (EMA-smoothed, --smooth) and held-out
validation loss against tokens; each run's difference to the baseline on the baseline's token grid;
the last logged value of a diagnostic (--diagnostic, default cor) per layer.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

plt.rcParams["svg.fonttype"] = "none"  # keep SVG text as text (searchable, editable)

TRAIN_KEY = "loss_metrics/global_avg_loss"
VALIDATION_KEY = "validation_metrics/loss"


@dataclass
class Run:
    label: str
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> (tokens, values)


def read_jsonl(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    points: dict[str, list[tuple[float, float]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        tokens = record.get("tokens", record["step"])
        for key, value in record.items():
            if key not in ("step", "tokens"):
                points.setdefault(key, []).append((tokens, value))
    return {k: _sorted(v) for k, v in points.items()}


def read_tensorboard(folder: Path, tokens_per_step: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[str, list[tuple[float, float]]] = {}
    for events in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            points.setdefault(tag, []).extend((e.step * tokens_per_step, e.value) for e in acc.Scalars(tag))
    return {k: _sorted(v) for k, v in points.items()}


def _sorted(pairs):
    pairs = sorted(dict(pairs).items())  # later records of a step win (resumed runs)
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)


def load_run(folder: Path, label: str, tokens_per_step: int | None) -> Run:
    jsonl = folder / "metrics.jsonl"
    if jsonl.is_file():
        return Run(label, read_jsonl(jsonl))
    if any(folder.rglob("events.out.tfevents.*")):
        if tokens_per_step is None:
            raise SystemExit(f"{folder} has only TensorBoard logs: give --tokens-per-step to plot against tokens")
        return Run(label, read_tensorboard(folder, tokens_per_step))
    raise SystemExit(f"{folder}: neither metrics.jsonl nor TensorBoard event files found")


def ema(values: np.ndarray, alpha: float) -> np.ndarray:
    if alpha <= 0:
        return values
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = alpha * acc + (1 - alpha) * v
        out[i] = acc
    return out


def layer_values(run: Run, name: str) -> tuple[list[int], list[float]]:
    pattern = re.compile(rf"diagnostics/{re.escape(name)}/layer(\d+)$")
    found = sorted((int(m.group(1)), vals[-1]) for key, (_, vals) in run.series.items() if (m := pattern.match(key)))
    return [f[0] for f in found], [f[1] for f in found]


def plot(runs: list[Run], baseline: str, out: Path, smooth: float, diagnostic: str, perplexity: bool) -> list[Path]:
    base = next((r for r in runs if r.label == baseline), None)
    if base is None:
        raise SystemExit(f"--baseline {baseline!r} is not one of the labels {[r.label for r in runs]}")
    fig, (ax_loss, ax_diff, ax_diag) = plt.subplots(1, 3, figsize=(16, 4.6))
    transform = np.exp if perplexity else (lambda x: x)
    ylabel = "perplexity" if perplexity else "loss (nats/token)"
    for i, run in enumerate(runs):
        color = f"C{i}"
        if TRAIN_KEY in run.series:
            x, y = run.series[TRAIN_KEY]
            ax_loss.plot(x, transform(ema(y, smooth)), color=color, lw=1.2, label=f"{run.label} train")
        if VALIDATION_KEY in run.series:
            x, y = run.series[VALIDATION_KEY]
            ax_loss.plot(x, transform(y), color=color, ls="--", marker="o", ms=3, label=f"{run.label} held-out")
        for key, style in ((TRAIN_KEY, "-"), (VALIDATION_KEY, "--")):
            if run is base or key not in run.series or key not in base.series:
                continue
            bx, by = base.series[key]
            x, y = run.series[key]
            if key == TRAIN_KEY:
                by, y = ema(by, smooth), ema(y, smooth)
            inside = (bx >= x.min()) & (bx <= x.max())
            if inside.any():
                diff = transform(np.interp(bx[inside], x, y)) - transform(by[inside])
                ax_diff.plot(bx[inside], diff, color=color, ls=style,
                             label=f"{run.label} − {baseline} ({'train' if key == TRAIN_KEY else 'held-out'})")
        layers, values = layer_values(run, diagnostic)
        if layers:
            ax_diag.plot(layers, values, color=color, marker="o", label=run.label)
    ax_loss.set(xlabel="tokens", ylabel=ylabel, title="loss against tokens")
    ax_diff.axhline(0, color="gray", lw=0.8)
    ax_diff.set(xlabel="tokens", ylabel=f"Δ {ylabel}", title=f"difference to {baseline} (below 0 is better)")
    ax_diag.set(xlabel="layer", ylabel=diagnostic, title=f"{diagnostic} per layer (last logged)")
    return save_figure(fig, out)


def save_figure(fig, out: Path) -> list[Path]:
    """Grid and legend on every panel, then <out>.png and <out>.svg."""
    for ax in fig.axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="dump folders")
    parser.add_argument("--labels", nargs="+", default=None, help="default: folder names")
    parser.add_argument("--baseline", default=None, help="label of the run to subtract (default: the first)")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--smooth", type=float, default=0.9, help="EMA factor for training loss (0: none)")
    parser.add_argument("--diagnostic", default="cor")
    parser.add_argument("--perplexity", action="store_true", help="plot exp(loss)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="for TensorBoard-only runs")
    args = parser.parse_args(argv)
    labels = args.labels or [p.name for p in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"{len(labels)} labels for {len(args.runs)} runs")
    runs = [load_run(p, label, args.tokens_per_step) for p, label in zip(args.runs, labels)]
    paths = plot(runs, args.baseline or labels[0], args.out, args.smooth, args.diagnostic, args.perplexity)
    print("wrote " + ", ".join(str(p) for p in paths))
    return paths


if __name__ == "__main__":
    main()
