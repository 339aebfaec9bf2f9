"""Every use of a tracked weight during one forward, whoever makes it.

A module's forward hook fires only when its forward runs; attention calls its projections
functionally and a tied head reuses an embedding's storage. So capture watches the operations
instead (a `TorchFunctionMode`): `F.linear`, `F.conv1d/2d/3d`, `torch.addmm`/`mm`/`matmul`/`@`
with the weight as right operand (HF `Conv1D`, tied heads) and `F.embedding`. Each such use is
recomputed without its bias as z = W h and recorded; the forward then continues from that z, so
the gradient with respect to the recorded tensor is ∂ℓ/∂z. Inside
`F.multi_head_attention_forward`, where the mode is suspended, the module-global `linear` that
its in- and out-projections call is swapped for the same recorder. Any other operation that
reads a tracked weight (and does not merely view it) is noted as an unrecognised use, so that
no relation is ever computed from a partial view of the layer.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .uses import Layer

CONV_SPATIAL = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
MATMULS = (torch.addmm, torch.mm, torch.matmul, torch.Tensor.matmul, torch.Tensor.mm,
           torch.Tensor.__matmul__)


@dataclass
class Use:
    """One use z = W h of a layer; axis `channel` of z holds its m outputs, every other axis
    counts samples or positions (in whatever order the model keeps them)."""

    layer: Layer
    z: torch.Tensor
    channel: int

    def rows(self, tensor: torch.Tensor, lead: int = 0) -> torch.Tensor:
        """A tensor shaped like z (after `lead` extra leading axes) as rows of length m."""
        moved = tensor.movedim(self.channel + lead, -1)
        return moved.reshape(-1, moved.shape[-1])


class Capture(TorchFunctionMode):
    """Records `uses` (matrix orientation), `flipped` counts (a use of the transposed matrix,
    e.g. an embedding's tied output head) and `unseen` (layer → the operation not understood)."""

    def __init__(self, layers: list[Layer]):
        super().__init__()
        self.by_storage: dict[int, list[Layer]] = collections.defaultdict(list)
        for layer in layers:
            self.by_storage[_storage(layer.parameter)].append(layer)
        self.uses: list[Use] = []
        self.flipped: collections.Counter[str] = collections.Counter()
        self.unseen: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return self.linear(func, *args, **kwargs)
        if func in CONV_SPATIAL:
            return self._conv(func, CONV_SPATIAL[func], *args, **kwargs)
        if func in MATMULS and len(args) >= 2 and self._find(args[-1]) is not None:
            return self._matmul(func, *args, **kwargs)
        if func is F.embedding:
            return self._embedding(func, *args, **kwargs)
        if func is F.multi_head_attention_forward:
            return self._attention(func, args, kwargs)
        result = func(*args, **kwargs)
        self._check_other(func, args, kwargs, result)
        return result

    # -- the recognised operations -------------------------------------------------------

    def linear(self, func, input, weight, bias=None):
        """z = A h with A = rows r0:r1 of the parameter (or its transpose), split at the
        layers' row blocks so that each block's z is its own tensor."""
        found = self._find(weight)
        if found is None:
            return func(input, weight, bias)
        layers, form, r0, r1 = found
        if form == "transposed":
            z = func(input, weight)
            self._record(layers, z, z.ndim - 1, flipped=True)
        elif form in ("whole", "rows"):
            z = self._blocks(func, input, weight, layers, r0, r1)
        else:
            self._unrecognised(layers, "linear with a strided view of the weight")
            return func(input, weight, bias)
        return z if bias is None else z + bias

    def _blocks(self, func, input, weight, layers, r0, r1):
        cuts = sorted({r0, r1} | {edge for layer in layers for edge in _span(layer)
                                  if r0 < edge < r1})
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            z = func(input, weight if (a, b) == (r0, r1) else weight[a - r0:b - r0])
            parts.append(z)
            for layer in layers:
                start, stop = _span(layer)
                if (start, stop) == (a, b):
                    self._record([layer], z, z.ndim - 1, flipped=False)
                elif start < b and a < stop:
                    self._unrecognised([layer], "linear with part of the weight's rows")
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _matmul(self, func, *args, **kwargs):
        """x @ P = Pᵀ x per row: the weight's transposed orientation (HF Conv1D's W = Pᵀ)."""
        layers, form, _, _ = self._find(args[-1])
        if form not in ("whole", "transposed") or any(layer.stop is not None for layer in layers):
            result = func(*args, **kwargs)
            self._unrecognised(layers, getattr(func, "__name__", "matmul"))
            return result
        if func is torch.addmm:
            bias, x, weight = args
            z = torch.mm(x, weight)
            beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
            self._record(layers, z, z.ndim - 1, flipped=form == "whole")
            return (bias if beta == 1 else beta * bias) + (z if alpha == 1 else alpha * z)
        z = func(*args, **kwargs)
        self._record(layers, z, z.ndim - 1, flipped=form == "whole")
        return z

    def _conv(self, func, spatial, input, weight, bias=None, stride=1, padding=0, dilation=1,
              groups=1):
        found = self._find(weight)
        if found is None:
            return func(input, weight, bias, stride, padding, dilation, groups)
        layers, form, _, _ = found
        if form != "whole" or groups != 1:
            self._unrecognised(layers, f"conv{spatial}d with groups={groups}")
            return func(input, weight, bias, stride, padding, dilation, groups)
        z = func(input, weight, None, stride, padding, dilation, groups)
        channel = z.ndim - spatial - 1
        self._record(layers, z, channel, flipped=False)
        return z if bias is None else z + bias.reshape(-1, *[1] * spatial)

    def _embedding(self, func, input, weight, *args, **kwargs):
        """A lookup is z = Pᵀ e_index: W = Pᵀ for an Embedding, flipped for a tied Linear."""
        z = func(input, weight, *args, **kwargs)
        found = self._find(weight)
        if found is not None:
            layers, form, _, _ = found
            if form == "whole":
                self._record(layers, z, z.ndim - 1, flipped=True)
            else:
                self._unrecognised(layers, "embedding with a view of the weight")
        return z

    def _attention(self, func, args, kwargs):
        """The in- and out-projections call torch.nn.functional's module-global `linear`."""
        original = F.linear

        def linear(input, weight, bias=None):
            return self.linear(original, input, weight, bias)

        F.linear = linear
        try:
            return func(*args, **kwargs)
        finally:
            F.linear = original

    # -- bookkeeping -----------------------------------------------------------------------

    def _record(self, layers: list[Layer], z: torch.Tensor, channel: int, flipped: bool) -> None:
        """`flipped`: the operation computed P·h (False) or Pᵀ·h (True) for the parameter P."""
        for layer in layers:
            if flipped != layer.transposed:
                self.flipped[layer.name] += 1
            else:
                self.uses.append(Use(layer, z, channel))

    def _unrecognised(self, layers: list[Layer], what: str) -> None:
        for layer in layers:
            self.unseen.setdefault(layer.name, what)

    def _find(self, tensor) -> tuple[list[Layer], str, int, int] | None:
        """The layers whose parameter `tensor` views, and how: the whole parameter, a block
        of its rows, its transpose, or some other view."""
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
            return None
        layers = self.by_storage.get(_storage(tensor))
        if not layers:
            return None
        parameter = layers[0].parameter
        offset = tensor.storage_offset() - parameter.storage_offset()
        shape, stride = tuple(tensor.shape), tensor.stride()
        if shape == tuple(parameter.shape) and stride == parameter.stride() and offset == 0:
            return layers, "whole", 0, parameter.shape[0]
        if parameter.ndim == 2 and tensor.ndim == 2:
            if (shape[1] == parameter.shape[1] and stride == parameter.stride() and offset >= 0
                    and offset % parameter.stride(0) == 0):
                start = offset // parameter.stride(0)
                return layers, "rows", start, start + shape[0]
            if shape == tuple(parameter.shape)[::-1] and stride == parameter.stride()[::-1] \
                    and offset == 0:
                return layers, "transposed", 0, parameter.shape[0]
        return layers, "other", 0, 0

    def _check_other(self, func, args, kwargs, result) -> None:
        """An operation that read a tracked weight and made new values from it."""
        for value in (*args, *kwargs.values()):
            for tensor in value if isinstance(value, (list, tuple)) else (value,):
                found = self._find(tensor)
                if found is not None and _makes_new_values(result, _storage(tensor)):
                    self._unrecognised(found[0], getattr(func, "__name__", str(func)))


def _span(layer: Layer) -> tuple[int, int]:
    return layer.start, layer.stop if layer.stop is not None else layer.parameter.shape[0]


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _makes_new_values(result, storage: int) -> bool:
    """Whether `result` holds a tensor that is not a view of the weight's storage."""
    if isinstance(result, torch.Tensor):
        return result.layout != torch.strided or _storage(result) != storage
    if isinstance(result, (list, tuple)):
        return any(_makes_new_values(item, storage) for item in result)
    return False
