"""A use computed once for the whole batch (a position lookup `pos(arange(T))` broadcast over the
samples): every relation must be the same at any batch size, and match the per-sample oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from factcli.data.datasets import Dataset
from factcli.engine.analysis import analyze
from factcli.engine.relations import DEFAULT_RELATIONS
from tests.oracle import naive_relations, relative

torch.set_num_threads(1)

SHARED_NOTE = "a use shared by the whole batch"


class BroadcastPositions(nn.Module):
    """Token and position embeddings, the positions looked up once per batch ((T, d), or
    (1, T, d) with `keepdim`) and broadcast; a Linear on every token; a causal running sum
    so that every position reaches the output."""

    def __init__(self, vocab=5, T=4, d=4, classes=3, keepdim=False):
        super().__init__()
        self.keepdim = keepdim
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(T, d)
        self.lin, self.head = nn.Linear(d, d), nn.Linear(d, classes)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1])
        x = self.embed(tokens) + self.pos(positions[None] if self.keepdim else positions)
        return self.head(torch.tanh(self.lin(x)).cumsum(1)[:, -1])


def data(n=4, T=4, vocab=5, classes=3, weighted=False):
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (n, T), generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    weights = torch.rand(n, generator=generator, dtype=torch.float64) + 0.5 if weighted else None
    return Dataset("tokens", tokens, labels, n_classes=classes,
                   weights=None if weights is None else weights / weights.sum())


def by_batch(model, dataset, loss, sizes):
    return {size: {layer.name: layer for layer in analyze(
        model, dataset, loss=loss, weight_decay=1e-3, batch_size=size).layers} for size in sizes}


@pytest.mark.parametrize("keepdim,weighted", [(False, False), (True, True)])
def test_a_broadcast_position_lookup_is_exact_at_every_batch_size(keepdim, weighted):
    """n = T = 4: the (T, d) lookup has an axis of the batch's size, which must not pass for
    the batch axis."""
    torch.manual_seed(0)
    model = BroadcastPositions(keepdim=keepdim).double().eval()
    dataset = data(weighted=weighted)
    results = by_batch(model, dataset, "cross_entropy", (1, 3, 4))
    for name, layer in results[4].items():
        for size in (1, 3):
            other = results[size][name]
            for key, matrix in layer.matrices.items():
                assert relative(matrix, other.matrices[key]) < 1e-12, (name, size, key)
        assert (SHARED_NOTE in layer.note) == (name == "pos"), (name, layer.note)
        assert SHARED_NOTE not in results[1][name].note  # one sample: nothing is shared
    modules = dict(model.named_modules())
    for name, layer in results[4].items():
        expected = naive_relations(model, modules[name], dataset.x_train, dataset.y_train,
                                   "cross_entropy", 1e-3, weights=dataset.weights)
        for key in ("nfm", "bnfm", *DEFAULT_RELATIONS):
            assert relative(layer.matrices[key], expected[key]) < 1e-10, (name, key)


def test_per_sample_lookups_are_not_taken_for_shared():
    """The built-in transformer's positions are looked up per sample: batched as before."""
    from factcli.models.archs import build_model

    torch.manual_seed(0)
    model = build_model({"arch": "transformer", "vocab": 5, "context": 4, "out_features": 3,
                         "d_model": 4, "heads": 2, "depth": 1, "d_mlp": 6, "output": "last",
                         "activation": "gelu", "bias": True}).double().eval()
    layers = by_batch(model, data(), "cross_entropy", (4,))[4]
    assert not [name for name, layer in layers.items() if SHARED_NOTE in layer.note]


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens).logits


def test_hf_gpt2_wpe_is_exact_at_every_batch_size():
    """GPT-2 looks `wpe` up as (1, T, d) for the whole batch."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=7, n_positions=3, n_embd=4, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 7, (4, 3), generator=generator)
    dataset = Dataset("tokens", tokens, torch.randint(0, 7, (4, 3), generator=generator),
                      n_classes=7)
    results = by_batch(model, dataset, "next_token", (1, 4))
    assert SHARED_NOTE in results[4]["transformer.wpe"].note
    for name, layer in results[4].items():
        for key, matrix in layer.matrices.items():
            # 1e-9: matrix powers of rank-deficient GG amplify the summation order's round-off
            assert relative(matrix, results[1][name].matrices[key]) < 1e-9, (name, key)
    wpe = results[4]["transformer.wpe"]
    expected = naive_relations(Logits(model), model.transformer.wpe, tokens, dataset.y_train,
                               "next_token", 1e-3)
    for key in ("nfm", "bnfm", *DEFAULT_RELATIONS):
        assert relative(wpe.matrices[key], expected[key]) < 1e-10, key


def test_the_probes_of_the_shared_use_test_may_run_one_at_a_time(monkeypatch):
    """Blocks of probes within JACOBIAN_BUDGET (an LM's logits per probe are large): the same
    answer with one probe per backward. T = n = 6, so the shared (T, d) use has an axis of the
    batch's size."""
    from factcli.engine import shared

    generator = torch.Generator().manual_seed(4)
    per_sample = torch.randn(6, 6, 3, dtype=torch.float64, generator=generator,
                             requires_grad=True)
    common = torch.randn(6, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    output = torch.tanh(per_sample + common).cumsum(1)[:, -1]
    uses, channels = [per_sample, common], [2, 1]
    together = shared.shared_uses(output, uses, channels)
    monkeypatch.setattr(shared, "JACOBIAN_BUDGET", 1)
    assert shared.shared_uses(output, uses, channels) == together == [False, True]


def test_merged_shards_of_a_shared_use_equal_the_single_run(tmp_path):
    """fact merge of --shard parts: the same matrices, metrics and layer notes (the shared
    use's included) as one run over all samples."""
    import h5py

    from factcli.engine.analysis import prepare
    from factcli.errors import FactError
    from factcli.io.partial import merge_partials, write_partial

    torch.manual_seed(0)
    model = BroadcastPositions().double().eval()
    dataset = data(n=6)
    options = dict(loss="cross_entropy", weight_decay=1e-3, batch_size=2)
    single = analyze(model, dataset, **options)
    plan = prepare(model, dataset, **options)
    paths = [tmp_path / f"part-{index}.h5" for index in range(2)]
    for index, (path, part) in enumerate(zip(paths, (slice(0, 3), slice(3, 6)))):
        write_partial(path, plan, plan.accumulate(part), (index, 2), part)
    merged = merge_partials([str(path) for path in paths])
    assert SHARED_NOTE in single.layer("pos").note
    for one, layer in zip(single.layers, merged.layers, strict=True):
        assert layer.note == one.note, layer.name
        for relation, values in layer.metrics.items():
            assert values == pytest.approx(one.metrics[relation], rel=1e-10, nan_ok=True), \
                (layer.name, relation)
        for key, matrix in layer.matrices.items():
            assert relative(matrix, one.matrices[key]) < 1e-12, (layer.name, key)
    with h5py.File(paths[1], "r+") as handle:
        handle.attrs["shared"] = '{"pos": 1}'
    with pytest.raises(FactError, match="'shared' must be a JSON list of layer names"):
        merge_partials([str(path) for path in paths])


def test_a_sketch_leaves_a_shared_use_exact_with_no_error_bar():
    """In a sketched analysis the shared use's GG is still summed sample by sample: its AGOP
    family equals the exact one, with s.e. 0 and no "no s.e." note; the other layers are
    sketched, with error bars."""
    torch.manual_seed(0)
    model = BroadcastPositions().double().eval()
    dataset = data(n=6)
    sketch, exact = (analyze(model, dataset, loss="cross_entropy", weight_decay=1e-3,
                             batch_size=3, agop_probes=probes) for probes in (16, "exact"))
    pos = sketch.layer("pos")
    assert SHARED_NOTE in pos.note and "no s.e." not in pos.note
    for relation in ("agop", "nfa", "bagop", "bnfa"):
        values = pos.metrics[relation]
        assert values["pearson_se"] == values["cosine_se"] == 0.0, relation
        assert values["pearson"] == pytest.approx(exact.layer("pos").metrics[relation]["pearson"],
                                                  abs=1e-12), relation
    assert sketch.layer("lin").metrics["agop"]["pearson_se"] > 0
