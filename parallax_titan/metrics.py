"""`build_metrics_processor_fn` of the TrainSpec: torchtitan's metrics plus each optimizer group's
learning rate and weight decay at every logged step (keys `lr/<group>`, `weight_decay/<group>`), and
every `[diagnostics] interval` steps the Parallax diagnostics (`diagnostics/<name>/layer<i>`)."""

from __future__ import annotations

import json
import math
import os
import time

import torch
from torchtitan.components.metrics import BaseLogger, MetricsProcessor

from parallax_titan.diagnostics import diagnostics_due, diagnostics_interval


def group_hyperparameters(optimizers) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for optimizer in optimizers or []:
        for group in optimizer.param_groups:
            name = group.get("name", "default")
            metrics.setdefault(f"lr/{name}", float(group["lr"]))
            metrics.setdefault(f"weight_decay/{name}", float(group["weight_decay"]))
    return metrics


class GroupMetricsProcessor(MetricsProcessor):
    # set by parallax_titan.trainer.ParallaxTrainer at diagnostics steps: (1, N) tokens of that step
    diagnostics_probe: torch.Tensor | None = None

    def log(self, step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None):
        extra = dict(extra_metrics or {})
        extra.update(group_hyperparameters(self.optimizers))
        if diagnostics_due(self.job_config, step):
            extra.update(self._diagnostics())
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=extra)

    def _diagnostics(self) -> dict[str, float]:
        from parallax_titan.diagnostics import flatten, model_stats

        if len(getattr(self, "model_parts", []) or []) != 1:
            return {}  # pipeline stages hold parts of the model
        start = time.perf_counter()
        metrics = flatten(model_stats(self.model_parts[0], self.diagnostics_probe))  # every rank gets here
        self.diagnostics_probe = None
        metrics["diagnostics/seconds"] = time.perf_counter() - start
        return metrics


class WithoutKeys(BaseLogger):
    """Drops metrics that mean nothing on this device (MFU where the peak FLOPS are unknown)."""

    def __init__(self, inner: BaseLogger, keys: set[str]):
        self.inner, self.keys = inner, keys

    def log(self, metrics, step: int) -> None:
        self.inner.log({k: v for k, v in metrics.items() if k not in self.keys}, step)

    def close(self) -> None:
        self.inner.close()


class JsonlTee(BaseLogger):
    """Passes metrics on to torchtitan's loggers and appends them to a JSONL file, one record per
    call: {"step", "tokens", <metric>: value, ...} (training steps and validation alike), which
    scripts/plot_runs.py reads without TensorBoard."""

    def __init__(self, inner: BaseLogger, path: str, tokens_per_step: int):
        self.inner, self.path, self.tokens_per_step = inner, path, tokens_per_step
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.file = open(path, "a", buffering=1)

    def log(self, metrics, step: int) -> None:
        self.inner.log(metrics, step)
        record = {"step": step, "tokens": step * self.tokens_per_step}
        record.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.inner.close()
        self.file.close()


def tokens_per_step(job_config, parallel_dims) -> int:
    t = job_config.training
    batch = t.global_batch_size
    if batch is None or batch < 0:
        batch = t.local_batch_size * parallel_dims.dp_replicate * parallel_dims.dp_shard
    return batch * t.seq_len


def build_metrics_processor(job_config, parallel_dims, model_args=None, tag=None) -> GroupMetricsProcessor:
    interval = diagnostics_interval(job_config)
    if interval and interval % job_config.metrics.log_freq:
        raise ValueError(f"[diagnostics] interval = {interval} must be a multiple of [metrics] log_freq = "
                         f"{job_config.metrics.log_freq}: diagnostics are logged with the metrics")
    processor = GroupMetricsProcessor(job_config, parallel_dims, tag)
    name = getattr(job_config.metrics, "jsonl_file", "")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if name and rank == 0 and not parallel_dims.pp_enabled:
        path = os.path.join(job_config.job.dump_folder, name)
        processor.logger = JsonlTee(processor.logger, path, tokens_per_step(job_config, parallel_dims))
    if not math.isfinite(processor.gpu_peak_flops):  # cpu_shim: no peak known for this device
        processor.logger = WithoutKeys(processor.logger, {"mfu(%)"})
    return processor
