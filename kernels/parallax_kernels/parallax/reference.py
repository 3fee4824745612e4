"""Direct (dense) Parallax attention: the definition, for tests and tiny shapes only.

    s_ij = scale * q_i.k_j      w_ij = softmax_j(s_ij) over visible keys      t_ij = r_i.k_j
    tbar_i = sum_j w_ij t_ij    o_i = sum_j w_ij (1 + tbar_i - t_ij) v_j

It materialises the full N x N matrix; run it in float64 to get a reference.
"""

from __future__ import annotations

import torch


def visible_mask(
    n: int, causal: bool, document_ids: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B or 1, 1, N, N) mask of the keys each query may see, or None for all."""
    mask = None
    if causal:
        mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]
    if document_ids is not None:
        same_doc = (document_ids[:, :, None] == document_ids[:, None, :])[:, None]
        mask = same_doc if mask is None else mask & same_doc
    return mask


def parallax_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """q, r: (B, H, N, D); k, v: (B, Hkv, N, D); returns (B, H, N, D) in q's dtype."""
    n_rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(n_rep, dim=1)
    v = v.repeat_interleave(n_rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = scale * q @ k.transpose(-1, -2)
    t = r @ k.transpose(-1, -2)
    mask = visible_mask(q.shape[2], causal, document_ids, q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    tbar = (w * t).sum(-1, keepdim=True)
    alpha = w * (1 + tbar - t)
    return alpha @ v
