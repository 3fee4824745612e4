"""MAD task generators (documented distributions, seeded) and the training/table path at toy size."""

import json
from dataclasses import replace

import numpy as np
import pytest

from eval.mad.tasks import IGNORE, PROTOCOL, all_settings, make_dataset, memorization_map


def small(task, **overrides):
    return replace(PROTOCOL[task].baseline, num_train_examples=64, num_test_examples=64, **overrides)


def test_protocol_has_mads_66_settings():
    settings = all_settings()
    assert len(settings) == 66 and len({s.name for s in settings}) == 66
    counts = {t: sum(s.task == t for s in settings) for t in PROTOCOL}
    assert counts == {"in-context-recall": 11, "fuzzy-in-context-recall": 11, "noisy-in-context-recall": 14,
                      "selective-copying": 13, "compression": 11, "memorization": 6}
    with pytest.raises(ValueError, match="unknown MAD tasks"):
        all_settings(["recall"])


@pytest.mark.parametrize("task", list(PROTOCOL))
def test_generators_are_seeded_and_stay_in_the_vocabulary(task):
    s = small(task)
    a, b, c = make_dataset(s, 1), make_dataset(s, 1), make_dataset(s, 2)
    for split in ("train", "test"):
        x, y = a[split]
        assert x.shape == y.shape and x.dtype == np.int64
        assert x.min() >= 0 and x.max() < s.vocab_size
        assert ((y == IGNORE) | ((y >= 0) & (y < s.vocab_size))).all()
        assert np.array_equal(x, b[split][0]) and np.array_equal(y, b[split][1])
    assert not np.array_equal(a["test"][0], c["test"][0])


@pytest.mark.parametrize("task", ["in-context-recall", "noisy-in-context-recall"])
def test_recall_targets_are_the_value_bound_to_the_key_earlier_in_the_sequence(task):
    s = small(task)
    x, y = make_dataset(s, 0)["test"]
    checked = 0
    for seq, tgt in zip(x, y):
        for i in np.flatnonzero(tgt != IGNORE):
            key = seq[i]
            earlier = [j for j in range(0, i, 2) if seq[j] == key and j + 1 < i]
            assert earlier, "a probed key must have appeared before"
            assert tgt[i] == seq[earlier[-1] + 1]
            checked += 1
        assert tgt[-1] != IGNORE  # the final probe
    assert checked > 64 * 10
    train_x, train_y = make_dataset(s, 0)["train"]
    assert np.array_equal(train_x[:, 1:], train_y[:, :-1])  # next-token targets in training


def test_noise_fraction_and_vocabularies():
    s = small("noisy-in-context-recall", frac_noise=0.4)
    x, _ = make_dataset(s, 0)["test"]
    usable = s.vocab_size - s.noise_vocab_size
    pairs = x[:, :-1].reshape(len(x), -1, 2)
    noise_pairs = (pairs >= usable).all(-1)
    assert ((pairs >= usable).any(-1) == noise_pairs).all()  # noise comes in whole pairs
    assert noise_pairs.mean() == pytest.approx(0.4, abs=0.03)


def test_selective_copying_targets_are_the_scattered_tokens_in_order():
    s = small("selective-copying")
    x, y = make_dataset(s, 0)["test"]
    blank, copy = s.vocab_size - 2, s.vocab_size - 1
    for seq, tgt in zip(x, y):
        cut = int(np.flatnonzero(seq == copy)[0])
        assert cut == s.seq_len - s.num_tokens_to_copy - 1
        assert np.array_equal(seq[:cut][seq[:cut] != blank], tgt[cut + 1:])
        assert (tgt[: cut + 1] == IGNORE).all() and (seq[cut + 1:] == blank).all()


def test_fuzzy_recall_test_keys_are_the_longest_motif():
    s = small("fuzzy-in-context-recall")
    x, y = make_dataset(s, 0)["test"]
    n_keys = (s.vocab_size - 1) // 2
    for seq, tgt in zip(x, y):
        last_value = np.flatnonzero(tgt != IGNORE)
        run_start = last_value[-1]
        while run_start - 1 in last_value:
            run_start -= 1
        key = seq[run_start - 2: run_start + 1]  # the value's first target sits on the key's last token
        assert (key < n_keys).all() and len(set(key.tolist())) == 3


def test_memorisation_uses_one_fixed_map_and_compression_rebuilds_its_input():
    s = small("memorization")
    kv = memorization_map(s.vocab_size, 0)
    assert len(kv) == (s.vocab_size - 1) // 2 and len(set(kv.values())) == len(kv)
    for split in ("train", "test"):
        x, y = make_dataset(s, 0)[split]
        assert (x[:, 1::2] == s.vocab_size - 1).all()
        assert all(y[i, j] == kv[int(x[i, j - 1])] for i in range(8) for j in range(1, s.seq_len, 2))
    c = small("compression")
    x, y = make_dataset(c, 0)["test"]
    assert np.array_equal(x, y) and (x[:, -1] == c.vocab_size - 1).all()


@pytest.mark.slow
def test_training_and_the_table_at_toy_size(tmp_path):
    from eval.mad.run import main

    out = tmp_path / "mad.jsonl"
    argv = ["--attention", "softmax", "parallax", "--tasks", "in-context-recall", "compression", "--baseline-only",
            "--epochs", "2", "--lrs", "1e-3", "--wds", "0", "--max-train-examples", "256", "--device", "cpu",
            "--out", str(out)]
    text = main(argv)
    lines = out.read_text().splitlines()
    assert len(lines) == 4
    assert "| parallax | adamw |" in text and "| softmax | adamw |" in text and "CR (1)" in text
    assert main(argv) == text and len(out.read_text().splitlines()) == 4  # resumed: nothing re-run
    import json

    assert all(0.0 <= json.loads(line)["test_acc"] <= 1.0 for line in lines)


@pytest.mark.slow
def test_parallel_jobs_give_the_same_results_as_one_process(tmp_path):
    import json

    from eval.mad.run import main

    def results(out, *extra):
        main(["--attention", "softmax", "parallax", "--tasks", "memorization", "--baseline-only", "--epochs", "1",
              "--lrs", "1e-3", "--wds", "0", "0.1", "--max-train-examples", "128", "--device", "cpu",
              "--out", str(out), *extra])
        records = [json.loads(line) for line in out.read_text().splitlines()]
        return {(r["attention"], r["weight_decay"]): (r["test_acc"], r["final_train_loss"]) for r in records}

    one = results(tmp_path / "one.jsonl")
    two = results(tmp_path / "two.jsonl", "--jobs", "2")
    assert len(one) == 4 and one.keys() == two.keys()
    for key in one:
        assert two[key][0] == one[key][0] and two[key][1] == pytest.approx(one[key][1], rel=1e-4), (key, one, two)


def test_muon_trains_a_mad_model():
    from eval.mad.train import MADRun, train_setting

    s = replace(PROTOCOL["memorization"].baseline, num_train_examples=64, num_test_examples=64)
    one, three = (train_setting(s, MADRun(optimizer="muon", epochs=e, lr=2e-2), "cpu", log=lambda *_: None)
                  for e in (1, 3))
    assert three["optimizer"] == "muon" and np.isfinite(three["final_train_loss"])
    assert three["final_train_loss"] < one["final_train_loss"] - 0.5  # same seed: two more epochs learn


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="CUDA graphs need a GPU"))])
def test_compiled_training_gives_the_eager_results(device):
    """torch.compile (with CUDA graphs on a GPU) changes how the step runs, not what it computes."""
    from eval.mad.train import MADRun, train_setting

    s = replace(PROTOCOL["memorization"].baseline, num_train_examples=256, num_test_examples=64)
    runs = [train_setting(s, MADRun(attention="parallax", epochs=2, lr=1e-3, compile=c), device, log=lambda *_: None)
            for c in (False, True)]
    eager, compiled = runs
    assert compiled["compiled"] and not eager["compiled"]
    tol = 1e-3 if device == "cpu" else 2e-2  # bf16 autocast on CUDA: fused kernels round differently
    assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=tol)
    assert abs(compiled["test_acc"] - eager["test_acc"]) <= 0.05  # a near-tied argmax may flip


def test_table_compares_models_on_the_runs_all_of_them_have():
    from eval.mad.run import table

    def rec(attention, setting, lr, acc):
        return {"attention": attention, "optimizer": "adamw", "task": "in-context-recall", "setting": setting,
                "lr": lr, "weight_decay": 0.0, "epochs": 200, "test_acc": acc}

    records = [rec("softmax", "a", 1e-3, 0.5), rec("parallax", "a", 1e-3, 0.7),
               rec("softmax", "a", 5e-4, 0.9),  # parallax has not run this sweep point yet
               rec("softmax", "b", 1e-3, 0.1)]  # nor this setting
    text = table(records)
    assert "| parallax | adamw | 0.700 | 0.700 |" in text and "| softmax | adamw | 0.500 | 0.500 |" in text
    assert "2 runs left out" in text
    # another optimizer's runs in progress leave this comparison as it is, and are compared among themselves
    muon = [dict(rec("softmax", "a", 1e-3, 0.2), optimizer="muon"), dict(rec("parallax", "a", 1e-3, 0.3), optimizer="muon"),
            dict(rec("softmax", "b", 1e-3, 0.4), optimizer="muon")]
    text = table(records + muon)
    assert "| parallax | adamw | 0.700 | 0.700 |" in text and "| softmax | adamw | 0.500 | 0.500 |" in text
    assert "| parallax | muon | 0.300 | 0.300 |" in text and "| softmax | muon | 0.200 | 0.200 |" in text
    assert "3 runs left out" in text
    # setting by setting: a best above, below, or within 0.01 of the other model's
    assert "adamw: parallax's best above softmax's by more than 0.01 in 1 settings, below in 0, within 0.01 in 0" in text
    level = [dict(rec("softmax", "c", 1e-3, 0.5), optimizer="muon"), dict(rec("parallax", "c", 1e-3, 0.505), optimizer="muon"),
             dict(rec("softmax", "d", 1e-3, 0.6), optimizer="muon"), dict(rec("parallax", "d", 1e-3, 0.4), optimizer="muon")]
    assert ("muon: parallax's best above softmax's by more than 0.01 in 1 settings, below in 1, within 0.01 in 1"
            in table(records + muon + level))


def test_the_table_counts_settings_whose_best_run_is_at_the_sweeps_largest_lr():
    """A sweep that stops short of the best lr shows as best runs at its top lr; a tie there does not count."""
    from eval.mad.run import lr_table, main, sweep_edges, table

    def rec(attention, setting, lr, wd, acc):
        return {"attention": attention, "optimizer": "muon", "task": "compression", "setting": setting,
                "lr": lr, "weight_decay": wd, "epochs": 10, "test_acc": acc}

    records = [rec("parallax", "a", 1e-3, 0.0, 0.2), rec("parallax", "a", 5e-3, 0.0, 0.6),  # rising: at the edge
               rec("parallax", "b", 1e-3, 0.0, 1.0), rec("parallax", "b", 5e-3, 0.0, 1.0),  # tied: not
               rec("parallax", "c", 1e-3, 0.0, 0.7), rec("parallax", "c", 1e-3, 0.1, 0.9),  # best over wds...
               rec("parallax", "c", 5e-3, 0.0, 0.8),                                         # ...beats the top lr
               rec("softmax", "a", 1e-3, 0.0, 0.5)]                                          # one lr: not counted
    assert sweep_edges(records) == {("parallax", "muon"): (1, 3)}
    assert "parallax/muon: best run at the sweep's largest lr in 1 of 3 settings" in table(records[:-1])
    text = lr_table(records)
    assert text.splitlines()[0] == "| setting | model | optimizer | lr 0.001 | lr 0.005 |"
    assert "| c | parallax | muon | 0.900 | 0.800 |" in text and "| a | softmax | muon | 0.500 | - |" in text
    with pytest.raises(SystemExit):  # --by-lr prints a table; without --table it would train
        main(["--by-lr", "--out", "unused.jsonl"])


def test_the_table_of_chosen_settings_leaves_the_others_out(tmp_path):
    """--table with --max-seq-len (or --settings, --tasks, --baseline-only) tables only those settings: one
    file's runs read on exactly the settings another file has reached."""
    from eval.mad.run import main

    named = {st.name: st for st in all_settings(["in-context-recall"], baseline_only=False)}
    short, long = named["in-context-recall[baseline]"], named["in-context-recall[seq_len=1024]"]
    out = tmp_path / "runs.jsonl"
    out.write_text("".join(json.dumps({"attention": a, "optimizer": "adamw", "task": "in-context-recall",
                                       "setting": st.name, "lr": 1e-3, "weight_decay": 0.0, "epochs": 10,
                                       "seed": 1, "test_acc": acc}) + "\n"
                           for st, accs in ((short, (0.2, 0.4)), (long, (0.9, 0.6))) for a, acc in zip(("softmax", "parallax"), accs)))
    assert "| parallax | adamw | 0.500 | 0.500 |" in main(["--table", "--out", str(out)])
    text = main(["--table", "--max-seq-len", "256", "--out", str(out)])
    assert "| parallax | adamw | 0.400 | 0.400 |" in text and "| softmax | adamw | 0.200 | 0.200 |" in text
    text = main(["--table", "--settings", long.name, "--out", str(out)])
    assert "| parallax | adamw | 0.600 | 0.600 |" in text and "| softmax | adamw | 0.900 | 0.900 |" in text
    # --optimizer, --lrs, --wds and --epochs, when given, choose the runs: a larger lr's runs, then Muon's
    with out.open("a") as f:
        for a, acc in (("softmax", 1.0), ("parallax", 0.8)):
            for optimizer, lr, score in (("adamw", 5e-3, acc), ("muon", 1e-3, acc / 2)):
                f.write(json.dumps({"attention": a, "optimizer": optimizer, "task": "in-context-recall", "lr": lr,
                                    "setting": short.name, "weight_decay": 0.0, "epochs": 10, "seed": 1,
                                    "test_acc": score}) + "\n")
    text = main(["--table", "--max-seq-len", "256", "--out", str(out)])
    assert "| softmax | adamw | 1.000 | 1.000 |" in text and "| softmax | muon | 0.500 | 0.500 |" in text
    text = main(["--table", "--max-seq-len", "256", "--lrs", "1e-3", "--out", str(out)])
    assert "| softmax | adamw | 0.200 | 0.200 |" in text and "| softmax | muon | 0.500 | 0.500 |" in text
    text = main(["--table", "--max-seq-len", "256", "--optimizer", "adamw", "--out", str(out)])
    assert "| softmax | adamw | 1.000 | 1.000 |" in text and "muon" not in text
    assert "| softmax |" not in main(["--table", "--epochs", "200", "--wds", "0", "--out", str(out)])


def test_plan_keeps_sweep_points_outermost_and_starts_the_costliest_settings_first():
    from eval.mad.run import plan, run_key
    from eval.mad.train import MADRun

    settings = all_settings(["in-context-recall"], baseline_only=False)
    runs = [MADRun(attention=a, lr=lr) for lr in (1e-3, 1e-4) for a in ("softmax", "parallax")]
    done = {("in-context-recall[seq_len=1024]", "parallax", "adamw", 1e-3, 0.0, 200, 12345)}
    pending = plan(settings, runs, done, ["cuda:0", "cuda:1"])
    assert len(pending) == 2 * 2 * len(settings) - 1
    lrs = [run.lr for _, run, _ in pending]
    assert lrs == sorted(lrs, reverse=True)  # every run of the first sweep point before any of the second
    first = [(s, run) for s, run, _ in pending if run.lr == 1e-3]
    costs = [s.num_train_examples * s.seq_len for s, _ in first]
    assert costs == sorted(costs, reverse=True) and first[0][0].seq_len == 1024
    assert (first[0][1].attention, first[1][0].seq_len) == ("softmax", 512)  # parallax's seq 1024 run is done
    keys = {run_key({"setting": s.name, "attention": r.attention, "optimizer": r.optimizer, "lr": r.lr,
                     "weight_decay": r.weight_decay, "epochs": r.epochs, "seed": r.seed}) for s, r, _ in pending}
    assert len(keys) == len(pending) and not keys & done
    assert [d for _, _, d in pending[:3]] == ["cuda:0", "cuda:1", "cuda:0"]


def test_plan_finishes_one_optimizer_before_the_next_starts():
    """With AdamW's later sweep points still pending, no Muon run comes before the last AdamW run, so a
    protocol stopped early has AdamW's table complete first."""
    from eval.mad.run import plan
    from eval.mad.train import MADRun

    settings = all_settings(["in-context-recall"], baseline_only=True)
    runs = [MADRun(attention="softmax", optimizer=o, lr=lr, weight_decay=wd)
            for o in ("adamw", "muon") for lr, wd in ((1e-3, 0.0), (1e-3, 0.1))]
    done = {(settings[0].name, "softmax", "adamw", 1e-3, 0.0, 200, 12345)}
    pending = [(run.optimizer, run.weight_decay) for _, run, _ in plan(settings, runs, done, ["cpu"])]
    assert pending == [("adamw", 0.1), ("muon", 0.0), ("muon", 0.1)]


@pytest.mark.parametrize("task, attention, optimizer", [
    ("memorization", "parallax", "adamw"), ("compression", "softmax", "adamw"),
    ("in-context-recall", "parallax", "adamw"), ("in-context-recall", "parallax", "muon")])
def test_a_batched_sweep_gives_each_run_its_separate_result(task, attention, optimizer):
    """train_sweep trains runs that differ in lr and weight decay as one vmap'd model; each run must end
    exactly where train_setting takes it alone (same init, batches, optimizer; CPU arithmetic)."""
    from eval.mad.train import MADRun, train_setting, train_sweep

    s = replace(PROTOCOL[task].baseline, num_train_examples=64, num_test_examples=64,
                **({"seq_len": 32} if task == "in-context-recall" else {}))
    runs = [MADRun(attention=attention, optimizer=optimizer, epochs=2, lr=1e-3, weight_decay=0.0),
            MADRun(attention=attention, optimizer=optimizer, epochs=2, lr=3e-3, weight_decay=0.1)]
    alone = [train_setting(s, run, "cpu", log=lambda *_: None) for run in runs]
    batched = train_sweep(s, runs, "cpu", log=lambda *_: None)
    assert [r["lr"] for r in batched] == [1e-3, 3e-3] and all(r["batched_runs"] == 2 for r in batched)
    assert alone[0]["final_train_loss"] != alone[1]["final_train_loss"]  # the sweep points do differ
    for a, b in zip(alone, batched):
        assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-6, abs=1e-7)
        assert b["test_acc"] == a["test_acc"]


def test_a_muon_sweep_steps_every_runs_matrices_through_one_muon():
    """One Muon, a param group per run with that run's lr and weight decay (so Newton-Schulz batches across
    runs), and an AdamW per run for the rest; each run's parameters are routed exactly once."""
    from eval.mad.train import MADRun, build_model, build_sweep_optimizers
    from parallax_titan.optim.muon import Muon

    s = replace(PROTOCOL["in-context-recall"].baseline, seq_len=32)
    runs = [MADRun(optimizer="muon", lr=1e-3, weight_decay=0.0), MADRun(optimizer="muon", lr=5e-4, weight_decay=0.1)]
    members = [build_model(s, run) for run in runs]
    optimizers = build_sweep_optimizers(members, runs)
    muons = [o for o in optimizers if isinstance(o, Muon)]
    assert len(muons) == 1 and len(optimizers) == 3
    assert [(g["lr"], g["weight_decay"]) for g in muons[0].param_groups] == [(1e-3, 0.0), (5e-4, 0.1)]
    for member, group, adamw in zip(members, muons[0].param_groups, optimizers[1:]):
        routed = [id(p) for p in group["params"]] + [id(p) for g in adamw.param_groups for p in g["params"]]
        assert sorted(routed) == sorted(id(p) for p in member.parameters())
        assert all(p.ndim == 2 for p in group["params"]) and len(group["params"]) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("attention", ["softmax", "parallax"])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_batched_sweep_on_the_gpu_matches_separate_runs(attention, optimizer):
    """On CUDA (bf16 autocast, cuDNN first for softmax) the batched runs must land where separate runs do,
    to bf16 rounding: SDPA's own vmap rule for cuDNN gave the Transformer wrong gradients on an H200."""
    from eval.mad.train import MADRun, train_setting, train_sweep

    s = replace(PROTOCOL["in-context-recall"].baseline, num_train_examples=1280, num_test_examples=256)
    runs = [MADRun(attention=attention, optimizer=optimizer, epochs=2, lr=lr, weight_decay=0.0, backend="triton")
            for lr in (1e-3, 3e-3)]
    alone = [train_setting(s, run, "cuda", log=lambda *_: None) for run in runs]
    batched = train_sweep(s, runs, "cuda", log=lambda *_: None)
    for a, b in zip(alone, batched):
        assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=2e-2)
        assert abs(b["test_acc"] - a["test_acc"]) < 0.03


def test_a_batched_softmax_sweep_attends_through_the_folding_rule(monkeypatch):
    """The Transformer's attention in a batched sweep is folded_sdpa (SDPA's own vmap rules gave
    non-finite losses on an H200), once per layer and pass, on all members' rows at once."""
    import parallax_kernels.batching as batching
    from eval.mad.train import MAD_LAYERS, MADRun, train_sweep

    rows = []
    folded = batching.folded_sdpa
    monkeypatch.setattr(batching, "folded_sdpa", lambda q, *a, **kw: rows.append(q.shape[0]) or folded(q, *a, **kw))
    s = replace(small("memorization"), num_train_examples=8)
    runs = [MADRun(attention="softmax", epochs=1, batch_size=8, lr=lr) for lr in (1e-3, 3e-3)]
    train_sweep(s, runs, "cpu", log=lambda *_: None)
    assert len(rows) >= MAD_LAYERS and rows[0] == 8  # under vmap a member's batch; folded inside


def test_a_batched_sweep_refuses_runs_that_differ_in_more_than_the_sweep_point():
    from eval.mad.train import MADRun, train_sweep

    with pytest.raises(ValueError, match="attention"):
        train_sweep(small("memorization"), [MADRun(attention="softmax"), MADRun(attention="parallax")], "cpu")
    with pytest.raises(ValueError, match="compile"):
        train_sweep(small("memorization"), [MADRun(compile=True), MADRun(compile=True, lr=1e-3)], "cpu")


@pytest.mark.slow
def test_the_runner_batches_sweeps_and_records_every_run(tmp_path):
    import json

    from eval.mad.run import main

    def results(out, *extra):
        main(["--attention", "softmax", "parallax", "--tasks", "memorization", "--baseline-only", "--epochs", "1",
              "--lrs", "1e-3", "5e-4", "--wds", "0", "0.1", "--max-train-examples", "128", "--device", "cpu",
              "--out", str(out), *extra])
        return {(r["attention"], r["lr"], r["weight_decay"]): (r["test_acc"], r["final_train_loss"])
                for r in map(json.loads, out.read_text().splitlines())}

    alone = results(tmp_path / "alone.jsonl")
    batched = results(tmp_path / "batched.jsonl", "--batch-sweep", "--jobs", "2")
    assert len(alone) == 8 and batched.keys() == alone.keys()
    for key in alone:
        assert batched[key][0] == alone[key][0] and batched[key][1] == pytest.approx(alone[key][1], rel=1e-6)
    with pytest.raises(SystemExit):
        main(["--batch-sweep", "--compile", "--out", str(tmp_path / "x.jsonl")])
    with pytest.raises(SystemExit):
        main(["--batch-max-seq-len", "256", "--out", str(tmp_path / "x.jsonl")])  # without --batch-sweep


def test_batch_sweeps_groups_a_settings_sweep_points_per_model():
    from eval.mad.run import batch_sweeps, plan
    from eval.mad.train import MADRun

    settings = all_settings(["memorization"], baseline_only=False)[:2]
    runs = [MADRun(attention=a, lr=lr) for lr in (1e-3, 1e-4) for a in ("softmax", "parallax")]
    pending = plan(settings, runs, set(), ["cpu"])
    groups = batch_sweeps(pending, ["cuda:0", "cuda:1"])
    assert len(groups) == 4 and sum(len(g[1]) for g in groups) == len(pending) == 8
    for setting, members, _ in groups:
        assert len({(m.attention, m.optimizer) for m in members}) == 1 and [m.lr for m in members] == [1e-3, 1e-4]
    assert [g[2] for g in groups] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert groups[0][0].name == pending[0][0].name  # the costliest setting first, as plan() ordered it


def test_batch_sweeps_keeps_settings_longer_than_the_limit_one_run_a_job():
    from eval.mad.run import batch_sweeps, plan
    from eval.mad.train import MADRun

    icr = all_settings(["in-context-recall"], baseline_only=False)
    settings = [icr[0], next(s for s in icr if s.seq_len == 1024)]
    assert [s.seq_len for s in settings] == [128, 1024]
    runs = [MADRun(attention="parallax", lr=lr) for lr in (1e-3, 1e-4)]
    groups = batch_sweeps(plan(settings, runs, set(), ["cpu"]), ["cpu"], max_seq_len=512)
    sizes = sorted((g[0].seq_len, len(g[1])) for g in groups)
    assert sizes == [(128, 2), (1024, 1), (1024, 1)]
    assert groups[0][0].seq_len == 1024  # still the costliest first


def test_the_runner_runs_only_the_named_settings(tmp_path):
    import json

    from eval.mad.run import main

    out = tmp_path / "runs.jsonl"
    main(["--attention", "softmax", "--tasks", "memorization", "--settings", "memorization[vocab_size=512]",
          "--epochs", "1", "--lrs", "1e-3", "--wds", "0", "--max-train-examples", "16", "--device", "cpu",
          "--out", str(out)])
    names = [json.loads(line)["setting"] for line in out.read_text().splitlines()]
    assert len(names) == 1 and names[0].startswith("memorization[vocab_size=512")  # (+ the example cap)
    with pytest.raises(SystemExit):
        main(["--tasks", "memorization", "--settings", "memorization[vocab_size=3]", "--out", str(out)])


def test_the_runner_runs_only_settings_up_to_max_seq_len(tmp_path):
    from eval.mad.run import main
    from eval.mad.tasks import all_settings

    short = [st for st in all_settings(["in-context-recall"], False) if st.seq_len <= 256]
    assert 0 < len(short) < len(all_settings(["in-context-recall"], False))  # the filter has work to do
    text = main(["--attention", "softmax", "--tasks", "in-context-recall", "--max-seq-len", "256", "--lrs", "1e-3",
                 "--wds", "0", "--estimate", "--out", str(tmp_path / "runs.jsonl")])
    assert text.startswith(f"{len(short)} runs pending")


def test_estimate_prices_pending_runs_from_the_recorded_seconds(tmp_path):
    import json

    from eval.mad.run import main

    out = tmp_path / "runs.jsonl"
    done = {"setting": "memorization[baseline]", "task": "memorization", "attention": "softmax", "optimizer": "adamw",
            "lr": 1e-3, "weight_decay": 0.0, "epochs": 10, "seed": 12345, "test_acc": 0.5, "seconds": 60.0}
    out.write_text(json.dumps(done) + "\n")
    text = main(["--attention", "softmax", "--tasks", "memorization", "--settings", "memorization[baseline]",
                 "memorization[vocab_size=512]", "--lrs", "1e-3", "5e-4", "--wds", "0", "--epochs", "20",
                 "--device", "cpu", "--estimate", "--out", str(out)])
    # 6 s an epoch recorded for the baseline: 120 s for each of its 20-epoch runs; vocab 512 has no record
    assert "4 runs pending" in text
    assert "adamw lr=0.001 wd=0: 2 runs, about 2 run-minutes (1 with no record to go by)" in text
    assert "adamw lr=0.0005 wd=0: 2 runs, about 2 run-minutes (1 with no record to go by)" in text
    assert out.read_text().count("\n") == 1  # nothing trained


def test_the_mad_script_refuses_a_results_file_that_is_not_there(tmp_path):
    """mad_check.sh resumes from MAD_RESULTS; a path that is set but missing (mistyped, say) must stop it, not
    start the protocol over from an empty file."""
    from conftest import run_offline_gpu_script

    proc = run_offline_gpu_script("mad_check.sh", OUT=str(tmp_path / "out"), MAD_RESULTS=str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2
    assert f"MAD_RESULTS={tmp_path / 'missing.jsonl'} does not exist" in proc.stderr
    assert not (tmp_path / "missing.jsonl").exists()


def test_the_mad_script_resumes_from_its_results_file(tmp_path):
    """mad_check.sh run again continues the results file: new runs are appended, recorded ones are not rerun;
    without MAD_RESULTS the results go to $OUT/mad_protocol.jsonl."""
    from conftest import run_offline_gpu_script

    results, out = tmp_path / "results.jsonl", tmp_path / "out"
    results.write_text("")
    env = dict(OUT=str(out), MAD_RESULTS=str(results), MAD_FLAGS="--backend torch", JOBS="1")
    piece = ("--attention softmax --tasks memorization --baseline-only --epochs 1 --wds 0 --max-train-examples 16 "
             "--device cpu --lrs ")
    for lr in ("1e-3", "5e-4", "1e-3"):
        proc = run_offline_gpu_script("mad_check.sh", MAD_ARGS=piece + lr, **env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(json.loads(line)["lr"] for line in results.read_text().splitlines()) == [5e-4, 1e-3]
    assert "| softmax | adamw |" in proc.stdout
    assert (out / "mad_protocol.log").read_text().count("== MAD: MAD_ARGS=") == 3

    del env["MAD_RESULTS"]
    proc = run_offline_gpu_script("mad_check.sh", MAD_ARGS=piece + "1e-3", **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len((out / "mad_protocol.jsonl").read_text().splitlines()) == 1


def test_a_results_file_that_records_a_run_twice_is_refused(tmp_path, capsys):
    from eval.mad.run import main

    run = {"setting": "memorization[baseline]", "task": "memorization", "attention": "softmax", "optimizer": "adamw",
           "lr": 1e-3, "weight_decay": 0.0, "epochs": 1, "seed": 12345, "test_acc": 0.5}
    out = tmp_path / "runs.jsonl"
    out.write_text(json.dumps(run) + "\n" + json.dumps(run | {"test_acc": 0.7}) + "\n")
    with pytest.raises(SystemExit):
        main(["--table", "--out", str(out)])
    assert "records 1 runs twice" in capsys.readouterr().err
