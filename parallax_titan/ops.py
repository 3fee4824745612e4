"""The attention operators the model calls, re-exported from `parallax_kernels` (kernels/parallax_kernels/),
where each operator's API, reference and backends live side by side."""

from parallax_kernels.parallax import BACKENDS, check_backend, parallax_attention
from parallax_kernels.parallax_decode import DECODE_BACKENDS, parallax_decode

__all__ = ["BACKENDS", "DECODE_BACKENDS", "check_backend", "parallax_attention", "parallax_decode"]
