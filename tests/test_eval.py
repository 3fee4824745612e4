"""Evaluation: held-out perplexity, diagnostics, run plots."""

import math
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "debug_cpu.toml"


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    from parallax_titan.inference import load_model
    from parallax_titan.model.checkpoint import save_model_dcp

    torch.manual_seed(0)
    loaded = load_model(CONFIG, None)
    path = tmp_path_factory.mktemp("ckpt") / "step-1"
    save_model_dcp(loaded.model.state_dict(), path)
    return path, loaded.model


def test_uniform_model_has_perplexity_equal_to_the_vocabulary(tmp_path):
    """A model whose logits are all zero predicts uniformly: perplexity is exactly the vocab size."""
    from eval.perplexity import main
    from parallax_titan.inference import load_model
    from parallax_titan.model.checkpoint import save_model_dcp

    loaded = load_model(CONFIG, None)
    state = {k: (torch.zeros_like(v) if k in ("output.weight", "tok_embeddings.weight") else v)
             for k, v in loaded.model.state_dict().items()}
    save_model_dcp(state, tmp_path / "step-1")
    result = main(["--config", str(CONFIG), "--checkpoint", str(tmp_path / "step-1"), "--seq-len", "64",
                   "--batch-size", "3", "--max-batches", "2", "--device", "cpu", "--json", str(tmp_path / "p.json")])
    assert result.tokens == 6 * 64
    assert result.perplexity == pytest.approx(2048, rel=1e-5)
    assert '"perplexity"' in (tmp_path / "p.json").read_text()


def test_shard_perplexity_is_the_token_weighted_mean_over_every_window(tmp_path, random_checkpoint):
    from eval.perplexity import main
    from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN
    from parallax_titan.data.prepare import prepare
    from parallax_titan.data.shards import ShardSplit

    path, model = random_checkpoint
    shards = tmp_path / "shards"
    prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, shards, validation_permille=20, shard_tokens=200_000)
    seq = 128
    result = main(["--config", str(CONFIG), "--checkpoint", str(path), "--dataset-path", str(shards),
                   "--seq-len", str(seq), "--batch-size", "5", "--device", "cpu"])
    # direct: every non-overlapping window of the validation split, one at a time
    split = ShardSplit.open(str(shards), "validation")
    windows = (split.num_tokens - 1) // seq
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            tokens = torch.from_numpy(split.read(w * seq, seq + 1).astype("int64"))
            logits = model(tokens[None, :-1])[0]
            nll += float(torch.nn.functional.cross_entropy(logits, tokens[1:], reduction="sum"))
            count += seq
    assert result.tokens == count and windows % 5 != 0  # a partial last batch is counted too
    assert result.loss == pytest.approx(nll / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_perplexity_bad_checkpoint_is_a_clear_error(tmp_path):
    from eval.perplexity import main

    with pytest.raises(SystemExit, match="no .metadata"):
        main(["--config", str(CONFIG), "--checkpoint", str(tmp_path), "--device", "cpu"])
