"""Time Parallax attention against its peers, in one run on one GPU.

    python scripts/bench_attention.py [--shapes 8,16,2048,128 4,16,4096,128 ...] [--kv-ratio 2] [--json out.json]
        [--reference-kernel FILE]      # e.g. FILE from `git show REF:kernels/parallax_kernels/parallax/triton_fused.py`
        [--peers parallax-cute parallax-triton sdpa-cudnn ...]   # time only these (default: every peer available)
        [--cute-variants s2 s3 s3np s3er s3n64 s3st s3stov s3lp s3stovw3 ...]   # also time these CuTe forward variants
                                     # (K/V stages; np: no warpgroup turns; er: every row rescaled every tile;
                                     # st: stacked Q/R operand; ov: softmax beside the previous P V; lp: longest
                                     # tiles first across heads; ps: one CTA an SM walking the work items
                                     # in that order or head by head; w3: three consumer warpgroups, head_dim
                                     # 64, else two; n64: 64-key tiles; the default is s3stov, at head_dim 64
                                     # s3stovw3, and for causal sequences of at most 4096 tokens s3stovlpps
                                     # (s3stovlppsw3): cute_variant.forward_order)
        [--cute-backward-variants b2 b3 b2hh b2g4 b2dc b2kr b2wa b2wg ...]   # also time these CuTe backward
                                     # variants (Q/R/dO stages; hh: head by head; g4: the lpt order in groups of 4
                                     # KV heads; dc: the warpgroups decoupled; kr: K in registers, head_dim 64;
                                     # wa / wg: dQ/dR added by each warp / each warpgroup, neither: the
                                     # head_dim's default (wa at 64, wg at 128); m<block_m>: query rows a step)
        [--documents MEAN]             # pack each row with documents of random lengths, MEAN tokens on average
        [--repeat N]                   # time the default and the named CuTe variants N times each, in turn
        [--peer-rounds N]              # time the peers N times each, in turn (medians and ranges)
        [--gpu-samples]                # sample the GPU's SM clock, power and throttle reasons while timing

Peers, each in its native layout, causal, bf16, GQA with Hkv = H / kv-ratio:
  parallax-triton  this repo's fused kernel (backend="triton")
  parallax-cute    the CuTe DSL Hopper forward and backward (backend="cute", kernels/parallax_kernels/parallax/
                   cute_launch.py), where it can run (a Hopper GPU, its prebuilt kernels or nvidia-cutlass-dsl)
  parallax-cute-deterministic  the same with dQ/dR added in key order (backend="cute_deterministic")
  parallax-triton-atomic  the same with its one-kernel backward, dQ/dR by fp32 atomics (backend="triton_atomic")
  parallax-triton-reference  with --reference-kernel: another version of kernels/parallax_kernels/parallax/triton_fused.py (an
                   earlier commit's), so that a kernel change is timed against what it changed in one run
  parallax-torch   this repo's chunked eager backend (backend="torch"), skipped where it would be slow
  fla-parallax     flash-linear-attention's parallel_parallax (fla-core), if installed
  sdpa-flash       softmax attention, torch SDPA with the FLASH_ATTENTION backend
  sdpa-cudnn       softmax attention, torch SDPA with the CUDNN_ATTENTION backend
  flex-softmax     with --documents only (SDPA and fla's kernel take no document mask here): softmax attention,
                   torch's FlexAttention (compiled) with the causal document block mask

FLOPs (causal, half the N x N): softmax forward F = 2 B H N^2 D, backward 2.5 F (FlashAttention's
convention, recomputation included). Parallax forward 2 F (4 matmuls), backward 8/5 of softmax's = 4 F.
With --documents, N^2 is the sum of the documents' L^2: the pairs a document mask leaves visible.
Times are medians of triton.testing.do_bench; memory is the peak allocated during one fwd+bwd. With --repeat N
the CuTe variants and the default (`default`) are timed in N rounds, one timing of each per round, and each gets
the median of its N timings and their range: a GPU's clock moves under a long run, and variants timed in turn meet
the same clocks, where single timings a few seconds apart can differ by more than the variants do. --peer-rounds N
does the same for the peers' table, so that the ratios to cuDNN's softmax are of medians of timings taken in turn.
The table's backward alone is each round's fwd+bwd time minus that round's fwd time (their median over rounds).
--gpu-samples runs nvidia-smi beside the timings (scripts/gpu_samples.py) and reports, per shape, the SM clock and
power of the samples taken during its do_bench calls and how often the power cap or heat held the clocks: a Hopper
board timed over and over runs at its power limit.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from triton.testing import do_bench

from parallax_titan.ops import parallax_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.gpu_samples import GpuSamples, describe, nvidia_smi_id  # noqa: E402

DEFAULT_SHAPES = ["8,16,2048,128", "4,16,4096,128", "2,16,8192,128", "4,16,4096,64"]


def flops(b, h, n, d, kind: str, document_ids: torch.Tensor | None = None) -> tuple[float, float]:
    squares = b * n * n  # per batch row, N^2 (half of it visible under the causal mask)
    if document_ids is not None:
        squares = int(sum((torch.unique_consecutive(row, return_counts=True)[1].double() ** 2).sum()
                          for row in document_ids.cpu()))
    f = 2.0 * h * squares * d
    return (2 * f, 6 * f) if kind == "parallax" else (f, 3.5 * f)


def packed_documents(b: int, n: int, mean: int, device) -> torch.Tensor:
    """document_ids (B, N): each row cut into documents at random places (seeded), mean length about `mean`."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(b):
        starts = torch.zeros(n, dtype=torch.long)
        starts[torch.randperm(n - 1, generator=g)[: max(0, n // mean - 1)] + 1] = 1
        rows.append(starts.cumsum(0))
    return torch.stack(rows).to(device)


def load_reference_kernel(path: str):
    """Another version of kernels/parallax_kernels/parallax/triton_fused.py as a module beside this one. Its torch.library ops
    are renamed (parallax:: -> parallax_reference::, the same line count, so Triton still finds each
    kernel's source) so that both versions can register."""
    source = Path(path).read_text()
    if 'custom_op("parallax::attention_fwd"' not in source:
        raise ValueError(f"--reference-kernel {path}: not a kernels/parallax_kernels/parallax/triton_fused.py (it defines no parallax "
                         "attention_fwd op)")
    copy = Path(tempfile.mkdtemp()) / "triton_parallax_reference.py"
    copy.write_text(source.replace('"parallax::', '"parallax_reference::'))
    spec = importlib.util.spec_from_file_location("triton_parallax_reference", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_requested(requested: list[str] | None, available) -> None:
    """A peer named in --peers that cannot be timed on this host is an error, not a shorter table."""
    missing = [name for name in requested or [] if name not in available]
    if missing:
        raise SystemExit(f"--peers {' '.join(missing)}: not available here (here: {' '.join(available)}); "
                         "fla-parallax needs fla-core, parallax-cute a Hopper GPU and the CuTe artefacts "
                         "(the reason is printed above), parallax-torch --torch-backend-max-tokens of at least B N, "
                         "parallax-triton-reference --reference-kernel")


def make_peers(b, h, hkv, n, d, dtype, with_torch_backend: bool, reference=None, docs=None):
    """name -> (kind, fwd closure, inputs requiring grad); `docs`: document_ids for every peer that takes them."""
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)

    q, r = rand(b, h, n, d), rand(b, h, n, d)
    k, v = rand(b, hkv, n, d), rand(b, hkv, n, d)
    peers = {}
    from parallax_kernels.parallax.cute_launch import parallax_attention_cute, unavailable_reason

    if unavailable_reason(q) is None:
        cute = [x.clone().requires_grad_() for x in (q, k, v, r)]
        peers["parallax-cute"] = ("parallax", lambda x=cute: parallax_attention_cute(
            *x, causal=True, scale=d**-0.5, document_ids=docs), cute)
        ordered = [x.clone().requires_grad_() for x in (q, k, v, r)]
        peers["parallax-cute-deterministic"] = ("parallax", lambda x=ordered: parallax_attention_cute(
            *x, causal=True, scale=d**-0.5, deterministic=True, document_ids=docs), ordered)
    else:
        print(f"parallax-cute not timed: {unavailable_reason(q)}")
    bhnd = [x.clone().requires_grad_() for x in (q, k, v, r)]
    peers["parallax-triton"] = ("parallax", lambda x=bhnd: parallax_attention(*x, backend="triton", document_ids=docs),
                                bhnd)
    atomic = [x.clone().requires_grad_() for x in (q, k, v, r)]
    peers["parallax-triton-atomic"] = ("parallax", lambda x=atomic: parallax_attention(
        *x, backend="triton_atomic", document_ids=docs), atomic)
    if reference is not None:
        ref = [x.clone().requires_grad_() for x in (q, k, v, r)]
        peers["parallax-triton-reference"] = ("parallax", lambda x=ref: reference.parallax_attention_triton(
            *x, causal=True, scale=d**-0.5, document_ids=docs), ref)
    if with_torch_backend:
        bhnd2 = [x.clone().requires_grad_() for x in (q, k, v, r)]
        peers["parallax-torch"] = ("parallax", lambda x=bhnd2: parallax_attention(
            *x, backend="torch", document_ids=docs), bhnd2)
    if docs is not None:
        peers["flex-softmax"] = flex_peer(q, k, v, docs)
        print("fla-parallax, sdpa-flash, sdpa-cudnn not timed: they take no document mask here")
        return peers, (q, k, v, r)
    try:
        from fla.ops.parallax import parallel_parallax

        bthd = [x.transpose(1, 2).contiguous().requires_grad_() for x in (q, r, k, v)]
        peers["fla-parallax"] = ("parallax", lambda x=bthd: parallel_parallax(*x), bthd)
    except ImportError:
        print("fla-parallax not timed: fla-core is not installed")
    for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
        s = [x.clone().requires_grad_() for x in (q, k, v)]

        def run(x=s, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(*x, is_causal=True, enable_gqa=hkv != h)

        peers[name] = ("softmax", run, s)
    return peers, (q, k, v, r)


def flex_peer(q, k, v, docs):
    """Softmax attention with the causal document mask through FlexAttention, compiled (block-sparse: whole
    blocks outside every document are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def visible(b, h, i, j):
        return (j <= i) & (docs[b, i] == docs[b, j])

    mask = create_block_mask(visible, docs.shape[0], None, docs.shape[1], docs.shape[1], device=q.device)
    attend = torch.compile(flex_attention)
    s = [x.clone().requires_grad_() for x in (q, k, v)]
    return ("softmax", lambda x=s: attend(*x, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1]), s)


def time_peers(peers: dict, rounds: int = 1) -> dict:
    """Forward and forward + backward times (ms) of each peer (name -> (kind, fn, inputs)) in `rounds` rounds, one
    timing of each a round, in turn: name -> (forward times, forward + backward times, peak MiB of one fwd+bwd)."""
    steps = {}
    for name, (_, fn, inputs) in peers.items():
        grad = torch.randn_like(fn())

        def fwd_bwd(fn=fn, grad=grad):
            fn().backward(grad)

        steps[name] = (fn, fwd_bwd, inputs)
    times = in_rounds({(name, part): bench for name, (fn, fwd_bwd, inputs) in steps.items()
                       for part, bench in (("fwd", (fn, None)), ("both", (fwd_bwd, inputs)))}, rounds)
    return {name: (times[name, "fwd"], times[name, "both"], peak_memory(fwd_bwd, inputs))
            for name, (_, fwd_bwd, inputs) in steps.items()}


TIMINGS: list[tuple[float, float]] = []  # (start, end) in time.time() of every timing: what --gpu-samples reads


def in_rounds(benches: dict, rounds: int) -> dict:
    """Times (ms) of each bench (key -> (fn, tensors whose grads do_bench clears)) in `rounds` rounds, one timing of
    each a round, in turn: key -> the list of its timings."""
    times = {key: [] for key in benches}
    for _ in range(rounds):
        for key, (fn, grads) in benches.items():
            start = time.time()
            times[key].append(do_bench(fn, warmup=10, rep=50, grad_to_none=grads, return_mode="median"))
            TIMINGS.append((start, time.time()))  # do_bench returns once the GPU is done
    return times


def peak_memory(fwd_bwd, inputs) -> float:
    """Peak MiB allocated during one forward + backward, over what was allocated before it."""
    for x in inputs:  # left from a timing, they would be the baseline of this backward, not its peak
        x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    for x in inputs:
        x.grad = None
    return peak


def peer_result(fwds: list, boths: list, peak: float, f_fwd: float, f_both: float) -> dict:
    """A peer's row of the table (and the json): the medians of its forward and forward + backward times (ms), and
    of the backward alone (each round's forward + backward minus that round's forward: the same clocks), their
    TFLOP/s for f_fwd, f_both and f_both - f_fwd FLOPs, its peak MiB and, with more than one round, every round's
    times."""
    bwds = [both - fwd for fwd, both in zip(fwds, boths)]
    fwd, both, bwd = statistics.median(fwds), statistics.median(boths), statistics.median(bwds)
    row = dict(fwd_ms=fwd, fwd_bwd_ms=both, bwd_ms=bwd, fwd_tflops=f_fwd / fwd / 1e9,
               fwd_bwd_tflops=f_both / both / 1e9,
               bwd_tflops=(f_both - f_fwd) / bwd / 1e9 if bwd > 0 else float("nan"),  # noise can cancel a tiny backward
               peak_mib=peak)
    rounds = dict(fwd_ms_rounds=list(fwds), fwd_bwd_ms_rounds=list(boths), bwd_ms_rounds=bwds)
    return row | (rounds if len(fwds) > 1 else {})


def atomic_vs_split_grads(q, k, v, r, docs=None) -> float:
    """Largest relative difference over dq, dk, dv, dr between the two backward variants (same inputs and
    output gradient): checks, in the timed run, that the atomic backward computes the same gradients."""
    grads = {}
    for backend in ("triton", "triton_atomic"):
        leaves = [x.clone().requires_grad_() for x in (q, k, v, r)]
        out = parallax_attention(*leaves, backend=backend, document_ids=docs)
        grad = torch.randn(out.shape, device=out.device, dtype=out.dtype,
                           generator=torch.Generator(device=out.device).manual_seed(1))
        grads[backend] = torch.autograd.grad(out, leaves, grad)
    return max(float((a.float() - b.float()).norm() / b.float().norm())
               for a, b in zip(grads["triton_atomic"], grads["triton"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="B,H,N,D")
    ap.add_argument("--kv-ratio", type=int, default=2)
    ap.add_argument("--torch-backend-max-tokens", type=int, default=16384,
                    help="time the eager torch backend only where B*N is at most this")
    ap.add_argument("--json", default=None)
    ap.add_argument("--peers", nargs="+", default=None, help="time only these peers (names as in the table)")
    ap.add_argument("--cute-variants", nargs="+", default=[],
                    help="forward-only timings of CuTe kernel variants: s<stages>[np][er][st][ov][lp][ps][w3][n<block_n>] "
                         "(np: no warpgroup turns; er: eager rescale of every row; st: stacked Q/R operand; ov: "
                         "softmax overlapping the previous tile's P V, with st; lp: longest tiles first across "
                         "heads; ps: one CTA an SM walking the work items in that order or head by head; w3: three "
                         "consumer warpgroups (stacked, head_dim 64 only; without it two); n: keys per "
                         "tile; the default is s3stov, at head_dim 64 s3stovw3, and for causal sequences of at most "
                         "4096 tokens s3stovlpps (s3stovlppsw3); s3 the unstacked kernel), each with "
                         "its output's relative "
                         "error against the default variant's")
    ap.add_argument("--cute-backward-variants", nargs="+", default=[],
                    help="backward-only timings of CuTe backward variants: "
                         "b<stages>[hh|g<heads>][dc][kr][wa|wg][m<block_m>] "
                         "(stages: Q/R/dO stages; hh: head by head, not the default lpt order (key tile 0 of every KV "
                         "head of a group first); g: groups of that many KV heads, not the launcher's; dc: each "
                         "warpgroup's dQ/dR chain a step later, after the other's ds, dt; kr: K in registers as "
                         "the score chain's A operand, head_dim 64 only; wa: each warp adds its rows of dQ/dR, wg: "
                         "each warpgroup its share, neither: the head_dim's default (wa at 64, wg at 128); m: query "
                         "rows a step), "
                         "on the default forward's outputs, each with the largest relative error of its dq, dk, dv, "
                         "dr against the default backward's")
    ap.add_argument("--reference-kernel", default=None, help="another kernels/parallax_kernels/parallax/triton_fused.py to time beside this one")
    ap.add_argument("--documents", type=int, default=0, metavar="MEAN",
                    help="pack each batch row with documents of random lengths, about MEAN tokens on average "
                         "(0: one sequence a row)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="time the default and each --cute-variants / --cute-backward-variants variant in N rounds, "
                         "one timing of each a round (medians and ranges reported)")
    ap.add_argument("--peer-rounds", type=int, default=1, metavar="N",
                    help="time the peers in N rounds, one forward and one forward + backward timing of each a round, "
                         "in turn (medians reported, ranges too where N > 1)")
    ap.add_argument("--gpu-samples", action="store_true",
                    help="sample the GPU's SM clock, power and throttle reasons with nvidia-smi every 100 ms while "
                         "timing, and report them per shape")
    args = ap.parse_args()
    for flag, value in (("--repeat", args.repeat), ("--peer-rounds", args.peer_rounds)):
        if value < 1:
            raise SystemExit(f"{flag} {value}: expected at least 1")
    reference = load_reference_kernel(args.reference_kernel) if args.reference_kernel else None
    dtype = torch.bfloat16
    packing = f", packed documents of about {args.documents} tokens" if args.documents else ""
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, causal, Hkv = H/{args.kv_ratio}"
          f"{packing}")
    rows = []
    sampler = GpuSamples(nvidia_smi_id(torch.cuda.current_device())) if args.gpu_samples else None
    timings = []  # each shape's timings: their (start, end) pairs
    with sampler or contextlib.nullcontext():
        for spec in args.shapes:
            first = len(TIMINGS)
            rows.append(time_shape(spec, args, reference, dtype))
            timings.append(TIMINGS[first:])
    if sampler is not None:  # read once nvidia-smi has stopped
        print("\nGPU during the timings (nvidia-smi every 100 ms; the share of samples whose clocks the power cap or "
              "heat held):")
        for row, windows in zip(rows, timings):
            row["gpu"] = sampler.summary(windows)
            print(f"{tuple(row['shape'])}: {describe(row['gpu'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def time_shape(spec: str, args, reference, dtype) -> dict:
    """One shape's correctness checks and timings (printed), as the json's row."""
    b, h, n, d = map(int, spec.split(","))
    hkv = h // args.kv_ratio
    docs = packed_documents(b, n, args.documents, "cuda") if args.documents else None
    peers, (q, k, v, r) = make_peers(b, h, hkv, n, d, dtype, b * n <= args.torch_backend_max_tokens, reference,
                                     docs)
    check_requested(args.peers, peers)
    # correctness in the same run: the fused kernel against fla's kernel (and the eager backend)
    ours = parallax_attention(q, k, v, r, backend="triton", document_ids=docs).float()
    checks = {}
    if "fla-parallax" in peers:
        from fla.ops.parallax import parallel_parallax

        fla_out = parallel_parallax(*(x.transpose(1, 2).contiguous() for x in (q, r, k, v))).transpose(1, 2).float()
        checks["vs_fla"] = float((ours - fla_out).norm() / fla_out.norm())
    if "parallax-cute" in peers:
        from parallax_kernels.parallax.cute_launch import parallax_attention_cute

        cute_out = parallax_attention_cute(q, k, v, r, causal=True, scale=d**-0.5, document_ids=docs).float()
        checks["vs_triton_cute"] = float((cute_out - ours).norm() / ours.norm())
    if args.peers is None or "parallax-triton-atomic" in args.peers:
        checks["vs_split_grads_atomic"] = atomic_vs_split_grads(q, k, v, r, docs)
    if reference is not None:
        theirs = reference.parallax_attention_triton(q, k, v, r, causal=True, scale=d**-0.5,
                                                     document_ids=docs).float()
        checks["vs_reference_kernel"] = float((ours - theirs).norm() / theirs.norm())
    result = {"shape": [b, h, hkv, n, d], **checks, "peers": {}}
    if docs is not None:
        result["documents"] = int(sum(int(row.unique_consecutive().numel()) for row in docs))
    timed = {name: peer for name, peer in peers.items() if args.peers is None or name in args.peers}
    for name, (fwds, boths, peak) in time_peers(timed, args.peer_rounds).items():
        result["peers"][name] = peer_result(fwds, boths, peak, *flops(b, h, n, d, timed[name][0], docs))
    del timed
    if args.cute_variants:
        result["cute_variants_fwd_ms"], result["cute_variants_rel_err"], result["cute_variants_fwd_ms_rounds"] = \
            time_cute_variants(q, k, v, r, args.cute_variants, args.repeat)
    if args.cute_backward_variants:
        (result["cute_backward_variants_ms"], result["cute_backward_variants_rel_err"],
         result["cute_backward_variants_ms_rounds"]) = time_cute_backward_variants(
            q, k, v, r, args.cute_backward_variants, args.repeat)
    torch.cuda.empty_cache()
    print_shape(result)
    return result


def time_cute_variants(q, k, v, r, names, repeat: int = 1) -> tuple[dict, dict, dict]:
    """Forward time (ms) of each named CuTe variant on the same inputs, skipping ones without an artefact, and the
    relative error (2-norm) of its output o against the default variant's (time_variants)."""
    from parallax_kernels.parallax.cute_launch import _launch

    scale = q.shape[-1] ** -0.5

    def parse(name):
        parsed = re.fullmatch(r"s(\d)(np)?(er)?(st)?(ov)?(lp)?(ps)?(w3)?(?:n(\d+))?", name)
        if parsed is None:
            raise SystemExit(f"--cute-variants {name}: expected s<stages>[np][er][st][ov][lp][ps][w3][n<block_n>], "
                             "e.g. s3 s2np s3n64 s2st s2stov s3stovlp s3stovps s3stovlpps s3stovw3")
        return dict(stages=int(parsed[1]), pingpong=parsed[2] is None, lazy_rescale=parsed[3] is None,
                    stacked=parsed[4] is not None, overlap=parsed[5] is not None, lpt=parsed[6] is not None,
                    persistent=parsed[7] is not None, warpgroups=3 if parsed[8] else 2, block_n=int(parsed[9] or 0))

    return time_variants(names, parse, lambda **fields: _launch(q, k, v, r, True, scale, **fields)[:1], "forward",
                         repeat)


def time_cute_backward_variants(q, k, v, r, names, repeat: int = 1) -> tuple[dict, dict, dict]:
    """Backward time (ms, the launch's statistics and gradient-tile kernels included) of each named CuTe backward
    variant on the default forward's outputs, skipping ones without an artefact, and the largest relative error
    (2-norm) of its four gradients against the default backward's."""
    from parallax_kernels.parallax.cute_launch import _launch, _launch_backward

    scale = q.shape[-1] ** -0.5
    try:
        o, a, lse, tbar = _launch(q, k, v, r, True, scale)
    except (RuntimeError, ValueError) as err:
        print(f"cute backward variants not timed: the default forward did not run: {err}")
        return {}, {}, {}
    grad = torch.randn_like(o)

    def parse(name):
        parsed = re.fullmatch(r"b(\d)(?:(hh)|g(\d+))?(dc)?(kr)?(wa|wg)?(?:m(\d+))?", name)
        if parsed is None:
            raise SystemExit(f"--cute-backward-variants {name}: expected "
                             "b<stages>[hh|g<heads>][dc][kr][wa|wg][m<block_m>], e.g. b2 b3 b2hh b2g4 b2dc b2kr b2wa "
                             "b2wg b2m32 (hh: head by head; g<heads>: the lpt order in groups of that many KV heads, a "
                             "divisor of B Hkv; neither: the launcher's groups; wa / wg: per-warp / per-warpgroup "
                             "dQ/dR adds; neither: the head_dim's default)")
        fields = dict(stages=int(parsed[1]), lpt=parsed[2] is None, decoupled=parsed[4] is not None,
                      k_registers=parsed[5] is not None, warp_adds={"wa": True, "wg": False}.get(parsed[6]),
                      block_m=int(parsed[7] or 0))
        return fields | (dict(lpt_heads=int(parsed[3])) if parsed[3] else {})

    def backward(**fields):
        return _launch_backward(grad, q, k, v, r, o, a, lse, tbar, True, scale, **fields)

    return time_variants(names, parse, backward, "backward", repeat)


def time_variants(names, parse, run, what: str, repeat: int = 1) -> tuple[dict, dict, dict]:
    """Times (ms) of run(**parse(name)) for each name, the largest relative error (2-norm) of its outputs against
    run()'s, the default variant's, and with repeat > 1 every round's timing (the default's as `default`; the
    times are then the medians of the rounds); a variant that does not run (no artefact) is skipped."""
    times, errors, rounds = {}, {}, {}
    try:
        reference = [x.float() for x in run()]
    except (RuntimeError, ValueError) as err:
        print(f"cute {what} variants not timed: the default variant, their reference, did not run: {err}")
        return times, errors, rounds
    timed = {"default": {}} if repeat > 1 else {}
    for name in names:
        fields = parse(name)
        try:
            outputs = run(**fields)
        except (RuntimeError, ValueError) as err:
            print(f"cute {what} variant {name} not timed: {err}")
            continue
        errors[name] = max(((x.float() - y).norm() / y.norm()).item() for x, y in zip(outputs, reference))
        timed[name] = fields
    rounds = in_rounds({name: (lambda fields=fields: run(**fields), None) for name, fields in timed.items()}, repeat)
    times = {name: statistics.median(ms) for name, ms in rounds.items()}
    return times, errors, rounds if repeat > 1 else {}


def print_variants(what: str, times: dict, errors: dict, rounds: dict, f: float, error_name: str) -> None:
    """One line of variant timings; with rounds (--repeat), their medians and ranges, the default's first."""
    if not rounds:
        print(f"cute {what} variants: " + ", ".join(
            f"{name} {ms:.3f} ms ({f / ms / 1e9:.0f} TFLOP/s, {error_name} {errors[name]:.1e})"
            for name, ms in times.items()))
        return
    print(f"cute {what} variants, medians of {len(rounds['default'])} rounds (range), each against the default's:")
    for name, ms in times.items():
        error = f", {error_name} {errors[name]:.1e}" if name in errors else ""
        print(f"  {name}: {ms:.3f} ms ({min(rounds[name]):.3f}-{max(rounds[name]):.3f}), {f / ms / 1e9:.0f} TFLOP/s, "
              f"{ms / times['default']:.3f}x{error}")


def print_shape(result) -> None:
    b, h, hkv, n, d = result["shape"]
    peers = result["peers"]
    extra = "".join(f", {k} rel. err. {v:.1e}" for k, v in result.items() if k.startswith("vs_"))
    docs = f", {result['documents']} documents" if "documents" in result else ""
    print(f"\n(B,H,Hkv,N,D) = ({b},{h},{hkv},{n},{d}){docs}{extra}")
    rounds = len(next(iter(peers.values()), {}).get("fwd_ms_rounds", [None]))
    if rounds > 1:
        print(f"peers: medians of {rounds} rounds (range)")

    def ms(p, key):
        spread = f" ({min(p[key + '_rounds']):.3f}-{max(p[key + '_rounds']):.3f})" if rounds > 1 else ""
        return f"{p[key]:.3f}{spread}"

    print("| peer | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | bwd ms | bwd TFLOP/s | peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, p in peers.items():
        print(f"| {name} | {ms(p, 'fwd_ms')} | {p['fwd_tflops']:.0f} | {ms(p, 'fwd_bwd_ms')} | "
              f"{p['fwd_bwd_tflops']:.0f} | {ms(p, 'bwd_ms')} | {p['bwd_tflops']:.0f} | {p['peak_mib']:.0f} |")
    if result.get("cute_variants_fwd_ms"):
        print_variants("forward", result["cute_variants_fwd_ms"], result["cute_variants_rel_err"],
                       result["cute_variants_fwd_ms_rounds"], flops(b, h, n, d, "parallax")[0], "o rel. err.")
    if result.get("cute_backward_variants_ms"):
        f_fwd, f_both = flops(b, h, n, d, "parallax")
        print_variants("backward", result["cute_backward_variants_ms"], result["cute_backward_variants_rel_err"],
                       result["cute_backward_variants_ms_rounds"], f_both - f_fwd, "max grad rel. err.")
    for mine in ("parallax-cute", "parallax-cute-deterministic", "parallax-triton", "parallax-triton-atomic"):
        if mine not in peers:
            continue
        for peer in ("parallax-triton", "parallax-triton-reference", "fla-parallax", "sdpa-flash", "sdpa-cudnn",
                     "flex-softmax"):
            if peer in peers and peer != mine:
                print(f"ratio {mine} / {peer}: fwd {peers[mine]['fwd_ms'] / peers[peer]['fwd_ms']:.2f}, "
                      f"fwd+bwd {peers[mine]['fwd_bwd_ms'] / peers[peer]['fwd_bwd_ms']:.2f}, "
                      f"bwd {peers[mine]['bwd_ms'] / peers[peer]['bwd_ms']:.2f}")


if __name__ == "__main__":
    main()
