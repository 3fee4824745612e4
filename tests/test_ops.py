"""parallax_attention (torch backend) against the float64 dense definition."""

import pytest
import torch
import torch.nn.functional as F

from conftest import random_qkvr
from parallax_kernels.parallax.reference import parallax_attention_reference
from parallax_kernels.parallax.torch_chunked import parallax_attention_torch
from parallax_titan.ops import BACKENDS, parallax_attention

SHAPES = [
    # b, h, hkv, n, d
    (2, 4, 4, 33, 32),
    (1, 4, 2, 50, 64),  # GQA 2
    (2, 8, 2, 17, 128),  # GQA 4, odd length
    (1, 2, 1, 65, 32),  # MQA
]


def _grads(out, inputs, grad):
    return torch.autograd.grad(out, inputs, grad)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_grads_match_float64_definition(rng, shape, causal):
    q, k, v, r = random_qkvr(rng, *shape)
    # small chunks so several chunks (and a ragged last one) are exercised
    out = parallax_attention_torch(q, k, v, r, causal=causal, scale=shape[-1] ** -0.5, chunk_size=8)
    ref = parallax_attention_reference(q, k, v, r, causal=causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn(out.shape, generator=rng, dtype=out.dtype)
    for got, want, name in zip(_grads(out, (q, k, v, r), grad), _grads(ref, (q, k, v, r), grad), "qkvr"):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"d{name}")


def test_document_ids_block_cross_document_attention(rng):
    q, k, v, r = random_qkvr(rng, 2, 4, 2, 40, 32)
    doc = torch.cumsum(torch.rand(2, 40, generator=rng) < 0.15, dim=1)
    out = parallax_attention(q, k, v, r, document_ids=doc)
    ref = parallax_attention_reference(q, k, v, r, document_ids=doc)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # and it equals running each document of the first sequence on its own
    d0 = doc[0]
    for doc_id in d0.unique():
        idx = (d0 == doc_id).nonzero().squeeze(1)
        sl = slice(int(idx[0]), int(idx[-1]) + 1)
        alone = parallax_attention_reference(q[:1, :, sl], k[:1, :, sl], v[:1, :, sl], r[:1, :, sl])
        torch.testing.assert_close(out[:1, :, sl], alone, rtol=1e-10, atol=1e-10)


def test_explicit_scale_is_used(rng):
    q, k, v, r = random_qkvr(rng, 1, 2, 2, 12, 16, requires_grad=False)
    out = parallax_attention(q, k, v, r, scale=0.3)
    torch.testing.assert_close(out, parallax_attention_reference(q, k, v, r, scale=0.3))
    assert not torch.allclose(out, parallax_attention(q, k, v, r))


@pytest.mark.parametrize("causal", [True, False])
def test_zero_probe_is_softmax_attention(rng, causal):
    q, k, v, _ = random_qkvr(rng, 2, 8, 4, 37, 64, requires_grad=False)
    out = parallax_attention(q, k, v, torch.zeros_like(q), causal=causal)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    torch.testing.assert_close(out, sdpa, rtol=1e-10, atol=1e-10)


def test_probe_changes_the_output(rng):
    q, k, v, r = random_qkvr(rng, 1, 2, 2, 16, 16, requires_grad=False)
    plain = parallax_attention(q, k, v, torch.zeros_like(r))
    assert (parallax_attention(q, k, v, r) - plain).abs().max() > 1e-2


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-5)])
def test_low_precision_close_to_float64(rng, dtype, tol):
    q, k, v, r = random_qkvr(rng, 2, 4, 2, 70, 64, dtype=torch.float64, requires_grad=False)
    ref = parallax_attention_reference(q, k, v, r)
    low = parallax_attention(*(x.to(dtype) for x in (q, k, v, r)))
    assert low.dtype == dtype
    rel = (low.double() - ref).norm() / ref.norm()
    assert rel < tol, f"relative error {rel:.2e} in {dtype}"


def test_backward_saves_no_n_by_n_tensor(rng):
    """Memory-efficient: nothing saved for backward is as large as one head's N x N scores."""
    n = 256
    q, k, v, r = random_qkvr(rng, 1, 2, 1, n, 16, dtype=torch.float32)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = parallax_attention(q, k, v, r)
    assert saved and max(saved) < n * n, f"largest saved tensor has {max(saved)} elements"
    out.sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v, r))


def test_unknown_backend_names_the_available_ones(rng):
    q, k, v, r = random_qkvr(rng, 1, 2, 2, 8, 16, requires_grad=False)
    with pytest.raises(ValueError, match=r"unknown parallax_attention backend 'cuda_magic'.*torch"):
        parallax_attention(q, k, v, r, backend="cuda_magic")
    assert "torch" in BACKENDS


def test_head_dim_mismatch_is_a_clear_error(rng):
    q, k, v, r = random_qkvr(rng, 1, 2, 2, 8, 16, requires_grad=False)
    with pytest.raises(ValueError, match=r"head_dim mismatch: q has D=16, k and v have D=32"):
        parallax_attention(q, torch.randn(1, 2, 8, 32, dtype=q.dtype), torch.randn(1, 2, 8, 32, dtype=q.dtype), r)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(r=torch.zeros(1, 2, 8, 8)), r"r must have q's shape"),
        (dict(k=torch.zeros(1, 3, 8, 16), v=torch.zeros(1, 3, 8, 16)), r"multiple of key/value heads"),
        (dict(k=torch.zeros(1, 2, 9, 16), v=torch.zeros(1, 2, 9, 16)), r"batch and sequence sizes differ"),
        (dict(document_ids=torch.zeros(1, 7, dtype=torch.long)), r"document_ids must be \(B, N\)"),
        # a kernel reading them through a pointer would take a host address for device memory
        (dict(document_ids=torch.zeros(1, 8, dtype=torch.long, device="meta")), r"document_ids is on meta, q on cpu"),
    ],
)
def test_bad_shapes_are_clear_errors(kwargs, message):
    base = dict(
        q=torch.zeros(1, 2, 8, 16), k=torch.zeros(1, 2, 8, 16), v=torch.zeros(1, 2, 8, 16), r=torch.zeros(1, 2, 8, 16)
    )
    base.update(kwargs)
    doc = base.pop("document_ids", None)
    with pytest.raises(ValueError, match=message):
        parallax_attention(base["q"], base["k"], base["v"], base["r"], document_ids=doc)


@pytest.mark.parametrize("backend", ["torch", "triton", "triton_atomic"])
def test_cu_seqlens_packs_documents(rng, backend):
    q, k, v, r = random_qkvr(rng, 1, 2, 1, 30, 16, dtype=torch.float32, requires_grad=False)
    cu = torch.tensor([0, 7, 8, 21, 30])
    out = parallax_attention(q, k, v, r, backend=backend, cu_seqlens=cu)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = parallax_attention_reference(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], r[:, :, a:b])
        torch.testing.assert_close(out[:, :, a:b], alone, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D \[0, ..., N=30\]"):
        parallax_attention(q, k, v, r, cu_seqlens=torch.tensor([0, 7, 29]))


@pytest.mark.parametrize("backend", ["torch", "triton", "triton_atomic"])
def test_vmap_over_models_folds_them_into_the_batch(rng, backend):
    """Under torch.func.vmap (an ensemble of models) each member gets exactly its own attention and
    gradients: the vmapped dim is folded into the batch (kernels/parallax_kernels/batching.py), here batched at dim 0
    for q and r, at dim 1 for k, unbatched for v and the document ids."""
    members, b, h, hkv, n, d = 3, 2, 4, 2, 19, 16
    q, r = (torch.randn(members, b, h, n, d, generator=rng).requires_grad_() for _ in range(2))
    k = torch.randn(b, members, hkv, n, d, generator=rng).requires_grad_()
    v = torch.randn(b, hkv, n, d, generator=rng).requires_grad_()
    docs = torch.cumsum(torch.rand(b, n, generator=rng) < 0.2, dim=1)

    def attend(q, k, r):
        return parallax_attention(q, k, v, r, backend=backend, document_ids=docs)

    out = torch.func.vmap(attend, in_dims=(0, 1, 0))(q, k, r)
    loop = torch.stack([attend(q[i], k[:, i], r[i]) for i in range(members)])
    torch.testing.assert_close(out, loop, rtol=1e-5, atol=1e-6)
    grad = torch.randn(out.shape, generator=rng)
    got = torch.autograd.grad(out, (q, k, v, r), grad)
    want = torch.autograd.grad(loop, (q, k, v, r), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


SDPA_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", SDPA_DEVICES)
@pytest.mark.parametrize("autocast", [False, True])
def test_folded_sdpa_under_vmap_is_one_sdpa_call_on_the_merged_batch(rng, monkeypatch, device, autocast):
    """The softmax baseline's vmap rule (kernels/parallax_kernels/batching.py folded_sdpa): each member gets its own
    attention and gradients, from one plain (not vmapped) SDPA call on members x batch rows per pass,
    under bf16 autocast too (the backward recomputes the forward and must replay it)."""
    import parallax_kernels.batching as batching
    from torch._C._functorch import is_batchedtensor

    members, b, h, n, d = 3, 2, 4, 13, 8
    q, k, v = (torch.randn(members, b, h, n, d, generator=rng).to(device).requires_grad_() for _ in range(3))
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        calls.append((tuple(q.shape), is_batchedtensor(q), torch.is_autocast_enabled(device)))
        return sdpa(q, *args, **kwargs)

    def run(fn):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = fn()
        grad = torch.ones_like(out).mul_(torch.linspace(-1, 1, out.numel(), device=device).view(out.shape))
        return (out, *torch.autograd.grad(out, (q, k, v), grad))

    monkeypatch.setattr(batching.F, "scaled_dot_product_attention", spy)
    got = run(lambda: torch.func.vmap(lambda q, k, v: batching.folded_sdpa(q, k, v, scale=0.3))(q, k, v))
    monkeypatch.setattr(batching.F, "scaled_dot_product_attention", sdpa)
    want = run(lambda: torch.stack([sdpa(q[i], k[i], v[i], scale=0.3, is_causal=True) for i in range(members)]))
    assert calls == [((members * b, h, n, d), False, autocast)] * 2  # forward, and the backward's recompute
    for x, y in zip(got, want):
        assert x.dtype == y.dtype
        tol = 2e-2 if autocast else 1e-5
        torch.testing.assert_close(x.float(), y.float(), rtol=tol, atol=tol)
