"""torchtitan's Trainer with three additions, each small:

- diagnostics: at `[diagnostics] interval` steps it hands the first sequence of the step's batch (cut
  to `[diagnostics] tokens`) to the metrics processor, which measures the Parallax activation
  diagnostics on it after the step;
- non-finite guard (`[faults]`): before every optimizer step, every rank checks its loss and gradients;
  the verdict is gathered so all ranks act alike (cost: one read of the gradients and one device sync
  per step; `on_nonfinite = "ignore"` turns it off). "stop" raises with the step, the ranks that saw it and
  the last complete checkpoint; "skip" drops that update (the schedule still advances) and stops after
  `max_skipped_steps`;
- checkpoint checks: a `step-N` folder without DCP metadata (an interrupted save) or a requested
  `load_step` that does not exist is an error, where torchtitan would quietly load an older step or
  start fresh over the run's folder.
"""

from __future__ import annotations

import os
import re

import torch
import torch.distributed as dist
from torchtitan.train import Trainer
from torchtitan.tools.logging import logger

from parallax_titan.diagnostics import diagnostics_due


class NonFiniteError(FloatingPointError):
    pass


class ParallaxTrainer(Trainer):
    def __init__(self, job_config):
        super().__init__(job_config)
        self._step_losses: list[torch.Tensor] = []
        self.skipped_steps = 0
        faults = getattr(job_config, "faults", None)
        if faults is not None and faults.on_nonfinite != "ignore":
            if faults.on_nonfinite not in ("stop", "skip"):
                raise ValueError(f"[faults] on_nonfinite = {faults.on_nonfinite!r}; choose stop, skip or ignore")
            unguarded = self.optimizers.step
            self.optimizers.step = lambda *a, **k: self._guarded_step(unguarded, *a, **k)

    # --- diagnostics ------------------------------------------------------------------------------
    def post_dataloading_process(self, input_dict, labels):
        inputs, labels, extra_inputs, extra_kwargs = super().post_dataloading_process(input_dict, labels)
        if diagnostics_due(self.job_config, self.step):
            tokens = self.job_config.diagnostics.tokens
            self.metrics_processor.diagnostics_probe = inputs[:1, :tokens].detach().clone()
        return inputs, labels, extra_inputs, extra_kwargs

    # --- non-finite guard -------------------------------------------------------------------------
    def forward_backward_step(self, **kwargs):
        loss = super().forward_backward_step(**kwargs)
        self._step_losses.append(loss.detach())
        return loss

    def _nonfinite_here(self) -> bool:
        """This rank's verdict, then everyone's: any rank with a non-finite loss or gradient."""
        grads = [p.grad for m in self.model_parts for p in m.parameters() if p.grad is not None]
        if grads and self.step == self.job_config.faults.inject_nonfinite_at_step:
            grads[0].fill_(float("nan"))
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        checks = [torch.stack(torch._foreach_norm(local)).sum()] if local else []
        checks += [loss.float().sum() for loss in self._step_losses]
        self._step_losses = []
        bad = torch.zeros((), device=self.device)
        if checks:
            bad = (~torch.isfinite(torch.stack(checks).sum())).float().to(self.device)
        flags = bad.reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [torch.zeros_like(flags) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, flags)
            flags = torch.cat(gathered)
        self._bad_ranks = [i for i, f in enumerate(flags.tolist()) if f > 0]
        return bool(self._bad_ranks)

    def _last_checkpoint(self) -> str:
        folder = getattr(self.checkpointer, "folder", None)
        step = self.checkpointer._find_load_step() if folder and getattr(self.checkpointer, "enable", False) else -1
        return os.path.join(folder, f"step-{step}") if step >= 0 else "none (no checkpoint saved yet)"

    def _guarded_step(self, step_fn, *args, **kwargs):
        if not self._nonfinite_here():
            return step_fn(*args, **kwargs)
        faults = self.job_config.faults
        where = f"non-finite loss or gradient at step {self.step} on rank(s) {self._bad_ranks}"
        if faults.on_nonfinite == "skip" and self.skipped_steps < faults.max_skipped_steps:
            self.skipped_steps += 1
            self.optimizers.zero_grad()
            logger.warning(f"{where}: update skipped ({self.skipped_steps} of at most {faults.max_skipped_steps})")
            return None
        reason = (f"after {self.skipped_steps} skipped steps ([faults] max_skipped_steps)"
                  if faults.on_nonfinite == "skip" else "([faults] on_nonfinite = \"stop\")")
        raise NonFiniteError(f"{where}; stopping {reason}. Last complete checkpoint: {self._last_checkpoint()}")

    # --- checkpoint checks ------------------------------------------------------------------------
    def _check_checkpoint_folder(self) -> None:
        ckpt = self.checkpointer
        if not getattr(ckpt, "enable", False) or not os.path.isdir(ckpt.folder):
            return
        partial = sorted(
            name for name in os.listdir(ckpt.folder)
            if re.fullmatch(r"step-\d+", name)
            and not os.path.isfile(os.path.join(ckpt.folder, name, ".metadata"))
            and not os.path.isfile(os.path.join(ckpt.folder, name, "model.safetensors.index.json"))
        )
        if partial:
            raise RuntimeError(
                f"checkpoint folder {ckpt.folder} holds incomplete checkpoints {partial} (no .metadata: an interrupted "
                "save?). Remove them to resume from the last complete step, or use a new [job] dump_folder.")
        load_step = self.job_config.checkpoint.load_step
        if load_step > 0 and not os.path.isfile(os.path.join(ckpt.folder, f"step-{load_step}", ".metadata")):
            raise RuntimeError(f"[checkpoint] load_step = {load_step}, but {ckpt.folder}/step-{load_step} is not a "
                               "complete checkpoint")

    def train(self):
        self._check_checkpoint_folder()
        return super().train()
