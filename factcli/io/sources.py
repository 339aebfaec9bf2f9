"""Weights as training code in the wild leaves them (interfaces.md §1, "Other sources").

- training dicts `{"model_state_dict": …, "optimizer_state_dict": …, "epoch": …}`: the weights
  under `model_state_dict`, `state_dict` or `model`;
- names prefixed by `torch.compile` (`_orig_mod.`), `DataParallel` (`module.`) or Lightning
  (`model.`): stripped when, and only when, that makes them fit the model (with a warning);
- sharded safetensors: a `*.safetensors.index.json` (its `weight_map` names the shard of each
  tensor) or a folder of them; `pytorch_model.bin` shards likewise, read with
  `weights_only=True`;
- Hugging Face model folders (`config.json` + weights): io/hf.py.

Every file is read with factcli's own safe readers; nothing here runs code from a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FactError

TRAINING_KEYS = ("model_state_dict", "state_dict", "model")
PREFIXES = {"_orig_mod.": "torch.compile", "module.": "DataParallel", "model.": "Lightning"}
MAX_INDEX_BYTES = 64 << 20  # an index lists names and file names only
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")


def is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def training_dict_weights(content: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str] | None:
    """The state_dict inside a training dict and the key it was under, or None."""
    for key in TRAINING_KEYS:
        if key in content and is_state_dict(content[key]):
            return content[key], key
    return None


# --------------------------------------------------------------------------- sharded weights

def read_json(path: Path, limit: int = MAX_INDEX_BYTES) -> Any:
    """A small JSON file, size-checked before it is read."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise FactError(f"{path} is {size} bytes; an index or config this large is not "
                            f"plausible (limit {limit})")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FactError(f"{path} is not readable JSON: {error}") from None


def shard_index(path: Path) -> dict[str, list[str]]:
    """{shard file name: [tensor names]} from an index's `weight_map`, validated."""
    index = read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FactError(f"{path} has no 'weight_map' object naming the shard of each tensor")
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(name, str) or not isinstance(shard, str):
            raise FactError(f"{path}: weight_map must map tensor names to file names")
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise FactError(f"{path}: shard {shard!r} is not a file name in the index's folder")
        shards.setdefault(shard, []).append(name)
    return shards


def read_shards(folder: Path, shards: dict[str, list[str] | None]) -> dict[str, torch.Tensor]:
    """Merge shard files (names listed, or None: take all of a file); no name may repeat."""
    from .checkpoint import read_pt, read_safetensors

    merged: dict[str, torch.Tensor] = {}
    for shard, names in shards.items():
        path = folder / shard
        if not path.is_file():
            raise FactError(f"shard {path} is missing")
        if path.suffix == ".safetensors":
            tensors = read_safetensors(path)[0]
        else:
            tensors = read_pt(path)
            if not is_state_dict(tensors):
                raise FactError(f"shard {path} is not a dict of tensors")
        if names is not None:
            absent = sorted(set(names) - set(tensors))
            if absent:
                raise FactError(f"shard {path} lacks {', '.join(absent[:3])}, which the index "
                                "places there")
            tensors = {name: tensors[name] for name in names}
        repeated = sorted(set(tensors) & set(merged))
        if repeated:
            raise FactError(f"tensor {repeated[0]} appears in more than one shard ({path})")
        merged.update(tensors)
    return merged


def read_index(path: Path) -> dict[str, torch.Tensor]:
    return read_shards(path.parent, dict(shard_index(path)))


def folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a folder: its index if it has one, else its one weights file, else all its
    `.safetensors` files (shards without an index)."""
    indexes = sorted(p for p in folder.iterdir() if p.name.endswith(INDEX_SUFFIXES))
    safetensors_first = sorted(indexes, key=lambda p: not p.name.endswith(INDEX_SUFFIXES[0]))
    if safetensors_first:
        return read_index(safetensors_first[0])
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_shards(folder, {name: None})
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if shards:
        return read_shards(folder, dict.fromkeys(shards))
    raise FactError(f"{folder} holds no weights: expected model.safetensors, a "
                    "*.safetensors.index.json with its shards, *.safetensors files or "
                    "pytorch_model.bin")


def read_folder(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, model dict) of a folder or an index file; a Hugging Face folder (one with a
    `config.json`) also says its model."""
    if source.is_file():
        return read_index(source), {}
    if not source.is_dir():
        raise FactError(f"checkpoint not found: {source}")
    if (source / "config.json").is_file():
        from .hf import hf_model

        return folder_weights(source), hf_model(source)
    return folder_weights(source), {}


# --------------------------------------------------------------------------- fitting names

def stripped_views(state_dict: dict[str, torch.Tensor]):
    """The state_dict's names with known prefixes removed, every way, nearest first (for
    inferring a built-in arch's sizes; `fit_names` decides what is loaded)."""
    frontier = [state_dict]
    for _ in range(len(PREFIXES)):
        frontier = [view for current in frontier for prefix in PREFIXES
                    if (view := {k[len(prefix):]: v for k, v in current.items()
                                 if k.startswith(prefix)})]
        yield from frontier


def fit_names(model: nn.Module, state_dict: dict[str, torch.Tensor]
              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state_dict renamed to fit `model`, with what was done as warnings.

    Tied parameters (one tensor under two names, e.g. an LM head sharing the embedding) need
    only one of their names: files written by `save_pretrained` store one. A prefix is stripped
    only if the stripped names then fit; names without it are then ignored, and said so.
    """
    expected = model.state_dict()
    aliases: dict[str, list[str]] = {}
    for name, tensor in expected.items():
        aliases.setdefault(_storage(tensor), []).append(name)
    groups = [names for names in aliases.values() if len(names) > 1]

    def complete(candidate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        filled = dict(candidate)
        for names in groups:
            present = [n for n in names if n in filled]
            if present:
                filled.update({n: filled[present[0]] for n in names})
        return filled if set(filled) == set(expected) else None

    fitted = complete(state_dict)
    if fitted is not None:
        return fitted, []
    current, stripped, messages = dict(state_dict), [], []
    for _ in range(len(PREFIXES)):  # e.g. module._orig_mod.: one prefix at a time
        for prefix, origin in PREFIXES.items():
            inner = {k[len(prefix):]: v for k, v in current.items() if k.startswith(prefix)}
            if not inner:
                continue
            ignored = len(current) - len(inner)
            fitted = complete(inner)
            if fitted is not None or ignored == 0:
                stripped.append(f"{prefix!r} ({origin})")
                current = inner
                if ignored:
                    messages.append(f"ignored {ignored} weight name(s) without the prefix "
                                    f"{prefix!r}")
                break
        else:
            break
        if fitted is not None:
            messages.insert(0, f"stripped the prefix {' then '.join(stripped)} from the weight "
                               "names to fit the model")
            return fitted, messages
    return state_dict, []  # load_weights names what does not fit, in the file's own names


def _storage(tensor: torch.Tensor) -> tuple:
    """What makes two state_dict entries one tensor (empty tensors are never aliases)."""
    if tensor.numel() == 0:
        return (id(tensor),)
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride())
