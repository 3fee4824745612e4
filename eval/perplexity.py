"""Token-weighted held-out perplexity of a checkpoint.

    python eval/perplexity.py --config configs/debug_cpu.toml --checkpoint outputs/debug_cpu/checkpoint/step-40 \
        [--dataset embedded_en_validation | --dataset-path DIR] [--seq-len 256] [--batch-size 8] [--max-batches N] \
        [-- --section.key value ...]     (the overrides the run was trained with, if any)

The validation data is what the run's [validation] reads, chosen by the trainer's rule (the TOML's [validation]
dataset_path, else the training data's held-out split: parallax_titan.data.validation_source), unless --dataset
or --dataset-path names other data. A shard folder (scripts/prepare_data.py) is read from its held-out
"validation" split, window by window; a text source is tokenised and packed the way training packs it, read
once. Perplexity is exp(sum of token losses / number of tokens) over every predicted token; the same number the
trainer's [validation] reports as loss when its windows are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from parallax_titan.inference import default_device, load_model


@dataclass
class PerplexityResult:
    tokens: int
    loss: float  # mean negative log-likelihood per token, nats
    # sha256 of the evaluated windows' tokens, in order: two results with the same digest saw the same held-out
    # data (a rebuilt corpus or another max_batches changes it; docs/results.md, "Two corpus builds")
    data_sha256: str = ""

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def validation_windows(job_config, dataset: str | None, dataset_path: str | None, seq_len: int) -> Iterable:
    """(input, label) windows of seq_len tokens, finite, in a fixed order."""
    from parallax_titan.data.shards import ShardTokenDataset, is_shard_folder, tokenizer_fingerprint

    if is_shard_folder(dataset_path):
        return ShardTokenDataset(dataset_path, "validation", seq_len, infinite=False,
                                 tokenizer=tokenizer_fingerprint(job_config.model.hf_assets_path))
    import parallax_titan.register  # noqa: F401  (dataset names)
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataset

    tokenizer = HuggingFaceTokenizer(job_config.model.hf_assets_path)
    return HuggingFaceTextDataset(dataset, dataset_path, tokenizer, seq_len=seq_len, infinite=False)


def batches(windows: Iterable, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    inputs, labels = [], []
    for sample, label in windows:
        inputs.append(sample["input"])
        labels.append(label)
        if len(inputs) == batch_size:
            yield torch.stack(inputs), torch.stack(labels)
            inputs, labels = [], []
    if inputs:
        yield torch.stack(inputs), torch.stack(labels)


@torch.no_grad()
def perplexity(model, data: Iterable[tuple[torch.Tensor, torch.Tensor]], device, max_batches: int | None = None,
               progress: bool = True) -> PerplexityResult:
    total, count = 0.0, 0
    digest = hashlib.sha256()
    for i, (inputs, labels) in enumerate(tqdm(data, desc="perplexity", unit="batch", disable=not progress)):
        if max_batches is not None and i >= max_batches:
            break
        digest.update(inputs.to("cpu", torch.int64).numpy().tobytes())
        digest.update(labels.to("cpu", torch.int64).numpy().tobytes())
        logits = model(inputs.to(device))
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.to(device).flatten(), reduction="sum")
        total += float(loss)
        count += labels.numel()
    if count == 0:
        raise ValueError("the validation data yielded no tokens")
    return PerplexityResult(count, total / count, digest.hexdigest())


def main(argv: list[str] | None = None) -> PerplexityResult:
    from parallax_titan.launch import split_overrides

    argv, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's TOML")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint/step-N folder")
    parser.add_argument("--dataset", default=None,
                        help="a registered dataset name (its default path unless --dataset-path); default: the data "
                             "the run's [validation] reads, chosen as the trainer chooses it")
    parser.add_argument("--dataset-path", default=None,
                        help="a shard folder (its validation split) or text files; default: as --dataset")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the TOML's [validation] seq_len")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--attention-backend", default=None, help="default: triton on CUDA, torch on CPU")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    cuda = str(args.device).startswith("cuda")
    try:
        loaded = load_model(args.config, args.checkpoint, overrides=overrides, device=args.device,
                            attention_backend=args.attention_backend or ("triton" if cuda else "torch"))
        v = loaded.job.validation
        seq_len = args.seq_len or v.seq_len
        if args.dataset or args.dataset_path:
            dataset, path = args.dataset or v.dataset, args.dataset_path
        else:  # the data the trainer's [validation] reads, by the same rule (parallax_titan.data.validation_source)
            from parallax_titan.data import validation_source

            dataset, (path, why) = v.dataset, validation_source(loaded.job)
            print(f"Validation data: {path or dataset} ({why})")
        windows = validation_windows(loaded.job, dataset, path, seq_len)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        with autocast:
            result = perplexity(loaded.model, batches(windows, args.batch_size), args.device, args.max_batches)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        sys.exit(f"perplexity: {error}")
    print(f"{result.tokens:,} tokens  loss {result.loss:.4f}  perplexity {result.perplexity:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "tokens": result.tokens, "loss": result.loss,
                       "perplexity": result.perplexity, "seq_len": seq_len, "data_sha256": result.data_sha256},
                      f, indent=1)
    return result


if __name__ == "__main__":
    main()
