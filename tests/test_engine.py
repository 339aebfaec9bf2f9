"""The engine against the naive per-sample oracle, and FACT itself at a critical point."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from factcli.data.datasets import Dataset
from factcli.engine.analysis import analyze
from factcli.engine.relations import DEFAULT_RELATIONS
from tests.critical import train_to_critical
from tests.oracle import naive_relations, relative


class Residual(nn.Module):
    """h feeds both the block and the skip, so ∂ℓ/∂h ≠ Wᵀg for the block's matrix."""

    def __init__(self, bias=True):
        super().__init__()
        self.inp = nn.Linear(5, 6, bias=bias)
        self.block = nn.Linear(6, 6, bias=bias)
        self.out = nn.Linear(6, 3, bias=bias)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + torch.relu(self.block(h))
        return self.out(h)


class Tokens(nn.Module):
    """Linear layers applied to (batch, tokens, features): every token contributes a term."""

    def __init__(self, bias=True):
        super().__init__()
        self.embed = nn.Linear(4, 6, bias=bias)
        self.mix = nn.Linear(6, 5, bias=bias)
        self.head = nn.Linear(5, 3, bias=bias)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.embed(x))
        return self.head(torch.tanh(self.mix(h)).mean(dim=1))


def relu_mlp(bias=True):
    return nn.Sequential(nn.Linear(5, 7, bias=bias), nn.ReLU(), nn.Linear(7, 6, bias=bias),
                         nn.ReLU(), nn.Linear(6, 3, bias=bias))


CASES = {
    "relu-mlp": (relu_mlp, (5,)),
    "residual": (Residual, (5,)),
    "tokens": (Tokens, (4, 4)),
}


def make_case(name, bias, loss, weighted, n=12, seed=0):
    torch.manual_seed(seed)
    factory, shape = CASES[name]
    model = factory(bias=bias).double().eval()
    x = torch.randn(n, *shape, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,))
    weights = torch.rand(n, dtype=torch.float64) + 0.5 if weighted else None
    if weights is not None:
        weights = weights / weights.sum()
    data = Dataset("test", x, labels, n_classes=3, weights=weights)
    return model, data


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("bias", [True, False])
def test_every_matrix_matches_the_naive_oracle(case, loss, bias):
    weighted = case == "residual" and loss == "mse"  # one weighted case keeps the grid small
    model, data = make_case(case, bias, loss, weighted)
    decay = 3e-3
    result = analyze(model, data, loss=loss, weight_decay=decay, batch_size=5, alpha=0.5)
    targets = data.targets(loss)
    for layer in result.layers:
        module = dict(model.named_modules())[layer.name]
        expected = naive_relations(model, module, data.x_train, targets, loss, decay,
                                   weights=data.weights)
        for name in ("nfm", "bnfm", *DEFAULT_RELATIONS):
            assert relative(layer.matrices[name], expected[name]) < 1e-10, (layer.name, name)
        for name in ("fact", "bfact"):  # the parameter's gradient = Σ g hᵀ over the uses
            assert relative(expected[name + "_uses"], expected[name]) < 1e-10
        assert layer.stationarity == pytest.approx(expected["stationarity"], rel=1e-10)


def test_batch_size_does_not_change_the_sums():
    model, data = make_case("tokens", True, "mse", weighted=False, n=10)
    one = analyze(model, data, loss="mse", weight_decay=1e-3, batch_size=1)
    all_at_once = analyze(model, data, loss="mse", weight_decay=1e-3, batch_size=10)
    for a, b in zip(one.layers, all_at_once.layers):
        for name in a.matrices:
            assert relative(a.matrices[name], b.matrices[name]) < 1e-12


def _critical_tanh_mlp(steps):
    """A tanh MLP trained in float64, full batch, with weight decay (L-BFGS, then Newton)."""
    torch.manual_seed(1)
    n, decay = 40, 1e-2
    x = torch.randn(n, 4, dtype=torch.float64)
    y = torch.sin(x[:, :2]) + 0.3 * x[:, 2:3]
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(),
                          nn.Linear(6, 2)).double()
    residual = train_to_critical(model, x, y, decay, steps)
    return model, Dataset("test", x, y), decay, residual


def test_fact_holds_at_a_critical_point():
    model, data, decay, residual = _critical_tanh_mlp(steps=500)
    assert residual < 1e-9
    result = analyze(model, data, loss="mse", weight_decay=decay)
    for layer in result.layers:
        assert layer.stationarity < 1e-6
        for name in ("fact", "bfact"):
            assert layer.metrics[name]["rel_err"] < 1e-6, (layer.name, name)
            assert layer.metrics[name]["pearson"] > 0.999999, (layer.name, name)


def test_fact_fails_and_says_so_away_from_a_critical_point():
    model, data, decay, residual = _critical_tanh_mlp(steps=3)
    assert residual > 1e-2
    result = analyze(model, data, loss="mse", weight_decay=decay)
    assert all(layer.stationarity > 1e-2 for layer in result.layers)
    assert max(layer.metrics["fact"]["rel_err"] for layer in result.layers) > 1e-2


def test_unknown_weight_decay_keeps_correlations_and_drops_the_scale():
    model, data = make_case("relu-mlp", True, "mse", weighted=False)
    known = analyze(model, data, loss="mse", weight_decay=2e-3)
    unknown = analyze(model, data, loss="mse", weight_decay=None)
    assert unknown.warnings and "unknown" in unknown.warnings[0]
    for a, b in zip(known.layers, unknown.layers):
        assert math.isnan(b.stationarity)
        assert math.isnan(b.metrics["fact"]["rel_err"])
        assert b.metrics["fact"]["pearson"] == pytest.approx(a.metrics["fact"]["pearson"])
        assert b.metrics["nfa"]["pearson"] == pytest.approx(a.metrics["nfa"]["pearson"])


def test_best_alpha_recovers_a_planted_power():
    from factcli.engine.relations import best_alpha
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    spectrum = torch.tensor([5.0, 3, 2, 1, 0.5, 0.1], dtype=torch.float64)
    nfm = q @ torch.diag(spectrum ** 0.33) @ q.T
    assert best_alpha(nfm, spectrum, q) == pytest.approx(0.33)
    # against brute force on a matrix that is not a power of the AGOP
    from factcli.engine.linalg import psd_power
    from factcli.engine.metrics import pearson
    other = torch.randn(6, 6, dtype=torch.float64)
    other = other @ other.T + nfm
    agop = q @ torch.diag(spectrum) @ q.T
    grid = torch.arange(1, 201, dtype=torch.float64) / 100
    brute = max(grid.tolist(), key=lambda a: pearson(other, psd_power(agop, a)))
    assert best_alpha(other, spectrum, q) == pytest.approx(brute)
    assert math.isnan(best_alpha(nfm, spectrum[:1], q[:, :1]))  # rank 1: α not identifiable
    from factcli.engine.relations import fit_alpha
    alpha, r = fit_alpha(other, spectrum, q)  # the curve's best value is the brute-force one
    assert r == pytest.approx(pearson(other, psd_power(agop, alpha)), abs=1e-10)


def test_max_samples_is_a_seeded_recorded_subsample():
    model, data = make_case("relu-mlp", True, "mse", weighted=False, n=30)
    first = analyze(model, data, loss="mse", weight_decay=1e-3, max_samples=10, seed=7)
    again = analyze(model, data, loss="mse", weight_decay=1e-3, max_samples=10, seed=7)
    other = analyze(model, data, loss="mse", weight_decay=1e-3, max_samples=10, seed=8)
    assert first.info["n_samples"] == 10 and first.info["sample_seed"] == 7
    assert any("10 of 30" in message for message in first.warnings)
    assert torch.equal(first.layers[0].matrices["agop"], again.layers[0].matrices["agop"])
    assert not torch.equal(first.layers[0].matrices["agop"], other.layers[0].matrices["agop"])


@pytest.mark.parametrize("case", list(CASES))
def test_without_agop_one_loss_backward_gives_the_same_matrices(case):
    """No AGOP asked for: g comes from one backward of the loss, not from the output Jacobians."""
    model, data = make_case(case, True, "cross_entropy", weighted=case == "tokens")
    cheap = ("fact", "fact_sym", "fact_sqrt", "enfa", "bfact", "bfact_sym", "bfact_sqrt", "benfa")
    full = analyze(model, data, loss="cross_entropy", weight_decay=1e-3, batch_size=4)
    fact_only = analyze(model, data, loss="cross_entropy", weight_decay=1e-3, batch_size=4,
                        relations=list(cheap))
    for a, b in zip(full.layers, fact_only.layers):
        assert a.stationarity == pytest.approx(b.stationarity, rel=1e-12)
        for name in ("nfm", "bnfm", *cheap):
            assert relative(b.matrices[name], a.matrices[name]) < 1e-12, (a.name, name)
        assert math.isnan(b.best_alpha) and not math.isnan(a.best_alpha)


def test_the_callers_module_is_left_as_it_was():
    model, data = make_case("relu-mlp", True, "mse", weighted=False)
    model = model.float().train()
    analyze(model, data, loss="mse", weight_decay=1e-3, dtype="float64")
    assert model.training and next(model.parameters()).dtype == torch.float32


def test_outputs_in_chunks_give_the_same_sums(monkeypatch):
    """A small Jacobian budget forces one output per backward: memory bounded, sums unchanged."""
    from factcli.engine import sketch

    model, data = make_case("tokens", True, "mse", weighted=True)
    whole = analyze(model, data, loss="mse", weight_decay=1e-3, batch_size=5)
    monkeypatch.setattr(sketch, "JACOBIAN_BUDGET", 1)
    chunked = analyze(model, data, loss="mse", weight_decay=1e-3, batch_size=5)
    for a, b in zip(whole.layers, chunked.layers):
        for name in a.matrices:
            assert relative(b.matrices[name], a.matrices[name]) < 1e-12, (a.name, name)


def test_an_operation_without_a_batching_rule_falls_back_to_one_backward_per_output(
        monkeypatch):
    model, data = make_case("residual", False, "cross_entropy", weighted=False)
    batched = analyze(model, data, loss="cross_entropy", weight_decay=1e-3)
    original = torch.autograd.grad

    def no_vmap(*args, is_grads_batched=False, **kwargs):
        if is_grads_batched:
            raise RuntimeError("Batching rule not implemented for aten::something (vmap)")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    looped = analyze(model, data, loss="cross_entropy", weight_decay=1e-3)
    for a, b in zip(batched.layers, looped.layers):
        for name in a.matrices:
            assert relative(b.matrices[name], a.matrices[name]) < 1e-12, (a.name, name)
