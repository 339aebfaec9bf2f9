"""`fact show`: a stored report printed exactly as `fact analyze` printed it, or one matrix."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.text import Text

from ..errors import FactError
from ._app import command, err, out, write_delimited, write_jsonl
from .render import FORMATS, Grid, number, print_grid

if TYPE_CHECKING:
    from ..engine.results import Analysis


@command("show")
def show_command(
    report: Annotated[Path, typer.Argument(help="An HDF5 report (fact analyze --report, "
                                           "fact rfm).", show_default=False)],
    format: Annotated[str, typer.Option("--format", "-f", help="table, jsonl, json, tsv or csv.")]
    = "table",
    metric: Annotated[str, typer.Option(help="Table metric: pearson, cosine or rel_err.")]
    = "pearson",
    matrix: Annotated[Optional[tuple[str, str]], typer.Option(
        help="Print one stored matrix: LAYER and RELATION (or nfm, bnfm).",
        metavar="LAYER RELATION", show_default=False)] = None,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", help="Write the --matrix to this .npy file instead of printing it.")] = None,
    max_bytes: Annotated[int, typer.Option(
        help="Largest --matrix formed (float64 bytes): one stored as thin factors, e.g. an LM "
        "head's vocab×vocab bnfm, is materialised only below it.")] = 2**30,
) -> None:
    """Print a stored report without recomputing: the rows `fact analyze` printed, an RFM
    report's history, or one matrix (--matrix LAYER RELATION [--out m.npy])."""
    from ..io.report import read_report
    from .render import emit

    if format not in FORMATS:
        raise FactError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if out_path is not None and not matrix:
        raise FactError("--out exports a matrix: add --matrix LAYER RELATION")
    if max_bytes < 1:
        raise FactError(f"--max-bytes must be positive (got {max_bytes})")
    analysis = read_report(report)
    if matrix:
        show_matrix(analysis, *matrix, format, out_path, max_bytes)
    elif analysis.info.get("kind") == "rfm":
        show_history(report, analysis.info, format)
    else:
        emit(analysis, format, metric)


def show_matrix(analysis: Analysis, layer_name: str, name: str, format: str,
                path: Path | None, max_bytes: int = 2**30) -> None:
    """Print one stored matrix (rounded table, full-precision tsv, JSON rows) or save it; a
    matrix stored as factors is formed first, if its p×q float64 entries fit `max_bytes`."""
    import numpy as np

    try:
        layer = analysis.layer(layer_name)
    except KeyError:
        raise FactError(f"no layer {layer_name!r} in the report; layers: "
                        f"{', '.join(layer.name for layer in analysis.layers)}") from None
    if name not in layer.matrices:
        held = ", ".join(layer.matrices) or "none (written with --no-matrices?)"
        raise FactError(f"layer {layer_name!r} stores no {name!r} matrix; stored: {held}")
    from ..engine.factored import Factored

    stored = layer.matrices[name]
    p, q = stored.shape
    factored = isinstance(stored, Factored)
    if 8 * p * q > max_bytes:
        held = f"stored as rank-{stored.rank} factors" if factored else "stored densely"
        raise FactError(f"{name} of layer {layer_name} is {p}×{q} ({8 * p * q} bytes as "
                        f"float64, {held}), more than --max-bytes {max_bytes}; raise "
                        "--max-bytes to form it")
    values = (stored.dense(f"{name} of layer {layer_name}") if factored else stored).numpy()
    if path is not None:
        from ..io.files import atomic_path

        if path.suffix != ".npy":
            raise FactError(f"--out must end in .npy (got {path})")
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.save(handle, values)
        err.print(f"{name} of layer {layer_name} ({values.shape[0]}×{values.shape[1]}) "
                  f"written to {path}", highlight=False)
    elif format == "table":
        out.print(f"{name} of layer {layer_name} ({values.shape[0]}×{values.shape[1]})",
                  style="dim", highlight=False)
        out.print(np.array2string(values, precision=4, suppress_small=True,  # every entry
                                  max_line_width=out.width, threshold=values.size + 1),
                  markup=False, highlight=False)
    elif format in ("tsv", "csv"):
        np.savetxt(sys.stdout, values, fmt="%.17g", delimiter="\t" if format == "tsv" else ",")
    else:  # one JSON array per row, or the whole matrix as one document
        rows = values.tolist()
        write_jsonl(rows if format == "jsonl" else [{"layer": layer_name, "name": name,
                                                      "matrix": rows}])


def show_history(path: Path, info: dict[str, Any], format: str) -> None:
    from ..io.report import read_history

    rows = read_history(path)
    if format == "jsonl":
        write_jsonl(rows)
    elif format == "json":
        write_jsonl([{"info": info, "history": rows}])
    elif format in ("tsv", "csv"):
        write_delimited(rows, "\t" if format == "tsv" else ",")
    else:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        grid = Grid(f"RFM on {info.get('dataset')}: one row per iteration", columns, [],
                    left=frozenset())
        for row in rows:
            grid.add(*[number(v) if isinstance(v, float) else str(v)
                       for v in (row.get(c) for c in columns)])
        print_grid(grid)
        out.print(Text("feature matrices: fact show REPORT --matrix iteration_<t> nfm",
                       style="dim"))
    sys.stdout.flush()
