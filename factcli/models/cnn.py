"""`cnn`: a small VGG-style network, conv blocks then Linear layers (interfaces.md §1).

Each block is Conv2d(3×3, padding 1) → activation → 2×2 pooling (`max`, or `avg`: smooth, so a
smooth activation gives a twice-differentiable objective); the classifier is `depth`
Linear layers with the activation between them. Datasets hand images over as flat vectors
(n, C·H·W); the model views them as (n, C, H, W) from its `in_shape`, so the same checkpoint
takes flat rows or image batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import FactError

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class CNN(nn.Module):
    """features.{0,3,6,…} are the convolutions, classifier.{0,2,…} the Linear layers."""

    def __init__(self, in_shape: Sequence[int], out_features: int, channels: Sequence[int],
                 width: int, depth: int, activation: Callable[[], nn.Module] = nn.ReLU,
                 bias: bool = True, pool: str = "max"):
        super().__init__()
        in_shape = tuple(int(size) for size in in_shape)
        channels = [int(c) for c in channels]
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise FactError(f"a cnn needs in_shape [C, H, W] of positive sizes (got {in_shape})")
        if not channels or min(channels) < 1 or depth < 1 or width < 1:
            raise FactError(f"a cnn needs channels >= 1, width >= 1 and depth >= 1 (got "
                            f"channels={channels}, width={width}, depth={depth})")
        height, breadth = in_shape[1] >> len(channels), in_shape[2] >> len(channels)
        if height < 1 or breadth < 1:
            raise FactError(f"{len(channels)} pooling blocks shrink a {in_shape[1]}×{in_shape[2]}"
                            " image to nothing; use fewer channels entries")
        if pool not in POOLS:
            raise FactError(f"unknown cnn pool {pool!r}; choose one of: {', '.join(POOLS)}")
        self.in_shape = in_shape
        blocks: list[nn.Module] = []
        for fan_in, fan_out in zip([in_shape[0], *channels[:-1]], channels):
            blocks += [nn.Conv2d(fan_in, fan_out, 3, padding=1, bias=bias), activation(),
                       POOLS[pool](2)]
        self.features = nn.Sequential(*blocks)
        sizes = [channels[-1] * height * breadth] + [width] * (depth - 1) + [out_features]
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if index:
                layers.append(activation())
            layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            if x.shape[1] != math.prod(self.in_shape):
                raise FactError(f"expected flat images of {math.prod(self.in_shape)} values "
                                 f"({'×'.join(map(str, self.in_shape))}), got {x.shape[1]}")
            x = x.reshape(len(x), *self.in_shape)
        return self.classifier(self.features(x).flatten(1))
