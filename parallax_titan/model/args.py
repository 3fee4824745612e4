"""Model arguments: torchtitan's Qwen3ModelArgs plus the Parallax knobs."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn
from torchtitan.models.qwen3.model.args import Qwen3ModelArgs
from torchtitan.tools.logging import logger

from parallax_titan.model.attention import attention_type
from parallax_titan.model.flops import count_parameters, training_flops_per_token
from parallax_titan.model.tokenizer_check import check_tokenizer
from parallax_titan.ops import check_backend

PROBE_INITS = ("normal", "zero")


@dataclass
class ParallaxModelArgs(Qwen3ModelArgs):
    # A registered attention type (parallax_titan.model.attention): "softmax" is torchtitan's Qwen3 attention
    # unchanged, "parallax" adds the probe r = W_R x.
    attention: str = "parallax"
    # Authors' defaults: per-head RMSNorm on r with its own weight, RoPE on r at the query's positions.
    probe_rope: bool = True
    probe_norm: bool = True
    # "normal": W_R initialised like W_Q; "zero": W_R = 0 (exactly softmax attention at step 0).
    probe_init: str = "normal"
    # The paper's gated-probe ablation: r = sigmoid(w_g . x) * W_R x, one gate per token and head.
    probe_gate: bool = False
    # parallax_attention backend (parallax_titan.ops.BACKENDS).
    attention_backend: str = "torch"
    # Attention stays inside each packed document (documents end with EOS). Parallax: document ids
    # from the input's EOS tokens, handed to the kernel. Softmax: torchtitan's flex attention with its
    # block_causal mask (same EOS convention; FlexAttention's backward needs a GPU).
    document_masking: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        attention_type(self.attention)  # raises for an unknown name
        if self.probe_init not in PROBE_INITS:
            raise ValueError(
                f"[parallax] probe_init = {self.probe_init!r} is unknown; choose one of {PROBE_INITS}"
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}"
            )
        check_backend(self.attention_backend)  # an unknown name fails here, before the model is built

    def update_from_config(self, job_config, **kwargs) -> None:
        super().update_from_config(job_config, **kwargs)
        section = getattr(job_config, "parallax", None)
        if section is not None:
            for f in fields(section):
                value = getattr(section, f.name)
                if value is not None:  # None: keep the flavor's value
                    setattr(self, f.name, value)
        self.validate()
        check_tokenizer(self, job_config.model.hf_assets_path)
        if self.document_masking and attention_type(self.attention).document_masking == "flex":
            self.attn_type, self.attn_mask_type = "flex", "block_causal"

    def get_nparams_and_flops(self, model: nn.Module, seq_len: int) -> tuple[int, int]:
        counted = count_parameters(self)
        actual = sum(p.numel() for p in model.parameters())
        if counted["total"] != actual:
            logger.warning(
                f"analytic parameter count {counted['total']:,} differs from the model's {actual:,}"
            )
        return actual, int(training_flops_per_token(self, seq_len))  # torchtitan's count: every key
