"""The CuTe DSL decode kernel: its build (on this CPU machine: the DSL compiles for sm_90a without a
GPU), its artefacts and launcher's checks, and on a Hopper GPU its output against float64."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from parallax_kernels.parallax_decode.cute_variant import DecodeVariant
from parallax_kernels.parallax_decode.cute_launch import DECODE_PARAMS, dsl_installed, load_decode_kernel, read_artefact, source_hash
from parallax_titan.ops import parallax_decode

REPO = Path(__file__).resolve().parents[1]
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_dsl = pytest.mark.skipif(not dsl_installed(), reason="nvidia-cutlass-dsl is not installed")
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (sm_90)")


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "float32", "dtype float32 is not supported"),
    ("head_dim", 96, "head_dim 96 is not supported"),
    ("group", 16, "16 query heads per KV head; at most 8"),
    ("block_n", 48, "block_n 48"),
])
def test_unsupported_variants_are_named(field, value, message):
    good = dict(dtype="bfloat16", head_dim=128, group=2, block_n=32)
    with pytest.raises(ValueError, match=message):
        DecodeVariant(**{**good, field: value}).check()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """scripts/build_kernels.py run in a fresh process, as on an offline build machine (no GPU)."""
    if not dsl_installed():
        pytest.skip("nvidia-cutlass-dsl is not installed")
    out = tmp_path_factory.mktemp("kernels")
    env = {k: v for k, v in os.environ.items() if k != "CUTE_DSL_ARCH"}
    proc = subprocess.run([sys.executable, "scripts/build_kernels.py", "--out", str(out), "--dtype", "bfloat16",
                           "--head-dim", "64", "--group", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@needs_dsl
def test_build_kernels_writes_an_sm90a_cubin_with_the_launchers_parameter_list(built):
    variant = DecodeVariant("bfloat16", 64, 2)
    meta, cubin = read_artefact(built, variant)
    assert cubin[:4] == b"\x7fELF"
    assert meta["arch"] == "sm_90a" and meta["params"] == DECODE_PARAMS
    assert meta["variant"] == asdict(variant) and meta["kernel"].startswith("kernel_")
    assert meta["smem_bytes"] == variant.smem_bytes and meta["block"] == [128, 1, 1]
    assert meta["source"] == source_hash()
    assert meta["kernel"].encode() in cubin  # the symbol the launcher looks up is in the cubin


def compiled_ptx(variant: str) -> str:
    """PTX of one variant (given as Python source), compiled for sm_90a in a fresh process."""
    code = ("import os; os.environ['CUTE_DSL_ARCH'] = 'sm_90a'\n"
            "from parallax_kernels.parallax_decode.cute_kernel import compile_variant\n"
            "from parallax_kernels.parallax_decode.cute_variant import DecodeVariant\n"
            f"print(compile_variant({variant})[1])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@needs_dsl
def test_compiled_kernel_has_the_designed_structure():
    """PTX of one variant, compiled in a fresh process: tensor-core MMAs for both products, ldmatrix
    and cp.async tiles, the ticket and its reset, and no register spills."""
    ptx = compiled_ptx("DecodeVariant('bfloat16', 128, 2)")
    assert ".target sm_90a" in ptx
    # S = [Q;R] K^T: 4 n8 tiles x 8 k16 steps; O = [P1;P2] V: 16 n8 tiles x 2 k16 steps
    assert ptx.count("mma.sync.aligned.m16n8k16") == 32 + 32
    assert "ldmatrix.sync.aligned.m8n8.x4.trans" in ptx and "cp.async.cg.shared.global" in ptx
    assert "atom.global.acq_rel.add" in ptx and "atom.global.exch" in ptx
    assert ".local" not in ptx


@needs_dsl
def test_cluster_merge_kernel_merges_through_distributed_shared_memory():
    """PTX of a cluster-merge variant: two cluster barriers, each CTA's state read from the others'
    shared memory (mapa + ld.shared::cluster, 5 values from each of 4 CTAs per element a thread merges),
    no ticket atomics, no spills."""
    ptx = compiled_ptx("DecodeVariant('bfloat16', 128, 2, 64, cluster=4)")
    assert ptx.count("barrier.cluster.arrive") == 2 and ptx.count("barrier.cluster.wait") == 2
    assert ptx.count("ld.shared::cluster") == 5 * 4 and "mapa.shared::cluster" in ptx
    assert "atom.global" not in ptx and ".local" not in ptx


@needs_dsl
def test_persistent_kernel_walks_work_items_in_a_grid_stride_loop():
    """PTX of a persistent variant: the work item comes from a loop over blockIdx.x + k gridDim.x (the
    only read of nctaid), with the same MMAs, the ticket and its reset, and no spills; the default
    variant reads no nctaid at all."""
    ptx = compiled_ptx("DecodeVariant('bfloat16', 128, 2, persistent=True)")
    assert ptx.count("%nctaid.x") == 1 and "%ctaid.y" not in ptx and "%ctaid.z" not in ptx
    assert ptx.count("mma.sync.aligned.m16n8k16") == 32 + 32
    assert "atom.global.acq_rel.add" in ptx and "atom.global.exch" in ptx and ".local" not in ptx
    assert "%nctaid" not in compiled_ptx("DecodeVariant('bfloat16', 128, 2)")


def test_persistent_variants_are_named_checked_and_sized_to_one_wave():
    from parallax_kernels.parallax_decode.cute_launch import parallax_decode_cute, persistent_grid

    plain = DecodeVariant("bfloat16", 128, 2, 32)
    assert DecodeVariant("bfloat16", 128, 2, 32, persistent=True).name == plain.name + "_p"
    with pytest.raises(ValueError, match="persistent grid merges its splits with the ticket"):
        DecodeVariant("bfloat16", 128, 2, 32, cluster=4, persistent=True).check()
    assert persistent_grid(8192, 132, 2) == 264  # one wave: every SM full
    assert persistent_grid(40, 132, 2) == 40  # fewer items than slots: one CTA each
    with pytest.raises(RuntimeError, match="no CTA of the persistent kernel fits"):
        persistent_grid(10, 132, 0)
    q = torch.randn(1, 2, 128, dtype=torch.bfloat16)
    k = torch.randn(1, 1, 64, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="persistent=True merges splits with the ticket"):
        parallax_decode_cute(q, k, k, q, torch.tensor([64]), scale=0.1, num_splits=4, block_n=32,
                             cluster_merge=True, persistent=True)


def test_artefact_mismatches_are_clear_errors(tmp_path):
    variant = DecodeVariant("bfloat16", 128, 2)
    meta = {"variant": asdict(variant), "kernel": "k", "params": DECODE_PARAMS, "block": [128, 1, 1],
            "smem_bytes": variant.smem_bytes, "arch": "sm_90a", "source": source_hash()}
    path = tmp_path / f"{variant.name}.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="has no cubin beside it"):
        read_artefact(tmp_path, variant)
    (tmp_path / f"{variant.name}.cubin").write_bytes(b"\x7fELF")
    path.write_text(json.dumps({**meta, "params": DECODE_PARAMS[:-1]}))
    with pytest.raises(ValueError, match="differ from this launcher's.*rebuild it with scripts/build_kernels.py"):
        read_artefact(tmp_path, variant)
    path.write_text(json.dumps({**meta, "variant": {**asdict(variant), "group": 4}}))
    with pytest.raises(ValueError, match="describes"):
        read_artefact(tmp_path, variant)
    path.write_text(json.dumps({**meta, "source": "0" * 16}))
    with pytest.raises(ValueError, match="another version of kernels/parallax_kernels/parallax_decode/cute_kernel.py"):
        read_artefact(tmp_path, variant)
    path.write_text(json.dumps(meta))
    assert read_artefact(tmp_path, variant) == (meta, b"\x7fELF")
    assert read_artefact(tmp_path / "empty", variant) is None


def test_missing_kernel_without_the_dsl_names_the_build_command(tmp_path, monkeypatch):
    import parallax_kernels.parallax_decode.cute_launch as launch

    monkeypatch.setattr(launch.rt, "dsl_installed", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(RuntimeError, match="scripts/build_kernels.py --out"):
        load_decode_kernel(DecodeVariant("bfloat16", 128, 2), tmp_path)


def test_cute_backend_off_hopper_is_an_error_not_a_fallback():
    q = torch.randn(2, 4, 64)
    k = torch.randn(2, 2, 16, 64)
    if HOPPER:
        pytest.skip("this machine has a Hopper GPU")
    with pytest.raises(RuntimeError, match="backend 'cute' is unavailable: .*Hopper"):
        parallax_decode(q, k, k.clone(), q.clone(), cache_seqlens=torch.tensor([16, 3]), backend="cute")


# --- on a Hopper GPU --------------------------------------------------------------------------

def decode_case(case, dtype):
    """Random inputs on the GPU for a (B, H, Hkv, L_max, D, lengths, splits) case, and the float64 result."""
    from parallax_kernels.parallax_decode.torch_split import parallax_decode_reference

    b, h, hkv, l_max, d, lengths, _ = case
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(b, h, d, generator=g), torch.randn(b, h, d, generator=g) * 0.3
    k, v = torch.randn(b, hkv, l_max, d, generator=g), torch.randn(b, hkv, l_max, d, generator=g)
    q, r, k, v = (t.cuda().to(dtype) for t in (q, r, k, v))
    lengths = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    expected = parallax_decode_reference(q.double(), k.double(), v.double(), r.double(), lengths, scale=d**-0.5)
    return q, k, v, r, lengths, expected


CASES = [  # (B, H, Hkv, L_max, D, lengths, splits)
    (2, 4, 2, 100, 128, [100, 37], 1),
    (3, 16, 8, 130, 128, [1, 130, 64], 3),
    (2, 8, 1, 200, 64, [199, 5], 8),  # 8 query heads per KV head: every row of the tile used
    (1, 2, 1, 300, 128, [300], 16),  # more splits than key tiles: empty splits and idle warps
    (2, 4, 2, 2000, 64, [2000, 1333], 32),
    (2, 16, 8, 6000, 128, [6000, 4097], 128),  # the most splits the launcher takes (cute_launch.MAX_SPLITS)
    (4, 4, 4, 4099, 128, [4099, 17, 2048, 3001], None),  # the default split count
    (40, 16, 8, 700, 128, [700] * 39 + [3], None),  # a batch that fills the SMs: no split by default
]


def relative_error(out, expected, q) -> float:
    """Max error against the float64 result, relative to its largest value; the output must keep the
    query's dtype and shape."""
    assert out.dtype == q.dtype and out.shape == q.shape
    return float((out.double() - expected).abs().max() / expected.abs().max())


def cute_error(case, dtype, **launch) -> float:
    """relative_error of the CuTe kernel on a case, launched with explicit options (the case's split
    count, and `launch`: block_n, cluster_merge, persistent)."""
    from parallax_kernels.parallax_decode.cute_launch import parallax_decode_cute

    q, k, v, r, lengths, expected = decode_case(case, dtype)
    out = parallax_decode_cute(q, k, v, r, lengths, scale=q.shape[-1] ** -0.5, num_splits=case[6], **launch)
    return relative_error(out, expected, q)


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}H{c[1]}kv{c[2]}L{c[3]}D{c[4]}s{c[6]}")
@pytest.mark.parametrize("block_n", [None, 32, 64])  # None: the launcher's default grid
def test_cute_decode_matches_float64(case, dtype, block_n):
    if block_n is None:  # the default grid, through the public op
        q, k, v, r, lengths, expected = decode_case(case, dtype)
        out = parallax_decode(q, k, v, r, cache_seqlens=lengths, backend="cute", num_splits=case[6])
        assert relative_error(out, expected, q) < 1.5e-2
    else:  # each tile explicitly, whichever the default grid would pick, with the ticket merge (clusters: below)
        assert cute_error(case, dtype, block_n=block_n, cluster_merge=False) < 1.5e-2


@needs_hopper
def test_cute_ticket_counter_is_reset_for_the_next_launch():
    from parallax_kernels.parallax_decode.torch_split import TICKET_COUNTERS as _COUNTERS
    from parallax_kernels.parallax_decode.torch_split import parallax_decode_reference

    def inputs(seed):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(*s, generator=g).cuda().bfloat16() for s in ((2, 4, 128), (2, 2, 512, 128),
                                                                          (2, 2, 512, 128), (2, 4, 128))]

    lengths = torch.tensor([512, 300], dtype=torch.int32, device="cuda")
    first = parallax_decode(*inputs(0), cache_seqlens=lengths, backend="cute", num_splits=7)
    assert all(int(c.abs().sum()) == 0 for c in _COUNTERS.values())
    q, k, v, r = inputs(1)
    second = parallax_decode(q, k, v, r, cache_seqlens=lengths, backend="cute", num_splits=7)
    expected = parallax_decode_reference(q.double(), k.double(), v.double(), r.double(), lengths, scale=128**-0.5)
    assert relative_error(second, expected, q) < 1.5e-2
    assert not torch.allclose(first, second)


@needs_hopper
def test_cute_decode_in_a_cache_with_other_strides_and_a_zero_probe():
    """A (B, L, Hkv, D) cache viewed as (B, Hkv, L, D), and r = 0: softmax decode exactly."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(3, 8, 128, generator=g).cuda().bfloat16()
    k = torch.randn(3, 96, 4, 128, generator=g).cuda().bfloat16().transpose(1, 2)
    v = torch.randn(3, 96, 4, 128, generator=g).cuda().bfloat16().transpose(1, 2)
    lengths = torch.tensor([96, 40, 1], dtype=torch.int32, device="cuda")
    out = parallax_decode(q, k, v, torch.zeros_like(q), cache_seqlens=lengths, backend="cute", num_splits=2)
    mask = torch.arange(96, device="cuda")[None, :] < lengths[:, None]
    softmax = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None].double(), k.double(), v.double(), attn_mask=mask[:, None, None], enable_gqa=True)[:, :, 0]
    assert float((out.double() - softmax).abs().max()) < 2e-2


def test_launch_parameters_are_packed_as_typed_values_behind_pointers():
    import ctypes

    from parallax_kernels.parallax_decode.cute_launch import ParamPacker

    args = [0xDEADBEEF00, 7, 2**40 + 8, 0.25]
    packer = ParamPacker(["u64", "u32", "u64", "f32"])  # holds the values' buffer while the pointers are read
    pointers = packer.pack(args)
    read = [ctypes.cast(pointers[i], ctypes.POINTER(t)).contents.value
            for i, t in enumerate((ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_float))]
    assert read == args
    with pytest.raises(ValueError, match="takes 4 parameters; got 3"):
        packer.pack(args[:3])


def test_a_hopper_host_without_kernels_or_the_dsl_is_told_how_to_get_them(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import parallax_kernels.parallax_decode.cute_launch as launch

    fake_q = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16, shape=(1, 16, 128))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(launch, "dsl_installed", lambda: False)
    monkeypatch.setenv("PARALLAX_KERNEL_DIR", str(tmp_path))
    assert "scripts/build_kernels.py --out DIR" in launch.unavailable_reason(fake_q)
    (tmp_path / "parallax_decode_bfloat16_d128_g2_n32.cubin").write_bytes(b"\x7fELF")
    assert launch.unavailable_reason(fake_q) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "this GPU is sm_80" in launch.unavailable_reason(fake_q)


def test_cluster_merge_variants_are_named_and_checked():
    ticket = DecodeVariant("bfloat16", 128, 2, 64)
    cluster = DecodeVariant("bfloat16", 128, 2, 64, cluster=4)
    assert cluster.name == ticket.name + "_c4" and cluster.smem_bytes > ticket.smem_bytes
    for bad in (1, 17):
        with pytest.raises(ValueError, match=f"cluster {bad} is not 0"):
            DecodeVariant("bfloat16", 128, 2, 64, cluster=bad).check()


def test_cluster_launch_config_has_the_driver_struct_layout():
    """cuLaunchKernelEx reads these structs from memory (cuda.h: CUlaunchAttribute is the id padded to 8
    bytes and a 64-byte value union; CUlaunchConfig is 7 uints, the stream, the attribute array and its
    count), so a wrong field order or size would launch wrong clusters or fault."""
    import ctypes

    from parallax_kernels.parallax_decode.cute_launch import (CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, _LaunchAttribute,
                                              _LaunchConfig, cluster_launch_config)

    assert ctypes.sizeof(_LaunchAttribute) == 72 and _LaunchAttribute.value.offset == 8
    assert ctypes.sizeof(_LaunchConfig) == 56
    assert (_LaunchConfig.stream.offset, _LaunchConfig.attrs.offset, _LaunchConfig.num_attrs.offset) == (32, 40, 48)
    config, attr = cluster_launch_config((4, 8, 2), (128, 1, 1), 1000, 1234, 4)
    assert list(config.grid) == [4, 8, 2] and list(config.block) == [128, 1, 1] and config.shared_mem_bytes == 1000
    assert config.stream == 1234 and config.num_attrs == 1
    assert config.attrs[0].id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION == 4
    assert list(config.attrs[0].value.cluster_dim) == [4, 1, 1]


@pytest.mark.parametrize("splits", [1, 17])
def test_cluster_merge_needs_2_to_16_splits(splits):
    from parallax_kernels.parallax_decode.cute_launch import parallax_decode_cute

    q = torch.randn(1, 2, 128, dtype=torch.bfloat16)
    k = torch.randn(1, 1, 64, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"cluster_merge needs 2..16 splits.*num_splits is {splits}"):
        parallax_decode_cute(q, k, k, q, torch.tensor([64]), scale=0.1, num_splits=splits, block_n=32,
                             cluster_merge=True)


def test_default_grid_splits_only_batches_that_leave_sms_idle():
    from parallax_kernels.parallax_decode.cute_launch import MAX_SPLITS, default_grid

    assert default_grid(64, 8, 32768, 132) == (32, 1)  # 512 (batch, kv head) pairs fill 132 SMs
    assert default_grid(8, 8, 32768, 132) == (64, 2)  # long caches of a split batch: 64-key tiles
    assert default_grid(1, 8, 32768, 132) == (64, 16)  # about one CTA per SM
    assert default_grid(1, 8, 1024, 132) == (64, 4)  # splits keep one 64-key tile per warp (4 warps)
    assert default_grid(1, 8, 700, 132) == (32, 6)  # a short cache: 32-key tiles, 128 keys a split
    assert default_grid(1, 8, 700, 132, block_n=64) == (64, 3)  # a given tile is kept, the splits follow it
    assert default_grid(1, 1, 10**7, 10**4) == (64, MAX_SPLITS)


def test_default_merge_is_a_cluster_for_one_wave_of_2_4_or_8_splits():
    from parallax_kernels.parallax_decode.cute_launch import default_cluster_merge

    assert default_cluster_merge(1, 8, 4, 132)  # B = 1, L = 1K: 32 CTAs
    assert default_cluster_merge(8, 8, 2, 132)  # B = 8: 128 CTAs, one wave
    assert not default_cluster_merge(8, 8, 4, 132)  # 256 CTAs: two waves of clusters were slower
    assert not default_cluster_merge(1, 8, 16, 132)  # a non-portable cluster was slower than the ticket
    assert not default_cluster_merge(1, 8, 6, 132)  # not a size the default build compiles
    assert not default_cluster_merge(1, 8, 1, 132)  # nothing to merge


PERSISTENT_CASES = CASES + [  # more work items than one wave of CTAs holds, split and not
    (64, 16, 8, 300, 128, [300, 1, 257] * 21 + [64], 3),
    (300, 8, 8, 96, 64, list(range(1, 97)) * 3 + [96] * 12, 1),
]


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", PERSISTENT_CASES, ids=lambda c: f"B{c[0]}H{c[1]}kv{c[2]}L{c[3]}D{c[4]}s{c[6]}")
@pytest.mark.parametrize("block_n", [32, 64])
def test_cute_persistent_grid_matches_float64(case, dtype, block_n):
    """One wave of CTAs walking the (split, kv head, batch) items, ticket merge, against float64; the
    counters are back at zero afterwards."""
    from parallax_kernels.parallax_decode.torch_split import TICKET_COUNTERS

    assert cute_error(case, dtype, block_n=block_n, persistent=True) < 1.5e-2
    assert all(int(c.abs().sum()) == 0 for c in TICKET_COUNTERS.values())


# --- the cluster merge (last: a fault there would poison the CUDA context for the tests after it) ---

CLUSTER_CASES = [  # (B, H, Hkv, L_max, D, lengths, splits = cluster size)
    (2, 4, 2, 100, 128, [100, 37], 2),
    (3, 16, 8, 130, 128, [1, 130, 64], 3),
    (2, 8, 1, 200, 64, [199, 5], 4),  # 8 query heads per KV head
    (1, 2, 1, 300, 128, [300], 8),  # more splits than key tiles: empty splits
    (2, 16, 8, 6000, 128, [6000, 4097], 8),
    (1, 16, 8, 8192, 128, [8192], 16),  # a non-portable cluster (above 8 CTAs)
]


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CLUSTER_CASES, ids=lambda c: f"B{c[0]}H{c[1]}kv{c[2]}L{c[3]}D{c[4]}c{c[6]}")
@pytest.mark.parametrize("block_n", [32, 64])
def test_cute_cluster_merge_matches_float64(case, dtype, block_n):
    """The splits of a (batch, kv head) as one cluster, merged through distributed shared memory."""
    assert cute_error(case, dtype, block_n=block_n, cluster_merge=True) < 1.5e-2
