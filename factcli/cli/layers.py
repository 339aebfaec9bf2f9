"""`fact layers`: every parameter of a model, what factcli reads it as, and why not when not."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import command, out, write_delimited, write_jsonl
from .analyze import Arch, Data, DataDir, Model, TrustCode, checkpoint_source


@command("layers")
def layers_command(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint (.pt, .safetensors) or - for "
                                              "stdin.")],
    data: Data = None,
    data_dir: DataDir = None,
    arch: Arch = None,
    model: Model = None,
    trust_model_code: TrustCode = False,
    format: Annotated[str, typer.Option("--format", "-f", help="table, jsonl or tsv.")]
    = "table",
) -> None:
    """Every parameter: kind, matrix shape, uses per sample (one forward on one training
    sample, when the data are known), analyzed or not and why."""
    from ..engine.inventory import inventory
    from ..errors import FactError
    from ..io.checkpoint import load_checkpoint, parse_model_option

    if format not in ("table", "jsonl", "tsv"):
        raise FactError(f"unknown format {format!r}; choose table, jsonl or tsv")
    overrides = parse_model_option(model) if model else {}
    if arch:
        overrides["arch"] = arch
    with checkpoint_source(checkpoint) as path:
        loaded = load_checkpoint(path, overrides or None, trust_model_code=trust_model_code)
    rows = inventory(loaded.build(), data or loaded.training.get("dataset"), data_dir)
    if format == "jsonl":
        write_jsonl(rows)
    elif format == "tsv":
        write_delimited([{**row, "shape": "×".join(map(str, row["shape"]))} for row in rows],
                        "\t")
    else:
        _table(rows)


def _table(rows: list[dict]) -> None:
    from rich.text import Text

    from .render import Cell, Grid, print_grid

    grid = Grid("", ["parameter", "layer", "kind", "shape", "W m×k", "uses", "analyzed"], [],
                left=frozenset({"parameter", "layer", "kind", "analyzed"}),
                wrap=frozenset({"analyzed"}))
    for row in rows:
        matrix = f"{row['m']}×{row['k']}" if row["m"] is not None else "–"
        uses = "–" if row["uses"] is None else str(row["uses"])
        if row["flipped"]:
            uses += f" (+{row['flipped']} as Wᵀ)"
        verdict = Cell("yes", "green") if row["analyzed"] else Cell(
            f"no: {row['reason']}", "dim" if len(row["shape"]) < 2 else "yellow")
        grid.add(row["parameter"], row["layer"] or "–", row["kind"],
                 "×".join(map(str, row["shape"])) or "scalar", matrix, uses, verdict)
    print_grid(grid)
    matrices = [row for row in rows if len(row["shape"]) >= 2 and not row["tied_to"]]
    skipped = sorted({row["parameter"] for row in matrices if not row["analyzed"]})
    out.print(Text(f"{len(matrices)} weight matrices, {len(skipped)} not analyzed"
                   + (f": {', '.join(skipped)}" if skipped else ""), style="dim"), soft_wrap=True)
