"""Dataset spec strings → seeded, deterministic data (interfaces.md §3).

A spec is `name[:key=value,...]`; the same spec always yields the same tensors. Classification
labels stay integers here; `Dataset.targets(loss)` applies the encoding of relations.md §1
(one-hot for `mse`, labels for `cross_entropy`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.losses import IGNORE
from ..errors import FactError
from ..io import validate
from . import fetch


@dataclass
class Dataset:
    """Train/test tensors. `weights` (summing to 1) replaces the uniform 1/n of the objective."""

    spec: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    n_classes: int | None = None
    weights: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    def fingerprint(self) -> str:
        """SHA-256 of the content (shapes and values of every split, inputs as float32), so a
        checkpoint can tell whether `analyze` sees the same copy of the data it was trained on."""
        digest = hashlib.sha256()
        for tensor in (self.x_train, self.y_train, self.x_test, self.y_test, self.weights):
            if tensor is None:
                digest.update(b"-")
                continue
            values = tensor.detach().cpu()
            values = values.float() if values.is_floating_point() else values.long()
            digest.update(repr(tuple(values.shape)).encode())
            digest.update(values.contiguous().numpy().tobytes())
        return "sha256:" + digest.hexdigest()

    def targets(self, loss: str, split: str = "train") -> torch.Tensor:
        """Targets as the loss wants them: one-hot floats for `mse` of one label per sample,
        labels otherwise (per-position labels (n, T) stay ids: the loss one-hots them)."""
        labels = self.y_train if split == "train" else self.y_test
        if labels is None:
            raise FactError(f"dataset {self.spec!r} has no {split} split")
        if self.n_classes is None:
            if loss != "mse":
                raise FactError(f"dataset {self.spec!r} has real-valued targets; "
                                f"{loss} needs class labels (use --loss mse)")
            return labels if labels.ndim > 1 else labels.unsqueeze(1)
        if loss == "next_token" and labels.ndim != 2:
            raise FactError(f"--loss next_token needs next-token targets (n, T), as token "
                            f"datasets give; {self.spec!r} has one label per sample")
        if loss == "mse" and labels.ndim == 1:
            return torch.nn.functional.one_hot(labels, self.n_classes).to(torch.get_default_dtype())
        return labels

    def summary(self) -> dict[str, Any]:
        """What the spec gives (`fact data show`): sizes, shapes and dtypes per sample, the kind
        of targets, classes or vocabulary, the provenance in `info`, the fingerprint."""
        def dtype(tensor: torch.Tensor) -> str:
            return str(tensor.dtype).removeprefix("torch.")

        per_position = self.n_classes is not None and self.y_train.ndim == 2
        kind = ("next-token ids per position (-100: not predicted)" if per_position
                else "class labels" if self.n_classes is not None else "real values")
        return {"spec": self.spec, "n_train": self.n_train,
                "n_test": 0 if self.x_test is None else len(self.x_test),
                "input_shape": list(self.x_train.shape[1:]), "input_dtype": dtype(self.x_train),
                "target_shape": list(self.y_train.shape[1:]), "target_dtype": dtype(self.y_train),
                "targets": kind, "n_classes": self.n_classes, "weighted": self.weights is not None,
                **self.info, "fingerprint": self.fingerprint()}

    @property
    def out_features(self) -> int:
        if self.n_classes is not None:
            return self.n_classes
        return 1 if self.y_train.ndim == 1 else self.y_train.shape[1]


PATH_KINDS = {"file": "file:data.npz", "text": "text:book.txt", "uci": "uci:uci/iris",
              "keel": "keel:iris.dat"}  # the spec kinds named by a path, with an example


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'name:a=1,b=2' → ('name', {'a': '1', 'b': '2'}); `file:`, `text:`, `uci:` and `keel:`
    keep their path (no commas in it) as `path`."""
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    parts = [part for part in rest.split(",") if part] if rest else []
    if name in PATH_KINDS:
        if not parts:
            raise FactError(f"{name}: needs a path, e.g. {PATH_KINDS[name]}")
        options["path"] = parts.pop(0)
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise FactError(f"bad option {part!r} in dataset spec {spec!r}; expected key=value")
        if key in options:
            raise FactError(f"option {key} is given twice in dataset spec {spec!r}")
        options[key] = value.strip()
    return name.strip(), options


class _Options:
    """Typed access to spec options that names unknown keys and bad values."""

    def __init__(self, spec: str, options: dict[str, str]):
        self.spec, self.options, self.used = spec, options, set()

    def get(self, key: str, default: Any, kind: type = int, minimum: float | None = None,
            maximum: float | None = None) -> Any:
        """The option as `kind`; numbers must be finite and lie in [minimum, maximum]."""
        self.used.add(key)
        if key not in self.options:
            return default
        try:
            value = kind(self.options[key])
        except ValueError:
            raise FactError(f"option {key}={self.options[key]!r} in {self.spec!r} "
                            f"is not a valid {kind.__name__}") from None
        field = f"option {key} in {self.spec!r}"
        if kind is int:
            validate.integer(value, field, minimum, maximum)
        elif kind is float:
            validate.number(value, field)
        return value

    def flag(self, key: str, default: bool) -> bool:
        """A yes/no option (also true/false, 1/0)."""
        self.used.add(key)
        value = self.options.get(key)
        if value is None:
            return default
        if value.lower() in ("yes", "true", "1"):
            return True
        if value.lower() in ("no", "false", "0"):
            return False
        raise FactError(f"option {key}={value!r} in {self.spec!r} must be yes or no")

    def done(self) -> None:
        unknown = sorted(set(self.options) - self.used)
        if unknown:
            raise FactError(f"unknown option(s) {', '.join(unknown)} in dataset spec "
                            f"{self.spec!r}; "
                            f"known: {', '.join(sorted(self.used))}")


def _tensor(array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype or torch.get_default_dtype())


def _generated(spec: str, n_values: float, bytes_per_value: int = 24) -> None:
    """A generated set's arrays (float64 in numpy, then a tensor copy) must fit in memory."""
    validate.check_memory(float(n_values) * bytes_per_value, f"dataset {spec!r}")


def _split(spec: str, x: np.ndarray, y: np.ndarray, n_train: int, n_classes: int | None,
           **info: Any) -> Dataset:
    label_dtype = torch.long if n_classes is not None else None
    return Dataset(spec, _tensor(x[:n_train]), _tensor(y[:n_train], label_dtype),
                   _tensor(x[n_train:]), _tensor(y[n_train:], label_dtype), n_classes, info=info)


def _parity(spec: str, o: _Options) -> Dataset:
    d, k, n = o.get("d", 50, minimum=1), o.get("k", 3, minimum=1), o.get("n", 2000, minimum=1)
    seed, n_test = o.get("seed", 0, minimum=0), o.get("n_test", n, minimum=0)
    if not 1 <= k <= d:
        raise FactError(f"parity needs 1 <= k <= d (got k={k}, d={d})")
    _generated(spec, (n + n_test) * d)
    rng = np.random.default_rng(seed)
    hidden = np.sort(rng.choice(d, size=k, replace=False))
    x = rng.choice([-1.0, 1.0], size=(n + n_test, d))
    y = (x[:, hidden].prod(axis=1) > 0).astype(np.int64)
    return _split(spec, x, y, n, 2, hidden=hidden.tolist())


_OPS = {"add": lambda a, b, p: (a + b) % p, "sub": lambda a, b, p: (a - b) % p,
        "mul": lambda a, b, p: (a * b) % p, "div": lambda a, b, p: (a * pow(int(b), p - 2, p)) % p}


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % q for q in range(2, math.isqrt(p) + 1))


def _modular(spec: str, o: _Options) -> Dataset:
    p, op = o.get("p", 61, minimum=2), o.get("op", "add", str)
    train_frac, seed = o.get("train_frac", 0.5, float), o.get("seed", 0, minimum=0)
    if op not in _OPS:
        raise FactError(f"unknown modular op {op!r}; choose one of: {', '.join(_OPS)}")
    if not 0 < train_frac < 1:
        raise FactError(f"train_frac must lie in (0, 1) (got {train_frac})")
    if op == "div" and not _is_prime(p):  # b ↦ b^(p-2) is the inverse only modulo a prime
        raise FactError(f"modular op=div needs a prime p (got p={p})")
    _generated(spec, 2.0 * p ** 3, 16)  # p² one-hot pairs of width 2p
    pairs = [(a, b) for a, b in itertools.product(range(p), repeat=2) if op != "div" or b]
    tokens = o.get("tokens", "no", str)
    if tokens not in ("yes", "no"):
        raise FactError(f"tokens must be yes or no (got {tokens!r})")
    pairs = np.array(pairs)[np.random.default_rng(seed).permutation(len(pairs))]
    y = np.array([_OPS[op](int(a), int(b), p) for a, b in pairs], dtype=np.int64)
    n_train = int(round(train_frac * len(pairs)))
    if tokens == "yes":  # the sequence "a b =" as integer ids, "=" being token p
        x = np.concatenate([pairs, np.full((len(pairs), 1), p)], axis=1).astype(np.int64)
        return Dataset(spec, _tensor(x[:n_train], torch.long), _tensor(y[:n_train], torch.long),
                       _tensor(x[n_train:], torch.long), _tensor(y[n_train:], torch.long), p,
                       info={"vocab": p + 1})
    x = np.zeros((len(pairs), 2 * p))
    x[np.arange(len(pairs)), pairs[:, 0]] = 1
    x[np.arange(len(pairs)), p + pairs[:, 1]] = 1
    return _split(spec, x, y, n_train, p)


MASKS = ("attention_mask", "attention_mask_test")


def _file(spec: str, o: _Options) -> Dataset:
    """An .npz (x_train, y_train[, x_test, y_test]) or a numeric .csv, in the file's own float
    dtype (the model's dtype is applied later, so float64 data stays float64); or tokens: an
    .npy of windows (n, T+1), or an .npz of integer x_train with same-shape y_train (or an
    attention_mask), kept integer."""
    path = Path(o.get("path", "", str))
    labels = o.get("labels", "yes", str) != "no"
    if not path.is_file():
        raise FactError(f"dataset file not found: {path}")
    if path.suffix == ".npy":
        validate.npy_header(path)
        try:
            windows = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise FactError(f"cannot read {path}: {error}") from None
        if windows.dtype.kind not in "iu" or windows.ndim != 2 or windows.shape[1] < 2:
            raise FactError(f"{path} must hold integer token windows of shape (n, T+1), T >= 1 "
                            f"(found {windows.dtype} of shape {windows.shape})")
        return _tokens(spec, o, {"x_train": windows[:, :-1], "y_train": windows[:, 1:]},
                       source="npy")
    masks: dict[str, np.ndarray | None] = {}
    if path.suffix == ".npz":
        validate.npz_headers(path)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                if "x_train" not in arrays or "y_train" not in arrays:
                    raise FactError(f"{path} must hold arrays x_train and y_train "
                                    f"(found: {', '.join(arrays.files)})")
                x_train, y_train = arrays["x_train"], arrays["y_train"]
                x_test = arrays["x_test"] if "x_test" in arrays else None
                y_test = arrays["y_test"] if "y_test" in arrays else None
                masks = {key: arrays[key] if key in arrays else None for key in MASKS}
        except (ValueError, OSError, EOFError) as error:  # e.g. object arrays, which need pickle
            raise FactError(f"cannot read {path}: {error}") from None
    elif path.suffix == ".csv":
        x_train, y_train = _csv(path, o)
        x_test = y_test = None
    else:
        raise FactError(f"unsupported data file {path.name}; use .npz, .npy (token windows) "
                        "or .csv")
    validate.dataset_arrays(str(path), x_train, y_train, x_test, y_test)
    masked = any(mask is not None for mask in masks.values())
    if path.suffix == ".npz" and o.flag("tokens", x_train.dtype.kind in "iu" and (
            y_train.shape == x_train.shape and y_train.dtype.kind in "iu" or masked)):
        return _tokens(spec, o, {"x_train": x_train, "y_train": y_train, "x_test": x_test,
                                 "y_test": y_test, **masks}, source="npz")
    if masked:
        raise FactError(f"{path}: an attention_mask belongs to integer token windows x_train "
                        f"(n, T) with next-token ids y_train (n, T)")
    # Integer-valued 1-D targets are class labels unless the spec says `labels=no`.
    splits = [y_train] + ([y_test] if y_test is not None else [])
    is_labels = labels and y_train.ndim == 1 and all(
        bool(np.all(a == np.round(a))) for a in splits)
    n_classes = validate.class_labels(str(path), splits, len(y_train)) if is_labels else None

    def values(array):  # floats keep their dtype; integers become float64 (exact below 2**53)
        return _tensor(array, torch.from_numpy(array[:0]).dtype if array.dtype.kind == "f"
                       else torch.float64)

    def targets(array):
        return _tensor(array, torch.long) if n_classes is not None else values(array)

    return Dataset(spec, values(x_train.reshape(len(x_train), -1)), targets(y_train),
                   None if x_test is None else values(x_test.reshape(len(x_test), -1)),
                   None if y_test is None else targets(y_test), n_classes)


def _tokens(spec: str, o: _Options, arrays: dict[str, np.ndarray | None],
            vocab: int | None = None, **info: Any) -> Dataset:
    """Token windows x (n, T) and next-token targets y (n, T) as int64 tensors; a position whose
    attention mask is 0 gets the target IGNORE. The vocabulary is `vocab`, else the `vocab=`
    option, else the largest id + 1."""
    high = validate.token_arrays(f"dataset {spec!r}", arrays, IGNORE)
    vocab = vocab or o.get("vocab", high + 1, minimum=1, maximum=validate.MAX_CLASSES)
    if high >= vocab:
        raise FactError(f"dataset {spec!r} holds token id {high}, outside vocab={vocab}")
    for split, mask in (("train", arrays.get("attention_mask")),
                        ("test", arrays.get("attention_mask_test"))):
        if mask is not None:
            arrays[f"y_{split}"] = np.where(mask == 1, arrays[f"y_{split}"], IGNORE)

    x, y, x_test, y_test = (None if arrays.get(key) is None else
                            _tensor(arrays[key].astype(np.int64), torch.long)
                            for key in ("x_train", "y_train", "x_test", "y_test"))
    return Dataset(spec, x, y, x_test, y_test, vocab,
                   info={"vocab": vocab, "T": x.shape[1], "predicted": int((y != IGNORE).sum()),
                         **info})


def _text(spec: str, o: _Options) -> Dataset:
    """A text file's bytes as token ids 0–255 (`tokenizer=bytes`, nothing downloaded): windows
    of T+1 bytes every `stride` (default T) give x (the first T) and y (the next tokens)."""
    path, tokenizer = Path(o.get("path", "", str)), o.get("tokenizer", "bytes", str)
    T = o.get("T", 128, minimum=1, maximum=1 << 20)
    stride = o.get("stride", T, minimum=1, maximum=1 << 30)
    if tokenizer != "bytes":
        raise FactError(f"unknown tokenizer {tokenizer!r} in {spec!r}; factcli has bytes "
                        "(ids 0-255, vocabulary 256, nothing to download)")
    if not path.exists():
        raise FactError(f"text file not found: {path}")
    if not path.is_file():
        raise FactError(f"text: {path} is not a regular file")
    size = path.stat().st_size
    if size < T + 1:
        raise FactError(f"text: {path} holds {size} bytes; T={T} needs at least {T + 1} (one "
                        "window of T inputs and their next tokens)")
    count = (size - T - 1) // stride + 1
    validate.check_memory(size + 16.0 * count * T, f"dataset {spec!r} ({count} windows of "
                          f"{T + 1} bytes)")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise FactError(f"cannot read {path}: {error}") from None
    windows = np.lib.stride_tricks.sliding_window_view(data[:size], T + 1)[::stride]
    return _tokens(spec, o, {"x_train": windows[:, :-1], "y_train": windows[:, 1:]}, vocab=256,
                   tokenizer="bytes", stride=stride, windows=len(windows))


def _csv(path: Path, o: _Options) -> tuple[np.ndarray, np.ndarray]:
    """A numeric CSV; `header=yes|no` (or a number of lines to skip), `target=NAME|INDEX`."""
    header_text, target = o.options.get("header", "no"), o.get("target", "-1", str)
    o.used.add("header")
    skip = int(header_text) if header_text.isdigit() else int(o.flag("header", False))
    names: list[str] = []
    if skip:
        with open(path) as handle:
            names = [name.strip() for name in handle.readline().strip().split(",")]
    validate.check_memory(16.0 * path.stat().st_size, f"reading {path}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    except ValueError as error:
        raise FactError(f"cannot read {path} as numeric CSV: {error}") from None
    if table.shape[0] == 0 or table.shape[1] < 2:
        raise FactError(f"{path}: a CSV dataset needs at least one row and two columns "
                        f"(found {table.shape[0]} rows, {table.shape[1]} columns)")
    if target.lstrip("-").isdigit():
        column = int(target)
        if not -table.shape[1] <= column < table.shape[1]:
            raise FactError(f"target={target}: {path} has {table.shape[1]} columns")
    elif target in names:
        column = names.index(target)
    else:
        raise FactError(f"target={target!r} is not a column of {path}"
                        + (f" (columns: {', '.join(names)})" if names else
                           "; name columns with header=yes or give an index"))
    return np.delete(table, column % table.shape[1], axis=1), table[:, column]


def _read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes; its declared shape is checked before the body is read."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 8:
                raise FactError(f"{path} is not an idx file of unsigned bytes")
            dims = magic[3]
            if not 1 <= dims <= validate.MAX_DIMENSIONS:
                raise FactError(f"{path} declares {dims} dimensions (expected 1 to "
                                f"{validate.MAX_DIMENSIONS})")
            header = handle.read(4 * dims)
            if len(header) < 4 * dims:
                raise FactError(f"{path} is truncated inside its header")
            shape = tuple(int.from_bytes(header[4 * i: 4 * i + 4], "big") for i in range(dims))
            expected = math.prod(shape)
            validate.check_memory(9.0 * expected, f"reading {path} (shape {shape})")
            body = handle.read(expected + 1)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise FactError(f"cannot read {path}: {error}") from None
    if len(body) != expected:
        raise FactError(f"{path} holds {len(body)}{'+' if len(body) > expected else ''} values; "
                        f"its header declares {expected} (shape {shape})")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _data_root(data_dir: str | os.PathLike | None) -> Path:
    """--data-dir, else $FACT_DATA_DIR, else the download cache (data/fetch.py)."""
    return Path(data_dir) if data_dir else fetch.cache_dir()


def _find(directory: Path, subdirs: tuple[str, ...], names: list[str],
          suffixes: tuple[str, ...] = ("", ".gz")) -> Path | None:
    for sub in subdirs:
        for suffix in suffixes:
            if all((directory / sub / (name + suffix)).is_file() for name in names):
                return directory / sub
    return None


def _located(name: str, root: Path, found: Path | None, offline: bool | None,
             needs: str) -> Path:
    """The folder found in `root`, else the one `fetch` fills (or a one-line error naming both)."""
    if found is not None:
        return found
    if fetch.is_offline(offline):
        raise FactError(f"{name} needs {needs} in {root.resolve()} (or a torchvision-style "
                        f"subfolder) and downloads are off: run `fact data fetch {name}`, or set "
                        "--data-dir or FACT_DATA_DIR to a folder that holds them")
    return fetch.fetch(name, root, offline=offline)


IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _idx_dataset(spec: str, o: _Options, name: str, root: Path, offline: bool | None
                 ) -> Dataset:
    tv = TORCHVISION_FOLDER[name]
    found = _find(root, ("", name, name.upper(), f"{name}/raw", f"{name.upper()}/raw",
                         f"{tv}/raw", tv), IDX_FILES)
    folder = _located(name, root, found, offline, f"the files {', '.join(IDX_FILES)} "
                      "(optionally .gz)")
    arrays = []
    for base in IDX_FILES:
        path = folder / base
        arrays.append(_read_idx(path if path.is_file() else path.with_name(base + ".gz")))
    x_train, y_train, x_test, y_test = arrays
    return _images(spec, o, x_train, y_train, x_test, y_test, 10, (1, 28, 28))


def _images(spec: str, o: _Options, x_train, y_train, x_test, y_test, n_classes: int,
            shape: tuple[int, int, int]) -> Dataset:
    """Flat rows in [0, 1]; `info["image_shape"]` = (C, H, W) says how a row is an image.
    Labels are checked; `n`/`n_test` take the first ones."""
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if labels.ndim != 1 or images.ndim < 2 or len(images) != len(labels):
            raise FactError(f"dataset {spec!r}: the {split} split has {len(images)} images of "
                            f"shape {images.shape[1:]} and labels of shape {labels.shape}; "
                            "expected one label per image")
    validate.class_labels(f"dataset {spec!r}", [y_train, y_test], len(y_train), n_classes)
    n = o.get("n", len(x_train), minimum=1, maximum=len(x_train))
    n_test = o.get("n_test", len(x_test), minimum=0, maximum=len(x_test))
    def prep(x):
        return _tensor(x.reshape(len(x), -1).astype(np.float64) / 255.0)
    return Dataset(spec, prep(x_train[:n]), _tensor(y_train[:n].astype(np.int64), torch.long),
                   prep(x_test[:n_test]), _tensor(y_test[:n_test].astype(np.int64), torch.long),
                   n_classes, info={"image_shape": list(shape)})


def _mnist_10k(spec: str, o: _Options) -> Dataset:
    """The 10,000 real MNIST digits shipped with factcli: first 8,000 train, last 2,000 test."""
    with resources.files("factcli").joinpath("data/mnist-10k.npz").open("rb") as handle:
        with np.load(io.BytesIO(handle.read())) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    boundary = o.options.get("split", "")
    split = int(boundary) if boundary.isdigit() else 8000  # split=train|test: _choose_split
    if not 0 < split < len(images):
        raise FactError(f"split must lie in 1..{len(images) - 1} (got {split})")
    return _images(spec, o, images[:split], labels[:split], images[split:], labels[split:], 10,
                   (1, 28, 28))


class _SafeUnpickler(pickle.Unpickler):
    """Reads the CIFAR-10 python batches: numpy arrays and builtins only, no other code runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol-2 pickles spell bytes; a pure function

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: Path, labels: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """One batch: 3072 bytes per image (3×32×32) and a label per image."""
    validate.check_memory(10.0 * path.stat().st_size, f"reading {path}")
    if path.suffix == ".bin":
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % 3073 or not raw.size:
            raise FactError(f"{path} is not a CIFAR-10 binary batch (size {raw.size})")
        rows = raw.reshape(-1, 3073)
        return rows[:, 1:], rows[:, 0].astype(np.int64)
    try:
        with open(path, "rb") as handle:
            batch = _SafeUnpickler(handle, encoding="bytes").load()
        data, values = batch[b"data"], np.asarray(batch[labels])
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError, IndexError,
            AttributeError) as error:
        raise FactError(f"{path} is not a CIFAR python batch: {error}") from None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 \
            or data.dtype != np.uint8:
        raise FactError(f"{path}: data must be a uint8 array of rows of 3072 values")
    if values.dtype.kind not in "iu" or values.shape != (len(data),):
        raise FactError(f"{path}: labels must be one integer per image")
    return data, values.astype(np.int64)


CIFAR10_PY = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar10(spec: str, o: _Options, root: Path, offline: bool | None) -> Dataset:
    subs = ("", "cifar-10-batches-py", "cifar-10-batches-bin", "cifar10",
            "cifar10/cifar-10-batches-py")
    found = _find(root, subs, CIFAR10_PY, ("", ".bin"))
    folder = _located("cifar10", root, found, offline, f"{', '.join(CIFAR10_PY)} (python "
                      "batches, or the .bin batches)")
    suffix = "" if (folder / "test_batch").is_file() else ".bin"
    batches = [_cifar_batch(folder / (name + suffix)) for name in CIFAR10_PY]
    x_train = np.concatenate([b[0] for b in batches[:5]])
    y_train = np.concatenate([b[1] for b in batches[:5]])
    return _images(spec, o, x_train, y_train, *batches[5], 10, (3, 32, 32))


def _cifar100(spec: str, o: _Options, root: Path, offline: bool | None) -> Dataset:
    """CIFAR-100 python batches; `labels=fine` (100 classes, default) or `coarse` (20)."""
    kind = o.get("labels", "fine", str)
    if kind not in ("fine", "coarse"):
        raise FactError(f"cifar100 labels must be fine or coarse (got {kind!r})")
    found = _find(root, ("", "cifar-100-python", "cifar100/cifar-100-python"), ["train", "test"],
                  ("",))
    folder = _located("cifar100", root, found, offline, "the python batches train and test")
    (x_train, y_train), (x_test, y_test) = (
        _cifar_batch(folder / part, f"{kind}_labels".encode()) for part in ("train", "test"))
    return _images(spec, o, x_train, y_train, x_test, y_test, 100 if kind == "fine" else 20,
                   (3, 32, 32))


def _separation(spec: str, o: _Options) -> Dataset:
    """relations.md §6: AGOP weights coordinates that minimum-norm weights avoid.

    With probability p, x is uniform on {−1,0,1}⁴; otherwise x = (s₁/τ^{3/2}, s₂/τ^{3/2}, s₃, s₄)
    with s uniform on {±1}⁴. Target τ x₁x₂ + x₃x₄. `samples=0` (default) gives the exact
    finite-support distribution as 97 weighted points; `samples=N` draws N points.
    """
    tau, p = o.get("tau", 0.1, float), o.get("p", 0.5, float)
    samples, seed = o.get("samples", 0, minimum=0), o.get("seed", 0, minimum=0)
    if tau <= 0 or not 0 < p < 1:
        raise FactError(f"separation needs tau > 0 and 0 < p < 1 (got tau={tau}, p={p})")
    _generated(spec, 2.0 * samples * 6)
    grid = np.array(list(itertools.product([-1.0, 0.0, 1.0], repeat=4)))
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=4)))
    spiky = signs * np.array([tau ** -1.5, tau ** -1.5, 1.0, 1.0])
    support = np.concatenate([grid, spiky])
    mass = np.concatenate([np.full(len(grid), p / len(grid)),
                           np.full(len(spiky), (1 - p) / len(spiky))])
    def target(x):
        return tau * x[:, 0] * x[:, 1] + x[:, 2] * x[:, 3]
    if samples == 0:
        return Dataset(spec, _tensor(support), _tensor(target(support)[:, None]),
                       _tensor(support), _tensor(target(support)[:, None]),
                       weights=_tensor(mass), info={"exact": True})
    rng = np.random.default_rng(seed)
    x = support[rng.choice(len(support), size=2 * samples, p=mass)]
    return Dataset(spec, _tensor(x[:samples]), _tensor(target(x[:samples])[:, None]),
                   _tensor(x[samples:]), _tensor(target(x[samples:])[:, None]))


def _teacher_linear(spec: str, o: _Options) -> Dataset:
    """Gaussian inputs x ~ N(0, I_d), targets y = βx + σξ with β ~ N(0, 1/d) entries (c × d)
    and label noise ξ ~ N(0, I_c) of size σ = `noise` (default 0: none, nothing drawn)."""
    d, c, n = o.get("d", 10, minimum=1), o.get("c", 10, minimum=1), o.get("n", 100, minimum=1)
    seed, n_test = o.get("seed", 0, minimum=0), o.get("n_test", n, minimum=0)
    noise = o.get("noise", 0.0, float, minimum=0)
    _generated(spec, (n + n_test) * (d + c) + c * d)
    rng = np.random.default_rng(seed)
    beta = rng.standard_normal((c, d)) / np.sqrt(d)
    x = rng.standard_normal((n + n_test, d))
    y = x @ beta.T
    if noise > 0:  # drawn after x, so the noiseless sets stay what they were
        y = y + noise * rng.standard_normal(y.shape)
    return Dataset(spec, _tensor(x[:n]), _tensor(y[:n]), _tensor(x[n:]), _tensor(y[n:]))


SKLEARN_SETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")


def _sklearn(spec: str, o: _Options) -> Dataset:
    """A real tabular set shipped inside scikit-learn (nothing downloaded), seeded train/test."""
    name = o.get("name", "wine", str)
    if name not in SKLEARN_SETS:
        raise FactError(f"unknown sklearn set {name!r}; choose one of: {', '.join(SKLEARN_SETS)}")
    try:
        from sklearn import datasets as shipped
    except ImportError:
        raise FactError("sklearn: sets need scikit-learn: pip install 'factcli[tabular]'") from None
    x, y = getattr(shipped, f"load_{name}")(return_X_y=True)
    n_classes = None if name == "diabetes" else int(y.max()) + 1
    return _seeded(spec, o, x.astype(np.float64), y, n_classes)


def _seeded(spec: str, o: _Options, x: np.ndarray, y: np.ndarray, n_classes: int | None,
            **info: Any) -> Dataset:
    """A seeded shuffle (`seed`, default 0), then the last round(test_frac·n) rows as the test
    split (`test_frac`, default 0.2): the split of the tabular sets that come without one."""
    test_frac, seed = o.get("test_frac", 0.2, float), o.get("seed", 0, minimum=0)
    if not 0 < test_frac < 1:
        raise FactError(f"test_frac must lie in (0, 1) (got {test_frac})")
    n_train = len(x) - round(test_frac * len(x))
    if not 0 < n_train < len(x):
        raise FactError(f"dataset {spec!r}: {len(x)} row(s) leave no train or no test rows at "
                        f"test_frac={test_frac:g}")
    order = np.random.default_rng(seed).permutation(len(x))
    return _split(spec, x[order], y[order], n_train, n_classes, **info)


def _table(path: Path) -> np.ndarray:
    """A whitespace-separated numeric table after one header line, finite, at least one row."""
    validate.check_memory(16.0 * path.stat().st_size, f"reading {path}")
    with warnings.catch_warnings():  # an empty body makes loadtxt warn; refused just below
        warnings.simplefilter("ignore")
        try:
            table = np.loadtxt(path, skiprows=1, ndmin=2, comments=None)
        except ValueError as error:  # ragged rows, text cells, bytes that are not UTF-8
            raise FactError(f"cannot read {path} as a numeric table: {error}") from None
    if not table.size:
        raise FactError(f"{path} holds no data rows (a header line, then one row per sample)")
    if not np.isfinite(table).all():
        raise FactError(f"{path} contains NaN or infinite values")
    return table


def _uci(spec: str, o: _Options) -> Dataset:
    """A folder NAME/ of the 121-set UCI collection of Fernández-Delgado et al. (2014), as the
    RFM papers use it: NAME_R.dat (a header line; per row an id, the standardised features and
    the class 0..C-1) and, when present, conxuntos.dat, whose fixed split is used (else the
    seeded one)."""
    folder = Path(o.get("path", "", str))
    data = folder / f"{folder.name}_R.dat"
    if not data.is_file():
        raise FactError(f"uci: {data} not found (a folder NAME/ of the UCI collection holds "
                        "NAME_R.dat)")
    table = _table(data)
    if table.shape[1] < 3:
        raise FactError(f"{data}: rows need an id, at least one feature and the class "
                        f"(found {table.shape[1]} columns)")
    x, labels = table[:, 1:-1], table[:, -1]
    if not np.all(labels == np.round(labels)):
        raise FactError(f"{data}: the last column must hold integer classes 0..C-1")
    if labels.max() >= validate.MAX_CLASSES:  # before any integer conversion of 1e300
        raise FactError(f"{data}: class {labels.max():.6g} implies more than "
                        f"{validate.MAX_CLASSES} classes")
    n_classes = validate.class_labels(str(data), [labels], len(labels))
    y = labels.astype(np.int64)
    fixed = folder / "conxuntos.dat"
    if not fixed.is_file():
        return _seeded(spec, o, x, y, n_classes, split="seeded")
    given = sorted({"seed", "test_frac"} & set(o.options))
    if given:
        raise FactError(f"{fixed} fixes the split: drop {', '.join(given)} (for sets without "
                        "conxuntos.dat)")
    train, test = _conxuntos(fixed, len(x))
    rows = np.concatenate([train, test])
    return _split(spec, x[rows], y[rows], len(train), n_classes, split="conxuntos.dat")


def _conxuntos(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """conxuntos.dat: a line of train and a line of test row indices, 0-based, whitespace-
    separated (how the collection's public readers take it: line 1 train, line 2 test);
    checked to be in range, without repeats, disjoint."""
    validate.check_memory(16.0 * path.stat().st_size, f"reading {path}")
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise FactError(f"cannot read {path}: {error}") from None
    if len(lines) != 2:
        raise FactError(f"{path} must hold two lines of row indices, train then test "
                        f"(found {len(lines)})")
    splits = []
    for tokens, split in zip(lines, ("train", "test")):
        if not all(token.isascii() and token.isdigit() for token in tokens):
            raise FactError(f"{path}: the {split} line must hold row indices 0..{n - 1}")
        indices = [int(token) for token in tokens]
        if max(indices) >= n:
            raise FactError(f"{path}: {split} row index {max(indices)} is out of range "
                            f"0..{n - 1}")
        if len(set(indices)) != len(indices):
            raise FactError(f"{path}: the {split} line repeats a row index")
        splits.append(np.array(indices, dtype=np.int64))
    if np.intersect1d(*splits).size:
        raise FactError(f"{path}: a row is both in the train and in the test line")
    return splits[0], splits[1]


KEEL_NUMERIC = ("real", "integer", "numeric")
_KEEL_ATTRIBUTE = re.compile(r"""('[^']*'|"[^"]*"|[^\s{\[]+)\s*(.*)""")


def _keel_attribute(where: str, text: str) -> tuple[str, list[str] | None]:
    """`NAME real|integer|numeric [lo, hi]` → (NAME, None); `NAME {v1, v2}` → (NAME, values).
    The declared range is not enforced (KEEL states the range seen, not a limit)."""
    match = _KEEL_ATTRIBUTE.fullmatch(text.strip())
    if not match:
        raise FactError(f"{where}: @attribute needs a name and a type")
    name, kind = match.group(1).strip("'\""), match.group(2).strip()
    if kind.startswith("{"):
        if not kind.endswith("}"):
            raise FactError(f"{where}: the values of @attribute {name} must end with }}")
        values = [value.strip() for value in kind[1:-1].split(",")]
        if not all(values) or len(set(values)) != len(values):
            raise FactError(f"{where}: @attribute {name} needs distinct, non-empty values")
        return name, values
    if kind.split("[")[0].strip().lower() not in KEEL_NUMERIC:
        raise FactError(f"{where}: unknown type {kind[:40]!r} of @attribute {name}; KEEL "
                        f"attributes are {', '.join(KEEL_NUMERIC)} or {{v1, v2, ...}}")
    return name, None


def _keel(spec: str, o: _Options) -> Dataset:
    """A KEEL classification .dat file: @relation, @attribute lines, @inputs/@outputs (default:
    the last attribute is the output), @data rows of comma-separated values. A nominal input
    becomes one 0/1 column per declared value; the output must be nominal and its value's
    position in the declared list is the class. `?` (missing) is refused. Seeded split."""
    path = Path(o.get("path", "", str))
    if not path.is_file():
        raise FactError(f"dataset file not found: {path}")
    validate.check_memory(32.0 * path.stat().st_size, f"reading {path}")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FactError(f"cannot read {path}: {error}") from None
    attributes: dict[str, list[str] | None] = {}
    roles: dict[str, list[str]] = {}
    start = None
    for number, line in enumerate(lines, 1):
        key, rest = (line.split(None, 1) + ["", ""])[:2]
        key, where = key.lower(), f"{path}:{number}"
        if not key or key.startswith("%") or key == "@relation":
            continue
        if key == "@data":
            start = number
            break
        if key == "@attribute":
            name, values = _keel_attribute(where, rest)
            if name in attributes:
                raise FactError(f"{where}: @attribute {name} is declared twice")
            attributes[name] = values
        elif key in ("@inputs", "@input", "@outputs", "@output"):
            roles[key.rstrip("s")] = [name.strip() for name in rest.split(",") if name.strip()]
        else:
            raise FactError(f"{where}: unexpected {line.strip()[:40]!r} before @data")
    if start is None or not attributes:
        raise FactError(f"{path} is not a KEEL file: it needs @attribute lines and @data")
    names = list(attributes)
    outputs = roles.get("@output", names[-1:])
    inputs = roles.get("@input", [name for name in names if name not in outputs])
    unknown = [name for name in inputs + outputs if name not in attributes]
    if unknown:
        raise FactError(f"{path}: @inputs/@outputs name undeclared attribute {unknown[0]}")
    if len(outputs) != 1 or attributes[outputs[0]] is None or not inputs \
            or outputs[0] in inputs:
        raise FactError(f"{path}: keel: reads classification files: one nominal output "
                        "attribute ({v1, v2, ...}) and at least one other input")
    rows = []
    for number, line in enumerate(lines[start:], start + 1):
        if not line.strip() or line.lstrip().startswith("%"):
            continue
        rows.append(_keel_row(f"{path}:{number}", line, attributes))
    if not rows:
        raise FactError(f"{path} holds no data rows after @data")
    width = sum(1 if attributes[name] is None else len(attributes[name]) for name in inputs)
    validate.check_memory(8.0 * len(rows) * (len(names) + width), f"reading {path}")
    table = np.array(rows)
    columns = []
    for name in inputs:
        values, column = attributes[name], table[:, names.index(name)]
        columns.append(column[:, None] if values is None else
                       (column[:, None] == np.arange(len(values))).astype(np.float64))
    classes = attributes[outputs[0]]
    y = table[:, names.index(outputs[0])].astype(np.int64)
    return _seeded(spec, o, np.concatenate(columns, axis=1), y, len(classes), split="seeded",
                   classes=classes)


def _keel_row(where: str, line: str, attributes: dict[str, list[str] | None]) -> list[float]:
    """One @data row: a finite number per numeric attribute, a value's index per nominal one."""
    cells = [cell.strip() for cell in line.split(",")]
    if len(cells) != len(attributes):
        raise FactError(f"{where}: {len(cells)} values, but {len(attributes)} attributes "
                        "are declared")
    row = []
    for cell, (name, values) in zip(cells, attributes.items()):
        if cell == "?":
            raise FactError(f"{where}: missing value (?) of {name}; keel: reads complete rows "
                            "only")
        if values is not None:
            if cell not in values:
                raise FactError(f"{where}: {cell[:40]!r} is not a declared value of {name}")
            row.append(float(values.index(cell)))
            continue
        try:
            value = float(cell)
        except ValueError:
            raise FactError(f"{where}: {cell[:40]!r} of {name} is not a number") from None
        if not math.isfinite(value):
            raise FactError(f"{where}: {name} is {cell[:40]}, not a finite number")
        row.append(value)
    return row


def tabular_specs(root: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, spec, the files it reads) of the tabular sets under `root`, sorted by name within
    each kind: each folder root/uci/NAME/ that holds NAME_R.dat, then each file root/keel/*.dat."""
    uci = sorted(path.parent for path in (root / "uci").glob("*/*_R.dat")
                 if path.name == f"{path.parent.name}_R.dat")
    keel = sorted(path for path in (root / "keel").glob("*.dat") if path.is_file())
    return ([(f"uci-{folder.name}", f"uci:{folder}", (str(folder / f"{folder.name}_R.dat"),
                                                      str(folder / "conxuntos.dat")))
             for folder in uci]
            + [(f"keel-{path.stem}", f"keel:{path}", (str(path),)) for path in keel])


DATASETS = ("parity", "modular", "file", "text", "mnist", "fashion-mnist", "mnist-10k", "cifar10",
            "cifar100", "separation", "teacher-linear", "sklearn", "uci", "keel")


def _choose_split(dataset: Dataset, o: _Options) -> Dataset:
    """`split=test` makes the test split the data analyzed and trained on (default: train)."""
    split = o.options.get("split", "train")
    if split.isdigit():  # mnist-10k: where its train part ends, consumed by the builder
        return dataset
    o.used.add("split")
    if split not in ("train", "test"):
        raise FactError(f"split must be train or test (got {split!r})")
    if split == "train":
        return dataset
    if dataset.x_test is None:
        raise FactError(f"dataset {dataset.spec!r} has no test split")
    return Dataset(dataset.spec, dataset.x_test, dataset.y_test, dataset.x_train,
                   dataset.y_train, dataset.n_classes, info=dataset.info)


def load_dataset(spec: str, data_dir: str | os.PathLike | None = None, *,
                 offline: bool | None = None) -> Dataset:
    """The dataset a spec string names; raises FactError naming what is wrong or missing.

    mnist, fashion-mnist, cifar10 and cifar100 are read from `data_dir` (torchvision-style
    folders work), else `$FACT_DATA_DIR`, else the download cache; missing files are downloaded
    and verified (data/fetch.py) unless `offline` (default: `$FACT_OFFLINE`).
    """
    name, raw = parse_spec(spec)
    options = _Options(spec, raw)
    folder = _data_root(data_dir)
    builders = {
        "parity": lambda: _parity(spec, options),
        "modular": lambda: _modular(spec, options),
        "file": lambda: _file(spec, options),
        "text": lambda: _text(spec, options),
        "mnist": lambda: _idx_dataset(spec, options, "mnist", folder, offline),
        "fashion-mnist": lambda: _idx_dataset(spec, options, "fashion-mnist", folder, offline),
        "mnist-10k": lambda: _mnist_10k(spec, options),
        "cifar10": lambda: _cifar10(spec, options, folder, offline),
        "cifar100": lambda: _cifar100(spec, options, folder, offline),
        "separation": lambda: _separation(spec, options),
        "teacher-linear": lambda: _teacher_linear(spec, options),
        "sklearn": lambda: _sklearn(spec, options),
        "uci": lambda: _uci(spec, options),
        "keel": lambda: _keel(spec, options),
    }
    if name not in builders:
        raise FactError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    dataset = _choose_split(builders[name](), options)
    options.done()
    if not torch.isfinite(dataset.x_train).all():
        raise FactError(f"dataset {spec!r} contains NaN or infinite inputs")
    if dataset.y_train.is_floating_point() and not torch.isfinite(dataset.y_train).all():
        raise FactError(f"dataset {spec!r} contains NaN or infinite targets")
    return dataset
