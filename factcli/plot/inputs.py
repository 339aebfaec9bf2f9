"""What the figures are drawn from: reports, live analyses, JSON rows, RFM runs.

A report may lack a matrix a figure needs (reports can be written without them); the alpha view
then recomputes NFM and AGOP from the checkpoint the report records, if that file is still the
same (its SHA-256 matches), and says so in the caption.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..compare.comparison import Source
from ..engine.results import Analysis
from ..errors import FactError
from .figures import RFMRun, label_of, missing_matrix_hint

Item = Analysis | Source | RFMRun


def read(path: str | os.PathLike) -> Analysis | RFMRun:
    """A stored report: an `Analysis`, or an `RFMRun` for a `fact rfm --report` file."""
    from ..io.report import read_report

    analysis = read_report(path)
    if analysis.info.get("kind") == "rfm":
        return RFMRun.from_report(path)
    analysis.info["report"] = str(path)
    return analysis


def select(analysis: Analysis, patterns: Sequence[str] | None) -> Analysis:
    """The analysis restricted to the layers matching any glob (each must match one)."""
    if not patterns:
        return analysis
    names = [layer.name for layer in analysis.layers]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise FactError(f"no layer matches {pattern!r}; layers: {', '.join(names)}")
    kept = [layer for layer in analysis.layers
            if any(fnmatch.fnmatchcase(layer.name, p) for p in patterns)]
    return Analysis(kept, analysis.info, analysis.warnings)


def has_matrices(analysis: Analysis, names: Sequence[str]) -> bool:
    return all(name in layer.matrices for layer in analysis.layers for name in names)


def with_agop(analysis: Analysis, data_dir: Any = None, device: str | None = None,
              batch_size: int = 1000) -> tuple[Analysis, str]:
    """(an analysis holding NFM and AGOP for every layer, where they came from)."""
    from ..engine.analysis import analyze
    from ..io.files import sha256

    where = analysis.info.get("report") or label_of(analysis.info)
    if has_matrices(analysis, ("nfm", "agop")):
        return analysis, "stored in the report" if analysis.info.get("report") else \
            "computed from the checkpoint"
    info = analysis.info
    checkpoint = info.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise FactError(f"{where} stores no AGOP and its checkpoint "
                        f"{checkpoint or '(not recorded)'} is not at hand: "
                        + missing_matrix_hint(["nfm", "agop"]))
    recorded = info.get("checkpoint_sha256")
    if recorded and sha256(checkpoint) != recorded:
        raise FactError(f"{where} stores no AGOP, and {checkpoint} changed since the report "
                        "was written (SHA-256 differs): " + missing_matrix_hint(["agop"]))
    limit = info.get("max_samples")
    limit = None if limit is None or (isinstance(limit, float) and math.isnan(limit)) \
        else int(limit)
    fresh = analyze(checkpoint, info.get("dataset"), loss=info.get("loss"),
                    weight_decay=info.get("weight_decay"), alpha=float(info.get("alpha", 0.5)),
                    relations=["agop"], layers=[layer.name for layer in analysis.layers],
                    device=device, batch_size=batch_size, max_samples=limit,
                    seed=int(info.get("sample_seed", 0) or 0), dtype=info.get("dtype"),
                    data_dir=data_dir, keep_matrices=("nfm", "agop"))
    fresh.info["report"] = info.get("report")
    return fresh, f"recomputed from the checkpoint {checkpoint} (the report stores no AGOP)"
