# three forward launches of one CuTe forward variant at one shape, for Nsight Compute (which profiles the second)
import sys
import torch
from parallax_kernels.parallax.cute_launch import _launch
b, h, hkv, n, d = map(int, sys.argv[1].split(","))
fields = dict(lpt="lp" in sys.argv[2], persistent="ps" in sys.argv[2]) if len(sys.argv) > 2 else {}
g = torch.Generator().manual_seed(0)
q, k, v, r = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h))
for _ in range(3):
    _launch(q, k, v, r, True, d**-0.5, **fields)
torch.cuda.synchronize()
