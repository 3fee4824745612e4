"""A backend of an operator: the function that runs it and the check that says whether it can run.

Asking for a backend that cannot run is an error naming the reason, never a silent switch to another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Backend:
    fn: Callable[..., torch.Tensor]
    # Returns None when the backend can run on these inputs, else the reason it cannot.
    unavailable_reason: Callable[[torch.Tensor], str | None]


def always_available(_: torch.Tensor) -> str | None:
    return None

