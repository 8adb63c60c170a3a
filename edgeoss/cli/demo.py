"""`edgeoss demo`: the whole pipeline on the built-in default."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ._common import err, out


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True)
@click.option("--device", default="pixel-9-pro", show_default=True, help="device profile to plan for")
def demo(workdir: Path, device: str) -> None:
    """Synthesize the tiny model and take it through the whole pipeline, with a summary at the end."""
    from .. import demo as pipeline
    from ..units import human

    state = pipeline.Demo(workdir=workdir, device=device)
    total = len(pipeline.STEPS)
    status = {}

    def on_step(i: int, name: str) -> None:
        status["name"] = name
        err.print(f"[bold]\\[{i + 1}/{total}][/bold] {name} ...")

    def on_done(row: pipeline.Row, took: float) -> None:
        err.print(f"      done in {took:.1f} s" + (f": {row.figures}" if row.figures else ""), highlight=False)

    rows = pipeline.run(state, on_step, on_done)
    table = Table(title="edgeoss demo: what was produced")
    for column in ("step", "output", "size", "figures"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.step, r.output, human(r.size) if r.size is not None else "", r.figures)
    out.print(table)
    out.print("Next commands to try:")
    for command in pipeline.NEXT_COMMANDS:
        out.print(f"  {command.format(**{k: str(v) for k, v in state.paths.items()})}", highlight=False)


COMMANDS = [demo]
