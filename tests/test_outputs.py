"""Outputs that never lose a number, machine formats with α*, reports readable by every tool,
pipes that close early, and the conventions every command shares."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import fact, tiny_checkpoint

from factcli.cli.render import number
from factcli.io.report import read_report

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One analyzed checkpoint stored as a report: the tests below read it back."""
    folder = tmp_path_factory.mktemp("report")
    path = folder / "r.h5"
    result = fact("analyze", tiny_checkpoint(folder / "a.pt"), "--report", path,
                  "--matrices", "all", "--matrix-dtype", "float64", "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    return path, [json.loads(line) for line in result.stdout.splitlines()]


def parse_tables(text: str) -> dict[tuple[str, str], str]:
    """(layer, column) → cell text of every table in `text` (tables split into parts merge)."""
    cells: dict[tuple[str, str], str] = {}
    header: list[str] | None = None
    for line in ANSI.sub("", text).splitlines():
        tokens = line.split()
        if tokens[:1] == ["layer"]:
            header = tokens
        elif header and len(tokens) == len(header) and not set(line.strip()) <= {"─", " "}:
            for column, value in zip(header[1:], tokens[1:]):
                cells[(tokens[0], column)] = value
        elif header and tokens and not set(line.strip()) <= {"─", " "}:
            header = None
    return cells


@pytest.mark.parametrize("metric", ["pearson", "cosine", "rel_err"])
@pytest.mark.parametrize("terminal", [False, True])
def test_tables_hold_every_number_of_the_jsonl(report, metric, terminal):
    path, rows = report
    env = {"COLUMNS": "80", **({"FORCE_COLOR": "1", "NO_COLOR": ""} if terminal else {})}
    result = fact("show", path, "--metric", metric, env=env)
    assert result.returncode == 0, result.stderr
    lines = ANSI.sub("", result.stdout).splitlines()
    if terminal:
        assert max(len(line) for line in lines) <= 80 and "(2/" in result.stdout  # split
    else:  # a file: full width, no padding, marks in text
        assert not any(line != line.rstrip() for line in lines)
        assert "*" in result.stdout and "* = best per layer" in result.stdout
    assert "…" not in "".join(line for line in lines if not line.startswith("metric:"))
    cells = parse_tables(result.stdout)
    for row in rows:
        layer = row["layer"]
        assert cells[(layer, row["relation"])].rstrip("*") == number(row[metric])
        assert cells[(layer, "station.")] == number(row["stationarity"], 2)
        assert cells[(layer, "α*")] == number(row["best_alpha"], 2)
        assert cells[(layer, "r@α*")] == number(row["best_alpha_pearson"])
        assert cells[(layer, "k→m")] == f"{row['in_features']}→{row['out_features']}"


def test_machine_formats_carry_alpha_star(report, tmp_path):
    path, rows = report
    assert all(math.isfinite(row["best_alpha"]) and -1 <= row["best_alpha_pearson"] <= 1
               for row in rows)
    for format, separator in (("tsv", "\t"), ("csv", ",")):
        result = fact("show", path, "-f", format)
        header = result.stdout.splitlines()[0].split(separator)
        assert {"best_alpha", "best_alpha_pearson"} <= set(header)
    document = json.loads(fact("show", path, "-f", "json").stdout)
    assert document["rows"] == rows
    matrix = fact("show", path, "--matrix", "0", "nfm", "-f", "csv").stdout
    assert np.loadtxt(matrix.splitlines(), delimiter=",").shape == (4, 4)


def test_report_metrics_are_plain_tables_and_matrices_say_what_they_are(report):
    path, rows = report
    with h5py.File(path) as handle:
        table = handle["metrics"][()]
        assert table.dtype["layer"].kind == "S"  # fixed-length UTF-8, no object strings
        assert {"best_alpha", "best_alpha_pearson", "stationarity"} <= set(table.dtype.names)
        nfa = handle["layers/0/nfa"]
        assert nfa.attrs["reference"] == "nfm" and nfa.attrs["alpha"] == 0.5
        assert handle["layers/0/bfact"].attrs["axes"] == "outputs × outputs (m×m)"
        assert handle["layers/0/nfm"].attrs["definition"] == "WᵀW"
    frame = read_report(path).to_pandas()
    assert len(frame) == len(rows) and list(frame.columns) == list(rows[0])
    assert np.allclose(frame["pearson"].to_numpy(float),
                       [np.nan if r["pearson"] is None else r["pearson"] for r in rows],
                       equal_nan=True)


def test_default_report_is_small(tmp_path):
    """The MLP sample (784-256-256-256-256-10) with default options: ≤ 5× its checkpoint."""
    checkpoint = "sample_checkpoints/mlp5_mnist10k.pt"
    path = tmp_path / "r.h5"
    result = fact("analyze", checkpoint, "--report", path, "--max-samples", "200",
                  "--relations", "fact,nfa", "-q", "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    import os

    ratio = os.path.getsize(path) / os.path.getsize(checkpoint)
    assert ratio <= 5, ratio
    with h5py.File(path) as handle:
        assert set(handle["layers/0"]) == {"nfm", "bnfm", "fact", "nfa"}
        assert handle["layers/0/fact"].dtype == np.float32


def _pipe(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True,
                          text=True, timeout=300,
                          env={**__import__("os").environ, "NO_COLOR": "1"})


def test_closed_stdout_ends_quietly_with_141(report):
    path, _ = report
    fact_cmd = f"{sys.executable} -m factcli"
    for format in ("jsonl", "table", "tsv"):  # `true` exits at once: every write hits EPIPE
        result = _pipe(f"{fact_cmd} show {path} -f {format} --metric pearson | true")
        assert result.returncode == 141, (format, result.stderr)
        assert result.stderr == "", result.stderr


def test_train_jsonl_into_head_saves_its_checkpoint(tmp_path):
    out = tmp_path / "run.pt"
    result = _pipe(f"{sys.executable} -m factcli train mlp --dataset teacher-linear:d=4,c=2,n=40 "
                   f"--width 6 --depth 2 --epochs 300 --out {out} --format jsonl | head -2")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert "stdout was closed" in result.stderr and str(out) in result.stderr
    from factcli.io.checkpoint import load_checkpoint

    training = load_checkpoint(out).training
    assert training["finished"] and training["epoch"] == 300 and training["time_s"] > 0


def test_reading_reports_does_not_import_torch(report):
    path, _ = report
    code = ("import sys; sys.argv = ['fact', *sys.argv[1:]]\n"
            "from factcli.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    for args in (["show", path], ["show", path, "-f", "jsonl"], ["compare", path, path]):
        result = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (args, result.stderr)


def test_every_command_has_quiet_verbose_and_h():
    from typer.main import get_command

    from factcli.cli import app

    group = get_command(app)
    names = [(name,) for name in group.commands if name != "data"]
    names += [("data", sub) for sub in group.commands["data"].commands]
    for path in names:
        result = fact(*path, "-h", env={"COLUMNS": "200"})
        assert result.returncode == 0, (path, result.stderr)
        assert "--quiet" in result.stdout and "-v" in result.stdout, path
    assert "--install-completion" in fact("-h").stdout


def test_verbose_says_more_and_quiet_says_nothing(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    report = tmp_path / "sub" / "r.h5"
    loud = fact("analyze", ckpt, "-v", "-f", "jsonl", "--report", report)
    assert loud.returncode == 0 and "3 layers on 40 samples" in loud.stderr, loud.stderr
    assert "report written" in loud.stderr and report.is_file()  # --report made its folder
    quiet = fact("analyze", ckpt, "-q", "-f", "jsonl", "--report", report)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_notebook_api(report):
    import factcli

    path, rows = report
    analysis = read_report(path)
    text = repr(analysis)
    assert len(text) < 300 and "3 layers" in text and "tensor" not in text
    assert "<table>" in analysis._repr_html_() and "best_alpha" in analysis._repr_html_()
    assert len(repr(analysis.layers[0])) < 300
    assert {"analyze", "train", "RFM", "compare", "read_report", "Analysis"} <= set(dir(factcli))


def test_rfm_interrupted_keeps_finished_iterations():
    from factcli.data.datasets import load_dataset
    from factcli.rfm.estimator import RFM

    data = load_dataset("parity:d=6,k=2,n=80")
    done = []

    def stop_after_two(row):
        done.append(row["iteration"])
        if len(done) == 2:
            raise KeyboardInterrupt

    model = RFM(iters=5, val_frac=0.2).fit(data.x_train, data.y_train, callback=stop_after_two)
    assert model.interrupted_ and [row["iteration"] for row in model.history_] == [0, 1]
    assert len(model.matrices_) == 2 and model.best_iteration_ in (0, 1)
    assert "interrupted" in repr(model) and len(model.to_pandas()) == 2


def test_fact_rfm_on_ctrl_c_prints_and_saves_the_finished_iterations(tmp_path, monkeypatch):
    from helpers import fact_inprocess

    from factcli.rfm import kernels

    solve, calls = kernels.solve, []

    def interrupted_third_solve(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C during iteration 2
            raise KeyboardInterrupt
        return solve(*args, **kwargs)

    monkeypatch.setattr(kernels, "solve", interrupted_third_solve)
    report = tmp_path / "rfm.h5"
    result = fact_inprocess("rfm", "--data", "parity:d=6,k=2,n=120,n_test=40", "--iters", "5",
                            "-f", "jsonl", "--report", report)
    assert result.exit_code == 130, result.output
    assert [json.loads(line)["iteration"] for line in result.stdout.splitlines()] == [0, 1]
    assert "interrupted" in result.stderr
    with h5py.File(report) as handle:
        assert list(handle["layers"]) == ["iteration_0", "iteration_1"]


def test_old_reports_still_read(tmp_path):
    """A factcli.report/1 file as 0.1 wrote it: variable-length strings, three metrics."""
    path = tmp_path / "old.h5"
    text = h5py.string_dtype()
    with h5py.File(path, "w") as handle:
        handle.attrs.update(format="factcli.report/1", dataset="parity", loss="mse",
                            weight_decay=1e-3, alpha=0.5, warnings="[]")
        row = np.dtype([("layer", text), ("relation", text), ("pearson", "f8"),
                        ("cosine", "f8"), ("rel_err", "f8")])
        handle.create_dataset("metrics", data=np.array([("0", "fact", 0.9, 0.95, 0.1)], row))
        group = handle.create_group("layers/0")
        group.attrs.update(name="0", in_features=3, out_features=2, kind="linear",
                           stationarity=0.01, best_alpha=0.5)
        group.create_dataset("nfm", data=np.eye(3))
    analysis = read_report(path)
    assert analysis.rows()[0]["pearson"] == 0.9 and math.isnan(analysis.rows()[0][
        "best_alpha_pearson"])
    assert analysis.layer("0").matrices["nfm"].shape == (3, 3)


def test_comparison_and_data_list_in_notebooks_and_shells(report):
    from factcli.compare import comparison as cmp

    path, rows = report
    compared = cmp.compare([cmp.from_analysis(read_report(path), "r.h5")])
    assert len(compared.to_pandas()) == 3 and repr(compared).startswith("Comparison(pearson")
    assert "<table>" in compared._repr_html_()
    table, lines = fact("compare", path), fact("compare", path, "-f", "jsonl")
    cells = parse_tables(table.stdout)
    for row in map(json.loads, lines.stdout.splitlines()):  # a file: every number, no "…"
        for relation in compared.relations:
            assert cells[(row["layer"], relation)].rstrip("*") == number(row[relation])
    assert "…" not in table.stdout.replace("(backward, b…)", "")
    listed = fact("data", "list", "-f", "jsonl")
    sets = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [s["name"] for s in sets] == ["mnist", "fashion-mnist", "cifar10", "cifar100"]
    assert not any(s["cached"] for s in sets)
    unknown = fact("data", "fetch", "imagenet")
    assert unknown.returncode == 2 and "downloadable sets: mnist" in unknown.stderr
