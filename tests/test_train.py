"""`fact train` (issue 3): determinism, resume after SIGINT/SIGKILL, convergence to a critical
point, the Section 6 and deep-linear phenomena, and every kind of bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from factcli.engine.analysis import analyze
from factcli.errors import FactError
from factcli.io.checkpoint import load_checkpoint
from factcli.training.loop import TrainConfig, snapshot_path
from factcli.training.loop import train as _train
from tests.helpers import fact_inprocess

torch.set_num_threads(1)

TINY = dict(arch="mlp", dataset="teacher-linear:d=5,c=2,n=64,seed=1", width=12, depth=3,
            batch_size=16, lr=0.05, weight_decay=1e-3)
TINY_ARGS = ["mlp", "--dataset", TINY["dataset"], "--width", "12", "--depth", "3",
             "--batch-size", "16", "--lr", "0.05", "--weight-decay", "1e-3", "--device", "cpu"]


def train(*args, **kwargs):
    """The library verb, on the CPU unless a test says otherwise (determinism is a CPU claim)."""
    kwargs.setdefault("device", "cpu")
    return _train(*args, **kwargs)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- determinism


def test_same_command_gives_identical_weights(tmp_path):
    first = train(**TINY, epochs=6, out=tmp_path / "a.pt")
    second = train(**TINY, epochs=6, out=tmp_path / "b.pt")
    assert same_weights(first.checkpoint.state_dict, second.checkpoint.state_dict)
    on_disk = load_checkpoint(tmp_path / "b.pt")
    assert same_weights(on_disk.state_dict, first.checkpoint.state_dict)
    other_seed = train(**TINY, epochs=6, seed=1)
    assert not same_weights(first.checkpoint.state_dict, other_seed.checkpoint.state_dict)


def test_checkpoint_records_the_configuration(tmp_path):
    out = tmp_path / "m.safetensors"
    result = train(**TINY, epochs=4, out=out, save_every=2)
    stored = load_checkpoint(out)
    t = stored.training
    assert stored.model == {"arch": "mlp", "in_features": 5, "out_features": 2, "width": 12,
                            "depth": 3, "activation": "relu", "bias": True}
    for key, value in dict(dataset=TINY["dataset"], loss="mse", weight_decay=1e-3,
                           optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, epochs=4,
                           epoch=4, seed=0, schedule="cosine", dtype="float32",
                           finished=True).items():
        assert t[key] == value, key
    assert t["train_loss"] > 0 and t["test_loss"] > 0 and set(t["stationarity"]) == {"0", "2",
                                                                                     "4"}
    assert result.checkpoint.training["train_loss"] == t["train_loss"]
    # snapshots: epoch 0, 2, 4 (plain checkpoints); the resume state is a sidecar for safetensors
    for epoch in (0, 2, 4):
        snap = load_checkpoint(snapshot_path(out, epoch, 4))
        assert snap.training["epoch"] == epoch
    assert (tmp_path / "m.safetensors.resume.pt").is_file()
    # a .pt keeps its resume state under "resume", readable with weights_only=True
    train(**TINY, epochs=2, out=tmp_path / "m.pt")
    content = torch.load(tmp_path / "m.pt", weights_only=True)
    assert content["format"] == "factcli.checkpoint/1"
    assert content["resume"]["format"] == "factcli.resume/1" and content["resume"]["epoch"] == 2


def test_weighted_minibatch_objective_matches_the_full_sum():
    """separation (weighted support): L = Σ w_i ℓ_i; the recorded train_loss is that sum."""
    result = train(arch="quadratic", dataset="separation:tau=0.3", optimizer="adam", lr=1e-2,
                   weight_decay=1e-3, epochs=3, batch_size=32)
    from factcli.data.datasets import load_dataset

    data = load_dataset("separation:tau=0.3")
    model = result.checkpoint.build().double()
    with torch.no_grad():
        ell = (model(data.x_train.double()) - data.y_train.double()).pow(2).mean(dim=1)
    w = data.weights.double() / data.weights.double().sum()
    assert result.training["train_loss"] == pytest.approx(float((w * ell).sum()), rel=1e-12)
    assert result.training["weighted"] is True


# --------------------------------------------------------------------------- resume


def _child(args, tmp_path):
    env = {**os.environ, "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "factcli", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)


def _interrupt_after(process, epoch, sig):
    """Read the jsonl rows until `epoch` has been reported, then send `sig`."""
    for line in process.stdout:
        row = json.loads(line)
        if row["epoch"] >= epoch:
            process.send_signal(sig)
            break
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, sig):
    epochs = 400
    reference = train(**TINY, epochs=epochs)
    out = tmp_path / "run.pt"
    args = [*TINY_ARGS, "--epochs", epochs, "--out", out, "--format", "jsonl", "--quiet"]
    if sig == signal.SIGKILL:
        args += ["--save-every", 20]
    returncode, stderr = _interrupt_after(_child(args, tmp_path), 50, sig)
    if sig == signal.SIGINT:
        assert returncode == 130, stderr
        assert "--resume" in stderr
    else:
        assert returncode == -signal.SIGKILL
    partial = load_checkpoint(out)  # never corrupted: always loadable
    assert partial.training["finished"] is False
    assert 20 <= partial.training["epoch"] < epochs
    if sig == signal.SIGKILL:
        assert partial.training["epoch"] % 20 == 0
    resumed = _child([*args, "--resume"], tmp_path)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    first = json.loads(stdout.splitlines()[0])
    assert first["epoch"] == partial.training["epoch"] + 1
    final = load_checkpoint(out)
    assert final.training["finished"] is True and final.training["epoch"] == epochs
    assert same_weights(final.state_dict, reference.checkpoint.state_dict)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_stop_request_saves_and_resume_continues_exactly(tmp_path, suffix):
    """In-process: `should_stop` at epoch 3, then resume; Adam state included (sidecar for
    safetensors)."""
    common = dict(TINY, optimizer="adam", lr=1e-2, epochs=8)
    reference = train(**common)
    out = tmp_path / f"run{suffix}"
    seen = []
    stopped = train(**common, out=out, callback=seen.append,
                    should_stop=lambda: any(e.get("epoch") == 3 for e in seen
                                            if e["event"] == "epoch"))
    assert stopped.interrupted and load_checkpoint(out).training["epoch"] == 3
    resumed = train(**common, out=out, resume=True)
    assert resumed.resumed_from == 3 and [r["epoch"] for r in resumed.history] == [4, 5, 6, 7, 8]
    assert same_weights(resumed.checkpoint.state_dict, reference.checkpoint.state_dict)
    assert same_weights(load_checkpoint(out).state_dict, reference.checkpoint.state_dict)


def test_adam_eps_and_betas_are_recorded_and_part_of_the_trajectory(tmp_path):
    """--eps/--betas reach the optimizer and the record; a resume must agree on them, and an
    Adam run saved before they were recorded counts as torch's defaults (1e-8, 0.9/0.999)."""
    out = tmp_path / "adam.pt"
    common = dict(TINY, optimizer="adam", lr=1e-2, epochs=4, out=out)
    seen = []
    train(**common, callback=seen.append,
          should_stop=lambda: any(e.get("epoch") == 2 for e in seen if e["event"] == "epoch"))
    content = torch.load(out, weights_only=True)
    assert content["training"]["eps"] == 1e-8 and content["training"]["betas"] == [0.9, 0.999]
    group = content["resume"]["optimizer"]["param_groups"][0]
    assert group["eps"] == 1e-8 and tuple(group["betas"]) == (0.9, 0.999)
    for key in ("eps", "betas"):  # as an older factcli wrote it
        del content["training"][key]
    torch.save(content, out)
    with pytest.raises(FactError, match="eps 1e-08 \\(stored\\) vs 0.01"):
        train(**common, eps=1e-2, resume=True)
    assert train(**common, resume=True).resumed_from == 2
    with pytest.raises(FactError, match="--eps is for --optimizer adam or adamw"):
        train(**{**common, "optimizer": "sgd"}, eps=1e-2)
    with pytest.raises(FactError, match="--betas must be two numbers in"):
        train(**common, betas=[0.9, 1.0])


def test_resume_of_a_finished_run_changes_nothing_and_can_polish(tmp_path):
    out = tmp_path / "q.pt"
    first = train(arch="linear", dataset="teacher-linear:d=3,c=2,n=20", depth=2,
                  optimizer="gd", dtype="float64", weight_decay=1e-2, epochs=30, out=out)
    again = train(arch="linear", dataset="teacher-linear:d=3,c=2,n=20", depth=2,
                  optimizer="gd", dtype="float64", weight_decay=1e-2, epochs=30, out=out,
                  resume=True)
    assert same_weights(first.checkpoint.state_dict, again.checkpoint.state_dict)
    assert again.history == []
    polished = train(arch="linear", dataset="teacher-linear:d=3,c=2,n=20", depth=2,
                     optimizer="gd", dtype="float64", weight_decay=1e-2, epochs=30, out=out,
                     resume=True, polish=50)
    assert max(polished.stationarity.values()) < 1e-9
    assert "resume" not in torch.load(out, weights_only=True)
    with pytest.raises(FactError, match="different options"):
        train(arch="linear", dataset="teacher-linear:d=3,c=2,n=20", depth=2, optimizer="gd",
              dtype="float64", weight_decay=1e-3, epochs=30, out=out, resume=True)


# --------------------------------------------------------------------------- convergence


def test_gd_float64_reaches_a_critical_point_where_fact_holds(tmp_path):
    out = tmp_path / "gd.pt"
    result = fact_inprocess(
        "train", "mlp", "--dataset", "teacher-linear:d=4,c=2,n=40,seed=0", "--width", "6",
        "--depth", "3", "--activation", "tanh", "--optimizer", "gd", "--lr", "0.5",
        "--momentum", "0.9", "--dtype", "float64", "--weight-decay", "0.05", "--epochs", "1000",
        "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert "stationarity" in result.stdout
    analyzed = fact_inprocess("analyze", out, "--format", "jsonl", "--relations", "fact")
    assert analyzed.exit_code == 0, analyzed.output
    rows = [json.loads(line) for line in analyzed.stdout.splitlines()]
    assert [row["layer"] for row in rows] == ["0", "2", "4"]
    for row in rows:
        assert row["stationarity"] < 1e-6, row
        assert row["pearson"] > 0.9999, row
    recorded = load_checkpoint(out).training["stationarity"]
    assert max(recorded.values()) < 1e-6


def test_section6_fact_holds_where_nfa_fails():
    """Quadratic net on the exact separation distribution (τ = 0.1), polished to critical."""
    result = train(arch="quadratic", dataset="separation:tau=0.1", width=10, optimizer="adam",
                   lr=1e-2, weight_decay=1e-3, epochs=2000, polish=1000)
    assert result.training["polish"]["method"] == "newton"
    assert max(result.stationarity.values()) < 1e-6
    hidden = analyze(result.checkpoint, relations=["fact", "nfa"]).layer("hidden")
    assert hidden.stationarity < 1e-6
    assert hidden.metrics["fact"]["cosine"] >= 0.99
    assert hidden.metrics["nfa"]["cosine"] <= 0.8


def test_lbfgs_polish_of_a_larger_model_lowers_stationarity(tmp_path):
    common = dict(arch="mlp", dataset="teacher-linear:d=5,c=2,n=64,seed=1", width=40, depth=3,
                  activation="tanh", weight_decay=1e-2, lr=0.05, batch_size=16, epochs=20)
    plain = train(**common)
    polished = train(**common, polish=200, out=tmp_path / "p.pt")
    info = polished.training["polish"]
    assert info["method"] == "lbfgs-strong-wolfe" and info["kept"] is True
    assert info["objective_after"] < info["objective_before"]
    assert max(polished.stationarity.values()) < 0.01 * max(plain.stationarity.values())
    stored = load_checkpoint(tmp_path / "p.pt")
    assert all(t.dtype == torch.float64 for t in stored.state_dict.values())
    assert stored.training["stationarity"] == polished.stationarity


def test_a_polish_that_does_not_help_is_not_kept(monkeypatch):
    import factcli.training.polish as polishing

    def harmful(model, *args, **kwargs):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3.0)
        return {"method": "lbfgs-strong-wolfe", "steps": 1, "history": []}

    monkeypatch.setattr(polishing, "_lbfgs", harmful)
    monkeypatch.setattr(polishing, "NEWTON_MAX_PARAMS", 0)
    plain = train(**TINY, epochs=3)
    result = train(**TINY, epochs=3, polish=5)
    assert result.training["polish"]["kept"] is False
    assert same_weights(result.checkpoint.state_dict, plain.checkpoint.state_dict)
    assert result.stationarity == plain.stationarity
    assert any("did not lower" in m for m in result.messages)


@pytest.mark.parametrize("depth", [2, 3])
def test_deep_linear_best_nfa_power_is_one_over_depth(depth):
    result = train(arch="linear", dataset="teacher-linear:d=10,c=10,n=100", depth=depth,
                   optimizer="gd", lr=0.1, dtype="float64", weight_decay=1e-3, epochs=200,
                   polish=60)
    analysis = analyze(result.checkpoint, relations=["fact", "nfa", "agop"])
    first = analysis.layer("0")
    assert first.stationarity < 1e-8
    assert abs(first.best_alpha - 1 / depth) <= 0.02, first.best_alpha
    for layer in analysis.layers:  # FACT needs no tuning, in every layer
        assert layer.metrics["fact"]["pearson"] > 0.9999


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,needle", [
    (["foo", "--dataset", "parity", "--out", "{tmp}/a.pt"], "unknown arch"),
    (["mlp", "--dataset", "nope", "--out", "{tmp}/a.pt"], "unknown dataset"),
    (["mlp", "--out", "{tmp}/a.pt"], "--dataset"),
    (["mlp", "--dataset", "parity", "--resume"], "--resume needs --out"),
    (["mlp", "--dataset", "parity", "--out", "/dev/null/runs/a.pt"], "cannot create folder"),
    (["mlp", "--dataset", "nope", "--out", "{tmp}"], "is a directory"),
    (["linear", "--dataset", "parity", "--activation", "relu", "--out", "{tmp}/a.pt"],
     "contradicts"),
    (["quadratic", "--dataset", "parity", "--depth", "3", "--out", "{tmp}/a.pt"], "contradicts"),
    (["mlp", "--dataset", "parity", "--optimizer", "adam", "--momentum", "0.9",
      "--out", "{tmp}/a.pt"], "contradicts"),
    (["mlp", "--dataset", "parity", "--optimizer", "gd", "--batch-size", "7",
      "--out", "{tmp}/a.pt"], "contradicts"),
    (["mlp", "--dataset", "parity", "--optimizer", "rmsprop", "--out", "{tmp}/a.pt"],
     "unknown optimizer"),
    (["mlp", "--dataset", "parity", "--lr", "-1", "--out", "{tmp}/a.pt"], "--lr"),
    (["mlp", "--dataset", "parity", "--dtype", "float16", "--out", "{tmp}/a.pt"], "dtype"),
    (["mlp", "--dataset", "teacher-linear", "--loss", "cross_entropy", "--out", "{tmp}/a.pt"],
     "class labels"),
    (["mlp", "--dataset", "parity", "--format", "xml", "--out", "{tmp}/a.pt"], "--format"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    result = fact_inprocess("train", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, (args, result.output)
    assert needle in result.stderr, (args, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "epoch" not in result.stderr  # rejected before any training
    assert not (tmp_path / "a.pt").exists()


def test_unwritable_out_is_checked_before_the_data_is_loaded(tmp_path, monkeypatch):
    import factcli.training.loop as training

    def boom(*args, **kwargs):
        raise AssertionError("the dataset was loaded before --out was checked")

    monkeypatch.setattr(training, "load_dataset", boom)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # running as root: permissions do not bind
        target = "/dev/null/a.pt"  # (a missing folder would be created: --out makes parents)
    else:
        target = locked / "a.pt"
    result = fact_inprocess("train", *TINY_ARGS, "--out", target)
    assert result.exit_code == 2 and "cannot write" in result.stderr, result.output


def test_diverging_run_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    good = fact_inprocess("train", *TINY_ARGS, "--epochs", "3", "--out", out)
    assert good.exit_code == 0, good.output
    before = out.read_bytes()
    bad = fact_inprocess("train", *TINY_ARGS[:-2], "--epochs", "50", "--lr", "1e4",
                         "--out", out)
    assert bad.exit_code == 2, bad.output
    assert "diverged" in bad.stderr and "--lr" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert out.read_bytes() == before
    with pytest.raises(FactError, match="diverged"):
        train(**{**TINY, "lr": 1e4}, epochs=50)


def test_diverging_run_keeps_the_last_saved_epoch(tmp_path, monkeypatch):
    """A run that saved epochs before it diverged names that epoch and leaves it loadable."""
    import factcli.training.loop as training

    out, models = tmp_path / "m.pt", []
    original = training._optimizer

    def capture(model, config):
        models.append(model)
        return original(model, config)

    def poison(event):  # after epoch 3 (saved: 0, 2) the weights blow up
        if event["event"] == "epoch" and event["epoch"] == 3:
            with torch.no_grad():
                for p in models[0].parameters():
                    p.fill_(math.inf)

    monkeypatch.setattr(training, "_optimizer", capture)
    with pytest.raises(FactError, match=r"epoch 2\) is kept"):
        train(**TINY, epochs=10, out=out, save_every=2, callback=poison)
    kept = load_checkpoint(out)
    assert kept.training["epoch"] == 2 and kept.build() is not None


def test_adamw_warns_and_is_recorded(tmp_path):
    result = fact_inprocess("train", *TINY_ARGS, "--optimizer", "adamw", "--lr", "1e-3",
                            "--epochs", "1", "--out", tmp_path / "w.pt")
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "approximately" in result.stderr
    stored = load_checkpoint(tmp_path / "w.pt").training
    assert stored["optimizer"] == "adamw" and stored["weight_decay_mode"] == "decoupled"


def test_jsonl_is_one_plain_json_line_per_epoch(tmp_path):
    result = fact_inprocess("train", *TINY_ARGS, "--epochs", "3", "--format", "jsonl",
                            "--out", tmp_path / "j.pt", "--target-loss", "1e-12")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert set(rows[0]) == {"phase", "epoch", "train_loss", "train_acc", "test_loss",
                            "test_acc", "lr", "time_s"}
    assert rows[-1]["test_loss"] is not None and "\x1b[" not in result.stdout


def test_target_loss_stops_early():
    result = train(**TINY, epochs=50, target_loss=0.5)
    assert result.training["stopped"] == "target_loss"
    assert result.training["epoch"] < 50


def test_library_config_object_and_unknown_option():
    config = TrainConfig(arch="linear", dataset="teacher-linear:d=3,c=2,n=10", epochs=2,
                         depth=2)
    result = train(config, optimizer="gd")
    assert result.checkpoint.model["width"] == 3 and result.training["optimizer"] == "gd"
    with pytest.raises(TypeError):
        train(arch="mlp", dataset="parity", colour="red")


def test_resume_of_a_polished_float32_run_returns_the_stored_float64_weights(tmp_path):
    out = tmp_path / "p.pt"
    common = dict(arch="linear", dataset="teacher-linear:d=3,c=2,n=20", depth=2, optimizer="gd",
                  weight_decay=1e-2, epochs=30, polish=50, out=out)  # dtype float32
    polished = train(**common)
    assert polished.training["polish"]["kept"] is True
    again = train(**common, resume=True)
    assert any("already polished" in m for m in again.messages)
    stored = load_checkpoint(out).state_dict
    assert all(t.dtype == torch.float64 for t in again.checkpoint.state_dict.values())
    assert same_weights(again.checkpoint.state_dict, stored)
    assert same_weights(polished.checkpoint.state_dict, stored)


def test_interrupted_polish_returns_the_weights_the_file_keeps(tmp_path):
    out, seen = tmp_path / "p.pt", []
    result = train(**TINY, epochs=2, polish=50, out=out, callback=seen.append,
                   should_stop=lambda: any(e["event"] == "polish" for e in seen))
    assert result.interrupted and any("polish interrupted" in m for m in result.messages)
    stored = load_checkpoint(out)
    assert "polish" not in stored.training and stored.training["finished"] is True
    assert same_weights(result.checkpoint.state_dict, stored.state_dict)


def test_damaged_resume_state_is_a_fact_error(tmp_path):
    out = tmp_path / "r.pt"
    train(**TINY, epochs=2, out=out)
    content = torch.load(out, weights_only=True)
    del content["resume"]["optimizer"]
    torch.save(content, out)
    with pytest.raises(FactError, match="damaged"):
        train(**TINY, epochs=4, out=out, resume=True)
    out.write_bytes(b"not a checkpoint")
    with pytest.raises(FactError, match="not a readable checkpoint"):
        train(**TINY, epochs=4, out=out, resume=True)


def test_bad_options_are_rejected_before_the_data_is_loaded(monkeypatch):
    import factcli.training.loop as training

    def boom(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the options were checked")

    monkeypatch.setattr(training, "load_dataset", boom)
    for bad, needle in ((dict(optimizer="rmsprop"), "unknown optimizer"),
                        (dict(dtype="float16"), "dtype"), (dict(lr=-1.0), "--lr"),
                        (dict(optimizer="adam", momentum=0.9), "contradicts")):
        with pytest.raises(FactError, match=needle):
            train(**{**TINY, **bad}, epochs=1)


def test_hold_cosine_keeps_the_rate_for_half_the_run_then_decays_it(tmp_path):
    """lr for epochs 0..E/2-1, then the cosine of the remaining half; the run uses those rates."""
    from factcli.training.loop import lr_at

    record = {"lr": 0.2, "epochs": 10, "schedule": "hold-cosine"}
    rates = [lr_at(record, epoch) for epoch in range(10)]
    assert rates[:5] == [0.2] * 5
    assert rates[5:] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 5)) for e in range(5)])
    result = train(**{**TINY, "epochs": 4}, schedule="hold-cosine", out=tmp_path / "h.pt")
    assert [row["lr"] for row in result.history] == [lr_at(result.training, e) for e in range(4)]
    assert result.training["schedule"] == "hold-cosine"
