"""Reaching a critical point of L = Σ w_i ℓ_i + (λ/2)‖θ‖² in float64: L-BFGS, then Newton."""

from __future__ import annotations

import torch
import torch.nn.attention  # noqa: F401  (sdpa_kernel)


def objective_of(model, x, y, decay):
    def value():
        loss = ((model(x) - y) ** 2).mean(dim=1).mean()
        return loss + decay / 2 * sum(p.pow(2).sum() for p in model.parameters())
    return value


def train_to_critical(model, x, y, decay, steps, newton=10):
    """Full-batch MSE with weight decay; returns the residual ‖∇L‖ / ‖λθ‖ reached."""
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=steps, history_size=50,
                                  tolerance_grad=1e-14, tolerance_change=0,
                                  line_search_fn="strong_wolfe")
    value = objective_of(model, x, y, decay)

    def closure():
        optimizer.zero_grad()
        total = value()
        total.backward()
        return total

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        optimizer.step(closure)
    if steps > 50:  # Newton steps from there: quadratic convergence to the critical point
        names = [name for name, _ in model.named_parameters()]
        shapes = [p.shape for p in model.parameters()]

        def flat_objective(theta):
            parts = torch.split(theta, [s.numel() for s in shapes])
            params = {k: v.view(s) for k, v, s in zip(names, parts, shapes)}
            out = torch.func.functional_call(model, params, (x,))
            return ((out - y) ** 2).mean(dim=1).mean() + decay / 2 * theta.pow(2).sum()

        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        # attention's fused CPU kernel has no forward-mode derivative; the math one does
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            flat = _newton(flat_objective, flat, newton)
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
    closure()

    with torch.no_grad():
        gradient = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        scale = decay * torch.cat([p.flatten() for p in model.parameters()]).norm()
    return float(gradient / scale)


def _newton(objective, flat, steps):
    """Newton steps on ∇L = 0 (any critical point will do: FACT holds at each), damped
    (H + μI) only as much as it takes for ‖∇L‖ to shrink, so a far start cannot diverge."""
    gradient_of = torch.func.grad(objective)
    gradient = gradient_of(flat)
    for _ in range(steps):
        hessian = torch.func.hessian(objective)(flat)
        eye = torch.eye(len(flat), dtype=flat.dtype)
        for damping in (0.0, 1e-8, 1e-6, 1e-4, 1e-2, 1.0):
            candidate = flat - torch.linalg.solve(hessian + damping * eye, gradient)
            new = gradient_of(candidate)
            if new.norm() < gradient.norm():
                flat, gradient = candidate, new
                break
        else:
            break
    return flat
