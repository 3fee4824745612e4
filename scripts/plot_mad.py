"""Bar chart of a MAD results JSONL (eval/mad/run.py): each model's score per task and on average, over
the runs every model of the same optimizer has (the table's numbers), with the paper's reported scores marked
where it gives them.

    python scripts/plot_mad.py docs/runs/mad/mad_protocol.jsonl --out docs/mad_reduced.png \
        --title "MAD, reduced protocol: 10 epochs, lr 1e-3, wd 0 (H200)" [--optimizer adamw]
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
from eval.mad.run import SHORT, common_runs, scores  # noqa: E402
from eval.mad.tasks import PROTOCOL  # noqa: E402

# PAPER.md (MAD, full protocol): the tasks it reports on their own, and the six-task average
PAPER = {"parallax": {"in-context-recall": 0.951, "noisy-in-context-recall": 0.937, "selective-copying": 0.988,
                      "average": 0.716},
         "softmax": {"in-context-recall": 0.803, "noisy-in-context-recall": 0.861, "selective-copying": 0.950,
                     "average": 0.672}}
LABEL = {"parallax": "Parallax", "softmax": "Transformer"}


def main(argv: list[str] | None = None) -> dict:
    """Draws the chart; returns {model label: {task: value drawn}}."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="PNG")
    parser.add_argument("--title", default=None)
    parser.add_argument("--optimizer", nargs="+", default=None,
                        help="draw only these optimizers' runs (default: every optimizer in the file)")
    args = parser.parse_args(argv)
    records = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    if not records:
        parser.error(f"{args.jsonl} holds no MAD runs")
    if args.optimizer:
        records = [r for r in records if r["optimizer"] in args.optimizer]
        if not records:
            parser.error(f"{args.jsonl} holds no run with --optimizer {args.optimizer}")
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
