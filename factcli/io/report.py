"""`factcli.report/1` HDF5 reports (interfaces.md §2): written atomically, read back exactly.

Reading is free of torch until a matrix is used: `read_report` gives each layer a lazy mapping
whose values are read (and made torch tensors) on access, so `fact show` stays fast.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..engine.conventions import BACKWARD, MATRICES, RELATIONS
from ..engine.results import Analysis, LayerResult
from ..errors import FactError
from . import validate
from .files import atomic_hdf5

FORMAT = "factcli.report/1"
# Provenance stored as plain attributes, in this order; dicts and lists go in as JSON text.
_ATTRS = ("checkpoint", "checkpoint_sha256", "dataset", "n_samples", "loss", "weight_decay",
          "alpha", "device", "dtype", "torch_version")
_JSON_ATTRS = ("model", "training", "relations", "warnings", "not_analyzed")
DEFAULT_MATRICES = ("nfm", "bnfm", "fact", "nfa")
MATRIX_DTYPES = ("float32", "float64")
_METRIC_COLUMNS = ("pearson", "cosine", "rel_err", "stationarity", "best_alpha",
                   "best_alpha_pearson")
ERROR_COLUMNS = ("pearson_se", "cosine_se", "rel_err_se")  # a sketched AGOP's jackknife s.e.
# How the AGOP family was summed (root attributes; text, "" = not recorded)
_PROBE_ATTRS = ("agop_probes", "probe_kind", "probe_seed", "probe_groups", "outputs",
                "agop_outputs")


def choose_matrices(text: str | None) -> tuple[str, ...]:
    """`--matrices`: a comma list of nfm, bnfm and relation names, `all` or `none`."""
    if text is None:
        return DEFAULT_MATRICES
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["none"]:
        return ()
    if names == ["all"]:
        return MATRICES
    unknown = [name for name in names if name not in MATRICES]
    if unknown:
        raise FactError(f"unknown matrix {', '.join(unknown)} in --matrices; choose from nfm, "
                        f"bnfm, {', '.join(RELATIONS)}, or all / none")
    return tuple(dict.fromkeys(names))


def _matrix_attrs(name: str, alpha: Any) -> dict[str, Any]:
    """What a stored matrix is: which Gram matrix it is compared with, what its axes index."""
    backward = name == "bnfm" or name in BACKWARD
    attrs: dict[str, Any] = {
        "name": name,
        "axes": "outputs × outputs (m×m)" if backward else "inputs × inputs (k×k)",
        "reference": "" if name in ("nfm", "bnfm") else "bnfm" if backward else "nfm",
        "definition": {"nfm": "WᵀW", "bnfm": "WWᵀ"}.get(name, f"relation {name}, "
                                                           "docs/relations.md"),
    }
    if name in ("nfa", "bnfa"):
        attrs["alpha"] = float(alpha) if alpha is not None else math.nan
    return attrs


def _text(values: list[str]) -> np.ndarray:
    """Fixed-length UTF-8 strings: readable as plain byte strings by every HDF5 tool."""
    encoded = [value.encode() for value in values]
    return np.array(encoded, dtype=f"S{max([len(e) for e in encoded] + [1])}")


def write_report(path: str | os.PathLike, analysis: Analysis, command: str = "",
                 matrices: bool | str | tuple[str, ...] = True,
                 matrix_dtype: str = "float32") -> None:
    """Write `analysis` to `path` (temporary file + rename: an interrupted run loses nothing).

    `matrices`: which matrices to store (`choose_matrices`: default nfm, bnfm, fact, nfa;
    True = the default, False = none); `matrix_dtype`: their storage precision (the metrics
    were computed in float64 before storing)."""
    if matrix_dtype not in MATRIX_DTYPES:
        raise FactError(f"unknown matrix dtype {matrix_dtype!r}; choose float32 or float64")
    from ..engine.factored import Factored

    chosen = (DEFAULT_MATRICES if matrices is True else () if matrices is False
              else choose_matrices(matrices) if isinstance(matrices, str) else tuple(matrices))
    info = analysis.info
    with atomic_hdf5(path) as handle:
        root = handle.attrs
        root["format"] = FORMAT
        root["factcli_version"] = __version__
        root["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        root["command"] = command
        for key in _ATTRS:
            value = info.get(key)
            if value is None:
                value = math.nan if key == "weight_decay" else ""
            root[key] = str(value) if isinstance(value, str) else value  # TorchVersion → str
        root["mode"] = info.get("mode", "eval")
        for key in ("max_samples", "sample_seed", "data_loss", "objective", "accuracy"):
            value = info.get(key)
            root[key] = math.nan if value is None else value
        root["weighted"] = bool(info.get("weighted", False))
        root["matrices"] = ",".join(chosen)
        root["matrix_dtype"] = matrix_dtype
        root["world_size"] = int(info.get("world_size", 1))  # processes or shards summed
        for key in _JSON_ATTRS:
            root[key] = json.dumps(info.get(key) if key != "warnings" else analysis.warnings)
        for key in _PROBE_ATTRS:
            value = info.get(key)
            root[key] = "" if value is None else str(value)
        pairs = [(layer, relation) for layer in analysis.layers for relation in layer.metrics]
        errors = ERROR_COLUMNS if any(key in layer.metrics[r] for layer, r in pairs
                                      for key in ERROR_COLUMNS) else ()
        row_type = np.dtype(
            [("layer", _text([layer.name for layer, _ in pairs]).dtype),
             ("relation", _text([r for _, r in pairs]).dtype)]
            + [(key, "f8") for key in _METRIC_COLUMNS]
            + [("in_features", "i8"), ("out_features", "i8")] + [(key, "f8") for key in errors])
        table = np.array([(layer.name.encode(), relation.encode(),
                           *[layer.metrics[relation][k] for k in ("pearson", "cosine", "rel_err")],
                           layer.stationarity, layer.best_alpha, layer.best_alpha_pearson,
                           layer.in_features, layer.out_features,
                           *[layer.metrics[relation].get(k, math.nan) for k in errors])
                          for layer, relation in pairs], dtype=row_type)
        metrics = handle.create_dataset("metrics", data=table)
        metrics.attrs["description"] = ("one row per (layer, relation); strings are "
                                        "fixed-length UTF-8; NaN = not defined")
        layers = handle.create_group("layers", track_order=True)
        for layer in analysis.layers:
            group = layers.create_group(layer.name)
            group.attrs.update(name=layer.name, in_features=layer.in_features,
                               out_features=layer.out_features, kind=layer.kind,
                               stationarity=layer.stationarity, best_alpha=layer.best_alpha,
                               best_alpha_pearson=layer.best_alpha_pearson, uses=layer.uses,
                               note=layer.note)
            for name in chosen:
                if name not in layer.matrices:
                    continue
                matrix = layer.matrices[name]
                if isinstance(matrix, Factored):  # A = L Rᵀ: its factors, never A
                    stored = group.create_group(name)
                    for key, factor in (("left", matrix.L), ("right", matrix.R)):
                        stored.create_dataset(key, data=factor.numpy().astype(matrix_dtype),
                                              compression="gzip", shuffle=True)
                    stored.attrs["factored"] = "left @ right.T"
                else:
                    stored = group.create_dataset(name, data=matrix.numpy().astype(matrix_dtype),
                                                  compression="gzip", shuffle=True)
                stored.attrs.update(_matrix_attrs(name, info.get("alpha")))


class _Matrices(Mapping):
    """A layer's stored matrices, read from the file on access: float64 torch tensors, or
    `Factored` ones for those stored as factors (a group holding left and right)."""

    def __init__(self, path: str | os.PathLike, group: str, names: list[str],
                 sides: tuple[int, int]):
        self.path, self.group, self.names, self.sides = path, group, names, sides

    def __getitem__(self, name: str) -> Any:
        """The matrix, after its declared shape, type and size are checked (a 97 KB file may
        declare a 75 GiB matrix)."""
        if name not in self.names:
            raise KeyError(name)
        import torch

        where = f"{self.path}: /layers/{self.group}/{name}"
        with h5py.File(self.path, "r") as handle:
            item = handle["layers"][self.group][name]
            if isinstance(item, h5py.Group):
                return _factored(item, where, self.sides[name == "bnfm" or name in BACKWARD])
            validate.matrix_dataset(item, where)
            data = item[()]
        return torch.from_numpy(np.asarray(data, dtype=np.float64))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _factored(group: h5py.Group, where: str, side: int) -> Any:
    """A matrix stored as factors: left (side×r) and right (side×r), real, finite, checked
    against the layer's side before they are read."""
    import torch

    from ..engine.factored import Factored

    factors = [group.get(key) for key in ("left", "right")]
    if not all(isinstance(factor, h5py.Dataset) for factor in factors):
        raise FactError(f"{where} is a group but not a factored matrix (datasets left, right)")
    for key, factor in zip(("left", "right"), factors):
        validate.matrix_dataset(factor, f"{where}/{key}")
    shapes = [tuple(factor.shape) for factor in factors]
    if shapes[0] != shapes[1] or shapes[0][0] != side:
        raise FactError(f"{where}: factors of shapes {shapes[0]} and {shapes[1]} do not make a "
                        f"{side}×{side} matrix (both must be {side}×r)")
    validate.check_memory(16.0 * shapes[0][0] * shapes[0][1], f"reading {where} (two factors "
                          f"{shapes[0][0]}×{shapes[0][1]})")
    arrays = [np.asarray(factor[()], dtype=np.float64) for factor in factors]
    if not all(np.isfinite(array).all() for array in arrays):
        raise FactError(f"{where}: factors hold NaN or infinite entries")
    return Factored(*(torch.from_numpy(array) for array in arrays))


def read_report(path: str | os.PathLike) -> Analysis:
    """A stored report as an `Analysis`; attributes and tables are validated (io/validate.py)
    and matrices are read, size-checked, only when used."""
    where = str(path)
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise FactError(f"report not found: {path}") from None
    except OSError as error:
        raise FactError(f"{path} is not a readable HDF5 report: {error}") from None
    with handle:
        info = validate.report_attrs(handle.attrs, where)
        if info.get("format") != FORMAT:
            raise FactError(f"{path} is not a {FORMAT} report "
                            f"(format attribute: {info.get('format')!r})")
        info["checkpoint"] = info.get("checkpoint") or None
        info["checkpoint_sha256"] = info.get("checkpoint_sha256") or None
        if isinstance(info.get("weight_decay"), float) and math.isnan(info["weight_decay"]):
            info["weight_decay"] = None
        for key in _PROBE_ATTRS:  # text as written: "" = not recorded, counts as integers
            value = info.get(key)
            if isinstance(value, str) and value.isdigit() and len(value) < 19 and key != "outputs":
                value = validate.integer(int(value), f"{where}: attribute {key!r}", 0)
            info[key] = None if value == "" else value
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        if "metrics" in handle:  # string columns: variable-length (older files) or fixed
            for layer, relation, values in validate.metrics_table(handle["metrics"], where,
                                                                  ERROR_COLUMNS):
                metrics.setdefault(layer, {})[relation] = values
        layers = []
        groups = handle.get("layers", {})
        if not isinstance(groups, h5py.Group | dict):
            raise FactError(f"{path}: /layers must be a group of layers")
        for key, group in groups.items():
            if not isinstance(group, h5py.Group):
                raise FactError(f"{path}: /layers/{key} must be a group")
            a = dict(group.attrs)
            nfm, bnfm = group.get("nfm"), group.get("bnfm")
            if isinstance(nfm, h5py.Dataset):  # an RFM iteration may store only M = WᵀW
                a.setdefault("in_features", (nfm.shape or (0,))[0])
                a.setdefault("out_features", a["in_features"] if not isinstance(
                    bnfm, h5py.Dataset) else (bnfm.shape or (0,))[0])
            a = validate.layer_attrs(a, key, where)
            stored = [name for name, item in group.items()
                      if isinstance(item, h5py.Dataset | h5py.Group)]
            layers.append(LayerResult(
                name=a.get("name", key), in_features=a["in_features"],
                out_features=a["out_features"], stationarity=a.get("stationarity", math.nan),
                matrices=_Matrices(path, key, stored, (a["in_features"], a["out_features"])),
                metrics=metrics.get(a.get("name", key), {}),
                best_alpha=a.get("best_alpha", math.nan),
                best_alpha_pearson=a.get("best_alpha_pearson", math.nan),
                kind=a.get("kind", "linear"),
                uses=validate.integer(a.get("uses", 1), f"{where}: layer {key!r} uses", 1),
                note=validate.text(a.get("note", ""), f"{where}: layer {key!r} note")))
    return Analysis(layers, info, list(info.get("warnings", [])))


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The `/history` table of an RFM report (a compound dataset, one row per iteration)."""
    with h5py.File(path, "r") as handle:
        table, data = handle.get("history"), None
        if isinstance(table, h5py.Dataset):
            validate.check_memory(8.0 * table.size * max(table.dtype.itemsize, 1),
                                  f"{path}: /history")
            data = table[()]
    names = getattr(getattr(data, "dtype", None), "names", None)
    if not names or data.ndim != 1:
        raise FactError(f"{path} is an RFM report without a 'history' table")
    return [{key: value.decode() if isinstance(value, bytes) else value
             for key, value in zip(names, row.tolist(), strict=True)} for row in data]
