"""Data-parallel and sharded analysis: every matrix and metric equals the single run's."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factcli.data.datasets import Dataset
from factcli.distributed import share
from factcli.engine.analysis import analyze, finish, prepare
from factcli.io.partial import merge_partials
from factcli.io.report import read_report
from tests.helpers import fact, fact_inprocess, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_checkpoints" / "mlp5_mnist10k.pt"
# 301 samples: divisible neither by 2 nor by 4; batches of 64 that rank shares do not align to.
SMALL = ("--max-samples", "301", "--batch-size", "64", "--seed", "3")
EXACT = ("--matrices", "all", "--matrix-dtype", "float64")  # reports that keep every digit


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def assert_same(result, expected, rtol: float) -> None:
    """Every matrix (relative Frobenius) and every metric and summary (relative) agree."""
    assert [layer.name for layer in result.layers] == [layer.name for layer in expected.layers]
    for got, want in zip(result.layers, expected.layers):
        assert set(got.matrices) == set(want.matrices) and want.matrices
        for name, matrix in want.matrices.items():
            assert relative(got.matrices[name], matrix) <= rtol, (got.name, name)
        numbers = [(got.stationarity, want.stationarity)]
        numbers += [(got.metrics[r][m], v) for r, values in want.metrics.items()
                    for m, v in values.items()]
        for value, reference in numbers:
            assert (math.isnan(value) and math.isnan(reference)) or \
                abs(value - reference) <= rtol * max(abs(reference), 1.0), (got.name, numbers)
        if not math.isnan(want.best_alpha):  # a grid argmax: equal unless two scores tie
            assert abs(got.best_alpha - want.best_alpha) <= 0.011
    for key in ("data_loss", "accuracy", "objective"):
        assert abs(result.info[key] - expected.info[key]) <= rtol * abs(expected.info[key])
    assert result.info["n_samples"] == expected.info["n_samples"]


def test_shares_tile_the_samples_without_padding_or_repeats():
    for n in range(0, 23):
        for count in range(1, 7):
            parts = [share(n, i, count) for i in range(count)]
            assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1


class Tokens(torch.nn.Module):
    """Linear layers over (batch, tokens, features): each position adds a term to the sums."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)).mean(dim=1))


@pytest.mark.parametrize("weighted", [False, True])
def test_shares_added_up_equal_one_pass(weighted):
    torch.manual_seed(0)
    n = 23
    weights = torch.rand(n, dtype=torch.float64) + 0.5 if weighted else None
    data = Dataset("t", torch.randn(n, 5, 4, dtype=torch.float64), torch.randint(0, 3, (n,)),
                   n_classes=3, weights=weights)
    options = dict(loss="cross_entropy", weight_decay=1e-2, batch_size=4)
    model = Tokens().double()
    expected = analyze(model, data, **options)
    plan = prepare(model, data, **options)
    sums = [plan.accumulate(share(n, i, 3)) for i in range(3)]
    for other in sums[1:]:
        sums[0].merge(other)
    assert sums[0].batches == 2 + 2 + 2 and float(sums[0].weight) == pytest.approx(
        1.0 if weighted else n)
    result = finish(plan.weight_matrices(), plan.penalty(), sums[0], plan.info, plan.warnings,
                    plan.classified)
    assert_same(result, expected, 1e-12)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args, env=None):
    """`torchrun --nproc-per-node 2 -m factcli ...` on 127.0.0.1 and a free port."""
    environment = {**os.environ, "NO_COLOR": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "factcli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process reports of the MLP sample, float64 and float32."""
    folder = tmp_path_factory.mktemp("single")
    reports = {}
    for dtype in ("float64", "float32"):
        reports[dtype] = folder / f"{dtype}.h5"
        result = fact_inprocess("analyze", SAMPLE, *SMALL, "--dtype", dtype, "--report",
                                reports[dtype], *EXACT, "-f", "jsonl")
        assert result.exit_code == 0, result.output
    return {dtype: read_report(path) for dtype, path in reports.items()}


def test_torchrun_equals_the_single_run(tmp_path, single):
    report = tmp_path / "r.h5"
    result = torchrun("analyze", SAMPLE, *SMALL, "--dtype", "float64", "--report", report,
                      *EXACT, "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5 * 12  # rank 0 alone prints
    stored = read_report(report)
    assert stored.info["world_size"] == 2 and single["float64"].info["world_size"] == 1
    assert_same(stored, single["float64"], 1e-12)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_nproc_equals_the_single_run(tmp_path, single, dtype, rtol):
    report = tmp_path / "r.h5"
    result = fact("analyze", SAMPLE, *SMALL, "--dtype", dtype, "--report", report, "--nproc", 2,
                  *EXACT, "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5 * 12
    stored = read_report(report)
    assert stored.info["world_size"] == 2
    assert_same(stored, single[dtype], rtol)


def factory_checkpoint(folder: Path, module: str, source: str, arch: dict, x, y,
                       loss: str) -> Path:
    """A checkpoint of a model built by `module.py` (source) in `folder`, trained on x, y."""
    (folder / f"{module}.py").write_text(source)
    np.savez(folder / f"{module}.npz", x_train=x, y_train=y)
    training = {"dataset": f"file:{folder / f'{module}.npz'}", "loss": loss,
                "weight_decay": 1e-3}
    sys.path.insert(0, str(folder))
    try:
        return tiny_checkpoint(folder / f"{module}.pt", model=arch, training=training)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module, None)


POISONED = """
import torch
class Guard(torch.nn.Module):
    def forward(self, x):
        if (x.abs() > 1e5).any():
            raise ValueError('poisoned sample')
        return x
def model(width):
    return torch.nn.Sequential(Guard(), torch.nn.Linear(4, width), torch.nn.Tanh(),
                               torch.nn.Linear(width, 2))
"""

# A convolution whose output positions are the tokens of a multi-head attention: the kinds of
# weight matrix the engine follows beyond Linear layers (conv, q/k/v/o projections, a head).
CONV_ATTENTION = """
import torch
from torch import nn
class ConvAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)
    def forward(self, x):
        h = torch.tanh(self.conv(x.reshape(-1, 1, 7, 7))).flatten(2).mT
        a, _ = self.attn(h, h, h)
        return self.head((h + a).mean(1))
def model():
    return ConvAttention()
"""


@pytest.fixture
def poisoned(tmp_path):
    """A checkpoint whose model raises on sample 30 of 41: in rank 1's share, third batch."""
    x, y = np.random.default_rng(0).standard_normal((2, 41, 4))
    x[30, 0] = 1e6
    return factory_checkpoint(tmp_path, "poisoned", POISONED,
                              {"arch": "poisoned:model", "width": 5}, x, y[:, :2], "mse")


@pytest.mark.parametrize("launcher", ["torchrun", "nproc"])
def test_a_conv_attention_model_on_two_ranks_equals_one(tmp_path, monkeypatch, launcher):
    rng = np.random.default_rng(1)
    ckpt = factory_checkpoint(tmp_path, "convattn", CONV_ATTENTION, {"arch": "convattn:model"},
                              rng.standard_normal((37, 49)), rng.integers(0, 3, 37),
                              "cross_entropy")
    args = (ckpt, "--trust-model-code", "--batch-size", "8", *EXACT, "-f", "jsonl")
    monkeypatch.syspath_prepend(tmp_path)
    assert fact_inprocess("analyze", *args, "--report", tmp_path / "one.h5").exit_code == 0
    single = read_report(tmp_path / "one.h5")
    assert {layer.kind for layer in single.layers} == {"conv2d", "attention", "linear"}
    env = {"PYTHONPATH": str(tmp_path)}
    result = torchrun("analyze", *args, "--report", tmp_path / "two.h5", env=env) \
        if launcher == "torchrun" else \
        fact("analyze", *args, "--report", tmp_path / "two.h5", "--nproc", 2, env=env)
    assert result.returncode == 0, result.stderr
    two = read_report(tmp_path / "two.h5")
    assert two.info["world_size"] == 2
    assert_same(two, single, 1e-12)


def test_a_rank_failing_mid_run_ends_every_rank_with_one_line(poisoned):
    env = {"PYTHONPATH": str(poisoned.parent)}
    args = (poisoned, "--batch-size", "5", "--trust-model-code")
    result = fact("analyze", *args, "--nproc", 2, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: rank 1 of 2: ValueError: poisoned sample"
    assert result.stdout == ""
    launched = torchrun("analyze", *args, env=env)
    # Every worker exits 2 after our one line; torchrun then adds its own failure summary.
    ours = [line for line in launched.stderr.splitlines() if line.startswith("error:")]
    assert ours == ["error: rank 1 of 2: ValueError: poisoned sample"]
    assert "exitcode  : 2" in launched.stderr and launched.returncode != 0


def test_launch_refusals_are_one_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    for args, message in [(("--nproc", "0"), "--nproc must be positive"),
                          (("--shard", "1/4"), "--shard needs --partial"),
                          (("--shard", "4/4", "--partial", tmp_path / "p.h5"), "0 ≤ I < N"),
                          (("--shard", "x", "--partial", tmp_path / "p.h5"), "I/N"),
                          (("--partial", tmp_path / "p.h5", "--report", tmp_path / "r.h5"),
                           "not a report")]:
        result = fact_inprocess("analyze", ckpt, *args)
        assert result.exit_code == 2, args
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    result = fact_inprocess("analyze", "-", "--nproc", "2")
    assert result.exit_code == 2 and "stdin" in result.output


def shards(tmp_path, ckpt, *args, count=4, name="part"):
    paths = []
    for index in range(count):
        paths.append(tmp_path / f"{name}-{index}.h5")
        result = fact_inprocess("analyze", ckpt, *args, "--shard", f"{index}/{count}",
                                "--partial", paths[-1])
        assert result.exit_code == 0, result.output
        assert f"shard {index}/{count}" in result.output
    return paths


def test_four_shards_merged_equal_the_single_run(tmp_path, single):
    parts = shards(tmp_path, SAMPLE, *SMALL, "--dtype", "float64")
    report = tmp_path / "merged.h5"
    result = fact_inprocess("merge", *parts[::-1], "--report", report, *EXACT, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    merged = read_report(report)
    assert merged.info["world_size"] == 4
    assert_same(merged, single["float64"], 1e-12)
    assert_same(merge_partials([str(p) for p in parts]), single["float64"], 1e-12)
    # A merged report is a report: fact compare takes it as input.
    compared = fact_inprocess("compare", report, "-f", "jsonl")
    assert compared.exit_code == 0, compared.output


def test_parts_that_do_not_belong_together_are_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    other = tiny_checkpoint(tmp_path / "b.pt", seed=1)
    parts = shards(tmp_path, ckpt, count=3)
    cases = [
        (shards(tmp_path, other, count=3, name="weights")[2], "different checkpoint"),
        (shards(tmp_path, ckpt, "--data", "teacher-linear:d=4,c=2,n=40,seed=1", count=3,
                name="data")[2], "different dataset"),
        (shards(tmp_path, ckpt, "--alpha", "1.0", count=3, name="alpha")[2], "differ in alpha"),
    ]
    for stranger, message in cases:
        result = fact_inprocess("merge", *parts[:2], stranger)
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    result = fact_inprocess("merge", parts[0], parts[2])
    assert result.exit_code == 2 and "shard 1/3 missing" in result.output
    result = fact_inprocess("merge", parts[0], parts[0], parts[1], parts[2])
    assert result.exit_code == 2 and "both shard 0/3" in result.output
    result = fact_inprocess("merge", parts[0], parts[1], tmp_path / "nowhere.h5")
    assert result.exit_code == 2 and "part not found" in result.output
    result = fact_inprocess("merge", parts[0], ckpt)
    assert result.exit_code == 2 and "not a readable HDF5" in result.output
    report = tmp_path / "r.h5"
    assert fact_inprocess("analyze", ckpt, "--report", report).exit_code == 0
    result = fact_inprocess("merge", report)
    assert result.exit_code == 2 and "is not a factcli.partial/1 file" in result.output
