"""Run the cute forward + backward (or cuDNN softmax) a few times at one shape, for ncu to pick a launch."""
import sys
import torch
from parallax_kernels.parallax.cute_launch import parallax_attention_cute

b, h, hkv, n, d = map(int, sys.argv[1].split(","))
which = sys.argv[2] if len(sys.argv) > 2 else "cute"
gen = torch.Generator(device="cuda").manual_seed(0)
x = [torch.randn(b, hh, n, d, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
     for hh in (h, hkv, hkv, h)]
g = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)
for _ in range(3):
    if which == "cute":
        o = parallax_attention_cute(*x, causal=True, scale=d ** -0.5)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=True, enable_gqa=True)
    o.backward(g)
torch.cuda.synchronize()
print("ok", which, b, h, hkv, n, d)
