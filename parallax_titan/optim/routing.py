"""Which optimizer each parameter gets: the one routing rule, for training (builder.py) and MAD (eval/mad).

  hidden      2-D weights inside the transformer blocks (under a `layers.<i>.` module: attention projections
              incl. W_R, MLP, the probe gate): Muon, or AdamW in the AdamW ablation
  embeddings  the other weights of 2 or more dimensions, outside the blocks: token embedding and output head
              (and a task head's layers, as MAD's compression decoder): AdamW
  scalars     norms and any other 1-D/0-D parameter: AdamW
"""

from __future__ import annotations

import re

from torch import nn

GROUPS = ("hidden", "embeddings", "scalars")
_IN_BLOCK = re.compile(r"(^|\.)layers\.\d+\.")  # torchtitan keeps its blocks in a ModuleDict called `layers`


def route_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """GROUPS -> the (name, parameter) pairs routed there, in the model's order; frozen parameters left out."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1:
            groups["scalars"].append((name, p))
        elif not _IN_BLOCK.search(name):
            groups["embeddings"].append((name, p))
        elif p.ndim == 2:
            groups["hidden"].append((name, p))
        else:
            raise ValueError(f"parameter {name} of shape {tuple(p.shape)} fits no optimizer group")
    return groups
