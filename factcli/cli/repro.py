"""`fact repro`: re-run the paper's findings and judge them against its numbers (docs/repro.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import command, err, out

EPILOG = ("Examples: fact repro --list;  fact repro fig11 (into runs/repro);  "
          "fact repro fig2-mnist fig8 --full --data-dir ~/data --out repro-full")


@command("repro", epilog=EPILOG)
def repro_command(
    findings: Annotated[Optional[list[str]], typer.Argument(
        help="Findings to run (see --list), or all (fig2-cifar10 only with --data-dir).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the findings and exit.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Shipped data, minutes on a CPU "
                                        "(default).")] = False,
    full: Annotated[bool, typer.Option("--full", help="The paper's settings (hours; MNIST/"
                                       "CIFAR-10 files in --data-dir).")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", help="Tiny settings that only exercise the "
                                        "commands (seconds; the numbers mean nothing).")] = False,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for every output, the "
                                          "commands and the summary.")] = Path("runs/repro"),
    data_dir: Annotated[Optional[Path], typer.Option(
        help="Folder with mnist/cifar10 files (default: $FACT_DATA_DIR); table1 also runs "
             "each UCI folder DIR/uci/NAME/ and KEEL file DIR/keel/*.dat in it.")] = None,
) -> None:
    """Reproduce the paper's figures and tables: train → analyze/rfm → table, with verdicts."""
    from ..errors import FactError
    from ..repro import FINDINGS, reproduce

    if list_:
        for name, finding in FINDINGS.items():
            out.print(f"{name}\t{finding.summary}", highlight=False, soft_wrap=True)
        return
    if quick + full + smoke > 1:
        raise FactError("choose one of --quick, --full, --smoke")
    if not findings:
        raise FactError("name the findings to run (or all); `fact repro --list` lists them")
    # `all`: every finding that runs on what is at hand (CIFAR-10 only with --data-dir)
    names = ([n for n in FINDINGS if n != "fig2-cifar10" or data_dir] if findings == ["all"]
             else findings)
    mode = "full" if full else "smoke" if smoke else "quick"
    rows = reproduce(names, out_dir, mode, data_dir,
                     say=lambda line: err.print(line, highlight=False, soft_wrap=True,
                                                markup=False))
    for row in rows:
        measured = "–" if row["measured"] is None else f"{row['measured']:.4g}"
        out.print(f"{row['finding']}\t{row['quantity']}\t{measured}\t{row['verdict']}",
                  highlight=False, soft_wrap=True, markup=False)
    err.print(f"summary: {out_dir / 'summary.md'}", highlight=False, markup=False)
