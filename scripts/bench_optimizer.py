"""Time one optimizer step (Muon vs AdamW, this repo's routing) for a model flavor on one GPU, against
the forward+backward of a training step at seq 4096, in the same run.

    python scripts/bench_optimizer.py [--flavor 0.6B-parallax] [--batch 4] [--backend triton]
    torchrun --nproc_per_node=N scripts/bench_optimizer.py --fsdp     # step time per rank under FSDP2
    python scripts/bench_optimizer.py --mad-sweep [--mad-setting 'selective-copying[baseline]']

--mad-sweep times the optimizer step of a MAD batched sweep (six runs of one setting, eval/mad/train.py
train_sweep) three ways on the same models and gradients: one Muon for all runs (a param group each, so
Newton-Schulz batches across runs: what train_sweep uses), a Muon per run (what it used before), and an
AdamW per run, for reference; then one epoch of train_sweep itself with each Muon layout. It also runs on
CPU (timed with torch.utils.benchmark there; use --backend torch and a small --mad-examples).

With --fsdp the model is sharded with fully_shard (per block, then the root, as torchtitan does),
gradients are random DTensors, and only the optimizer step is timed: the Muon step's cost per rank
should fall (or at least not grow) as ranks grow, since each rank orthogonalises about 1/N of the
matrices.

The model holds fp32 parameters (as FSDP's sharded master weights); forward+backward runs under bf16
autocast, eager (no torch.compile), with the given attention backend. Times are medians of
triton.testing.do_bench.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/ (for --mad-sweep) is not installed

from parallax_titan.job_config import Optimizer as OptimizerExtra
from parallax_titan.model.attention import attention_names
from parallax_titan.model.flavors import FLAVORS
from parallax_titan.model.model import ParallaxQwen3Model
from parallax_titan.optim.builder import MuonAdamWContainer


def optimizer_variants():
    """(label, [optimizer] config) for AdamW, Muon and per-head Muon, this repo's routing."""
    for name, extra in (("AdamW", {}), ("Muon", {}), ("Muon", {"muon_per_head": True})):
        config = SimpleNamespace(name=name, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                                 implementation="foreach", early_step_in_backward=False,
                                 **{**vars(OptimizerExtra()), **extra})
        yield name + (" per-head" if extra else ""), config


def time_optimizer_step(model, config) -> float:
    """Median ms of one step of a fresh container, on random gradients (DTensors under FSDP)."""
    container = MuonAdamWContainer([model], config)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return do_bench(container.step, warmup=3, rep=20, return_mode="median")


def _median_ms(fn) -> float:
    if torch.cuda.is_available():
        return do_bench(fn, warmup=3, rep=50, return_mode="median")
    from torch.utils.benchmark import Timer

    return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.5).median * 1e3


def bench_mad_sweep(args) -> None:
    """A six-run MAD sweep under Muon: the optimizer step (one Muon for all runs vs a Muon per run, and AdamW
    per run for reference, same models and gradients), then whole training steps of train_sweep with each
    of the two Muon layouts (a warm-up epoch, then a timed one)."""
    from eval.mad.tasks import setting_by_name
    from eval.mad.train import (MADRun, build_model, build_per_run_optimizers, build_sweep_optimizers,
                                split_for_muon, train_sweep)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    setting = setting_by_name(args.mad_setting)
    if args.mad_examples:  # the scores are not the point here: a smaller set only shortens the run
        setting = replace(setting, num_train_examples=args.mad_examples, num_test_examples=args.mad_examples)
    points = [(lr, wd) for lr in (1e-4, 5e-4, 1e-3) for wd in (0.0, 0.1)]
    runs = [MADRun(attention=args.mad_attention, optimizer="muon", lr=lr, weight_decay=wd, backend=args.backend,
                   epochs=1) for lr, wd in points]
    members = [build_model(setting, run).to(device) for run in runs]
    for m in members:
        for p in m.parameters():
            p.grad = torch.randn_like(p) * 1e-3
    layouts = {"one Muon for all runs": build_sweep_optimizers, "a Muon per run": build_per_run_optimizers}
    variants = {f"{label} (+ AdamW per run)": build(members, runs) for label, build in layouts.items()}
    variants["AdamW per run"] = build_per_run_optimizers(members, [replace(r, optimizer="adamw") for r in runs])
    times = {label: _median_ms(lambda opts=opts: [o.step() for o in opts]) for label, opts in variants.items()}

    def epoch_seconds(build) -> float:
        quiet = lambda *_: None  # noqa: E731
        train_sweep(setting, runs, device, log=quiet, optimizers_for=build)  # warm-up: first launches, autotuning
        return train_sweep(setting, runs, device, log=quiet, optimizers_for=build)[0]["seconds"]

    steps = -(-setting.num_train_examples // runs[0].batch_size)
    epochs = {label: epoch_seconds(build) for label, build in layouts.items()}
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}; MAD setting {setting.name} ({setting.num_train_examples} examples, {steps} steps of "
          f"{runs[0].batch_size}), {args.mad_attention}, backend {args.backend}, {len(runs)} runs (lr x wd {points}); "
          f"{len(split_for_muon(members[0])[0])} hidden matrices a run; fp32 parameters, bf16 autocast on CUDA")
    reference = times["a Muon per run (+ AdamW per run)"]
    print("| optimizers | step ms (random gradients) | vs a Muon per run |")
    print("|---|---:|---:|")
    for label, ms in times.items():
        print(f"| {label} | {ms:.2f} | {reference / ms:.2f}x |")
    print("| Muon layout | train_sweep epoch s | ms a training step | vs a Muon per run |")
    print("|---|---:|---:|---:|")
    for label, seconds in epochs.items():
        print(f"| {label} | {seconds:.2f} | {1e3 * seconds / steps:.1f} | {epochs['a Muon per run'] / seconds:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", default="0.6B-parallax")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--mad-sweep", action="store_true")
    ap.add_argument("--mad-setting", default="in-context-recall[baseline]")
    ap.add_argument("--mad-attention", default="parallax", choices=attention_names())
    ap.add_argument("--mad-examples", type=int, default=None, help="the setting's train and test sets at this size")
    args = ap.parse_args()
    if args.fsdp:
        return bench_fsdp(args)
    if args.mad_sweep:
        return bench_mad_sweep(args)
    model_args = replace(FLAVORS[args.flavor], max_seq_len=args.seq_len, attention_backend=args.backend)
    with torch.device("cuda"):
        model = ParallaxQwen3Model(model_args)
        with torch.no_grad():
            model.init_weights(buffer_device=torch.device("cuda"))
    tokens = torch.randint(0, model_args.vocab_size, (args.batch, args.seq_len + 1), device="cuda")

    def fwd_bwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()

    train_ms = do_bench(fwd_bwd, warmup=2, rep=10, return_mode="median")
    print(f"device: {torch.cuda.get_device_name()}, flavor {args.flavor}, batch {args.batch} x {args.seq_len}, "
          f"backend {args.backend}, eager bf16 autocast")
    print(f"forward+backward: {train_ms:.1f} ms")
    print("| optimizer | step ms | % of fwd+bwd |")
    print("|---|---:|---:|")
    for label, config in optimizer_variants():
        step_ms = time_optimizer_step(model, config)
        print(f"| {label} | {step_ms:.1f} | {100 * step_ms / train_ms:.1f}% |")


def bench_fsdp(args) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    mesh = init_device_mesh("cuda", (world,))
    with torch.device("cuda"):
        model = ParallaxQwen3Model(replace(FLAVORS[args.flavor], max_seq_len=args.seq_len))
        with torch.no_grad():
            model.init_weights(buffer_device=torch.device("cuda"))
    for block in model.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    rows = [(label, time_optimizer_step(model, config)) for label, config in optimizer_variants()]
    if rank == 0:
        print(f"device: {torch.cuda.get_device_name()} x {world}, flavor {args.flavor}, FSDP2 (fully_shard)")
        print("| optimizer | ranks | step ms (rank 0) |")
        print("|---|---:|---:|")
        for label, ms in rows:
            print(f"| {label} | {world} | {ms:.1f} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
