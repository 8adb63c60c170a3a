"""The Android app's JNI bridge and its C++ expert store, built for this machine and run from a JVM.

android_demo/host/build.sh compiles app/src/main/cpp (edgeoss_jni.cpp, expert_store.cpp) against the llama.cpp
that llama-cpp-python installs, with a host <android/log.h>, and the app's core library with a host twin of
LlamaEngine. HostRun opens, verifies and loads a real bundle the way the app does and generates greedily.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from edgeoss.formats.tokenizer import SPECIAL  # noqa: E402
from edgeoss.package.build import package_android  # noqa: E402
from edgeoss.planner.plan import PlanRequest, fit, make_plan  # noqa: E402
from edgeoss.planner.profiles import load_profile, profile_toml  # noqa: E402
from edgeoss.formats.spec import preset  # noqa: E402
from edgeoss.runtimes.llamacpp import LlamaCppEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MISSING = [tool for tool in ("g++", "cmake", "javac", "java") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"no {', '.join(MISSING)} on this machine: the JNI bridge "
                                                      "cannot be built here")
PROMPT = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.<|end|>"
          "<|start|>user<|message|>Why do MoE models fit on phones?<|end|><|start|>assistant")
TOKENS = 24


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jni-host")
    proc = subprocess.run(["bash", str(REPO / "android_demo" / "host" / "build.sh"), str(out)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "lib" / "libedgeoss_jni.so").is_file()
    return out


@pytest.fixture(scope="module")
def stream_bundle(tmp_path_factory, tiny_hf) -> Path:
    """A bundle for a made-up phone whose app budget holds tiny's dense weights and 12 of its 32 experts, packaged
    for the expert store (tiny's experts are smaller than a page, so plain llama.cpp would fit here too)."""
    folder = tmp_path_factory.mktemp("stream-bundle")
    phone = load_profile("pixel-9-pro")
    request = PlanRequest(preset("tiny"), phone, 4096, engine="llamacpp-stream")
    room = fit(request).memory
    slot = make_plan(request)["model"]["expert_slot_bytes"]
    budget = room["ram_bytes"] - room["resident_expert_bytes"] + (128 << 20) + 12 * slot
    profile = folder / "tiny-phone.toml"
    profile.write_text(profile_toml(replace(phone, name="tiny-phone", description="a phone for tiny",
                                            app_budget_bytes=budget)))
    out = folder / "bundle"
    package_android(tiny_hf, out, device=str(profile), context=4096, engine="llamacpp-stream", progress=False)
    return out


def host_run(host: Path, bundle: Path, *options: str) -> dict:
    prompt = bundle.parent / "prompt.txt"
    prompt.write_text(PROMPT)
    proc = subprocess.run(["java", f"-Djava.library.path={host / 'lib'}", "-cp", str(host / "classes"),
                           "org.edgeoss.demo.HostRun", str(bundle), str(prompt), str(TOKENS), *options],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def python_greedy(gguf: Path, n_ctx: int, n_ubatch: int) -> list[int]:
    """edgeoss's Python llamacpp engine, greedy, with the bridge's settings (f16 KV, flash attention)."""
    engine = LlamaCppEngine(gguf, n_ctx=n_ctx, f32_kv=False, flash_attn=True, n_ubatch=n_ubatch, logits_all=False)
    try:
        ids = engine._llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
        row, out = engine.prefill(ids)[-1], []
        stops = {SPECIAL.return_, SPECIAL.call}
        while len(out) < TOKENS:
            out.append(int(np.argmax(row)))
            if out[-1] in stops:
                break
            row = engine.step(out[-1])
        return out
    finally:
        engine.close()


def test_the_bundle_streams_and_the_jni_store_gives_llamacpps_tokens(host, stream_bundle):
    manifest = json.loads((stream_bundle / "manifest.json").read_text())
    plan = json.loads((stream_bundle / "plan.json").read_text())
    store = manifest["engine"]["expert_store"]
    assert plan["engine"] == "llamacpp-stream" and plan["fits"] and not plan["fits_in_ram"]
    assert store["budget_bytes"] == plan["experts"]["budget_bytes"] and store["cache_slots"] >= 2
    assert manifest["memory"]["min_free_ram_bytes"] == plan["memory"]["ram_bytes"] + plan["memory"]["reserve_bytes"]
    gguf = stream_bundle / manifest["engine"]["model_file"]
    settings = manifest["engine"]["settings"]
    streamed = host_run(host, stream_bundle)
    s = streamed["store"]
    memory = streamed["memory"]
    assert memory["allowed"] and memory["needed_bytes"] == manifest["memory"]["min_free_ram_bytes"]
    assert s["budget_bytes"] == store["budget_bytes"] and s["pinned_experts"] == sum(map(len, store["pinned"].values()))
    assert s["misses"] > 0 and s["evictions"] > 0
    spec = preset("tiny")
    prompt_tokens = len(LlamaCppTokens.of(gguf))
    generated = len(streamed["tokens"])
    # k choices per token and layer: every prompt token and every generated token but the last is decoded (this
    # llama.cpp drops the rows it does not output after the last layer, so every layer routes every token)
    assert s["hits"] + s["misses"] == spec.num_experts_per_tok * spec.num_hidden_layers * (
        prompt_tokens + generated - 1)
    assert s["bytes_read"] == s["misses"] * s["bytes_per_miss"]
    assert s["peak_bytes"] <= s["budget_bytes"] and 0 < s["resident_pages_bytes"] <= s["resident_bytes"]
    assert s["resident_experts"] == s["pinned_experts"] + s["cached_experts"]  # nothing resident outside the LRU
    assert "hits" in s["summary"] and "MB read/token" in s["summary"]
    expected = python_greedy(gguf, settings["n_ctx"], s["n_ubatch"])
    assert streamed["tokens"] == expected
    whole = host_run(host, stream_bundle, "--no-store")
    assert whole["store"] is None
    assert whole["tokens"] == python_greedy(gguf, settings["n_ctx"], settings["n_batch"])


def host_error(host: Path, bundle: Path, budget: int) -> str:
    prompt = bundle.parent / "prompt.txt"
    prompt.write_text(PROMPT)
    proc = subprocess.run(["java", f"-Djava.library.path={host / 'lib'}", "-cp", str(host / "classes"),
                           "org.edgeoss.demo.HostRun", str(bundle), str(prompt), "4", "--budget", str(budget)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "java.lang.IllegalArgumentException: " in line]
    assert len(lines) == 1, proc.stderr
    return lines[0].split("IllegalArgumentException: ", 1)[1]


def test_budgets_too_small_are_one_clear_error(host, stream_bundle):
    message = host_error(host, stream_bundle, 4096)
    assert re.fullmatch(r"the plan's \d+ pinned experts need (\d+) bytes; the expert budget is 4096", message)
    pinned_bytes = int(re.search(r"need (\d+) bytes", message).group(1))
    slot = 24576  # a tiny expert's three slices span six pages
    message = host_error(host, stream_bundle, pinned_bytes + slot)
    assert "holds 1 experts beside the" in message and message.endswith("one token's top-2 in a layer needs 2")


class LlamaCppTokens:
    """The prompt's token ids as llama.cpp's own tokenizer makes them (what the bridge feeds)."""

    @staticmethod
    def of(gguf: Path, text: str = PROMPT) -> list[int]:
        engine = LlamaCppEngine(gguf, n_ctx=256, logits_all=False)
        try:
            return engine._llm.tokenize(text.encode(), add_bos=False, special=True)
        finally:
            engine.close()


ROUND_ONE = ("<|channel|>analysis<|message|>Need the time.<|end|><|start|>assistant to=functions.get_time"
             '<|channel|>commentary <|constrain|>json<|message|>{"tz": "Europe/Paris"}<|call|>')


def test_the_apps_tool_loop_answers_a_call_and_reuses_the_kv_cache(host, stream_bundle):
    """The app's ToolLoop on the JNI bridge: round one is forced (random weights call no tool), get_time answers,
    and round two keeps the KV cache's prefix (every token of the prompt and the call) and generates the same
    tokens as a run from an empty cache."""
    script = stream_bundle.parent / "round-one.txt"
    script.write_text(ROUND_ONE)
    loop = host_run(host, stream_bundle, "--tool-round", str(script))["tool_loop"]
    assert loop["outcome"] == "CALL_ANSWERED"
    [call] = loop["calls"]
    assert call["recipient"] == "functions.get_time" and json.loads(call["arguments"]) == {"tz": "Europe/Paris"}
    assert json.loads(call["result"]) == {"time": "2026-12-07T13:00:00+01:00", "tz": "Europe/Paris"}
    assert loop["prompt"] == (PROMPT + ROUND_ONE + "<|start|>functions.get_time to=assistant<|channel|>commentary"
                              f"<|message|>{call['result']}<|end|><|start|>assistant")
    gguf = stream_bundle / json.loads((stream_bundle / "manifest.json").read_text())["engine"]["model_file"]
    assert loop["reused"] == len(LlamaCppTokens.of(gguf, PROMPT + ROUND_ONE)) and loop["fresh_reused"] == 0
    assert len(loop["tokens"]) == TOKENS and loop["tokens"] == loop["fresh_tokens"]


def test_the_apps_benchmark_protocol_writes_what_plan_calibrate_and_profiles_import_read(host, stream_bundle,
                                                                                         tmp_path):
    """The app's DeviceBenchmark through the JNI bridge (HostRun --profile, the code path the phone runs) writes
    profile.json; `plan --calibrate` reads it and reports predicted against measured, and `profiles import` turns it
    into a profile whose plan predicts the measured decode speed without calibration."""
    from conftest import run_main

    out = tmp_path / "profile.json"
    assert host_run(host, stream_bundle, "--profile", str(out), "--prompt-tokens", "32", "--runs", "2")["profile"]
    data = json.loads(out.read_text())
    assert (data["engine"], data["model"], data["prompt_tokens"], data["gen_tokens"], data["runs"]) == \
        ("llamacpp-stream", "gpt-oss-tiny", 32, TOKENS, 2)
    stats = data["engine_stats"]
    assert stats["decode_tokens"] <= 2 * (TOKENS - 1) and stats["experts"]["misses"] > 0
    assert stats["decode_bytes_read_per_token"] == stats["experts"]["bytes_read"] / stats["decode_tokens"]
    assert data["decode_tok_s"]["min"] <= data["decode_tok_s"]["median"] <= data["decode_tok_s"]["max"]
    assert data["cold"]["ttft_s"] > 0 and data["peak_rss_bytes"] >= data["rss_after_load_bytes"] > 0
    assert data["machine"]["ram_bytes"] > 0 and data["protocol"]["context"] == 4096
    profile = stream_bundle.parent / "tiny-phone.toml"
    args = ["plan", "--preset", "tiny", "--device", profile, "--engine", "llamacpp-stream", "--context", "4096"]
    code, stdout, stderr = run_main([*args, "--calibrate", out, "--json"], with_stdout=True)
    assert code == 0, stderr
    measured = json.loads(stdout)["measured"]
    decode = measured["decode_tok_s"]
    assert decode["measured"] == data["decode_tok_s"]["median"] and abs(decode["calibrated_error"]) < 0.02
    assert measured["context"] == 4096 and measured["peak_bytes"]["measured"] == data["peak_rss_bytes"]
    code, stdout, _ = run_main([*args, "--calibrate", out], with_stdout=True)
    assert "tok/s measured; predicted" in " ".join(stdout.split())
    imported = tmp_path / "my-phone.toml"
    code, stderr = run_main(["profiles", "import", out, "--like", profile, "-o", imported])
    assert code == 0, stderr
    at_run = ["plan", "--preset", "tiny", "--engine", "llamacpp-stream", "--context", "4096",
              "--prompt-tokens", "32", "--json"]
    code, stdout, stderr = run_main([*at_run, "--device", imported], with_stdout=True)
    assert code == 0, stderr
    # the profile carries the device's efficiencies (folded into its figures) and the measured RAM; the miss rate is
    # the model's and the budget's, not the device's
    fitted = json.loads(run_main([*args, "--calibrate", out, "--json"], with_stdout=True)[1])["prediction"]
    efficiencies = tmp_path / "efficiencies.json"
    efficiencies.write_text(json.dumps({k: v for k, v in fitted["calibration"].items() if k != "miss_scale"}))
    base, mine = load_profile(str(profile)), load_profile(str(imported))
    assert mine.ram_bytes == data["machine"]["ram_bytes"] and mine.cpu_threads == data["machine"]["cores"]
    unfolded = tmp_path / "unfolded.toml"
    unfolded.write_text(profile_toml(replace(mine, memory_bandwidth_gb_s=base.memory_bandwidth_gb_s,
                                             cpu_gflops=base.cpu_gflops, flash_seq_read_mb_s=base.flash_seq_read_mb_s,
                                             flash_random_read_mb_s=base.flash_random_read_mb_s)))
    expected = json.loads(run_main([*at_run, "--device", unfolded, "--calibrate", efficiencies],
                                   with_stdout=True)[1])["prediction"]
    got = json.loads(stdout)["prediction"]
    assert got["decode_tok_s"] == pytest.approx(expected["decode_tok_s"], rel=1e-3)
    assert got["ttft_s"] == pytest.approx(expected["ttft_s"], rel=1e-3)
