"""`keep_matrices`: the engine returns only the matrices a caller uses, frees the rest as soon
as their layer's metrics are in, and the metrics do not change; `fact analyze` and `fact merge`
keep exactly what their report writes (nothing without --report)."""

from __future__ import annotations

import math
import weakref

import pytest
import torch

from factcli.data.datasets import Dataset
from factcli.engine import relations as rel
from factcli.engine.analysis import Plan, analyze, prepare
from factcli.engine.factored import Factored
from factcli.errors import FactError
from factcli.io.report import DEFAULT_MATRICES, read_report
from factcli.models.archs import build_model
from tests.helpers import fact_inprocess, tiny_checkpoint
from tests.test_factored import TINY_LM

SUBSET = ("bnfm", "fact", "nfa")


@pytest.fixture(scope="module")
def lm():
    """The tiny causal LM of test_factored (vocab 9 > d 4): max_dense=5 factors the
    embedding's forward side and the head's backward side."""
    torch.manual_seed(0)
    model = build_model(TINY_LM).double().eval()
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 9, (5, 4), generator=generator)
    return model, Dataset("test", tokens, torch.randint(0, 9, (5, 4), generator=generator),
                          n_classes=9)


def same_metrics(a, b):
    """Bit-identical metrics (NaN where the other has NaN), and the same fitted α."""
    for one, other in zip(a.layers, b.layers, strict=True):
        assert one.metrics.keys() == other.metrics.keys(), one.name
        for relation, values in one.metrics.items():
            assert values.keys() == other.metrics[relation].keys()
            for key, value in values.items():
                held = other.metrics[relation][key]
                assert value == held or math.isnan(value) and math.isnan(held), \
                    (one.name, relation, key)
        assert (one.stationarity, one.note) == (other.stationarity, other.note)
        assert one.best_alpha == other.best_alpha or math.isnan(one.best_alpha)


def same_matrix(a, b):
    if isinstance(a, Factored):
        return isinstance(b, Factored) and torch.equal(a.L, b.L) and torch.equal(a.R, b.R)
    return torch.equal(a, b)


@pytest.mark.parametrize("max_dense", [None, 5], ids=["dense", "factored"])
@pytest.mark.parametrize("probes", ["exact", "16"])
def test_metrics_do_not_depend_on_the_matrices_kept(lm, max_dense, probes):
    model, data = lm
    relations = None if probes == "exact" else ["agop", "nfa", "bagop", "fact", "enfa"]
    runs = {keep: analyze(model, data, loss="next_token", weight_decay=3e-3, batch_size=2,
                          max_dense=max_dense, relations=relations, agop_probes=probes,
                          keep_matrices=keep) for keep in ("all", "none", SUBSET)}
    if probes != "exact":
        assert "pearson_se" in runs["all"].layer("embed").metrics["agop"]
    for keep in ("none", SUBSET):
        same_metrics(runs["all"], runs[keep])
    for full, none, some in zip(*(run.layers for run in runs.values()), strict=True):
        assert none.matrices == {}
        assert set(some.matrices) == set(SUBSET) & set(full.matrices), full.name
        assert all(same_matrix(matrix, full.matrices[name])
                   for name, matrix in some.matrices.items()), full.name
    assert isinstance(runs[SUBSET].layer("head").matrices["bnfm"], Factored) == bool(max_dense)


@pytest.mark.parametrize("probes", ["exact", "16"])
def test_matrices_not_kept_are_freed_before_the_next_are_formed(lm, monkeypatch, probes):
    """Every matrix not kept is gone (no reference left) when the next relations are computed
    (the next layer's, or the next jackknife replica's): an LM's embedding factors do not
    outlive it into the head's."""
    model, data = lm
    formed, compute = [], rel.compute

    def watched(*args, **kwargs):
        alive = [name for name, ref in formed if ref() is not None]
        assert set(alive) <= {"fact"}, alive  # only the kept ones of earlier layers
        matrices, fitted = compute(*args, **kwargs)
        formed.extend((name, weakref.ref(matrix)) for name, matrix in matrices.items())
        return matrices, fitted

    monkeypatch.setattr(rel, "compute", watched)
    result = analyze(model, data, loss="next_token", weight_decay=3e-3, batch_size=2,
                     max_dense=5, agop_probes=probes, keep_matrices=["fact"])
    assert formed and all(set(layer.matrices) == {"fact"} for layer in result.layers)


@pytest.mark.parametrize("keep,needle", [
    (["fact", "gram"], "unknown matrix gram in keep_matrices"),
    ("fact", "keep_matrices must be 'all', 'none' or a list"),
])
def test_bad_keep_matrices_fails_before_any_loading(tmp_path, keep, needle):
    with pytest.raises(FactError, match=needle):
        prepare(tmp_path / "absent.pt", keep_matrices=keep)


@pytest.fixture
def finished(monkeypatch):
    """The results `Plan.finish` returned during a command run in this process."""
    results, finish = [], Plan.finish

    def spy(self, sums):
        results.append(finish(self, sums))
        return results[-1]

    monkeypatch.setattr(Plan, "finish", spy)
    return results


@pytest.mark.parametrize("options,kept", [
    ((), ()),
    (("--plot", "bars.png"), ()),
    (("--report", "r.h5"), DEFAULT_MATRICES),
    (("--report", "r.h5", "--matrices", "fact,bnfm"), ("fact", "bnfm")),
    (("--report", "r.h5", "--no-matrices"), ()),
])
def test_fact_analyze_keeps_what_its_report_writes(tmp_path, monkeypatch, finished, options,
                                                   kept):
    if "--plot" in options:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    result = fact_inprocess("analyze", ckpt, "-f", "jsonl", *options)
    assert result.exit_code == 0, result.output
    (analysis,) = finished
    assert all(set(layer.matrices) == set(kept) for layer in analysis.layers)
    if "--report" in options:
        stored = read_report(tmp_path / "r.h5")
        assert all(set(layer.matrices) == set(kept) for layer in stored.layers)


def test_a_report_without_a_matrix_says_so_in_one_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    report = tmp_path / "r.h5"
    assert fact_inprocess("analyze", ckpt, "--report", report, "--matrices", "fact",
                          "-f", "jsonl").exit_code == 0
    shown = fact_inprocess("show", report, "--matrix", "0", "nfm")
    assert shown.exit_code == 2
    assert shown.output.strip().splitlines() == [
        "error: layer '0' stores no 'nfm' matrix; stored: fact"]
    assert fact_inprocess("show", report, "-f", "jsonl").exit_code == 0  # the metrics read back


def test_fact_merge_keeps_what_its_report_writes(tmp_path, monkeypatch):
    from factcli.io import partial

    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    parts = [tmp_path / f"p{index}.h5" for index in range(2)]
    for index, part in enumerate(parts):
        assert fact_inprocess("analyze", ckpt, "--shard", f"{index}/2", "--partial",
                              part).exit_code == 0
    merged, merge = [], partial.merge_partials
    monkeypatch.setattr(partial, "merge_partials",
                        lambda *args, **kwargs: merged.append(merge(*args, **kwargs)) or merged[-1])
    for options, kept in (((), ()), (("--report", tmp_path / "m.h5", "--matrices", "nfa"),
                                     ("nfa",))):
        assert fact_inprocess("merge", *parts, "-f", "jsonl", *options).exit_code == 0
        assert all(set(layer.matrices) == set(kept) for layer in merged[-1].layers)
    assert set(read_report(tmp_path / "m.h5").layers[0].matrices) == {"nfa"}
    everything = merge([str(part) for part in parts])
    assert set(everything.layers[0].matrices) == {"nfm", "bnfm", *everything.layers[0].metrics}
    same_metrics(everything, merged[0])
