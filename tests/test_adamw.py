"""fact_adamw (relations.md §7): exact at a full-batch AdamW fixed point, equal to the naive
per-sample oracle, present only with AdamW state, read from checkpoints and state files."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from factcli.data.datasets import load_dataset
from factcli.engine.analysis import analyze
from factcli.errors import FactError
from factcli.io.checkpoint import Checkpoint, save_checkpoint
from factcli.models.archs import build_model
from tests.helpers import fact_inprocess
from tests.oracle import naive_fact_adamw, relative

SPEC = "teacher-linear:d=4,c=3,n=30,noise=1,seed=0"  # noisy labels: no exact fit
MLP = {"arch": "mlp", "in_features": 4, "out_features": 3, "width": 8, "depth": 2,
       "activation": "tanh", "bias": True}
DECAY, EPS, LR, BETAS = 0.5, 1e-2, 0.05, (0.9, 0.99)


def _train(steps: int, groups=None, batch: int | None = None):
    """The tiny MLP after `steps` AdamW steps in float64 (full batch unless `batch`)."""
    torch.manual_seed(0)
    data = load_dataset(SPEC)
    model = build_model(MLP).double()
    optimizer = torch.optim.AdamW(groups(model) if groups else model.parameters(), lr=LR,
                                  weight_decay=DECAY, eps=EPS, betas=BETAS)
    x, y = data.x_train.double(), data.y_train.double()
    for step in range(steps):
        rows = slice(None) if batch is None else slice(step * batch % len(x),
                                                       step * batch % len(x) + batch)
        optimizer.zero_grad()
        F.mse_loss(model(x[rows]), y[rows]).backward()
        optimizer.step()
    return model, optimizer, data


@pytest.fixture(scope="module")
def fixed_point():
    """Full-batch AdamW run to its fixed point (3000 steps: fact_adamw's rel_err is then ~2e-8)."""
    return _train(3000)


def _oracle(model, optimizer, data, name):
    layer = dict(model.named_modules())[name]
    group = next(g for g in optimizer.param_groups if any(p is layer.weight for p in g["params"]))
    state = optimizer.state[layer.weight]
    return naive_fact_adamw(model, layer, data.x_train.double(), data.y_train.double(), "mse",
                            state["exp_avg_sq"], state["step"], group["betas"][1],
                            group["eps"], group["weight_decay"])


def test_fact_adamw_is_exact_at_a_full_batch_adamw_fixed_point(fixed_point):
    model, optimizer, data = fixed_point
    result = analyze(model, data, loss="mse", weight_decay=DECAY, device="cpu",
                     optimizer_state=optimizer.state_dict())
    assert [layer.name for layer in result.layers] == ["0", "2"]
    for layer in result.layers:
        assert layer.metrics["fact_adamw"]["rel_err"] < 1e-6, layer.name
        # plain FACT is not the relation of this fixed point: wrong scale and wrong shape
        assert layer.metrics["fact"]["rel_err"] > 0.5
        assert layer.metrics["fact"]["pearson"] < 0.99
        expected = _oracle(model, optimizer, data, layer.name)
        assert relative(layer.matrices["fact_adamw"], expected) < 1e-10


def test_fact_adamw_equals_the_oracle_away_from_a_fixed_point_with_two_param_groups():
    """Minibatch steps (no fixed point), and a group with its own λ and ε for the first
    layer: each layer takes the moments and hyperparameters of its own group."""
    def groups(model):
        first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
        return [{"params": first, "weight_decay": 0.3, "eps": 1e-3}, {"params": rest}]

    model, optimizer, data = _train(25, groups, batch=7)
    result = analyze(model, data, loss="mse", weight_decay=DECAY, device="cpu",
                     optimizer_state=optimizer.state_dict())
    for layer in result.layers:
        expected = _oracle(model, optimizer, data, layer.name)
        assert relative(layer.matrices["fact_adamw"], expected) < 1e-10, layer.name
        assert layer.metrics["fact_adamw"]["rel_err"] > 1e-3  # not a fixed point
    assert any("weight_decay (0.3, 0.5)" in w for w in result.warnings), result.warnings


def test_without_adamw_state_fact_adamw_is_absent_not_nan(fixed_point):
    model, _, data = fixed_point
    result = analyze(model, data, loss="mse", weight_decay=DECAY, device="cpu")
    assert all("fact_adamw" not in layer.metrics and "fact_adamw" not in layer.matrices
               for layer in result.layers)
    with pytest.raises(FactError, match="fact_adamw needs AdamW's state"):
        analyze(model, data, loss="mse", weight_decay=DECAY, relations=["fact_adamw"])


def test_a_coupled_adam_state_is_refused(fixed_point):
    model, _, data = fixed_point
    model = copy.deepcopy(model)  # the step below must not move the shared fixed point
    adam = torch.optim.Adam(model.parameters(), weight_decay=DECAY)
    F.mse_loss(model(data.x_train.double()), data.y_train.double()).backward()
    adam.step()
    with pytest.raises(FactError, match="coupled Adam"):
        analyze(model, data, loss="mse", weight_decay=DECAY, optimizer_state=adam.state_dict())


def _rows(result):
    assert result.exit_code == 0, result.output
    return {(row["layer"], row["relation"]): row
            for row in map(json.loads, result.stdout.splitlines())}


def test_optimizer_state_files_bare_and_in_a_training_dict(tmp_path, fixed_point):
    model, optimizer, _ = fixed_point
    checkpoint = tmp_path / "mlp.pt"
    save_checkpoint(checkpoint, Checkpoint(MLP, model.state_dict(), {
        "dataset": SPEC, "loss": "mse", "weight_decay": DECAY}))
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    torch.save({"model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "epoch": 3000},
               tmp_path / "training.pt")
    for state in ("opt.pt", "training.pt"):
        rows = _rows(fact_inprocess("analyze", checkpoint, "--optimizer-state",
                                    tmp_path / state, "-f", "jsonl", "--device", "cpu"))
        assert rows[("0", "fact_adamw")]["rel_err"] < 1e-6
        assert rows[("2", "fact_adamw")]["rel_err"] < 1e-6
    assert ("0", "fact_adamw") not in _rows(fact_inprocess("analyze", checkpoint, "-f", "jsonl",
                                                           "--device", "cpu"))


def test_a_checkpoints_own_unusable_state_is_a_warning_a_given_one_an_error(tmp_path,
                                                                            fixed_point):
    """AdamW without decay (λ = 0) has no fact_adamw: the checkpoint still analyzes."""
    model, optimizer, _ = fixed_point
    state = optimizer.state_dict()
    state["param_groups"] = [{**g, "weight_decay": 0.0} for g in state["param_groups"]]
    path = tmp_path / "no_decay.pt"
    torch.save({"format": "factcli.checkpoint/1", "model": MLP, "state_dict": model.state_dict(),
                "training": {"dataset": SPEC, "loss": "mse", "weight_decay": 0.0,
                             "optimizer": "adamw"},
                "resume": {"format": "factcli.resume/1", "optimizer": state}}, path)
    result = analyze(path, device="cpu")
    assert all("fact_adamw" not in layer.metrics for layer in result.layers)
    assert any(w.startswith("fact_adamw not computed") and "weight_decay (λ) must be > 0" in w
               for w in result.warnings)
    with pytest.raises(FactError, match="weight_decay"):
        analyze(path, device="cpu", optimizer_state=state)


def test_fact_train_adamw_checkpoint_carries_its_state_to_analyze(tmp_path):
    """`fact train --optimizer adamw` keeps the moments (resume.optimizer); `fact analyze`
    finds them there, and its fact_adamw is the oracle's from those moments."""
    out = tmp_path / "adamw.pt"
    trained = fact_inprocess(
        "train", "mlp", "--dataset", SPEC, "--width", 8, "--depth", 2, "--activation", "tanh",
        "--optimizer", "adamw", "--lr", LR, "--weight-decay", DECAY, "--eps", EPS,
        "--betas", ",".join(map(str, BETAS)), "--schedule", "constant", "--epochs", 60,
        "--batch-size", 30, "--dtype", "float64", "--device", "cpu", "--out", out, "--quiet")
    assert trained.exit_code == 0, trained.output
    stored = torch.load(out, weights_only=True)
    assert stored["training"]["eps"] == EPS and stored["training"]["betas"] == list(BETAS)
    model = build_model(stored["model"]).double()
    model.load_state_dict(stored["state_dict"])
    state = stored["resume"]["optimizer"]
    rows = _rows(fact_inprocess("analyze", out, "-f", "jsonl", "--device", "cpu",
                                "--report", tmp_path / "r.h5", "--matrices", "fact_adamw"))
    data = load_dataset(SPEC)
    for index, name in ((0, "0"), (2, "2")):
        layer = dict(model.named_modules())[name]
        expected = naive_fact_adamw(model, layer, data.x_train.double(), data.y_train.double(),
                                    "mse", state["state"][index]["exp_avg_sq"],
                                    state["state"][index]["step"], BETAS[1], EPS, DECAY)
        from factcli.io.report import read_report

        matrix = read_report(tmp_path / "r.h5").layer(name).matrices["fact_adamw"]
        assert relative(matrix, expected) < 1e-6  # stored as float32
        assert rows[(name, "fact_adamw")]["rel_err"] >= 0
