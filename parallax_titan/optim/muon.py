"""Muon for torchtitan: torch.optim.Muon extended with what it lacks for this project.

torch.optim.Muon gives the algorithm (momentum with Nesterov, Newton-Schulz orthogonalisation,
decoupled weight decay, update scaling "original"/"match_rms_adamw"); it works on whole local
tensors and always runs Newton-Schulz in bf16. This subclass keeps its constructor, state layout
("momentum_buffer") and scaling rule, and adds:

- FSDP2 / DTensor: a Shard(0) parameter's update is assembled as a whole matrix on one owner rank,
  orthogonalised there and its rows sent back, with one all-to-all each way per step for all
  matrices. Owners are assigned to balance Newton-Schulz cost, so each rank orthogonalises about
  1/W of the matrices (the cost per rank falls as ranks grow) instead of all ranks repeating it.
- Per-head orthogonalisation: a group may carry `head_split = (axis, head_dim)`, and each head's
  block is orthogonalised on its own (q/k/v/r split rows, o splits columns); scaling uses the
  block's shape.
- Param groups that orthogonalise alike (same steps, coefficients, head split, dtype) share one
  batched Newton-Schulz per matrix shape, whatever their lr and weight decay.
- Newton-Schulz dtype: bf16 on GPU as usual; fp32 on CPU, where bf16 matmuls are very slow.
- Scaling names as this project's TOML spells them: match_rms_adamw (0.2 * sqrt(max(out, in))) and
  spectral (sqrt(max(1, out / in)), torch's "original").
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
SCALINGS = {"match_rms_adamw": "match_rms_adamw", "spectral": "original"}
NS_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}


def newton_schulz(
    g: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Approximate polar factor U V^T of g (..., m, n) by the quintic Newton-Schulz iteration.

    Singular values land in a band around 1 (not exactly 1: the coefficients trade exactness for
    speed). Wide orientation internally, so the Gram matrix is the small side.
    """
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    # fused multiply-adds, as torch.optim.Muon does (same rounding in bf16)
    mm = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = mm(x, mm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def _scale(shape: tuple[int, int], scaling: str) -> float:
    fan_out, fan_in = shape
    if scaling == "match_rms_adamw":
        return 0.2 * math.sqrt(max(fan_out, fan_in))
    return math.sqrt(max(1.0, fan_out / fan_in))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _block_shape(shape, group: dict) -> tuple[int, int]:
    """The shape each orthogonalised block has: the matrix, or one head's slice of it."""
    rows, cols = shape
    split = group.get("head_split")
    if split is None:
        return rows, cols
    axis, head_dim = split
    return (head_dim, cols) if axis == 0 else (rows, head_dim)


def _orthogonalize_many(updates: list[torch.Tensor], group: dict, dtype: torch.dtype) -> list[torch.Tensor]:
    """Orthogonalise whole matrices, stacking those of one shape into a single batched Newton-Schulz
    (a transformer has a handful of shapes: a few large batched matmuls instead of hundreds of small)."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, u in enumerate(updates):
        by_shape.setdefault(tuple(u.shape), []).append(i)
    out: list[torch.Tensor] = [None] * len(updates)  # type: ignore[list-item]
    split = group.get("head_split")
    steps, eps, coefficients = group["ns_steps"], group["eps"], group["ns_coefficients"]
    for (rows, cols), idx in by_shape.items():
        stacked = torch.stack([updates[i] for i in idx])  # (n, R, C)
        if split is None:
            result = newton_schulz(stacked, steps, coefficients, eps, dtype)
        elif split[0] == 0:
            blocks = stacked.reshape(len(idx) * (rows // split[1]), split[1], cols)
            result = newton_schulz(blocks, steps, coefficients, eps, dtype).reshape(len(idx), rows, cols)
        else:
            blocks = stacked.reshape(len(idx), rows, cols // split[1], split[1]).transpose(1, 2)
            blocks = blocks.reshape(-1, rows, split[1])
            result = newton_schulz(blocks, steps, coefficients, eps, dtype)
            result = result.reshape(len(idx), cols // split[1], rows, split[1]).transpose(1, 2).reshape(len(idx), rows, cols)
        for j, i in enumerate(idx):
            out[i] = result[j]
    return out


def _shard_group(p: DTensor) -> tuple[dist.ProcessGroup | None, int]:
    """The process group over which p is Shard(0), and its size; replicated dims are ignored."""
    shard_dims = [i for i, pl in enumerate(p.placements) if not isinstance(pl, Replicate)]
    if not shard_dims:
        return None, 1
    if len(shard_dims) > 1 or p.placements[shard_dims[0]] != Shard(0):
        raise NotImplementedError(
            f"Muon supports parameters sharded as Shard(0) on one mesh dimension (FSDP/HSDP); "
            f"got placements {p.placements} for a parameter of shape {tuple(p.shape)}"
        )
    mesh = p.device_mesh
    return mesh.get_group(shard_dims[0]), mesh.size(shard_dims[0])


def _assign_owners(shapes: list[torch.Size], world: int) -> list[int]:
    """Greedy balance of Newton-Schulz cost (~ m * n * min(m, n)) over ranks, largest first."""
    load = [0.0] * world
    owners = [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: -shapes[i].numel() * min(shapes[i])):
        rank = min(range(world), key=load.__getitem__)
        owners[i] = rank
        load[rank] += shapes[i].numel() * min(shapes[i])
    return owners


def _distributed_orthogonalize(
    locals_: list[torch.Tensor],
    shapes: list[torch.Size],
    group: dict,
    pg: dist.ProcessGroup,
    world: int,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """Row shards (torch.chunk layout over `world` ranks) in, orthogonalised row shards out
    (in the Newton-Schulz dtype, which is also what travels: bf16 halves the traffic on GPU)."""
    rank = dist.get_rank(pg)
    owners = _assign_owners(shapes, world)
    chunks = [math.ceil(s[0] / world) for s in shapes]
    device = locals_[0].device

    def padded(x: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, 0, 0, rows - x.shape[0])) if x.shape[0] < rows else x

    # 1. every rank sends its (padded) row chunk of matrix i to i's owner
    order = [[i for i in range(len(shapes)) if owners[i] == o] for o in range(world)]
    send = torch.cat([padded(locals_[i], chunks[i]).to(dtype).reshape(-1) for o in range(world) for i in order[o]])
    in_splits = [sum(chunks[i] * shapes[i][1] for i in order[o]) for o in range(world)]
    mine = order[rank]
    mine_numel = sum(chunks[i] * shapes[i][1] for i in mine)
    recv = torch.empty(mine_numel * world, dtype=dtype, device=device)
    dist.all_to_all_single(recv, send, [mine_numel] * world, in_splits, group=pg)

    # 2. owners rebuild whole matrices, orthogonalise, and cut them back into row chunks
    recv = recv.view(world, mine_numel)
    fulls = []
    offset = 0
    for i in mine:
        n = chunks[i] * shapes[i][1]
        fulls.append(recv[:, offset : offset + n].reshape(world * chunks[i], shapes[i][1])[: shapes[i][0]])
        offset += n
    results = [
        padded(out, world * chunks[i]).reshape(world, chunks[i] * shapes[i][1])
        for i, out in zip(mine, _orthogonalize_many(fulls, group, dtype))
    ]
    back = torch.cat(results, dim=1) if results else torch.empty(world, 0, dtype=dtype, device=device)

    # 3. the second all-to-all returns each rank its rows of every matrix
    back_recv = torch.empty(sum(in_splits), dtype=dtype, device=device)
    dist.all_to_all_single(back_recv, back.reshape(-1).contiguous(), in_splits, [mine_numel] * world, group=pg)
    outputs: list[torch.Tensor] = [None] * len(shapes)  # type: ignore[list-item]
    offset = 0
    for o in range(world):
        for i in order[o]:
            n = chunks[i] * shapes[i][1]
            rows = locals_[i].shape[0]
            outputs[i] = back_recv[offset : offset + n].view(chunks[i], shapes[i][1])[:rows]
            offset += n
    return outputs


class Muon(torch.optim.Muon):
    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        scaling: str = "match_rms_adamw",
        ns_dtype: str = "auto",
        names: dict[int, str] | None = None,
    ) -> None:
        """`names` maps id(param) -> name, for error messages only (kept out of the state dict)."""
        if scaling not in SCALINGS:
            raise ValueError(f"[optimizer] muon_scaling = {scaling!r} is unknown; choose one of {sorted(SCALINGS)}")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"[optimizer] muon_ns_dtype = {ns_dtype!r} is unknown; choose one of {sorted(NS_DTYPES)}")
        names = names or {}
        params = list(params)
        for group in params if params and isinstance(params[0], dict) else [{"params": params}]:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon cannot take parameter {names.get(id(p), '(unnamed)')} of shape {tuple(p.shape)}: "
                        "it orthogonalises 2-D hidden matrices only (route 1-D/embedding parameters to AdamW)"
                    )
        super().__init__(
            params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=SCALINGS[scaling],
        )
        for group in self.param_groups:
            group.setdefault("scaling", scaling)
            group.setdefault("ns_dtype", ns_dtype)
            split = group.get("head_split")
            if split is not None:
                axis, head_dim = split
                for p in group["params"]:
                    if p.shape[axis] % head_dim:
                        raise ValueError(
                            f"per-head Muon: {names.get(id(p), '(unnamed)')} of shape {tuple(p.shape)} does not split into heads of {head_dim}"
                        )

    @staticmethod
    def _ns_dtype(group: dict, device: torch.device) -> torch.dtype:
        chosen = NS_DTYPES[group["ns_dtype"]]
        if chosen is not None:
            return chosen
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending = []  # (group, its params with a gradient, their momentum updates)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            momentum = group["momentum"]
            grads, bufs = [], []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                grads.append(_local(p.grad))
                bufs.append(_local(state["momentum_buffer"]))
            # momentum (and Nesterov) on local shards, one fused launch per op for all matrices
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else [b.clone() for b in bufs]
            pending.append((group, params, updates))

        # Groups that orthogonalise alike share one batched Newton-Schulz: a learning-rate sweep trained as
        # one model (eval/mad/train.py train_sweep) has a group per run, and its small matrices would
        # otherwise cost a launch per run for each matmul of every iteration.
        alike: dict[tuple, list] = {}
        for item in pending:
            alike.setdefault(self._ns_key(item[0], item[2][0].device), []).append(item)
        for (*_, dtype), items in alike.items():
            ortho = self._orthogonalize_all([p for _, ps, _ in items for p in ps],
                                            [u for _, _, us in items for u in us], items[0][0], dtype)
            for group, params, _ in items:
                self._apply(group, params, ortho[: len(params)])
                ortho = ortho[len(params):]
        return loss

    def _ns_key(self, group: dict, device: torch.device) -> tuple:
        """What Newton-Schulz a group's matrices get (its dtype last): groups with the same key can be
        orthogonalised together."""
        split = group.get("head_split")
        return (group["ns_steps"], group["eps"], tuple(group["ns_coefficients"]),
                None if split is None else tuple(split), self._ns_dtype(group, device))

    @staticmethod
    def _apply(group: dict, params: list, ortho: list[torch.Tensor]) -> None:
        """Decoupled weight decay, then the scaled orthogonalised update, at the group's lr."""
        lr, wd = group["lr"], group["weight_decay"]
        locals_ = [_local(p) for p in params]
        torch._foreach_mul_(locals_, 1 - lr * wd)
        by_scale: dict[float, list[int]] = {}
        for i, p in enumerate(params):
            by_scale.setdefault(_scale(_block_shape(p.shape, group), group["scaling"]), []).append(i)
        for scale, idx in by_scale.items():
            torch._foreach_add_([locals_[i] for i in idx], [ortho[i].to(locals_[i].dtype) for i in idx],
                                alpha=-lr * scale)

    def _orthogonalize_all(self, params, updates, group, dtype) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
        # process group id -> (group, its size, indices of the matrices sharded over it)
        sharded: dict[int, tuple[dist.ProcessGroup, int, list[int]]] = {}
        local: list[int] = []
        for i, p in enumerate(params):
            pg, world = _shard_group(p) if isinstance(p, DTensor) else (None, 1)
            if pg is None or world == 1:
                local.append(i)
            else:
                sharded.setdefault(id(pg), (pg, world, []))[2].append(i)
        for i, result in zip(local, _orthogonalize_many([updates[i] for i in local], group, dtype)):
            out[i] = result
        for pg, world, idx in sharded.values():
            results = _distributed_orthogonalize(
                [updates[i] for i in idx], [params[i].shape for i in idx], group, pg, world, dtype
            )
            for i, r in zip(idx, results):
                out[i] = r
        return out
