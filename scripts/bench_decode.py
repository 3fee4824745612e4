"""Time one Parallax decode step against softmax decode peers, in one run on one GPU.

    python scripts/bench_decode.py [--batches 1 8 64 256 1024 2048] [--lengths 128 1024 8192 32768] [--json out.json]

One query row per (batch, head), H = 16 query heads, Hkv = 8, D = 128, bf16, every sequence's cache
full (length L). Peers, each in its native cache layout:
  parallax-triton   this repo's split-KV Triton kernel (backend="triton", default split count)
  parallax-cute     this repo's CuTe DSL kernel for Hopper (backend="cute"; compiled on first use, or
                    loaded from scripts/build_kernels.py's artefacts in $PARALLAX_KERNEL_DIR)
  parallax-cute-persistent  the same kernel on its persistent grid (one wave of CTAs walking the work
                    items; opt-in: --parallax triton cute cute-persistent; build_kernels.py --persistent)
  fla-parallax      flash-linear-attention's parallax_decode_one_step (fla-core), if installed
  sdpa-<backend>    softmax decode, torch SDPA with each backend that accepts the shape (enable_gqa)
  flex              softmax decode, torch.compile'd FlexAttention (enable_gqa)
flash-attn-4 is not timed: it needs nvidia-cutlass-dsl at run time, whose libs wheel (92 MB) is not on
the device host, and it has no split-KV path on SM90. `--parallax` picks which of this repo's kernels
run (default: triton and cute); one that cannot run here is an error, not a silent omission.

Times are medians of triton.testing.do_bench_cudagraph (CUDA-graph replay, like the paper's latencies).
Bandwidth counts the K and V bytes read (2 B Hkv L D 2), against the device copy bandwidth measured
in the same run. A cell is skipped when its cache would take more than --max-cache-gib.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench_cudagraph

from parallax_titan.ops import parallax_decode

# one compiled FlexAttention per shape; a generous cache so no cell falls back to eager
torch._dynamo.config.cache_size_limit = 256
FLEX = None

H, HKV, D = 16, 8, 128
SDPA_BACKENDS = {
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def copy_bandwidth() -> float:
    """Device copy bandwidth, bytes read + written per second (1 GiB buffer)."""
    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench_cudagraph(lambda: dst.copy_(src), rep=100)
    return 2 * src.numel() * 2 / (ms * 1e-3)


PARALLAX = ("triton", "cute", "cute-persistent")


def decode(q, k, v, r, seqlens, name: str):
    """One of this repo's decode kernels by its --parallax name: a backend of parallax_decode, or
    cute-persistent (the CuTe kernel on its persistent grid, opt-in: the launcher's grid otherwise)."""
    if name == "cute-persistent":
        from parallax_kernels.parallax_decode.cute_launch import parallax_decode_cute

        return parallax_decode_cute(q, k, v, r, seqlens, scale=q.shape[-1] ** -0.5, persistent=True)
    return parallax_decode(q, k, v, r, cache_seqlens=seqlens, backend=name)


def peers(b: int, length: int, dtype, with_flex: bool, parallax=("triton",)):
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)

    q, r = rand(b, H, D), rand(b, H, D)
    k, v = rand(b, HKV, length, D), rand(b, HKV, length, D)
    seqlens = torch.full((b,), length, dtype=torch.int32, device="cuda")
    out = {f"parallax-{name}": ("parallax", lambda name=name: decode(q, k, v, r, seqlens, name)) for name in parallax}
    try:
        from fla.ops.parallax.decode import parallax_decode_one_step

        # fla's layout: (B, S, H, D); a second copy of the cache, freed with the closure
        kt, vt = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        qt, rt = q[:, None].contiguous(), r[:, None].contiguous()
        out["fla-parallax"] = ("parallax", lambda: parallax_decode_one_step(qt, rt, kt, vt))
    except ImportError:
        pass
    q4 = q[:, :, None]
    for name, backend in SDPA_BACKENDS.items():
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q4, k, v, enable_gqa=True)
        out[name] = ("softmax", run)
    if with_flex:
        out["flex"] = ("softmax", lambda: FLEX(q4, k, v, enable_gqa=True))
    return out, (q, k, v, r, seqlens)


def check(q, k, v, r, seqlens, backend: str) -> float:
    """Relative error of one of this repo's kernels against the float64 definition on this cell's inputs."""
    from parallax_kernels.parallax_decode.torch_split import parallax_decode_reference

    got = decode(q, k, v, r, seqlens, backend).double()
    ref = parallax_decode_reference(q.double(), k.double(), v.double(), r.double(), seqlens, scale=D**-0.5)
    return float((got - ref).abs().max() / ref.abs().max())


SWEEP_CELLS = [(1, 8192), (1, 32768), (8, 8192), (64, 8192), (256, 1024), (2048, 128)]


def sweep(dtype) -> None:
    """Parallax kernel settings (key tile, warps, stages, splits) on a few cells, to choose defaults."""
    from parallax_kernels.parallax_decode.triton_split import default_num_splits, parallax_decode_triton

    print("| B | L | default splits | block_n | warps | stages | splits | us |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for b, length in SWEEP_CELLS:
        cell, (q, k, v, r, seqlens) = peers(b, length, dtype, False)
        base = default_num_splits(b, HKV, length, q.device, 64)
        results = []
        for block_n in (64, 128):
            for warps in (4, 8):
                for stages in (2, 3, 4):
                    for splits in sorted({1, max(1, base // 2), base, min(32, base * 2)}):
                        fn = lambda: parallax_decode_triton(q, k, v, r, seqlens, scale=D**-0.5, num_splits=splits,
                                                            block_n=block_n, num_warps=warps, num_stages=stages)
                        try:
                            fn()
                            results.append((do_bench_cudagraph(fn, rep=30) * 1e3, block_n, warps, stages, splits))
                        except Exception as err:  # e.g. out of shared memory
                            print(f"  B={b} L={length} {block_n}/{warps}/{stages}/{splits}: {type(err).__name__}")
        for us, block_n, warps, stages, splits in sorted(results)[:4]:
            print(f"| {b} | {length} | {base} | {block_n} | {warps} | {stages} | {splits} | {us:.1f} |")
        default = [x for x in results if x[1:] == (64, 4, 2, base)]
        if default:
            print(f"| {b} | {length} | {base} | 64 | 4 | 2 | {base} (default) | {default[0][0]:.1f} |")
        del cell
        torch.cuda.empty_cache()


CUTE_SWEEP_CELLS = [(1, 1024), (1, 8192), (1, 32768), (8, 1024), (8, 8192), (8, 32768), (64, 1024), (64, 8192),
                    (256, 128), (1024, 128)]


def sweep_cute(dtype, block_ns=(32, 64, 16), cells=CUTE_SWEEP_CELLS) -> None:
    """The CuTe kernel's key tile and split count on the cells where they matter (small batches, and
    short caches at large batch), against cuDNN's softmax decode in the same run, to choose its grid
    defaults. Tiles other than 32 run only where their artefacts exist (scripts/build_kernels.py --block-n),
    and so does the cluster merge (--cluster; shown as the tile with a "c", e.g. 64c/4) and the persistent
    grid (--persistent; a "p", e.g. 32p/1)."""
    from parallax_kernels.parallax_decode.cute_variant import DecodeVariant
    from parallax_kernels.parallax_decode.cute_launch import default_artefact_dir, default_cluster_merge, default_grid, parallax_decode_cute
    from parallax_kernels.parallax_decode.triton_split import _sm_count

    sms = _sm_count(torch.device("cuda"))
    folder = default_artefact_dir()

    def built(block_n: int, **kind) -> bool:  # whether this run's variant has an artefact in the kernel folder
        return (folder / f"{DecodeVariant('bfloat16', D, H // HKV, block_n, **kind).name}.json").exists()

    block_ns = [n for n in block_ns if n == 32 or built(n)]
    print(f"{sms} SMs; key tiles {block_ns}")
    print("| B | L | sdpa-cudnn us | default block_n/splits | default us | best block_n | best splits | best us |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for b, length in cells:
        cell, (q, k, v, r, seqlens) = peers(b, length, dtype, False)
        cudnn = do_bench_cudagraph(cell["sdpa-cudnn"][1], rep=30) * 1e3
        base = default_grid(b, HKV, length, sms)
        default = lambda: parallax_decode_cute(q, k, v, r, seqlens, scale=D**-0.5)  # grid and merge by default
        default()
        default_us = do_bench_cudagraph(default, rep=30) * 1e3
        default_name = f"{base[0]}{'c' if default_cluster_merge(b, HKV, base[1], sms) else ''}/{base[1]}"
        times = {}
        for block_n in sorted(set(block_ns if b <= 8 else [32]) | {base[0]}):  # the default always
            for splits in sorted({1, 2, 4, 8, 12, 16, 24, 32, 48} | ({base[1]} if block_n == base[0] else set())):
                if splits > max(1, length // block_n):
                    continue
                fn = lambda s=splits, n=block_n: parallax_decode_cute(q, k, v, r, seqlens, scale=D**-0.5,
                                                                      num_splits=s, block_n=n, cluster_merge=False)
                fn()
                times[(block_n, splits)] = do_bench_cudagraph(fn, rep=30) * 1e3
        for block_n in block_ns if b <= 8 else []:  # the cluster merge, where its artefacts exist
            for splits in (2, 4, 8, 16):
                if splits > length // block_n or not built(block_n, cluster=splits):
                    continue
                fn = lambda s=splits, n=block_n: parallax_decode_cute(q, k, v, r, seqlens, scale=D**-0.5,
                                                                      num_splits=s, block_n=n, cluster_merge=True)
                fn()
                times[(f"{block_n}c", splits)] = do_bench_cudagraph(fn, rep=30) * 1e3
        for block_n in sorted(set(block_ns if b <= 8 else [32]) | {base[0]}):  # the persistent grid, where built
            if not built(block_n, persistent=True):
                continue
            for splits in sorted({1, 4, 16, base[1]} if b <= 8 else {1, base[1]}):
                if splits > max(1, length // block_n):
                    continue
                fn = lambda s=splits, n=block_n: parallax_decode_cute(q, k, v, r, seqlens, scale=D**-0.5,
                                                                      num_splits=s, block_n=n, persistent=True)
                fn()
                times[(f"{block_n}p", splits)] = do_bench_cudagraph(fn, rep=30) * 1e3
        best = min(times, key=times.get)
        print(f"| {b} | {length} | {cudnn:.1f} | {default_name} | {default_us:.1f} | {best[0]} | {best[1]} | "
              f"{times[best]:.1f} |")
        print("    all (block_n/splits: us): " + ", ".join(f"{n}/{s}: {t:.1f}" for (n, s), t in times.items()))
        del cell
        torch.cuda.empty_cache()


def parse_cells(parser, cells: list[str]) -> list[tuple[int, int]]:
    """--cells B:L ... as (batch, length) pairs; a malformed one is an error that names it."""
    out = []
    for cell in cells:
        try:
            b, length = (int(x) for x in cell.split(":"))
        except ValueError:
            parser.error(f"--cells: {cell!r} is not B:L (two integers, e.g. 64:1024)")
        out.append((b, length))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256, 1024, 2048])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 8192, 32768])
    parser.add_argument("--max-cache-gib", type=float, default=None, help="default: 40%% of GPU memory")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (it compiles per shape)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--sweep", nargs="?", const="triton", choices=("triton", "cute"), default=None,
                        help="only sweep one Parallax kernel's settings (default: triton)")
    parser.add_argument("--cells", nargs="+", default=None, metavar="B:L",
                        help="the cells of --sweep cute (default: %s)" % " ".join(f"{b}:{n}" for b, n in CUTE_SWEEP_CELLS))
    parser.add_argument("--parallax", nargs="+", choices=PARALLAX, default=["triton", "cute"],
                        help="this repo's decode kernels to time")
    args = parser.parse_args()
    if args.cells and args.sweep != "cute":
        parser.error("--cells picks the cells of --sweep cute; it does nothing without it")
    from parallax_titan.ops import DECODE_BACKENDS

    probe = torch.empty(1, H, D, device="cuda", dtype=torch.bfloat16)
    for name in args.parallax:
        reason = DECODE_BACKENDS[name.removesuffix("-persistent")].unavailable_reason(probe)
        if reason:
            parser.error(f"--parallax {name}: unavailable here: {reason}")
    if args.sweep:
        if args.sweep == "cute":
            sweep_cute(torch.bfloat16, cells=parse_cells(parser, args.cells) if args.cells else CUTE_SWEEP_CELLS)
        else:
            sweep(torch.bfloat16)
        return
    global FLEX
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention

        FLEX = torch.compile(flex_attention, dynamic=False)
    dtype = torch.bfloat16
    total = torch.cuda.get_device_properties(0).total_memory
    limit = (args.max_cache_gib * 2**30) if args.max_cache_gib else 0.4 * total
    bandwidth = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print(f"H={H} Hkv={HKV} D={D} bf16, one query row, full caches; times in microseconds (CUDA-graph medians)")
    rows = []
    for b in args.batches:
        for length in args.lengths:
            cache_bytes = 2 * b * HKV * length * D * 2
            if cache_bytes > limit:
                print(f"B={b} L={length}: skipped (cache {cache_bytes / 2**30:.1f} GiB > {limit / 2**30:.1f} GiB)")
                continue
            cell, inputs = peers(b, length, dtype, not args.no_flex, args.parallax)
            errors = {name: check(*inputs, name) for name in args.parallax} if b * length <= 8 * 32768 else {}
            times = {}
            for name, (_, fn) in cell.items():
                try:
                    fn()
                    times[name] = do_bench_cudagraph(fn, rep=50) * 1e3
                except RuntimeError as err:  # a backend that refuses the shape
                    times[name] = None
                    print(f"  B={b} L={length} {name}: not run ({str(err).splitlines()[0][:90]})")
            softmax = {n: t for n, t in times.items() if cell[n][0] == "softmax" and t is not None}
            best = min(softmax, key=softmax.get)
            ours = {name: times[f"parallax-{name}"] for name in args.parallax}
            row = {
                "B": b, "L": length, "times_us": times, "fastest_softmax": best,
                "ratio_to_fastest_softmax": {n: t / softmax[best] for n, t in ours.items()},
                "parallax_bandwidth_fraction": {n: cache_bytes / (t * 1e-6) / bandwidth for n, t in ours.items()},
                "softmax_bandwidth_fraction": cache_bytes / (softmax[best] * 1e-6) / bandwidth,
                "rel_error_vs_fp64": errors,
            }
            if times.get("fla-parallax"):
                row["ratio_to_fla"] = {n: t / times["fla-parallax"] for n, t in ours.items()}
            rows.append(row)
            del cell, inputs
            torch.cuda.empty_cache()
    names = list(rows[0]["times_us"]) if rows else []
    ours = args.parallax
    per_kernel = [f"{n} / fastest" for n in ours] + [f"{n} / fla" for n in ours] + [f"{n} BW" for n in ours]
    print("\n| B | L | " + " | ".join(names) + " | fastest softmax | " + " | ".join(per_kernel)
          + " | softmax BW | " + " | ".join(f"{n} rel err" for n in ours) + " |")
    print("|---|---|" + "---:|" * (len(names) + 1 + 4 * len(ours) + 1))
    for row in rows:
        cells = " | ".join("-" if row["times_us"][n] is None else f"{row['times_us'][n]:.1f}" for n in names)
        ratios = " | ".join(f"{row['ratio_to_fastest_softmax'][n]:.2f}" for n in ours)
        fla = " | ".join(f"{row['ratio_to_fla'][n]:.2f}" if "ratio_to_fla" in row else "-" for n in ours)
        bw = " | ".join(f"{row['parallax_bandwidth_fraction'][n]:.0%}" for n in ours)
        err = " | ".join(f"{row['rel_error_vs_fp64'][n]:.1e}" if n in row["rel_error_vs_fp64"] else "-" for n in ours)
        print(f"| {row['B']} | {row['L']} | {cells} | {row['fastest_softmax']} | {ratios} | {fla} | {bw} | "
              f"{row['softmax_bandwidth_fraction']:.0%} | {err} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_bandwidth": bandwidth, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
