"""`fact merge`: finish sharded runs by adding the raw sums of their parts."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import command, warn
from .analyze import Format, Matrices, MatrixDtype, Metric, NoMatrices, Report


@command("merge")
def merge_command(
    parts: Annotated[list[str], typer.Argument(help="The parts written by fact analyze --shard "
                                               "I/N --partial FILE, all N of them.")],
    format: Format = "table",
    metric: Metric = "pearson",
    report: Report = None,
    matrices: Matrices = None,
    no_matrices: NoMatrices = False,
    matrix_dtype: MatrixDtype = "float32",
) -> None:
    """Add up the shards of one run and finish it: the result one run over all samples gives."""
    from ..io.partial import merge_partials
    from .analyze import check_outputs, deliver, writable

    stored = check_outputs(format, report, matrices, no_matrices, matrix_dtype)
    if report is not None:
        writable(report)
    result = merge_partials(parts, keep_matrices=stored)
    for message in result.warnings:
        warn(message)
    deliver(result, format, metric, report, stored, matrix_dtype)
