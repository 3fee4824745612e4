"""Training throughput of the paper's variants, one after another in one run of this script.

    python scripts/bench_train.py --size 0.6B --optimizer muon --nproc 1 --steps 20 \
        -- --training.dataset embedded_en --training.dataset_path ./parallax_titan/assets/embedded_en/train \
        --model.hf_assets_path ./parallax_titan/assets/tokenizer

For each variant (Transformer, Parallax, parameter-matched Transformer, compute-matched Parallax) it
launches `configs/<size>_<variant>_<optimizer>.toml` through torchrun for --steps steps with the
overrides after `--`, reads the run's metrics.jsonl and reports the medians over the steps after
--warmup: tokens/s per GPU, MFU (torchtitan's, with this repo's FLOPs per token, which count Parallax's
attention), step time, peak reserved memory, and the step time relative to the Transformer's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from parallax_titan.launch import LAUNCHERS, split_overrides, train

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("transformer", "parallax", "transformer-param-matched", "parallax-compute-matched")


def summarise(metrics_file: Path, warmup: int) -> dict[str, float]:
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "throughput(tps)" in r and r["step"] > warmup]
    if not steps:
        raise SystemExit(f"{metrics_file}: no training records after step {warmup}")

    def median(key):
        return statistics.median(r[key] for r in steps)

    return {
        "steps": len(steps),
        "tokens_per_s": median("throughput(tps)"),
        "mfu": median("mfu(%)") if all("mfu(%)" in r for r in steps) else None,  # None: peak unknown (CPU)
        "step_time": median("time_metrics/end_to_end(s)"),
        "memory_gib": max(r["memory/max_reserved(GiB)"] for r in steps),
        "loss": steps[-1]["loss_metrics/global_avg_loss"],
    }


def launch(config: Path, dump: Path, steps: int, nproc: int, launcher: str, extra: list[str]) -> Path:
    overrides = ["--job.dump_folder", str(dump), "--training.steps", str(steps), "--metrics.log_freq", "1",
                 "--checkpoint.no-enable", "--validation.no-enable", "--diagnostics.interval", "0", *extra]
    log = dump.parent / f"{dump.name}.log"  # not with_suffix: '0.6B_...' has a dot
    rc = train(config, overrides, nproc, launcher, log)
    if rc != 0:
        raise SystemExit(f"{config.name}: training exited with {rc}; see {log}")
    return dump / "metrics.jsonl"


def table(results: dict[str, dict[str, float]], baseline: str) -> str:
    base = results.get(baseline)
    lines = ["| run | tokens/s per GPU | MFU | step time | step time / " + baseline + " | peak memory |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        ratio = f"{r['step_time'] / base['step_time']:.2f}x" if base else "-"
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1f}%"
        lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {mfu} | {r['step_time']:.3f} s | {ratio} | "
                     f"{r['memory_gib']:.1f} GiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    own, extra = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="0.6B")
    parser.add_argument("--optimizer", default="muon", choices=["muon", "adamw"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--configs", nargs="+", type=Path, default=None,
                        help="explicit TOMLs instead of --size/--variants/--optimizer")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the medians (compile, warm-up)")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--launcher", choices=LAUNCHERS, default="torchrun")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_train")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(own)
    configs = args.configs or [REPO / "configs" / f"{args.size}_{v}_{args.optimizer}.toml" for v in args.variants]
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise SystemExit(f"configs not found: {missing}")
    results = {}
    for config in configs:
        metrics = launch(config, args.out / config.stem, args.steps, args.nproc, args.launcher, extra)
        results[config.stem] = summarise(metrics, args.warmup)
    baseline = next((name for name in results if "_transformer_" in f"_{name}_"), next(iter(results)))
    text = table(results, baseline)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "extra_args": extra, "nproc": args.nproc}, indent=1))
    return results


if __name__ == "__main__":
    main()
