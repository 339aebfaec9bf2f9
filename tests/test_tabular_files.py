"""The tabular file readers `uci:` (the Fernández-Delgado et al. collection) and `keel:`:
exact values from hand-written files, the fixed split of conxuntos.dat, hostile files as one
line + exit 2, and `fact repro table1 --data-dir` over one folder of each."""

from __future__ import annotations

import numpy as np
import pytest

from factcli.data.datasets import load_dataset, tabular_specs
from factcli.repro import reproduce
from factcli.repro.findings import _listed
from tests.helpers import fact_inprocess
from tests.test_hostile import _one_clean_line

UCI_ROWS = "\tf1\tf2\tclase\n1\t0.5\t-1.0\t0\n2\t1.5\t2.0\t1\n3\t-0.5\t0.25\t2\n" \
           "4\t0.0\t3.0\t1\n5\t2.0\t1.0\t0\n"
KEEL_HEADER = ("@relation toy\n@attribute A real [0.0, 5.0]\n"
               "@attribute Color {red, green, blue}\n@attribute N integer [1, 9]\n"
               "@attribute Class {yes, no}\n@inputs A, Color, N\n@outputs Class\n@data\n")
KEEL_ROWS = "1.5, green, 3, no\n2.0, red, 7, yes\n% a comment\n0.5, blue, 1, no\n" \
            "3.0, green, 2, yes\n4.0,red,5,no\n"


def _uci(root, rows=UCI_ROWS, split: str | None = "0 2 4\n1 3\n", name="toy"):
    folder = root / "uci" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_R.dat").write_text(rows)
    if split is not None:
        (folder / "conxuntos.dat").write_text(split)
    return folder


def _keel(root, text=KEEL_HEADER + KEEL_ROWS, name="toy"):
    (root / "keel").mkdir(parents=True, exist_ok=True)
    path = root / "keel" / f"{name}.dat"
    path.write_text(text)
    return path


def test_uci_reads_rows_and_the_fixed_split(tmp_path):
    data = load_dataset(f"uci:{_uci(tmp_path)}")
    assert data.x_train.tolist() == [[0.5, -1.0], [-0.5, 0.25], [2.0, 1.0]]  # rows 0, 2, 4
    assert data.y_train.tolist() == [0, 2, 0]
    assert data.x_test.tolist() == [[1.5, 2.0], [0.0, 3.0]] and data.y_test.tolist() == [1, 1]
    assert data.n_classes == 3 and data.info == {"split": "conxuntos.dat"}


def test_uci_without_conxuntos_takes_the_seeded_split(tmp_path):
    data = load_dataset(f"uci:{_uci(tmp_path, split=None)},seed=2,test_frac=0.4")
    order = np.random.default_rng(2).permutation(5)
    labels = np.array([0, 1, 2, 1, 0])
    assert data.y_train.tolist() == labels[order[:3]].tolist()
    assert data.y_test.tolist() == labels[order[3:]].tolist()
    assert data.x_train[:, 0].tolist() == [[0.5, 1.5, -0.5, 0.0, 2.0][i] for i in order[:3]]
    assert data.info == {"split": "seeded"}


def test_keel_one_hot_inputs_and_class_positions(tmp_path):
    data = load_dataset(f"keel:{_keel(tmp_path)},test_frac=0.4")
    table = np.array([[1.5, 0, 1, 0, 3], [2.0, 1, 0, 0, 7], [0.5, 0, 0, 1, 1],
                      [3.0, 0, 1, 0, 2], [4.0, 1, 0, 0, 5]])
    labels = np.array([1, 0, 1, 0, 1])  # no = 1: the position in {yes, no}
    order = np.random.default_rng(0).permutation(5)
    assert data.x_train.tolist() == table[order[:3]].tolist()
    assert data.y_train.tolist() == labels[order[:3]].tolist()
    assert data.x_test.tolist() == table[order[3:]].tolist()
    assert data.n_classes == 2 and data.info == {"split": "seeded", "classes": ["yes", "no"]}


def test_keel_defaults_to_the_last_attribute_as_output(tmp_path):
    text = "@relation r\n@attribute 'a b'\treal\n@attribute c{x,y,z}\n@data\n1,z\n2,x\n3,y\n"
    data = load_dataset(f"keel:{_keel(tmp_path, text)},test_frac=0.34")
    assert sorted(data.y_train.tolist() + data.y_test.tolist()) == [0, 1, 2]
    assert data.x_train.shape[1] == 1 and data.n_classes == 3


BAD_UCI = {  # label: (NAME_R.dat, conxuntos.dat or None, what the error says)
    "ragged rows": ("\ta\tb\tc\n1\t0.1\t0.2\t0\n2\t0.3\t1\n", None, "numeric table"),
    "text cell": ("\ta\tb\tc\n1\t0.1\tx\t0\n", None, "numeric table"),
    "NaN": ("\ta\tb\tc\n1\t0.1\tnan\t0\n2\t0.1\t0.2\t1\n", None, "NaN or infinite"),
    "inf": ("\ta\tb\tc\n1\t0.1\tinf\t0\n2\t0.1\t0.2\t1\n", None, "NaN or infinite"),
    "negative label": ("\ta\tb\tc\n1\t0.1\t0.2\t-1\n2\t0.1\t0.2\t1\n", None, "0..C-1"),
    "fractional label": ("\ta\tb\tc\n1\t0.1\t0.2\t0.5\n2\t0.1\t0.2\t1\n", None, "integer"),
    "label 1e300": ("\ta\tb\tc\n1\t0.1\t0.2\t1e300\n2\t0.1\t0.2\t1\n", None, "classes"),
    "empty file": ("", None, "no data rows"),
    "header only": ("\ta\tb\tc\n", None, "no data rows"),
    "no feature": ("\ta\tc\n1\t0\n2\t1\n", None, "at least one feature"),
    "one row": ("\ta\tb\tc\n1\t0.1\t0.2\t0\n", None, "no train or no test"),
    "index out of range": (UCI_ROWS, "0 1 5\n2 3\n", "out of range"),
    "negative index": (UCI_ROWS, "0 -1\n2 3\n", "row indices"),
    "index 10**30": (UCI_ROWS, "0 1" + "0" * 30 + "\n2 3\n", "out of range"),
    "one line of indices": (UCI_ROWS, "0 1 2\n", "two lines"),
    "repeated index": (UCI_ROWS, "0 0 1\n2 3\n", "repeats"),
    "train and test overlap": (UCI_ROWS, "0 1 2\n2 3\n", "both in the train and"),
}
BAD_KEEL = {  # label: (file text, what the error says)
    "unknown type": ("@relation r\n@attribute a string\n@attribute c {x, y}\n@data\nu,x\n",
                     "unknown type"),
    "missing value": (KEEL_HEADER + "1.5, ?, 3, no\n", "missing value"),
    "ragged row": (KEEL_HEADER + "1.5, green, no\n", "3 values, but 4"),
    "text in a number": (KEEL_HEADER + "abc, green, 3, no\n", "not a number"),
    "NaN": (KEEL_HEADER + "nan, green, 3, no\n", "not a finite number"),
    "inf": (KEEL_HEADER + "1, green, -inf, no\n", "not a finite number"),
    "undeclared class": (KEEL_HEADER + "1.5, green, 3, maybe\n", "not a declared value"),
    "empty file": ("", "not a KEEL file"),
    "no @data": (KEEL_HEADER.replace("@data\n", ""), "not a KEEL file"),
    "header only": (KEEL_HEADER, "no data rows"),
    "numeric output": ("@relation r\n@attribute a real\n@attribute b real\n@data\n1,2\n",
                       "classification"),
    "undeclared output": (KEEL_HEADER.replace("@outputs Class", "@outputs Klass"),
                          "undeclared attribute Klass"),
    "unknown directive": ("@relation r\n@attrib a real\n@data\n", "unexpected"),
    "attribute twice": ("@relation r\n@attribute a real\n@attribute a {x}\n@data\n",
                        "declared twice"),
    "open brace": ("@relation r\n@attribute a real\n@attribute c {x, y\n@data\n", "end with }"),
    "not UTF-8": ("@relation r\n@attribute c {\udcff}\n", "cannot read"),
}


def _refused(spec, needle):
    line = _one_clean_line(fact_inprocess("data", "show", spec))
    assert needle in line, line


@pytest.mark.parametrize("label", BAD_UCI)
def test_a_hostile_uci_folder_is_one_line(tmp_path, label):
    rows, split, needle = BAD_UCI[label]
    _refused(f"uci:{_uci(tmp_path, rows, split)}", needle)


@pytest.mark.parametrize("label", BAD_KEEL)
def test_a_hostile_keel_file_is_one_line(tmp_path, label):
    text, needle = BAD_KEEL[label]
    path = tmp_path / "bad.dat"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    _refused(f"keel:{path}", needle)


def test_other_refusals(tmp_path, monkeypatch):
    _refused(f"uci:{tmp_path / 'nowhere'}", "nowhere_R.dat not found")
    _refused(f"keel:{tmp_path / 'nowhere.dat'}", "not found")
    _refused("uci:", "needs a path")
    _refused(f"uci:{_uci(tmp_path)},seed=1", "fixes the split: drop seed")
    monkeypatch.setenv("FACT_MEMORY_LIMIT", "100")  # bytes: the files are larger
    _refused(f"uci:{_uci(tmp_path)}", "memory")
    _refused(f"keel:{_keel(tmp_path)}", "memory")


def test_a_uci_file_of_bytes_is_one_line(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "raw_R.dat").write_bytes(b"\ta\tb\n1\t\xff\xfe\t0\n")
    _refused(f"uci:{folder}", "cannot read")


def test_a_long_list_of_sets_is_shortened_in_the_notes():
    names = [f"uci-s{i}" for i in range(10)]
    assert _listed(names) == "s0, s1, s2, s3, s4, s5, s6, s7 and 2 more, see accuracy.md"
    assert _listed(names[:2]) == "s0, s1"


def test_table1_reads_the_sets_under_data_dir(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 2))
    rows = "".join(f"{i}\t{a}\t{b}\t{int(a + b > 0)}\n" for i, (a, b) in enumerate(x, 1))
    _uci(tmp_path / "data", "\tf1\tf2\tclase\n" + rows, split=None, name="blobs")
    _keel(tmp_path / "data")
    (tmp_path / "data" / "uci" / "stray").mkdir()  # no stray_R.dat: not a set
    assert [name for name, *_ in tabular_specs(tmp_path / "data")] == ["uci-blobs", "keel-toy"]
    rows = {r["quantity"]: r for r in reproduce(["table1"], tmp_path / "out", mode="smoke",
                                                data_dir=tmp_path / "data")}
    assert rows["mean_acc.fact"]["note"] == ("mean over 4 sets: 2 scikit-learn (iris, wine), "
                                             "1 UCI (blobs), 1 KEEL (toy)")
    assert all(0 <= rows[f"mean_acc.{m}"]["measured"] <= 100 for m in ("fact", "nfa"))
    table = (tmp_path / "out" / "table1" / "accuracy.md").read_text()
    assert [line.split(" |")[0] for line in table.splitlines()[2:]] == [
        "| iris", "| wine", "| uci-blobs", "| keel-toy"]
    said = []
    _keel(tmp_path / "data", KEEL_HEADER + KEEL_ROWS.replace("4.0,red", "4.5,red"))
    reproduce(["table1"], tmp_path / "out", mode="smoke", data_dir=tmp_path / "data",
              say=said.append)  # only the rewritten file's step runs again
    assert [line.split()[0] for line in said] == ["reused"] * 3 + ["running"], said
