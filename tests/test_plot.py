"""Figures (issue 12): every kind from real inputs — the shipped MNIST checkpoint, a small
`fact train --save-every` run, RFM runs — as valid, non-blank, labelled, byte-stable files."""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib", reason="the plot tests need the extra factcli[plot]")

from factcli import plot  # noqa: E402
from factcli.engine.analysis import analyze  # noqa: E402
from factcli.engine.results import Analysis, LayerResult  # noqa: E402
from factcli.errors import FactError  # noqa: E402
from factcli.io.report import read_report, write_report  # noqa: E402
from factcli.plot import figures  # noqa: E402
from factcli.plot.inputs import read, with_agop  # noqa: E402
from tests.helpers import fact_inprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_checkpoints" / "mlp5_mnist10k.pt"
RUN_ARGS = ["train", "mlp", "--dataset", "teacher-linear:d=6,c=2,n=80,seed=2", "--width", "10",
            "--depth", "3", "--batch-size", "20", "--lr", "0.05", "--weight-decay", "1e-3",
            "--epochs", "6", "--save-every", "2", "--device", "cpu", "-q"]
PARITY = "parity:d=8,k=2,n=240,n_test=80,seed=0"
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".svg": b"<?xml", ".pdf": b"%PDF-"}


def ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A real report of the shipped MNIST MLP (a subsample, three layers incl. the 784-wide)."""
    path = tmp_path_factory.mktemp("sample") / "mlp5.h5"
    analysis = analyze(SAMPLE, max_samples=300, layers=["0", "4", "8"], device="cpu")
    write_report(path, analysis, matrices="all", matrix_dtype="float64")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Snapshots of a small `fact train --save-every` run (epochs 0, 2, 4, 6)."""
    folder = tmp_path_factory.mktemp("run")
    ok(fact_inprocess(*RUN_ARGS, "--out", folder / "run.pt"))
    snapshots = sorted(folder.glob("run_epoch*.pt"))
    assert len(snapshots) == 4
    return snapshots


@pytest.fixture(scope="module")
def rfm_reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rfm")
    paths = []
    for update in ("nfa", "fact"):
        path = folder / f"{update}.h5"
        ok(fact_inprocess("rfm", "--data", PARITY, "--update", update, "--iters", "3",
                          "--device", "cpu", "-f", "jsonl", "--report", path))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------- file checks


def png_pixels(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


def check_file(path: Path, size: tuple[float, float] | None = None, dpi: int = 150) -> bytes:
    """Valid magic bytes, a plausible size, and for PNG: the figure's pixel size, not blank."""
    data = path.read_bytes()
    assert data.startswith(MAGIC[path.suffix]), path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"
    if path.suffix == ".png":
        width, height = struct.unpack(">II", data[16:24])
        if size:
            assert (width, height) == (round(size[0] * dpi), round(size[1] * dpi))
        pixels = png_pixels(data)[..., :3].mean(axis=2)
        assert pixels.std() > 0.05, f"{path} looks blank (pixel std {pixels.std():.4f})"
        assert (pixels < 0.5).mean() > 0.005, f"{path} has almost no dark (ink) pixels"
    if path.suffix == ".svg":
        text = data.decode()
        assert "<text" in text, "SVG text was turned into paths"
        assert "<dc:date>" not in text, "a date in the SVG metadata breaks reproducibility"
    return data


def render_all(figure, folder: Path, stem: str) -> dict[str, bytes]:
    """The figure as PNG, SVG and PDF, each rendered twice: the bytes must be identical."""
    size = tuple(figure.get_size_inches())
    files = {}
    for suffix in (".png", ".svg", ".pdf"):
        first = folder / f"{stem}{suffix}"
        plot.save(figure, first)
        data = check_file(first, size)
        again = folder / f"{stem}_again{suffix}"
        plot.save(figure, again)
        assert again.read_bytes() == data, f"{suffix} differs on re-render"
        files[suffix] = data
    return files


def svg_text(data: bytes) -> str:
    return data.decode()


# ----------------------------------------------------------------------------- kinds


def test_bars_of_the_shipped_checkpoint(sample, tmp_path):
    analysis = read_report(sample)
    files = render_all(figures.bars(analysis), tmp_path, "bars")
    text = svg_text(files[".svg"])
    for needle in ("pearson with WᵀW", "stationarity (log)", "layer (in → out features)",
                   "0  (784→256)", "4  (256→256)", "8  (256→10)", "fact", "nfa", "λ = 0.0001",
                   "n = 300", "α = 0.5"):
        assert needle in text, needle
    # each bar's number is the report's, as printed on the bar
    assert f"{analysis.layer('4').metrics['fact']['pearson']:.3f}" in text
    for suffix in (".svg", ".png"):  # a figure built afresh from the same input: same bytes
        again = plot.save(figures.bars(read_report(sample)), tmp_path / f"fresh{suffix}")
        assert again.read_bytes() == files[suffix]


def test_bars_stay_legible_with_many_long_layer_names(tmp_path):
    """24 transformer-like layer names (':' and '.') get ticks that never overlap."""
    names = [f"blocks.{i // 4}.attn.in_proj:{'qkvo'[i % 4]}" for i in range(24)]
    layers = [LayerResult(name, 64, 64, 10.0 ** -(i % 5), {}, {
        r: {"pearson": 0.5 + i / 50, "cosine": 0.9, "rel_err": math.nan}
        for r in ("fact", "nfa")}) for i, name in enumerate(names)]
    analysis = Analysis(layers, {"checkpoint": "tiny-transformer", "alpha": 0.5,
                                 "weight_decay": 1e-4, "n_samples": 64})
    figure = figures.bars(analysis)
    data = render_all(figure, tmp_path, "many")[".svg"]
    for name in names:
        assert f"{name}  (64→64)" in svg_text(data)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    main = figure.axes[0]
    boxes = [label.get_window_extent(renderer) for label in main.get_yticklabels()]
    assert len(boxes) == 24
    for upper, lower in zip(boxes, boxes[1:]):
        assert not upper.overlaps(lower), "layer names overlap"
    inside = figure.bbox
    for box in boxes + [main.xaxis.label.get_window_extent(renderer)]:
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0, "cut off"


def test_dpi_sets_the_png_resolution(sample, tmp_path):
    """--dpi 100 (small files for docs): the same figure at 100/150 of the pixel size."""
    figure = figures.bars(read_report(sample))
    ok(fact_inprocess("plot", sample, "--dpi", "100", "--out", tmp_path / "small.png"))
    small = check_file(tmp_path / "small.png", tuple(figure.get_size_inches()), dpi=100)
    default = check_file(plot.save(figure, tmp_path / "default.png"))
    assert len(small) < len(default)


def test_matrices_view(sample, tmp_path):
    analysis = read_report(sample)
    files = render_all(figures.matrices(analysis, "0", hide_diagonal=True), tmp_path, "m0")
    text = svg_text(files[".svg"])
    for needle in ("NFM = WᵀW  (784×784)", "fact   pearson", "nfa   pearson", "layer 0",
                   "hidden (grey)", "block means", "99th"):
        assert needle in text, needle
    backward = figures.matrices(analysis, "8", ["fact", "bfact", "bnfa"], quantile=1.0)
    text = svg_text(render_all(backward, tmp_path, "m8")[".svg"])
    assert "bNFM = WWᵀ  (10×10)" in text and "bnfa   pearson" in text
    assert "largest |entry|" in text


def test_matrices_view_says_what_the_report_lacks(run, tmp_path):
    report = tmp_path / "bare.h5"
    ok(fact_inprocess("analyze", run[-1], "--report", report, "--no-matrices", "-f", "jsonl"))
    result = fact_inprocess("plot", report, "--kind", "matrices", "--out", tmp_path / "m.png")
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "no nfm, fact, nfa matrix in the report" in line
    assert "--matrices" in line
    assert not (tmp_path / "m.png").exists()


def test_epochs_of_a_training_run(run, tmp_path):
    out = tmp_path / "epochs.svg"
    ok(fact_inprocess("plot", *run, "--out", out))
    text = check_file(out).decode()
    for needle in ("epoch", "pearson", "loss, stationarity (log)", "training loss",
                   "stationarity", "agreement over training: 4 inputs",
                   "ordered by training epoch"):
        assert needle in text, needle
    for layer in ("0", "2", "4"):
        assert f">{layer}<" in text or f"> {layer}<" in text or f"{layer}</text>" in text
    png = tmp_path / "epochs.png"
    ok(fact_inprocess("plot", *run, "--kind", "epochs", "--relations", "fact,nfa,bfact",
                      "--out", png))
    check_file(png)


def test_epochs_from_compare_jsonl_on_stdin(run, tmp_path):
    rows = ok(fact_inprocess("compare", *run, "-f", "jsonl", "--relations", "fact,nfa"))
    lines = [line for line in rows.output.splitlines() if line.startswith("{")]
    from typer.testing import CliRunner

    from factcli.cli import app

    out = tmp_path / "stdin.svg"
    result = CliRunner(env={"NO_COLOR": "1"}).invoke(
        app, ["plot", "-", "--out", str(out)], input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    text = check_file(out).decode()
    assert "ordered by training epoch" in text and "fact" in text


def test_alpha_from_stored_matrices_matches_the_engine(sample, tmp_path):
    """The curve's value at --alpha is the stored nfa pearson; its argmax is the stored α*."""
    analysis = read_report(sample)
    grid = torch.arange(1, 201, dtype=torch.float64) / 100
    curves = figures.alpha_curves(analysis, grid=grid)
    for layer in analysis.layers:
        alphas, scores = curves[layer.name]
        at_half = scores[int(np.argmin(np.abs(alphas - 0.5)))]
        assert at_half == pytest.approx(layer.metrics["nfa"]["pearson"], abs=1e-6)
        assert alphas[int(np.argmax(scores))] == pytest.approx(layer.best_alpha, abs=0.011)
    files = render_all(figures.alpha(analysis), tmp_path, "alpha")
    text = svg_text(files[".svg"])
    for needle in ("α, the power of AGOP^α", "pearson(WᵀW, AGOP^α)", "stored in the report",
                   "α* = ", "--alpha 0.5", "0   α*", "8   α*"):
        assert needle in text, needle


def test_alpha_recomputes_from_the_checkpoint_when_the_report_lacks_agop(run, tmp_path):
    report = tmp_path / "bare.h5"
    ok(fact_inprocess("analyze", run[-1], "--report", report, "--no-matrices", "-f", "jsonl"))
    analysis, source = with_agop(read(report))
    assert source.startswith("recomputed from the checkpoint")
    out = tmp_path / "alpha.svg"
    ok(fact_inprocess("plot", report, "--kind", "alpha", "--out", out))
    assert "recomputed from the checkpoint" in check_file(out).decode()
    stored = read_report(report)  # the recomputation gives the report's own numbers
    for layer in analysis.layers:
        assert layer.best_alpha == pytest.approx(stored.layer(layer.name).best_alpha)


def test_rfm_view(rfm_reports, tmp_path):
    runs = [figures.RFMRun.from_report(path) for path in rfm_reports]
    files = render_all(figures.rfm(runs), tmp_path, "rfm")
    text = svg_text(files[".svg"])
    for needle in ("test accuracy (%)", "iteration (0 = plain kernel regression, M = I)",
                   "nfa · laplace", "fact · laplace", "(kept)", "kept (best on validation)",
                   PARITY):
        assert needle in text, needle
    out = tmp_path / "cli.pdf"
    ok(fact_inprocess("plot", *rfm_reports, "--out", out))
    check_file(out)


def test_library_api_returns_figures(sample):
    from matplotlib.figure import Figure

    from factcli.rfm.estimator import RFM

    analysis = read_report(sample)
    for kind, options in (("bars", {}), ("matrices", {"layer": "4"}), ("alpha", {})):
        assert isinstance(analysis.plot(kind, **options), Figure)
    with pytest.raises(FactError, match="unknown kind"):
        analysis.plot("pie")
    x = torch.randn(60, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = RFM(iters=2, device="cpu").fit(x, (x[:, 0] > 0).long())
    assert isinstance(model.plot(), Figure)


def test_analyze_and_compare_plot_options(run, tmp_path):
    bars = tmp_path / "bars.svg"
    ok(fact_inprocess("analyze", run[-1], "-f", "jsonl", "--plot", bars))
    assert "agreement per layer" in check_file(bars).decode()
    trend = tmp_path / "trend.png"
    ok(fact_inprocess("compare", *run, "--relations", "fact,nfa", "--plot", trend))
    check_file(trend)
    result = fact_inprocess("compare", *run[:2], "--features", "--plot", trend)
    assert result.exit_code == 2 and "--features" in result.output


@pytest.mark.parametrize("args, needle", [
    (["--kind", "pie"], "unknown kind 'pie'"),
    (["--out", "x.gif"], "unknown figure format '.gif'"),
    (["--kind", "rfm"], "--kind rfm draws RFM reports"),
    (["--kind", "matrices", "--layer", "nope"], "no layer 'nope'"),
    (["--relations", "bogus"], "unknown relation(s) bogus"),
    (["--dpi", "5"], "--dpi must lie in [10, 1200]"),
    (["--dpi", "nan"], "--dpi must lie in [10, 1200]"),
])
def test_bad_plot_options_are_one_line(sample, tmp_path, args, needle):
    arguments = ["plot", sample, *args]
    if "--out" not in args:
        arguments += ["--out", tmp_path / "x.png"]
    result = fact_inprocess(*arguments)
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.output.strip().count("\n") == 0


def test_a_missing_extra_is_one_line_naming_it(sample, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    result = fact_inprocess("plot", sample, "--out", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "pip install 'factcli[plot]'" in result.output
    assert result.output.strip().count("\n") == 0


def test_help_imports_neither_matplotlib_nor_torch():
    code = ("import sys\nfrom factcli.cli import app\n"
            "try:\n    app(['--help'], prog_name='fact')\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True,
                            text=True, timeout=120)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------- the HTML report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-default-apps", "--disable-extensions",
         "--host-resolver-rules=MAP * ~NOTFOUND"]


def browser() -> str:
    import shutil

    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium here to load the page in (.ci/run installs Debian's `chromium`; "
                "without root no browser can be installed)")


def browse(page: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    profile = folder / f"profile{len(list(folder.glob('profile*')))}"
    return subprocess.run([browser(), *QUIET, f"--user-data-dir={profile}", *args,
                           page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=120)


def page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for (its network isolation key is the file:// page) other
    than the page and data: URLs; the browser's own background requests are not the page's."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [event["params"]["url"] for event in log["events"]
            if event["type"] == start and "file://" in event["params"].get(
                "network_isolation_key", "") and not event["params"]["url"].startswith(
                ("file:", "data:"))]


@pytest.fixture(scope="module")
def html_page(sample, run, rfm_reports, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    ok(fact_inprocess("report", sample, *run[-2:], *rfm_reports, "--out", out))
    return out


def test_report_is_one_self_contained_file(html_page, sample):
    import re

    text = html_page.read_text()
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; ' \
           'img-src data:; style-src \'unsafe-inline\'">' in text
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert links and all(link.startswith("data:image/") for link in links), \
        [link[:40] for link in links if not link.startswith("data:")]
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert text.count("data:image/svg+xml;base64,") >= 3
    assert text.count("data:image/png;base64,") >= 4  # a heatmap per layer and the RFM figure
    analysis = read_report(sample)
    for needle in (analysis.info["checkpoint_sha256"], "mnist-10k", str(sample),
                   "Recursive Feature Machine", "nfa · laplace", "run_epoch6.pt"):
        assert needle in text, needle
    assert "Over training" not in text  # the MNIST model and the small run are two runs


def test_report_of_one_run_draws_it_over_training(run):
    from factcli.plot.html import html_report

    page = html_report([analyze(path, device="cpu", layers=["0"], relations=["fact", "agop"])
                        for path in run[-2:]])
    assert page.count("<h2>Over training</h2>") == 1 and "data:image/svg+xml" in page


def test_report_loads_in_chromium_without_network(html_page, sample, tmp_path):
    shot, netlog = tmp_path / "page.png", tmp_path / "net.json"
    browse(html_page, tmp_path, "--window-size=1200,1800", f"--screenshot={shot}",
           f"--log-net-log={netlog}")
    pixels = png_pixels(shot.read_bytes())[..., :3].mean(axis=2)
    assert pixels.shape == (1800, 1200)
    assert pixels.std() > 0.05 and (pixels < 0.5).mean() > 0.01, "the page renders blank"
    assert page_requests(netlog) == []
    dom = browse(html_page, tmp_path, "--dump-dom").stdout
    analysis = read_report(sample)
    values = [v for layer in analysis.layers for m in layer.metrics.values() for v in m.values()
              if math.isfinite(v)] + [layer.stationarity for layer in analysis.layers]
    assert len(values) > 50
    for value in values:  # every number at full precision, as the browser shows it
        assert f">{value!r}<" in dom, value
    assert analysis.info["checkpoint_sha256"] in dom


def test_the_network_check_catches_a_page_that_fetches(tmp_path):
    """The same check on a page with an external image reports it (it is not vacuous)."""
    page, netlog = tmp_path / "leaky.html", tmp_path / "net.json"
    page.write_text('<html><body><p>x</p><img src="https://example.invalid/x.png"></body></html>')
    browse(page, tmp_path, f"--screenshot={tmp_path / 'leaky.png'}", f"--log-net-log={netlog}")
    assert page_requests(netlog) == ["https://example.invalid/x.png"]


def test_report_of_a_default_report_recomputes_the_alpha_view(run, tmp_path):
    """A report with the default matrices has no AGOP: the page recomputes it from the
    checkpoint it records and says so; without the checkpoint it says why there is no figure."""
    from factcli.plot.html import html_report

    report = tmp_path / "default.h5"
    ok(fact_inprocess("analyze", run[-1], "--report", report, "-f", "jsonl", "--layers", "0"))
    page = html_report([read(report)])
    assert "NFM and AGOP recomputed from the checkpoint" in page
    moved = read(report)
    moved.info["checkpoint"] = str(tmp_path / "gone.pt")
    page = html_report([moved])
    assert "NFA power α: not drawn" in page and "--matrices nfm,agop" in page


@pytest.mark.parametrize("hide_diagonal", [False, True])
def test_a_factored_matrix_is_drawn_from_its_factors_as_the_dense_one(hide_diagonal):
    from factcli.engine.factored import Factored

    generator = torch.Generator().manual_seed(0)
    matrix = Factored(torch.randn(23, 3, dtype=torch.float64, generator=generator),
                      torch.randn(23, 3, dtype=torch.float64, generator=generator))
    for limit in (5, 8, 23):  # blocks of 5 (a short last one), of 3, none
        shown, block = figures._shown(matrix, hide_diagonal, limit, 0.9)
        expected, expected_block = figures._shown(matrix.dense(), hide_diagonal, limit, 0.9)
        assert block == expected_block
        np.testing.assert_allclose(shown, expected, rtol=0, atol=1e-12)


def test_the_alpha_view_of_a_factored_agop_equals_the_dense_one():
    from factcli.data.datasets import Dataset
    from factcli.models.archs import build_model

    torch.manual_seed(0)
    model = build_model({"arch": "transformer", "vocab": 9, "context": 3, "out_features": 9,
                         "d_model": 4, "heads": 2, "depth": 1, "output": "all"}).double()
    tokens = torch.randint(0, 9, (4, 3))
    data = Dataset("test", tokens, torch.randint(0, 9, (4, 3)), n_classes=9)
    dense, thin = (analyze(model, data, loss="next_token", weight_decay=1e-3, max_dense=limit,
                           layers=["embed"], relations=["agop", "nfa"]) for limit in (None, 5))
    from factcli.engine.factored import Factored

    assert isinstance(thin.layer("embed").matrices["agop"], Factored)
    expected, curves = figures.alpha_curves(dense), figures.alpha_curves(thin)
    np.testing.assert_allclose(curves["embed"][1], expected["embed"][1], rtol=0, atol=1e-10)
