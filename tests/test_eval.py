"""Evaluation: held-out perplexity, diagnostics, run plots."""

import json
import math
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "debug_cpu.toml"


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
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["perplexity"] == pytest.approx(2048, rel=1e-5) and written["data_sha256"] == result.data_sha256
    # the digest names the evaluated tokens: the same windows give the same one, fewer windows another
    again = main(["--config", str(CONFIG), "--checkpoint", str(tmp_path / "step-1"), "--seq-len", "64",
                  "--batch-size", "3", "--max-batches", "2", "--device", "cpu"])
    fewer = main(["--config", str(CONFIG), "--checkpoint", str(tmp_path / "step-1"), "--seq-len", "64",
                  "--batch-size", "3", "--max-batches", "1", "--device", "cpu"])
    assert len(result.data_sha256) == 64 and again.data_sha256 == result.data_sha256 != fewer.data_sha256


def test_shard_perplexity_is_the_token_weighted_mean_over_every_window(tmp_path, debug_checkpoint):
    from eval.perplexity import main
    from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN
    from parallax_titan.data.prepare import prepare
    from parallax_titan.data.shards import ShardSplit

    path, model = debug_checkpoint
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
    # without a data option: what the run's [validation] reads, the training shards' held-out split
    followed = main(["--config", str(CONFIG), "--checkpoint", str(path), "--seq-len", str(seq), "--batch-size", "5",
                     "--device", "cpu", "--", "--training.dataset_path", str(shards)])
    assert followed.data_sha256 == result.data_sha256 and followed.loss == result.loss


def test_perplexity_refuses_to_score_the_training_stream(tmp_path, debug_checkpoint):
    """As the trainer: a validation dataset whose default source is the training data itself is an error."""
    from eval.perplexity import main

    path, _ = debug_checkpoint
    with pytest.raises(SystemExit, match="would read the training data itself"):
        main(["--config", str(CONFIG), "--checkpoint", str(path), "--device", "cpu", "--",
              "--training.dataset", "embedded_en", "--validation.dataset", "embedded_en"])


def test_perplexity_bad_checkpoint_is_a_clear_error(tmp_path):
    from eval.perplexity import main

    with pytest.raises(SystemExit, match="no .metadata"):
        main(["--config", str(CONFIG), "--checkpoint", str(tmp_path), "--device", "cpu"])


# --- diagnostics --------------------------------------------------------------------------------

def test_attention_stats_match_a_hand_computation():
    """One head, D = 1, two tokens. Query 1: w = (1/4, 3/4), t = (0, 6), tbar = 4.5, so
    alpha = (1/4 * 5.5, 3/4 * (1 + 4.5 - 6)) = (1.375, -0.375); query 0 sees only itself."""
    from parallax_titan.diagnostics import attention_stats

    q = torch.tensor([[[0.0], [math.log(3)]]])
    k = torch.tensor([[[0.0], [1.0]]])
    v = torch.tensor([[[1.0], [0.0]]])
    r = torch.tensor([[[5.0], [6.0]]])
    stats = attention_stats(q, k, v, r, scale=1.0)
    a = torch.tensor([1.0, 0.25])
    o = torch.tensor([1.0, 1.375])
    assert stats["cor"] == pytest.approx(float((o - a).norm() / a.norm()), rel=1e-6)
    assert stats["sink"] == pytest.approx(0.25)
    assert stats["entropy"] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / 2, rel=1e-6)
    assert stats["neg_frac"] == pytest.approx(1 / 3)
    assert stats["alpha_max"] == pytest.approx(1.375)
    softmax = attention_stats(q, k, v, None, scale=1.0)
    assert softmax["cor"] == 0 and softmax["neg_frac"] == 0 and softmax["sink"] == stats["sink"]


def _stable_rank(m: torch.Tensor) -> float:
    """||m||_F^2 / ||m||_2^2 from a direct SVD."""
    s = torch.linalg.svdvals(m.double())
    return float((s**2).sum() / s.max() ** 2)


def test_stable_ranks_match_direct_svds():
    from parallax_titan.diagnostics import batched_stable_ranks, weight_stats

    g = torch.Generator().manual_seed(0)
    left, right = torch.randn(3, 8, 40, generator=g), torch.randn(3, 8, 40, generator=g)
    expected = torch.tensor([_stable_rank(left[h].T @ right[h]) for h in range(3)], dtype=torch.float64)

    def circuit(left, right):  # per head, the stable rank of left_h^T right_h from the d x d Grams
        return batched_stable_ranks([(left @ left.transpose(-1, -2), right @ right.transpose(-1, -2))])[0]

    torch.testing.assert_close(circuit(left.double(), right.double()), expected)
    torch.testing.assert_close(circuit(left, right).double(), expected, rtol=1e-4, atol=0)
    assert float(batched_stable_ranks([(torch.diag(torch.tensor([16.0, 9.0]))[None], None)])[0]) == pytest.approx(25 / 16)
    # a rank-one W_R has stable rank one in every head
    wr = torch.randn(4 * 8, 1, generator=g) @ torch.randn(1, 40, generator=g)
    wq, wk, wv = torch.randn(32, 40, generator=g), torch.randn(16, 40, generator=g), torch.randn(16, 40, generator=g)
    wo = torch.randn(40, 32, generator=g)
    stats = weight_stats(wq, wk, wv, wo, wr, n_heads=4, n_kv_heads=2)
    assert stats["sr_wr"] == pytest.approx(1.0, rel=1e-5) and stats["sr_rk"] == pytest.approx(1.0, rel=1e-5)
    assert stats["sr_wq"] > 1.0 and _stable_rank(wq[8:16]) <= 8
    assert stats["sr_ov"] >= 1.0 and _stable_rank(wo[:, :8] @ wv[:8]) >= 1.0


def test_model_weight_stats_in_one_batch_equal_direct_svds_per_layer():
    """The model's stable ranks come from one power iteration over every layer and statistic at once;
    each must equal its own direct computation."""
    from dataclasses import replace

    from parallax_titan.diagnostics import model_weight_stats
    from parallax_titan.model.flavors import FLAVORS
    from parallax_titan.model.model import ParallaxQwen3Model

    torch.manual_seed(0)
    model = ParallaxQwen3Model(replace(FLAVORS["debug-parallax"], attention_backend="torch"))
    with torch.no_grad():
        model.init_weights()
        for block in model.layers.values():  # make the layers differ, and W_R (zero at init) nonzero
            for proj in ("wq", "wk", "wv", "wo", "wr"):
                getattr(block.attention, proj).weight.normal_(0, 0.02)
    stats = model_weight_stats(model)
    d = model.model_args.head_dim
    for i, block in model.layers.items():
        attn = block.attention
        per_head = {
            "sr_wq": [attn.wq.weight[h * d:(h + 1) * d] for h in range(attn.wq.weight.shape[0] // d)],
            "sr_wr": [attn.wr.weight[h * d:(h + 1) * d] for h in range(attn.wr.weight.shape[0] // d)],
            "sr_rk": [attn.wr.weight[h * d:(h + 1) * d].T @ attn.wk.weight[(h // 2) * d:(h // 2 + 1) * d]
                      for h in range(attn.wr.weight.shape[0] // d)],
        }
        for name, mats in per_head.items():
            direct = sum(_stable_rank(m) for m in mats) / len(mats)
            assert stats[int(i)][name] == pytest.approx(direct, rel=1e-3), (i, name)


def test_activation_walk_sees_what_the_forward_sees():
    """The diagnostics walk the layers by hand; their per-layer statistics must equal those of the
    q, k, v, r the model's own forward hands to its attention."""
    from dataclasses import replace

    from parallax_titan.diagnostics import attention_stats, model_activation_stats
    from parallax_titan.model.flavors import FLAVORS
    from parallax_titan.model.model import ParallaxQwen3Model

    torch.manual_seed(0)
    model = ParallaxQwen3Model(replace(FLAVORS["debug-parallax"], attention_backend="torch"))
    with torch.no_grad():
        model.init_weights()
    tokens = torch.randint(0, 2048, (1, 40))
    seen = {}

    def hook(i):
        def capture(module, args, kwargs):
            q, k, v, r = args
            seen[i] = attention_stats(q[0], k[0], v[0], r[0], kwargs["scale"])
        return capture

    for i, block in model.layers.items():
        block.attention.inner_attention.register_forward_pre_hook(hook(int(i)), with_kwargs=True)
    with torch.no_grad():
        model(tokens)
    walked = model_activation_stats(model, tokens)
    for i in seen:
        for name, value in seen[i].items():
            assert walked[i][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (i, name)
    assert all(walked[i]["cor"] > 0 for i in walked)


def test_diagnose_script_prints_every_layer(debug_checkpoint, tmp_path, capsys):
    from scripts.diagnose import main

    path, _ = debug_checkpoint
    stats = main(["--config", str(CONFIG), "--checkpoint", str(path), "--tokens", "64", "--device", "cpu",
                  "--json", str(tmp_path / "d.json")])
    out = capsys.readouterr().out
    assert sorted(stats) == [0, 1, 2, 3] and out.count("\n| ") >= 5
    assert all(0 < stats[i]["sr_wr"] <= 64 for i in stats)
    # by default the probe fits the model's RoPE table (the debug run's seq_len, 256); longer is a clear error
    main(["--config", str(CONFIG), "--checkpoint", str(path), "--device", "cpu", "--json", str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text())["tokens"] == 256
    with pytest.raises(SystemExit, match="--tokens 300 exceeds the model's max_seq_len 256"):
        main(["--config", str(CONFIG), "--checkpoint", str(path), "--tokens", "300", "--device", "cpu"])


# --- run plots ----------------------------------------------------------------------------------

def _synthetic_run(folder, offset, slope=1.0):
    import json

    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for step in range(1, 101):
            record = {"step": step, "tokens": step * 1000, "loss_metrics/global_avg_loss": 8 - slope * math.log(step) + offset}
            if step % 20 == 0:
                record.update({f"diagnostics/cor/layer{i}": offset + i for i in range(4)})
            f.write(json.dumps(record) + "\n")
            if step % 25 == 0:
                f.write(json.dumps({"step": step, "tokens": step * 1000, "validation_metrics/loss": 8.2 - math.log(step) + offset}) + "\n")


def test_plot_runs_draws_png_and_svg_from_jsonl_and_tensorboard(tmp_path):
    import xml.etree.ElementTree as ET

    from matplotlib.image import imread
    from torch.utils.tensorboard import SummaryWriter

    from scripts.plot_runs import layer_values, load_run, main

    _synthetic_run(tmp_path / "a", 0.0)
    _synthetic_run(tmp_path / "b", -0.1)
    tb = tmp_path / "c" / "tb"
    writer = SummaryWriter(str(tb))
    for step in range(1, 51):
        writer.add_scalar("loss_metrics/global_avg_loss", 8 - math.log(step) + 0.05, step)
    writer.close()
    paths = main([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"), "--labels", "T", "P", "TB",
                  "--baseline", "T", "--tokens-per-step", "1000", "--out", str(tmp_path / "plots" / "cmp")])
    png, svg = paths
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not blank
    text = "".join(ET.parse(svg).getroot().itertext())
    assert "difference to T" in text and "cor per layer" in text
    run = load_run(tmp_path / "c", "TB", 1000)
    x, _ = run.series["loss_metrics/global_avg_loss"]
    assert x[0] == 1000 and x[-1] == 50_000
    assert layer_values(load_run(tmp_path / "b", "P", None), "cor") == ([0, 1, 2, 3], [-0.1, 0.9, 1.9, 2.9])
    with pytest.raises(SystemExit, match="--baseline 'X'"):
        main([str(tmp_path / "a"), "--baseline", "X", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--tokens-per-step"):
        main([str(tmp_path / "c"), "--out", str(tmp_path / "x")])


def test_plot_sweep_tables_and_draws_each_configs_loss_against_the_swept_value(tmp_path):
    """Folders <config>/<key>=<value> with perplexity.json: one table row per config, its best in bold, a best
    at the end of the values it ran flagged; a link stands in for a run trained outside the sweep."""
    import os
    import xml.etree.ElementTree as ET

    from scripts.plot_sweep import main

    def run(config, value, loss, curve=True):
        folder = tmp_path / config / f"optimizer.lr={value}"
        folder.mkdir(parents=True)
        (folder / "perplexity.json").write_text(json.dumps({"loss": loss, "perplexity": math.exp(loss)}))
        if curve:
            (folder / "metrics.jsonl").write_text("".join(
                json.dumps({"step": s, "tokens": s * 100, "validation_metrics/loss": loss + 10 / s,
                            "diagnostics/cor/mean": loss * s}) + "\n" for s in (1, 5, 10)))
        return folder

    for value, loss in (("1e-3", 3.0), ("1e-2", 2.7)):
        run("transformer", value, loss)
    outside = run("elsewhere", "any", 2.5)
    os.symlink(outside, tmp_path / "transformer" / "optimizer.lr=3e-3")
    for value, loss in (("1e-2", 2.4), ("1e-3", 2.6), ("3e-2", 2.9)):
        run("parallax", value, loss, curve=value != "1e-2")
    folders = sorted((tmp_path / "transformer").iterdir()) + sorted((tmp_path / "parallax").iterdir())
    table = main([*map(str, folders), "--out", str(tmp_path / "sweep"), "--title", "lr sweep"]).splitlines()
    assert table[0] == "| config \\ optimizer.lr | 1e-3 | 3e-3 | 1e-2 | 3e-2 | best | at the sweep's end |"
    assert table[2] == "| transformer | 3.0000 | **2.5000** | 2.7000 |  | 3e-3 | no |"
    assert table[3] == "| parallax | 2.6000 |  | **2.4000** | 2.9000 | 1e-2 | no |"
    cor = main([*map(str, folders), "--out", str(tmp_path / "diagnostics"), "--diagnostics", "cor"]).split("\n\n")[1]
    assert cor.splitlines()[0] == "| cor (layer mean, last logged) \\ optimizer.lr | 1e-3 | 3e-3 | 1e-2 | 3e-2 |"
    assert cor.splitlines()[2:] == ["| transformer | 30 | 25 | 27 |  |",  # the last logged value (step 10)
                                    "| parallax | 26 |  |  | 29 |"]  # parallax at 1e-2 logged no metrics
    svg = "".join(ET.parse(tmp_path / "sweep.svg").getroot().itertext())
    # the right panel: the best run's held-out curve where it has one (parallax's best has none)
    assert "transformer at optimizer.lr=3e-3" in svg and "parallax at" not in svg and "lr sweep" in svg
    assert (tmp_path / "sweep.png").stat().st_size > 10_000

    edge = main([*map(str, folders[3:]), str(run("parallax", "1e-1", 2.3)), "--out", str(tmp_path / "edge")])
    assert edge.splitlines()[2].endswith("| **2.3000** | 1e-1 | yes |")  # best at the largest value it ran
    for bad, message in ((outside.parent, "named <section.key>=<value>"),
                         (tmp_path / "t" / "optimizer.lr=1e-4", "perplexity.json: not found")):
        with pytest.raises(SystemExit, match=message):
            main([str(bad), "--out", str(tmp_path / "x")])
    wd = tmp_path / "transformer" / "optimizer.weight_decay=0.1"
    wd.mkdir()
    (wd / "perplexity.json").write_text(json.dumps({"loss": 2.0}))
    with pytest.raises(SystemExit, match="different keys"):
        main([str(folders[0]), str(wd), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="the same config and value twice"):
        main([str(folders[0]), str(folders[0]), "--out", str(tmp_path / "x")])


def test_plot_sweep_gives_seeds_a_mean_and_spread_not_a_best(tmp_path):
    """A seed sweep (<config>/debug.seed=<n>) repeats one setting: the table gives each config's mean and
    spread, and the right panel draws every seed's curve, not a 'best' seed's."""
    import xml.etree.ElementTree as ET

    from scripts.plot_sweep import main

    folders = []
    for config, losses in (("transformer", (3.0, 3.2, 3.1)), ("parallax", (2.9, 2.8))):
        for seed, loss in zip((1, 2, 3), losses):
            folder = tmp_path / config / f"debug.seed={seed}"
            folder.mkdir(parents=True)
            (folder / "perplexity.json").write_text(json.dumps({"loss": loss}))
            (folder / "metrics.jsonl").write_text("".join(
                json.dumps({"step": s, "tokens": s * 100, "validation_metrics/loss": loss + 1 / s}) + "\n" for s in (1, 2)))
            folders.append(str(folder))
    table = main([*folders, "--out", str(tmp_path / "seeds")]).splitlines()
    assert table[0] == "| config \\ debug.seed | 1 | 2 | 3 | mean | spread (max - min) |"
    assert table[2] == "| transformer | 3.0000 | 3.2000 | 3.1000 | 3.1000 | 0.2000 |"
    assert table[3] == "| parallax | 2.9000 | 2.8000 |  | 2.8500 | 0.1000 |"
    svg = "".join(ET.parse(tmp_path / "seeds.svg").getroot().itertext())
    assert all(f"{c} at debug.seed={n}" in svg for c, n in (("transformer", 1), ("transformer", 3), ("parallax", 2)))
    assert "best" not in svg


def test_plot_sweep_warns_when_runs_saw_different_held_out_data(tmp_path):
    """Runs evaluated on other held-out data (a rebuilt corpus: another data_sha256, or in older files another
    token count) are named in a note under the table; runs that agree get none."""
    from scripts.plot_sweep import main

    def run(config, lr, held_out):
        folder = tmp_path / config / f"optimizer.lr={lr}"
        folder.mkdir(parents=True)
        (folder / "perplexity.json").write_text(json.dumps({"loss": 3.0, "tokens": 1000, **held_out}))
        return str(folder)

    same = [run("t", "1e-3", {"data_sha256": "a" * 64}), run("p", "1e-3", {"data_sha256": "a" * 64})]
    assert "note:" not in main([*same, "--out", str(tmp_path / "same")])
    other = run("t", "3e-3", {"data_sha256": "b" * 64})
    text = main([*same, other, "--out", str(tmp_path / "mixed")])
    assert "different held-out data" in text and f"{'b' * 16}: t 3e-3" in text and f"{'a' * 16}: t 1e-3, p 1e-3" in text
    # older files have no digest: one that evaluated as many tokens as the digest's runs counts as theirs,
    # another count is other data, and a count two digests share cannot be placed, so it stands alone
    older = run("p", "3e-3", {})
    assert "note:" not in main([*same, older, "--out", str(tmp_path / "older")])
    shorter = run("p", "5e-3", {"tokens": 900})
    assert "900 tokens: p 5e-3" in main([*same, older, shorter, "--out", str(tmp_path / "shorter")])
    assert "1,000 tokens: p 3e-3" in main([*same, other, older, "--out", str(tmp_path / "ambiguous")])


def test_diagnostics_interval_must_be_a_multiple_of_the_log_frequency():
    from types import SimpleNamespace

    from parallax_titan.metrics import build_metrics_processor

    config = SimpleNamespace(diagnostics=SimpleNamespace(interval=7), metrics=SimpleNamespace(log_freq=5))
    with pytest.raises(ValueError, match=r"\[diagnostics\] interval = 7 must be a multiple of \[metrics\] log_freq = 5"):
        build_metrics_processor(config, parallel_dims=None)


def test_plot_mad_draws_the_tables_scores_over_common_runs(tmp_path):
    from matplotlib.image import imread

    from scripts.plot_mad import main

    def rec(attention, task, setting, acc, lr=1e-3):
        return {"attention": attention, "optimizer": "adamw", "task": task, "setting": setting, "lr": lr,
                "weight_decay": 0.0, "epochs": 10, "test_acc": acc}

    records = [rec("softmax", "in-context-recall", "a", 0.4), rec("parallax", "in-context-recall", "a", 0.8),
               rec("softmax", "in-context-recall", "b", 0.2), rec("parallax", "in-context-recall", "b", 0.6),
               rec("softmax", "memorization", "m", 0.9), rec("parallax", "memorization", "m", 0.7),
               rec("softmax", "memorization", "m", 0.95, lr=5e-4)]  # parallax lacks it: left out
    jsonl = tmp_path / "mad.jsonl"
    jsonl.write_text("\n".join(map(json.dumps, records)) + "\n")
    drawn = main([str(jsonl), "--out", str(tmp_path / "mad.png")])
    assert drawn["Transformer (adamw)"] == pytest.approx({"in-context-recall": 0.3, "memorization": 0.9,
                                                          "average": 0.6})
    assert drawn["Parallax (adamw)"] == pytest.approx({"in-context-recall": 0.7, "memorization": 0.7, "average": 0.7})
    image = imread(tmp_path / "mad.png")
    assert image.ndim == 3 and image[..., :3].std() > 0.05
    muon = [dict(r, optimizer="muon", test_acc=r["test_acc"] / 2) for r in records[:2]]
    jsonl.write_text("\n".join(map(json.dumps, records + muon)) + "\n")
    assert set(main([str(jsonl), "--out", str(tmp_path / "both.png")])) == {
        "Transformer (adamw)", "Parallax (adamw)", "Transformer (muon)", "Parallax (muon)"}
    drawn = main([str(jsonl), "--out", str(tmp_path / "muon.png"), "--optimizer", "muon"])
    assert set(drawn) == {"Transformer (muon)", "Parallax (muon)"}
    assert drawn["Transformer (muon)"] == pytest.approx({"in-context-recall": 0.2, "average": 0.2})
    assert drawn["Parallax (muon)"] == pytest.approx({"in-context-recall": 0.4, "average": 0.4})
    with pytest.raises(SystemExit):
        main([str(jsonl), "--out", str(tmp_path / "x.png"), "--optimizer", "sgd"])
    # --by-lr: a panel per setting, each model's best accuracy at each lr, over the runs both models have
    drawn = main([str(jsonl), "--out", str(tmp_path / "lr.png"), "--optimizer", "adamw", "--by-lr"])
    assert drawn == {"a": {"Transformer (adamw)": {1e-3: 0.4}, "Parallax (adamw)": {1e-3: 0.8}},
                     "b": {"Transformer (adamw)": {1e-3: 0.2}, "Parallax (adamw)": {1e-3: 0.6}},
                     "m": {"Transformer (adamw)": {1e-3: 0.9}, "Parallax (adamw)": {1e-3: 0.7}}}
    assert imread(tmp_path / "lr.png")[..., :3].std() > 0.05
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "x.png")])
