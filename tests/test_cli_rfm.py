"""`fact rfm`: output formats, the HDF5 report layout, the tabular protocol and bad input."""

import json

import h5py
import numpy as np
import pytest
from helpers import fact, fact_inprocess

PARITY = "parity:d=10,k=2,n=300,n_test=100,seed=0"
KEYS = {"iteration", "train_acc", "val_acc", "test_acc", "seconds", "train_mse", "val_mse",
        "test_mse"}


def test_jsonl_rows_and_report_layout(tmp_path):
    report = tmp_path / "rfm.h5"
    result = fact_inprocess("rfm", "--data", PARITY, "--kernel", "gaussian", "--bandwidth", "3",
                            "--update", "fact-geo", "--iters", "2", "-f", "jsonl",
                            "--report", report)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    assert all(KEYS <= set(row) and 0 <= row["test_acc"] <= 1 for row in rows)
    best = [row["iteration"] for row in rows if row["best"]]
    with h5py.File(report) as handle:
        attrs = dict(handle.attrs)
        assert attrs["format"] == "factcli.report/1" and attrs["kind"] == "rfm"
        for key in ("factcli_version", "created", "dataset", "update", "kernel", "bandwidth",
                    "ridge", "power", "normalization", "best_iteration", "command"):
            assert key in attrs, key
        assert attrs["update"] == "fact-geo" and attrs["normalization"] == "max"
        assert [attrs["best_iteration"]] == best and attrs["dataset"] == PARITY
        assert list(handle["layers"]) == ["iteration_0", "iteration_1", "iteration_2"]
        group = handle["layers/iteration_2"]
        assert dict(group.attrs) == {"name": "iteration_2", "in_features": 10,
                                     "out_features": 10, "kind": "rfm"}
        assert group["nfm"].compression == "gzip"
        np.testing.assert_array_equal(handle["layers/iteration_0/nfm"][()], np.eye(10))
        assert np.abs(group["nfm"][()]).max() == pytest.approx(1.0)
        history = handle["history"][()]
        np.testing.assert_allclose(history["test_acc"], [row["test_acc"] for row in rows])


def test_table_regression_and_standardize(tmp_path):
    path = tmp_path / "reg.npz"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)) * [1, 10, 100]
    np.savez(path, x_train=x[:60], y_train=x[:60, 0] ** 2, x_test=x[60:], y_test=x[60:, 0] ** 2)
    result = fact_inprocess("rfm", "--data", f"file:{path}", "--standardize", "--iters", "1")
    assert result.exit_code == 0, result.stderr
    assert "train mse" in result.stdout and "%" not in result.stdout


def test_tabular_protocol_compares_four_methods():
    result = fact_inprocess("rfm", "--data", "sklearn:name=iris", "--protocol", "tabular",
                            "--iters", "2", "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["method"] for row in rows] == ["kernel", "nfa", "fact", "fact-geo"]
    assert rows[0]["iteration"] == 0 and all(row["test_acc"] > 0.8 for row in rows)


def test_duplicate_points_and_tiny_ridge_add_jitter_with_a_warning(tmp_path):
    path = tmp_path / "dup.npz"
    x = np.random.default_rng(1).normal(size=(20, 3))
    np.savez(path, x_train=np.concatenate([x, x]), y_train=np.arange(40) % 2)
    result = fact_inprocess("rfm", "--data", f"file:{path}", "--kernel", "gaussian",
                            "--ridge", "1e-18", "--iters", "0", "--val-frac", "0")
    assert result.exit_code == 0, result.stderr
    assert "warning" in result.stderr and "jitter" in result.stderr


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"file:{path}"


def test_bad_input_gives_one_line_and_exit_2(tmp_path):
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(30, 4)), np.arange(30) % 3
    nan_test = x.copy()
    nan_test[3, 1] = np.nan
    cases = {
        "nan inputs": (_npz(tmp_path / "a.npz", x_train=nan_test, y_train=labels), [], "NaN"),
        "nan test inputs": (_npz(tmp_path / "b.npz", x_train=x, y_train=labels,
                                 x_test=nan_test, y_test=labels), [], "NaN"),
        "nan targets": (_npz(tmp_path / "c.npz", x_train=x, y_train=np.where(labels, 0.5, np.nan)),
                        [], "finite"),
        "mismatched rows": (_npz(tmp_path / "d.npz", x_train=x, y_train=labels[:25]), [],
                            "rows"),
        "string labels": (_npz(tmp_path / "e.npz", x_train=x, y_train=labels.astype(str)), [],
                          "unsupported"),
        "test features": (_npz(tmp_path / "f.npz", x_train=x, y_train=labels,
                               x_test=x[:, :3], y_test=labels), [], "features"),
        "exp overflow": (_npz(tmp_path / "g.npz", x_train=x * 100, y_train=labels),
                         ["--kernel", "exp"], "non-finite"),
        "negative ridge": (PARITY, ["--ridge", "-1"], "ridge"),
        "unknown update": (PARITY, ["--update", "agop"], "update"),
        "unknown kernel": (PARITY, ["--kernel", "rbf"], "kernel"),
    }
    for label, (data, extra, needle) in cases.items():
        result = fact_inprocess("rfm", "--data", data, "--iters", "1", *extra)
        assert result.exit_code == 2, (label, result.stderr, result.exception)
        assert needle in result.stderr, (label, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)


def test_console_script_error_has_no_traceback(tmp_path):
    path = _npz(tmp_path / "s.npz", x_train=np.ones((5, 2)), y_train=np.array(list("abcde")))
    result = fact("rfm", "--data", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "unsupported" in result.stderr
