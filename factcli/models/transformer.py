"""`transformer`: a small pre-LN decoder on integer tokens (interfaces.md §1).

tokens (n, T) → token embedding + learned positions → `depth` blocks of
x + attn(ln1(x)) with a causal mask, then x + mlp(ln2(x)) → ln_f → head. The attention is
`nn.MultiheadAttention` (batch_first), so its projections are the fused `in_proj_weight` and
`out_proj`. `output="last"` returns the logits at the last position (n, out_features), a
sequence classifier such as modular arithmetic needs; `"all"` returns (n, T, out_features).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import FactError

OUTPUTS = ("last", "all")
NORMS = ("layer", "none")  # none: no LayerNorm, so that L_data is not invariant to the scale of
# the residual-stream writers and weight decay has a critical point to reach (sample README)


def _norm(kind: str, d_model: int) -> nn.Module:
    return nn.LayerNorm(d_model) if kind == "layer" else nn.Identity()


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, d_mlp: int, activation: Callable[[], nn.Module],
                 bias: bool, norm: str = "layer"):
        super().__init__()
        self.ln1 = _norm(norm, d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, bias=bias, batch_first=True)
        self.ln2 = _norm(norm, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp, bias=bias), activation(),
                                 nn.Linear(d_mlp, d_model, bias=bias))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """embed, pos, blocks.{i}.{ln1,attn,ln2,mlp.0,mlp.2}, ln_f, head (`norm="none"`: the
    ln's are identities)."""

    def __init__(self, vocab: int, context: int, out_features: int, d_model: int, heads: int,
                 depth: int, d_mlp: int | None = None, output: str = "last",
                 activation: Callable[[], nn.Module] = nn.GELU, bias: bool = True,
                 norm: str = "layer"):
        super().__init__()
        sizes = {"vocab": vocab, "context": context, "out_features": out_features,
                 "d_model": d_model, "heads": heads, "depth": depth}
        small = [f"{key}={value}" for key, value in sizes.items() if value < 1]
        if small:
            raise FactError(f"a transformer needs positive sizes (got {', '.join(small)})")
        if d_model % heads:
            raise FactError(f"d_model {d_model} is not a multiple of heads {heads}")
        if output not in OUTPUTS:
            raise FactError(f"unknown transformer output {output!r}; choose last or all")
        if norm not in NORMS:
            raise FactError(f"unknown transformer norm {norm!r}; choose layer or none")
        self.output = output
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, d_mlp or 4 * d_model, activation, bias,
                                          norm) for _ in range(depth))
        self.ln_f = _norm(norm, d_model)
        self.head = nn.Linear(d_model, out_features, bias=bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.is_floating_point() or tokens.ndim != 2:
            raise FactError(f"the transformer takes integer token ids of shape (n, T), got "
                             f"{str(tokens.dtype).removeprefix('torch.')} {tuple(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.pos.num_embeddings:
            raise FactError(f"sequences of {length} tokens exceed the context "
                             f"{self.pos.num_embeddings}")
        # one lookup per sample: a lookup shared by the batch is analyzed sample by sample,
        # n times slower (relations.md §1.1, "Positions")
        positions = torch.arange(length, device=tokens.device).expand(len(tokens), -1)
        x = self.embed(tokens) + self.pos(positions)
        mask = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
        for block in self.blocks:
            x = block(x, mask)
        logits = self.head(self.ln_f(x))
        return logits[:, -1] if self.output == "last" else logits
