"""The six MAD synthetic tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures"), generated locally from seeds, and the protocol's settings.

Written from the task definitions of the MAD paper and its reference repository (athms/mad-lab, MIT);
the token layouts follow it so scores are comparable:

- in-context recall: key-value pairs (keys from the lower half of the non-special vocabulary, values from
  the upper half, each key keeps one value within a sequence). Multi-query: every value whose key was seen
  before is a target.
- noisy recall: the same, with a fraction of pairs replaced by tokens from a separate noise vocabulary.
- fuzzy recall: keys and values are motifs of 1-3 tokens (test keys always 3); a pad token fills the
  front.
- selective copying: `n` tokens scattered among blank tokens, then a copy token and `n` blanks; the
  targets are the `n` tokens, in order, after the copy token.
- compression: `L - 1` random tokens and a compression token; an auto-encoder must rebuild all `L`
  tokens from the encoder's last position.
- memorisation: one fixed key -> value map (its own seed) shared by every sequence of key + insert-token
  pairs; the value after each insert token is the target.

The recall tasks train on next-token prediction over the whole sequence (targets = inputs shifted);
selective copying, compression and memorisation train on their targets. Test targets hold only the probed positions
(others are IGNORE), and accuracy is over those.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

IGNORE = -100


@dataclass(frozen=True)
class TaskSetting:
    task: str
    vocab_size: int
    seq_len: int
    num_train_examples: int = 12_800
    num_test_examples: int = 1_280
    frac_noise: float = 0.0
    noise_vocab_size: int = 0
    num_tokens_to_copy: int = 0
    k_motif_size: int = 1
    v_motif_size: int = 1
    multi_query: bool = True

    @property
    def name(self) -> str:
        base = PROTOCOL[self.task].baseline
        diffs = [f"{f}={getattr(self, f)}" for f in CHANGEABLE if getattr(self, f) != getattr(base, f)]
        return self.task + ("[" + ",".join(diffs) + "]" if diffs else "[baseline]")


CHANGEABLE = ("vocab_size", "seq_len", "num_train_examples", "frac_noise", "num_tokens_to_copy")


@dataclass(frozen=True)
class TaskProtocol:
    baseline: TaskSetting
    changes: dict[str, tuple] = field(default_factory=dict)

    def settings(self) -> list[TaskSetting]:
        """The baseline and each one-factor change from it (MAD's 66 settings over the six tasks)."""
        out = [self.baseline]
        for key, values in self.changes.items():
            out += [replace(self.baseline, **{key: v}) for v in values]
        return out


FEWER = (6400, 3200, 1600, 800)
PROTOCOL: dict[str, TaskProtocol] = {
    "in-context-recall": TaskProtocol(
        TaskSetting("in-context-recall", 16, 128),
        {"vocab_size": (32, 64, 128), "seq_len": (256, 512, 1024), "num_train_examples": FEWER}),
    "fuzzy-in-context-recall": TaskProtocol(
        TaskSetting("fuzzy-in-context-recall", 16, 128, k_motif_size=3, v_motif_size=3),
        {"vocab_size": (32, 64, 128), "seq_len": (256, 512, 1024), "num_train_examples": FEWER}),
    "noisy-in-context-recall": TaskProtocol(
        TaskSetting("noisy-in-context-recall", 32, 128, frac_noise=0.2, noise_vocab_size=16),
        {"vocab_size": (48, 80, 144), "seq_len": (256, 512, 1024), "num_train_examples": FEWER,
         "frac_noise": (0.4, 0.6, 0.8)}),
    "selective-copying": TaskProtocol(
        TaskSetting("selective-copying", 16, 256, num_tokens_to_copy=16),
        {"vocab_size": (32, 64, 128), "seq_len": (512, 1024), "num_train_examples": FEWER,
         "num_tokens_to_copy": (32, 64, 96)}),
    "compression": TaskProtocol(
        TaskSetting("compression", 16, 32),
        {"vocab_size": (32, 64, 128), "seq_len": (64, 128, 256), "num_train_examples": FEWER}),
    "memorization": TaskProtocol(
        TaskSetting("memorization", 256, 32, num_train_examples=256),
        {"vocab_size": (512, 1024, 2048, 4096, 8192)}),
}


# --- generators: each returns (inputs, targets) int64 arrays of equal length -----------------------

def in_context_recall(s: TaskSetting, rng: np.random.Generator, train: bool):
    """Pairs k v ... ; with frac_noise, a pair is replaced by two noise tokens with that probability."""
    special = 0 if s.multi_query else 1  # a copy-prefix token when only the final pair is probed
    usable = s.vocab_size - special - s.noise_vocab_size
    n_keys = usable // 2  # keys [0, n_keys), values [n_keys, usable), noise [usable, usable + noise)
    pairs = s.seq_len // 2
    keep = rng.integers(pairs)  # at least one real pair
    # all draws up front (one call each: per-token rng calls dominate the cost otherwise)
    noisy = rng.random(pairs) < s.frac_noise if s.frac_noise > 0 else np.zeros(pairs, dtype=bool)
    noise = (usable + rng.integers(0, max(s.noise_vocab_size, 1), (pairs, 2))).tolist()
    key_draws = rng.integers(0, n_keys, pairs).tolist()
    value_draws = (n_keys + rng.integers(0, usable - n_keys, pairs)).tolist()
    seq, tgt, kv = [], [], {}
    for i in range(pairs - 1):
        if noisy[i] and i != keep:
            seq += noise[i]
            tgt += [IGNORE, IGNORE]
            continue
        k = key_draws[i]
        seen = k in kv
        v = kv.setdefault(k, value_draws[i])
        seq += [k, v]
        tgt += [IGNORE, v if (seen and s.multi_query) else IGNORE]
    k = int(rng.choice(list(kv)))  # final probe of a key already shown
    if not s.multi_query:
        seq.append(s.vocab_size - 1)
        tgt.append(IGNORE)
    seq += [k, kv[k]]
    tgt += [IGNORE, kv[k]]
    return _shift(seq, tgt, train)


def fuzzy_in_context_recall(s: TaskSetting, rng: np.random.Generator, train: bool):
    """Keys and values are motifs of 1..k_motif_size / 1..v_motif_size tokens (test keys: the longest);
    one probe pair appears in the body and again at the end."""
    pad = s.vocab_size - 1 if s.multi_query else s.vocab_size - 2
    usable = (s.vocab_size - 1 if s.multi_query else s.vocab_size - 2) - s.noise_vocab_size
    key_vocab, value_vocab = np.arange(usable // 2), np.arange(usable // 2, usable)
    key_sizes = list(range(1, s.k_motif_size + 1)) if train else [s.k_motif_size]
    value_sizes = list(range(1, s.v_motif_size + 1))

    # motifs are distinct-token draws (permutations of the vocabulary), drawn in bulk: per-motif rng
    # calls would dominate the cost
    budget = s.seq_len + 2
    pools = {id(v): (v[0] + rng.random((budget, len(v))).argsort(1)).tolist() for v in (key_vocab, value_vocab)}
    used = {id(key_vocab): 0, id(value_vocab): 0}

    def motif(vocab, size):
        row = pools[id(vocab)][used[id(vocab)]]
        used[id(vocab)] += 1
        return tuple(row[:size])

    probe_k = motif(key_vocab, key_sizes[rng.integers(len(key_sizes))])
    probe_v = motif(value_vocab, value_sizes[rng.integers(len(value_sizes))])
    probe_len = len(probe_k) + len(probe_v)
    probe_at = rng.integers(s.seq_len - 2 * probe_len)
    seq, tgt, kv, placed = [], [], {}, False
    while len(seq) < s.seq_len - probe_len - (s.k_motif_size + s.v_motif_size):
        if not placed and len(seq) >= probe_at:
            seq += probe_k + probe_v
            tgt += [IGNORE] * probe_len
            kv[probe_k], placed = probe_v, True
            continue
        k = motif(key_vocab, key_sizes[rng.integers(len(key_sizes))])
        seen = k in kv
        v = probe_v if k == probe_k else kv.setdefault(k, motif(value_vocab, value_sizes[rng.integers(len(value_sizes))]))
        placed |= k == probe_k
        kv[k] = v
        seq += list(k) + list(v)
        tgt += [IGNORE] * len(k) + (list(v) if seen and s.multi_query else [IGNORE] * len(v))
    if not s.multi_query:
        seq.append(s.vocab_size - 1)
        tgt.append(IGNORE)
    seq += list(probe_k) + list(probe_v)
    tgt += [IGNORE] * len(probe_k) + list(probe_v)
    fill = s.seq_len + 1 - len(seq)
    seq, tgt = [pad] * fill + seq, [IGNORE] * fill + tgt
    return _shift(seq, tgt, train)


def selective_copying(s: TaskSetting, rng: np.random.Generator, train: bool):
    n = s.num_tokens_to_copy
    copy, blank = s.vocab_size - 1, s.vocab_size - 2
    blanks = s.seq_len - 2 * n - 1
    if blanks < 0:
        raise ValueError(f"{s.name}: seq_len must exceed 2 * num_tokens_to_copy + 1")
    tokens = rng.integers(0, s.vocab_size - 2, n)
    body = np.full(n + blanks, blank)
    body[np.sort(rng.choice(n + blanks, n, replace=False))] = tokens  # tokens keep their order
    inputs = np.concatenate([body, [copy], np.full(n, blank)])
    targets = np.concatenate([np.full(n + blanks + 1, IGNORE), tokens])
    return inputs.astype(np.int64), targets.astype(np.int64)


def compression(s: TaskSetting, rng: np.random.Generator, train: bool):
    usable = s.vocab_size - 1 - s.noise_vocab_size
    inputs = np.concatenate([rng.integers(0, usable, s.seq_len - 1), [s.vocab_size - 1]]).astype(np.int64)
    return inputs, inputs.copy()


def memorization_map(vocab_size: int, seed: int) -> dict[int, int]:
    """The fixed key -> value map: keys from the lower half of the vocabulary (insert token excluded)."""
    usable = vocab_size - 1
    g = np.random.default_rng(seed)
    keys, values = g.permutation(usable // 2), g.permutation(np.arange(usable // 2, usable))
    return dict(zip(keys.tolist(), values.tolist()))


def memorization(s: TaskSetting, rng: np.random.Generator, train: bool, kv_map: dict[int, int]):
    insert = s.vocab_size - 1
    keys = rng.choice(list(kv_map), s.seq_len // 2)
    inputs = np.stack([keys, np.full_like(keys, insert)], 1).reshape(-1)
    targets = np.stack([np.full_like(keys, IGNORE), [kv_map[int(k)] for k in keys]], 1).reshape(-1)
    return inputs.astype(np.int64), targets.astype(np.int64)


def _shift(seq, tgt, train: bool):
    seq, tgt = np.asarray(seq, dtype=np.int64), np.asarray(tgt, dtype=np.int64)
    return (seq[:-1], seq[1:]) if train else (seq[:-1], tgt[1:])


GENERATORS = {
    "in-context-recall": in_context_recall,
    "noisy-in-context-recall": in_context_recall,
    "fuzzy-in-context-recall": fuzzy_in_context_recall,
    "selective-copying": selective_copying,
    "compression": compression,
    "memorization": memorization,
}


def make_dataset(s: TaskSetting, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (inputs, targets), "test": (inputs, targets)}, each (examples, length), from `seed`."""
    out = {}
    extra = {"kv_map": memorization_map(s.vocab_size, seed)} if s.task == "memorization" else {}
    for split, count, train in (("train", s.num_train_examples, True), ("test", s.num_test_examples, False)):
        rng = np.random.default_rng([seed, 0 if train else 1])
        examples = [GENERATORS[s.task](s, rng, train, **extra) for _ in range(count)]
        width = max(len(x) for x, _ in examples)
        if any(len(x) != width for x, _ in examples):
            raise AssertionError(f"{s.name}: generator produced sequences of different lengths")
        out[split] = (np.stack([x for x, _ in examples]), np.stack([y for _, y in examples]))
    return out


def all_settings(tasks: list[str] | None = None, baseline_only: bool = False) -> list[TaskSetting]:
    names = tasks or list(PROTOCOL)
    unknown = [t for t in names if t not in PROTOCOL]
    if unknown:
        raise ValueError(f"unknown MAD tasks {unknown}; tasks: {list(PROTOCOL)}")
    return list(itertools.chain.from_iterable(
        [PROTOCOL[t].baseline] if baseline_only else PROTOCOL[t].settings() for t in names))


def setting_by_name(name: str) -> TaskSetting:
    """A protocol setting by its name, e.g. 'in-context-recall[seq_len=1024]'."""
    by_name = {s.name: s for s in all_settings()}
    if name not in by_name:
        raise ValueError(f"MAD setting {name!r} is not in the protocol; settings: {sorted(by_name)}")
    return by_name[name]
