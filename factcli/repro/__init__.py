"""`fact repro`: the paper's findings, each re-run with `fact` commands and judged against the
paper's numbers (paper.json). Library entry point: `reproduce`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import FactError
from .findings import FINDINGS, MODES, Context
from .runner import Runner, write_script
from .verdict import write_summary

__all__ = ["FINDINGS", "MODES", "reproduce"]


def reproduce(findings: Sequence[str], out: str | Path, mode: str = "quick",
              data_dir: str | Path | None = None,
              say: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """Run each finding into `out` (resuming finished steps) and rewrite the summary.

    Each finding leaves OUT/FINDING/commands.sh (its commands, runnable by hand from OUT),
    OUT/FINDING/quantities.jsonl and, when matplotlib is importable, its figures
    OUT/FINDING/*.png (`fact plot` steps; without it one notice through `say`, and no figures);
    OUT/summary.{md,jsonl} cover every finding run into OUT so far. Returns the rows of the
    findings run now.
    """
    if mode not in MODES:
        raise FactError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    for name in findings:
        if name not in FINDINGS:
            raise FactError(f"unknown finding {name!r}; `fact repro --list` lists them")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    runner = Runner(root.resolve(), say)
    figures = _can_plot()
    if not figures:
        say("no figures: matplotlib is not installed (pip install 'factcli[plot]')")
    rows: list[dict[str, Any]] = []
    for name in findings:
        ctx = Context(name, root.resolve(), mode, runner,
                      None if data_dir is None else Path(data_dir).resolve(), figures)
        start, ran = time.perf_counter(), len(runner.ran)
        try:
            FINDINGS[name].run(ctx)
        finally:
            write_script(root / name / "commands.sh", name, ctx.steps)
        for row in ctx.rows:
            row["mode"] = mode
        (root / name / "quantities.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ctx.rows))
        timing = root / name / "timing.json"
        if len(runner.ran) > ran or not timing.exists():  # a run that only reused keeps it
            timing.write_text(json.dumps(
                {"mode": mode, "seconds": round(time.perf_counter() - start, 1),
                 "steps": len(ctx.steps), "steps_run": len(runner.ran) - ran}) + "\n")
        rows += ctx.rows
    _summarize(root)
    return rows


def _can_plot() -> bool:
    """Whether `fact plot` can draw (matplotlib comes with the optional extra factcli[plot])."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _summarize(root: Path) -> None:
    """summary.{md,jsonl} over every finding whose quantities are in `root`."""
    present = [name for name in FINDINGS if (root / name / "quantities.jsonl").exists()]
    everything = [json.loads(line) for name in present
                  for line in (root / name / "quantities.jsonl").read_text().splitlines()]
    timing = []
    for name in present:
        record = json.loads((root / name / "timing.json").read_text())
        timing.append(f"{name} ({record['mode']}) {record['seconds']:g} s, "
                      f"{record['steps_run']} of {record['steps']} steps run")
    figures = {name: sorted(p.name for p in (root / name).glob("*.png")) for name in present}
    write_summary(root, everything, {name: f for name, f in figures.items() if f},
                  "# fact repro: the paper's findings, measured\n\n"
                  "Paper: Boix-Adsera, Mallinar, Simon, Belkin, arXiv 2507.05644. Each finding's "
                  "commands are in FINDING/commands.sh (run from this folder). Wall time of the "
                  "last run that computed something (steps it reused took no time): "
                  + "; ".join(timing) + ".")
