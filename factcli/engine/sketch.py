"""Output-Jacobian products: for probe vectors v over the outputs, ∂(vᵀf)/∂z for every z.

The AGOP family needs G = ∂f/∂z. With the c unit vectors as probes, Σ over probes of the
products' outer products is Σ_k ∇f_k ∇f_kᵀ exactly; other probes (random ones: a sketch) give
an estimate. Probes come in blocks of rows, so no c×c identity is ever formed and memory stays
at block × (batch outputs + Σ|z|) values however many outputs the model has.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

JACOBIAN_BUDGET = 512 * 2**20  # bytes of probe products held at once


def block_size(output: torch.Tensor, zs: list[torch.Tensor], scaled: bool) -> int:
    """How many probes per batched backward fit the budget."""
    per_probe = sum(z.numel() for z in zs) + (output.numel() if scaled else 0)
    per_probe *= output.element_size()
    return max(1, min(output.shape[1], JACOBIAN_BUDGET // max(per_probe, 1)))


def basis_probes(output: torch.Tensor, scale: torch.Tensor | None, block: int
                 ) -> Iterator[torch.Tensor]:
    """The unit vectors e_k of the c outputs, `block` at a time, each as a probe over the whole
    batch (shape (rows, n, c)); sample i's row is multiplied by scale_i when given (√w_i, so
    that the products' outer products carry the sample weight w_i)."""
    n, c = output.shape
    for start in range(0, c, block):
        stop = min(start + block, c)
        rows = torch.zeros(stop - start, c, dtype=output.dtype, device=output.device)
        rows[:, start:stop].fill_diagonal_(1)
        probe = rows.unsqueeze(1).expand(-1, n, -1)
        yield probe if scale is None else probe * scale.to(output.dtype).reshape(1, n, 1)


def probe_products(output: torch.Tensor, zs: list[torch.Tensor], probes: torch.Tensor
                   ) -> tuple[torch.Tensor, ...]:
    """∂(vᵀ output)/∂z for each probe v (a leading axis) and each z: one batched backward."""
    options = dict(retain_graph=True, allow_unused=True, materialize_grads=True)
    try:
        return torch.autograd.grad(output, zs, grad_outputs=probes, is_grads_batched=True,
                                   **options)
    except RuntimeError as error:
        if "vmap" not in str(error).lower() and "batched" not in str(error).lower():
            raise
    # An operation without a batching rule: one backward per probe instead.
    per_probe = [torch.autograd.grad(output, zs, grad_outputs=probe, **options)
                 for probe in probes]
    return tuple(torch.stack(grads) for grads in zip(*per_probe))
