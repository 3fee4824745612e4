"""Model weights in and out of DCP checkpoints outside the trainer (conversion, generation, evaluation).

The trainer stores the model flat (`tok_embeddings.weight`, `layers.0.attention.wq.weight`, ...) beside
`optimizer`, `lr_scheduler`, ... entries; reading only the model's keys works on full and model-only
checkpoints alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from parallax_titan.model.args import ParallaxModelArgs


def model_state_template(args: ParallaxModelArgs) -> dict[str, torch.Tensor]:
    """The model's state dict (names, shapes, fp32) without allocating weights worth initialising."""
    from parallax_titan.model.model import ParallaxQwen3Model

    with torch.device("meta"):
        model = ParallaxQwen3Model(args)
    return {name: torch.empty(t.shape, dtype=torch.float32) for name, t in model.state_dict().items()}



def save_model_dcp(state: dict[str, torch.Tensor], path: Path) -> None:
    """A model-only DCP checkpoint in the trainer's flat layout, for `[checkpoint] initial_load_path`."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; choose a new output folder")
    dcp.save(state, checkpoint_id=str(path))


def load_model_dcp(path: Path, args: ParallaxModelArgs) -> dict[str, torch.Tensor]:
    """The model tensors of a DCP checkpoint (a trainer's `checkpoint/step-N` folder, full or
    model-only, or one written by save_model_dcp), checked against the flavor."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    metadata_file = path / ".metadata"
    if not metadata_file.is_file():
        steps = sorted(path.glob("step-*"), key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1)
        hint = f"; it holds {[s.name for s in steps]}: pass one of those" if steps else ""
        raise FileNotFoundError(f"{path} is not a DCP checkpoint (no .metadata){hint}")
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    template = model_state_template(args)
    missing = sorted(n for n in template if n not in stored)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks tensors {missing[:8]} of the flavor (attention={args.attention!r})")
    for name, tensor in template.items():
        shape = tuple(getattr(stored[name], "size", ()))
        if shape != tuple(tensor.shape):
            raise ValueError(f"{path}: tensor {name} has shape {shape}, the flavor expects {tuple(tensor.shape)}")
    extra = sorted(
        n for n in stored
        if "." in n and n.split(".")[0] in ("layers", "tok_embeddings", "norm", "output") and n not in template
    )
    if extra:
        raise ValueError(f"{path}: checkpoint has model tensors the flavor lacks: {extra[:8]}")
    dcp.load(template, checkpoint_id=str(path))
    return template
