"""`edgeoss synth` and `edgeoss inspect`: make and describe checkpoints."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ._common import err, mxfp4_rule_option, out, print_json
from ..errors import UsageError


# ---- synth -----------------------------------------------------------------------------------------
@click.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", default="tiny", show_default=True,
              help="tiny | odd | 20b | 120b (full-size presets stream to disk)")
@click.option("--layout", type=click.Choice(["hf", "original"]), default="hf", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="override a spec field")
@click.option("--experts", type=click.Choice(["mxfp4", "bf16"]), default="mxfp4", show_default=True,
              help="mxfp4 as gpt-oss is published, or bf16 as a fine-tune is (Hugging Face layout only)")
@click.option("--force", is_flag=True, help="replace OUT_DIR if it exists")
def synth(out_dir: Path, preset_name: str, layout: str, seed: int, settings: tuple[str, ...], experts: str,
          force: bool) -> None:
    """Write a synthetic checkpoint folder exactly in a published layout."""
    import time

    from ..formats.spec import apply_overrides, preset, tensor_table
    from ..formats.synth import synthesize
    from ..units import human

    spec = apply_overrides(preset(preset_name), list(settings))
    if experts == "bf16" and layout != "hf":
        raise UsageError("--experts bf16 is a Hugging Face layout (fine-tunes publish no original/ folder)")
    start = time.perf_counter()
    synthesize(out_dir, spec, layout, seed=seed, force=force, experts=experts)
    took = time.perf_counter() - start
    nbytes = sum(t.nbytes for t in tensor_table(spec, experts))
    err.print(f"wrote {out_dir} ({layout} layout, {spec.name}, {human(nbytes)} of tensors) "
              f"in {took:.1f} s, {nbytes / took / 1e6:.0f} MB/s")


# ---- inspect ---------------------------------------------------------------------------------------
@click.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", help="describe a preset instead of a folder (20b, 120b, tiny, odd)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def inspect(checkpoint: Path | None, preset_name: str | None, as_json: bool) -> None:
    """Layout, spec, parameter counts, bytes per component, KV cache per token, validation."""
    from ..formats.inspect import checkpoint_report, spec_report
    from ..formats.spec import preset

    if (checkpoint is None) == (preset_name is None):
        raise click.UsageError("give a CHECKPOINT folder or --preset NAME")
    report = checkpoint_report(checkpoint) if checkpoint else {"preset": preset_name,
                                                               **spec_report(preset(preset_name))}
    if as_json:
        print_json(report)
    else:
        _print_inspect(report)


def _print_inspect(r: dict) -> None:
    from ..units import count, human

    s = r["spec"]
    title = f"{s['name']}" + (f" — {r['layout']} layout, {r['experts']} experts, {r['path']}" if "layout" in r
                              else " (preset)")
    t = Table(title=title, show_header=False)
    t.add_row("layers / experts / top-k", f"{s['num_hidden_layers']} / {s['num_local_experts']} / "
                                          f"{s['num_experts_per_tok']}")
    t.add_row("hidden / intermediate / vocab", f"{s['hidden_size']} / {s['intermediate_size']} / {s['vocab_size']}")
    t.add_row("heads / kv heads / head dim", f"{s['num_attention_heads']} / {s['num_key_value_heads']} / "
                                             f"{s['head_dim']}")
    t.add_row("sliding window / layers sliding", f"{s['sliding_window']} / {r['kv_cache']['sliding_layers']} "
                                                 f"of {s['num_hidden_layers']}")
    t.add_row("rope", f"theta {s['rope_theta']:g}, YaRN x{s['rope_factor']:g} from {s['rope_original_context']}"
                      f" (truncate {s['rope_truncate']})")
    p, b = r["params"], r["bytes"]
    t.add_row("parameters total", f"{p['total']:,} ({count(p['total'])})")
    t.add_row("parameters active / token", f"{p['active_per_token']:,} ({count(p['active_per_token'])})")
    t.add_row("tensor bytes", f"{b['total']:,} ({human(b['total'])})")
    for kind in ("experts", "attention", "embedding", "unembedding", "router", "norm"):
        t.add_row(f"  {kind}", f"{b[kind]:,} ({100 * b[kind] / b['total']:.1f} %)")
    e, kv = r["expert"], r["kv_cache"]
    t.add_row("one expert (one layer)", f"{e['bytes']:,} bytes, {e['params']:,} params; {e['experts_total']} in all")
    t.add_row("KV cache (bf16)", f"{human(kv['bytes_per_token_full_layers_bf16'])}/token for {kv['full_layers']} full "
                                 f"layers + {human(kv['sliding_layers_cap_bytes_bf16'])} for the sliding windows")
    if "files" in r:
        t.add_row("files", ", ".join(f"{f['name']} ({human(f['bytes'])})" for f in r["files"]))
        t.add_row("validation", f"[green]{r['validation']}[/green]")
    out.print(t)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--layout", type=click.Choice(["hf", "original"]), required=True, help="layout to write")
@mxfp4_rule_option
@click.option("--force", is_flag=True, help="replace OUT_DIR if it exists")
def convert(src: Path, out_dir: Path, layout: str, mxfp4_rule: str, force: bool) -> None:
    """Re-lay a checkpoint into a published layout (bit-exact, streaming); BF16 experts (a fine-tune) become the
    published MXFP4 on the way."""
    from ..formats.convert import convert as run

    run(src, out_dir, layout, force=force, mxfp4_rule=mxfp4_rule)
    err.print(f"wrote {out_dir} ({layout} layout)")


COMMANDS = [synth, inspect, convert]
