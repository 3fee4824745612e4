"""Sample text from a trained checkpoint with the KV-cache decoder.

    python scripts/generate.py --config configs/debug_cpu.toml \
        --checkpoint outputs/debug_cpu/checkpoint/step-40 --prompt "The Python tutorial" \
        --max-new-tokens 64 --temperature 0.8 --top-p 0.95 --seed 0 [-- --section.key value ...]

The TOML is the run's own (flavor, [parallax] settings, tokenizer), with the overrides it was trained with after
`--` (e.g. `-- --model.flavor debug-transformer`). On a GPU the prompt is prefilled
with the fused Triton kernel and decoded with the Triton decode kernel unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from parallax_titan.generation import CachedDecoder, generate
from parallax_titan.inference import default_device, load_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: list[str] | None = None) -> None:
    from parallax_titan.launch import split_overrides

    argv, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's TOML")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint/step-N folder")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--prefill-backend", default=None, help="parallax_attention backend (default: triton on CUDA)")
    parser.add_argument("--decode-backend", default=None,
                        help="parallax_decode backend: torch, triton or cute (Hopper) (default: triton on CUDA)")
    args = parser.parse_args(argv)

    cuda = str(args.device).startswith("cuda")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    prefill = args.prefill_backend or ("triton" if cuda else "torch")
    decode = args.decode_backend or ("triton" if cuda else "torch")
    try:
        loaded = load_model(args.config, args.checkpoint, overrides=overrides, device=args.device, dtype=dtype,
                            attention_backend=prefill)
        prompts = [loaded.tokenizer.encode(p).ids for p in args.prompt]
        decoder = CachedDecoder(loaded.model, prefill_backend=prefill, decode_backend=decode)
        start = time.perf_counter()
        outputs = generate(decoder, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p, seed=args.seed, eos_id=loaded.eos_id)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        sys.exit(f"generate: {error}")
    seconds = time.perf_counter() - start
    for prompt, new in zip(args.prompt, outputs):
        print(f"=== {prompt!r}\n{prompt}{loaded.tokenizer.decode(new)}\n")
    n = sum(len(o) for o in outputs)
    print(f"{n} tokens in {seconds:.2f} s ({n / seconds:.1f} tokens/s, {args.device}, {dtype}, "
          f"prefill {prefill}, decode {decode})", file=sys.stderr)


if __name__ == "__main__":
    main()
