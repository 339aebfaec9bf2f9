"""Rendering an `Analysis` (live or read from a report) as a table, JSON lines, JSON or TSV.

`fact analyze` and `fact show` share this, so a stored report prints exactly as it was computed.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table
from rich.text import Text

from ..engine.conventions import BACKWARD, FORWARD, METRIC_NAMES
from ..errors import FactError
from ._app import out, write_delimited, write_jsonl

if TYPE_CHECKING:
    from ..engine.results import Analysis

FORMATS = ("table", "jsonl", "json", "tsv", "csv")


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
        return f"{value:.{digits - 1}e}"  # as many significant digits as 0.xyz shows
    return f"{value:.{digits}f}"


def error_text(se: float) -> str:
    """`±se` of a sketched metric (as many decimals as the value shows, or one significant
    digit when smaller); empty when there is none (exact, or not computed)."""
    if se is None or not se > 0 or se != se:
        return ""
    return f"±{se:.3f}" if se >= 0.001 else f"±{se:.0e}"


@dataclass
class Cell:
    """One table cell: its text, a colour (terminal only) and whether it is the best of its
    row (reverse video on a terminal, a trailing `*` in text)."""

    text: str
    style: str = ""
    best: bool = False


@dataclass
class Grid:
    """A table that is printed whole: split into several tables (the first `keep` columns
    repeated in each) when the terminal is too narrow, never cut. `wrap` columns may fold
    onto several lines; `sections` are row indices after which a rule is drawn."""

    title: str
    headers: list[str]
    rows: list[list[Cell]]
    keep: int = 1
    left: frozenset[str] = frozenset({"layer", "input", "method"})
    wrap: frozenset[str] = frozenset()
    sections: set[int] = field(default_factory=set)

    def add(self, *cells: Cell | str) -> None:
        self.rows.append([c if isinstance(c, Cell) else Cell(str(c)) for c in cells])


GAP = 2  # characters between columns


def _widths(grid: Grid) -> list[int]:
    marks = any(c.best for row in grid.rows for c in row)
    widths = []
    for i, header in enumerate(grid.headers):
        width = max([len(header)] + [len(row[i].text) + (1 if marks else 0) for row in grid.rows])
        widths.append(min(width, 30) if header in grid.wrap else width)
    return widths


def _parts(grid: Grid, width: int | None) -> list[list[int]]:
    """Column indices of each printed part: everything at once when it fits (or off a
    terminal), else the leading `keep` columns plus as many others as fit, repeatedly."""
    widths = _widths(grid)
    columns = list(range(len(grid.headers)))
    if width is None or sum(widths) + GAP * (len(widths) - 1) <= width:
        return [columns]
    lead, rest = columns[: grid.keep], columns[grid.keep:]
    parts, current = [], list(lead)
    used = sum(widths[i] for i in lead) + GAP * (len(lead) - 1)
    for i in rest:
        if len(current) > len(lead) and used + GAP + widths[i] > width:
            parts.append(current)
            current = list(lead)
            used = sum(widths[i] for i in lead) + GAP * (len(lead) - 1)
        current.append(i)
        used += GAP + widths[i]
    parts.append(current)
    return parts


def print_grid(grid: Grid) -> None:
    """On a terminal: rich tables that fit its width. Elsewhere (a file, a pipe): plain text at
    full width, columns aligned, no trailing blanks, the best cells marked `*`."""
    if not out.is_terminal:
        _print_text(grid)
        return
    parts = _parts(grid, out.width)
    for number_, part in enumerate(parts):
        title = grid.title + (f" ({number_ + 1}/{len(parts)})" if len(parts) > 1 else "")
        if title:
            out.print(Text(title, style="italic"))
        table = Table(header_style="bold", box=box.SIMPLE_HEAD, collapse_padding=True,
                      pad_edge=False)
        for i in part:
            header = grid.headers[i]
            table.add_column(header, justify="left" if header in grid.left else "right",
                             no_wrap=header not in grid.wrap, overflow="fold")
        for r, row in enumerate(grid.rows):
            table.add_row(*[Text(row[i].text, style=row[i].style
                                 + (" bold reverse" if row[i].best else "")) for i in part],
                          end_section=r in grid.sections)
        out.print(table)


def _print_text(grid: Grid) -> None:
    marks = any(c.best for row in grid.rows for c in row)
    widths = [max([len(h)] + [len(row[i].text) + marks for row in grid.rows])
              for i, h in enumerate(grid.headers)]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(w) if h in grid.left else cell.rjust(w)
                  for cell, w, h in zip(cells, widths, grid.headers)]
        return (" " * GAP).join(padded).rstrip()

    if grid.title:
        out.print(grid.title, markup=False, highlight=False, soft_wrap=True)
    out.print(line(grid.headers), markup=False, highlight=False, soft_wrap=True)
    for r, row in enumerate(grid.rows):
        texts = [c.text + ("*" if c.best else " " if marks else "") for c in row]
        out.print(line(texts), markup=False, highlight=False, soft_wrap=True)
        if r in grid.sections and r != len(grid.rows) - 1:
            out.print("", soft_wrap=True)


def legend(metric: str, best: str = "best per layer", dashes: str = "not defined") -> str:
    """What the marks and colours of an agreement table mean; `dashes`: what a "–" in it
    stands for ("": none appears)."""
    mark = "reverse video" if out.is_terminal else "*"
    if metric == "rel_err":
        scale = "green < 0.01 ≤ yellow < 0.1 ≤ red"
    else:
        scale = "green ≥ 0.99 > yellow ≥ 0.9 > red"
    colours = f"; colour: {metric} {scale}, stationarity green < 0.001 ≤ yellow < 0.1 ≤ red" \
        if out.is_terminal and not out.no_color else ""
    return f"{mark} = {best}{colours}" + (f"; – = {dashes}" if dashes else "")


def dashes(analysis: Analysis, metric: str) -> str:
    """What the "–" cells of `analysis`'s tables stand for: a relation another layer has but
    this one was not given (an LM head's bagop held as factors: its note says why), or a value
    that is not defined (NaN: rel_err or stationarity without λ, α* of a rank-1 AGOP); "" when
    there is none."""
    shown = {r for layer in analysis.layers for r in layer.metrics}
    fitted = bool({"agop", "nfa"} & shown)
    missing = any(r not in layer.metrics for layer in analysis.layers for r in shown)
    undefined = any(
        math.isnan(layer.stationarity) or fitted and (math.isnan(layer.best_alpha)
                                                      or math.isnan(layer.best_alpha_pearson))
        or any(math.isnan(values.get(metric, math.nan)) for values in layer.metrics.values())
        for layer in analysis.layers)
    return ", or ".join(filter(None, ["not defined" if undefined else "",
                                      "not computed for that layer (its note below says why)"
                                      if missing else ""]))


def _grid(analysis: Analysis, relations: list[str], metric: str, title: str) -> Grid:
    fitted = "agop" in relations or "nfa" in relations
    headers = ["layer", "k→m", "station."] + (["α*", "r@α*"] if fitted else []) + relations
    grid = Grid(title, headers, [], keep=1)
    best_is_low = metric == "rel_err"
    for layer in analysis.layers:
        values = [layer.metrics.get(r, {}).get(metric, math.nan) for r in relations]
        finite = [v for v in values if v == v]
        best = (min(finite) if best_is_low else max(finite)) if finite else None
        errors = [layer.metrics.get(r, {}).get(f"{metric}_se", math.nan) for r in relations]
        cells = [Cell(number(v) + error_text(e), agreement_style(v, metric),
                      v == best and len(finite) > 1) for v, e in zip(values, errors)]
        alpha = [Cell(number(layer.best_alpha, 2), "cyan"),
                 Cell(number(layer.best_alpha_pearson), "cyan")] if fitted else []
        grid.add(layer.name, f"{layer.in_features}→{layer.out_features}",
                 Cell(number(layer.stationarity, 2), stationarity_style(layer.stationarity)),
                 *alpha, *cells)
    return grid


LOSS_NOTES = {"next_token": "ℓ_i = mean over its predicted positions of −log p(next token)"}


def footer(analysis: Analysis, metric: str) -> str:
    info = analysis.info
    decay = info.get("weight_decay")
    parts = [
        f"metric: {metric} of each relation with WᵀW (forward) or WWᵀ (backward, b…); "
        + legend(metric, dashes=dashes(analysis, metric)),
        f"λ = {decay if decay is not None else 'unknown (FACT unscaled)'} · α = {info.get('alpha')}"
        f" · loss {info.get('loss')} (mean over samples; "
        f"{LOSS_NOTES.get(info.get('loss'), 'mse = (1/c)‖f − y‖²')})",
        f"data {info.get('dataset')} · n = {info.get('n_samples')} · model in "
        f"{info.get('mode', 'eval')} mode · {info.get('dtype')} on {info.get('device')}, "
        "float64 sums",
        "stationarity = ‖∇W L_data + λW‖ / ‖λW‖ (FACT must hold when it is ~0) · "
        "α* = the NFA power that fits WᵀW best, r@α* = its pearson",
    ]
    probes, outputs = info.get("agop_probes"), info.get("outputs", "all")
    if probes not in (None, "exact"):
        parts.append(f"AGOP family sketched: {probes} {info.get('probe_kind')} probes per "
                     f"sample (seed {info.get('probe_seed')}) over its {info.get('agop_outputs')}"
                     f" outputs; its metrics bias-corrected and ± their standard error, by a "
                     f"jackknife over {info.get('probe_groups')} groups of probes (relations.md "
                     "§8)")
    if outputs not in (None, "all"):
        parts.append(f"AGOP family over --outputs {outputs} only ({info.get('agop_outputs')} "
                     "outputs per sample)")
    skipped = info.get("not_analyzed") or []
    if skipped:
        source = info.get("checkpoint") or "CKPT"
        parts.append(f"{len(skipped)} weight matri{'x' if len(skipped) == 1 else 'ces'} not "
                     f"analyzed: `fact layers {source}` lists them with the reason")
    notes = [f"{layer.name}: {layer.note}" for layer in analysis.layers if layer.note]
    return "\n".join(parts + notes)


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
    elif format in ("tsv", "csv"):
        write_delimited(rows, "\t" if format == "tsv" else ",")
    else:
        present = {r for layer in analysis.layers for r in layer.metrics}
        for group, title in ((FORWARD, "forward relations vs WᵀW"),
                             (BACKWARD, "backward relations vs WWᵀ")):
            chosen = [r for r in group if r in present]
            if chosen:
                print_grid(_grid(analysis, chosen, metric, title))
        out.print(Text(footer(analysis, metric), style="dim"), soft_wrap=not out.is_terminal)
    sys.stdout.flush()
