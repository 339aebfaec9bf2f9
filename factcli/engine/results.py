"""What `analyze` returns: per-layer results and the provenance a report records.

Free of torch at import time (matrices are torch tensors, but a report read for its numbers
never needs them), so `fact show` and notebooks reading reports stay light.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas
    import torch


@dataclass(repr=False)
class LayerResult:
    """One weight matrix: its feature matrices, relations and their agreement."""

    name: str
    in_features: int
    out_features: int
    stationarity: float
    matrices: Mapping[str, torch.Tensor]
    metrics: dict[str, dict[str, float]]
    best_alpha: float = math.nan
    best_alpha_pearson: float = math.nan  # pearson(NFM, AGOP^α*), the fitted curve's best value
    kind: str = "linear"
    uses: int = 1           # uses of W per sample (an attention block, a shared layer: more)
    note: str = ""          # how the sums were formed when that is not the plain case

    def __repr__(self) -> str:
        return (f"LayerResult({self.name!r}, {self.in_features}→{self.out_features}, "
                f"stationarity={self.stationarity:.3g}, α*={self.best_alpha:.2f}, "
                f"{len(self.metrics)} relations, {len(self.matrices)} matrices)")


@dataclass(repr=False)
class Analysis:
    """The result of `analyze`: per-layer results plus the provenance a report records.

    In a notebook: `analysis.to_pandas()` is the tidy table (one row per layer × relation),
    `analysis.layer("0").matrices["fact"]` a matrix, and the object displays as a table.
    """

    layers: list[LayerResult]
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def plot(self, kind: str = "bars", **options: Any) -> Any:
        """A matplotlib Figure of this analysis: "bars" (agreement per layer), "matrices"
        (layer=..., relations=[...], hide_diagonal=...) or "alpha" (needs factcli[plot])."""
        from ..plot import figures

        views = {"bars": figures.bars, "matrices": figures.matrices, "alpha": figures.alpha}
        if kind not in views:
            from ..errors import FactError

            raise FactError(f"unknown kind {kind!r}; choose one of: {', '.join(views)} "
                            "(epochs: factcli.plot.epochs([analysis, ...]))")
        return views[kind](self, **options)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (layer, relation), the fields of interfaces.md §4 (NaN = missing); a
        sketched analysis adds `<metric>_se` and the probes, a restricted one `outputs`."""
        return [
            {"checkpoint": self.info.get("checkpoint"), "layer": layer.name, "relation": name,
             **values, "stationarity": layer.stationarity,
             "in_features": layer.in_features, "out_features": layer.out_features,
             "best_alpha": layer.best_alpha, "best_alpha_pearson": layer.best_alpha_pearson,
             **self.probing()}
            for layer in self.layers for name, values in layer.metrics.items()
        ]

    def probing(self) -> dict[str, Any]:
        """How the AGOP family was summed, when that is not exactly over every output."""
        info, fields = self.info, {}
        if info.get("agop_probes") not in (None, "exact"):
            fields.update({key: info.get(key) for key in ("agop_probes", "probe_kind",
                                                          "probe_seed", "probe_groups")})
        if info.get("outputs", "all") != "all":
            fields["outputs"] = info["outputs"]
        return fields

    def to_pandas(self) -> pandas.DataFrame:
        """The rows as a tidy DataFrame (needs pandas: pip install 'factcli[pandas]')."""
        return rows_frame(self.rows())

    def __repr__(self) -> str:
        relations = sorted({r for layer in self.layers for r in layer.metrics})
        return (f"Analysis({len(self.layers)} layers: {', '.join(x.name for x in self.layers)}; "
                f"relations: {', '.join(relations)}; data {self.info.get('dataset')!r}, "
                f"n={self.info.get('n_samples')}; {len(self.warnings)} warnings)")

    def _repr_html_(self) -> str:
        return html_table(self.rows(), caption=repr(self))


def rows_frame(rows: list[dict[str, Any]]) -> pandas.DataFrame:
    try:
        import pandas
    except ImportError:
        from ..errors import FactError

        raise FactError("to_pandas() needs pandas: pip install 'factcli[pandas]'") from None
    return pandas.DataFrame(rows)


def html_table(rows: list[dict[str, Any]], caption: str = "") -> str:
    """Rows as a plain HTML table (every value, floats to 4 significant digits)."""
    if not rows:
        return f"<p>{html.escape(caption)} (no rows)</p>"
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if value != value else f"{value:.4g}"
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")
