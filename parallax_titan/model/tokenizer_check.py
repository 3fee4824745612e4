"""Does the tokenizer in `[model] hf_assets_path` fit the model? Checked when the job config is applied."""

from __future__ import annotations

import os


def check_tokenizer(args, assets_path: str) -> None:
    """Refuse a tokenizer whose ids would index past the embedding of `args` (ParallaxModelArgs); take its
    EOS id into `args.eos_id`. With document masking, the documents end at that EOS: a tokenizer without one
    (or none at all) is refused, since the flavor's default id would never match and no document would end."""
    path = os.path.join(assets_path, "tokenizer.json")
    if not os.path.isfile(path):
        if args.document_masking:
            raise ValueError(f"[parallax] document_masking needs the tokenizer's EOS id, and [model] hf_assets_path "
                             f"{assets_path!r} has no tokenizer.json")
        return  # torchtitan's tokenizer builder reports a missing tokenizer itself
    # the same reading of tokenizer.json that ties a shard set to its tokenizer
    from parallax_titan.data.shards import tokenizer_fingerprint

    tokenizer = tokenizer_fingerprint(assets_path)
    size = tokenizer["vocab_size"]
    if size > args.vocab_size:
        raise ValueError(
            f"tokenizer {path} has {size} tokens but the model flavor's vocab_size is "
            f"{args.vocab_size}: token ids would index past the embedding"
        )
    if tokenizer["eos_id"] is not None:
        args.eos_id = tokenizer["eos_id"]
    elif args.document_masking:
        config = os.path.join(assets_path, "tokenizer_config.json")
        what = ("names no eos_token" if tokenizer["eos_token"] is None
                else f"names eos_token {tokenizer['eos_token']!r}, which {path} does not hold")
        raise ValueError(f"[parallax] document_masking splits documents at the tokenizer's EOS, but {config} {what}")
