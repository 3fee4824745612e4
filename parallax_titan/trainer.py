"""torchtitan's Trainer with one addition: at `[diagnostics] interval` steps it hands the first
sequence of the step's batch (cut to `[diagnostics] tokens`) to the metrics processor, which measures
the Parallax activation diagnostics on it after the step. Everything else is torchtitan's."""

from __future__ import annotations

from torchtitan.train import Trainer


class ParallaxTrainer(Trainer):
    def post_dataloading_process(self, input_dict, labels):
        inputs, labels, extra_inputs, extra_kwargs = super().post_dataloading_process(input_dict, labels)
        diagnostics = getattr(self.job_config, "diagnostics", None)
        if diagnostics is not None and diagnostics.interval and self.step % diagnostics.interval == 0:
            self.metrics_processor.diagnostics_probe = inputs[:1, : diagnostics.tokens].detach().clone()
        return inputs, labels, extra_inputs, extra_kwargs
