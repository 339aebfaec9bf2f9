"""The comparison library: views as data, the --require grammar and eigenspace overlap."""

from __future__ import annotations

import math
import re

import pytest
import torch

from factcli.compare import comparison as cmp
from factcli.compare.requirements import parse_requirement, violations
from factcli.errors import FactError

NAMES = cmp.relation_names()


def source(label, fact, nfa, epoch=None, layers=("0",), rel_err=math.nan):
    metrics = {layer: {"fact": {"pearson": fact, "cosine": fact, "rel_err": rel_err},
                       "nfa": {"pearson": nfa, "cosine": nfa, "rel_err": math.nan}}
               for layer in layers}
    return cmp.Source(label, list(layers), metrics, {layer: 0.1 for layer in layers},
                      epoch=epoch)


@pytest.mark.parametrize("text, holds", [
    ("fact.pearson >= 0.99", True),
    ("fact.pearson > nfa.pearson", True),
    ("nfa.pearson > fact.pearson or stationarity < 0.5", True),
    ("fact.pearson > 0.99 and nfa.pearson > 0.9", False),
    ("fact.pearson - nfa.pearson >= 2 * 0.09", True),
    ("abs(nfa.pearson - 1) < 0.25", True),
    ("-(fact.pearson) < -0.9", True),
    ("fact.pearson / 0 > 0", False),       # division by zero is missing, not an error
    ("fact.rel_err < 1", False),           # missing values never satisfy a comparison
    ("fact.rel_err != 1", False),
    ("1e-3 < .5", True),
])
def test_requirements_evaluate_on_a_row(text, holds):
    values = {"fact.pearson": 0.995, "nfa.pearson": 0.8, "fact.rel_err": math.nan,
              "stationarity": 0.1}
    assert parse_requirement(text, NAMES).holds(values) is holds


@pytest.mark.parametrize("text, message", [
    ("fcat.pearson > 0", "unknown relation 'fcat'"),
    ("fact.pearsn > 0", "unknown metric 'pearsn'"),
    ("fact > 0", "unknown name 'fact'"),
    ("fact.pearson >>= 1", "unexpected '>='"),
    ("fact.pearson", "expected a comparison"),
    ("fact.pearson > ", "ends too early"),
    ("(fact.pearson > 1", "expected ')'"),
    ("fact.pearson > 1 1", "unexpected '1'"),
    ("__class__ > 1", "unknown name '__class__'"),
    ("os.system > 1", "unknown relation 'os'"),
    ("open('x') > 1", "cannot read"),
    ("fact.pearson > 1; x", "cannot read ';"),
    ("", "empty"),
])
def test_bad_requirements_are_input_errors(text, message):
    with pytest.raises(FactError, match=re.escape(message)):
        parse_requirement(text, NAMES)


def test_violations_name_row_and_values_and_absent_relations_are_errors():
    requirement = parse_requirement("fact.pearson > nfa.pearson", NAMES)
    good, bad = source("good", 0.99, 0.5), source("bad", 0.4, 0.5)
    rows = [(s.label, "0", cmp.row_values(s, "0")) for s in (good, bad)]
    (violation,) = violations([requirement], rows)
    assert (violation.input, violation.layer) == ("bad", "0")
    assert violation.values == {"fact.pearson": 0.4, "nfa.pearson": 0.5}
    other = parse_requirement("enfa.pearson > 0", NAMES)
    with pytest.raises(FactError, match="has no enfa.pearson"):
        violations([other], rows)


def test_views_mark_the_best_relation_and_order_snapshots_by_epoch():
    late, early = source("late", 0.99, 0.9, epoch=20), source("early", 0.3, 0.9, epoch=0)
    result = cmp.compare([late, early])
    assert [row["input"] for row in result.rows] == ["early", "late"]
    assert [row["best_forward"] for row in result.rows] == ["nfa", "fact"]
    assert "best_backward" not in result.rows[0]
    assert result.trends == {"0": {"fact": [0.3, 0.99], "nfa": [0.9, 0.9]}}
    by_fact = cmp.compare([late, early], sort="fact")
    assert [row["input"] for row in by_fact.rows] == ["late", "early"]
    errors = cmp.compare([source("a", 0.5, 0.5, rel_err=0.2)], metric="rel_err")
    assert errors.rows[0]["best_forward"] == "fact"  # the lowest error; nfa's is missing
    unordered = cmp.compare([source("b", 0.1, 0.1), source("a", 0.2, 0.2, epoch=3)])
    assert [row["input"] for row in unordered.rows] == ["b", "a"]


def test_view_input_errors():
    with pytest.raises(FactError, match="relation.*enfa.*not in the inputs"):
        cmp.compare([source("a", 0.5, 0.5)], relations=["enfa"])
    with pytest.raises(FactError, match="cannot sort by 'nope'"):
        cmp.compare([source("a", 0.5, 0.5)], sort="nope")
    rfm = cmp.Source("rfm.h5", ["iteration_0"], {}, kind="rfm")
    with pytest.raises(FactError, match="no agreement metrics.*--features"):
        cmp.compare([rfm])
    with pytest.raises(FactError, match="no layer matches 'x'"):
        cmp.select_layers([source("a", 0.5, 0.5)], ["x"])


def test_json_rows_group_by_checkpoint_and_name_missing_fields():
    rows = [{"checkpoint": c, "layer": "0", "relation": r, "pearson": 0.5, "cosine": None}
            for c in ("a.pt", "b.pt") for r in ("fact", "nfa")]
    a, b = cmp.from_rows(rows)
    assert (a.label, b.label, a.metrics["0"]["nfa"]["pearson"]) == ("a.pt", "b.pt", 0.5)
    assert math.isnan(a.metrics["0"]["fact"]["cosine"])
    assert math.isnan(a.stationarity["0"])
    for field in ("layer", "relation"):
        broken = {k: v for k, v in rows[0].items() if k != field}
        with pytest.raises(FactError, match=f"stdin line 2 lacks the field '{field}'"):
            cmp.from_rows([rows[0], broken])
    with pytest.raises(FactError, match="lacks a metric field"):
        cmp.from_rows([{"layer": "0", "relation": "fact"}])
    with pytest.raises(FactError, match="'pearson' must be a number"):
        cmp.from_rows([{"layer": "0", "relation": "fact", "pearson": "high"}])


def test_principal_angles_and_overlap_of_known_subspaces():
    e = torch.eye(3, dtype=torch.float64)
    tilted = torch.stack([e[0] * math.cos(0.3) + e[1] * math.sin(0.3), e[2]], dim=1)
    angles = cmp.principal_angles(e[:, [0, 2]], tilted)
    assert torch.allclose(angles, torch.tensor([0.0, math.degrees(0.3)], dtype=torch.float64),
                          atol=1e-6)
    a = torch.diag(torch.tensor([5.0, 3.0, 0.01], dtype=torch.float64))
    b = torch.diag(torch.tensor([0.02, 3.0, 5.0], dtype=torch.float64))
    assert cmp.energy_rank(a) == 2
    same = cmp.feature_agreement(a, 2 * a)
    assert same["overlap"] == pytest.approx(1.0) and same["pearson"] == pytest.approx(1.0)
    half = cmp.feature_agreement(a, b)  # top-2 spans {e0, e1} vs {e1, e2}: one shared axis
    assert half["rank"] == 2 and half["overlap"] == pytest.approx(0.5)
    assert half["angles"] == pytest.approx([0.0, 90.0], abs=1e-6)
    assert cmp.feature_agreement(a, b, rank=1)["overlap"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(FactError, match="--rank must be between 1 and 3"):
        cmp.feature_agreement(a, b, rank=4)
    with pytest.raises(FactError, match="shapes"):
        cmp.feature_agreement(a, torch.eye(2, dtype=torch.float64))


def test_features_compare_shared_layers_against_the_first_input():
    nfm = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    first = cmp.Source("a", ["0", "2"], {}, matrices={"0": {"nfm": nfm}, "2": {"nfm": nfm}})
    second = cmp.Source("b", ["0"], {}, matrices={"0": {"nfm": nfm.flip(0, 1)}})
    (row,) = cmp.compare_features([first, second], rank=1)
    assert (row["reference"], row["input"], row["layer"]) == ("a", "b", "0")
    assert row["overlap"] == pytest.approx(0.0, abs=1e-12)
    lines = cmp.Source("stdin", ["0"], {"0": {}})
    with pytest.raises(FactError, match="no nfm matrix for layer '0' \\(JSON lines"):
        cmp.compare_features([first, lines])
    with pytest.raises(FactError, match="two or more inputs"):
        cmp.compare_features([first])


def test_a_source_without_selected_layers_is_skipped_not_an_error():
    deep, shallow = source("deep", 0.9, 0.5, layers=("0", "2")), source("shallow", 0.8, 0.5)
    chosen = cmp.select_layers([deep, shallow], ["2"])
    assert [row["input"] for row in cmp.compare(chosen).rows] == ["deep"]
    with pytest.raises(FactError, match="no layers to compare"):
        cmp.compare([cmp.Source("empty", [], {})])


def test_non_finite_feature_matrix_and_deep_nesting_are_input_errors():
    bad = torch.eye(2, dtype=torch.float64)
    bad[0, 1] = math.nan
    with pytest.raises(FactError, match="NaN or infinite"):
        cmp.feature_agreement(torch.eye(2, dtype=torch.float64), bad)
    with pytest.raises(FactError, match="nested too deeply"):
        parse_requirement("(" * 1000 + "1" + ")" * 1000 + " > 0", NAMES)
