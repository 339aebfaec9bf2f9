"""factcli: how a trained network learned its features (FACT, NFA, eNFA, layer by layer).

The public verbs are imported lazily so that `import factcli` (and `fact --help`) stays free of
torch until a verb is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": "factcli.analysis",
    "Analysis": "factcli.analysis",
    "LayerResult": "factcli.analysis",
    "load_checkpoint": "factcli.checkpoint",
    "save_checkpoint": "factcli.checkpoint",
    "Checkpoint": "factcli.checkpoint",
    "load_dataset": "factcli.datasets",
    "read_report": "factcli.report",
    "write_report": "factcli.report",
    "train": "factcli.training",
    "compare": "factcli.comparison",
    "RFM": "factcli.rfm",
    "FactError": "factcli.errors",
    "CheckFailed": "factcli.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'factcli' has no attribute {name!r}")
