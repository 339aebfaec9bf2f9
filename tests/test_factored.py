"""`Factored` (A = L Rᵀ) against the same matrices formed densely, and the metrics on both."""

from __future__ import annotations

import math

import pytest
import torch

from factcli.engine.factored import Factored, thin_sides
from factcli.engine.metrics import METRICS, cosine, pearson, rel_err
from factcli.errors import FactError


def random_factored(p, q, r, seed, shift=0.0):
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(p, r, dtype=torch.float64, generator=generator) + shift
    right = torch.randn(q, r, dtype=torch.float64, generator=generator)
    return Factored(left, right)


def close(a, b, tol=1e-12):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


def test_every_operation_matches_the_dense_matrix():
    a, b = random_factored(9, 7, 3, 0, shift=0.7), random_factored(9, 7, 2, 1)
    A, B = a.L @ a.R.mT, b.L @ b.R.mT
    assert a.shape == (9, 7) and a.numel() == 63 and a.rank == 3
    assert torch.allclose(a.dense(), A, rtol=0, atol=1e-14)
    assert close(a.sum(), A.sum()) and close(a.mean(), A.mean())
    assert close(a.norm(), A.norm()) and close(a.inner(b), (A * B).sum())
    assert torch.allclose((a + b).dense(), A + B, atol=1e-13)
    assert torch.allclose((a - b).dense(), A - B, atol=1e-13)
    assert torch.allclose((a - a.mean()).dense(), A - A.mean(), atol=1e-13)
    assert torch.allclose((-a * 2.5 / 5).dense(), -A / 2, atol=1e-13)
    assert torch.allclose(a.mT.dense(), A.mT, atol=1e-14)
    X = torch.randn(7, 4, dtype=torch.float64)
    assert torch.allclose(a @ X, A @ X, atol=1e-13)
    with pytest.raises(ValueError, match="shapes differ"):
        a.inner(a.mT)


@pytest.mark.parametrize("shift", [0.0, 3.0])  # 3.0: entries with a large mean (centering)
def test_metrics_of_factored_equal_the_dense_metrics(shift):
    a = random_factored(40, 40, 4, 2, shift=shift)
    b = a + random_factored(40, 40, 3, 3) * 0.3
    for name, metric in METRICS.items():
        dense = metric(a.dense(), b.dense())
        assert math.isfinite(dense)
        assert close(metric(a, b), dense, 1e-12), name
        assert close(metric(a, b.dense()), dense, 1e-12), name  # mixed: formed, then dense
    symmetric = a + a.mT
    assert close(pearson(symmetric, symmetric), 1.0) and close(cosine(a, -a), -1.0)


def test_rel_err_of_nearly_equal_factored_matrices_is_accurate():
    """B = A + η P Qᵀ with B's factors mixed by an invertible M (so no column of A's factors
    is reused): rel_err = η‖PQᵀ‖/‖A‖ exactly. The Gram form ‖A‖² − 2⟨A,B⟩ + ‖B‖² would leave
    √ε‖A‖ ≈ 1e-8 here; the QR form must stay near ε/η relative."""
    a = random_factored(300, 300, 6, 4, shift=1.0)
    generator = torch.Generator().manual_seed(5)
    mix = torch.eye(6, dtype=torch.float64) + 0.3 * torch.randn(6, 6, dtype=torch.float64,
                                                               generator=generator)
    noise = random_factored(300, 300, 2, 6)
    for eta in (1e-6, 1e-9, 1e-12):
        b = Factored(a.L @ mix, a.R @ torch.linalg.inv(mix).mT) + noise * eta
        exact = eta * float(noise.dense().norm()) / float(a.dense().norm())
        assert abs(rel_err(a, b) - exact) <= 1e-3 * exact, eta
        dense = rel_err(a.dense(), b.dense())  # dense float64: also accurate to ~ε/η
        assert abs(rel_err(a, b) - dense) <= 1e-3 * exact, eta


def test_undefined_metrics_are_nan():
    zero = Factored(torch.zeros(5, 2, dtype=torch.float64), torch.ones(5, 2, dtype=torch.float64))
    other = random_factored(5, 5, 2, 7)
    assert math.isnan(cosine(zero, other)) and math.isnan(rel_err(zero, other))
    assert math.isnan(pearson(zero, other)) and math.isnan(pearson(other, zero))


def test_dense_refuses_a_matrix_larger_than_memory(monkeypatch):
    monkeypatch.setenv("FACT_MEMORY_LIMIT", str(10**6))
    big = Factored(torch.ones(50_000, 2, dtype=torch.float64), torch.ones(50_000, 2,
                                                                          dtype=torch.float64))
    with pytest.raises(FactError, match=r"materialising bfact \(50000×50000 float64\) would "
                                        r"need 18\.6 GiB.*rank-2 factors"):
        big.dense("bfact")
    assert close(big.norm(), 2 * 50_000)  # the metrics need no dense matrix


def test_which_side_is_factored():
    assert thin_sides(50_257, 768, 4096) == (False, True)    # an LM head: WWᵀ is V×V
    assert thin_sides(768, 50_257, 4096) == (True, False)    # an embedding, W = weightᵀ
    assert thin_sides(5_000, 5_000, 4096) == (False, False)  # no thinner side
    assert thin_sides(50_257, 768, None) == (False, False)
