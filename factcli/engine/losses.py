"""Per-sample losses ℓ_i (relations.md §1). The mean over samples is always taken outside.

A model output of shape (n, c) is one prediction per sample. An output (n, T, c) with integer
targets (n, T) is one prediction per position (a sequence model): ℓ_i is then the mean over
sample i's predicted positions, those whose target is not IGNORE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FactError

if TYPE_CHECKING:
    import torch

LOSSES = ("mse", "cross_entropy", "next_token")
ALIASES = {"causal_lm": "next_token"}
IGNORE = -100  # a target position that is not predicted (PyTorch's and HF's ignore_index)


def check_loss(name: str) -> str:
    """The loss's canonical name (an alias resolved); unknown names are refused."""
    name = ALIASES.get(name, name)
    if name not in LOSSES:
        raise FactError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)} "
                        "(causal_lm = next_token)")
    return name


def is_sequence(output: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether (output, target) are per-position: (n, T, c) outputs with (n, T) integer ids."""
    return (output.ndim == 3 and target.ndim == 2 and not target.is_floating_point()
            and output.shape[:2] == target.shape)


def per_sample_loss(name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ℓ_i for every sample (the first axis of `output`); returns shape (n,).

    One prediction per sample (output flattened to (n, c)):
    mse: (1/c) ‖f(x_i) − y_i‖², what `nn.MSELoss()` gives with mean reduction (real targets
    of any shape with c entries per sample, e.g. (n, T, c) per-token targets);
    cross_entropy: −log softmax(f(x_i))[y_i], with integer class labels y_i.
    Per position (`is_sequence`): the mean over the positions t with y_it ≠ IGNORE of
    −log softmax(f_t)[y_it] (cross_entropy, next_token) or (1/c) ‖f_t − e_{y_it}‖² (mse);
    0 for a sample with no predicted position. next_token requires this form.
    """
    import torch.nn.functional as F

    name = check_loss(name)
    if is_sequence(output, target):
        return _per_position(name, output, target)
    if name == "next_token":
        raise FactError(f"next_token needs model outputs (n, T, vocab) and integer next-token "
                        f"targets (n, T); got outputs {tuple(output.shape)} and targets "
                        f"{tuple(target.shape)} (a causal LM on a token dataset, e.g. the "
                        "transformer with output=all)")
    output = output.reshape(len(output), -1)
    if name == "mse":
        return (output - target.reshape(len(target), -1)).pow(2).mean(dim=1)
    return F.cross_entropy(output, target, reduction="none")


def _per_position(name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    kept = target != IGNORE
    ids = target[kept]
    classes = output.shape[-1]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= classes):
        raise FactError(f"target ids {int(ids.min())}..{int(ids.max())} lie outside the "
                        f"model's {classes} outputs per position (0..{classes - 1}; "
                        f"{IGNORE} marks a position that is not predicted)")
    safe = torch.where(kept, target, 0)
    if name == "mse":
        per_position = (output - F.one_hot(safe, classes).to(output.dtype)).pow(2).mean(dim=-1)
    else:
        per_position = F.cross_entropy(output.transpose(1, 2), safe, reduction="none")
    per_position = per_position * kept.to(output.dtype)
    return per_position.sum(dim=1) / kept.sum(dim=1).clamp(min=1).to(output.dtype)


def sample_accuracy(output: torch.Tensor, labels: torch.Tensor,
                    n_classes: int | None) -> torch.Tensor | None:
    """Per sample: 1 or 0 whether argmax f(x_i) = y_i; for per-position outputs, the share of
    the sample's predicted positions predicted right (0 with none, as ℓ_i). None when the
    outputs are not n_classes scores per label (then no accuracy is reported)."""
    if n_classes is None or n_classes < 2 or labels.is_floating_point():
        return None
    if is_sequence(output, labels) and output.shape[-1] == n_classes:
        kept = labels != IGNORE
        right = (output.argmax(dim=-1) == labels) & kept
        return right.sum(dim=1).double() / kept.sum(dim=1).clamp(min=1).double()
    flat = output.reshape(len(output), -1)
    if labels.ndim != 1 or flat.shape[1] != n_classes:
        return None
    return (flat.argmax(dim=1) == labels).double()
