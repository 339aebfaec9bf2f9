"""Per-layer sums gathered from one forward and one batched backward per batch.

For a Linear z = W h (+ b) with output gradients G_i = ∂f(x_i)/∂z ∈ R^{c×m} and loss gradient
g_i = ∂ℓ_i/∂z = G_iᵀ ∂ℓ_i/∂f, every relation of relations.md §2–3 is a function of W and three
float64 sums, each weighted by the sample weight w_i (1/n unless the dataset is weighted):

    grad = Σ_i w_i g_i h_iᵀ  (m×k)   = ∇_W L_data: FACT, bFACT, stationarity
    gg   = Σ_i w_i g_i g_iᵀ  (m×m)   : bENFA, and ENFA = Wᵀ gg W
    GG   = Σ_i w_i G_iᵀ G_i  (m×m)   : bAGOP, and AGOP = Wᵀ GG W

A position axis (tokens, patches) adds one term per (sample, position). g_i is obtained from
the batched output gradients, so no separate backward pass of the loss is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .losses import per_sample_loss


@dataclass
class LayerSums:
    grad: torch.Tensor
    gg: torch.Tensor
    GG: torch.Tensor

    @classmethod
    def zeros(cls, layer: nn.Linear, device: torch.device) -> LayerSums:
        m, k = layer.weight.shape
        def zero(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)
        return cls(zero(m, k), zero(m, m), zero(m, m))

    def scale(self, factor: float) -> None:
        for total in (self.grad, self.gg, self.GG):
            total *= factor



@contextlib.contextmanager
def captured(layers: dict[str, nn.Linear]) -> Iterator[dict[str, list]]:
    """Record (input, output) of every call of each layer; hooks are removed on exit."""
    calls: dict[str, list] = {name: [] for name in layers}
    handles = [
        layer.register_forward_hook(lambda _m, args, output, name=name:
                                    calls[name].append((args[0], output)))
        for name, layer in layers.items()
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def output_gradients(output: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """∂f_k/∂z for all c outputs at once: one backward batched over the outputs (vmap)."""
    c = output.shape[1]
    basis = torch.eye(c, dtype=output.dtype, device=output.device)
    basis = basis.unsqueeze(1).expand(c, *output.shape)
    try:
        return torch.autograd.grad(output, inputs, grad_outputs=basis, is_grads_batched=True,
                                   allow_unused=True, materialize_grads=True)
    except RuntimeError as error:
        if "vmap" not in str(error).lower() and "batched" not in str(error).lower():
            raise
    # An operation without a batching rule: one backward per output instead (c passes).
    per_output = [torch.autograd.grad(output, inputs, grad_outputs=basis[k], retain_graph=True,
                                      allow_unused=True, materialize_grads=True)
                  for k in range(c)]
    return tuple(torch.stack(grads) for grads in zip(*per_output))


def accumulate(model: nn.Module, layers: dict[str, nn.Linear], sums: dict[str, LayerSums],
               x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
               loss: str, outputs: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Add one batch to `sums`; returns (per-sample loss ℓ_i, model output) for bookkeeping.

    `weight` holds the per-sample weights w_i, or None for plain sums (the caller then divides
    by n). Each batch's products are formed in the model's dtype and added to float64 sums.
    With `outputs=False` no AGOP is needed: one backward of the summed loss gives g and `GG`
    stays zero, c times less work than the batched backward of the c outputs.
    """
    with captured(layers) as calls, torch.enable_grad():
        output = model(x).reshape(len(x), -1)
        flat = [(name, h, z) for name in layers for h, z in calls[name]]
        zs = [z for _, _, z in flat]
        if outputs:
            gradients = output_gradients(output, zs)
            leaf = output.detach().requires_grad_()
            losses = per_sample_loss(loss, leaf, target)
            (dloss,) = torch.autograd.grad(losses.sum(), leaf)  # row i: ∂ℓ_i/∂f(x_i)
        else:
            losses = per_sample_loss(loss, output, target)
            loss_gradients = torch.autograd.grad(losses.sum(), zs, allow_unused=True,
                                                 materialize_grads=True)
    for index, (name, h, _) in enumerate(flat):
        if outputs:
            G = gradients[index]
            spread = [1] * (G.ndim - 2)                   # position axes, if any
            g = (G * dloss.mT.reshape(*dloss.mT.shape, *spread)).sum(dim=0)
        else:
            g = loss_gradients[index]
        m, k = g.shape[-1], h.shape[-1]
        w = None if weight is None else weight.to(g.dtype).reshape(-1, *[1] * (g.ndim - 1))
        g_rows, h_rows = g.reshape(-1, m), h.detach().reshape(-1, k)
        gw_rows = g_rows if w is None else (g * w).reshape(-1, m)
        s = sums[name]
        s.grad += (gw_rows.mT @ h_rows).double()
        s.gg += (gw_rows.mT @ g_rows).double()
        if outputs:
            G_rows = G.reshape(-1, m)
            Gw_rows = G_rows if w is None else (G * w.unsqueeze(0)).reshape(-1, m)
            s.GG += (Gw_rows.mT @ G_rows).double()
    return losses.detach(), output.detach()
