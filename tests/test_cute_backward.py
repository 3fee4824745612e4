"""The CuTe DSL Hopper backward of backends "cute" and "cute_deterministic" (kernels/parallax_kernels/parallax/
cute_backward.py), on this CPU machine: BackwardVariant, the sm_90a build and what the compiled code contains
(wgmma chains per the design, TMA and bulk copies, the bulk reduce-add of dQ/dR and, in the deterministic
variant only, its semaphore), the TMA boxes the launcher encodes, the artefacts and their checks, the ops'
schemas and fake implementations, and the backends' registration. The GPU tests of the backward (gradients
against float64, bitwise reproducibility) are in test_cute_attention.py."""

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from parallax_kernels import cute_runtime as rt
from parallax_kernels.parallax.cute_launch import (ATTENTION_PARAMS, BACKWARD_PARAMS, load_attention_kernel,
                                                   read_artefact, source_hash)
from parallax_kernels.parallax.cute_variant import (BWD_BLOCK_N, BWD_LPT_BYTES, DS_TURN_BARRIER, AttentionVariant,
                                                    BackwardVariant, backward_lpt_heads, backward_lpt_tile,
                                                    ds_turn_barrier, grad_tile_layout)

REPO = Path(__file__).resolve().parents[1]
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_dsl = pytest.mark.skipif(not rt.dsl_installed(), reason="nvidia-cutlass-dsl is not installed")

# the backends of the CuTe kernels and whether their backward adds dQ, dR in key-tile order (bitwise reproducible);
# plain "cute" is parallax_attention_cute's (and the ops') default
CUTE_BACKENDS = {"cute": False, "cute_deterministic": True}
# the compiled variants: (head_dim, causal, deterministic, packed documents, decoupled, K in registers, per-warp
# dQ/dR adds): the head_dim-64 ones with per-warp adds, as each is built by default (DEFAULT_BWD_WARP_ADDS), but
# one; the head_dim-128 ones without, but one
COMPILED = [(128, True, True, False, False, False, False), (64, False, False, False, False, False, True),
            (128, True, True, True, False, False, False), (128, True, True, False, True, False, False),
            (64, True, False, False, True, False, True), (64, True, False, False, False, True, True),
            (128, True, True, False, False, False, True), (64, False, True, True, False, False, True),
            (64, False, False, False, False, False, False)]
COMPILED_IDS = ["d128_causal_ordered", "d64_full", "d128_causal_doc_ordered", "d128_causal_ordered_decoupled",
                "d64_causal_decoupled", "d64_causal_k_registers", "d128_causal_ordered_warp_adds",
                "d64_full_doc_ordered", "d64_full_warpgroup_adds"]
FIELDS = "d, causal, ordered, docs, decoupled, k_registers, warp_adds"


def compiled_variant(d: int, causal: bool, deterministic: bool, docs: bool = False, decoupled: bool = False,
                     k_registers: bool = False, warp_adds: bool | None = None) -> BackwardVariant:
    return BackwardVariant("bfloat16", d, causal, deterministic=deterministic, documents=docs, decoupled=decoupled,
                           k_registers=k_registers, warp_adds=warp_adds)


def steps(variant: BackwardVariant) -> int:
    """Instantiations of the step: the first query tile, the masked loop and (without documents, whose tiles
    are all masked) the unmasked loop."""
    return 2 if variant.documents else 3


def flushes(variant: BackwardVariant) -> int:
    """Code sites that stage and add a [dQ^T | dR^T] share: every step but the first, and after the loops the
    last chain's; decoupled, after the loops two (the chain in flight, then the last tile's)."""
    return steps(variant) + (1 if variant.decoupled else 0)


# ---- BackwardVariant ------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("dtype", "float32", "dtype float32 is not supported"),
    ("head_dim", 96, "head_dim 96 is not supported"),
    ("block_m", 128, "block_m 128 is not 32 or 64"),
    ("block_m", 16, "block_m 16 is not 32 or 64"),
    ("stages", 1, "1 Q/R/dO stages"),
    ("stages", 4, "4 Q/R/dO stages"),
    ("k_registers", True, "K in registers .k_registers. is built for head_dim 64 only, not 128"),
])
def test_unsupported_backward_variants_are_named(field, value, message):
    good = dict(dtype="bfloat16", head_dim=128, causal=True)
    BackwardVariant(**good).check()
    with pytest.raises(ValueError, match=message):
        BackwardVariant(**{**good, field: value}).check()


def test_the_default_block_m_and_its_explicit_spelling_are_one_variant():
    """BM = 32 at D = 128 (dK, dV stay in registers beside the 64 x BM score tiles), 64 at D = 64; an artefact
    built with an explicit block_m must serve the default, and the other way round."""
    for d, bm in ((128, 32), (64, 64)):
        default = BackwardVariant("bfloat16", d, True)
        explicit = BackwardVariant("bfloat16", d, True, block_m=bm)
        assert default.bm == bm and asdict(default)["block_m"] == bm
        assert default == explicit and default.name == explicit.name
        assert default.tma_boxes() == ([64, bm, 1], [64, BWD_BLOCK_N, 1])
    # the other block_m is another variant
    assert BackwardVariant("bfloat16", 128, True, block_m=64).name != BackwardVariant("bfloat16", 128, True).name


def test_the_default_adds_are_per_warp_at_head_dim_64_only_and_the_name_says_which():
    """dQ/dR added by each warp at D = 64, by each warpgroup at D = 128 (DEFAULT_BWD_WARP_ADDS), in both orders; an
    artefact built with the explicit spelling serves the default; the other adds are another variant, whose name
    differs by _wa before any opt-in's suffix."""
    for d, per_warp in ((64, True), (128, False)):
        for ordered in (False, True):
            default = BackwardVariant("bfloat16", d, True, deterministic=ordered)
            explicit = BackwardVariant("bfloat16", d, True, deterministic=ordered, warp_adds=per_warp)
            other = BackwardVariant("bfloat16", d, True, deterministic=ordered, warp_adds=not per_warp)
            assert default.warp_adds is per_warp and asdict(default)["warp_adds"] is per_warp
            assert default == explicit and default.name == explicit.name and other != default
            warp, warpgroup = (default, other) if per_warp else (other, default)
            assert warp.name == warpgroup.name + "_wa" and warp.name.endswith("_lpt_wa")
            decoupled = BackwardVariant("bfloat16", d, True, deterministic=ordered, decoupled=True)
            assert decoupled.warp_adds is per_warp and decoupled.name == default.name + "_dc"


def test_the_ordered_variant_has_its_own_name_and_unordered_is_the_default():
    ordered = BackwardVariant("bfloat16", 128, True, deterministic=True)
    unordered = BackwardVariant("bfloat16", 128, True)
    assert ordered.deterministic and not unordered.deterministic and ordered != unordered
    assert ordered.name == unordered.name.replace("_lpt", "_ordered_lpt")
    # the default order is the lpt order; head by head is its own variant
    assert unordered.lpt and unordered.name.endswith("_lpt")
    assert BackwardVariant("bfloat16", 128, True, lpt=False).name == unordered.name.removesuffix("_lpt")
    # the forward's and the backward's artefacts never share a name
    assert ordered.name.startswith("parallax_attn_bwd_")
    assert AttentionVariant("bfloat16", 128, True).name.startswith("parallax_attn_fwd_")


def test_the_k_registers_variant_has_its_own_name():
    shared = BackwardVariant("bfloat16", 64, True)
    registers = BackwardVariant("bfloat16", 64, True, k_registers=True)
    registers.check()
    assert registers.name == shared.name + "_kr" and registers != shared


def test_the_decoupled_variant_has_its_own_name_and_three_ds_buffers():
    """Decoupled, tile i's ds^T / dt^T are read until the other warpgroup's step i + 2: three buffers of 2 BM x BN
    16-bit values, apart from the Q/R/dO stages; where they do not fit, check names the shared memory."""
    for d in (128, 64):
        lockstep = BackwardVariant("bfloat16", d, True)
        decoupled = BackwardVariant("bfloat16", d, True, decoupled=True)
        assert decoupled.name == lockstep.name + "_dc" and lockstep.ds_buffers == lockstep.stages == 2
        assert decoupled.ds_buffers == 3
        assert decoupled.smem_bytes - lockstep.smem_bytes == 2 * 2 * decoupled.bm * BWD_BLOCK_N
        decoupled.check()
    with pytest.raises(ValueError, match="block_m 64 with 3 stages at head_dim 64 needs 241664 bytes"):
        BackwardVariant("bfloat16", 64, True, stages=3, decoupled=True).check()


def decoupled_schedule(cw: int, n_steps: int, barrier) -> list[tuple]:
    """Consumer warpgroup cw's events in the decoupled backward, in the kernel's order (cute_backward.py's
    `_step` and the tail after its loops; step j takes query tile j): the chain issued in step j - 1 (tile
    j - 2) completes at step j's wait before its flush; a sync on the other warpgroup's arrival for step j - 1
    precedes the ds^T / dt^T stores into buffer j mod 3; the arrival follows them; then tile j - 1's
    [dQ^T | dR^T] chain is issued, reading both warpgroups' ds^T / dt^T of that tile."""
    events = []
    for j in range(n_steps):
        if j >= 2:
            events.append(("complete", j - 2))
        if j >= 1:
            events.append(("sync", barrier(1 - cw, j - 1), (1 - cw, j - 1)))
        events.append(("store", j))
        events.append(("arrive", barrier(cw, j), (cw, j)))
        if j >= 1:
            events.append(("issue", j - 1))
    if n_steps >= 2:
        events.append(("complete", n_steps - 2))
    events += [("sync", barrier(1 - cw, n_steps - 1), (1 - cw, n_steps - 1)), ("issue", n_steps - 1),
               ("complete", n_steps - 1)]
    return events


def decoupled_hazards(n_steps: int, barrier, buffers: int) -> set[str]:
    """Every interleaving of the two warpgroups' schedules under PTX named-barrier semantics (a barrier of 256
    threads completes once two warpgroups have arrived or synced at its id, whoever they are; bar.sync waits
    for that, bar.arrive does not): what can go wrong. A completion must pair a warpgroup's sync with the
    arrival it means; a chain must find both warpgroups' ds^T / dt^T of its tile in its buffer; a store must not
    overwrite a buffer that a chain not yet complete reads; and both warpgroups must reach the end, every barrier
    met."""
    programs = [decoupled_schedule(cw, n_steps, barrier) for cw in (0, 1)]
    found, seen = set(), set()
    # state: program counters, whether each warpgroup waits at a sync, the arrivals/syncs pending per barrier id,
    # the tile in each (warpgroup, buffer), the chains in flight (warpgroup, tile)
    start = ((0, 0), (False, False), (), tuple(((-1,) * buffers) for _ in programs), ())
    stack = [start]
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        pcs, waiting, pending, stored, in_flight = state
        moved = False
        for cw in (0, 1):
            if waiting[cw] or pcs[cw] == len(programs[cw]):
                continue
            event = programs[cw][pcs[cw]]
            kind = event[0]
            n_pending, n_waiting, n_flight = dict(pending), list(waiting), set(in_flight)
            n_stored = [list(s) for s in stored]
            if kind in ("sync", "arrive"):
                ident, tag = event[1], event[2]
                parties = n_pending.get(ident, ()) + ((cw, kind, tag),)
                if len(parties) == 2:  # the barrier completes: check who met, release a syncing warpgroup
                    syncs = [p for p in parties if p[1] == "sync"]
                    arrivals = [p for p in parties if p[1] == "arrive"]
                    if len(syncs) != 1 or len(arrivals) != 1 or syncs[0][2] != arrivals[0][2]:
                        found.add(f"barrier {ident} completed by {parties}")
                    for p in syncs:
                        n_waiting[p[0]] = False
                    n_pending.pop(ident, None)
                else:
                    n_pending[ident] = parties
                    if kind == "sync":
                        n_waiting[cw] = True
            elif kind == "store":
                tile = event[1]
                if any(t % buffers == tile % buffers for _, t in in_flight):
                    found.add(f"warpgroup {cw} stores tile {tile} over a buffer a chain in flight reads")
                n_stored[cw][tile % buffers] = tile
            elif kind == "issue":
                tile = event[1]
                if any(s[tile % buffers] != tile for s in stored):
                    found.add(f"warpgroup {cw} issues tile {tile}'s chain before both warpgroups' stores of it")
                n_flight.add((cw, tile))
            else:  # complete
                n_flight.discard((cw, event[1]))
            n_pcs = list(pcs)
            n_pcs[cw] += 1
            stack.append((tuple(n_pcs), tuple(n_waiting), tuple(sorted(n_pending.items())),
                          tuple(tuple(s) for s in n_stored), tuple(sorted(n_flight))))
            moved = True
        if not moved and pcs != (len(programs[0]), len(programs[1])):
            found.add(f"deadlock at program counters {pcs}")
        elif not moved and pending:
            found.add(f"barriers left half met at the end: {pending}")
    return found


def test_decoupled_warpgroups_meet_as_designed_in_every_interleaving():
    """The decoupled backward's barrier ids and ds^T / dt^T buffers, explored over every interleaving of the two
    warpgroups' schedules up to 8 steps: no deadlock, each sync meets the arrival it means, no chain reads a
    buffer before both stores of its tile or after a later store over it. The same exploration finds what a
    protocol with one barrier a warpgroup (no parity) or one buffer fewer does."""
    buffers = BackwardVariant("bfloat16", 128, True, decoupled=True).ds_buffers
    for n_steps in range(1, 9):
        assert decoupled_hazards(n_steps, ds_turn_barrier, buffers) == set(), n_steps
    no_parity = decoupled_hazards(4, lambda cw, step: DS_TURN_BARRIER + 2 * cw, buffers)
    assert any("completed by" in hazard for hazard in no_parity)
    assert any("before both" in hazard for hazard in decoupled_hazards(4, ds_turn_barrier, buffers - 1))


# ---- the compiled kernel ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The COMPILED variants, each compiled for sm_90a in a fresh process as on an offline build machine (all at
    once): PTX, cubin and the DSL's IR (which records each TMA descriptor's box)."""
    if not rt.dsl_installed():
        pytest.skip("nvidia-cutlass-dsl is not installed")
    out = tmp_path_factory.mktemp("attention_backward")
    code = ("import sys\n"
            "from parallax_kernels.parallax.cute_backward import compile_variant\n"
            "from parallax_kernels.parallax.cute_variant import BackwardVariant\n"
            "d, causal, ordered, docs, dc, kr, wa = int(sys.argv[2]), *(x == '1' for x in sys.argv[3:9])\n"
            "variant = BackwardVariant('bfloat16', d, causal, deterministic=ordered, documents=docs, decoupled=dc,\n"
            "                          k_registers=kr, warp_adds=wa)\n"
            "cubin, ptx, name = compile_variant(variant)\n"
            "open(f'{sys.argv[1]}/{variant.name}.ptx', 'w').write(ptx)\n"
            "open(f'{sys.argv[1]}/{variant.name}.cubin', 'wb').write(cubin)\n")
    procs = []
    for fields in COMPILED:
        ir = out / f"ir_{compiled_variant(*fields).name}"
        ir.mkdir()
        env = {**os.environ, "CUTE_DSL_ARCH": "sm_90a", "CUTE_DSL_KEEP": "ir", "CUTE_DSL_DUMP_DIR": str(ir)}
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(out), *(str(int(x)) for x in fields)],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    return out


def _offset(x: int, shape: tuple, stride: tuple) -> int:
    """A CuTe layout mode's offset of the integer coordinate x (colexicographic: the first sub-mode fastest)."""
    offset = 0
    for size, step in zip(shape, stride):
        offset += (x % size) * step
        x //= size
    return offset


@pytest.mark.parametrize("d, bm", [(128, 32), (64, 64)])
def test_grad_tiles_are_stored_without_bank_conflicts_and_read_back_row_major(d, bm):
    """The dQ^T / dR^T tile order (grad_tile_layout) is a permutation of the D x BM tile; the 32 lanes of a
    warp (row = 16 warp + 8 half + lane / 4, column = 8 group + 2 (lane % 4) + pair, the wgmma accumulator's
    layout) store each register to 32 distinct banks; and the kernel that turns the fp32 tiles into gradients
    (cute_backward_io.gradients_from_tiles, in Triton's interpreter here) reads them back as BM query rows x D,
    dQ and dR apart, a partial last query tile cut at N."""
    (rows, cols), (row_strides, col_strides) = grad_tile_layout(d, bm)

    def offset(row: int, col: int) -> int:
        return _offset(row, rows, row_strides) + _offset(col, cols, col_strides)

    assert sorted(offset(i, j) for i in range(d) for j in range(bm)) == list(range(d * bm))
    for atom in range(d // 64):
        for warp in range(4):
            for half in range(2):
                for group in range(bm // 8):
                    for pair in range(2):
                        banks = {offset(64 * atom + 16 * warp + 8 * half + lane // 4,
                                        8 * group + 2 * (lane % 4) + pair) % 32 for lane in range(32)}
                        assert len(banks) == 32
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    from parallax_kernels.parallax.cute_backward_io import gradients_from_tiles

    b, h, m_tiles = 1, 2, 2
    n = m_tiles * bm - 3
    values = torch.randn(2, b * h, m_tiles * bm, d)  # dQ, dR as (B H, rows, D)
    acc = torch.empty(2, b * h, m_tiles, d * bm)
    where = torch.tensor([[offset(i, j) for i in range(d)] for j in range(bm)])  # [query row, dim] -> offset
    for m in range(m_tiles):
        acc[:, :, m].scatter_(-1, where.view(1, 1, -1).expand(2, b * h, -1),
                              values[:, :, m * bm:(m + 1) * bm].reshape(2, b * h, -1))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dq, dr = gradients_from_tiles(acc.to(device), (b, h, n, d), torch.float32, bm)
    assert dq.shape == dr.shape == (b, h, n, d) and dq.is_contiguous() and dr.is_contiguous()
    # outputs of the backward op: they may not share storage (torch.library refuses aliased outputs)
    assert dq.untyped_storage().data_ptr() != dr.untyped_storage().data_ptr()
    assert torch.equal(dq.cpu().view(b * h, n, d), values[0, :, :n])
    assert torch.equal(dr.cpu().view(b * h, n, d), values[1, :, :n])


def test_sizes_past_the_io_kernels_offsets_are_clear_errors():
    """The statistics and gradient-tile kernels index with 32-bit offsets: a larger problem is refused, naming the
    shape, before any kernel runs (meta tensors: nothing is allocated)."""
    from parallax_kernels.parallax.cute_backward_io import (MAX_OFFSET, _check_offsets, backward_statistics,
                                                            gradients_from_tiles)

    _check_offsets("buffer", MAX_OFFSET, (1,))  # the largest offset the kernels take is accepted
    with pytest.raises(ValueError, match="buffer for q of shape"):
        _check_offsets("buffer", MAX_OFFSET + 1, (1,))
    b, h, n, d, bm = 1, 64, 2**16, 128, 32
    big = torch.empty(2, 4 * b * h, n // bm, d * bm, device="meta")
    with pytest.raises(ValueError, match=r"fp32 dQ and dR buffer for q of shape \(4, 64, 65536, 128\) has 4294967296"):
        gradients_from_tiles(big, (4 * b, h, n, d), torch.bfloat16, bm)
    x = torch.empty(8 * b, h, n, d, device="meta")
    with pytest.raises(ValueError, match=r"statistics and inputs for q of shape \(8, 64, 65536, 128\)"):
        backward_statistics(x, x, x, x[..., 0], x[..., 0], n)


def test_backward_statistics_are_the_rows_lse_tbar_and_dot_products_padded():
    """cute_backward_io.backward_statistics: per query row lse, tbar, dO.o, dO.a; rows past N up to whole query
    tiles: lse = inf (their weights are exp2(-inf) = 0) and zeros."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    from parallax_kernels.parallax.cute_backward_io import backward_statistics

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    b, h, n, d, n_pad = 2, 3, 70, 64, 96
    do, o, a = (torch.randn(b, h, n, d, generator=g).to(device) for _ in range(3))
    lse, tbar = (torch.randn(b, h, n, generator=g).to(device) for _ in range(2))
    stats = backward_statistics(do, o, a, lse, tbar, n_pad).cpu()
    assert stats.shape == (b * h, n_pad, 4) and stats.dtype == torch.float32
    want = torch.stack((lse, tbar, (do * o).sum(-1), (do * a).sum(-1)), dim=-1).view(b * h, n, 4).cpu()
    torch.testing.assert_close(stats[:, :n], want, rtol=1e-5, atol=1e-5)
    assert torch.isinf(stats[:, n:, 0]).all() and (stats[:, n:, 0] > 0).all()
    assert (stats[:, n:, 1:] == 0).all()


def expected_wgmmas(variant: BackwardVariant) -> dict[int, int]:
    """wgmma.m64nNk16 instructions per N in the PTX, from the design. Each consumer warpgroup owns 64 of the
    BN = 128 keys (the wgmma's M = 64), and per step (one query tile of BM rows):
    - [S^T | T^T] = K [Q; R]^T: one chain of D/16 k-steps, N = 2 BM; dalpha^T = V dO^T: D/16, N = BM;
    - dV += alpha^T dO (BM/16 k-steps) and dK += [ds^T | dt^T] [Q; R] (2 BM/16), A from registers, N = D;
    - the warpgroup's share of [dQ^T | dR^T] = K^T [ds^T | dt^T]: BN/16 k-steps, N = 2 BM at D = 128 (rows
      split) and BM at D = 64 (dQ^T or dR^T); the chain sits at two code sites, one per warpgroup.
    The step is instantiated three times: the first query tile (masked, no dQ^T / dR^T result in flight before
    it), the masked loop and the unmasked one; twice with packed documents, whose tiles are all masked.
    Decoupled, the first step issues no [dQ^T | dR^T] chain and the last tile's is issued after the loops: as
    many sites."""
    d, bm, bn = variant.head_dim, variant.bm, BWD_BLOCK_N
    share_n = 2 * bm if d == 128 else bm
    per_step: dict[int, int] = {}
    for n, count in ((2 * bm, d // 16), (bm, d // 16), (d, bm // 16 + 2 * bm // 16), (share_n, 2 * bn // 16)):
        per_step[n] = per_step.get(n, 0) + count
    return {n: steps(variant) * count for n, count in per_step.items()}


@needs_dsl
@pytest.mark.parametrize(FIELDS, COMPILED, ids=COMPILED_IDS)
def test_wgmma_chains_are_the_designed_ones(compiled, d, causal, ordered, docs, decoupled, k_registers,
                                            warp_adds):
    """At D = 128, BM = 32: 3 x (8 + 2 x 8) = 72 m64n64k16, 3 x 8 = 24 m64n32k16 and 3 x (2 + 4) = 18
    m64n128k16; at D = 64, BM = 64: 3 x 4 = 12 m64n128k16 and 3 x (4 + 4 + 8 + 2 x 8) = 96 m64n64k16."""
    variant = compiled_variant(d, causal, ordered, docs, decoupled, k_registers, warp_adds)
    ptx = (compiled / f"{variant.name}.ptx").read_text()
    assert ".target sm_90a" in ptx
    found: dict[int, int] = {}
    for n in re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k16\.f32\.bf16\.bf16", ptx):
        found[int(n)] = found.get(int(n), 0) + 1
    assert found == expected_wgmmas(variant)
    assert ptx.count("wgmma.mma_async") == sum(found.values())  # no other shapes or types


@needs_dsl
@pytest.mark.parametrize(FIELDS, [c for c in COMPILED if c[0] == 64],
                         ids=[i for c, i in zip(COMPILED, COMPILED_IDS) if c[0] == 64])
def test_the_score_chain_reads_k_from_registers_only_in_the_k_registers_variant(compiled, d, causal, ordered, docs,
                                                                              decoupled, k_registers, warp_adds):
    """At D = 64 the m64n128k16 wgmmas are the [S^T | T^T] chain's (N = 2 BM = 128; every other chain has N = 64).
    With K in registers their A operand is four 32-bit registers, K having been read into them once (32 16-bit
    shared loads a thread: 64 keys x 64 / 128 threads); otherwise a shared-memory descriptor, and no 16-bit loads."""
    variant = compiled_variant(d, causal, ordered, docs, decoupled, k_registers, warp_adds)
    ptx = (compiled / f"{variant.name}.ptx").read_text()
    score = re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n128k16\.f32\.bf16\.bf16 \{[^}]*\}, (\{[^}]*\}|%rd\d+),", ptx)
    assert score
    if k_registers:
        assert all(re.fullmatch(r"\{%r\d+, %r\d+, %r\d+, %r\d+\}", a) for a in score)
        assert ptx.count("ld.shared.b16") == 64 * d // 128
    else:
        assert all(a.startswith("%rd") for a in score)
        assert "ld.shared.b16" not in ptx


@needs_dsl
@pytest.mark.parametrize(FIELDS, COMPILED, ids=COMPILED_IDS)
def test_copies_reductions_and_registers_are_the_designed_ones(compiled, d, causal, ordered, docs, decoupled,
                                                               k_registers, warp_adds):
    """TMA loads: K, V once and Q, R, dO per step (in the producer's one loop), D/64 copies per tile (the
    128-byte swizzle is 64 elements wide); the four statistics per query row in one plain bulk copy; dQ^T / dR^T
    added with the bulk reduce-add (where a step adds the previous tile's, in the masked and the unmasked loop,
    and after the loops; two each: the two 64-row shares at D = 128, dQ^T or dR^T at D = 64); setmaxnreg down in the
    producer and up in the consumers; no local memory; the parameter list is the launcher's."""
    variant = compiled_variant(d, causal, ordered, docs, decoupled, k_registers, warp_adds)
    ptx = (compiled / f"{variant.name}.ptx").read_text()
    assert ptx.count("cp.async.bulk.tensor.3d.shared::cta.global") == (2 + 3) * d // 64
    assert ptx.count("cp.async.bulk.tensor") == (2 + 3) * d // 64
    assert ptx.count("cp.async.bulk.shared::cluster.global") == 1
    # the bytes each full barrier waits for: K and V; Q, R, dO and the statistics (a count the copies do not
    # reach hangs the kernel)
    expected = re.findall(r"mov\.b32\s+%r\d+, (\d+);\s*mbarrier\.arrive\.expect_tx", ptx)
    assert sorted(map(int, expected)) == sorted([2 * BWD_BLOCK_N * d * 2, 3 * variant.bm * d * 2 + 4 * 4 * variant.bm])
    assert ptx.count("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32") == flushes(variant) * 2
    assert "atom.global.add.f32" not in ptx and "red.global.add.f32" not in ptx  # no per-element atomics
    assert re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+);", ptx) == [("dec", "24"), ("inc", "240")]
    assert ".local" not in ptx
    entry = re.search(r"\.entry (\w+)\(", ptx).group(1)
    assert rt.ptx_params(ptx, entry) == BACKWARD_PARAMS
    # the last parameter, the documents' bounds, is read by the documents variant only
    assert (f"{entry}_param_{len(BACKWARD_PARAMS) - 1}]" in ptx) == docs


@needs_dsl
@pytest.mark.parametrize(FIELDS, COMPILED, ids=COMPILED_IDS)
def test_only_the_deterministic_variant_orders_its_adds(compiled, d, causal, ordered, docs, decoupled, k_registers,
                                                        warp_adds):
    """Deterministic: per step the lead thread (of the warpgroup, or with per-warp adds of each warp) first waits for
    its previous add to complete (wait_group without .read) and passes that tile's turn on (a proxy fence, then
    red.release), then after staging spins on this
    query tile's semaphore (ld.acquire; the first read and the loop's: two loads), fences, and adds; at the end
    it waits for the last add and passes its turn on. Unordered: the wait for the staging buffer to be read
    (wait_group.read), the add; at the end, the same wait. Either way the lead's warp reconverges after it."""
    variant = compiled_variant(d, causal, ordered, docs, decoupled, k_registers, warp_adds)
    ptx = (compiled / f"{variant.name}.ptx").read_text()
    events = {"ld.global.acquire.gpu": "acquire", "cp.reduce.async.bulk": "reduce",
              "cp.async.bulk.commit_group": "commit", "cp.async.bulk.wait_group.read": "wait_read",
              "cp.async.bulk.wait_group ": "wait", "cp.async.bulk.wait_group\t": "wait",
              "red.release.gpu": "release", "fence.proxy.async.global": "fence"}
    pattern = "|".join(re.escape(e) for e in events)
    sequence = [events[m.group(0)] for m in re.finditer(pattern, ptx)]
    if ordered:
        assert ptx.count("ld.global.acquire.gpu.b32") == 2 * flushes(variant)
        assert ptx.count("red.release.gpu.global.add.s32") == flushes(variant) + 1
        step = ["wait", "fence", "release", "acquire", "acquire", "fence", "reduce", "reduce", "commit"]
        assert sequence == flushes(variant) * step + ["wait", "fence", "release"]
    else:
        assert "ld.global.acquire.gpu" not in ptx and "red.release.gpu" not in ptx and "fence" not in sequence
        step = ["wait_read", "reduce", "reduce", "commit"]
        assert sequence == flushes(variant) * step + ["wait_read"]


@needs_dsl
@pytest.mark.parametrize(FIELDS, COMPILED, ids=COMPILED_IDS)
def test_warpgroups_meet_on_the_same_tile_or_decoupled_on_the_previous_one(compiled, d, causal, ordered, docs,
                                                                          decoupled, k_registers, warp_adds):
    """The [dQ^T | dR^T] chain needs both warpgroups' ds^T, dt^T (the staging of its result needs one warpgroup's
    threads, or with per-warp adds one warp's). Lockstep: per step one barrier of both (bar.sync
    1, 256) after the ds^T / dt^T stores and before the chain. Decoupled: per step a warpgroup syncs on the
    other's arrival for the previous tile (that warpgroup's named barrier of the step's parity, 4 + 2 cw + parity:
    an id in a register) before its own stores (the buffer they reuse is free only then), arrives after them, then
    issues the previous tile's chain; the first step only arrives, and after the loops a last sync comes before
    the last tile's chain."""
    variant = compiled_variant(d, causal, ordered, docs, decoupled, k_registers, warp_adds)
    ptx = (compiled / f"{variant.name}.ptx").read_text()
    lockstep = len(re.findall(r"bar\.sync\s+1, 256;", ptx))
    kinds = {"bar.arrive": "arrive", "bar.sync": "sync", "st.shared.b32": "store"}
    sequence = []
    for m in re.finditer(r"bar\.arrive\s+%r\d+, 256;|bar\.sync\s+%r\d+, 256;|st\.shared\.b32", ptx):
        kind = kinds[m.group(0).split()[0].rstrip("\t")]
        if not sequence or sequence[-1] != kind:
            sequence.append(kind)
    barriers = [k for k in sequence if k != "store"]
    # the staging of a [dQ^T | dR^T] share: between two barriers of the warpgroup (bar.sync 2 + cw, 128), or with
    # per-warp adds between the warp's own syncs (bar.warp.sync)
    staging = len(re.findall(r"bar\.sync\s+%r\d+, 128;", ptx))
    assert staging == (0 if warp_adds else 2 * flushes(variant)), staging
    if not decoupled:
        assert lockstep == steps(variant) and barriers == []
        return
    assert lockstep == 0
    assert barriers == ["arrive"] + ["sync", "arrive"] * (steps(variant) - 1) + ["sync"]
    # stores (ds^T / dt^T, or at the end the last chain's staging) follow each sync before the next barrier
    assert all(sequence[i + 1] == "store" for i, k in enumerate(sequence) if k == "sync")


@needs_dsl
@pytest.mark.parametrize(FIELDS, COMPILED, ids=COMPILED_IDS)
def test_tma_boxes_the_launcher_encodes_are_the_kernels(compiled, d, causal, ordered, docs, decoupled, k_registers,
                                                        warp_adds):
    """The launcher builds the CUtensorMaps itself (no DSL on the GPU host): the boxes it encodes must be
    those the DSL compiled the copies for, as its IR records them (dims innermost first: D, rows, heads)."""
    variant = compiled_variant(d, causal, ordered, docs, decoupled, k_registers, warp_adds)
    ir = "".join(p.read_text() for p in (compiled / f"ir_{variant.name}").glob("*.mlir"))
    boxes = {tuple(map(int, m.split(","))) for m in re.findall(r'tma_gbasis = <"\((\d+,\d+,\d+)\):', ir)}
    assert boxes == {tuple(box) for box in variant.tma_boxes()}


def triton_tool(name: str) -> Path:
    """A CUDA binary tool (cuobjdump, ptxas) from Triton's package; the test is skipped without it."""
    triton = pytest.importorskip("triton")
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not tool.exists():
        pytest.skip(f"no {name} in Triton's package")
    return tool


@needs_dsl
@pytest.mark.parametrize(FIELDS, COMPILED, ids=COMPILED_IDS)
def test_sass_has_the_wgmmas_and_tma_and_spills_only_where_designed(compiled, d, causal, ordered, docs, decoupled,
                                                                    k_registers, warp_adds):
    """ptxas keeps the designed wgmmas (HGMMA 64 x N x 16 as many as in the PTX; it may add others of its own),
    the TMA loads, the bulk copy and the bulk reduce-add, with no stack or local memory but 8 bytes a thread on
    the stack in the documents key-ordered variant at head_dim 128 (in the default lpt order; head by head it
    keeps none; at head_dim 64 full, where the per-warpgroup adds keep 8, the per-warp adds keep none)."""
    tool = triton_tool("cuobjdump")
    variant = compiled_variant(d, causal, ordered, docs, decoupled, k_registers, warp_adds)
    cubin = str(compiled / f"{variant.name}.cubin")
    usage = subprocess.run([tool, "--dump-resource-usage", cubin], capture_output=True, text=True, check=True).stdout
    fields = dict(item.split(":", 1) for item in next(x for x in usage.splitlines() if "REG:" in x).split() if ":" in item)
    spills = (d, ordered, docs) == (128, True, True)
    assert int(fields["STACK"]) <= (8 if spills else 0) and int(fields["LOCAL"]) == 0
    assert int(fields["REG"]) * variant.num_threads <= 65536  # one CTA fits the register file at launch
    sass = subprocess.run([tool, "--dump-sass", cubin], capture_output=True, text=True, check=True).stdout
    for n, count in expected_wgmmas(variant).items():
        assert len(re.findall(rf"HGMMA\.64x{n}x16\b", sass)) == count, n
    assert len(re.findall(r"UTMALDG\.3D\b", sass)) == (2 + 3) * d // 64
    assert "UBLKCP.S.G" in sass and "UBLKRED.G.S.ADD.F32" in sass
    assert spills or not re.search(r"\b(LDL|STL)\b", sass)


@needs_dsl
@pytest.mark.parametrize(FIELDS, COMPILED, ids=COMPILED_IDS)
def test_ptxas_keeps_the_wgmmas_asynchronous(compiled, d, causal, ordered, docs, decoupled, k_registers, warp_adds,
                                             tmp_path):
    """ptxas serialises every wgmma of a kernel (waits after each, C7514) when it cannot match a read of an
    accumulator to the wait for its chain; the staging of the in-flight [dQ^T | dR^T] chain is such a read."""
    variant = compiled_variant(d, causal, ordered, docs, decoupled, k_registers, warp_adds)
    ptx = compiled / f"{variant.name}.ptx"
    report = subprocess.run([triton_tool("ptxas"), "-arch=sm_90a", "-v", "-o", str(tmp_path / "k.cubin"), str(ptx)],
                            capture_output=True, text=True, check=True)
    assert "instructions are serialized" not in report.stdout + report.stderr


# ---- artefacts ----------------------------------------------------------------------------------

@needs_dsl
def test_build_kernels_writes_backward_artefacts(tmp_path):
    """One mask, one head_dim, one order, no packed documents: the forward variants the backends launch (one CTA a
    work item, and persistent in the lpt order for short sequences) and one backward variant, in lockstep and
    decoupled."""
    proc = subprocess.run([sys.executable, "scripts/build_kernels.py", "--attention", "--out", str(tmp_path),
                           "--dtype", "bfloat16", "--head-dim", "64", "--causal", "1",
                           "--backward-deterministic", "0", "--documents", "0", "--backward-decoupled", "0", "1"],
                          cwd=REPO,
                          env={k: v for k, v in os.environ.items() if k != "CUTE_DSL_ARCH"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    variant = BackwardVariant("bfloat16", 64, True, deterministic=False)
    forwards = [AttentionVariant("bfloat16", 64, True), AttentionVariant("bfloat16", 64, True, lpt=True,
                                                                         persistent=True)]
    decoupled = BackwardVariant("bfloat16", 64, True, decoupled=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{v.name}.{ext}" for v in (variant, decoupled, *forwards) for ext in ("cubin", "json"))
    meta, _ = read_artefact(tmp_path, decoupled)
    assert meta["variant"] == asdict(decoupled) and meta["smem_bytes"] == decoupled.smem_bytes
    meta, cubin = read_artefact(tmp_path, variant)
    assert cubin[:4] == b"\x7fELF" and meta["kernel"].encode() in cubin
    assert meta["arch"] == "sm_90a" and meta["params"] == BACKWARD_PARAMS and meta["block"] == [384, 1, 1]
    assert meta["variant"] == asdict(variant) and meta["variant"]["block_m"] == 64
    assert meta["smem_bytes"] == variant.smem_bytes and meta["source"] == source_hash("cute_backward")
    assert read_artefact(tmp_path, BackwardVariant("bfloat16", 64, True, deterministic=True)) is None  # the ordered one: not built
    # the artefact is refused once it is stale, and names the build command
    path = tmp_path / f"{variant.name}.json"
    path.write_text(json.dumps({**meta, "source": "0" * 16}))
    with pytest.raises(ValueError, match="another version of kernels/parallax_kernels/parallax/cute_backward.py.*"
                                         "scripts/build_kernels.py --attention"):
        read_artefact(tmp_path, variant)


def test_backward_artefact_mismatches_are_clear_errors(tmp_path):
    variant = BackwardVariant("bfloat16", 128, True)
    meta = {"variant": asdict(variant), "kernel": "k", "params": BACKWARD_PARAMS, "block": [384, 1, 1],
            "smem_bytes": variant.smem_bytes, "arch": "sm_90a", "source": source_hash("cute_backward")}
    path = tmp_path / f"{variant.name}.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="has no cubin beside it.*scripts/build_kernels.py --attention"):
        read_artefact(tmp_path, variant)
    (tmp_path / f"{variant.name}.cubin").write_bytes(b"\x7fELF")
    for params in (BACKWARD_PARAMS[:-1], ATTENTION_PARAMS):  # another parameter list, or the forward's
        path.write_text(json.dumps({**meta, "params": params}))
        with pytest.raises(ValueError, match="differ from this launcher's.*scripts/build_kernels.py --attention"):
            read_artefact(tmp_path, variant)
    path.write_text(json.dumps({**meta, "variant": {**asdict(variant), "deterministic": not variant.deterministic}}))
    with pytest.raises(ValueError, match="describes.*scripts/build_kernels.py --attention"):
        read_artefact(tmp_path, variant)
    # stale: built from another cute_backward.py, or stamped with the forward's hash
    for source in ("0" * 16, source_hash("cute_kernel")):
        path.write_text(json.dumps({**meta, "source": source}))
        with pytest.raises(ValueError, match="another version of kernels/parallax_kernels/parallax/cute_backward.py"
                                             ".*scripts/build_kernels.py --attention"):
            read_artefact(tmp_path, variant)
    path.write_text(json.dumps(meta))
    assert read_artefact(tmp_path, variant) == (meta, b"\x7fELF")
    assert read_artefact(tmp_path / "empty", variant) is None


@pytest.mark.parametrize("d", [128, 64])
def test_missing_backward_kernel_without_the_dsl_names_the_build_command(tmp_path, monkeypatch, d):
    monkeypatch.setattr(rt, "dsl_installed", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    variant = BackwardVariant("bfloat16", d, True, deterministic=False)
    with pytest.raises(RuntimeError, match=f"{variant.name}.*scripts/build_kernels.py --attention --out"):
        load_attention_kernel(variant, tmp_path)


@needs_dsl
def test_build_kernels_builds_each_head_dims_default_adds_or_those_named():
    """--backward-warp-adds: by default each head_dim's adds (per warp at 64, per warpgroup at 128, as the backends
    launch them), 0 / 1 those at both head dims, 0 1 both (what main() would build: the build itself replaced by
    printing the variant's name, in a fresh process as on a build machine)."""
    code = ("import sys\n"
            "sys.path.insert(0, 'scripts')\n"
            "import build_kernels\n"
            "build_kernels.build = lambda variant, *rest: print(variant.name)\n"
            "build_kernels.main(sys.argv[1:])\n")
    base = ["--attention", "--dtype", "bfloat16", "--causal", "1", "--documents", "0", "--backward-deterministic",
            "0", "1"]

    def backward(*extra):
        proc = subprocess.run([sys.executable, "-c", code, *base, *extra], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "CUTE_DSL_ARCH": "sm_90a"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return sorted(line for line in proc.stdout.split() if line.startswith("parallax_attn_bwd_"))

    def names(*head_dims, **fields):
        return sorted(BackwardVariant("bfloat16", d, True, deterministic=ordered, **fields).name
                      for d in head_dims for ordered in (False, True))

    assert backward() == names(64, 128) == sorted(names(64, warp_adds=True) + names(128, warp_adds=False))
    assert backward("--backward-warp-adds", "1") == names(64, 128, warp_adds=True)
    assert backward("--backward-warp-adds", "0", "1") == sorted(names(64, 128, warp_adds=False)
                                                                + names(64, 128, warp_adds=True))


def test_too_many_kv_heads_for_the_backward_grid_are_refused():
    from parallax_kernels.parallax.cute_launch import MAX_GRID_Y, _launch_backward

    q = torch.zeros(1, MAX_GRID_Y + 1, 1, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="pairs; the backward launch takes at most 65535"):
        _launch_backward(q, q, q, q, q, q, q, q[..., 0], q[..., 0], True, 0.125, lpt=False)
    with pytest.raises(ValueError, match="pairs in groups of 1; the backward launch takes at most 65535"):
        _launch_backward(q, q, q, q, q, q, q, q[..., 0], q[..., 0], True, 0.125, lpt_heads=1)


@pytest.mark.parametrize("kv_heads, kv_head_mib", [(64, 4), (32, 8), (16, 16), (8, 32), (8, 64), (32, 6), (31, 1),
                                                  (21, 3), (1, 1)])
def test_backward_lpt_groups_are_the_most_whole_heads_that_fit(kv_heads, kv_head_mib):
    """backward_lpt_heads: the largest divisor of B Hkv whose inputs fit BWD_LPT_BYTES, at least one head."""
    per = backward_lpt_heads(kv_heads, kv_head_mib * 2**20)
    fits = [g for g in range(1, kv_heads + 1) if kv_heads % g == 0 and g * kv_head_mib * 2**20 <= BWD_LPT_BYTES]
    assert per == max(fits, default=1)
    assert backward_lpt_heads(32, 8 * 2**20) == 4  # (4, 16, 8, 4096, 128): 8 MiB a KV head
    assert backward_lpt_heads(31, 2**20) == 31 and backward_lpt_heads(62, 2**20) == 31


@pytest.mark.parametrize("kv_heads, key_tiles, per", [(32, 32, 16), (6, 5, 1), (6, 5, 2), (6, 5, 3), (6, 5, 6),
                                                      (1, 9, 1)])
def test_backward_lpt_order_takes_every_key_tile_once_lowest_first(kv_heads, key_tiles, per):
    """backward_lpt_tile, the arithmetic of the lpt backward's kernel: over the grid (G, key tiles, B Hkv / G) in
    block-index order (x fastest), each (key tile, KV head) once; a group's CTAs are consecutive and take key
    tile 0 of each of its heads, then key tile 1, ...; so a lower key tile of a KV head has a lower block index,
    which the key-ordered adds wait on."""
    order = [backward_lpt_tile(x, y, z, per) for z in range(kv_heads // per) for y in range(key_tiles)
             for x in range(per)]
    assert sorted(order) == [(t, h) for t in range(key_tiles) for h in range(kv_heads)]
    for z in range(kv_heads // per):
        block = order[z * per * key_tiles:(z + 1) * per * key_tiles]
        assert {h for _, h in block} == set(range(z * per, (z + 1) * per))
        assert [t for t, _ in block] == sorted(t for t, _ in block)
    for h in range(kv_heads):
        assert [t for t, hh in order if hh == h] == list(range(key_tiles))


def test_lpt_groups_that_do_not_divide_the_heads_are_refused():
    from parallax_kernels.parallax.cute_launch import _launch_backward

    q = torch.zeros(2, 6, 8, 64, dtype=torch.bfloat16)
    k = torch.zeros(2, 3, 8, 64, dtype=torch.bfloat16)
    stats = q[..., 0]
    with pytest.raises(ValueError, match="lpt_heads=4 KV heads a group must divide B \\* Hkv = 6"):
        _launch_backward(q, q, k, k, q, q, q, stats, stats, True, 0.125, lpt_heads=4)
    with pytest.raises(ValueError, match="lpt_heads is for the lpt order"):
        _launch_backward(q, q, k, k, q, q, q, stats, stats, True, 0.125, lpt=False, lpt_heads=2)


# ---- ops and backends ---------------------------------------------------------------------------

def test_op_schemas_carry_the_order_and_the_documents():
    """The forward op takes `deterministic` for its backward, which takes it too (default: backend "cute"'s), and
    both take the optional document_ids (default: none)."""
    import parallax_kernels.parallax.cute_launch  # noqa: F401  (registers the ops)

    for op in (torch.ops.parallax.attention_fwd_cute, torch.ops.parallax.attention_bwd_cute):
        arg = next(a for a in op.default._schema.arguments if a.name == "deterministic")
        assert str(arg.type) == "bool" and arg.default_value is CUTE_BACKENDS["cute"]
        docs = op.default._schema.arguments[-1]
        assert docs.name == "document_ids" and str(docs.type) == "Optional[Tensor]" and docs.default_value is None
    names = [a.name for a in torch.ops.parallax.attention_bwd_cute.default._schema.arguments]
    assert names == ["grad_o", "q", "k", "v", "r", "o", "a", "lse", "tbar", "causal", "scale", "deterministic",
                     "document_ids"]
    assert len(torch.ops.parallax.attention_bwd_cute.default._schema.returns) == 4


def test_backward_fake_implementation_returns_the_inputs_shapes():
    """Under fake tensors (torch.compile's tracing) the backward op returns dq, dk, dv, dr shaped and typed like
    q, k, v, r (GQA: k, v have fewer heads) without running the kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import parallax_kernels.parallax.cute_launch  # noqa: F401

    b, h, hkv, n, d = 2, 4, 2, 100, 64
    with FakeTensorMode():
        q, r, o, a, grad = (torch.empty(b, h, n, d, dtype=torch.bfloat16) for _ in range(5))
        k, v = (torch.empty(b, hkv, n, d, dtype=torch.bfloat16) for _ in range(2))
        lse, tbar = torch.empty(b, h, n), torch.empty(b, h, n)
        for ordered in (True, False):
            grads = torch.ops.parallax.attention_bwd_cute(grad, q, k, v, r, o, a, lse, tbar, True, 0.125, ordered)
            assert [tuple(x.shape) for x in grads] == [(b, h, n, d), (b, hkv, n, d), (b, hkv, n, d), (b, h, n, d)]
            assert all(x.dtype == torch.bfloat16 for x in grads)


def _parallax_ops_of_a_pass(backend: str, transposed: bool = False):
    """A forward and backward through the backend's function under fake tensors (no kernel runs), q, k, v, r given
    as (B, H, N, D) or, `transposed`, as (B, N, H, D) tensors seen as (B, H, N, D) with the output handed back the
    same way (as the model does). Returns the parallax ops called, each (name, {argument: value} in schema order,
    with the arguments the dispatcher drops at their defaults filled in), the gradients and the inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from parallax_kernels.parallax import BACKENDS

    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "parallax":
                given = {**{a.name: a.default_value for a in func._schema.arguments},
                         **dict(zip((a.name for a in func._schema.arguments), args)), **(kwargs or {})}
                calls.append((func.__name__, given))
            return func(*args, **(kwargs or {}))

    b, h, hkv, n, d = 1, 4, 2, 50, 128
    seen = (lambda x: x.transpose(1, 2)) if transposed else (lambda x: x)
    shape = (lambda heads: (b, n, heads, d)) if transposed else (lambda heads: (b, heads, n, d))
    with FakeTensorMode():
        q, r = (torch.empty(shape(h), dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        k, v = (torch.empty(shape(hkv), dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        with Record():
            out = BACKENDS[backend].fn(*(seen(x) for x in (q, k, v, r)), causal=True, scale=d**-0.5,
                                       document_ids=None)
            grads = torch.autograd.grad(seen(out).sum(), (q, k, v, r))
    return calls, grads, (q, k, v, r)


@pytest.mark.parametrize("backend, ordered", CUTE_BACKENDS.items())
def test_each_backend_reaches_its_backward(backend, ordered):
    """Under fake tensors, a backward through the backend's function runs attention_bwd_cute with its order."""
    calls, grads, inputs = _parallax_ops_of_a_pass(backend)
    assert [x.shape for x in grads] == [x.shape for x in inputs]
    assert [(name, given["deterministic"]) for name, given in calls] == [
        ("attention_fwd_cute.default", ordered), ("attention_bwd_cute.default", ordered)]


@pytest.mark.parametrize("backend", [*CUTE_BACKENDS, "triton"])
def test_the_ops_get_the_models_transposed_tensors_contiguous(backend):
    """The model hands q, k, v, r as (B, N, H, D) tensors seen as (B, H, N, D), and its output transpose hands back
    a transposed gradient. The kernels read them contiguous: the backend functions make them so before the ops
    (under torch.compile a copy fused into the kernel that produces them), not inside, where each would be a copy
    more per pass."""
    calls, _, _ = _parallax_ops_of_a_pass(backend, transposed=True)
    seen = [(name, [a.is_contiguous() for a in given.values() if isinstance(a, torch.Tensor)])
            for name, given in calls]
    names = [name for name, _ in seen]
    assert names[0].startswith("attention_fwd") and names[-1].startswith("attention_bwd"), names
    if backend == "triton":  # its forward reads strided q, k, v, r; its backward wants dO in o's layout
        assert seen[-1][1][0], seen
    else:
        assert all(all(contiguous) for _, contiguous in seen), seen


@pytest.mark.parametrize("backend", CUTE_BACKENDS)
def test_backends_are_registered_and_off_hopper_are_errors_not_fallbacks(backend):
    from parallax_kernels.parallax import BACKENDS
    from parallax_titan.ops import check_backend, parallax_attention

    assert {name for name in BACKENDS if name.startswith("cute")} == set(CUTE_BACKENDS)
    check_backend(backend)  # no example: only the name is checked
    args = pytest.importorskip("parallax_titan.model.args", reason="needs torchtitan")
    args.ParallaxModelArgs(attention_backend=backend)  # the config key accepts it
    args.ParallaxModelArgs(attention_backend=backend, document_masking=True)  # and with packed documents
    if HOPPER:
        pytest.skip("this machine has a Hopper GPU")
    q = torch.randn(1, 2, 8, 64)
    with pytest.raises(RuntimeError, match=f"backend {backend!r} is unavailable: .*Hopper"):
        check_backend(backend, q)
    with pytest.raises(RuntimeError, match=f"backend {backend!r} is unavailable: .*Hopper"):
        parallax_attention(q, q, q, q, backend=backend)
    with pytest.raises(RuntimeError, match=f"backend {backend!r} is unavailable: .*Hopper"):
        parallax_attention(q, q, q, q, backend=backend, document_ids=torch.zeros(1, 8, dtype=torch.long))


def test_kernel_resources_reads_ptxas_wgmma_notes():
    """scripts/kernel_resources.py --cute: ptxas's report of serialised wgmmas (C7514) is named as such; otherwise
    the waits (C7517) and fences (C7519) ptxas added are counted."""
    from scripts.kernel_resources import ptxas_notes

    serialised = ("ptxas info    : (C7514) Potential Performance Loss: wgmma.mma_async instructions are serialized "
                  "due to non wgmma instructions reading accumulator registers of a wgmma between start and end")
    added = ("ptxas info    : (C7517) warpgroup.wait is injected in around line 440 by compiler\n"
             "ptxas info    : (C7519) warpgroup.arrive is injected in around line 1540 by compiler\n"
             "ptxas info    : (C7519) warpgroup.arrive is injected in around line 1728 by compiler\n")
    assert ptxas_notes(serialised + "\n" + added) == "wgmmas serialised (C7514)"
    assert ptxas_notes(added) == "1 waits, 2 fences added"
    assert ptxas_notes("ptxas info    : Used 168 registers") == "0 waits, 0 fences added"
