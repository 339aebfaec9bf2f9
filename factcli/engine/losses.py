"""Per-sample losses ℓ_i (relations.md §1). The mean over samples is always taken outside."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FactError

if TYPE_CHECKING:
    import torch

LOSSES = ("mse", "cross_entropy")


def per_sample_loss(name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ℓ_i for every row of `output` (shape (n, c)); returns shape (n,).

    mse: (1/c) ‖f(x_i) − y_i‖², what `nn.MSELoss()` gives with mean reduction.
    cross_entropy: −log softmax(f(x_i))[y_i], with integer class labels y_i.
    """
    import torch.nn.functional as F

    if name == "mse":
        return (output - target).pow(2).mean(dim=1)
    if name == "cross_entropy":
        return F.cross_entropy(output, target, reduction="none")
    raise FactError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise FactError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return name
