"""Rendering an `Analysis` (live or read from a report) as a table, JSON lines, JSON or TSV.

`fact analyze` and `fact show` share this, so a stored report prints exactly as it was computed.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table
from rich.text import Text

from ..engine.conventions import BACKWARD, FORWARD, METRIC_NAMES
from ..errors import FactError
from ._app import out, write_delimited, write_jsonl

if TYPE_CHECKING:
    from ..engine.results import Analysis

FORMATS = ("table", "jsonl", "json", "tsv")


def agreement_style(value: float, metric: str) -> str:
    if value != value:
        return "dim"
    if metric == "rel_err":
        return "green" if value < 0.01 else "yellow" if value < 0.1 else "red"
    return "green" if value >= 0.99 else "yellow" if value >= 0.9 else "red"


def stationarity_style(value: float) -> str:
    if value != value:
        return "dim"
    return "green" if value < 1e-3 else "yellow" if value < 0.1 else "red"


def number(value: float, digits: int = 3) -> str:
    if value is None or value != value:
        return "–"
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e3):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _table(analysis: Analysis, relations: list[str], metric: str, title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                  collapse_padding=True,
                  pad_edge=False)
    table.add_column("layer", no_wrap=True)
    table.add_column("k→m", justify="right", no_wrap=True)
    table.add_column("station.", justify="right", no_wrap=True)
    fitted = "agop" in relations or "nfa" in relations
    if fitted:
        table.add_column("α*", justify="right", no_wrap=True)
    for relation in relations:
        table.add_column(relation, justify="right", no_wrap=True, min_width=len(relation))
    best_is_low = metric == "rel_err"
    for layer in analysis.layers:
        values = [layer.metrics.get(r, {}).get(metric, math.nan) for r in relations]
        finite = [v for v in values if v == v]
        best = (min(finite) if best_is_low else max(finite)) if finite else None
        cells = [Text(number(v), style=agreement_style(v, metric)
                      + (" bold reverse" if v == best and len(finite) > 1 else ""))
                 for v in values]
        alpha = [Text(number(layer.best_alpha, 2), style="cyan")] if fitted else []
        table.add_row(layer.name, f"{layer.in_features}→{layer.out_features}",
                      Text(number(layer.stationarity, 2), style=stationarity_style(
                          layer.stationarity)), *alpha, *cells)
    return table


def footer(analysis: Analysis, metric: str) -> str:
    info = analysis.info
    decay = info.get("weight_decay")
    parts = [
        f"metric: {metric} of each relation with WᵀW (forward) or WWᵀ (backward, b…); "
        "best per layer highlighted",
        f"λ = {decay if decay is not None else 'unknown (FACT unscaled)'} · α = {info.get('alpha')}"
        f" · loss {info.get('loss')} (mean over samples; mse = (1/c)‖f − y‖²)",
        f"data {info.get('dataset')} · n = {info.get('n_samples')} · model in "
        f"{info.get('mode', 'eval')} mode · {info.get('dtype')} on {info.get('device')}, "
        "float64 sums",
        "stationarity = ‖∇W L_data + λW‖ / ‖λW‖ (FACT must hold when it is ~0) · "
        "α* = the NFA power that fits WᵀW best",
    ]
    return "\n".join(parts)


def emit(analysis: Analysis, format: str, metric: str = "pearson") -> None:
    """Write `analysis` to stdout in `format` (data only; messages go to stderr)."""
    if format not in FORMATS:
        raise FactError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if metric not in METRIC_NAMES:
        raise FactError(f"unknown metric {metric!r}; choose pearson, cosine or rel_err")
    rows = analysis.rows()
    if format == "jsonl":
        write_jsonl(rows)
    elif format == "json":
        write_jsonl([{"info": analysis.info, "warnings": analysis.warnings, "rows": rows}])
    elif format == "tsv":
        write_delimited(rows, "\t")
    else:
        present = {r for layer in analysis.layers for r in layer.metrics}
        for group, title in ((FORWARD, "forward relations vs WᵀW"),
                             (BACKWARD, "backward relations vs WWᵀ")):
            chosen = [r for r in group if r in present]
            if chosen:
                out.print(_table(analysis, chosen, metric, title))
        out.print(Text(footer(analysis, metric), style="dim"))
    sys.stdout.flush()
