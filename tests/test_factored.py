"""`Factored` (A = L Rᵀ) against the same matrices formed densely, and the metrics on both."""

from __future__ import annotations

import io
import math

import h5py
import numpy as np
import pytest
import torch

from factcli.data.datasets import Dataset
from factcli.engine.analysis import analyze
from factcli.engine.conventions import FORWARD, NEEDS_OPTIMIZER, UNFACTORED
from factcli.engine.factored import Factored, common_basis, thin_sides
from factcli.engine.metrics import METRICS, cosine, pearson, rel_err
from factcli.errors import FactError
from factcli.io.report import read_report, write_report
from factcli.models.archs import build_model
from tests.helpers import fact_inprocess
from tests.oracle import naive_relations, relative


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


def test_metrics_in_a_common_basis_equal_the_dense_metrics():
    """Matrices whose factors lie in span[X, S] (as every relation of a thin side does), as
    `Core`s in one basis of span[X, S, 1]: the same metrics as formed densely."""
    generator = torch.Generator().manual_seed(8)
    X, S = (torch.randn(50, 3, dtype=torch.float64, generator=generator) for _ in range(2))
    mix = torch.randn(3, 3, dtype=torch.float64, generator=generator)
    a, b = Factored(X, X), Factored(S @ mix, X) + Factored(X, S @ mix) * 0.5
    basis = common_basis(X, S)
    assert basis.shape == (50, 7)
    for name, metric in METRICS.items():
        dense = metric(a.dense() + 2.0, b.dense())  # + 2: a large entry mean (centering)
        held = metric((a - (-2.0)).core(basis), b.core(basis))
        assert close(held, dense, 1e-12), name
    assert close(a.core(basis).sum(), a.dense().sum()) and close(b.core(basis).norm(),
                                                                 b.dense().norm())


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


# ------------------------------------------------------------------ the engine with --max-dense

TINY_LM = {"arch": "transformer", "vocab": 9, "context": 4, "out_features": 9, "d_model": 4,
           "heads": 2, "depth": 1, "d_mlp": 6, "output": "all", "activation": "gelu",
           "bias": True}


def as_dense(matrix):
    return matrix.dense() if isinstance(matrix, Factored) else matrix


@pytest.fixture(scope="module")
def tiny_lm():
    """A tiny causal LM (vocab 9 > d 4) analyzed densely and with max_dense=5, which factors
    the embedding's forward side, the head's and mlp.0's backward side, mlp.2's forward side."""
    torch.manual_seed(0)
    model = build_model(TINY_LM).double().eval()
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 9, (5, 4), generator=generator)
    ids = torch.randint(0, 9, (5, 4), generator=generator)
    ids[1, 2:] = -100
    data = Dataset("test", tokens, ids, n_classes=9)
    dense, thin = (analyze(model, data, loss="next_token", weight_decay=3e-3, batch_size=2,
                           max_dense=limit) for limit in (None, 5))
    return model, data, dense, thin


def test_factored_relations_equal_the_dense_ones(tiny_lm):
    _, _, dense, thin = tiny_lm
    shapes = {}
    for full, held in zip(dense.layers, thin.layers, strict=True):
        projected = held.out_features > max(5, held.in_features)
        expected = set(full.metrics) - (set(UNFACTORED) if projected else set())
        assert set(held.metrics) == expected, held.name
        for relation, values in held.metrics.items():
            assert values == pytest.approx(full.metrics[relation], abs=1e-10, nan_ok=True), \
                (held.name, relation)
        for name, matrix in held.matrices.items():
            assert relative(as_dense(matrix), full.matrices[name]) < 1e-12, (held.name, name)
        assert held.best_alpha == full.best_alpha
        assert held.best_alpha_pearson == pytest.approx(full.best_alpha_pearson, abs=1e-10)
        assert held.stationarity == full.stationarity
        shapes[held.name] = sorted(name for name, m in held.matrices.items()
                                   if isinstance(m, Factored))
    forward = sorted({"nfm", *FORWARD} - NEEDS_OPTIMIZER)
    assert shapes["embed"] == shapes["blocks.0.mlp.2"] == forward
    assert shapes["head"] == shapes["blocks.0.mlp.0"] == sorted(
        ("bnfm", "bfact", "bfact_sym", "bfact_sqrt"))
    assert shapes["pos"] == []
    for name in ("head", "blocks.0.mlp.0"):
        assert any(name in line and "bnfa, bagop, benfa not computed" in line
                   for line in thin.warnings)
        assert "not computed (" in thin.layer(name).note


def test_a_thin_side_shares_its_arrays(tiny_lm):
    """The memory of a thin side: FACT's step and FACT_sym's factors are views of one
    [W/2, step, W/2] panel, NFM's factors are W itself, FACT_sqrt = X Xᵀ holds X once."""
    _, _, _, thin = tiny_lm
    for name, prefix in (("embed", ""), ("head", "b")):
        held = thin.layer(name).matrices
        fact, sym, root = (held[prefix + key] for key in ("fact", "fact_sym", "fact_sqrt"))
        nfm = held[prefix + "nfm"]
        step = fact.R if prefix == "" else fact.L
        panel = sym.L.untyped_storage().data_ptr()
        assert sym.R.untyped_storage().data_ptr() == step.untyped_storage().data_ptr() == panel
        assert nfm.L.data_ptr() == nfm.R.data_ptr() and root.L is root.R


def test_the_table_legend_says_what_a_dash_stands_for(tiny_lm):
    """The head's bagop, bnfa, benfa (no factors) print as –: not computed, not undefined;
    a table with no – has no – in its legend."""
    from factcli.cli.render import footer

    _, _, dense, thin = tiny_lm
    first = {name: footer(analysis, metric).splitlines()[0] for name, analysis, metric in
             (("thin", thin, "pearson"), ("dense", dense, "pearson"),
              ("both", thin, "rel_err"))}
    assert first["thin"].endswith("; – = not computed for that layer (its note below says why)")
    assert "–" not in first["dense"]
    assert first["both"].endswith("; – = not defined, or not computed for that layer (its note "
                                  "below says why)")  # rel_err of the AGOP family: no scale


def test_factored_relations_match_the_oracle(tiny_lm):
    model, data, _, thin = tiny_lm
    modules = dict(model.named_modules())
    for name in ("embed", "head"):
        expected = naive_relations(model, modules[name], data.x_train, data.y_train,
                                   "next_token", 3e-3)
        for relation, matrix in thin.layer(name).matrices.items():
            assert relative(as_dense(matrix), expected[relation]) < 1e-10, (name, relation)


@pytest.fixture(scope="module")
def reports(tiny_lm, tmp_path_factory):
    """Both analyses written with every matrix (the factored one as factors), in float64."""
    _, _, dense, thin = tiny_lm
    folder = tmp_path_factory.mktemp("reports")
    paths = folder / "dense.h5", folder / "thin.h5"
    for path, analysis in zip(paths, (dense, thin)):
        write_report(path, analysis, matrices="all", matrix_dtype="float64")
    return paths


def test_a_report_stores_factors_and_reads_them_back(tiny_lm, reports):
    _, _, _, thin = tiny_lm
    back = read_report(reports[1])
    with h5py.File(reports[1], "r") as handle:
        head = handle["layers/head/bnfm"]
        assert isinstance(head, h5py.Group) and head["left"].shape == (9, 4)
    for layer in thin.layers:
        stored = back.layer(layer.name)
        assert stored.note == layer.note and stored.metrics.keys() == layer.metrics.keys()
        for relation, values in layer.metrics.items():
            assert stored.metrics[relation] == pytest.approx(values, rel=0, nan_ok=True)
        for name, matrix in layer.matrices.items():
            held = stored.matrices[name]
            assert isinstance(held, Factored) == isinstance(matrix, Factored), (layer.name, name)
            parts = [(m.L, m.R) if isinstance(m, Factored) else (m,) for m in (held, matrix)]
            assert all(map(torch.equal, *parts)), (layer.name, name)  # the stored bits


@pytest.mark.parametrize("layer,name", [("head", "bfact"), ("embed", "nfa"), ("pos", "fact")])
def test_show_matrix_of_a_factored_entry_equals_the_dense_one(reports, layer, name):
    shown = [fact_inprocess("show", path, "--matrix", layer, name, "-f", "tsv")
             for path in reports]
    assert all(result.exit_code == 0 for result in shown), shown[1].output
    dense, thin = (np.loadtxt(io.StringIO(result.stdout)) for result in shown)
    assert dense.shape == (9, 9) if layer != "pos" else (4, 4)
    assert np.abs(thin - dense).max() <= 1e-12 * np.abs(dense).max()


def test_show_matrix_refuses_to_form_one_past_max_bytes(reports):
    result = fact_inprocess("show", reports[1], "--matrix", "head", "bnfm", "--max-bytes", "640")
    assert result.exit_code == 2
    assert "--max-bytes 640" in result.output and "rank-4 factors" in result.output
    assert fact_inprocess("show", reports[1], "--matrix", "head", "bnfm", "--max-bytes",
                          "648").exit_code == 0  # 9×9×8 bytes


def test_compare_features_of_factored_entries_against_the_dense_ones(reports):
    """The head's bNFM stored as factors against the dense one: the same matrix (formed after
    the size check), so agreement 1 and no angle between their eigenspaces."""
    from factcli.compare.comparison import compare_features, from_analysis

    dense, thin = (from_analysis(read_report(path), label) for path, label in
                   zip(reports, ("dense", "thin")))
    rows = compare_features([dense, thin], matrix="bnfm")
    assert {row["layer"] for row in rows} >= {"head", "blocks.0.mlp.0"}
    for row in rows:
        assert row["pearson"] == pytest.approx(1, abs=1e-12), row["layer"]
        assert row["overlap"] == pytest.approx(1, abs=1e-9) and row["max_angle"] < 1e-3


def test_a_sketched_agop_with_factored_sides_equals_the_dense_sketch(tiny_lm):
    """The same probes (same seed) dense and factored: the same estimates and error bars."""
    model, data, _, _ = tiny_lm
    dense, thin = (analyze(model, data, loss="next_token", weight_decay=3e-3, batch_size=2,
                           relations=["agop", "nfa", "bagop", "fact"], agop_probes="16",
                           max_dense=limit) for limit in (None, 5))
    assert thin.info["agop_probes"] == 16
    for full, held in zip(dense.layers, thin.layers, strict=True):
        for relation, values in held.metrics.items():
            assert values == pytest.approx(full.metrics[relation], abs=1e-10, nan_ok=True), \
                (held.name, relation)
    assert "bagop" not in thin.layer("head").metrics
    assert math.isfinite(thin.layer("embed").metrics["agop"]["pearson_se"])
