"""Does SDPA under torch.func.vmap give each member its own attention and gradients on this GPU?

The batched MAD sweep (eval/mad/train.py train_sweep) of the softmax model ended in non-finite losses
on an H200 while the Parallax model, whose ops fold the vmapped dim into the batch
(kernels/parallax_kernels/batching.py), matched its separate runs. This compares, at the MAD model's attention shape
(6 members x batch 128, 16 heads of 8, sequence 128, causal, bf16), vmap over SDPA against a loop over
the members, per SDPA backend, and the same for the folding rule of kernels/parallax_kernels/batching.py.

    python3 scripts/offline_gpu/vmap_sdpa_check.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from parallax_kernels.batching import folded_sdpa


def compare(attend, members=6, b=128, h=16, n=128, d=8, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(members, b, h, n, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
               for _ in range(3))
    out = torch.func.vmap(attend)(q, k, v)
    loop = torch.stack([attend(q[i], k[i], v[i]) for i in range(members)])
    grad = torch.randn(out.shape, device="cuda", dtype=dtype, generator=g)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(loop, (q, k, v), grad)
    errs = [(x.float() - y.float()).abs().max().item() for x, y in zip((out, *got), (loop, *want))]
    nonfinite = sum(int((~torch.isfinite(x)).sum()) for x in (out, *got))
    return errs, nonfinite


def main():
    print(torch.__version__, torch.cuda.get_device_name())
    print("| path | max err out | dq | dk | dv | non-finite values |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH):
        def attend(q, k, v, backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def folded(q, k, v, backend=backend):
            return folded_sdpa(q, k, v, is_causal=True, backends=[backend])

        for name, fn in ((f"vmap(sdpa) {backend.name}", attend), (f"folded_sdpa {backend.name}", folded)):
            try:
                errs, bad = compare(fn)
                print(f"| {name} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {bad} |")
            except Exception as e:  # a backend that refuses the shape: say so, go on
                print(f"| {name} | not run: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | |")


if __name__ == "__main__":
    main()
