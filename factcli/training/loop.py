"""Training reference models with weight decay to convergence (`fact train`, issue 3).

`train(...)` returns a `TrainResult` and never prints; progress goes to an optional callback as
plain dicts (`{"event": "epoch", ...}`). The objective is relations.md §1:

    L(θ) = Σ_i w_i ℓ_i + (λ/2) ‖θ‖²,   w_i = 1/n unless the dataset carries `weights`,

with λ PyTorch's coupled `weight_decay` of SGD / Adam (all parameters, biases included). `adamw`
(decoupled decay) is a separate, explicit choice whose fixed points are not critical points of L.
A minibatch B uses the unbiased estimate (n/|B|) Σ_{i∈B} w_i ℓ_i, which is the batch mean for
uniform weights.

Speed: the dataset lives on the device as tensors; each epoch draws one permutation from a seeded
CPU `torch.Generator` and batches are index slices of it (no DataLoader, no per-sample Python).
Running loss and accuracy are accumulated as tensors and read once per epoch.

Checkpoints are `factcli.checkpoint/1` (interfaces.md §1), always written atomically. The file at
`out` is rewritten during the run (every `save_every` epochs, at least every `autosave_seconds`,
on interruption and at the end) so that a killed run can be resumed; `training.finished` says
whether the main run completed. Resume state (format `factcli.resume/1`: epoch, optimizer state,
permutation-generator state) is stored

- for a `.pt` out: under the extra key `"resume"` of the same file (one atomic write, so weights
  and optimizer state always agree; `torch.load(weights_only=True)` reads it);
- for a `.safetensors` out: in the sidecar `<out>.resume.pt`, a self-contained `.pt` dict
  (format, model, state_dict, training, resume), written before the safetensors file.

A polished checkpoint carries no resume state (the polish is the last stage). Snapshots
(`<stem>_epoch<NNN><suffix>`, `save_every`) are plain checkpoints without resume state.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..data.datasets import Dataset, load_dataset
from ..engine.device import resolve_device, resolve_dtype
from ..engine.losses import check_loss, per_sample_loss, sample_accuracy
from ..errors import FactError
from ..io.checkpoint import FORMAT, Checkpoint, load_checkpoint, read_pt, save_checkpoint
from ..io.files import check_writable, save_torch
from ..models.archs import ACTIVATIONS, build_model
from ..models.cnn import POOLS
from .objective import FullData, accuracy, evaluate, finite_or_none, objective_terms
from .polish import Callback, polish, worst_stationarity

ARCHS = ("mlp", "linear", "quadratic", "cnn", "transformer")
OPTIMIZERS = ("sgd", "gd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "hold-cosine")
RESUME_FORMAT = "factcli.resume/1"
RESUME_KEY = "resume"

# Defaults that depend on the architecture or the optimizer (documented in docs/train.md).
DEFAULT_WIDTH = {"mlp": 256, "quadratic": 10, "cnn": 64,  # linear: the input dimension
                 "transformer": 64}  # transformer: d_model
DEFAULT_DEPTH = {"mlp": 5, "linear": 3, "cnn": 2, "transformer": 2}  # cnn: Linear layers
DEFAULT_CHANNELS = [16, 32]  # cnn: one conv block per entry
DEFAULT_HEADS = 4
DEFAULT_LR = {"sgd": 0.1, "gd": 0.1, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_MOMENTUM = {"sgd": 0.9, "gd": 0.0}
DEFAULT_EPS, DEFAULT_BETAS = 1e-8, [0.9, 0.999]  # torch's, for adam/adamw
# Options that define the trajectory: a resumed run must agree on all of them.
TRAJECTORY = ("dataset", "loss", "weight_decay", "optimizer", "lr", "momentum", "eps", "betas",
              "batch_size", "seed", "schedule", "dtype")


@dataclass
class TrainConfig:
    """What `fact train` is asked to do. None means "the default for this arch/optimizer"."""

    arch: str
    dataset: str
    width: int | None = None
    depth: int | None = None
    activation: str | None = None
    bias: bool | None = None
    loss: str = "mse"
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float | None = None
    eps: float | None = None
    betas: list[float] | None = None
    weight_decay: float = 1e-4
    schedule: str | None = None
    epochs: int = 200
    batch_size: int | None = None
    seed: int = 0
    dtype: str = "float32"
    target_loss: float | None = None
    polish: int = 0
    channels: list[int] | None = None
    pool: str | None = None
    heads: int | None = None
    norm: str | None = None


@dataclass
class TrainResult:
    """What a run produced: the final checkpoint (in memory) and the per-epoch history."""

    checkpoint: Checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)
    polish_history: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None
    snapshots: list[str] = field(default_factory=list)
    interrupted: bool = False
    resumed_from: int | None = None
    messages: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def training(self) -> dict[str, Any]:
        return self.checkpoint.training

    @property
    def stationarity(self) -> dict[str, float | None]:
        return dict(self.checkpoint.training.get("stationarity") or {})


# --------------------------------------------------------------------------- configuration

def _check(config: TrainConfig) -> None:
    """Check the options against each other: everything that needs no data, so that bad input
    is rejected before a possibly large dataset is loaded."""
    c = config
    if c.arch not in ARCHS:
        raise FactError(f"unknown arch {c.arch!r}; fact train builds: {', '.join(ARCHS)}")
    check_loss(c.loss)
    if c.optimizer not in OPTIMIZERS:
        raise FactError(f"unknown optimizer {c.optimizer!r}; choose one of: "
                        f"{', '.join(OPTIMIZERS)}")
    if c.schedule is not None and c.schedule not in SCHEDULES:
        raise FactError(f"unknown schedule {c.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    resolve_dtype(c.dtype)
    if c.activation is not None and c.activation not in ACTIVATIONS:
        raise FactError(f"unknown activation {c.activation!r}; choose one of: "
                        f"{', '.join(ACTIVATIONS)}")
    # Contradictions between options.
    if c.arch == "linear" and c.activation not in (None, "identity"):
        raise FactError(f"--activation {c.activation} contradicts arch linear (a deep linear "
                        "network has no activation); use arch mlp")
    if c.arch == "quadratic" and c.activation not in (None, "quadratic"):
        raise FactError(f"--activation {c.activation} contradicts arch quadratic (its activation "
                        "is x²); use arch mlp --activation ...")
    if c.arch == "quadratic" and c.depth not in (None, 2):
        raise FactError(f"--depth {c.depth} contradicts arch quadratic (always two layers)")
    if c.arch in ("linear", "quadratic") and c.bias:
        raise FactError(f"--bias contradicts arch {c.arch} (it has no bias parameters)")
    if c.channels is not None and c.arch != "cnn":
        raise FactError(f"--channels is for arch cnn (got arch {c.arch})")
    if c.pool is not None and c.arch != "cnn":
        raise FactError(f"--pool is for arch cnn (got arch {c.arch})")
    if c.pool is not None and c.pool not in POOLS:
        raise FactError(f"unknown --pool {c.pool!r}; choose one of: {', '.join(POOLS)}")
    if c.heads is not None and c.arch != "transformer":
        raise FactError(f"--heads is for arch transformer (got arch {c.arch})")
    if c.norm is not None and c.arch != "transformer":
        raise FactError(f"--norm is for arch transformer (got arch {c.arch})")
    if c.norm not in (None, "layer", "none"):
        raise FactError(f"unknown --norm {c.norm!r}; choose layer or none")
    if c.channels is not None and (not c.channels or min(c.channels) < 1):
        raise FactError(f"--channels must list positive channel counts (got {c.channels})")
    if c.optimizer in ("adam", "adamw") and c.momentum is not None:
        raise FactError(f"--momentum contradicts --optimizer {c.optimizer} (Adam has no momentum "
                        "option; use sgd or gd)")
    for name, value in (("eps", c.eps), ("betas", c.betas)):
        if value is not None and c.optimizer not in ("adam", "adamw"):
            raise FactError(f"--{name} is for --optimizer adam or adamw (got {c.optimizer})")
    if c.eps is not None and not (c.eps > 0 and math.isfinite(c.eps)):
        raise FactError(f"--eps must be a finite number > 0 (got {c.eps})")
    if c.betas is not None and (len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas)):
        raise FactError(f"--betas must be two numbers in [0, 1) (got {c.betas})")
    # Ranges.
    for name, value in (("width", c.width), ("depth", c.depth), ("batch-size", c.batch_size),
                        ("heads", c.heads)):
        if value is not None and value < 1:
            raise FactError(f"--{name} must be at least 1 (got {value})")
    if c.lr is not None and not c.lr > 0:
        raise FactError(f"--lr must be positive (got {c.lr})")
    if c.momentum is not None and not 0 <= c.momentum < 1:
        raise FactError(f"--momentum must lie in [0, 1) (got {c.momentum})")
    if not c.weight_decay >= 0 or not math.isfinite(c.weight_decay):
        raise FactError(f"--weight-decay must be a finite number >= 0 (got {c.weight_decay})")
    if c.epochs < 0:
        raise FactError(f"--epochs must be >= 0 (got {c.epochs})")
    if c.polish < 0:
        raise FactError(f"--polish must be >= 0 (got {c.polish})")
    if c.target_loss is not None and not c.target_loss > 0:
        raise FactError(f"--target-loss must be positive (got {c.target_loss})")
    if c.epochs == 0 and c.polish == 0:
        raise FactError("--epochs 0 without --polish trains nothing")


def _resolve(c: TrainConfig, data: Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the (already `_check`ed) options against the data; fill in the defaults that
    depend on arch, optimizer and data; return (model dict, training dict)."""
    if c.optimizer == "gd" and c.batch_size is not None and c.batch_size != data.n_train:
        raise FactError(f"--batch-size {c.batch_size} contradicts --optimizer gd (full batch, "
                        f"{data.n_train} samples); use --optimizer sgd")
    if data.n_train == 0:
        raise FactError(f"dataset {data.spec!r} has no training samples")
    if c.loss != "mse":
        data.targets(c.loss)  # refuses real-valued targets, and next_token without sequences

    if c.arch != "transformer" and not data.x_train.is_floating_point():
        raise FactError(f"dataset {data.spec!r} has integer token ids as inputs; arch {c.arch} "
                        "takes real-valued inputs (use arch transformer)")
    in_features = int(data.x_train[0].numel())
    model: dict[str, Any] = {"arch": c.arch, "in_features": in_features,
                             "out_features": int(data.out_features)}
    if c.arch == "mlp":
        model.update(width=c.width or DEFAULT_WIDTH["mlp"], depth=c.depth or DEFAULT_DEPTH["mlp"],
                     activation=c.activation or "relu", bias=True if c.bias is None else c.bias)
    elif c.arch == "linear":
        model.update(width=c.width or in_features, depth=c.depth or DEFAULT_DEPTH["linear"],
                     activation="identity", bias=False)
    elif c.arch == "quadratic":
        model.update(width=c.width or DEFAULT_WIDTH["quadratic"], depth=2,
                     activation="quadratic", bias=False)
    else:
        model = _layered_spec(c, data)

    n = data.n_train
    batch_size = n if c.optimizer == "gd" else min(c.batch_size or 128, n)
    adam = c.optimizer in ("adam", "adamw")
    training = {
        "dataset": data.spec, "loss": c.loss, "weight_decay": float(c.weight_decay),
        "weight_decay_mode": "decoupled" if c.optimizer == "adamw" else "coupled",
        "optimizer": c.optimizer,
        "lr": float(c.lr if c.lr is not None else DEFAULT_LR[c.optimizer]),
        "momentum": None if adam else float(
            c.momentum if c.momentum is not None else DEFAULT_MOMENTUM[c.optimizer]),
        "eps": float(c.eps if c.eps is not None else DEFAULT_EPS) if adam else None,
        "betas": [float(b) for b in c.betas or DEFAULT_BETAS] if adam else None,
        "batch_size": batch_size, "epochs": int(c.epochs), "epoch": 0, "seed": int(c.seed),
        "schedule": c.schedule or ("constant" if c.optimizer == "gd" else "cosine"),
        "dtype": c.dtype, "target_loss": c.target_loss, "n_train": n,
        "weighted": data.weights is not None, "factcli_version": __version__,
    }
    return model, training


def _layered_spec(c: TrainConfig, data: Dataset) -> dict[str, Any]:
    """The model dict of a `cnn` (images) or a `transformer` (integer tokens) for `data`."""
    sizes = {"width": c.width or DEFAULT_WIDTH[c.arch], "depth": c.depth or DEFAULT_DEPTH[c.arch]}
    bias = True if c.bias is None else c.bias
    if c.arch == "cnn":
        shape = data.info.get("image_shape")
        if shape is None:
            raise FactError(f"arch cnn needs images (mnist, mnist-10k, fashion-mnist, cifar10); "
                            f"dataset {data.spec!r} has flat inputs of no known image shape")
        return {"arch": "cnn", "in_shape": list(shape), "out_features": int(data.out_features),
                "channels": list(c.channels or DEFAULT_CHANNELS), **sizes,
                "activation": c.activation or "relu", "bias": bias, "pool": c.pool or "max"}
    if data.x_train.is_floating_point() or data.x_train.ndim != 2:
        raise FactError(f"arch transformer needs integer token sequences (n, T), e.g. "
                        f"modular:p=97,tokens=yes; dataset {data.spec!r} has "
                        f"{str(data.x_train.dtype).removeprefix('torch.')} inputs")
    splits = [x for x in (data.x_train, data.x_test) if x is not None and len(x)]
    low, high = min(int(x.min()) for x in splits), max(int(x.max()) for x in splits)
    vocab = data.info.get("vocab") or high + 1
    if low < 0 or high >= vocab:
        raise FactError(f"dataset {data.spec!r} has token ids {low}..{high} outside its "
                        f"vocabulary 0..{vocab - 1}")
    d_model, heads = sizes["width"], c.heads or DEFAULT_HEADS
    if d_model % heads:
        raise FactError(f"--width {d_model} (d_model) is not a multiple of --heads {heads}")
    return {"arch": "transformer", "vocab": int(vocab), "context": int(data.x_train.shape[1]),
            "out_features": int(data.out_features), "d_model": d_model, "heads": heads,
            "depth": sizes["depth"], "d_mlp": 4 * d_model,
            "output": "all" if data.y_train.ndim == 2 else "last",  # per-position targets
            "activation": c.activation or "gelu", "bias": bias,
            # recorded only when not the default, so that earlier runs resume unchanged
            **({"norm": c.norm} if c.norm not in (None, "layer") else {})}


def lr_at(training: dict[str, Any], epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based): cosine decays from lr towards 0;
    hold-cosine keeps lr for the first half and decays it over the second, so that a run can
    first generalize (grokking needs time at full lr) and then settle near a critical point."""
    lr, epochs = training["lr"], max(training["epochs"], 1)
    if training["schedule"] == "hold-cosine":
        hold = epochs // 2
        if epoch < hold:
            return lr
        epoch, epochs = epoch - hold, max(epochs - hold, 1)
    if training["schedule"] in ("cosine", "hold-cosine"):
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
    return lr


def snapshot_path(out: str | os.PathLike, epoch: int, epochs: int) -> Path:
    """`runs/mlp.pt`, epoch 50 of 200 → `runs/mlp_epoch050.pt`."""
    path = Path(out)
    digits = len(str(epochs))
    return path.with_name(f"{path.stem}_epoch{epoch:0{digits}d}{path.suffix}")


def resume_sidecar(out: str | os.PathLike) -> Path:
    """Where a `.safetensors` run keeps its resume state (safetensors holds tensors only)."""
    return Path(f"{out}.resume.pt")


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- files

def _write(out: Path, model_spec: dict[str, Any], state: dict[str, torch.Tensor],
           training: dict[str, Any], resume: dict[str, Any] | None) -> None:
    """Write the checkpoint at `out` atomically, with its resume state if given.

    For `.safetensors` the self-contained sidecar goes first: a kill between the two writes
    leaves a sidecar one save ahead, which is what `--resume` reads, so the state stays
    consistent. Without resume state (polished) the sidecar is removed after the write.
    """
    if out.suffix == ".safetensors":
        sidecar = resume_sidecar(out)
        if resume is not None:
            save_torch(sidecar, {"format": RESUME_FORMAT, "model": model_spec,
                                 "state_dict": state, "training": training, RESUME_KEY: resume})
        save_checkpoint(out, Checkpoint(model_spec, state, training))
        if resume is None and sidecar.exists():
            sidecar.unlink()
        return
    content: dict[str, Any] = {"format": FORMAT, "model": model_spec, "state_dict": state,
                               "training": training}
    if resume is not None:
        content[RESUME_KEY] = resume
    save_torch(out, content)


def _read_resume(out: Path) -> dict[str, Any] | None:
    """The stored run at `out` as a dict (model, state_dict, training, resume or None)."""
    source = resume_sidecar(out) if out.suffix == ".safetensors" else out
    if out.suffix == ".safetensors" and not source.is_file():
        if not out.is_file():
            return None
        stored = load_checkpoint(out)
        return {"model": stored.model, "state_dict": stored.state_dict,
                "training": stored.training, RESUME_KEY: None}
    if not source.is_file():
        return None
    content = read_pt(source)  # weights_only=True; an unreadable file is a FactError
    if not isinstance(content, dict) or content.get("format") not in (FORMAT, RESUME_FORMAT):
        raise FactError(f"cannot resume from {source}: not a factcli checkpoint")
    return content


# --------------------------------------------------------------------------- training

def train(
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    save_every: int | None = None,
    eval_every: int | None = None,
    device: str | torch.device | None = "auto",
    data: Dataset | None = None,
    data_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    callback: Callback | None = None,
    should_stop: Callable[[], bool] | None = None,
    autosave_seconds: float | None = 60.0,
    **options: Any,
) -> TrainResult:
    """Train `config` (or `TrainConfig(**options)`); write the checkpoint to `out` if given.

    `should_stop()` is polled after every epoch: when it returns True the run saves its state
    at that epoch boundary and returns with `interrupted=True` (resume with `resume=True`).
    `eval_every` K evaluates the test split every K epochs (default: about 100 times per run,
    always at the last epoch). `data` is a preloaded dataset used instead of loading
    `config.dataset` (the checkpoint records `data.spec`).
    Raises FactError on bad input and on divergence (NaN/inf loss); the file at `out` then still
    holds the last good state written.
    """
    started = time.perf_counter()
    if config is None:
        config = TrainConfig(**options)
    elif options:
        config = TrainConfig(**{**asdict(config), **options})
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        check_writable(out_path)
        if out_path.suffix == ".safetensors":
            check_writable(resume_sidecar(out_path))
    elif resume or save_every:
        raise FactError("--resume and --save-every need an output path (--out)")
    if save_every is not None and save_every < 1:
        raise FactError(f"--save-every must be at least 1 (got {save_every})")
    if eval_every is not None and eval_every < 1:
        raise FactError(f"--eval-every must be at least 1 (got {eval_every})")
    config = replace(config, loss=check_loss(config.loss))  # causal_lm → next_token
    _check(config)  # before loading a possibly large dataset
    dtype = resolve_dtype(config.dtype)
    run_device = resolve_device(device)
    dataset = data if data is not None else load_dataset(config.dataset, data_dir,
                                                         offline=offline)
    model_spec, training = _resolve(config, dataset)
    training["dataset_fingerprint"] = dataset.fingerprint()  # analyze warns when it differs
    if data_dir is not None:
        training["data_dir"] = str(Path(data_dir).resolve())
    result = TrainResult(Checkpoint(model_spec, {}, training), path=str(out) if out else None)

    def emit(event: dict[str, Any]) -> None:
        if callback is not None:
            callback(event)

    def message(text: str, level: str = "info") -> None:
        result.messages.append(text)
        emit({"event": "message", "text": text, "level": level})

    if config.optimizer == "adamw":
        message("adamw decouples the weight decay: its fixed points are not critical points of "
                "L = loss + (λ/2)‖θ‖², so FACT will hold only approximately (recorded)", "warning")
    if config.weight_decay == 0:
        message("weight decay is 0: FACT needs λ > 0 (its formula divides by λ); stationarity "
                "will be reported as missing", "warning")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(model_spec)
    model.to(device=run_device, dtype=dtype).train()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = _optimizer(model, training)

    start_epoch, polished = 0, False
    stored = _read_resume(out_path) if (resume and out_path is not None) else None
    if resume and stored is None:
        message(f"nothing to resume at {out}: starting from scratch")
    if stored is not None:
        start_epoch, polished = _restore(stored, model, optimizer, generator, model_spec,
                                         training, out_path)
        result.resumed_from = start_epoch
        training.update({k: v for k, v in stored["training"].items()
                         if k not in training or k in ("epoch", "finished", "stopped")})
        if polished:
            message(f"{out} is already polished and complete; nothing to do")
            # the stored weights themselves: the model has the run's dtype, and rounding
            # float64 polished weights to float32 would undo the polish
            result.checkpoint = Checkpoint(model_spec, stored["state_dict"], stored["training"],
                                           str(out))
            result.elapsed_s = time.perf_counter() - started
            return result

    earlier = float(training.get("time_s") or 0.0)  # a resumed run adds to its stored time

    def clock() -> float:
        return earlier + time.perf_counter() - started

    d = FullData(dataset, config.loss, run_device, dtype)
    epochs = training["epochs"]
    eval_every = eval_every or max(1, epochs // 100)
    n, batch_size = d.n, training["batch_size"]
    full_batch = config.optimizer == "gd"
    finished_before = bool(training.get("finished")) and (
        start_epoch >= epochs or training.get("stopped") == "target_loss")
    if stored is not None and start_epoch > epochs:
        raise FactError(f"{out} has already been trained for {start_epoch} epochs; "
                        f"--epochs {epochs} would go back")
    if stored is not None:
        message(f"{out} finished its main run at epoch {start_epoch}" if finished_before
                else f"resuming from epoch {start_epoch} of {epochs}")
    saved_epoch: int | None = start_epoch if stored is not None else None
    last_save = time.monotonic()

    def resume_state(epoch: int) -> dict[str, Any]:
        return {"format": RESUME_FORMAT, "epoch": epoch, "optimizer": optimizer.state_dict(),
                "generator": generator.get_state()}

    def save(epoch: int, finished: bool, stopped: str | None = None) -> None:
        nonlocal saved_epoch, last_save
        training.update(epoch=epoch, finished=finished, stopped=stopped, time_s=clock())
        if out_path is None:
            return
        _write(out_path, model_spec, _model_state(model), dict(training), resume_state(epoch))
        saved_epoch, last_save = epoch, time.monotonic()
        emit({"event": "saved", "path": str(out_path), "epoch": epoch})

    def snapshot(epoch: int) -> None:
        path = snapshot_path(out_path, epoch, epochs)
        save_checkpoint(path, Checkpoint(model_spec, _model_state(model),
                                         {**training, "epoch": epoch, "finished": False,
                                          "snapshot": True}))
        result.snapshots.append(str(path))
        emit({"event": "saved", "path": str(path), "epoch": epoch, "snapshot": True})

    emit({"event": "start", "epochs": epochs, "start_epoch": start_epoch, "n_train": n,
          "batch_size": batch_size, "model": dict(model_spec), "training": dict(training),
          "device": str(run_device), "polish": config.polish})
    if save_every and start_epoch == 0 and not finished_before:
        snapshot(0)

    stopped: str | None = training.get("stopped") if finished_before else None
    mean_loss = {"mse": torch.nn.functional.mse_loss,
                 "cross_entropy": torch.nn.functional.cross_entropy}.get(config.loss)
    count_hits = d.labels is not None and model_spec["out_features"] > 1
    weights = d.w
    epoch = start_epoch
    while epoch < epochs and not finished_before:
        lr = lr_at(training, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tick = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=run_device)
        hits = torch.zeros((), dtype=torch.float64, device=run_device)
        if full_batch:
            batches = [(d.x, d.t, d.labels, weights)]
        else:
            order = torch.randperm(n, generator=generator).to(run_device)
            batches = (_batch(d, weights, order[i:i + batch_size])
                       for i in range(0, n, batch_size))
        for x, t, labels, w in batches:
            output = model(x)
            size = len(x)
            if w is None and mean_loss is not None and output.ndim == 2:
                batch_loss = mean_loss(output, t)  # the batch mean of ℓ_i in one fused op
            elif w is None:  # per-position losses: each sample's mean first (relations.md §1)
                batch_loss = per_sample_loss(config.loss, output, t).mean()
            else:
                batch_loss = (per_sample_loss(config.loss, output, t) * w).sum() * (n / size)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum.add_(batch_loss.detach(), alpha=size)
                if count_hits:  # outputs that are not class scores report no accuracy
                    hit = sample_accuracy(output, labels, d.n_classes)
                    count_hits = hit is not None
                    if count_hits:
                        hits.add_((hit * w).sum() * n if w is not None else hit.sum())
        epoch += 1
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss) or not _params_finite(model):
            kept = (f"the last good checkpoint (epoch {saved_epoch}) is kept at {out}"
                    if saved_epoch is not None else "no checkpoint was written")
            raise FactError(f"training diverged in epoch {epoch}: the training loss is "
                            f"{train_loss} (try a smaller --lr); {kept}")
        row: dict[str, Any] = {"event": "epoch", "epoch": epoch, "epochs": epochs,
                               "train_loss": train_loss,
                               "train_acc": float(hits) / n if count_hits else None,
                               "test_loss": None, "test_acc": None, "lr": lr,
                               "time_s": time.perf_counter() - tick}
        reached = config.target_loss is not None and train_loss < config.target_loss
        if d.x_test is not None and (epoch % eval_every == 0 or epoch == epochs or reached):
            row["test_loss"], row["test_acc"] = _test_metrics(model, d, config.loss)
        result.history.append(row)
        training.update(train_loss=train_loss, train_acc=row["train_acc"])
        if row["test_loss"] is not None:
            training.update(test_loss=finite_or_none(row["test_loss"]), test_acc=row["test_acc"])
        emit(row)
        interrupted = should_stop is not None and should_stop()
        if save_every and epoch % save_every == 0:
            snapshot(epoch)
        if reached:
            stopped = "target_loss"
            break
        if interrupted:
            save(epoch, finished=False, stopped="interrupted")
            result.interrupted = True
            result.checkpoint = Checkpoint(model_spec, _model_state(model), dict(training),
                                           str(out) if out else None)
            result.elapsed_s = time.perf_counter() - started
            return result
        due = (save_every and epoch % save_every == 0) or (
            autosave_seconds is not None and time.monotonic() - last_save >= autosave_seconds)
        if due and epoch < epochs:
            save(epoch, finished=False)

    if not finished_before:
        stopped = stopped or "epochs"
        final = evaluate(model, d, config.loss, config.weight_decay)
        _record(training, final)
        save(epoch, finished=True, stopped=stopped)
    if config.polish > 0:
        emit({"event": "polish_start", "max_steps": config.polish})
        before_state = _model_state(model)
        before = worst_stationarity(training.get("stationarity") or {})
        polish_info = polish(model, d, config.loss, config.weight_decay, config.polish,
                             callback=callback, should_stop=should_stop)
        if should_stop is not None and should_stop():
            result.interrupted = True
            model.to(dtype).load_state_dict(before_state)  # what `out` and `training` describe
            message(f"polish interrupted: {out} keeps the finished main run (epoch {epoch}); "
                    "resume with --resume --polish N")
        else:
            final = evaluate(model, d, config.loss, config.weight_decay)
            after = worst_stationarity(final["stationarity"])
            kept = not after >= before  # a polish that does not help is not kept
            if kept:
                _record(training, final)
            else:
                model.to(dtype).load_state_dict(before_state)
                message(f"the polish did not lower the largest stationarity ({before:.3g} → "
                        f"{after:.3g}): keeping the weights of the main run", "warning")
            training["polish"] = {**{k: v for k, v in polish_info.items() if k != "history"},
                                  "kept": kept, "stationarity_after": finite_or_none(after)}
            result.polish_history = polish_info["history"]
            if out_path is not None:
                training["time_s"] = clock()
                _write(out_path, model_spec, _model_state(model), dict(training), None)
                emit({"event": "saved", "path": str(out_path), "epoch": epoch})
    training["time_s"] = clock()
    result.checkpoint = Checkpoint(model_spec, _model_state(model), dict(training),
                                   str(out) if out else None)
    result.elapsed_s = time.perf_counter() - started
    emit({"event": "done", "training": dict(training)})
    return result


def _record(training: dict[str, Any], final: dict[str, Any]) -> None:
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "objective"):
        if key in final:
            training[key] = finite_or_none(final[key])
    training["stationarity"] = {k: finite_or_none(v) for k, v in final["stationarity"].items()}


def _batch(d: FullData, weights: torch.Tensor | None, index: torch.Tensor) -> tuple:
    return (d.x[index], d.t[index], None if d.labels is None else d.labels[index],
            None if weights is None else weights[index])


def _test_metrics(model: nn.Module, d: FullData, loss: str) -> tuple[float, float | None]:
    with torch.no_grad():
        uniform = d.uniform(len(d.x_test))
        total = objective_terms(model, d.x_test, d.t_test, uniform, loss, backward=False)
    return float(total), accuracy(model, d.x_test, d.labels_test, None, d.n_classes)


def _params_finite(model: nn.Module) -> bool:
    with torch.no_grad():
        return bool(torch.isfinite(torch.stack([p.sum() for p in model.parameters()])).all())


def _optimizer(model: nn.Module, training: dict[str, Any]) -> torch.optim.Optimizer:
    params, lr, decay = model.parameters(), training["lr"], training["weight_decay"]
    if training["optimizer"] in ("sgd", "gd"):
        return torch.optim.SGD(params, lr=lr, momentum=training["momentum"], weight_decay=decay)
    adam = torch.optim.Adam if training["optimizer"] == "adam" else torch.optim.AdamW
    return adam(params, lr=lr, weight_decay=decay, eps=training["eps"],
                betas=tuple(training["betas"]))


def _recorded(training: dict[str, Any], key: str) -> Any:
    """A trajectory option of a stored run; Adam runs saved before `eps`/`betas` were recorded
    used torch's defaults."""
    if key not in training and training.get("optimizer") in ("adam", "adamw"):
        return {"eps": DEFAULT_EPS, "betas": DEFAULT_BETAS}.get(key)
    return training.get(key)


def _restore(stored: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, model_spec: dict[str, Any], training: dict[str, Any],
             out: Path) -> tuple[int, bool]:
    """Load a stored run into model/optimizer/generator; returns (epoch, already polished)."""
    previous = stored.get("training") or {}
    differences = [f"{key} {_recorded(previous, key)!r} (stored) vs {training.get(key)!r} (now)"
                   for key in TRAJECTORY if _recorded(previous, key) != training.get(key)]
    if dict(stored.get("model") or {}) != model_spec:
        differences.insert(0, f"model {stored.get('model')} (stored) vs {model_spec} (now)")
    if differences:
        raise FactError(f"--resume: {out} was trained with different options: "
                        f"{'; '.join(differences)}")
    state = stored.get(RESUME_KEY)
    polished = bool(previous.get("polish"))
    if state is None and not polished:
        raise FactError(f"--resume: {out} holds no resume state (not written by fact train?)")
    try:
        model.load_state_dict(stored["state_dict"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise FactError(f"--resume: the weights in {out} do not fit: {error}") from None
    if polished:
        return int(previous.get("epoch", 0)), True
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise FactError(f"--resume: {out} has resume state of unknown format {found!r}")
    try:  # load_state_dict casts the optimizer state to the parameters' device and dtype
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        return int(state["epoch"]), False
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise FactError(f"--resume: the resume state in {out} is damaged ({error})") from None
