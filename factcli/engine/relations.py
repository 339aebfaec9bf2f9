"""The relations of relations.md §2–3, computed from a weight W and its `LayerSums`.

Scaling conventions: every sum is over samples with weights w_i summing to 1 (w_i = 1/n by
default), so `agop`, `enfa`, `bagop`, `benfa` carry the 1/n, and `fact` = −(1/λ) Wᵀ∇_W L_data =
−(1/(nλ)) Σ_i (Wᵀg_i) h_iᵀ. With λ unknown or 0 the FACT family is returned without the 1/λ
(`scaled=False`): correlations stay meaningful, `rel_err` does not. `fact_adamw` (§7) brings
its own λ and √v̂ + ε from the AdamW state, so it is always scaled.
"""

from __future__ import annotations

import functools
import math

import torch

from ..errors import FactError
from .conventions import (
    AGOP_FAMILY,
    BACKWARD,
    DEFAULT_RELATIONS,
    FACT_FAMILY,
    FORWARD,
    NEEDS_OPTIMIZER,
    PER_USE,
    RELATIONS,
    UNFACTORED,
)
from .factored import Core, Factored, common_basis
from .linalg import sqrt_outer_factors
from .metrics import Matrix
from .sums import LayerSums

__all__ = ["BACKWARD", "DEFAULT_RELATIONS", "FACT_FAMILY", "FORWARD", "NEEDS_OPTIMIZER", "PER_USE",
           "RELATIONS", "UNFACTORED", "compute", "best_alpha", "fit_alpha"]


def reference(relation: str) -> str:
    """The feature matrix a relation is compared against: NFM = WᵀW or bNFM = WWᵀ."""
    return "nfm" if relation in FORWARD else "bnfm"


def needs_agop(names: tuple[str, ...]) -> bool:
    """Whether any relation needs the output Jacobians (the batched backward of c outputs)."""
    return bool(AGOP_FAMILY.intersection(names))


def check_relations(names: list[str] | None, adamw: bool = False) -> tuple[str, ...]:
    """The relations asked for (default: every one the inputs allow; `adamw`: AdamW state is
    at hand, so `fact_adamw` is among them)."""
    if not names:
        return RELATIONS if adamw else DEFAULT_RELATIONS
    unknown = [name for name in names if name not in RELATIONS]
    if unknown:
        raise FactError(f"unknown relation(s) {', '.join(unknown)}; choose from: "
                        f"{', '.join(RELATIONS)}")
    if not adamw and NEEDS_OPTIMIZER.intersection(names):
        raise FactError("fact_adamw needs AdamW's state: analyze a checkpoint written by "
                        "fact train --optimizer adamw, or pass --optimizer-state FILE")
    return tuple(dict.fromkeys(names))


def has_scale(weight_decay: float | None) -> bool:
    return weight_decay is not None and weight_decay > 0 and math.isfinite(weight_decay)


def stationarity(W: torch.Tensor, sums: LayerSums, weight_decay: float | None) -> float:
    """‖∇_W L_data + λW‖_F / ‖λW‖_F: how far W is from a critical point (NaN if λ unknown)."""
    if not has_scale(weight_decay):
        return math.nan
    decay = weight_decay * W
    norm = decay.norm()
    return float((sums.grad + decay).norm() / norm) if norm > 0 else math.nan


def compute(W: torch.Tensor, sums: LayerSums, weight_decay: float | None, alpha: float,
            names: tuple[str, ...], adamw: tuple[torch.Tensor, float] | None = None,
            thin: tuple[bool, bool] = (False, False), basis: torch.Tensor | None = None
            ) -> tuple[dict[str, Matrix], tuple[float, float]]:
    """NFM, bNFM and the requested relations, all float64 (k×k forward, m×m backward), and
    the NFA power α that fits NFM best (see `best_alpha`). `adamw` is (√v̂ + ε as a matrix
    like W, AdamW's λ), needed for `fact_adamw` only.

    `thin` = (forward, backward) (`factored.thin_sides`): that side's matrices are returned as
    `Factored` products of thin factors, never formed, which share their p-row arrays where
    they can (`_panel`); `basis` is that side's `side_basis` (formed here if not given). A
    layer with projected sums (its backward side thin) gives its AGOP and ENFA from them and
    no bAGOP, bNFA or bENFA.
    """
    W = W.double()
    scale = 1.0 / weight_decay if has_scale(weight_decay) else 1.0
    step = -scale * sums.grad  # −(1/λ) ∇_W L_data: FACT = Wᵀ·step, bFACT = step·Wᵀ
    forward, backward = thin
    if sums.projected and set(UNFACTORED).intersection(names):
        raise ValueError("projected sums give no bAGOP, bNFA or bENFA")
    if (forward or backward) and basis is None:
        basis = side_basis(W, sums.grad, thin)
    halves = None  # the thin side's FACT_sym, as views of one panel that also holds its step
    if forward and "fact_sym" in names or backward and "bfact_sym" in names:
        panel = _panel(W.mT if forward else W, step.mT if forward else step)
        r = panel.shape[1] // 3
        step = panel[:, r:2 * r].mT if forward else panel[:, r:2 * r]
        halves = Factored(panel[:, :2 * r], panel[:, r:])

    def product(left: torch.Tensor, right: torch.Tensor, factored: bool) -> Matrix:
        """left @ right.mT, held as factors when `factored`."""
        return Factored(left, right) if factored else left @ right.mT

    def sqrt(left: torch.Tensor, right: torch.Tensor, factored: bool) -> Matrix:
        """(A Aᵀ)^{1/2} for A = left @ right; a thin side's from the SVD of QᵀAQ in its basis Q
        (A = Q QᵀAQ Qᵀ), as X Xᵀ with X = Q U S^{1/2}: no QR or SVD of p-row matrices."""
        if not factored:
            vectors, singular = sqrt_outer_factors(left, right)
            return (vectors * singular.unsqueeze(-2)) @ vectors.mT
        vectors, singular = sqrt_outer_factors(basis.mT @ left, right @ basis)
        root = basis @ (vectors * singular.sqrt().unsqueeze(-2))
        return Factored(root, root)

    lazy = {
        "nfm": lambda: product(W.mT, W.mT, forward),
        "bnfm": lambda: product(W, W, backward),
        "fact": lambda: product(W.mT, step.mT, forward),
        "fact_sym": lambda: halves if forward else _sym(get("fact")),
        "fact_sqrt": lambda: sqrt(W.mT, step, forward),
        "fact_adamw": lambda: product(W.mT, (-sums.grad / (adamw[1] * adamw[0].to(W))).mT,
                                      forward),
        "agop": lambda: sums.GG.clone() if sums.projected else product(W.mT @ sums.GG, W.mT,
                                                                       forward),
        "nfa": lambda: product(*spectral_factors(*spectrum(), alpha), forward),
        "enfa": lambda: sums.gg.clone() if sums.projected else product(W.mT @ sums.gg, W.mT,
                                                                       forward),
        "bfact": lambda: product(step, W, backward),
        "bfact_sym": lambda: halves if backward else _sym(get("bfact")),
        "bfact_sqrt": lambda: sqrt(step, W.mT, backward),
        "bagop": lambda: sums.GG.clone(),
        "bnfa": lambda: spectral_power(*_gram_spectrum(sums.GG), alpha),
        "benfa": lambda: sums.gg.clone(),
    }
    cache: dict[str, Matrix] = {}
    spectrum = functools.cache(lambda: _gram_spectrum(sums.GG) if sums.projected
                               else agop_spectrum(W, sums.GG))

    def get(name: str) -> Matrix:
        if name not in cache:
            cache[name] = lazy[name]()
        return cache[name]

    matrices = {name: get(name) for name in ("nfm", "bnfm", *names)}
    fitted = fit_alpha(matrices["nfm"], *spectrum()) if needs_agop(names) else (math.nan,) * 2
    lazy.clear()  # its lambdas and `get` refer to each other: a cycle that would hold every
    # matrix, the step, the basis and the spectrum until the garbage collector ran
    return matrices, fitted


def side_basis(W: torch.Tensor, grad: torch.Tensor, thin: tuple[bool, bool]
               ) -> torch.Tensor | None:
    """One orthonormal basis of the side held as factors (None: neither is), span[W, ∇W, 1]
    (Wᵀ and ∇Wᵀ for the forward side), which holds every relation of that side: its square
    roots and its metrics are then formed from s×s matrices."""
    forward, backward = thin
    if not (forward or backward):
        return None
    W, grad = W.double(), grad.double()
    return common_basis(W.mT, grad.mT) if forward else common_basis(W, grad)


def metric_operands(matrices: dict[str, Matrix], basis: torch.Tensor | None
                    ) -> dict[str, Matrix | Core]:
    """What the metrics compare: each dense matrix itself, each `Factored` one as a `Core` in
    its side's `basis` (`side_basis`). The norms then cost s×s work, not a QR of the p-row
    factors per norm (for an LM head: 0.1 s instead of 15 s per layer)."""
    return {name: matrix.core(basis) if isinstance(matrix, Factored) else matrix
            for name, matrix in matrices.items()}


def agop_spectrum(W: torch.Tensor, GG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues d and eigenvectors V (k×r, r ≤ m) of AGOP = Wᵀ GG W, from its factor.

    With GG = Q D Qᵀ, AGOP = AᵀA for A = D^{1/2} Qᵀ W (m×k), so the SVD of A gives the spectrum.
    AGOP inherits the rank deficiency of W (rank ≤ m < k for a wide input); working from the
    factor keeps those directions exactly zero, where eigh of the product would leave
    round-off that a power α < 1 inflates (ε^α). It is also O(m²k) instead of O(k³).
    """
    eigenvalues, eigenvectors = _gram_spectrum(GG)
    factor = eigenvalues.sqrt().unsqueeze(-1) * (eigenvectors.mT @ W)
    _, singular, right = torch.linalg.svd(factor, full_matrices=False)
    return singular.pow(2), right.mT


def _gram_spectrum(GG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eigh of the PSD sum GG with round-off-level eigenvalues set to 0.

    eigh's eigenvalues carry an absolute error of about m·ε·λ_max, so an exact null direction
    of GG (a LayerNorm after the layer makes one: G·1 = 0) comes back as ±1e-17·λ_max, which a
    power α = 1/2 would turn into a spurious √ε. Below that error level a value is zero.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh((GG + GG.mT) / 2)
    floor = 8 * GG.shape[-1] * torch.finfo(GG.dtype).eps * eigenvalues.abs().max()
    return torch.where(eigenvalues > floor, eigenvalues, 0.0), eigenvectors


def spectral_factors(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(V diag(d^α), V): the factors of V diag(d^α) Vᵀ."""
    return eigenvectors * eigenvalues.clamp(min=0).pow(alpha), eigenvectors


def spectral_power(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    left, right = spectral_factors(eigenvalues, eigenvectors, alpha)
    return left @ right.mT


def _sym(matrix: torch.Tensor) -> torch.Tensor:
    return (matrix + matrix.mT) / 2


def _panel(weight: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """[W/2, step, W/2] (p×3r) for a thin side's W and step (p×r each): FACT_sym =
    ½(W stepᵀ + step Wᵀ) = L Rᵀ with L = [W/2, step] and R = [step, W/2], both views of it,
    as is the step of FACT; three p×r arrays where FACT and the sum of FACT and FACTᵀ took
    five (halving is exact)."""
    p, r = weight.shape
    panel = torch.empty(p, 3 * r, dtype=torch.float64, device=weight.device)
    torch.mul(weight, 0.5, out=panel[:, :r])
    panel[:, r:2 * r] = step
    panel[:, 2 * r:] = panel[:, :r]
    return panel


def best_alpha(feature: Matrix, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
               grid: torch.Tensor | None = None) -> float:
    """The power α maximizing pearson(NFM, AGOP^α) on a grid (default 0.01 … 2.00)."""
    return fit_alpha(feature, eigenvalues, eigenvectors, grid)[0]


def fit_alpha(feature: Matrix, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
              grid: torch.Tensor | None = None) -> tuple[float, float]:
    """(α*, pearson at α*): the power α maximizing pearson(NFM, AGOP^α) on a grid (default
    0.01 … 2.00), and that best correlation; (NaN, NaN) when α is not identifiable."""
    scores = alpha_scores(feature, eigenvalues, eigenvectors, grid)
    if scores is None:
        return math.nan, math.nan
    grid, score = scores
    best = int(torch.argmax(score))
    return float(grid[best]), float(score[best].clamp(-1, 1))


def alpha_scores(feature: Matrix, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                 grid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(grid, pearson(NFM, AGOP^α) for each α of the grid); None when AGOP has rank ≤ 1.

    From AGOP = V diag(d) Vᵀ (orthonormal V), every quantity the Pearson correlation needs is a
    weighted sum over the d_j^α, so the whole grid costs one pass over the spectrum.
    """
    grid = torch.arange(1, 201, dtype=torch.float64) / 100 if grid is None else grid.double()
    d, V = eigenvalues.double().clamp(min=0), eigenvectors.double()
    keep = d > d.max() * 1e-12 if d.numel() and d.max() > 0 else d > 0
    if keep.sum() < 2:  # AGOP of rank ≤ 1: every power has the same shape, α is not identifiable
        return None
    d, V = d[keep], V[:, keep]
    A = feature.double()
    size = A.numel()
    inner_a = ((A @ V) * V).sum(dim=0)                    # v_jᵀ A v_j
    ones_a = V.sum(dim=0) ** 2                            # (1ᵀ v_j)²
    powers = d.unsqueeze(0) ** grid.unsqueeze(1)          # (grid, j)
    mean_a, mean_b = A.mean(), (powers @ ones_a) / size
    cross = powers @ inner_a - size * mean_a * mean_b
    var_a = (A.inner(A) if isinstance(A, Factored) else (A * A).sum()) - size * mean_a ** 2
    var_b = (powers ** 2).sum(dim=1) - size * mean_b ** 2
    return grid, cross / (var_a * var_b).clamp(min=1e-300).sqrt()
