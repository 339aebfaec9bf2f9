"""Uses computed once for the whole batch and broadcast over it (relations.md §1.1, "Positions").

A position embedding looked up as `pos(arange(T))` (HF GPT-2's `wpe`) gives one z for all n
samples. The batched backward passes of sums.py then deliver Σ_i g_i and Σ_i G_i at that z,
and the outer product of a sum is not the sum of the outer products: eNFA and the AGOP family
would depend on the batch size. For a per-sample use, some axis of z (of n·T indices, T ≥ 1)
assigns each index to one sample whose outputs alone reach it (checked exactly, with 2⌈log₂ n⌉
probes: random weights on the outputs of the samples whose bit b is 0, or 1); a use with no
such axis is shared. Its g and G are then formed sample by sample,
with probes that are unit vectors over (sample, loss) and (sample, output) pairs: exact, at
the cost of n times the probes of the batch. A per-sample use whose batch order is permuted
is also taken for shared, which costs time but never correctness. The test runs once per
batch size and shapes of the uses (sums.py keeps the answer): the same code path gives the
same shapes, and the probes would otherwise double the cost of a small model's analysis.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .sketch import JACOBIAN_BUDGET, probe_products


def shared_uses(output: torch.Tensor, zs: list[torch.Tensor], channels: list[int]) -> list[bool]:
    """For each z (its output channels on axis `channels[j]`), whether it is shared by the
    batch: whether no axis of z assigns each of its indices to one sample whose outputs alone
    reach it. `output` is the model output as (n, c). The probes run in blocks within
    JACOBIAN_BUDGET, each block's products reduced to which indices it reaches before the
    next: an LM's n×T×V logits are not held once per probe."""
    n = len(output)
    if n < 2 or not zs:
        return [False] * len(zs)
    bits = (n - 1).bit_length()
    samples = torch.arange(n)
    # probe (b, v): random weights on the outputs of the samples whose bit b is v
    classes = torch.stack([(samples >> bit) & 1 == value for bit in range(bits)
                           for value in (0, 1)]).to(output.device)
    generator = torch.Generator().manual_seed(0)  # drawn in the output's dtype: no n×c copy
    weights = torch.randn(output.shape, generator=generator, dtype=output.dtype).to(
        output.device)

    def layouts(size: int) -> list[torch.Tensor]:
        """Owners of the indices of an axis holding n samples × size/n positions, batch-major
        or position-major (attention flattens (T, n) into T·n rows)."""
        index = torch.arange(size, device=output.device)
        return [index // (size // n), index % n] if size % n == 0 else []

    # (axis, owner) of each z that still assigns every index to one sample
    candidates = [[(axis, owner) for axis, size in enumerate(z.shape) if axis != channel
                   for owner in layouts(size)] for z, channel in zip(zs, channels)]
    per_probe = (output.numel() + sum(z.numel() for z in zs)) * output.element_size()
    block = max(1, JACOBIAN_BUDGET // per_probe)
    for first in range(0, len(classes), block):
        weighed = classes[first:first + block]  # (probes, n): the samples each probe weighs
        products = probe_products(output, zs, weights * weighed.unsqueeze(-1))
        for j, product in enumerate(products):
            candidates[j] = [(axis, owner) for axis, owner in candidates[j]
                             if _owned(product, axis, owner, weighed)]
    return [not found for found in candidates]


def _owned(product: torch.Tensor, axis: int, owner: torch.Tensor, weighed: torch.Tensor
           ) -> bool:
    """Whether each probe's product (a leading probe axis) vanishes at the indices of `axis`
    whose owner (a sample) the probe does not weigh: then only the owner's outputs reach an
    index. Reduced in place (max |·| over the other axes), never a copy of the product."""
    others = tuple(d for d in range(product.ndim) if d not in (0, axis + 1))
    reached = torch.linalg.vector_norm(product, ord=math.inf, dim=others) != 0 if others \
        else product != 0  # (probes, size of the axis); NaN counts as reached
    return not bool((reached & ~weighed[:, owner]).any())


def unit_probes(output: torch.Tensor, scale: torch.Tensor | None, per_probe: int
                ) -> Iterator[torch.Tensor]:
    """The unit vectors of all n·c (sample, output) pairs of `output` (n, c), as many at a time
    as the budget allows for products of `per_probe` values each; sample i's scaled by
    scale_i (√w_i)."""
    n, c = output.shape
    block = max(1, min(n * c, JACOBIAN_BUDGET // max(per_probe * output.element_size(), 1)))
    for start in range(0, n * c, block):
        stop = min(start + block, n * c)
        probe = torch.zeros(stop - start, n * c, dtype=output.dtype, device=output.device)
        probe[:, start:stop].fill_diagonal_(1)
        probe = probe.reshape(-1, n, c)
        yield probe if scale is None else probe * scale.to(output.dtype).reshape(1, n, 1)


def per_sample_products(output: torch.Tensor, zs: list[torch.Tensor],
                        scale: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, ...]]:
    """∂(√w_i f_io)/∂z for every sample i and output o of `output` (n, c), in blocks: a
    leading probe axis on each z's products (the loss when `output` is the (n, 1) ℓ_i)."""
    per_probe = sum(z.numel() for z in zs) + output.numel()
    for probes in unit_probes(output, scale, per_probe):
        yield probe_products(output, zs, probes)
