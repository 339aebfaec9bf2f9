"""The figures: each function takes results (never files) and returns a matplotlib `Figure`.

Every figure states its conventions (metric, α, λ, n, data) in a caption under the axes, so a
figure cut out of its report still says what it shows.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..compare import comparison as cmp
from ..engine.conventions import BACKWARD, FORWARD, METRIC_NAMES, RELATIONS
from ..engine.factored import Factored
from ..engine.results import Analysis
from ..errors import FactError
from . import _style

MAX_CELLS = 400  # a heatmap side beyond this is shown as block means (bounded file size)
QUANTILE = 0.99  # heatmap colour scale: a few large entries (a diagonal) do not wash it out
MATRIX_DEFAULT = ("fact", "nfa")  # the paper's Fig. 5/7: WᵀW beside FACT and AGOP^½
LABEL_LIMIT = 60  # bars labelled with their value up to this many bars
REFERENCE_TITLE = {"nfm": "NFM = WᵀW", "bnfm": "bNFM = WWᵀ"}
AGREEMENT = {"pearson": "Pearson correlation", "cosine": "cosine similarity",
             "rel_err": "relative error ‖A − B‖/‖A‖"}


# ---------------------------------------------------------------------------------------------
# shared pieces


def colour(relation: str) -> str:
    """One colour per relation in every figure; a backward relation shares its forward twin's
    colour and is hatched."""
    for family in (FORWARD, BACKWARD):
        if relation in family:
            return _style.OKABE_ITO[family.index(relation)]
    return _style.OKABE_ITO[-2]


def hatch(relation: str) -> str | None:
    return "////" if relation in BACKWARD else None


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 \
            else f"{value:.{digits}f}".rstrip("0").rstrip(".") if value != 0 else "0"
    return str(value)


def conventions(info: dict[str, Any], metric: str | None = None) -> str:
    """metric · α · λ · n · data · loss, as recorded (a missing one says so)."""
    decay = info.get("weight_decay")
    parts = [f"metric: {AGREEMENT[metric]} ({metric}) of each relation with WᵀW (forward) or "
             "WWᵀ (backward, hatched)"] if metric else []
    parts += [f"α = {fmt(info.get('alpha'))}",
              f"λ = {fmt(decay) if decay is not None else 'unknown (FACT unscaled)'}",
              f"n = {info.get('n_samples', 'not recorded')}",
              f"data {info.get('dataset', 'not recorded')}",
              f"loss {info.get('loss', 'not recorded')}"]
    return " · ".join(parts)


def caption(figure: Any, text: str, width_inches: float) -> None:
    """A wrapped caption under the axes (constrained layout keeps room for it); a line breaks
    only between the parts that " · " separates or between words, never inside "λ = 1e-4"."""
    width = max(40, int(width_inches * 16))
    text = text.replace(" = ", "\u00a0=\u00a0")
    lines = [line.replace("\u00a0", " ") for paragraph in text.split("\n")
             for line in textwrap.wrap(paragraph, width)]
    figure.supxlabel("\n".join(lines), fontsize=7.5, color="0.25", ha="center")


def label_of(info: dict[str, Any], fallback: str = "") -> str:
    return str(info.get("checkpoint") or info.get("label") or fallback or "analysis")


def default_relations(present: Sequence[str] | set[str]) -> list[str]:
    """The forward relations present (the paper's figures), else every one present."""
    forward = [r for r in FORWARD if r in present]
    return forward or [r for r in RELATIONS if r in present]


def _check_relations(relations: Sequence[str] | None, present: set[str]) -> list[str]:
    if not present:
        raise FactError("no agreement metrics to plot (an RFM report? use --kind rfm)")
    if not relations:
        return default_relations(present)
    cmp.check_relations(relations)
    absent = [r for r in relations if r not in present]
    if absent:
        raise FactError(f"relation(s) {', '.join(absent)} not in the input; present: "
                        f"{', '.join(r for r in RELATIONS if r in present)}")
    return list(dict.fromkeys(relations))


@dataclass
class _Row:
    """One layer as the bar chart needs it (from an Analysis or a compare Source)."""

    name: str
    stationarity: float
    metrics: dict[str, dict[str, float]]
    shape: str = ""


def _rows(result: Analysis | cmp.Source) -> tuple[list[_Row], dict[str, Any], str]:
    if isinstance(result, Analysis):
        rows = [_Row(layer.name, layer.stationarity, layer.metrics,
                     f"{layer.in_features}→{layer.out_features}") for layer in result.layers]
        return rows, result.info, label_of(result.info)
    rows = [_Row(name, result.stationarity.get(name, math.nan), result.metrics.get(name, {}))
            for name in result.layers]
    return rows, {}, result.label


def _log_limits(values: list[float]) -> tuple[float, float]:
    """Whole decades around the values, at least two, so the log axis has readable ticks."""
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if not finite:
        return 1e-4, 1.0
    low = 10.0 ** math.floor(math.log10(min(finite)) - 0.3)  # no point on the very edge
    high = 10.0 ** math.ceil(math.log10(max(finite)) + 0.3)
    if high / low < 100:
        low = high / 100
    return low, high


# ---------------------------------------------------------------------------------------------
# bars: per layer, the agreement of each relation (Fig. 2), stationarity beside it


def bars(result: Analysis | cmp.Source, relations: Sequence[str] | None = None,
         metric: str = "pearson", title: str | None = None) -> Any:
    """Grouped horizontal bars: one group per layer (first layer on top), one bar per relation,
    with each layer's stationarity on a log axis beside it."""
    cmp.check_metric(metric)
    rows, info, label = _rows(result)
    present = {r for row in rows for r in row.metrics}
    chosen = _check_relations(relations, present)
    n, r = len(rows), len(chosen)
    width, height = 7.6, 1.9 + n * (0.15 * r + 0.2)
    with _style.style():
        figure = _style.new_figure(width, height)
        main, side = figure.subplots(1, 2, sharey=True, width_ratios=[4, 1.25])
        step = 0.8 / r
        labelled = n * r <= LABEL_LIMIT
        values_seen = []
        for j, relation in enumerate(chosen):
            values = [row.metrics.get(relation, {}).get(metric, math.nan) for row in rows]
            values_seen += [v for v in values if math.isfinite(v)]
            y = [i - 0.4 + step * (j + 0.5) for i in range(n)]
            main.barh(y, [v if math.isfinite(v) else 0.0 for v in values], height=step * 0.9,
                      color=colour(relation), hatch=hatch(relation), edgecolor="white",
                      linewidth=0.4, label=relation)
            for position, value in zip(y, values):
                if not math.isfinite(value):
                    main.text(0, position, " n/a", va="center", fontsize=6.5, color="0.4")
                elif labelled:
                    main.text(value, position, f" {value:.3f}", va="center", fontsize=6.5,
                              color="0.15")
        if metric == "rel_err":
            high = max(values_seen, default=1.0) or 1.0
            main.set_xlim(0, high * (1.2 if labelled else 1.05))
        else:
            low = min(0.0, min(values_seen, default=0.0))
            main.set_xlim(low, 1.14 if labelled else 1.0)
            main.set_xticks([t for t in np.arange(math.floor(low * 5) / 5, 1.0001, 0.2)])
            main.axvline(1.0, color="0.5", linewidth=0.6)
        main.set_yticks(range(n), [f"{row.name}  ({row.shape})" if row.shape else row.name
                                   for row in rows])
        main.set_ylim(n - 0.5, -0.5)  # first layer on top, no empty margins
        main.set_xlabel(f"{metric} with WᵀW or WWᵀ  (1 = perfect agreement)"
                        if metric != "rel_err" else "rel_err  (0 = exact)")
        main.set_ylabel("layer (in → out features)" if rows and rows[0].shape else "layer")
        main.grid(axis="y", visible=False)

        stationarity = [row.stationarity for row in rows]
        side.set_xscale("log")
        low, high = _log_limits(stationarity)
        side.set_xlim(low, high)
        for i, value in enumerate(stationarity):
            if math.isfinite(value) and value > 0:
                side.hlines(i, low, value, color="0.35", linewidth=1.2)
                side.plot([value], [i], "o", color="0.15", markersize=4)
                side.annotate(f"{value:.2g}" if value < 100 else f"{value:.0f}", (value, i),
                              xytext=(0, 5),
                              textcoords="offset points", ha="center", fontsize=6.5)
            else:
                side.text(low, i, " unknown", va="center", fontsize=7, color="0.4")
        side.set_xlabel("stationarity (log)")
        side.tick_params(axis="y", left=False)
        side.grid(axis="y", visible=False)
        main.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=min(r, 6),
                    frameon=False, borderaxespad=0.3, handlelength=1.5)
        figure.suptitle(title or f"{label}: agreement per layer", fontsize=10.5)
        caption(figure, conventions(info, metric) + "\nstationarity = ‖∇_W L_data + λW‖ / ‖λW‖ "
                "per layer: FACT must hold where it is 0; missing values are marked n/a, "
                "never drawn as zeros.", width)
    return _style.finish(figure)


# ---------------------------------------------------------------------------------------------
# matrices: NFM beside each relation's matrix, on one colour scale (Fig. 5/7)


def _block_means(matrix: Factored, block: int, hide_diagonal: bool) -> np.ndarray:
    """The block means of A = L Rᵀ from its factors (block sums of L and R), the diagonal left
    out if asked: a vocab×vocab matrix drawn without being formed."""
    def sums(factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(len(factor)) // block
        total = torch.zeros(int(index[-1]) + 1, factor.shape[1], dtype=torch.float64)
        return total.index_add_(0, index, factor), torch.bincount(index).double()

    (left, rows), (right, cols) = sums(matrix.L), sums(matrix.R)
    total, count = left @ right.mT, rows[:, None] * cols[None, :]
    if hide_diagonal and matrix.shape[0] == matrix.shape[1]:
        diagonal = torch.zeros(len(rows), dtype=torch.float64).index_add_(
            0, torch.arange(matrix.shape[0]) // block, (matrix.L * matrix.R).sum(1))
        total.diagonal().sub_(diagonal)
        count.diagonal().sub_(torch.bincount(torch.arange(matrix.shape[0]) // block).double())
    with np.errstate(invalid="ignore"):
        return np.where(count.numpy() > 0, (total / count.clamp(min=1)).numpy(), np.nan)


def _shown(matrix: torch.Tensor | Factored, hide_diagonal: bool, limit: int,
           quantile: float = 1.0) -> tuple[np.ndarray, int]:
    """The matrix as drawn: diagonal hidden (NaN) if asked, block means if larger than `limit`,
    then divided by the `quantile` of its |entries| (1: the largest) and clipped to ±1.
    Returns it and the block size. A `Factored` one is formed only when no larger than that."""
    block = max(1, math.ceil(max(matrix.shape) / limit))
    if isinstance(matrix, Factored) and block > 1:
        return _scaled(_block_means(matrix, block, hide_diagonal), quantile), block
    values = (matrix.dense() if isinstance(matrix, Factored) else matrix).double().cpu()
    values = values.numpy().copy()
    if hide_diagonal and values.shape[0] == values.shape[1]:
        np.fill_diagonal(values, np.nan)
    if block > 1:
        rows, cols = (math.ceil(s / block) * block for s in values.shape)
        padded = np.full((rows, cols), np.nan)
        padded[:values.shape[0], :values.shape[1]] = values
        blocks = padded.reshape(rows // block, block, cols // block, block)
        with np.errstate(invalid="ignore"):
            count = np.isfinite(blocks).sum(axis=(1, 3))
            values = np.where(count > 0, np.nansum(blocks, axis=(1, 3)) / np.maximum(count, 1),
                              np.nan)
    return _scaled(values, quantile), block


def _scaled(values: np.ndarray, quantile: float) -> np.ndarray:
    """Divided by the `quantile` of the |entries| and clipped to ±1."""
    finite = np.abs(values[np.isfinite(values)])
    scale = float(np.quantile(finite, quantile)) if finite.size else 0.0
    if scale <= 0 and finite.size:
        scale = float(finite.max())
    return np.clip(values / scale, -1, 1) if scale > 0 else values


def scale_words(quantile: float) -> str:
    if quantile >= 1:
        return "its own largest |entry|"
    return f"the {100 * quantile:g}th percentile of its own |entries|, beyond it clipped"


def scale_label(quantile: float) -> str:
    return "entry ÷ largest |entry|" if quantile >= 1 else \
        f"entry ÷ {100 * quantile:g}th percentile of |entry|"


def missing_matrix_hint(names: Sequence[str]) -> str:
    return (f"store them with `fact analyze CHECKPOINT --report FILE --matrices "
            f"{','.join(names)}` (or --matrices all), or give the checkpoint itself")


def matrices(analysis: Analysis, layer: str | None = None,
             relations: Sequence[str] | None = None, hide_diagonal: bool = False,
             quantile: float = QUANTILE, limit: int = MAX_CELLS) -> Any:
    """Heatmaps of NFM (or bNFM) and each relation's matrix for one layer, every panel divided
    by the `quantile` of its own |entries| (1 = the largest), clipped, and drawn on one shared
    colour scale [−1, 1]."""
    if not 0 < quantile <= 1:
        raise FactError(f"the colour-scale quantile must lie in (0, 1] (got {quantile})")
    if not analysis.layers:
        raise FactError("the analysis holds no layers")
    try:
        target = analysis.layers[0] if layer is None else analysis.layer(layer)
    except KeyError:
        raise FactError(f"no layer {layer!r}; layers: "
                        f"{', '.join(item.name for item in analysis.layers)}") from None
    stored = target.matrices
    if relations:
        cmp.check_relations(relations)
        chosen = list(dict.fromkeys(relations))
    else:
        chosen = [r for r in MATRIX_DEFAULT if r in stored] or list(MATRIX_DEFAULT)
    groups = [[(reference, None)] + [(r, reference) for r in chosen if r in family]
              for reference, family in (("nfm", FORWARD), ("bnfm", BACKWARD))
              if any(r in family for r in chosen)]
    absent = [name for group in groups for name, _ in group if name not in stored]
    if absent:
        held = ", ".join(stored) or "none"
        raise FactError(f"layer {target.name!r} of {label_of(analysis.info)} has no "
                        f"{', '.join(absent)} matrix in the report (it stores: {held}); "
                        + missing_matrix_hint(absent))
    columns = min(max(len(group) for group in groups), 4)
    # the forward panels on the first row(s), the backward ones below
    layout = [group[i:i + columns] for group in groups for i in range(0, len(group), columns)]
    lines = len(layout)
    width, height = 2.55 * columns + 1.0, 2.6 * lines + 1.3
    with _style.style():
        import matplotlib

        cmap = matplotlib.colormaps[_style.DIVERGING].with_extremes(bad="0.82")
        figure = _style.new_figure(width, height)
        grid = figure.subplots(lines, columns, squeeze=False)
        panels = [(grid[i][j], item) for i, line in enumerate(layout)
                  for j, item in enumerate(line)]
        used = {id(ax) for ax, _ in panels}
        blocks = set()
        image = None
        for ax, (name, reference) in panels:
            values, block = _shown(stored[name], hide_diagonal, limit, quantile)
            blocks.add(block)
            size = stored[name].shape
            image = ax.imshow(values, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest",
                              extent=(-0.5, size[1] - 0.5, size[0] - 0.5, -0.5))
            if reference is None:
                ax.set_title(f"{REFERENCE_TITLE[name]}  ({size[0]}×{size[1]})")
            else:
                value = target.metrics.get(name, {}).get("pearson", math.nan)
                ax.set_title(f"{name}   pearson "
                             f"{f'{value:.3f}' if math.isfinite(value) else '–'}")
            ax.grid(False)
            ax.set_xticks([0, size[1] - 1])
            ax.set_yticks([0, size[0] - 1])
        axes = [ax for line in grid for ax in line]
        for ax in axes:
            if id(ax) not in used:
                ax.set_axis_off()
        figure.colorbar(image, ax=[ax for ax, _ in panels], shrink=0.85, aspect=30,
                        label=scale_label(quantile))
        figure.suptitle(f"{label_of(analysis.info)}: layer {target.name} "
                        f"({target.in_features}→{target.out_features})", fontsize=10.5)
        notes = [f"each panel is divided by {scale_words(quantile)} (shared scale −1 … 1, "
                 "ColorBrewer RdBu)"]
        if hide_diagonal:
            notes.append("diagonal hidden (grey) and left out of the scaling")
        if max(blocks) > 1:
            notes.append(f"matrices larger than {limit} shown as block means "
                         f"({'/'.join(f'{b}×{b}' for b in sorted(blocks) if b > 1)} entries)")
        caption(figure, conventions(analysis.info) + "\n" + "; ".join(notes) + ".", width)
    return _style.finish(figure)


# ---------------------------------------------------------------------------------------------
# epochs: agreement over training (Fig. 8–10), loss and stationarity on a second axis


def epochs(inputs: Sequence[Analysis | cmp.Source], relations: Sequence[str] | None = None,
           metric: str = "pearson", layers: Sequence[str] | None = None) -> Any:
    """One panel per layer: each relation's agreement against epoch (or input order), with the
    training loss and the layer's stationarity on a log-scaled second axis."""
    sources = [cmp.from_analysis(item) if isinstance(item, Analysis) else item
               for item in inputs]
    if len(sources) < 2:
        raise FactError("the epochs view needs two or more inputs (snapshots of one run)")
    sources = cmp.select_layers(cmp.in_order(sources), list(layers) if layers else None)
    present = {r for s in sources for name in s.layers for r in s.metrics.get(name, {})}
    chosen = _check_relations(relations, present)
    cmp.compare(sources, metric=metric, relations=chosen)  # the same checks as `fact compare`
    by_epoch = all(source.epoch is not None for source in sources)
    x_all = [source.epoch if by_epoch else i for i, source in enumerate(sources)]
    names = list(dict.fromkeys(name for source in sources for name in source.layers))
    columns = min(len(names), 4)
    lines = math.ceil(len(names) / columns)
    width, height = 2.9 * columns + 0.9, 2.3 * lines + 1.6
    losses = [s.train_loss if s.train_loss is not None else math.nan for s in sources]
    with _style.style():
        figure = _style.new_figure(width, height)
        axes = figure.subplots(lines, columns, sharex=True, sharey=True, squeeze=False).ravel()
        handles: dict[str, Any] = {}
        twins = []
        for index, (ax, name) in enumerate(zip(axes, names)):
            held = [(x, s) for x, s in zip(x_all, sources) if name in s.layers]
            xs = [x for x, _ in held]
            for relation in chosen:
                ys = [s.metrics.get(name, {}).get(relation, {}).get(metric, math.nan)
                      for _, s in held]
                line, = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4,
                                color=colour(relation),
                                linestyle="--" if relation in BACKWARD else "-")
                handles.setdefault(relation, line)
            ax.set_title(name)
            station = [s.stationarity.get(name, math.nan) for _, s in held]
            loss = [losses[sources.index(s)] for _, s in held]
            if any(math.isfinite(v) and v > 0 for v in station + loss):
                twin = ax.twinx()
                twins.append(twin)
                twin.set_yscale("log")
                twin.grid(False)
                if any(math.isfinite(v) for v in loss):
                    handles.setdefault("training loss", twin.plot(
                        xs, loss, color="0.2", linestyle=":", linewidth=1.2)[0])
                if any(math.isfinite(v) for v in station):
                    handles.setdefault("stationarity", twin.plot(
                        xs, station, color="0.55", marker="x", markersize=3.5, linewidth=0.9,
                        linestyle="-.")[0])
                if index % columns == columns - 1 or index == len(names) - 1:
                    twin.set_ylabel("loss, stationarity (log)", color="0.35")
                else:  # one shared log scale: its numbers once per row
                    twin.tick_params(axis="y", labelright=False)
                twin.spines["right"].set_visible(True)
            if index % columns == 0:
                ax.set_ylabel(metric)
            if index >= len(names) - columns:
                ax.set_xlabel("epoch" if by_epoch else "input (in the order given)")
                ax.xaxis.set_tick_params(labelbottom=True)
        if len(twins) > 1:  # one log scale for every panel's second axis
            low, high = _log_limits([v for t in twins for line in t.get_lines()
                                     for v in line.get_ydata()])
            for twin in twins:
                twin.set_ylim(low, high)
        for ax in axes[len(names):]:
            ax.set_axis_off()
        if metric != "rel_err":
            seen = [v for ax in axes for line in ax.get_lines() for v in line.get_ydata()
                    if math.isfinite(v)]
            lowest = min(seen, default=0.0)
            axes[0].set_ylim(lowest - 0.05 if lowest < 0 else max(0.0, lowest - 0.05), 1.02)
        figure.legend(list(handles.values()), list(handles), loc="outside right upper",
                      frameon=False)
        first, last = sources[0].label, sources[-1].label
        figure.suptitle(f"agreement over training: {len(sources)} inputs", fontsize=10.5)
        order = "ordered by training epoch" if by_epoch else "in the order given"
        caption(figure, f"metric: {AGREEMENT[metric]} ({metric}) of each relation with WᵀW "
                f"(solid) or WWᵀ (dashed); inputs {order}, from {first} to {last}; training "
                "loss (dotted) and stationarity ‖∇_W L + λW‖/‖λW‖ (dash-dot) on the right, "
                "log scale.", width)
    return _style.finish(figure)


# ---------------------------------------------------------------------------------------------
# alpha: pearson(NFM, AGOP^α) against α (App. C, Fig. 11)


def alpha_curves(analysis: Analysis, layers: Sequence[str] | None = None,
                 grid: torch.Tensor | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer, (α grid, pearson(NFM, AGOP^α)) from its stored NFM and AGOP; a layer whose
    AGOP has rank ≤ 1 (α not identifiable) is left out."""
    from ..engine.relations import alpha_scores

    chosen = [layer for layer in analysis.layers if not layers or layer.name in layers]
    absent = sorted({name for layer in chosen for name in ("nfm", "agop")
                     if name not in layer.matrices})
    if absent:
        raise FactError(f"{label_of(analysis.info)} stores no {' and '.join(absent)} "
                        f"matri{'ces' if len(absent) > 1 else 'x'}: "
                        + missing_matrix_hint(absent))
    curves = {}
    for layer in chosen:
        agop = layer.matrices["agop"]
        eigenvalues, eigenvectors = agop.eigh() if isinstance(agop, Factored) else \
            torch.linalg.eigh((agop.double() + agop.double().mT) / 2)
        scores = alpha_scores(layer.matrices["nfm"], eigenvalues, eigenvectors, grid)
        if scores is not None:
            curves[layer.name] = (scores[0].numpy(), scores[1].numpy())
    return curves


def alpha(analysis: Analysis, layers: Sequence[str] | None = None,
          grid: torch.Tensor | None = None, source: str = "stored in the report") -> Any:
    """pearson(NFM, AGOP^α) over α for each layer, α* (the best power) marked; `source` says in
    the caption where NFM and AGOP came from."""
    curves = alpha_curves(analysis, layers, grid)
    named = [layer for layer in analysis.layers if layer.name in curves]
    skipped = [layer.name for layer in analysis.layers
               if (not layers or layer.name in layers) and layer.name not in curves]
    if not named:
        raise FactError("no layer has an AGOP of rank ≥ 2: α is not identifiable")
    many = len(named) > 10
    width, height = (9.0 if many else 7.2), 4.6
    with _style.style():
        import matplotlib

        palette = matplotlib.colormaps["viridis"]
        figure = _style.new_figure(width, height)
        ax = figure.subplots()
        for i, layer in enumerate(named):
            xs, ys = curves[layer.name]
            tone = palette(0.88 * i / max(1, len(named) - 1))
            best = layer.best_alpha if math.isfinite(layer.best_alpha) \
                else float(xs[int(np.argmax(ys))])
            at = float(np.interp(best, xs, ys))
            ax.plot(xs, ys, color=tone, linewidth=1.5,
                    label=f"{layer.name}   α* = {best:.2f}, r = {at:.3f}")
            ax.plot([best], [at], marker="D", markersize=5, color=tone,
                    markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
        used = analysis.info.get("alpha")
        if isinstance(used, int | float) and math.isfinite(used):
            ax.axvline(used, color="0.4", linestyle="--", linewidth=0.8)
            ax.annotate(f"--alpha {fmt(used)}", (used, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -10), textcoords="offset points", fontsize=7.5, color="0.3")
        ax.set_xlabel("α, the power of AGOP^α")
        ax.set_ylabel("pearson(WᵀW, AGOP^α)")
        ax.set_xlim(float(min(c[0][0] for c in curves.values())),
                    float(max(c[0][-1] for c in curves.values())))
        ax.legend(loc="outside right upper" if many else "best", frameon=False,
                  ncols=math.ceil(len(named) / 24), title="layer (◆ = α*)")
        figure.suptitle(f"{label_of(analysis.info)}: NFA power α", fontsize=10.5)
        text = (f"pearson(WᵀW, AGOP^α) on a grid of α, from NFM and AGOP {source}; ◆ marks α*, "
                "the best power (for a depth-L linear network it is 1/L). "
                + conventions(analysis.info))
        if skipped:
            text += f"\nno curve (AGOP of rank ≤ 1): {', '.join(skipped)}"
        caption(figure, text, width)
    return _style.finish(figure)


# ---------------------------------------------------------------------------------------------
# rfm: accuracy over iterations per update, and M at the best iteration (Fig. 3–5)


@dataclass
class RFMRun:
    """One RFM fit as the figure needs it: its history rows, M per iteration and the kept one."""

    label: str
    history: list[dict[str, Any]]
    matrices: list[torch.Tensor]
    best_iteration: int | None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_estimator(cls, model: Any, label: str | None = None) -> RFMRun:
        if not hasattr(model, "history_"):
            raise FactError("this RFM is not fitted yet; call fit first")
        info = {"update": model.update, "kernel": model.kernel, "bandwidth": model.bandwidth,
                "ridge": model.ridge, "n_train": len(model.X_train_)}
        return cls(label or f"{model.update} · {model.kernel}", list(model.history_),
                   list(model.matrices_), model.best_iteration_, info)

    @classmethod
    def from_report(cls, path: Any) -> RFMRun:
        from ..io.report import read_history, read_report

        analysis = read_report(path)
        info = analysis.info
        if info.get("kind") != "rfm":
            raise FactError(f"{path} is not an RFM report (fact rfm --report)")
        matrices = [layer.matrices["nfm"] for layer in analysis.layers if "nfm" in layer.matrices]
        best = info.get("best_iteration")
        label = " · ".join(str(info[k]) for k in ("update", "kernel") if info.get(k))
        return cls(label or str(path), read_history(path), matrices,
                   None if best is None else int(best), {**info, "path": str(path)})


def _score(row: dict[str, Any]) -> tuple[str, float] | None:
    for split in ("test", "val", "train"):
        accuracy = row.get(f"{split}_acc")
        if accuracy is not None and math.isfinite(accuracy):
            return f"{split} accuracy (%)", 100 * accuracy
    for split in ("test", "val", "train"):
        mse = row.get(f"{split}_mse")
        if mse is not None and math.isfinite(mse):
            return f"{split} MSE (log)", mse
    return None


def rfm(runs: Sequence[RFMRun]) -> Any:
    """Test accuracy (or MSE) over iterations, one line per run, the kept iteration starred;
    under it, each run's M at its kept iteration (÷ largest |entry|)."""
    if not runs:
        raise FactError("no RFM run to plot")
    labels = [run.label for run in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{run.label} ({run.info.get('path', i)})" for i, run in enumerate(runs)]
    panels = [(label, run, run.best_iteration if run.best_iteration is not None
               else len(run.matrices) - 1) for label, run in zip(labels, runs) if run.matrices]
    width = max(6.8, 2.7 * len(panels) + 1.2)
    height = 3.0 + (2.9 if panels else 0) + 0.6
    with _style.style():
        import matplotlib

        cmap = matplotlib.colormaps[_style.DIVERGING]
        figure = _style.new_figure(width, height)
        grid = figure.add_gridspec(2 if panels else 1, 1, height_ratios=[1, 1.05]
                                   if panels else None)
        top = figure.add_subplot(grid[0])
        axis_label = None
        for i, (label, run) in enumerate(zip(labels, runs)):
            scored = [(row["iteration"], _score(row)) for row in run.history]
            scored = [(t, s) for t, s in scored if s is not None]
            if not scored:
                continue
            axis_label = scored[0][1][0]
            tone = _style.OKABE_ITO[i % len(_style.OKABE_ITO)]
            xs, ys = [t for t, _ in scored], [s[1] for _, s in scored]
            top.plot(xs, ys, marker="osD^v"[i % 5], markersize=4, color=tone, label=label,
                     linestyle=("-", "--", "-.", ":")[i % 4], linewidth=1.5)
            if run.best_iteration is not None and run.best_iteration in xs:
                y = ys[xs.index(run.best_iteration)]
                top.plot([run.best_iteration], [y], marker="*", markersize=12, color=tone,
                         markeredgecolor="black", markeredgewidth=0.6, linestyle="none",
                         clip_on=False)  # whole at 100 %, where the axis ends
        if axis_label and "MSE" in axis_label:
            top.set_yscale("log")
        elif axis_label:  # accuracy: never a scale past 100 %
            low, high = top.get_ylim()
            top.set_ylim(max(low, -0.5), min(high, 100.5))
        top.set_xlabel("iteration (0 = plain kernel regression, M = I)")
        top.set_ylabel(axis_label or "score")
        top.xaxis.get_major_locator().set_params(integer=True)
        # beside the axes, never over a curve: accuracy curves end at the top right
        top.legend(frameon=False, title="★ = kept (best on validation)", loc="upper left",
                   bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        if panels:
            cells = grid[1].subgridspec(1, len(panels))
            image = None
            for j, (label, run, t) in enumerate(panels):
                ax = figure.add_subplot(cells[j])
                values, _ = _shown(run.matrices[t], False, MAX_CELLS)
                size = run.matrices[t].shape
                image = ax.imshow(values, cmap=cmap, vmin=-1, vmax=1,
                                  extent=(-0.5, size[1] - 0.5, size[0] - 0.5, -0.5))
                ax.set_title(f"{label}\nM at iteration {t}"
                             f"{' (kept)' if t == run.best_iteration else ''}", fontsize=8.5)
                ax.grid(False)
                ax.set_xticks([0, size[1] - 1])
                ax.set_yticks([0, size[0] - 1])
            figure.colorbar(image, ax=figure.axes[1:], shrink=0.85, aspect=25,
                            label="M ÷ its largest |entry|")
        info = runs[0].info
        figure.suptitle(f"Recursive Feature Machine on {info.get('dataset', '?')}",
                        fontsize=10.5)
        settings = " · ".join(f"{k} {fmt(info[k])}" for k in ("kernel", "bandwidth", "ridge",
                                                              "n_train", "n_val")
                              if info.get(k) is not None)
        caption(figure, f"{axis_label or 'score'} per iteration of each run; ★ marks the "
                f"iteration kept (best validation score). {settings}.", width)
    return _style.finish(figure)


KINDS = {"bars": bars, "matrices": matrices, "epochs": epochs, "alpha": alpha, "rfm": rfm}
__all__ = ["KINDS", "RFMRun", "alpha", "alpha_curves", "bars", "epochs", "matrices", "rfm",
           "METRIC_NAMES"]
