"""The `fact` command line: one short module per command over the library API.

Nothing here imports torch at module level, so `fact --help` stays instant.
"""

from __future__ import annotations

from . import analyze, compare, data, layers, merge, plot, repro, rfm, show, train  # noqa: F401
from ._app import app


def main() -> None:
    app(prog_name="fact")
