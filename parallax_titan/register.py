"""Registers the `parallax_qwen3` TrainSpec and the datasets with torchtitan.

TOML: `[experimental] custom_import = "parallax_titan.register"` and `[model] name = "parallax_qwen3"`.
"""

from __future__ import annotations

from torchtitan.components.loss import build_cross_entropy_loss
from torchtitan.components.tokenizer import build_hf_tokenizer
from torchtitan.protocols.train_spec import _extra_train_specs, register_train_spec, TrainSpec

from parallax_titan.data import build_dataloader, build_validator, register_datasets
from parallax_titan.model.state_dict_adapter import ParallaxQwen3StateDictAdapter
from parallax_titan.model.flavors import FLAVORS
from parallax_titan.model.model import ParallaxQwen3Model
from parallax_titan.optim.builder import build_optimizers
from parallax_titan.metrics import build_metrics_processor
from parallax_titan.optim.schedules import build_lr_schedulers
from parallax_titan.parallelize import parallelize_parallax, save_parallax_attention_in_op_sac

MODEL_NAME = "parallax_qwen3"


def get_train_spec() -> TrainSpec:
    return TrainSpec(
        model_cls=ParallaxQwen3Model,
        model_args=FLAVORS,
        parallelize_fn=parallelize_parallax,
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


def register() -> None:
    register_datasets()
    save_parallax_attention_in_op_sac()
    if MODEL_NAME not in _extra_train_specs:
        register_train_spec(MODEL_NAME, get_train_spec())


register()
