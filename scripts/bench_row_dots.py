"""Before/after of one tuning step, in one run: the backward's row dot products (Drow, E) in plain
torch vs the fused preprocess kernel. python scripts/bench_row_dots.py"""
import torch
from triton.testing import do_bench

from parallax_kernels.parallax.triton_fused import row_dot_products

for b, h, n, d in [(4, 16, 4096, 128), (8, 16, 2048, 128), (4, 16, 4096, 64)]:
    do, o, a = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    plain = do_bench(lambda: row_dot_products(do, o, a, fused=False), return_mode="median")
    fused = do_bench(lambda: row_dot_products(do, o, a), return_mode="median")
    floor_ms = 3 * do.numel() * 2 / 3.0e12 * 1e3  # read three bf16 tensors at ~3.0 TB/s
    print(f"({b},{h},{n},{d}) torch {plain * 1e3:.0f} us, fused {fused * 1e3:.0f} us, read floor {floor_ms * 1e3:.0f} us")
