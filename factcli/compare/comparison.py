"""Analyses side by side: relations per layer, runs and epochs, and the features two runs learned.

Everything here returns data; `fact compare` renders it. Inputs of every kind (a live analysis,
a stored report, JSON lines of `fact analyze`) are first reduced to a `Source`, so each view is
written once. `--require` expressions are parsed in `requirements`, never by `eval`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine.conventions import BACKWARD, FORWARD, METRIC_NAMES, RELATIONS
from ..engine.results import Analysis
from ..errors import FactError

if TYPE_CHECKING:  # torch is imported only where matrices are compared (reports stay light)
    import torch

ROW_FIELDS = ("stationarity", "epoch", "train_loss")
FEATURE_FIELDS = ("pearson", "cosine", "overlap", "max_angle", "rank")
SORT_KEYS = ("input", "layer", *ROW_FIELDS)
FEATURE_SORT_KEYS = ("input", "layer", *FEATURE_FIELDS)
ENERGY = 0.9  # the automatic rank keeps this fraction of the reference NFM's trace


@dataclass
class Source:
    """One compare input, reduced to what comparing needs."""

    label: str
    layers: list[str]
    metrics: dict[str, dict[str, dict[str, float]]]  # layer → relation → metric → value
    stationarity: dict[str, float] = field(default_factory=dict)
    matrices: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # layer → name
    epoch: int | None = None
    train_loss: float | None = None
    kind: str = "analysis"


def from_analysis(analysis: Analysis, label: str | None = None) -> Source:
    """A live or stored analysis; epoch and training loss come from its training record."""
    info = analysis.info
    training = info.get("training") or {}
    loss = training.get("train_loss", info.get("data_loss"))
    return Source(
        label=label or info.get("checkpoint") or "?",
        layers=[layer.name for layer in analysis.layers],
        metrics={layer.name: layer.metrics for layer in analysis.layers},
        stationarity={layer.name: layer.stationarity for layer in analysis.layers},
        matrices={layer.name: layer.matrices for layer in analysis.layers},
        epoch=training.get("epoch"),
        train_loss=None if _missing(loss) else float(loss),
        kind=str(info.get("kind", "analysis")))


def from_rows(rows: Iterable[Mapping[str, Any]], origin: str = "stdin") -> list[Source]:
    """JSON lines of `fact analyze --format jsonl` (one source per `checkpoint` value) or of
    `fact compare --format jsonl` (one source per `input`, with epoch and training loss).

    Analyze rows need `layer`, `relation` and a metric; compare rows `layer` and `metric`.
    """
    sources: dict[str, Source] = {}
    for number, row in enumerate(rows, 1):
        where = f"{origin} line {number}"
        if not isinstance(row, Mapping):
            raise FactError(f"{where} is not a JSON object")
        if "relation" not in row and "metric" in row:
            _add_compare_row(sources, row, where)
            continue
        for name in ("layer", "relation"):
            if row.get(name) is None:
                raise FactError(f"{where} lacks the field {name!r}")
        if not any(name in row for name in METRIC_NAMES):
            raise FactError(f"{where} lacks a metric field ({', '.join(METRIC_NAMES)})")
        label = str(row.get("checkpoint") or origin)
        source = sources.setdefault(label, Source(label, [], {}))
        layer = str(row["layer"])
        if layer not in source.metrics:
            source.layers.append(layer)
            source.metrics[layer] = {}
        source.metrics[layer][str(row["relation"])] = {
            name: _number(row.get(name), name, where) for name in METRIC_NAMES}
        source.stationarity[layer] = _number(row.get("stationarity"), "stationarity", where)
    if not sources:
        raise FactError(f"{origin} holds no rows")
    return list(sources.values())


def _add_compare_row(sources: dict[str, Source], row: Mapping[str, Any], where: str) -> None:
    """A row of `fact compare --format jsonl`: one metric, one column per relation."""
    metric = row.get("metric")
    if metric not in METRIC_NAMES:
        raise FactError(f"{where}: field 'metric' must be one of {', '.join(METRIC_NAMES)} "
                        f"(got {metric!r})")
    if row.get("layer") is None:
        raise FactError(f"{where} lacks the field 'layer'")
    label = str(row.get("input") or "stdin")
    epoch = row.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise FactError(f"{where}: field 'epoch' must be an integer or null (got {epoch!r})")
    loss = row.get("train_loss")
    source = sources.setdefault(label, Source(
        label, [], {}, epoch=epoch,
        train_loss=None if loss is None else _number(loss, "train_loss", where)))
    layer = str(row["layer"])
    if layer not in source.metrics:
        source.layers.append(layer)
        source.metrics[layer] = {}
    for relation in RELATIONS:
        if relation in row:
            values = source.metrics[layer].setdefault(
                relation, dict.fromkeys(METRIC_NAMES, math.nan))
            values[metric] = _number(row[relation], relation, where)
    source.stationarity[layer] = _number(row.get("stationarity"), "stationarity", where)


def _number(value: Any, name: str, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FactError(f"{where}: field {name!r} must be a number or null (got {value!r})")
    return float(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def in_order(sources: list[Source]) -> list[Source]:
    """By training epoch when every input records one (snapshots of a run), else as given."""
    if len(sources) > 1 and all(source.epoch is not None for source in sources):
        return sorted(sources, key=lambda source: source.epoch)
    return list(sources)


def select_layers(sources: list[Source], patterns: list[str] | None) -> list[Source]:
    """Keep (in place) the layers matching any glob; a pattern matching in no input is an
    error, one matching in some inputs only is not (runs of different depths)."""
    if not patterns:
        return sources
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for s in sources for name in s.layers):
            names = dict.fromkeys(name for s in sources for name in s.layers)
            raise FactError(f"no layer matches {pattern!r}; layers: {', '.join(names)}")
    for source in sources:
        source.layers = [name for name in source.layers
                         if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    return sources


# ---------------------------------------------------------------------------------------------
# Views (a) and (b): one row per (input, layer), one column per relation


@dataclass(repr=False)
class Comparison:
    """Rows of one metric per (input, layer) and, for several inputs, each relation's series."""

    metric: str
    relations: list[str]
    rows: list[dict[str, Any]]
    trends: dict[str, dict[str, list[float]]]  # layer → relation → values in input order

    def to_pandas(self) -> Any:
        """The rows as a DataFrame (needs pandas)."""
        from ..engine.results import rows_frame

        return rows_frame(self.rows)

    def __repr__(self) -> str:
        inputs = list(dict.fromkeys(row["input"] for row in self.rows))
        return (f"Comparison({self.metric}; {len(inputs)} inputs, {len(self.rows)} rows; "
                f"relations: {', '.join(self.relations)})")

    def _repr_html_(self) -> str:
        from ..engine.results import html_table

        return html_table(self.rows, caption=repr(self))


def compare(sources: list[Source], *, metric: str = "pearson",
            relations: list[str] | None = None, sort: str | None = None) -> Comparison:
    """Relations side by side for every (input, layer), the best per family named in each row.

    Inputs are ordered by epoch when all record one; `sort` reorders the rows only (the trends
    keep the input order). A relation name as `sort` puts the best agreement first.
    """
    check_metric(metric)
    sources = in_order(sources)
    if not any(source.layers for source in sources):
        raise FactError("the inputs hold no layers to compare")
    for source in sources:  # one without layers lost them all to --layers (a shallower run)
        if source.layers and not any(source.metrics.get(layer) for layer in source.layers):
            hint = " (an RFM report? compare its feature matrices with --features)" \
                if source.kind == "rfm" else ""
            raise FactError(f"{source.label} holds no agreement metrics{hint}")
    present = {r for s in sources for layer in s.layers for r in s.metrics.get(layer, {})}
    if relations:
        check_relations(relations)
        absent = [r for r in relations if r not in present]
        if absent:
            raise FactError(f"relation(s) {', '.join(absent)} not in the inputs; present: "
                            f"{', '.join(r for r in RELATIONS if r in present)}")
        chosen = list(dict.fromkeys(relations))
    else:
        chosen = [r for r in RELATIONS if r in present] + sorted(present - set(RELATIONS))
    families = [(key, [r for r in group if r in chosen])
                for key, group in (("best_forward", FORWARD), ("best_backward", BACKWARD))]
    rows, trends = [], {}
    for source in sources:
        for layer in source.layers:
            values = source.metrics.get(layer, {})
            row: dict[str, Any] = {
                "input": source.label, "epoch": source.epoch, "train_loss": source.train_loss,
                "layer": layer, "stationarity": source.stationarity.get(layer, math.nan),
                "metric": metric,
                **{r: values.get(r, {}).get(metric, math.nan) for r in chosen}}
            for key, family in families:
                if family:
                    row[key] = best(row, family, metric)
            rows.append(row)
            if len(sources) > 1:
                series = trends.setdefault(layer, {r: [] for r in chosen})
                for r in chosen:
                    series[r].append(row[r])
    if sort:
        rows = sort_rows(rows, sort, [*SORT_KEYS, *chosen],
                         chosen if metric != "rel_err" else ())
    return Comparison(metric, chosen, rows, trends)


def best(row: Mapping[str, Any], relations: list[str], metric: str) -> str | None:
    """The relation agreeing best (highest correlation, lowest rel_err); None if all missing."""
    finite = [r for r in relations if not _missing(row[r])]
    if not finite:
        return None
    pick = min if metric == "rel_err" else max
    return pick(finite, key=lambda r: row[r])


def sort_rows(rows: list[dict[str, Any]], key: str, keys: Collection[str],
              descending: Collection[str] = ()) -> list[dict[str, Any]]:
    """Stable sort by one of `keys` ("input" keeps the input order); missing values last."""
    check_sort(key, keys)
    if key == "input":
        return rows
    sign = -1 if key in descending else 1

    def rank(row: Mapping[str, Any]) -> tuple:
        value = row[key]
        if _missing(value):
            return (1, 0)
        return (0, value) if isinstance(value, str) else (0, sign * value)

    return sorted(rows, key=rank)


def check_sort(key: str, keys: Collection[str]) -> None:
    if key not in keys:
        raise FactError(f"cannot sort by {key!r}; choose one of: {', '.join(keys)}")


def check_metric(metric: str) -> None:
    if metric not in METRIC_NAMES:
        raise FactError(f"unknown metric {metric!r}; choose one of: {', '.join(METRIC_NAMES)}")


def check_relations(names: Iterable[str]) -> None:
    unknown = [name for name in names if name not in RELATIONS]
    if unknown:
        raise FactError(f"unknown relation(s) {', '.join(unknown)}; choose from: "
                        f"{', '.join(RELATIONS)}")


# ---------------------------------------------------------------------------------------------
# View (c): the features two inputs learned, layer by layer


def top_eigenspace(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """Orthonormal basis (k×rank) of the eigenvectors of the `rank` largest eigenvalues."""
    import torch
    _, vectors = torch.linalg.eigh(_sym(matrix.double()))
    return vectors[:, -rank:]


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the column spans of orthonormal a and b."""
    import torch
    cosines = torch.linalg.svdvals(a.mT @ b).clamp(0.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines))


def energy_rank(matrix: torch.Tensor, energy: float = ENERGY) -> int:
    """The fewest top eigenvalues holding `energy` of the trace of a PSD matrix (at least 1)."""
    import torch
    eigenvalues = torch.linalg.eigvalsh(_sym(matrix.double())).flip(0).clamp(min=0)
    total = float(eigenvalues.sum())
    if total <= 0:
        return 1
    return int((eigenvalues.cumsum(0) < energy * total).sum()) + 1


def feature_agreement(reference: torch.Tensor, other: torch.Tensor, rank: int | None = None
                      ) -> dict[str, Any]:
    """Pearson, cosine and the overlap of the top-`rank` eigenspaces of two feature matrices.

    The overlap is the mean squared cosine of the principal angles (1: same subspace, about
    rank/k for unrelated ones). Without `rank`, the reference's 90 %-of-trace rank is used.
    """
    import torch

    from ..engine.metrics import cosine, pearson
    if reference.shape != other.shape:
        raise FactError(f"feature matrices of shapes {tuple(reference.shape)} and "
                        f"{tuple(other.shape)} cannot be compared")
    if not (torch.isfinite(reference).all() and torch.isfinite(other).all()):
        raise FactError("a feature matrix has NaN or infinite entries")
    size = reference.shape[0]
    rank = energy_rank(reference) if rank is None else rank
    if not 1 <= rank <= size:
        raise FactError(f"--rank must be between 1 and {size} (got {rank})")
    angles = principal_angles(top_eigenspace(reference, rank), top_eigenspace(other, rank))
    overlap = float(torch.cos(torch.deg2rad(angles)).pow(2).mean())
    return {"pearson": pearson(reference, other), "cosine": cosine(reference, other),
            "rank": rank, "overlap": overlap, "max_angle": float(angles.max()),
            "angles": [round(float(a), 6) for a in angles]}


def compare_features(sources: list[Source], *, matrix: str = "nfm", rank: int | None = None,
                     sort: str | None = None) -> list[dict[str, Any]]:
    """Every input after the first against the first, for each layer both hold.

    `sort` by an agreement field puts the most similar first.
    """
    if len(sources) < 2:
        raise FactError("--features compares two or more inputs (the first is the reference)")
    reference, *others = sources
    rows = []
    for source in others:
        shared = [layer for layer in reference.layers if layer in source.layers]
        if not shared:
            raise FactError(f"{reference.label} and {source.label} share no layer")
        for layer in shared:
            rows.append({"reference": reference.label, "input": source.label, "layer": layer,
                         "matrix": matrix, **feature_agreement(
                             stored_matrix(reference, layer, matrix),
                             stored_matrix(source, layer, matrix), rank)})
    if sort:
        rows = sort_rows(rows, sort, FEATURE_SORT_KEYS, ("pearson", "cosine", "overlap"))
    return rows


def stored_matrix(source: Source, layer: str, name: str) -> torch.Tensor:
    held = source.matrices.get(layer, {})
    if name not in held:
        why = "JSON lines carry no matrices" if not source.matrices else \
            "written without matrices?" if not held else f"it holds {', '.join(held)}"
        raise FactError(f"{source.label} has no {name} matrix for layer {layer!r} ({why})")
    from ..engine.factored import Factored

    matrix = held[name]  # eigenspaces need the matrix: one held as factors is formed, size-checked
    return matrix.dense(f"{name} of layer {layer} of {source.label}") \
        if isinstance(matrix, Factored) else matrix


def weight_features(model: torch.nn.Module, label: str) -> Source:
    """NFM = WᵀW and bNFM = WWᵀ of every weight matrix, straight from the weights (no data)."""
    from ..engine.analysis import select_layers

    matrices = {}
    for layer in select_layers(model):
        W = layer.matrix(layer.parameter.detach()).double()
        matrices[layer.name] = {"nfm": W.mT @ W, "bnfm": W @ W.mT}
    return Source(label, list(matrices), {}, matrices=matrices)


def _sym(matrix: torch.Tensor) -> torch.Tensor:
    return (matrix + matrix.mT) / 2


def relation_names() -> set[str]:
    """The names a `--require` on views (a)/(b) may use."""
    return {f"{r}.{m}" for r in RELATIONS for m in METRIC_NAMES} | set(ROW_FIELDS)


def row_values(source: Source, layer: str) -> dict[str, float]:
    """The namespace a requirement sees for one (input, layer)."""
    values = {f"{relation}.{metric}": value
              for relation, by_metric in source.metrics.get(layer, {}).items()
              for metric, value in by_metric.items()}
    values["stationarity"] = source.stationarity.get(layer, math.nan)
    values["epoch"] = math.nan if source.epoch is None else float(source.epoch)
    values["train_loss"] = math.nan if source.train_loss is None else source.train_loss
    return values
