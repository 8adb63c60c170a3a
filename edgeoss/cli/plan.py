"""`edgeoss plan`: fit a model to a device, place its experts, predict speed; `plan evaluate` replays a trace
through the plan; `plan trace` writes a parametric router trace."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ._common import err, out, print_json


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to the default subcommand."""

    default_command = "make"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        elif not args:
            args = [self.default_command]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup)
def plan() -> None:
    """Plan a model on a device: `edgeoss plan (CKPT | --preset 20b) --device NAME [options]`.

    Also `edgeoss plan evaluate PLAN --trace FILE` and `edgeoss plan trace -o FILE`.
    """


def _spec_and_source(checkpoint: Path | None, preset_name: str | None):
    from ..formats.checkpoint import Checkpoint
    from ..formats.spec import preset

    if (checkpoint is None) == (preset_name is None):
        raise click.UsageError("give a CHECKPOINT folder or --preset NAME (20b, 120b, tiny, odd)")
    if preset_name:
        return preset(preset_name), f"preset {preset_name}"
    with Checkpoint.open(checkpoint, bf16_experts=True) as ckpt:  # the plan needs its spec only
        return ckpt.spec, str(checkpoint)


@plan.command("make")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", help="plan a preset instead of a folder (20b, 120b, tiny, odd)")
@click.option("--device", required=True, help="a shipped profile name (edgeoss profiles list) or a .toml file")
@click.option("--context", type=int, default=8192, show_default=True, help="tokens of context (KV cache size)")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path, dir_okay=False),
              help="router trace (npz) whose statistics choose the pinned experts")
@click.option("--dense-type", type=click.Choice(["f32", "f16", "bf16", "q8_0"]), default="bf16", show_default=True)
@click.option("--kv-type", type=click.Choice(["f32", "f16", "bf16", "q8_0"]), default="f16", show_default=True)
@click.option("--engine", type=click.Choice(["reference", "llamacpp", "llamacpp-stream", "ortgenai", "ortgenai-int4"]),
              default="reference", show_default=True,
              help="reference and llamacpp-stream (llama.cpp with edgeoss's expert store) stream experts from "
                   "flash; llamacpp keeps them all resident; ortgenai (MXFP4 experts) and ortgenai-int4 map them all "
                   "(onnxruntime-genai)")
@click.option("--calibrate", "calibration_path", type=click.Path(path_type=Path, dir_okay=False),
              help="`edgeoss profile --json` output of the same engine on the device, or JSON efficiencies")
@click.option("--prompt-tokens", type=int, default=512, show_default=True, help="prompt length for TTFT")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="write the plan here")
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
def make(checkpoint, preset_name, device, context, trace_path, dense_type, kv_type, engine, calibration_path,
         prompt_tokens, output, as_json) -> None:
    """Memory breakdown, expert placement, predicted speed and engine settings (the default command)."""
    from ..planner.plan import PlanRequest, load_calibration, make_plan, write_plan
    from ..planner.profiles import load_profile
    from ..formats.routing_trace import read_trace

    spec, source = _spec_and_source(checkpoint, preset_name)
    request = PlanRequest(
        spec=spec, device=load_profile(device), context=context, model_source=source, engine=engine,
        dense_type=dense_type, kv_type=kv_type, trace=read_trace(trace_path) if trace_path else None,
        trace_source=str(trace_path or ""), prompt_tokens=prompt_tokens)
    measurement = None
    if calibration_path:
        from ..planner.measured import against, load_measurement

        request = request.replace(calibration=load_calibration(calibration_path, request))
        measurement = load_measurement(calibration_path)
    result = make_plan(request)
    if measurement is not None:
        result["measured"] = against(request, measurement)
    if output:
        write_plan(output, result)
    if as_json:
        print_json(result)
    else:
        _print_plan(result)
    if output:
        err.print(f"wrote {output}")


def _print_plan(p: dict) -> None:
    from ..units import human

    m, model, device = p["memory"], p["model"], p["device"]
    title = (f"{model['name']} on {device['name']} ({device['description']}), {p['engine']} engine, "
             f"context {p['context']}")
    t = Table(title=title, show_header=False)
    t.add_column("part")
    t.add_column("bytes", justify="right")
    t.add_column("note")
    experts = p["experts"]
    resident_note = (f"{experts['resident_slots']} of {experts['total_experts']} experts "
                     f"({100 * experts['resident_fraction']:.0f} %)" if experts else "")
    rows = [("dense weights", m["dense_bytes"], model["dense_type"]),
            ("KV cache", m["kv_cache_bytes"], f"{model['kv_type']}: full layers {human(m['kv_full_bytes'])}, "
                                              f"sliding {human(m['kv_sliding_bytes'])}"),
            ("activations / scratch", m["scratch_bytes"], ""),
            ("engine overhead", m["engine_overhead_bytes"],
             f"incl. repacked expert copy {human(m['repack_copy_bytes'])}" if m["repack_copy_bytes"] else ""),
            ("resident experts", m["resident_expert_bytes"], resident_note)]
    for name, value, note in rows:
        t.add_row(name, human(value), note)
    t.add_row("[bold]total[/bold]", f"[bold]{human(m['total_bytes'])}[/bold]", "")
    if m["gpu_bytes"]:
        t.add_row("  in GPU memory", human(m["gpu_bytes"]), f"GPU budget {human(m['gpu_budget_bytes'])}")
        t.add_row("  in RAM", human(m["ram_bytes"]), "")
    t.add_row("app budget", human(m["app_budget_bytes"]), "")
    t.add_row("headroom", human(m["headroom_bytes"]), f"the planner keeps at least {human(m['reserve_bytes'])}")
    out.print(t)
    if not p["fits"]:
        out.print("[red bold]does not fit[/red bold]")
        for line in p["advice"]:
            out.print(f"- {line}", soft_wrap=True)
        return
    per_layer = [len(ids) for ids in experts["pinned"].values()]
    out.print(f"[green bold]fits[/green bold]{' in RAM' if p['fits_in_ram'] else ', streaming experts'}: "
              f"pinned {sum(per_layer)} ({min(per_layer)}-{max(per_layer)} per layer), "
              f"{experts['cache_slots']} cache slots, {experts['total_experts'] - experts['resident_slots']} "
              f"on flash only; expert budget {human(experts['budget_bytes'])} (popularity: "
              f"{experts['popularity_source']})")
    pr = p["prediction"]
    u = pr["uncertainty"]
    how = "calibrated" if u["why"].startswith("calibrated") else "uncalibrated: --calibrate narrows it"
    out.print(f"predicted: [bold]{pr['decode_tok_s']:.2f} tok/s[/bold] decode (±{100 * u['fraction']:.0f} %, {how}) "
              f"({1e3 * pr['decode_s_per_token']:.0f} ms/token: memory {1e3 * pr['memory_s_per_token']:.0f}, "
              f"flash {1e3 * pr['flash_s_per_token']:.0f}, compute {1e3 * pr['compute_s_per_token']:.0f}), "
              f"TTFT {pr['ttft_s']:.1f} s for {pr['prompt_tokens']} tokens, {pr['misses_per_token']:.1f} misses/token "
              f"= {pr['miss_bytes_per_token'] / 1e6:.0f} MB/token from flash, load {pr['load_s']:.1f} s")
    llama = p["engines"]["llamacpp"]
    out.print(f"llama.cpp ({'fits' if llama['fits'] else 'does not fit'}, {human(llama['ram_bytes'])} RAM"
              f"{', ' + human(llama['gpu_bytes']) + ' GPU' if llama['gpu_bytes'] else ''}): "
              f"llama-server -m MODEL.gguf {' '.join(llama['flags'])}", soft_wrap=True)
    stream = p["engines"].get("llamacpp_stream")
    onnx = p["engines"]["ortgenai"]
    if "by_isa" in onnx:
        isas = ", ".join(f"{isa} {v['decode_tok_s']:.2f} tok/s" for isa, v in onnx["by_isa"].items())
        out.print(f"onnxruntime-genai: edgeoss export onnx CHECKPOINT {' '.join(onnx['flags'])} (max_length "
                  f"{onnx['max_length']}; decode by CPU vector ISA: {isas})", soft_wrap=True)
    elif stream:
        out.print(f"llama.cpp with edgeoss's expert store: edgeoss run MODEL.gguf {' '.join(stream['flags'])} "
                  f"(expert budget {human(stream['memory_budget'])}, n_ubatch {stream['n_ubatch']}, mmap, no repack)",
                  soft_wrap=True)
    else:
        out.print(f"reference runtime: --plan PLAN.json (expert budget "
                  f"{human(p['engines']['reference']['memory_budget'])})")
    if "measured" in p:
        _print_measured(p["measured"])
    for line in p["advice"]:
        out.print(f"- {line}", soft_wrap=True)


def _print_measured(m: dict) -> None:
    """Predicted against measured, before and after calibration, at the measurement's context."""
    from ..units import human

    def row(name: str, v: dict, unit: str) -> str:
        if not v["measured"]:
            return f"{name} not measured"
        return (f"{name} {v['measured']:.2f} {unit} measured; predicted {v['uncalibrated']:.2f} uncalibrated "
                f"({100 * v['uncalibrated_error']:+.0f} %), {v['calibrated']:.2f} calibrated "
                f"({100 * v['calibrated_error']:+.0f} %)")

    peak = m["peak_bytes"]
    peak_text = (f"peak {human(peak['measured'])} measured, {human(peak['planned'])} planned "
                 f"({100 * (peak['planned'] / peak['measured'] - 1):+.0f} %)" if peak["measured"] else "peak not measured")
    out.print(f"measured ({m['engine']}{' on ' + m['device'] if m['device'] else ''}, context {m['context']}, "
              f"{m['prompt_tokens']}-token prompt): {row('decode', m['decode_tok_s'], 'tok/s')}; "
              f"{row('TTFT', m['ttft_s'], 's')}; {peak_text}", soft_wrap=True)


@plan.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--trace", "trace_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="router trace (npz) to replay")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), help="write a misses-vs-residency PNG")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def evaluate(plan_path: Path, trace_path: Path, plot: Path | None, as_json: bool) -> None:
    """Misses/token and flash bytes/token of the plan vs LRU, LFU and Belady at the same slot count."""
    from ..planner.plan import evaluate as run
    from ..planner.plan import plot_curve, read_plan
    from ..formats.routing_trace import read_trace
    from ..units import human

    plan_dict = read_plan(plan_path)
    result = run(plan_dict, read_trace(trace_path))
    if plot:
        plot_curve(result, plot, f"{plan_dict['model']['name']}, {trace_path.name} ({result['tokens']} tokens)")
    if as_json:
        print_json(result)
    else:
        t = Table(title=f"{result['tokens']} tokens, {result['slots']} expert slots "
                        f"({100 * result['resident_fraction']:.0f} % resident)")
        for column in ("policy", "misses/token", "flash/token", "hit rate", "vs belady"):
            t.add_column(column, justify="right")
        best = result["policies"]["belady"]["misses_per_token"]
        for name, r in result["policies"].items():
            ratio = f"{r['misses_per_token'] / best:.2f}x" if best else "-"
            t.add_row(name, f"{r['misses_per_token']:.2f}", human(r["flash_bytes_per_token"]),
                      f"{100 * r['hit_rate']:.1f} %", ratio)
        out.print(t)
        out.print(f"the plan predicted {result['predicted_misses_per_token']:.2f} misses/token")
    if plot:
        err.print(f"wrote {plot}")


@plan.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", help="a preset's shape instead of a folder's")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--tokens", type=click.IntRange(1), default=2048, show_default=True)
@click.option("--zipf", type=click.FloatRange(0), default=1.0, show_default=True, help="popularity skew")
@click.option("--reuse", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="probability of choosing each of the previous token's experts again")
@click.option("--seed", type=int, default=0, show_default=True, help="the router (which experts are popular)")
@click.option("--sample", type=int, default=0, show_default=True, help="the token stream")
def trace(checkpoint, preset_name, output, tokens, zipf, reuse, seed, sample) -> None:
    """Write a parametric router trace (npz, the reference runtime's trace format)."""
    from ..formats.routing_trace import write_trace
    from ..planner.traces import parametric_trace

    spec, _ = _spec_and_source(checkpoint, preset_name)
    write_trace(output, parametric_trace(tokens, spec.num_hidden_layers, spec.num_local_experts,
                                         spec.num_experts_per_tok, zipf=zipf, reuse=reuse, seed=seed, sample=sample))
    err.print(f"wrote {output}: {tokens} tokens x {spec.num_hidden_layers} layers, top-{spec.num_experts_per_tok} "
              f"of {spec.num_local_experts}, zipf {zipf:g}, reuse {reuse:g}")


COMMANDS = [plan]
