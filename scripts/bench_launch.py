"""Host time per attention call: how long the host takes to issue one attention forward, and one forward +
backward, at a shape whose GPU work takes a few microseconds, so that the host is what is timed.

    python scripts/bench_launch.py [--shape 1,4,128,128] [--calls 2000] [--peers parallax-cute parallax-triton sdpa-cudnn]
        [--json out.json]

In a training step the host issues every kernel; where it is slower than the GPU work queued before a launch,
the GPU idles (scripts/trace_summary.py names those gaps). Each peer is the function a compiled model calls: the
backends' functions (the torch.library ops behind them) for Parallax and torch SDPA with the cuDNN backend for
softmax, bf16, causal, GQA with Hkv = H / 2. Per peer: `calls` calls back to back after a warm-up, host
microseconds per call (the loop's wall time) and microseconds per call until the GPU is done (the loop's start
to its last kernel's end): where the two agree, the host set the pace.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def peers(names: list[str]):
    """name -> function(q, k, v, r) of the peers that can run here."""
    out = {}
    for name in names:
        if name == "parallax-cute":
            from parallax_kernels.parallax.cute_launch import parallax_attention_cute

            out[name] = lambda q, k, v, r, f=parallax_attention_cute: f(q, k, v, r, causal=True, scale=q.shape[-1] ** -0.5)
        elif name == "parallax-triton":
            from parallax_kernels.parallax.triton_fused import parallax_attention_triton

            out[name] = lambda q, k, v, r, f=parallax_attention_triton: f(q, k, v, r, causal=True,
                                                                          scale=q.shape[-1] ** -0.5)
        elif name == "sdpa-cudnn":
            def softmax(q, k, v, r):
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

            out[name] = softmax
        else:
            raise SystemExit(f"--peers: unknown peer {name!r} (parallax-cute, parallax-triton, sdpa-cudnn)")
    return out


def time_calls(fn, calls: int) -> tuple[float, float]:
    """(host us per call, us per call until the GPU is done) over `calls` calls of fn after 20 warm-up calls."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    return host / calls * 1e6, total / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1,4,128,128", help="B,H,N,D (Hkv = H / 2)")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--peers", nargs="+", default=["parallax-cute", "parallax-triton", "sdpa-cudnn"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_launch.py times kernel launches: it needs a CUDA GPU")
    b, h, n, d = map(int, args.shape.split(","))
    g = torch.Generator(device="cuda").manual_seed(0)
    q, r = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    k, v = (torch.randn(b, h // 2, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    grad = torch.randn_like(q)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, r)]
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}; (B,H,Hkv,N,D) = {(b, h, h // 2, n, d)}, "
          f"bf16, causal, {args.calls} calls a peer")
    print("| peer | forward: host us/call | forward: until the GPU is done | fwd+bwd: host us/call "
          "| fwd+bwd: until the GPU is done |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for name, fn in peers(args.peers).items():
        with torch.no_grad():
            fwd = time_calls(lambda: fn(q, k, v, r), args.calls)
        both = time_calls(lambda: fn(*leaves).backward(grad), args.calls)
        results[name] = dict(fwd_host_us=fwd[0], fwd_done_us=fwd[1], fwd_bwd_host_us=both[0], fwd_bwd_done_us=both[1])
        print(f"| {name} | {fwd[0]:.1f} | {fwd[1]:.1f} | {both[0]:.1f} | {both[1]:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), shape=[b, h, h // 2, n, d], calls=args.calls,
                           peers=results), f, indent=1)


if __name__ == "__main__":
    main()
