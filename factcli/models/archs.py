"""Models named by the `model` dict of a checkpoint (interfaces.md §1).

`mlp`, `linear`, `quadratic`, `cnn` (models/cnn.py) and `transformer` (models/transformer.py)
are built in; anything else is a user factory named by an
import path `package.module:factory`, called with the dict's other entries as keyword arguments.
A factory is code: whoever calls `build_model` with one has chosen to run it (the checkpoint
loader asks the user first, see `io.checkpoint`). Nothing is added to `sys.path`: a factory's
module must be importable as installed or through `PYTHONPATH`.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from ..errors import FactError

ACTIVATIONS = ("relu", "gelu", "tanh", "quadratic", "identity")
ARCHS = ("mlp", "linear", "quadratic", "cnn", "transformer")
MAX_SIZE = 1 << 20  # any one size of a built-in arch (channels, width, vocab, …)


class Square(nn.Module):
    """x ↦ x², the quadratic activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def activation(name: str) -> nn.Module:
    table = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "quadratic": Square,
             "identity": nn.Identity}
    if name not in table:
        raise FactError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return table[name]()


def mlp(in_features: int, out_features: int, width: int, depth: int, activation_name: str = "relu",
        bias: bool = True) -> nn.Sequential:
    """`depth` Linear layers with an activation between each pair: names 0, 2, 4, …"""
    if depth < 1 or width < 1:
        raise FactError(f"an mlp needs depth >= 1 and width >= 1 "
                        f"(got depth={depth}, width={width})")
    sizes = [in_features] + [width] * (depth - 1) + [out_features]
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if index:
            layers.append(activation(activation_name))
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
    return nn.Sequential(*layers)


class Quadratic(nn.Module):
    """f(x) = Σ_j a_j (w_jᵀx)²: a two-layer network with quadratic activation and no bias."""

    def __init__(self, in_features: int, width: int, out_features: int = 1):
        super().__init__()
        self.hidden = nn.Linear(in_features, width, bias=False)
        self.readout = nn.Linear(width, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.hidden(x).pow(2))


def is_factory(arch: Any) -> bool:
    """Whether `arch` names code (an import path) rather than a built-in architecture."""
    return isinstance(arch, str) and ":" in arch


def build_model(spec: dict[str, Any]) -> nn.Module:
    """An `nn.Module` from a checkpoint's `model` dict."""
    from ..io import validate

    spec = dict(spec)
    arch = spec.pop("arch", None)
    if arch is None:
        raise FactError("the model description has no 'arch'; pass --arch or --model")
    validate.text(arch, "model.arch")
    if arch in ("mlp", "linear", "quadratic"):  # cnn/transformer check their own sizes
        validate.model_spec(arch, spec)
    try:
        if arch == "mlp":
            return mlp(spec["in_features"], spec["out_features"], spec["width"], spec["depth"],
                       spec.get("activation", "relu"), spec.get("bias", True))
        if arch == "linear":
            return mlp(spec["in_features"], spec["out_features"], spec["width"], spec["depth"],
                       "identity", bias=False)
        if arch == "quadratic":
            return Quadratic(spec["in_features"], spec["width"], spec.get("out_features", 1))
        if arch == "cnn":
            from .cnn import CNN

            return CNN(_sizes(spec, "in_shape", 3), _size(spec, "out_features"),
                       _sizes(spec, "channels"), _size(spec, "width"), _size(spec, "depth"),
                       lambda: activation(spec.get("activation", "relu")), spec.get("bias", True),
                       spec.get("pool", "max"))
        if arch == "transformer":
            from .transformer import Transformer

            d_mlp = spec.get("d_mlp")
            return Transformer(
                _size(spec, "vocab"), _size(spec, "context"), _size(spec, "out_features"),
                _size(spec, "d_model"), _size(spec, "heads"), _size(spec, "depth"),
                None if d_mlp is None else _size(spec, "d_mlp"), spec.get("output", "last"),
                lambda: activation(spec.get("activation", "gelu")), spec.get("bias", True),
                spec.get("norm", "layer"))
    except KeyError as missing:
        raise FactError(f"the {arch!r} model description lacks {missing.args[0]!r}") from None
    except TypeError as error:
        raise FactError(f"bad {arch!r} model description: {error}") from None
    if is_factory(arch):
        return _user_model(arch, spec)
    raise FactError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}, "
                    "or name a factory as package.module:function")


def _size(spec: dict[str, Any], key: str) -> int:
    """A size read from a model description: an integer in 1..MAX_SIZE, checked before use."""
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise FactError(f"model entry {key!r} must be an integer in 1..{MAX_SIZE} "
                        f"(got {value!r})")
    return value


def _sizes(spec: dict[str, Any], key: str, length: int | None = None) -> list[int]:
    values = spec[key]
    if not isinstance(values, list | tuple) or not values or (
            length is not None and len(values) != length) or len(values) > 16:
        raise FactError(f"model entry {key!r} must be a list of "
                        f"{length or 'at most 16'} integers (got {values!r})")
    return [_size({key: value}, key) for value in values]


def _user_model(path: str, params: dict[str, Any]) -> nn.Module:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise FactError(f"model factory {path!r} must look like package.module:function")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # the user's module: any failure to import is bad input
        raise FactError(f"cannot import model factory {path!r}: {error}") from None
    try:
        model = factory(**params)
    except Exception as error:
        raise FactError(f"model factory {path!r} failed: {type(error).__name__}: {error}") \
            from None
    if not isinstance(model, nn.Module):
        raise FactError(f"model factory {path!r} returned {type(model).__name__}, not an nn.Module")
    return model


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights strictly, naming what does not fit; refuse non-finite parameters."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}")
        raise FactError(f"the weights do not fit the architecture: {'; '.join(parts)}")
    for name, tensor in state_dict.items():
        if expected[name].is_floating_point() and not tensor.is_floating_point():
            raise FactError(f"the weights do not fit the architecture: {name} has dtype "
                            f"{str(tensor.dtype).removeprefix('torch.')}, the model expects "
                            "floating point")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise FactError(f"the weights do not fit the architecture: {name} has shape "
                            f"{tuple(tensor.shape)}, the model expects "
                            f"{tuple(expected[name].shape)}")
    check_finite(state_dict.items())
    model.load_state_dict(state_dict)


def check_finite(named_tensors) -> None:
    """Refuse NaN or infinite weights up front: every relation computed from them is noise."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FactError(f"parameter {name} contains NaN or infinite values")
