"""`fact train`: reference models trained with weight decay to convergence (docs/train.md)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ._app import command, err, info, out, silence_stdout, verbosity, warn, write_jsonl

EPILOG = ("Examples: fact train mlp --dataset mnist-10k --out mlp.pt --lr 0.5;  "
          "fact train quadratic --dataset separation:tau=0.1 --optimizer adam --lr 0.01 "
          "--weight-decay 1e-3 --epochs 2000 --polish 1000 --out quad.pt")


def _format(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


class _Display:
    """The rich progress bar on stderr and the jsonl rows on stdout."""

    def __init__(self, quiet: bool, jsonl: bool, chosen: Path | None):
        self.quiet, self.jsonl, self.out_path = quiet, jsonl, chosen
        self.stdout_closed = False
        self.progress = None
        self.task = None
        self.polish_task = None

    def __enter__(self) -> _Display:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _start(self) -> None:
        """The bar starts with the first event, so that bad input prints only its error."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
            MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"), TimeRemainingColumn(),
            console=err, transient=False)
        self.progress.__enter__()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "message":
            if event.get("level") == "warning":
                warn(event["text"])
            elif not self.quiet:
                err.print(event["text"], highlight=False, soft_wrap=True)
        elif kind == "start" and not self.quiet:
            if self.out_path is not None:  # the default --out: say where the run goes
                info(f"checkpoint: {self.out_path}")
            self._start()
            self.task = self.progress.add_task("epoch", total=event["epochs"],
                                               completed=event["start_epoch"], metrics="")
        elif kind == "epoch":
            if self.jsonl:
                self._row({"phase": "train", **{k: v for k, v in event.items()
                                                if k not in ("event", "epochs")}})
            if self.progress is not None and self.task is not None:
                metrics = (f"loss {_format(event['train_loss'])}"
                           + (f" acc {_format(event['train_acc'], True)}"
                              if event["train_acc"] is not None else "")
                           + (f" test {_format(event['test_acc'], True)}"
                              if event["test_acc"] is not None else
                              f" test loss {_format(event['test_loss'])}"
                              if event["test_loss"] is not None else "")
                           + f" lr {_format(event['lr'])}")
                self.progress.update(self.task, completed=event["epoch"], metrics=metrics)
        elif kind == "polish_start" and self.progress is not None:
            self.polish_task = self.progress.add_task("polish", total=event["max_steps"],
                                                      metrics="")
        elif kind == "polish":
            if self.jsonl:
                self._row({"phase": "polish", **{k: v for k, v in event.items()
                                                 if k != "event"}})
            if self.progress is not None and self.polish_task is not None:
                self.progress.update(
                    self.polish_task, completed=event["step"],
                    metrics=f"L {event['objective']:.6g} stationarity "
                            f"{_format(event['stationarity'])}")


    def _row(self, row: dict[str, Any]) -> None:
        """One jsonl row; a closed stdout (`| head`) stops the rows, never the training."""
        if self.stdout_closed:
            return
        try:
            write_jsonl([row])
        except BrokenPipeError:
            self.stdout_closed = True
            silence_stdout()
            warn("stdout was closed: training goes on without metrics, and the checkpoint "
                 "will be saved")


def default_out(arch: str, dataset: str) -> Path:
    """runs/<arch>-<dataset>-<local time>.pt, the dataset spec made a safe file name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{arch}-{dataset}").strip("_.")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.pt"


def _summary(arch: str, result: Any, out_path: Path) -> str:
    t = result.training
    parts = [f"{arch} on {t['dataset']}: {t['epoch']} epochs"]
    if t.get("polish"):
        parts.append(f"+ {t['polish']['steps']} {t['polish']['method']} steps")
    parts.append(f"train loss {_format(t.get('train_loss'))}")
    if t.get("train_acc") is not None:
        parts.append(f"train acc {_format(t['train_acc'], True)}")
    if t.get("test_acc") is not None:
        parts.append(f"test acc {_format(t['test_acc'], True)}")
    elif t.get("test_loss") is not None:
        parts.append(f"test loss {_format(t['test_loss'])}")
    station = [v for v in (t.get("stationarity") or {}).values() if v is not None]
    if station:
        parts.append(f"stationarity ≤ {max(station):.3g}")
    return ", ".join(parts) + f" → {out_path} ({result.elapsed_s:.1f} s)"


@command("train", epilog=EPILOG)
def train(
    arch: Annotated[str, typer.Argument(
        help="mlp, linear (deep linear), quadratic, cnn (images) or transformer (tokens).")],
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "--data", help="Dataset spec, e.g. mnist-10k, separation:tau=0.1, "
        "teacher-linear:d=10,c=10,n=100, file:data.npz.")] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Checkpoint to write (.pt, or .safetensors by extension).")] = None,
    width: Annotated[int | None, typer.Option(
        help="Hidden width (default: mlp 256, quadratic 10, linear the input size, cnn 64; "
        "transformer: d_model, 64).")] = None,
    depth: Annotated[int | None, typer.Option(
        help="Number of Linear layers (default: mlp 5, linear 3, cnn 2); transformer: "
        "blocks (2).")] = None,
    channels: Annotated[str | None, typer.Option(
        help="cnn: channels of the conv blocks, comma-separated (default 16,32).")] = None,
    pool: Annotated[str | None, typer.Option(
        help="cnn: 2×2 pooling, max (default) or avg (smooth: with a smooth activation the "
        "objective is twice differentiable, which --polish needs to converge).")] = None,
    heads: Annotated[int | None, typer.Option(
        help="transformer: attention heads (default 4).")] = None,
    norm: Annotated[str | None, typer.Option(
        help="transformer: layer (LayerNorm before attention, MLP and head; default) or none "
        "(no LayerNorm: weight decay then has critical points to reach).")] = None,
    activation: Annotated[str | None, typer.Option(
        help="mlp activation: relu (default), gelu, tanh, quadratic, identity.")] = None,
    bias: Annotated[bool | None, typer.Option(
        "--bias/--no-bias", help="mlp biases (default: on; linear/quadratic have none).")] = None,
    loss: Annotated[str, typer.Option(
        help="mse, cross_entropy, or next_token (alias causal_lm) for a causal LM on "
        "per-position targets.")] = "mse",
    optimizer: Annotated[str, typer.Option(
        help="sgd, gd (full batch), adam (coupled L2), or adamw (decoupled: FACT only "
        "approximate).")] = "sgd",
    lr: Annotated[float | None, typer.Option(
        help="Learning rate (default: sgd/gd 0.1, adam/adamw 1e-3).")] = None,
    momentum: Annotated[float | None, typer.Option(
        help="SGD/GD momentum (default: sgd 0.9, gd 0).")] = None,
    eps: Annotated[float | None, typer.Option(
        help="Adam/AdamW ε of √v̂ + ε (default 1e-8, torch's).")] = None,
    betas: Annotated[str | None, typer.Option(
        help="Adam/AdamW β₁,β₂ (default 0.9,0.999, torch's).")] = None,
    weight_decay: Annotated[float, typer.Option(
        help="λ: coupled L2, L = loss + (λ/2)‖θ‖² (relations.md §1).")] = 1e-4,
    schedule: Annotated[str | None, typer.Option(
        help="cosine, constant, or hold-cosine (constant for the first half of the epochs, "
        "then cosine to 0) (default: cosine; constant for gd).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (gd: full-batch steps).")] = 200,
    batch_size: Annotated[int | None, typer.Option(help="Minibatch size (default 128).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initialization and the batch order.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    target_loss: Annotated[float | None, typer.Option(
        help="Stop once an epoch's training loss is below this.")] = None,
    save_every: Annotated[int | None, typer.Option(
        help="Also write snapshots <out-stem>_epoch<N><suffix> every K epochs (and epoch 0).")
    ] = None,
    eval_every: Annotated[int | None, typer.Option(
        help="Evaluate the test split every K epochs (default: ~100 times per run).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run saved at --out (same options; --epochs may grow).")
    ] = False,
    polish: Annotated[int, typer.Option(
        help="After training, up to N float64 second-order steps (Newton for tiny models, "
        "else L-BFGS with strong-Wolfe line search) to land on a critical point.")] = 0,
    data_dir: Annotated[Path | None, typer.Option(
        help="Folder with mnist/cifar10 files (default: $FACT_DATA_DIR, else the download "
        "cache).")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never download (also FACT_OFFLINE=1).")] = False,
    output_format: Annotated[str, typer.Option(
        "--format", help="text, or jsonl: one line of metrics per epoch on stdout.")] = "text",
) -> None:
    """Train a reference model with weight decay to convergence and save a checkpoint."""
    from ..errors import FactError

    if dataset is None:
        raise FactError("fact train needs --dataset SPEC (e.g. --dataset mnist-10k)")
    if output_format not in ("text", "jsonl"):
        raise FactError(f"unknown --format {output_format!r}; choose text or jsonl")

    from ..io.files import check_writable, make_parent
    from ..training.loop import TrainConfig
    from ..training.loop import train as run_training

    quiet = verbosity["level"] == 0
    chosen = out_file is None
    if chosen:
        if resume:
            raise FactError("--resume needs --out: the checkpoint of the run to continue")
        out_file = default_out(arch, dataset)
    make_parent(out_file)
    check_writable(out_file)  # before torch work and data loading
    try:
        channel_list = None if channels is None else [int(c) for c in channels.split(",")]
    except ValueError:
        raise FactError(f"--channels must be comma-separated integers (got {channels!r})") from None
    try:
        beta_pair = None if betas is None else [float(b) for b in betas.split(",")]
    except ValueError:
        raise FactError(f"--betas must be two numbers β1,β2 (got {betas!r})") from None
    config = TrainConfig(arch=arch, dataset=dataset, width=width, depth=depth,
                         activation=activation, bias=bias, loss=loss, optimizer=optimizer,
                         lr=lr, momentum=momentum, eps=eps, betas=beta_pair,
                         weight_decay=weight_decay, schedule=schedule,
                         epochs=epochs, batch_size=batch_size, seed=seed, dtype=dtype,
                         target_loss=target_loss, polish=polish, channels=channel_list,
                         pool=pool, heads=heads, norm=norm)

    stop = {"requested": False}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        err.print("interrupt: finishing this epoch and saving (press Ctrl-C again to abort)")

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            pass
    try:
        with _Display(quiet, output_format == "jsonl", out_file if chosen else None) as display:
            result = run_training(config, out=out_file, resume=resume, save_every=save_every,
                                  eval_every=eval_every, device=device, data_dir=data_dir,
                                  offline=offline or None, callback=display,
                                  should_stop=lambda: stop["requested"])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.interrupted:
        if not result.training.get("finished"):
            err.print(f"interrupted at epoch {result.training.get('epoch')}: saved {out_file}; "
                      "continue with the same command plus --resume", soft_wrap=True)
        raise typer.Exit(130)
    line = _summary(arch, result, out_file)
    if display.stdout_closed:
        err.print(f"{line} (stdout was closed; the checkpoint is complete)", highlight=False,
                  soft_wrap=True)
    elif output_format == "jsonl":
        info(line)
    elif not quiet:
        out.print(line, soft_wrap=True)
    elif chosen:
        out.print(str(out_file), soft_wrap=True)  # the one thing -q still says: where it went
