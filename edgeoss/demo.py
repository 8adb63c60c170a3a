"""`edgeoss demo`: the whole pipeline on the built-in tiny model, one visible step at a time.

Each step is a function of the shared `Demo` state that returns one summary row. A failing step stops the
demo with its name and cause.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import EdgeossError

DEMO_PROMPT = "Explain in one sentence why mixture-of-experts models fit on phones."


@dataclass
class Demo:
    workdir: Path
    device: str
    preset: str = "tiny"
    paths: dict[str, Path] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One line of the final summary: what was produced, where, how big, and the figures that matter."""

    step: str
    output: str = ""
    size: int | None = None
    figures: str = ""


class StepFailed(EdgeossError):
    def __init__(self, step: str, cause: BaseException):
        super().__init__(f"demo step '{step}' failed: {cause}")


def _folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- steps ---------------------------------------------------------------------------------------
def synthesize(d: Demo) -> Row:
    from .formats.spec import preset
    from .formats.synth import synthesize as write

    d.paths["checkpoint"] = write(d.workdir / "checkpoint", preset(d.preset), "hf", seed=0, force=True)
    return Row("synthesize", str(d.paths["checkpoint"]), _folder_bytes(d.paths["checkpoint"]),
               "HF layout, real o200k_harmony tokenizer files")


def inspect(d: Demo) -> Row:
    from .formats.inspect import checkpoint_report

    report = checkpoint_report(d.paths["checkpoint"])
    d.facts["spec"] = report["spec"]
    p = report["params"]
    return Row("inspect", figures=f"{p['total']:,} params, {p['active_per_token']:,} active/token, "
                                  f"validation {report['validation']}")


def harmony(d: Demo) -> Row:
    from .formats.harmony import render_prompt
    from .formats.tokenizer import decode

    ids = render_prompt([("user", DEMO_PROMPT)], reasoning="low")
    d.facts["prompt_ids"] = ids
    text = decode(ids)
    return Row("harmony prompt", figures=f"{len(ids)} tokens, starts {text[:40]!r}")


def plan(d: Demo) -> Row:
    from .planner.plan import PlanRequest, make_plan, write_plan
    from .planner.profiles import load_profile
    from .formats.spec import from_config, load_config

    spec = from_config(load_config(d.paths["checkpoint"] / "config.json"))
    result = make_plan(PlanRequest(spec=spec, device=load_profile(d.device), context=DEMO_CONTEXT,
                                   model_source=str(d.paths["checkpoint"])))
    d.paths["plan"] = d.workdir / "plan.json"
    write_plan(d.paths["plan"], result)
    fits = "fits" if result["fits"] else "does NOT fit"
    prediction = result.get("prediction") or {}
    return Row("plan", str(d.paths["plan"]), None,
               f"{d.device}, context {DEMO_CONTEXT}: {fits}, {result['memory']['total_bytes'] / 2**20:.0f} MiB; "
               f"predicted {prediction.get('decode_tok_s', 0):.0f} tok/s there")


def export_gguf(d: Demo) -> Row:
    from .exporters.gguf import export_gguf as export

    d.paths["gguf"] = export(d.paths["checkpoint"], d.workdir / "model.gguf")[0]
    return Row("export GGUF", str(d.paths["gguf"]), _folder_bytes(d.paths["gguf"]),
               "MXFP4 experts carried bit-exactly")


def export_onnx(d: Demo) -> Row:
    from .exporters.onnx import export_onnx as export

    report = export(d.paths["checkpoint"], d.workdir / "onnx", experts="mxfp4", max_length=DEMO_CONTEXT, force=True)
    d.paths["onnx"] = report.path
    return Row("export ONNX", str(report.path), report.nbytes,
               "MXFP4 experts as stored (QMoE fp4), exact; attention as 4-bit digits")


def parity(d: Demo) -> Row:
    from .validate import parity as check
    from .validate.parity import gguf_artifact, onnx_artifact
    from .validate.profiler import random_prompt
    from .formats.spec import from_config, load_config

    spec = from_config(load_config(d.paths["checkpoint"] / "config.json"))
    tokens = __import__("numpy").array(random_prompt(spec, DEMO_PARITY_POSITIONS), dtype="int64")
    artifacts = [gguf_artifact(d.paths["gguf"]), onnx_artifact(d.paths["onnx"])]
    report = check.run(d.paths["checkpoint"], artifacts, tokens, greedy=16)
    d.paths["parity"] = d.workdir / "parity.md"
    check.save(report, d.workdir / "parity.json", d.paths["parity"])
    d.facts["parity"] = {e["engine"]: e for e in report["entries"]}
    figures = "; ".join(f"{e['engine']}: max|d| {e['vs_original']['max_abs']:.1e}, "
                        f"top-1 {100 * e['vs_original']['top1']:.0f} %, {_short(e['verdict'])}"
                        for e in report["entries"])
    return Row("parity vs original", str(d.paths["parity"]), None, figures)


def _short(verdict: str) -> str:
    return "exact" if verdict.startswith("matches") else "expected engine difference" \
        if verdict.startswith("engine difference") else "UNEXPLAINED"


def profile(d: Demo) -> Row:
    from .validate.profiler import profile as measure

    speeds = {}
    for engine, artifact in (("reference", d.paths["checkpoint"]), ("llamacpp", d.paths["gguf"]),
                             ("onnxruntime", d.paths["onnx"])):
        result = measure(engine, artifact, prompt_tokens=64, gen_tokens=16, runs=1)
        speeds[engine] = result.decode_tok_s.median
    d.facts["decode_tok_s"] = speeds
    return Row("profile", figures=", ".join(f"{k} {v:.0f} tok/s" for k, v in speeds.items()) +
               " (decode, this machine)")


def package(d: Demo) -> Row:
    from .package.bundle import verify
    from .package.build import package_android, package_windows

    android, _ = package_android(d.paths["gguf"], d.workdir / "bundle-android", device=d.device,
                                 context=DEMO_CONTEXT, force=True)
    windows = package_windows(d.paths["onnx"], d.workdir / "bundle-windows", force=True)
    checks = [verify(android.path), verify(windows.path)]
    problems = [p for c in checks for p in c.problems]
    if problems:
        raise EdgeossError(problems[0])
    d.paths["android"], d.paths["windows"] = android.path, windows.path
    return Row("package + verify", f"{android.path}, {windows.path}", android.nbytes + windows.nbytes,
               f"both bundles verified ({sum(c.files for c in checks)} files, sha256)")


DEMO_CONTEXT = 4096
DEMO_PARITY_POSITIONS = 160

STEPS: list[tuple[str, Callable[[Demo], Row]]] = [
    ("synthesize the tiny model", synthesize),
    ("inspect and validate it", inspect),
    ("render and tokenize a harmony prompt", harmony),
    ("plan it for the device", plan),
    ("export GGUF (llama.cpp)", export_gguf),
    ("export ONNX (ONNX Runtime, onnxruntime-genai)", export_onnx),
    ("parity: original model, reference runtime, llama.cpp, ONNX Runtime", parity),
    ("profile each engine", profile),
    ("package for Android and Windows, verify both", package),
]


def run(d: Demo, on_step: Callable[[int, str], None] = lambda i, name: None,
        on_done: Callable[[Row, float], None] = lambda row, took: None) -> list[Row]:
    d.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, step) in enumerate(STEPS):
        on_step(i, name)
        start = time.perf_counter()
        try:
            row = step(d)
        except Exception as e:  # any failure names the step and the cause
            raise StepFailed(name, e) from e
        rows.append(row)
        on_done(row, time.perf_counter() - start)
    return rows


NEXT_COMMANDS = [
    "edgeoss run {checkpoint} --prompt 'Hello' --memory-budget 2MiB      # the reference runtime, streaming experts",
    "edgeoss run {gguf} --engine llamacpp --prompt 'Hello'",
    "edgeoss plan --preset 20b --device pixel-9-pro --context 8192      # the real model on a 16 GB phone",
    "edgeoss profiles list",
    "edgeoss package verify {android}",
    "on a downloaded gpt-oss-20b: inspect -> plan -> export gguf/onnx -> parity -> profile -> package (README)",
]
