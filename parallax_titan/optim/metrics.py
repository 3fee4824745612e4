"""`build_metrics_processor_fn` of the TrainSpec: torchtitan's metrics plus each optimizer group's
learning rate and weight decay at every logged step (keys `lr/<group>`, `weight_decay/<group>`)."""

from __future__ import annotations

from torchtitan.components.metrics import MetricsProcessor


def group_hyperparameters(optimizers) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for optimizer in optimizers or []:
        for group in optimizer.param_groups:
            name = group.get("name", "default")
            metrics.setdefault(f"lr/{name}", float(group["lr"]))
            metrics.setdefault(f"weight_decay/{name}", float(group["weight_decay"]))
    return metrics


class GroupMetricsProcessor(MetricsProcessor):
    def log(self, step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None):
        extra = dict(extra_metrics or {})
        extra.update(group_hyperparameters(self.optimizers))
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=extra)


def build_metrics_processor(job_config, parallel_dims, model_args=None, tag=None) -> GroupMetricsProcessor:
    return GroupMetricsProcessor(job_config, parallel_dims, tag)
