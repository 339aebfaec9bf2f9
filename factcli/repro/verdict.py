"""The paper's values (paper.json, the one place they live), verdicts and the summary files."""

from __future__ import annotations

import fnmatch
import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

VERDICTS = ("reproduced", "not reproduced", "no paper value")


@cache
def paper_values() -> dict[str, dict[str, Any]]:
    text = resources.files("factcli.repro").joinpath("paper.json").read_text(encoding="utf-8")
    return json.loads(text)["values"]


def paper_entry(finding: str, quantity: str) -> dict[str, Any] | None:
    """The entry for `finding/quantity`: an exact key first, else the first matching pattern."""
    key = f"{finding}/{quantity}"
    values = paper_values()
    if key in values:
        return values[key]
    return next((v for k, v in values.items() if "*" in k and fnmatch.fnmatchcase(key, k)), None)


def rule_text(rule: dict[str, Any] | None) -> str:
    if rule is None:
        return ""
    if rule["op"] == "within":
        return f"|measured − paper| ≤ {rule['tol']:g}"
    return f"measured {'≥' if rule['op'] == 'at_least' else '≤'} {rule['than']:g}"


def judge(entry: dict[str, Any] | None, measured: float | None) -> str:
    """reproduced / not reproduced by the entry's rule; no paper value without an entry.
    A quantity that could not be measured (None, NaN) is not reproduced."""
    if entry is None:
        return "no paper value"
    if measured is None or not math.isfinite(measured):
        return "not reproduced"
    rule = entry["rule"]
    if rule["op"] == "within":
        ok = abs(measured - entry["paper"]) <= rule["tol"]
    elif rule["op"] == "at_least":
        ok = measured >= rule["than"]
    else:
        ok = measured <= rule["than"]
    return "reproduced" if ok else "not reproduced"


def quantity(finding: str, name: str, measured: float | None, note: str = "") -> dict[str, Any]:
    """One summary row: the paper's value beside the measured one, with the verdict."""
    entry = paper_entry(finding, name)
    value = None if measured is None or not math.isfinite(measured) else float(measured)
    return {"finding": finding, "quantity": name,
            "paper": None if entry is None else entry["paper"], "measured": value,
            "verdict": judge(entry, value), "rule": rule_text(entry and entry["rule"]),
            "source": "" if entry is None else entry["source"], "note": note}


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats with 4 significant digits, None as –."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_summary(root: Path, rows: list[dict[str, Any]], figures: dict[str, list[str]],
                  header: str) -> None:
    """DIR/summary.jsonl (one object per quantity) and DIR/summary.md (the same as a table,
    then a link to each finding's figures, FINDING/NAME.png)."""
    from ..io.files import atomic_path

    with atomic_path(root / "summary.jsonl") as path:
        path.write_text("".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n"
                                for r in rows))
    columns = ["finding", "quantity", "paper", "measured", "verdict", "rule", "source", "note"]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    text = (f"{header}\n\n" + markdown_table(columns, [[r[c] for c in columns] for r in rows])
            + "\n" + ", ".join(f"{n} {v}" for v, n in counts.items()) + "\n")
    if figures:
        text += "\n## Figures\n\n" + "".join(
            f"- {finding}: " + ", ".join(f"[{name.removesuffix('.png')}]({finding}/{name})"
                                         for name in names) + "\n"
            for finding, names in figures.items())
    with atomic_path(root / "summary.md") as path:
        path.write_text(text)
