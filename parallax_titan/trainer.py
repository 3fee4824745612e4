"""torchtitan's Trainer with three additions, each small:

- diagnostics: at `[diagnostics] interval` steps it hands the first sequence of the step's batch (cut
  to `[diagnostics] tokens`) to the metrics processor, which measures the Parallax activation
  diagnostics on it after the step;
- non-finite guard (`[faults]`): before every optimizer step, every rank checks its loss and gradients;
  the verdict is gathered so all ranks act alike (cost: one read of the gradients and one device sync
  per step; `on_nonfinite = "ignore"` turns it off). "stop" raises with the step, the ranks that saw it and
  the last complete checkpoint; "skip" drops that update (the schedule still advances) and stops after
  `max_skipped_steps`;
- checkpoint integrity (parallax_titan/checkpoint_manifest.py): every finished save writes
  `step-N/checksums.json` last (sync saves right after DCP returns; async saves once torchtitan has
  waited for them, at the next save); a `step-N` folder without it is incomplete. Before loading, the
  step's files are checked against it. An incomplete or corrupt step is an error naming the folder and
  the file, where torchtitan would quietly load an older step, start fresh over the run's folder, or load
  wrong weights; `[faults] resume_from_newest_valid = true` resumes from the newest step that verifies
  instead. A requested `load_step` must verify in any case;
- a run that has nothing left to train (its checkpoint is at `[training] steps`) says so;
- `[profiling] host_ops = false` records the GPU activity and the launch calls only (see gpu_activity_only).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re

import torch
import torch.distributed as dist
from torchtitan.components.checkpoint import AsyncMode
from torchtitan.train import Trainer
from torchtitan.tools.logging import logger

from parallax_titan import checkpoint_manifest
from parallax_titan.diagnostics import diagnostics_due


class NonFiniteError(FloatingPointError):
    pass


class ParallaxTrainer(Trainer):
    def __init__(self, job_config):
        super().__init__(job_config)
        self._step_losses: list[torch.Tensor] = []
        self.skipped_steps = 0
        faults = getattr(job_config, "faults", None)
        self._guarded = faults is not None and faults.on_nonfinite != "ignore"
        if self._guarded:
            if faults.on_nonfinite not in ("stop", "skip"):
                raise ValueError(f"[faults] on_nonfinite = {faults.on_nonfinite!r}; choose stop, skip or ignore")
            unguarded = self.optimizers.step
            self.optimizers.step = lambda *a, **k: self._guarded_step(unguarded, *a, **k)
        self._verified_steps: set[int] = set()  # steps this process wrote or verified
        self._pending_manifest: str | None = None
        if getattr(self.checkpointer, "enable", False):
            self._install_checkpoint_integrity()

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
        if self._guarded:  # the guard reads and clears them each step; unguarded, nothing would
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
        """The newest step that verifies (checked here unless this process wrote or verified it)."""
        ckpt = self.checkpointer
        if not getattr(ckpt, "enable", False):
            return "none (checkpointing is off)"
        for step in self._complete_steps():
            path = ckpt._create_checkpoint_id(step)
            if step in self._verified_steps or not checkpoint_manifest.problems(path, distributed=False):
                return path
        return "none (no verified checkpoint yet)"

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

    # --- checkpoint integrity --------------------------------------------------------------------
    def _step_folders(self) -> dict[int, str]:
        folder = self.checkpointer.folder
        if not os.path.isdir(folder):
            return {}
        return {int(m.group(1)): os.path.join(folder, name) for name in os.listdir(folder)
                if (m := re.fullmatch(r"step-(\d+)", name))}

    def _complete_steps(self) -> list[int]:
        """Steps whose manifest exists, newest first."""
        return sorted((s for s, p in self._step_folders().items() if checkpoint_manifest.has_manifest(p)),
                      reverse=True)

    def _install_checkpoint_integrity(self) -> None:
        ckpt = self.checkpointer
        save, load, async_wait, find_load_step = ckpt.dcp_save, ckpt.dcp_load, ckpt._async_wait, ckpt._find_load_step

        def dcp_save(state_dict, checkpoint_id, async_mode, *args, **kwargs):
            if not dist.is_initialized() or dist.get_rank() == 0:
                checkpoint_manifest.remove_manifest(checkpoint_id)
            result = save(state_dict, checkpoint_id, async_mode, *args, **kwargs)
            if async_mode == AsyncMode.DISABLED:  # a synchronous save has finished: every file is on disk
                self._finish_save(checkpoint_id)
            else:  # async: torchtitan waits for it in _async_wait (next save); the manifest follows then
                self._pending_manifest = checkpoint_id
            return result

        def wait():
            async_wait()
            if self._pending_manifest is not None:
                self._finish_save(self._pending_manifest)
                self._pending_manifest = None

        def dcp_load(state_dict, checkpoint_id, *args, **kwargs):
            self._verify_before_load(checkpoint_id)
            try:
                return load(state_dict, checkpoint_id, *args, **kwargs)
            except Exception as err:  # DCP's own errors (EOFError, "metadata is None") name no file
                raise RuntimeError(f"could not load checkpoint {checkpoint_id}: {type(err).__name__}: {err}") from err

        def newest_step(folder: str = "") -> int:
            if folder and os.path.abspath(folder) != os.path.abspath(ckpt.folder):
                return find_load_step(folder)  # torchft's folder: not ours
            return self._newest_loadable_step()

        ckpt.dcp_save, ckpt.dcp_load, ckpt._async_wait, ckpt._find_load_step = dcp_save, dcp_load, wait, newest_step

    def _finish_save(self, checkpoint_id: str) -> None:
        checkpoint_manifest.write_manifest(checkpoint_id, _step_of(checkpoint_id))
        if (step := _step_of(checkpoint_id)) is not None:
            self._verified_steps.add(step)

    def _resume_from_newest_valid(self) -> bool:
        faults = getattr(self.job_config, "faults", None)
        return bool(getattr(faults, "resume_from_newest_valid", False))

    def _newest_loadable_step(self) -> int:
        """The newest complete step; with resume_from_newest_valid, the newest that verifies (the others
        are named in a warning). -1: nothing to resume from."""
        steps = self._complete_steps()
        if not steps or not self._resume_from_newest_valid():
            return steps[0] if steps else -1
        rejected = []
        for step in steps:
            path = self.checkpointer._create_checkpoint_id(step)
            found = checkpoint_manifest.problems(path)
            if not found:
                self._verified_steps.add(step)
                if rejected:
                    logger.warning(f"resuming from {path}, the newest checkpoint that verifies; skipped "
                                   + "; ".join(rejected) + " ([faults] resume_from_newest_valid = true)")
                return step
            rejected.append(f"{path} ({found[0]})")
        raise checkpoint_manifest.CheckpointCorruptError(
            f"no checkpoint in {self.checkpointer.folder} verifies: " + "; ".join(rejected)
            + ". Remove them to start afresh, or use a new [job] dump_folder.")

    def _verify_before_load(self, checkpoint_id: str) -> None:
        step = _step_of(checkpoint_id)
        ours = os.path.abspath(os.path.dirname(checkpoint_id)) == os.path.abspath(self.checkpointer.folder)
        if ours and step in self._verified_steps:
            return
        if not ours and not checkpoint_manifest.has_manifest(checkpoint_id):
            # an initial_load_path written by another tool; DCP's own checks only
            logger.info(f"{checkpoint_id} has no {checkpoint_manifest.MANIFEST}: loading it unverified")
            return
        try:
            checkpoint_manifest.verify(checkpoint_id)
        except checkpoint_manifest.CheckpointCorruptError as err:
            if not ours:
                hint = ""
            elif self.job_config.checkpoint.load_step > 0:
                hint = " Choose another [checkpoint] load_step."
            else:
                hint = (" Remove this step to resume from an older one, or set [faults] resume_from_newest_valid = "
                        "true (--faults.resume_from_newest_valid) to resume from the newest step that verifies.")
            raise checkpoint_manifest.CheckpointCorruptError(f"{err}.{hint}") from None
        if ours and step is not None:
            self._verified_steps.add(step)

    def _check_checkpoint_folder(self) -> None:
        ckpt = self.checkpointer
        if not getattr(ckpt, "enable", False) or not os.path.isdir(ckpt.folder):
            return
        partial = sorted(os.path.basename(p) for p in self._step_folders().values()
                         if not checkpoint_manifest.has_manifest(p))
        if partial and not self._resume_from_newest_valid():
            raise RuntimeError(
                f"checkpoint folder {ckpt.folder} holds incomplete checkpoints {partial} (no "
                f"{checkpoint_manifest.MANIFEST}: an interrupted save?). Remove them to resume from the last "
                "complete step, set [faults] resume_from_newest_valid = true to skip them, or use a new "
                "[job] dump_folder.")
        if partial:
            logger.warning(f"skipping incomplete checkpoints {partial} in {ckpt.folder} "
                           "([faults] resume_from_newest_valid = true)")
        load_step = self.job_config.checkpoint.load_step
        if load_step > 0 and not checkpoint_manifest.has_manifest(os.path.join(ckpt.folder, f"step-{load_step}")):
            raise RuntimeError(f"[checkpoint] load_step = {load_step}, but {ckpt.folder}/step-{load_step} is not a "
                               "complete checkpoint")

    def train(self):
        self._check_checkpoint_folder()
        profiling = self.job_config.profiling
        if profiling.enable_profiling and not getattr(profiling, "host_ops", True):
            with gpu_activity_only():
                return super().train()
        return super().train()

    def should_continue_training(self) -> bool:
        if not hasattr(self, "_start_step"):  # first call: after the checkpoint is loaded
            self._start_step = self.step + 1
            if self.step >= self.job_config.training.steps:
                logger.warning(f"Nothing to train: the checkpoint is at step {self.step} and [training] steps = "
                               f"{self.job_config.training.steps}. Raise --training.steps to train on, or use a "
                               "new [job] dump_folder.")
        return super().should_continue_training()


def without_host_ops(profile):
    """`profile` (torch.profiler.profile) without the CPU activity and the shape records: the trace holds the GPU
    activity and the launch calls, not the host's operators (a smaller trace, and no per-op records on the host
    during the step, whose idle GPU time depends on how fast the host issues the work)."""

    @functools.wraps(profile)
    def wrapped(*args, activities=None, **kwargs):
        named = torch.profiler.supported_activities() if activities is None else activities
        gpu = [a for a in named if a is not None and a != torch.profiler.ProfilerActivity.CPU]
        if not gpu:
            raise ValueError("[profiling] host_ops = false: the profiler records no GPU activity on this machine")
        return profile(*args, activities=gpu, **{**kwargs, "record_shapes": False})

    return wrapped


@contextlib.contextmanager
def gpu_activity_only():
    """While training: torchtitan's profiler (tools/profiling.py, which builds it with torch.profiler.profile at
    the start of Trainer.train) records without the host's operators (without_host_ops)."""
    original = torch.profiler.profile
    torch.profiler.profile = without_host_ops(original)
    try:
        yield
    finally:
        torch.profiler.profile = original


def _step_of(checkpoint_id: str) -> int | None:
    m = re.fullmatch(r"step-(\d+)", os.path.basename(os.path.normpath(checkpoint_id)))
    return int(m.group(1)) if m else None
