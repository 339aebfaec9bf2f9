"""factcli: how a trained network learned its features (FACT, NFA, eNFA, layer by layer).

The public verbs are imported lazily so that `import factcli` (and `fact --help`) stays free of
torch until a verb is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": "factcli.engine.analysis",
    "Analysis": "factcli.engine.results",
    "LayerResult": "factcli.engine.results",
    "load_checkpoint": "factcli.io.checkpoint",
    "save_checkpoint": "factcli.io.checkpoint",
    "Checkpoint": "factcli.io.checkpoint",
    "load_dataset": "factcli.data.datasets",
    "read_report": "factcli.io.report",
    "write_report": "factcli.io.report",
    "train": "factcli.training.loop",
    "compare": "factcli.compare.comparison",
    "RFM": "factcli.rfm.estimator",
    "FactError": "factcli.errors",
    "CheckFailed": "factcli.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'factcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Tab completion lists the lazily imported verbs too."""
    return sorted({*globals(), *_EXPORTS})
