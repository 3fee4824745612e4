"""Time the weight diagnostics (per-head stable ranks) of one 0.6B-shaped attention layer on a GPU,
and the activation diagnostics on a 512-token probe, with random weights.

    python scripts/bench_diagnostics.py
"""

import time

import torch

from parallax_titan.diagnostics import attention_stats, weight_stats


def timed(fn, repeats=3):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    w = {n: torch.randn(*s, device=dev, generator=g) * 0.02 for n, s in
         dict(wq=(2048, 1024), wk=(1024, 1024), wv=(1024, 1024), wo=(1024, 2048), wr=(2048, 1024)).items()}
    layer = timed(lambda: weight_stats(w["wq"], w["wk"], w["wv"], w["wo"], w["wr"], 16, 8))
    q, r = torch.randn(16, 512, 128, device=dev, generator=g), torch.randn(16, 512, 128, device=dev, generator=g)
    k, v = torch.randn(8, 512, 128, device=dev, generator=g), torch.randn(8, 512, 128, device=dev, generator=g)
    act = timed(lambda: attention_stats(q, k, v, r, 128 ** -0.5))
    print(f"{torch.cuda.get_device_name()}: weight stats {layer * 1e3:.1f} ms/layer, activation stats "
          f"{act * 1e3:.1f} ms/layer; 28 layers: {(layer + act) * 28:.2f} s per diagnostics call")


if __name__ == "__main__":
    main()
