"""Hugging Face model folders (`config.json` + weights), through the optional `transformers`.

The model is one of transformers' own classes, named by the config's `architectures`, built
from the config alone: the config is read as JSON here and handed to the class's config type
(`from_dict`), so nothing is looked up on a hub (offline by construction, as `local_files_only`)
and a config that needs custom code (`auto_map`, i.e. `trust_remote_code`) is refused. The
weights are read by factcli's own readers (safetensors, or `torch.load(weights_only=True)`),
never by `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FactError
from .sources import read_json

MAX_CONFIG_BYTES = 4 << 20
INSTALL = "pip install 'factcli[hf]'"


def hf_model(folder: Path) -> dict[str, Any]:
    """The model dict `{"arch": "hf", "class": …, "config": {…}}` of a folder, validated."""
    path = folder / "config.json"
    config = read_json(path, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise FactError(f"{path} is not a JSON object")
    if "auto_map" in config:
        raise FactError(f"{path} names custom model code (auto_map); factcli never runs code "
                        "from a model folder (no trust_remote_code)")
    if not isinstance(config.get("model_type"), str):
        raise FactError(f"{path} has no 'model_type' string; is it a transformers config?")
    names = config.get("architectures")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise FactError(f"{path} has no 'architectures' list naming the model class "
                        "(e.g. [\"GPT2LMHeadModel\"])")
    return {"arch": "hf", "class": names[0], "config": config}


def build_hf(spec: dict[str, Any], weights: int | None = None) -> nn.Module:
    """A transformers model from an `hf` model dict, with freshly initialised weights.

    With `weights` (the number of values the checkpoint holds), the model is first laid out on
    the meta device, and one much larger than its weights is refused before any allocation.
    """
    try:
        import transformers
    except ImportError:
        raise FactError(f"a Hugging Face model needs transformers: {INSTALL}") from None
    name, config = spec.get("class"), spec.get("config")
    if not isinstance(name, str) or not isinstance(config, dict):
        raise FactError("an 'hf' model description needs 'class' (a name) and 'config' (an "
                        "object)")
    if "auto_map" in config:
        raise FactError("the model config names custom code (auto_map); factcli never runs it")
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise FactError(f"{name!r} is not a model class of transformers "
                        f"{transformers.__version__}")
    config = dict(config)
    model_type = config.get("model_type")
    if model_type != getattr(cls.config_class, "model_type", model_type):
        raise FactError(f"{name} takes a {cls.config_class.model_type!r} config, not "
                        f"{model_type!r}")
    try:
        made = cls.config_class.from_dict(config)
        if weights is not None:
            with torch.device("meta"):
                size = sum(p.numel() for p in cls(made).parameters())
            if size > 2 * weights + (1 << 20):
                raise FactError(f"the config describes {name} with {size:,} parameters but the "
                                f"weights hold {weights:,} values")
        built = cls(made)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FactError(f"cannot build {name} from its config: {first}") from None
    return built
