"""Which parameters of a model are weight matrices W (m×k), and how each maps to its W.

A layer is one parameter (or a row block of one: the q, k and v of a packed attention
projection) read as a matrix. How the model *uses* it is capture.py's business; here is only
the map from the stored tensor to W, and, for every parameter that is not analyzed, why.
Nothing is recognised by running or importing model code: a module's type and its parameter's
shape decide (HF's `Conv1D` is told by its class name and its `nf` attribute).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = tuple(getattr(nn, name) for name in ("LayerNorm", "GroupNorm", "RMSNorm")
              if hasattr(nn, name)) + (nn.modules.batchnorm._NormBase,)


@dataclass(frozen=True, eq=False)
class Layer:
    """A weight matrix W: `parameter` (rows `start:stop` of it, when a block), reshaped to
    m × k, transposed when the parameter is stored k × m (HF Conv1D, Embedding)."""

    name: str
    path: str
    kind: str
    parameter: nn.Parameter
    start: int = 0
    stop: int | None = None
    transposed: bool = False

    def matrix(self, tensor: torch.Tensor) -> torch.Tensor:
        """W from the parameter (or anything shaped like it: its gradient)."""
        block = tensor[self.start:self.stop] if self.stop is not None else tensor
        block = block.reshape(block.shape[0], -1)
        return block.mT if self.transposed else block

    @property
    def shape(self) -> tuple[int, int]:
        m, k = self.matrix(self.parameter.detach()).shape
        return m, k


@dataclass(frozen=True)
class Parameter:
    """One parameter of the model as `fact layers` lists it."""

    path: str
    shape: tuple[int, ...]
    kind: str
    layers: tuple[Layer, ...] = ()
    reason: str = ""          # why it is not analyzed (empty when it is)
    tied_to: str = ""         # the path it shares storage with (listed once, analyzed there)

    @property
    def is_matrix(self) -> bool:
        """A weight matrix in the user's sense: ≥ 2 dimensions (biases, scales are vectors)."""
        return len(self.shape) >= 2


def layer_name(path: str) -> str:
    """`features.3.weight` → `features.3`, `attn.in_proj_weight` → `attn.in_proj`."""
    for suffix in (".weight", "_weight"):
        if path.endswith(suffix) and len(path) > len(suffix):
            return path[: -len(suffix)]
    return path


def is_hf_conv1d(module: nn.Module) -> bool:
    """`transformers.pytorch_utils.Conv1D`: weight stored in × out, forward = addmm."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, nn.Parameter)
            and weight.ndim == 2 and getattr(module, "nf", None) == weight.shape[1])


def parameters(model: nn.Module) -> list[Parameter]:
    """Every parameter of `model`, each with its layers or the reason it has none."""
    owners: dict[int, str] = {}
    found: list[Parameter] = []
    for prefix, module in model.named_modules(remove_duplicate=False):
        for local, tensor in module.named_parameters(recurse=False):
            path = f"{prefix}.{local}" if prefix else local
            if id(tensor) in owners:
                if owners[id(tensor)] != path and not any(p.path == path for p in found):
                    found.append(Parameter(path, tuple(tensor.shape), "tied", (),
                                           "", owners[id(tensor)]))
                continue
            owners[id(tensor)] = path
            found.append(_describe(module, local, path, tensor))
    return found


def _describe(module: nn.Module, local: str, path: str, tensor: nn.Parameter) -> Parameter:
    shape = tuple(tensor.shape)
    name = layer_name(path)

    def one(kind: str, transposed: bool = False) -> Parameter:
        return Parameter(path, shape, kind, (Layer(name, path, kind, tensor,
                                                   transposed=transposed),))

    if local.endswith("bias"):
        return Parameter(path, shape, "bias", reason="a bias: it shifts z = W h, never in W")
    if isinstance(module, nn.Linear) and local == "weight":
        return one("linear")
    if isinstance(module, CONVOLUTIONS) and local == "weight":
        if module.groups != 1:
            return Parameter(path, shape, f"conv{tensor.ndim - 2}d",
                             reason=f"grouped convolution (groups={module.groups}): not one "
                                    "matrix acting on every patch")
        return one(f"conv{tensor.ndim - 2}d")
    if is_hf_conv1d(module) and local == "weight":
        return one("conv1d_hf", transposed=True)
    if isinstance(module, nn.Embedding) and local == "weight":
        return one("embedding", transposed=True)
    if isinstance(module, nn.MultiheadAttention):
        if local == "in_proj_weight":
            size = module.embed_dim
            return Parameter(path, shape, "attention", tuple(
                Layer(f"{name}:{part}", path, "attention", tensor, index * size,
                      (index + 1) * size) for index, part in enumerate("qkv")))
        if local in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            return one("attention")
        if local in ("bias_k", "bias_v"):
            return Parameter(path, shape, "bias", reason="an attention bias row (add_bias_kv)")
    if isinstance(module, NORMS):
        return Parameter(path, shape, "norm", reason="a normalization scale (a vector)")
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return Parameter(path, shape, "conv_transpose",
                         reason="transposed convolution: not supported yet")
    if isinstance(module, nn.Bilinear):
        return Parameter(path, shape, "bilinear", reason="a 3-tensor (bilinear form)")
    if isinstance(module, nn.EmbeddingBag):
        return Parameter(path, shape, "embedding_bag", reason="EmbeddingBag: not supported yet")
    if tensor.ndim < 2:
        return Parameter(path, shape, "vector", reason="a vector, not a matrix")
    return Parameter(path, shape, "other",
                     reason=f"a {tensor.ndim}-d parameter of a {type(module).__name__}, "
                            "which factcli does not know how to read as a matrix")


def analyzable(model: nn.Module) -> list[Layer]:
    return [layer for parameter in parameters(model) for layer in parameter.layers]
