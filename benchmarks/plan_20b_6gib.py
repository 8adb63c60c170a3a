"""The reference runtime under a plan for a 6 GiB budget: measured peak RSS and flash bytes per token against
what the plan predicted.

    python benchmarks/plan_20b_6gib.py WORKDIR [--preset 20b] [--budget 6GiB] [--context 4096]
                                       [--prompt-tokens 32] [--decode-tokens 16] [--trace FILE]

Steps:
1. a checkpoint: WORKDIR/<preset>-hf (synthesized with `edgeoss synth` if missing; 20b needs ~14 GB of disk);
2. a device profile of this machine (`edgeoss profiles measure`) whose app budget is set to --budget;
3. `edgeoss plan CKPT --device that.toml --context N [--trace FILE] -o plan.json` (uniform pinning unless a
   router trace of the model is given);
4. a separate process runs the reference runtime with `--plan` semantics (pinned experts, the plan's expert
   budget, routing trace on): it prefills a random prompt and decodes greedily, token by token;
5. prints peak RSS (the process's own high-water mark, VmHWM; ru_maxrss would include the parent's RSS at
   fork time) against the plan's RAM total, and expert bytes
   read per decoded token against the plan's miss bytes per token and against a replay of the recorded
   routing through the plan's policy (which should match the runtime's store exactly).

Full size takes minutes per decoded token on a 2-core machine and ~14 GB of disk: the lead runs it.
`--preset tiny --budget 300MiB` checks the script itself in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402

from edgeoss.units import human, parse_size  # noqa: E402

EDGEOSS = [sys.executable, "-m", "edgeoss"]


def ensure_checkpoint(workdir: Path, preset: str) -> Path:
    folder = workdir / f"{preset}-hf"
    if not (folder / "config.json").exists():
        print(f"synthesizing {folder} ...", flush=True)
        subprocess.run([*EDGEOSS, "synth", str(folder), "--preset", preset, "--force"], check=True)
    return folder


def budget_profile(workdir: Path, budget: int) -> Path:
    """This machine, measured, with the app budget the benchmark is about."""
    from edgeoss.validate.device_measure import measure
    from edgeoss.planner.profiles import profile_toml

    measured = measure("this-machine-budget", workdir, 256 << 20)
    profile = dataclasses.replace(measured.profile, name=f"this-machine-{human(budget).replace(' ', '')}",
                                  app_budget_bytes=min(budget, measured.profile.ram_bytes))
    path = workdir / "device.toml"
    comments = {**measured.comments, "app_budget": "set by benchmarks/plan_20b_6gib.py --budget"}
    path.write_text(profile_toml(profile, comments, "This machine with a fixed app budget (plan_20b_6gib.py)."))
    return path


def peak_rss_bytes() -> int:
    """This process's peak RSS since exec (Linux VmHWM; elsewhere ru_maxrss, which may include the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def child(checkpoint: Path, plan: Path, out: Path, prompt_tokens: int, decode_tokens: int) -> None:
    """Runs in its own process so that ru_maxrss is the runtime's alone."""
    import numpy as np

    from edgeoss.runtimes.reference import ReferenceEngine
    from edgeoss.formats.routing_trace import write_trace

    start = time.perf_counter()
    engine = ReferenceEngine(checkpoint, plan=plan, trace=True)
    load_s = time.perf_counter() - start
    prompt = np.random.default_rng(0).integers(0, engine.spec.vocab_size, prompt_tokens)
    start = time.perf_counter()
    logits = engine.prefill(prompt)[-1]
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(decode_tokens):
        logits = engine.step(int(np.argmax(logits)))
    decode_s = time.perf_counter() - start
    stats = engine.stats()
    write_trace(out.with_suffix(".npz"), engine.routing_trace())
    engine.close()
    out.write_text(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "load_s": load_s, "prefill_s": prefill_s,
                               "decode_s": decode_s,
                               "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, **stats}))


def replayed_decode_misses(plan: dict, trace_path: Path, prompt_tokens: int) -> float:
    """Misses per decoded token when the recorded routing is replayed through the plan's policy."""
    import numpy as np

    from edgeoss.planner.cache_sim import access_stream, plan_policy_misses
    from edgeoss.planner.plan import plan_arrays
    from edgeoss.formats.routing_trace import read_trace

    pinned, _, _ = plan_arrays(plan)
    trace = read_trace(trace_path)
    per_token = trace.num_layers * trace.top_k
    # the prompt was one batch: its experts enter the store in id order per layer, before any decode step
    prompt = trace.experts[:prompt_tokens]
    batch = [layer * trace.num_experts + e for layer in range(trace.num_layers)
             for e in np.unique(prompt[:, layer])]
    decode = access_stream(trace)[prompt_tokens * per_token:]
    items = np.concatenate([np.array(batch, np.int32), decode])
    misses = plan_policy_misses(items, pinned, plan["experts"]["cache_slots"])
    return float(misses[len(batch):].sum()) / (trace.num_tokens - prompt_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--preset", default="20b")
    ap.add_argument("--budget", default="6GiB")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--trace", type=Path, help="a router trace of the model for pinning (default: uniform)")
    ap.add_argument("--child", nargs=3, type=Path, metavar=("CKPT", "PLAN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.prompt_tokens, args.decode_tokens)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    checkpoint = ensure_checkpoint(args.workdir, args.preset)
    device = budget_profile(args.workdir, parse_size(args.budget))
    plan_path = args.workdir / "plan.json"
    subprocess.run([*EDGEOSS, "plan", str(checkpoint), "--device", str(device), "--context", str(args.context),
                    "--prompt-tokens", str(args.prompt_tokens), "-o", str(plan_path),
                    *(["--trace", str(args.trace)] if args.trace else [])], check=True)
    plan = json.loads(plan_path.read_text())
    if not plan["fits"]:
        sys.exit(f"the plan does not fit: {plan['advice']}")
    out = args.workdir / "run.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, str(args.workdir), "--child", str(checkpoint), str(plan_path),
                           str(out), "--prompt-tokens", str(args.prompt_tokens),
                           "--decode-tokens", str(args.decode_tokens)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"the runtime failed:\n{proc.stderr}")
    run = json.loads(out.read_text())
    m, pr, e = plan["memory"], plan["prediction"], run["experts"]
    expert_bytes = plan["model"]["expert_bytes"]
    replayed = replayed_decode_misses(plan, out.with_suffix(".npz"), args.prompt_tokens)
    print(f"\n{plan['model']['name']}, budget {human(m['app_budget_bytes'])}, context {plan['context']}, "
          f"{plan['experts']['resident_slots']} of {plan['experts']['total_experts']} experts resident "
          f"({plan['experts']['cache_slots']} cache slots); prompt {args.prompt_tokens} tokens, "
          f"{args.decode_tokens} decoded\n")
    print("| quantity | plan | measured | measured / plan |")
    print("|---|---|---|---|")
    print(f"| peak RSS | {human(m['ram_bytes'])} (total) | {human(run['peak_rss_bytes'])} | "
          f"{run['peak_rss_bytes'] / m['ram_bytes']:.2f} |")
    print(f"| expert store peak | {human(plan['experts']['budget_bytes'])} (budget) | {human(e['peak_bytes'])} | "
          f"{e['peak_bytes'] / plan['experts']['budget_bytes']:.2f} |")
    per_token = run["decode_bytes_read_per_token"]
    print(f"| flash bytes / decoded token | {human(pr['miss_bytes_per_token'])} | {human(per_token)} | "
          f"{per_token / pr['miss_bytes_per_token']:.2f} |" if pr["miss_bytes_per_token"] else
          f"| flash bytes / decoded token | 0 | {human(per_token)} | - |")
    print(f"| misses / decoded token (replay of the recorded routing) | {pr['misses_per_token']:.1f} | "
          f"{per_token / expert_bytes:.1f} ({replayed:.1f} replayed) | - |")
    print(f"\nload {run['load_s']:.1f} s, prefill {run['prefill_s']:.1f} s, decode "
          f"{run['decode_tokens'] / run['decode_s']:.3f} tok/s measured vs {pr['decode_tok_s']:.2f} tok/s "
          f"predicted for this machine's roofline; wall {wall:.0f} s")


if __name__ == "__main__":
    main()
