"""The design card's own command through the console script, against a local mirror: download,
verify, train without --out, analyze finding its data again; corrupt and offline refusals."""

from __future__ import annotations

import json

import pytest
from helpers import fact
from mirror import Mirror, md5sums, mnist_files

from factcli.io.checkpoint import load_checkpoint

TRAIN = ("train", "mlp", "--dataset", "mnist", "--width", "8", "--depth", "2", "--epochs", "2",
         "--batch-size", "32")


@pytest.fixture
def env(tmp_path):
    """Environment of a user with an empty cache, downloads on, and the mirror's md5sums."""
    def make(files, trusted=None):
        (tmp_path / "MD5SUMS").write_text(md5sums(trusted if trusted is not None else files))
        mirror = Mirror(files)
        return mirror, {"FACT_OFFLINE": "0", "FACT_DATA_DIR": str(tmp_path / "cache"),
                        "FACT_DATA_MIRROR": mirror.url,
                        "FACT_DATA_CHECKSUMS": str(tmp_path / "MD5SUMS")}
    return make


def test_train_mnist_downloads_and_analyze_finds_it_again(tmp_path, env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mirror, environment = env(mnist_files())
    with mirror:
        trained = fact(*TRAIN, env=environment)
    assert trained.returncode == 0, trained.stderr
    assert "downloading train-images-idx3-ubyte.gz" in trained.stderr
    runs = list((tmp_path / "runs").glob("mlp-mnist-*.pt"))
    assert len(runs) == 1 and str(runs[0].relative_to(tmp_path)) in trained.stderr + trained.stdout
    recorded = load_checkpoint(runs[0]).training
    assert recorded["dataset"] == "mnist" and recorded["dataset_fingerprint"].startswith("sha256:")
    # Later, offline, from another folder: the cache holds the verified files.
    monkeypatch.chdir(tmp_path / "runs")
    analyzed = fact("analyze", runs[0].name, "-f", "jsonl",
                    env={**environment, "FACT_OFFLINE": "1"})
    assert analyzed.returncode == 0, analyzed.stderr
    rows = [json.loads(line) for line in analyzed.stdout.splitlines()]
    assert {row["layer"] for row in rows} == {"0", "2"} and "differs" not in analyzed.stderr
    assert sorted(mirror.names()) == sorted(mnist_files())  # each file fetched once


def test_fingerprint_mismatch_warns(tmp_path, env):
    mirror, environment = env(mnist_files())
    with mirror:
        assert fact(*TRAIN, "--out", tmp_path / "a" / "b" / "run.pt", env=environment
                    ).returncode == 0  # --out creates its folders
    other = tmp_path / "other"
    other.mkdir()
    for name, data in mnist_files(seed=1).items():
        (other / name).write_bytes(data)
    analyzed = fact("analyze", tmp_path / "a" / "b" / "run.pt", "--data-dir", other, "-f", "jsonl")
    assert analyzed.returncode == 0, analyzed.stderr
    assert "warning: dataset 'mnist' differs from the copy this checkpoint was trained on" \
        in analyzed.stderr


def test_corrupt_download_is_refused_and_not_cached(tmp_path, env):
    files = mnist_files()
    good = dict(files)
    files["train-labels-idx1-ubyte.gz"] = b"\x1f\x8b" + b"garbage" * 20
    mirror, environment = env(files, trusted=good)
    with mirror:
        result = fact("data", "fetch", "mnist", env=environment)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert result.stderr.splitlines()[-1] == errors[0] and "published checksum" in errors[0]
    cached = [p.name for p in (tmp_path / "cache" / "mnist").iterdir()]
    assert "train-labels-idx1-ubyte.gz" not in cached and not [n for n in cached if ".part" in n]


def test_offline_with_an_empty_cache_names_fact_data_fetch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fact(*TRAIN, "--offline", env={"FACT_OFFLINE": "0",
                                            "FACT_DATA_DIR": str(tmp_path / "empty")})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "fact data fetch mnist" in result.stderr and "Traceback" not in result.stderr
