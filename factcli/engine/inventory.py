"""`inventory(model)`: every parameter as `fact layers` lists it, uses counted by one forward."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..data.datasets import Dataset, load_dataset
from ..errors import FactError
from .capture import Capture
from .sums import model_output
from .uses import analyzable, parameters


def inventory(model: nn.Module, dataset: str | Dataset | None = None,
              data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per weight matrix (an attention in-projection gives three) and per parameter
    that is not one. With a dataset, one training sample is run through the model to count
    each matrix's uses (as W, and as Wᵀ for a tied head); without one, uses are None."""
    counted = _count_uses(model, dataset, data_dir) if dataset is not None else None
    rows = []
    for parameter in parameters(model):
        base = {"parameter": parameter.path, "kind": parameter.kind,
                "shape": list(parameter.shape), "tied_to": parameter.tied_to}
        if not parameter.layers:
            reason = f"tied to {parameter.tied_to} (analyzed there)" if parameter.tied_to \
                else parameter.reason
            rows.append({**base, "layer": None, "m": None, "k": None, "uses": None,
                         "flipped": 0, "analyzed": False, "reason": reason})
            continue
        for layer in parameter.layers:
            m, k = layer.shape
            uses, flipped, unseen = counted(layer.name) if counted else (None, 0, None)
            reason = f"AGOP family not computable: also read by {unseen}" if unseen else \
                "not used in the forward" if uses == 0 else ""
            rows.append({**base, "layer": layer.name, "m": m, "k": k, "uses": uses,
                         "flipped": flipped, "analyzed": not unseen and uses != 0,
                         "reason": reason})
    return rows


def _count_uses(model: nn.Module, dataset: str | Dataset, data_dir):
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_dir)
    parameter = next(model.parameters(), None)
    x = data.x_train[:1]
    if parameter is not None:
        x = x.to(parameter.device)
        if x.is_floating_point():
            x = x.to(parameter.dtype)
    try:
        with Capture(analyzable(model)) as capture, torch.no_grad():
            model_output(model.eval()(x))
    except (RuntimeError, IndexError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else \
            type(error).__name__
        raise FactError(f"the model does not fit dataset {data.spec!r} (inputs of shape "
                        f"{tuple(x.shape[1:])}): {first}") from None
    counts: dict[str, int] = {}
    for use in capture.uses:
        counts[use.layer.name] = counts.get(use.layer.name, 0) + 1
    return lambda name: (counts.get(name, 0), capture.flipped[name], capture.unseen.get(name))
