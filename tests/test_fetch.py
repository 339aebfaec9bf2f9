"""Downloads from a local mirror (never the real ones): verified, resumable, atomic, offline."""

from __future__ import annotations

import pytest
import torch
from mirror import Mirror, cifar10_files, md5sums, mnist_files

from factcli.data import fetch
from factcli.data.datasets import load_dataset
from factcli.errors import FactError


@pytest.fixture
def online(tmp_path, monkeypatch):
    """Downloads on, an empty cache, and a function that points the mirror list at a server."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACT_OFFLINE", "0")
    monkeypatch.setenv("FACT_DATA_DIR", str(cache))

    def serve(files, trusted=None, drop=()):
        sums = tmp_path / "MD5SUMS"
        sums.write_text(md5sums(trusted if trusted is not None else files))
        monkeypatch.setenv("FACT_DATA_CHECKSUMS", str(sums))
        mirror = Mirror(files, drop)
        monkeypatch.setenv("FACT_DATA_MIRROR", mirror.url)
        return mirror

    return cache, serve


def test_fetch_verifies_caches_and_does_not_download_twice(online):
    cache, serve = online
    files = mnist_files()
    with serve(files) as mirror:
        folder = fetch.fetch("mnist", progress=lambda *args: None)
        assert folder == cache / "mnist"
        assert sorted(p.name for p in folder.iterdir()) == sorted(files)
        data = load_dataset("mnist")
        load_dataset("mnist", offline=True)
    assert sorted(mirror.names()) == sorted(files)  # the second load used the cache
    assert data.x_train.shape == (64, 784) and data.x_test.shape == (16, 784)


def test_corrupt_download_is_refused_and_nothing_cached(online):
    cache, serve = online
    files = mnist_files()
    good = dict(files)
    files["t10k-labels-idx1-ubyte.gz"] = files["t10k-labels-idx1-ubyte.gz"][:-3] + b"bad"
    with serve(files, trusted=good), pytest.raises(FactError) as error:
        fetch.fetch("mnist", progress=lambda *args: None)
    message = str(error.value)
    assert "\n" not in message and "does not match its published checksum" in message
    assert "t10k-labels-idx1-ubyte.gz" in message and "nothing was cached" in message
    leftovers = [p.name for p in (cache / "mnist").iterdir()]
    assert "t10k-labels-idx1-ubyte.gz" not in leftovers
    assert not any(name.endswith(".part") for name in leftovers)


def test_shipped_checksums_reject_files_that_are_not_the_published_ones(online, monkeypatch):
    """Without the test override the real MD5s apply: our small stand-ins must be refused."""
    cache, serve = online
    with serve(mnist_files()):
        monkeypatch.delenv("FACT_DATA_CHECKSUMS")
        with pytest.raises(FactError, match="expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
            fetch.fetch("mnist", progress=lambda *args: None)
    assert not list((cache / "mnist").iterdir())


def test_dropped_connection_resumes_with_a_range_request(online):
    cache, serve = online
    files = mnist_files()
    name = "train-images-idx3-ubyte.gz"
    with serve(files, drop=(name,)) as mirror:
        with pytest.raises(FactError, match="run again to resume") as error:
            fetch.fetch("mnist", progress=lambda *args: None)
        assert "\n" not in str(error.value)
        part = cache / "mnist" / f"{name}.part"
        kept = part.stat().st_size
        assert 0 < kept < len(files[name])
        assert not (cache / "mnist" / name).exists()
        fetch.fetch("mnist", progress=lambda *args: None)
    assert [r for n, r in mirror.requests if n == name] == [None, f"bytes={kept}-"]
    assert (cache / "mnist" / name).read_bytes() == files[name]
    assert not part.exists()


def test_cifar10_archive_is_unpacked(online):
    cache, serve = online
    with serve(cifar10_files()):
        data = load_dataset("cifar10")
    assert data.x_train.shape == (20, 3072) and data.x_test.shape == (4, 3072)
    assert (cache / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert not [p for p in (cache / "cifar10").iterdir() if p.name.startswith(".")]


def test_offline_never_touches_the_network(online):
    cache, serve = online
    with serve(mnist_files()) as mirror:
        with pytest.raises(FactError, match="downloads are off.*fact data fetch mnist"):
            fetch.fetch("mnist", offline=True)
        with pytest.raises(FactError, match="fact data fetch fashion-mnist"):
            load_dataset("fashion-mnist", offline=True)
    assert mirror.requests == []


def test_torchvision_folder_is_used_without_downloading(tmp_path, monkeypatch):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, data in mnist_files(n_train=8, n_test=4).items():
        (raw / name).write_bytes(data)
    data = load_dataset("fashion-mnist", data_dir=tmp_path, offline=True)
    assert data.x_train.shape == (8, 784)


def test_fingerprint_is_the_content():
    a, b = load_dataset("parity:d=5,k=2,n=30"), load_dataset("parity:d=5,k=2,n=30")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_dataset("parity:d=5,k=2,n=30,seed=1").fingerprint()
    b.x_train = b.x_train.double()  # the dtype it is loaded in does not matter
    assert a.fingerprint() == b.fingerprint()
    assert torch.equal(a.x_train, b.x_train.float())
