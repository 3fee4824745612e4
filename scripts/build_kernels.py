"""Compile the CuTe DSL Parallax kernels ahead of time, for GPU hosts without nvidia-cutlass-dsl.

    python scripts/build_kernels.py --out build/kernels                 # every default decode variant (128, about 3 s each)
    python scripts/build_kernels.py --out build/kernels --dtype bfloat16 --head-dim 128 --group 2
    python scripts/build_kernels.py --attention --out build/kernels     # the attention forward and backward: dtype x
                                                                        # head_dim x causal/full x packed documents
                                                                        # or not, and the persistent forward the
                                                                        # backends launch for short causal sequences
                                                                        # (20 + 32, 2-5 s each)

Runs on any machine with the package, GPU or not (it targets sm_90a). Copy the folder to the GPU host
and point PARALLAX_KERNEL_DIR at it (default there: ~/.cache/parallax_titan/kernels); the decode op
then loads the cubins through the CUDA driver without the DSL. Hosts with the package compile missing
variants on first use and need none of this.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")  # before cutlass is imported: no GPU to ask

from parallax_kernels.parallax_decode.cute_variant import DTYPES, HALF, HEAD_DIMS, DecodeVariant  # noqa: E402
from parallax_kernels.parallax_decode.cute_launch import ARCH, DEFAULT_CLUSTERS, default_artefact_dir, write_artefact  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=default_artefact_dir())
    p.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--head-dim", nargs="+", type=int, default=list(HEAD_DIMS))
    p.add_argument("--group", nargs="+", type=int, default=[1, 2, 4, HALF], help="query heads per KV head")
    p.add_argument("--block-n", type=int, nargs="+", default=[32, 64], help="keys per warp tile (the launcher picks 32 or 64 by batch and cache length; kernels/parallax_kernels/parallax_decode/cute_launch.py default_grid)")
    p.add_argument("--cluster", type=int, nargs="+", default=[0, *DEFAULT_CLUSTERS],
                   help="0: the ticket merge (any split count); 2..16: the cluster merge for exactly that many "
                        "splits (default: the ticket merge and the cluster sizes the launcher's default grid "
                        "picks, kernels/parallax_kernels/parallax_decode/cute_launch.py default_cluster_merge)")
    p.add_argument("--attention", action="store_true",
                   help="build the attention forward and backward (backends 'cute' and 'cute_deterministic' of parallax_attention) instead of the decode "
                        "kernel: every --dtype x --head-dim x --causal x --documents variant (--group, --block-n, --cluster and "
                        "--persistent are the decode kernel's)")
    p.add_argument("--causal", type=int, nargs="+", default=[1, 0], choices=[0, 1],
                   help="attention masks to build: 1 causal, 0 full (with --attention)")
    p.add_argument("--documents", type=int, nargs="+", default=[0, 1], choices=[0, 1],
                   help="1: the packed-documents variants (document_ids / cu_seqlens), 0: the plain ones (with "
                        "--attention)")
    p.add_argument("--stages", type=int, nargs="+", default=[3], help="K/V stages (with --attention)")
    p.add_argument("--attention-block-n", type=int, nargs="+", default=[0],
                   help="keys per tile (with --attention; 0: the default for the head_dim)")
    p.add_argument("--pingpong", type=int, nargs="+", default=[1], choices=[0, 1],
                   help="1: the consumer warpgroups take turns issuing S, T (the default); 0: they do not "
                        "(with --attention, for benchmarks)")
    p.add_argument("--lazy-rescale", type=int, nargs="+", default=[1], choices=[0, 1],
                   help="1: rows whose max did not move skip the output rescale (the default); 0: every row is "
                        "rescaled every tile (with --attention, for benchmarks)")
    p.add_argument("--stacked", type=int, nargs="+", default=[1], choices=[0, 1],
                   help="1: the stacked forward (Q and R rows in one wgmma operand, 64 query rows a CTA, 96 at "
                        "head_dim 64; AttentionVariant.stacked; the default), 0: separate S and T chains (with --attention)")
    p.add_argument("--overlap", type=int, nargs="+", default=None, choices=[0, 1],
                   help="1: with --stacked 1, each tile's softmax overlaps the previous tile's P V "
                        "(AttentionVariant.overlap; with --attention; default: 1 stacked, 0 not); combinations "
                        "with --stacked 0 are skipped")
    p.add_argument("--lpt", type=int, nargs="+", default=None, choices=[0, 1],
                   help="1: CTAs take their query tiles longest first across groups of heads "
                        "(AttentionVariant.lpt; with --attention), 0: head by head (default, with neither this nor "
                        "--forward-persistent: the orders the backends launch, cute_variant.forward_order: head by "
                        "head, and for the causal default layout without documents also lpt and persistent)")
    p.add_argument("--forward-persistent", type=int, nargs="+", default=None, choices=[0, 1],
                   help="1: at most one CTA an SM, each walking the work items in the --lpt order "
                        "(AttentionVariant.persistent; with --attention), 0: one CTA a work item (default: see --lpt)")
    p.add_argument("--forward-warpgroups", type=int, nargs="+", default=[0], choices=[0, 2, 3],
                   help="consumer warpgroups of the forward (with --attention; AttentionVariant.warpgroups): 0, the "
                        "default for the head_dim (3 stacked at head_dim 64, else 2); 2; 3 (built for the stacked "
                        "head_dim-64 kernel only)")
    p.add_argument("--backward-block-m", type=int, nargs="+", default=[0], choices=[0, 32, 64],
                   help="query rows per backward step (with --attention; 0: the default for the head_dim)")
    p.add_argument("--backward-stages", type=int, nargs="+", default=[2], choices=[2, 3],
                   help="Q/R/dO stages of the backward (with --attention)")
    p.add_argument("--backward-deterministic", type=int, nargs="+", default=[1, 0], choices=[0, 1],
                   help="1: dQ/dR added in key-tile order (backend 'cute_deterministic'), 0: in any order ('cute')")
    p.add_argument("--backward-lpt", type=int, nargs="+", default=[1], choices=[0, 1],
                   help="1: the backward's CTAs take key tile 0 of every KV head of a group first "
                        "(BackwardVariant.lpt; the default), 0: head by head")
    p.add_argument("--backward-decoupled", type=int, nargs="+", default=[0], choices=[0, 1],
                   help="1: each consumer warpgroup issues a query tile's dQ^T / dR^T chain a step later, after the "
                        "other's ds^T / dt^T of it (BackwardVariant.decoupled), 0: both meet on every tile (the "
                        "default)")
    p.add_argument("--backward-k-registers", type=int, nargs="+", default=[0], choices=[0, 1],
                   help="1: each consumer warpgroup holds its keys of K in registers as the score chain's A operand "
                        "(BackwardVariant.k_registers; built for head_dim 64 only), 0: K read from shared memory "
                        "(the default)")
    p.add_argument("--backward-warp-adds", type=int, nargs="+", default=None, choices=[0, 1],
                   help="1: each consumer warp stages and adds its own rows of dQ^T / dR^T (BackwardVariant.warp_adds), "
                        "0: each consumer warpgroup its share; default: the head_dim's (cute_variant."
                        "DEFAULT_BWD_WARP_ADDS: 1 at head_dim 64, 0 at 128); 0 1 builds both")
    p.add_argument("--no-backward", action="store_true", help="with --attention: the forward variants only")
    p.add_argument("--persistent", action="store_true",
                   help="also build the persistent-grid variant of each ticket-merge kernel (opt-in: "
                        "parallax_decode_cute(..., persistent=True))")
    args = p.parse_args(argv)
    if os.environ["CUTE_DSL_ARCH"] != ARCH:
        sys.exit(f"CUTE_DSL_ARCH={os.environ['CUTE_DSL_ARCH']}: the kernel and its launcher are for {ARCH}")
    from importlib.metadata import version

    from parallax_kernels.parallax_decode.cute_kernel import compile_variant

    dsl = version("nvidia-cutlass-dsl")
    if args.attention:
        build_attention(args, dsl)
        return
    persistent = [False, True] if args.persistent else [False]
    for dtype, head_dim, group, block_n, cluster, pers in itertools.product(
            args.dtype, args.head_dim, args.group, args.block_n, args.cluster, persistent):
        if pers and cluster:  # a persistent grid merges with the ticket only
            continue
        build(DecodeVariant(dtype, head_dim, group, block_n, cluster, pers), compile_variant, write_artefact,
              args.out, dsl)


def build_attention(args, dsl: str) -> None:
    from parallax_kernels.parallax import cute_backward
    from parallax_kernels.parallax.cute_kernel import compile_variant
    from parallax_kernels.parallax.cute_launch import write_artefact
    from parallax_kernels.parallax.cute_variant import AttentionVariant, BackwardVariant, launched_forward_orders

    layouts = [(stacked, overlap) for stacked in args.stacked
               for overlap in (args.overlap if args.overlap is not None else [stacked]) if stacked or not overlap]
    named = args.lpt is not None or args.forward_persistent is not None
    orders = [dict(lpt=bool(lpt), persistent=bool(persistent)) for lpt in args.lpt or [0]
              for persistent in args.forward_persistent or [0]]
    built = set()
    for (dtype, head_dim, causal, docs, block_n, stages, pingpong, lazy, (stacked, overlap), warpgroups) in \
            itertools.product(args.dtype, args.head_dim, args.causal, args.documents, args.attention_block_n,
                              args.stages, args.pingpong, args.lazy_rescale, layouts, args.forward_warpgroups):
        if warpgroups == 3 and not (stacked and head_dim == 64):  # three warpgroups: the stacked d64 kernel only
            continue
        variant = AttentionVariant(dtype, head_dim, bool(causal), block_n=block_n, stages=stages,
                                   pingpong=bool(pingpong), lazy_rescale=bool(lazy), documents=bool(docs),
                                   stacked=bool(stacked), overlap=bool(overlap), warpgroups=warpgroups)
        # no order named: the backends' orders for their layout (launched_forward_orders), head by head for others
        launched = variant == AttentionVariant(dtype, head_dim, bool(causal), documents=bool(docs))
        for order in orders if named else launched_forward_orders(bool(causal), bool(docs)) if launched else [{}]:
            forward = replace(variant, **order)
            if forward not in built:  # (the default and its explicit spelling are one variant)
                built.add(forward)
                build(forward, compile_variant, write_artefact, args.out, dsl)
    if args.no_backward:
        return
    for dtype, head_dim, causal, docs, block_m, stages, ordered, lpt, decoupled, k_registers, warp_adds in \
            itertools.product(args.dtype, args.head_dim, args.causal, args.documents, args.backward_block_m,
                              args.backward_stages, args.backward_deterministic, args.backward_lpt,
                              args.backward_decoupled, args.backward_k_registers, args.backward_warp_adds or [None]):
        if k_registers and head_dim != 64:  # K in registers: the head_dim-64 kernel only
            continue
        build(BackwardVariant(dtype, head_dim, bool(causal), block_m=block_m, stages=stages,
                              deterministic=bool(ordered), documents=bool(docs), lpt=bool(lpt),
                              decoupled=bool(decoupled), k_registers=bool(k_registers),
                              warp_adds=None if warp_adds is None else bool(warp_adds)),
              cute_backward.compile_variant, write_artefact, args.out, dsl)


def build(variant, compile_variant, write_artefact, out: Path, dsl: str) -> None:
    """Check, compile and write one variant's artefact (decode, attention forward or backward), and say so."""
    variant.check()
    start = time.time()
    cubin, ptx, name = compile_variant(variant)
    path = write_artefact(out, variant, cubin, ptx, name, dsl)
    print(f"{variant.name}: {len(cubin)} bytes in {time.time() - start:.1f} s -> {path}", flush=True)


if __name__ == "__main__":
    main()
