"""Sequence losses (next_token, per-token mse and cross_entropy) against loops written out in
float64, and the engine on a causal transformer against the naive oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from factcli.data.datasets import Dataset
from factcli.engine.analysis import analyze
from factcli.engine.losses import check_loss, per_sample_loss, sample_accuracy
from factcli.engine.relations import DEFAULT_RELATIONS
from factcli.errors import FactError
from factcli.models.archs import build_model
from tests.oracle import naive_relations, relative
from tests.test_kinds import Projections

torch.set_num_threads(1)


def ragged(n=5, T=6, V=7, seed=0):
    """Float64 logits and next-token ids with ignored positions: a ragged right padding, one
    ignored position inside a sample, and one sample with no predicted position at all."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, T, V, generator=generator, dtype=torch.float64) * 2
    ids = torch.randint(0, V, (n, T), generator=generator)
    lengths = [T, 4, 1, 0, 5][:n]
    for i, length in enumerate(lengths):
        ids[i, length:] = -100
    ids[0, 2] = -100
    return logits, ids


def loop_loss(name, logits, ids):
    """ℓ_i with Python floats: per position, −log softmax (math.exp/log) or the one-hot mse."""
    result = []
    for rows, targets in zip(logits.tolist(), ids.tolist()):
        terms = []
        for row, y in zip(rows, targets):
            if y == -100:
                continue
            if name == "mse":
                terms.append(sum((v - (1.0 if j == y else 0.0)) ** 2
                                 for j, v in enumerate(row)) / len(row))
            else:
                top = max(row)
                terms.append(math.log(sum(math.exp(v - top) for v in row)) + top - row[y])
        result.append(sum(terms) / len(terms) if terms else 0.0)
    return torch.tensor(result, dtype=torch.float64)


@pytest.mark.parametrize("name", ["next_token", "causal_lm", "cross_entropy", "mse"])
def test_per_position_losses_match_a_loop(name):
    logits, ids = ragged()
    got = per_sample_loss(name, logits, ids)
    expected = loop_loss(check_loss(name), logits, ids)
    assert got.shape == (5,)
    assert got[3] == 0  # no predicted position
    assert float((got - expected).abs().max()) < 1e-10


def test_an_unpredicted_position_does_not_move_the_gradient():
    logits, ids = ragged()
    logits.requires_grad_(True)
    (gradient,) = torch.autograd.grad(per_sample_loss("next_token", logits, ids).sum(), logits)
    assert bool((gradient[ids == -100] == 0).all()) and bool((gradient[ids != -100] != 0).any())


def test_per_token_mse_with_real_targets_is_the_mean_over_positions_and_outputs():
    logits, _ = ragged()
    targets = torch.randn_like(logits)
    got = per_sample_loss("mse", logits, targets)
    expected = [sum((a - b) ** 2 for a, b in zip(row.flatten().tolist(),
                                                  target.flatten().tolist())) / row.numel()
                for row, target in zip(logits, targets)]
    assert float((got - torch.tensor(expected, dtype=torch.float64)).abs().max()) < 1e-12


def test_one_prediction_per_sample_is_unchanged_bit_for_bit():
    generator = torch.Generator().manual_seed(1)
    output = torch.randn(9, 4, generator=generator)
    labels = torch.randint(0, 4, (9,), generator=generator)
    hot = F.one_hot(labels, 4).float()
    assert torch.equal(per_sample_loss("mse", output, hot), (output - hot).pow(2).mean(dim=1))
    assert torch.equal(per_sample_loss("cross_entropy", output, labels),
                       F.cross_entropy(output, labels, reduction="none"))


@pytest.mark.parametrize("output,target,needle", [
    (torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), "next_token needs model outputs"),
    (torch.zeros(3, 4, 5), torch.full((3, 4), 5), "outside the model's 5 outputs"),
    (torch.zeros(3, 4, 5), torch.full((3, 4), -3), "outside the model's 5 outputs")])
def test_bad_sequence_targets_are_one_line(output, target, needle):
    with pytest.raises(FactError, match=needle):
        per_sample_loss("next_token", output, target)


def test_unknown_losses_are_refused():
    with pytest.raises(FactError, match="next_token"):
        check_loss("perplexity")


def test_token_accuracy_is_the_share_of_predicted_positions():
    logits, ids = ragged()
    got = sample_accuracy(logits, ids, 7)
    for i in range(len(ids)):
        kept = [t for t in range(ids.shape[1]) if ids[i, t] != -100]
        right = sum(int(logits[i, t].argmax()) == int(ids[i, t]) for t in kept)
        assert float(got[i]) == (right / len(kept) if kept else 0.0)
    assert sample_accuracy(logits, ids, 9) is None  # not scores over the labels' classes
    assert sample_accuracy(logits.reshape(5, -1), ids[:, 0], 7) is None


# ------------------------------------------------------------------ the engine on a causal LM

TINY = {"arch": "transformer", "vocab": 5, "context": 4, "out_features": 5, "d_model": 4,
        "heads": 2, "depth": 1, "d_mlp": 6, "output": "all", "activation": "gelu",
        "bias": True}


class CausalTwin(nn.Module):
    """The same function as models/transformer.py with explicit q/k/v/o Linear layers (which
    the oracle re-implements as rows); the other modules are the model's own."""

    def __init__(self, model):
        super().__init__()
        self.embed, self.pos, self.ln_f, self.head = model.embed, model.pos, model.ln_f, \
            model.head
        self.blocks = nn.ModuleList()
        for block in model.blocks:
            twin = nn.Module()
            twin.ln1, twin.ln2, twin.mlp = block.ln1, block.ln2, block.mlp
            twin.attn = Projections(block.attn)
            self.blocks.append(twin)

    def forward(self, tokens):
        T = tokens.shape[1]
        x = self.embed(tokens) + self.pos(torch.arange(T).expand(len(tokens), -1))
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        for block in self.blocks:
            x = x + block.attn(block.ln1(x), mask)
            x = x + block.mlp(block.ln2(x))
        return self.head(self.ln_f(x))


def twin_name(name):
    return name.replace("attn.in_proj:", "attn.").replace("attn.out_proj", "attn.o")


@pytest.mark.parametrize("loss,weighted", [("next_token", False), ("next_token", True),
                                           ("mse", False)])
def test_per_position_relations_of_a_transformer_match_the_oracle(loss, weighted):
    torch.manual_seed(0)
    model = build_model(TINY).double().eval()
    twin = CausalTwin(model).eval()
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 5, (5, 4), generator=generator)
    _, ids = ragged(5, 4, 5, seed=4)
    weights = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5 if weighted else None
    data = Dataset("test", tokens, ids, n_classes=5,
                   weights=None if weights is None else weights / weights.sum())
    assert torch.allclose(model(tokens), twin(tokens), atol=1e-12)
    decay = 3e-3
    result = analyze(model, data, loss=loss, weight_decay=decay, batch_size=2)
    assert len(result.layers) == 9
    modules = dict(twin.named_modules())
    for layer in result.layers:
        expected = naive_relations(twin, modules[twin_name(layer.name)], tokens, ids, loss,
                                   decay, weights=data.weights)
        for name in ("nfm", "bnfm", *DEFAULT_RELATIONS):
            assert relative(layer.matrices[name], expected[name]) < 1e-10, (layer.name, name)
        assert layer.stationarity == pytest.approx(expected["stationarity"], rel=1e-10)
    w = data.weights if weighted else torch.full((5,), 0.2, dtype=torch.float64)
    with torch.no_grad():
        logits = model(tokens)
    assert result.info["data_loss"] == pytest.approx(float(loop_loss(loss, logits, ids) @ w),
                                                     rel=1e-12)
    assert result.info["accuracy"] == pytest.approx(float(sample_accuracy(logits, ids, 5) @ w))


def test_outputs_that_are_not_class_scores_report_no_accuracy():
    torch.manual_seed(0)
    model = build_model({**TINY, "out_features": 6}).double().eval()  # 6 scores, 5 classes
    tokens = torch.randint(0, 5, (4, 4))
    data = Dataset("test", tokens, torch.randint(0, 5, (4, 4)), n_classes=5)
    result = analyze(model, data, loss="cross_entropy", weight_decay=1e-3, relations=["fact"])
    assert math.isnan(result.info["accuracy"]) and math.isfinite(result.info["data_loss"])


def test_next_token_on_one_label_per_sample_is_one_line():
    torch.manual_seed(0)
    model = build_model({**TINY, "output": "last"}).double()
    data = Dataset("modular", torch.randint(0, 5, (4, 4)), torch.randint(0, 5, (4,)),
                   n_classes=5)
    with pytest.raises(FactError, match="next-token targets"):
        analyze(model, data, loss="next_token", weight_decay=1e-3)


def test_fact_train_a_causal_lm_and_analyze_it():
    """`train` on per-position targets builds output=all, records next_token (the alias
    resolved) and exact final metrics; analyze reads all of it back from the checkpoint."""
    from factcli.io.checkpoint import Checkpoint
    from factcli.training.loop import train

    generator = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 6, (12, 5), generator=generator)
    ids = stream[:, 1:].clone()
    ids[:3, 2:] = -100
    data = Dataset("tokens", stream[:, :-1], ids, n_classes=6, info={"vocab": 6})
    result = train(arch="transformer", dataset="tokens", data=data, loss="causal_lm",
                   width=8, heads=2, depth=1, epochs=3, batch_size=5, lr=0.01,
                   optimizer="adam", weight_decay=1e-3, device="cpu", autosave_seconds=None)
    checkpoint = result.checkpoint
    assert checkpoint.model["output"] == "all" and checkpoint.model["vocab"] == 6
    assert checkpoint.training["loss"] == "next_token"
    model = checkpoint.build().double().eval()
    with torch.no_grad():
        logits = model(data.x_train)
    assert checkpoint.training["train_loss"] == pytest.approx(
        float(loop_loss("next_token", logits, ids).mean()), rel=1e-10)
    assert checkpoint.training["train_acc"] == pytest.approx(
        float(sample_accuracy(logits, ids, 6).mean()), rel=1e-12)
    analysis = analyze(Checkpoint(checkpoint.model, checkpoint.state_dict, checkpoint.training),
                       data, relations=["fact", "bfact"], dtype="float64")
    assert analysis.info["loss"] == "next_token"
    assert analysis.info["data_loss"] == pytest.approx(checkpoint.training["train_loss"],
                                                       rel=1e-10)
