"""Bar chart of a MAD results JSONL (eval/mad/run.py): each model's score per task and on average, over
the runs every model of the same optimizer has (the table's numbers), with the paper's reported scores marked
where it gives them. --by-lr draws instead one panel per setting: each model's best accuracy (over weight
decays) at each lr, to see where each model's best lr lies and whether the sweep reaches it.

    python scripts/plot_mad.py docs/runs/mad-reduced-protocol-2026-12-01/mad_protocol.jsonl --out docs/plots/mad_reduced.png \
        --title "MAD, reduced protocol: 10 epochs, lr 1e-3, wd 0 (H200)" [--optimizer adamw] [--by-lr]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.mad.run import SHORT, best_by_lr, common_runs, scores  # noqa: E402
from eval.mad.tasks import PROTOCOL  # noqa: E402

# The Parallax paper's MAD scores (full protocol): the tasks it reports on their own, and the six-task average
PAPER = {"parallax": {"in-context-recall": 0.951, "noisy-in-context-recall": 0.937, "selective-copying": 0.988,
                      "average": 0.716},
         "softmax": {"in-context-recall": 0.803, "noisy-in-context-recall": 0.861, "selective-copying": 0.950,
                     "average": 0.672}}
LABEL = {"parallax": "Parallax", "softmax": "Transformer"}


def draw_by_lr(records: list[dict], out: Path, title: str) -> dict:
    """One panel per setting, accuracy against lr (log scale), a line per model and optimizer; returns
    {setting: {model label: {lr: accuracy drawn}}}."""
    best = best_by_lr(records)
    settings = sorted({setting for setting, _, _ in best})
    columns = min(6, len(settings))
    rows = -(-len(settings) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.2 * rows + 0.6), squeeze=False,
                             sharex=True, sharey=True)
    drawn: dict[str, dict] = {}
    for ax, setting in zip(axes.flat, settings):
        for (name, attention, optimizer), accs in sorted(best.items()):
            if name != setting:
                continue
            lrs = sorted(accs)
            label = f"{LABEL.get(attention, attention)} ({optimizer})"
            ax.plot(lrs, [accs[lr] for lr in lrs], marker="o", markersize=3, label=label)
            drawn.setdefault(setting, {})[label] = {lr: accs[lr] for lr in lrs}
        ax.set_xscale("log")
        ax.set_title(setting.replace("[", "\n["), fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    axes[0, 0].set_ylim(0, 1.05)
    axes[0, 0].legend(fontsize=6)
    fig.supxlabel("lr", fontsize=8)
    fig.supylabel("test accuracy (best over weight decays)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # keep the top 0.4 inch for the title
    fig.savefig(out, dpi=150)
    return drawn


def main(argv: list[str] | None = None) -> dict:
    """Draws the chart; returns {model label: {task: value drawn}}."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="PNG")
    parser.add_argument("--title", default=None)
    parser.add_argument("--optimizer", nargs="+", default=None,
                        help="draw only these optimizers' runs (default: every optimizer in the file)")
    parser.add_argument("--by-lr", action="store_true", help="accuracy against lr, a panel per setting")
    args = parser.parse_args(argv)
    records = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    if not records:
        parser.error(f"{args.jsonl} holds no MAD runs")
    if args.optimizer:
        records = [r for r in records if r["optimizer"] in args.optimizer]
        if not records:
            parser.error(f"{args.jsonl} holds no run with --optimizer {args.optimizer}")
    if args.by_lr:
        drawn = draw_by_lr(common_runs(records), args.out, args.title or args.jsonl.name)
        print(f"wrote {args.out}")
        return drawn
    results = scores(common_runs(records))
    tasks = [t for t in PROTOCOL if any(t in r for r in results.values())] + ["average"]
    models = sorted(results)
    width = 0.8 / len(models)
    drawn = {}
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2, 4))
    x = np.arange(len(tasks))
    for i, (attention, optimizer) in enumerate(models):
        values = [results[(attention, optimizer)].get(t, np.nan) for t in tasks]
        offset = x - 0.4 + width * (i + 0.5)
        label = f"{LABEL.get(attention, attention)} ({optimizer})"
        ax.bar(offset, values, width, label=label)
        drawn[label] = dict(zip(tasks, values))
        paper = PAPER.get(attention, {})
        marks = [paper.get(t, np.nan) for t in tasks]
        ax.scatter(offset, marks, marker="_", s=400, color="black", zorder=3,
                   label="paper (full protocol)" if i == 0 else None)
    ax.set_xticks(x, [SHORT.get(t, t) for t in tasks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy (mean over settings)")
    ax.set_title(args.title or args.jsonl.name)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")
    return drawn


if __name__ == "__main__":
    main()
