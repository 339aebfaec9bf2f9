"""The Typer app, the two consoles and the one place that turns errors into exit codes."""

from __future__ import annotations

import csv
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any

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
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, pwsh
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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


class _Stdout(Console):
    """stdout: a closed pipe raises BrokenPipeError for `command` to handle (rich would exit 1)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


# Messages and progress go to stderr; data goes to stdout with markup and highlighting off.
# Rich honours NO_COLOR by itself. Tables never rely on the console width (render.py fits them).
err = Console(stderr=True)
out = _Stdout(highlight=False, soft_wrap=False)

# -q (0), normal (1), -v (2): set by every command from its --quiet/--verbose options.
verbosity = {"level": 1}
EXIT_CLOSED_STDOUT = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by SIGPIPE


def print_line(label: str, message: object, style: str = "bold red") -> None:
    """`label message` on one stderr line; the message is plain text, never markup."""
    text = " ".join(str(message).split()) or type(message).__name__
    err.print(Text.assemble((label, style), " ", text), soft_wrap=True, highlight=False)


def info(message: str) -> None:
    """A message on stderr, unless -q."""
    if verbosity["level"] >= 1:
        err.print(message, highlight=False, soft_wrap=True, markup=False)


def detail(message: str) -> None:
    """A message on stderr only with -v."""
    if verbosity["level"] >= 2:
        err.print(message, style="dim", highlight=False, soft_wrap=True, markup=False)


def show_progress() -> bool:
    """Progress bars: on a terminal, unless -q."""
    return verbosity["level"] >= 1 and err.is_terminal


def silence_stdout() -> None:
    """After a closed pipe: send further writes (and the interpreter's final flush) nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


_QUIET = inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=
                           Annotated[bool, typer.Option("--quiet", "-q", help=(
                               "No progress bars or messages (warnings and errors still "
                               "show)."))])
_VERBOSE = inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=
                             Annotated[int, typer.Option("--verbose", "-v", count=True, help=(
                                 "More messages: where data came from, timings."))])


def command(name: str, parent: typer.Typer | None = None, **kwargs: Any) -> Callable:
    """Register a command (with -q/-v) whose FactError becomes one line + exit 2, CheckFailed
    exit 1, a closed stdout exit 141 without a message.

    Anything else that escapes (an OSError such as a full disk, an error raised by torch, numpy
    or h5py on a file nobody validated) is also one line and exit 2, never a traceback;
    FACT_DEBUG=1 re-raises it for a developer.
    """

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function, eval_str=True)

        @functools.wraps(function)
        def wrapper(*args: Any, quiet: bool = False, verbose: int = 0, **inner: Any) -> Any:
            from ..data import fetch

            verbosity["level"] = 0 if quiet else 2 if verbose else 1
            fetch.QUIET = quiet
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
                silence_stdout()
                raise typer.Exit(EXIT_CLOSED_STDOUT) from None
            except (typer.Exit, typer.Abort, ClickException):
                raise
            except Exception as error:
                if os.environ.get("FACT_DEBUG"):
                    raise
                print_line("error:", unexpected(error))
                raise typer.Exit(2) from None

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), _QUIET, _VERBOSE])
        return (parent or app).command(name, **kwargs)(wrapper)

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


def write_jsonl(rows: Iterable[Any]) -> None:
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
