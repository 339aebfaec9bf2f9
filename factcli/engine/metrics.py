"""Agreement between a feature matrix A (NFM or bNFM) and a relation's matrix B (relations.md §4).

Each metric takes dense tensors or `Factored` matrices (A = L Rᵀ, never formed), or `Core`s (the
same in one shared orthonormal basis): the same code computes all, from a norm, an entry mean, a
difference and an inner product, which a `Factored` gives from small Gram matrices and column
sums and a `Core` from its s×s matrix (relations.md §4.1). A dense matrix beside a
`Factored` one is already as large as the product, so that product is formed (size-checked).

Every metric is NaN when it is undefined (a zero matrix, an unknown scale), never 0 or 1.
"""

from __future__ import annotations

import math

import torch

from .factored import Core, Factored

Matrix = torch.Tensor | Factored
_HELD = (Factored, Core)  # never formed: the metrics from their small matrices


def _operands(a: Matrix | Core, b: Matrix | Core) -> tuple[Matrix | Core, Matrix | Core]:
    """Both float64, both `Factored` (or both `Core`) or both dense (flattened: only the
    entries matter)."""
    if isinstance(a, _HELD) and isinstance(b, _HELD):
        return a, b
    a, b = (x.dense() if isinstance(x, Factored) else x for x in (a, b))
    return a.double().flatten(), b.double().flatten()


def _inner(a: Matrix | Core, b: Matrix | Core) -> torch.Tensor:
    return a.inner(b) if isinstance(a, _HELD) else (a * b).sum()


def cosine(a: Matrix, b: Matrix) -> float:
    """⟨A, B⟩_F / (‖A‖_F ‖B‖_F), uncentered (the paper's Fig. 7)."""
    a, b = _operands(a, b)
    denominator = float(a.norm() * b.norm())
    if denominator == 0 or not math.isfinite(denominator):
        return math.nan
    return min(1.0, max(-1.0, float(_inner(a, b)) / denominator))  # round-off can pass ±1


def pearson(a: Matrix, b: Matrix) -> float:
    """Pearson correlation of the entries (the paper's Fig. 2): the cosine once each matrix
    has its entry mean subtracted."""
    a, b = _operands(a, b)
    return cosine(a - a.mean(), b - b.mean())


def rel_err(a: Matrix, b: Matrix) -> float:
    """‖A − B‖_F / ‖A‖_F: meaningful only when B carries an absolute scale (the FACT family)."""
    a, b = _operands(a, b)
    norm = float(a.norm())
    if norm == 0 or not math.isfinite(norm):
        return math.nan
    return float((a - b).norm()) / norm


METRICS = {"pearson": pearson, "cosine": cosine, "rel_err": rel_err}
