"""`fact analyze`: every relation for every Linear layer of a checkpoint."""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import command, detail, err, info, out, show_progress, warn
from .render import emit

Data = Annotated[Optional[str], typer.Option("--data", help="Dataset spec (default: the one the "
                                             "checkpoint records), e.g. mnist-10k, file:x.npz.")]
DataDir = Annotated[Optional[Path], typer.Option(help="Folder with mnist/cifar10 files "
                                                 "(default: $FACT_DATA_DIR).")]
Arch = Annotated[Optional[str], typer.Option(help="Architecture of a plain state_dict: mlp, "
                                             "linear, quadratic or package.module:factory.")]
Model = Annotated[Optional[str], typer.Option(help="Model description as JSON or key=value,... "
                                              "(e.g. arch=mlp,activation=tanh).")]
Loss = Annotated[Optional[str], typer.Option(
    help="mse, cross_entropy or next_token (alias causal_lm; per position) (default: recorded).")]
Decay = Annotated[Optional[float], typer.Option(help="λ, the coupled weight decay (default: "
                                                "recorded).")]
Alpha = Annotated[float, typer.Option(help="NFA power: nfa = AGOP^α.")]
Relations = Annotated[Optional[str], typer.Option(help="Comma-separated relations (default: all).")]
Layers = Annotated[Optional[str], typer.Option(help="Comma-separated module-path globs, e.g. "
                                               "'0,4' or 'encoder.*'.")]
Device = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N (default: cuda if "
                                               "available).")]
BatchSize = Annotated[int, typer.Option(help="Samples per batch (bounds memory).")]
MaxSamples = Annotated[Optional[int], typer.Option(help="Analyze a seeded random subsample.")]
Seed = Annotated[int, typer.Option(help="Seed of the --max-samples subsample.")]
Dtype = Annotated[Optional[str], typer.Option(help="float32 or float64 (default: the weights').")]
TrustCode = Annotated[bool, typer.Option(
    "--trust-model-code", help="RUNS CODE NAMED INSIDE THE FILE: import and call the model "
    "factory the checkpoint records (default: refused; naming it with --arch is safer).")]


def split_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


@contextmanager
def checkpoint_source(path: str):
    """A checkpoint path; `-` reads the checkpoint bytes from stdin into a temporary file."""
    if path != "-":
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
        shutil.copyfileobj(sys.stdin.buffer, handle)  # streamed: memory stays bounded
        handle.flush()
        yield handle.name


def model_overrides(arch: str | None, model: str | None) -> dict | None:
    """`--model` and `--arch` as one dict (`--arch` wins), None when neither is given."""
    from ..io.checkpoint import parse_model_option

    overrides = parse_model_option(model) if model else {}
    if arch:
        overrides["arch"] = arch
    return overrides or None


@contextmanager
def progress_bar(label: str):
    """A progress callback drawing a bar on a terminal's stderr (unless quiet or piped)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]analyzing[/] {task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} samples"), TimeRemainingColumn(),
                  console=err, transient=True, disable=not show_progress()) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _options(arch, model, loss, weight_decay, alpha, relations, layers, batch_size, max_samples,
             seed, dtype, data_dir, trust_model_code, offline, max_dense,
             optimizer_state=None, **probing) -> dict:
    """The keyword arguments of `prepare`/`analyze` from the command-line options (`probing`:
    agop_probes, probe_kind, probe_seed, outputs)."""
    return dict(loss=loss, weight_decay=weight_decay, alpha=alpha, **probing,
                relations=split_list(relations), layers=split_list(layers),
                batch_size=batch_size, max_samples=max_samples, seed=seed, dtype=dtype,
                data_dir=data_dir, model=model_overrides(arch, model),
                trust_model_code=trust_model_code, offline=offline or None,
                max_dense=max_dense or None, optimizer_state=optimizer_state)


def _said(checkpoint: str, result_info: dict, layers: int, started: float,
          warnings: list[str]) -> None:
    """-v's summary of what was analyzed, then the warnings."""
    detail(f"{checkpoint}: {layers} layers on {result_info.get('n_samples')} samples "
           f"of {result_info.get('dataset')} ({result_info.get('dtype')} on "
           f"{result_info.get('device')}) in {time.perf_counter() - started:.2f} s")
    for message in warnings:
        warn(message)


def run_analysis(checkpoint: str, data, data_dir, arch, model, loss, weight_decay, alpha,
                 relations, layers, device, batch_size, max_samples, seed, dtype,
                 trust_model_code=False, offline=False, max_dense=4096):
    """`compare`'s analysis in this one process: load, analyze with a progress bar, warn."""
    from ..engine.analysis import analyze

    options = _options(arch, model, loss, weight_decay, alpha, relations, layers, batch_size,
                       max_samples, seed, dtype, data_dir, trust_model_code, offline, max_dense)
    started = time.perf_counter()
    with checkpoint_source(checkpoint) as path, progress_bar(Path(checkpoint).name) as progress:
        result = analyze(path, data, device=device, progress=progress, **options)
    result.info["checkpoint"] = checkpoint
    _said(checkpoint, result.info, len(result.layers), started, result.warnings)
    return result


Format = Annotated[str, typer.Option("--format", "-f", help="table, jsonl, json, tsv or csv.")]
Metric = Annotated[str, typer.Option(help="Table metric: pearson, cosine or rel_err.")]
Report = Annotated[Optional[Path], typer.Option(help="Also write an HDF5 report here.")]
Matrices = Annotated[Optional[str], typer.Option(
    help="Matrices stored in --report: a comma list of nfm, bnfm and relation names, "
    "all or none (default: nfm,bnfm,fact,nfa).", show_default=False)]
NoMatrices = Annotated[bool, typer.Option(
    "--no-matrices", help="Store no matrices (= --matrices none).")]
MatrixDtype = Annotated[str, typer.Option(
    help="Storage precision of the report's matrices: float32 or float64 (metrics are "
    "always computed in float64).")]


def check_outputs(format: str, report: Path | None, matrices: str | None, no_matrices: bool,
                  matrix_dtype: str) -> tuple:
    """Refuse bad output options before any work; the matrices a report will store (none
    without --report: the analysis then keeps none)."""
    from ..errors import FactError
    from ..io.report import MATRIX_DTYPES, choose_matrices
    from .render import FORMATS

    if format not in FORMATS:
        raise FactError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if matrix_dtype not in MATRIX_DTYPES:
        raise FactError(f"unknown --matrix-dtype {matrix_dtype!r}; choose float32 or float64")
    chosen = () if no_matrices else choose_matrices(matrices)  # checked even without a report
    return chosen if report is not None else ()


def deliver(result, format: str, metric: str, report: Path | None, stored: tuple,
            matrix_dtype: str, plot: Path | None = None) -> None:
    """Write the report and the plot (if asked) and the result to stdout: the end of analyze
    and merge."""
    from ..io.report import write_report

    if report is not None:
        write_report(report, result, command=shlex.join(["fact", *sys.argv[1:]]),
                     matrices=stored, matrix_dtype=matrix_dtype)
        info(f"report written to {report}")
    if plot is not None:
        from .plot import plot_to

        plot_to(plot, [result], metric)
    emit(result, format, metric)


def writable(path: Path) -> None:
    """Create the folder of `path` and fail early if it cannot be written."""
    from ..io.files import check_writable, make_parent

    make_parent(path)
    check_writable(path)


def _without_nproc(args: list[str]) -> list[str]:
    """The command line a worker runs: this one less its --nproc."""
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        skip = arg == "--nproc"
        if not skip:
            kept.append(arg)
    return kept


@command("analyze")
def analyze_command(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint (.pt, .safetensors) or - for "
                                              "stdin.")],
    data: Data = None,
    data_dir: DataDir = None,
    arch: Arch = None,
    model: Model = None,
    loss: Loss = None,
    weight_decay: Decay = None,
    alpha: Alpha = 0.5,
    relations: Relations = None,
    layers: Layers = None,
    device: Device = None,
    batch_size: BatchSize = 1000,
    max_samples: MaxSamples = None,
    seed: Seed = 0,
    dtype: Dtype = None,
    trust_model_code: TrustCode = False,
    format: Format = "table",
    metric: Metric = "pearson",
    report: Report = None,
    matrices: Matrices = None,
    no_matrices: NoMatrices = False,
    matrix_dtype: MatrixDtype = "float32",
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never download a dataset (also FACT_OFFLINE=1).")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        help="Also draw the per-layer agreement bars here (.png, .svg, .pdf; needs "
             "factcli[plot]).")] = None,
    max_dense: Annotated[int, typer.Option(
        help="Largest side of a relation matrix formed densely; a larger one (an embedding's "
        "vocab×vocab forward, an LM head's backward) is held as thin factors, its metrics "
        "computed from them; 0: always dense.")] = 4096,
    agop_probes: Annotated[Optional[str], typer.Option(
        help="exact, or S random probes per sample (a multiple of 8) for the AGOP family: an "
        "unbiased sketch with ± standard errors (default: exact up to 256 outputs per sample, "
        "else 64).", show_default=False)] = None,
    probe_kind: Annotated[str, typer.Option(help="Random probes: rademacher or gaussian.")]
    = "rademacher",
    probe_seed: Annotated[int, typer.Option(help="Seed of the random probes.")] = 0,
    outputs: Annotated[str, typer.Option(
        help="Outputs the AGOP family runs over (axis 1 of the model's output: positions of "
        "(n, T, V), outputs of (n, c)): all, last, an index K or a slice A:B.")] = "all",
    nproc: Annotated[Optional[int], typer.Option(help="Split the samples over N local worker "
                                                 "processes (torch.distributed) and add up "
                                                 "their sums; see docs/scaling.md.")] = None,
    shard: Annotated[Optional[str], typer.Option(help="I/N: sum only the I-th (from 0) of N "
                                                 "contiguous shares of the samples; needs "
                                                 "--partial.")] = None,
    partial: Annotated[Optional[Path], typer.Option(help="Write the raw sums here for fact merge "
                                                    "(factcli.partial/1) instead of results.")]
    = None,
    optimizer_state: Annotated[Optional[Path], typer.Option(
        help="AdamW state (torch.save(opt.state_dict()), or a training dict holding one) for "
             "the relation fact_adamw (default: the state a fact train --optimizer adamw "
             "checkpoint carries).")] = None,
) -> None:
    """FACT, bFACT, NFA, eNFA and variants for every layer, with their agreement with WᵀW/WWᵀ."""
    from ..distributed import environment, reduced_sums, share
    from ..engine.analysis import prepare
    from ..engine.sketch import Probing
    from ..errors import FactError
    from ..io.partial import parse_shard, write_partial

    place = environment()
    if place and place.rank:  # rank 0 alone prints, whatever happens
        err.quiet = out.quiet = True
    stored = check_outputs(format, report, matrices, no_matrices, matrix_dtype)
    Probing.parse(agop_probes, probe_kind, probe_seed, outputs)  # before any work
    several = place is not None or (nproc or 1) > 1
    if max_dense < 0:
        raise FactError(f"--max-dense must be 0 (always dense) or positive (got {max_dense})")
    if nproc is not None and nproc < 1:
        raise FactError(f"--nproc must be positive (got {nproc})")
    if several and checkpoint == "-":
        raise FactError("several processes cannot share a checkpoint read from stdin; name a file")
    if place and nproc:
        raise FactError("--nproc inside a launch: torchrun already started the processes")
    shares = parse_shard(shard) if shard else (0, 1)
    if shard and partial is None:
        raise FactError("--shard needs --partial FILE: the shards' sums are finished by fact merge")
    if partial is not None and (report is not None or plot is not None):
        raise FactError("--partial writes raw sums, not a report or plot: fact merge writes those")
    if plot is not None:
        from ..plot import check_output

        check_output(plot)
    if (nproc or 1) > 1:
        from ..distributed import launch

        raise typer.Exit(launch(nproc, [sys.executable, "-m", "factcli",
                                        *_without_nproc(sys.argv[1:])]))
    output = partial if partial is not None else report
    options = _options(arch, model, loss, weight_decay, alpha, relations, layers, batch_size,
                       max_samples, seed, dtype, data_dir, trust_model_code, offline,
                       max_dense, optimizer_state, agop_probes=agop_probes,
                       probe_kind=probe_kind, probe_seed=probe_seed, outputs=outputs)
    options["keep_matrices"] = stored  # the engine frees every other matrix
    started = time.perf_counter()
    with checkpoint_source(checkpoint) as path, progress_bar(Path(checkpoint).name) as progress:
        reduced = reduced_sums(lambda on: prepare(path, data, device=on, **options), device,
                               shares, progress,
                               first=None if output is None else lambda: writable(output))
    if reduced is None:  # a rank other than 0: its sums are in rank 0's
        return
    plan, sums = reduced
    plan.info["checkpoint"] = checkpoint
    if partial is None:
        result = plan.finish(sums)
        _said(checkpoint, result.info, len(result.layers), started, result.warnings)
        deliver(result, format, metric, report, stored, matrix_dtype, plot)
        return
    _said(checkpoint, plan.info, len(plan.layers), started, plan.warnings)
    part = share(len(plan.x), *shares)
    write_partial(partial, plan, sums, shares, part, shlex.join(["fact", *sys.argv[1:]]))
    info(f"sums of shard {shares[0]}/{shares[1]} (samples {part.start}..{part.stop} of "
         f"{len(plan.x)}) written to {partial}")
