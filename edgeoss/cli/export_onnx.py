"""`edgeoss export onnx`: a checkpoint as an ONNX folder for ONNX Runtime and onnxruntime-genai."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ._common import chat_template_option, err, mxfp4_rule_option


@click.command("onnx")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="the folder to write (model.onnx + model.onnx.data + genai_config.json + tokenizer files)")
@click.option("--experts", type=click.Choice(["mxfp4", "int8", "int4"]), default="mxfp4", show_default=True,
              help="mxfp4: the checkpoint's MXFP4 bytes as they are (4.25 bits/weight, exact; onnxruntime >= 1.32, "
                   "fast on AVX-512 CPUs); int8: the MXFP4 values exactly in 8 bits (exact with "
                   "ORT_QMOE_CPU_QNBIT_GEMM=fp32); int4: 4 bits, lossy (least-squares scale per block; the measured "
                   "error is printed)")
@click.option("--dense", type=click.Choice(["compact", "exact"]), default="compact", show_default=True,
              help="compact: attention matrices as four 4-bit digits a weight (MatMulNBits, 2.56 bytes a weight "
                   "in RAM, each within 2^-15 of its block's largest weight); exact: bf16 as stored, 4 bytes a "
                   "weight in RAM once ONNX Runtime widens them (router and unembedding are exact in both)")
@click.option("--max-length", type=int,
              help="tokens onnxruntime-genai preallocates the KV cache for (search.max_length) "
                   "[default: the plan's context, else 4096 or the model's limit if lower]")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path),
              help="a plan.json (edgeoss plan): its ortgenai max_length / context sets --max-length "
                   "(QMoE keeps every expert resident, so the plan's expert order is not needed)")
@mxfp4_rule_option
@chat_template_option
@click.option("--force", is_flag=True, help="replace OUTPUT if it exists")
def onnx(checkpoint: Path, out: Path, experts: str, dense: str, max_length: int | None, plan_path: Path | None,
         mxfp4_rule: str, chat_template: str, force: bool) -> None:
    """Write CHECKPOINT as an ONNX folder (GroupQueryAttention with sinks, QMoE experts, genai_config.json)."""
    from ..exporters.onnx import export_onnx, plan_max_length
    from ..units import human

    if max_length is None and plan_path:
        max_length = plan_max_length(plan_path)
    report = export_onnx(checkpoint, out, experts=experts, max_length=max_length, force=force, dense=dense,
                         mxfp4_rule=mxfp4_rule, chat_template=chat_template)
    click.echo(str(report.path))
    line = f"wrote {escape(str(report.path))}: {human(report.nbytes)} in {report.seconds:.1f} s, experts {experts}"
    if report.weight_error:
        e = report.weight_error
        line += (f" (lossy: weight error rms {e['rms_error']:.3g}, relative {e['relative_rms_error']:.2%}, "
                 f"max {e['max_abs_error']:.3g})")
    elif experts == "int8":
        line += " (exact; parity runs need ORT_QMOE_CPU_QNBIT_GEMM=fp32, which the onnxruntime engine sets)"
    else:
        line += " (exact, as stored; onnxruntime >= 1.32, fast on AVX-512 CPUs)"
    if dense == "compact":
        line += "; dense attention compact (4-bit digits, within 2^-15 of each block's largest weight)"
    err.print(line, highlight=False)
