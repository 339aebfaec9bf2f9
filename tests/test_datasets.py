"""Dataset specs: deterministic, the standard file formats, and errors that name the files."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from factcli.data.datasets import load_dataset
from factcli.errors import FactError


def test_same_spec_same_data_and_seed_matters():
    a, b = load_dataset("parity:d=10,k=3,n=50,seed=4"), load_dataset("parity:d=10,k=3,n=50,seed=4")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, load_dataset("parity:d=10,k=3,n=50,seed=5").x_train)


def test_parity_labels_follow_the_hidden_coordinates():
    data = load_dataset("parity:d=12,k=3,n=200,n_test=30,seed=1")
    hidden = data.info["hidden"]
    assert len(hidden) == 3 and data.x_test.shape == (30, 12)
    expected = (data.x_train[:, hidden].prod(dim=1) > 0).long()
    assert torch.equal(data.y_train, expected)
    assert data.targets("mse").shape == (200, 2)


def test_modular_one_hot_pairs():
    data = load_dataset("modular:p=7,op=add,train_frac=0.5,seed=0")
    assert data.x_train.shape[1] == 14 and data.n_classes == 7
    assert len(data.x_train) + len(data.x_test) == 49
    a = data.x_train[:, :7].argmax(dim=1)
    b = data.x_train[:, 7:].argmax(dim=1)
    assert torch.equal(data.y_train, (a + b) % 7)
    div = load_dataset("modular:p=7,op=div")
    a, b = div.x_train[:, :7].argmax(dim=1), div.x_train[:, 7:].argmax(dim=1)
    assert torch.equal((div.y_train * b) % 7, a)


def test_npz_and_csv_files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.normal(size=(20, 3)), y_train=rng.integers(0, 4, 20),
             x_test=rng.normal(size=(5, 3)), y_test=rng.integers(0, 4, 5))
    data = load_dataset(f"file:{tmp_path / 'd.npz'}")
    assert data.n_classes == 4 and data.x_test.shape == (5, 3)
    table = np.column_stack([rng.normal(size=(10, 2)), rng.normal(size=10)])
    np.savetxt(tmp_path / "r.csv", table, delimiter=",")
    regression = load_dataset(f"file:{tmp_path / 'r.csv'}")
    assert regression.n_classes is None and regression.x_train.shape == (10, 2)
    assert torch.equal(regression.y_train, torch.from_numpy(table[:, 2]))  # float64 kept
    first = load_dataset(f"file:{tmp_path / 'r.csv'},target=0")
    assert torch.equal(first.y_train, torch.from_numpy(table[:, 0]))
    with pytest.raises(FactError, match="cross_entropy needs class labels"):
        regression.targets("cross_entropy")


def _write_idx(path, array, compress):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("name,folder", [("mnist", ""), ("fashion-mnist", "fashion-mnist")])
def test_idx_files(tmp_path, compress, name, folder):
    rng = np.random.default_rng(0)
    root = tmp_path / folder
    root.mkdir(exist_ok=True)
    images, labels = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    _write_idx(root / "train-images-idx3-ubyte", images, compress)
    _write_idx(root / "train-labels-idx1-ubyte", labels, compress)
    _write_idx(root / "t10k-images-idx3-ubyte", images[:4], compress)
    _write_idx(root / "t10k-labels-idx1-ubyte", labels[:4], compress)
    data = load_dataset(f"{name}:n=10", data_dir=tmp_path)
    assert data.x_train.shape == (10, 784) and data.x_test.shape == (4, 784)
    assert torch.allclose(data.x_train[0], torch.from_numpy(images[0].reshape(-1) / 255).float())
    assert torch.equal(data.y_train, torch.from_numpy(labels[:10]))


def test_missing_files_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("FACT_DATA_DIR", raising=False)
    with pytest.raises(FactError, match="train-images-idx3-ubyte.*fact data fetch mnist"
                                        ".*FACT_DATA_DIR"):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(FactError, match="data_batch_1.*fact data fetch cifar10"):
        load_dataset("cifar10", data_dir=tmp_path)


def _cifar_batches(tmp_path, binary):
    rng = np.random.default_rng(0)
    folder = tmp_path / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    folder.mkdir()
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = rng.integers(0, 256, (3, 3072), dtype=np.uint8), rng.integers(0, 10, 3)
        expected.append((data, labels))
        if binary:
            rows = np.column_stack([labels.astype(np.uint8), data])
            rows.tofile(folder / f"{name}.bin")
        else:
            with open(folder / name, "wb") as handle:
                pickle.dump({b"data": data, b"labels": labels.tolist(), b"batch_label": b"x"},
                            handle, protocol=2)
    return expected


@pytest.mark.parametrize("binary", [False, True])
def test_cifar10_batches(tmp_path, binary):
    expected = _cifar_batches(tmp_path, binary)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.x_train.shape == (15, 3072) and data.x_test.shape == (3, 3072)
    assert torch.allclose(data.x_train[3], torch.from_numpy(expected[1][0][0] / 255).float())
    assert data.y_test.tolist() == expected[5][1].tolist()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-cifar",))


def test_cifar10_pickle_cannot_run_code(tmp_path, monkeypatch):
    _cifar_batches(tmp_path, binary=False)
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": _Exploit(), b"labels": []}, handle, protocol=2)
    with pytest.raises(FactError, match="refusing to load"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "pwned-by-cifar").exists()


def test_shipped_mnist_subset():
    data = load_dataset("mnist-10k")
    assert data.x_train.shape == (8000, 784) and data.x_test.shape == (2000, 784)
    counts = torch.bincount(torch.cat([data.y_train, data.y_test]), minlength=10)
    assert counts.tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert 0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1
    assert len(load_dataset("mnist-10k:n=500").x_train) == 500


def test_separation_exact_and_sampled():
    exact = load_dataset("separation:tau=0.1")
    assert exact.x_train.shape == (97, 4) and exact.weights is not None
    assert float(exact.weights.sum()) == pytest.approx(1.0)
    x, y = exact.x_train.double(), exact.y_train.double()[:, 0]
    assert torch.allclose(y, 0.1 * x[:, 0] * x[:, 1] + x[:, 2] * x[:, 3], atol=1e-5)
    sampled = load_dataset("separation:tau=0.1,samples=200,seed=3")
    assert sampled.weights is None and sampled.x_train.shape == (200, 4)


def test_teacher_linear_is_linear():
    data = load_dataset("teacher-linear:d=5,c=3,n=20,seed=2")
    solution = torch.linalg.lstsq(data.x_train.double(), data.y_train.double()).solution
    assert torch.allclose(data.x_train.double() @ solution, data.y_train.double(), atol=1e-5)


@pytest.mark.parametrize("spec,message", [
    ("nope", "unknown dataset"), ("parity:d=3,k=5", "1 <= k <= d"),
    ("parity:q=1", "unknown option"), ("parity:d", "expected key=value"),
    ("modular:op=pow", "unknown modular op"), ("file:/no/such.npz", "not found"),
])
def test_bad_specs(spec, message):
    with pytest.raises(FactError, match=message):
        load_dataset(spec)
