"""`edgeoss package`: bundles for Android (llama.cpp) and Windows (onnxruntime-genai), and their verification."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from ._common import err


@click.group()
def package() -> None:
    """Bundle a model for a device (files, checksums, run instructions) and verify bundles."""


def _summary(report) -> None:
    from ..units import human

    err.print(f"wrote {escape(str(report.path))}: {report.files} files, {human(report.nbytes)} ({report.target})",
              highlight=False, soft_wrap=True)
    if report.linked:
        err.print(f"  hard-linked from the input, no bytes copied: {', '.join(report.linked)}", highlight=False)
    if report.copied:
        err.print(f"  [yellow]copied once[/yellow] (the input is on another filesystem, so it cannot be "
                  f"hard-linked): {', '.join(report.copied)}", highlight=False)
    if report.zip:
        err.print(f"  and {escape(str(report.zip))}", highlight=False)
    if report.chat_template and not report.chat_template.startswith("renders as"):
        err.print(f"  [yellow]chat template[/yellow] {escape(report.chat_template)}", highlight=False,
                  soft_wrap=True)
    err.print(f"  next: edgeoss package verify {escape(str(report.path))}; see {escape(str(report.path))}/README.md",
              highlight=False, soft_wrap=True)


@package.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--device", required=True, help="device profile name (edgeoss profiles list) or a .toml file")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="bundle folder to write")
@click.option("--context", type=click.IntRange(min=1),
              help="tokens of context to plan and set up llama.cpp for (default: 8192, gpt-oss's chat default)")
@click.option("--max-file-size", metavar="SIZE", help="largest GGUF file (e.g. 2GiB), below the device's own limit")
@click.option("--dense-type", type=click.Choice(["bf16", "f16", "f32", "q8_0"]), default="bf16", show_default=True,
              help="storage of the non-expert matrices when exporting a checkpoint (a GGUF keeps its own)")
@click.option("--engine", type=click.Choice(["auto", "llamacpp", "llamacpp-stream"]), default="auto",
              show_default=True, help="llamacpp: every expert resident; llamacpp-stream: experts stream from the GGUF "
                                      "through the app's expert store; auto: the first when it fits, else the second")
@click.option("--tools", type=click.Path(path_type=Path),
              help="a tools file (JSON list) the app declares to the model: carried, with its developer-message "
                   "section pre-rendered by openai-harmony (tools_developer.txt)")
@click.option("--force", is_flag=True, help="replace OUT if it exists")
def android(source: Path, device: str, out_dir: Path, context: int | None, max_file_size: str | None, dense_type: str,
            engine: str, tools: Path | None, force: bool) -> None:
    """Bundle a checkpoint or a GGUF for llama.cpp on an Android device.

    SOURCE is a checkpoint folder (exported straight into the bundle) or a .gguf (hard-linked, or re-split when
    a file exceeds the device's limit). The bundle holds GGUF shards within the device's file-size limit,
    plan.json, the engine settings, the tokenizer, the chat template, README.md (adb push and run steps) and
    manifest.json."""
    from ..package.build import DEFAULT_CONTEXT, package_android
    from ..units import parse_size

    limit = parse_size(max_file_size) if max_file_size is not None else None
    report, plan = package_android(source, out_dir, device=device, context=context or DEFAULT_CONTEXT,
                                   max_file_size=limit, dense_type=dense_type, engine=engine, force=force,
                                   tools=tools)
    if not plan["fits"]:
        for line in plan["advice"]:
            err.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    else:
        predicted = plan["prediction"]
        how = "streaming experts (the app's expert store)" if plan["engine"] == "llamacpp-stream" else \
            "every expert resident"
        err.print(f"the plan fits {escape(plan['device']['name'])} with {how}: {predicted['decode_tok_s']:.2f} tok/s "
                  f"decode predicted, TTFT {predicted['ttft_s']:.1f} s for {predicted['prompt_tokens']} tokens",
                  highlight=False, soft_wrap=True)
    _summary(report)


@package.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="bundle folder to write")
@click.option("--experts", type=click.Choice(["mxfp4", "int8", "int4"]),
              help="expert encoding when exporting a checkpoint (default mxfp4: exact, 4.25 bits)")
@click.option("--context", type=click.IntRange(min=1), help="max_length when exporting a checkpoint (default 4096)")
@click.option("--device", help="device profile whose app budget goes into the manifest")
@click.option("--zip", "make_zip", is_flag=True, help="also write OUT.zip (zip64, stored)")
@click.option("--force", is_flag=True, help="replace OUT if it exists")
def windows(source: Path, out_dir: Path, experts: str | None, context: int | None, device: str | None,
            make_zip: bool, force: bool) -> None:
    """Bundle a checkpoint or an ONNX folder for onnxruntime-genai on a Windows CPU.

    SOURCE is a checkpoint folder (exported straight into the bundle) or an `edgeoss export onnx` folder
    (hard-linked)."""
    from ..package.build import package_windows

    _summary(package_windows(source, out_dir, experts=experts, context=context, device=device,
                             make_zip=make_zip, force=force))


@package.command()
@click.argument("bundle", type=click.Path(path_type=Path))
def verify(bundle: Path) -> None:
    """Check a bundle's files against its manifest.json.

    Sizes and sha256 of every file, nothing missing or extra, no symlink, no path leaving the bundle. Prints
    one line per problem and exits 2, or one "ok" line."""
    from ..package.bundle import verify as verify_bundle

    result = verify_bundle(bundle)
    for problem in result.problems:
        err.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    if not result.ok:
        sys.exit(2)
    click.echo(f"ok: {result.files} files, {result.nbytes / 2**30:.2f} GiB verified")


COMMANDS = [package]
