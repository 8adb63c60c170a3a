"""The llama.cpp expert store (runtimes/llamacpp_store.py) against plain llama.cpp on real GGUFs.

Budgets force misses; logits must equal plain llama.cpp's bit for bit at the same ubatch (llama.cpp's own
logits move between ubatch sizes), over prefill and decode; the counters add up; the budget holds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from edgeoss.cli import main  # noqa: E402
from edgeoss.errors import UsageError  # noqa: E402
from edgeoss.exporters.gguf import export_gguf  # noqa: E402
from edgeoss.formats.ggml_gguf import read_metadata  # noqa: E402
from edgeoss.formats.gguf_meta import expert_order, stored_expert_ids  # noqa: E402
from edgeoss.runtimes.llamacpp import LlamaCppEngine  # noqa: E402
from edgeoss.runtimes.llamacpp_store import PAGE  # noqa: E402

PREFILL, DECODE = 200, 64  # 264 positions


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, tiny_hf, odd_original):
    folder = tmp_path_factory.mktemp("store")
    return {"tiny": export_gguf(tiny_hf, folder / "tiny.gguf", progress=False)[0],
            "odd": export_gguf(odd_original, folder / "odd.gguf", progress=False)[0]}


def tokens(n: int, seed: int = 4) -> list[int]:
    return np.random.default_rng(seed).integers(0, 199998, n).tolist()


def run(engine: LlamaCppEngine, ids: list[int]) -> np.ndarray:
    """Prefill the first PREFILL tokens in one call, then decode the rest one token at a time."""
    engine.reset()
    rows = [engine.prefill(ids[:PREFILL])]
    rows += [engine.step(t)[None] for t in ids[PREFILL:]]
    return np.concatenate(rows)


def expert_cost(engine: LlamaCppEngine) -> int:
    return max(engine.store.cost)


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_streamed_logits_equal_plain_llamacpp_bit_for_bit(ggufs, name):
    ids = tokens(PREFILL + DECODE)
    probe = LlamaCppEngine(ggufs[name], n_ctx=512, memory_budget=1 << 30)
    spec, cost, per_layer = probe.spec, expert_cost(probe), probe.spec.num_local_experts
    probe.close()
    k, layers = spec.num_experts_per_tok, spec.num_hidden_layers
    plain: dict[int, np.ndarray] = {}
    # budgets: k slots (ubatch 1), between k and a layer's union (a shrunk ubatch), a layer's union (llama.cpp's
    # own ubatch) with misses, and more than a layer but far less than the model
    for slots in (k, k + 2, per_layer, per_layer + 3):
        engine = LlamaCppEngine(ggufs[name], n_ctx=512, memory_budget=slots * cost)
        try:
            ubatch = engine.options["n_ubatch"]
            assert ubatch == (512 if slots >= per_layer else max(1, slots // k))
            if ubatch not in plain:
                reference = LlamaCppEngine(ggufs[name], n_ctx=512, repack=False, n_ubatch=ubatch)
                plain[ubatch] = run(reference, ids)
                reference.close()
            got = run(engine, ids)
            assert np.array_equal(got.view(np.uint32), plain[ubatch].view(np.uint32)), \
                f"{slots} slots, ubatch {ubatch}: max |d| {np.abs(got - plain[ubatch]).max()}"
            s = engine.stats()["experts"]
            assert s["misses"] > 0 and s["hits"] + s["misses"] == k * layers * len(ids)
            assert s["peak_bytes"] <= s["budget_bytes"] and s["resident_bytes"] <= s["budget_bytes"]
            assert engine.store.resident_pages_bytes() <= s["resident_bytes"]
            assert s["resident_experts"] == s["pinned_experts"] + s["cached_experts"]
            assert s["weights_bound"] and s["original_mapping_released"]
            assert s["bytes_read"] == s["misses"] * engine.store.expert_bytes
        finally:
            engine.close()


def test_a_store_that_loads_the_wrong_experts_is_caught(ggufs):
    """Negative control: the same store with routing ignored (always the top-k lowest ids) is far off."""
    ids = tokens(64)
    plain = LlamaCppEngine(ggufs["tiny"], n_ctx=128, repack=False, n_ubatch=1)
    expected = run_prefill(plain, ids)
    plain.close()
    probe = LlamaCppEngine(ggufs["tiny"], n_ctx=128, memory_budget=1 << 30)
    cost = expert_cost(probe)
    probe.close()
    engine = LlamaCppEngine(ggufs["tiny"], n_ctx=128, memory_budget=3 * cost)
    route = engine.store._route
    engine.store._route = lambda layer, routed: route(layer, np.zeros_like(routed))
    try:
        assert np.abs(run_prefill(engine, ids) - expected).max() > 0.1
    finally:
        engine.close()


def run_prefill(engine: LlamaCppEngine, ids: list[int]) -> np.ndarray:
    engine.reset()
    return engine.prefill(ids)


def test_a_budget_below_one_layers_top_k_is_one_line(ggufs):
    probe = LlamaCppEngine(ggufs["odd"], n_ctx=64, memory_budget=1 << 30)
    cost, k = expert_cost(probe), probe.spec.num_experts_per_tok
    probe.close()
    with pytest.raises(UsageError, match=rf"holds {k - 1} experts beside the 0 pinned; one token's top-{k}"):
        LlamaCppEngine(ggufs["odd"], n_ctx=64, memory_budget=(k - 1) * cost)


def test_a_plans_pinned_experts_are_found_in_a_reordered_gguf(ggufs, tiny_hf, tmp_path):
    """A GGUF exported with a plan's expert order records it; the plan's (checkpoint) ids map to stored slots,
    are read at start and never evicted."""
    order = {0: [5, 3, 0, 1, 2, 4, 6, 7], 2: [7, 6, 5, 4, 3, 2, 1, 0]}
    path = export_gguf(tiny_hf, tmp_path / "ordered.gguf", expert_order=order, progress=False)[0]
    meta = read_metadata(path)
    probe = LlamaCppEngine(path, n_ctx=64, memory_budget=1 << 30)
    spec, cost = probe.spec, expert_cost(probe)
    probe.close()
    assert expert_order(meta, spec)[0] == order[0] and expert_order(meta, spec)[1] == list(range(8))
    assert stored_expert_ids(meta, {0: [5, 3], 2: [0]}, spec) == {0: (0, 1), 2: (7,)}
    plan = tmp_path / "plan.json"
    pinned = {"0": [5, 3], "2": [0]}
    plan.write_text(json.dumps({"experts": {"pinned": pinned, "budget_bytes": 3 * cost + spec.num_experts_per_tok
                                            * cost}}))
    engine = LlamaCppEngine(path, n_ctx=128, plan=plan)
    try:
        engine.prefill(tokens(100))
        for _ in range(8):
            engine.step(1)
        resident = engine.store._resident
        assert {(0, 0), (0, 1), (2, 7)} <= resident
        assert engine.stats()["experts"]["pinned_experts"] == 3
        for layer, slot in ((0, 0), (0, 1), (2, 7)):
            first, end = engine.store.tensors[f"blk.{layer}.ffn_up_exps.weight"].span(slot)
            assert end - first >= PAGE
    finally:
        engine.close()
    plain = LlamaCppEngine(ggufs["tiny"], n_ctx=128, repack=False, n_ubatch=engine.options["n_ubatch"])
    reordered = LlamaCppEngine(path, n_ctx=128, plan=plan)
    try:
        ids = tokens(40)
        assert np.abs(run_prefill(reordered, ids) - run_prefill(plain, ids)).max() <= 1e-4  # same function
    finally:
        plain.close()
        reordered.close()


def edgeoss(capsys, *args: str) -> tuple[int, str]:
    """The CLI in-process: (exit code, stderr)."""
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_the_cli_streams_with_a_budget(ggufs, tmp_path, capsys):
    out = tmp_path / "logits.npy"
    ids = tokens(24)
    code, stderr = edgeoss(capsys, "logits", ggufs["tiny"], "--engine", "llamacpp", "--memory-budget", "64KiB",
                           "--tokens", ",".join(map(str, ids)), "--out", out)
    assert code == 0, stderr
    plain = LlamaCppEngine(ggufs["tiny"], n_ctx=64, repack=False, n_ubatch=1)
    try:
        assert np.array_equal(np.load(out), run_prefill(plain, ids))
    finally:
        plain.close()
    code, stderr = edgeoss(capsys, "logits", ggufs["tiny"], "--engine", "llamacpp", "--memory-budget", "20KiB",
                           "--tokens", "1,2", "--out", tmp_path / "none.npy")
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "one token's top-2" in lines[0]
    assert not (tmp_path / "none.npy").exists()
    code, stderr = edgeoss(capsys, "logits", ggufs["tiny"], "--engine", "onnxruntime", "--memory-budget", "1MiB",
                           "--tokens", "1", "--out", out)
    assert code == 2 and "--memory-budget: only the reference and llamacpp engines" in stderr


def test_a_plan_for_the_store_runs_profiles_and_calibrates(ggufs, tmp_path):
    """plan --engine llamacpp-stream -> profile with its settings -> plan --calibrate: the profile carries the
    store's figures and the calibrated plan reproduces the measured decode speed."""
    from dataclasses import replace

    from edgeoss.planner.memory import kv_cache, weight_bytes
    from edgeoss.planner.plan import PlanRequest, fit, load_calibration, make_plan, write_plan
    from edgeoss.planner.predict import Calibration, Layout, predict
    from edgeoss.planner.profiles import load_profile
    from edgeoss.runtimes.llamacpp import options_from_stream_plan
    from edgeoss.validate.profiler import profile

    probe = LlamaCppEngine(ggufs["tiny"], n_ctx=64, memory_budget=1 << 30)
    spec = probe.spec
    probe.close()
    device = replace(load_profile("pixel-9-pro"), platform="linux")
    request = PlanRequest(spec, device, 256, engine="llamacpp-stream", prompt_tokens=32)
    everything = fit(request).memory
    fixed = everything["ram_bytes"] - everything["resident_expert_bytes"]
    slot = make_plan(request)["model"]["expert_slot_bytes"]
    budget = fixed + max(128 << 20, 0) + 12 * slot  # the reserve is 128 MiB here: 12 expert slots of 32
    request = request.replace(device=replace(device, app_budget_bytes=budget))
    plan = make_plan(request)
    assert plan["fits"] and not plan["fits_in_ram"] and plan["experts"]["cache_slots"] >= 2
    path = write_plan(tmp_path / "plan.json", plan)
    options = options_from_stream_plan(plan["engines"]["llamacpp_stream"], path)
    result = profile("llamacpp", ggufs["tiny"], prompt_tokens=32, gen_tokens=24, runs=1, options=options).as_dict()
    assert result["engine"] == "llamacpp-stream"
    stats = result["engine_stats"]
    assert stats["experts"]["misses"] > 0 and stats["decode_bytes_read_per_token"] > 0
    assert stats["experts"]["budget_bytes"] == plan["experts"]["budget_bytes"]
    assert stats["experts"]["pinned_experts"] == sum(map(len, plan["experts"]["pinned"].values()))
    measured = tmp_path / "profile.json"
    measured.write_text(json.dumps(result))
    calibration = load_calibration(measured, request)
    assert stats["n_ctx"] == 256  # the context the run was loaded with: the one calibration predicts at
    at = request.replace(calibration=calibration, context=stats["n_ctx"])
    w = weight_bytes(spec, "bf16", "llamacpp-stream")
    misses = stats["decode_bytes_read_per_token"] / w.expert  # the measured misses, as calibration reads them
    layout = Layout(False, 0, misses, 512, reads_per_expert=3)
    kv = kv_cache(spec, at.context, "f16", "llamacpp-stream")
    # the layout gives the measured misses; miss_scale maps the plan's own figure onto them
    predicted = predict(spec, w, kv, at.device, layout, 0, 1, replace(calibration, miss_scale=1.0))
    assert predicted.decode_tok_s == pytest.approx(result["decode_tok_s"]["median"], rel=1e-6)
    assert calibration != Calibration()
    # the calibrated plan itself (its own placement, its misses scaled to the measured ones) predicts the run
    replanned = make_plan(request.replace(calibration=calibration))["prediction"]
    assert replanned["decode_tok_s"] == pytest.approx(result["decode_tok_s"]["median"], rel=0.02)


def test_last_logits_only_through_many_ubatches(ggufs):
    """As an app runs it (logits for the last position only), a prompt split into one-token ubatches."""
    ids = tokens(12)
    probe = LlamaCppEngine(ggufs["odd"], n_ctx=64, memory_budget=1 << 30)
    cost, k = expert_cost(probe), probe.spec.num_experts_per_tok
    probe.close()
    engine = LlamaCppEngine(ggufs["odd"], n_ctx=64, memory_budget=k * cost, logits_all=False)
    plain = LlamaCppEngine(ggufs["odd"], n_ctx=64, repack=False, n_ubatch=1, logits_all=False)
    try:
        assert engine.options["n_ubatch"] == 1
        got, expected = engine.prefill(ids), plain.prefill(ids)
        assert got.shape == (1, engine.spec.vocab_size) and np.array_equal(got, expected)
        s = engine.stats()["experts"]
        assert s["hits"] + s["misses"] == k * engine.spec.num_hidden_layers * len(ids)
    finally:
        engine.close()
        plain.close()
