"""Per-layer float64 sums over the data: zeros, add a batch, merge, finalize.

For a weight matrix W (m×k) with uses z = W h (capture.py), output gradients G = ∂f/∂z
(c×m per row of z) and loss gradients g = ∂ℓ_i/∂z, every relation of relations.md §2–3 is a
function of W and three sums, each term weighted by the sample weight w_i:

    grad = Σ_i w_i ∇_W ℓ_i        (m×k): FACT, bFACT, stationarity — from the *parameter's*
                                  gradient, which counts every use (tied, shared, positions)
    gg   = Σ_i w_i Σ_rows g gᵀ    (m×m): bENFA, and ENFA = Wᵀ gg W
    GG   = Σ_i w_i Σ_rows Gᵀ G    (m×m): bAGOP, and AGOP = Wᵀ GG W

With random probes (sketch.py) GG is an unbiased estimate, and `groups` (GROUPS × m × m) holds
the share of each independent group of probes (GG = their sum), for the jackknife error bars.

A layer whose output side m is too large for m×m sums (an LM head: m = vocabulary) keeps them
*projected* instead: gg and GG hold Wᵀ gg W = ENFA and Wᵀ GG W = AGOP (k×k), summed as
(g W)ᵀ(g W); its bENFA, bAGOP and bNFA are then not computed (no thin factors).

A row is one position of one use (a token, a patch, a second call of a shared layer). Which
axis of z is the batch never matters: g and G come from backward passes of losses and probes
that carry √w_i per sample, so every row arrives already weighted. A use shared by the batch
(no row belongs to one sample: a broadcast position lookup) is found and summed sample by
sample instead (shared.py).

Lifecycle, so that batches, ranks and shards combine the same way: `Sums.zeros`, `accumulate`
(one batch), `merge` (another `Sums`; or all-reduce `tensors()` with SUM), `finalize` (divide
by the total weight). The sums are totals until finalized.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import FactError
from .capture import Capture
from .losses import per_sample_loss
from .shared import per_sample_products, shared_uses
from .sketch import (
    GROUPS,
    Probing,
    basis_probes,
    block_size,
    has_groups,
    probe_products,
    random_probes,
    sample_seeds,
)
from .uses import Layer


@dataclass
class LayerSums:
    grad: torch.Tensor
    gg: torch.Tensor
    GG: torch.Tensor
    groups: torch.Tensor | None = None  # sketched: GG of each group of probes (Σ = GG)
    projected: bool = False  # gg, GG hold Wᵀ gg W and Wᵀ GG W (k×k), see the module docstring

    @classmethod
    def zeros(cls, m: int, k: int, device: torch.device | str = "cpu",
              projected: bool = False) -> LayerSums:
        def zero(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)
        side = k if projected else m
        return cls(zero(m, k), zero(side, side), zero(side, side), projected=projected)

    def tensors(self) -> list[torch.Tensor]:
        return [self.grad, self.gg, self.GG] + ([] if self.groups is None else [self.groups])


@dataclass
class Sums:
    """Totals over the batches seen so far: per-layer sums, Σ w_i ℓ_i, Σ w_i·[correct], Σ w_i.

    `uses` and `flipped` count a layer's uses (matrix and transposed orientation) in the first
    batch seen; `unseen` names an operation that read a layer's weight in a way capture does not
    understand (then its AGOP family is not computed). `probes` is the number of random
    probes per sample the AGOP family was sketched with (None: exact, or no AGOP), `outputs`
    the number of outputs per sample it ran over."""

    layers: dict[str, LayerSums]
    loss: torch.Tensor
    correct: torch.Tensor
    weight: torch.Tensor
    uses: Counter[str] = field(default_factory=Counter)
    flipped: Counter[str] = field(default_factory=Counter)
    unseen: dict[str, str] = field(default_factory=dict)
    shared: set[str] = field(default_factory=set)
    # which uses are shared, found once per batch size and shapes of the uses (shared.py)
    layouts: dict[tuple, list[bool]] = field(default_factory=dict, repr=False, compare=False)
    batches: int = 0
    probes: int | None = None
    outputs: int | None = None

    @classmethod
    def zeros(cls, layers: list[Layer], device: torch.device | str = "cpu",
              projected: frozenset[str] = frozenset()) -> Sums:
        """Zero totals; the layers named in `projected` keep k×k projected sums (LayerSums)."""
        def scalar() -> torch.Tensor:
            return torch.zeros((), dtype=torch.float64, device=device)
        return cls({layer.name: LayerSums.zeros(*layer.shape, device, layer.name in projected)
                    for layer in layers}, scalar(), scalar(), scalar())

    def tensors(self) -> list[torch.Tensor]:
        """Every total, in a fixed order: what a data-parallel run all-reduces (SUM)."""
        return [t for total in self.layers.values() for t in total.tensors()] + [
            self.loss, self.correct, self.weight]

    def merge(self, other: Sums) -> None:
        """Add another shard's totals (same layers) to these."""
        if self.layers.keys() != other.layers.keys():
            raise FactError("cannot merge sums over different layers")
        if other.batches and self.batches and (self.probes, self.outputs) != (other.probes,
                                                                              other.outputs):
            raise FactError("cannot merge sums of differently probed AGOPs")
        if not self.batches:
            self.probes, self.outputs = other.probes, other.outputs
            for mine, theirs in zip(self.layers.values(), other.layers.values()):
                if theirs.groups is not None and mine.groups is None:
                    mine.groups = torch.zeros_like(theirs.groups, device=mine.GG.device)
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine += theirs.to(mine.device)
        for name, count in other.uses.items():
            self.uses[name] = max(self.uses[name], count)
        for name, count in other.flipped.items():
            self.flipped[name] = max(self.flipped[name], count)
        for name, what in other.unseen.items():
            self.unseen.setdefault(name, what)
        self.shared |= other.shared
        self.batches += other.batches

    def total_weight(self) -> float:
        """Σ w_i over the samples seen (an error if none were)."""
        total = float(self.weight)
        if not total > 0:
            raise FactError("no samples were seen")
        return total

    def mean(self, name: str) -> LayerSums:
        """One layer's weighted means (each of its totals divided by Σ w_i)."""
        total, sums = self.total_weight(), self.layers[name]
        return LayerSums(*(t / total for t in sums.tensors()), projected=sums.projected)

    def finalize(self) -> Sums:
        """The weighted means (each total divided by Σ w_i), as a new `Sums`."""
        total = self.total_weight()
        layers = {name: self.mean(name) for name in self.layers}
        return Sums(layers, self.loss / total, self.correct / total, self.weight / total,
                    Counter(self.uses), Counter(self.flipped), dict(self.unseen),
                    set(self.shared), batches=self.batches, probes=self.probes,
                    outputs=self.outputs)


def model_output(value) -> torch.Tensor:
    """The tensor a model returns: itself, `.logits` of an HF ModelOutput, or the first tensor
    of a tuple/list/dict."""
    if isinstance(value, torch.Tensor):
        return value
    logits = value.get("logits") if isinstance(value, dict) else getattr(value, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    items = value.values() if isinstance(value, dict) else value \
        if isinstance(value, (list, tuple)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise FactError(f"the model returned a {type(value).__name__}, not a tensor (nor a tuple, "
                    "dict or ModelOutput holding one)")


def _add_product(total: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """total += leftᵀ right over the rows: the product in the model's dtype, the sum in float64."""
    total += (left.mT @ right).double()


def _projected(rows: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Rows of length m as rows of length k (rows·W) for a projected layer, else unchanged."""
    return rows if basis is None else rows @ basis.to(rows.dtype)


def _add_per_sample(sums: Sums, common: list, losses: torch.Tensor, output: torch.Tensor,
                    root: torch.Tensor | None, outputs: bool,
                    bases: dict[str, torch.Tensor]) -> None:
    """gg and GG of the uses shared by the batch, sample by sample (shared.py)."""
    zs = [use.z for use in common]
    for target, total in [(losses.reshape(-1, 1), "gg")] + [(output, "GG")] * outputs:
        for products in per_sample_products(target, zs, root):
            for use, G in zip(common, products):
                rows = _projected(use.rows(G, lead=1), bases.get(use.layer.name))
                _add_product(getattr(sums.layers[use.layer.name], total), rows, rows)


def _probe_count(sums: Sums, probing: Probing, output: torch.Tensor) -> int | None:
    """The random probes per sample for these outputs (None: exact), the same in every batch."""
    count = probing.count(output.shape[1])
    if sums.batches and (count, output.shape[1]) != (sums.probes, sums.outputs):
        raise FactError(f"the model returned {output.shape[1]} outputs per sample in one batch "
                        f"and {sums.outputs} in another: the AGOP needs the same outputs")
    sums.probes, sums.outputs = count, output.shape[1]
    return count


def _add_jacobians(uses: list, sums: Sums, output: torch.Tensor, zs: list[torch.Tensor],
                   root: torch.Tensor | None, probing: Probing, first: int,
                   bases: dict[str, torch.Tensor]) -> None:
    """GG += Σ over probes of each use's (∂(vᵀf)/∂z rows)ᵀ(rows): the c unit vectors, or
    random probes (then also each group's share)."""
    count = sums.probes
    block = block_size(output, zs, scaled=root is not None)
    if count is None:
        blocks = ((None, probes) for probes in basis_probes(output, root, block))
    else:
        blocks = random_probes(output, root, count, probing.kind,
                               sample_seeds(probing.seed, first, len(output)),
                               min(block, count // GROUPS))
    for group, probes in blocks:
        for use, G in zip(uses, probe_products(output, zs, probes)):
            rows = _projected(use.rows(G, lead=1), bases.get(use.layer.name))
            total = sums.layers[use.layer.name]
            product = (rows.mT @ rows).double()
            total.GG += product
            if group is not None and has_groups(len(product)):
                if total.groups is None:
                    total.groups = product.new_zeros(GROUPS, *product.shape)
                total.groups[group] += product


def accumulate(model: nn.Module, layers: list[Layer], sums: Sums, x: torch.Tensor,
               target: torch.Tensor, weight: torch.Tensor | None, loss: str,
               outputs: bool = True, per_use: bool = True, probing: Probing = Probing(),
               first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Add one batch to `sums`; returns (per-sample loss ℓ_i, model output in its own shape).

    `weight` holds the per-sample weights w_i, or None for w_i = 1. With `outputs=False` no
    AGOP is needed and the c-probe batched backward is skipped: one backward of the loss. With
    `per_use=False` (the FACT family only) not even g is: the backward is the parameters' alone.
    `probing` chooses the outputs and probes of the AGOP family; `first` is the index of the
    batch's first sample among all analyzed (it seeds that sample's random probes).
    """
    with Capture(layers) as capture, torch.enable_grad():
        output = model_output(model(x))
    if output.ndim == 0 or len(output) != len(x):
        raise FactError(f"the model returned shape {tuple(output.shape)} for a batch of "
                        f"{len(x)}: expected one row of outputs per sample")
    if not output.is_floating_point():
        raise FactError(f"the model returned {output.dtype} values, not floating-point outputs")
    parameters = list({id(layer.parameter): layer.parameter for layer in layers}.values())
    losses = per_sample_loss(loss, output, target)  # sees the output's own shape (n, T, V)
    shaped, output = output, output.reshape(len(x), -1)  # the probes run over every output
    root = None if weight is None else weight.to(losses.dtype).sqrt()
    uses = capture.uses if per_use else []
    layout = (len(x), tuple((use.layer.name, use.channel, tuple(use.z.shape)) for use in uses))
    if layout not in sums.layouts:
        sums.layouts[layout] = shared_uses(output, [use.z for use in uses],
                                           [use.channel for use in uses])
    shared = sums.layouts[layout]
    common = [use for use, flag in zip(uses, shared) if flag]
    uses = [use for use, flag in zip(uses, shared) if not flag]
    probed = probing.select(shaped).reshape(len(x), -1) if outputs else output
    if outputs and per_use and capture.uses:
        _probe_count(sums, probing, probed)
    bases = {layer.name: layer.matrix(layer.parameter.detach()) for layer in layers
             if sums.layers[layer.name].projected}
    if common:  # exact, also in a sketch: their probes are per sample already
        _add_per_sample(sums, common, losses, probed, root, outputs, bases)
    zs = [use.z for use in uses]
    options = dict(allow_unused=True, materialize_grads=True)
    if weight is None:  # w_i = 1: one backward gives both ∇_θ Σ ℓ_i and every g
        grads = torch.autograd.grad(losses.sum(), parameters + zs, retain_graph=outputs,
                                    **options)
        gradients, gs = grads[:len(parameters)], grads[len(parameters):]
    else:
        gradients = torch.autograd.grad((losses * weight.to(losses.dtype)).sum(), parameters,
                                        retain_graph=True, **options)
        gs = torch.autograd.grad((losses * root).sum(), zs, retain_graph=outputs, **options) \
            if zs else ()
    by_parameter = {id(p): g for p, g in zip(parameters, gradients)}
    for layer in layers:
        gradient = by_parameter[id(layer.parameter)]
        if gradient.is_sparse:  # nn.Embedding(sparse=True)
            gradient = gradient.to_dense()
        sums.layers[layer.name].grad += layer.matrix(gradient)  # cast while adding: no copy
    for use, g in zip(uses, gs):
        rows = _projected(use.rows(g), bases.get(use.layer.name))
        _add_product(sums.layers[use.layer.name].gg, rows, rows)
    if outputs and zs:
        _add_jacobians(uses, sums, probed, zs, root, probing, first, bases)
    losses = losses.detach()
    sums.loss += losses.double().sum() if weight is None else (losses.double() *
                                                               weight.double()).sum()
    sums.weight += len(x) if weight is None else weight.double().sum()
    if not sums.batches:
        sums.uses.update(use.layer.name for use in capture.uses)
        sums.flipped.update(capture.flipped)
    for name, what in capture.unseen.items():
        sums.unseen.setdefault(name, what)
    sums.shared.update(use.layer.name for use in common)
    sums.batches += 1
    return losses, shaped.detach()
