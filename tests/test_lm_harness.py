"""The lm-eval adapter against the model's own forward, and the command on local task data."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "debug_cpu.toml"


@pytest.fixture(scope="module")
def checkpoint(debug_checkpoint):
    return debug_checkpoint[0]


@pytest.fixture(scope="module")
def lm(checkpoint):
    from eval.lm_harness import ParallaxLM
    from parallax_titan.inference import load_model

    return ParallaxLM(load_model(CONFIG, checkpoint), batch_size=3)


def direct_logprob(model, tokens, n):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([tokens[:-1]]))[0], -1)
    return sum(float(logp[i - 1, tokens[i]]) for i in range(len(tokens) - n, len(tokens)))


def test_loglikelihood_matches_the_models_forward(lm):
    pairs = [("The Python tutorial", " explains lists."), ("A", " b c d e f"), ("Dictionaries map keys", " to values")]
    results = lm.loglikelihood([SimpleNamespace(args=p) for p in pairs], disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(pairs, results):
        ctx = lm.tok_encode(context)
        whole = lm.tok_encode(context + continuation)
        n = len(whole) - len(ctx)
        assert logprob == pytest.approx(direct_logprob(lm.model, whole, n), rel=1e-5, abs=1e-4)
        assert isinstance(greedy, bool)


def test_rolling_loglikelihood_scores_every_token_once(lm):
    text = "Lists are mutable sequences, typically used to store collections of homogeneous items."
    (total,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))], disable_tqdm=True)
    tokens = [lm.eot_token_id] + lm.tok_encode(text)
    assert total == pytest.approx(direct_logprob(lm.model, tokens, len(tokens) - 1), rel=1e-5)
    # longer than the context: windows of max_length, still every token once
    lm.max_length, saved = 8, lm.max_length
    try:
        (windowed,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))], disable_tqdm=True)
    finally:
        lm.max_length = saved
    assert math.isfinite(windowed) and windowed < 0 and windowed != pytest.approx(total)


def test_generate_until_is_greedy_and_stops_at_the_stop_string(lm):
    context = "The tutorial"
    (full,) = lm.generate_until([SimpleNamespace(args=(context, {"until": [], "max_gen_toks": 6}))], disable_tqdm=True)
    tokens = lm.tok_encode(context)
    with torch.no_grad():  # greedy, one token at a time through the full forward
        for _ in range(6):
            tokens.append(int(lm.model(torch.tensor([tokens]))[0, -1].argmax()))
    expected = lm.tok_decode([t for t in tokens[len(lm.tok_encode(context)):] if t != lm.eot_token_id])
    assert full == expected
    if len(full) > 2:
        stop = full[1:3]
        (cut,) = lm.generate_until([SimpleNamespace(args=(context, {"until": [stop], "max_gen_toks": 6}))],
                                   disable_tqdm=True)
        assert cut == full[: full.index(stop)]


def write_local_tasks(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mc = [{"question": "Python lists are", "choices": ["mutable", "immutable", "purple"], "label": 0},
          {"question": "A tuple is", "choices": ["immutable", "a loop", "a file"], "label": 0},
          {"question": "The tutorial covers", "choices": ["modules", "volcanoes"], "label": 0}]
    (folder / "mc.jsonl").write_text("\n".join(json.dumps(d) for d in mc) + "\n")
    texts = [{"text": "Modules let you split a program into files."}, {"text": "Strings are sequences."}]
    (folder / "ppl.jsonl").write_text("\n".join(json.dumps(d) for d in texts) + "\n")
    (folder / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
""")
    (folder / "tiny_ppl.yaml").write_text(f"""task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'ppl.jsonl'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: "{{{{text}}}}"
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""")


def test_command_runs_local_tasks_and_prints_a_table(checkpoint, tmp_path, capsys, monkeypatch):
    from eval.lm_harness import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    write_local_tasks(tmp_path / "tasks")
    results = main(["--config", str(CONFIG), "--checkpoint", str(checkpoint), "--tasks", "tiny_mc,tiny_ppl",
                    "--include-path", str(tmp_path / "tasks"), "--device", "cpu", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "| tiny_mc acc | tiny_ppl word_perplexity |" in out
    assert 0.0 <= results["tiny_mc"]["acc,none"] <= 1.0
    assert results["tiny_ppl"]["word_perplexity,none"] > 1.0
    with pytest.raises(SystemExit, match="unknown tasks"):
        main(["--config", str(CONFIG), "--checkpoint", str(checkpoint), "--tasks", "no_such_task", "--device", "cpu"])


def test_paper_table_layout():
    from eval.lm_harness import resolve_tasks, table

    assert resolve_tasks("paper")[:3] == ["boolq", "hellaswag", "piqa"] and "wikitext" in resolve_tasks("paper")
    results = {"boolq": {"acc,none": 0.6}, "piqa": {"acc_norm,none": 0.7}, "wikitext": {"word_perplexity,none": 30.0}}
    text = table(results, ["boolq", "piqa", "wikitext"])
    assert text.splitlines()[0] == "| BoolQ | PIQA | Avg | WikiText ppl |"
    assert text.splitlines()[2] == "| 60.00 | 70.00 | 65.00 | 30.00 |"
