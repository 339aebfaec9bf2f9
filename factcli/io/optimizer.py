"""AdamW's state (a PyTorch optimizer `state_dict`) as the preconditioner of `fact_adamw`.

torch.optim.AdamW steps p ← p(1 − lr·λ) − lr·m̂ ⊘ (√v̂ + ε) with v̂ = exp_avg_sq/(1 − β₂^step),
so at a fixed point λp = −m̂ ⊘ (√v̂ + ε) (relations.md §7). What is read from the file is
`exp_avg_sq`, `step` and each group's β₂, ε and λ (`weight_decay`); every field is checked
before use, and a mismatch is one FactError naming it.

A `state_dict` numbers the parameters 0, 1, … in the order of its `param_groups`, which for
`AdamW(model.parameters())` is the model's `parameters()` order; that is how indices are
mapped to the model here (the shapes must then agree, parameter by parameter).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FactError
from . import validate

# Where a state_dict sits inside the files that carry one besides other things.
WRAPPERS = (("resume", "optimizer"), ("optimizer_state_dict",), ("optimizer",))


@dataclass(frozen=True)
class Preconditioner:
    """√v̂ + ε of one parameter (float64, the parameter's shape) and its group's λ."""

    denominator: torch.Tensor
    weight_decay: float


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The optimizer state_dict in a `.pt` file: a bare `opt.state_dict()`, a factcli
    checkpoint or resume sidecar (under `resume.optimizer`), or a training dict (under
    `optimizer_state_dict` or `optimizer`). Read with `weights_only=True`."""
    from .checkpoint import read_pt

    source = Path(path)
    if not source.is_file():
        raise FactError(f"optimizer state not found: {source}")
    content = read_pt(source)
    for keys in WRAPPERS:
        inner = content
        for key in keys:
            inner = inner.get(key) if isinstance(inner, dict) else None
        if isinstance(inner, dict) and "param_groups" in inner:
            return inner
    return content


def preconditioners(state: Any, model: nn.Module, where: str,
                    optimizer: str | None = None) -> dict[str, Preconditioner]:
    """Check an AdamW state_dict against `model`; √v̂ + ε and λ by parameter name.

    `optimizer` is what the checkpoint records (when it does): a state of anything but
    `adamw` is refused, as is a torch Adam state that says its decay is coupled (for coupled
    decay plain `fact` is the fixed-point relation). Parameters without state (never stepped)
    are left out.
    """
    if optimizer is not None and optimizer != "adamw":
        raise FactError(f"{where}: the optimizer is {optimizer!r}; fact_adamw needs AdamW state")
    if not isinstance(state, dict) or not {"state", "param_groups"} <= state.keys():
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise FactError(f"{where} is not an optimizer state_dict: expected a dict with 'state' "
                        f"and 'param_groups' (found {found})")
    groups, entries = state["param_groups"], state["state"]
    if not isinstance(groups, list) or not groups:
        raise FactError(f"{where}: 'param_groups' must be a non-empty list")
    if not isinstance(entries, dict):
        raise FactError(f"{where}: 'state' must be a dict (index → moments)")
    listed: list[tuple[int, dict[str, float]]] = []
    seen: set[int] = set()
    for number, group in enumerate(groups):
        hyper = _group(group, f"{where}: param_groups[{number}]")
        for index in group["params"]:
            if isinstance(index, bool) or not isinstance(index, int) or index in seen:
                raise FactError(f"{where}: param_groups[{number}] lists {index!r}, not a new "
                                "parameter index")
            listed.append((index, hyper))
            seen.add(index)
    named = list(model.named_parameters())
    if len(listed) != len(named):
        raise FactError(f"{where} holds the state of {len(listed)} parameters; the model has "
                        f"{len(named)} (an optimizer over model.parameters() is expected)")
    owner = {index: (name, parameter, hyper)
             for (index, hyper), (name, parameter) in zip(listed, named)}
    result: dict[str, Preconditioner] = {}
    for index, entry in entries.items():
        if index not in owner:
            raise FactError(f"{where}: 'state' has index {index!r}, which no param group lists")
        name, parameter, hyper = owner[index]
        result[name] = _preconditioner(entry, parameter, hyper,
                                       f"{where}: state[{index}] ({name})")
    return result


def _group(group: Any, where: str) -> dict[str, float]:
    """A param group's β₂, ε, λ, checked (and lr, which the relation does not use)."""
    if not isinstance(group, dict) or not isinstance(group.get("params"), list):
        raise FactError(f"{where} must be a dict with a 'params' list")
    for key in ("lr", "betas", "eps", "weight_decay"):
        if key not in group:
            raise FactError(f"{where} lacks {key!r} (not an Adam/AdamW state?)")
    if group.get("decoupled_weight_decay") is False:
        raise FactError(f"{where} is coupled Adam (decoupled_weight_decay False): its fixed "
                        "points satisfy plain fact, not fact_adamw")
    for flag in ("amsgrad", "maximize"):
        if group.get(flag):
            raise FactError(f"{where} has {flag}=True; fact_adamw is the relation of plain AdamW")
    validate.number(group["lr"], f"{where} lr", minimum=0)
    betas = group["betas"]
    if not isinstance(betas, list | tuple) or len(betas) != 2:
        raise FactError(f"{where} betas must be a pair (β₁, β₂) (got {betas!r})")
    for beta, label in zip(betas, ("β₁", "β₂")):
        value = validate.number(beta, f"{where} {label}", minimum=0)
        if not value < 1:
            raise FactError(f"{where} {label} must lie in [0, 1) (got {value})")
    return {"beta2": float(betas[1]),
            "eps": validate.number(group["eps"], f"{where} eps", positive=True),
            "weight_decay": validate.number(group["weight_decay"], f"{where} weight_decay (λ)",
                                            positive=True)}


def _preconditioner(entry: Any, parameter: torch.Tensor, hyper: dict[str, float],
                    where: str) -> Preconditioner:
    if not isinstance(entry, dict) or "exp_avg_sq" not in entry or "step" not in entry:
        raise FactError(f"{where} must be a dict with 'exp_avg_sq' and 'step'")
    square, step = entry["exp_avg_sq"], entry["step"]
    if not isinstance(square, torch.Tensor) or not square.is_floating_point():
        raise FactError(f"{where}: exp_avg_sq must be a floating-point tensor")
    if tuple(square.shape) != tuple(parameter.shape):
        raise FactError(f"{where}: exp_avg_sq has shape {tuple(square.shape)}, the parameter "
                        f"{tuple(parameter.shape)}")
    square = square.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(square).all()):
        raise FactError(f"{where}: exp_avg_sq is not finite")
    if bool((square < 0).any()):
        raise FactError(f"{where}: exp_avg_sq has negative entries (a second moment is >= 0)")
    steps = validate.number(step, f"{where} step", positive=True)
    correction = 1.0 - hyper["beta2"] ** steps
    if not correction > 0 or not math.isfinite(correction):
        raise FactError(f"{where}: the bias correction 1 - β₂^step is {correction}")
    return Preconditioner((square / correction).sqrt() + hyper["eps"], hyper["weight_decay"])
