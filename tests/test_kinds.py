"""Every kind of weight matrix against the naive oracle, and FACT at a critical point for each.

Attention is checked against a twin that computes the same function with explicit q/k/v/o
Linear layers holding the same weights: the oracle (which re-implements a module as explicit
rows) runs on the twin, the engine on the model with `nn.MultiheadAttention`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from factcli.data.datasets import Dataset
from factcli.engine.analysis import analyze
from factcli.engine.factored import Factored
from factcli.engine.relations import DEFAULT_RELATIONS, FORWARD
from tests.critical import train_to_critical
from tests.oracle import naive_relations, relative


def as_dense(matrix):
    return matrix.dense() if isinstance(matrix, Factored) else matrix


class Conv1D(nn.Module):
    """The HF `transformers` Conv1D, written here: weight stored in × out, forward = addmm."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], self.nf)


class CNN(nn.Module):
    """Two Conv2d (one strided, one padded) and a Linear head, on 1×7×7 inputs."""

    def __init__(self, outputs=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.Tanh(),
                                      nn.Conv2d(3, 2, 3, padding=1), nn.Tanh())
        self.head = nn.Linear(18, outputs)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Attention(nn.Module):
    """Self-attention over (batch, tokens, d) inputs, then a mean over tokens and a head."""

    def __init__(self, batch_first=True, d=4, heads=2, outputs=3):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(d, heads, batch_first=batch_first)
        self.head = nn.Linear(d, outputs)

    def forward(self, x):
        h = x if self.batch_first else x.transpose(0, 1)
        h = torch.tanh(self.attn(h, h, h, need_weights=False)[0])
        return self.head(h.mean(dim=1 if self.batch_first else 0))


def explicit_attention(q, k, v, o, x, heads, mask=None):
    """Multi-head attention of batch-first x with explicit projections (the twin's); `mask`
    (T×T, True = not attended) as nn.MultiheadAttention's boolean attn_mask."""
    b, t, d = x.shape

    def split(z):
        return z.view(b, t, heads, d // heads).transpose(1, 2)

    scores = split(q(x)) @ split(k(x)).transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores.masked_fill(mask, -math.inf)
    mixed = (scores.softmax(dim=-1) @ split(v(x))).transpose(1, 2).reshape(b, t, d)
    return o(mixed)


class Projections(nn.Module):
    """q, k, v, o as Linear layers copied from an nn.MultiheadAttention."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        d = attention.embed_dim
        self.heads = attention.num_heads
        for index, name in enumerate("qkv"):
            layer = nn.Linear(d, d).double()
            layer.weight.data = attention.in_proj_weight.data[index * d:(index + 1) * d].clone()
            layer.bias.data = attention.in_proj_bias.data[index * d:(index + 1) * d].clone()
            setattr(self, name, layer)
        self.o = nn.Linear(d, d).double()
        self.o.load_state_dict(attention.out_proj.state_dict())

    def forward(self, x, mask=None):
        return explicit_attention(self.q, self.k, self.v, self.o, x, self.heads, mask)


class AttentionTwin(nn.Module):
    def __init__(self, model: Attention):
        super().__init__()
        self.attn = Projections(model.attn)
        self.head = nn.Linear(1, 1)
        self.head = model.head

    def forward(self, x):
        return self.head(torch.tanh(self.attn(x)).mean(dim=1))


class Encoder(nn.Module):
    """nn.TransformerEncoderLayer with its default batch_first=False, on (batch, tokens, d)."""

    def __init__(self, d=4, outputs=3):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(d, 2, dim_feedforward=6, dropout=0.0)
        self.head = nn.Linear(d, outputs)

    def forward(self, x):
        return self.head(self.block(x.transpose(0, 1)).mean(dim=0))


class EncoderTwin(nn.Module):
    def __init__(self, model: Encoder):
        super().__init__()
        block = model.block
        self.attn = Projections(block.self_attn)
        self.linear1, self.linear2 = block.linear1, block.linear2
        self.norm1, self.norm2, self.head = block.norm1, block.norm2, model.head

    def forward(self, x):
        h = self.norm1(x + self.attn(x))
        h = self.norm2(h + self.linear2(torch.relu(self.linear1(h))))
        return self.head(h.mean(dim=1))


class HFBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(6, 4), Conv1D(3, 6)

    def forward(self, x):
        return self.c_proj(torch.tanh(self.c_fc(x))).mean(dim=1)


class TiedEmbedding(nn.Module):
    """Tokens → embedding → a mixing Linear → mean → output head tied to the embedding."""

    def __init__(self, vocab=7, d=4):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens):
        return self.lm_head(torch.tanh(self.mix(self.wte(tokens))).mean(dim=1))


class SharedLinear(nn.Module):
    """One Linear applied twice."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        return self.out(torch.tanh(self.shared(h)) + h)


ATTENTION_NAMES = {"attn.in_proj:q": "attn.q", "attn.in_proj:k": "attn.k",
                   "attn.in_proj:v": "attn.v", "attn.out_proj": "attn.o"}
ENCODER_NAMES = {"block.self_attn.in_proj:q": "attn.q", "block.self_attn.in_proj:k": "attn.k",
                 "block.self_attn.in_proj:v": "attn.v", "block.self_attn.out_proj": "attn.o",
                 "block.linear1": "linear1", "block.linear2": "linear2", "head": "head"}


def data_for(x, classes=3, weighted=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (len(x),), generator=generator)
    weights = None
    if weighted:
        weights = torch.rand(len(x), generator=generator, dtype=torch.float64) + 0.5
        weights = weights / weights.sum()
    return Dataset("test", x, labels, n_classes=classes, weights=weights)


def check_against_oracle(model, data, loss, batch_size, twin=None, names=None, decay=3e-3):
    """Every matrix of every analyzed layer to 1e-10 relative; returns the analysis."""
    result = analyze(model, data, loss=loss, weight_decay=decay, batch_size=batch_size)
    reference = twin if twin is not None else model
    modules = dict(reference.named_modules())
    targets = data.targets(loss)
    for layer in result.layers:
        module = modules[(names or {}).get(layer.name, layer.name)]
        expected = naive_relations(reference, module, data.x_train, targets, loss, decay,
                                   weights=data.weights)
        for name in ("nfm", "bnfm", *DEFAULT_RELATIONS):
            assert relative(layer.matrices[name], expected[name]) < 1e-10, (layer.name, name)
        assert layer.stationarity == pytest.approx(expected["stationarity"], rel=1e-10)
    return result


@pytest.mark.parametrize("loss,weighted", [("cross_entropy", False), ("mse", True)])
def test_cnn_matches_the_oracle(loss, weighted):
    torch.manual_seed(0)
    model = CNN().double().eval()
    data = data_for(torch.randn(7, 1, 7, 7, dtype=torch.float64), weighted=weighted)
    result = check_against_oracle(model, data, loss, batch_size=3)
    assert [(layer.name, layer.kind, layer.in_features, layer.out_features)
            for layer in result.layers] == [("features.0", "conv2d", 9, 3),
                                            ("features.2", "conv2d", 27, 2),
                                            ("head", "linear", 18, 3)]


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_matches_a_twin_with_explicit_projections(batch_first):
    torch.manual_seed(1)
    model = Attention(batch_first).double().eval()
    data = data_for(torch.randn(6, 3, 4, dtype=torch.float64))
    twin = AttentionTwin(model).eval()
    assert torch.allclose(model(data.x_train), twin(data.x_train), atol=1e-12)
    result = check_against_oracle(model, data, "cross_entropy", batch_size=4, twin=twin,
                                  names=ATTENTION_NAMES)
    assert [layer.name for layer in result.layers] == [*ATTENTION_NAMES, "head"]
    assert all(layer.kind == "attention" for layer in result.layers[:3])


@pytest.mark.parametrize("batch_size", [3, 2])  # = the sequence length, and not
def test_transformer_encoder_layer_sequence_first(batch_size):
    torch.manual_seed(2)
    model = Encoder().double().eval()
    data = data_for(torch.randn(6, 3, 4, dtype=torch.float64))
    twin = EncoderTwin(model).eval()
    assert torch.allclose(model(data.x_train), twin(data.x_train), atol=1e-12)
    result = check_against_oracle(model, data, "cross_entropy", batch_size=batch_size,
                                  twin=twin, names=ENCODER_NAMES)
    assert {layer.name for layer in result.layers} == set(ENCODER_NAMES)


def test_hf_conv1d_block_matches_the_oracle():
    torch.manual_seed(3)
    model = HFBlock().double().eval()
    result = check_against_oracle(model, data_for(torch.randn(6, 3, 4, dtype=torch.float64)),
                                  "mse", batch_size=4)
    assert [(layer.name, layer.kind, layer.in_features, layer.out_features)
            for layer in result.layers] == [("c_fc", "conv1d_hf", 4, 6),
                                            ("c_proj", "conv1d_hf", 6, 3)]


def test_embedding_with_a_tied_head():
    """One layer `wte`: FACT and stationarity from the full gradient (both uses), the AGOP
    family from the lookups (W = weightᵀ on one-hot tokens); the head is not a second layer."""
    torch.manual_seed(4)
    model = TiedEmbedding().double().eval()
    tokens = torch.randint(0, 7, (6, 3))
    data = data_for(tokens, classes=7)
    result = check_against_oracle(model, data, "cross_entropy", batch_size=4)
    assert [layer.name for layer in result.layers] == ["wte", "mix"]
    wte = result.layer("wte")
    assert (wte.kind, wte.in_features, wte.out_features) == ("embedding", 7, 4)
    assert "tied" in wte.note and "1 as Wᵀ" in wte.note
    # the oracle's FACT counts both uses; the lookups alone give a different (wrong) sum
    targets = data.targets("cross_entropy")
    expected = naive_relations(model, model.wte, tokens, targets, "cross_entropy", 3e-3)
    assert relative(expected["fact_uses"], expected["fact"]) > 1e-3


def test_embedding_forward_relations_beyond_max_dense_are_factored():
    """vocab 7 > max_dense 5: the forward (vocab×vocab) relations are thin factors of the same
    matrices, tied head included; nothing is dropped (its backward side is d×d)."""
    torch.manual_seed(4)
    model = TiedEmbedding().double().eval()
    data = data_for(torch.randint(0, 7, (6, 3)), classes=7)
    dense, thin = (analyze(model, data, loss="cross_entropy", weight_decay=1e-3, max_dense=limit)
                   for limit in (None, 5))
    wte = thin.layer("wte")
    assert set(wte.metrics) == set(DEFAULT_RELATIONS) and "forward side 7 > --max-dense" in wte.note
    forward = ("nfm", *set(FORWARD) & set(DEFAULT_RELATIONS))
    assert all(isinstance(wte.matrices[name], Factored) for name in forward)
    for name in ("nfm", "bnfm", *DEFAULT_RELATIONS):
        assert relative(as_dense(wte.matrices[name]), dense.layer("wte").matrices[name]) < 1e-12
        assert wte.metrics.get(name) == pytest.approx(dense.layer("wte").metrics.get(name),
                                                      abs=1e-12, nan_ok=True)


def test_a_linear_used_twice():
    torch.manual_seed(5)
    model = SharedLinear().double().eval()
    result = check_against_oracle(model, data_for(torch.randn(7, 4, dtype=torch.float64)),
                                  "cross_entropy", batch_size=3)
    assert result.layer("shared").uses == 2


def test_an_unrecognised_use_drops_the_per_use_relations():
    """A weight also read by an operation capture does not follow: no AGOP family, FACT kept."""

    class Scaled(SharedLinear):
        def forward(self, x):
            h = torch.tanh(self.inp(x))
            return self.out(F.linear(h, self.shared.weight * 0.5))

    torch.manual_seed(6)
    model = Scaled().double().eval()
    data = data_for(torch.randn(5, 4, dtype=torch.float64))
    result = analyze(model, data, loss="cross_entropy", weight_decay=1e-3)
    shared = result.layer("shared")
    assert "agop" not in shared.metrics and "enfa" not in shared.metrics
    assert "fact" in shared.metrics and "mul" in shared.note
    assert any("shared: AGOP" in message for message in result.warnings)


def test_integer_inputs_stay_integer_and_model_outputs_are_unwrapped():
    class Wrapped(TiedEmbedding):
        def forward(self, tokens):
            return {"logits": super().forward(tokens), "hidden": None}

    class Tupled(TiedEmbedding):
        def forward(self, tokens):
            return (super().forward(tokens), tokens)

    torch.manual_seed(4)
    data = data_for(torch.randint(0, 7, (6, 3)), classes=7)
    model = TiedEmbedding().double()
    plain = analyze(model, data, loss="cross_entropy", weight_decay=1e-3)
    for cls in (Wrapped, Tupled):
        wrapped = cls().double()
        wrapped.load_state_dict(model.state_dict())
        other = analyze(wrapped, data, loss="cross_entropy", weight_decay=1e-3)
        for a, b in zip(plain.layers, other.layers):
            assert relative(b.matrices["fact"], a.matrices["fact"]) < 1e-12


def test_a_model_whose_output_is_not_a_tensor_is_one_error():
    from factcli.errors import FactError

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return "not a tensor"

    with pytest.raises(FactError, match="returned a str, not a tensor"):
        analyze(Text(), data_for(torch.randn(4, 4)), loss="mse", weight_decay=1e-3)


# -- the theorem on each kind -------------------------------------------------------------

class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Tanh(),
                                      nn.Conv2d(2, 2, 3, padding=1), nn.Tanh())
        self.head = nn.Linear(18, 2)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TinyAttention(nn.Module):
    """Embedding-free self-attention block (batch_first=False inside) with a Linear head."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = x.transpose(0, 1)
        h = torch.tanh(self.attn(h, h, h, need_weights=False)[0] + h)
        return self.head(h.mean(dim=0))


@pytest.mark.parametrize("factory,shape", [(TinyCNN, (1, 7, 7)), (TinyAttention, (3, 4))])
def test_fact_holds_at_a_critical_point_of_each_kind(factory, shape):
    torch.manual_seed(7)
    model = factory().double()
    x = torch.randn(10, *shape, dtype=torch.float64)
    y = torch.randn(10, 2, dtype=torch.float64)
    decay = 3e-2
    residual = train_to_critical(model, x, y, decay, steps=300)
    assert residual < 1e-9
    result = analyze(model, Dataset("test", x, y), loss="mse", weight_decay=decay)
    assert len(result.layers) == (3 if factory is TinyCNN else 5)
    for layer in result.layers:
        assert layer.stationarity < 1e-6, layer.name
        for name in ("fact", "bfact"):
            assert layer.metrics[name]["rel_err"] < 1e-6, (layer.name, name)


def test_the_fact_family_alone_needs_only_the_parameters_gradient():
    """No per-use relation asked for: no g, no G, the same FACT, bFACT and stationarity."""
    torch.manual_seed(0)
    model = TiedEmbedding().double()
    data = data_for(torch.randint(0, 7, (6, 3)), classes=7, weighted=True)
    full = analyze(model, data, loss="cross_entropy", weight_decay=1e-3, batch_size=4)
    names = ["fact", "fact_sym", "fact_sqrt", "bfact", "bfact_sym", "bfact_sqrt"]
    alone = analyze(model, data, loss="cross_entropy", weight_decay=1e-3, batch_size=4,
                    relations=names)
    for a, b in zip(full.layers, alone.layers):
        assert b.stationarity == pytest.approx(a.stationarity, rel=1e-12)
        assert list(b.metrics) == names
        for name in names:
            assert relative(b.matrices[name], a.matrices[name]) < 1e-12, (a.name, name)
