"""KV-cache generation for Qwen3-Parallax models (softmax or Parallax attention).

Each block's attention projects, prefills and decodes through its registered type
(parallax_titan.model.attention): prefill runs the prompt through the type's causal attention (Parallax:
`parallax_attention`; softmax: SDPA) and stores K and V per layer; each decode step projects the new token
only (q, k, v and the type's extras, e.g. the probe r), appends k and v, and attends with the type's decode
call (Parallax: `parallax_decode`; softmax: SDPA over the cache). Prompts of different
lengths are right-padded: causality keeps padding out of the real positions, and each sequence's cache
length says which cache rows it sees. Each prompt is one document: a model trained with
document_masking sees no EOS-based masks here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from parallax_titan.model.attention import attention_type


@dataclass
class KVCache:
    """Contiguous cache: per layer (B, Hkv, L_max, D) keys and values; `seqlens[b]` rows are filled."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    seqlens: torch.Tensor  # (B,) int32

    @classmethod
    def allocate(cls, args, batch: int, max_len: int, dtype: torch.dtype, device) -> "KVCache":
        shape = (batch, args.n_kv_heads, max_len, args.head_dim)
        return cls(
            [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)],
            [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)],
            torch.zeros(batch, dtype=torch.int32, device=device),
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


class CachedDecoder:
    """Runs a ParallaxQwen3Model with a KV cache. `decode_backend` is a parallax_decode backend,
    `prefill_backend` a parallax_attention backend."""

    def __init__(self, model, prefill_backend: str = "torch", decode_backend: str = "torch",
                 num_splits: int | None = None):
        self.model = model
        self.args = model.model_args
        self.prefill_backend = prefill_backend
        self.decode_backend = decode_backend
        self.num_splits = num_splits

    def _block(self, block, x, layer: int, cache: KVCache, positions, prefill: bool):
        """torchtitan's TransformerBlock.forward with the attention core reading and filling the cache."""
        attn = block.attention
        kind = attention_type(self.args.attention)
        q, k, v, extras = kind.project(attn, block.attention_norm(x), self.model.rope_cache, positions)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, N, D)
        extras = tuple(e.transpose(1, 2) for e in extras)
        b, n = x.shape[:2]
        if prefill:
            cache.k[layer][:, :, :n] = k
            cache.v[layer][:, :, :n] = v
            out = kind.prefill(attn, q, k, v, extras, backend=self.prefill_backend)
        else:
            rows, slot = torch.arange(b, device=x.device), cache.seqlens.long()
            cache.k[layer][rows, :, slot] = k[:, :, 0]
            cache.v[layer][rows, :, slot] = v[:, :, 0]
            out = kind.decode(
                attn, q[:, :, 0], cache.k[layer], cache.v[layer], tuple(e[:, :, 0] for e in extras),
                cache_seqlens=cache.seqlens + 1, backend=self.decode_backend, num_splits=self.num_splits,
            )[:, :, None]
        out = out.transpose(1, 2).reshape(b, n, -1)
        x = x + attn.wo(out)
        return x + block.feed_forward(block.ffn_norm(x))

    def _run(self, tokens, cache: KVCache, positions, prefill: bool) -> torch.Tensor:
        x = self.model.tok_embeddings(tokens)
        for i, block in enumerate(self.model.layers.values()):
            x = self._block(block, x, i, cache, positions, prefill)
        return self.model.output(self.model.norm(x))

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tokens (B, P) right-padded, lengths (B,): fills the cache, returns all (B, P, V) logits."""
        if tokens.shape[1] > cache.max_len:
            raise ValueError(f"prompt length {tokens.shape[1]} exceeds the cache length {cache.max_len}")
        logits = self._run(tokens, cache, None, prefill=True)
        cache.seqlens.copy_(lengths.to(torch.int32))
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tokens (B,): the next token of each sequence; returns (B, V) logits for the one after."""
        if int(cache.seqlens.max()) >= cache.max_len:
            raise ValueError(f"the KV cache is full ({cache.max_len} positions)")
        logits = self._run(tokens[:, None], cache, cache.seqlens.long()[:, None], prefill=False)
        cache.seqlens += 1
        return logits[:, 0]


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None):
    """(B, V) logits -> (B,) tokens: greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always the first token)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    decoder: CachedDecoder,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
) -> list[list[int]]:
    """New tokens for each prompt (stopping at EOS, which is kept)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
    model = decoder.model
    device = model.tok_embeddings.weight.device
    longest = max(len(p) for p in prompts)
    total = longest + max_new_tokens
    if total > decoder.args.max_seq_len:
        raise ValueError(
            f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
            f"max_seq_len {decoder.args.max_seq_len} (its RoPE table)"
        )
    batch = len(prompts)
    tokens = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    cache = KVCache.allocate(decoder.args, batch, total, model.tok_embeddings.weight.dtype, device)
    logits = decoder.prefill(tokens, lengths, cache)[torch.arange(batch, device=device), lengths - 1]
    generator = torch.Generator(device=device).manual_seed(seed)
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        nxt = sample(logits, temperature, top_p, generator)
        for i in range(batch):
            if not done[i]:
                out[i].append(int(nxt[i]))
        if eos_id is not None:
            done |= nxt == eos_id
        if bool(done.all()):
            break
        logits = decoder.step(nxt, cache)
    return out
