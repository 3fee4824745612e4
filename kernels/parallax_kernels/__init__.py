"""Parallax kernels, one folder per operator (as flash-linear-attention's `ops/<op>/`):

- parallax/: Parallax attention for training and prefill: `parallax_attention`, the dense reference, the chunked
  torch backend, the fused Triton kernel, the Hopper forward and backward in CuTe DSL and their ahead-of-time
  launcher.
- parallax_decode/: one decode step against a KV cache: `parallax_decode`, the torch split-KV backend and
  reference, the Triton kernel, the Hopper kernel in CuTe DSL and its ahead-of-time launcher.
- backends.py: what a backend is; batching.py: vmap rules shared by the ops; cute_runtime.py: loading and
  launching prebuilt CuTe DSL kernels (cubins, the CUDA driver, TMA descriptors) without the DSL.

The repository folder is `kernels/`; the import name is `parallax_kernels`, which shadows no PyPI package.
"""
