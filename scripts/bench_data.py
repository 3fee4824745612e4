"""Data throughput on one CPU core: tokenisation (tokens/s) and the shard loader (tokens/s into batches).

    python scripts/bench_data.py [--tokenizer DIR] [--seq-len 4096] [--batch 4] [--consumed 38226]

--consumed: the tokens/s a training run eats (default: 0.6B Parallax, fused kernel + compile, one H100:
docs/runs/bench-train-2026-11-23/train_parallax_muon_triton_compile.log); the shard loader should deliver at
least 20x that on one core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core for the tokenizers library
import torch  # noqa: E402

torch.set_num_threads(1)

from tokenizers import Tokenizer  # noqa: E402

from parallax_titan.data import EMBEDDED_TOKENIZER, EMBEDDED_TRAIN  # noqa: E402
from parallax_titan.data.shards import ShardTokenDataset  # noqa: E402
from parallax_titan.data.text import load_text_dataset  # noqa: E402
from parallax_titan.data.prepare import prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=EMBEDDED_TOKENIZER)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--consumed", type=float, default=38226.0)
    args = ap.parse_args()
    texts = load_text_dataset(EMBEDDED_TRAIN)["content"]
    tok = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
    start = time.perf_counter()
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts))
    tok_rate = n_tokens / (time.perf_counter() - start)
    print(f"tokenisation ({args.tokenizer}, 1 core): {tok_rate:,.0f} tokens/s over {n_tokens:,} tokens")

    with tempfile.TemporaryDirectory() as folder:
        prepare(EMBEDDED_TRAIN, "en", args.tokenizer, Path(folder))
        ds = ShardTokenDataset(folder, "train", args.seq_len, seed=0, infinite=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, num_workers=0)
        tokens, start = 0, time.perf_counter()
        for epoch in range(20):
            for x, y in ((b[0]["input"], b[1]) for b in loader):
                tokens += y.numel()
            ds.epoch, ds.position = ds.epoch + 1, 0
        rate = tokens / (time.perf_counter() - start)
    print(f"shard loader (seq {args.seq_len}, batch {args.batch}, 1 core): {rate:,.0f} tokens/s "
          f"= {rate / args.consumed:.0f}x the {args.consumed:,.0f} tokens/s a 0.6B run consumes on one H100")


if __name__ == "__main__":
    main()
