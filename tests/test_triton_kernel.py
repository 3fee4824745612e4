"""The fused Triton kernel (backend="triton") against the float64 definition.

Without a GPU these run in Triton's CPU interpreter at tiny sizes (conftest sets TRITON_INTERPRET=1);
on a GPU the same tests run on CUDA, plus the full-size ones marked `gpu`.
"""

import os

import pytest
import torch

from conftest import random_qkvr
from parallax_kernels.parallax.reference import parallax_attention_reference
from parallax_titan.ops import parallax_attention

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and not in Triton's interpreter", allow_module_level=True)

# relative error bounds against float64 on the same (rounded) inputs
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-5}


def relative_error(got, want):
    return float((got.double() - want).norm() / want.norm())


def check_against_float64(rng, b, h, hkv, n, d, dtype, causal, with_docs, backend="triton"):
    q, k, v, r = random_qkvr(rng, b, h, hkv, n, d, requires_grad=False)
    docs = torch.cumsum(torch.rand(b, n, generator=rng) < 0.08, dim=1) if with_docs else None
    inputs = [x.to(dtype).to(DEVICE).requires_grad_() for x in (q, k, v, r)]
    docs_dev = docs.to(DEVICE) if docs is not None else None
    out = parallax_attention(*inputs, causal=causal, backend=backend, document_ids=docs_dev)
    grad = torch.randn(out.shape, generator=rng, dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs, grad.to(dtype).to(DEVICE))

    # float64 reference on the same device (fast on a GPU) from the same rounded inputs
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    ref = parallax_attention_reference(*ref_inputs, causal=causal, document_ids=docs_dev)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad.to(dtype).double().to(DEVICE))
    tol = TOLERANCE[dtype]
    errors = {"o": relative_error(out.detach(), ref)}
    errors.update({f"d{n}": relative_error(g, w) for n, g, w in zip("qkvr", grads, ref_grads)})
    assert all(e < tol for e in errors.values()), f"{backend}, {dtype}: {errors} (bound {tol})"
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 2, 2, 37, 16),  # odd length, MHA
        (2, 4, 2, 45, 32),  # GQA 2, odd length, batch
        (1, 4, 1, 33, 64),  # MQA, head_dim 64
    ],
)
def test_kernel_matches_float64(rng, shape, dtype, causal):
    check_against_float64(rng, *shape, dtype, causal, with_docs=False)


@pytest.mark.interpret
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_document_masking(rng, dtype, causal):
    check_against_float64(rng, 2, 4, 2, 70, 32, dtype, causal, with_docs=True)


@pytest.mark.interpret
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,docs", [((2, 4, 2, 45, 32), False), ((1, 4, 1, 33, 64), False), ((2, 4, 2, 70, 32), True),
                                        ((1, 2, 2, 19, 8), False)])
def test_atomic_backward_matches_float64(rng, shape, docs, dtype, causal):
    """backend="triton_atomic": dQ, dR added by every key tile (several per query tile here, GQA, MQA,
    documents, a padded head of 8) into fp32 buffers with atomics."""
    check_against_float64(rng, *shape, dtype, causal, with_docs=docs, backend="triton_atomic")


@pytest.mark.interpret
@pytest.mark.skipif(ON_GPU, reason="the interpreter's tile sizes; a GPU autotunes its own")
@pytest.mark.parametrize("backend", ["triton", "triton_atomic"])
@pytest.mark.parametrize("docs", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("blocks", [(16, 32), (32, 16)])
def test_kernel_with_unequal_query_and_key_tiles(rng, monkeypatch, blocks, causal, docs, backend):
    """The GPU autotunes tiles with BLOCK_M != BLOCK_N: where each kernel's unmasked tiles end (the
    diagonal, the sequence's end) must hold for those too, not only for the interpreter's 16 x 16."""
    import triton

    import parallax_kernels.parallax.triton_fused as tp

    config = triton.Config({"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]}, num_warps=4, num_stages=1)
    for kernel in (tp._fwd_kernel, tp._bwd_dkdv_kernel, tp._bwd_fused_kernel, tp._bwd_dqdr_kernel):
        monkeypatch.setattr(kernel, "configs", [config])
    check_against_float64(rng, 2, 4, 2, 75, 16, torch.float32, causal, with_docs=docs, backend=backend)


@pytest.mark.interpret
@pytest.mark.parametrize("causal", [True, False])
def test_kernel_head_dim_8_is_padded_exactly(rng, causal):
    """MAD's heads of 8 run through the kernel zero-padded to 16: values and gradients of the 8 columns."""
    check_against_float64(rng, 2, 4, 2, 23, 8, torch.float32, causal, with_docs=False)
    check_against_float64(rng, 1, 2, 2, 19, 8, torch.bfloat16, causal, with_docs=False)


@pytest.mark.interpret
def test_kernel_head_dim_128(rng):
    check_against_float64(rng, 1, 2, 1, 20, 128, torch.bfloat16, True, with_docs=False)


@pytest.mark.interpret
def test_kernel_matches_torch_backend_in_the_model_layout(rng):
    """q and r as strided views of one (B, N, 2H, D) projection, as the model passes them."""
    b, n, h, hkv, d = 2, 29, 4, 2, 32
    qr = torch.randn(b, n, 2 * h, d, generator=rng).to(DEVICE)
    q, r = qr[:, :, :h].transpose(1, 2), qr[:, :, h:].transpose(1, 2)
    k = torch.randn(b, n, hkv, d, generator=rng).to(DEVICE).transpose(1, 2)
    v = torch.randn(b, n, hkv, d, generator=rng).to(DEVICE).transpose(1, 2)
    fused = parallax_attention(q, k, v, r, backend="triton")
    plain = parallax_attention(q, k, v, r, backend="torch")
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["triton", "triton_atomic"])
def test_kernel_under_torch_compile(rng, backend):
    """A custom op with a fake implementation: inductor compiles it with fullgraph, forward and
    backward, on strided inputs as the model passes them (inductor checks the fake's strides)."""
    b, n, h, hkv, d = 1, 24, 2, 1, 16
    qr = torch.randn(b, n, 2 * h, d, generator=rng).to(DEVICE).requires_grad_()
    kv = torch.randn(b, n, 2 * hkv, d, generator=rng).to(DEVICE).requires_grad_()

    def f(qr, kv):
        q, r = qr[:, :, :h].transpose(1, 2), qr[:, :, h:].transpose(1, 2)
        k, v = kv[:, :, :hkv].transpose(1, 2), kv[:, :, hkv:].transpose(1, 2)
        return (parallax_attention(q, k, v, r, backend=backend) * 1.5).square().sum()

    compiled = torch.compile(f, backend="inductor", fullgraph=True)
    loss = compiled(qr, kv)
    grads = torch.autograd.grad(loss, (qr, kv))
    eager_loss = f(qr, kv)
    eager_grads = torch.autograd.grad(eager_loss, (qr, kv))
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


def test_unavailable_head_dim_is_an_error_not_a_fallback():
    x = torch.zeros(1, 2, 8, 48, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"backend 'triton' is unavailable: head_dim 48 is not supported"):
        parallax_attention(x, x, x, x, backend="triton")


@pytest.mark.skipif(ON_GPU, reason="CPU-only check")
@pytest.mark.parametrize("backend", ["triton", "triton_atomic"])
def test_cpu_tensors_without_interpreter_are_refused(monkeypatch, backend):
    import parallax_kernels.parallax.triton_fused as tp

    monkeypatch.setattr(tp, "INTERPRET", False)
    x = torch.zeros(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match=rf"backend '{backend}' is unavailable: .*the Triton kernel needs CUDA"):
        parallax_attention(x, x, x, x, backend=backend)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape,causal,docs",
    [
        ((2, 16, 8, 1000, 128), True, False),
        ((1, 16, 8, 2047, 128), False, False),
        ((2, 8, 2, 1531, 64), True, True),
        ((1, 16, 8, 4096, 64), True, False),
    ],
)
@pytest.mark.parametrize("backend", ["triton", "triton_atomic"])
def test_kernel_full_size_on_gpu(rng, shape, dtype, causal, docs, backend):
    """Full size. With PARALLAX_TRITON_AUTOTUNE=1 (scripts/offline_gpu/attention_check.sh sets it; conftest's
    default is 0) autotuning runs too, and for triton_atomic its trials must leave no atomics in dQ, dR."""
    check_against_float64(rng, *shape, dtype, causal, with_docs=docs, backend=backend)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_agrees_with_fla_naive_parallax(rng, backend):
    """Cross-check against flash-linear-attention's naive Parallax (fla-core, a dev dependency)."""
    naive = pytest.importorskip("fla.ops.parallax").naive_parallax
    b, h, hkv, n, d = 2, 4, 2, 40, 32
    q, k, v, r = (x.float().to(DEVICE) for x in random_qkvr(rng, b, h, hkv, n, d, requires_grad=False))
    ours = parallax_attention(q, k, v, r, backend=backend).transpose(1, 2)
    theirs = naive(*(x.transpose(1, 2) for x in (q, r, k, v)))  # fla: (B, T, H, D), (q, r, k, v)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-4)


@pytest.mark.interpret
def test_fused_row_dot_products_match_torch(rng):
    from parallax_kernels.parallax.triton_fused import row_dot_products

    do, o, a = (torch.randn(2, 3, 37, 32, generator=rng).to(DEVICE) for _ in range(3))
    fused, plain = row_dot_products(do, o, a), row_dot_products(do, o, a, fused=False)
    for f, p in zip(fused, plain):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)


def fused_forward_calls_in_op_sac_step(rng, save_list):
    """Forward + backward of one attention under torchtitan's op-level SAC; how often the fused forward ran."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torchtitan.config import ActivationCheckpoint
    from torchtitan.distributed.activation_checkpoint import _apply_op_sac

    class Attention(torch.nn.Module):
        def forward(self, q, k, v, r):
            return parallax_attention(q, k, v, r, causal=True, backend="triton")

    class CountFused(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountFused.calls += func == torch.ops.parallax.attention_fwd.default
            return func(*args, **(kwargs or {}))

    ac = ActivationCheckpoint(mode="selective", selective_ac_option="op")
    module = _apply_op_sac(Attention(), ac, op_sac_save_list=save_list)
    inputs = [x.float().to(DEVICE).requires_grad_() for x in random_qkvr(rng, 1, 2, 2, 33, 16, requires_grad=False)]
    with CountFused():
        module(*inputs).sum().backward()
    return CountFused.calls


def test_op_sac_saves_the_fused_forward_instead_of_recomputing_it(rng):
    from torchtitan.models.qwen3.infra.parallelize import _op_sac_save_list

    import parallax_titan.register  # noqa: F401  (adds the fused forward to qwen3's save list)

    assert fused_forward_calls_in_op_sac_step(rng, _op_sac_save_list) == 1
    without = _op_sac_save_list - {torch.ops.parallax.attention_fwd.default}
    assert fused_forward_calls_in_op_sac_step(rng, without) == 2  # recomputed in the backward


@pytest.mark.interpret
def test_bench_reference_kernel_loads_beside_this_one(rng, tmp_path):
    """scripts/bench_attention.py --reference-kernel: a copy of the kernel file (there, an earlier
    commit's) registers beside this one under renamed ops and computes the same; other files are refused."""
    from pathlib import Path

    import parallax_kernels.parallax.triton_fused as tp
    import parallax_titan.ops as ops
    import scripts.bench_attention as bench

    reference = bench.load_reference_kernel(tp.__file__)
    q, k, v, r = (x.float().to(DEVICE) for x in random_qkvr(rng, 1, 4, 2, 40, 32, requires_grad=False))
    ours = parallax_attention(q, k, v, r, backend="triton")
    theirs = reference.parallax_attention_triton(q, k, v, r, causal=True, scale=32**-0.5)
    assert torch.equal(ours, theirs)
    not_a_kernel = tmp_path / "other.py"  # the wrong file: the module that calls the kernel
    not_a_kernel.write_text(Path(ops.__file__).read_text())
    with pytest.raises(ValueError, match=r"--reference-kernel .*other.py: not a kernels/parallax_kernels/parallax/triton_fused.py"):
        bench.load_reference_kernel(str(not_a_kernel))


def test_the_gpu_check_script_refuses_a_reference_kernel_that_is_not_there(tmp_path):
    """scripts/offline_gpu/attention_check.sh REFERENCE=FILE: a file that did not travel to the GPU host must stop
    the call before its tests and benchmark run, not give a benchmark without the A/B it was run for."""
    from conftest import run_offline_gpu_script

    proc = run_offline_gpu_script("attention_check.sh", OUT=str(tmp_path / "out"), REFERENCE=str(tmp_path / "missing.py"))
    assert proc.returncode == 2
    assert f"REFERENCE={tmp_path / 'missing.py'} does not exist" in proc.stderr
    assert not list((tmp_path / "out").glob("*.log")), "tests or benchmark ran"


def test_attention_check_runs_the_tests_it_is_told_to(tmp_path):
    """SMALL_K / FULL_K narrow the two pytest runs of attention_check.sh, and TESTS=small / full picks one of
    them (to finish what a time limit cut): here one small test runs and no full-size one."""
    import re

    from conftest import run_offline_gpu_script

    out = tmp_path / "out"
    proc = run_offline_gpu_script("attention_check.sh", OUT=str(out), BENCH="0",
                             SMALL_K="fused_row_dot_products_match_torch", FULL_K="no_test_has_this_name")
    assert proc.returncode == 0, proc.stderr
    small = (out / "gpu_tests_attention_small.log").read_text()
    assert re.search(r"\b1 passed, \d+ deselected", small) and "fused_row_dot_products_match_torch PASSED" in small
    full = (out / "gpu_tests_attention_fullsize.log").read_text()
    assert re.search(r"\b\d+ deselected", full) and "passed" not in full.lower()

    (out / "gpu_tests_attention_fullsize.log").unlink()
    proc = run_offline_gpu_script("attention_check.sh", OUT=str(out), BENCH="0", TESTS="small",
                             SMALL_K="fused_row_dot_products_match_torch")
    assert proc.returncode == 0 and not (out / "gpu_tests_attention_fullsize.log").exists(), proc.stdout
    proc = run_offline_gpu_script("attention_check.sh", OUT=str(out), TESTS="some")
    assert proc.returncode == 2 and "TESTS=some is not one of 0, 1, small, full" in proc.stderr


def test_the_kernels_compile_for_hopper_without_a_gpu():
    """scripts/kernel_resources.py compiles every kernel variant for sm_90 with Triton's own ptxas: code the
    interpreter runs but a GPU compiler rejects (e.g. a runtime `if` whose branches give a name two types)
    fails here, on CPU CI, instead of on a GPU. It also reads each kernel's registers and stack."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "kernel_resources.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script), "--head-dim", "16", "--tiles", "16x32:4:1", "--all-masks"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(r"^\| (.+?) \| (.+?) \| 16x32:4:1 \| (\d+) / (\d+); (\d+) \|$", proc.stdout, flags=re.M)
    kernels = {"forward", "dQ/dR", "dK/dV", "dK/dV + atomic dQ/dR"}
    masks = {"causal", "full", "causal + documents", "full + documents"}
    assert {(name, mask) for name, mask, *_ in rows} == {(k, m) for k in kernels for m in masks}, proc.stdout
    assert all(0 < int(registers) <= 255 for *_, registers, _, _ in rows)
    interpreted = subprocess.run([sys.executable, str(script)], env={**env, "TRITON_INTERPRET": "1"},
                                 capture_output=True, text=True, timeout=120)
    assert interpreted.returncode != 0 and "unset TRITON_INTERPRET" in interpreted.stderr


def test_bench_refuses_a_requested_peer_it_cannot_time():
    """scripts/bench_attention.py --peers: a named peer this host cannot time stops the run with its name."""
    import scripts.bench_attention as bench

    available = {"parallax-triton": None, "sdpa-cudnn": None}
    bench.check_requested(None, available)  # no --peers: whatever is available
    bench.check_requested(["parallax-triton"], available)
    with pytest.raises(SystemExit, match=r"--peers fla-parallax: not available here \(here: parallax-triton sdpa-cudnn\)"):
        bench.check_requested(["parallax-triton", "fla-parallax"], available)


def test_bench_times_variants_in_rounds(monkeypatch):
    """scripts/bench_attention.py --repeat: the default and every variant that runs are timed once a round, in turn,
    each reported as the median of its rounds; a variant that does not run is left out of every round."""
    import scripts.bench_attention as bench

    calls = []
    clock = iter([5.0, 4.0, 9.0, 6.0, 3.0, 9.5, 4.0, 5.0, 8.0])  # rounds of (default, fast, slow)

    def fake_bench(fn, **_):
        calls.append(fn())
        return next(clock)

    def run(kind="default"):
        if kind == "missing":
            raise RuntimeError("no artefact")
        return [torch.ones(2) * (2.0 if kind == "slow" else 1.0)]

    monkeypatch.setattr(bench, "do_bench", fake_bench)
    times, errors, rounds = bench.time_variants(["fast", "missing", "slow"], lambda name: {"kind": name}, run,
                                                "forward", repeat=3)
    assert [float(c[0][0]) for c in calls] == [1.0, 1.0, 2.0] * 3
    assert rounds == {"default": [5.0, 6.0, 4.0], "fast": [4.0, 3.0, 5.0], "slow": [9.0, 9.5, 8.0]}
    assert times == {"default": 5.0, "fast": 4.0, "slow": 9.0}
    assert errors == {"fast": 0.0, "slow": 1.0}
    clock = iter([7.0])
    times, _, rounds = bench.time_variants(["fast"], lambda name: {"kind": name}, run, "forward")
    assert times == {"fast": 7.0} and rounds == {}


def test_bench_times_peers_in_rounds(monkeypatch):
    """scripts/bench_attention.py --peer-rounds: each peer's forward and forward + backward are timed once a round,
    peers in turn, each backward with its own output gradient; its row holds the medians of the rounds (and, with
    more than one round, every round's times); one round is one timing each."""
    import scripts.bench_attention as bench

    order = []

    def peer(name, size):  # outputs of different shapes: a backward given another peer's gradient fails
        x = torch.ones(size, requires_grad=True)

        def fn():
            order.append(name)
            return x * 2.0

        return ("softmax", fn, [x])

    peers = {"a": peer("a", 3), "b": peer("b", 5)}
    clock = iter([1.0, 3.0, 2.0, 5.0, 1.4, 2.6, 2.2, 4.0, 0.8, 2.9, 1.8, 4.4])  # a fwd, a both, b fwd, b both ...

    def fake_bench(fn, grad_to_none=None, **_):
        order.append("|")
        fn()
        return next(clock)

    monkeypatch.setattr(bench, "do_bench", fake_bench)
    monkeypatch.setattr(bench, "peak_memory", lambda fwd_bwd, inputs: (fwd_bwd(), 7.0)[1])
    timed = bench.time_peers(peers, rounds=3)
    rounds = "".join(order[2:])  # after each peer's one call to shape its output gradient
    assert order[:2] == ["a", "b"] and rounds == "|a|a|b|b" * 3 + "ab"
    assert timed == {"a": ([1.0, 1.4, 0.8], [3.0, 2.6, 2.9], 7.0), "b": ([2.0, 2.2, 1.8], [5.0, 4.0, 4.4], 7.0)}
    assert all(x.grad is not None for _, _, inputs in peers.values() for x in inputs)  # each backward ran
    clock = iter([1.0, 2.0])
    assert bench.time_peers({"a": peer("a", 3)}) == {"a": ([1.0], [2.0], 7.0)}

    # the row: medians, not means (1.0, not 2.0), TFLOP/s of the medians, the rounds in their order; the backward
    # alone is the median of each round's difference (3.0 of 4.0, 2.0, 3.0), not the medians' (5.0 - 1.0)
    row = bench.peer_result([1.0, 4.0, 1.0], [5.0, 6.0, 4.0], 7.0, 2e9, 8e9)
    assert row == dict(fwd_ms=1.0, fwd_bwd_ms=5.0, bwd_ms=3.0, fwd_tflops=2.0, fwd_bwd_tflops=1.6, bwd_tflops=2.0,
                       peak_mib=7.0, fwd_ms_rounds=[1.0, 4.0, 1.0], fwd_bwd_ms_rounds=[5.0, 6.0, 4.0],
                       bwd_ms_rounds=[4.0, 2.0, 3.0])
    assert bench.peer_result([0.5], [1.5], 7.0, 2e9, 6e9) == dict(
        fwd_ms=0.5, fwd_bwd_ms=1.5, bwd_ms=1.0, fwd_tflops=4.0, fwd_bwd_tflops=4.0, bwd_tflops=4.0, peak_mib=7.0)


def test_bench_backward_variant_codes_name_the_launchers_fields(monkeypatch):
    """scripts/bench_attention.py --cute-backward-variants: each code's fields as the backward launcher takes them;
    wa / wg ask for the per-warp / per-warpgroup dQ/dR adds, neither leaves the head_dim's default (None); the
    default backward (no fields) is the reference."""
    import scripts.bench_attention as bench
    from parallax_kernels.parallax import cute_launch

    launched = []

    def backward(*args, **fields):
        launched.append(fields)
        return [torch.ones(2)]

    monkeypatch.setattr(cute_launch, "_launch", lambda q, *args, **fields: (q, q, q[..., 0], q[..., 0]))
    monkeypatch.setattr(cute_launch, "_launch_backward", backward)
    monkeypatch.setattr(bench, "do_bench", lambda fn, **_: float(len(fn())))
    q = torch.zeros(1, 2, 4, 64)
    bench.time_cute_backward_variants(q, q, q, q, ["b2", "b2wa", "b2wg", "b3hhdcwgm32", "b2g4krwa"])
    plain = dict(stages=2, lpt=True, decoupled=False, k_registers=False, warp_adds=None, block_m=0)
    assert launched[:6] == [{}, plain, {**plain, "warp_adds": True}, {**plain, "warp_adds": False},
                            dict(stages=3, lpt=False, decoupled=True, k_registers=False, warp_adds=False, block_m=32),
                            {**plain, "k_registers": True, "warp_adds": True, "lpt_heads": 4}]
    with pytest.raises(SystemExit, match=r"\[wa\|wg\]"):
        bench.time_cute_backward_variants(q, q, q, q, ["b2wawg"])
