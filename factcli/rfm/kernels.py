"""Kernels of a Recursive Feature Machine and the closed forms one RFM step needs.

relations.md §5: Mahalanobis Laplace/Gaussian and inner-product kernels K_M, kernel ridge
regression, the predictor's Jacobian, its AGOP and its FACT (Lemma F.1). Every kernel writes its
gradient in the first argument as ∇₁K(x, z) = M (P x + Q z) with scalar weights P, Q per pair,
so that the Jacobian, AGOP and FACT share one code path and never form an n×n×d tensor. The
loops over rows bound the extra memory to `batch` × n entries.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import FactError

KERNELS = ("laplace", "gaussian", "exp", "quadratic")


class Kernel:
    """K_M(x, z) for one of KERNELS; `bandwidth` L matters only for laplace and gaussian."""

    def __init__(self, name: str, bandwidth: float = 1.0):
        if name not in KERNELS:
            raise FactError(f"unknown kernel {name!r}; choose one of: {', '.join(KERNELS)}")
        if name in ("laplace", "gaussian") and not bandwidth > 0:
            raise FactError(f"bandwidth must be positive (got {bandwidth})")
        self.name, self.bandwidth = name, float(bandwidth)

    @property
    def inner_product(self) -> bool:
        return self.name in ("exp", "quadratic")

    def _base(self, x: torch.Tensor, z: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """xᵀMz for inner-product kernels, else ‖x − z‖²_M (pairs closer than round-off → 0)."""
        xm = x @ M
        inner = xm @ z.mT
        if self.inner_product:
            return inner
        xx, zz = (xm * x).sum(1), ((z @ M) * z).sum(1)
        norms = xx[:, None] + zz[None, :]
        squared = inner.mul_(-2).add_(norms)
        # The expansion loses ~eps·‖x‖² of accuracy; treat such pairs (and x with itself) as equal.
        return squared.masked_fill_(squared <= norms.mul_(1e3 * torch.finfo(x.dtype).eps), 0)

    def matrix(self, x: torch.Tensor, z: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        base = self._base(x, z, M)
        if self.name == "laplace":
            return torch.exp(-base.sqrt() / self.bandwidth)
        if self.name == "gaussian":
            return torch.exp(-base / (2 * self.bandwidth ** 2))
        return torch.exp(base) if self.name == "exp" else base ** 2

    def gradient_weights(self, x: torch.Tensor, z: torch.Tensor, M: torch.Tensor
                         ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(P, Q) with ∇₁K(x_i, z_j) = M (P_ij x_i + Q_ij z_j); P is None (zero) for inner products.

        Laplace takes the gradient as 0 where ‖x − z‖_M ≈ 0 (it is undefined there).
        """
        base = self._base(x, z, M)
        if self.name == "exp":
            return None, torch.exp(base)
        if self.name == "quadratic":
            return None, 2 * base
        if self.name == "gaussian":
            weight = torch.exp(-base / (2 * self.bandwidth ** 2)) / self.bandwidth ** 2
        else:
            distance = base.sqrt_()
            weight = torch.exp(-distance / self.bandwidth).div_(distance * self.bandwidth)
            weight.masked_fill_(distance == 0, 0)
        return -weight, weight


def _batches(n: int, batch: int) -> Iterator[slice]:
    for start in range(0, n, batch):
        yield slice(start, min(start + batch, n))


def default_batch(n: int, width: int) -> int:
    """Rows per batch so that a batch's n×… blocks hold about 2²⁴ numbers."""
    return max(1, (1 << 24) // max(n, width, 1))


def predict(kernel: Kernel, x: torch.Tensor, centers: torch.Tensor, alpha: torch.Tensor,
            M: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """f(x) = Σ_j α_j K_M(x, x_j), computed in row batches."""
    batch = batch or default_batch(len(centers), 1)
    return torch.cat([kernel.matrix(x[rows], centers, M) @ alpha
                      for rows in _batches(len(x), batch)]) if len(x) else alpha[:0]


def solve(K: torch.Tensor, Y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
    """(α, jitter) with α = (K + μI)⁻¹Y by Cholesky. μ = 0 solves K α = Y, falling back to the
    minimum-norm least-squares solution (eigenvalue pseudo-inverse) when K is singular.

    If K + μI is not numerically positive definite, jitter (a multiple of the mean diagonal,
    growing by 100× per try up to 1e-2) is added and returned so the caller can warn about it.
    """
    if not torch.isfinite(K).all():
        raise FactError("the kernel matrix has non-finite entries (the exp kernel overflows on "
                        "large inputs: standardize the data or pick another kernel)")
    if ridge == 0:
        factor, info = torch.linalg.cholesky_ex(K)
        if int(info) == 0:
            return torch.cholesky_solve(Y, factor), 0.0
        eigenvalues, vectors = torch.linalg.eigh(K)
        cutoff = eigenvalues.abs().max() * len(K) * torch.finfo(K.dtype).eps
        inverse = torch.where(eigenvalues > cutoff, 1 / eigenvalues, torch.zeros_like(eigenvalues))
        return vectors @ (inverse[:, None] * (vectors.mT @ Y)), 0.0
    system = K.clone()
    system.diagonal().add_(ridge)
    scale = float(system.diagonal().abs().mean())
    jitter = 0.0
    while True:
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) == 0:
            return torch.cholesky_solve(Y, factor), jitter
        step = 1e-12 * scale if jitter == 0 else jitter * 99
        system.diagonal().add_(step)
        jitter += step
        if jitter > 1e-2 * scale:
            raise FactError(f"the kernel matrix plus ridge {ridge:g} is singular even with jitter "
                            f"{1e-2 * scale:.3g}; increase --ridge or remove duplicate points")


def jacobian(kernel: Kernel, x: torch.Tensor, centers: torch.Tensor, alpha: torch.Tensor,
             M: torch.Tensor) -> torch.Tensor:
    """J(x) = Σ_j α_j ∇₁K(x, x_j)ᵀ for each row of x: shape (rows, outputs, features)."""
    P, Q = kernel.gradient_weights(x, centers, M)
    J = torch.stack([Q @ (alpha[:, k, None] * centers) for k in range(alpha.shape[1])], 1)
    if P is not None:
        J = J + (P @ alpha)[:, :, None] * x[:, None, :]
    return J @ M


def agop(kernel: Kernel, x: torch.Tensor, alpha: torch.Tensor, M: torch.Tensor,
         center: bool = False, batch: int | None = None) -> torch.Tensor:
    """AGOP = (1/n) Σ_i J(x_i)ᵀJ(x_i) over the training points; `center` subtracts mean_i J(x_i)."""
    n, d = x.shape
    batch = batch or default_batch(n, alpha.shape[1] * d)
    total = torch.zeros(d, d, dtype=x.dtype, device=x.device)
    mean = torch.zeros(alpha.shape[1], d, dtype=x.dtype, device=x.device)
    for rows in _batches(n, batch):
        J = jacobian(kernel, x[rows], x, alpha, M)
        total += torch.einsum("bcd,bce->de", J, J)
        mean += J.sum(0)
    total /= n
    if center:
        mean /= n
        total -= mean.mT @ mean
    return total


def fact(kernel: Kernel, x: torch.Tensor, alpha: torch.Tensor, M: torch.Tensor,
         batch: int | None = None) -> torch.Tensor:
    """FACT_t = Σ_i J(x_i)ᵀ α_i x_iᵀ (Lemma F.1; a sum, no 1/n), without forming any J(x_i).

    With ∇₁K = M(P x_i + Q x_j): J(x_i)ᵀα_i = M (s_i x_i + Σ_j Q_ij⟨α_i, α_j⟩ x_j) where
    s_i = Σ_j P_ij⟨α_i, α_j⟩, so FACT_t = M Gᵀ X with G's rows in brackets. For inner-product
    kernels this is Proposition 5.1: M Xᵀ Ω X with Ω_ij = k′(x_iᵀMx_j)⟨α_i, α_j⟩.
    """
    n, d = x.shape
    batch = batch or default_batch(n, d)
    total = torch.zeros(d, d, dtype=x.dtype, device=x.device)
    for rows in _batches(n, batch):
        P, Q = kernel.gradient_weights(x[rows], x, M)
        products = alpha[rows] @ alpha.mT
        G = (Q * products) @ x
        if P is not None:
            G = G + (P * products).sum(1, keepdim=True) * x[rows]
        total += G.mT @ x[rows]
    return M @ total
