"""One self-contained HTML page of analyses, runs and RFM fits.

Everything is inside the file: figures as base64 SVG (charts) or PNG (heatmaps) data URLs, the
style inline, no script. A Content-Security-Policy forbids every fetch but data: images, so the
page cannot reach the network even if a string in it looked like a URL. Every number is in a
table at full precision (Python's shortest round-trip form); a missing one is "–".
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..compare.comparison import Source
from ..engine.conventions import METRIC_NAMES, RELATIONS
from ..engine.results import Analysis
from ..errors import FactError
from . import _style, figures
from .inputs import with_agop

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font:14px/1.45 system-ui,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1180px;
padding:0 1em;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:2.2em;border-bottom:1px solid #ccc}
h3{font-size:1.05em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:12.5px}
th,td{border:1px solid #d4d4d4;padding:2px 7px;text-align:left;vertical-align:top}
th{background:#f1f1f1}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv td:first-child{font-weight:600;white-space:nowrap}
code,.mono{font-family:"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
figure{margin:1em 0 1.8em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figure img.chart{width:980px}
figcaption{font-size:12px;color:#555}.note{color:#555;font-size:13px}
.warn{color:#8a4b00}
"""
PROVENANCE = ("report", "checkpoint", "checkpoint_sha256", "dataset", "n_samples", "n_train",
              "max_samples", "sample_seed", "loss", "weight_decay", "alpha", "mode", "weighted",
              "device", "dtype", "torch_version", "factcli_version", "created", "command",
              "data_loss", "accuracy", "objective", "model", "training")


def number(value: Any) -> str:
    """Every digit Python needs to round-trip the value; missing (None, NaN) as "–"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return str(value)


def _cell(value: Any) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    text = html.escape(number(value))
    return f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table{f" class={css!r}" if css else ""}><thead><tr>{head}</tr></thead>' \
           f"<tbody>\n{body}\n</tbody></table>"


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    rows = []
    for key, value in pairs:
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True, allow_nan=True)
        rows.append(f"<tr><td>{html.escape(key)}</td>"
                    f'<td class="mono">{html.escape(number(value))}</td></tr>')
    return '<table class="kv"><tbody>' + "\n".join(rows) + "</tbody></table>"


def embed(figure: Any, suffix: str, alt: str, caption: str = "") -> str:
    """The figure as a data: URL image (SVG for charts, PNG for heatmaps)."""
    data = base64.b64encode(_style.render(figure, suffix)).decode("ascii")
    mime = "image/svg+xml" if suffix == ".svg" else "image/png"
    note = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    scaled = ' class="chart"' if suffix == ".svg" else ""  # vector: drawn at the page's width
    return f'<figure><img{scaled} alt="{html.escape(alt)}" src="data:{mime};base64,{data}">' \
           f"{note}</figure>"


def _note(text: str, css: str = "note") -> str:
    return f'<p class="{css}">{html.escape(text)}</p>'


def _figure_or_note(make, suffix: str, alt: str, caption: str = "") -> str:
    """A figure, or the one-line reason it cannot be drawn (never a silent gap)."""
    try:
        return embed(make(), suffix, alt, caption)
    except FactError as error:
        return _note(f"{alt}: not drawn — {error}")


def metric_rows(layers: Sequence[tuple[str, str, float, float, dict]]) -> list[list[Any]]:
    rows = []
    for name, shape, stationarity, best_alpha, metrics in layers:
        for relation in [r for r in RELATIONS if r in metrics] + \
                sorted(set(metrics) - set(RELATIONS)):
            values = metrics[relation]
            rows.append([name, shape, relation, *(values.get(m, math.nan)
                                                  for m in METRIC_NAMES),
                         stationarity, best_alpha])
    return rows


METRIC_HEADER = ["layer", "in→out", "relation", *METRIC_NAMES, "stationarity", "α*"]


def analysis_section(index: int, analysis: Analysis) -> str:
    info = analysis.info
    label = info.get("report") or figures.label_of(info)
    parts = [f'<h2 id="input-{index}">{index}. {html.escape(str(label))}</h2>',
             "<h3>Provenance</h3>",
             key_values([(key, info.get(key)) for key in PROVENANCE if key in info])]
    for message in analysis.warnings:
        parts.append(_note(f"warning: {message}", "warn"))
    parts.append("<h3>Agreement per layer and relation</h3>")
    parts.append(_note("pearson, cosine: of each relation's matrix with WᵀW (forward) or WWᵀ "
                       "(backward, b…); rel_err = ‖A − B‖/‖A‖ (FACT family only); "
                       "stationarity = ‖∇W L_data + λW‖/‖λW‖; α* = the NFA power fitting WᵀW "
                       "best; – = missing."))
    parts.append(table(METRIC_HEADER, metric_rows(
        [(layer.name, f"{layer.in_features}→{layer.out_features}", layer.stationarity,
          layer.best_alpha, layer.metrics) for layer in analysis.layers])))
    parts.append("<h3>Figures</h3>")
    if any(layer.metrics for layer in analysis.layers):
        parts.append(embed(figures.bars(analysis), ".svg", f"agreement per layer of {label}"))
    parts.append(alpha_figure(analysis, str(label)))
    for layer in analysis.layers:
        parts.append(_figure_or_note(
            lambda layer=layer: figures.matrices(analysis, layer.name), ".png",
            f"feature matrices of layer {layer.name}"))
    return "\n".join(parts)


def alpha_figure(analysis: Analysis, label: str) -> str:
    """The alpha view from the stored NFM and AGOP, else recomputed from the recorded checkpoint
    (the default report stores no AGOP), else one line saying why it is missing."""
    try:
        source_analysis, source = with_agop(analysis)
        figure = figures.alpha(source_analysis, source=source)
    except FactError as error:
        return _note(f"NFA power α: not drawn — {error}.")
    return embed(figure, ".svg", f"NFA power α of {label}", f"NFM and AGOP {source}.")


def rows_section(index: int, source: Source) -> str:
    parts = [f'<h2 id="input-{index}">{index}. {html.escape(source.label)}</h2>',
             _note("from JSON lines: metrics only (no matrices, no provenance beyond the "
                   "label)" + (f"; epoch {source.epoch}" if source.epoch is not None else "")),
             table(METRIC_HEADER, metric_rows(
                 [(name, "", source.stationarity.get(name, math.nan), math.nan,
                   source.metrics.get(name, {})) for name in source.layers]))]
    parts.append(_figure_or_note(lambda: figures.bars(source), ".svg",
                                 f"agreement per layer of {source.label}"))
    return "\n".join(parts)


def one_run(items: Sequence[Analysis | Source]) -> bool:
    """Whether the inputs are snapshots of one run: every one records an epoch, and analyses
    share their model and training data (the epochs view is meaningless across runs)."""
    sources = [cmp_source(item) for item in items]
    if any(source.epoch is None for source in sources):
        return False
    keys = {(json.dumps(item.info.get("model"), sort_keys=True), item.info.get("dataset"))
            for item in items if isinstance(item, Analysis)}
    return len(keys) <= 1


def cmp_source(item: Analysis | Source) -> Source:
    from ..compare.comparison import from_analysis

    return from_analysis(item) if isinstance(item, Analysis) else item


def rfm_section(index: int, runs: Sequence[figures.RFMRun]) -> str:
    last = index + len(runs) - 1
    numbers = f"{index}" if last == index else f"{index}–{last}"
    parts = [f'<h2 id="input-{index}">{numbers}. Recursive Feature Machine</h2>']
    for n, run in enumerate(runs, index):
        parts.append(f"<h3>{n}. {html.escape(run.label)}: "
                     f"{html.escape(str(run.info.get('path', '')))}</h3>")
        parts.append(key_values(sorted(run.info.items())))
        columns = list(dict.fromkeys(key for row in run.history for key in row))
        parts.append(table(columns + ["kept"], [
            [row.get(c) for c in columns] + ["yes" if row.get("iteration") ==
                                             run.best_iteration else ""]
            for row in run.history]))
    parts.append(embed(figures.rfm(runs), ".png", "RFM accuracy and feature matrices"))
    return "\n".join(parts)


def html_report(items: Sequence[Analysis | Source | figures.RFMRun],
                title: str = "factcli report") -> str:
    """The page for `items` (analyses, JSON-row sources, RFM runs), as one HTML string."""
    if not items:
        raise FactError("nothing to report")
    runs = [item for item in items if isinstance(item, figures.RFMRun)]
    others = [item for item in items if not isinstance(item, figures.RFMRun)]
    index_rows, sections = [], []
    for i, item in enumerate(others, 1):
        if isinstance(item, Analysis):
            info = item.info
            index_rows.append([i, info.get("report") or figures.label_of(info), "analysis",
                               info.get("checkpoint"), info.get("dataset"),
                               info.get("n_samples")])
            sections.append(analysis_section(i, item))
        else:
            index_rows.append([i, item.label, "JSON rows", None, None, None])
            sections.append(rows_section(i, item))
    if runs:
        first = len(others) + 1
        for n, run in enumerate(runs, first):
            index_rows.append([n, run.info.get("path") or run.label, "rfm", None,
                               run.info.get("dataset"), run.info.get("n_train")])
        sections.append(rfm_section(first, runs))
    if len(others) > 1 and one_run(others):
        sections.insert(0, "<h2>Over training</h2>" + _figure_or_note(
            lambda: figures.epochs(others), ".svg", "agreement over training"))
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n")
    intro = (f"<h1>{html.escape(title)}</h1>\n"
             + _note(f"Written by factcli {__version__}. Self-contained: figures are embedded, "
                     "nothing is fetched. Numbers are given in full (– = missing).")
             + table(["#", "input", "kind", "checkpoint", "dataset", "n"], index_rows)
             + _note("Each input's section gives its full provenance (checkpoint SHA-256, "
                     "command, settings)."))
    return head + intro + "\n" + "\n".join(sections) + "\n</body></html>\n"
