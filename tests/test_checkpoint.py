"""Checkpoint formats, atomic writes, and a CLI that starts without torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from factcli.errors import FactError
from factcli.io.checkpoint import Checkpoint, load_checkpoint, parse_model_option, save_checkpoint
from factcli.models.archs import build_model
from tests.helpers import TINY_MLP, TINY_TRAINING


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    model = build_model(TINY_MLP).double()
    path = tmp_path / f"m{suffix}"
    save_checkpoint(path, Checkpoint(TINY_MLP, model.state_dict(), TINY_TRAINING))
    loaded = load_checkpoint(path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's private 0600
    assert loaded.model == TINY_MLP and loaded.training == TINY_TRAINING
    assert len(loaded.sha256) == 64
    rebuilt = loaded.build()
    assert not rebuilt.training  # eval mode
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor)
        assert rebuilt.state_dict()[name].dtype == torch.float64


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    model = build_model(TINY_MLP)
    save_checkpoint(path, Checkpoint(TINY_MLP, model.state_dict(), TINY_TRAINING))
    before = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, Checkpoint(TINY_MLP, {}, {}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_plain_state_dict_sizes_are_inferred(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(build_model(TINY_MLP).state_dict(), path)
    loaded = load_checkpoint(path, model={"arch": "mlp", "activation": "tanh"})
    assert {k: loaded.model[k] for k in ("in_features", "out_features", "width", "depth",
                                         "bias")} == {"in_features": 4, "out_features": 2,
                                                      "width": 6, "depth": 3, "bias": True}
    loaded.build()


def test_model_option_forms():
    assert parse_model_option('{"arch": "mlp", "width": 3}') == {"arch": "mlp", "width": 3}
    assert parse_model_option("arch=mlp,width=3,bias=false") == {"arch": "mlp", "width": 3,
                                                                 "bias": False}
    with pytest.raises(FactError):
        parse_model_option("arch")


def test_unwritable_destination_is_reported(tmp_path):
    with pytest.raises(FactError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "m.pt", Checkpoint(TINY_MLP, {}, {}))


def test_cli_imports_no_torch():
    code = "import sys, factcli.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    result = subprocess.run([sys.executable, "-m", "factcli", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "analyze" in result.stdout
