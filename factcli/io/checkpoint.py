"""`factcli.checkpoint/1` in `.pt` and `.safetensors` (interfaces.md §1), and plain state_dicts;
training dicts, prefixed names, shards and Hugging Face folders through io/sources.py and io/hf.py.

`.pt` files are read with `torch.load(weights_only=True)` only: a pickle that would run code is
refused, never executed. A model factory (`model.arch = "package.module:function"`) is code too:
a checkpoint may record one, but it is imported and called only when the caller names it
(`--arch` / `model={"arch": ...}`) or passes `trust_model_code=True` (`--trust-model-code`).
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FactError
from ..models.archs import build_model, is_factory, load_weights
from . import validate
from .files import check_writable, save_torch, sha256, write_bytes
from .sources import (
    INDEX_SUFFIXES,
    TRAINING_KEYS,
    fit_names,
    is_state_dict,
    read_folder,
    stripped_views,
    training_dict_weights,
)

FORMAT = "factcli.checkpoint/1"


@dataclass
class Checkpoint:
    """What a checkpoint file holds; `training` carries dataset, loss and weight_decay."""

    model: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None
    trust_model_code: bool = True  # False when a factory came from a file nobody vouched for
    warnings: list[str] = field(default_factory=list)
    optimizer_state: dict[str, Any] | None = None  # AdamW's, from `fact train`'s resume state

    def build(self) -> nn.Module:
        """The model with these weights, in the weights' floating dtype, in eval mode."""
        arch = self.model.get("arch")
        if is_factory(arch) and not self.trust_model_code:
            raise FactError(
                f"{self.path or 'the checkpoint'} names the model factory {arch!r}, which is "
                f"code; it runs only if you ask: pass --arch {arch} (or --trust-model-code, "
                "which runs code named inside the file)")
        if arch == "hf":
            from .hf import build_hf

            model = build_hf(self.model, sum(t.numel() for t in self.state_dict.values()))
        else:
            model = build_model(self.model)
        dtypes = {t.dtype for t in self.state_dict.values() if t.is_floating_point()}
        if len(dtypes) == 1:
            model = model.to(dtypes.pop())
        state_dict, renamed = fit_names(model, self.state_dict)
        self.warnings.extend(m for m in renamed if m not in self.warnings)
        load_weights(model, state_dict)
        return model.eval()


def parse_model_option(text: str) -> dict[str, Any]:
    """`--model` as JSON (`{"arch": "mlp", ...}`) or as `arch=mlp,width=256,...`."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise FactError(f"--model is not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise FactError("--model JSON must be an object")
        return value
    result: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, eq, raw = part.partition("=")
        if not eq:
            raise FactError(f"bad --model entry {part!r}; expected key=value")
        try:
            result[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            result[key.strip()] = raw.strip()
    return result


def _infer_layout(arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Fill in sizes of a built-in arch from the weight shapes of a plain state_dict (whose
    names may carry a wrapper's prefix)."""
    for view in (state_dict, *stripped_views(state_dict)):
        inferred = _infer_sizes(arch, view)
        if inferred:
            return inferred
    return {}


def _infer_sizes(arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    if any(k.endswith(".weight") and v.ndim != 2 for k, v in state_dict.items()):
        return {}  # not a stack of Linear layers: building the arch names the misfit
    if arch == "quadratic":
        hidden, readout = state_dict.get("hidden.weight"), state_dict.get("readout.weight")
        if hidden is None or readout is None:
            return {}
        return {"in_features": hidden.shape[1], "width": hidden.shape[0],
                "out_features": readout.shape[0]}
    weights = sorted((int(k.split(".")[0]), v) for k, v in state_dict.items()
                     if k.endswith(".weight") and k.split(".")[0].isdigit())
    if not weights:
        return {}
    inferred = {"in_features": weights[0][1].shape[1], "out_features": weights[-1][1].shape[0],
                "width": weights[0][1].shape[0] if len(weights) > 1 else 1, "depth": len(weights)}
    if arch == "mlp":
        inferred["bias"] = any(k.endswith(".bias") for k in state_dict)
    return inferred


def read_pt(path: Path) -> Any:
    """The content of a `.pt` file, read with `weights_only=True`; failures are FactErrors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes are noise here
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if blocked:
            raise FactError(f"{path} was refused: loading it would run code ({blocked[0]}); "
                            "factcli reads only tensors and plain data") from None
        raise FactError(f"{path} is not a readable checkpoint (not a torch file, or a pickle "
                        "of more than tensors and plain data)") from None
    except Exception as error:  # torch.load on arbitrary bytes raises many kinds
        if isinstance(error, MemoryError):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FactError(f"{path} is not a readable checkpoint (truncated or not a torch file): "
                        f"{message}") from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise FactError(f"{path} is not a readable safetensors file: {error}") from None
    return tensors, metadata


def _json_field(metadata: dict[str, str], key: str, path: Path) -> Any:
    return validate.parse_json(metadata.get(key, "{}"), f"{path}: metadata field {key!r}")


def load_checkpoint(path: str | os.PathLike, model: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None, *,
                    trust_model_code: bool = False) -> Checkpoint:
    """Read a checkpoint; `model` and `training` entries fill in or override what it lacks.

    A factory named by the file itself is never run by `build()` unless `trust_model_code`;
    one named in `model` is the caller's choice and runs.
    """
    source, notes, optimizer_state = Path(path), [], None
    if source.is_dir() or source.name.endswith(INDEX_SUFFIXES):
        state_dict, stored_model = read_folder(source)
        stored_training = {}
    elif not source.is_file():
        raise FactError(f"checkpoint not found: {source}")
    elif source.suffix == ".safetensors":
        state_dict, metadata = read_safetensors(source)
        stored_model = _json_field(metadata, "model", source)
        stored_training = _json_field(metadata, "training", source)
    else:
        content = read_pt(source)
        inner = training_dict_weights(content) if isinstance(content, dict) else None
        if isinstance(content, dict) and content.get("format") == FORMAT:
            state_dict = content.get("state_dict", {})
            stored_model, stored_training = content.get("model"), content.get("training")
            optimizer_state = _adamw_state(content)
        elif isinstance(content, dict) and isinstance(content.get("format"), str):
            raise FactError(f"{source} has format {content['format']!r}; this factcli reads "
                            f"{FORMAT}")
        elif inner is not None:
            (state_dict, key), stored_model, stored_training = inner, {}, {}
            notes.append(f"{source.name}: the weights under {key!r} of a training dict")
        elif is_state_dict(content):
            state_dict, stored_model, stored_training = content, {}, {}
        else:
            raise FactError(f"{source} is not a checkpoint: expected a {FORMAT} dict, a "
                            "state_dict of tensors or a training dict with one under "
                            f"{', '.join(map(repr, TRAINING_KEYS))}")
    state_dict = validate.state_dict(state_dict, str(source))
    stored_model, stored_training = validate.checkpoint_fields(stored_model, stored_training,
                                                               str(source))
    merged_model = {**stored_model, **(model or {})}
    if "arch" not in merged_model:
        raise FactError(f"{source} does not say which model it holds (a plain state_dict?); "
                        "pass --arch (mlp, linear, quadratic or package.module:factory) "
                        "or --model")
    if merged_model["arch"] in ("mlp", "linear", "quadratic"):
        merged_model = {**_infer_layout(merged_model["arch"], state_dict), **merged_model}
    merged_training = {**stored_training,
                       **{k: v for k, v in (training or {}).items() if v is not None}}
    trusted = trust_model_code or "arch" in (model or {})
    return Checkpoint(merged_model, state_dict, merged_training, str(path),
                      sha256(source) if source.is_file() else None, trusted, notes,
                      optimizer_state)


def _adamw_state(content: dict[str, Any]) -> Any:
    """The AdamW state_dict `fact train --optimizer adamw` keeps under `resume.optimizer`
    (checked when it is used, io/optimizer.py); None for any other optimizer."""
    training, resume = content.get("training"), content.get("resume")
    if not isinstance(training, dict) or training.get("optimizer") != "adamw" or \
            not isinstance(resume, dict):
        return None
    return resume.get("optimizer")


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write atomically: `.safetensors` by extension, `.pt` otherwise."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in checkpoint.state_dict.items()}
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save

        check_writable(path)
        write_bytes(path, save(tensors, metadata={
            "format": FORMAT, "model": json.dumps(checkpoint.model),
            "training": json.dumps(checkpoint.training)}))
    else:
        save_torch(path, {"format": FORMAT, "model": checkpoint.model, "state_dict": tensors,
                          "training": checkpoint.training})
