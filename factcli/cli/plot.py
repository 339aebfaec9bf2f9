"""`fact plot` (one figure) and `fact report` (one self-contained HTML page).

matplotlib is imported only inside the commands, after the output path has been checked, so
`fact --help` stays instant and a missing `factcli[plot]` costs no computation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import FactError
from ._app import command, err
from .analyze import (
    Alpha,
    BatchSize,
    Data,
    DataDir,
    Device,
    Dtype,
    Layers,
    MaxSamples,
    Relations,
    Seed,
    TrustCode,
    split_list,
)

KINDS = ("bars", "matrices", "epochs", "alpha", "rfm")


class Loader:
    """Turns INPUT arguments (reports, checkpoints, `-`) into analyses, sources or RFM runs;
    checkpoints are analyzed with the analysis options given on the command line."""

    def __init__(self, data=None, data_dir=None, alpha=0.5, layers=None, device=None,
                 batch_size=1000, max_samples=None, seed=0, dtype=None, trust=False):
        self.options = dict(data=data, data_dir=data_dir, alpha=alpha, layers=layers,
                            device=device, batch_size=batch_size, max_samples=max_samples,
                            seed=seed, dtype=dtype, trust=trust)

    def analyzed(self, path: str):
        from .analyze import run_analysis

        o = self.options
        layers = ",".join(o["layers"]) if o["layers"] else None
        return run_analysis(path, o["data"], o["data_dir"], None, None, None, None, o["alpha"],
                            None, layers, o["device"], o["batch_size"], o["max_samples"],
                            o["seed"], o["dtype"], o["trust"])

    def load(self, inputs: list[str]) -> list[Any]:
        from ..compare import comparison as cmp
        from ..plot import inputs as plot_inputs
        from .compare import is_report, read_stdin

        if inputs.count("-") > 1:
            raise FactError("stdin (-) can be given only once")
        items: list[Any] = []
        for item in inputs:
            paths = [item]
            if item == "-":
                kind, content = read_stdin()
                if kind == "rows":
                    items.extend(cmp.from_rows(content))
                    continue
                paths = content
            for path in paths:
                if not Path(path).is_file():
                    raise FactError(f"input not found: {path}")
                if is_report(path):
                    loaded = plot_inputs.read(path)
                    if not isinstance(loaded, plot_inputs.RFMRun):
                        loaded = plot_inputs.select(loaded, self.options["layers"])
                    items.append(loaded)
                else:
                    items.append(self.analyzed(path))
        return items


def draw(kind: str | None, items: list[Any], *, relations: list[str] | None = None,
         metric: str = "pearson", layer: str | None = None, hide_diagonal: bool = False,
         quantile: float = 0.99, loader: Loader | None = None) -> tuple[Any, str]:
    """The figure of `kind` (None: the natural one for the inputs) and the kind drawn."""
    from ..compare.comparison import Source
    from ..engine.results import Analysis
    from ..plot import figures
    from ..plot.inputs import with_agop

    runs = [item for item in items if isinstance(item, figures.RFMRun)]
    if runs and len(runs) < len(items):
        raise FactError("RFM reports plot only with other RFM reports (--kind rfm)")
    if kind is None:
        kind = "rfm" if runs else "bars" if len(items) == 1 else "epochs"
    if kind not in KINDS:
        raise FactError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind == "rfm":
        if not runs:
            raise FactError("--kind rfm draws RFM reports (fact rfm --report FILE)")
        return figures.rfm(runs), kind
    if runs:
        raise FactError(f"an RFM report has no {kind} view; use --kind rfm")
    if kind == "epochs":
        return figures.epochs(items, relations, metric), kind
    if len(items) != 1:
        raise FactError(f"--kind {kind} draws one input (got {len(items)}); "
                        "several snapshots of a run: --kind epochs")
    (item,) = items
    if kind == "bars":
        return figures.bars(item, relations, metric), kind
    if isinstance(item, Source) or not isinstance(item, Analysis):
        raise FactError(f"--kind {kind} needs matrices; JSON lines carry only metrics "
                        "(give the report or the checkpoint)")
    if kind == "matrices":
        return figures.matrices(item, layer, relations, hide_diagonal, quantile), kind
    options = loader.options if loader else {}
    analysis, source = with_agop(item, options.get("data_dir"), options.get("device"),
                                 options.get("batch_size", 1000))
    return figures.alpha(analysis, source=source), kind


def default_out(inputs: list[str], kind: str | None, suffix: str) -> Path:
    stem = "stdin" if inputs[0] == "-" else Path(inputs[0]).stem
    return Path(f"{stem}_{kind or 'plot'}{suffix}")


@command("plot")
def plot_command(
    inputs: Annotated[list[str], typer.Argument(
        help="HDF5 reports (fact analyze --report, fact rfm --report), checkpoints (analyzed "
             "on the fly), or - for stdin: JSON lines of fact analyze/compare -f jsonl, or "
             "one path per line.", show_default=False)],
    kind: Annotated[Optional[str], typer.Option(
        help="bars (default for one input), matrices, epochs (default for several), alpha, "
             "rfm (default for RFM reports).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Figure file: .png, .svg or .pdf (default: INPUT_KIND.png).")]
    = None,
    relations: Relations = None,
    metric: Annotated[str, typer.Option(help="pearson, cosine or rel_err.")] = "pearson",
    layer: Annotated[Optional[str], typer.Option(
        help="matrices: the layer to draw (default: the first).")] = None,
    hide_diagonal: Annotated[bool, typer.Option(
        "--hide-diagonal", help="matrices: grey out the diagonal and scale without it.")]
    = False,
    quantile: Annotated[float, typer.Option(
        help="matrices: colour scale ±1 = this quantile of |entries| (1 = the largest).")]
    = 0.99,
    dpi: Annotated[Optional[float], typer.Option(
        help="PNG resolution in dots per inch (default 150).")] = None,
    layers: Layers = None,
    data: Data = None,
    data_dir: DataDir = None,
    alpha: Alpha = 0.5,
    device: Device = None,
    batch_size: BatchSize = 1000,
    max_samples: MaxSamples = None,
    seed: Seed = 0,
    dtype: Dtype = None,
    trust_model_code: TrustCode = False,
) -> None:
    """Draw a figure: per-layer bars, heatmaps, agreement over epochs, the NFA power, RFM runs.

    Needs the optional extra: pip install 'factcli[plot]'.
    """
    from ..plot import check_output, save
    from ..plot._style import check_dpi

    path = check_output(out or default_out(inputs, kind, ".png"))
    check_dpi(dpi)
    if kind is not None and kind not in KINDS:
        raise FactError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    loader = Loader(data, data_dir, alpha, split_list(layers), device, batch_size, max_samples,
                    seed, dtype, trust_model_code)
    figure, drawn = draw(kind, loader.load(inputs), relations=split_list(relations),
                         metric=metric, layer=layer, hide_diagonal=hide_diagonal,
                         quantile=quantile, loader=loader)
    save(figure, path, dpi)
    err.print(f"{drawn} figure written to {path}", highlight=False, markup=False)


def plot_to(path: Path, items: list[Any], metric: str = "pearson",
            relations: list[str] | None = None) -> None:
    """`--plot` of analyze and compare: the natural figure of their inputs."""
    from ..plot import save

    figure, drawn = draw(None, items, relations=relations, metric=metric)
    save(figure, path)
    err.print(f"{drawn} figure written to {path}", highlight=False, markup=False)


@command("report")
def report_command(
    inputs: Annotated[list[str], typer.Argument(
        help="HDF5 reports, checkpoints (analyzed on the fly) or - (as for fact plot).",
        show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The HTML file (default: INPUT.html).")] = None,
    title: Annotated[Optional[str], typer.Option(help="Page title.")] = None,
    layers: Layers = None,
    data: Data = None,
    data_dir: DataDir = None,
    alpha: Alpha = 0.5,
    device: Device = None,
    batch_size: BatchSize = 1000,
    max_samples: MaxSamples = None,
    seed: Seed = 0,
    dtype: Dtype = None,
    trust_model_code: TrustCode = False,
) -> None:
    """One self-contained HTML page: every number in tables, the figures embedded, the
    provenance of each input. Opens offline in any browser; makes no network request.

    Needs the optional extra: pip install 'factcli[plot]'.
    """
    from ..io.files import atomic_path, check_writable
    from ..plot._style import matplotlib
    from ..plot.html import html_report

    path = out or Path(("stdin" if inputs[0] == "-" else Path(inputs[0]).stem) + ".html")
    if path.suffix.lower() not in (".html", ".htm"):
        raise FactError(f"--out must end in .html (got {path})")
    matplotlib()
    check_writable(path)
    loader = Loader(data, data_dir, alpha, split_list(layers), device, batch_size, max_samples,
                    seed, dtype, trust_model_code)
    labels = [item for item in inputs if item != "-"]
    page = html_report(loader.load(inputs), title=title or "factcli report: "
                       + ", ".join(labels or ["stdin"]))
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    err.print(f"report written to {path}", highlight=False, markup=False)
