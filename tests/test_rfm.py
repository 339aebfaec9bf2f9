"""RFM library: closed forms against autograd, the ridge identity behind Lemma F.1, and the
feature-learning phenomena of relations.md §6 (sparse parity, modular addition)."""

import pytest
import torch

from factcli.data.datasets import load_dataset
from factcli.engine.linalg import psd_power
from factcli.rfm import kernels
from factcli.rfm.estimator import RFM, circulant_share, update_matrix

KERNELS = ("laplace", "gaussian", "exp", "quadratic")


def _case(kernel: str, seed: int = 0):
    """Tiny float64 problem with a non-trivial PSD M and generic KRR coefficients α."""
    generator = torch.Generator().manual_seed(seed)
    n, d, c = 9, 4, 3
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    if kernel in ("exp", "quadratic"):
        x = x / 2  # keep xᵀMz moderate for exp
    A = torch.randn(d, d, generator=generator, dtype=torch.float64)
    M = A @ A.T / d + 0.2 * torch.eye(d, dtype=torch.float64)
    alpha = torch.randn(n, c, generator=generator, dtype=torch.float64)
    return kernels.Kernel(kernel, bandwidth=1.7), x, M, alpha


def _reference_predictor(name: str, bandwidth: float, centers, alpha, M):
    """f(x) written from relations.md §5 with the difference form ‖x − z‖²_M (exact zeros)."""

    def f(point):
        if name in ("exp", "quadratic"):
            t = centers @ (M @ point)
            k = torch.exp(t) if name == "exp" else t ** 2
        else:
            diff = point - centers
            squared = ((diff @ M) * diff).sum(1)
            if name == "gaussian":
                k = torch.exp(-squared / (2 * bandwidth ** 2))
            else:  # sqrt with a zero gradient at 0, the convention of §5
                positive = squared > 0
                safe = torch.where(positive, squared, torch.ones_like(squared))
                k = torch.exp(-torch.where(positive, safe.sqrt(), torch.zeros_like(safe))
                              / bandwidth)
        return k @ alpha

    return f


def _autograd_jacobians(kernel, points, centers, alpha, M):
    f = _reference_predictor(kernel.name, kernel.bandwidth, centers, alpha, M)
    return torch.stack([torch.autograd.functional.jacobian(f, p) for p in points])


@pytest.mark.parametrize("name", KERNELS)
def test_jacobian_matches_autograd(name):
    kernel, x, M, alpha = _case(name)
    queries = torch.cat([torch.randn(4, x.shape[1], dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(7)) / 2, x[:2]])
    expected = _autograd_jacobians(kernel, queries, x, alpha, M)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(kernels.jacobian(kernel, queries, x, alpha, M), expected,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", KERNELS)
def test_fact_and_agop_match_autograd(name):
    kernel, x, M, alpha = _case(name)
    J = _autograd_jacobians(kernel, x, x, alpha, M)  # (n, c, d)
    fact = torch.einsum("icd,ic,ie->de", J, alpha, x)  # Σ_i J(x_i)ᵀ α_i x_iᵀ, no 1/n
    torch.testing.assert_close(kernels.fact(kernel, x, alpha, M, batch=4), fact,
                               rtol=1e-10, atol=1e-12)
    agop = torch.einsum("icd,ice->de", J, J) / len(x)
    torch.testing.assert_close(kernels.agop(kernel, x, alpha, M, batch=4), agop,
                               rtol=1e-10, atol=1e-12)
    centered = J - J.mean(0)
    torch.testing.assert_close(kernels.agop(kernel, x, alpha, M, center=True),
                               torch.einsum("icd,ice->de", centered, centered) / len(x),
                               rtol=1e-10, atol=1e-12)


def test_ridge_coefficients_are_minus_loss_gradient_over_n_lambda():
    """At the ridge optimum, α_i = −(f(x_i) − y_i)/(nλ) with μ = nλ (the step behind Lemma F.1)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    mu = 0.3
    model = RFM(kernel="laplace", bandwidth=2.0, ridge=mu, iters=0, val_frac=0,
                task="regression").fit(x, y)
    n, lam = len(x), mu / len(x)
    residual = torch.as_tensor(model.predict(x)) - y  # f recomputed from fresh kernel rows
    alpha = model.alpha_
    assert residual.abs().max() > 0.05  # a real fit, not interpolation: the identity is not 0 = 0
    torch.testing.assert_close(alpha, -residual / (n * lam), rtol=0, atol=1e-10)
    assert (alpha - residual / (n * lam)).abs().max() > 0.1  # the sign is not a convention
    assert (alpha + residual / lam).abs().max() > 0.1  # and nλ, not λ


@pytest.mark.parametrize("name", ["exp", "quadratic"])
def test_inner_product_fact_times_m_is_psd_and_geo_update_is_its_root(name):
    kernel, x, M, _ = _case(name, seed=3)
    y = torch.randn(len(x), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    alpha, _ = kernels.solve(kernel.matrix(x, x, M), y, ridge=0.1)
    product = kernels.fact(kernel, x, alpha, M) @ M
    scale = product.abs().max()
    assert (product - product.T).abs().max() <= 1e-10 * scale
    assert torch.linalg.eigvalsh((product + product.T) / 2).min() >= -1e-10 * scale
    geo = update_matrix("fact-geo", M, kernels.fact(kernel, x, alpha, M))
    torch.testing.assert_close(geo, psd_power(product, 0.5), rtol=1e-7, atol=1e-9 * scale.sqrt())


def test_max_normalization_and_history():
    data = load_dataset("parity:d=8,k=2,n=150,n_test=50,seed=1")
    model = RFM(kernel="laplace", update="fact", iters=2).fit(data.x_train, data.y_train)
    assert torch.equal(model.matrices_[0], torch.eye(8, dtype=torch.float64))
    for matrix in model.matrices_[1:]:
        assert matrix.abs().max() == pytest.approx(1.0)
    assert [row["iteration"] for row in model.history_] == [0, 1, 2]
    assert model.M is model.M_ and model.best_iteration_ in (0, 1, 2)
    assert model.history_[-1]["max_entry"] is None and model.history_[0]["max_entry"] > 0


def test_sparse_parity_fact_geo_learns_the_hidden_coordinates():
    data = load_dataset("parity:d=50,k=3,n=2000,n_test=2000,seed=0")
    model = RFM(kernel="gaussian", bandwidth=5, update="fact-geo", normalization="max",
                iters=5).fit(data.x_train, data.y_train,
                             eval_sets={"test": (data.x_test, data.y_test)})
    history = model.history_
    assert abs(history[0]["test_acc"] - 0.5) < 0.06  # plain kernel regression: chance
    assert history[model.best_iteration_]["test_acc"] >= 0.95
    assert model.score(data.x_test, data.y_test) >= 0.95
    top = torch.topk(model.M.diagonal(), 3).indices.sort().values.tolist()
    assert top == data.info["hidden"]


def test_modular_addition_fact_groks_with_block_circulant_features():
    """p = 61, half the pairs, k(t) = t², ridge 0: FACT-RFM generalizes after ~20 iterations."""
    data = load_dataset("modular:p=61,op=add,train_frac=0.5,seed=0")
    model = RFM(kernel="quadratic", update="fact", ridge=0, iters=24, val_frac=0).fit(
        data.x_train, data.y_train, eval_sets={"test": (data.x_test, data.y_test)})
    history = model.history_
    assert history[0]["train_acc"] == 1 and history[0]["test_acc"] < 0.05
    assert history[-1]["test_acc"] >= 0.99
    overall, blocks = circulant_share(model.M, blocks=2)
    assert overall >= 0.9 and min(blocks) >= 0.9
    assert circulant_share(model.matrices_[1], blocks=2)[1][1] < 0.5  # not circulant at the start


def test_fact_geo_update_keeps_the_null_space_of_a_low_rank_fact_at_zero():
    """(F M² Fᵀ)^{1/4} through the SVD of FM: no ε^{1/4} round-off where M must vanish."""
    generator = torch.Generator().manual_seed(5)
    d = 30
    F = torch.randn(d, 2, generator=generator, dtype=torch.float64) @ torch.randn(
        2, d, generator=generator, dtype=torch.float64)
    B = torch.randn(d, d, generator=generator, dtype=torch.float64)
    M = B @ B.T / d
    U, S, _ = torch.linalg.svd(F @ M)
    exact = (U * S.sqrt()) @ U.T  # (U S² Uᵀ)^{1/4}
    for dtype, tolerance in ((torch.float64, 1e-7), (torch.float32, 1e-2)):
        geo = update_matrix("fact-geo", M.to(dtype), F.to(dtype)).double()
        assert (geo - exact).abs().max() <= tolerance * exact.abs().max(), dtype


def test_non_finite_statistic_stops_early_with_a_warning(monkeypatch):
    data = load_dataset("parity:d=6,k=2,n=60,seed=0")
    monkeypatch.setattr(RFM, "_statistic", lambda self, kernel, x, alpha, M: M * float("inf"))
    model = RFM(kernel="gaussian", update="fact", iters=3, val_frac=0).fit(data.x_train,
                                                                          data.y_train)
    assert len(model.history_) == 1 and model.best_iteration_ == 0
    assert "non-finite" in model.warnings_[0] and "stopped early" in model.warnings_[0]


def test_batch_size_must_be_positive():
    from factcli.errors import FactError

    data = load_dataset("parity:d=6,k=2,n=60,seed=0")
    with pytest.raises(FactError, match="batch size must be positive"):
        RFM(batch_size=-1).fit(data.x_train, data.y_train)
