"""Weights as real training code leaves them: training dicts, prefixed names, shards, HF folders."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from factcli.errors import FactError
from factcli.io.checkpoint import load_checkpoint
from factcli.models.archs import build_model
from tests.helpers import TINY_MLP, TINY_TRAINING, fact_inprocess

PIECES = ["--data", TINY_TRAINING["dataset"], "--loss", "mse", "--weight-decay", "1e-3"]


def _mlp():
    torch.manual_seed(0)
    return build_model(TINY_MLP).double()


class Lightning(nn.Module):
    """The layout of a LightningModule holding the network as `self.model`."""

    def __init__(self, model):
        super().__init__()
        self.model = model


@pytest.mark.parametrize("wrap, prefix", [
    (torch.compile, "_orig_mod."),
    (nn.DataParallel, "module."),
    (Lightning, "model."),
    (lambda m: nn.DataParallel(torch.compile(m)), "module._orig_mod."),
])
def test_wrapper_prefixes_are_stripped_when_that_fits(tmp_path, wrap, prefix):
    model = _mlp()
    state = wrap(model).state_dict()
    assert all(name.startswith(prefix) for name in state)  # the wrappers' real naming
    torch.save(state, tmp_path / "w.pt")
    checkpoint = load_checkpoint(tmp_path / "w.pt", model={"arch": "mlp", "activation": "tanh"})
    assert checkpoint.model["width"] == TINY_MLP["width"]  # sizes inferred through the prefix
    rebuilt = checkpoint.build()
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor)
    assert len(checkpoint.warnings) == 1 and "stripped the prefix" in checkpoint.warnings[0]
    for part in filter(None, prefix.split(".")):
        assert part in checkpoint.warnings[0]


def test_names_that_fit_are_never_stripped(tmp_path):
    """A model whose own submodule is called `model` keeps its names."""
    wrapped = Lightning(_mlp())
    torch.save(wrapped.state_dict(), tmp_path / "m.pt")
    checkpoint = load_checkpoint(tmp_path / "m.pt", model={"arch": "tests.test_sources:wrapped"})
    assert set(checkpoint.build().state_dict()) == set(wrapped.state_dict())
    assert checkpoint.warnings == []


def wrapped():
    return Lightning(build_model(TINY_MLP))


def test_a_prefix_that_does_not_fit_is_reported_in_the_files_names(tmp_path):
    state = {f"module.{k}": v for k, v in _mlp().state_dict().items()}
    state["module.extra.weight"] = torch.zeros(2, 2, dtype=torch.float64)
    torch.save(state, tmp_path / "w.pt")
    checkpoint = load_checkpoint(tmp_path / "w.pt", model={"arch": "mlp", "activation": "tanh"})
    with pytest.raises(FactError, match="unexpected module.0.bias"):
        checkpoint.build()


def test_lightning_extras_without_the_prefix_are_ignored_and_said(tmp_path):
    state = {f"model.{k}": v for k, v in _mlp().state_dict().items()}
    state["loss_scale"] = torch.ones(1, dtype=torch.float64)
    torch.save({"state_dict": state, "epoch": 3, "global_step": 30}, tmp_path / "l.ckpt")
    checkpoint = load_checkpoint(tmp_path / "l.ckpt", model={"arch": "mlp", "activation": "tanh"})
    checkpoint.build()
    assert any("'state_dict' of a training dict" in w for w in checkpoint.warnings)
    assert any("ignored 1 weight name" in w for w in checkpoint.warnings)


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model"])
def test_training_dicts(tmp_path, key):
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
    optimizer.step()
    torch.save({key: model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "epoch": 7, "loss": 0.25}, tmp_path / "t.pt")
    checkpoint = load_checkpoint(tmp_path / "t.pt", model={"arch": "mlp", "activation": "tanh"})
    rebuilt = checkpoint.build()
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())
    assert checkpoint.warnings == [f"t.pt: the weights under {key!r} of a training dict"]


def _shards(folder, state, index=True):
    """Two safetensors shards (and, if `index`, their model.safetensors.index.json)."""
    folder.mkdir()
    names = sorted(state)
    parts = {"model-00001-of-00002.safetensors": names[::2],
             "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in parts.items():
        save_file({k: state[k].contiguous() for k in keys}, str(folder / shard))
    if index:
        weight_map = {k: shard for shard, keys in parts.items() for k in keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("index", [True, False])
def test_sharded_safetensors_from_a_folder_or_its_index(tmp_path, index):
    model = _mlp()
    folder = _shards(tmp_path / "shards", model.state_dict(), index)
    sources = [folder] + ([folder / "model.safetensors.index.json"] if index else [])
    for source in sources:
        rebuilt = load_checkpoint(source, model={"arch": "mlp", "activation": "tanh"}).build()
        assert all(torch.equal(rebuilt.state_dict()[k], v)
                   for k, v in model.state_dict().items())
    result = fact_inprocess("analyze", folder, "--arch", "mlp", "--model", "activation=tanh",
                            *PIECES, "-f", "jsonl", "--relations", "fact")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["layer"] for line in result.stdout.splitlines()] == ["0", "2", "4"]


def _broken_sources(tmp_path):
    state = _mlp().state_dict()
    cases = {}

    def index_with(name, weight_map):
        folder = _shards(tmp_path / name, state)
        (folder / "model.safetensors.index.json").write_text(json.dumps(weight_map))
        return folder

    cases["index without weight_map"] = (index_with("a", {"metadata": {}}), "weight_map")
    cases["shard outside the folder"] = (index_with("b", {"weight_map": {
        "0.weight": "../elsewhere.safetensors"}}), "not a file name")
    cases["tensor not in its shard"] = (index_with("c", {"weight_map": {
        "0.weight": "model-00001-of-00002.safetensors"}}), "lacks 0.weight")
    missing = _shards(tmp_path / "d", state)
    (missing / "model-00002-of-00002.safetensors").unlink()
    cases["missing shard"] = (missing, "is missing")
    bad_json = _shards(tmp_path / "e", state)
    (bad_json / "model.safetensors.index.json").write_text("{not json")
    cases["index not JSON"] = (bad_json, "not readable JSON")
    (tmp_path / "empty").mkdir()
    cases["folder without weights"] = (tmp_path / "empty", "holds no weights")
    return cases


def test_broken_shards_give_one_line_and_exit_2(tmp_path):
    for label, (source, needle) in _broken_sources(tmp_path).items():
        result = fact_inprocess("analyze", source, "--arch", "mlp", *PIECES)
        assert result.exit_code == 2, (label, result.stderr)
        assert needle in result.stderr, (label, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)


# --------------------------------------------------------------------------- Hugging Face

def _tiny_gpt2(folder, shard="20KB"):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder, max_shard_size=shard)
    return model


def test_hf_gpt2_folder_with_shards_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _tiny_gpt2(tmp_path / "gpt2")
    shards = sorted(p.name for p in (tmp_path / "gpt2").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "gpt2" / "model.safetensors.index.json").is_file()
    checkpoint = load_checkpoint(tmp_path / "gpt2")
    assert checkpoint.model["arch"] == "hf" and checkpoint.model["class"] == "GPT2LMHeadModel"
    assert "lm_head.weight" not in checkpoint.state_dict  # save_pretrained keeps one tied name
    rebuilt = checkpoint.build()
    assert type(rebuilt).__name__ == "GPT2LMHeadModel" and not rebuilt.training
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight  # still tied
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    tokens = torch.randint(0, 50, (3, 7))
    assert torch.equal(rebuilt(tokens).logits, model(tokens).logits)


def _hf_folders(tmp_path):
    _tiny_gpt2(tmp_path / "gpt2")
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    cases = {}

    def folder(name, changes=None, weights=True):
        target = tmp_path / name
        target.mkdir()
        (target / "config.json").write_text(json.dumps({**config, **(changes or {})}))
        if weights:
            for path in (tmp_path / "gpt2").iterdir():
                if path.name != "config.json":
                    (target / path.name).write_bytes(path.read_bytes())
        return target

    cases["no weights"] = (folder("bare", weights=False), "holds no weights")
    cases["remote code"] = (folder("remote", {"auto_map": {"AutoModel": "evil.Model"}}),
                            "never runs code")
    cases["not a transformers class"] = (folder("cls", {"architectures": ["os.system"]}),
                                         "not a model class")
    cases["no architectures"] = (folder("arch", {"architectures": None}), "architectures")
    cases["config larger than its weights"] = (folder("huge", {"n_embd": 4096, "n_layer": 48}),
                                               "parameters but the weights hold")
    cases["weights do not fit"] = (folder("misfit", {"n_layer": 3}), "do not fit")
    return cases


def test_bad_hf_folders_give_one_line_and_exit_2(tmp_path):
    for label, (source, needle) in _hf_folders(tmp_path).items():
        result = fact_inprocess("analyze", source, *PIECES)
        assert result.exit_code == 2, (label, result.stderr)
        assert needle in result.stderr, (label, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)


def test_hf_gpt2_folder_is_analyzed_with_every_projection_and_the_tied_head(tmp_path):
    """All Conv1D projections, `wte` and the head tied to it, on integer token inputs."""
    from factcli.data.datasets import Dataset
    from factcli.engine.analysis import analyze

    _tiny_gpt2(tmp_path / "gpt2")
    torch.manual_seed(1)
    tokens = torch.randint(0, 50, (6, 4))  # ids stay integer into the model
    data = Dataset("tokens", tokens, torch.randn(6, 4 * 50))  # mse on the (6, 4·50) logits
    result = analyze(tmp_path / "gpt2", data, loss="mse", weight_decay=1e-3, dtype="float64",
                     relations=["fact", "nfa"])
    layers = {layer.name: layer for layer in result.layers}
    projections = {f"transformer.h.{i}.{part}" for i in range(2)
                   for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert projections | {"transformer.wte", "transformer.wpe"} <= set(layers)
    assert {layers[name].kind for name in projections} == {"conv1d_hf"}
    wte = layers["transformer.wte"]
    assert "tied" in wte.note and "1 as Wᵀ" in wte.note  # lm_head reads wte as Wᵀ
    assert all(math.isfinite(layer.metrics["fact"]["pearson"]) for layer in layers.values())
