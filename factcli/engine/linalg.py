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


def sqrt_outer(left: torch.Tensor, right: torch.Tensor | None = None) -> torch.Tensor:
    """(A Aᵀ)^{1/2} = U S Uᵀ with A = left @ right (or A = left); see `sqrt_outer_factors`."""
    vectors, singular = sqrt_outer_factors(left, right)
    return (vectors * singular.unsqueeze(-2)) @ vectors.mT


def sqrt_outer_factors(left: torch.Tensor, right: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, S) with (A Aᵀ)^{1/2} = U S Uᵀ from the SVD A = U S Vᵀ, A = left @ right (or left).

    Going through the SVD keeps small singular values accurate to round-off, where the square
    root of eigh(A Aᵀ) would amplify round-off ε to √ε when A is rank-deficient. When A comes as
    a product with a thin inner dimension r (FACT = Wᵀ·(−∇_W L/λ) has r = m), a QR of `left`
    reduces the SVD to an r-row matrix: O(k r²) instead of O(k³).
    """
    if right is not None and left.shape[-1] < left.shape[-2]:
        basis, triangle = torch.linalg.qr(left)
        inner, singular, _ = torch.linalg.svd(triangle @ right, full_matrices=False)
        vectors = basis @ inner
    else:
        product = left if right is None else left @ right
        vectors, singular, _ = torch.linalg.svd(product, full_matrices=False)
    return vectors, singular
