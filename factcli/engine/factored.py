"""A matrix held as thin factors, A = L Rᵀ, and the quantities the metrics need, from r×r matrices.

An LM head's backward relations and an embedding's forward ones are vocab × vocab (50,257² in
float64 is 20 GB) but have rank ≤ d: WWᵀ, bFACT = step·Wᵀ, AGOP^α = V diag(d^α) Vᵀ. The
agreement metrics (relations.md §4.1) need only Frobenius inner products, norms and entry sums,
and each of those is a trace of small Gram matrices or a product of column sums. A `Factored`
behaves like a float64 tensor for exactly those operations (`norm`, `sum`, `mean`, `+`, `−`,
scaling, `.mT`, `@` a dense matrix) and is materialised only by `dense()`, after a memory check.
"""

from __future__ import annotations

import torch


class Factored:
    """A = L Rᵀ (p×q) with L (p×r) and R (q×r) float64: a matrix of rank ≤ r never formed."""

    def __init__(self, left: torch.Tensor, right: torch.Tensor):
        if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[1]:
            raise ValueError(f"factors must be p×r and q×r (got {tuple(left.shape)} and "
                             f"{tuple(right.shape)})")
        self.L, self.R = left.double(), right.double()

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.L.shape[0], self.R.shape[0]))

    @property
    def rank(self) -> int:
        """The inner dimension r (an upper bound on the rank)."""
        return self.L.shape[1]

    @property
    def mT(self) -> Factored:
        return Factored(self.R, self.L)

    def numel(self) -> int:
        return self.L.shape[0] * self.R.shape[0]

    def double(self) -> Factored:
        return self

    def cpu(self) -> Factored:
        return Factored(self.L.cpu(), self.R.cpu())

    def __repr__(self) -> str:
        p, q = self.shape
        return f"Factored({p}×{q}, rank ≤ {self.rank}; .dense() materialises it)"

    def __add__(self, other: Factored) -> Factored:
        if not isinstance(other, Factored):
            return NotImplemented
        self._same_shape(other)
        return Factored(torch.cat([self.L, other.L], 1), torch.cat([self.R, other.R], 1))

    def __neg__(self) -> Factored:
        return Factored(-self.L, self.R)

    def __sub__(self, other: Factored | torch.Tensor | float) -> Factored:
        """A − B, or A − s·11ᵀ for a scalar s (one more rank-1 term)."""
        if isinstance(other, Factored):
            return self + (-other)
        scalar = torch.as_tensor(other, dtype=torch.float64, device=self.L.device)
        if scalar.numel() != 1:
            return NotImplemented
        ones_p = torch.ones(self.shape[0], 1, dtype=torch.float64, device=self.L.device)
        ones_q = torch.ones(self.shape[1], 1, dtype=torch.float64, device=self.L.device)
        return Factored(torch.cat([self.L, -scalar.reshape(1, 1) * ones_p], 1),
                        torch.cat([self.R, ones_q], 1))

    def __mul__(self, scalar: float | torch.Tensor) -> Factored:
        return Factored(self.L * scalar, self.R)

    __rmul__ = __mul__

    def __truediv__(self, scalar: float | torch.Tensor) -> Factored:
        return Factored(self.L / scalar, self.R)

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        """A X = L (Rᵀ X) for a dense X (q×s): O((p + q) r s), never p×q."""
        return self.L @ (self.R.mT @ other.double())

    def sum(self) -> torch.Tensor:
        """1ᵀ A 1 = (1ᵀL)(Rᵀ1)."""
        return self.L.sum(0) @ self.R.sum(0)

    def mean(self) -> torch.Tensor:
        return self.sum() / self.numel()

    def inner(self, other: Factored) -> torch.Tensor:
        """⟨A, B⟩_F = tr(AᵀB) = tr((L_aᵀL_b)(R_bᵀR_a)): two r_a×r_b Gram matrices."""
        self._same_shape(other)
        return ((self.L.mT @ other.L) * (self.R.mT @ other.R)).sum()

    def norm(self) -> torch.Tensor:
        """‖A‖_F = ‖T_L T_Rᵀ‖_F from the QRs L = Q_L T_L, R = Q_R T_R (Q orthonormal columns).

        The Gram form ‖A‖² = tr((LᵀL)(RᵀR)) would cancel catastrophically for a difference
        A − B of nearly equal matrices (FACT at a critical point: rel_err down to 1e-15, where
        the Gram form leaves √ε ≈ 1e-8); the triangles keep the error at ε‖L‖‖R‖, as dense.
        """
        left = torch.linalg.qr(self.L, mode="r").R
        right = torch.linalg.qr(self.R, mode="r").R
        return torch.linalg.matrix_norm(left @ right.mT)

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues and orthonormal eigenvectors (p×r) of a symmetric A = L Rᵀ: with L = QT,
        A = Q (T Rᵀ Q) Qᵀ (A = Aᵀ keeps its row space in span Q), so an r×r eigh suffices."""
        basis, triangle = torch.linalg.qr(self.L)
        small = triangle @ (self.R.mT @ basis)
        eigenvalues, vectors = torch.linalg.eigh((small + small.mT) / 2)
        return eigenvalues, basis @ vectors

    def dense(self, what: str = "the matrix") -> torch.Tensor:
        """L Rᵀ as one float64 tensor, after checking that its p×q entries fit in memory."""
        from ..io.validate import check_memory

        p, q = self.shape
        check_memory(8.0 * p * q, f"materialising {what} ({p}×{q} float64)",
                     hint=f"it is held as rank-{self.rank} factors A = L Rᵀ, from which its "
                          "metrics are computed")
        return self.L @ self.R.mT

    def core(self, basis: torch.Tensor) -> Core:
        """This matrix as a `Core` in an orthonormal `basis` (p×s, p = q) that spans its column
        and row spaces and the ones vector (`common_basis`)."""
        return Core((basis.mT @ self.L) @ (basis.mT @ self.R).mT, basis.sum(0), self.shape[0])

    def _same_shape(self, other: Factored) -> None:
        if self.shape != other.shape:
            raise ValueError(f"shapes differ: {tuple(self.shape)} vs {tuple(other.shape)}")


def common_basis(*blocks: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis Q (p×s) of the columns of `blocks` (each p×·) and of 1: every
    relation of a thin side lies in span[W, step] on both sides (relations.md §4.1)."""
    ones = torch.ones(blocks[0].shape[0], 1, dtype=torch.float64, device=blocks[0].device)
    return torch.linalg.qr(torch.cat([*(block.double() for block in blocks), ones], 1)).Q


class Core:
    """A = Q C Qᵀ (p×p) with Q orthonormal, known through C (s×s) and u = Qᵀ1: the metrics of
    several matrices sharing one basis cost s×s work each, where a `Factored` needs QRs of
    its p-row factors for every norm. Exact, since Q spans each matrix and 1."""

    def __init__(self, core: torch.Tensor, ones: torch.Tensor, side: int):
        self.C, self.u, self.side = core, ones, side

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.side, self.side))

    def numel(self) -> int:
        return self.side * self.side

    def double(self) -> Core:
        return self

    def __add__(self, other: Core) -> Core:
        return Core(self.C + other.C, self.u, self.side)

    def __neg__(self) -> Core:
        return Core(-self.C, self.u, self.side)

    def __sub__(self, other: Core | torch.Tensor | float) -> Core:
        """A − B, or A − s·11ᵀ = Q (C − s u uᵀ) Qᵀ for a scalar s."""
        if isinstance(other, Core):
            return Core(self.C - other.C, self.u, self.side)
        return Core(self.C - other * torch.outer(self.u, self.u), self.u, self.side)

    def sum(self) -> torch.Tensor:
        return self.u @ self.C @ self.u

    def mean(self) -> torch.Tensor:
        return self.sum() / self.numel()

    def inner(self, other: Core) -> torch.Tensor:
        return (self.C * other.C).sum()

    def norm(self) -> torch.Tensor:
        return torch.linalg.matrix_norm(self.C)


def thin_sides(m: int, k: int, max_dense: int | None) -> tuple[bool, bool]:
    """(forward, backward): whether the k×k forward or the m×m backward relations of an m×k W
    are held as factors. A side is factored when it exceeds `max_dense` (None: never) and is
    the larger one, so that its factors (side × other side) are thinner than the matrix."""
    if max_dense is None:
        return False, False
    return k > max(max_dense, m), m > max(max_dense, k)

