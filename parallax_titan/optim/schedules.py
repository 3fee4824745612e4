"""`build_lr_schedulers_fn` of the TrainSpec: torchtitan's WSD schedule for every param group, plus
optional weight-decay annealing over the decay phase (the paper's partial fix for the Parallax
advantage eroding during decay):

    lambda(t) = lambda_0 * (1 - t)^gamma,   t in [0, 1] the progress through the decay phase

TOML: `[lr_scheduler] weight_decay_anneal = true`, `weight_decay_anneal_gamma = 2.0`. The
AdamW + cosine ablation is torchtitan's own keys: `decay_type = "cosine"` with `decay_ratio` unset.
"""

from __future__ import annotations

from torchtitan.components.lr_scheduler import build_lr_schedulers as torchtitan_build_lr_schedulers
from torchtitan.components.lr_scheduler import LRSchedulersContainer


def decay_phase(total_steps: int, warmup_steps: int, decay_ratio: float | None) -> tuple[int, int]:
    """(scheduler step at which decay starts, number of decay steps): torchtitan's WSD arithmetic
    (`warmup_stable_steps` and `decay_steps` in torchtitan.components.lr_scheduler)."""
    warmup_steps = min(int(warmup_steps), total_steps)
    if decay_ratio is None:
        decay_steps = total_steps - warmup_steps
    else:
        decay_steps = min(round(total_steps * decay_ratio), total_steps - warmup_steps)
    return total_steps + 1 - decay_steps, decay_steps


def annealed_weight_decay_factor(current_step: int, decay_start: int, decay_steps: int, gamma: float) -> float:
    """Factor on the base weight decay at scheduler step `current_step` (LambdaLR's last_epoch),
    with the same decay progress t as torchtitan's learning-rate decay."""
    if decay_steps <= 0 or current_step < decay_start:
        return 1.0
    progress = min(1.0, (current_step + 1 - decay_start) / decay_steps)
    return (1.0 - progress) ** gamma


class WSDSchedulers(LRSchedulersContainer):
    """torchtitan's LambdaLR container, which also anneals each group's weight decay when asked."""

    def __init__(self, base: LRSchedulersContainer, anneal: tuple[int, int, float] | None):
        self.schedulers = base.schedulers
        self.anneal = anneal
        for scheduler in self.schedulers:
            for group in scheduler.optimizer.param_groups:
                group.setdefault("initial_weight_decay", group["weight_decay"])
        self._apply_weight_decay()

    def step(self) -> None:
        super().step()
        self._apply_weight_decay()

    def state_dict(self):
        # All schedulers share one lambda and one step count: the count is the whole state.
        scheduler = self.schedulers[0]
        return {"last_epoch": scheduler.last_epoch, "_step_count": scheduler._step_count}

    def load_state_dict(self, state_dict) -> None:
        # torchtitan would load schedulers[0]'s LambdaLR state into every scheduler, which fails
        # when Muon and AdamW have different numbers of param groups; restore the step count and
        # recompute every group's lr (and weight decay) from it instead.
        for scheduler in self.schedulers:
            scheduler.last_epoch = state_dict["last_epoch"]
            scheduler._step_count = state_dict["_step_count"]
            lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, lr in zip(scheduler.optimizer.param_groups, lrs):
                group["lr"] = lr
            scheduler._last_lr = lrs
        self._apply_weight_decay()

    def _apply_weight_decay(self) -> None:
        if self.anneal is None:
            return
        decay_start, decay_steps, gamma = self.anneal
        for scheduler in self.schedulers:
            factor = annealed_weight_decay_factor(scheduler.last_epoch, decay_start, decay_steps, gamma)
            for group in scheduler.optimizer.param_groups:
                group["weight_decay"] = group["initial_weight_decay"] * factor


def build_lr_schedulers(optimizers, lr_scheduler_config, training_steps: int) -> WSDSchedulers:
    base = torchtitan_build_lr_schedulers(optimizers, lr_scheduler_config, training_steps)
    anneal = None
    if getattr(lr_scheduler_config, "weight_decay_anneal", False):
        gamma = float(getattr(lr_scheduler_config, "weight_decay_anneal_gamma", 2.0))
        if gamma < 0:
            raise ValueError(f"[lr_scheduler] weight_decay_anneal_gamma must be >= 0; got {gamma}")
        total = lr_scheduler_config.total_steps or training_steps
        start, steps = decay_phase(total, lr_scheduler_config.warmup_steps, lr_scheduler_config.decay_ratio)
        anneal = (start, steps, gamma)
    return WSDSchedulers(base, anneal)
