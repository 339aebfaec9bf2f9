"""`fact rfm`: a Recursive Feature Machine with the NFA or the FACT update (relations.md §5)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ._app import command, err, info, out, show_progress, warn, write_delimited, write_jsonl

FORMATS = ("table", "jsonl", "tsv")
COLUMNS = ("iteration", "train_acc", "val_acc", "test_acc", "seconds", "train_mse", "val_mse",
           "test_mse", "max_entry", "jitter")
REPORT_FIELDS = tuple(c for c in COLUMNS if c != "iteration")


@command("rfm")
def rfm_command(
    data: Annotated[str, typer.Option(help="Dataset spec, e.g. parity:d=50,k=3,n=2000, "
                                      "modular:p=61, sklearn:name=wine, file:x.npz.")],
    update: Annotated[str, typer.Option(help="Feature update: nfa, fact or fact-geo.")] = "fact",
    kernel: Annotated[str, typer.Option(help="laplace, gaussian (Mahalanobis), exp or quadratic "
                                        "(inner product).")] = "laplace",
    bandwidth: Annotated[float, typer.Option(help="L of the laplace/gaussian kernel.")] = 10.0,
    ridge: Annotated[float, typer.Option(help="μ in (K + μI)⁻¹Y; 0 = least squares.")] = 1e-3,
    iters: Annotated[int, typer.Option(help="Feature updates (rows 0..iters; 0 = plain kernel "
                                       "regression).")] = 5,
    power: Annotated[float, typer.Option(help="NFA power s: M = AGOP^s.")] = 1.0,
    center: Annotated[bool, typer.Option(help="NFA: center the Jacobians before the outer "
                                         "product.")] = False,
    normalization: Annotated[str, typer.Option(help="max (divide M by its largest entry after "
                                               "each update) or none.")] = "max",
    val_frac: Annotated[float | None, typer.Option(
        help="Share of the training set held out for choosing the iteration (0: keep the last; "
             "default 0.1, with --protocol 0.2).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the validation split.")] = 0,
    standardize: Annotated[bool | None, typer.Option(
        "--standardize/--no-standardize",
        help="Z-score features with training statistics (default: only with --protocol).")]
    = None,
    row_norm: Annotated[bool, typer.Option(help="Scale every input row to unit norm.")] = False,
    protocol: Annotated[str | None, typer.Option(help="tabular: grid over ridge and row "
                                                    "normalization for every method.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float64 or float32.")] = "float64",
    batch_size: Annotated[int | None, typer.Option(help="Rows per Jacobian batch (bounds "
                                                      "memory; default: automatic).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with downloaded datasets.")]
    = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never download a dataset (also FACT_OFFLINE=1).")] = False,
    format: Annotated[str, typer.Option("--format", "-f", help="table, jsonl or tsv.")] = "table",
    report: Annotated[Path | None, typer.Option(help="Write M per iteration and the metrics "
                                                   "to this HDF5 report.")] = None,
) -> None:
    """Recursive Feature Machine: kernel regression alternating with an NFA or FACT update of M."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..data.datasets import load_dataset
    from ..engine.device import resolve_device
    from ..errors import FactError
    from ..io.files import check_writable
    from ..rfm.estimator import RFM, tabular_protocol

    if format not in FORMATS:
        raise FactError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if protocol not in (None, "tabular"):
        raise FactError(f"unknown protocol {protocol!r}; the one protocol is: tabular")
    if report is not None:
        if protocol:
            raise FactError("--report stores one run's matrices; it cannot go with --protocol")
        check_writable(report)
    dataset = load_dataset(data, data_dir, offline=offline or None)
    task = "regression" if dataset.n_classes is None else "classification"
    test = (dataset.x_test, dataset.y_test) if dataset.x_test is not None else None
    progress = Progress(TextColumn("[bold]rfm[/] {task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        console=err, transient=True, disable=not show_progress())

    if protocol == "tabular":
        if test is None:
            raise FactError(f"the tabular protocol needs a test split; {data!r} has none")
        if iters > 5:
            raise FactError(f"the tabular protocol runs at most 5 iterations (got --iters {iters})")
        with progress:
            bar = progress.add_task("tabular")
            rows = tabular_protocol(
                dataset.x_train, dataset.y_train, *test, kernel=kernel, bandwidth=bandwidth,
                iters=iters, power=power, seed=seed, device=device, dtype=dtype,
                val_frac=0.2 if val_frac is None else val_frac,
                standardize=True if standardize is None else standardize, task=task,
                progress=lambda text, done, total: progress.update(
                    bar, completed=done, total=total, description=text))
        _emit(rows, format, _protocol_table, data)
        return

    val_frac = 0.1 if val_frac is None else val_frac
    model = RFM(kernel=kernel, update=update, bandwidth=bandwidth, ridge=ridge, iters=iters,
                power=power, center=center, normalization=normalization, val_frac=val_frac,
                seed=seed, standardize=bool(standardize), row_norm=row_norm, task=task,
                device=device, dtype=dtype, batch_size=batch_size)
    with progress:
        bar = progress.add_task(f"{update} · {kernel}", total=iters + 1)
        model.fit(dataset.x_train, dataset.y_train, eval_sets={"test": test} if test else None,
                  callback=lambda row: progress.update(bar, advance=1))
    for message in model.warnings_:
        warn(message)
    if model.interrupted_:
        info(f"interrupted: printing{' and saving' if report else ''} the "
             f"{len(model.history_)} finished iteration(s)")
    rows = [{key: row.get(key) for key in COLUMNS} | {"best": row["iteration"] ==
                                                      model.best_iteration_}
            for row in model.history_]
    if report is not None:
        settings = {"dataset": data, "update": update, "kernel": kernel, "bandwidth": bandwidth,
                    "ridge": ridge, "power": power, "center": center,
                    "normalization": normalization, "best_iteration": model.best_iteration_,
                    "iters": iters, "val_frac": val_frac, "seed": seed,
                    "standardize": bool(standardize), "row_norm": row_norm,
                    "device": str(resolve_device(device)), "dtype": dtype,
                    "n_train": len(model.X_train_),
                    "n_val": dataset.n_train - len(model.X_train_)}
        _write_report(report, model, settings)
        info(f"report written to {report}")
    _emit(rows, format, _iteration_table, f"{data} · {update} · {kernel}")
    if model.interrupted_:
        raise typer.Exit(130)


def _emit(rows: list[dict[str, Any]], format: str, table, title: str) -> None:
    if format == "jsonl":
        write_jsonl(rows)
    elif format == "tsv":
        write_delimited(rows, "\t")
    else:
        table(rows, title)


def _cell(row: dict[str, Any], split: str) -> str:
    accuracy, mse = row.get(f"{split}_acc"), row.get(f"{split}_mse")
    if accuracy is not None and accuracy == accuracy:
        return f"{100 * accuracy:.2f}%"
    return "–" if mse is None or mse != mse else f"{mse:.4g}"


def _iteration_table(rows: list[dict[str, Any]], title: str) -> None:
    from .render import Cell, Grid, print_grid

    classification = rows[0]["train_acc"] is not None
    grid = Grid(title, ["iter", f"train {'acc' if classification else 'mse'}", "val", "test",
                        "max entry", "seconds"], [], left=frozenset())
    for row in rows:
        largest = "–" if row["max_entry"] is None else f"{row['max_entry']:.3g}"
        grid.add(Cell(str(row["iteration"]), "bold" if row["best"] else "", row["best"]),
                 _cell(row, "train"), _cell(row, "val"), _cell(row, "test"), largest,
                 f"{row['seconds']:.2f}")
    print_grid(grid)
    out.print("* kept: best on validation" if not out.is_terminal else
              "reverse video: kept, best on validation", style="dim", highlight=False)


def _protocol_table(rows: list[dict[str, Any]], title: str) -> None:
    from .render import Grid, print_grid

    grid = Grid(f"{title} · tabular protocol", ["method", "ridge", "row norm", "iter", "val",
                                                 "test", "seconds"], [])
    for row in rows:
        seconds = "–" if row["seconds"] is None else f"{row['seconds']:.2f}"
        grid.add(row["method"], f"{row['ridge']:g}", "yes" if row["row_norm"] else "no",
                 str(row["iteration"]), _cell(row, "val"), _cell(row, "test"), seconds)
    print_grid(grid)


def _write_report(path: Path, model, settings: dict[str, Any]) -> None:
    """factcli.report/1 with kind=rfm: /layers/iteration_<t>/nfm = M_t, /history the metrics."""
    from datetime import UTC, datetime

    import numpy as np
    import torch

    from .. import __version__
    from ..io.files import atomic_hdf5

    with atomic_hdf5(path, track_order=True) as handle:
        handle.attrs.update(format="factcli.report/1", kind="rfm", factcli_version=__version__,
                            created=datetime.now(UTC).isoformat(timespec="seconds"),
                            command=shlex.join(["fact", *sys.argv[1:]]),
                            torch_version=str(torch.__version__), **settings)
        layers = handle.create_group("layers", track_order=True)
        for t, matrix in enumerate(model.matrices_):
            name = f"iteration_{t}"
            group = layers.create_group(name)
            group.attrs.update(name=name, in_features=matrix.shape[1],
                               out_features=matrix.shape[0], kind="rfm")
            group.create_dataset("nfm", data=matrix.numpy(), compression="gzip", shuffle=True)
        fields = [("iteration", "i8")] + [(name, "f8") for name in REPORT_FIELDS]
        table = np.array([(row["iteration"], *(np.nan if row.get(name) is None else row[name]
                                                 for name in REPORT_FIELDS))
                          for row in model.history_], dtype=fields)
        handle.create_dataset("history", data=table)
