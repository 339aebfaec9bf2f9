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


JACOBIAN_BUDGET = 512 * 2**20  # bytes of output Jacobians held at once (per chunk of outputs)


def output_gradients(output: torch.Tensor, inputs: list[torch.Tensor], chunk: int
                     ) -> Iterator[tuple[slice, tuple[torch.Tensor, ...]]]:
    """∂f_k/∂z for the c outputs, `chunk` outputs per backward batched over them (vmap).

    Chunking bounds memory at chunk × batch × Σm values however many outputs the model has.
    """
    c = output.shape[1]
    eye = torch.eye(c, dtype=output.dtype, device=output.device)
    for start in range(0, c, chunk):
        rows = slice(start, min(start + chunk, c))
        basis = eye[rows].unsqueeze(1).expand(-1, *output.shape)
        yield rows, _batched_grad(output, inputs, basis)


def _batched_grad(output: torch.Tensor, inputs: list[torch.Tensor],
                  basis: torch.Tensor) -> tuple[torch.Tensor, ...]:
    options = dict(retain_graph=True, allow_unused=True, materialize_grads=True)
    try:
        return torch.autograd.grad(output, inputs, grad_outputs=basis, is_grads_batched=True,
                                   **options)
    except RuntimeError as error:
        if "vmap" not in str(error).lower() and "batched" not in str(error).lower():
            raise
    # An operation without a batching rule: one backward per output instead.
    per_output = [torch.autograd.grad(output, inputs, grad_outputs=row, **options)
                  for row in basis]
    return tuple(torch.stack(grads) for grads in zip(*per_output))


def _add_product(total: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """total += leftᵀ right over the rows: the product in the model's dtype, the sum in float64."""
    total += (left.mT @ right).double()


def accumulate(model: nn.Module, layers: dict[str, nn.Linear], sums: dict[str, LayerSums],
               x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
               loss: str, outputs: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Add one batch to `sums`; returns (per-sample loss ℓ_i, model output) for bookkeeping.

    `weight` holds the per-sample weights w_i, or None for plain sums (the caller then divides
    by n). With `outputs=False` no AGOP is needed: one backward of the summed loss gives g and
    `GG` stays zero, c times less work than the backward of the c outputs.
    """
    with captured(layers) as calls, torch.enable_grad():
        output = model(x).reshape(len(x), -1)
        flat = [(name, h, z) for name in layers for h, z in calls[name]]
        zs = [z for _, _, z in flat]
        if outputs:
            leaf = output.detach().requires_grad_()
            losses = per_sample_loss(loss, leaf, target)
            (dloss,) = torch.autograd.grad(losses.sum(), leaf)  # row i: ∂ℓ_i/∂f(x_i)
            g_parts = [torch.zeros_like(z) for z in zs]
            per_output = sum(z.numel() for z in zs) * output.element_size()
            chunk = max(1, min(output.shape[1], JACOBIAN_BUDGET // max(per_output, 1)))
            for rows, gradients in output_gradients(output, zs, chunk):
                for index, ((name, _, _), G) in enumerate(zip(flat, gradients)):
                    spread = [1] * (G.ndim - 2)  # position axes, if any
                    g_parts[index] += (G * dloss.mT[rows].reshape(*G.shape[:2], *spread)).sum(0)
                    Gw = G if weight is None else G * _weights(weight, G.ndim - 1, G.dtype)
                    _add_product(sums[name].GG, Gw.reshape(-1, G.shape[-1]),
                                 G.reshape(-1, G.shape[-1]))
        else:
            losses = per_sample_loss(loss, output, target)
            g_parts = list(torch.autograd.grad(losses.sum(), zs, allow_unused=True,
                                               materialize_grads=True))
    for (name, h, _), g in zip(flat, g_parts):
        m, k = g.shape[-1], h.shape[-1]
        gw = g if weight is None else g * _weights(weight, g.ndim, g.dtype)
        _add_product(sums[name].grad, gw.reshape(-1, m), h.detach().reshape(-1, k))
        _add_product(sums[name].gg, gw.reshape(-1, m), g.reshape(-1, m))
    return losses.detach(), output.detach()


def _weights(weight: torch.Tensor, ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """w_i shaped to broadcast over a (…, batch, positions…, m) tensor of `ndim` trailing axes."""
    return weight.to(dtype).reshape(-1, *[1] * (ndim - 1))
