"""`factcli.partial/1` files (interfaces.md §8): the raw sums of one shard of the samples and
everything needed to finish, so that `fact merge` of all shards gives what one run gives.

A part records what must agree for parts to be added: the checkpoint and weight hashes, a
fingerprint of the analyzed samples and the options that change the numbers. Parts that differ
in any of them, or that do not tile the samples exactly once, are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np
import torch

from .. import __version__
from ..distributed import share
from ..engine import relations as rel
from ..engine.analysis import Analysis, Plan, finish, kept_matrices
from ..engine.factored import thin_sides
from ..engine.sketch import GROUPS
from ..engine.sums import LayerSums, Sums
from ..errors import FactError
from .files import atomic_path

FORMAT = "factcli.partial/1"
# Provenance fields that must be equal in every part (everything that changes the numbers).
OPTIONS = ("dataset", "n_samples", "n_train", "max_samples", "sample_seed", "loss",
           "weight_decay", "alpha", "relations", "dtype", "weighted", "model", "max_dense",
           "agop_probes_requested", "probe_kind", "probe_seed", "outputs")
_SUMS = ("grad", "gg", "GG")
GROUPS_KEY = "GG_groups"  # a sketched AGOP: each group of probes' share of GG


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (0 ≤ I < N) as (I, N)."""
    index, slash, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (-1, 0)
    if not slash or not 0 <= shard[0] < shard[1]:
        raise FactError(f"--shard takes I/N with 0 ≤ I < N, e.g. 0/4 (got {text!r})")
    return shard


def fingerprint(plan: Plan) -> str:
    """sha256 of the analyzed samples: inputs, labels and weights, with their shapes and dtypes."""
    digest = hashlib.sha256()
    for tensor in (plan.x, plan.labels, plan.weights):
        if tensor is None:
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _weights_sha256(weights: dict[str, tuple[str, torch.Tensor]], penalty: float) -> str:
    digest = hashlib.sha256()
    for name, (kind, W) in weights.items():
        digest.update(f"{name}\0{kind}\0".encode())
        digest.update(np.ascontiguousarray(W.cpu().numpy()).data)
    digest.update(repr(penalty).encode())
    return digest.hexdigest()


def write_partial(path: str | os.PathLike, plan: Plan, sums: Sums, shard: tuple[int, int],
                  part: slice, command: str = "") -> None:
    """Write the raw sums of samples [part.start, part.stop), shard I/N (atomically)."""
    weights, penalty = plan.weight_matrices(), plan.penalty()
    info = plan.info
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
        handle.attrs.update(
            format=FORMAT, factcli_version=__version__, command=command,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            shard=shard[0], shards=shard[1], start=part.start, stop=part.stop,
            checkpoint_sha256=info.get("checkpoint_sha256") or "",
            weights_sha256=_weights_sha256(weights, penalty), dataset_sha256=fingerprint(plan),
            options=json.dumps({key: info.get(key) for key in OPTIONS}),
            info=json.dumps(info), warnings=json.dumps(plan.warnings),
            classified=plan.classified, penalty=penalty, weight_sum=float(sums.weight),
            loss_sum=float(sums.loss), correct_sum=float(sums.correct),
            uses=json.dumps(sums.uses), flipped=json.dumps(sums.flipped),
            unseen=json.dumps(sums.unseen), shared=json.dumps(sorted(sums.shared)),
            batches=sums.batches,
            probed=json.dumps({"probes": sums.probes, "outputs": sums.outputs}))
        layers = handle.create_group("layers", track_order=True)
        for name, (kind, W) in weights.items():
            group = layers.create_group(name)
            group.attrs.update(name=name, kind=kind)
            group.create_dataset("weight", data=W.cpu().numpy())
            for key in _SUMS:
                group.create_dataset(key, data=getattr(sums.layers[name], key).cpu().numpy())
            if sums.layers[name].groups is not None:
                group.create_dataset(GROUPS_KEY, data=sums.layers[name].groups.cpu().numpy())


@dataclass
class _Part:
    path: str
    attrs: dict[str, Any]
    options: dict[str, Any]
    layers: dict[str, tuple[str, tuple[int, int]]]  # name → (kind, (m, k))
    grouped: frozenset[str] = frozenset()  # layers that hold GG_groups

    @property
    def shard(self) -> tuple[int, int]:
        return self.attrs["shard"], self.attrs["shards"]


_INTS = ("shard", "shards", "start", "stop", "batches")
_FLOATS = ("penalty", "weight_sum", "loss_sum", "correct_sum")
_TEXTS = ("format", "checkpoint_sha256", "weights_sha256", "dataset_sha256", "options", "info",
          "warnings", "command", "uses", "flipped", "unseen")
_JSON = {"options": dict, "info": dict, "warnings": list, "uses": dict, "flipped": dict,
         "unseen": dict}


def _open(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise FactError(f"part not found: {path}") from None
    except OSError as error:
        raise FactError(f"{path} is not a readable HDF5 file: {error}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _header(path: str) -> _Part:
    """The attributes and layer shapes of one part, checked (no sums read yet)."""
    with _open(path) as handle:
        attrs = {key: _plain(value) for key, value in handle.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise FactError(f"{path} is not a {FORMAT} file (format attribute: "
                            f"{attrs.get('format')!r}); write parts with fact analyze --shard "
                            "I/N --partial FILE")
        for keys, kind in ((_INTS, int), (_FLOATS, float), (_TEXTS, str)):
            for key in keys:
                value = attrs.get(key)
                if kind is int and isinstance(value, bool) or not isinstance(
                        value, (int, float) if kind is float else kind):
                    raise FactError(f"{path}: attribute {key!r} is missing or not {kind.__name__}")
        if not 0 <= attrs["shard"] < attrs["shards"] or not 0 <= attrs["start"] <= attrs["stop"]:
            raise FactError(f"{path}: shard {attrs['shard']}/{attrs['shards']} of samples "
                            f"{attrs['start']}..{attrs['stop']} is not a valid shard")
        for key, kind in _JSON.items():
            try:
                attrs[key] = json.loads(attrs[key])
            except json.JSONDecodeError as error:
                raise FactError(f"{path}: attribute {key!r} is not JSON: {error}") from None
            if not isinstance(attrs[key], kind):
                raise FactError(f"{path}: attribute {key!r} is not a JSON {kind.__name__}")
        for key in ("uses", "flipped"):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in attrs[key].values()):
                raise FactError(f"{path}: attribute {key!r} holds something other than counts")
        attrs["probed"] = _probed(attrs.get("probed"), path)
        attrs["shared"] = _shared(attrs.get("shared"), path)
        options = attrs["options"]
        layers, grouped = {}, set()
        for name, group in handle.get("layers", {}).items():
            shapes = {key: group[key].shape if isinstance(group.get(key), h5py.Dataset) else None
                      for key in ("weight", *_SUMS)}
            weight = shapes["weight"]
            side = None if weight is None or len(weight) != 2 else \
                weight[1] if thin_sides(*weight, _max_dense(options, path))[1] else weight[0]
            if side is None or shapes["grad"] != weight or shapes["gg"] != (side,) * 2 or \
                    shapes["GG"] != (side,) * 2:
                raise FactError(f"{path}: layer {name!r} lacks weight, grad, gg or GG of "
                                f"matching shapes (got {shapes})")
            kind = _plain(group.attrs.get("kind"))
            if not isinstance(kind, str):
                raise FactError(f"{path}: layer {name!r} lacks its kind")
            layers[name] = (kind, weight)
            groups = group.get(GROUPS_KEY)
            if groups is not None:
                if not isinstance(groups, h5py.Dataset) or groups.shape != (GROUPS, side, side):
                    raise FactError(f"{path}: layer {name!r} {GROUPS_KEY} is not {GROUPS} "
                                    f"matrices of {side}×{side}")
                grouped.add(name)
        if not layers:
            raise FactError(f"{path}: no layers")
    return _Part(path, attrs, options, layers, frozenset(grouped))


def _probed(text: Any, path: str) -> dict[str, int | None]:
    """The `probed` attribute: how many probes and outputs the AGOP sums ran over (absent in
    parts written before the sketch: exact)."""
    if text is None:
        return {"probes": None, "outputs": None}
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or set(value) != {"probes", "outputs"} or not all(
            v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for v in value.values()):
        raise FactError(f"{path}: attribute 'probed' must be JSON {{probes, outputs}} counts")
    return value


def _shared(text: Any, path: str) -> list[str]:
    """The `shared` attribute: the layers with a use shared by the whole batch, whose note
    says so (absent in parts written before it: none)."""
    if text is None:
        return []
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise FactError(f"{path}: attribute 'shared' must be a JSON list of layer names")
    return value


def _check_together(parts: list[_Part]) -> None:
    """Refuse parts that are not the shards of one run, naming what differs or is missing."""
    first = parts[0]
    for part in parts[1:]:
        for key, what in (("checkpoint_sha256", "checkpoint"), ("weights_sha256", "weights"),
                          ("dataset_sha256", "dataset (samples)")):
            if part.attrs[key] != first.attrs[key]:
                raise FactError(f"{part.path} and {first.path} come from different {what}: "
                                f"sha256 {part.attrs[key][:12] or 'none'} vs "
                                f"{first.attrs[key][:12] or 'none'}; merge only the parts of one "
                                "run")
        differ = [key for key in OPTIONS if part.options.get(key) != first.options.get(key)]
        if differ:
            key = differ[0]
            raise FactError(f"{part.path} and {first.path} differ in {key} "
                            f"({part.options.get(key)!r} vs {first.options.get(key)!r}); merge "
                            "only the parts of one run")
        if part.layers != first.layers or part.grouped != first.grouped:
            raise FactError(f"{part.path} and {first.path} hold different layers")
        if part.shard[1] != first.shard[1]:
            raise FactError(f"{part.path} is shard {part.shard[0]}/{part.shard[1]} but "
                            f"{first.path} is shard {first.shard[0]}/{first.shard[1]}")
    by_index: dict[int, _Part] = {}
    for part in parts:
        if part.shard[0] in by_index:
            raise FactError(f"{by_index[part.shard[0]].path} and {part.path} are both shard "
                            f"{part.shard[0]}/{part.shard[1]}")
        by_index[part.shard[0]] = part
    count = first.shard[1]
    missing = [index for index in range(count) if index not in by_index]
    if missing:
        raise FactError(f"shard{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(f'{i}/{count}' for i in missing)} missing: have "
                        f"{', '.join(f'{i}/{count}' for i in sorted(by_index))}")
    n = first.options.get("n_samples")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise FactError(f"{first.path}: n_samples is missing or not a count")
    for index, part in sorted(by_index.items()):
        expected = share(n, index, count)
        if (part.attrs["start"], part.attrs["stop"]) != (expected.start, expected.stop):
            raise FactError(f"{part.path}: shard {index}/{count} should hold samples "
                            f"{expected.start}..{expected.stop} of {n}, it holds "
                            f"{part.attrs['start']}..{part.attrs['stop']}")


def _read_sums(part: _Part) -> tuple[dict[str, tuple[str, torch.Tensor]], Sums]:
    """The weights (kind, W) and the raw `Sums` of one part."""
    weights, layers = {}, {}
    with _open(part.path) as handle:
        for name, (kind, _) in part.layers.items():
            group = handle["layers"][name]
            keys = ("weight", *_SUMS, *((GROUPS_KEY,) if name in part.grouped else ()))
            arrays = {key: group[key][()] for key in keys}
            for key, array in arrays.items():
                if array.dtype != np.float64 or not np.isfinite(array).all():
                    raise FactError(f"{part.path}: layer {name!r} {key} is not finite float64")
            weights[name] = (kind, torch.from_numpy(arrays["weight"]))
            layers[name] = LayerSums(*(torch.from_numpy(arrays[key]) for key in _SUMS),
                                     torch.from_numpy(arrays[GROUPS_KEY])
                                     if GROUPS_KEY in arrays else None,
                                     projected=arrays["gg"].shape != arrays["grad"].shape[:1] * 2)
    a = part.attrs
    scalars = [torch.tensor(a[key], dtype=torch.float64)
               for key in ("loss_sum", "correct_sum", "weight_sum")]
    return weights, Sums(layers, *scalars, uses=Counter(a["uses"]),
                         flipped=Counter(a["flipped"]), unseen=dict(a["unseen"]),
                         shared=set(a["shared"]), batches=a["batches"],
                         probes=a["probed"]["probes"], outputs=a["probed"]["outputs"])


def merge_partials(paths: list[str], keep_matrices: str | Iterable[str] = "all") -> Analysis:
    """Add the raw sums of every shard and finish: exactly what one run over all samples
    gives, up to the order of float64 additions. Parts are read one at a time;
    `keep_matrices` as for `prepare`."""
    keep = kept_matrices(keep_matrices)
    if not paths:
        raise FactError("no parts to merge")
    parts = [_header(str(path)) for path in paths]
    _check_together(parts)
    parts.sort(key=lambda part: part.shard[0])
    weights, total = _read_sums(parts[0])
    for part in parts[1:]:
        part_weights, sums = _read_sums(part)
        if any(not torch.equal(weights[name][1], W) for name, (_, W) in part_weights.items()):
            raise FactError(f"{part.path} holds other weights than {parts[0].path}")
        total.merge(sums)
    first = parts[0].attrs
    _check_finishing(first["info"], parts[0].path)
    info = {**first["info"],
            "world_size": sum(int(p.attrs["info"].get("world_size", 1)) for p in parts)}
    penalty = first["penalty"]
    if not math.isfinite(penalty):
        raise FactError(f"{parts[0].path}: the weight penalty is not finite")
    return finish(weights, penalty, total, info, first["warnings"], bool(first["classified"]),
                  keep=keep)


def _check_finishing(info: dict[str, Any], path: str) -> None:
    """The fields `finish` reads, of the types it needs."""
    relations = info.get("relations")
    if not isinstance(relations, list) or not all(isinstance(r, str) for r in relations):
        raise FactError(f"{path}: info lacks the list of relations")
    rel.check_relations(relations)
    decay, alpha = info.get("weight_decay"), info.get("alpha")
    numbers = (int, float)
    if not (decay is None or isinstance(decay, numbers)) or not isinstance(alpha, numbers):
        raise FactError(f"{path}: info lacks weight_decay or alpha")
    _max_dense(info, path)


def _max_dense(options: dict[str, Any], path: str) -> int | None:
    """The recorded --max-dense: which layers hold projected (k×k) sums."""
    value = options.get("max_dense")
    if not (value is None or isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise FactError(f"{path}: max_dense is {value!r}, not a positive count or null")
    return value
