"""`fact data`: download the standard image sets into the cache, and list what is there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import app, command, info, out, write_jsonl

data_app = typer.Typer(help="Datasets: fetch mnist, fashion-mnist, cifar10, cifar100 into the "
                       "cache ($FACT_DATA_DIR, else the platform cache folder); show what a "
                       "spec gives.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

Root = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder to download into (default: $FACT_DATA_DIR, else the cache).")]


@command("fetch", parent=data_app)
def fetch_command(
    names: Annotated[list[str], typer.Argument(help="mnist, fashion-mnist, cifar10, cifar100.",
                                               show_default=False)],
    data_dir: Root = None,
) -> None:
    """Download and verify datasets (resumes a cut-off download; nothing unverified is kept)."""
    from ..data import fetch

    for name in names:
        fetch.check_name(name)
    for name in names:
        folder = fetch.fetch(name, data_dir)
        info(f"{name}: verified in {folder}")


@command("show", parent=data_app)
def show_command(
    spec: Annotated[str, typer.Argument(
        help="A dataset spec, e.g. text:book.txt,T=64 or file:tokens.npy (interfaces.md §3).",
        show_default=False)],
    data_dir: Root = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table or jsonl.")] = "table",
) -> None:
    """What a spec gives: samples, shapes and dtypes, targets, classes or vocabulary (tokens:
    T, tokenizer, stride, predicted positions), fingerprint."""
    from ..data.datasets import load_dataset
    from ..errors import FactError

    if format not in ("table", "jsonl"):
        raise FactError(f"unknown format {format!r}; choose table or jsonl")
    row = load_dataset(spec, data_dir).summary()
    if format == "jsonl":
        write_jsonl([row])
        return
    for key, value in row.items():
        out.print(f"{key}: {value}", markup=False, highlight=False, soft_wrap=True)


@command("list", parent=data_app)
def list_command(
    data_dir: Root = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table or jsonl.")] = "table",
) -> None:
    """The downloadable datasets, their mirrors and whether they are in the cache."""
    from ..data import fetch
    from ..errors import FactError

    if format not in ("table", "jsonl"):
        raise FactError(f"unknown format {format!r}; choose table or jsonl")
    root = Path(data_dir) if data_dir else fetch.cache_dir()
    rows = []
    for name, source in fetch.SOURCES.items():
        folder = root / name
        done = folder / source.archive_folder if source.archive_folder else folder
        cached = done.is_dir() and (source.archive_folder is not None or all(
            (folder / f).is_file() for f in source.files))
        rows.append({"name": name, "cached": cached, "folder": str(done),
                     "files": list(source.files), "mirrors": list(fetch.mirrors(source))})
    if format == "jsonl":
        write_jsonl(rows)
        return
    out.print(f"cache: {root}", markup=False, highlight=False)
    for row in rows:
        state = "cached" if row["cached"] else "not downloaded"
        out.print(f"{row['name']}: {state} · {row['folder']} · from {', '.join(row['mirrors'])}",
                  markup=False, highlight=False, soft_wrap=not out.is_terminal)
