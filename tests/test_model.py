"""Qwen3-Parallax model: shapes, softmax equivalence at W_R = 0, parameter/FLOP arithmetic, errors."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from parallax_titan.data import EMBEDDED_TOKENIZER
from parallax_titan.job_config import Parallax as ParallaxSection
from parallax_titan.model.args import ParallaxModelArgs
from parallax_titan.model.attention import attention_names, attention_type, registry
from parallax_titan.model.flavors import FLAVORS
from parallax_titan.model.flops import (
    attention_flops_per_token,
    count_parameters,
    training_flops_per_token,
)
from parallax_titan.model.model import ParallaxAttention, ParallaxQwen3Model

DEBUG = [name for name in FLAVORS if name.startswith("debug")]


def build(args: ParallaxModelArgs, seed: int = 0) -> ParallaxQwen3Model:
    torch.manual_seed(seed)
    model = ParallaxQwen3Model(args)
    with torch.no_grad():  # as torchtitan's Trainer calls it
        model.init_weights(buffer_device=torch.device("cpu"))
    return model


def small(name: str, **overrides) -> ParallaxModelArgs:
    return replace(FLAVORS[name], max_seq_len=64, **overrides)


@pytest.mark.parametrize("name", DEBUG)
def test_forward_backward_shapes(name):
    model = build(small(name))
    tokens = torch.randint(0, 2048, (2, 24))
    logits = model(tokens)
    assert logits.shape == (2, 24, 2048)
    logits.float().logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


def test_parallax_has_probe_modules_named_for_routing():
    model = build(small("debug-parallax"))
    names = {n for n, _ in model.named_parameters()}
    assert "layers.0.attention.wr.weight" in names
    assert "layers.0.attention.r_norm.weight" in names
    attn = model.layers["0"].attention
    assert isinstance(attn, ParallaxAttention)
    assert attn.wr.weight.shape == (4 * 64, 256)
    softmax = build(small("debug-transformer"))
    assert not any(".wr." in n for n, _ in softmax.named_parameters())


@pytest.mark.parametrize("probe_rope", [True, False])
def test_zero_probe_model_equals_softmax_model(probe_rope):
    """W_R = 0 makes Parallax softmax attention exactly: same weights, same logits."""
    softmax = build(small("debug-transformer"), seed=1)
    parallax = build(small("debug-parallax", probe_init="zero", probe_rope=probe_rope), seed=2)
    missing, unexpected = parallax.load_state_dict(softmax.state_dict(), strict=False)
    assert all(".wr." in m or ".r_norm." in m for m in missing) and not unexpected
    assert all(float(l.attention.wr.weight.detach().abs().max()) == 0 for l in parallax.layers.values())
    tokens = torch.randint(0, 2048, (2, 31))
    torch.testing.assert_close(parallax(tokens), softmax(tokens), rtol=1e-5, atol=1e-5)
    # and with the probe initialised normally it is not softmax attention
    normal = build(small("debug-parallax"), seed=2)
    normal.load_state_dict(softmax.state_dict(), strict=False)
    assert (normal(tokens) - softmax(tokens)).abs().max() > 1e-3


@pytest.mark.parametrize("probe_rope", [True, False])
@pytest.mark.parametrize("positions", [None, "per_sequence"])
def test_probe_is_normalised_and_rotated_as_the_query(probe_rope, positions):
    """With the probe's weights set to the query's (W_R = W_Q, r_norm's weight = q_norm's), project() gives r equal
    to q bit for bit under probe_rope, in fp32 and bf16 and with per-sequence positions; without it, r is q before
    RoPE."""
    from torchtitan.models.qwen3.model.model import apply_rotary_emb

    from parallax_titan.model.attention.parallax import project

    model = build(small("debug-parallax", probe_rope=probe_rope))
    attn = model.layers["0"].attention
    with torch.no_grad():
        attn.wr.weight.copy_(attn.wq.weight)
        attn.r_norm.weight.copy_(torch.rand_like(attn.r_norm.weight) + 0.5)
        attn.q_norm.weight.copy_(attn.r_norm.weight)
    torch.manual_seed(0)
    n = 9
    pos = None if positions is None else torch.stack([torch.randperm(model.rope_cache.shape[0])[:n] for _ in range(2)])
    for dtype in (torch.float32, torch.bfloat16):
        attn.to(dtype)
        x = torch.randn(2, n, attn.wq.in_features).to(dtype)
        q, k, _, (r,) = project(attn, x, model.rope_cache, pos)
        if probe_rope:
            assert torch.equal(r, q)
        else:
            unrotated = attn.q_norm(attn.wq(x).view(2, n, -1, attn.head_dim))
            assert torch.equal(r, unrotated)
            assert torch.equal(q, apply_rotary_emb(unrotated, k, model.rope_cache, pos)[0])
            assert not torch.equal(r, q)


def test_probe_gate_and_norm_knobs_change_parameters():
    gated = build(small("debug-parallax", probe_gate=True, probe_norm=False))
    names = {n for n, _ in gated.named_parameters()}
    assert "layers.0.attention.probe_gate.weight" in names
    assert not any("r_norm" in n for n in names)
    assert gated(torch.randint(0, 2048, (1, 9))).shape == (1, 9, 2048)


@pytest.mark.parametrize("name", list(FLAVORS))
def test_analytic_parameter_count_matches_modules(name):
    args = FLAVORS[name]
    with torch.device("meta"):
        model = ParallaxQwen3Model(args)
    actual = sum(p.numel() for p in model.parameters())
    assert count_parameters(args)["total"] == actual


@pytest.mark.parametrize("size", ["debug", "mini20M", "mini60M", "0.6B", "1.7B"])
def test_controls_match_as_documented(size):
    parallax = count_parameters(FLAVORS[f"{size}-parallax"])
    transformer = count_parameters(FLAVORS[f"{size}-transformer"])
    param_matched = count_parameters(FLAVORS[f"{size}-transformer-param-matched"])
    compute_matched = count_parameters(FLAVORS[f"{size}-parallax-compute-matched"])
    assert transformer["total"] < parallax["total"]
    for control in (param_matched, compute_matched):
        rel = abs(control["non_embedding"] - parallax["non_embedding"]) / parallax["non_embedding"]
        assert rel < 0.005, f"{size}: non-embedding parameters differ by {rel:.3%}"
    softmax_fwd = attention_flops_per_token(FLAVORS[f"{size}-transformer"], 4096, training=False)
    cm_fwd = attention_flops_per_token(FLAVORS[f"{size}-parallax-compute-matched"], 4096, training=False)
    assert abs(cm_fwd - softmax_fwd) / softmax_fwd < 0.01
    assert FLAVORS[f"{size}-parallax-compute-matched"].head_dim * 2 == FLAVORS[f"{size}-parallax"].head_dim


def test_flop_arithmetic_by_hand():
    args = FLAVORS["0.6B-transformer"]
    # softmax attention: 6 matmuls of 2*D*T per head, layer and token (torchtitan's 12*L*H*D*T)
    assert attention_flops_per_token(args, 4096) == 12 * 28 * 16 * 128 * 4096
    parallax = FLAVORS["0.6B-parallax"]
    assert attention_flops_per_token(parallax, 4096) == 20 * 28 * 16 * 128 * 4096
    assert attention_flops_per_token(parallax, 4096, training=False) == 8 * 28 * 16 * 128 * 4096
    p = count_parameters(args)
    # tied head still runs its matmul: counted once as dense work
    assert training_flops_per_token(args, 4096) == 6 * (p["non_embedding"] + 151936 * 1024) + 12 * 28 * 16 * 128 * 4096
    # causal: query i meets i + 1 of the 4096 keys, 4097 / 2 on average; the dense work is unchanged
    assert attention_flops_per_token(parallax, 4096, causal=True) == 20 * 28 * 16 * 128 * 4097 / 2
    assert (training_flops_per_token(args, 4096) - training_flops_per_token(args, 4096, causal=True)
            == 12 * 28 * 16 * 128 * (4096 - 4097 / 2))
    assert attention_flops_per_token(args, 1, causal=True) == attention_flops_per_token(args, 1)
    # the ratios docs/design.md section 7 quotes, causal and over all keys
    for flavor, causal, full in (("0.6B-parallax", 1.26, 1.35), ("0.6B-parallax-compute-matched", 1.02, 0.98),
                                 ("1.7B-parallax", 1.14, 1.20)):
        base = FLAVORS[flavor.split("-")[0] + "-transformer"]
        for is_causal, want in ((True, causal), (False, full)):
            ratio = (training_flops_per_token(FLAVORS[flavor], 4096, causal=is_causal)
                     / training_flops_per_token(base, 4096, causal=is_causal))
            assert round(ratio, 2) == want, (flavor, is_causal, ratio)


def test_unknown_attention_type_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[parallax\] attention = 'linear' is unknown"):
        replace(FLAVORS["debug-parallax"], attention="linear")


def test_unknown_backend_in_model_args_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown parallax_attention backend 'nope'"):
        replace(FLAVORS["debug-parallax"], attention_backend="nope")


def _job_config(assets_path: str, **parallax):
    return SimpleNamespace(
        training=SimpleNamespace(seq_len=128),
        debug=SimpleNamespace(moe_force_load_balance=False),
        model=SimpleNamespace(hf_assets_path=assets_path),
        parallax=ParallaxSection(**parallax),
    )


def test_update_from_config_applies_parallax_section_and_tokenizer_eos():
    args = replace(FLAVORS["debug-parallax"])
    args.update_from_config(_job_config(EMBEDDED_TOKENIZER, attention="softmax", probe_init="zero"))
    assert args.attention == "softmax" and args.probe_init == "zero"
    assert args.probe_rope is True  # unset keys keep the flavor's value
    assert args.max_seq_len == 128
    assert args.eos_id == 0  # <|endoftext|> in the embedded tokenizer


def test_tokenizer_larger_than_vocab_is_refused():
    args = replace(FLAVORS["debug-parallax"], vocab_size=1000)
    with pytest.raises(ValueError, match=r"tokenizer .*tokenizer.json has 2048 tokens but the model flavor's vocab_size is 1000"):
        args.update_from_config(_job_config(EMBEDDED_TOKENIZER))


@pytest.mark.parametrize("config", [None, {}, {"eos_token": "<|no such token|>"}])
def test_document_masking_without_the_tokenizers_eos_is_refused(tmp_path, config):
    """No tokenizer, no eos_token, or one the vocabulary lacks: the flavor's default EOS id would never match, so
    documents would silently never end."""
    import json
    import shutil

    if config is not None:
        shutil.copy(Path(EMBEDDED_TOKENIZER) / "tokenizer.json", tmp_path / "tokenizer.json")
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    args = replace(FLAVORS["debug-parallax"])
    with pytest.raises(ValueError, match=r"\[parallax\] document_masking"):
        args.update_from_config(_job_config(str(tmp_path), document_masking=True))
    replace(FLAVORS["debug-parallax"]).update_from_config(_job_config(str(tmp_path)))  # without masking: accepted


def test_bad_parallax_value_from_config_is_a_clear_error():
    args = replace(FLAVORS["debug-parallax"])
    with pytest.raises(ValueError, match=r"\[parallax\] probe_init = 'ones' is unknown"):
        args.update_from_config(_job_config(EMBEDDED_TOKENIZER, probe_init="ones"))


def test_document_masking_makes_packed_documents_independent():
    """With document masking, a document's logits inside a packed sequence equal its logits alone
    (RoPE is relative, so the offset does not matter); without it, the earlier document leaks in."""
    args = small("debug-parallax", document_masking=True, eos_id=0)
    masked = build(args, seed=3)
    g = torch.Generator().manual_seed(0)
    first = torch.randint(1, 2048, (1, 11), generator=g)
    second = torch.randint(1, 2048, (1, 9), generator=g)
    packed = torch.cat([first, torch.zeros(1, 1, dtype=torch.long), second], dim=1)  # EOS = 0 ends doc 1
    alone = masked(second)
    torch.testing.assert_close(masked(packed)[:, 12:], alone, rtol=1e-4, atol=1e-4)
    unmasked = build(replace(args, document_masking=False), seed=3)
    assert (unmasked(packed)[:, 12:] - alone).abs().max() > 1e-3


def test_document_ids_follow_torchtitans_eos_convention():
    from parallax_titan.model.model import document_ids_from_eos

    tokens = torch.tensor([[5, 0, 7, 8, 0, 0, 3]])
    assert document_ids_from_eos(tokens, 0).tolist() == [[0, 0, 1, 1, 1, 2, 3]]


def test_softmax_document_masking_uses_torchtitans_flex_block_causal():
    args = replace(FLAVORS["debug-transformer"])
    args.update_from_config(_job_config(EMBEDDED_TOKENIZER, document_masking=True))
    assert (args.attn_type, args.attn_mask_type) == ("flex", "block_causal")


def test_registry_names_the_types_and_their_extra_parameters():
    assert attention_names() == ("softmax", "parallax")
    assert attention_type("softmax").extra_parameters == {}
    with pytest.raises(ValueError, match=r"\[parallax\] attention = 'linear' is unknown; choose one of"):
        attention_type("linear")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(attention_type("softmax"))
    # the extra parameter names are what the Parallax module adds to softmax's state dict
    full = build(small("debug-parallax", probe_gate=True)).state_dict()
    softmax = build(small("debug-transformer")).state_dict()
    added = {k.removeprefix("layers.0.attention.") for k in full.keys() - softmax.keys() if k.startswith("layers.0.")}
    assert added == set(attention_type("parallax").extra_parameters)


@pytest.fixture
def gained_attention(monkeypatch):
    """Registers "gained" (softmax attention times a learned per-head gain) for one test, the way a new
    attention type registers: one module class, its project/prefill/decode calls, counts and names."""
    from torchtitan.models.qwen3.model.model import Attention

    from parallax_titan.model.attention import softmax

    class GainedAttention(Attention):
        def __init__(self, model_args):
            super().__init__(model_args)
            self.gain = torch.nn.Parameter(torch.ones(model_args.n_heads))

        def init_weights(self, init_std):
            super().init_weights(init_std)
            with torch.no_grad():
                self.gain.copy_(torch.linspace(0.5, 2.0, len(self.gain)))

        def forward(self, x, rope_cache, attention_masks=None, positions=None):
            q, k, v, extras = softmax.project(self, x, rope_cache, positions)
            out = prefill(self, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), extras, backend="torch")
            return self.wo(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))

    def prefill(attn, q, k, v, extras, *, backend):
        return softmax.prefill(attn, q, k, v, extras, backend=backend) * attn.gain[:, None, None]

    def decode(attn, q, k_cache, v_cache, extras, **kwargs):
        return softmax.decode(attn, q, k_cache, v_cache, extras, **kwargs) * attn.gain[:, None]

    monkeypatch.setattr(registry, "_TYPES", dict(registry._TYPES))  # unregistered after the test
    registry.register(registry.AttentionType(
        name="gained", module=GainedAttention, project=softmax.project, prefill=prefill, decode=decode,
        forward_matmuls=2, training_matmuls=6, parameters=lambda args: softmax.parameters(args) + args.n_heads,
        extra_parameters={"gain": "gain"},
    ))
    return GainedAttention


def test_a_new_attention_type_is_one_registration(gained_attention):
    """Model, parameter and FLOP arithmetic, optimizer routing and KV-cache decoding all follow the registry."""
    from parallax_titan.generation import CachedDecoder, KVCache

    args = small("debug-transformer", attention="gained")
    model = build(args).eval()
    assert all(isinstance(block.attention, gained_attention) for block in model.layers.values())
    assert count_parameters(args)["total"] == sum(p.numel() for p in model.parameters())
    assert attention_flops_per_token(args, 64) == attention_flops_per_token(small("debug-transformer"), 64)
    from parallax_titan.optim.routing import route_parameters

    assert "layers.0.attention.gain" in [n for n, _ in route_parameters(model)["scalars"]]
    tokens = torch.randint(0, 2048, (2, 10), generator=torch.Generator().manual_seed(0))
    decoder = CachedDecoder(model)
    cache = KVCache.allocate(args, 2, 10, torch.float32, "cpu")
    with torch.no_grad():
        full = model(tokens)
        torch.testing.assert_close(decoder.prefill(tokens[:, :6], torch.tensor([6, 6]), cache), full[:, :6])
        torch.testing.assert_close(decoder.step(tokens[:, 6], cache), full[:, 6], rtol=1e-4, atol=1e-4)
        softmax = build(small("debug-transformer"))
        softmax.load_state_dict(model.state_dict(), strict=False)
        assert (softmax(tokens) - full).abs().max() > 1e-3  # the gain is in use
