"""Hugging Face Qwen3 <-> DCP conversion (scripts/convert_hf.py) against a tiny random
`transformers` Qwen3ForCausalLM built locally."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from parallax_titan.data import EMBEDDED_TOKENIZER  # noqa: E402
from parallax_titan.model.checkpoint import load_model_dcp  # noqa: E402
from parallax_titan.model.flavors import FLAVORS  # noqa: E402
from parallax_titan.model.model import ParallaxQwen3Model  # noqa: E402
from scripts.convert_hf import main as convert  # noqa: E402

FLAVOR = "debug-transformer"


def tiny_qwen3(tmp_path, dtype=torch.float32, seed=0, **overrides):
    """A random Qwen3ForCausalLM with the debug flavor's shape, saved as safetensors."""
    args = FLAVORS[FLAVOR]
    config = transformers.Qwen3Config(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads, head_dim=args.head_dim, rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta, tie_word_embeddings=args.enable_weight_tying,
        max_position_embeddings=args.max_seq_len, attn_implementation="eager", **overrides,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # norms away from one, so a swapped norm weight would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model = model.to(dtype)
    path = tmp_path / f"hf_{str(dtype)[6:]}"
    model.save_pretrained(path)
    return model, path


def our_model(flavor, state):
    args = replace(FLAVORS[flavor], attention_backend="torch")
    model = ParallaxQwen3Model(args)
    model.load_state_dict(state)
    return model.eval()


TOKENS = torch.randint(0, FLAVORS[FLAVOR].vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("flavor, probe_start", [
    ("debug-transformer", "zero-wr"), ("debug-parallax", "zero-wr"), ("debug-parallax", "zero-norm"),
])
def test_converted_model_reproduces_hf_logits(tmp_path, flavor, probe_start):
    hf_model, hf_dir = tiny_qwen3(tmp_path)
    convert(["to-dcp", "--hf", str(hf_dir), "--flavor", flavor, "--out", str(tmp_path / "dcp"),
             "--probe-start", probe_start])
    state = load_model_dcp(tmp_path / "dcp", FLAVORS[flavor])
    with torch.no_grad():
        expected = hf_model(TOKENS).logits
        got = our_model(flavor, state)(TOKENS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    if flavor == "debug-parallax":
        wr = torch.stack([state[f"layers.{i}.attention.wr.weight"] for i in range(FLAVORS[flavor].n_layers)])
        norm = torch.stack([state[f"layers.{i}.attention.r_norm.weight"] for i in range(FLAVORS[flavor].n_layers)])
        if probe_start == "zero-wr":
            assert wr.abs().max() == 0 and (norm == 1).all()
        else:
            assert wr.std() > 0.01 and norm.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_round_trip_is_exact_and_loads_in_transformers(tmp_path, dtype):
    hf_model, hf_dir = tiny_qwen3(tmp_path, dtype=dtype)
    convert(["to-dcp", "--hf", str(hf_dir), "--flavor", FLAVOR, "--out", str(tmp_path / "dcp")])
    out = tmp_path / "back"
    convert(["to-hf", "--dcp", str(tmp_path / "dcp"), "--flavor", FLAVOR, "--out", str(out),
             "--dtype", str(dtype)[6:], "--tokenizer", EMBEDDED_TOKENIZER])
    original, exported = load_file(hf_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(exported) == set(original)
    for name in original:
        assert exported[name].dtype == dtype
        assert torch.equal(exported[name], original[name]), name
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").to(dtype).eval()
    assert type(reloaded).__name__ == "Qwen3ForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(TOKENS).logits, hf_model(TOKENS).logits, rtol=0, atol=0)
    assert "softmax" in (out / "README.md").read_text()


def test_parallax_export_names_its_probe_and_round_trips(tmp_path, capsys):
    _, hf_dir = tiny_qwen3(tmp_path)
    flavor = "debug-parallax"
    convert(["to-dcp", "--hf", str(hf_dir), "--flavor", flavor, "--out", str(tmp_path / "dcp"),
             "--probe-start", "zero-norm"])
    assert "probe start 'zero-norm'" in capsys.readouterr().out  # a Qwen3 checkpoint has no probe: started here
    out = tmp_path / "parallax_hf"
    convert(["to-hf", "--dcp", str(tmp_path / "dcp"), "--flavor", flavor, "--out", str(out), "--dtype", "float32",
             "--tokenizer", EMBEDDED_TOKENIZER])
    tensors = load_file(out / "model.safetensors")
    n_layers = FLAVORS[flavor].n_layers
    for i in range(n_layers):
        assert f"model.layers.{i}.self_attn.r_proj.weight" in tensors
        assert f"model.layers.{i}.self_attn.r_norm.weight" in tensors
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "parallax_qwen3" and config["parallax"]["probe_norm"] is True
    assert "Parallax" in (out / "README.md").read_text()
    with pytest.raises((ValueError, KeyError)):  # transformers must not load it as plain Qwen3
        transformers.AutoModelForCausalLM.from_pretrained(out)
    # its probe settings are checked against the flavor's: no tensor shape would reveal probe_rope
    config["parallax"]["probe_rope"] = False
    (out / "config.json").write_text(json.dumps(config))
    _fails(["to-dcp", "--hf", str(out), "--flavor", flavor, "--out", str(tmp_path / "bad")], "parallax.probe_rope = False")
    _fails(["to-dcp", "--hf", str(out), "--flavor", "debug-transformer", "--out", str(tmp_path / "bad")],
           "is a Parallax checkpoint")
    config["parallax"]["probe_rope"] = True
    (out / "config.json").write_text(json.dumps(config))
    # back to DCP: the probe tensors are read, not re-initialised
    capsys.readouterr()
    convert(["to-dcp", "--hf", str(out), "--flavor", flavor, "--out", str(tmp_path / "dcp2")])
    assert "probe from the checkpoint" in capsys.readouterr().out
    first = load_model_dcp(tmp_path / "dcp", FLAVORS[flavor])
    second = load_model_dcp(tmp_path / "dcp2", FLAVORS[flavor])
    for name in first:
        assert torch.equal(first[name], second[name]), name


def _fails(argv, *needles):
    with pytest.raises(SystemExit) as info:
        convert(argv)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


def test_flavor_mismatch_names_the_config_key(tmp_path):
    _, hf_dir = tiny_qwen3(tmp_path)
    _fails(["to-dcp", "--hf", str(hf_dir), "--flavor", "0.6B-transformer", "--out", str(tmp_path / "x")],
           "hidden_size=256", "dim=1024", "vocab_size")
    _fails(["to-dcp", "--hf", str(hf_dir), "--flavor", "nope", "--out", str(tmp_path / "x")], "--flavor 'nope'")
    config = json.loads((hf_dir / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (hf_dir / "config.json").write_text(json.dumps(config))
    _fails(["to-dcp", "--hf", str(hf_dir), "--flavor", FLAVOR, "--out", str(tmp_path / "x")], "rope scaling")
    assert not (tmp_path / "x").exists()


def test_missing_extra_and_odd_dtype_tensors_are_named(tmp_path):
    _, hf_dir = tiny_qwen3(tmp_path)
    original = load_file(hf_dir / "model.safetensors")
    cases = {
        "missing": ({k: v for k, v in original.items() if k != "model.layers.2.self_attn.k_proj.weight"},
                    "model.layers.2.self_attn.k_proj.weight"),
        "extra": ({**original, "model.layers.0.self_attn.q_proj.bias": torch.zeros(256)},
                  "model.layers.0.self_attn.q_proj.bias"),
        "dtype": ({**original, "model.norm.weight": original["model.norm.weight"].to(torch.int32)},
                  "model.norm.weight"),
        "shape": ({**original, "model.layers.1.mlp.up_proj.weight": torch.zeros(100, 256)},
                  "model.layers.1.mlp.up_proj.weight"),
    }
    for case, (state, needle) in cases.items():
        save_file(state, str(hf_dir / "model.safetensors"))
        _fails(["to-dcp", "--hf", str(hf_dir), "--flavor", FLAVOR, "--out", str(tmp_path / case)], needle)
        assert not (tmp_path / case).exists(), f"{case}: a partial checkpoint was written"
    # probe tensors in a softmax flavor are not silently dropped
    save_file({**original, "model.layers.0.self_attn.r_proj.weight": torch.zeros(256, 256)},
              str(hf_dir / "model.safetensors"))
    _fails(["to-dcp", "--hf", str(hf_dir), "--flavor", FLAVOR, "--out", str(tmp_path / "probe")],
           "layers.0.attention.wr.weight")


def test_bad_dcp_paths_are_clear_errors(tmp_path):
    _, hf_dir = tiny_qwen3(tmp_path)
    convert(["to-dcp", "--hf", str(hf_dir), "--flavor", FLAVOR, "--out", str(tmp_path / "ckpt" / "step-5")])
    tok = ["--tokenizer", EMBEDDED_TOKENIZER]
    _fails(["to-hf", "--dcp", str(tmp_path / "ckpt"), "--flavor", FLAVOR, "--out", str(tmp_path / "o"), *tok],
           "no .metadata", "step-5")
    _fails(["to-hf", "--dcp", str(tmp_path / "ckpt" / "step-5"), "--flavor", "debug-parallax",
            "--out", str(tmp_path / "o"), *tok], "layers.0.attention.wr.weight")
    _fails(["to-dcp", "--hf", str(hf_dir), "--flavor", FLAVOR, "--out", str(tmp_path / "ckpt" / "step-5")],
           "not empty")
    _fails(["to-dcp", "--hf", str(tmp_path), "--flavor", FLAVOR, "--out", str(tmp_path / "y")], "config.json")


def test_export_carries_the_run_tokenizers_ids_and_files_and_loads_in_transformers(tmp_path):
    """The debug tokenizer (2,048 tokens, EOS '<|endoftext|>' = 0), not Qwen3's 151645: config.json,
    generation_config.json and the exported tokenizer agree, so generation can stop."""
    _, hf_dir = tiny_qwen3(tmp_path)
    convert(["to-dcp", "--hf", str(hf_dir), "--flavor", FLAVOR, "--out", str(tmp_path / "dcp")])
    out = tmp_path / "export"
    convert(["to-hf", "--dcp", str(tmp_path / "dcp"), "--flavor", FLAVOR, "--out", str(out), "--dtype", "float32",
             "--tokenizer", EMBEDDED_TOKENIZER, "--export-tokenizer"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    eos = json.loads((out / "config.json").read_text())["eos_token_id"]
    assert eos == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>") == 0
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.bos_token_id is None and tokenizer.bos_token_id is None
    assert "eos id 0" in (out / "README.md").read_text()


def test_to_hf_refuses_a_non_empty_folder_and_a_wrong_tokenizer(tmp_path):
    _, hf_dir = tiny_qwen3(tmp_path)
    convert(["to-dcp", "--hf", str(hf_dir), "--flavor", FLAVOR, "--out", str(tmp_path / "dcp")])
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    base = ["to-hf", "--dcp", str(tmp_path / "dcp"), "--flavor", FLAVOR, "--tokenizer", EMBEDDED_TOKENIZER]
    _fails([*base, "--out", str(out)], "not empty")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    big = tmp_path / "big_tokenizer"  # a tokenizer with more tokens than the flavor's embedding
    big.mkdir()
    tok = json.loads((Path(EMBEDDED_TOKENIZER) / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab.update({f"extra{i}": len(vocab) + i for i in range(100)})
    (big / "tokenizer.json").write_text(json.dumps(tok))
    _fails(["to-hf", "--dcp", str(tmp_path / "dcp"), "--flavor", FLAVOR, "--tokenizer", str(big),
            "--out", str(tmp_path / "o2")], "vocab_size 2048")
    assert not (tmp_path / "o2").exists()
