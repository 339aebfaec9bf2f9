"""Agreement between a feature matrix A (NFM or bNFM) and a relation's matrix B (relations.md §4).

Every metric is NaN when it is undefined (a zero matrix, an unknown scale), never 0 or 1.
"""

from __future__ import annotations

import math

import torch


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨A, B⟩_F / (‖A‖_F ‖B‖_F), uncentered (the paper's Fig. 7)."""
    a, b = a.double().flatten(), b.double().flatten()
    denominator = a.norm() * b.norm()
    if denominator == 0 or not torch.isfinite(denominator):
        return math.nan
    return min(1.0, max(-1.0, float((a @ b) / denominator)))  # round-off can pass ±1 by an ulp


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the flattened entries (the paper's Fig. 2)."""
    a, b = a.double().flatten(), b.double().flatten()
    return cosine(a - a.mean(), b - b.mean())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖A − B‖_F / ‖A‖_F: meaningful only when B carries an absolute scale (the FACT family)."""
    a, b = a.double(), b.double()
    norm = a.norm()
    if norm == 0 or not torch.isfinite(norm):
        return math.nan
    return float((a - b).norm() / norm)


METRICS = {"pearson": pearson, "cosine": cosine, "rel_err": rel_err}
