"""Matrix functions shared by the relations and the RFM."""

from __future__ import annotations

import torch


def psd_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    """M^power of a symmetric PSD matrix via eigh; negative eigenvalues (round-off) clip to 0.

    The input is symmetrized first so that round-off asymmetry cannot leak into eigh.
    """
    sym = (matrix + matrix.mT) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(sym)
    scaled = eigenvalues.clamp(min=0) ** power
    return (eigenvectors * scaled.unsqueeze(-2)) @ eigenvectors.mT


def sqrt_outer(matrix: torch.Tensor) -> torch.Tensor:
    """(A Aᵀ)^{1/2} = U S Uᵀ from the SVD A = U S Vᵀ (fact_sqrt, bfact_sqrt, FACT-RFM).

    Going through the SVD keeps small singular values accurate to round-off, where the square
    root of eigh(A Aᵀ) would amplify round-off ε to √ε when A is rank-deficient.
    """
    left, singular, _ = torch.linalg.svd(matrix, full_matrices=False)
    return (left * singular.unsqueeze(-2)) @ left.mT
