"""`build_optimizers_fn` of the TrainSpec: Muon or AdamW for the hidden matrices, AdamW for the rest, one
container.

Routing (routing.py, the same for both optimizers, so the AdamW ablation changes only the hidden matrices'
algorithm): hidden 2-D matrices of the transformer blocks get Muon under `[optimizer] name = "Muon"`, AdamW
under "AdamW"; embeddings, output head and scalars (norms) get AdamW. Each group has its own lr and weight
decay (TOML keys below); the routing is logged at start-up.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
    StateDictOptions,
)
from torchtitan.components.optimizer import OptimizersContainer
from torchtitan.tools.logging import logger

from parallax_titan.job_config import Optimizer as OptimizerKeys
from parallax_titan.model.attention import per_head_axes
from parallax_titan.optim.muon import Muon
from parallax_titan.optim.routing import route_parameters

OPTIMIZER_NAMES = ("Muon", "AdamW")
_DEFAULTS = OptimizerKeys()


def _summarise(names: list[str]) -> str:
    """'layers.0.attention.wq.weight', 'layers.1...' -> 'layers.*.attention.wq.weight (x2)'."""
    counts: dict[str, int] = defaultdict(int)
    for n in names:
        counts[re.sub(r"^layers\.\d+\.", "layers.*.", n)] += 1
    return ", ".join(f"{k} (x{v})" if v > 1 else k for k, v in counts.items())


def _option(config, key: str, fallback=None):
    """An `[optimizer]` key added by parallax_titan.job_config; its dataclass holds the defaults
    (also used when a config lacks the extension). None there means "use `fallback`"."""
    value = getattr(config, key, getattr(_DEFAULTS, key))
    return fallback if value is None else value


class MuonAdamWContainer(OptimizersContainer):
    """Per model part: a Muon (or AdamW) for hidden matrices and an AdamW for the rest.

    torchtitan's container assumes one optimizer class per part; this one keeps a list of
    optimizers per part and checkpoints them together through DCP (reshardable)."""

    def __init__(self, model_parts: list[nn.Module], optimizer_config) -> None:
        name = optimizer_config.name
        if name not in OPTIMIZER_NAMES:
            raise ValueError(f"[optimizer] name = {name!r} is unknown; choose one of {OPTIMIZER_NAMES}")
        if optimizer_config.lr is None or optimizer_config.lr <= 0:
            raise ValueError(f"[optimizer] lr must be a positive number; got {optimizer_config.lr!r}")
        self.model_parts = model_parts
        self.optimizers = []
        self.part_optimizers: list[list[torch.optim.Optimizer]] = []
        self.routing_log: list[str] = []
        all_params: list[nn.Parameter] = []
        c = optimizer_config
        betas, eps, wd, lr = (c.beta1, c.beta2), c.eps, c.weight_decay, c.lr
        impl = {"fused": dict(fused=True), "foreach": dict(foreach=True)}.get(c.implementation, {})
        for model in model_parts:
            routed = route_parameters(model)
            hidden = [p for _, p in routed["hidden"]]
            adamw_groups = [
                dict(params=[p for _, p in routed["embeddings"]], name="adamw/embeddings",
                     lr=_option(c, "embed_lr", lr), weight_decay=_option(c, "embed_weight_decay", wd)),
                dict(params=[p for _, p in routed["scalars"]], name="adamw/scalars",
                     lr=lr, weight_decay=_option(c, "scalar_weight_decay", wd)),
            ]
            part: list[torch.optim.Optimizer] = []
            if name == "Muon" and hidden:
                part.append(self._build_muon(model, routed["hidden"], c))
            elif hidden:
                adamw_groups.insert(0, dict(params=hidden, name="adamw/hidden", lr=lr, weight_decay=wd))
            adamw_groups = [g for g in adamw_groups if g["params"]]
            part.append(torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=wd, **impl))
            self.part_optimizers.append(part)
            self.optimizers.extend(part)
            all_params.extend(p for group in routed.values() for _, p in group)
            for group_name, members in routed.items():
                algo = "Muon" if group_name == "hidden" and name == "Muon" else "AdamW"
                self.routing_log.append(
                    f"{algo:5s} {group_name:10s} {len(members):4d} tensors, "
                    f"{sum(p.numel() for _, p in members):,} params: {_summarise([n for n, _ in members])}"
                )
        for line in self.routing_log:
            logger.info(f"optimizer routing: {line}")
        torch.optim.Optimizer.__init__(self, all_params, {"lr": lr})

    @staticmethod
    def _build_muon(model: nn.Module, hidden: list[tuple[str, nn.Parameter]], c) -> Muon:
        per_head = bool(_option(c, "muon_per_head"))
        head_dim = getattr(getattr(model, "model_args", None), "head_dim", None)
        axes = per_head_axes()  # projection name -> the axis its heads are laid out along
        groups: dict[Any, list] = defaultdict(list)
        for name, p in hidden:
            proj = name.split(".")[-2]
            split = (axes[proj], head_dim) if per_head and ".attention." in name and proj in axes else None
            groups[split].append(p)
        muon_groups = [
            dict(params=ps, name="muon/hidden" if split is None else f"muon/hidden_per_head_axis{split[0]}",
                 head_split=split)
            for split, ps in groups.items()
        ]
        return Muon(
            muon_groups,
            lr=_option(c, "muon_lr", c.lr),
            weight_decay=_option(c, "muon_weight_decay", c.weight_decay),
            momentum=_option(c, "muon_momentum"),
            nesterov=_option(c, "muon_nesterov"),
            ns_steps=_option(c, "muon_ns_steps"),
            scaling=_option(c, "muon_scaling"),
            ns_dtype=_option(c, "muon_ns_dtype"),
            names={id(p): n for n, p in hidden},
        )

    def state_dict(self) -> dict[str, Any]:
        func = functools.partial(
            get_optimizer_state_dict, options=StateDictOptions(flatten_optimizer_state_dict=True)
        )
        return {k: v for sd in map(func, self.model_parts, self.part_optimizers) for k, v in sd.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        func = functools.partial(
            set_optimizer_state_dict,
            optim_state_dict=state_dict,
            options=StateDictOptions(flatten_optimizer_state_dict=True),
        )
        list(map(func, self.model_parts, self.part_optimizers))


def build_optimizers(model_parts, optimizer_config, parallel_dims, ft_manager=None) -> MuonAdamWContainer:
    if getattr(optimizer_config, "early_step_in_backward", False):
        raise NotImplementedError("[optimizer] early_step_in_backward is not supported with Muon/AdamW routing")
    if ft_manager is not None and getattr(ft_manager, "enabled", False):
        raise NotImplementedError("torchft is not supported by this repo's optimizer container")
    return MuonAdamWContainer(model_parts, optimizer_config)
