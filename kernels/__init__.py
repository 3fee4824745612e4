"""Parallax attention implementations (installed as `parallax_kernels`).

- reference.py: the dense definition (tests, float64).
- torch_chunked.py: memory-efficient pure-torch forward/backward (`backend="torch"`).
- batching.py: vmap rules of the attention ops (the vmapped dim folded into the batch).

Users call them through `parallax_titan.ops.parallax_attention`, which checks shapes and picks a backend.
"""
