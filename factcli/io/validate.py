"""The one validation layer for everything read from outside factcli.

Files, stdin and spec strings are untrusted: a field is checked for type, shape, finiteness, range
and size here, before anything is allocated from it, and a bad one is a `FactError` that names the
field and says what was expected. One section per format:

- primitives (`integer`, `number`, `text`, `mapping`, `parse_json`) used by all of them;
- memory: `check_memory(bytes, what)` refuses an allocation larger than the memory available;
- checkpoints (`checkpoint_fields`, `state_dict`, `model_spec`);
- reports (`report_attrs`, `layer_attrs`, `metrics_table`, `matrix_dataset`);
- JSON lines (`json_line`) and dataset arrays (`dataset_arrays`, `npz_headers`, `idx_header`).

Memory estimate: `available_memory()` is the smaller of the kernel's MemAvailable and what an
address-space limit (`ulimit -v`) leaves, or `FACT_MEMORY_LIMIT` bytes when that is set. A request
whose tensors alone would exceed it is refused up front, so a 97 KB file declaring a
100,000×100,000 matrix is one line, not a 75 GiB allocation.
"""

from __future__ import annotations

import json
import math
import os
import resource
from collections.abc import Mapping
from typing import Any

from ..errors import FactError

MAX_JSON_DEPTH = 64  # deeper nesting is refused before the parser recurses
MAX_DIMENSIONS = 8  # of any array read from a file


# --------------------------------------------------------------------------- primitives

def integer(value: Any, field: str, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """An int (not a bool, not a float) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
            return integer(value.item(), field, minimum, maximum)
        raise FactError(f"{field} must be an integer (got {_show(value)})")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = (f">= {minimum}" if maximum is None else f"<= {maximum}" if minimum is None
                  else f"in {minimum}..{maximum}")
        raise FactError(f"{field} must be {bounds} (got {value})")
    return value


def number(value: Any, field: str, minimum: float | None = None, positive: bool = False,
           finite: bool = True) -> float:
    """A real number (not a bool); finite unless `finite=False` (then NaN is allowed)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FactError(f"{field} must be a number (got {_show(value)})")
    value = float(value)
    if finite and not math.isfinite(value):
        raise FactError(f"{field} must be a finite number (got {value})")
    if math.isinf(value):
        raise FactError(f"{field} must not be infinite (got {value})")
    if positive and not value > 0:
        raise FactError(f"{field} must be > 0 (got {value})")
    if minimum is not None and value < minimum:
        raise FactError(f"{field} must be >= {minimum:g} (got {value})")
    return value


def text(value: Any, field: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise FactError(f"{field} must be UTF-8 text") from None
    if not isinstance(value, str):
        raise FactError(f"{field} must be text (got {_show(value)})")
    return value


def mapping(value: Any, field: str) -> dict[str, Any]:
    """A dict with text keys (an absent field, None, is an empty dict)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FactError(f"{field} must be an object/dict (got {_show(value)})")
    for key in value:
        if not isinstance(key, str):
            raise FactError(f"{field} has a key that is not text: {_show(key)}")
    return dict(value)


def parse_json(raw: str | bytes, field: str) -> Any:
    """JSON text, refusing nesting deeper than MAX_JSON_DEPTH before parsing it."""
    if isinstance(raw, bytes):
        raw = text(raw, field)
    depth = deepest = 0
    in_string = escaped = False
    for char in raw:  # brackets outside strings; linear and allocation-free
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                raise FactError(f"{field} is nested deeper than {MAX_JSON_DEPTH} levels")
        elif char in "]}":
            depth -= 1
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as error:
        raise FactError(f"{field} is not valid JSON: {error}") from None


def _show(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown[:60]}{'…' if len(shown) > 60 else ''}"


# --------------------------------------------------------------------------- memory

def available_memory() -> int:
    """Bytes that may be allocated: FACT_MEMORY_LIMIT, else min(MemAvailable, ulimit -v room)."""
    override = os.environ.get("FACT_MEMORY_LIMIT")
    if override:
        try:
            return int(float(override))
        except ValueError:
            raise FactError(f"FACT_MEMORY_LIMIT must be a number of bytes (got {override!r})") \
                from None
    budget = _meminfo("MemAvailable") or 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        budget = min(budget, max(0, soft - _vm_size()))
    return budget


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_memory(n_bytes: float, what: str, hint: str = "") -> None:
    """Refuse `what` when its tensors alone (`n_bytes`) exceed the memory available; `hint`
    ends the message (what to do instead)."""
    budget = available_memory()
    if n_bytes > budget:
        raise FactError(f"{what} would need {_size(n_bytes)}, more than the {_size(budget)} of "
                        "memory available (FACT_MEMORY_LIMIT sets the limit)"
                        + (f"; {hint}" if hint else ""))


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n_bytes < 1024 or unit == "PiB":
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1024
    return ""  # unreachable


# --------------------------------------------------------------------------- checkpoints

def checkpoint_fields(model: Any, training: Any, where: str) -> tuple[dict, dict]:
    """The `model` and `training` records of a checkpoint (interfaces.md §1), checked."""
    model = mapping(model, f"{where}: model")
    training = mapping(training, f"{where}: training")
    if "arch" in model:
        text(model["arch"], f"{where}: model.arch")
    for key in ("dataset", "loss", "optimizer", "weight_decay_mode"):
        if training.get(key) is not None:
            text(training[key], f"{where}: training.{key}")
    if training.get("weight_decay") is not None:
        value = number(training["weight_decay"], f"{where}: training.weight_decay", finite=False)
        if value < 0:
            raise FactError(f"{where}: training.weight_decay must be >= 0 (got {value})")
        training["weight_decay"] = None if math.isnan(value) else value  # NaN = unknown
    for key in ("epoch", "epochs"):
        if training.get(key) is not None:
            integer(training[key], f"{where}: training.{key}", minimum=0)
    if training.get("train_loss") is not None:
        number(training["train_loss"], f"{where}: training.train_loss", finite=False)
    return model, training


def state_dict(tensors: Any, where: str) -> dict:
    """Parameter names (text) → real tensors (integer buffers such as BatchNorm's counter are
    fine; whether a weight must be floating point is checked against the model)."""
    import torch

    if not isinstance(tensors, Mapping) or not tensors:
        raise FactError(f"{where}: state_dict must map parameter names to tensors")
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise FactError(f"{where}: state_dict key {_show(name)} is not a parameter name")
        if not isinstance(tensor, torch.Tensor):
            raise FactError(f"{where}: state_dict[{name!r}] is {_show(tensor)}, not a tensor")
        if tensor.is_complex():
            raise FactError(f"{where}: parameter {name} has dtype "
                            f"{str(tensor.dtype).removeprefix('torch.')}; expected real numbers")
    return dict(tensors)


_SIZES = {"mlp": ("in_features", "out_features", "width", "depth"),
          "linear": ("in_features", "out_features", "width", "depth"),
          "quadratic": ("in_features", "width")}
MAX_DEPTH = 10_000


def model_spec(arch: str, spec: Mapping[str, Any]) -> None:
    """A built-in architecture's parameters: types, ranges, and that its weights fit in memory."""
    for key in _SIZES[arch]:
        if key not in spec:
            raise FactError(f"the {arch!r} model description lacks {key!r}")
    sizes = {key: integer(spec[key], f"model.{key}", minimum=1) for key in _SIZES[arch]}
    out = integer(spec.get("out_features", 1), "model.out_features", minimum=1)
    if "depth" in sizes:
        integer(sizes["depth"], "model.depth", maximum=MAX_DEPTH)
    if "activation" in spec:
        text(spec["activation"], "model.activation")
    if "bias" in spec and not isinstance(spec["bias"], bool):
        raise FactError(f"model.bias must be true or false (got {_show(spec['bias'])})")
    width, fan_in = sizes["width"], sizes["in_features"]
    depth = sizes.get("depth", 2)
    n_parameters = (fan_in * width + width * out if depth > 1 else fan_in * out) + \
        max(depth - 2, 0) * width * (width + 1) + depth * width
    check_memory(8 * n_parameters, f"a {arch} of width {width}, depth {depth} and "
                 f"{fan_in} inputs")


# --------------------------------------------------------------------------- reports

def report_attrs(attrs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Root attributes of a factcli.report/1 file: JSON ones parsed, numbers checked."""
    info: dict[str, Any] = {}
    for key, value in attrs.items():
        info[key] = _plain(value, f"{where}: attribute {key!r}")
    for key in ("model", "training"):
        if key in info:
            info[key] = mapping(parse_json(text(info[key], f"{where}: {key}"), f"{where}: {key}"),
                                f"{where}: {key}")
    for key in ("relations", "warnings"):
        if key in info:
            value = parse_json(text(info[key], f"{where}: {key}"), f"{where}: {key}")
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FactError(f"{where}: attribute {key!r} must be a JSON list of text")
            info[key] = value
    if "not_analyzed" in info:  # weights the engine could not see: a JSON list of objects
        value = parse_json(text(info["not_analyzed"], f"{where}: not_analyzed"),
                           f"{where}: not_analyzed")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise FactError(f"{where}: attribute 'not_analyzed' must be a JSON list of objects")
        info["not_analyzed"] = value
    for key in ("weight_decay", "alpha", "data_loss", "objective", "accuracy"):
        if key in info:
            info[key] = number(info[key], f"{where}: attribute {key!r}", finite=False)
    for key in ("n_samples", "max_samples", "sample_seed"):
        value = info.get(key)
        if isinstance(value, float) and math.isnan(value):
            info[key] = None
        elif value is not None:
            info[key] = integer(value, f"{where}: attribute {key!r}")
    for key in ("format", "checkpoint", "checkpoint_sha256", "dataset", "loss", "kind"):
        if key in info:
            text(info[key], f"{where}: attribute {key!r}")
    return info


def layer_attrs(attrs: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    a = {k: _plain(v, f"{where}: layer {key!r} attribute {k!r}") for k, v in attrs.items()}
    field = f"{where}: layer {key!r}"
    for name in ("in_features", "out_features"):
        if name not in a:
            raise FactError(f"{field} lacks the field {name}")
        a[name] = integer(a[name], f"{field} {name}", minimum=1)
    for name in ("stationarity", "best_alpha", "best_alpha_pearson"):
        if name in a:
            a[name] = number(a[name], f"{field} {name}", finite=False)
    for name in ("name", "kind"):
        if name in a:
            a[name] = text(a[name], f"{field} {name}")
    return a


METRIC_FIELDS = ("layer", "relation", "pearson", "cosine", "rel_err")


def metrics_table(dataset: Any, where: str, optional: tuple[str, ...] = ()
                  ) -> list[tuple[str, str, dict[str, float]]]:
    """The /metrics compound table as (layer, relation, {pearson, cosine, rel_err and those of
    the `optional` float columns the table has}) rows."""
    if not hasattr(dataset, "dtype"):
        raise FactError(f"{where}: /metrics must be a table")
    names = getattr(dataset.dtype, "names", None) or ()
    if not set(METRIC_FIELDS) <= set(names) or len(dataset.shape) != 1:
        raise FactError(f"{where}: /metrics must be a table with the columns "
                        f"{', '.join(METRIC_FIELDS)}")
    columns = ("pearson", "cosine", "rel_err", *(name for name in optional if name in names))
    for column in columns:
        if dataset.dtype[column].kind != "f":
            raise FactError(f"{where}: /metrics column {column!r} must hold numbers")
    check_memory(dataset.size * dataset.dtype.itemsize * 4, f"{where}: /metrics")
    rows = []
    for row in dataset[()]:
        rows.append((text(row["layer"], f"{where}: /metrics layer"),
                     text(row["relation"], f"{where}: /metrics relation"),
                     {column: float(row[column]) for column in columns}))
    return rows


def matrix_dataset(dataset: Any, field: str) -> None:
    """A stored matrix: 2-D, real numbers, and small enough to read."""
    shape = tuple(dataset.shape)
    if len(shape) != 2:
        raise FactError(f"{field} must be a matrix (2-D); it has shape {shape}")
    if dataset.dtype.kind not in "fiu":
        raise FactError(f"{field} must hold real numbers (dtype {dataset.dtype})")
    check_memory(8.0 * shape[0] * shape[1], f"reading {field} ({shape[0]}×{shape[1]})")


def _plain(value: Any, field: str) -> Any:
    """An HDF5 attribute as a Python scalar or text; arrays are refused."""
    import numpy as np

    if isinstance(value, bytes):
        return text(value, field)
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _plain(value[()], field)
        raise FactError(f"{field} must be a single value (it is an array of shape "
                        f"{value.shape})")
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- JSON lines

def json_line(line: str, where: str) -> dict[str, Any]:
    """One line of `fact analyze --format jsonl`: an object of text and finite numbers/null."""
    row = parse_json(line, where)
    if not isinstance(row, dict):
        raise FactError(f"{where} is not a JSON object")
    for key in ("layer", "relation", "checkpoint"):
        value = row.get(key)
        if value is not None and not isinstance(value, str | int) or isinstance(value, bool):
            raise FactError(f"{where}: field {key!r} must be text (got {_show(value)})")
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FactError(f"{where}: field {key!r} must be a finite number or null "
                            f"(got {value})")
    return row


# --------------------------------------------------------------------------- dataset arrays

MAX_CLASSES = 1_000_000


def npz_headers(path: Any) -> None:
    """Every array of an .npz: its declared shape and dtype, checked before any is read."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            total = 0.0
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as handle:
                    total += _npy_bytes(handle, f"{path}: {info.filename.removesuffix('.npy')}")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise FactError(f"{path} is not a readable .npz archive: {error}") from None
    check_memory(2 * total, f"reading {path}")


def npy_header(path: Any) -> None:
    """An .npy file's declared shape and dtype, checked before its array is read."""
    try:
        with open(path, "rb") as handle:
            total = _npy_bytes(handle, str(path))
    except (ValueError, OSError, EOFError) as error:
        raise FactError(f"{path} is not a readable .npy file: {error}") from None
    check_memory(2 * total, f"reading {path}")


def _npy_bytes(handle: Any, field: str) -> float:
    """The bytes an .npy array (at `handle`) takes once read as 8-byte values; its dimensions
    are checked from the header alone."""
    import numpy as np

    version = np.lib.format.read_magic(handle)
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, _, dtype = reader(handle)
    if len(shape) > MAX_DIMENSIONS:
        raise FactError(f"{field} has {len(shape)} dimensions (at most {MAX_DIMENSIONS})")
    return float(np.prod(shape, dtype=float)) * max(dtype.itemsize, 8)


def dataset_arrays(where: str, x: Any, y: Any, x_test: Any = None, y_test: Any = None) -> None:
    """Inputs and targets of a dataset file: numeric, finite, one target per input, same width."""
    import numpy as np

    for key, array in (("x_train", x), ("y_train", y), ("x_test", x_test), ("y_test", y_test)):
        if array is None:
            continue
        if array.dtype.kind not in "biuf":
            raise FactError(f"{where}: {key} has unsupported type {array.dtype}; use real "
                            "numbers (integer class labels 0..C-1 for classification)")
        if array.ndim == 0:
            raise FactError(f"{where}: {key} is a single number; expected one row per sample")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise FactError(f"{where}: {key} contains NaN or infinite values")
    if len(x) == 0:
        raise FactError(f"{where}: x_train has no rows")
    for inputs, targets, split in ((x, y, "train"), (x_test, y_test, "test")):
        if (inputs is None) != (targets is None):
            raise FactError(f"{where}: x_{split} and y_{split} must be given together")
        if inputs is not None and len(inputs) != len(targets):
            raise FactError(f"{where}: x_{split} has {len(inputs)} rows but y_{split} has "
                            f"{len(targets)}")
        if targets is not None and targets.ndim > 2:
            raise FactError(f"{where}: y_{split} must be 1-D labels or 2-D targets (it has "
                            f"shape {targets.shape})")
    if x_test is not None and x_test.shape[1:] != x.shape[1:]:
        raise FactError(f"{where}: x_test samples have features of shape {x_test.shape[1:]} "
                        f"but x_train samples have {x.shape[1:]}")
    if y_test is not None and y_test.shape[1:] != y.shape[1:]:
        raise FactError(f"{where}: y_test rows have shape {y_test.shape[1:]} but y_train rows "
                        f"have {y.shape[1:]}")


def token_arrays(where: str, arrays: dict[str, Any], ignore: int) -> int:
    """Token windows: `x…` arrays of ids ≥ 0, (n, T) each; `y…` next-token ids (or `ignore`) of
    the same shape as their x; `attention_mask…` of 0/1 likewise. Returns the largest id."""
    import numpy as np

    for key, array in arrays.items():
        if array is None:
            continue
        if array.dtype.kind not in "iu":
            raise FactError(f"{where}: {key} must hold integer token ids (found {array.dtype})")
        if array.ndim != 2 or not array.size:
            raise FactError(f"{where}: {key} must be token windows of shape (n, T) with n, T "
                            f">= 1 (found shape {array.shape})")
        split = "test" if key.endswith("_test") else "train"
        if array.shape != arrays[f"x_{split}"].shape:
            raise FactError(f"{where}: {key} has shape {array.shape}, x_{split} "
                            f"{arrays[f'x_{split}'].shape}: one value per token expected")
        if key.startswith("attention_mask") and not np.isin(array, (0, 1)).all():
            raise FactError(f"{where}: {key} must hold 0 (ignore) and 1 (predict) only")
        if key.startswith("x") and int(array.min()) < 0:
            raise FactError(f"{where}: {key} holds the negative token id {int(array.min())}")
        if key.startswith("y") and ((array < 0) & (array != ignore)).any():
            raise FactError(f"{where}: {key} holds a negative token id other than {ignore} "
                            "(a position that is not predicted)")
    high = max(int(a.max()) for key, a in arrays.items()
               if a is not None and not key.startswith("attention_mask"))
    if high >= MAX_CLASSES:
        raise FactError(f"{where}: token id {high} implies a vocabulary of more than "
                        f"{MAX_CLASSES}")
    return high


def class_labels(where: str, labels: list[Any], n: int, n_classes: int | None = None) -> int:
    """Integer labels 0..C-1 (C = n_classes, or inferred); one-hot targets must fit in memory."""
    present = [a for a in labels if a is not None and len(a)]
    if not present:
        raise FactError(f"{where}: there are no labels")
    low, high = min(int(a.min()) for a in present), max(int(a.max()) for a in present)
    if low < 0:
        raise FactError(f"{where}: class labels must be integers 0..C-1 (found {low})")
    if n_classes is not None and high >= n_classes:
        raise FactError(f"{where}: class label {high} is out of range 0..{n_classes - 1}")
    classes = n_classes or high + 1
    if classes > MAX_CLASSES:
        raise FactError(f"{where}: class label {high} implies {classes} classes "
                        f"(at most {MAX_CLASSES}); use labels=no for real-valued targets")
    check_memory(8.0 * n * classes, f"{where}: one-hot targets for {classes} classes")
    return classes
