"""The regularized objective on the full training set, evaluated exactly (float64).

L(θ) = Σ_i w_i ℓ_i + (λ/2)‖θ‖² (relations.md §1); shared by `fact train` (final metrics, the
divergence check) and the polish.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..data.datasets import Dataset
from ..engine.losses import per_sample_loss, sample_accuracy
from ..engine.uses import layer_name

EVAL_CHUNK = 512  # samples per chunk: bounds memory; larger chunks were no faster on CPU


def objective_terms(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                     weights: torch.Tensor, loss: str, backward: bool) -> torch.Tensor:
    """Σ_i w_i ℓ_i over the whole set; with `backward`, accumulate its gradient in `.grad`.

    Chunked (and each chunk's graph freed by its own backward) so that memory stays bounded by
    EVAL_CHUNK samples however large the set; the sum is accumulated in float64.
    """
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, len(x), EVAL_CHUNK):
        stop = start + EVAL_CHUNK
        part = (per_sample_loss(loss, model(x[start:stop]), targets[start:stop])
                * weights[start:stop]).sum()
        if backward:
            part.backward()
        total += part.detach().double()
    return total


def accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
             weights: torch.Tensor | None, n_classes: int | None) -> float | None:
    """Σ_i w_i a_i (a_i: `sample_accuracy`), or None when the outputs are not class scores."""
    if labels is None:
        return None
    hits = torch.zeros((), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, len(x), EVAL_CHUNK):
            stop = start + EVAL_CHUNK
            hit = sample_accuracy(model(x[start:stop]), labels[start:stop], n_classes)
            if hit is None:
                return None
            hits += (hit * weights[start:stop]).sum() if weights is not None else hit.sum()
    return float(hits) if weights is not None else float(hits) / len(x)


def weight_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every weight matrix or kernel (a parameter with ≥ 2 dims: Linear, Conv, Embedding,
    attention projections), by layer name; a tied parameter appears once. Biases and norm
    scales (1-dim) are not weight matrices."""
    return {layer_name(name): p for name, p in model.named_parameters() if p.ndim >= 2}


def weight_stationarity(model: nn.Module, weight_decay: float) -> dict[str, float | None]:
    """‖∇_W L_data + λW‖_F / ‖λW‖_F per weight parameter, from the gradients in `.grad`."""
    result: dict[str, float | None] = {}
    for name, weight in weight_parameters(model).items():
        W = weight.detach().double()
        grad = torch.zeros_like(W) if weight.grad is None else weight.grad.detach().double()
        denominator = float((weight_decay * W).norm())
        result[name] = (float((grad + weight_decay * W).norm()) / denominator
                        if denominator > 0 else None)
    return result


class FullData:
    """The training (and test) tensors on the device, in the training dtype."""

    def __init__(self, data: Dataset, loss: str, device: torch.device, dtype: torch.dtype):
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

        self.n, self.dtype, self.device = data.n_train, dtype, device
        self.n_classes = data.n_classes
        self.x = move(data.x_train.reshape(self.n, -1))
        self.t = move(data.targets(loss))
        self.labels = data.y_train.to(device) if data.n_classes is not None else None
        exact = (None if data.weights is None
                 else (data.weights.double() / data.weights.double().sum()).to(device))
        self.w = None if exact is None else exact.to(dtype)
        self._w64 = exact
        has_test = data.x_test is not None and data.y_test is not None and len(data.x_test) > 0
        self.x_test = move(data.x_test.reshape(len(data.x_test), -1)) if has_test else None
        self.t_test = move(data.targets(loss, "test")) if has_test else None
        self.labels_test = (data.y_test.to(device) if has_test and data.n_classes is not None
                            else None)

    def cast(self, dtype: torch.dtype) -> FullData:
        other = copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                setattr(other, key, value.to(dtype))
        other.dtype = dtype
        if dtype == torch.float64 and self._w64 is not None:
            other.w = self._w64  # the sample weights without a float32 round trip
        return other

    def uniform(self, n: int) -> torch.Tensor:
        """1/n in the floating dtype of the run (inputs may be integer token ids)."""
        return torch.full((n,), 1.0 / n, dtype=self.dtype, device=self.device)

    def train_weights(self) -> torch.Tensor:
        """The w_i of L as a tensor (the dataset's own or 1/n), so that every sum is Σ w_i ℓ_i."""
        return self.w if self.w is not None else self.uniform(self.n)


def regularized_objective(model: nn.Module, d: FullData, loss: str,
                          weight_decay: float) -> tuple[float, float]:
    """(Σ w_i ℓ_i, L) on the full training set, L including every parameter (biases too).

    Leaves ∇ Σ w_i ℓ_i in `.grad` (previous gradients are discarded), which is what
    `weight_stationarity` reads next.
    """
    model.zero_grad(set_to_none=True)
    data_loss = float(objective_terms(model, d.x, d.t, d.train_weights(), loss, backward=True))
    penalty = sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
    return data_loss, data_loss + 0.5 * weight_decay * penalty


def evaluate(model: nn.Module, d: FullData, loss: str, weight_decay: float) -> dict[str, Any]:
    """Exact full-data metrics and per-layer stationarity, computed on a float64 copy."""
    m = copy.deepcopy(model).double()
    d64 = d.cast(torch.float64)
    data_loss, objective = regularized_objective(m, d64, loss, weight_decay)
    result: dict[str, Any] = {
        "train_loss": data_loss, "objective": objective,
        "train_acc": accuracy(m, d64.x, d64.labels, d64.w, d.n_classes),
        "stationarity": weight_stationarity(m, weight_decay),
    }
    if d64.x_test is not None:
        with torch.no_grad():
            wt = d64.uniform(len(d64.x_test))
            result["test_loss"] = float(objective_terms(m, d64.x_test, d64.t_test, wt, loss,
                                                         backward=False))
        result["test_acc"] = accuracy(m, d64.x_test, d64.labels_test, None, d.n_classes)
    return result


def finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None
