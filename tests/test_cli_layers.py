"""`fact layers` lists every parameter with a reason; analyze's footer counts what it skipped;
bad conv checkpoints and non-tensor outputs are one-line errors; new layer names round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from factcli.engine.analysis import analyze
from factcli.io.checkpoint import Checkpoint, save_checkpoint
from factcli.io.report import read_report, write_report
from tests.helpers import fact_inprocess

MODELS = '''
import torch
from torch import nn

class Net(nn.Module):
    """A conv, a grouped conv (not analyzed), a bilinear (not analyzed) and a Linear head."""

    def __init__(self, text=False):
        super().__init__()
        self.text = text
        self.conv = nn.Conv2d(1, 4, 3)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.norm = nn.LayerNorm(4)
        self.pair = nn.Bilinear(4, 4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        x = x.view(-1, 1, 6, 6)  # file datasets hold flat rows
        h = self.grouped(torch.tanh(self.conv(x))).mean(dim=(2, 3))
        h = self.norm(h)
        out = self.head(torch.tanh(self.pair(h, h)))
        return "logits" if self.text else out

def net(text=False):
    return Net(text)
'''


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "zoo.py").write_text(MODELS)
    import importlib
    import sys
    sys.modules.pop("zoo", None)
    zoo = importlib.import_module("zoo")
    torch.manual_seed(0)
    model = zoo.net()
    x = torch.rand(8, 1, 6, 6).numpy()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(8) % 2)
    training = {"dataset": f"file:{tmp_path / 'd.npz'}", "loss": "cross_entropy",
                "weight_decay": 1e-3}
    ckpt = tmp_path / "net.pt"
    save_checkpoint(ckpt, Checkpoint({"arch": "zoo:net"}, model.state_dict(), training))
    return tmp_path, ckpt, model


def test_layers_lists_every_parameter_with_a_reason(setup):
    _, ckpt, model = setup
    result = fact_inprocess("layers", ckpt, "--arch", "zoo:net", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["parameter"] for row in rows] == [name for name, _ in model.named_parameters()]
    by_name = {row["parameter"]: row for row in rows}
    assert by_name["conv.weight"] | {} == {**by_name["conv.weight"], "layer": "conv",
                                            "kind": "conv2d", "m": 4, "k": 9, "uses": 1,
                                            "analyzed": True}
    assert by_name["head.weight"]["analyzed"] and by_name["head.weight"]["uses"] == 1
    for name, word in (("grouped.weight", "grouped"), ("pair.weight", "3-tensor"),
                       ("conv.bias", "bias"), ("norm.weight", "normalization")):
        assert not by_name[name]["analyzed"] and word in by_name[name]["reason"], name
    table = fact_inprocess("layers", ckpt, "--arch", "zoo:net")
    assert "2 not analyzed: grouped.weight, pair.weight" in " ".join(table.stdout.split())


def test_analyze_footer_counts_the_matrices_not_analyzed(setup):
    _, ckpt, _ = setup
    result = fact_inprocess("analyze", ckpt, "--arch", "zoo:net", "--relations", "fact")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "2 weight matrices not analyzed: `fact layers" in text


def test_a_conv_checkpoint_with_the_wrong_kernel_is_one_line(setup):
    tmp_path, _, model = setup
    state = dict(model.state_dict(), **{"conv.weight": torch.zeros(4, 1, 5, 5)})
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, Checkpoint({"arch": "zoo:net"}, state, {}))
    for verb in ("analyze", "layers"):
        result = fact_inprocess(verb, bad, "--arch", "zoo:net")
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "conv.weight has shape (4, 1, 5, 5)" in lines[0], lines


def test_a_model_whose_output_is_not_a_tensor_is_one_line(setup):
    _, ckpt, _ = setup
    result = fact_inprocess("analyze", ckpt, "--model", "arch=zoo:net,text=true")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "returned a str, not a tensor" in lines[0], lines


def test_attention_layer_names_round_trip_through_a_report(tmp_path):
    from tests.test_kinds import Attention, data_for

    torch.manual_seed(1)
    model = Attention().double()
    data = data_for(torch.randn(5, 3, 4, dtype=torch.float64))
    result = analyze(model, data, loss="cross_entropy", weight_decay=1e-3)
    path = tmp_path / "r.h5"
    write_report(path, result, matrices="all")
    back = read_report(path)
    assert [layer.name for layer in back.layers] == [
        "attn.in_proj:q", "attn.in_proj:k", "attn.in_proj:v", "attn.out_proj", "head"]
    for a, b in zip(result.layers, back.layers):
        assert (a.kind, a.uses, a.note) == (b.kind, b.uses, b.note)
        assert json.dumps(a.metrics) == json.dumps(b.metrics)  # NaN-safe
        assert torch.equal(a.matrices["fact"].float(), torch.as_tensor(b.matrices["fact"]))
    shown = fact_inprocess("show", path, "-f", "jsonl")
    assert shown.exit_code == 0
    assert {json.loads(line)["layer"] for line in shown.stdout.splitlines()} == {
        layer.name for layer in result.layers}
