"""Property-based fuzzing of every reader of outside input: a clean FactError or a result,
never another exception. Example counts stay small (the suite runs on 2 CPU cores)."""

from __future__ import annotations

import json
import math
import os

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factcli.errors import FactError

# FACT_FUZZ_EXAMPLES raises the count for a longer hunt by hand (the note reports one).
FUZZ = settings(max_examples=int(os.environ.get("FACT_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# JSON-like values of every type a file could hold
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


def _clean(call):
    """Run `call`; a FactError is a clean refusal, anything else propagates (a failure)."""
    try:
        return call()
    except FactError:
        return None


@pytest.fixture(autouse=True)
def _small_memory(monkeypatch):
    """A 64 MB budget: fuzzed sizes that fit are still quick, larger ones are refused."""
    monkeypatch.setenv("FACT_MEMORY_LIMIT", str(64 << 20))


SPEC_KEYS = ["d", "k", "n", "n_test", "seed", "p", "op", "train_frac", "tau", "samples", "c",
             "split", "name", "test_frac", "labels", "target", "header", "", "x"]
spec_values = st.one_of(st.integers(-10**13, 10**13).map(str), st.sampled_from(
    ["nan", "inf", "-inf", "1e3", "0.5", "div", "add", "mul", "pow", "[/]", "", "wine", "no"]),
    st.text(max_size=5))


@FUZZ
@given(name=st.sampled_from(["parity", "modular", "mnist-10k", "separation", "teacher-linear",
                             "sklearn", "mnist", "cifar10", "file", "nope", ""]),
       options=st.lists(st.tuples(st.sampled_from(SPEC_KEYS), spec_values), max_size=4),
       raw=st.booleans(), junk=st.text(max_size=20))
def test_dataset_specs(tmp_path, name, options, raw, junk):
    from factcli.data.datasets import load_dataset

    spec = junk if raw else name + (":" if options else "") + ",".join(
        f"{k}={v}" for k, v in options)
    data = _clean(lambda: load_dataset(spec, data_dir=tmp_path))
    if data is not None:
        assert len(data.x_train) >= 1 and torch.isfinite(data.x_train).all()


KEEL_HEADER = ["@relation r", "@attribute a real [0, 1]", "@attribute b {x, y}",
               "@attribute c {p, q}", "@inputs a, b", "@outputs c", "@data"]
keel_noise = st.one_of(st.sampled_from(
    ["@attribute b integer", "@attribute c {p, p}", "@attribute 'q r' numeric",
     "@attribute d string", "@attribute e {", "@outputs zz", "@data", "% note", "", "?, x, p",
     "0.1, x", "nan, y, q", "1e308, x, p", "0.2, z, p", "0.3, x, r", "\x00"]), st.text(max_size=8))
keel_rows = st.sampled_from(["0.5, x, p", "1, y, q", "0, x, q", "-2.5, y, p"])
uci_rows = st.sampled_from(["0\t0.5\t1", "1\t1\t0", "2\t-1.25\t2", "3 0 0"])
uci_noise = st.one_of(st.sampled_from(
    ["4\t1\t399", "5\t2\t-1", "6\t1\t1e300", "7\tnan\t0", "8\tinf\t1", "9\ta\t1",
     "10\t0.5", "11\t1\t1.5", "12\t1\t0\t1", ""]), st.text(max_size=6))


@FUZZ
@given(rows=st.lists(keel_rows, max_size=8), noise=st.lists(
    st.tuples(st.integers(0, 14), keel_noise), max_size=2),
    table=st.lists(uci_rows, max_size=8), table_noise=st.lists(
        st.tuples(st.integers(0, 9), uci_noise), max_size=2),
    split=st.lists(st.lists(st.integers(-1, 8).map(str), max_size=4), max_size=3),
    junk=st.binary(max_size=4))
def test_tabular_files(tmp_path, rows, noise, table, table_noise, split, junk):
    """KEEL .dat files and UCI folders (NAME_R.dat + conxuntos.dat): well-formed ones with a
    few lines changed, inserted or cut, and bytes appended."""
    from factcli.data.datasets import load_dataset

    lines = KEEL_HEADER + rows
    for at, line in noise:
        lines.insert(min(at, len(lines)), line)
    keel = tmp_path / "t.dat"
    keel.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + junk)
    folder = tmp_path / "toy"
    folder.mkdir(exist_ok=True)  # tmp_path is shared by the examples
    (folder / "conxuntos.dat").unlink(missing_ok=True)
    for at, line in table_noise:
        table.insert(min(at, len(table)), line)
    (folder / "toy_R.dat").write_text("id\tf\tclase\n" + "\n".join(table),
                                      errors="surrogatepass")
    if split:
        (folder / "conxuntos.dat").write_text("\n".join(" ".join(line) for line in split))
    for spec in (f"keel:{keel}", f"uci:{folder}"):
        data = _clean(lambda spec=spec: load_dataset(spec))
        if data is not None:
            assert len(data.x_train) >= 1 and torch.isfinite(data.x_train).all()
            assert data.n_classes is not None and int(data.y_train.max()) < data.n_classes


@FUZZ
@given(model=values, training=values, arch=st.sampled_from(
    ["mlp", "linear", "quadratic", "os:system", 5, None]), width=scalars, depth=scalars,
    format_=st.sampled_from(["factcli.checkpoint/1", "other", 3]),
    weights=st.sampled_from(["good", "int", "nan", "shape", "none"]))
def test_checkpoint_reader(tmp_path, model, training, arch, width, depth, format_, weights):
    from factcli.io.checkpoint import load_checkpoint

    spec = {"arch": arch, "in_features": 4, "out_features": 2, "width": width, "depth": depth}
    if isinstance(model, dict):
        spec.update(model)
    state = {"0.weight": torch.zeros(3, 4, dtype=torch.float64)}
    state = {"good": state, "int": {"0.weight": torch.zeros(3, 4, dtype=torch.long)},
             "nan": {"0.weight": torch.full((3, 4), math.nan)},
             "shape": {"0.weight": torch.zeros(3)}, "none": {"0.weight": None}}[weights]
    path = tmp_path / "c.pt"
    torch.save({"format": format_, "model": spec if model is not None else model,
                "state_dict": state, "training": training}, path)
    checkpoint = _clean(lambda: load_checkpoint(path))
    if checkpoint is not None:
        _clean(checkpoint.build)


@FUZZ
@given(blob=st.binary(max_size=300), suffix=st.sampled_from([".pt", ".safetensors"]))
def test_checkpoint_bytes(tmp_path, blob, suffix):
    from factcli.io.checkpoint import load_checkpoint

    path = tmp_path / f"c{suffix}"
    path.write_bytes(blob)
    _clean(lambda: load_checkpoint(path))


attribute_values = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
    st.just("[" * 200), st.just('["a"]'), st.just("{}"),
    st.lists(st.integers(0, 9), min_size=1, max_size=3).map(np.array))


@FUZZ
@given(root=st.dictionaries(st.sampled_from(
    ["format", "model", "training", "relations", "warnings", "weight_decay", "alpha",
     "n_samples", "dataset", "kind"]), attribute_values, max_size=5),
    layer=st.dictionaries(st.sampled_from(["in_features", "out_features", "stationarity",
                                           "name", "kind", "best_alpha"]), attribute_values,
                          max_size=4),
    shape=st.lists(st.integers(0, 4), max_size=3), drop_metrics=st.booleans())
def test_report_reader(tmp_path, root, layer, shape, drop_metrics):
    from factcli.io.report import read_report
    from tests.hostile_inputs import _report

    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as handle:
        _report(handle)
        handle.attrs.update(root)
        handle["layers/0"].attrs.update(layer)
        del handle["layers/0/fact"]
        handle["layers/0"].create_dataset("fact", data=np.zeros(shape))
        if drop_metrics:
            del handle["metrics"]
            handle.create_dataset("metrics", data=np.zeros(2))
    report = _clean(lambda: read_report(path))
    for layer in report.layers if report is not None else []:
        for name in list(layer.matrices):
            _clean(lambda layer=layer, name=name: layer.matrices[name])


TOKENS = ["fact.pearson", "nfa.cosine", "stationarity", "epoch", "abs", "(", ")", ">", ">=",
          "==", "<", "and", "or", "+", "-", "*", "/", "1", "0", "1e999", "0.5", "[/]", "x.y",
          "**", "nope"]


@FUZZ
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=12), raw=st.text(max_size=30),
       use_raw=st.booleans(),
       row=st.dictionaries(st.sampled_from(["fact.pearson", "nfa.cosine", "stationarity",
                                            "epoch"]),
                           st.one_of(st.none(), st.floats(allow_nan=True)), max_size=4))
def test_require_grammar(tokens, raw, use_raw, row):
    from factcli.compare.comparison import relation_names
    from factcli.compare.requirements import parse_requirement, violations

    text = raw if use_raw else " ".join(tokens)
    requirement = _clean(lambda: parse_requirement(text, relation_names()))
    if requirement is not None:
        _clean(lambda: violations([requirement], [("a", "0", row)]))


row_values = st.one_of(scalars, st.dictionaries(st.text(max_size=3), scalars, max_size=2))


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(
    ["checkpoint", "layer", "relation", "pearson", "cosine", "rel_err", "stationarity"]),
    row_values, max_size=7), max_size=3), extra=st.text(max_size=40))
def test_stdin_json_lines(rows, extra):
    from factcli.compare.comparison import compare, from_rows
    from factcli.io.validate import json_line

    lines = [json.dumps(row) for row in rows] + ([extra] if extra.strip() else [])

    def parse():
        sources = from_rows([json_line(line, f"stdin line {i}") for i, line in
                             enumerate(lines, 1)])
        return compare(sources)

    _clean(parse)
