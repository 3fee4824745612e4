"""Print parameters and FLOPs/token for every flavor (markdown), at a given context length.

    python scripts/model_table.py [--seq-len 4096]

Conventions: parallax_titan/model/flops.py. "attn fwd" is the forward attention-core FLOPs per token
(what the compute-matched control equalises); "train" is forward+backward FLOPs per token, dense
layers (LM head included) plus attention core over all keys (torchtitan's count, MFU's); "train, causal" counts
only the keys a causal query attends to.
"""

from __future__ import annotations

import argparse

from parallax_titan.model.flavors import FLAVORS
from parallax_titan.model.flops import (
    attention_flops_per_token,
    count_parameters,
    training_flops_per_token,
)


def table(seq_len: int) -> str:
    rows = [
        f"| flavor | attention | heads x head_dim | FFN | params | non-embedding | "
        f"attn fwd GFLOP/token | train GFLOP/token (seq {seq_len}) | train, causal GFLOP/token |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, args in FLAVORS.items():
        p = count_parameters(args)
        rows.append(
            f"| {name} | {args.attention} | {args.n_heads} x {args.head_dim} "
            f"(kv {args.n_kv_heads}) | {args.hidden_dim} | {p['total'] / 1e6:,.2f}M | "
            f"{p['non_embedding'] / 1e6:,.2f}M | "
            f"{attention_flops_per_token(args, seq_len, training=False) / 1e9:.3f} | "
            f"{training_flops_per_token(args, seq_len) / 1e9:.3f} | "
            f"{training_flops_per_token(args, seq_len, causal=True) / 1e9:.3f} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq-len", type=int, default=4096)
    print(table(ap.parse_args().seq_len))


if __name__ == "__main__":
    main()
