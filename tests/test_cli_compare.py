"""`fact compare` and `fact show` end to end, through the real console script in shell pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from factcli.data.datasets import load_dataset
from factcli.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tests.helpers import tiny_checkpoint

BIN = Path(sys.executable).parent  # where the `fact` console script is installed
DATA = "teacher-linear:d=4,c=2,n=40,seed=0"


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """A bash pipeline of real `fact` processes (pipefail: any failing stage fails it)."""
    env = {**os.environ, "NO_COLOR": "1", "PYTHONWARNINGS": "ignore",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def run(*args, stdin: str | None = None):
    """The same command in this process (fast; for what needs no real pipe)."""
    from typer.testing import CliRunner

    from factcli.cli import app

    return CliRunner(env={"NO_COLOR": "1"}).invoke(app, [str(a) for a in args], input=stdin)


def ridge_checkpoint(path: Path, decay: float = 1e-2) -> Path:
    """One bias-free linear layer at the exact minimizer of mse + (λ/2)‖W‖²: FACT holds."""
    data = load_dataset(DATA)
    x, y = data.x_train.double(), data.y_train.double()
    scale = 2 / (len(x) * y.shape[1])  # mse = (1/c)‖f − y‖², averaged over the n samples
    gram = scale * x.T @ x + decay * torch.eye(x.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(gram, scale * x.T @ y).T
    model = {"arch": "mlp", "in_features": 4, "out_features": 2, "width": 1, "depth": 1,
             "activation": "identity", "bias": False}
    save_checkpoint(path, Checkpoint(model, {"0.weight": weight.contiguous()},
                                     {"dataset": DATA, "loss": "mse", "weight_decay": decay}))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """runs/a.pt (untrained 3-layer MLP), runs/b.pt (converged ridge) and a's report r.h5."""
    root = tmp_path_factory.mktemp("compare")
    (root / "runs").mkdir()
    tiny_checkpoint(root / "runs" / "a.pt")
    ridge_checkpoint(root / "runs" / "b.pt")
    result = sh("fact analyze runs/a.pt --report r.h5 --matrix-dtype float64 --format jsonl "
                "> direct.jsonl", root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def here(work, monkeypatch):
    """Run in-process commands from the work folder, so relative paths match the pipes'."""
    monkeypatch.chdir(work)
    return work


def rows_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_cli_modules_do_not_import_torch():
    code = "import sys, factcli.cli; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_analyze_jsonl_pipes_into_compare(here):
    piped = sh("fact analyze runs/a.pt --format jsonl | fact compare - --format jsonl", here)
    assert piped.returncode == 0, piped.stderr
    direct = run("compare", "runs/a.pt", "--format", "jsonl")
    assert direct.exit_code == 0, direct.output
    piped_rows, direct_rows = rows_of(piped.stdout), rows_of(direct.stdout)
    assert [r["layer"] for r in piped_rows] == ["0", "2", "4"]
    same = ("input", "fact", "nfa", "bfact", "best_forward", "best_backward", "stationarity")
    for a, b in zip(piped_rows, direct_rows, strict=True):
        assert a["input"] == "runs/a.pt" and {k: a[k] for k in same} == {k: b[k] for k in same}
    table = run("compare", "-", "--relations", "fact,nfa",
                stdin=(here / "direct.jsonl").read_text())
    assert table.exit_code == 0, table.output
    assert "runs/a.pt: pearson of each relation" in table.stdout
    assert "best per layer" in table.stdout and "bfact" not in table.stdout


def test_listed_paths_pipe_into_compare(here):
    result = sh("ls runs/*.pt | fact compare - --relations fact,nfa --format csv", here)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("input,epoch,train_loss,layer,stationarity,metric,fact,nfa,"
                        "best_forward")
    assert [line.split(",")[0] + ":" + line.split(",")[3] for line in lines[1:]] == [
        "runs/a.pt:0", "runs/a.pt:2", "runs/a.pt:4", "runs/b.pt:0"]
    table = run("compare", "-", "--layers", "0", "--sort", "fact", stdin="runs/a.pt\nruns/b.pt\n")
    assert table.exit_code == 0, table.output
    body = table.stdout
    assert body.index("runs/b.pt") < body.index("runs/a.pt")  # best FACT agreement first
    assert "trend" in body and "input" in body


def test_require_exit_status(work):
    holds = sh("fact compare runs/b.pt --require 'fact.pearson >= 0.99' "
               "--require 'fact.pearson > nfa.pearson and stationarity < 1e-6'", work)
    assert holds.returncode == 0, holds.stderr
    assert "2 requirement(s) hold on all 1 rows" in holds.stderr
    violated = sh("ls runs/*.pt | fact compare - --format jsonl "
                  "--require 'fact.pearson >= 0.99'", work)
    assert violated.returncode == 1
    assert len(rows_of(violated.stdout)) == 4  # the data still comes out
    listed = [line.strip() for line in violated.stderr.splitlines() if "layer" in line]
    assert len(listed) == 3 and all(line.startswith("runs/a.pt layer ") for line in listed)
    assert "fact.pearson >= 0.99 (fact.pearson = " in listed[0]
    assert "3 violation(s) of --require in 4 rows" in violated.stderr
    bad = sh("cat direct.jsonl | fact compare - --require 'fact.pearson >>= 0.9'", work)
    assert bad.returncode == 2 and "bad --require" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["--require", "fcat.pearson > 0"], "unknown relation 'fcat'"),
    (["--require", "fact.pearsn > 0"], "unknown metric 'pearsn'"),
    (["--require", "fact.pearson > "], "ends too early"),
    (["--metric", "spearman"], "unknown metric 'spearman'"),
    (["--relations", "fcat"], "unknown relation(s) fcat"),
    (["--sort", "speed"], "cannot sort by 'speed'"),
    (["--format", "xml"], "unknown format 'xml'"),
    (["--layers", "9"], "no layer matches '9'"),
])
def test_bad_input_exits_2(work, args, message):
    result = run("compare", work / "r.h5", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_inputs_missing_fields_or_files_are_named(here):
    for line, field in (('{"layer": "0", "pearson": 0.9}', "'relation'"),
                        ('{"relation": "fact", "pearson": 0.9}', "'layer'")):
        result = run("compare", "-", stdin=line + "\n")
        assert result.exit_code == 2 and f"stdin line 1 lacks the field {field}" \
            in result.stderr, result.output
    only_fact = "".join(line for line in (here / "direct.jsonl").read_text().splitlines(True)
                        if '"relation": "fact"' in line)
    result = run("compare", "-", "--require", "nfa.pearson > 0", stdin=only_fact)
    assert result.exit_code == 2 and "layer '0' has no nfa.pearson" in result.stderr
    assert result.stdout == ""  # bad input fails before any data is written
    result = run("compare", "nowhere.pt")
    assert result.exit_code == 2 and "input not found: nowhere.pt" in result.stderr


def test_show_reproduces_analyze_output(here):
    result = sh("fact show r.h5 --format jsonl > shown.jsonl", here)
    assert result.returncode == 0, result.stderr
    assert (here / "shown.jsonl").read_bytes() == (here / "direct.jsonl").read_bytes()
    for format in ("tsv", "table"):
        analyzed = run("analyze", "runs/a.pt", "--format", format)
        shown = run("show", "r.h5", "--format", format)
        assert analyzed.exit_code == shown.exit_code == 0, analyzed.output + shown.output
        assert shown.stdout == analyzed.stdout


def test_show_prints_or_exports_one_matrix(here):
    weight = load_checkpoint(here / "runs" / "a.pt").state_dict["2.weight"].double()
    result = run("show", "r.h5", "--matrix", "2", "nfm", "--format", "tsv")
    assert result.exit_code == 0, result.output
    printed = np.loadtxt(result.stdout.splitlines(), delimiter="\t")
    np.testing.assert_allclose(printed, (weight.T @ weight).numpy(), rtol=1e-12)
    exported = run("show", "r.h5", "--matrix", "2", "fact", "--out", "m.npy")
    assert exported.exit_code == 0 and exported.stdout == "", exported.output
    assert np.load(here / "m.npy").shape == (6, 6)
    assert "nfm of layer 0 (4×4)" in run("show", "r.h5", "--matrix", "0", "nfm").stdout
    missing = run("show", "r.h5", "--matrix", "2", "fcat")
    assert missing.exit_code == 2 and "stores no 'fcat' matrix" in missing.stderr


def test_features_of_two_inputs(here):
    same = run("compare", "runs/a.pt", "r.h5", "--features", "--format", "jsonl")
    assert same.exit_code == 0, same.output
    rows = rows_of(same.stdout)
    assert [(r["reference"], r["input"], r["layer"]) for r in rows] == [
        ("runs/a.pt", "r.h5", layer) for layer in ("0", "2", "4")]
    for row in rows:  # recomputed from weights vs stored in the report: the same matrix
        assert row["pearson"] == pytest.approx(1.0) and row["overlap"] == pytest.approx(1.0)
        assert row["max_angle"] == pytest.approx(0.0, abs=1e-3)
    other = run("compare", "r.h5", "runs/b.pt", "--features", "--rank", "1",
                "--require", "overlap > 0.99")
    assert other.exit_code == 1, other.output
    assert "nfm of each input vs r.h5" in other.stdout and "runs/b.pt layer 0" in other.stderr


def rfm_report(path: Path, matrices: list[np.ndarray]) -> Path:
    """The layout `fact rfm` writes: kind="rfm", /layers/iteration_<t>/nfm, /history."""
    with h5py.File(path, "w") as handle:
        handle.attrs.update(format="factcli.report/1", kind="rfm", dataset="parity:d=3,k=2")
        for t, matrix in enumerate(matrices):
            group = handle.create_group(f"layers/iteration_{t}")
            group.attrs.update(name=f"iteration_{t}", in_features=len(matrix),
                               out_features=len(matrix), kind="rfm")
            group.create_dataset("nfm", data=matrix)
        history = np.array([(t, 0.5 + 0.1 * t) for t in range(len(matrices))],
                           dtype=[("iteration", "i8"), ("val_accuracy", "f8")])
        handle.create_dataset("history", data=history)
    return path


def test_rfm_reports_show_history_and_compare_features(tmp_path):
    eye = np.eye(3)
    nfa = rfm_report(tmp_path / "nfa.h5", [eye, np.diag([1.0, 1.0, 0.01])])
    fact_ = rfm_report(tmp_path / "fact.h5", [eye, np.diag([1.0, 0.9, 0.02])])
    shown = run("show", nfa, "--format", "jsonl")
    assert shown.exit_code == 0, shown.output
    assert rows_of(shown.output) == [{"iteration": 0, "val_accuracy": 0.5},
                                     {"iteration": 1, "val_accuracy": 0.6}]
    assert "val_accuracy" in run("show", nfa).output
    features = run("compare", nfa, fact_, "--features", "--layers", "iteration_1",
                              "--rank", "2", "--format", "jsonl")
    assert features.exit_code == 0, features.output
    (row,) = rows_of(features.output)
    assert row["layer"] == "iteration_1" and row["overlap"] == pytest.approx(1.0)
    plain = run("compare", nfa, fact_)
    assert plain.exit_code == 2 and "--features" in plain.output


def test_snapshots_of_a_training_run_show_fact_rising_as_loss_falls(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    trained = sh("fact train mlp --data teacher-linear:d=4,c=2,n=32 --width 8 --depth 2 "
                 "--activation tanh --optimizer gd --lr 0.5 --weight-decay 1e-2 --epochs 150 "
                 "--save-every 50 --dtype float64 --device cpu --out run/m.pt", tmp_path)
    assert trained.returncode == 0, trained.stderr
    # shuffled on purpose: the view orders snapshots by their recorded epoch
    listing = ["run/m_epoch100.pt", "run/m_epoch000.pt", "run/m_epoch150.pt",
               "run/m_epoch050.pt"]
    result = sh(f"printf '%s\\n' {' '.join(listing)} | "
                "fact compare - --relations fact,nfa --format jsonl", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = rows_of(result.stdout)
    assert [r["epoch"] for r in rows] == [0, 0, 50, 50, 100, 100, 150, 150]
    for layer in ("0", "2"):
        series = [r for r in rows if r["layer"] == layer]
        losses, agreement = [r["train_loss"] for r in series], [r["fact"] for r in series]
        assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] / 10
        assert agreement == sorted(agreement) and agreement[-1] > 0.9 > agreement[0] + 0.5
    monkeypatch.chdir(tmp_path)
    table = run("compare", *listing, "--relations", "fact")
    assert table.exit_code == 0, table.output
    assert "ordered by training epoch" in table.stdout
    trend = [line for line in table.stdout.splitlines() if line.lstrip().startswith("trend")]
    assert len(trend) == 2, table.stdout
    for line in trend:  # one sparkline per layer, rising from its lowest to its highest bar
        spark = line.split()[-1]
        assert len(spark) == 4 and spark[0] == "▁" and spark[-1] == "█", line
        assert list(spark) == sorted(spark, key="▁▂▃▄▅▆▇█".index), line


def test_binary_stdin_is_an_input_error(here):
    result = run("compare", "-", stdin=b"\xff\xfe\x00binary\n")
    assert result.exit_code == 2 and "stdin (-) is not text" in result.stderr, result.output
