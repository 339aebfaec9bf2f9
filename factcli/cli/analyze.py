"""`fact analyze`: every relation for every Linear layer of a checkpoint."""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import command, detail, err, info, show_progress, warn
from .render import emit

Data = Annotated[Optional[str], typer.Option("--data", help="Dataset spec (default: the one the "
                                             "checkpoint records), e.g. mnist-10k, file:x.npz.")]
DataDir = Annotated[Optional[Path], typer.Option(help="Folder with mnist/cifar10 files "
                                                 "(default: $FACT_DATA_DIR).")]
Arch = Annotated[Optional[str], typer.Option(help="Architecture of a plain state_dict: mlp, "
                                             "linear, quadratic or package.module:factory.")]
Model = Annotated[Optional[str], typer.Option(help="Model description as JSON or key=value,... "
                                              "(e.g. arch=mlp,activation=tanh).")]
Loss = Annotated[Optional[str], typer.Option(help="mse or cross_entropy (default: recorded).")]
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
        handle.write(sys.stdin.buffer.read())
        handle.flush()
        yield handle.name


def model_overrides(arch: str | None, model: str | None) -> dict | None:
    """`--model` and `--arch` as one dict (`--arch` wins), None when neither is given."""
    from ..io.checkpoint import parse_model_option

    overrides = parse_model_option(model) if model else {}
    if arch:
        overrides["arch"] = arch
    return overrides or None


def run_analysis(checkpoint: str, data, data_dir, arch, model, loss, weight_decay, alpha,
                 relations, layers, device, batch_size, max_samples, seed, dtype,
                 trust_model_code=False, offline=False, max_vocab=4096):
    """Shared by `analyze` and `compare`: load, analyze with a progress bar, print warnings."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..engine.analysis import analyze

    overrides = model_overrides(arch, model)
    started = time.perf_counter()
    with checkpoint_source(checkpoint) as path, Progress(
            TextColumn("[bold]analyzing[/] {task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total} samples"), TimeRemainingColumn(),
            console=err, transient=True, disable=not show_progress()) as bar:
        task = bar.add_task(Path(checkpoint).name, total=None)
        result = analyze(path, data, loss=loss, weight_decay=weight_decay, alpha=alpha,
                         relations=split_list(relations), layers=split_list(layers),
                         device=device, batch_size=batch_size, max_samples=max_samples,
                         seed=seed, dtype=dtype, data_dir=data_dir, model=overrides,
                         trust_model_code=trust_model_code, offline=offline or None,
                         max_vocab=max_vocab if max_vocab else None,
                         progress=lambda done, total: bar.update(task, completed=done,
                                                                 total=total))
    result.info["checkpoint"] = checkpoint
    detail(f"{checkpoint}: {len(result.layers)} layers on {result.info.get('n_samples')} samples "
           f"of {result.info.get('dataset')} ({result.info.get('dtype')} on "
           f"{result.info.get('device')}) in {time.perf_counter() - started:.2f} s")
    for message in result.warnings:
        warn(message)
    return result


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
    format: Annotated[str, typer.Option("--format", "-f", help="table, jsonl, json, tsv or csv.")]
    = "table",
    metric: Annotated[str, typer.Option(help="Table metric: pearson, cosine or rel_err.")]
    = "pearson",
    report: Annotated[Optional[Path], typer.Option(help="Also write an HDF5 report here.")]
    = None,
    matrices: Annotated[Optional[str], typer.Option(
        help="Matrices stored in --report: a comma list of nfm, bnfm and relation names, "
        "all or none (default: nfm,bnfm,fact,nfa).", show_default=False)] = None,
    no_matrices: Annotated[bool, typer.Option(
        "--no-matrices", help="Store no matrices (= --matrices none).")] = False,
    matrix_dtype: Annotated[str, typer.Option(
        help="Storage precision of the report's matrices: float32 or float64 (metrics are "
        "always computed in float64).")] = "float32",
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never download a dataset (also FACT_OFFLINE=1).")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        help="Also draw the per-layer agreement bars here (.png, .svg, .pdf; needs "
             "factcli[plot]).")] = None,
    max_vocab: Annotated[int, typer.Option(
        help="Largest embedding vocabulary whose forward (vocab×vocab) relations are computed; "
        "0: no limit.")] = 4096,
) -> None:
    """FACT, bFACT, NFA, eNFA and variants for every layer, with their agreement with WᵀW/WWᵀ."""
    from ..errors import FactError
    from ..io.files import check_writable, make_parent
    from ..io.report import MATRIX_DTYPES, choose_matrices, write_report
    from .render import FORMATS

    if format not in FORMATS:
        raise FactError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    stored = () if no_matrices else choose_matrices(matrices)
    if matrix_dtype not in MATRIX_DTYPES:
        raise FactError(f"unknown --matrix-dtype {matrix_dtype!r}; choose float32 or float64")
    if max_vocab < 0:
        raise FactError(f"--max-vocab must be 0 (no limit) or positive (got {max_vocab})")
    if report is not None:
        make_parent(report)
        check_writable(report)
    if plot is not None:
        from ..plot import check_output

        check_output(plot)
    result = run_analysis(checkpoint, data, data_dir, arch, model, loss, weight_decay, alpha,
                          relations, layers, device, batch_size, max_samples, seed, dtype,
                          trust_model_code, offline, max_vocab)
    if report is not None:
        write_report(report, result, command=shlex.join(["fact", *sys.argv[1:]]),
                     matrices=stored, matrix_dtype=matrix_dtype)
        info(f"report written to {report}")
    if plot is not None:
        from .plot import plot_to

        plot_to(plot, [result], metric)
    emit(result, format, metric)
