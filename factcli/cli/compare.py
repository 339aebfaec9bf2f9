"""`fact compare`: relations, layers, runs and epochs side by side, composable in pipelines."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.text import Text

from ..errors import CheckFailed, FactError
from ._app import command, err, out, write_delimited, write_jsonl
from .analyze import (
    Alpha,
    Arch,
    BatchSize,
    Data,
    DataDir,
    Decay,
    Device,
    Dtype,
    Layers,
    Loss,
    MaxSamples,
    Model,
    Relations,
    Seed,
    TrustCode,
    model_overrides,
    run_analysis,
    split_list,
)
from .render import Cell, Grid, agreement_style, legend, number, print_grid, stationarity_style

if TYPE_CHECKING:
    from ..compare.comparison import Comparison, Source

FORMATS = ("table", "jsonl", "tsv", "csv")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40


@command("compare")
def compare_command(
    inputs: Annotated[list[str], typer.Argument(
        help="Checkpoints (analyzed on the fly), HDF5 reports, or - for stdin: JSON lines of "
             "`fact analyze --format jsonl` or one path per line.", show_default=False)],
    metric: Annotated[str, typer.Option(help="pearson, cosine or rel_err.")] = "pearson",
    relations: Relations = None,
    layers: Layers = None,
    sort: Annotated[Optional[str], typer.Option(
        help="Sort rows by input (default: epoch order when recorded), layer, stationarity, "
             "epoch, train_loss or a relation (best first); with --features by pearson, "
             "cosine, overlap, max_angle.")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table, jsonl, tsv or csv.")]
    = "table",
    require: Annotated[Optional[list[str]], typer.Option(
        help="Check EXPR on every (input, layer) row, e.g. 'fact.pearson >= 0.99' or "
             "'fact.pearson > nfa.pearson'; exit 1 listing violations. Repeatable.",
        metavar="EXPR")] = None,
    features: Annotated[bool, typer.Option(
        "--features", help="Compare the learned feature matrices (NFM = WᵀW) of each layer "
        "with the first input's: pearson, cosine, top-r eigenspace overlap.")] = False,
    rank: Annotated[Optional[int], typer.Option(
        help="r of the --features eigenspace overlap (default: the reference's 90 % of "
             "trace).")] = None,
    data: Data = None,
    data_dir: DataDir = None,
    arch: Arch = None,
    model: Model = None,
    loss: Loss = None,
    weight_decay: Decay = None,
    alpha: Alpha = 0.5,
    device: Device = None,
    batch_size: BatchSize = 1000,
    max_samples: MaxSamples = None,
    seed: Seed = 0,
    dtype: Dtype = None,
    trust_model_code: TrustCode = False,
    plot: Annotated[Optional[Path], typer.Option(
        help="Also draw the comparison here (.png, .svg, .pdf; needs factcli[plot]): bars for "
             "one input, agreement over epochs for several.")] = None,
) -> None:
    """Compare relations per layer, runs and training snapshots, or the features they learned.

    One input: relations side by side per layer, the best marked.

    Several: one row per (input, layer), in epoch order, with a sparkline per relation.
    """
    from ..compare import comparison as cmp
    from ..compare.requirements import parse_requirement, violations

    if format not in FORMATS:
        raise FactError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    cmp.check_metric(metric)
    wanted = split_list(relations)
    if wanted:
        cmp.check_relations(wanted)
    if sort:
        cmp.check_sort(sort, cmp.FEATURE_SORT_KEYS if features
                       else [*cmp.SORT_KEYS, *(wanted or cmp.RELATIONS)])
    if plot is not None:
        if features:
            raise FactError("--plot draws the relations view; it cannot go with --features")
        from ..plot import check_output

        check_output(plot)
    names = cmp.FEATURE_FIELDS if features else cmp.relation_names()
    requirements = [parse_requirement(text, names) for text in require or []]

    needed = None  # checkpoints analyze only what is shown or required
    if wanted:
        needed = ",".join(dict.fromkeys(
            [*wanted, *(name.split(".")[0] for r in requirements for name in r.names
                        if "." in name)]))

    def analyzed(path: str) -> Source:
        if features:
            from ..io.checkpoint import load_checkpoint

            return cmp.weight_features(load_checkpoint(
                path, model_overrides(arch, model), trust_model_code=trust_model_code).build(),
                path)
        return cmp.from_analysis(run_analysis(
            path, data, data_dir, arch, model, loss, weight_decay, alpha, needed, layers,
            device, batch_size, max_samples, seed, dtype, trust_model_code), path)

    sources = cmp.select_layers(load_inputs(inputs, analyzed), split_list(layers))
    if features:
        rows = cmp.compare_features(sources, rank=rank, sort=sort)
        checked = [(row["input"], row["layer"], row) for row in rows]
        show = partial(emit_features, rows, format)
    else:
        result = cmp.compare(sources, metric=metric, relations=wanted, sort=sort)
        checked = [(s.label, layer, cmp.row_values(s, layer)) for s in cmp.in_order(sources)
                   for layer in s.layers]
        show = partial(emit_comparison, result, format, len(sources))
    failed = violations(requirements, checked)  # bad input fails before any output
    if plot is not None:
        from .plot import plot_to

        plot_to(plot, cmp.in_order(sources), metric, wanted)
    show()
    if failed:
        for violation in failed:
            seen = ", ".join(f"{k} = {number(v, 4)}" for k, v in violation.values.items())
            err.print(f"  {violation.input} layer {violation.layer}: {violation.requirement} "
                      f"({seen})", soft_wrap=True, highlight=False, markup=False)
        raise CheckFailed(f"{len(failed)} violation(s) of --require in {len(checked)} rows")
    if requirements:
        err.print(f"{len(requirements)} requirement(s) hold on all {len(checked)} rows",
                  highlight=False)


def load_inputs(inputs: list[str], analyzed: Callable[[str], Source]) -> list[Source]:
    """Reports are read (matrices only on use), checkpoints handed to `analyzed`; `-` reads
    JSON lines or paths."""
    from ..compare import comparison as cmp
    from ..io.report import read_report

    if inputs.count("-") > 1:
        raise FactError("stdin (-) can be given only once")
    sources: list[Source] = []
    for item in inputs:
        if item == "-":
            kind, content = read_stdin()
            if kind == "rows":
                sources.extend(cmp.from_rows(content))
                continue
            paths = content
        else:
            paths = [item]
        for path in paths:
            if not Path(path).is_file():
                raise FactError(f"input not found: {path}")
            if is_report(path):
                sources.append(cmp.from_analysis(read_report(path), path))
            else:
                sources.append(analyzed(path))
    return sources


def read_stdin() -> tuple[str, list[Any]]:
    """("rows", JSON objects) when stdin holds JSON lines, else ("paths", one per line)."""
    try:
        text = sys.stdin.read()
    except UnicodeDecodeError:
        raise FactError("stdin (-) is not text: pipe JSON lines or paths into fact compare") \
            from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise FactError("stdin (-) is empty: pipe JSON lines or paths into fact compare")
    if not lines[0].startswith("{"):
        return "paths", lines
    from ..io.validate import json_line

    return "rows", [json_line(line, f"stdin line {n}") for n, line in enumerate(lines, 1)]


def is_report(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError as error:  # e.g. no read permission
        raise FactError(f"cannot read {path}: {error.strerror or error}") from None


def sparkline(values: list[float]) -> str:
    """Values scaled to their own range as block characters; missing ones are blanks."""
    if len(values) > SPARK_WIDTH:  # evenly spaced picks keep first and last
        values = [values[round(i * (len(values) - 1) / (SPARK_WIDTH - 1))]
                  for i in range(SPARK_WIDTH)]
    finite = [v for v in values if v == v]
    if not finite:
        return " " * len(values)
    low, high = min(finite), max(finite)
    top = len(SPARKS) - 1
    return "".join(" " if v != v else SPARKS[top // 2] if high == low
                   else SPARKS[round((v - low) / (high - low) * top)] for v in values)


def emit_comparison(result: Comparison, format: str, n_inputs: int) -> None:
    if format != "table":
        write_rows(result.rows, format)
        return
    rows, metric = result.rows, result.metric
    several = n_inputs > 1
    extra = [key for key in ("epoch", "train_loss") if several and any(
        row[key] is not None for row in rows)]
    title = f"{metric} of each relation with WᵀW (forward) or WWᵀ (backward, b…)"
    lead = (["input"] if several else []) + extra + ["layer"]
    grid = Grid(title if several else f"{rows[0]['input']}: {title}",
                [*lead, "station.", *result.relations], [], keep=len(lead))
    for index, row in enumerate(rows):
        if several and index and row["input"] != rows[index - 1]["input"]:
            grid.sections.add(index - 1)
        marked = {row.get("best_forward"), row.get("best_backward")}
        cells = [Cell(number(row[r]), agreement_style(row[r], metric), r in marked)
                 for r in result.relations]
        first = ([row["input"]] if several else []) + [
            number(row[key]) if key == "train_loss" else "–" if row[key] is None
            else str(row[key]) for key in extra]
        grid.add(*first, row["layer"], Cell(number(row["stationarity"], 2),
                                            stationarity_style(row["stationarity"])), *cells)
    if result.trends:
        grid.sections.add(len(grid.rows) - 1)
        for layer, series in result.trends.items():
            grid.add(*([Cell("trend", "dim")] + [""] * (len(lead) - 2)), layer, "",
                     *[Cell(sparkline(series[r]), "cyan") for r in result.relations])
    print_grid(grid)
    order = "ordered by training epoch" if "epoch" in extra and all(
        row["epoch"] is not None for row in rows) else "in input order"
    notes = [legend(metric, "best per layer, forward and backward")]
    if several:
        notes.append(f"inputs {order}; trend = each relation over the inputs, own scale")
    out.print(Text(" · ".join(notes), style="dim"), soft_wrap=not out.is_terminal)


def emit_features(rows: list[dict[str, Any]], format: str) -> None:
    if format != "table":
        write_rows([{**row, "angles": row["angles"] if format == "jsonl"
                     else " ".join(f"{a:g}" for a in row["angles"])} for row in rows], format)
        return
    grid = Grid(f"{rows[0]['matrix']} of each input vs {rows[0]['reference']}",
                ["input", "layer", "pearson", "cosine", "rank", "overlap", "angles (°)"], [],
                keep=2, left=frozenset({"input", "layer", "angles (°)"}),
                wrap=frozenset({"angles (°)"}))
    for row in rows:
        grid.add(row["input"], row["layer"],
                 Cell(number(row["pearson"]), agreement_style(row["pearson"], "pearson")),
                 Cell(number(row["cosine"]), agreement_style(row["cosine"], "cosine")),
                 str(row["rank"]),
                 Cell(number(row["overlap"]), agreement_style(row["overlap"], "cosine")),
                 " ".join(f"{a:.1f}" for a in row["angles"]))
    print_grid(grid)
    out.print(Text("overlap = mean cos² of the principal angles between the top-rank "
                   "eigenspaces (1 = same subspace); all angles listed", style="dim"),
              soft_wrap=True)


def write_rows(rows: list[dict[str, Any]], format: str) -> None:
    if format == "jsonl":
        write_jsonl(rows)
    else:
        write_delimited(rows, "\t" if format == "tsv" else ",")
