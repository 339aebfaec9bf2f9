"""The shipped grokking transformers (sample_checkpoints/README.md): what their training records
and the README claim, recomputed from the files — accuracies from the model's own predictions,
stationarity and the FACT/NFA tables from `analyze`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from factcli.data.datasets import load_dataset
from factcli.engine.analysis import analyze
from factcli.io.checkpoint import load_checkpoint

torch.set_num_threads(1)

ROOT = Path(__file__).parent.parent
SAMPLES = ("transformer_mod59.pt", "transformer_nonorm_mod59.pt")
COLUMNS = ("fact", "fact_sqrt", "nfa", "enfa", "bfact", "bnfa")


def readme_table(sample: str) -> dict[str, dict[str, float]]:
    """The `fact analyze` table of the sample's README section: layer → column → value."""
    text = (ROOT / "sample_checkpoints" / "README.md").read_text()
    section = text.split(f"## `{sample}`", 1)[1].split("\n## ", 1)[0]
    lines = section[section.index("| layer |"):].splitlines()
    header = [cell.strip() for cell in lines[0].strip(" |").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip(" |").split("|")]
        rows[cells[0]] = {key: float(value) for key, value in zip(header[2:], cells[2:])}
    return rows


@pytest.mark.parametrize("sample", SAMPLES)
def test_the_sample_is_small_and_generalizes(sample):
    path = ROOT / "sample_checkpoints" / sample
    assert path.stat().st_size < 1_000_000
    checkpoint = load_checkpoint(path)
    training = checkpoint.training
    data = load_dataset(training["dataset"])
    model = checkpoint.build().eval()
    with torch.no_grad():
        test = float((model(data.x_test).argmax(-1) == data.y_test).double().mean())
        train = float((model(data.x_train).argmax(-1) == data.y_train).double().mean())
    assert test >= 0.99 and train == 1.0
    assert test == pytest.approx(training["test_acc"], abs=1e-9)
    assert train == pytest.approx(training["train_acc"], abs=1e-9)
    assert training["weight_decay"] > 0 and training["optimizer"] != "adamw"


@pytest.mark.parametrize("sample", SAMPLES)
def test_the_readme_table_is_what_analyze_computes(sample):
    checkpoint = load_checkpoint(ROOT / "sample_checkpoints" / sample)
    result = analyze(checkpoint, relations=list(COLUMNS))
    table = readme_table(sample)
    layers = {layer.name: layer for layer in result.layers}
    assert set(table) == set(layers)
    assert {"blocks.0.attn.in_proj:q", "blocks.0.attn.in_proj:k",
            "blocks.0.attn.in_proj:v"} <= set(layers)
    recorded = checkpoint.training["stationarity"]
    for name, row in table.items():
        layer = layers[name]
        key = re.sub(r":[qkv]$", "", name)
        if key == name:  # one matrix per parameter: the record's value is this layer's
            # (recorded in float64, analyzed in the weights' float32: ~1e-3 apart)
            assert layer.stationarity == pytest.approx(recorded[key], rel=5e-3), name
        assert layer.stationarity == pytest.approx(row["stationarity"], rel=0.05, abs=1e-3)
        for column in COLUMNS:  # the README prints three decimals
            assert layer.metrics[column]["pearson"] == pytest.approx(row[column], abs=6e-4), \
                (name, column)
    if checkpoint.model.get("norm") == "none":  # a critical point: FACT holds everywhere
        assert max(layer.stationarity for layer in result.layers) < 0.05
        assert min(layer.metrics[name]["pearson"] for layer in result.layers
                   for name in ("fact", "bfact")) > 0.9995
