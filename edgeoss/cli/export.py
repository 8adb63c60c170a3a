"""`edgeoss export FORMAT`: turn a checkpoint into an engine's artifact. One subcommand per format."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape

from ._common import chat_template_option, err, mxfp4_rule_option


@click.group()
def export() -> None:
    """Export a checkpoint (either published layout) to an engine's format."""


@export.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="the .gguf file to write (with --split-max-size: NAME-00001-of-0000N.gguf beside it)")
@click.option("--dense-type", type=click.Choice(["bf16", "f16", "f32", "q8_0"]), default="bf16", show_default=True,
              help="storage of the 2-D dense weights (bf16 keeps the checkpoint's bits); experts stay MXFP4")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path),
              help="a plan.json whose experts.order permutes each layer's experts (hot experts contiguous)")
@click.option("--split-max-size", metavar="SIZE", help="write llama.cpp split shards of at most SIZE (e.g. 2GiB)")
@click.option("--name", help="general.name (default: the model's name)")
@mxfp4_rule_option
@chat_template_option
def gguf(checkpoint: Path, out: Path, dense_type: str, plan_path: Path | None, split_max_size: str | None,
         name: str | None, mxfp4_rule: str, chat_template: str) -> None:
    """Write CHECKPOINT as a GGUF file llama.cpp runs (architecture gpt-oss, MXFP4 experts kept bit-exact)."""
    from ..formats.checkpoint import open_checked
    from ..exporters.gguf import export_gguf, read_plan_expert_order
    from ..units import human, parse_size

    # the exporter checks every scale byte and BF16 value as it reads it, and quantizes BF16 experts to MXFP4
    ckpt = open_checked(checkpoint, deep=False, bf16_experts=True)
    order = read_plan_expert_order(plan_path, ckpt.spec) if plan_path else None
    start = time.perf_counter()
    files = export_gguf(ckpt, out, dense_type=dense_type, expert_order=order,
                        split_max_size=parse_size(split_max_size) if split_max_size else None, name=name,
                        mxfp4_rule=mxfp4_rule, chat_template=chat_template)
    took = time.perf_counter() - start
    total = sum(f.stat().st_size for f in files)
    for f in files:
        click.echo(str(f))
    err.print(f"wrote {escape(str(files[0]))}" + (f" (+{len(files) - 1} shards)" if len(files) > 1 else "") +
              f": {human(total)} in {took:.1f} s, {total / max(took, 1e-9) / 1e6:.0f} MB/s", highlight=False)


from .export_onnx import onnx  # noqa: E402  (its own module: edgeoss/cli/export_onnx.py)

export.add_command(onnx)

COMMANDS = [export]
