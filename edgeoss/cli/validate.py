"""`edgeoss parity` and `edgeoss profile`: does it compute the same thing, and how fast and big is it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import numpy as np
from rich.table import Table

from ._common import err, out, print_json
from ..errors import UsageError


# ---- parity -------------------------------------------------------------------------------------------
def _artifacts(ggufs: tuple[Path, ...], onnxs: tuple[Path, ...]) -> list:
    from ..validate.parity import gguf_artifact, onnx_artifact

    return [gguf_artifact(p) for p in ggufs] + [onnx_artifact(p) for p in onnxs]


def _layouts(checkpoint: Path, tmp: Path) -> tuple[Path, Path | None, Path | None]:
    """(HF folder for transformers, original/ folder for the gpt_oss witness or None, the MXFP4 re-quantization of
    a checkpoint with BF16 experts or None). A BF16 fine-tune is the original itself (transformers loads it as it
    is); gpt_oss reads MXFP4 only, so it has no second witness."""
    from ..formats.checkpoint import Checkpoint
    from ..formats.convert import convert
    from ..formats.spec import BF16_EXPERTS

    with Checkpoint.open(checkpoint, bf16_experts=True) as ckpt:
        layout, folder, nbytes, experts = ckpt.layout, ckpt.folder, ckpt.nbytes, ckpt.experts
    if experts == BF16_EXPERTS:
        if layout != "hf":
            raise UsageError(f"{checkpoint}: parity on BF16 experts needs the Hugging Face layout")
        return folder, None, convert(folder, tmp / "mxfp4", "hf", progress=False)
    if layout == "original":
        return convert(folder, tmp / "hf", "hf", progress=False), folder, None
    if (folder / "original" / "config.json").exists():
        return folder, folder / "original", None
    if nbytes < 2 << 30:  # small enough to re-lay out for the second witness
        return folder, convert(folder, tmp / "original", "original", progress=False), None
    return folder, None, None


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--gguf", "ggufs", multiple=True, type=click.Path(path_type=Path, exists=True), help="GGUF to check")
@click.option("--onnx", "onnxs", multiple=True, type=click.Path(path_type=Path, exists=True), help="ONNX folder")
@click.option("--positions", type=int, default=512, show_default=True, help="tokens compared (random ids)")
@click.option("--text", type=click.Path(path_type=Path, exists=True), help="compare on this text instead")
@click.option("--greedy", "greedy_tokens", type=int, default=32, show_default=True, help="greedy tokens to match")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--report", type=click.Path(path_type=Path), help="also write a markdown report here")
def parity(checkpoint: Path, ggufs, onnxs, positions: int, text: Path | None, greedy_tokens: int, seed: int,
           as_json: bool, report: Path | None) -> None:
    """Compare the original model, the reference runtime and every artifact on the same tokens."""
    from ..validate import parity as run
    from ..validate.profiler import random_prompt
    from ..formats.spec import from_config, load_config

    with tempfile.TemporaryDirectory(prefix="edgeoss-parity-") as tmp:
        hf, witness, requantized = _layouts(checkpoint, Path(tmp))
        spec = from_config(load_config(hf / "config.json"))
        if text:
            from ..formats.tokenizer import encode

            tokens = np.array(encode(text.read_text()), dtype=np.int64)
        else:
            tokens = np.array(random_prompt(spec, positions, seed), dtype=np.int64)
        result = run.run(hf, _artifacts(ggufs, onnxs), tokens, greedy=greedy_tokens, witness=witness,
                         on_progress=lambda s: err.print(f"parity: {s} ..."), requantized=requantized)
    run.save(result, None, report)
    if as_json:
        print_json(result)
        return
    table = Table(title=f"parity over {result['positions']} positions vs transformers fp32")
    for col in ("artifact", "engine", "max abs diff", "mean KL", "top-1", "greedy", "vs emulation", "verdict"):
        table.add_column(col)
    for e in result["entries"]:
        o = e["vs_original"]
        emu = f"{e['vs_emulation']['median_abs']:.1e} median" if e["vs_emulation"] else ""
        greedy = f"{e['greedy_match']}/{e['greedy_tokens']}" if e["greedy_match"] >= 0 else ""
        table.add_row(e["label"], e["engine"], f"{o['max_abs']:.2e}", f"{o['mean_kl']:.2e}",
                      f"{100 * o['top1']:.1f} %", greedy, emu, e["verdict"])
    out.print(table)


# ---- profile --------------------------------------------------------------------------------------------
def _print_profile(r: dict) -> None:
    from ..units import human

    s = lambda x, fmt="{:.2f}": f"{fmt.format(x['median'])} ({fmt.format(x['min'])}–{fmt.format(x['max'])})"  # noqa
    t = Table(title=f"{r['engine']} on {r['artifact']} ({r['model']}): {r['prompt_tokens']}-token prompt, "
                    f"{r['gen_tokens']} generated, {r['runs']} runs (median, min–max)", show_header=False)
    t.add_row("load", f"{r['load_s']:.2f} s")
    t.add_row("time to first token", s(r["ttft_s"], "{:.3f}") + " s")
    t.add_row("prefill", s(r["prefill_tok_s"], "{:.1f}") + " tok/s")
    t.add_row("decode", s(r["decode_tok_s"], "{:.2f}") + " tok/s")
    t.add_row("peak RSS", f"{human(r['peak_rss_bytes'])} (before load {human(r['rss_before_load_bytes'])}, "
                          f"after load {human(r['rss_after_load_bytes'])})")
    t.add_row("read from disk", f"{human(r['disk_read_bytes'])} in all, "
                                f"{human(r['disk_read_bytes_per_decode_token'])}/decode token")
    stats = r["engine_stats"]
    experts = stats.get("experts")
    if experts:
        t.add_row("expert cache", f"{experts['mode']}: hit rate {experts['hit_rate']:.3f} ({experts['hits']} hits, "
                                  f"{experts['misses']} misses), resident {human(experts['resident_bytes'])}")
        t.add_row("expert bytes read", f"{human(stats['decode_bytes_read_per_token'])}/decode token, "
                                       f"{human(stats['prefill_bytes_read'])} in prefills")
    if "time_by_op" in stats:
        total = sum(stats["time_by_op"].values()) or 1.0
        t.add_row("time by op kind", ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in stats["time_by_op"].items()))
        t.add_row("time by layer (ms)", " ".join(f"{1e3 * v:.0f}" for v in stats["time_by_layer"]))
    for key, value in stats.items():
        if not isinstance(value, (list, dict)) and key not in ("engine",) and not key.startswith(("prefill_", "decode_")):
            t.add_row(f"engine: {key}", f"{value:.4g}" if isinstance(value, float) else str(value))
    if r.get("projection"):
        p = r["projection"]
        planner = f"{p['planner_decode_tok_s']:.2f} tok/s" if p["planner_fits"] else "does not fit"
        t.add_row(f"on {p['device']}", f"projected decode {p['decode_tok_s']:.2f} tok/s from the measured "
                                       f"{human(p['ram_bytes_per_token'])} RAM + {human(p['flash_bytes_per_token'])}"
                                       f" flash per token; the planner predicts {planner}")
    m = r["machine"]
    t.add_row("machine", f"{m['cpu']}, {m['cores']} cores, {human(m['ram_bytes'])} RAM, load {m['load_avg_1m']:.2f}")
    out.print(t)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path, exists=True))
@click.option("--engine", type=click.Choice(["reference", "llamacpp", "onnxruntime", "ortgenai"]),
              default="reference", show_default=True)
@click.option("--prompt-tokens", type=int, default=512, show_default=True)
@click.option("--gen-tokens", type=int, default=128, show_default=True)
@click.option("--runs", type=int, default=3, show_default=True)
@click.option("--memory-budget", help="reference, llamacpp: expert budget, e.g. 4GiB (the rest stream from the file)")
@click.option("--sweep", help="reference runtime: comma-separated budgets to sweep, e.g. 1MiB,4MiB,16MiB")
@click.option("--memory-limit", help="run inside a fresh memory cgroup of this size (page cache charged), "
                                     "e.g. 6GiB; a kill is reported, not raised")
@click.option("--device", help="device profile: project the measurement onto it; with --plan, also run inside its app budget")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), help="run with this plan's engine settings")
@click.option("--json", "as_json", is_flag=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="also write the result as JSON here (what `edgeoss plan --calibrate` reads)")
@click.option("--plot", type=click.Path(path_type=Path), help="write a PNG (per-layer time or the sweep curve)")
def profile(artifact: Path, engine: str, prompt_tokens: int, gen_tokens: int, runs: int, memory_budget: str | None,
            sweep: str | None, memory_limit: str | None, device: str | None, plan_path: Path | None, as_json: bool,
            output: Path | None, plot: Path | None) -> None:
    """Measure TTFT, prefill and decode speed, peak memory and disk reads of an engine on an artifact.

    With --device NAME --plan plan.json this is the check that a plan fits: the engine runs with the plan's
    settings inside a memory cgroup as large as the device's app budget (page cache charged)."""
    from .. import plots
    from ..validate.profiler import profile as measure
    from ..units import parse_size

    if sweep:
        if engine != "reference":
            raise UsageError("--sweep runs the reference runtime at several expert budgets: use --engine reference")
        budgets = [parse_size(b) for b in sweep.split(",")]
        results = [measure(engine, artifact, prompt_tokens, gen_tokens, runs, {"memory_budget": b}).as_dict()
                   for b in budgets]
        from ..formats.spec import from_config, load_config, sizes

        per_expert = sizes(from_config(load_config(artifact / "config.json"))).bytes_per_expert
        rows = [{"budget_bytes": b, "decode_tok_s": r["decode_tok_s"]["median"],
                 "misses_per_token": r["engine_stats"]["decode_bytes_read_per_token"] / per_expert,
                 "bytes_read_per_token": r["engine_stats"]["decode_bytes_read_per_token"],
                 "hit_rate": r["engine_stats"]["experts"]["hit_rate"],
                 "peak_rss_bytes": r["peak_rss_bytes"]} for b, r in zip(budgets, results)]
        if plot:
            plots.speed_vs_budget({"reference": [(r["budget_bytes"], r["decode_tok_s"]) for r in rows]}, plot,
                                  misses={"misses/token": [(r["budget_bytes"], r["misses_per_token"] or 0)
                                                           for r in rows]})
        _write_json(output, rows)
        if as_json:
            print_json(rows)
        else:
            t = Table(title=f"reference runtime on {artifact}: decode speed vs expert budget")
            for col in ("budget", "decode tok/s", "misses/token", "bytes read/token", "peak RSS"):
                t.add_column(col)
            from ..units import human
            for r in rows:
                t.add_row(human(r["budget_bytes"]), f"{r['decode_tok_s']:.2f}", f"{r['misses_per_token'] or 0:.2f}",
                          human(r["bytes_read_per_token"] or 0), human(r["peak_rss_bytes"]))
            out.print(t)
        return
    options = {"memory_budget": parse_size(memory_budget)} if memory_budget else {}
    plan = None
    if plan_path:
        from ..planner.plan import read_plan

        plan = read_plan(plan_path)
        options.update(_plan_options(engine, plan, plan_path))
    if device and plan_path and not memory_limit:  # "does this plan fit this device": run inside its budget
        from ..planner.profiles import load_profile

        memory_limit = str(load_profile(device).app_budget_bytes)
    if memory_limit:
        _profile_limited(engine, artifact, parse_size(memory_limit), options, prompt_tokens, gen_tokens, runs,
                         as_json, plan, output)
        return
    result = measure(engine, artifact, prompt_tokens, gen_tokens, runs, options, device=device).as_dict()
    if plot and "time_by_layer" in result["engine_stats"]:
        plots.per_layer_time(result["engine_stats"]["time_by_layer"], plot)
    _write_json(output, result)
    if as_json:
        print_json(result)
    else:
        _print_profile(result)


def _write_json(path: Path | None, obj: object) -> None:
    if path is not None:
        from ..atomic import atomic_file

        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(obj, indent=2, default=str))


def _plan_options(engine: str, plan: dict, path: Path) -> dict:
    """The engine options a plan sets; a plan that does not fit sets nothing and says why."""
    from ..errors import UsageError

    if not plan.get("engines"):
        raise UsageError(f"{path}: the plan does not fit its device ({'; '.join(plan.get('advice') or [])})")
    if engine == "reference":
        return {"plan": str(path)}
    if engine == "llamacpp" and plan["engines"].get("llamacpp_stream"):
        from ..runtimes.llamacpp import options_from_stream_plan

        return options_from_stream_plan(plan["engines"]["llamacpp_stream"], path)
    if engine == "llamacpp":
        from ..runtimes.llamacpp import options_from_plan

        return options_from_plan(plan["engines"]["llamacpp"])
    if engine == "ortgenai":
        return {"max_length": plan["engines"]["ortgenai"]["max_length"]}
    return {}


def _profile_limited(engine: str, artifact: Path, limit: int, options: dict, prompt_tokens: int, gen_tokens: int,
                     runs: int, as_json: bool, plan: dict | None = None, output: Path | None = None) -> None:
    """The profile in a child process inside a memory cgroup: the check that a plan really fits."""
    from ..validate.memlimit import run_profile_limited
    from ..units import human

    run = run_profile_limited(engine, artifact, limit, options=options, prompt_tokens=prompt_tokens,
                              gen_tokens=gen_tokens, runs=runs)
    report = {"memory_limit_bytes": run.limit_bytes, "killed": run.killed, "timed_out": run.timed_out,
              "returncode": run.returncode, "peak_bytes": run.peak_bytes, "oom_kills": run.oom_kills,
              "failcnt": run.failcnt, "major_faults": run.major_faults, "read_bytes": run.read_bytes,
              "page_cache_bytes": run.page_cache_bytes, "wall_s": run.wall_s, "profile": run.result,
              "plan_prediction": (plan or {}).get("prediction"), "plan_memory": (plan or {}).get("memory")}
    _write_json(output, report)
    if as_json:
        print_json(report)
        return
    if run.result:
        _print_profile(run.result)
    verdict = "[red]KILLED (out of memory)[/red]" if run.killed else \
        "[red]timed out[/red]" if run.timed_out else "[green]fits[/green]" if run.ok else \
        f"[red]failed (exit {run.returncode})[/red]"
    t = Table(title=f"inside a {human(run.limit_bytes)} memory cgroup (page cache charged)", show_header=False)
    t.add_row("result", verdict)
    t.add_row("peak usage", f"{human(run.peak_bytes)} of {human(run.limit_bytes)}")
    t.add_row("read from disk", human(run.read_bytes))
    t.add_row("major page faults", str(run.major_faults))
    t.add_row("OOM kills / failcnt", f"{run.oom_kills} / {run.failcnt}")
    if plan and plan.get("prediction"):
        t.add_row("the plan said", f"{human(plan['memory']['total_bytes'])} in all, "
                                   f"{plan['prediction']['decode_tok_s']:.2f} tok/s on {plan['device']['name']}")
    out.print(t)
    if not run.ok and not run.killed and run.stderr.strip():
        err.print(run.stderr.strip().splitlines()[-1], highlight=False)


COMMANDS = [parity, profile]
