"""Heat maps of a bench_decode.py JSON: each Parallax kernel's decode time over the fastest softmax
peer, and over fla's Parallax decode, per (batch, cache length) cell. (JSONs written before the CuTe
kernel hold the Triton kernel's ratios as plain numbers.)

    python scripts/plot_decode.py docs/runs/bench-decode-2026-11-23/bench_decode.json --out docs/plots/decode_heatmap.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def value(row, key, kernel):
    v = row.get(key)
    return v.get(kernel) if isinstance(v, dict) else (v if kernel == "triton" else None)


def kernels(rows) -> list[str]:
    ratios = rows[0]["ratio_to_fastest_softmax"]
    return list(ratios) if isinstance(ratios, dict) else ["triton"]


def grid(rows, key, kernel):
    batches = sorted({r["B"] for r in rows})
    lengths = sorted({r["L"] for r in rows})
    values = np.full((len(batches), len(lengths)), np.nan)
    for r in rows:
        if value(r, key, kernel) is not None:
            values[batches.index(r["B"]), lengths.index(r["L"])] = value(r, key, kernel)
    return batches, lengths, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = json.load(open(args.json))
    panels = [(key, kernel, f"Parallax ({kernel}) / {peer}") for kernel in kernels(data["rows"])
              for key, peer in (("ratio_to_fastest_softmax", "fastest softmax decode"),
                                ("ratio_to_fla", "fla Parallax decode"))]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, kernel, title) in zip(axes[0], panels):
        batches, lengths, values = grid(data["rows"], key, kernel)
        im = ax.imshow(values, cmap="RdYlGn_r", vmin=0.0 if key == "ratio_to_fla" else 0.8,
                       vmax=1.2 if key == "ratio_to_fla" else 1.6)
        for i in range(len(batches)):
            for j in range(len(lengths)):
                text = "skipped" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [str(x) for x in lengths])
        ax.set_yticks(range(len(batches)), [str(x) for x in batches])
        ax.set_xlabel("cache length L")
        ax.set_ylabel("batch B")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{data['device']}: one decode step, H=16, Hkv=8, D=128, bf16 (below 1 is faster)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
