"""The built-in `cnn` and `transformer`: layout, training with `fact train`, files round trip."""

from __future__ import annotations

import pytest
import torch

from factcli.data.datasets import Dataset, load_dataset
from factcli.errors import FactError
from factcli.io.checkpoint import load_checkpoint
from factcli.models.archs import build_model
from factcli.training.loop import train
from factcli.training.objective import weight_parameters
from tests.helpers import fact_inprocess

CNN = {"arch": "cnn", "in_shape": [1, 28, 28], "out_features": 10, "channels": [4, 8],
       "width": 16, "depth": 2, "activation": "relu", "bias": True, "pool": "max"}
TRANSFORMER = {"arch": "transformer", "vocab": 8, "context": 3, "out_features": 7,
               "d_model": 16, "heads": 2, "depth": 2, "d_mlp": 32, "output": "last",
               "activation": "gelu", "bias": True}
MNIST_TINY = "mnist-10k:n=64,n_test=32"
MODULAR_TINY = "modular:p=7,tokens=yes"


def test_cnn_layout_and_flat_or_image_inputs():
    torch.manual_seed(0)
    model = build_model(CNN)
    assert list(weight_parameters(model)) == ["features.0", "features.3", "classifier.0",
                                              "classifier.2"]
    assert model.classifier[0].in_features == 8 * 7 * 7
    images = torch.rand(5, 1, 28, 28)
    assert torch.equal(model(images), model(images.flatten(1)))  # a row is a C·H·W image
    with pytest.raises(FactError, match="flat images of 784"):
        model(torch.rand(5, 100))


def test_transformer_layout_is_causal_and_takes_integer_tokens():
    torch.manual_seed(0)
    model = build_model({**TRANSFORMER, "output": "all"}).eval()
    assert list(weight_parameters(model)) == [
        "embed", "pos", *[f"blocks.{i}.{name}" for i in range(2) for name in
                          ("attn.in_proj", "attn.out_proj", "mlp.0", "mlp.2")], "head"]
    assert isinstance(model.blocks[0].attn, torch.nn.MultiheadAttention)
    tokens = torch.tensor([[1, 2, 3], [1, 2, 5]])
    logits = model(tokens)
    assert logits.shape == (2, 3, 7)
    assert torch.allclose(logits[0, :2], logits[1, :2])  # position t sees only tokens ≤ t
    assert not torch.allclose(logits[0, 2], logits[1, 2])
    last = build_model(TRANSFORMER)
    last.load_state_dict(model.state_dict())
    assert torch.equal(last.eval()(tokens), logits[:, -1])
    with pytest.raises(FactError, match="integer token ids"):
        model(tokens.float())


@pytest.mark.parametrize("spec", [CNN, TRANSFORMER], ids=["cnn", "transformer"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip(tmp_path, spec, suffix):
    from factcli.io.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model(spec).double().eval()
    save_checkpoint(tmp_path / f"m{suffix}", Checkpoint(spec, model.state_dict(), {}))
    loaded = load_checkpoint(tmp_path / f"m{suffix}")
    assert loaded.model == spec
    rebuilt = loaded.build()
    x = (torch.rand(4, 784, dtype=torch.float64) if spec["arch"] == "cnn"
         else torch.randint(0, 8, (4, 3)))
    assert torch.equal(rebuilt(x), model(x))


def test_fact_train_cnn_on_mnist(tmp_path):
    out = tmp_path / "cnn.pt"
    result = fact_inprocess("train", "cnn", "--dataset", MNIST_TINY, "--channels", "4,8",
                            "--width", "16", "--epochs", "3", "--batch-size", "16",
                            "--lr", "0.1", "--weight-decay", "1e-3", "--device", "cpu",
                            "--out", out, "-q")
    assert result.exit_code == 0, result.stderr
    stored = load_checkpoint(out)
    assert stored.model == {**CNN, "channels": [4, 8], "width": 16}
    assert set(stored.training["stationarity"]) == {"features.0", "features.3",
                                                    "classifier.0", "classifier.2"}
    assert all(v > 0 for v in stored.training["stationarity"].values())
    assert stored.training["train_loss"] > 0 and stored.training["test_acc"] is not None
    stored.build()


def test_fact_train_transformer_on_modular_tokens(tmp_path):
    out = tmp_path / "t.safetensors"
    result = fact_inprocess("train", "transformer", "--dataset", MODULAR_TINY, "--width", "16",
                            "--heads", "2", "--epochs", "3", "--loss", "cross_entropy",
                            "--optimizer", "adam", "--lr", "0.01", "--weight-decay", "1e-3",
                            "--device", "cpu", "--out", out, "-q")
    assert result.exit_code == 0, result.stderr
    stored = load_checkpoint(out)
    assert stored.model == {**TRANSFORMER, "d_mlp": 64, "context": 3}
    assert len(stored.training["stationarity"]) == 11  # every weight matrix, q/k/v fused
    assert stored.training["train_loss"] > 0  # cross-entropy of integer-input batches


def test_fact_holds_at_a_critical_point_of_a_transformer_without_layernorm():
    """The theorem on the built-in transformer (q/k/v blocks included): `fact train --norm none`
    with a Newton polish (attention through the math kernel, which has forward-mode AD)."""
    from factcli.engine.analysis import analyze

    torch.manual_seed(0)
    data = load_dataset("modular:p=5,tokens=yes,train_frac=0.6")
    result = train(arch="transformer", dataset="modular", data=data, width=4, heads=2, depth=1,
                   norm="none", activation="tanh", epochs=300, batch_size=64, optimizer="adam",
                   lr=0.01, weight_decay=1e-3, loss="cross_entropy", dtype="float64", polish=200,
                   device="cpu")
    assert result.checkpoint.model["norm"] == "none"
    assert result.training["polish"]["method"] == "newton"
    assert max(result.training["stationarity"].values()) < 1e-10
    analysis = analyze(result.checkpoint, data)  # λ and the loss from the training record
    names = [layer.name for layer in analysis.layers]
    assert {"blocks.0.attn.in_proj:q", "blocks.0.attn.in_proj:k", "blocks.0.attn.in_proj:v",
            "embed", "pos", "head"} <= set(names)
    for layer in analysis.layers:
        for name in ("fact", "bfact"):
            assert layer.metrics[name]["rel_err"] < 1e-6, (layer.name, name)


def test_with_layernorm_the_data_loss_ignores_the_scale_of_the_residual_writers():
    """Why --norm layer has no critical point for λ > 0: L_data(cθ_writers) = L_data(θ_writers)
    (up to LayerNorm's ε), so ⟨∇L_data, θ_writers⟩ = 0 while ⟨λθ, θ_writers⟩ = λ‖θ_writers‖²."""
    from factcli.engine.losses import per_sample_loss

    torch.manual_seed(0)
    data = load_dataset(MODULAR_TINY)
    model = build_model(TRANSFORMER).double()
    per_sample_loss("cross_entropy", model(data.x_train), data.y_train).mean().backward()
    writers = [p for name, p in model.named_parameters()
               if name.startswith(("embed.", "pos.")) or ".attn.out_proj." in name
               or ".mlp.2." in name]
    inner = sum(float((p.grad * p.detach()).sum()) for p in writers)
    size = (sum(float(p.grad.pow(2).sum()) for p in writers)
            * sum(float(p.detach().pow(2).sum()) for p in writers)) ** 0.5
    assert abs(inner) < 1e-3 * size
    plain = build_model({**TRANSFORMER, "norm": "none"})
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in plain.modules())


def test_modular_tokens_are_the_sequence_a_b_equals():
    data = load_dataset("modular:p=5,tokens=yes,train_frac=0.6")
    onehot = load_dataset("modular:p=5,train_frac=0.6")
    assert data.x_train.dtype == torch.long and data.info["vocab"] == 6
    assert torch.equal(data.x_train[:, :2], onehot.x_train.reshape(-1, 2, 5).argmax(2))
    assert (data.x_train[:, 2] == 5).all() and torch.equal(data.y_train, onehot.y_train)


def test_polish_reaches_a_critical_point_of_a_smooth_cnn():
    """Stationarity over every weight parameter, convolutions included, goes to ~0 (tanh and
    average pooling: max pooling's kinks keep Newton from converging)."""
    torch.manual_seed(0)
    images = torch.rand(24, 16, dtype=torch.float64)
    data = Dataset("images", images, torch.randint(0, 3, (24,)), n_classes=3,
                   info={"image_shape": [1, 4, 4]})
    result = train(arch="cnn", dataset="images", data=data, channels=[2], width=3,
                   activation="tanh", pool="avg", epochs=300, batch_size=24, optimizer="adam",
                   lr=0.01, weight_decay=1e-2, dtype="float64", polish=100, device="cpu")
    assert result.training["polish"]["method"] == "newton"
    station = result.training["stationarity"]
    assert set(station) == {"features.0", "classifier.0", "classifier.2"}
    assert max(station.values()) < 1e-10, station


@pytest.mark.parametrize("args, needle", [
    (["cnn", "--dataset", "teacher-linear:d=4,c=2,n=8"], "needs images"),
    (["transformer", "--dataset", "teacher-linear:d=4,c=2,n=8"], "integer token sequences"),
    (["mlp", "--dataset", MNIST_TINY, "--channels", "4"], "--channels is for arch cnn"),
    (["cnn", "--dataset", MNIST_TINY, "--channels", "4,x"], "comma-separated integers"),
    (["cnn", "--dataset", MNIST_TINY, "--channels", "4,8,8,8,8,8"], "shrink"),
    (["cnn", "--dataset", MNIST_TINY, "--heads", "2"], "--heads is for arch transformer"),
    (["cnn", "--dataset", MNIST_TINY, "--norm", "none"], "--norm is for arch transformer"),
    (["transformer", "--dataset", MODULAR_TINY, "--norm", "batch"], "unknown --norm"),
    (["cnn", "--dataset", MNIST_TINY, "--pool", "median"], "unknown --pool"),
    (["mlp", "--dataset", MNIST_TINY, "--pool", "avg"], "--pool is for arch cnn"),
    (["transformer", "--dataset", MODULAR_TINY, "--width", "10", "--heads", "4"],
     "not a multiple"),
])
def test_bad_arch_options_give_one_line_and_exit_2(tmp_path, args, needle):
    result = fact_inprocess("train", *args, "--epochs", "1", "--device", "cpu",
                            "--out", tmp_path / "x.pt")
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr


@pytest.mark.parametrize("change, needle", [
    ({"channels": [4, 0]}, "'channels' must be an integer"),
    ({"channels": "4,8"}, "'channels' must be a list"),
    ({"in_shape": [1, 28]}, "'in_shape' must be a list of 3"),
    ({"width": 1 << 40}, "'width' must be an integer"),
    ({"width": True}, "'width' must be an integer"),
])
def test_bad_cnn_descriptions_are_refused_before_allocating(change, needle):
    with pytest.raises(FactError, match=needle):
        build_model({**CNN, **change})


def test_a_cnn_checkpoint_with_the_wrong_kernel_shape_gives_one_line(tmp_path):
    from factcli.io.checkpoint import Checkpoint, save_checkpoint

    state = build_model(CNN).state_dict()
    state["features.3.weight"] = torch.zeros(8, 4, 5, 5)  # a 5×5 kernel where 3×3 belongs
    save_checkpoint(tmp_path / "bad.pt", Checkpoint(CNN, state, {
        "dataset": MNIST_TINY, "loss": "mse", "weight_decay": 1e-3}))
    result = fact_inprocess("analyze", tmp_path / "bad.pt")
    assert result.exit_code == 2
    assert "features.3.weight has shape (8, 4, 5, 5)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
