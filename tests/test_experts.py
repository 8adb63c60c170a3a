"""The expert store: only selected experts are read, the byte budget holds, counters are exact, plans pin."""

import json
from collections import OrderedDict

import numpy as np
import pytest

from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.errors import UsageError
from edgeoss.runtimes.engine import all_logits
from edgeoss.runtimes.experts import ExpertPlan, ExpertStore, load_plan
from edgeoss.runtimes.reference import ReferenceEngine
from edgeoss.formats.spec import sizes


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 201088, size=60)


@pytest.fixture(scope="module")
def unbounded(tiny_hf, tokens):
    """Logits and routing of the whole sequence with every expert mapped (prefill 40, then 20 steps)."""
    engine = ReferenceEngine(tiny_hf, trace=True)
    logits = [engine.prefill(tokens[:40])] + [engine.step(int(t))[None] for t in tokens[40:]]
    trace = engine.routing_trace()
    stats = engine.stats()
    engine.close()
    return np.concatenate(logits), trace, stats


def _requests(trace) -> list[list[tuple[int, int]]]:
    """(layer, expert) requests of each forward call (prefill of 40, then one per step): within a call each
    layer asks for its selected experts once each, in id order, as the engine does."""
    calls = [slice(0, 40)] + [slice(i, i + 1) for i in range(40, trace.num_tokens)]
    return [[(layer, int(e)) for layer in range(trace.num_layers) for e in np.unique(trace.experts[rows, layer])]
            for rows in calls]


def _expected_lru(trace, capacity: int, pinned: set = frozenset()) -> list[int]:
    """Misses per forward call of an LRU holding `capacity` experts beside the pinned ones."""
    lru: OrderedDict = OrderedDict()
    misses = []
    for call in _requests(trace):
        n = 0
        for key in call:
                if key in pinned:
                    continue
                if key in lru:
                    lru.move_to_end(key)
                    continue
                n += 1
                if len(lru) == capacity:
                    lru.popitem(last=False)
                lru[key] = True
        misses.append(n)
    return misses


def test_mmap_mode_reads_each_used_expert_once(unbounded, tiny_hf):
    _, trace, stats = unbounded
    per_expert = sizes(Checkpoint.open(tiny_hf).spec).bytes_per_expert
    used = int((trace.counts() > 0).sum())
    e = stats["experts"]
    assert e["budget_bytes"] is None and e["misses"] == used
    assert e["bytes_read"] == used * per_expert == e["resident_bytes"]
    assert e["hits"] + e["misses"] == sum(map(len, _requests(trace)))


def test_budget_holds_and_counts_every_byte(unbounded, tiny_hf, tokens):
    logits, trace, _ = unbounded
    per_expert = sizes(Checkpoint.open(tiny_hf).spec).bytes_per_expert
    budget = 3 * per_expert + per_expert // 2  # room for 3 experts; each layer alone needs 2 or more
    engine = ReferenceEngine(tiny_hf, memory_budget=budget)
    peak = 0
    original_get = engine.experts.get

    def watched_get(layer, e):
        nonlocal peak
        expert = original_get(layer, e)
        peak = max(peak, engine.experts.resident_bytes)
        return expert

    engine.experts.get = watched_get
    ours = [engine.prefill(tokens[:40])] + [engine.step(int(t))[None] for t in tokens[40:]]
    assert np.array_equal(np.concatenate(ours), logits), "a budget must not change the result"
    stats = engine.stats()
    e = stats["experts"]
    assert peak <= budget and e["peak_bytes"] <= budget and e["resident_bytes"] == 3 * per_expert
    expected = _expected_lru(trace, capacity=3)
    assert e["misses"] == sum(expected)
    assert e["bytes_read"] == sum(expected) * per_expert
    assert stats["prefill_bytes_read"] == expected[0] * per_expert
    assert engine.step_reads == [m * per_expert for m in expected[1:]]
    assert stats["decode_bytes_read_per_token"] == pytest.approx(sum(expected[1:]) * per_expert / 20)
    engine.close()


def test_pinned_experts_are_never_evicted_nor_missed(unbounded, tiny_hf, tokens, tmp_path):
    logits, trace, _ = unbounded
    per_expert = sizes(Checkpoint.open(tiny_hf).spec).bytes_per_expert
    popular = {layer: [int(i) for i in np.argsort(-trace.counts()[layer])[:2]] for layer in range(4)}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"experts": {"pinned": {str(k): v for k, v in popular.items()},
                                            "budget_bytes": 10 * per_expert}}))
    engine = ReferenceEngine(tiny_hf, plan=plan)  # the plan's budget applies: 8 pinned + 2 LRU slots
    ours = [engine.prefill(tokens[:40])] + [engine.step(int(t))[None] for t in tokens[40:]]
    assert np.array_equal(np.concatenate(ours), logits)
    e = engine.stats()["experts"]
    assert e["budget_bytes"] == 10 * per_expert and e["pinned_experts"] == 8
    assert e["pinned_bytes"] == 8 * per_expert and e["peak_bytes"] <= 10 * per_expert
    pinned = {(layer, i) for layer, ids in popular.items() for i in ids}
    assert e["misses"] == sum(_expected_lru(trace, capacity=2, pinned=pinned))
    engine.close()


def test_store_reads_exactly_the_checkpoint_bytes(tiny_original):
    ckpt = Checkpoint.open(tiny_original)
    store = ExpertStore(ckpt, budget=1 << 20)
    expert = store.get(2, 5)
    for proj, matrix, bias in (("gate_up", expert.gate_up, expert.gate_up_bias),
                               ("down", expert.down, expert.down_bias)):
        blocks, scales, bias_bits = ckpt.expert(2, proj, 5)
        assert np.array_equal(matrix.blocks, blocks) and np.array_equal(matrix.scales, scales)
        assert np.array_equal(bias, bias_bits)
        assert not np.shares_memory(matrix.blocks, blocks), "budget mode holds private copies"
    assert expert.nbytes == store.stored_expert_bytes == sizes(ckpt.spec).bytes_per_expert
    assert store.get(2, 5) is expert and store.counters.hits == 1 and store.counters.misses == 1
    store.close()
    ckpt.close()


def test_budget_errors_are_one_line(tiny_hf, tmp_path):
    with pytest.raises(UsageError, match="bad size '6 parsecs'"):
        ReferenceEngine(tiny_hf, memory_budget="6 parsecs")
    with pytest.raises(UsageError, match="leaves less than one expert"):
        ReferenceEngine(tiny_hf, memory_budget="1KiB")
    with pytest.raises(UsageError, match="plan pins experts of layer 9"):
        ReferenceEngine(tiny_hf, plan=ExpertPlan(pinned={9: (0,)}))
    with pytest.raises(UsageError, match="plan pins expert 8 of layer 0"):
        ReferenceEngine(tiny_hf, plan=ExpertPlan(pinned={0: (8,)}))


def test_plan_shapes(tmp_path):
    simple = tmp_path / "pins.json"
    simple.write_text(json.dumps({"pinned": {"0": [3, 1, 3], "2": []}}))
    assert load_plan(simple) == ExpertPlan(pinned={0: (1, 3), 2: ()}, budget_bytes=None)
    planner = tmp_path / "plan.json"
    planner.write_text(json.dumps({"device": {"name": "x"}, "experts": {"pinned": {"1": [0]}, "cache_slots": 4,
                                                                        "budget_bytes": 12345}}))
    assert load_plan(planner) == ExpertPlan(pinned={1: (0,)}, budget_bytes=12345)
    for bad, message in (("[1, 2]", "expected"), ('{"pinned": {"x": [1]}}', "pinned\\['x'\\]"),
                         ('{"pinned": {"0": [1.5]}}', "list of expert ids"),
                         ('{"experts": {"budget_bytes": -3}}', "budget_bytes must be a positive integer"),
                         ("{", "not valid JSON")):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(UsageError, match=message):
            load_plan(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="no such plan file"):
        load_plan(tmp_path / "missing.json")


def test_all_logits_is_unchanged_by_a_tight_budget(tiny_hf, tokens):
    free, tight = ReferenceEngine(tiny_hf), ReferenceEngine(tiny_hf, memory_budget="14KiB")  # 2 experts
    assert np.array_equal(all_logits(free, tokens[:30], chunk=7), all_logits(tight, tokens[:30]))
    assert tight.stats()["experts"]["peak_bytes"] <= 14 * 1024
    free.close(), tight.close()


def test_a_plan_that_pins_every_expert_needs_no_cache_slot(tiny_hf, tmp_path):
    import json

    from edgeoss.runtimes.engine import load_engine
    from edgeoss.formats.spec import preset, sizes

    spec = preset("tiny")
    pinned = {str(layer): list(range(spec.num_local_experts)) for layer in range(spec.num_hidden_layers)}
    budget = sizes(spec).bytes_per_expert * spec.num_hidden_layers * spec.num_local_experts
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"experts": {"pinned": pinned, "budget_bytes": budget}}))
    engine = load_engine("reference", tiny_hf, plan=plan)
    engine.prefill([1, 2, 3])
    assert engine.stats()["experts"]["misses"] == 0
