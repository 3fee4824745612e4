"""Attention types, one module each, registered by name (registry.py): softmax.py, parallax.py.

A new type is a module that builds its AttentionType and calls `register`, plus an import below.
"""

from parallax_titan.model.attention import parallax, softmax  # noqa: F401  (each registers its type)
from parallax_titan.model.attention.registry import (
    AttentionType,
    Projected,
    attention_names,
    attention_type,
    extra_parameters,
    per_head_axes,
    register,
)

__all__ = ["AttentionType", "Projected", "attention_names", "attention_type", "extra_parameters", "per_head_axes", "register"]
