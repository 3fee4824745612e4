"""Decode: the split/merge arithmetic, the Triton kernel (CPU interpreter here, CUDA on a GPU) against
float64, and KV-cache generation against the full forward."""

from dataclasses import replace

import pytest
import torch

from parallax_kernels.parallax_decode.torch_split import (
    decode_partials_torch,
    merge_partials_torch,
    parallax_decode_reference,
    split_bounds,
)
from parallax_titan.ops import parallax_decode

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def decode_inputs(b, h, hkv, l_max, d, dtype, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, d, generator=g)
    r = torch.randn(b, h, d, generator=g) * 0.3
    k = torch.randn(b, hkv, l_max, d, generator=g)
    v = torch.randn(b, hkv, l_max, d, generator=g)
    if lengths is None:
        lengths = torch.randint(1, l_max + 1, (b,), generator=g)
    lengths = torch.as_tensor(lengths, dtype=torch.int32)
    return [t.to(DEVICE, dtype) for t in (q, k, v, r)] + [lengths.to(DEVICE)]


def reference(q, k, v, r, lengths):
    return parallax_decode_reference(q.double(), k.double(), v.double(), r.double(), lengths,
                                     scale=q.shape[-1] ** -0.5)


def test_split_bounds_cover_each_sequence_once():
    bounds = split_bounds(torch.tensor([0, 1, 100, 257]), num_splits=4, block=16)
    assert bounds[:, 0].tolist() == [0, 0, 0, 0]
    assert bounds[:, -1].tolist() == [0, 1, 100, 257]
    assert (bounds[:, 1:] >= bounds[:, :-1]).all()
    assert bounds[3].tolist() == [0, 80, 160, 240, 257]  # chunks are whole 16-key blocks


@pytest.mark.parametrize("splits", [1, 2, 5, 16])
def test_merged_partials_equal_the_definition_in_float64(splits):
    q, k, v, r, lengths = decode_inputs(3, 4, 2, 37, 16, torch.float64, lengths=[37, 1, 20])
    merged = merge_partials_torch(decode_partials_torch(q, k, v, r, lengths, 16 ** -0.5, splits))
    torch.testing.assert_close(merged, reference(q, k, v, r, lengths), rtol=1e-10, atol=1e-10)


def test_an_empty_split_contributes_nothing():
    q, k, v, r, lengths = decode_inputs(1, 2, 1, 8, 16, torch.float64, lengths=[3])
    partials = decode_partials_torch(q, k, v, r, lengths, 0.25, num_splits=6)
    assert torch.isinf(partials.m[..., 3:]).all() and (partials.d1[..., 3:] == 0).all()
    torch.testing.assert_close(merge_partials_torch(partials), reference(q, k, v, r, lengths))


def test_zero_probe_is_softmax_decode():
    q, k, v, r, lengths = decode_inputs(2, 4, 2, 30, 16, torch.float64, lengths=[30, 9])
    out = parallax_decode(q, k, v, torch.zeros_like(r), cache_seqlens=lengths, num_splits=3)
    mask = torch.arange(30, device=DEVICE)[None, :] < lengths[:, None]
    softmax = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], k, v, attn_mask=mask[:, None, None], enable_gqa=True)[:, :, 0]
    torch.testing.assert_close(out, softmax)


CASES = [  # (B, H, Hkv, L_max, D, lengths, splits)
    (2, 4, 2, 100, 32, [100, 37], 1),
    (3, 4, 4, 130, 16, [1, 130, 64], 3),
    (2, 8, 1, 200, 64, [199, 5], 8),
    (1, 2, 1, 300, 32, [300], 16),  # more splits than key blocks of 64: empty splits
    (2, 4, 2, 700, 16, [700, 333], 32),  # the most splits the merge takes
]


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}H{c[1]}kv{c[2]}L{c[3]}D{c[4]}s{c[6]}")
def test_triton_decode_matches_float64(case, dtype):
    b, h, hkv, l_max, d, lengths, splits = case
    q, k, v, r, lengths = decode_inputs(b, h, hkv, l_max, d, dtype, lengths=lengths)
    expected = reference(q, k, v, r, lengths)
    for backend in ("torch", "triton"):
        out = parallax_decode(q, k, v, r, cache_seqlens=lengths, backend=backend, num_splits=splits)
        assert out.dtype == dtype and out.shape == q.shape
        err = (out.double() - expected).abs().max() / expected.abs().max()
        assert err < (1e-5 if dtype == torch.float32 else 1.5e-2), (backend, float(err))


def test_ticket_counters_are_one_set_per_stream():
    from parallax_kernels.parallax_decode.torch_split import ticket_counters

    cpu = torch.device("cpu")
    one, again, other = ticket_counters(cpu, 6, stream=1), ticket_counters(cpu, 6, stream=1), ticket_counters(cpu, 6, 2)
    assert one is again and one is not other and one.shape == (6,) and int(one.abs().sum()) == 0
    assert ticket_counters(cpu, 6) is ticket_counters(cpu, 6, stream=0)  # a CPU tensor's "stream"


@pytest.mark.interpret
def test_triton_ticket_counter_is_reset_for_the_next_launch():
    from parallax_kernels.parallax_decode.torch_split import TICKET_COUNTERS as _COUNTERS

    q, k, v, r, lengths = decode_inputs(2, 4, 2, 128, 32, torch.float32, lengths=[128, 70])
    first = parallax_decode(q, k, v, r, cache_seqlens=lengths, backend="triton", num_splits=4)
    counters = [c for key, c in _COUNTERS.items() if key[1] == 2 * 2]
    assert counters and all(int(c.abs().sum()) == 0 for c in counters)
    # a second launch with other inputs reuses the counters: merged by its own last program
    q2, k2, v2, r2, _ = decode_inputs(2, 4, 2, 128, 32, torch.float32, seed=1)
    second = parallax_decode(q2, k2, v2, r2, cache_seqlens=lengths, backend="triton", num_splits=4)
    torch.testing.assert_close(second.double(), reference(q2, k2, v2, r2, lengths), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, second)


def test_bad_decode_input_is_a_clear_error():
    q, k, v, r, lengths = decode_inputs(2, 4, 2, 16, 16, torch.float32, lengths=[16, 3])
    with pytest.raises(ValueError, match="cache_seqlens must be an integer tensor of shape"):
        parallax_decode(q, k, v, r, cache_seqlens=lengths[:1])
    with pytest.raises(ValueError, match="exceed the cache length 16"):
        parallax_decode(q, k, v, r, cache_seqlens=torch.tensor([17, 3]))
    with pytest.raises(ValueError, match="multiple of Hkv"):
        parallax_decode(q[:, :3], k, v, r[:, :3], cache_seqlens=lengths)
    with pytest.raises(ValueError, match="unknown parallax_decode backend 'flash'"):
        parallax_decode(q, k, v, r, cache_seqlens=lengths, backend="flash")
    if DEVICE == "cuda" or __import__("os").environ.get("TRITON_INTERPRET") == "1":
        with pytest.raises(ValueError, match="num_splits 33 exceeds the kernel's maximum 32"):
            parallax_decode(q, k, v, r, cache_seqlens=lengths, backend="triton", num_splits=33)
    with pytest.raises(ValueError, match="num_splits must be >= 1"):
        parallax_decode(q, k, v, r, cache_seqlens=lengths, num_splits=0)


# --- generation ---------------------------------------------------------------------------------

def _model(flavor):
    from parallax_titan.model.flavors import FLAVORS
    from parallax_titan.model.model import ParallaxQwen3Model

    torch.manual_seed(0)
    model = ParallaxQwen3Model(replace(FLAVORS[flavor], attention_backend="torch", max_seq_len=64))
    with torch.no_grad():
        model.init_weights()
    return model.eval()


@pytest.mark.parametrize("flavor", ["debug-parallax", "debug-transformer"])
def test_cached_decoding_equals_the_full_forward(flavor):
    from parallax_titan.generation import CachedDecoder, KVCache

    model = _model(flavor)
    decoder = CachedDecoder(model, decode_backend="torch", num_splits=3)
    lengths = torch.tensor([7, 3])
    tokens = torch.randint(0, 2048, (2, 12), generator=torch.Generator().manual_seed(0))
    cache = KVCache.allocate(model.model_args, 2, 12, torch.float32, "cpu")
    with torch.no_grad():
        full = model(tokens)
        logits = decoder.prefill(tokens[:, :7], lengths, cache)
        torch.testing.assert_close(logits[0], full[0, :7], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(logits[1, :3], full[1, :3], rtol=1e-4, atol=1e-4)
        for step in range(4):  # feed each sequence its own next token from `tokens`
            nxt = tokens[torch.arange(2), cache.seqlens.long()]
            pos = cache.seqlens.long().clone()
            got = decoder.step(nxt, cache)
            expected = full[torch.arange(2), pos]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert cache.seqlens.tolist() == [11, 7]


def test_generate_is_seeded_and_greedy_is_argmax_of_the_forward():
    from parallax_titan.generation import CachedDecoder, generate

    model = _model("debug-parallax")
    decoder = CachedDecoder(model)
    prompts = [[5, 6, 7, 8], [9]]
    greedy = generate(decoder, prompts, max_new_tokens=5, temperature=0)
    for prompt, new in zip(prompts, greedy):
        seq = prompt + new
        with torch.no_grad():
            logits = model(torch.tensor([seq]))[0]
        assert new == logits[len(prompt) - 1 : -1].argmax(-1).tolist()
    a = generate(decoder, prompts, max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    b = generate(decoder, prompts, max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    c = generate(decoder, prompts, max_new_tokens=6, temperature=1.0, top_p=0.9, seed=4)
    assert a == b and a != c
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 64"):
        generate(decoder, prompts, max_new_tokens=61)


def test_top_p_keeps_the_smallest_nucleus():
    from parallax_titan.generation import sample

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(sample(logits, 1.0, 0.7, torch.Generator().manual_seed(s))) for s in range(200)}
    assert seen == {0, 1}


def test_generate_script_samples_from_a_dcp_checkpoint(tmp_path, capsys, debug_checkpoint):
    from conftest import DEBUG_CONFIG
    from scripts.generate import main

    path, _ = debug_checkpoint
    argv = ["--config", str(DEBUG_CONFIG), "--checkpoint", str(path), "--prompt", "The tutorial",
            "--prompt", "Python", "--max-new-tokens", "8", "--device", "cpu", "--seed", "1"]
    main(argv)
    first = capsys.readouterr()
    main(argv)
    assert capsys.readouterr().out == first.out  # seeded
    assert first.out.count("=== ") == 2 and "tokens/s" in first.err
    with pytest.raises(SystemExit, match="no .metadata"):
        main(["--config", str(DEBUG_CONFIG), "--checkpoint", str(tmp_path), "--prompt", "x", "--device", "cpu"])


def test_generate_takes_the_runs_overrides_after_a_double_dash(tmp_path, capsys):
    """A run trained with `--model.flavor debug-transformer` on the debug TOML loads with the same override."""
    from conftest import DEBUG_CONFIG
    from parallax_titan.inference import load_model
    from parallax_titan.model.checkpoint import save_model_dcp
    from scripts.generate import main

    loaded = load_model(DEBUG_CONFIG, None, overrides=["--model.flavor", "debug-transformer"])
    save_model_dcp(loaded.model.state_dict(), tmp_path / "step-1")
    argv = ["--config", str(DEBUG_CONFIG), "--checkpoint", str(tmp_path / "step-1"), "--prompt", "Python",
            "--max-new-tokens", "4", "--device", "cpu"]
    with pytest.raises(SystemExit, match="wr.weight"):  # the TOML's own flavor is Parallax
        main(argv)
    main([*argv, "--", "--model.flavor", "debug-transformer"])
    assert capsys.readouterr().out.count("=== ") == 1


def test_bench_decode_cells_are_checked_before_any_gpu_work(monkeypatch, capsys):
    """--cells belongs to --sweep cute, and each cell must be B:L; either mistake stops the run with a
    message naming it (both checks come before the script touches a GPU)."""
    import argparse

    from scripts.bench_decode import main, parse_cells

    monkeypatch.setattr("sys.argv", ["bench_decode.py", "--cells", "64:1024"])
    with pytest.raises(SystemExit):
        main()
    assert "--cells picks the cells of --sweep cute" in capsys.readouterr().err
    assert parse_cells(argparse.ArgumentParser(), ["64:1024", "1:8"]) == [(64, 1024), (1, 8)]
    with pytest.raises(SystemExit):
        parse_cells(argparse.ArgumentParser(), ["64x1024"])
    assert "'64x1024' is not B:L" in capsys.readouterr().err
