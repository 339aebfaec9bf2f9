"""`factcli.report/1` HDF5 reports (interfaces.md §2): written atomically, read back exactly."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np
import torch

from .. import __version__
from ..engine.results import Analysis, LayerResult
from ..errors import FactError
from .files import atomic_path

FORMAT = "factcli.report/1"
# Provenance stored as plain attributes, in this order; dicts and lists go in as JSON text.
_ATTRS = ("checkpoint", "checkpoint_sha256", "dataset", "n_samples", "loss", "weight_decay",
          "alpha", "device", "dtype", "torch_version")
_JSON_ATTRS = ("model", "training", "relations", "warnings")


def write_report(path: str | os.PathLike, analysis: Analysis, command: str = "",
                 matrices: bool = True) -> None:
    """Write `analysis` to `path` (temporary file + rename: an interrupted run loses nothing)."""
    info = analysis.info
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
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
        for key in _JSON_ATTRS:
            root[key] = json.dumps(info.get(key) if key != "warnings" else analysis.warnings)
        table = [(layer.name, relation, values["pearson"], values["cosine"], values["rel_err"])
                 for layer in analysis.layers for relation, values in layer.metrics.items()]
        text = h5py.string_dtype()
        row_type = np.dtype([("layer", text), ("relation", text), ("pearson", "f8"),
                             ("cosine", "f8"), ("rel_err", "f8")])
        handle.create_dataset("metrics", data=np.array(table, dtype=row_type))
        layers = handle.create_group("layers", track_order=True)
        for layer in analysis.layers:
            group = layers.create_group(layer.name)
            group.attrs.update(name=layer.name, in_features=layer.in_features,
                               out_features=layer.out_features, kind=layer.kind,
                               stationarity=layer.stationarity, best_alpha=layer.best_alpha)
            if matrices:
                for name, matrix in layer.matrices.items():
                    group.create_dataset(name, data=matrix.numpy(), compression="gzip",
                                         shuffle=True)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_report(path: str | os.PathLike) -> Analysis:
    """A stored report as an `Analysis` (matrices included when they were written)."""
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise FactError(f"report not found: {path}") from None
    except OSError as error:
        raise FactError(f"{path} is not a readable HDF5 report: {error}") from None
    with handle:
        attrs = {key: _plain(value) for key, value in handle.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise FactError(f"{path} is not a {FORMAT} report "
                            f"(format attribute: {attrs.get('format')!r})")
        info: dict[str, Any] = {k: v for k, v in attrs.items() if k not in _JSON_ATTRS}
        for key in _JSON_ATTRS:
            if key in attrs:
                info[key] = json.loads(attrs[key])
        info["checkpoint"] = info.get("checkpoint") or None
        info["checkpoint_sha256"] = info.get("checkpoint_sha256") or None
        if isinstance(info.get("weight_decay"), float) and math.isnan(info["weight_decay"]):
            info["weight_decay"] = None
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        if "metrics" in handle:
            for row in handle["metrics"][()]:
                layer, relation = _plain(row["layer"]), _plain(row["relation"])
                metrics.setdefault(layer, {})[relation] = {
                    key: float(row[key]) for key in ("pearson", "cosine", "rel_err")}
        layers = []
        for key, group in handle.get("layers", {}).items():
            a = {k: _plain(v) for k, v in group.attrs.items()}
            if "nfm" in group:  # an RFM iteration may store only M = WᵀW, W = M^{1/2} (d×d)
                a.setdefault("in_features", group["nfm"].shape[0])
                a.setdefault("out_features", a["in_features"] if "bnfm" not in group
                             else group["bnfm"].shape[0])
            missing = [f for f in ("in_features", "out_features") if f not in a]
            if missing:
                raise FactError(f"{path}: layer {key!r} lacks the field(s) {', '.join(missing)}")
            layers.append(LayerResult(
                name=a.get("name", key), in_features=int(a["in_features"]),
                out_features=int(a["out_features"]),
                stationarity=float(a.get("stationarity", math.nan)),
                matrices={name: torch.from_numpy(ds[()]) for name, ds in group.items()},
                metrics=metrics.get(a.get("name", key), {}),
                best_alpha=float(a.get("best_alpha", math.nan)), kind=a.get("kind", "linear")))
    return Analysis(layers, info, list(info.get("warnings", [])))
