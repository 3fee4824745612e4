"""Registers the `parallax_qwen3` TrainSpec and the datasets with torchtitan.

TOML: `[experimental] custom_import = "parallax_titan.register"` and `[model] name = "parallax_qwen3"`.
"""

from __future__ import annotations

import torch

from torchtitan.components.loss import build_cross_entropy_loss
from torchtitan.components.tokenizer import build_hf_tokenizer
from torchtitan.models.qwen3 import parallelize_qwen3
from torchtitan.models.qwen3.infra import parallelize as qwen3_parallelize
from torchtitan.protocols.train_spec import _extra_train_specs, register_train_spec, TrainSpec

from parallax_titan.data import build_dataloader, build_validator, register_datasets
from parallax_titan.hf_interop import ParallaxQwen3StateDictAdapter
from parallax_titan.model.flavors import FLAVORS
from parallax_titan.model.model import ParallaxQwen3Model
from parallax_titan.optim.builder import build_optimizers
from parallax_titan.optim.metrics import build_metrics_processor
from parallax_titan.optim.schedules import build_lr_schedulers

MODEL_NAME = "parallax_qwen3"


def get_train_spec() -> TrainSpec:
    return TrainSpec(
        model_cls=ParallaxQwen3Model,
        model_args=FLAVORS,
        parallelize_fn=parallelize_qwen3,
        pipelining_fn=None,
        build_optimizers_fn=build_optimizers,
        build_lr_schedulers_fn=build_lr_schedulers,
        build_dataloader_fn=build_dataloader,
        build_tokenizer_fn=build_hf_tokenizer,
        build_loss_fn=build_cross_entropy_loss,
        build_validator_fn=build_validator,
        build_metrics_processor_fn=build_metrics_processor,
        state_dict_adapter=ParallaxQwen3StateDictAdapter,
    )


def save_parallax_attention_in_op_sac() -> None:
    """`[activation_checkpoint] selective_ac_option = "op"` saves the outputs of the ops in qwen3's save list
    and recomputes the rest; SDPA is on it, so without this the fused Parallax forward (the attention's most
    expensive op) would be the one thing recomputed in the backward. Skipped where Triton is not installed,
    since the fused backend cannot be selected there."""
    try:
        from parallax_kernels import triton_parallax  # noqa: F401  (defines torch.ops.parallax.attention_fwd)
    except ImportError:  # no Triton: the fused backend cannot be selected either
        return
    qwen3_parallelize._op_sac_save_list.add(torch.ops.parallax.attention_fwd.default)


def register() -> None:
    register_datasets()
    save_parallax_attention_in_op_sac()
    if MODEL_NAME not in _extra_train_specs:
        register_train_spec(MODEL_NAME, get_train_spec())


register()
