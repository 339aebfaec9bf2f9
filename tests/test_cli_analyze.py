"""`fact analyze` end to end: formats, reports, and every kind of bad input."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import h5py
import pytest
import torch

from factcli.io.report import read_report
from tests.helpers import TINY_MLP, fact, fact_inprocess, tiny_checkpoint


def test_jsonl_rows_follow_the_interface(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    result = fact("analyze", ckpt, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3 * 12
    assert set(rows[0]) == {"checkpoint", "layer", "relation", "pearson", "cosine", "rel_err",
                            "stationarity", "in_features", "out_features", "best_alpha",
                            "best_alpha_pearson"}
    assert rows[0]["checkpoint"] == str(ckpt) and rows[0]["layer"] == "0"
    assert {r["relation"] for r in rows if r["rel_err"] is None} == {
        "nfa", "agop", "enfa", "bnfa", "bagop", "benfa"}
    assert (rows[0]["in_features"], rows[0]["out_features"]) == (4, 6)


def test_table_goes_to_stdout_and_progress_to_stderr(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    result = fact("analyze", ckpt, "--relations", "fact,nfa,bfact")
    assert result.returncode == 0
    assert "forward relations vs WᵀW" in result.stdout and "bfact" in result.stdout
    assert "\x1b[" not in result.stdout  # NO_COLOR and a pipe: plain text


def test_report_round_trip_keeps_everything(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.safetensors")
    report = tmp_path / "r.h5"
    result = fact("analyze", ckpt, "--report", report, "--format", "tsv", "--layers", "0,4",
                  "--matrices", "all")
    assert result.returncode == 0, result.stderr
    stored = read_report(report)
    assert [layer.name for layer in stored.layers] == ["0", "4"]
    with h5py.File(report) as handle:
        assert handle.attrs["format"] == "factcli.report/1"
        assert handle.attrs["mode"] == "eval"
        assert "fact analyze" in handle.attrs["command"]
        assert handle["layers/0/nfm"].compression == "gzip"
        assert set(handle["layers/0"]) == {"nfm", "bnfm", "fact", "fact_sym", "fact_sqrt", "nfa",
                                           "agop", "enfa", "bfact", "bfact_sym", "bfact_sqrt",
                                           "bnfa", "bagop", "benfa"}
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["checkpoint", "layer", "relation"]
    assert len(lines) == 1 + 2 * 12
    no_matrices = tmp_path / "small.h5"
    assert fact("analyze", ckpt, "--report", no_matrices, "--no-matrices",
                "-f", "jsonl").returncode == 0
    assert read_report(no_matrices).layers[0].matrices == {}


def test_interrupted_report_keeps_the_previous_file(tmp_path, monkeypatch):
    from factcli.engine.analysis import analyze
    from factcli.io import report as report_module

    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    target = tmp_path / "r.h5"
    target.write_bytes(b"previous")
    analysis = analyze(ckpt)

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module.h5py.File, "create_dataset", explode)
    with pytest.raises(KeyboardInterrupt):
        report_module.write_report(target, analysis)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "r.h5"]  # no temp file left


def test_stdin_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    result = subprocess.run([sys.executable, "-m", "factcli", "analyze", "-", "-f", "jsonl"],
                            input=ckpt.read_bytes(), capture_output=True)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 36


def test_plain_state_dict_with_command_line_pieces(tmp_path):
    torch.manual_seed(0)
    from factcli.models.archs import build_model

    path = tmp_path / "plain.pt"
    torch.save(build_model(TINY_MLP).double().state_dict(), path)
    missing = fact("analyze", path)
    assert missing.returncode == 2 and "--arch" in missing.stderr
    result = fact("analyze", path, "--arch", "mlp", "--model", "activation=tanh",
                  "--data", "teacher-linear:d=4,c=2,n=40", "--loss", "mse",
                  "--weight-decay", "1e-3", "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 36


def test_zero_weight_decay_reports_missing_scale(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt", training={
        "dataset": "teacher-linear:d=4,c=2,n=40", "loss": "mse", "weight_decay": 0.0})
    result = fact("analyze", ckpt, "-f", "jsonl", "--relations", "fact,nfa")
    assert result.returncode == 0
    assert "warning" in result.stderr and "λ" in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["rel_err"] is None and r["stationarity"] is None for r in rows)
    assert all(isinstance(r["pearson"], float) for r in rows)


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def _bad_inputs(tmp_path):
    good = tiny_checkpoint(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    exploit = Exploit()
    exploit.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "factcli.checkpoint/1", "model": TINY_MLP, "payload": exploit}, evil)
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump(exploit, handle)
    wrong = tiny_checkpoint(tmp_path / "wrong.pt", model={**TINY_MLP, "width": 5})
    state = torch.load(wrong, weights_only=True)
    state["model"] = TINY_MLP
    torch.save(state, wrong)
    nan = tiny_checkpoint(tmp_path / "nan.pt", **{"2.weight": torch.full((6, 6), math.nan,
                                                                         dtype=torch.float64)})
    return {
        "missing file": (["analyze", tmp_path / "nope.pt"], "not found"),
        "not a checkpoint": (["analyze", text], "not a readable checkpoint"),
        "truncated": (["analyze", truncated], "not a readable checkpoint"),
        "code-running pickle": (["analyze", evil], "refused"),
        "bare pickle": (["analyze", tmp_path / "evil.pkl"], "not a readable checkpoint"),
        "state_dict does not fit": (["analyze", wrong], "do not fit the architecture"),
        "input size": (["analyze", good, "--data", "teacher-linear:d=7,c=2,n=10"],
                       "does not fit dataset"),
        "unknown dataset": (["analyze", good, "--data", "imagenet"], "unknown dataset"),
        "unknown relation": (["analyze", good, "--relations", "fact,nfb"], "unknown relation"),
        "unknown layer": (["analyze", good, "--layers", "9"], "no layer matches"),
        "NaN weights": (["analyze", nan], "NaN"),
        "unknown loss": (["analyze", good, "--loss", "hinge"], "unknown loss"),
        "unknown format": (["analyze", good, "--format", "xml"], "unknown format"),
        "bad dataset option": (["analyze", good, "--data", "teacher-linear:d=x"], "not a valid"),
    }


def test_bad_input_gives_one_line_and_exit_2(tmp_path):
    for label, (args, needle) in _bad_inputs(tmp_path).items():
        result = fact_inprocess(*args)
        assert result.exit_code == 2, (label, result.stderr)
        assert needle in result.stderr, (label, result.stderr)
        assert "Traceback" not in result.stderr, label
        assert len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)
        assert result.stdout == "", label
    assert not (tmp_path / "pwned").exists()


def test_code_running_pickle_is_refused_by_the_real_script(tmp_path):
    exploit = Exploit()
    exploit.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "factcli.checkpoint/1", "model": TINY_MLP, "payload": exploit}, evil)
    result = fact("analyze", evil)
    assert result.returncode == 2 and "refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_the_readme_main_job_on_the_shipped_checkpoint():
    """`fact analyze sample_checkpoints/mlp5_mnist10k.pt` offline: the paper's Fig. 2 ordering."""
    from pathlib import Path

    sample = Path(__file__).parent.parent / "sample_checkpoints" / "mlp5_mnist10k.pt"
    result = fact("analyze", sample, "--format", "jsonl", "--relations", "fact,nfa,enfa")
    assert result.returncode == 0, result.stderr
    rows = {(r["layer"], r["relation"]): r for r in map(json.loads, result.stdout.splitlines())}
    layers = sorted({layer for layer, _ in rows}, key=int)
    assert layers == ["0", "2", "4", "6", "8"]
    for layer in layers:
        fact_, nfa = rows[layer, "fact"]["pearson"], rows[layer, "nfa"]["pearson"]
        assert fact_ > nfa > rows[layer, "enfa"]["pearson"], layer
        assert fact_ > 0.98 and rows[layer, "fact"]["stationarity"] < 0.5
    table = fact("analyze", sample, "--max-samples", "500")
    assert table.returncode == 0 and "α*" in table.stdout and "784→256" in table.stdout
