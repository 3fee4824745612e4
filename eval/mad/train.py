"""Train and score one model on one MAD setting.

Model: this repo's Qwen3-Parallax decoder at MAD's size (width 128, two attention + SwiGLU blocks, 16
heads of 8), softmax or Parallax attention, with an untied output layer. Compression uses MAD's
auto-encoder head: the encoder's last position, plus a sinusoidal position code per output position,
through a two-layer MLP decoder. Training follows the MAD protocol: batch 128, AdamW (or this repo's
Muon for hidden matrices with AdamW for the rest), cosine decay to 1e-6 over the run, bf16 autocast on
CUDA. The score is test accuracy over the probed tokens after the last epoch.

MAD models are so small that an eager step is launch-bound (16-35 ms per step measured on an H100,
docs/results.md, for an estimated 45 GFLOP of arithmetic). `compile=True` trains through torch.compile,
with CUDA graphs on a GPU (mode "reduce-overhead"); the test set is scored by the same weights in eager mode.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eval.mad.tasks import IGNORE, TaskSetting, make_dataset
from parallax_titan.model.args import ParallaxModelArgs
from parallax_titan.model.model import ParallaxQwen3Model
from parallax_titan.optim.muon import Muon
from parallax_titan.optim.routing import route_parameters

MAD_WIDTH, MAD_LAYERS, MAD_HEADS = 128, 2, 16


@dataclass
class MADRun:
    attention: str = "parallax"
    optimizer: str = "adamw"  # adamw | muon
    lr: float = 5e-4
    weight_decay: float = 0.0
    epochs: int = 200
    batch_size: int = 128
    min_lr: float = 1e-6
    seed: int = 12345
    backend: str = "torch"
    compile: bool = False


def model_args(setting: TaskSetting, attention: str, backend: str) -> ParallaxModelArgs:
    return ParallaxModelArgs(
        dim=MAD_WIDTH, n_layers=MAD_LAYERS, n_heads=MAD_HEADS, n_kv_heads=MAD_HEADS, head_dim=MAD_WIDTH // MAD_HEADS,
        hidden_dim=384, vocab_size=setting.vocab_size, max_seq_len=setting.seq_len, rope_theta=10000,
        qk_norm=True, enable_weight_tying=False, attention=attention, attention_backend=backend,
    )


def _sincos(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    return table


class AutoEncoder(nn.Module):
    """Encoder = the decoder-only model's blocks; the code is its last position's final hidden state."""

    def __init__(self, args: ParallaxModelArgs):
        super().__init__()
        self.encoder = ParallaxQwen3Model(args)
        dim = args.dim
        self.register_buffer("positions", _sincos(args.max_seq_len, dim), persistent=False)
        self.decoder = nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, dim), nn.GELU(),
                                     nn.RMSNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.unembed = nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, args.vocab_size))

    def init_weights(self):
        self.encoder.init_weights()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        h = e.tok_embeddings(tokens)
        for layer in e.layers.values():
            h = layer(h, e.rope_cache, None, None)
        code = e.norm(h)[:, -1:]  # (B, 1, dim)
        return self.unembed(self.decoder(code + self.positions[: tokens.shape[1]]))


def build_model(setting: TaskSetting, run: MADRun) -> nn.Module:
    args = model_args(setting, run.attention, run.backend)
    model = AutoEncoder(args) if setting.task == "compression" else ParallaxQwen3Model(args)
    with torch.no_grad():
        model.init_weights()
    return model


def split_for_muon(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices, for Muon; the rest, for AdamW, in the model's order), by the training routing
    (parallax_titan.optim.routing): the blocks' 2-D weights go to Muon, embeddings, heads and scalars do not."""
    hidden = [p for _, p in route_parameters(model)["hidden"]]
    ids = {id(p) for p in hidden}
    return hidden, [p for p in model.parameters() if id(p) not in ids]


def _adamw(params: list[nn.Parameter], run: MADRun) -> torch.optim.AdamW:
    # fused AdamW on a GPU: one kernel per step, so the optimizer does not undo what CUDA graphs save
    return torch.optim.AdamW(params, lr=run.lr, weight_decay=run.weight_decay, fused=params[0].is_cuda)


def build_optimizer(model: nn.Module, run: MADRun) -> list[torch.optim.Optimizer]:
    if run.optimizer == "adamw":
        return [_adamw(list(model.parameters()), run)]
    if run.optimizer != "muon":
        raise ValueError(f"MAD optimizer {run.optimizer!r} is unknown; choose adamw or muon")
    hidden, rest = split_for_muon(model)
    return [Muon(hidden, lr=run.lr, weight_decay=run.weight_decay, ns_dtype="float32"), _adamw(rest, run)]


def build_per_run_optimizers(members: list[nn.Module], runs: list[MADRun]) -> list[torch.optim.Optimizer]:
    """Each run's own optimizers, as train_setting builds them."""
    return [o for m, run in zip(members, runs) for o in build_optimizer(m, run)]


def build_sweep_optimizers(members: list[nn.Module], runs: list[MADRun]) -> list[torch.optim.Optimizer]:
    """A batched sweep's optimizers: under Muon, one Muon with a param group per run (its lr and weight
    decay), so that every run's matrices share one batched Newton-Schulz per shape (the same arithmetic
    as a Muon per run: tested), plus each run's AdamW; under AdamW, each run's own."""
    if runs[0].optimizer != "muon":
        return build_per_run_optimizers(members, runs)
    splits = [split_for_muon(m) for m in members]
    muon = Muon([dict(params=hidden, lr=run.lr, weight_decay=run.weight_decay) for (hidden, _), run in zip(splits, runs)],
                lr=runs[0].lr, weight_decay=runs[0].weight_decay, ns_dtype="float32")
    return [muon] + [_adamw(rest, run) for (_, rest), run in zip(splits, runs)]


def _schedulers(optimizers: list[torch.optim.Optimizer], run: MADRun, total_steps: int) -> list:
    # cosine per param group, from each group's own lr: a shared optimizer's groups follow their own runs
    return [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total_steps, eta_min=run.min_lr) for o in optimizers]


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, device, autocast) -> float:
    correct = total = 0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i:i + batch_size].to(device), targets[i:i + batch_size].to(device)
        with autocast:
            pred = model(x).argmax(-1)
        mask = y != IGNORE
        correct += int((pred[mask] == y[mask]).sum())
        total += int(mask.sum())
    return correct / max(total, 1)


def _epoch_batches(order_rng: np.random.Generator, x_train, y_train, steps_per_epoch: int, device):
    """One epoch's batches: the ones np.array_split of a seeded permutation gives."""
    order = torch.from_numpy(order_rng.permutation(len(x_train))).to(device)
    bounds = np.cumsum([0] + [len(c) for c in np.array_split(np.arange(len(x_train)), steps_per_epoch)])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        yield x_train[idx], y_train[idx]


def _prepare(setting: TaskSetting, run: MADRun, device):
    """Seed, data on the device (a step then makes no host-to-device copy, nor sync), the model."""
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)  # _finish records this run's peak
    torch.manual_seed(run.seed)
    data = make_dataset(setting, run.seed)
    x_train, y_train = (torch.from_numpy(a).to(device) for a in data["train"])
    x_test, y_test = (torch.from_numpy(a) for a in data["test"])
    return (x_train, y_train, x_test, y_test), build_model(setting, run).to(device)


def _step_tools(model: nn.Module, run: MADRun, total_steps: int):
    optimizers = build_optimizer(model, run)
    return optimizers, _schedulers(optimizers, run, total_steps)


def _finish(setting: TaskSetting, run: MADRun, model: nn.Module, test, loss: float, seconds: float, device,
            autocast, log) -> dict:
    model.eval()
    acc = accuracy(model, *test, 512, device, autocast)
    result = {"setting": setting.name, "task": setting.task, "attention": run.attention, "optimizer": run.optimizer,
              "lr": run.lr, "weight_decay": run.weight_decay, "epochs": run.epochs, "seed": run.seed,
              "backend": run.backend, "compiled": run.compile, "test_acc": acc, "final_train_loss": loss,
              "seconds": seconds}
    if str(device).startswith("cuda"):  # what sizes --jobs: workers share one GPU's memory
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    memory = f", {result['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in result else ""
    log(f"{setting.name:58s} {run.attention:8s} {run.optimizer:5s} lr={run.lr:g} wd={run.weight_decay:g} "
        f"acc={acc:.3f} loss={loss:.3f} ({seconds:.0f} s{memory})")
    return result


def _autocast(cuda: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)


def train_setting(setting: TaskSetting, run: MADRun, device: str = "cpu", log=print) -> dict:
    (x_train, y_train, x_test, y_test), model = _prepare(setting, run, device)
    cuda = str(device).startswith("cuda")
    forward = model
    if run.compile:  # same weights; CUDA graphs replay each step's kernels with one launch
        forward = torch.compile(model, mode="reduce-overhead" if cuda else None, dynamic=False)
    steps_per_epoch = math.ceil(len(x_train) / run.batch_size)
    optimizers, schedulers = _step_tools(model, run, run.epochs * steps_per_epoch)
    autocast = _autocast(cuda)
    order_rng = np.random.default_rng(run.seed)
    start = time.perf_counter()
    for epoch in range(run.epochs):
        model.train()
        for x, y in _epoch_batches(order_rng, x_train, y_train, steps_per_epoch, device):
            if run.compile and cuda:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are done with
            with autocast:
                logits = forward(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o, s in zip(optimizers, schedulers):
                o.step()
                s.step()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"{setting.name}: non-finite loss at epoch {epoch + 1}")
    return _finish(setting, run, model, (x_test, y_test), float(loss.detach()), time.perf_counter() - start,
                   device, autocast, log)


class _FoldedSoftmaxAttention(nn.Module):
    """torchtitan's SDPA wrapper, same backends, with a vmap rule that folds the runs into the batch
    (kernels/parallax_kernels/batching.py folded_sdpa): SDPA's own vmap rule for cuDNN gave wrong gradients on an H200."""

    def __init__(self, wrapped: nn.Module):
        super().__init__()
        self.backends = list(wrapped.sdpa_backends)

    def forward(self, q, k, v, *, scale=None, enable_gqa=False, is_causal=True):
        from parallax_kernels.batching import folded_sdpa

        return folded_sdpa(q, k, v, scale=scale, is_causal=is_causal, enable_gqa=enable_gqa, backends=self.backends)


def _fold_softmax_attention(model: nn.Module) -> None:
    from torchtitan.models.attention import ScaledDotProductAttentionWrapper

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, ScaledDotProductAttentionWrapper):
                setattr(module, name, _FoldedSoftmaxAttention(child))


def train_sweep(setting: TaskSetting, runs: list[MADRun], device: str = "cpu", log=print,
                optimizers_for=build_sweep_optimizers) -> list[dict]:
    """Train runs that differ only in learning rate and weight decay as one batched model: each run is
    its own model with its own optimizer state, as in train_setting (same seed, so the same initial weights
    and batches), but every step stacks their weights and runs them through one torch.func.vmap'd
    forward, so a step launches each kernel once for all of them, not once per run. Attention folds the
    runs into its batch (kernels/parallax_kernels/batching.py). Each run's arithmetic is the one train_setting does;
    batched matmuls may round differently in the last bits. `optimizers_for(members, runs)` builds the
    optimizers (build_sweep_optimizers; scripts/bench_optimizer.py --mad-sweep times the alternative)."""
    first = runs[0]
    shared = ("attention", "optimizer", "epochs", "batch_size", "min_lr", "seed", "backend")
    for run in runs[1:]:
        for field in shared:
            if getattr(run, field) != getattr(first, field):
                raise ValueError(f"train_sweep: runs must differ only in lr and weight_decay; {field} is "
                                 f"{getattr(first, field)!r} and {getattr(run, field)!r}")
    if any(run.compile for run in runs):
        raise ValueError("train_sweep: compile is not supported for a batched sweep; train its runs one by one")
    import copy

    from torch.func import functional_call, vmap

    (x_train, y_train, x_test, y_test), model = _prepare(setting, first, device)
    _fold_softmax_attention(model)  # before the copies, so every member has it
    members = [model] + [copy.deepcopy(model) for _ in runs[1:]]
    steps_per_epoch = math.ceil(len(x_train) / first.batch_size)
    optimizers = optimizers_for(members, runs)
    schedulers = _schedulers(optimizers, first, first.epochs * steps_per_epoch)
    names = [n for n, _ in model.named_parameters()]
    member_params = [dict(m.named_parameters()) for m in members]
    buffers = dict(model.named_buffers())  # not trained: the same in every member
    batched = vmap(lambda params, x: functional_call(model, (params, buffers), (x,)), in_dims=(0, None))
    autocast = _autocast(str(device).startswith("cuda"))
    order_rng = np.random.default_rng(first.seed)
    start = time.perf_counter()
    for epoch in range(first.epochs):
        for m in members:
            m.train()
        for x, y in _epoch_batches(order_rng, x_train, y_train, steps_per_epoch, device):
            # stacked from the members' own parameters, so gradients land on each member's leaves
            # (torch.func.stack_module_state makes new leaves instead)
            params = {n: torch.stack([p[n] for p in member_params]) for n in names}
            with autocast:
                logits = batched(params, x)
            losses = torch.stack([F.cross_entropy(lg.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
                                  for lg in logits])
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            losses.sum().backward()  # the members are independent: each gets its own loss's gradient
            for o, s in zip(optimizers, schedulers):
                o.step()
                s.step()
        final = losses.tolist()
        for run, loss in zip(runs, final):
            if not math.isfinite(loss):
                raise FloatingPointError(f"{setting.name} lr={run.lr:g} wd={run.weight_decay:g}: non-finite loss "
                                         f"at epoch {epoch + 1}")
    seconds = time.perf_counter() - start  # of the whole batch: every run's record carries it
    results = [_finish(setting, run, m, (x_test, y_test), loss, seconds, device, autocast, log)
               for run, m, loss in zip(runs, members, final)]
    for result in results:
        result["batched_runs"] = len(runs)
    return results
