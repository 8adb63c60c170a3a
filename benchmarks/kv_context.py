"""Memory against context, per engine, measured against the plan (issue 20).

For each engine and context, a fresh process loads the artifact with the plan's settings for that context (the
plan made for PROFILE: a CPU-only one, so that nothing is planned into GPU memory), fills the KV cache to the
context with random tokens in prefill calls of --chunk tokens (the last row's logits kept; an engine that returns
every row returns --chunk of them per call) and decodes one token. It reports:
- the engine's own KV bytes where it says them (llama.cpp's "KV buffer size" log lines; the reference runtime's
  cells written; onnxruntime's past arrays), and the plan's KV figure for that engine;
- RSS once filled and the process's peak RSS (the kernel's ru_maxrss), and the plan's RAM total for the same
  context and a prompt of --chunk tokens;
- the fill time (the TTFT of a prompt that long) and the plan's TTFT for it.

    python benchmarks/kv_context.py --checkpoint tiny-hf --gguf tiny.gguf --onnx tiny-onnx \\
        --contexts 4096,32768,131072 --engines reference,llamacpp,ortgenai,onnxruntime

The ONNX folder must be exported for the largest context (`edgeoss export onnx --max-length 131072`).
onnxruntime (plain, no GenAI) is measured without a plan figure: the planner plans the engines that ship.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

PROFILE = "raspberry-pi-5"  # CPU only, Linux: the plan's memory breakdown as this machine runs it
PLAN_ENGINE = {"reference": "reference", "llamacpp": "llamacpp", "ortgenai": "ortgenai", "onnxruntime": None}
MIB = 1 << 20


def request(preset_name: str, engine: str, context: int, chunk: int, profile: str = PROFILE):
    """The plan request for a chunked fill of `context` on `profile`."""
    from edgeoss.formats.spec import preset
    from edgeoss.planner.plan import PlanRequest
    from edgeoss.planner.profiles import load_profile

    return PlanRequest(preset(preset_name), load_profile(profile), context, engine=engine, prompt_tokens=chunk)


def plan_for(preset_name: str, engine: str, context: int, chunk: int, profile: str = PROFILE) -> dict:
    from edgeoss.planner.plan import make_plan

    return make_plan(request(preset_name, engine, context, chunk, profile))


def plan_ttft(preset_name: str, engine: str, context: int, chunk: int, profile: str) -> float | None:
    """The plan's TTFT for the whole fill (a prompt of context - 1 tokens), with the placement of the plan for the
    chunked fill (a whole-prompt plan may not fit: the reference's logits of every prompt row, onnxruntime-genai's
    probabilities of a one-step prompt)."""
    from edgeoss.planner.plan import _place_and_predict, fit

    chunked = request(preset_name, engine, context, chunk, profile)
    placed = fit(chunked)
    if not placed.fits:
        return None
    return _place_and_predict(chunked.replace(prompt_tokens=context - 1), placed)[1].ttft_s


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def open_engine(engine: str, artifact: str, context: int, plan: dict | None, threads: int,
                plan_path: str | None = None):
    if engine == "reference":  # the plan's expert budget and pinned experts
        from runtimes.reference import ReferenceEngine

        return ReferenceEngine(Path(artifact), plan=plan_path)
    if engine == "llamacpp":
        from runtimes.llamacpp import LlamaCppEngine, options_from_plan

        options = options_from_plan(plan["engines"]["llamacpp"])
        return LlamaCppEngine(Path(artifact), n_threads=threads, logits_all=False, verbose=True, **options)
    from runtimes.onnxrt import OnnxRuntimeEngine, OrtGenaiEngine

    if engine == "ortgenai":
        return OrtGenaiEngine(Path(artifact), threads=threads, max_length=plan["engines"]["ortgenai"]["max_length"])
    return OnnxRuntimeEngine(Path(artifact), threads=threads)


def engine_kv_bytes(engine, name: str) -> int | None:
    """The KV bytes the engine holds, where it can say (llama.cpp's come from its log, in the parent)."""
    if name == "reference":
        return sum(c.keys[:c.length].nbytes + c.values[:c.length].nbytes for c in engine.caches)
    if name == "onnxruntime":
        return sum(v.nbytes for v in engine.past.values())
    return None


def measure_one(engine_name: str, artifact: str, context: int, chunk: int, plan_path: str | None,
                threads: int) -> dict:
    """In this process: load, fill to `context` - 1 positions in chunks, decode one token."""
    from edgeoss.validate.profiler import RssSampler, random_prompt

    plan = json.loads(Path(plan_path).read_text()) if plan_path else None
    before = rss()
    start = time.perf_counter()
    engine = open_engine(engine_name, artifact, context, plan, threads, plan_path)
    load_s, loaded = time.perf_counter() - start, rss()
    prompt = random_prompt(engine.spec, context - 1)
    with RssSampler() as sampled:
        start = time.perf_counter()
        token = prompt[-1]
        for i in range(0, len(prompt), chunk):
            if hasattr(engine, "append"):  # onnxruntime-genai: no copy of rows nobody reads
                engine.append(prompt[i:i + chunk])
            else:
                token = int(engine.prefill(prompt[i:i + chunk])[-1].argmax())
        fill_s = time.perf_counter() - start
        engine.step(token)
    result = {"rss_before_load": before, "rss_loaded": loaded, "rss_filled": rss(), "load_s": load_s,
              "fill_s": fill_s, "kv_bytes": engine_kv_bytes(engine, engine_name), "peak_rss": sampled.peak,
              "process_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    engine.close()
    return result


KV_LOG = re.compile(r"KV buffer size\s*=\s*([\d.]+) MiB")
COMPUTE_LOG = re.compile(r"compute buffer size\s*=\s*([\d.]+) MiB")


def measure(engine: str, artifact: str, context: int, chunk: int, plan: dict | None, threads: int,
            scratch: Path) -> dict:
    plan_path = None
    if plan is not None:
        plan_path = scratch / f"plan-{engine}-{context}.json"
        plan_path.write_text(json.dumps(plan))
    proc = subprocess.run([sys.executable, __file__, "--one", engine, artifact, str(context), str(chunk),
                           str(plan_path or ""), str(threads)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if engine == "llamacpp":
        result["kv_bytes"] = int(sum(float(m) for m in KV_LOG.findall(proc.stderr)) * MIB)
        result["compute_bytes"] = int(sum(float(m) for m in COMPUTE_LOG.findall(proc.stderr)) * MIB)
    return result


def row(engine: str, context: int, m: dict, plan: dict | None) -> str:
    def mib(b: float | None) -> str:
        return "–" if b is None else f"{b / MIB:,.1f}"

    def vs(measured: float | None, planned: float | None) -> str:
        return "–" if not measured or not planned else f"{measured / planned:.2f}"

    if "error" in m:
        return f"| {engine} | {context:,} | {m['error']} |||||||"
    memory = (plan or {}).get("memory", {})
    p_kv, p_ram = memory.get("kv_cache_bytes"), memory.get("ram_bytes")
    p_ttft = m.get("plan_ttft_s")
    return (f"| {engine} | {context:,} | {mib(p_kv)} | {mib(m['kv_bytes'])} | {vs(m['kv_bytes'], p_kv)} | "
            f"{mib(p_ram)} | {mib(m['rss_filled'])} | {mib(m['peak_rss'])} | {vs(m['peak_rss'], p_ram)} | "
            f"{m['fill_s']:.1f} |" + (f" {p_ttft:.1f} |" if p_ttft else " – |"))


def header(profile: str) -> str:
    return ("| engine | context | plan KV MiB | engine's KV MiB | ratio | plan RAM MiB | RSS filled MiB | peak RSS MiB | "
            f"peak / plan | fill (TTFT) s | plan TTFT s ({Path(profile).stem}) |\n|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        engine, artifact, context, chunk, plan_path, threads = sys.argv[2:8]
        print(json.dumps(measure_one(engine, artifact, int(context), int(chunk), plan_path or None, int(threads))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--gguf")
    ap.add_argument("--onnx")
    ap.add_argument("--preset", default="tiny", help="the spec the plan is made for")
    ap.add_argument("--contexts", default="4096,32768,131072")
    ap.add_argument("--engines", default="reference,llamacpp,ortgenai,onnxruntime")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scratch", default="/tmp/kv_context")
    ap.add_argument("--profile", default=PROFILE, help="the device profile the plans are made for (CPU only)")
    ap.add_argument("--tables", nargs="+", metavar="RESULTS_JSON",
                    help="print the tables of earlier runs' results.json, with plans made now (nothing is run)")
    args = ap.parse_args()
    if args.tables:
        results = [r for path in args.tables for r in json.loads(Path(path).read_text())]
        results.sort(key=lambda r: (r["context"], list(PLAN_ENGINE).index(r["engine"])))
        print(header(args.profile))
        for r in results:
            plan = (plan_for(args.preset, PLAN_ENGINE[r["engine"]], r["context"], args.chunk, args.profile)
                    if PLAN_ENGINE[r["engine"]] else None)
            r["plan_memory"], r["plan_prediction"] = (plan or {}).get("memory"), (plan or {}).get("prediction")
            r["plan_ttft_s"] = (plan_ttft(args.preset, PLAN_ENGINE[r["engine"]], r["context"], args.chunk,
                                          args.profile) if plan else None)
            print(row(r["engine"], r["context"], r, plan))
        print()
        print(growth_table(results))
        return
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    artifacts = {"reference": args.checkpoint, "llamacpp": args.gguf, "ortgenai": args.onnx, "onnxruntime": args.onnx}
    print(header(args.profile), flush=True)
    results = []
    for context in map(int, args.contexts.split(",")):
        for engine in args.engines.split(","):
            plan = (plan_for(args.preset, PLAN_ENGINE[engine], context, args.chunk, args.profile)
                    if PLAN_ENGINE[engine] else None)
            m = measure(engine, artifacts[engine], context, args.chunk, plan, args.threads, scratch)
            m["plan_ttft_s"] = (plan_ttft(args.preset, PLAN_ENGINE[engine], context, args.chunk, args.profile)
                                if plan else None)
            results.append({"engine": engine, "context": context, **m,
                            "plan_memory": (plan or {}).get("memory"), "plan_prediction": (plan or {}).get("prediction")})
            print(row(engine, context, m, plan), flush=True)
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    (scratch / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(growth_table(results))


def growth_table(results: list[dict]) -> str:
    """What context costs: each engine's RSS once filled, less its RSS at the first context, against the plan's
    RAM total less its total at the first context (the fixed parts, right or wrong, cancel)."""
    lines = ["| engine | context | plan growth MiB | measured growth MiB | measured / plan |", "|---|---|---|---|---|"]
    for engine in dict.fromkeys(r["engine"] for r in results):
        mine = [r for r in results if r["engine"] == engine and "error" not in r]
        for r in mine[1:]:
            measured = (r["rss_filled"] - mine[0]["rss_filled"]) / MIB
            if r["plan_memory"]:
                planned = (r["plan_memory"]["ram_bytes"] - mine[0]["plan_memory"]["ram_bytes"]) / MIB
                lines.append(f"| {engine} | {mine[0]['context']:,} → {r['context']:,} | {planned:,.1f} | "
                             f"{measured:,.1f} | {measured / planned:.2f} |")
            else:
                lines.append(f"| {engine} | {mine[0]['context']:,} → {r['context']:,} | – | {measured:,.1f} | – |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
