"""Compile the fused attention kernels for a GPU architecture on a machine without one, and print what each
uses per thread: registers, stack frame (spills land there), as cuobjdump reports them.

    python scripts/kernel_resources.py [--head-dim 128] [--tiles 128x64:8:3 64x64:4:2] [--arch 90]
        [--reference-kernel FILE]      # the same counts for another version of kernels/parallax_kernels/parallax/triton_fused.py
        [--all-masks]                  # also non-causal and with document masks (default: causal only)
    python scripts/kernel_resources.py --cute [--head-dim 128 64]   # the CuTe DSL attention forward and backward (sm_90a)

Static counts, not timings: a larger stack frame at 255 registers means spills, which usually cost time, but
only a GPU run (scripts/bench_attention.py) says how much. It also finds what Triton's CPU interpreter
cannot: code that does not compile for a GPU. Uses the ptxas and cuobjdump that ship in Triton's wheel;
bf16 inputs. Run it without TRITON_INTERPRET=1 (under the interpreter, kernels are not compiled).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/ (for the reference loader)

INT_ARGS = ("N_CTX", "N_BUCKET", "H", "HKV", "GROUP")
POINTER_DTYPES = {"LSE": "*fp32", "TBAR": "*fp32", "DROW": "*fp32", "E": "*fp32",
                  "DOC": "*i32", "DOC_START": "*i32", "DOC_END": "*i32"}


def signature(fn, constexprs: dict, pointers: dict) -> dict:
    """Triton types of a kernel's arguments, by this repo's naming: s_* strides and sizes are i32,
    scales fp32, named pointers as given, every other pointer bf16."""
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in pointers:
            types[name] = pointers[name]
        elif name.startswith("s_") or name in INT_ARGS:
            types[name] = "i32"
        elif name in ("scale", "scale_log2"):
            types[name] = "fp32"
        else:
            types[name] = "*bf16"
    return types


def resource_usage(fn, constexprs: dict, num_warps: int, num_stages: int, arch: int, pointers=None) -> dict:
    pointers = {**POINTER_DTYPES, **(pointers or {})}
    kernel = triton.compile(ASTSource(fn, signature(fn, constexprs, pointers), constexprs=constexprs),
                            target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
    fields = cubin_usage(kernel.asm["cubin"])
    return {"registers": int(fields["REG"]), "stack": int(fields["STACK"]), "shared": kernel.metadata.shared}


def tool(name: str) -> str:
    """A CUDA binary tool (cuobjdump, ptxas) from Triton's package."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def cubin_usage(cubin: bytes) -> dict[str, str]:
    """cuobjdump's per-kernel resource line (REG, STACK, SHARED, LOCAL, ...) of a cubin as a dict."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                                check=True).stdout
    line = next(x for x in report.splitlines() if "REG:" in x)
    return dict(item.split(":", 1) for item in line.split() if ":" in item)


def kernels_of(module) -> dict:
    """name -> (jit function, extra constexprs, extra pointer types) for the forward and backward kernels."""
    found = {"forward": (module._fwd_kernel.fn, {}, {}), "dQ/dR": (module._bwd_dqdr_kernel.fn, {}, {})}
    if hasattr(module, "_bwd_dkdv"):  # since the one-kernel backward: one jit function, two autotuners
        found["dK/dV"] = (module._bwd_dkdv, {"ATOMIC_DQ": False}, {})
        found["dK/dV + atomic dQ/dR"] = (module._bwd_dkdv, {"ATOMIC_DQ": True}, {"DQ": "*fp32", "DR": "*fp32"})
    else:
        found["dK/dV"] = (module._bwd_dkdv_kernel.fn, {}, {})
    return found


def ptxas_notes(report: str) -> str:
    """What ptxas -v says about a kernel's wgmmas: "serialised" when it makes every wgmma wait for the previous one
    (C7514: an accumulator read it cannot match to a wait), else the waits and fences it adds of its own (C7517,
    C7519: cheap where they sit outside the main loop, which this count does not tell)."""
    if "C7514" in report or "instructions are serialized" in report:
        return "wgmmas serialised (C7514)"
    waits, fences = report.count("(C7517)"), report.count("(C7519)")
    return f"{waits} waits, {fences} fences added"


def cute_resources(head_dims: list[int]) -> None:
    """Registers, stack, shared memory and ptxas's wgmma notes of the CuTe DSL attention forward (the default, stacked with the
    overlap; stacked without it; unstacked) and backward (backends "cute", "cute_deterministic", each also
    decoupled), compiled here for sm_90a (needs nvidia-cutlass-dsl, no GPU). The
    register count is the kernel's at launch: the warpgroups then move to 24 (producer) and 240 (consumers; 160
    with three consumer warpgroups, the head_dim-64 forward's default) with setmaxnreg; spills show as stack
    bytes."""
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    from parallax_kernels.parallax import cute_backward, cute_kernel
    from parallax_kernels.parallax.cute_variant import AttentionVariant, BackwardVariant

    print("sm_90a, bf16; per thread: registers at launch / stack bytes; shared bytes; what ptxas says of the wgmmas")
    print("| variant | registers / stack; shared | wgmmas |")
    print("|---|---:|---|")
    for d in head_dims:
        for causal in (True, False):
            variants = [(cute_kernel, AttentionVariant("bfloat16", d, causal, stacked=stacked, overlap=overlap))
                        for stacked, overlap in ((True, True), (True, False), (False, False))]
            variants += [(cute_backward, BackwardVariant("bfloat16", d, causal, deterministic=ordered,
                                                         decoupled=decoupled))
                         for decoupled in (False, True) for ordered in (False, True)]
            for module, variant in variants:
                cubin, ptx, _ = module.compile_variant(variant)
                fields = cubin_usage(cubin)
                with tempfile.TemporaryDirectory() as tmp:
                    ptx_path = os.path.join(tmp, "k.ptx")
                    with open(ptx_path, "w") as f:
                        f.write(ptx)
                    ptxas = subprocess.run([tool("ptxas"), "-arch=sm_90a", "-v", "-o", os.path.join(tmp, "k.cubin"),
                                            ptx_path], capture_output=True, text=True, check=True)
                print(f"| {variant.name} | {fields['REG']} / {fields['STACK']}; {variant.smem_bytes} | "
                      f"{ptxas_notes(ptxas.stdout + ptxas.stderr)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dim", type=int, nargs="+", default=[128])
    ap.add_argument("--cute", action="store_true",
                    help="the CuTe DSL attention forward and backward instead of the Triton kernels")
    ap.add_argument("--tiles", nargs="+", default=["128x64:8:3", "64x64:4:2", "128x32:8:2", "32x128:8:2"],
                    help="BLOCK_MxBLOCK_N:warps:stages")
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for Hopper")
    ap.add_argument("--reference-kernel", default=None)
    ap.add_argument("--all-masks", action="store_true", help="also non-causal, and with document masks")
    args = ap.parse_args()
    if args.cute:
        cute_resources(args.head_dim)
        return
    args.head_dim = args.head_dim[0]
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_resources.py compiles the kernels: unset TRITON_INTERPRET")
    tiles = []
    for tile in args.tiles:
        try:
            blocks, warps, stages = tile.split(":")
            tiles.append((tile, *map(int, blocks.split("x")), int(warps), int(stages)))
        except ValueError:
            raise SystemExit(f"--tiles {tile!r}: expected BLOCK_MxBLOCK_N:warps:stages, e.g. 128x64:8:3")
    masks = [(True, False)] + ([(False, False), (True, True), (False, True)] if args.all_masks else [])
    import parallax_kernels.parallax.triton_fused as current

    versions = {"current": current}
    if args.reference_kernel:
        from bench_attention import load_reference_kernel

        versions["reference"] = load_reference_kernel(args.reference_kernel)
    print(f"sm_{args.arch}, head_dim {args.head_dim}, bf16; per thread: registers / stack bytes; shared bytes")
    print("| kernel | masks | tiles:warps:stages | " + " | ".join(versions) + " |")
    print("|---|---|---|" + "---:|" * len(versions))
    kernel_sets = {label: kernels_of(module) for label, module in versions.items()}
    names = dict.fromkeys(name for kernels in kernel_sets.values() for name in kernels)
    for (tile, block_m, block_n, warps, stages), (causal, docs), name in (
            (t, m, n) for t in tiles for m in masks for n in names):
        base = dict(HEAD_DIM=args.head_dim, CAUSAL=causal, HAS_DOC=docs, BLOCK_M=block_m, BLOCK_N=block_n,
                    DOT_FP32=False)
        label = ("causal" if causal else "full") + (" + documents" if docs else "")
        cells = []
        for kernels in kernel_sets.values():
            entry = kernels.get(name)
            if entry is None:
                cells.append("-")
                continue
            fn, extra, pointers = entry
            use = resource_usage(fn, {**base, **extra}, warps, stages, args.arch, pointers)
            cells.append(f"{use['registers']} / {use['stack']}; {use['shared']}")
        print(f"| {name} | {label} | {tile} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
