"""The parity report and the profiler, on tiny artifacts in every engine we can run."""

import json

import pytest

from edgeoss.exporters.gguf import export_gguf
from edgeoss.exporters.onnx import export_onnx
from edgeoss.validate.profiler import profile


@pytest.fixture(scope="module")
def artifacts(tiny_hf, tmp_path_factory):
    work = tmp_path_factory.mktemp("artifacts")
    gguf = export_gguf(tiny_hf, work / "tiny.gguf")[0]
    onnx = export_onnx(tiny_hf, work / "onnx", experts="int8", max_length=512, progress=False).path
    onnx4 = export_onnx(tiny_hf, work / "onnx4", experts="int4", max_length=512, progress=False).path
    return {"checkpoint": tiny_hf, "gguf": gguf, "onnx": onnx, "onnx4": onnx4}


def test_parity_report_on_the_tiny_checkpoint(artifacts, tmp_path, cli):
    report_md = tmp_path / "parity.md"
    proc = cli("parity", artifacts["checkpoint"], "--gguf", artifacts["gguf"], "--onnx", artifacts["onnx"],
               "--positions", "200", "--greedy", "8", "--json", "--report", report_md, check=True)
    entries = {e["engine"]: e for e in json.loads(proc.stdout)["entries"]}
    assert set(entries) == {"gpt_oss (torch fp32)", "reference", "llamacpp", "onnxruntime"}
    assert entries["reference"]["vs_original"]["max_abs"] <= 1e-4
    assert entries["gpt_oss (torch fp32)"]["vs_original"]["max_abs"] <= 1e-4
    assert entries["onnxruntime"]["vs_original"]["max_abs"] <= 1e-4
    llama = entries["llamacpp"]
    assert llama["vs_original"]["max_abs"] > 1e-4  # llama.cpp really computes differently ...
    assert llama["verdict"].startswith("engine difference, expected")  # ... and the report says why
    assert llama["vs_emulation"]["median_abs"] < llama["vs_original"]["median_abs"] / 10
    for e in entries.values():
        assert 0 <= e["vs_original"]["top1"] <= 1 and e["vs_original"]["mean_kl"] >= 0
    assert "engine difference, expected" in report_md.read_text()


@pytest.mark.parametrize("engine", ["reference", "llamacpp", "onnxruntime", "ortgenai"])
def test_profile_fields_are_sane(engine, artifacts):
    artifact = {"reference": "checkpoint", "llamacpp": "gguf"}.get(engine, "onnx")
    options = {"memory_budget": 100 << 10} if engine == "reference" else {}
    r = profile(engine, artifacts[artifact], prompt_tokens=24, gen_tokens=6, runs=2, options=options,
                device="pixel-9-pro")
    assert r.runs == 2 and r.load_s > 0
    assert 0 < r.ttft_s.min <= r.ttft_s.median <= r.ttft_s.max
    assert r.prefill_tok_s.median > 0 and r.decode_tok_s.median > 0
    model_bytes = sum(p.stat().st_size for p in artifacts[artifact].glob("*")) if artifacts[artifact].is_dir() \
        else artifacts[artifact].stat().st_size
    assert r.peak_rss_bytes >= r.rss_after_load_bytes > r.rss_before_load_bytes
    assert r.peak_rss_bytes > model_bytes * 0.3  # at least the weights the engine keeps resident
    assert r.machine["cores"] >= 1 and r.disk_read_bytes >= 0
    p = r.projection
    assert p["device"] == "pixel-9-pro" and p["decode_tok_s"] > 0 and p["ram_bytes_per_token"] > 0
    assert p["planner_fits"] and p["planner_decode_tok_s"] > 0
    if engine == "reference":
        experts = r.engine_stats["experts"]
        assert 0 <= experts["hit_rate"] <= 1 and experts["misses"] > 0
        assert experts["peak_bytes"] <= 100 << 10
        assert len(r.engine_stats["time_by_layer"]) == 4 and r.engine_stats["time_by_op"]["moe"] > 0


def test_profile_cli_sweep_and_plot(artifacts, tmp_path, cli):
    plot = tmp_path / "sweep.png"
    proc = cli("profile", artifacts["checkpoint"], "--prompt-tokens", "16", "--gen-tokens", "4", "--runs", "1",
               "--sweep", "60KiB,1MiB", "--plot", plot, "--json", check=True)
    rows = json.loads(proc.stdout)
    assert [r["budget_bytes"] for r in rows] == [60 << 10, 1 << 20]
    assert rows[0]["misses_per_token"] >= rows[1]["misses_per_token"]
    assert plot.stat().st_size > 1000


def test_profile_under_a_memory_limit_reports_a_kill_cleanly(artifacts, cli):
    proc = cli("profile", artifacts["checkpoint"], "--prompt-tokens", "8", "--gen-tokens", "2", "--runs", "1",
               "--memory-limit", "60MiB", "--json")
    if proc.returncode == 2 and "cgroup" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    report = json.loads(proc.stdout)
    assert report["killed"] and report["profile"] is None and "Traceback" not in proc.stderr
    fits = json.loads(cli("profile", artifacts["checkpoint"], "--prompt-tokens", "8", "--gen-tokens", "2",
                          "--runs", "1", "--memory-limit", "2GiB", "--json", check=True).stdout)
    assert not fits["killed"] and 0 < fits["peak_bytes"] <= 2 << 30 and fits["profile"]["decode_tok_s"]["median"] > 0


def test_plan_checked_on_its_device_and_run_under_a_limit(artifacts, tmp_path, cli):
    if cli("profile", artifacts["checkpoint"], "--memory-limit", "1GiB", "--runs", "1", "--prompt-tokens", "4",
           "--gen-tokens", "1").returncode == 2:
        pytest.skip("cgroups unavailable")
    plan = tmp_path / "plan.json"
    cli("plan", artifacts["checkpoint"], "--device", "pixel-9-pro", "--context", "512", "-o", plan, check=True)
    report = json.loads(cli("profile", artifacts["checkpoint"], "--device", "pixel-9-pro", "--plan", plan,
                            "--prompt-tokens", "16", "--gen-tokens", "4", "--runs", "1", "--json", check=True).stdout)
    assert report["memory_limit_bytes"] == 10 * 2**30  # the Pixel 9 Pro profile's app budget
    assert not report["killed"] and report["peak_bytes"] <= report["memory_limit_bytes"]
    assert report["plan_prediction"]["decode_tok_s"] > 0
    ok = cli("run", artifacts["checkpoint"], "--prompt", "hi", "--max-new-tokens", "3", "--memory-limit", "1GiB")
    assert ok.returncode == 0 and "memory cgroup: fits" in ok.stderr
    killed = cli("run", artifacts["checkpoint"], "--prompt", "hi", "--max-new-tokens", "3", "--memory-limit", "50MiB")
    assert "killed by the out-of-memory killer" in killed.stderr and "Traceback" not in killed.stderr


def test_parity_attributes_int4_requantization(artifacts, cli):
    proc = cli("parity", artifacts["checkpoint"], "--onnx", artifacts["onnx4"], "--positions", "120", "--greedy", "4",
               "--json", check=True)
    int4 = json.loads(proc.stdout)["entries"][-1]
    assert int4["vs_original"]["max_abs"] > 1e-2  # lossy ...
    assert int4["verdict"] == ("engine difference, expected: int4 re-quantized experts and attention as 4-bit "
                               "digits")  # ... and explained by both encodings, emulated together
    assert int4["vs_emulation"]["median_abs"] < 1e-4
