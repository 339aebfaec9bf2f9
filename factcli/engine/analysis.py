"""`analyze(...)`: every relation for every weight matrix of a model, as data (never printed)."""

from __future__ import annotations

import copy
import fnmatch
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.datasets import Dataset, load_dataset
from ..errors import FactError
from ..io import validate
from ..io.checkpoint import Checkpoint, load_checkpoint
from ..io.optimizer import Preconditioner, preconditioners, read_state
from ..models.archs import check_finite
from . import relations as rel
from .conventions import MATRICES
from .device import resolve_device, resolve_dtype
from .factored import thin_sides
from .losses import check_loss, sample_accuracy
from .metrics import METRICS, Matrix
from .results import Analysis, LayerResult
from .sketch import GROUPS, Probing, has_groups
from .sums import LayerSums, Sums, accumulate
from .uses import Layer, analyzable, parameters


def select_layers(model: nn.Module, patterns: list[str] | None = None) -> list[Layer]:
    """The model's weight matrices, filtered by glob patterns on their names (each pattern
    must match something)."""
    found = analyzable(model)
    if not found:
        raise FactError("the model has no weight matrix factcli can analyze "
                        "(`fact layers` lists every parameter and why)")
    if not patterns:
        return found
    chosen: set[str] = set()
    for pattern in patterns:
        matches = [layer.name for layer in found if fnmatch.fnmatchcase(layer.name, pattern)]
        if not matches:
            raise FactError(f"no layer matches {pattern!r}; layers: "
                            f"{', '.join(layer.name for layer in found)}")
        chosen.update(matches)
    return [layer for layer in found if layer.name in chosen]


def _subsample(dataset: Dataset, max_samples: int | None, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inputs, raw labels and weights (summing to 1; None = uniform), seeded subsample."""
    x, y, weights = dataset.x_train, dataset.y_train, dataset.weights
    if max_samples is not None and max_samples < 1:
        raise FactError(f"--max-samples must be positive (got {max_samples})")
    if max_samples is not None and max_samples < len(x):
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(x), generator=generator)[:max_samples].sort().values
        x, y = x[index], y[index]
        weights = None if weights is None else weights[index]
    return x, y, None if weights is None else weights.double() / weights.double().sum()


def analyze(
    source: str | os.PathLike | Checkpoint | nn.Module,
    dataset: str | Dataset | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Analysis:
    """Analyze a checkpoint (path or `Checkpoint`) or an `nn.Module` on its training data.

    Options are those of `prepare`. Arguments left as None come from the checkpoint's
    `training` record; explicit ones win. The model is evaluated in eval mode. Sums are
    accumulated in float64 over batches of `batch_size`, so memory does not grow with the
    number of samples.
    """
    plan = prepare(source, dataset, **options)
    return plan.finish(plan.accumulate(progress=progress))


@dataclass
class Plan:
    """Everything fixed before the pass over the data: the model, the samples, the options.

    `accumulate` sums any contiguous share of the samples into raw (not yet finalized) `Sums`;
    the sums of disjoint shares add up (`Sums.merge`, or an all-reduce of `Sums.tensors()`),
    and `finish` turns the sums over all samples into the `Analysis`. `info` is the provenance
    a report records.
    """

    network: nn.Module
    layers: list[Layer]
    data: Dataset
    x: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None
    loss: str
    relations: tuple[str, ...]
    batch_size: int
    info: dict[str, Any]
    warnings: list[str]
    adamw: dict[str, tuple[torch.Tensor, float]] | None = None  # layer → (√v̂ + ε as W, λ)
    probing: Probing = Probing()
    keep: frozenset[str] | None = None  # the matrices `finish` returns (`kept_matrices`)

    @property
    def classified(self) -> bool:
        return self.data.n_classes is not None

    def accumulate(self, part: slice = slice(None), progress: Callable[[int, int], None] | None
                   = None) -> Sums:
        """The raw sums over the samples x[part] (a contiguous share; default all)."""
        weights = None if self.weights is None else self.weights[part]
        return _stream(self.network, self.layers, self.data, self.x[part], self.labels[part],
                       weights, self.loss, rel.needs_agop(self.relations),
                       bool(rel.PER_USE.intersection(self.relations)), self.batch_size, progress,
                       self.probing, part.indices(len(self.x))[0],
                       projected(self.layers, self.info["max_dense"]))

    def weight_matrices(self) -> dict[str, tuple[str, torch.Tensor]]:
        """(kind, W in float64, as the relations read it) of each analyzed layer, by name."""
        return {layer.name: (layer.kind, layer.matrix(layer.parameter.detach()).double())
                for layer in self.layers}

    def penalty(self) -> float:
        """Σ‖θ‖² over every parameter: the weight-decay term of the objective."""
        return sum(float(p.detach().double().pow(2).sum()) for p in self.network.parameters())

    def finish(self, sums: Sums) -> Analysis:
        return finish(self.weight_matrices(), self.penalty(), sums, self.info, self.warnings,
                      self.classified, self.adamw, self.keep)


def kept_matrices(keep: str | Iterable[str]) -> frozenset[str] | None:
    """`keep_matrices`: "all" (None: every matrix), "none", or the names (nfm, bnfm,
    relations) of those to return; the rest are freed once their layer's metrics are in."""
    if keep == "all":
        return None
    if isinstance(keep, str) and keep != "none":
        raise FactError(f"keep_matrices must be 'all', 'none' or a list of matrix names "
                        f"(got {keep!r})")
    names = () if keep == "none" else tuple(keep)
    unknown = [name for name in names if name not in MATRICES]
    if unknown:
        raise FactError(f"unknown matrix {', '.join(map(str, unknown))} in keep_matrices; "
                        f"choose from {', '.join(MATRICES)}")
    return frozenset(names)


def prepare(
    source: str | os.PathLike | Checkpoint | nn.Module,
    dataset: str | Dataset | None = None,
    *,
    loss: str | None = None,
    weight_decay: float | None = None,
    alpha: float = 0.5,
    relations: list[str] | None = None,
    layers: list[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1000,
    max_samples: int | None = None,
    seed: int = 0,
    dtype: str | None = None,
    data_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    model: dict[str, Any] | None = None,
    max_dense: int | None = 4096,
    trust_model_code: bool = False,
    optimizer_state: str | os.PathLike | dict[str, Any] | None = None,
    agop_probes: int | str | None = None,
    probe_kind: str | None = None,
    probe_seed: int | None = None,
    outputs: str | int | None = None,
    keep_matrices: str | Iterable[str] = "all",
) -> Plan:
    """Load and check everything `analyze` needs, up to (not including) the pass over the data.

    The AGOP family runs over the outputs `outputs` (all, last, K or A:B of axis 1 of the
    model's output), exactly (`agop_probes="exact"`, the default up to 256 outputs per
    sample) or sketched with `agop_probes` random probes of `probe_kind` seeded by
    `probe_seed` (sketch.py; the default above 256 outputs: 64 probes).

    A relation matrix whose side exceeds `max_dense` (an embedding's vocab × vocab forward
    ones, an LM head's backward ones) is held as thin factors (`Factored`, None: never); see
    `factored.thin_sides`. A model factory named inside a checkpoint file runs only if `model`
    names
    it too or `trust_model_code=True` (it is code chosen by whoever wrote the file).
    `optimizer_state` (a `state_dict`, or a `.pt` file holding one; default: the AdamW state a
    `fact train` checkpoint carries) gives `fact_adamw` (relations.md §7). `keep_matrices`
    ("all", "none" or names): the matrices the result holds; every metric is computed either
    way, and a matrix not kept is freed as soon as its layer's metrics are (an LM's embedding
    factors before its head's are formed).
    """
    rel.check_relations(relations, adamw=True)  # unknown names fail before any loading
    keep = kept_matrices(keep_matrices)
    probing = Probing.parse(agop_probes, probe_kind, probe_seed, outputs)
    validate.number(alpha, "--alpha (the NFA power α)", positive=True)
    if weight_decay is not None:
        validate.number(weight_decay, "--weight-decay (λ)", minimum=0)
    if batch_size < 1:
        raise FactError(f"--batch-size must be positive (got {batch_size})")
    training: dict[str, Any] = {}
    warnings: list[str] = []
    info: dict[str, Any] = {"checkpoint": None, "checkpoint_sha256": None}
    state: tuple[Any, str] | None = None  # (AdamW state_dict, where it came from)
    if isinstance(source, nn.Module):
        network = copy.deepcopy(source)  # moved, cast and put in eval mode: not the caller's
        check_finite(network.named_parameters())
    else:
        checkpoint = source if isinstance(source, Checkpoint) else load_checkpoint(
            source, model, trust_model_code=trust_model_code)
        network, training = checkpoint.build(), checkpoint.training
        warnings.extend(checkpoint.warnings)  # how the weights were read (io/sources.py)
        info.update(checkpoint=str(checkpoint.path) if checkpoint.path else None,
                    checkpoint_sha256=checkpoint.sha256, model=checkpoint.model)
        if checkpoint.optimizer_state is not None:
            state = (checkpoint.optimizer_state, f"{checkpoint.path or 'the checkpoint'} "
                     "(its AdamW state)")
    if optimizer_state is not None:
        state = (read_state(optimizer_state), str(optimizer_state)) \
            if isinstance(optimizer_state, (str, os.PathLike)) else \
            (optimizer_state, "the optimizer state")
    moments = None
    if state is not None:
        try:
            moments = preconditioners(state[0], network, state[1], training.get("optimizer"))
        except FactError as error:  # asked for: an error; found in the checkpoint: a notice
            if optimizer_state is not None:
                raise
            warnings.append(f"fact_adamw not computed: {error}")
    names = rel.check_relations(relations, adamw=bool(moments))
    loss = loss or training.get("loss")
    if not loss:
        _missing("loss", "--loss mse|cross_entropy|next_token")
    loss = check_loss(loss)
    dataset = dataset if dataset is not None else training.get("dataset")
    if dataset is None:
        _missing("dataset", "--data SPEC")
    recorded_dir = training.get("data_dir")
    if data_dir is None and dataset == training.get("dataset") and isinstance(recorded_dir, str) \
            and os.path.isdir(recorded_dir):
        data_dir = recorded_dir  # where the run was told to find its data
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_dir,
                                                                     offline=offline)
    if weight_decay is None:
        weight_decay = training.get("weight_decay")
    warnings.extend(_fingerprint_warnings(data, training))
    if not rel.has_scale(weight_decay):
        warnings.append(f"weight decay λ is {'unknown' if weight_decay is None else weight_decay}:"
                        " FACT is reported without its 1/λ scale, rel_err and stationarity "
                        "are missing (correlations are still given); pass --weight-decay")
    if str(training.get("optimizer", "")).lower() == "adamw":
        warnings.append("trained with AdamW (decoupled weight decay): its fixed points are not "
                        "critical points of L, so FACT holds only approximately" + (
                            "; fact_adamw (relations.md §7) is the relation they satisfy"
                            if moments else "; no AdamW state at hand for fact_adamw "
                            "(pass --optimizer-state FILE)"))

    run_device = resolve_device(device)
    run_dtype = _pick_dtype(dtype, network)
    network = network.to(device=run_device, dtype=run_dtype).eval()
    for module in network.modules():  # in-place activations would overwrite the captured z
        if getattr(module, "inplace", False):
            module.inplace = False
    chosen = select_layers(network, layers)
    for layer in chosen:  # the parameter's gradient is the FACT sum
        layer.parameter.requires_grad_(True)
    adamw = _adamw_layers(network, chosen, moments, weight_decay, warnings) if moments else None
    _check_token_ids(data, network)
    x, labels, weights = _subsample(data, max_samples, seed)
    if len(x) < data.n_train:
        warnings.append(f"analyzing {len(x)} of {data.n_train} training samples: FACT and the "
                        "stationarity use the gradient of this subsample, which balances λW only "
                        "on the full data, so expect lower FACT agreement than the full set gives")
    info.update(
        dataset=data.spec, n_samples=len(x), n_train=data.n_train, max_samples=max_samples,
        sample_seed=seed, loss=loss, weight_decay=weight_decay, alpha=alpha, relations=list(names),
        device=str(run_device), dtype=str(run_dtype).removeprefix("torch."),
        torch_version=torch.__version__, mode="eval", weighted=data.weights is not None,
        training=training, not_analyzed=not_analyzed(network), max_dense=max_dense, world_size=1,
        optimizer_state=None if state is None else state[1], **probing.record(),
    )
    return Plan(network, chosen, data, x, labels, weights, loss, names, batch_size, info,
                warnings, adamw, probing, keep)


def _adamw_layers(network: nn.Module, chosen: list[Layer], moments: dict[str, Preconditioner],
                  weight_decay: float | None, warnings: list[str]
                  ) -> dict[str, tuple[torch.Tensor, float]]:
    """(√v̂ + ε read as the layer's W, AdamW's λ) of each layer whose parameter has state."""
    names = {id(p): name for name, p in network.named_parameters()}
    found = {}
    for layer in chosen:
        moment = moments.get(names.get(id(layer.parameter), ""))
        if moment is not None:
            found[layer.name] = (layer.matrix(moment.denominator), moment.weight_decay)
    decays = sorted({decay for _, decay in found.values()})
    if decays and rel.has_scale(weight_decay) and decays != [weight_decay]:
        warnings.append(f"the AdamW state's weight_decay ({', '.join(map(str, decays))}) "
                        f"differs from λ = {weight_decay} of fact: fact_adamw uses the state's")
    return found


def finish(weights: dict[str, tuple[str, torch.Tensor]], penalty: float, sums: Sums,
           info: dict[str, Any], warnings: list[str], classified: bool,
           adamw: dict[str, tuple[torch.Tensor, float]] | None = None,
           keep: frozenset[str] | None = None) -> Analysis:
    """The `Analysis` from the raw sums over all samples: the relations and metrics of every
    layer from its means (its sums divided by Σ w_i, formed one layer at a time so that a
    single layer's copy is held beside the sums), `weights`: name → (kind, W); `adamw`:
    name → (√v̂ + ε as W, λ), for `fact_adamw`; `keep`: the matrices returned (None: all)."""
    total, warnings = sums.total_weight(), list(warnings)
    info = {**info, **_probed(sums, info, warnings)}
    weight_decay = info["weight_decay"]
    names, alpha, max_dense = tuple(info["relations"]), info["alpha"], info["max_dense"]
    results = [_layer_result(name, kind, W, sums, weight_decay, alpha, names, max_dense,
                             warnings, (adamw or {}).get(name), keep)
               for name, (kind, W) in weights.items()]
    data_loss = float(sums.loss) / total
    info = {**info, "data_loss": data_loss,
            "accuracy": float(sums.correct) / total if classified else math.nan,
            "objective": data_loss + 0.5 * weight_decay * penalty
            if rel.has_scale(weight_decay) else math.nan}
    return Analysis(results, info, warnings)


def _probed(sums: Sums, info: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """What the AGOP family ran over (`agop_probes`: S or "exact"; `agop_outputs`: outputs per
    sample), with the notice when the default chose a sketch."""
    if sums.outputs is None:  # no AGOP was summed
        return {"agop_probes": None, "agop_outputs": None}
    if sums.probes is not None and info.get("agop_probes_requested", "auto") == "auto":
        warnings.append(f"AGOP family sketched: {sums.outputs} outputs per sample, "
                        f"{sums.probes} {info.get('probe_kind')} probes (seed "
                        f"{info.get('probe_seed')}), bias-corrected ± s.e. by a jackknife over "
                        f"{GROUPS} groups; "
                        "--agop-probes exact sums every output")
    return {"agop_probes": "exact" if sums.probes is None else sums.probes,
            "agop_outputs": sums.outputs}


def not_analyzed(model: nn.Module) -> list[dict[str, Any]]:
    """The weight matrices (≥ 2-d parameters) factcli cannot read as a matrix, with why."""
    return [{"parameter": p.path, "kind": p.kind, "shape": list(p.shape), "reason": p.reason}
            for p in parameters(model) if p.is_matrix and not p.layers and not p.tied_to]


def projected(layers: list[Layer], max_dense: int | None) -> frozenset[str]:
    """The layers whose backward side is held as factors: their gg and GG sums are projected
    to k×k (sums.py), never m×m."""
    return frozenset(layer.name for layer in layers if thin_sides(*layer.shape, max_dense)[1])


def _stream(network: nn.Module, chosen: list[Layer], data: Dataset, x: torch.Tensor,
            labels: torch.Tensor, weights: torch.Tensor | None, loss: str, agop: bool,
            per_use: bool, batch_size: int, progress: Callable[[int, int], None] | None,
            probing: Probing = Probing(), first: int = 0,
            project: frozenset[str] = frozenset()) -> Sums:
    """One pass over the samples `x` in batches: their raw sums (see `Plan`)."""
    parameter = next(network.parameters())
    device, dtype = parameter.device, parameter.dtype
    targets = Dataset(data.spec, x, labels, n_classes=data.n_classes).targets(loss)
    sums = Sums.zeros(chosen, device, project)
    n = len(x)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch_t = targets[start:stop].to(device)
        if batch_t.is_floating_point():
            batch_t = batch_t.to(dtype)
        batch_x = x[start:stop].to(device)
        if batch_x.is_floating_point():  # token ids stay integers
            batch_x = batch_x.to(dtype)
        batch_w = None if weights is None else weights[start:stop].to(device)
        try:
            _, output = accumulate(network, chosen, sums, batch_x, batch_t, batch_w, loss,
                                   outputs=agop, per_use=per_use, probing=probing,
                                   first=first + start)
        except (RuntimeError, IndexError, TypeError, ValueError) as error:
            if start == 0:
                first = str(error).strip().splitlines()[0] if str(error).strip() else \
                    type(error).__name__
                raise FactError(f"the model does not fit dataset {data.spec!r} (inputs of shape "
                                f"{tuple(x.shape[1:])}, {loss} targets): {first}") from None
            raise
        hits = sample_accuracy(output, labels[start:stop].to(device), data.n_classes)
        if hits is None:  # outputs that are not class scores: no accuracy, never a 0
            sums.correct += math.nan
        else:
            sums.correct += hits.sum() if batch_w is None else (hits * batch_w.double()).sum()
        if progress:
            progress(stop, n)
    return sums


def _layer_result(name: str, kind: str, W: torch.Tensor, sums: Sums,
                  weight_decay: float | None, alpha: float, names: tuple[str, ...],
                  max_dense: int | None, warnings: list[str],
                  adamw: tuple[torch.Tensor, float] | None = None,
                  keep: frozenset[str] | None = None) -> LayerResult:
    """One layer's relations and metrics from the raw `sums` (its means formed here); a side
    held as factors gets one basis (`relations.side_basis`) for its relations, its metrics
    and every jackknife replica. Only the matrices in `keep` (None: all) outlive the metrics."""
    total = sums.mean(name)
    stationarity = rel.stationarity(W, total, weight_decay)  # before the factors: its copies of W
    thin = thin_sides(*W.shape, max_dense)
    kept, note = _available(name, W, sums, names, thin[0], warnings, adamw is not None)
    basis = rel.side_basis(W, total.grad, thin)
    matrices, fitted = rel.compute(W, total, weight_decay, alpha, kept, adamw, thin, basis)
    matrices = {key: value.cpu() for key, value in matrices.items()}
    held = None if basis is None else basis.cpu()
    metrics = _metrics(matrices, kept, weight_decay, held)
    if keep is not None:  # the replicas rebuild their own: the rest is freed before them
        matrices = {key: value for key, value in matrices.items() if key in keep}
    if sums.probes is not None:
        _add_errors(metrics, W, total, weight_decay, alpha, kept, thin, basis)
        side = total.GG.shape[0]
        if not has_groups(side) and rel.AGOP_FAMILY.intersection(kept):
            note = "; ".join(filter(None, [note, f"no s.e. ({GROUPS} group sums of "
                                                f"{side}×{side} too large)"]))
    return LayerResult(name, W.shape[1], W.shape[0],
                       stationarity, matrices, metrics, *fitted,
                       kind=kind, uses=sums.uses[name], note=note)


def _metrics(matrices: dict[str, Matrix], relations: tuple[str, ...],
             weight_decay: float | None, basis: torch.Tensor | None
             ) -> dict[str, dict[str, float]]:
    """Every metric of each relation against its reference (rel_err only for the FACT family
    with a known λ, and fact_adamw); matrices held as factors compared in their side's
    `basis` (`relations.metric_operands`)."""
    operands = rel.metric_operands(matrices, basis)
    metrics = {}
    for relation in relations:  # fact_adamw's step ∇W/√v̂ leaves span[W, ∇W]: its own factors
        held = matrices if relation in rel.NEEDS_OPTIMIZER else operands
        reference, candidate = held[rel.reference(relation)], held[relation]
        scaled = relation in rel.NEEDS_OPTIMIZER or (relation in rel.FACT_FAMILY
                                                     and rel.has_scale(weight_decay))
        metrics[relation] = {metric: fn(reference, candidate) if scaled or metric != "rel_err"
                             else math.nan for metric, fn in METRICS.items()}
    return metrics


def _add_errors(metrics: dict[str, dict[str, float]], W: torch.Tensor, total: LayerSums,
                weight_decay: float | None, alpha: float, kept: tuple[str, ...],
                thin: tuple[bool, bool] = (False, False),
                basis: torch.Tensor | None = None) -> None:
    """The delete-one-group jackknife of a sketched analysis (relations.md §8) over the GROUPS
    groups of probes: each metric of a relation built from the Jacobians is replaced by its
    bias-corrected value and gets `<metric>_se`; the others (no probe enters them) get s.e. 0,
    as do all of a layer whose every use is shared by the batch (its GG summed exactly, no
    group sums though it could keep them). A layer too large for group sums, or a metric
    undefined in any replica, keeps the plain value with s.e. NaN."""
    exact = total.groups is None and has_groups(total.GG.shape[0])
    sketched = () if exact else tuple(r for r in kept if r in rel.AGOP_FAMILY)
    replicas = []
    sketched_sum = None if total.groups is None else total.groups.sum(dim=0)
    for group in range(GROUPS if total.groups is not None and sketched else 0):
        # the probed share Σ_h B_h re-estimated without group g; exact shares (uses shared
        # by the batch) stay as they are
        rest = total.GG + (sketched_sum - GROUPS * total.groups[group]) / (GROUPS - 1)
        matrices, _ = rel.compute(W, LayerSums(total.grad, total.gg, rest,
                                               projected=total.projected),
                                  weight_decay, alpha, sketched, thin=thin, basis=basis)
        matrices = {key: value.cpu() for key, value in matrices.items()}
        replicas.append(_metrics(matrices, sketched, weight_decay,
                                 None if basis is None else basis.cpu()))
        del matrices  # not held while the next replica's are formed
    for relation, values in metrics.items():
        for metric in list(values):
            if relation not in sketched:
                values[f"{metric}_se"] = 0.0 if values[metric] == values[metric] else math.nan
                continue
            values[metric], values[f"{metric}_se"] = jackknife(
                values[metric], [replica[relation][metric] for replica in replicas])


def jackknife(value: float, replicas: list[float]) -> tuple[float, float]:
    """The delete-one jackknife of `value` from its G leave-one-group-out values θ₋g:
    (G·value − (G−1)·θ̄, √((G−1)/G · Σ (θ₋g − θ̄)²)), which removes the order-1/S bias of a
    nonlinear function of the sketch; (value, NaN) without replicas or when any is undefined."""
    values = torch.tensor(replicas, dtype=torch.float64)
    if not len(values) or not torch.isfinite(values).all():
        return value, math.nan
    count = len(values)
    corrected = count * value - (count - 1) * float(values.mean())
    return corrected, float(((count - 1) / count * (values - values.mean()).pow(2).sum()).sqrt())


def _available(name: str, W: torch.Tensor, sums: Sums, names: tuple[str, ...],
               thin_forward: bool, warnings: list[str],
               adamw: bool) -> tuple[tuple[str, ...], str]:
    """The relations this layer can give, and a note on how its sums were formed."""
    kept, notes = names, []
    if not adamw and rel.NEEDS_OPTIMIZER.intersection(kept):
        kept = tuple(r for r in kept if r not in rel.NEEDS_OPTIMIZER)
        warnings.append(f"{name}: fact_adamw not computed (no AdamW state for its parameter "
                        "at hand; fact merge's partial sums do not carry it)")
        notes.append("fact_adamw not computed: no AdamW state for it")
    if name in sums.unseen or not sums.uses[name]:
        why = (f"its weight is also read by {sums.unseen[name]}, which factcli cannot follow"
               if name in sums.unseen else "no use of it in the forward")
        kept = tuple(r for r in kept if r not in rel.PER_USE)
        if len(kept) < len(names):
            warnings.append(f"{name}: AGOP, NFA and eNFA relations not computed ({why}); "
                            "FACT and bFACT come from the parameter's gradient")
        notes.append(f"AGOP family not computed: {why}")
    if thin_forward:
        notes.append(f"forward side {W.shape[1]} > --max-dense: its relations held as thin "
                     "factors")
    if sums.layers[name].projected:
        side = W.shape[0]
        dropped = [r for r in kept if r in rel.UNFACTORED]
        kept = tuple(r for r in kept if r not in rel.UNFACTORED)
        if dropped:
            warnings.append(f"{name}: {', '.join(dropped)} not computed ({side}×{side} with no "
                            f"thin factors); raise --max-dense to {side} to form them")
        notes.append(f"backward side {side} > --max-dense: its relations held as thin "
                     f"factors; bagop, bnfa, benfa not computed ({side}×{side} with no factors)")
    if name in sums.shared:
        notes.append("a use shared by the whole batch (no per-sample axis, e.g. a broadcast "
                     "position lookup): its g and G formed sample by sample")
    if sums.flipped[name]:
        notes.append(f"tied: FACT and stationarity from the full gradient ({sums.uses[name]} "
                     f"use(s) as W, {sums.flipped[name]} as Wᵀ); AGOP family from the "
                     f"{sums.uses[name]} use(s) as W")
    elif sums.uses[name] > 1:
        notes.append(f"{sums.uses[name]} uses per sample, each row of each use one term")
    return kept, "; ".join(notes)


def _check_token_ids(data: Dataset, network: nn.Module) -> None:
    """Integer inputs are token ids: ≥ 0, and below the vocabulary where the model names it (the
    built-in transformer's `embed`, a Hugging Face model's input embeddings), checked before
    the pass so that no lookup fails halfway."""
    x = data.x_train
    if x.is_floating_point() or not x.numel():
        return
    try:
        embed = network.get_input_embeddings() if hasattr(network, "get_input_embeddings") \
            else getattr(network, "embed", None)
    except NotImplementedError:
        embed = None
    vocab = embed.num_embeddings if isinstance(embed, nn.Embedding) else None
    low, high = int(x.min()), int(x.max())
    if low < 0 or vocab is not None and high >= vocab:
        embeds = f"the model embeds ids 0..{vocab - 1}" if vocab else "ids must be >= 0"
        raise FactError(f"dataset {data.spec!r} has token ids {low}..{high}; {embeds}")


def _fingerprint_warnings(data: Dataset, training: dict[str, Any]) -> list[str]:
    """A checkpoint trained on the same spec records the data's fingerprint: compare it."""
    recorded = training.get("dataset_fingerprint")
    if not recorded or data.spec != training.get("dataset") or data.fingerprint() == recorded:
        return []
    return [f"dataset {data.spec!r} differs from the copy this checkpoint was trained on "
            f"(fingerprint {data.fingerprint()[:19]}…, recorded {str(recorded)[:19]}…): "
            "a different download, folder or file; results describe other data"]


def _missing(what: str, flag: str) -> None:
    raise FactError(f"the checkpoint does not record its {what}; pass {flag}")


def _pick_dtype(dtype: str | None, network: nn.Module) -> torch.dtype:
    if dtype is None:
        floating = [p.dtype for p in network.parameters() if p.is_floating_point()]
        return torch.float64 if floating and floating[0] == torch.float64 else torch.float32
    return resolve_dtype(dtype)
