"""What every command module shares: the consoles, JSON printing and options several commands take."""

from __future__ import annotations

import json

import click
from rich.console import Console

out = Console()
err = Console(stderr=True)


def print_json(obj: object) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


# How BF16 experts (fine-tunes) become MXFP4: export gguf, export onnx and convert take the same option.
mxfp4_rule_option = click.option(
    "--mxfp4-rule", type=click.Choice(["ocp", "triton"]), default="ocp", show_default=True,
    help="how BF16 experts are quantized: ocp (llama.cpp's quantize_row_mxfp4_ref, byte for byte) or triton "
         "(transformers/triton_kernels: scale rounded up, ties to even); MXFP4 experts are kept as stored")

# Which chat template an artifact carries: export gguf and export onnx take the same option.
chat_template_option = click.option(
    "--chat-template", default="checkpoint", show_default=True, metavar="checkpoint|harmony|FILE",
    help="the chat template the artifact carries: the checkpoint's own (chat_template.jinja or tokenizer_config's; "
         "edgeoss's harmony template when it has none), edgeoss's harmony template, or a Jinja file")
