"""matplotlib, imported only when a figure is drawn: one style, colours and a byte-stable save.

Figures are built with matplotlib's object API (`Figure`, no pyplot), so drawing never touches a
GUI backend or the pyplot state of a notebook; files are rendered by Agg (PNG), or the SVG and
PDF writers, with fixed metadata and hash salt so that the same input gives the same bytes.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

from ..errors import FactError

EXTRA = "factcli[plot]"
FORMATS = (".png", ".svg", ".pdf")
DPI = 150

# Okabe & Ito (2008), a palette distinguishable with every common colour-vision deficiency;
# yellow last (it is faint on white). A relation keeps its colour in every figure.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000",
             "#F0E442")
# ColorBrewer RdBu (colour-blind safe) for signed matrix entries; cividis for ordered series.
DIVERGING = "RdBu_r"
SEQUENTIAL = "cividis"

STYLE = {
    "font.family": "DejaVu Sans",  # shipped with matplotlib: the same glyphs on every machine
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "svg.fonttype": "none",       # text stays text: searchable, and testable
    "svg.hashsalt": "factcli",    # element ids from a fixed salt, not a random one
    "pdf.fonttype": 42,
    "image.interpolation": "nearest",
    "savefig.dpi": DPI,
    "figure.dpi": 100,
}
METADATA = {".png": {"Software": "factcli"}, ".svg": {"Date": None, "Creator": "factcli"},
            ".pdf": {"Creator": "factcli", "Producer": "factcli", "CreationDate": None,
                     "ModDate": None}}


def matplotlib():
    """The matplotlib module, or a one-line error naming the extra that provides it."""
    try:
        import matplotlib as module
    except ImportError:
        raise FactError(f"figures need matplotlib: pip install '{EXTRA}'") from None
    return module


@contextlib.contextmanager
def style():
    with matplotlib().rc_context(STYLE):
        yield


def new_figure(width: float, height: float):
    """A constrained-layout figure (labels are never cut) of the given size in inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def finish(figure: Any) -> Any:
    """Lay the figure out once and freeze it: constrained layout refines itself on every draw,
    so without this a second save of the same figure would move things by a pixel."""
    with style():
        figure.draw_without_rendering()
    figure.set_layout_engine("none")
    return figure


def check_output(path: str | os.PathLike) -> Path:
    """The output path, its format known and its folder writable, before any work is done."""
    from ..io.files import check_writable

    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise FactError(f"unknown figure format {path.suffix or '(none)'!r} of {path}; "
                        f"use {', '.join(FORMATS)}")
    matplotlib()
    check_writable(path)
    return path


def check_dpi(dpi: float | None) -> None:
    if dpi is not None and not (math.isfinite(dpi) and 10 <= dpi <= 1200):
        raise FactError(f"--dpi must lie in [10, 1200] (got {dpi:g})")


def save(figure: Any, path: str | os.PathLike, dpi: float | None = None) -> Path:
    """Write `figure` as PNG, SVG or PDF (by suffix), atomically and byte-reproducibly;
    `dpi`: the PNG's resolution (default DPI; lower for small files committed to docs)."""
    from ..io.files import atomic_path

    check_dpi(dpi)
    path = check_output(path)
    suffix = path.suffix.lower()
    with style(), atomic_path(path) as temporary:
        figure.savefig(temporary, format=suffix[1:], metadata=METADATA[suffix],
                       dpi=dpi or DPI)
    return path


def render(figure: Any, suffix: str) -> bytes:
    """The figure's file content in memory (for embedding in HTML)."""
    import io

    buffer = io.BytesIO()
    with style():
        figure.savefig(buffer, format=suffix[1:], metadata=METADATA[suffix])
    return buffer.getvalue()
