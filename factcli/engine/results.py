"""What `analyze` returns: per-layer results and the provenance a report records."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LayerResult:
    """One weight matrix: its feature matrices, relations and their agreement."""

    name: str
    in_features: int
    out_features: int
    stationarity: float
    matrices: dict[str, torch.Tensor]
    metrics: dict[str, dict[str, float]]
    best_alpha: float = math.nan
    kind: str = "linear"


@dataclass
class Analysis:
    """The result of `analyze`: per-layer results plus the provenance a report records."""

    layers: list[LayerResult]
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (layer, relation), the fields of interfaces.md §4 (NaN = missing)."""
        return [
            {"checkpoint": self.info.get("checkpoint"), "layer": layer.name, "relation": name,
             **values, "stationarity": layer.stationarity,
             "in_features": layer.in_features, "out_features": layer.out_features}
            for layer in self.layers for name, values in layer.metrics.items()
        ]
