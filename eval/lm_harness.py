"""lm-evaluation-harness on this repo's checkpoints, and the paper's downstream table.

    python eval/lm_harness.py --config configs/0.6B_parallax_muon.toml --checkpoint outputs/.../step-20000 \
        [--tasks paper | boolq,piqa,...] [--include-path DIR_OF_LOCAL_TASK_YAMLS] [--limit N] [--json out.json]

`--tasks paper` runs the paper's suite: BoolQ, HellaSwag, PIQA, ARC-e, ARC-c, WinoGrande, OpenBookQA, SciQ,
plus LAMBADA (accuracy and perplexity) and WikiText (word perplexity); the table has one column each.
lm-eval's task data comes from the Hugging Face hub; offline, point `--include-path` at task YAMLs whose
`dataset_path: json` reads local files (tests/test_lm_harness.py has one).

`ParallaxLM` implements lm-eval's `TemplateLM`: loglikelihood (batched, right-padded; causal attention keeps
the padding out of scored positions), loglikelihood_rolling (lm-eval's disjoint rolling windows of
max_seq_len), and generate_until (greedy or sampled through the KV-cache decoder, cut at the stop strings).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from parallax_titan.generation import CachedDecoder, generate
from parallax_titan.inference import LoadedModel, default_device, load_model

# column label -> (lm-eval task, metric); acc_norm where the task defines it, as is customary
PAPER_SUITE = {
    "BoolQ": ("boolq", "acc,none"),
    "HellaSwag": ("hellaswag", "acc_norm,none"),
    "PIQA": ("piqa", "acc_norm,none"),
    "ARC-e": ("arc_easy", "acc_norm,none"),
    "ARC-c": ("arc_challenge", "acc_norm,none"),
    "WinoGrande": ("winogrande", "acc,none"),
    "OBQA": ("openbookqa", "acc_norm,none"),
    "SciQ": ("sciq", "acc_norm,none"),
}
PAPER_PERPLEXITY = {
    "LAMBADA acc": ("lambada_openai", "acc,none"),
    "LAMBADA ppl": ("lambada_openai", "perplexity,none"),
    "WikiText ppl": ("wikitext", "word_perplexity,none"),
}


class ParallaxLM(TemplateLM):
    def __init__(self, loaded: LoadedModel, batch_size: int = 8, device: str = "cpu",
                 decode_backend: str = "torch"):
        super().__init__()
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer_ = loaded.tokenizer
        self.batch_size = batch_size
        self.device_ = device
        self.decode_backend = decode_backend
        self.max_length = loaded.args.max_seq_len

    @property
    def eot_token_id(self) -> int:
        if self.loaded.eos_id is None:
            raise ValueError("the tokenizer names no end-of-text token; lm-eval needs one")
        return self.loaded.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer_.encode(string, add_special_tokens=bool(add_special_tokens)).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer_.decode(tokens)

    @torch.no_grad()
    def _score(self, sequences: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """(tokens, n_scored) -> (sum log p of the last n_scored tokens, all of them greedy)."""
        out: list[tuple[float, bool]] = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start:start + self.batch_size]
            width = max(len(t) - 1 for t, _ in chunk)
            inputs = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, (tokens, _) in enumerate(chunk):
                inputs[i, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            logprobs = F.log_softmax(self.model(inputs.to(self.device_)).float(), dim=-1).cpu()
            for i, (tokens, n) in enumerate(chunk):
                end = len(tokens) - 1
                target = torch.tensor(tokens[-n:])
                lp = logprobs[i, end - n:end]
                out.append((float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        sequences = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("lm-eval asked to score an empty continuation")
            tokens = (context + continuation)[-(self.max_length + 1):]
            sequences.append((tokens, len(continuation)))
        # longest first: fewer padded positions per batch; results go back in request order
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
        scored = self._score([sequences[i] for i in tqdm(order, disable=disable_tqdm, desc="loglikelihood")])
        result: list = [None] * len(sequences)
        for i, value in zip(order, scored):
            result[i] = value
        return result

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        totals = []
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = request.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, 1)
            ]
            scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            totals.append(sum(lp for lp, _ in scored))
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        decoder = CachedDecoder(self.model, prefill_backend=self.model.model_args.attention_backend,
                                decode_backend=self.decode_backend)
        outputs = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = min(int(kwargs.pop("max_gen_toks", 256)), self.max_length - 1)  # leave room for the prompt
            sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 1.0 if sample else 0.0)) if sample else 0.0
            prompt = self.tok_encode(context)[-(self.max_length - max_new):]
            new = generate(decoder, [prompt], max_new_tokens=max_new, temperature=temperature,
                           top_p=float(kwargs.pop("top_p", 1.0)), eos_id=self.loaded.eos_id)[0]
            text = self.tok_decode([t for t in new if t != self.loaded.eos_id])
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            outputs.append(text)
        return outputs


def resolve_tasks(spec: str) -> list[str]:
    if spec == "paper":
        names = [task for task, _ in PAPER_SUITE.values()] + [task for task, _ in PAPER_PERPLEXITY.values()]
        return list(dict.fromkeys(names))
    return [t.strip() for t in spec.split(",") if t.strip()]


def table(results: dict, tasks: list[str]) -> str:
    """The paper's layout when its tasks ran (accuracies in %, their mean, perplexities), else one
    column per task with its first metric."""
    columns: list[tuple[str, float | None]] = []
    paper = {**PAPER_SUITE, **PAPER_PERPLEXITY}
    used = set()
    for label, (task, metric) in paper.items():
        if task in results:
            value = results[task].get(metric)
            columns.append((label, value * 100 if value is not None and "perplexity" not in metric else value))
            used.add(task)
    accuracies = [v for (label, v) in columns if label in PAPER_SUITE and v is not None]
    if len(accuracies) > 1:
        columns.insert(len(accuracies), ("Avg", sum(accuracies) / len(accuracies)))
    for task in tasks:
        if task not in used and task in results:
            metric = next((k for k in results[task] if "," in k and not k.endswith("_stderr,none")
                           and isinstance(results[task][k], (int, float))), None)
            if metric:
                columns.append((f"{task} {metric.split(',')[0]}", results[task][metric]))
    head = "| " + " | ".join(label for label, _ in columns) + " |"
    rule = "|" + "---:|" * len(columns)
    row = "| " + " | ".join("-" if v is None else f"{v:.2f}" for _, v in columns) + " |"
    return "\n".join([head, rule, row])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tasks", default="paper", help="'paper' or a comma-separated list of lm-eval tasks")
    parser.add_argument("--include-path", default=None, help="folder of extra task YAMLs (local data)")
    parser.add_argument("--limit", type=int, default=None, help="examples per task (smoke runs)")
    parser.add_argument("--num-fewshot", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import lm_eval
    from lm_eval.tasks import TaskManager

    cuda = str(args.device).startswith("cuda")
    try:
        loaded = load_model(args.config, args.checkpoint, device=args.device,
                            dtype=torch.bfloat16 if cuda else torch.float32,
                            attention_backend="triton" if cuda else "torch")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"lm_harness: {error}")
    lm = ParallaxLM(loaded, batch_size=args.batch_size, device=args.device,
                    decode_backend="triton" if cuda else "torch")
    tasks = resolve_tasks(args.tasks)
    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        sys.exit(f"lm_harness: unknown tasks {unknown} (with --include-path {args.include_path})")
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                                  task_manager=manager, random_seed=args.seed, numpy_random_seed=args.seed,
                                  torch_random_seed=args.seed, fewshot_random_seed=args.seed)
    print(table(out["results"], tasks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "results": out["results"]}, f, indent=1, default=str)
    return out["results"]


if __name__ == "__main__":
    main()
