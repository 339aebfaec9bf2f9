"""Polishing a trained model onto a critical point: full-batch float64 second-order steps.

FACT is exact only at a critical point of L; first-order training stops near one. Tiny models
get damped Newton on the exact Hessian, larger ones L-BFGS with a strong-Wolfe line search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..engine.losses import per_sample_loss
from ..engine.uses import layer_name
from .objective import (
    FullData,
    objective_terms,
    regularized_objective,
    weight_stationarity,
)

POLISH_METHOD = "lbfgs-strong-wolfe"
NEWTON_METHOD = "newton"
NEWTON_MAX_PARAMS = 1500
LBFGS_CHUNK = 10  # L-BFGS iterations per optimizer.step: progress is reported between them
Callback = Callable[[dict[str, Any]], None]


def polish(model: nn.Module, d: FullData, loss: str, weight_decay: float, max_steps: int,
           callback: Callback | None = None,
           should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Up to `max_steps` full-batch float64 second-order steps on L; the model becomes float64.

    Damped Newton on the exact Hessian for tiny models (≤ NEWTON_MAX_PARAMS parameters: the
    Hessian is cheap and convergence quadratic), L-BFGS with a strong-Wolfe line search otherwise.
    """
    model.double()
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if size <= NEWTON_MAX_PARAMS:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # attention's fused CPU kernel has no forward-mode derivative (the Hessian needs one)
        with sdpa_kernel(SDPBackend.MATH):
            return _newton(model, d, loss, weight_decay, max_steps, callback, should_stop)
    return _lbfgs(model, d, loss, weight_decay, max_steps, callback, should_stop)


def _lbfgs(model: nn.Module, d: FullData, loss: str, weight_decay: float, max_steps: int,
           callback: Callback | None, should_stop: Callable[[], bool] | None) -> dict[str, Any]:
    d64 = d.cast(torch.float64)
    w = d64.train_weights()
    params = [p for p in model.parameters() if p.requires_grad]
    chunk = LBFGS_CHUNK
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=chunk, max_eval=5 * chunk,
                                  tolerance_grad=0.0, tolerance_change=0.0, history_size=100,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        value = objective_terms(model, d64.x, d64.t, w, loss, backward=True)
        with torch.no_grad():
            for p in params:
                p.grad.add_(p, alpha=weight_decay)
                value += 0.5 * weight_decay * p.double().pow(2).sum()
        return value

    def current() -> tuple[float, float]:
        objective = regularized_objective(model, d64, loss, weight_decay)[1]
        return objective, worst_stationarity(weight_stationarity(model, weight_decay))

    objective, worst = current()
    start_objective, steps, evaluations, history = objective, 0, 0, []
    best, stale = objective, 0
    while steps < max_steps:
        if should_stop is not None and should_stop():
            break
        optimizer.param_groups[0]["max_iter"] = min(chunk, max_steps - steps)
        optimizer.step(closure)
        state = optimizer.state[params[0]]
        done = int(state.get("n_iter", 0)) - steps
        evaluations = int(state.get("func_evals", 0))
        steps += done
        objective, worst = current()
        row = {"event": "polish", "step": steps, "objective": objective, "stationarity": worst}
        history.append(row)
        if callback is not None:
            callback(dict(row))
        # L-BFGS stalls at the precision limit of float64: stop when L no longer decreases.
        stale = stale + 1 if not objective < best - 1e-15 * abs(best) else 0
        best = min(best, objective)
        if done == 0 or stale >= 3 or worst < 1e-13:
            break
    optimizer.zero_grad(set_to_none=True)
    return {"method": POLISH_METHOD, "max_steps": max_steps, "steps": steps,
            "function_evaluations": evaluations, "dtype": "float64",
            "objective_before": start_objective, "objective_after": objective,
            "history": history}


def _newton(model: nn.Module, d: FullData, loss: str, weight_decay: float, max_steps: int,
            callback: Callback | None, should_stop: Callable[[], bool] | None
            ) -> dict[str, Any]:
    """Saddle-free Newton steps (|eigenvalues| of the exact Hessian of L) with backtracking."""
    from torch.func import functional_call, grad, hessian

    d64 = d.cast(torch.float64)
    w = d64.train_weights()
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    chunk = max(1, min(d64.n, int(4e6 // max(len(theta), 1))))
    lam = weight_decay

    def unflat(vector: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: v.view(s) for n, v, s in zip(names, vector.split(sizes), shapes, strict=True)}

    def data_part(vector, x, t, weights):
        output = functional_call(model, unflat(vector), (x,))
        return (per_sample_loss(loss, output, t) * weights).sum()

    def parts():
        return [(d64.x[i:i + chunk], d64.t[i:i + chunk], w[i:i + chunk])
                for i in range(0, d64.n, chunk)]

    def value_grad(vector):
        value = 0.5 * lam * vector.dot(vector)
        gradient = lam * vector
        for x, t, weights in parts():
            value = value + data_part(vector, x, t, weights).detach()
            gradient = gradient + grad(data_part)(vector, x, t, weights)
        return float(value), gradient

    def full_hessian(vector):
        total = lam * torch.eye(len(vector), dtype=vector.dtype, device=vector.device)
        for x, t, weights in parts():
            total = total + hessian(data_part)(vector, x, t, weights)
        return (total + total.mT) / 2

    offsets = torch.tensor([0, *sizes]).cumsum(0).tolist()
    matrices = [(layer_name(n), offsets[i], sizes[i]) for i, n in enumerate(names)
                if params[i].ndim >= 2]  # as weight_stationarity: every weight parameter

    def station(vector, gradient) -> dict[str, float | None]:
        result: dict[str, float | None] = {}
        for name, start, count in matrices:
            denominator = float(lam * vector[start:start + count].norm())
            result[name] = (float(gradient[start:start + count].norm()) / denominator
                            if denominator > 0 else None)
        return result

    value, gradient = value_grad(theta)
    start_value, steps, evaluations, history = value, 0, 1, []
    worst = worst_stationarity(station(theta, gradient))
    best, stale = math.inf, 0
    while steps < max_steps:
        if should_stop is not None and should_stop():
            break
        stale = stale + 1 if not worst < 0.5 * best else 0
        best = min(best, worst)
        # Stop at float64's floor: tiny, or small and no longer halving over 5 steps.
        if worst < 1e-13 or (stale >= 5 and worst < 1e-8):
            break
        # Saddle-free Newton: |eigenvalues| (floored) so that the step always descends.
        eigenvalues, vectors = torch.linalg.eigh(full_hessian(theta))
        floor = max(1e-12 * float(eigenvalues.abs().max()), 1e-300)
        step = -vectors @ ((vectors.mT @ gradient) / eigenvalues.abs().clamp(min=floor))
        accepted, t = False, 1.0
        while t > 1e-12:
            trial = theta + t * step
            trial_value, trial_gradient = value_grad(trial)
            evaluations += 1
            # Near the critical point L no longer resolves the change: then ‖∇L‖ decides.
            if trial_value < value or (trial_value <= value + 1e-13 * abs(value)
                                       and trial_gradient.norm() < gradient.norm()):
                theta, value, gradient, accepted = trial, trial_value, trial_gradient, True
                break
            t /= 2
        if not accepted:
            break
        steps += 1
        worst = worst_stationarity(station(theta, gradient))
        row = {"event": "polish", "step": steps, "objective": value, "stationarity": worst}
        history.append(row)
        if callback is not None:
            callback(dict(row))
    with torch.no_grad():
        for p, v in zip(params, theta.split(sizes), strict=True):
            p.copy_(v.view_as(p))
    return {"method": NEWTON_METHOD, "max_steps": max_steps, "steps": steps,
            "function_evaluations": evaluations, "dtype": "float64",
            "objective_before": start_value, "objective_after": value, "history": history}


def worst_stationarity(station: dict[str, float | None]) -> float:
    """The largest per-layer stationarity; NaN when none is defined (λ = 0)."""
    values = [v for v in station.values() if v is not None]
    return max(values) if values else math.nan
