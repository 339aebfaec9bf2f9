"""The Typer app, the two consoles and the one place that turns errors into exit codes."""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from ..errors import CheckFailed, FactError

try:  # recent typer vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError


class _OneLineErrors(TyperGroup):
    """Usage errors as one line `error: … (see fact CMD --help)`, exit 2, instead of a panel."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra: Any) -> Any:
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except NoArgsIsHelpError as error:
            error.show()
            code = 2
        except UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else "fact"
            print_line("error:", f"{error.format_message()} (see {where} --help)")
            code = 2
        except ClickException as error:
            print_line("error:", error.format_message())
            code = error.exit_code
        except typer.Abort:
            print_line("error:", "aborted")
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_OneLineErrors,
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


def print_line(label: str, message: object, style: str = "bold red") -> None:
    """`label message` on one stderr line; the message is plain text, never markup."""
    text = " ".join(str(message).split()) or type(message).__name__
    err.print(Text.assemble((label, style), " ", text), soft_wrap=True, highlight=False)


def command(name: str, **kwargs: Any) -> Callable:
    """Register a command whose FactError becomes one line + exit 2, CheckFailed exit 1.

    Anything else that escapes (an OSError such as a full disk, an error raised by torch, numpy
    or h5py on a file nobody validated) is also one line and exit 2, never a traceback;
    FACT_DEBUG=1 re-raises it for a developer.
    """

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **inner: Any) -> Any:
            try:
                return function(*args, **inner)
            except FactError as error:
                print_line("error:", error)
                raise typer.Exit(2) from None
            except CheckFailed as error:
                print_line("check failed:", error)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err.print("interrupted")
                raise typer.Exit(130) from None
            except BrokenPipeError:
                sys.stderr.close()
                raise typer.Exit(0) from None
            except (typer.Exit, typer.Abort, ClickException):
                raise
            except Exception as error:
                if os.environ.get("FACT_DEBUG"):
                    raise
                print_line("error:", unexpected(error))
                raise typer.Exit(2) from None

        return app.command(name, **kwargs)(wrapper)

    return decorate


def unexpected(error: BaseException) -> str:
    """One line for an error no validation anticipated (disk full, memory, a library's own)."""
    if isinstance(error, MemoryError):
        return "out of memory (try a smaller --batch-size or --max-samples)"
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    return f"{type(error).__name__}: {error}"


def warn(message: str) -> None:
    print_line("warning:", message, "yellow")


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
