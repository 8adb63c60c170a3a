"""The planner: exact sizes, breakdowns that add up and stay inside the budget, llama.cpp's repack copy and GPU
split, advice when a model does not fit, the plan file, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeoss.errors import UsageError
from edgeoss.planner.memory import kv_cache, weight_bytes
from edgeoss.planner.plan import PlanRequest, fit, load_calibration, make_plan, read_plan, write_plan
from edgeoss.planner.predict import Calibration, Layout, predict, uniform_misses_per_token
from edgeoss.planner.profiles import DeviceProfile, load_profile
from edgeoss.formats.routing_trace import write_trace
from edgeoss.formats.spec import kv_cache_bytes, preset, sizes
from edgeoss.planner.traces import parametric_trace
from edgeoss.units import human

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
PARTS = ("dense_bytes", "kv_cache_bytes", "scratch_bytes", "engine_overhead_bytes", "resident_expert_bytes")


def plan_for(model: str, device: str, context: int = 8192, **options) -> dict:
    return make_plan(PlanRequest(preset(model), load_profile(device), context, **options))


def check_consistent(plan: dict) -> None:
    """What every plan promises, whether or not it fits."""
    m = plan["memory"]
    assert sum(m[k] for k in PARTS) == m["total_bytes"]
    assert m["kv_full_bytes"] + m["kv_sliding_bytes"] == m["kv_cache_bytes"]
    assert m["headroom_bytes"] == m["app_budget_bytes"] - m["ram_bytes"]
    if not plan["fits"]:
        assert plan["prediction"] is None and plan["experts"] is None and plan["engines"] is None
        assert plan["advice"][0].startswith("does not fit")
        return
    assert m["ram_bytes"] + m["reserve_bytes"] <= m["app_budget_bytes"]
    assert m["gpu_bytes"] <= max(m["gpu_budget_bytes"], 0) or (m["gpu_bytes"] == 0)
    e = plan["experts"]
    layers, experts = plan["model"]["layers"], plan["model"]["experts_per_layer"]
    pinned = sum(len(ids) for ids in e["pinned"].values())
    assert pinned + e["cache_slots"] == e["resident_slots"]
    assert e["budget_bytes"] == e["resident_slots"] * plan["model"]["expert_slot_bytes"]
    for layer in range(layers):
        order, ids = e["order"][str(layer)], e["pinned"][str(layer)]
        assert sorted(order) == list(range(experts))
        assert order[:len(ids)] == ids  # pinned first
        assert sorted(ids + e["on_flash"][str(layer)]) == list(range(experts))
    if plan["engine"] in ("reference", "llamacpp-stream"):
        assert e["budget_bytes"] == m["resident_expert_bytes"]
        assert (e["cache_slots"] >= 1) == (e["resident_slots"] < layers * experts)
    if plan["engine"] == "llamacpp-stream":  # the store holds one token's top-k beside what is pinned
        stream = plan["engines"]["llamacpp_stream"]
        assert stream["memory_budget"] == e["budget_bytes"] and stream["pinned"] == e["pinned"]
        assert e["resident_slots"] == layers * experts or e["cache_slots"] >= plan["model"]["experts_per_token"]
        assert 1 <= stream["n_ubatch"] <= 512
    p = plan["prediction"]
    assert 0 < p["decode_tok_s"] < math.inf and p["ttft_s"] > 0 and p["miss_bytes_per_token"] >= 0
    assert (p["misses_per_token"] == 0) == plan["fits_in_ram"]


# ---- sizes against independent arithmetic --------------------------------------------------------------
def test_weight_bytes_match_the_checkpoint_exactly():
    for name in ("20b", "120b", "tiny", "odd"):
        spec = preset(name)
        w = weight_bytes(spec, "bf16", "reference")
        assert w.dense + w.experts_total == sizes(spec).tensor_bytes
        assert w.expert == sizes(spec).bytes_per_expert
    w20 = weight_bytes(preset("20b"), "bf16", "reference")
    assert w20.dense + w20.experts_total == 13_761_264_768
    # one expert: gate_up 5760 x 2880 and down 2880 x 2880 MXFP4 (17 B / 32) + bf16 biases (5760 + 2880)
    assert w20.expert == (5760 * 2880 + 2880 * 2880) * 17 // 32 + 2 * (5760 + 2880) == 13_236_480


def test_gguf_q8_0_size_matches_the_published_file():
    """ggml-org's gpt-oss-20b GGUF (MXFP4 experts, q8_0 dense) is 12,109,566,624 bytes (anchors §2a); ours
    counts tensor bytes only (no metadata, vocabulary or alignment)."""
    w = weight_bytes(preset("20b"), "q8_0", "llamacpp")
    assert w.dense + w.experts_total == pytest.approx(12_109_566_624, rel=0.005)
    assert w.dense + w.experts_total < 12_109_566_624


@pytest.mark.parametrize("context", [1, 100, 128, 129, 8192, 131072])
def test_kv_cache_24_kib_per_token_for_full_layers_plus_the_windows(context):
    spec = preset("20b")
    kv = kv_cache(spec, context, "bf16", "reference")
    assert kv.full_bytes == 24 * 1024 * context  # 12 full layers x (K + V) x 512 x 2 B
    assert kv.sliding_bytes == 12 * 2048 * min(context, 128)
    assert kv.total_bytes == kv_cache_bytes(spec, context)["total"]
    llama = kv_cache(spec, context, "f16", "llamacpp")  # n_ctx padded to 256; SWA = pad256(128 + n_ubatch)
    assert llama.full_cells == -(-context // 256) * 256
    assert llama.sliding_cells == min(768, llama.full_cells)


# ---- plans for named devices ---------------------------------------------------------------------------
def test_20b_on_a_16_gb_phone_fits_by_streaming():
    plan = plan_for("20b", "pixel-9-pro")
    check_consistent(plan)
    assert plan["fits"] and not plan["fits_in_ram"]
    assert plan["memory"]["ram_bytes"] <= load_profile("pixel-9-pro").app_budget_bytes
    assert 0.3 < plan["experts"]["resident_fraction"] < 0.9
    assert any(a["flag"] == "--dense-type q8_0" for a in plan["alternatives"])


def test_120b_on_a_16_gb_phone_does_not_fit_in_ram_and_says_what_streaming_costs():
    plan = plan_for("120b", "oneplus-13")
    check_consistent(plan)
    assert not plan["fits_in_ram"]
    p = plan["prediction"]
    assert p["miss_bytes_per_token"] > 1e9  # > 1 GB of experts read from flash per token
    assert re.search(r"does not fit in RAM: .* stream from flash: [\d.]+ misses/token = \d+ MB/token",
                     plan["advice"][0])


def test_llamacpp_counts_the_repacked_expert_copy():
    mapped = plan_for("20b", "raspberry-pi-5", engine="llamacpp", dense_type="q8_0", use_mmap=True)
    loaded = plan_for("20b", "raspberry-pi-5", engine="llamacpp", dense_type="q8_0")
    experts = weight_bytes(preset("20b"), "q8_0", "llamacpp").experts_total
    assert not loaded["engines"]["llamacpp"]["use_mmap"] and loaded["memory"]["repack_copy_bytes"] == 0
    assert mapped["memory"]["repack_copy_bytes"] == experts
    assert mapped["memory"]["ram_bytes"] - loaded["memory"]["ram_bytes"] == experts
    assert loaded["fits"] and not mapped["fits"]  # 11.6 GiB fits the Pi's 15 GiB; twice the experts does not
    assert "--no-mmap" in loaded["engines"]["llamacpp"]["flags"]


def test_llamacpp_on_a_phone_does_not_fit_and_points_to_streaming():
    plan = plan_for("20b", "pixel-9-pro", engine="llamacpp")
    check_consistent(plan)
    assert not plan["fits"]
    streaming = {a["flag"]: a for a in plan["alternatives"]}
    assert streaming["--engine reference"]["decode_tok_s"] > 0
    assert streaming["--engine llamacpp-stream"]["decode_tok_s"] > 0
    assert "smallest change that fits" in plan["advice"][1]


def test_llamacpp_with_its_expert_store_fits_a_phone_and_keeps_its_batching():
    """llamacpp-stream: expert slots cost the pages their slices span, the F32 expert biases stay resident with
    the dense weights, and enough cache slots hold a layer's routed union so prefill keeps n_ubatch 512."""
    plan = plan_for("20b", "pixel-9-pro", engine="llamacpp-stream")
    check_consistent(plan)
    assert plan["fits"] and not plan["fits_in_ram"]
    model, e = plan["model"], plan["experts"]
    stride = 2880 * 2880 // 32 * 17  # one expert in one stacked GGUF tensor: 4,406,400 bytes
    assert model["expert_bytes"] == 3 * stride
    assert 3 * stride < model["expert_slot_bytes"] <= 3 * (stride + 2 * 4096)
    fewest_pinned = min(len(ids) for ids in e["pinned"].values())
    assert e["cache_slots"] >= 32 - fewest_pinned
    assert plan["engines"]["llamacpp_stream"]["n_ubatch"] == 512
    w = weight_bytes(preset("20b"), "bf16", "llamacpp-stream")
    assert w.expert_biases == 24 * 32 * (2 * 2880 + 2880) * 4
    plain = weight_bytes(preset("20b"), "bf16", "llamacpp")
    assert w.dense + w.experts_total == plain.dense + plain.experts_total  # the same GGUF, split otherwise
    assert plan["prediction"]["decode_tok_s"] > 0 and plan["engines"]["llamacpp"]["fits"] is False


def test_llamacpp_gpu_split_on_an_8_gb_laptop():
    plan = plan_for("20b", "rtx-4060-laptop", 4096, engine="llamacpp", dense_type="q8_0")
    check_consistent(plan)
    llama, m = plan["engines"]["llamacpp"], plan["memory"]
    assert plan["fits"] and plan["fits_in_ram"]
    assert 0 < llama["n_cpu_moe"] < 24 and llama["n_gpu_layers"] == 99
    assert m["ram_bytes"] + m["gpu_bytes"] == m["total_bytes"]
    assert m["gpu_bytes"] <= m["gpu_budget_bytes"] < 8 * GIB
    assert llama["flags"][llama["flags"].index("--n-cpu-moe") + 1] == str(llama["n_cpu_moe"])
    pattern = re.compile(llama["override_tensors"][0].rsplit("=", 1)[0])
    n = llama["n_cpu_moe"]
    assert pattern.search(f"blk.{n - 1}.ffn_up_exps.weight") and pattern.search("blk.0.ffn_gate_exps.weight")
    assert not pattern.search(f"blk.{n}.ffn_down_exps.weight")


def test_mac_mini_m4_runs_the_official_32k_recipe():
    """llama.cpp ran 20b at -c 32768 with --n-cpu-moe 12 --no-mmap on a 16 GB M4 mini (mlx-lm #644). The plan
    holds it within the app budget but 2.5 MiB inside the reserve it keeps free (since it counts llama.cpp's KQ
    mask, measured: 33.5 MiB at 32k), so it names --context 32512; that one fits with the recipe's settings."""
    edge = plan_for("20b", "mac-mini-m4", 32768, engine="llamacpp", dense_type="q8_0")
    assert edge["memory"]["ram_bytes"] <= edge["memory"]["app_budget_bytes"]
    assert edge["fits"] or any("--context 32512" in a for a in edge["advice"])
    plan = plan_for("20b", "mac-mini-m4", 32512, engine="llamacpp", dense_type="q8_0")
    check_consistent(plan)
    llama = plan["engines"]["llamacpp"]
    assert plan["fits"] and llama["n_cpu_moe"] > 0 and not llama["use_mmap"]  # the Metal working set binds
    assert plan["memory"]["gpu_bytes"] <= plan["memory"]["gpu_budget_bytes"]
    assert 15 < plan["prediction"]["decode_tok_s"] < 40  # measured ~26 tok/s


def test_120b_fits_one_h100():
    plan = plan_for("120b", "h100-80gb", engine="llamacpp", dense_type="q8_0")
    check_consistent(plan)
    assert plan["fits"] and plan["engines"]["llamacpp"]["n_cpu_moe"] == 0


@pytest.mark.parametrize("context, dense_type, expected", [(8192, "f32", "--dense-type bf16"),
                                                         (65536, "bf16", "--context ")])
def test_does_not_fit_names_the_smallest_change(context, dense_type, expected):
    request = PlanRequest(preset("20b"), load_profile("jetson-orin-nano"), context, dense_type=dense_type)
    plan = make_plan(request)
    check_consistent(plan)
    assert not plan["fits"]
    assert any(a["flag"].startswith(expected) for a in plan["alternatives"])
    assert plan["advice"][1].startswith(f"smallest change that fits: {plan['alternatives'][0]['flag']}")
    for a in plan["alternatives"]:  # every suggestion really fits
        flag, value = a["flag"].split()
        key = {"--dense-type": "dense_type", "--kv-type": "kv_type", "--context": "context"}[flag]
        assert fit(request.replace(**{key: int(value) if key == "context" else value})).fits
        if key == "context":
            assert int(value) < context and not fit(request.replace(context=int(value) + 256)).fits


def test_trace_pins_the_popular_experts(tmp_path):
    trace = parametric_trace(256, 24, 32, 4, zipf=2.0, seed=5)
    plan = plan_for("20b", "pixel-9-pro", trace=trace, trace_source="t.npz")
    check_consistent(plan)
    counts = trace.counts()
    for layer in range(24):
        top = int(np.argmax(counts[layer]))
        assert plan["experts"]["order"][str(layer)][0] == top
        assert top in plan["experts"]["pinned"][str(layer)]
    assert plan["experts"]["popularity_source"] == "t.npz"
    uniform = plan_for("20b", "pixel-9-pro")
    assert plan["prediction"]["misses_per_token"] < 0.7 * uniform["prediction"]["misses_per_token"]


def test_calibration_scales_the_prediction(tmp_path):
    request = PlanRequest(preset("20b"), load_profile("raspberry-pi-5"), 8192, engine="llamacpp", dense_type="q8_0")
    slow = tmp_path / "cal.json"
    slow.write_text(json.dumps({"memory_efficiency": 0.275}))
    base = make_plan(request)
    calibrated = make_plan(request.replace(calibration=load_calibration(slow, request)))
    ratio = base["prediction"]["decode_tok_s"] / calibrated["prediction"]["decode_tok_s"]
    assert 1.5 < ratio <= 2.0 + 1e-9  # memory-bound: half the bandwidth, about half the speed
    slow.write_text(json.dumps({"memory_efficiency": 3}))
    with pytest.raises(UsageError, match="expected a number in"):
        load_calibration(slow, request)


def test_calibration_from_a_measured_profile_reproduces_it(tmp_path, cli):
    """An `edgeoss profile --json` result: at the profile's context the calibrated plan predicts the measured
    decode speed; flash traffic keeps its own cost."""
    request = PlanRequest(preset("20b"), load_profile("pixel-9-pro"), 640)
    measured = {"engine": "reference", "prompt_tokens": 512, "gen_tokens": 128,
                "decode_tok_s": {"median": 0.5, "min": 0.4, "max": 0.6}, "disk_read_bytes_per_decode_token": 0.0,
                "engine_stats": {"decode_bytes_read_per_token": 20 * 13_236_480}}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(measured))
    assert load_calibration(path, request).miss_scale == 1.0  # the run does not say what it held: not scaled
    # a run that held 310 experts, 300 pinned (whatever budget): its misses against the plan's for that residency
    measured["engine_stats"]["experts"] = {"pinned_experts": 300, "budget_bytes": 310 * 13_236_480}
    path.write_text(json.dumps(measured))
    assert load_calibration(path, request).miss_scale == \
        pytest.approx(20.0 / uniform_misses_per_token(preset("20b"), 300))
    # below, the run held what this plan holds (its budget's 539 slots, one of them a cache slot)
    experts = make_plan(request)["experts"]
    measured["engine_stats"]["experts"] = {"pinned_experts": experts["resident_slots"] - experts["cache_slots"],
                                           "resident_experts": experts["resident_slots"]}
    path.write_text(json.dumps(measured))
    calibration = load_calibration(path, request)
    assert calibration.memory_efficiency < Calibration().memory_efficiency  # slower than the roofline
    planned_misses = make_plan(request.replace(calibration=Calibration()))["prediction"]["misses_per_token"]
    assert calibration.miss_scale == pytest.approx(20.0 / planned_misses)
    calibration = dataclasses.replace(calibration, miss_scale=1.0)  # the layouts below give the measured 20
    assert calibration.flash_efficiency == Calibration().flash_efficiency
    w = weight_bytes(preset("20b"), "bf16", "reference")
    p = predict(preset("20b"), w, kv_cache(preset("20b"), 640, "f32", "reference"), load_profile("pixel-9-pro"),
                Layout(False, 0, 20.0, 128, reads_per_expert=6), 0, 1, calibration)
    assert p.decode_tok_s == pytest.approx(0.5, rel=1e-6)
    # an engine that timed its reads: the flash efficiency reproduces the measured read time too
    measured["engine_stats"]["decode_miss_seconds_per_token"] = 1.2
    path.write_text(json.dumps(measured))
    timed = dataclasses.replace(load_calibration(path, request), miss_scale=1.0)
    assert timed.flash_efficiency != calibration.flash_efficiency
    p = predict(preset("20b"), w, kv_cache(preset("20b"), 640, "f32", "reference"), load_profile("pixel-9-pro"),
                Layout(False, 0, 20.0, 128, reads_per_expert=6), 0, 1, timed)
    assert p.flash_s_per_token == pytest.approx(1.2, rel=1e-6)
    assert p.decode_tok_s == pytest.approx(0.5, rel=1e-6)
    measured["engine_stats"].pop("decode_miss_seconds_per_token")
    path.write_text(json.dumps(measured))
    proc = cli("plan", "--preset", "20b", "--device", "pixel-9-pro", "--calibrate", path, "--engine", "llamacpp")
    assert proc.returncode == 2 and "measured the 'reference' engine" in proc.stderr
    ok = json.loads(cli("plan", "--preset", "20b", "--device", "pixel-9-pro", "--calibrate", path, "--json",
                        check=True).stdout)
    assert ok["prediction"]["calibration"]["memory_efficiency"] == pytest.approx(calibration.memory_efficiency)
    decode = ok["measured"]["decode_tok_s"]  # at the run's context (640 positions), before and after calibration
    assert ok["measured"]["context"] == 640 and decode["measured"] == 0.5
    assert abs(decode["calibrated_error"]) < 0.01 < abs(decode["uncalibrated_error"])
    assert ok["prediction"]["uncertainty"]["fraction"] == 0.15  # stated: calibrated on the device
    assert make_plan(request)["prediction"]["uncertainty"]["fraction"] == 0.5  # uncalibrated


def test_ortgenai_holds_compact_attention_every_expert_and_a_max_length_kv_cache():
    """What ONNX Runtime holds of an edgeoss folder as exported by default (issue 23): the attention as 4-bit
    digits, the unembedding widened to float32 at load, the embedding mapped as bf16, the checkpoint's MXFP4
    experts mapped, a float32 KV cache of max_length cells in every layer (benchmarks/README.md)."""
    from edgeoss.formats.dense_digits import BYTES_PER_WEIGHT

    spec = preset("20b")
    w = weight_bytes(spec, "bf16", "ortgenai")
    checkpoint = weight_bytes(spec, "bf16", "reference")
    assert w.unembedding == 4 * spec.vocab_size * spec.hidden_size and w.embedding == checkpoint.embedding
    matrices = spec.num_hidden_layers * 2 * spec.hidden_size * (spec.q_dim + spec.kv_dim)
    assert w.attention == pytest.approx(matrices * BYTES_PER_WEIGHT, rel=0.01)  # digits; float32 vectors
    bias_growth = 2 * spec.num_hidden_layers * spec.num_local_experts * (2 * spec.intermediate_size + spec.hidden_size)
    assert w.experts_total == checkpoint.experts_total + bias_growth  # MXFP4 as stored, float32 biases
    assert weight_bytes(spec, "bf16", "ortgenai-int4").expert > w.expert  # int4 + a float32 scale per 32 weights
    plan = plan_for("20b", "h100-80gb", 4096, engine="ortgenai", prompt_tokens=64)
    check_consistent(plan)
    m = plan["memory"]
    assert plan["fits_in_ram"] and plan["model"]["dense_type"] == "compact"
    assert m["kv_cache_bytes"] == spec.num_hidden_layers * 2 * spec.kv_dim * 4 * 4096
    assert 13.5 * GIB < m["ram_bytes"] < 14.3 * GIB  # 0.85 GiB less than float32 attention
    exact = [a for a in plan["advice"] if a.startswith("export onnx --dense exact fits too")]
    assert len(exact) == 1 and f"of RAM instead of {human(m['ram_bytes'])}" in exact[0]  # where float32 fits
    phone = plan_for("20b", "pixel-9-pro", 4096, engine="ortgenai")
    assert not any("--dense exact" in a for a in phone["advice"])


def test_ortgenai_predicts_each_isa_and_names_a_faster_engine_where_fp4_is_slow():
    fast = plan_for("20b", "h100-80gb", 4096, engine="ortgenai")
    by_isa = fast["engines"]["ortgenai"]["by_isa"]
    assert set(by_isa) == {"avx512", "avx2"}
    assert by_isa["avx512"]["decode_tok_s"] == fast["prediction"]["decode_tok_s"]
    assert by_isa["avx512"]["decode_tok_s"] > 10 * by_isa["avx2"]["decode_tok_s"]
    assert not any("slow" in line for line in fast["advice"])
    assert fast["engines"]["ortgenai"]["flags"][:2] == ["--experts", "mxfp4"]
    phone = plan_for("tiny", "snapdragon-x-elite-16gb", 4096, engine="ortgenai")
    assert set(phone["engines"]["ortgenai"]["by_isa"]) == {"arm64"}
    laptop = plan_for("20b", "rtx-4060-laptop", 4096, engine="ortgenai")  # avx2, 11 GiB: does not fit either
    check_consistent(laptop)
    slow = next(line for line in laptop["advice"] if "slow on this device's CPU (avx2)" in line)
    assert "even with the memory" in slow and "needs AVX-512" in slow
    better = [line for line in laptop["advice"] if line.startswith("better here: --engine llamacpp")]
    assert better and all(float(re.search(r"([\d.]+) tok/s", b).group(1)) > 1 for b in better)
    int4 = plan_for("20b", "h100-80gb", 4096, engine="ortgenai-int4")
    assert int4["engines"]["ortgenai"]["experts"] == "int4"
    assert int4["engines"]["ortgenai"]["by_isa"]["avx2"]["decode_tok_s"] > by_isa["avx2"]["decode_tok_s"]


# ---- the property: never over budget -----------------------------------------------------------------
@st.composite
def devices(draw) -> DeviceProfile:
    ram = draw(st.integers(1, 256)) * GIB // 2
    budget = int(ram * draw(st.floats(0.3, 0.95)))
    seq = draw(st.floats(100, 8000))
    gpu = draw(st.sampled_from(["none", "discrete", "unified"]))
    gpu_memory = {"none": 0, "discrete": draw(st.integers(1, 96)) * GIB,
                  "unified": int(ram * draw(st.floats(0.3, 0.8)))}[gpu]
    bandwidth = draw(st.floats(5, 400))
    isa = draw(st.sampled_from(["arm64", "avx2", "avx512"]))
    return DeviceProfile(name="random", description="random", platform=draw(st.sampled_from(
        ["android", "windows", "macos", "linux"])), cpu_arch="arm64" if isa == "arm64" else "x86_64", cpu_isa=isa,
        ram_bytes=ram, app_budget_bytes=budget,
        memory_bandwidth_gb_s=bandwidth, flash_seq_read_mb_s=seq,
        flash_random_read_mb_s=seq * draw(st.floats(0.01, 1)), cpu_threads=8, cpu_gflops=draw(st.floats(10, 2000)),
        max_file_bytes=None, gpu_memory_bytes=gpu_memory, gpu_unified=gpu == "unified",
        gpu_memory_bandwidth_gb_s=bandwidth if gpu == "unified" else 300.0 if gpu_memory else 0.0,
        gpu_gflops=5000.0 if gpu_memory else 0.0)


@settings(max_examples=60, deadline=None)
@given(devices(), st.sampled_from(["tiny", "odd", "20b", "120b"]), st.integers(1, 131072),
       st.sampled_from(["reference", "llamacpp", "llamacpp-stream", "ortgenai", "ortgenai-int4"]),
       st.sampled_from(["f32", "bf16", "q8_0"]),
       st.sampled_from(["f16", "q8_0"]))
def test_plans_never_exceed_the_budget(device, model, context, engine, dense_type, kv_type):
    spec = preset(model)
    context = min(context, spec.max_position_embeddings)
    plan = make_plan(PlanRequest(spec, device, context, engine=engine, dense_type=dense_type, kv_type=kv_type))
    check_consistent(plan)
    if plan["fits"]:
        assert plan["memory"]["ram_bytes"] <= device.app_budget_bytes
        if engine == "llamacpp" and plan["memory"]["gpu_bytes"]:
            assert plan["memory"]["gpu_bytes"] <= device.gpu_memory_bytes
    for a in plan["alternatives"]:
        assert a["fits"] and a["ram_bytes"] <= device.app_budget_bytes


# ---- files and CLI ---------------------------------------------------------------------------------------
def test_plan_file_round_trip_and_errors(tmp_path):
    plan = plan_for("tiny", "raspberry-pi-5")
    path = write_plan(tmp_path / "plan.json", plan)
    assert read_plan(path) == json.loads(json.dumps(plan))
    for broken, message in (({**plan, "format": "x"}, "not an edgeoss plan"), ({**plan, "version": 2}, "version 2"),
                            ({k: v for k, v in plan.items() if k != "memory"}, "has no 'memory'")):
        path.write_text(json.dumps(broken))
        with pytest.raises(UsageError, match=message):
            read_plan(path)
    path.write_text("{")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_plan(path)


def test_cli_20b_on_pixel_text_and_json(cli, tmp_path):
    text = cli("plan", "--preset", "20b", "--device", "pixel-9-pro", "--context", "8192", check=True).stdout
    for word in ("dense weights", "KV cache", "scratch", "engine overhead", "resident experts", "total",
                 "app budget", "headroom", "tok/s"):
        assert word in text
    out = tmp_path / "plan.json"
    proc = cli("plan", "--preset", "20b", "--device", "pixel-9-pro", "--context", "8192", "--json", "-o", out,
               check=True)
    plan = json.loads(proc.stdout)
    assert plan == read_plan(out)
    check_consistent(plan)
    assert plan["format"] == "edgeoss-plan" and plan["version"] == 1 and plan["context"] == 8192
    for key in ("name", "app_budget_bytes"):
        assert key in plan["device"]
    for key in ("n_ctx", "n_gpu_layers", "n_cpu_moe", "use_mmap", "use_mlock", "flags"):
        assert key in plan["engines"]["llamacpp"]
    assert plan["engines"]["ortgenai"]["max_length"] == 8192
    assert plan["engines"]["reference"]["pinned"] == plan["experts"]["pinned"]
    assert plan["engines"]["reference"]["memory_budget"] == plan["experts"]["budget_bytes"]


def test_cli_120b_on_a_phone_says_it_streams(cli):
    proc = cli("plan", "--preset", "120b", "--device", "pixel-9-pro", check=True)
    assert "does not fit in RAM" in proc.stdout and "MB/token" in proc.stdout


def test_cli_does_not_fit_is_plain(cli):
    proc = cli("plan", "--preset", "20b", "--device", "pixel-9-pro", "--engine", "llamacpp", check=True)
    assert "does not fit" in proc.stdout and "--engine reference" in proc.stdout


def test_cli_ortgenai_prints_the_export_and_each_isa(cli):
    proc = cli("plan", "--preset", "20b", "--device", "h100-80gb", "--engine", "ortgenai", "--context", "4096",
               check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("onnxruntime-genai:"))
    assert "export onnx CHECKPOINT --experts mxfp4" in line
    assert re.search(r"avx512 [\d.]+ tok/s, avx2 [\d.]+ tok/s", " ".join(proc.stdout.split()))


def test_cli_checkpoint_folder_trace_and_evaluate(cli, tiny_hf, tmp_path):
    cal, ev = tmp_path / "cal.npz", tmp_path / "ev.npz"
    cli("plan", "trace", tiny_hf, "-o", cal, "--tokens", "300", "--zipf", "1.2", "--reuse", "0.2", check=True)
    cli("plan", "trace", "--preset", "tiny", "-o", ev, "--tokens", "300", "--zipf", "1.2", "--reuse", "0.2",
        "--sample", "1", check=True)
    device = tmp_path / "small.toml"  # the Pi, with room for half of tiny's 32 experts
    memory = fit(PlanRequest(preset("tiny"), load_profile("raspberry-pi-5"), 64)).memory
    budget = memory["ram_bytes"] - memory["resident_expert_bytes"] + 128 * 2**20 + 16 * 6912
    device.write_text((REPO / "profiles" / "raspberry-pi-5.toml").read_text()
                      .replace('app_budget = "15 GiB"', f"app_budget = {budget}"))
    plan_path = tmp_path / "plan.json"
    plan = json.loads(cli("plan", tiny_hf, "--device", device, "--context", "64", "--trace", cal, "--json", "-o",
                          plan_path, check=True).stdout)
    check_consistent(plan)
    assert plan["model"]["source"] == str(tiny_hf) and plan["fits"] and not plan["fits_in_ram"]
    png = tmp_path / "curve.png"
    result = json.loads(cli("plan", "evaluate", plan_path, "--trace", ev, "--plot", png, "--json", check=True).stdout)
    r = {k: v["misses_per_token"] for k, v in result["policies"].items()}
    assert r["belady"] <= r["plan"] <= r["none"] and r["belady"] <= r["lru"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(result["curve"]) == 10 and all(row["belady"] <= row["plan"] for row in result["curve"])
    text = cli("plan", "evaluate", plan_path, "--trace", ev, check=True).stdout
    assert "belady" in text and "misses/token" in text


@pytest.mark.parametrize("args, message", [
    (["--preset", "20b", "--device", "pixel-9-pro", "--context", "0"], "--context 0"),
    (["--preset", "20b", "--device", "pixel-9-pro", "--context", "200000"],  # the model's limit and the device's
     "gpt-oss-20b accepts at most 131072 positions; the largest context that fits pixel-9-pro with the reference "
     "engine is 122112"),
    (["--preset", "20b", "--device", "nokia-3310"], "unknown device"),
    (["--device", "pixel-9-pro"], "CHECKPOINT folder or --preset"),
])
def test_cli_errors_are_one_line(cli, args, message):
    proc = cli("plan", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_rejects_a_trace_of_another_model(cli, tmp_path):
    t = write_trace(tmp_path / "tiny.npz", parametric_trace(10, 4, 8, 2))
    proc = cli("plan", "--preset", "20b", "--device", "pixel-9-pro", "--trace", t)
    assert proc.returncode == 2 and "trace has 4 layers x 8 experts" in proc.stderr


def test_trace_plans_predict_misses_on_tokens_they_did_not_see():
    """A short trace of a router without skew: replaying the trace its placement was made from flatters the
    plan (it pinned what those tokens happened to use); the prediction is cross-validated instead, and lands
    near the truth for such a router (every placement misses Lk x (1 - resident fraction))."""
    from edgeoss.planner.cache_sim import replay
    from edgeoss.planner.placement import place_experts
    from edgeoss.planner.plan import held_out_misses

    spec = preset("20b")
    trace = parametric_trace(64, 24, 32, 4, zipf=0.0, seed=3)
    slots = 384  # half of the experts
    truth = 24 * 4 * 0.5
    p = place_experts(slots, 24, 32, 4, trace)
    in_sample = replay(trace, "plan", p.pinned, p.cache_slots, p.order, 1).misses_per_token
    held_out = held_out_misses(trace, slots, spec)
    assert in_sample < 0.9 * truth  # optimistic
    assert abs(held_out - truth) < 0.08 * truth
    plan = make_plan(PlanRequest(spec, load_profile("pixel-9-pro"), 4096, trace=trace))
    resident = plan["experts"]["resident_slots"]
    assert plan["prediction"]["misses_per_token"] == pytest.approx(held_out_misses(trace, resident, spec))


def test_the_kv_cache_is_what_each_engine_allocates_and_the_advice_names_what_shrinks_it():
    """llama.cpp: full layers pad256(n_ctx) cells, sliding layers a ring of pad256(window + n_ubatch) unless
    swa_full (its library's default, off in edgeoss's engines); onnxruntime-genai: max_length float32 cells in every
    layer; the reference: float32, exactly the positions (benchmarks/README.md measures all three)."""
    spec = preset("20b")
    per_cell_f16 = 2 * spec.kv_dim * 2
    ring = kv_cache(spec, 32768, "f16", "llamacpp")
    assert (ring.full_cells, ring.sliding_cells) == (32768, 768)
    assert kv_cache(spec, 32768, "f16", "llamacpp", swa_full=True).sliding_bytes == \
        len(spec.sliding_layers) * 32768 * per_cell_f16
    assert kv_cache(spec, 32768, "f32", "ortgenai").total_bytes == spec.num_hidden_layers * 32768 * 2 * per_cell_f16
    advice = " ".join(make_plan(PlanRequest(spec, load_profile("pixel-9-pro"), 32768,
                                            engine="llamacpp-stream"))["advice"])
    assert "KV cache 786.00 MiB at context 32768" in advice and "keep swa_full off" in advice
    assert "-ctk q8_0 -ctv q8_0 makes it" in advice
    onnx = " ".join(make_plan(PlanRequest(spec, load_profile("h100-80gb"), 131072, engine="ortgenai"))["advice"])
    assert "preallocates search.max_length = 131072 cells of float32 in every layer" in onnx
    reference = " ".join(make_plan(PlanRequest(spec, load_profile("snapdragon-x-elite-16gb"), 65536))["advice"])
    assert "KV cache 3.01 GiB at context 65536" in reference and "float32" in reference
    assert not [a for a in make_plan(PlanRequest(spec, load_profile("pixel-9-pro"), 4096,
                                                 engine="llamacpp-stream"))["advice"] if a.startswith("KV cache")]


def test_a_measured_profile_predicts_decode_from_the_engines_own_kernel_rates(tmp_path):
    """A profile with the engines' measured decode rates (`profiles measure`): the dense weights and every routed
    expert through their matvecs, attention at its own rate (the reference) or as the KV read at the dense rate
    (llama.cpp), instead of the roofline; a run on the device then scales the rates (rate_scale)."""
    spec = preset("20b")
    base = load_profile("pixel-9-pro")
    rated = dataclasses.replace(base, reference_expert_gb_s=10.0, reference_dense_gb_s=20.0,
                                reference_attention_gflops=5.0, llamacpp_expert_gb_s=12.0, llamacpp_dense_gb_s=25.0)
    w, kv = weight_bytes(spec, "bf16", "reference"), kv_cache(spec, 4096, "f32", "reference")
    weights_s = w.dense_per_token / 20e9 + 96 * w.expert / 10e9
    attention_s = 4 * spec.q_dim * (12 * kv.full_cells + 12 * kv.sliding_cells) / 5e9
    p = make_plan(PlanRequest(spec, rated, 4096))["prediction"]
    assert p["memory_s_per_token"] == pytest.approx(weights_s) and p["compute_s_per_token"] == pytest.approx(attention_s)
    assert p["decode_s_per_token"] == pytest.approx(weights_s + attention_s + p["flash_s_per_token"])
    short = make_plan(PlanRequest(spec, rated, 4096, decode_positions=64))["prediction"]  # a run's cache fill
    kv64 = kv_cache(spec, 64, "f32", "reference")
    assert short["compute_s_per_token"] == pytest.approx(4 * spec.q_dim * 12 * (kv64.full_cells + kv64.sliding_cells)
                                                         / 5e9)
    assert (short["decode_positions"], p["decode_positions"]) == (64, 4096)
    unrated = make_plan(PlanRequest(spec, base, 4096))["prediction"]
    assert unrated["decode_tok_s"] != pytest.approx(p["decode_tok_s"], rel=0.01)  # the roofline, as before
    ws, kvs = weight_bytes(spec, "bf16", "llamacpp-stream"), kv_cache(spec, 4096, "f16", "llamacpp-stream")
    stream = make_plan(PlanRequest(spec, rated, 4096, engine="llamacpp-stream"))["prediction"]
    assert stream["memory_s_per_token"] == pytest.approx(ws.dense_per_token / 25e9 + 96 * ws.expert / 12e9)
    assert stream["compute_s_per_token"] == pytest.approx(kvs.total_bytes / 25e9)
    assert (p["uncertainty"]["fraction"], unrated["uncertainty"]["fraction"]) == (0.25, 0.5)  # stated, measured
    # a run that went at half the rates' speed (no misses, the cache filled to the context): calibration halves them
    measured = {"engine": "reference", "prompt_tokens": 4000, "gen_tokens": 96,
                "decode_tok_s": {"median": 0.5 / (weights_s + attention_s)}, "disk_read_bytes_per_decode_token": 0.0,
                "engine_stats": {"decode_bytes_read_per_token": 0.0, "n_ctx": 4096}}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(measured))
    request = PlanRequest(spec, rated, 4096)
    calibration = load_calibration(path, request)
    assert calibration.rate_scale == pytest.approx(0.5, rel=1e-3)
    calibrated = make_plan(request.replace(calibration=calibration))["prediction"]
    assert calibrated["memory_s_per_token"] == pytest.approx(2 * weights_s, rel=1e-3)


def test_a_rated_profile_puts_a_slow_run_with_misses_down_to_the_misses(tmp_path):
    """Where the kernel rates were measured, a calibration run that missed experts and ran slower than predicted
    fits a cost per miss (miss_overhead_s), not slower kernels: the calibrated plan reproduces the run, and a plan
    with every expert resident keeps the rates."""
    spec = preset("20b")
    rated = dataclasses.replace(load_profile("pixel-9-pro"), reference_expert_gb_s=10.0, reference_dense_gb_s=20.0,
                                reference_attention_gflops=5.0)
    request = PlanRequest(spec, rated, 4096, decode_positions=4096)
    plan = make_plan(request)
    predicted, experts = plan["prediction"], plan["experts"]
    measured = {"engine": "reference", "prompt_tokens": 4000, "gen_tokens": 96,
                "decode_tok_s": {"median": 0.8 * predicted["decode_tok_s"]}, "disk_read_bytes_per_decode_token": 0.0,
                "engine_stats": {"decode_bytes_read_per_token": predicted["miss_bytes_per_token"],
                                 "experts": {"pinned_experts": experts["resident_slots"] - experts["cache_slots"],
                                             "resident_experts": experts["resident_slots"]}}}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(measured))
    calibration = load_calibration(path, request)
    assert calibration.rate_scale == 1.0 and calibration.miss_scale == pytest.approx(1.0)
    extra = 1 / measured["decode_tok_s"]["median"] - predicted["decode_s_per_token"]
    assert calibration.miss_overhead_s == pytest.approx(extra / predicted["misses_per_token"], rel=1e-3)
    again = make_plan(request.replace(calibration=calibration))["prediction"]
    assert again["decode_tok_s"] == pytest.approx(measured["decode_tok_s"]["median"], rel=1e-3)
    resident = make_plan(request.replace(calibration=calibration, device=dataclasses.replace(
        rated, ram_bytes=64 << 30, app_budget_bytes=48 << 30)))["prediction"]
    assert resident["misses_per_token"] == 0 and resident["memory_s_per_token"] == pytest.approx(
        predicted["memory_s_per_token"])
