"""Backends "cute" and "cute_deterministic" of parallax_attention: the CuTe DSL Hopper forward (kernels/parallax_kernels/
parallax/cute_kernel.py) and backward (cute_backward.py; its CPU-side tests are in test_cute_backward.py). On
this CPU machine: the forward's sm_90a build and what the compiled code contains (wgmma, TMA, register
reallocation, no spills), its artefacts and launcher's checks. On a Hopper GPU (marked gpu): outputs and all
four gradients against float64, bf16 error against the Triton kernel's, and the deterministic backward's
bitwise reproducibility."""

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from parallax_kernels import cute_runtime as rt
from parallax_kernels.parallax.cute_launch import (ATTENTION_PARAMS, load_attention_kernel, parallax_attention_cute,
                                                   read_artefact, source_hash, unavailable_reason)
from parallax_kernels.parallax.cute_variant import AttentionVariant, BackwardVariant

REPO = Path(__file__).resolve().parents[1]
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_dsl = pytest.mark.skipif(not rt.dsl_installed(), reason="nvidia-cutlass-dsl is not installed")


@pytest.mark.parametrize("fields, message", [
    (dict(dtype="float32"), "dtype float32 is not supported"),
    (dict(head_dim=96), "head_dim 96 is not supported"),
    (dict(block_n=32), "block_n 32 is not 64 or 128"),
    (dict(stages=5), "5 K/V stages"),
    (dict(stacked=False, overlap=True), "overlap needs stacked"),
    (dict(warpgroups=4), "4 consumer warpgroups; 2 or 3"),
    (dict(warpgroups=3), "three consumer warpgroups .* need the stacked kernel at head_dim 64"),
    (dict(head_dim=64, stacked=False, warpgroups=3), "three consumer warpgroups"),
])
def test_unsupported_variants_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        AttentionVariant(**{**dict(dtype="bfloat16", head_dim=128, causal=True), **fields}).check()


def test_the_default_tile_and_its_explicit_spelling_are_one_variant():
    """(An artefact built with an explicit block_n, overlap or warpgroups must serve the default, and the other way
    round.) The default is stacked with the overlap, 128-key tiles at both head dims, three consumer warpgroups at
    head_dim 64 and two at 128; unstacked, 128 at head_dim 64 and 64 at 128, no overlap, two warpgroups."""
    for d, wgs, suffix in ((64, 3, "_w3"), (128, 2, "")):
        default = AttentionVariant("bfloat16", d, True)
        assert default == AttentionVariant("bfloat16", d, True, block_n=128, stacked=True, overlap=True,
                                           warpgroups=wgs)
        assert asdict(default)["block_n"] == 128 and asdict(default)["overlap"] is True
        assert asdict(default)["warpgroups"] == wgs
        assert default.name.endswith("_n128_s3_st_ov" + suffix)
        stacked = AttentionVariant("bfloat16", d, True, overlap=False)
        assert stacked == AttentionVariant("bfloat16", d, True, block_n=128, stacked=True, overlap=False,
                                           warpgroups=wgs)
        assert stacked.name.endswith("_n128_s3_st" + suffix)
    for d, bn in ((64, 128), (128, 64)):
        unstacked = AttentionVariant("bfloat16", d, True, stacked=False)
        assert unstacked == AttentionVariant("bfloat16", d, True, block_n=bn, stacked=False, overlap=False,
                                             warpgroups=2)
        assert asdict(unstacked)["block_n"] == bn and asdict(unstacked)["overlap"] is False
        assert unstacked.name.endswith(f"_n{bn}_s3")


@pytest.mark.parametrize("m_blocks, heads, n, group", [(64, 64, 4096, 2), (256, 16, 16384, 2), (1, 3, 5, 1),
                                                       (33, 96, 70000, 8), (7, 40, 200, 4)])
@pytest.mark.parametrize("causal", [True, False])
def test_lpt_order_takes_every_tile_once_longest_first_in_groups_of_heads(m_blocks, heads, n, group, causal):
    """lpt_tile, the arithmetic the lpt variant's kernel runs: a bijection from CTAs onto (query tile, head); heads
    in groups of whole KV heads whose K and V fit the budget (the last group may be smaller); in a group the CTAs
    go through the heads for each query tile, the longest (causal: the last) first."""
    from parallax_kernels.parallax.cute_variant import LPT_KV_BYTES, lpt_tile

    kv_head_bytes = n * 4 * 128
    order = [lpt_tile(cta, m_blocks, heads, kv_head_bytes, group, causal) for cta in range(m_blocks * heads)]
    assert sorted(order) == [(m, h) for m in range(m_blocks) for h in range(heads)]
    rank = [m_blocks - 1 - m if causal else m for m, _ in order]
    if m_blocks == 1:  # one tile a head: the order is the heads', whatever the groups
        assert [h for _, h in order] == list(range(heads))
        return
    per = rank.index(1)  # the first group's size: the CTAs before its first second-longest tile
    assert per == heads or (per % group == 0 and (per // group) * kv_head_bytes <= max(LPT_KV_BYTES, kv_head_bytes)
                            and (per // group + 1) * kv_head_bytes > LPT_KV_BYTES)  # whole KV heads, as many as fit
    for start in range(0, heads, per):
        members = range(start, min(start + per, heads))
        block = slice(start * m_blocks, (start + len(members)) * m_blocks)  # a group's CTAs are consecutive
        assert {h for _, h in order[block]} == set(members)
        assert rank[block] == sorted(rank[block])  # longest first, every head of the group at each query tile


def test_stacked_variant_geometry():
    """Stacked: 32 query rows a warpgroup (64 a CTA, the launch grid's unit), Q and R copied 8 rows at a time
    (one swizzle atom each); 3 K/V stages of 128 keys fit at head_dim 128, 4 do not and the check says so."""
    plain, stacked = AttentionVariant("bfloat16", 128, True, stacked=False), AttentionVariant("bfloat16", 128, True)
    assert (plain.wg_rows, plain.cta_rows, stacked.wg_rows, stacked.cta_rows) == (64, 128, 32, 64)
    assert plain.tma_boxes() == ([64, 64, 1], [64, 64, 1]) and stacked.tma_boxes() == ([64, 8, 1], [64, 128, 1])
    stacked.check()
    need = 1024 + 2 * 64 * 128 * 2 + 2 * 4 * 128 * 128 * 2
    with pytest.raises(ValueError, match=f"block_n 128 with 4 K/V stages at head_dim 128 needs {need} bytes"):
        AttentionVariant("bfloat16", 128, True, stages=4).check()


def test_three_warpgroup_variant_geometry():
    """Three consumer warpgroups: 96 query rows a CTA (the launch grid's unit), 512 threads, Q and R of three
    warpgroups in shared memory, its own artefact name; the two-warpgroup kernel's other fields. Three are the
    default of the stacked kernel at head_dim 64, two elsewhere."""
    three = AttentionVariant("bfloat16", 64, True, warpgroups=3)
    two = AttentionVariant("bfloat16", 64, True, warpgroups=2)
    three.check()
    assert (three.wg_rows, three.cta_rows, three.num_threads) == (32, 96, 512)
    assert three.smem_bytes == 1024 + 2 * 96 * 64 * 2 + 2 * 3 * 128 * 64 * 2
    assert three.name == two.name + "_w3"
    assert three.tma_boxes() == two.tma_boxes()
    assert AttentionVariant("bfloat16", 64, True) == three  # one variant, one artefact, whichever the spelling
    assert AttentionVariant("bfloat16", 128, True).warpgroups == 2
    assert AttentionVariant("bfloat16", 64, True, stacked=False).warpgroups == 2


def test_ptx_parameter_lists_name_by_value_structs():
    ptx = (".visible .entry k(\n\t.param .align 1 .b8 k_param_0[1],\n\t.param .align 64 .b8 k_param_1[128],\n"
           "\t.param .u64 .ptr .global .align 16 k_param_2,\n\t.param .u32 k_param_3,\n\t.param .f32 k_param_4\n)")
    assert rt.ptx_params(ptx, "k") == ["b8[1]", "b8[128]", "u64", "u32", "f32"]
    import ctypes

    packer = rt.ParamPacker(["b8[8]", "u32"])  # holds the values' buffer while the pointers are read
    pointers = packer.pack([bytes(range(8)), 5])
    assert bytes(ctypes.cast(pointers[0], ctypes.POINTER(ctypes.c_uint8 * 8)).contents) == bytes(range(8))
    with pytest.raises(ValueError, match="takes 8 bytes; got 7"):
        rt.ParamPacker(["b8[8]"]).pack([bytes(7)])


def test_a_kernels_packer_reuses_its_buffer_for_each_launchs_values():
    """CubinKernel.launch packs every launch's values into one buffer a thread: each pointer must read the value of
    the latest launch, whatever the mix of sizes before it, and a value the type cannot hold is an error."""
    import ctypes

    types = ["b8[1]", "b8[128]", "b8[8]", "u64", "u32", "u32", "f32", "u64"]
    packer = rt.ParamPacker(types)
    readers = [ctypes.c_uint8 * 1, ctypes.c_uint8 * 128, ctypes.c_uint8 * 8, ctypes.c_uint64, ctypes.c_uint32,
               ctypes.c_uint32, ctypes.c_float, ctypes.c_uint64]
    for seed in (1, 2):
        args = [bytes([seed]), bytes(range(seed, seed + 128)), bytes(range(8 * seed, 8 * seed + 8)), 2**40 + seed,
                seed, 2**32 - seed, 0.5 * seed, 16 * seed]
        pointers = packer.pack(args)
        read = [ctypes.cast(pointers[i], ctypes.POINTER(t)).contents for i, t in enumerate(readers)]
        assert [bytes(r) for r in read[:3]] == args[:3]
        assert [r.value for r in read[3:]] == args[3:]
        assert all(pointers[i] % 8 == pointers[0] % 8 for i in (1, 2, 3, 7))  # 8-byte slots for 8-byte values
    with pytest.raises(ValueError, match="kernel parameters .*u32"):
        packer.pack(args[:4] + [-1] + args[5:])
    with pytest.raises(ValueError, match="type s64 is not one the launcher packs"):
        rt.ParamPacker(["s64"])


def test_tma_descriptors_refuse_unaligned_tensors():
    with pytest.raises(ValueError, match="multiples of 16 bytes"):
        rt.encode_tma_tiled("bfloat16", 8, [128, 100, 4], [256, 25600], [64, 64, 1])
    with pytest.raises(ValueError, match="3 dims need 3 box sizes"):
        rt.encode_tma_tiled("bfloat16", 0, [128, 100, 4], [256, 25600], [64, 64])


# the variants the CPU tests compile, by key: head_dim (128 causal, 64 full), doc: packed documents, st: stacked,
# ov: with the overlap (stacked with the overlap is the default, with w3 at head_dim 64; "d128" is the unstacked
# kernel), lp: the lpt order, ps: persistent, w3: three consumer warpgroups (without it two)
COMPILED_KEYS = ("d128", "d64stov", "d128docstov", "d128st", "d128stov", "d128stovps", "d128stovlpps", "d64stovw3",
                 "d64stw3", "d64docstovw3")


def compiled_variant(key: str) -> AttentionVariant:
    d, docs, stacked, overlap, lpt, persistent, w3 = re.fullmatch(r"d(\d+)(doc)?(st)?(ov)?(lp)?(ps)?(w3)?",
                                                                  key).groups()
    return AttentionVariant("bfloat16", int(d), d == "128", documents=docs is not None, stacked=stacked is not None,
                            overlap=overlap is not None, lpt=lpt is not None, persistent=persistent is not None,
                            warpgroups=3 if w3 else 2)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The COMPILED_KEYS variants, each compiled for sm_90a in a fresh process as on an offline build machine:
    PTX, cubin and the DSL's IR (which records each TMA descriptor's box)."""
    if not rt.dsl_installed():
        pytest.skip("nvidia-cutlass-dsl is not installed")
    out = tmp_path_factory.mktemp("attention")
    code = ("import json, sys\n"
            "from parallax_kernels.parallax.cute_kernel import compile_variant\n"
            "from parallax_kernels.parallax.cute_variant import AttentionVariant\n"
            "cubin, ptx, name = compile_variant(AttentionVariant(**json.loads(sys.argv[2])))\n"
            "open(f'{sys.argv[1]}/{sys.argv[3]}.ptx', 'w').write(ptx)\n"
            "open(f'{sys.argv[1]}/{sys.argv[3]}.cubin', 'wb').write(cubin)\n")
    for key in COMPILED_KEYS:
        (out / f"ir_{key}").mkdir()
        env = {**os.environ, "CUTE_DSL_ARCH": "sm_90a", "CUTE_DSL_KEEP": "ir", "CUTE_DSL_DUMP_DIR": str(out / f"ir_{key}")}
        proc = subprocess.run([sys.executable, "-c", code, str(out), json.dumps(asdict(compiled_variant(key))), key],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@needs_dsl
def test_unstacked_kernel_has_the_designed_structure(compiled):
    """Unstacked (head_dim 128, causal): per key tile, 2 wgmmas of d/16 k-steps (S = Q K^T, T = R K^T) and 2 of
    BN/16 (O1 += P1 V, O2 += P2 V), instantiated twice (the unmasked and the masked loop); TMA loads (Q, R: two
    64-row tiles each; K, V: one tile each; d/64 copies per tile: the 128-byte swizzle is 64 elements wide);
    setmaxnreg down in the producer and up in the consumers; no local memory."""
    variant = compiled_variant("d128")
    d = variant.head_dim
    ptx = (compiled / "d128.ptx").read_text()
    assert ".target sm_90a" in ptx
    s_t = re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n{variant.bn}k16\.f32\.bf16\.bf16", ptx)
    pv = re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n{d}k16\.f32\.bf16\.bf16", ptx)
    assert len(s_t) == 2 * 2 * d // 16 and len(pv) == 2 * 2 * variant.bn // 16
    assert ptx.count("cp.async.bulk.tensor.3d.shared::cta.global") == (4 + 2) * d // 64
    assert re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+);", ptx) == [("dec", "24"), ("inc", "240")]
    assert ".local" not in ptx
    entry = re.search(r"\.entry (\w+)\(", ptx).group(1)
    assert rt.ptx_params(ptx, entry) == ATTENTION_PARAMS
    assert f"{entry}_param_{len(ATTENTION_PARAMS) - 1}]" not in ptx  # the documents' bounds: not read here


@needs_dsl
@pytest.mark.parametrize("key", ["d128st", "d128stov", "d64stov", "d128stovps", "d128stovlpps", "d64stovw3",
                                 "d64stw3"])
def test_stacked_variant_has_one_chain_per_matmul_pair(compiled, key):
    """Stacked: per key tile one wgmma chain of d/16 k-steps for [S; T] and one of BN/16 for [O1; O2], never the
    unstacked kernel's m64n64 S, T chains at head_dim 128: in the unmasked and the masked loop, and with the
    overlap also for the first tile's S, T and the last tile's P V outside them. Q and R come in 8-row copies from
    a loop (in the PTX once per warpgroup, tensor and 64 columns) beside the K and V tiles; the register split and
    the parameter list are the unstacked kernel's; no local memory."""
    variant = compiled_variant(key)
    d = variant.head_dim
    ptx = (compiled / f"{key}.ptx").read_text()
    chains = re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k16\.f32\.bf16\.bf16", ptx)
    assert sorted(chains) == sorted([str(variant.bn)] * ((2 + variant.overlap) * d // 16)
                                    + [str(d)] * ((2 + variant.overlap) * variant.bn // 16))
    # Q and R of each warpgroup (from a loop), K and V
    assert ptx.count("cp.async.bulk.tensor.3d.shared::cta.global") == (2 * variant.warpgroups + 2) * d // 64
    consumer_regs = {2: "240", 3: "160"}[variant.warpgroups]  # 24 x 128 + consumers x 128 x regs <= 65,536
    assert re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+);", ptx) == [("dec", "24"), ("inc", consumer_regs)]
    assert ".local" not in ptx
    entry = re.search(r"\.entry (\w+)\(", ptx).group(1)
    assert rt.ptx_params(ptx, entry) == ATTENTION_PARAMS
    assert f"{entry}_param_{len(ATTENTION_PARAMS) - 1}]" not in ptx


@needs_dsl
def test_three_warpgroups_take_turns_in_a_ring(compiled):
    """Three consumer warpgroups: each waits at its own turn barrier (ids 1-3, its 128 threads and the previous
    warpgroup's) and arrives at the next one's; the last hands the first turn to warpgroup 0 (barrier 1) at the
    start and after each tile but the last."""
    ptx = (compiled / "d64stovw3.ptx").read_text()
    arrivals = re.findall(r"bar\.arrive\s+([^,]+),\s*(\d+);", ptx)
    syncs = re.findall(r"bar\.sync\s+([^,;]+),\s*(\d+);", ptx)
    assert arrivals and all(count == "256" for _, count in arrivals + syncs)
    assert any(target == "1" for target, _ in arrivals)  # the last warpgroup to warpgroup 0
    assert any(not target.isdigit() for target, _ in arrivals)  # 1 + cw + 1: the next warpgroup's, by register
    assert re.search(r"\.reqntid 512|\.maxntid 512", ptx)


@needs_dsl
def test_documents_variant_masks_every_tile_and_reads_the_bounds(compiled):
    """With packed documents (the default kernel) every key tile runs the masked code (one instantiation of the
    tile in the loop, and the overlap's first S, T and last P V outside it), the loads are the kernel's without
    documents, and it reads the bounds pointer (the last parameter) for its tile range and its rows' [start, end)."""
    variant = compiled_variant("d128docstov")
    d = variant.head_dim
    ptx = (compiled / "d128docstov.ptx").read_text()
    chains = re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k16\.f32\.bf16\.bf16", ptx)
    assert len(chains) == 2 * (d // 16 + variant.bn // 16)
    assert ptx.count("cp.async.bulk.tensor.3d.shared::cta.global") == (2 * 2 + 2) * d // 64
    assert ".local" not in ptx
    entry = re.search(r"\.entry (\w+)\(", ptx).group(1)
    assert rt.ptx_params(ptx, entry) == ATTENTION_PARAMS
    assert f"{entry}_param_{len(ATTENTION_PARAMS) - 1}]" in ptx


@needs_dsl
@pytest.mark.parametrize("key", COMPILED_KEYS)
def test_outputs_leave_in_16_byte_stores(compiled, key):
    """o and a leave as 16-byte stores of 8 adjacent columns (each quad of threads transposes its 32-bit pairs),
    d / 32 of each per accumulator row of a thread (one query row stacked, two unstacked); only lse and tbar are
    stored a 32-bit word at a time."""
    variant = compiled_variant(key)
    ptx = (compiled / f"{key}.ptx").read_text()
    rows = 1 if variant.stacked else 2
    assert ptx.count("st.global.v4.b32") == 2 * rows * variant.head_dim // 32
    assert ptx.count("st.global.b32") == 2 * rows
    assert ptx.count("shfl.sync.bfly") >= 2 * rows * variant.head_dim // 8  # the transposes' (and the row sums')


@needs_dsl
@pytest.mark.parametrize("key", ["d128", "d64stov", "d128st", "d128stov", "d128stovps", "d128stovlpps"])
def test_tma_boxes_the_launcher_encodes_are_the_kernels(compiled, key):
    """The launcher builds the CUtensorMaps itself (no DSL on the GPU host): the boxes it encodes must be
    those the DSL compiled the copies for, as its IR records them (dims innermost first: D, rows, heads)."""
    variant = compiled_variant(key)
    ir = "".join(p.read_text() for p in (compiled / f"ir_{key}").glob("*.mlir"))
    boxes = {tuple(map(int, m.split(","))) for m in re.findall(r'tma_gbasis = <"\((\d+,\d+,\d+)\):', ir)}
    assert boxes == {tuple(box) for box in variant.tma_boxes()}


@needs_dsl
@pytest.mark.parametrize("key", COMPILED_KEYS)
def test_no_spills_and_wgmma_tma_in_sass(compiled, key):
    triton = pytest.importorskip("triton")
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (tools / "cuobjdump").exists():
        pytest.skip("no cuobjdump in Triton's package")
    cubin = str(compiled / f"{key}.cubin")
    usage = subprocess.run([tools / "cuobjdump", "--dump-resource-usage", cubin], capture_output=True, text=True,
                           check=True).stdout
    fields = dict(item.split(":", 1) for item in next(x for x in usage.splitlines() if "REG:" in x).split() if ":" in item)
    assert int(fields["STACK"]) == 0 and int(fields["LOCAL"]) == 0
    assert int(fields["REG"]) * compiled_variant(key).num_threads <= 65536  # one CTA fits the register file at launch
    sass = subprocess.run([tools / "cuobjdump", "--dump-sass", cubin], capture_output=True, text=True, check=True).stdout
    assert "HGMMA.64x" in sass and "UTMALDG.3D" in sass
    assert "LDL" not in sass and "STL" not in sass


@needs_dsl
def test_build_kernels_writes_attention_artefacts(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/build_kernels.py", "--attention", "--out", str(tmp_path),
                           "--dtype", "bfloat16", "--head-dim", "128", "--causal", "1", "--stacked", "1", "0",
                           "--no-backward"], cwd=REPO,
                          env={k: v for k, v in os.environ.items() if k != "CUTE_DSL_ARCH"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    variant = AttentionVariant("bfloat16", 128, True)
    meta, cubin = read_artefact(tmp_path, variant)
    assert cubin[:4] == b"\x7fELF" and meta["kernel"].encode() in cubin
    assert meta["arch"] == "sm_90a" and meta["params"] == ATTENTION_PARAMS and meta["block"] == [384, 1, 1]
    assert meta["smem_bytes"] == variant.smem_bytes and meta["source"] == source_hash()
    documents = AttentionVariant("bfloat16", 128, True, documents=True)  # built by default beside the other
    assert read_artefact(tmp_path, documents)[0]["variant"] == asdict(documents)
    # --stacked 0 without --overlap: the unstacked kernel, no overlap (which it cannot have)
    unstacked = [AttentionVariant("bfloat16", 128, True, documents=docs, stacked=False) for docs in (False, True)]
    # and what the backends launch for short causal sequences (forward_order): the default layout only
    persistent = replace(variant, lpt=True, persistent=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{v.name}.{ext}" for v in (variant, documents, *unstacked, persistent) for ext in ("cubin", "json"))


def test_artefact_mismatches_are_clear_errors(tmp_path):
    variant = AttentionVariant("bfloat16", 128, True)
    meta = {"variant": asdict(variant), "kernel": "k", "params": ATTENTION_PARAMS, "block": [384, 1, 1],
            "smem_bytes": variant.smem_bytes, "arch": "sm_90a", "source": source_hash()}
    path = tmp_path / f"{variant.name}.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="has no cubin beside it"):
        read_artefact(tmp_path, variant)
    (tmp_path / f"{variant.name}.cubin").write_bytes(b"\x7fELF")
    path.write_text(json.dumps({**meta, "params": ATTENTION_PARAMS[:-1]}))
    with pytest.raises(ValueError, match="differ from this launcher's.*scripts/build_kernels.py --attention"):
        read_artefact(tmp_path, variant)
    path.write_text(json.dumps({**meta, "variant": {**asdict(variant), "causal": False}}))
    with pytest.raises(ValueError, match="describes"):
        read_artefact(tmp_path, variant)
    path.write_text(json.dumps({**meta, "source": "0" * 16}))
    with pytest.raises(ValueError, match="another version of kernels/parallax_kernels/parallax/cute_kernel.py"):
        read_artefact(tmp_path, variant)
    path.write_text(json.dumps({k: v for k, v in meta.items() if k != "smem_bytes"}))
    with pytest.raises(ValueError, match=r"lacks \['smem_bytes'\].*scripts/build_kernels.py --attention"):
        read_artefact(tmp_path, variant)
    path.write_text(json.dumps(meta)[:40])  # cut short
    with pytest.raises(ValueError, match=f"{variant.name}.json is not a readable artefact record"):
        read_artefact(tmp_path, variant)
    path.write_text(json.dumps(meta))
    assert read_artefact(tmp_path, variant) == (meta, b"\x7fELF")
    assert read_artefact(tmp_path / "empty", variant) is None


def test_artefacts_are_written_whole_and_their_hash_covers_the_compile_helpers(tmp_path, monkeypatch):
    """write_artefact renames finished files into place (no partial file is ever visible or left behind), and
    the source hash changes with the runtime's compile helpers as well as with the kernel's own files."""
    from parallax_kernels.parallax.cute_launch import write_artefact

    variant = AttentionVariant("bfloat16", 128, True)
    ptx = f".entry {variant.name}_k(\n.param .u64 a,\n.param .u32 b\n)"
    write_artefact(tmp_path, variant, b"\x7fELF-cubin", ptx, f"{variant.name}_k", "x.y")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{variant.name}.cubin", f"{variant.name}.json"]
    assert (tmp_path / f"{variant.name}.cubin").read_bytes() == b"\x7fELF-cubin"
    assert json.loads((tmp_path / f"{variant.name}.json").read_text())["params"] == ["u64", "u32"]
    before = source_hash()
    monkeypatch.setattr(rt, "gmem_pointer", lambda dtype, align: None)  # another placeholder pointer
    assert source_hash() != before


def test_missing_kernel_without_the_dsl_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setattr(rt, "dsl_installed", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(RuntimeError, match="scripts/build_kernels.py --attention --out"):
        load_attention_kernel(AttentionVariant("bfloat16", 128, True), tmp_path)


def test_unavailable_reasons_name_the_cause(tmp_path, monkeypatch):
    from types import SimpleNamespace

    assert "needs a Hopper GPU" in unavailable_reason(torch.zeros(1, 2, 4, 64))
    fake = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16, shape=(1, 2, 4, 128))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(rt, "dsl_installed", lambda: False)
    monkeypatch.setenv("PARALLAX_KERNEL_DIR", str(tmp_path))
    assert "scripts/build_kernels.py --attention --out DIR" in unavailable_reason(fake)
    for opt_in in (AttentionVariant("bfloat16", 128, True, lpt=True),  # builds the backends never launch
                   AttentionVariant("bfloat16", 128, True, stacked=False),
                   AttentionVariant("bfloat16", 128, True, overlap=False),
                   AttentionVariant("bfloat16", 128, True, stages=2),
                   AttentionVariant("bfloat16", 64, True),  # another head_dim
                   BackwardVariant("bfloat16", 128, True, lpt=False),
                   BackwardVariant("bfloat16", 128, True, decoupled=True),
                   BackwardVariant("bfloat16", 128, True, warp_adds=True),
                   BackwardVariant("bfloat16", 128, True, deterministic=True, lpt=False),
                   BackwardVariant("bfloat16", 128, True, deterministic=True, decoupled=True)):
        (tmp_path / f"{opt_in.name}.cubin").write_bytes(b"\x7fELF")
    assert "no prebuilt attention forward or backward kernels" in unavailable_reason(fake)
    (tmp_path / f"{AttentionVariant('bfloat16', 128, True).name}.cubin").write_bytes(b"\x7fELF")
    assert "no prebuilt attention backward kernels" in unavailable_reason(fake)  # training needs both
    (tmp_path / f"{BackwardVariant('bfloat16', 128, True).name}.cubin").write_bytes(b"\x7fELF")
    assert unavailable_reason(fake) is None
    assert "no prebuilt attention key-ordered backward kernels" in unavailable_reason(fake, deterministic=True)
    (tmp_path / f"{BackwardVariant('bfloat16', 128, True, deterministic=True).name}.cubin").write_bytes(b"\x7fELF")
    assert unavailable_reason(fake, deterministic=True) is None
    # at head_dim 64 the backends launch the per-warp adds (artefacts *_wa): the per-warpgroup ones do not serve
    at_64 = SimpleNamespace(**{**vars(fake), "shape": (1, 2, 4, 64)})
    for deterministic in (False, True):
        default = BackwardVariant("bfloat16", 64, True, deterministic=deterministic)
        (tmp_path / f"{replace(default, warp_adds=False).name}.cubin").write_bytes(b"\x7fELF")
        assert "backward kernels" in unavailable_reason(at_64, deterministic=deterministic)
        (tmp_path / f"{default.name}.cubin").write_bytes(b"\x7fELF")
        assert default.name.endswith("_lpt_wa") and unavailable_reason(at_64, deterministic=deterministic) is None
    assert "head_dim 96 is not supported" in unavailable_reason(SimpleNamespace(**{**vars(fake), "shape": (1, 2, 4, 96)}))
    assert "dtype torch.float32" in unavailable_reason(SimpleNamespace(**{**vars(fake), "dtype": torch.float32}))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert "this GPU is sm_100" in unavailable_reason(fake)


def test_backend_is_registered_and_off_hopper_is_an_error_not_a_fallback():
    from parallax_kernels.parallax import BACKENDS
    from parallax_titan.ops import parallax_attention

    assert "cute" in BACKENDS
    args = pytest.importorskip("parallax_titan.model.args", reason="needs torchtitan")
    args.ParallaxModelArgs(attention_backend="cute")  # the config key accepts it
    if HOPPER:
        pytest.skip("this machine has a Hopper GPU")
    q = torch.randn(1, 2, 8, 64)
    with pytest.raises(RuntimeError, match="backend 'cute' is unavailable: .*Hopper"):
        parallax_attention(q, q, q, q, backend="cute")


def test_forward_launch_passes_the_kernels_parameters_and_makes_its_plan_once_per_shape(monkeypatch):
    """The launch's parameter list against ATTENTION_PARAMS' order (TMA descriptors of q, r, k, v with their
    sizes, the outputs, N, H, the group, scale log2(e), no bounds), the grid, and the per-shape plan: the kernel is
    looked up once per shape and again when the artefact folder's variable changes (a fake kernel and descriptor
    encoder stand in for the GPU)."""
    import math
    import struct

    from parallax_kernels.parallax import cute_launch

    loads, encoded, launched = [], [], []

    class FakeKernel:
        def prepared(self, grid):
            return lambda args, stream: launched.append((grid, args, stream))

    def load(variant, folder=None):
        loads.append(variant)
        return FakeKernel()

    def encode(dtype, address, dims, strides, box):
        encoded.append((dtype, address, dims, strides, tuple(box)))
        return bytes([len(encoded)]) * 128

    monkeypatch.setattr(cute_launch, "_PLANS", {})
    monkeypatch.setattr(cute_launch, "load_attention_kernel", load)
    monkeypatch.setattr(rt, "encode_tma_tiled", encode)
    monkeypatch.setattr(rt, "raw_stream", lambda device: 7)
    q, r = torch.zeros(2, 4, 130, 64, dtype=torch.bfloat16), torch.ones(2, 4, 130, 64, dtype=torch.bfloat16)
    k, v = torch.zeros(2, 2, 130, 64, dtype=torch.bfloat16), torch.ones(2, 2, 130, 64, dtype=torch.bfloat16)
    o, a, lse, tbar = cute_launch._launch(q, k, v, r, False, 0.125)
    assert loads == [AttentionVariant("bfloat16", 64, False)]
    assert o.shape == a.shape == q.shape and lse.shape == tbar.shape == (2, 4, 130) and lse.dtype == torch.float32
    (grid, args, stream), = launched
    assert grid == (2, 8, 1) and stream == 7  # 96 query rows a CTA (three warpgroups), (batch, head) pairs on y
    assert len(args) == len(ATTENTION_PARAMS)
    q_layout, kv_layout = ((64, 130, 8), (128, 16640), (64, 8, 1)), ((64, 130, 4), (128, 16640), (64, 128, 1))
    assert encoded == [("bfloat16", t.data_ptr(), *layout) for t, layout in
                       ((q, q_layout), (r, q_layout), (k, kv_layout), (v, kv_layout))]
    sizes_q, sizes_kv = struct.pack("<ii", 130, 8), struct.pack("<ii", 130, 4)
    assert args[:10] == [b"\0", b"\0", bytes([1]) * 128, sizes_q, bytes([2]) * 128, sizes_q, bytes([3]) * 128,
                         sizes_kv, bytes([4]) * 128, sizes_kv]
    assert args[10:14] == [o.data_ptr(), a.data_ptr(), lse.data_ptr(), tbar.data_ptr()]
    assert args[14:] == [130, 4, 2, 0.125 * math.log2(math.e), 0]

    cute_launch._launch(q, k, v, r, False, 0.125)  # the same shape: the plan is kept
    assert len(loads) == 1 and len(launched) == 2
    cute_launch._launch(q[:1], k[:1], v[:1], r[:1], False, 0.125)  # another shape
    monkeypatch.setenv(rt.ARTEFACT_ENV, "/elsewhere")  # another artefact folder
    cute_launch._launch(q, k, v, r, False, 0.125)
    assert len(loads) == 3 and launched[2][0] == (2, 4, 1)
    monkeypatch.delenv(rt.ARTEFACT_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/another-cache")  # the default folder follows it
    cute_launch._launch(q, k, v, r, False, 0.125)
    assert len(loads) == 4


def test_backends_launch_the_persistent_forward_for_short_causal_sequences(monkeypatch):
    """Without named variant fields the launch takes forward_order's variant: causal sequences of at most
    PERSISTENT_MAX_TOKENS tokens without documents the persistent lpt forward on at most one CTA an SM; longer
    ones, full attention and packed documents one CTA a work item; named fields exactly the variant they name
    (a fake kernel stands in for the GPU)."""
    from parallax_kernels.parallax import cute_launch
    from parallax_kernels.parallax.cute_variant import PERSISTENT_MAX_TOKENS
    from parallax_kernels.parallax_decode import triton_split

    launched = []

    class FakeKernel:
        def __init__(self, variant):
            self.variant = variant

        def prepared(self, grid):
            return lambda args, stream: launched.append((self.variant, grid))

    monkeypatch.setattr(cute_launch, "_PLANS", {})
    monkeypatch.setattr(cute_launch, "load_attention_kernel", lambda variant, folder=None: FakeKernel(variant))
    monkeypatch.setattr(rt, "encode_tma_tiled", lambda *args: bytes(128))
    monkeypatch.setattr(rt, "raw_stream", lambda device: 0)
    monkeypatch.setattr(triton_split, "_sm_count", lambda device: 132)

    def launch(n, causal=True, docs=False, **fields):
        q = torch.zeros(2, 4, n, 128, dtype=torch.bfloat16)
        k = torch.zeros(2, 2, n, 128, dtype=torch.bfloat16)
        ids = torch.zeros(2, n, dtype=torch.int32) if docs else None
        cute_launch._launch(q, k, k, q, causal, 0.125, document_ids=ids, **fields)
        return launched[-1]

    one_each = AttentionVariant("bfloat16", 128, True)
    short = PERSISTENT_MAX_TOKENS
    assert launch(short) == (replace(one_each, lpt=True, persistent=True), (132, 1, 1))  # 64 tiles x 8 heads
    assert launch(100) == (replace(one_each, lpt=True, persistent=True), (16, 1, 1))  # fewer items than SMs
    assert launch(short + 1) == (one_each, (-(-(short + 1) // 64), 8, 1))
    assert launch(100, causal=False) == (replace(one_each, causal=False), (2, 8, 1))
    assert launch(100, docs=True) == (replace(one_each, documents=True), (2, 8, 1))
    assert launch(100, stages=2) == (replace(one_each, stages=2), (2, 8, 1))
    assert launch(100, persistent=True) == (replace(one_each, persistent=True), (16, 1, 1))


def test_too_many_heads_for_the_grid_are_refused():
    from parallax_kernels.parallax.cute_launch import MAX_GRID_Y, _launch

    q = torch.zeros(1, MAX_GRID_Y + 1, 1, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="pairs; the launch takes at most 65535"):  # (the 2-D grid: full attention)
        _launch(q, q, q, q, False, 0.125)


def test_documents_reach_the_kernels_as_per_token_bounds():
    """The documents variants read, per token, [start, end) of its document (document_ids label contiguous
    segments; the same label later on is another document)."""
    from parallax_kernels.parallax.cute_launch import _bounds

    ids = torch.tensor([[0, 0, 1, 1, 1, 2, 0, 0], [7] * 8])
    bounds = _bounds(ids)
    assert bounds.dtype == torch.int32 and bounds.shape == (2, 8, 2) and bounds.is_contiguous()
    assert bounds[0].tolist() == [[0, 2], [0, 2], [2, 5], [2, 5], [2, 5], [5, 6], [6, 8], [6, 8]]
    assert bounds[1].tolist() == [[0, 8]] * 8
    assert _bounds(None) is None


# --- on a Hopper GPU --------------------------------------------------------------------------

def relative_error(got, want) -> float:
    return float((got.double() - want).norm() / want.norm())


def errors_against_float64(fn, b, h, hkv, n, d, dtype, causal, seed=0, document_ids=None):
    """Relative errors of o and the four gradients of `fn` against float64 on the same rounded inputs."""
    from parallax_kernels.parallax.reference import parallax_attention_reference

    docs = {} if document_ids is None else {"document_ids": document_ids.cuda()}

    g = torch.Generator().manual_seed(seed)
    raw = [torch.randn(b, heads, n, d, generator=g, dtype=torch.float64) for heads in (h, hkv, hkv, h)]
    inputs = [x.to(dtype).cuda().requires_grad_() for x in raw]
    grad = torch.randn(b, h, n, d, generator=g, dtype=torch.float64).to(dtype).cuda()
    out = fn(*inputs, causal=causal, scale=d**-0.5, **docs)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    ref = parallax_attention_reference(*ref_inputs, causal=causal, scale=d**-0.5, **docs)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad.double())
    assert out.dtype == dtype and out.shape == (b, h, n, d) and all(x.dtype == dtype for x in grads)
    errors = {"o": relative_error(out.detach(), ref)}
    errors.update({f"d{name}": relative_error(x, w) for name, x, w in zip("qkvr", grads, ref_grads)})
    return errors


def triton_fn(*args, causal, scale, document_ids=None):
    from parallax_kernels.parallax.triton_fused import parallax_attention_triton

    return parallax_attention_triton(*args, causal=causal, scale=scale, document_ids=document_ids)


GPU_CASES = [  # (B, H, Hkv, N, D, causal)
    (2, 4, 2, 300, 128, True),  # a partial last tile of both query and key tiles
    (2, 4, 2, 300, 128, False),
    (1, 8, 1, 257, 64, True),  # GQA group 8
    (1, 8, 1, 257, 64, False),
    (2, 6, 6, 1000, 128, False),  # group 1
    (1, 16, 4, 129, 64, True),  # group 4; one row past a backward CTA's 128 keys
    (3, 2, 1, 2, 128, True),  # two tokens (with one, every gradient but dv is exactly zero)
    (1, 4, 2, 63, 64, False),  # shorter than a tile
    (1, 4, 2, 2048, 128, True),
]


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "x".join(map(str, c[:5])) + ("c" if c[5] else "f"))
def test_matches_float64_and_is_no_worse_than_triton(case, dtype):
    """o and dq, dk, dv, dr against float64; each error at most the Triton kernel's on the same inputs
    (plus a little: two bf16 roundings of the same exact value differ run to run) and within its bound."""
    from parallax_titan.ops import parallax_attention

    def cute_fn(*args, causal, scale):  # through the public API
        return parallax_attention(*args, causal=causal, scale=scale, backend="cute")

    b, h, hkv, n, d, causal = case
    ours = errors_against_float64(cute_fn, b, h, hkv, n, d, dtype, causal)
    theirs = errors_against_float64(triton_fn, b, h, hkv, n, d, dtype, causal)
    bound = {torch.bfloat16: 1e-2, torch.float16: 5e-3}[dtype]
    assert all(e < bound for e in ours.values()), f"{ours} (bound {bound})"
    assert all(ours[k] <= 1.25 * theirs[k] + 1e-4 for k in ours), f"cute {ours} vs triton {theirs}"


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("case", [GPU_CASES[0], GPU_CASES[3], GPU_CASES[5], GPU_CASES[8]],
                         ids=lambda c: "x".join(map(str, c[:5])) + ("c" if c[5] else "f"))
def test_deterministic_backward_matches_float64(case):
    """Backend "cute_deterministic" (dQ, dR added in key-tile order): the same bounds as "cute"."""
    from parallax_titan.ops import parallax_attention

    def ordered_fn(*args, causal, scale):
        return parallax_attention(*args, causal=causal, scale=scale, backend="cute_deterministic")

    b, h, hkv, n, d, causal = case
    ours = errors_against_float64(ordered_fn, b, h, hkv, n, d, torch.bfloat16, causal)
    theirs = errors_against_float64(triton_fn, b, h, hkv, n, d, torch.bfloat16, causal)
    assert all(e < 1e-2 for e in ours.values()), ours
    assert all(ours[k] <= 1.25 * theirs[k] + 1e-4 for k in ours), f"cute_deterministic {ours} vs triton {theirs}"


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("b, h, hkv, n, d, causal", [
    (2, 8, 4, 1000, 64, True), (2, 8, 4, 1000, 64, False), (2, 8, 4, 1000, 128, True), (2, 8, 4, 1000, 128, False),
    (4, 16, 8, 4096, 128, True),  # 1024 CTAs: more than the GPU holds at once, so turns wait on queued CTAs' work
])
def test_deterministic_backward_is_bitwise_reproducible(b, h, hkv, n, d, causal):
    """Backend "cute_deterministic" orders the key tiles' dQ, dR adds: backward passes on the same inputs give
    the same bits (at N = 1000, 8 key tiles add into every late query tile of each query head)."""
    from parallax_kernels.parallax.cute_launch import _launch_backward, attention_fwd_cute

    g = torch.Generator().manual_seed(4)
    q, k, v, r, grad = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h, h))
    o, a, lse, tbar = attention_fwd_cute(q, k, v, r, causal, d**-0.5)
    runs = [_launch_backward(grad, q, k, v, r, o, a, lse, tbar, causal, d**-0.5, deterministic=True)
            for _ in range(3)]
    for name, first, *again in zip(("dq", "dk", "dv", "dr"), *runs):
        assert torch.isfinite(first).all(), name
        assert all(torch.equal(first, x) for x in again), name


def packed(lengths: list[list[int]]) -> torch.Tensor:
    """document_ids (B, N) of batch rows packed with documents of these lengths, labelled 0, 1, ... per row."""
    return torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in lengths])


def random_lengths(n: int, seed: int, mean: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(n - 1, generator=g)[: max(1, n // mean)].add(1).sort().values.tolist()
    return [hi - lo for lo, hi in zip([0, *cuts], [*cuts, n])]


DOC_CASES = [  # (B, H, Hkv, N, D, causal, document lengths per batch row)
    (2, 4, 2, 300, 128, True, [[1, 130, 169], [64, 64, 172]]),  # a one-token document; edges on and off tiles
    (2, 4, 2, 300, 128, False, [[1, 130, 169], [64, 64, 172]]),
    (1, 8, 1, 1000, 64, True, [[200, 7, 393, 400]]),  # GQA group 8
    (1, 8, 1, 1000, 64, False, [[200, 7, 393, 400]]),
    (2, 6, 6, 777, 128, False, [[777], [100] * 7 + [77]]),  # group 1; a row of one document
    (1, 16, 4, 2048, 128, True, [[1000, 24, 1024]]),
    (1, 4, 2, 129, 64, True, [[128, 1]]),  # the last row its own document, past a CTA's 128
    (2, 4, 2, 1500, 128, True, [random_lengths(1500, 0, 90), random_lengths(1500, 1, 300)]),
]


def doc_id(case) -> str:
    return "x".join(map(str, case[:5])) + ("c" if case[5] else "f") + f"_{sum(map(len, case[6]))}docs"


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("backend", ["cute", "cute_deterministic"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", DOC_CASES, ids=doc_id)
def test_documents_match_float64_and_are_no_worse_than_triton(case, dtype, backend):
    """Packed documents (document_ids): o and the four gradients against float64 with keys of other documents
    invisible; each error at most the Triton kernel's on the same inputs (plus a little) and within its bound."""
    from parallax_titan.ops import parallax_attention

    def cute_fn(*args, causal, scale, document_ids):
        return parallax_attention(*args, causal=causal, scale=scale, backend=backend, document_ids=document_ids)

    b, h, hkv, n, d, causal, lengths = case
    docs = packed(lengths)
    ours = errors_against_float64(cute_fn, b, h, hkv, n, d, dtype, causal, document_ids=docs)
    theirs = errors_against_float64(triton_fn, b, h, hkv, n, d, dtype, causal, document_ids=docs)
    bound = {torch.bfloat16: 1e-2, torch.float16: 5e-3}[dtype]
    assert all(e < bound for e in ours.values()), f"{ours} (bound {bound})"
    assert all(ours[k] <= 1.25 * theirs[k] + 1e-4 for k in ours), f"{backend} {ours} vs triton {theirs}"


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("b, h, hkv, n, d, causal, mean", [
    (2, 8, 4, 1000, 128, True, 150), (2, 8, 4, 1000, 64, False, 150),
    (4, 16, 8, 4096, 128, True, 700),  # 1024 CTAs, more than the GPU holds at once
])
def test_deterministic_backward_with_documents_is_bitwise_reproducible(b, h, hkv, n, d, causal, mean):
    """With documents a query tile's first key tile is its first row's document's: the ordered adds must still
    take their turns (a wrong count of the tiles ahead hangs or reorders them)."""
    from parallax_kernels.parallax.cute_launch import _launch_backward, attention_fwd_cute

    g = torch.Generator().manual_seed(5)
    q, k, v, r, grad = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h, h))
    docs = packed([random_lengths(n, seed, mean) for seed in range(b)]).cuda()
    o, a, lse, tbar = attention_fwd_cute(q, k, v, r, causal, d**-0.5, False, docs)
    runs = [_launch_backward(grad, q, k, v, r, o, a, lse, tbar, causal, d**-0.5, docs, deterministic=True)
            for _ in range(3)]
    unordered = _launch_backward(grad, q, k, v, r, o, a, lse, tbar, causal, d**-0.5, docs)
    for name, first, *again, other in zip(("dq", "dk", "dv", "dr"), *runs, unordered):
        assert torch.isfinite(first).all(), name
        assert all(torch.equal(first, x) for x in again), name
        assert relative_error(first, other.double()) < 1e-2, name  # the same sums, in another order


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("causal", [True, False])
def test_saved_statistics_match_the_triton_forward(causal):
    """The backward reads a, lse (log2 domain) and tbar: they must be the Triton forward's."""
    from parallax_kernels.parallax.cute_launch import attention_fwd_cute
    from parallax_kernels.parallax.triton_fused import attention_fwd

    g = torch.Generator().manual_seed(1)
    b, h, hkv, n, d = 2, 4, 2, 333, 128
    q, k, v, r = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h))
    ours = attention_fwd_cute(q, k, v, r, causal, d**-0.5)
    theirs = attention_fwd(q, k, v, r, causal, d**-0.5, None, False)
    for name, x, y in zip(("o", "a", "lse", "tbar"), ours, theirs):
        assert x.shape == y.shape and x.dtype == y.dtype and x.is_contiguous(), name
        assert relative_error(x, y.double()) < 1e-2, (name, relative_error(x, y.double()))


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("fields", [dict(stages=2), dict(pingpong=False), dict(lazy_rescale=False)],
                         ids=["stages2", "no_turns", "eager_rescale"])
def test_benchmarked_variants_match_the_triton_forward(fields):
    """The default's variants that scripts/bench_attention.py --cute-variants times (s2stov, s3npstov, s3erstov;
    bf16, head_dim 128, causal)."""
    from parallax_kernels.parallax.cute_launch import _launch
    from parallax_kernels.parallax.triton_fused import attention_fwd

    g = torch.Generator().manual_seed(3)
    b, h, hkv, n, d = 2, 4, 2, 700, 128
    q, k, v, r = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h))
    ours = _launch(q, k, v, r, True, d**-0.5, **fields)
    theirs = attention_fwd(q, k, v, r, True, d**-0.5, None, False)
    for name, x, y in zip(("o", "a", "lse", "tbar"), ours, theirs):
        assert relative_error(x, y.double()) < 1e-2, (name, relative_error(x, y.double()))


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("shape", [(2, 4, 2, 700, 128), (1, 16, 8, 16384, 128)])  # one group of heads; three
@pytest.mark.parametrize("stacked", [True, False], ids=["lpt_default", "lpt_unstacked"])
def test_lpt_order_changes_no_value(shape, stacked):
    """The lpt variant runs the same tiles in another order: o, a, lse and tbar bitwise equal to the same kernel's in
    the head-by-head order (at 16384 tokens its heads form groups of 6, 6 and 4)."""
    from parallax_kernels.parallax.cute_launch import _launch

    g = torch.Generator().manual_seed(5)
    b, h, hkv, n, d = shape
    q, k, v, r = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h))
    head_by_head = _launch(q, k, v, r, True, d**-0.5, stacked=stacked)
    longest_first = _launch(q, k, v, r, True, d**-0.5, lpt=True, stacked=stacked)
    for name, x, y in zip(("o", "a", "lse", "tbar"), longest_first, head_by_head):
        assert torch.equal(x, y), name


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("case", [
    (2, 4, 2, 700, 128, True, 0),  # fewer items than SMs: one a CTA
    (4, 16, 8, 1000, 128, True, 0),  # 1,024 items: several a CTA, of different lengths
    (8, 16, 8, 2048, 128, True, 0),  # 4,096 items, about 31 a CTA: the turns and Q, R stages run on across items
    (4, 16, 8, 4096, 64, True, 0),  # three warpgroups: the head_dim-64 default at this length
    (1, 8, 1, 16384, 128, True, 0),  # three groups of heads
    (2, 16, 8, 1000, 64, False, 0),
    (4, 16, 8, 1000, 128, True, 300),  # packed documents
    (2, 16, 4, 1000, 64, False, 300),
], ids=lambda c: "x".join(map(str, c[:5])) + ("c" if c[5] else "f") + ("_docs" if c[6] else ""))
@pytest.mark.parametrize("lpt", [False, True], ids=["head_by_head", "lpt"])
def test_persistent_forward_changes_no_value(case, lpt):
    """The persistent forward runs each work item as the one-CTA-an-item kernel does, several items a CTA one after
    another, in either order: o, a, lse and tbar bitwise equal to the one-CTA-an-item kernel's, and so are those of
    the variant the backends launch for the shape."""
    from parallax_kernels.parallax.cute_launch import _launch

    b, h, hkv, n, d, causal, mean = case
    g = torch.Generator().manual_seed(7)
    q, k, v, r = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h))
    docs = packed([random_lengths(n, seed, mean) for seed in range(b)]).cuda() if mean else None
    one_each = _launch(q, k, v, r, causal, d**-0.5, document_ids=docs, lpt=False, persistent=False)
    persistent = _launch(q, k, v, r, causal, d**-0.5, document_ids=docs, lpt=lpt, persistent=True)
    backends = _launch(q, k, v, r, causal, d**-0.5, document_ids=docs)  # (short causal: persistent, lpt)
    for name, x, y, z in zip(("o", "a", "lse", "tbar"), persistent, one_each, backends):
        assert torch.equal(x, y) and torch.equal(z, y), name


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("case", [
    (1, 2, 1, 37, True, 0),  # one CTA, most of its rows past the end
    (2, 4, 2, 700, True, 0),  # odd length: the last CTA's third warpgroup partly past the end
    (4, 16, 8, 4096, True, 0),
    (2, 16, 8, 1000, False, 0),
    (2, 8, 1, 1000, True, 300),  # packed documents
    (2, 16, 4, 1000, False, 300),
], ids=lambda c: "x".join(map(str, c[:4])) + ("c" if c[4] else "f") + ("_docs" if c[5] else ""))
@pytest.mark.parametrize("persistent", [False, True], ids=["one_each", "persistent"])
def test_three_warpgroup_forward_changes_no_value(case, persistent):
    """Three consumer warpgroups (96 query rows a CTA, the default at head_dim 64) run each query row through the
    same key tiles in the same order as two (64 rows a CTA): o, a, lse and tbar bitwise equal."""
    from parallax_kernels.parallax.cute_launch import _launch

    b, h, hkv, n, causal, mean = case
    g = torch.Generator().manual_seed(11)
    q, k, v, r = (torch.randn(b, x, n, 64, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h))
    docs = packed([random_lengths(n, seed, mean) for seed in range(b)]).cuda() if mean else None
    two = _launch(q, k, v, r, causal, 0.125, document_ids=docs, warpgroups=2)
    three = _launch(q, k, v, r, causal, 0.125, document_ids=docs, warpgroups=3, persistent=persistent)
    for name, x, y in zip(("o", "a", "lse", "tbar"), three, two):
        assert torch.equal(x, y), name


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("shape", [(2, 4, 2, 700, 128), (4, 16, 8, 4096, 128), (1, 8, 1, 1000, 64)])
@pytest.mark.parametrize("deterministic", [False, True], ids=["lpt_backward", "lpt_backward_ordered"])
@pytest.mark.parametrize("groups", ["chosen", "one_head", "two_groups", "one_group"])
def test_lpt_order_changes_no_backward_value(shape, deterministic, groups):
    """The backward's lpt order (the default) runs the same key tiles as the head-by-head order (opt-in) in
    another order: dk, dv bitwise equal (each is one CTA's); dq, dr too with the key-ordered adds, and to fp32
    rounding of the adds' order without them. Groups of KV heads as the launcher chooses them (at 4096 tokens,
    D = 128, group 2: 4 of the 32 KV heads, 32 MiB of inputs), of one KV head, two groups and one group of all."""
    from parallax_kernels.parallax.cute_launch import _launch, _launch_backward

    g = torch.Generator().manual_seed(6)
    b, h, hkv, n, d = shape
    q, k, v, r, grad = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h, h))
    lpt_heads = {"chosen": None, "one_head": 1, "one_group": b * hkv,
                 "two_groups": b * hkv // 2 if b * hkv % 2 == 0 else b * hkv}[groups]
    o, a, lse, tbar = _launch(q, k, v, r, True, d**-0.5)
    head_by_head = _launch_backward(grad, q, k, v, r, o, a, lse, tbar, True, d**-0.5, deterministic=deterministic,
                                    lpt=False)
    longest_first = _launch_backward(grad, q, k, v, r, o, a, lse, tbar, True, d**-0.5, deterministic=deterministic,
                                     lpt_heads=lpt_heads)
    for name, x, y in zip(("dq", "dk", "dv", "dr"), longest_first, head_by_head):
        if deterministic or name in ("dk", "dv"):
            assert torch.equal(x, y), name
        else:
            assert relative_error(x, y.double()) < 1e-2, (name, relative_error(x, y.double()))


# (B, H, Hkv, N, D, causal, document lengths or None): one query tile of one head a CTA (one step: no chain in
# flight before the last), odd lengths, GQA groups 1-8, both head dims, causal and full, 1024 CTAs, and documents
DECOUPLED_CASES = [(1, 2, 2, 20, 128, True, None), (2, 4, 2, 700, 128, True, None), (2, 4, 4, 257, 64, False, None),
                   (1, 8, 1, 1000, 64, True, None), (2, 6, 6, 300, 128, False, None),
                   (4, 16, 8, 4096, 128, True, None), DOC_CASES[0], DOC_CASES[3]]


# the opt-in backward variants that compute what the default does in another schedule or from other storage, each
# the default with one field turned over: decoupled and the other dQ/dR adds (per warpgroup at head_dim 64, per
# warp at 128) at every case, K in registers at head_dim 64 (the only one it is built for)
OPT_IN_BACKWARDS = ([("decoupled", case) for case in DECOUPLED_CASES]
                    + [("k_registers", case) for case in DECOUPLED_CASES if case[4] == 64]
                    + [("warp_adds", case) for case in DECOUPLED_CASES])


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("deterministic", [False, True], ids=["unordered", "ordered"])
@pytest.mark.parametrize("option, case", OPT_IN_BACKWARDS, ids=lambda c: c if isinstance(c, str) else (
    "x".join(map(str, c[:5])) + ("c" if c[5] else "f") + ("" if c[6] is None else "_docs")))
def test_opt_in_backward_changes_no_value(option, case, deterministic):
    """The decoupled backward (BackwardVariant.decoupled) computes every chain the lockstep one does, only issued a
    step later; with K in registers (BackwardVariant.k_registers) the score chain reads the same K values from
    registers rather than shared memory; with the other adds (BackwardVariant.warp_adds: the default's turned
    over) each warpgroup, or each warp, adds the same dQ^T / dR^T tiles. Each way: dk, dv bitwise equal to the
    default backward's; dq, dr too with the key-ordered adds, and to fp32 rounding of the adds' order without
    them."""
    from parallax_kernels.parallax.cute_launch import _launch, _launch_backward

    b, h, hkv, n, d, causal, lengths = case
    g = torch.Generator().manual_seed(8)
    q, k, v, r, grad = (torch.randn(b, x, n, d, generator=g).to(torch.bfloat16).cuda() for x in (h, hkv, hkv, h, h))
    docs = None if lengths is None else packed(lengths).cuda()
    scale = d**-0.5
    o, a, lse, tbar = _launch(q, k, v, r, causal, scale, document_ids=docs)
    args = (grad, q, k, v, r, o, a, lse, tbar, causal, scale)
    lockstep = _launch_backward(*args, document_ids=docs, deterministic=deterministic)
    default = BackwardVariant("bfloat16", d, causal)  # (its option fields depend on the head_dim alone)
    opt_in = _launch_backward(*args, document_ids=docs, deterministic=deterministic,
                              **{option: not getattr(default, option)})
    for name, x, y in zip(("dq", "dk", "dv", "dr"), opt_in, lockstep):
        assert torch.isfinite(x).all(), name
        if deterministic or name in ("dk", "dv"):
            assert torch.equal(x, y), name
        else:
            assert relative_error(x, y.double()) < 1e-3, (name, relative_error(x, y.double()))


# the default's shapes, and documents: edges on and off tiles, GQA group 8, and a warpgroup whose rows all lie past
# the end (129 tokens at head_dim 64: the last CTA's last warpgroup starts at row 160 stacked, three warpgroups of
# 32 rows from row 96, and at row 192 unstacked)
LAYOUT_CASES = ([(*case, None) for case in GPU_CASES]
                + [(*case[:6], packed(case[6])) for case in (*DOC_CASES[:3], DOC_CASES[6])])


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("layout", [dict(stacked=False), dict(overlap=False)], ids=["unstacked", "stacked_only"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: "x".join(map(str, c[:5])) + ("c" if c[5] else "f")
                         + ("" if c[6] is None else "_docs"))
def test_other_forward_layouts_match_float64_and_the_triton_forward(case, dtype, layout):
    """The unstacked forward and the stacked one without the overlap (not the default; scripts/bench_attention.py
    --cute-variants s3 s3st): o against float64, its error within the bound and at most the Triton forward's on
    the same inputs (plus a little); a, lse and tbar, which the backward reads, against the Triton forward."""
    from parallax_kernels.parallax.cute_launch import _launch
    from parallax_kernels.parallax.reference import parallax_attention_reference
    from parallax_kernels.parallax.triton_fused import attention_fwd

    b, h, hkv, n, d, causal, docs = case
    g = torch.Generator().manual_seed(4)
    raw = [torch.randn(b, heads, n, d, generator=g, dtype=torch.float64) for heads in (h, hkv, hkv, h)]
    q, k, v, r = (x.to(dtype).cuda() for x in raw)
    docs = None if docs is None else docs.cuda()
    scale = d**-0.5
    want = parallax_attention_reference(*(x.double() for x in (q, k, v, r)), causal=causal, scale=scale,
                                        document_ids=docs)
    ours = _launch(q, k, v, r, causal, scale, document_ids=docs, **layout)
    triton = attention_fwd(q, k, v, r, causal, scale, docs, False)
    bound = {torch.bfloat16: 1e-2, torch.float16: 5e-3}[dtype]
    mine, theirs = relative_error(ours[0], want), relative_error(triton[0], want)
    assert mine < bound and mine <= 1.25 * theirs + 1e-4, (mine, theirs)
    for name, x, y in zip(("a", "lse", "tbar"), ours[1:], triton[1:]):
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert relative_error(x, y.double()) < 1e-2, (name, relative_error(x, y.double()))


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("documents,transposed", [(False, False), (True, False), (False, True)])
def test_under_torch_compile(documents, transposed):
    """Compiled and eager agree, also on (B, N, H, D) tensors seen as (B, H, N, D), as the model hands them."""
    g = torch.Generator().manual_seed(2)
    shape = (1, 200, 4, 64) if transposed else (1, 4, 200, 64)
    leaves = [torch.randn(shape, generator=g).to(torch.bfloat16).cuda().requires_grad_() for _ in range(4)]
    q, k, v, r = (x.transpose(1, 2) for x in leaves) if transposed else leaves
    docs = packed([[50, 150]]).cuda() if documents else None

    def attend(q, k, v, r):
        out = parallax_attention_cute(q, k, v, r, causal=True, scale=0.125, document_ids=docs)
        return out.transpose(1, 2) if transposed else out  # the gradient comes back transposed, as in the model

    eager = attend(q, k, v, r)
    eager_grads = torch.autograd.grad(eager.float().square().sum(), leaves)
    compiled = torch.compile(attend, fullgraph=True)(q, k, v, r)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    grads = torch.autograd.grad(compiled.float().square().sum(), leaves)
    for grad, expected in zip(grads, eager_grads):  # dq, dr add their shares in any order: not bitwise
        torch.testing.assert_close(grad, expected, rtol=2e-2, atol=2e-2)


def test_op_sac_saves_the_hopper_forward():
    """Op-level selective AC saves what is on qwen3's save list and recomputes the rest: the Hopper forward must be
    on it, like the Triton forward, or the backward would run it again."""
    from torchtitan.models.qwen3.infra.parallelize import _op_sac_save_list

    import parallax_titan.register  # noqa: F401  (adds the fused forwards to qwen3's save list)

    assert torch.ops.parallax.attention_fwd_cute.default in _op_sac_save_list
    assert torch.ops.parallax.attention_fwd.default in _op_sac_save_list


def test_unavailable_reason_traces_under_torch_compile(monkeypatch):
    """torch.compile traces parallax_attention's backend check: the artefact lookup (file system, package
    metadata) must stay out of the trace, where dynamo cannot follow it; the launch checks artefacts itself."""
    import parallax_kernels.parallax.cute_launch as launch

    def untraceable():
        raise AssertionError("the artefact lookup ran while compiling")

    monkeypatch.setattr(launch.rt, "sm90_reason", lambda x, what: None)  # as on a Hopper GPU
    monkeypatch.setattr(launch.rt, "dsl_installed", untraceable)
    x = torch.zeros(1, 2, 8, 128, dtype=torch.bfloat16)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert launch.unavailable_reason(x) is None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    with pytest.raises(AssertionError, match="artefact lookup ran"):
        launch.unavailable_reason(x)


def test_bench_launch_names_its_peers_and_needs_a_gpu():
    """scripts/bench_launch.py times the functions a compiled model calls; an unknown peer is named, and without a
    GPU it says so instead of timing nothing."""
    from scripts import bench_launch

    assert set(bench_launch.peers(["parallax-cute", "parallax-triton", "sdpa-cudnn"])) == {
        "parallax-cute", "parallax-triton", "sdpa-cudnn"}
    with pytest.raises(SystemExit, match="unknown peer 'flash'"):
        bench_launch.peers(["flash"])
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, "scripts/bench_launch.py"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0 and "needs a CUDA GPU" in proc.stderr
