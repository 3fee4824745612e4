"""Where a training step's GPU time goes: GPU kernel time by category and by kernel, from torch.profiler traces.

    python scripts/trace_summary.py RUN/profile_traces/iteration_6/rank0_trace.json [OTHER_TRACE ...] \
        --labels parallax transformer [--top 25]

Reads the Chrome traces torchtitan writes under `[profiling] enable_profiling` (one profiled step each), sums
the duration of every GPU kernel, memcpy and memset event by category and by name, and prints one table
of categories with a column per trace (ms per profiled step), then each trace's top kernels. With two or more
traces the category table adds each trace's difference from the first: where one model's step is longer than
another's. Kernel time on one stream is not the step's wall time: the table also gives the span from the first
kernel's start to the last kernel's end and the time inside it with no kernel running (host gaps, launch
latency). For that idle time the script then names the host ops that launched the kernel ending each gap (the
runtime or driver call with the kernel's correlation id, and the CPU ops around it on its thread) and how much of
it the GPU spent waiting for a launch that had not yet been made.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

# First match wins; the names are those of the kernels the project's training steps launch. Inductor's pointwise
# and reduction kernels come before attention: they are named after the ops they fuse, which can be the attention
# op whose inputs they prepare (`triton_per_fused__scaled_dot_product_cudnn_attention_...`).
CATEGORIES = (
    ("parallax attention, CuTe", r"ParallaxAttention"),
    # the Triton kernels' function names (the backward's `_bwd_dkdv` runs as the autotuned _bwd_dkdv_kernel and
    # _bwd_fused_kernel; a trace names the function)
    ("parallax attention, Triton",
     r"^_(fwd_kernel|bwd_dkdv|bwd_dqdr_kernel|bwd_preprocess_kernel|statistics_kernel|tiles_kernel)$"),
    ("Inductor fused (elementwise, norms, RoPE)", r"^triton_(poi|per|red)_"),
    ("softmax attention (cuDNN, flash, flex)", r"cudnn|flash|fmha|sdpa|flex_attention"),
    ("matmul", r"gemm|nvjet|xmma|cutlass|cublas|sm90_|ampere_|splitK|^triton_tem_fused_(add)?b?mm"),
    ("collectives (NCCL)", r"nccl"),
    ("copies and fills", r"[Cc]opy|Memcpy|Memset|[Ff]ill|CatArray"),
    ("other elementwise and reductions (eager)", r"elementwise|reduce|vectorized|Reduce|softmax|norm"),
)
_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
GPU_EVENTS = ("kernel", "gpu_memcpy", "gpu_memset")  # what runs on the GPU's streams in a torch.profiler trace


def category(kernel: str) -> str:
    for name, pattern in _COMPILED:
        if pattern.search(kernel):
            return name
    return "other"


def trace_events(trace: Path) -> list[dict]:
    try:
        data = json.loads(trace.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{trace}: not a readable Chrome trace ({err})") from None
    events = data.get("traceEvents") if isinstance(data, dict) else None
    if events is None:
        raise SystemExit(f"{trace}: no 'traceEvents' list; expected a torch.profiler Chrome trace")
    return events


def kernel_events(events: list[dict], trace: Path) -> list[dict]:
    kernels = [e for e in events if e.get("cat") in GPU_EVENTS and e.get("ph") == "X" and "dur" in e]
    if not kernels:
        raise SystemExit(f"{trace}: no GPU kernel events (was the profile taken on a GPU with CUDA activity?)")
    return kernels


def summarise(trace: Path) -> dict:
    events = trace_events(trace)
    kernels = kernel_events(events, trace)
    by_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_category: dict[str, float] = defaultdict(float)
    for e in kernels:
        us = float(e["dur"])
        by_kernel[e["name"]][0] += us
        by_kernel[e["name"]][1] += 1
        by_category[category(e["name"])] += us
    # busy time: the union of kernel intervals (kernels on several streams may overlap); each gap in it is kept
    # with the kernel that ends it
    ordered = sorted(kernels, key=lambda e: float(e["ts"]))
    busy, cur_start = 0.0, float(ordered[0]["ts"])
    cur_end = cur_start + float(ordered[0]["dur"])
    gaps = []  # (idle from, idle to, the kernel starting at the end)
    for e in ordered[1:]:
        start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        if start > cur_end:
            busy += cur_end - cur_start
            gaps.append((cur_end, start, e))
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    span = cur_end - float(ordered[0]["ts"])
    return {"kernels": dict(by_kernel), "categories": dict(by_category), "span": span, "busy": busy,
            "total": sum(by_category.values()), "idle": idle_causes(events, gaps)}


HOST_OP_CATS = ("cpu_op", "user_annotation", "python_function")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
SKIPPED_HOST_OPS = re.compile(r"^ProfilerStep#")  # encloses everything in the step: says nothing


def idle_causes(events: list[dict], gaps: list[tuple]) -> dict[str, list[float]]:
    """Per host-op path ("outer > inner", the innermost three CPU ops around the launch call), the gaps ended by a
    kernel that path launched: [gaps, idle us, idle us spent before the launch call began (the GPU waited on the
    host)]. Gaps whose kernel has no launch call in the trace go to "(launch not in the trace)"; a launch with no CPU
    op around it (a trace without the host's ops, `[profiling] host_ops = false`) goes by its kernel's category."""
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {})}
    wanted = []  # (launch event, gap, the kernel ending it) for gaps whose launch is known
    causes: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for idle_from, idle_to, kernel in gaps:
        launch = launches.get(kernel.get("args", {}).get("correlation"))
        if launch is None:
            cause = causes["(launch not in the trace)"]
            cause[0] += 1
            cause[1] += idle_to - idle_from
        else:
            wanted.append((launch, idle_from, idle_to, kernel))
    # the CPU ops enclosing each launch call, per thread: one sweep over the ops sorted by start (outer first)
    threads: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in HOST_OP_CATS and "dur" in e and not SKIPPED_HOST_OPS.match(e["name"]):
            threads[(e.get("pid"), e.get("tid"))].append(e)
    for ops in threads.values():
        ops.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
    queries: dict[tuple, list] = defaultdict(list)
    for item in wanted:
        queries[(item[0].get("pid"), item[0].get("tid"))].append(item)
    for thread, items in queries.items():
        ops, i, stack = threads.get(thread, []), 0, []
        for launch, idle_from, idle_to, kernel in sorted(items, key=lambda item: float(item[0]["ts"])):
            t = float(launch["ts"])
            while i < len(ops) and float(ops[i]["ts"]) <= t:
                stack.append(ops[i])
                i += 1
            stack = [op for op in stack if float(op["ts"]) + float(op["dur"]) >= t]
            path = (" > ".join(op["name"] for op in stack[-3:])
                    or f"(no CPU op around the launch) > {category(kernel['name'])}")
            cause = causes[path]
            cause[0] += 1
            cause[1] += idle_to - idle_from
            cause[2] += max(0.0, min(t, idle_to) - idle_from)
    return dict(causes)


def category_table(summaries: list[dict], labels: list[str]) -> str:
    names = [name for name, _ in CATEGORIES] + ["other"]
    head = "| category | " + " | ".join(f"{label} (ms)" for label in labels)
    head += "".join(f" | {label} - {labels[0]}" for label in labels[1:]) + " |"
    lines = [head, "|---" + "|---:" * (2 * len(labels) - 1) + "|"]

    def row(title: str, values: list[float]) -> str:
        cells = [f"{v / 1e3:.1f}" for v in values] + [f"{(v - values[0]) / 1e3:+.1f}" for v in values[1:]]
        return f"| {title} | " + " | ".join(cells) + " |"

    for name in names:
        values = [s["categories"].get(name, 0.0) for s in summaries]
        if any(values):
            lines.append(row(name, values))
    lines.append(row("**all kernels**", [s["total"] for s in summaries]))
    lines.append(row("first kernel start to last kernel end", [s["span"] for s in summaries]))
    lines.append(row("no kernel running inside that span", [s["span"] - s["busy"] for s in summaries]))
    return "\n".join(lines)


def kernel_table(summary: dict, top: int, width: int = 90) -> str:
    lines = ["| kernel | category | calls | ms | share |", "|---|---|---:|---:|---:|"]
    ranked = sorted(summary["kernels"].items(), key=lambda kv: -kv[1][0])
    for name, (us, calls) in ranked[:top]:
        short = name if len(name) <= width else name[: width - 3] + "..."
        lines.append(f"| `{short}` | {category(name)} | {calls} | {us / 1e3:.2f} | {us / summary['total']:.1%} |")
    return "\n".join(lines)


def idle_table(summary: dict, top: int, width: int = 110) -> str:
    lines = ["| host ops around the launch of the kernel after the gap (outer > inner) | gaps | idle ms | "
             "of which before the launch call |", "|---|---:|---:|---:|"]
    ranked = sorted(summary["idle"].items(), key=lambda kv: -kv[1][1])
    for path, (count, us, waiting) in ranked[:top]:
        short = path if len(path) <= width else "..." + path[-(width - 3):]
        lines.append(f"| `{short}` | {count} | {us / 1e3:.2f} | {waiting / 1e3:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+", default=None, help="one name per trace (default: the file names)")
    parser.add_argument("--top", type=int, default=20, help="kernels listed per trace")
    args = parser.parse_args(argv)
    labels = args.labels or [t.stem for t in args.traces]
    if len(labels) != len(args.traces):
        parser.error(f"--labels has {len(labels)} names for {len(args.traces)} traces")
    summaries = [summarise(t) for t in args.traces]
    print("GPU kernel time per profiled step, by category\n")
    print(category_table(summaries, labels))
    for label, summary in zip(labels, summaries):
        print(f"\n{label}: top kernels\n")
        print(kernel_table(summary, args.top))
    for label, summary in zip(labels, summaries):
        print(f"\n{label}: GPU idle time by the host ops that launched the kernel ending each gap\n")
        print(idle_table(summary, args.top))


if __name__ == "__main__":
    main()
