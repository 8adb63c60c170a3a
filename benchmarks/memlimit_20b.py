"""gpt-oss under a phone's memory budget, page cache charged: tok/s, peak memory, flash reads, killed or not.

    python benchmarks/memlimit_20b.py /work/bench/20b-hf [--gguf 20b.gguf] [--device pixel-9-pro|this-machine]
        [--limits 4GiB,6GiB,8GiB,12GiB] [--prompt-tokens 32] [--gen-tokens 16] [--out memlimit-20b]
        [--settings repack,no-repack,llamacpp-plan,stream,reference] [--calibrate-at 8GiB] [--trace-tokens N]
        [--warmup]

Every run is one engine, loaded cold (its files evicted from the page cache first) in a fresh process inside a
memory cgroup limited to the budget (`edgeoss.validate.memlimit`): anonymous memory AND the page cache of the weights
count, as on a phone. Budgets: the device profile's app budget and each --limits value. Settings:
- llama.cpp, mmap (its default), experts repacked: x86 copies the MXFP4 experts into anonymous memory at load;
- llama.cpp, mmap, no repack (`--no-repack`): the experts stay file-backed (reclaimable page cache);
- llama.cpp with the plan's settings for that budget (`edgeoss.planner.plan`; on a CPU-only device: no mmap, so the
  experts are read once into the repacked buffer);
- llama.cpp with edgeoss's expert store and the plan made for it (`--engine llamacpp-stream`): mmap, no repack,
  the plan's pinned experts and expert budget, the rest streamed from the file (`runtimes/llamacpp_store.py`);
- the reference runtime with the plan's pinned experts and expert budget (a budget the plan says cannot hold
  the dense weights is listed as "plan: does not fit", not run).
Each run reports the cgroup's peak over the whole run, and apart: up to the end of the load (and the warm-up,
with --warmup) and after it. llama.cpp's mmap load pre-reads the whole file (MAP_POPULATE), so its load peak is
the limit wherever the file is larger; the run peak is what the engine holds while it works.
llama.cpp runs use an f16 KV cache (llama.cpp's default) and n_ctx = --context, and this machine's cores; the
plan's columns give its predicted fit, RAM, decode speed and flash bytes per token for the device
(`--device this-machine` measures this machine first, so that predictions and measurements are comparable;
`--calibrate-at B` first runs each streaming engine's plan at budget B and calibrates that engine's plans with it,
`edgeoss plan --calibrate`; `--calibrate-at same`: each budget's plan with a run of its own). A setting whose
piece is missing (no GGUF, no llama-cpp-python, no edgeoss.planner.plan, no reference runtime) is skipped and
named.

Prints a table, the prediction error of each planned run (decode tok/s uncalibrated and calibrated, peak
against the plan's RAM), writes RESULTS.json and a PNG of decode tok/s against the budget (one line per setting;
a killed run is drawn at 0). Needs root and a cgroup memory controller (exit 2 with the reason otherwise).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402

from rich.console import Console  # noqa: E402

from edgeoss.formats.checkpoint import Checkpoint  # noqa: E402
from edgeoss.errors import EdgeossError  # noqa: E402
from edgeoss.validate.memlimit import cgroups_available, run_profile_limited  # noqa: E402
from edgeoss.units import human, parse_size  # noqa: E402

console = Console(stderr=True)  # progress; the results go to stdout


@dataclass(frozen=True)
class Setting:
    label: str
    engine: str
    artifact: Path
    options: dict[str, Any] = field(default_factory=dict)
    planned: dict[str, Any] | None = None  # the planner's fit and prediction for this budget
    runnable: bool = True  # False: the plan says the engine cannot start (nothing to measure)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def plan_request(spec: Any, source: Path, device: Any, budget: int, engine: str, args: argparse.Namespace):
    """edgeoss.planner.plan's request for this model on `device` with the app budget set to `budget`."""
    from edgeoss.planner.plan import PlanRequest

    device = replace(device, app_budget_bytes=budget, ram_bytes=max(device.ram_bytes, budget))
    request = PlanRequest(spec, device, args.context, model_source=str(source), engine=engine,
                          prompt_tokens=args.prompt_tokens, decode_positions=args.prompt_tokens + args.gen_tokens,
                          trace=args.router_trace,
                          trace_source=str(args.trace_path or ""))
    calibration = args.calibrate.get((engine, budget)) or args.calibrate.get(engine)
    if calibration:
        from edgeoss.planner.plan import load_calibration

        request = request.replace(calibration=load_calibration(calibration, request))
    return request


def record_trace(hf: Path, args: argparse.Namespace) -> Path:
    """The model's routing on another random prompt (seed 1; the profiles use seed 0), decoded greedily with
    every expert in RAM: the trace the plans pin and predict from (`edgeoss plan --trace`)."""
    import numpy as np

    from edgeoss.runtimes.reference import ReferenceEngine
    from edgeoss.formats.routing_trace import write_trace

    engine = ReferenceEngine(hf, trace=True)
    try:
        logits = engine.prefill(np.random.default_rng(1).integers(0, engine.spec.vocab_size, args.prompt_tokens))[-1]
        for _ in range(args.trace_tokens):
            logits = engine.step(int(np.argmax(logits)))
        return write_trace(args.out / "router-trace.npz", engine.routing_trace())
    finally:
        engine.close()


def settings(hf: Path, gguf: Path | None, device: Any, budget: int, args: argparse.Namespace,
             skipped: dict[str, str]) -> list[Setting]:
    """What runs at this budget; a setting that cannot run is recorded in `skipped` (label -> why)."""
    spec = Checkpoint.open(hf).spec
    runs = llamacpp_runs(spec, gguf, device, budget, args, skipped)
    if "stream" in args.settings:
        runs += planned_runs(spec, gguf, device, budget, "llamacpp-stream", args, skipped)
    if "reference" in args.settings:
        runs += planned_runs(spec, hf, device, budget, "reference", args, skipped)
    return runs


def _why_not_plan(device: Any) -> str | None:
    return ("edgeoss.planner.plan missing" if not have("edgeoss.planner.plan") else
            "no device profile (--device none)" if device is None else None)


def llamacpp_runs(spec: Any, gguf: Path | None, device: Any, budget: int, args: argparse.Namespace,
                  skipped: dict[str, str]) -> list[Setting]:
    """llama.cpp as shipped (mmap, with and without its x86 repack) and with the plan's settings."""
    runs = []
    llama = gguf is not None and have("llama_cpp") and have("edgeoss.runtimes.llamacpp")
    why_not_llama = "no GGUF" if gguf is None else "llama-cpp-python or edgeoss.runtimes.llamacpp missing"
    common = {"n_ctx": args.context, "use_mmap": True, "f32_kv": False}  # llama.cpp's own defaults: f16 KV
    for name, label, options in (("repack", "llama.cpp mmap + repack (default)", {**common, "repack": True}),
                                 ("no-repack", "llama.cpp mmap, no repack", {**common, "repack": False})):
        if name not in args.settings:
            continue
        if llama:
            runs.append(Setting(label, "llamacpp", gguf, options))
        else:
            skipped[label] = why_not_llama
    why_not_plan = _why_not_plan(device)
    if "llamacpp-plan" not in args.settings:
        return runs
    if why_not_plan or not llama:
        skipped["llama.cpp + plan"] = why_not_plan or why_not_llama
        return runs
    from edgeoss.planner.plan import llamacpp_settings
    from edgeoss.runtimes.llamacpp import options_from_plan

    planned = llamacpp_settings(plan_request(spec, gguf, device, budget, "llamacpp", args))
    runs.append(Setting("llama.cpp + plan", "llamacpp", gguf, options_from_plan(planned),
                        {"fits": planned["fits"], "ram_bytes": planned["ram_bytes"]}))
    return runs


LABELS = {"reference": "reference + plan", "llamacpp-stream": "llama.cpp store + plan"}


def planned_runs(spec: Any, artifact: Path | None, device: Any, budget: int, engine: str, args: argparse.Namespace,
                 skipped: dict[str, str]) -> list[Setting]:
    """A streaming engine (the reference runtime, or llama.cpp with its expert store) with the plan made for it at
    this budget (listed, not run, when the plan does not fit)."""
    label = LABELS[engine]
    runtime = "edgeoss.runtimes.reference" if engine == "reference" else "edgeoss.runtimes.llamacpp"
    why_not = _why_not_plan(device) or (None if have(runtime) else f"{runtime} missing") or \
        (None if artifact is not None else "no GGUF")
    if why_not:
        skipped[label] = why_not
        return []
    from edgeoss.planner.plan import make_plan, write_plan
    from edgeoss.planner.predict import Calibration

    request = plan_request(spec, artifact, device, budget, engine, args)
    plan = make_plan(request)
    uncalibrated = make_plan(request.replace(calibration=Calibration()))["prediction"] or {}
    predicted = {"fits": plan["fits"], "ram_bytes": plan["memory"]["ram_bytes"],
                 "decode_tok_s": (plan["prediction"] or {}).get("decode_tok_s"),
                 "uncalibrated_decode_tok_s": uncalibrated.get("decode_tok_s"),
                 "calibrated": request.calibration != Calibration(),
                 "ttft_s": (plan["prediction"] or {}).get("ttft_s"),
                 "miss_bytes_per_token": (plan["prediction"] or {}).get("miss_bytes_per_token")}
    runner = "reference" if engine == "reference" else "llamacpp"
    if not plan["fits"]:
        return [Setting(label, runner, artifact, {}, predicted, runnable=False)]
    path = write_plan(args.out / "plans" / f"{engine}-{budget}.json", plan)
    if engine == "reference":
        return [Setting(label, runner, artifact, {"plan": str(path)}, predicted)]
    from edgeoss.runtimes.llamacpp import options_from_stream_plan

    return [Setting(label, runner, artifact, options_from_stream_plan(plan["engines"]["llamacpp_stream"], path),
                    predicted)]


def not_run(setting: Setting, budget: int) -> dict[str, Any]:
    """A row for a setting the planner says cannot start at this budget (nothing to measure)."""
    return {"setting": setting.label, "engine": setting.engine, "options": setting.options, "budget_bytes": budget,
            "outcome": "plan: does not fit", "planned": setting.planned, "peak_bytes": 0, "read_bytes": 0,
            "wall_s": 0.0, "load_avg_before": os.getloadavg()[0], "load_s": None, "decode_tok_s": 0.0,
            "prefill_tok_s": 0.0, "flash_bytes_per_token": None}


def one_run(setting: Setting, budget: int, args: argparse.Namespace) -> dict[str, Any]:
    if not setting.runnable:
        return not_run(setting, budget)
    load = os.getloadavg()[0]
    run = run_profile_limited(setting.engine, setting.artifact, budget, options=setting.options,
                              prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, runs=args.runs,
                              warmup=args.warmup, split_peak=True, timeout=args.timeout)
    profile = run.result or {}
    outcome = ("killed (OOM)" if run.killed else "timed out" if run.timed_out
               else "ok" if run.ok else f"failed ({run.returncode})")
    return {
        "setting": setting.label, "engine": setting.engine, "options": setting.options, "budget_bytes": budget,
        "outcome": outcome, "planned": setting.planned, "peak_bytes": run.peak_bytes,
        "load_peak_bytes": profile.get("load_peak_bytes"), "run_peak_bytes": profile.get("run_peak_bytes"),
        "ttft_s": profile.get("ttft_s", {}).get("median"),
        "page_cache_bytes_at_end": run.page_cache_bytes, "read_bytes": run.read_bytes, "major_faults": run.major_faults, "wall_s": run.wall_s,
        "cold_resident_bytes": run.cold_resident_bytes, "load_avg_before": load,
        "load_s": profile.get("load_s"),
        "decode_tok_s": profile.get("decode_tok_s", {}).get("median", 0.0),
        "prefill_tok_s": profile.get("prefill_tok_s", {}).get("median", 0.0),
        "flash_bytes_per_token": profile.get("disk_read_bytes_per_decode_token"),
        "engine_stats": profile.get("engine_stats"),
        "profile": profile,
        "stderr_tail": "" if run.ok else run.stderr[-1500:],
    }


def planned_cell(planned: dict[str, Any] | None) -> str:
    if planned is None:
        return "-"
    speed, flash = planned.get("decode_tok_s"), planned.get("miss_bytes_per_token")
    return (f"{'fits' if planned['fits'] else 'does not fit'}, {human(planned['ram_bytes'])}"
            + ("" if speed is None else f", {speed:.2f}") + ("" if flash is None else f", {flash / 1e6:.1f}"))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = ("setting", "budget", "result", "peak: load / run", "decode tok/s", "prefill tok/s", "load s",
            "flash MB/token", "read total", "wall s", "load avg", "plan: fits, RAM, tok/s, flash MB/token")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        flash = r["flash_bytes_per_token"]
        peaks = human(r["peak_bytes"]) if r.get("run_peak_bytes") is None else \
            f"{human(r['load_peak_bytes'])} / {human(r['run_peak_bytes'])}"
        cells = (r["setting"], human(r["budget_bytes"]), r["outcome"], peaks,
                 f"{r['decode_tok_s']:.2f}", f"{r['prefill_tok_s']:.2f}",
                 "-" if r["load_s"] is None else f"{r['load_s']:.1f}",
                 "-" if flash is None else f"{flash / 1e6:.1f}", human(r["read_bytes"]), f"{r['wall_s']:.1f}",
                 f"{r['load_avg_before']:.2f}", planned_cell(r["planned"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def error_table(rows: list[dict[str, Any]]) -> str:
    """Prediction error of every planned run that finished: decode tok/s uncalibrated and calibrated (where the
    sweep calibrated), and the run's peak against the plan's RAM."""
    cols = ("engine", "budget", "decode tok/s measured", "uncalibrated: predicted, error", "calibrated: predicted, error",
            "peak (run)", "plan RAM", "peak error")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        planned, measured = r.get("planned") or {}, r["decode_tok_s"]
        if r["outcome"] != "ok" or planned.get("uncalibrated_decode_tok_s") is None or not measured:
            continue
        raw, cal = planned["uncalibrated_decode_tok_s"], planned["decode_tok_s"]
        peak = r.get("run_peak_bytes") or r["peak_bytes"]
        cells = (r["setting"], human(r["budget_bytes"]), f"{measured:.2f}", f"{raw:.2f}, {100 * (raw / measured - 1):+.0f} %",
                 f"{cal:.2f}, {100 * (cal / measured - 1):+.0f} %" if planned.get("calibrated") else "-",
                 human(peak), human(planned["ram_bytes"]), f"{100 * (peak / planned['ram_bytes'] - 1):+.1f} %")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    from edgeoss.plots import speed_vs_budget

    curves: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        curves.setdefault(r["setting"], []).append((r["budget_bytes"], r["decode_tok_s"]))
        predicted = (r.get("planned") or {}).get("decode_tok_s")
        if predicted is not None:
            curves.setdefault(f"{r['setting']}: plan's prediction", []).append((r["budget_bytes"], predicted))
    return speed_vs_budget(curves, out, title="gpt-oss decode speed vs memory budget (page cache charged)")


def gguf_path(args: argparse.Namespace) -> Path | None:
    """The GGUF to run: --gguf if it exists, else exported there (or into --out) with edgeoss's exporter."""
    target = args.gguf or args.out / f"{Checkpoint.open(args.hf).spec.name}.gguf"
    if target.exists():
        return target
    if not have("edgeoss.exporters.gguf"):
        return None
    from edgeoss.exporters.gguf import export_gguf

    console.print(f"exporting {args.hf} -> {target}")
    return export_gguf(args.hf, target)[0]


def calibrate(budget: int, gguf: Path | None, device: Any, args: argparse.Namespace, skipped: dict[str, str],
              key) -> None:
    """One run of each streaming engine's uncalibrated plan at `budget`; plans then calibrate with it
    (args.calibrate[key(engine, budget)]: every budget's, or only this budget's)."""
    spec = Checkpoint.open(args.hf).spec
    for engine, wanted, artifact in (("reference", "reference", args.hf), ("llamacpp-stream", "stream", gguf)):
        if wanted not in args.settings:
            continue
        plan_run = planned_runs(spec, artifact, device, budget, engine, args, skipped)
        if not plan_run or not plan_run[0].runnable:
            sys.exit(f"cannot calibrate {engine}: {skipped.get(LABELS[engine], 'its plan does not fit')}")
        console.print(f"[dim]calibration: {plan_run[0].label} @ {human(budget)} ...[/dim]")
        measured = one_run(plan_run[0], budget, args)
        if measured["outcome"] != "ok":
            sys.exit(f"the calibration run failed: {measured['outcome']}\n{measured.get('stderr_tail', '')}")
        path = args.out / f"calibration-{engine}-{budget}.json"
        path.write_text(json.dumps(measured["profile"], default=str))
        args.calibrate[key(engine, budget)] = path
        print(f"calibrated {engine} at {human(budget)}: {measured['decode_tok_s']:.2f} tok/s measured, "
              f"{measured['planned']['decode_tok_s']:.2f} predicted before ({path})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("hf", type=Path, help="checkpoint folder (HF layout)")
    ap.add_argument("--gguf", type=Path, help="its GGUF (exported there if missing)")
    ap.add_argument("--device", default="pixel-9-pro", help="profile whose app budget is one of the budgets; "
                    "'none' for --limits only")
    ap.add_argument("--limits", default="4GiB,6GiB,8GiB,12GiB")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--context", type=int, default=4096, help="context the plans and llama.cpp's n_ctx are for")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--settings", default="repack,no-repack,llamacpp-plan,stream,reference",
                    help="which to run: repack, no-repack, llamacpp-plan (llama.cpp as planned), stream (llama.cpp "
                         "with edgeoss's expert store + plan), reference (reference runtime + plan)")
    ap.add_argument("--warmup", action="store_true", help="a short prefill and two steps before the measured runs")
    ap.add_argument("--calibrate-at", help="first profile each streaming engine with its uncalibrated plan at this "
                    "budget (e.g. 8GiB) and calibrate that engine's plans with the measurement; 'same': before each "
                    "budget, a run of that budget's own plan calibrates it (one run on the device, as a user would)")
    ap.add_argument("--trace-tokens", type=int, default=0, help="first record the router on another random "
                    "prompt for this many decoded tokens and plan from that trace (default: uniform plans)")
    ap.add_argument("--out", type=Path, default=Path("memlimit-results"))
    args = ap.parse_args()
    args.settings = {s.strip() for s in args.settings.split(",") if s.strip()}
    args.calibrate = {}
    try:
        ok, why = cgroups_available()
        if not ok:
            raise EdgeossError(why)
        args.out.mkdir(parents=True, exist_ok=True)
        budgets = {parse_size(x) for x in args.limits.split(",") if x.strip()}
        device = None
        if args.device != "none":
            from edgeoss.planner.profiles import load_profile

            if args.device == "this-machine":  # measured now: the plans predict for the machine that runs
                from edgeoss.validate.device_measure import measure

                measured = measure("this-machine", args.out, 256 << 20)
                device = measured.profile
                from edgeoss.planner.profiles import profile_toml

                (args.out / "this-machine.toml").write_text(profile_toml(device, measured.comments))
            else:
                device = load_profile(args.device)
                budgets.add(device.app_budget_bytes)
        gguf = gguf_path(args)
        args.trace_path = args.router_trace = None
        if args.trace_tokens > 0:
            from edgeoss.formats.routing_trace import read_trace

            console.print(f"recording the router over {args.trace_tokens} tokens ...")
            args.trace_path = record_trace(args.hf, args)
            args.router_trace = read_trace(args.trace_path)
    except EdgeossError as e:
        console.print(f"[red]error:[/red] {e}")
        sys.exit(2)
    print(f"machine: {machine()}\n{why}\ncheckpoint {args.hf}, GGUF {gguf}, device "
          f"{device.name if device else 'none'} (app budget {human(device.app_budget_bytes) if device else '-'})")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if args.calibrate_at and args.calibrate_at != "same":
        calibrate(parse_size(args.calibrate_at), gguf, device, args, skipped, key=lambda engine, budget: engine)
    for budget in sorted(budgets):
        if args.calibrate_at == "same":
            calibrate(budget, gguf, device, args, skipped, key=lambda engine, budget: (engine, budget))
        for setting in settings(args.hf, gguf, device, budget, args, skipped):
            console.print(f"[dim]{setting.label} @ {human(budget)} ...[/dim]")
            rows.append(one_run(setting, budget, args))
            console.print(f"[dim]  {rows[-1]['outcome']}, peak {human(rows[-1]['peak_bytes'])}, "
                          f"{rows[-1]['decode_tok_s']:.2f} tok/s[/dim]")
    print(markdown_table(rows))
    print("\nprediction error (plan against measured):\n" + error_table(rows))
    for label, why_not in skipped.items():
        print(f"skipped {label}: {why_not}")
    (args.out / "RESULTS.json").write_text(json.dumps({"machine": machine(), "rows": rows, "skipped": skipped},
                                                       indent=1, default=str))
    if rows:
        print(f"plot: {plot(rows, args.out / 'decode_vs_budget.png')}")


if __name__ == "__main__":
    main()
