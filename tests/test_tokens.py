"""Token datasets: text: as byte windows, file:tokens.npy and .npz windows with attention
masks; ids stay integer into the model; `fact train`/`analyze`/`data show` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from factcli.data.datasets import load_dataset
from factcli.engine.analysis import analyze
from factcli.engine.losses import per_sample_loss
from factcli.errors import FactError
from tests.helpers import fact_inprocess
from tests.test_sequence import loop_loss

torch.set_num_threads(1)

TEXT = b"It was the best of times, it was the worst of times.\n\xff\x00 bytes too"


@pytest.mark.parametrize("T,stride", [(8, None), (5, 3), (1, 1)])
def test_text_windows_are_the_file_bytes_and_their_next_bytes(tmp_path, T, stride):
    path = tmp_path / "book.txt"
    path.write_bytes(TEXT)
    spec = f"text:{path},T={T}" + ("" if stride is None else f",stride={stride}")
    data = load_dataset(spec)
    step = stride or T
    starts = range(0, len(TEXT) - T, step)
    assert data.x_train.dtype == data.y_train.dtype == torch.int64
    assert data.x_train.tolist() == [list(TEXT[s:s + T]) for s in starts]
    assert data.y_train.tolist() == [list(TEXT[s + 1:s + T + 1]) for s in starts]
    assert data.n_classes == data.info["vocab"] == 256 and data.info["T"] == T
    assert data.info["windows"] == len(starts) and data.info["stride"] == step


def test_a_npy_of_windows_gives_inputs_and_next_tokens(tmp_path):
    windows = np.random.default_rng(0).integers(0, 11, (7, 6)).astype(np.int32)
    np.save(tmp_path / "tokens.npy", windows)
    data = load_dataset(f"file:{tmp_path / 'tokens.npy'}")
    assert torch.equal(data.x_train, torch.from_numpy(windows[:, :-1]).long())
    assert torch.equal(data.y_train, torch.from_numpy(windows[:, 1:]).long())
    assert data.n_classes == int(windows.max()) + 1
    assert load_dataset(f"file:{tmp_path / 'tokens.npy'},vocab=50").n_classes == 50


def test_an_attention_mask_ignores_its_positions_in_the_loss(tmp_path):
    """Ragged masks in an .npz: ℓ_i averages exactly the positions the mask keeps (a loop over
    the mask itself, not over the -100 the dataset writes)."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, (4, 5))
    y = rng.integers(0, 6, (4, 5))
    mask = np.ones((4, 5), dtype=np.int8)
    mask[1, 2:], mask[2, :] , mask[3, 0] = 0, 0, 0
    np.savez(tmp_path / "lm.npz", x_train=x, y_train=y, attention_mask=mask)
    data = load_dataset(f"file:{tmp_path / 'lm.npz'}")
    assert data.x_train.dtype == torch.int64 and torch.equal(data.x_train, torch.from_numpy(x))
    logits = torch.randn(4, 5, 6, dtype=torch.float64)
    got = per_sample_loss("next_token", logits, data.y_train)
    ids = torch.from_numpy(np.where(mask == 1, y, -100))
    assert float((got - loop_loss("next_token", logits, ids)).abs().max()) < 1e-10
    assert float(got[2]) == 0.0 and data.info["predicted"] == int(mask.sum())


def test_integer_ids_reach_the_model_as_integers(tmp_path):
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(6, 3)
            self.head = nn.Linear(3, 6)

        def forward(self, tokens):
            seen.append(tokens.dtype)
            return self.head(self.embed(tokens))

    np.save(tmp_path / "t.npy", np.random.default_rng(2).integers(0, 6, (5, 4)))
    result = analyze(Recorder().double(), f"file:{tmp_path / 't.npy'}", loss="next_token",
                     weight_decay=1e-3, relations=["fact"])
    assert seen and set(seen) == {torch.int64}
    assert [layer.name for layer in result.layers] == ["embed", "head"]


def test_ids_beyond_the_model_vocabulary_are_one_line(tmp_path):
    from factcli.models.archs import build_model

    model = build_model({"arch": "transformer", "vocab": 4, "context": 5, "out_features": 9,
                         "d_model": 4, "heads": 2, "depth": 1, "output": "all"})
    np.save(tmp_path / "t.npy", np.arange(18).reshape(3, 6) % 9)
    with pytest.raises(FactError, match="token ids 0..8; the model embeds ids 0..3"):
        analyze(model, f"file:{tmp_path / 't.npy'}", loss="next_token", weight_decay=1e-3)


@pytest.mark.parametrize("make,needle", [
    (lambda p: np.save(p / "f.npy", np.zeros((3, 4))), "integer token windows"),
    (lambda p: np.save(p / "f.npy", -np.ones((3, 4), dtype=int)), "negative token id -1"),
    (lambda p: np.save(p / "f.npy", np.ones((3, 1), dtype=int)), "shape (n, T+1)"),
    (lambda p: np.savez(p / "f.npz", x_train=np.ones((2, 3), int), y_train=np.ones((2, 3), int),
                        attention_mask=np.full((2, 3), 2)), "0 (ignore) and 1"),
    (lambda p: np.savez(p / "f.npz", x_train=np.ones((2, 3), int), y_train=np.ones((2, 3), int),
                        attention_mask=np.ones((2, 2), int)), "one value per token"),
    (lambda p: np.savez(p / "f.npz", x_train=np.ones((2, 3), int),
                        y_train=np.full((2, 3), -7)), "other than -100")])
def test_bad_token_files_are_one_line(tmp_path, make, needle):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(FactError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace("+", r"\+")):
        load_dataset(f"file:{path}")


@pytest.mark.parametrize("spec,needle", [
    ("text:{dir}", "not a regular file"), ("text:{dir}/none.txt", "not found"),
    ("text:{dir}/empty.txt", "holds 0 bytes"), ("text:{dir}/book.txt,T=1000", "at least 1001"),
    ("text:{dir}/book.txt,tokenizer=gpt2", "unknown tokenizer 'gpt2'"),
    ("text:{dir}/book.txt,T=0", "T in"), ("text:{dir}/book.txt,T=8,vocab=9", "unknown option"),
    ("text:", "needs a path")])
def test_bad_text_specs_are_one_line(tmp_path, spec, needle):
    (tmp_path / "book.txt").write_bytes(TEXT)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(FactError, match=needle):
        load_dataset(spec.format(dir=tmp_path))


def test_the_fingerprint_follows_the_windows(tmp_path):
    (tmp_path / "a.txt").write_bytes(TEXT)
    (tmp_path / "b.txt").write_bytes(TEXT.replace(b"best", b"BEST"))
    prints = {load_dataset(f"text:{tmp_path / name},T={T}").fingerprint()
              for name in ("a.txt", "b.txt") for T in (4, 5)}
    assert len(prints) == 4


def test_fact_train_on_text_then_analyze_and_show(tmp_path):
    (tmp_path / "book.txt").write_bytes(TEXT * 2)
    spec = f"text:{tmp_path / 'book.txt'},T=4,stride=6"
    out = tmp_path / "lm.pt"
    trained = fact_inprocess("train", "transformer", "--dataset", spec, "--loss", "next_token",
                             "--width", "8", "--heads", "2", "--depth", "1", "--epochs", "1",
                             "--optimizer", "adam", "--lr", "0.01", "--weight-decay", "1e-3",
                             "--device", "cpu", "--out", out, "-q")
    assert trained.exit_code == 0, trained.output
    analyzed = fact_inprocess("analyze", out, "-f", "jsonl", "--relations", "fact,bfact,agop")
    assert analyzed.exit_code == 0, analyzed.output
    rows = [json.loads(line) for line in analyzed.stdout.splitlines()]
    assert {row["layer"] for row in rows} >= {"embed", "pos", "blocks.0.attn.in_proj:q", "head"}
    assert all(row["pearson"] is not None for row in rows if row["relation"] == "fact")
    shown = fact_inprocess("data", "show", spec, "-f", "jsonl")
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert (summary["vocab"], summary["T"], summary["windows"], summary["input_dtype"]) == \
        (256, 4, (2 * len(TEXT) - 5) // 6 + 1, "int64")


@pytest.mark.parametrize("args,needle", [
    (["mlp", "--loss", "next_token"], "arch mlp takes real-valued inputs"),
    (["transformer", "--loss", "perplexity"], "unknown loss 'perplexity'")])
def test_fact_train_refuses_what_cannot_train_on_tokens(tmp_path, args, needle):
    (tmp_path / "book.txt").write_bytes(TEXT)
    result = fact_inprocess("train", *args, "--dataset", f"text:{tmp_path / 'book.txt'},T=4",
                            "--epochs", "1", "--out", tmp_path / "x.pt")
    assert result.exit_code == 2 and needle in result.output, result.output
