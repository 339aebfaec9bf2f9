"""The `fact` command line: one short module per command over the library API.

Nothing here imports torch at module level, so `fact --help` stays instant.
"""

from __future__ import annotations

from . import analyze, compare, data, layers, merge, plot, rfm, show, train  # noqa: E402,F401
from ._app import app


def main() -> None:
    app(prog_name="fact")
