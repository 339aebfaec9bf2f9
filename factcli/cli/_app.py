"""The Typer app, the two consoles and the one place that turns errors into exit codes."""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import typer
from rich.console import Console

from ..errors import CheckFailed, FactError

app = typer.Typer(
    name="fact",
    help="How a trained network learned its features: FACT, NFA and friends, layer by layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"factcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """How a trained network learned its features: FACT, NFA and friends, layer by layer."""


# Messages and progress go to stderr; data goes to stdout with markup and highlighting off.
# Rich honours NO_COLOR by itself.
err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def command(name: str, **kwargs: Any) -> Callable:
    """Register a command whose FactError becomes one line + exit 2, CheckFailed exit 1."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **inner: Any) -> Any:
            try:
                return function(*args, **inner)
            except FactError as error:
                err.print(f"[bold red]error:[/] {error}", markup=True, highlight=False,
                          soft_wrap=True)
                raise typer.Exit(2) from None
            except CheckFailed as error:
                err.print(f"[bold red]check failed:[/] {error}", soft_wrap=True, highlight=False)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err.print("interrupted")
                raise typer.Exit(130) from None
            except BrokenPipeError:
                sys.stderr.close()
                raise typer.Exit(0) from None

        return app.command(name, **kwargs)(wrapper)

    return decorate


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", soft_wrap=True, highlight=False)


def write_jsonl(rows: Iterable[dict[str, Any]]) -> None:
    """Plain JSON lines on stdout; NaN becomes null so that every line is valid JSON."""
    for row in rows:
        sys.stdout.write(json.dumps(_null_nan(row), allow_nan=False) + "\n")
    sys.stdout.flush()


def write_delimited(rows: list[dict[str, Any]], separator: str) -> None:
    """A header and one line per row (CSV quoting where a cell needs it); missing → empty."""
    if not rows:
        return
    writer = csv.writer(sys.stdout, delimiter=separator, lineterminator="\n")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if _null_nan(row.get(c)) is None else row[c] for c in columns])
    sys.stdout.flush()


def _null_nan(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _null_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_null_nan(v) for v in value]
    return value
