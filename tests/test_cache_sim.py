"""Cache replay: hand-checked policies, Belady against exhaustive search, the orderings the planner relies on,
parametric traces, and replay against the reference runtime's own expert store."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeoss.planner.cache_sim import access_stream, compare, next_uses, replay
from edgeoss.planner.placement import hot_order, most_popular, place_experts
from edgeoss.formats.routing_trace import FORMAT, VERSION, Trace, read_trace, write_trace
from edgeoss.planner.traces import locality, parametric_trace, popularity, split_trace


def trace_of(rows: list[list[list[int]]], num_experts: int) -> Trace:
    """A trace from explicit expert ids [tokens][layers][k]."""
    experts = np.array(rows, dtype=np.int16)
    n = experts.shape[0]
    return Trace(experts, np.full(experts.shape, 1 / experts.shape[2], np.float32), np.arange(n, dtype=np.int32),
                 np.zeros(n, np.int32), num_experts, {"format": FORMAT, "version": VERSION})


def no_pins(layers: int, experts: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((layers, experts), bool), np.tile(np.arange(experts), (layers, 1))


def _with_slots(trace: Trace, policy: str, slots: int) -> float:
    """Misses per token with nothing pinned: `cache_slots` is then the whole slot count of every policy."""
    pinned, rank = no_pins(trace.num_layers, trace.num_experts)
    return replay(trace, policy, pinned, slots, rank, 1).misses_per_token


# one layer, k = 1: the classic page-reference string a b c a d a b (ids 0 1 2 0 3 0 1), 2 slots
CLASSIC = [0, 1, 2, 0, 3, 0, 1]


def classic_trace() -> Trace:
    return trace_of([[[x]] for x in CLASSIC], 4)


def test_lru_lfu_belady_by_hand():
    t = classic_trace()
    # LRU: a b c(evict a) a(evict b) d(evict c) a(hit) b(evict d) -> 6 misses
    assert _with_slots(t, "lru", 2) * 7 == 6
    # LFU (perfect, LRU among equals): a b c(evict a) a(a:2, evict b) d(evict c) a b(b:2 vs d:1, evict d) -> 6
    assert _with_slots(t, "lfu", 2) * 7 == 6
    # Belady with bypass: a b c(bypass: next use never) a d(bypass) a b -> 4 misses: a, b, c, d
    assert _with_slots(t, "belady", 2) * 7 == 4
    assert _with_slots(t, "none", 2) == 1.0


def test_pinned_experts_always_hit_and_the_pool_is_lru():
    t = classic_trace()
    pinned = np.zeros((1, 4), bool)
    pinned[0, 0] = True  # a pinned, one LRU slot: b c(evict b) d(evict c) b(evict d) -> 4 misses
    r = replay(t, "plan", pinned, 1, np.tile(np.arange(4), (1, 1)), bytes_per_expert=10)
    assert r.misses_per_token * 7 == pytest.approx(4)
    assert r.flash_bytes_per_token == pytest.approx(40 / 7)
    assert r.slots == 2


def test_next_uses():
    assert next_uses(np.array(CLASSIC)).tolist() == [3, 6, 7, 5, 7, 7, 7]


def test_access_stream_is_layer_major_within_a_token_and_sorted_within_a_layer():
    t = trace_of([[[3, 1], [0, 2]], [[1, 0], [2, 3]]], 4)
    assert access_stream(t).tolist() == [1, 3, 4, 6, 0, 1, 6, 7]


def optimal_misses(items: list[int], capacity: int, initial: frozenset[int]) -> int:
    """Fewest misses over every admit/evict decision (exhaustive; tiny inputs only)."""
    @functools.lru_cache(maxsize=None)
    def best(i: int, cache: frozenset[int]) -> int:
        if i == len(items):
            return 0
        x = items[i]
        if x in cache:
            return best(i + 1, cache)
        options = [best(i + 1, cache)]  # bypass
        if len(cache) < capacity:
            options.append(best(i + 1, cache | {x}))
        else:
            options += [best(i + 1, (cache - {y}) | {x}) for y in cache]
        return 1 + min(options)

    return best(0, initial)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=14), st.integers(1, 4))
def test_belady_equals_exhaustive_optimum(items, capacity):
    t = trace_of([[[x]] for x in items], 6)
    assert round(_with_slots(t, "belady", capacity) * len(items)) == optimal_misses(items, capacity, frozenset())


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.floats(0, 2), st.floats(0, 0.9), st.integers(1, 40))
def test_policy_orderings(seed, zipf, reuse, slots):
    """belady <= plan <= none and belady <= lru, lfu for any trace and any plan of the same slot count."""
    cal = parametric_trace(64, 3, 8, 2, zipf=zipf, reuse=reuse, seed=seed, sample=0)
    ev = parametric_trace(64, 3, 8, 2, zipf=zipf, reuse=reuse, seed=seed, sample=1)
    p = place_experts(min(slots, 24), 3, 8, 2, cal)
    r = {k: v.misses_per_token for k, v in compare(ev, p.pinned, p.cache_slots, p.order, 1).items()}
    assert r["belady"] <= r["plan"] <= r["none"] == 6
    assert r["belady"] <= r["lru"] and r["belady"] <= r["lfu"]
    if p.slots == 24:
        assert r["plan"] == 0


def test_plan_beats_lru_on_skewed_traces_and_matches_static_optimum_on_uniform_ones():
    cal = parametric_trace(1024, 24, 32, 4, zipf=1.0, reuse=0.0, seed=3, sample=0)
    ev = parametric_trace(1024, 24, 32, 4, zipf=1.0, reuse=0.0, seed=3, sample=1)
    p = place_experts(384, 24, 32, 4, cal)
    r = {k: v.misses_per_token for k, v in compare(ev, p.pinned, p.cache_slots, p.order, 1).items()}
    assert r["plan"] <= 0.8 * r["lru"]  # popularity pays: >= 20 % fewer misses than LRU at zipf 1
    uniform = parametric_trace(1024, 24, 32, 4, zipf=0.0, seed=3, sample=1)
    u = place_experts(384, 24, 32, 4)  # no trace: uniform pinning
    got = replay(uniform, "plan", u.pinned, u.cache_slots, u.order, 1).misses_per_token
    assert u.cache_slots == 1
    assert got == pytest.approx(96 * (1 - 383 / 768), rel=0.03)  # what the planner predicts without a trace


def test_locality_by_hand():
    # one layer of 4 experts, k = 2: {0,1} -> {1,2} -> {1,2}: Jaccard 1/3 then 1
    trace = trace_of([[[0, 1]], [[1, 2]], [[2, 1]]], 4)
    assert locality(trace)[0] == pytest.approx((1 / 3 + 1) / 2)


def test_parametric_trace_knobs():
    flat = parametric_trace(2000, 2, 16, 2, zipf=0.0, reuse=0.0, seed=1)
    skewed = parametric_trace(2000, 2, 16, 2, zipf=1.5, reuse=0.0, seed=1)
    sticky = parametric_trace(2000, 2, 16, 2, zipf=0.0, reuse=0.8, seed=1)
    assert np.allclose(popularity(flat).sum(axis=1), 2)
    assert popularity(flat).max() < 0.2 < 0.5 < popularity(skewed).max()

    def overlap(t: Trace) -> float:
        e = t.experts[:, 0].astype(int)
        return np.mean([len(set(e[i]) & set(e[i + 1])) for i in range(len(e) - 1)])

    assert overlap(flat) == pytest.approx(2 * 2 / 16, abs=0.05)  # independent draws
    assert overlap(sticky) > 1.5
    consecutive, shuffled = locality(flat)
    assert consecutive == pytest.approx(shuffled, abs=0.02)  # no reuse: as good as a shuffled order
    consecutive, shuffled = locality(sticky)
    assert consecutive > 0.6 > 0.2 > shuffled
    for t in (flat, skewed, sticky):  # k distinct experts per token and layer
        assert (np.sort(t.experts, axis=-1)[..., 1:] != np.sort(t.experts, axis=-1)[..., :-1]).all()
    same_router = parametric_trace(2000, 2, 16, 2, zipf=1.5, seed=1, sample=7)
    assert (popularity(same_router).argmax(1) == popularity(skewed).argmax(1)).all()


def test_parametric_trace_round_trips_through_the_runtime_format(tmp_path):
    t = parametric_trace(50, 3, 8, 2, zipf=1.0, reuse=0.3, seed=2)
    path = write_trace(tmp_path / "t.npz", t)
    back = read_trace(path)
    assert np.array_equal(back.experts, t.experts) and np.allclose(back.weights, t.weights)
    assert back.meta["parametric"] == {"zipf": 1.0, "reuse": 0.3, "seed": 2, "sample": 0}
    first, rest = split_trace(back, 0.5)
    assert (first.num_tokens, rest.num_tokens) == (25, 25)


def test_most_popular_and_hot_order():
    pop = np.array([[0.1, 0.9, 0.5, 0.5], [0.2, 0.2, 0.8, 0.8]])
    mask = most_popular(pop, 3)
    assert mask.tolist() == [[False, True, False, False], [False, False, True, True]]
    order = hot_order(pop, mask)
    assert order.tolist() == [[1, 2, 3, 0], [2, 3, 0, 1]]
    uniform = most_popular(np.full((3, 4), 0.5), 5)  # ties: round robin over layers
    assert uniform.sum(axis=1).tolist() == [2, 2, 1]


def test_replay_reproduces_the_reference_runtime_expert_store(tiny_hf, tmp_path):
    """Token-by-token decoding in the reference runtime with a plan: its store's misses equal the replay's."""
    from edgeoss.runtimes.reference import ReferenceEngine
    from edgeoss.formats.spec import preset, sizes

    spec_bytes = sizes(preset("tiny")).bytes_per_expert
    cal = parametric_trace(64, 4, 8, 2, zipf=1.0, seed=0)
    p = place_experts(12, 4, 8, 2, cal)  # 12 of 32 experts resident
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"experts": {"pinned": p.pinned_ids(), "budget_bytes": p.slots * spec_bytes}}))
    engine = ReferenceEngine(tiny_hf, plan=plan_file, trace=True)
    try:
        tokens = np.random.default_rng(0).integers(0, 201088, 40)
        engine.prefill(tokens[:1])
        for token in tokens[1:]:
            engine.step(int(token))
        recorded = engine.routing_trace()
        store = engine.stats()["experts"]
    finally:
        engine.close()
    r = replay(recorded, "plan", p.pinned, p.cache_slots, p.order, spec_bytes)
    assert round(r.misses_per_token * recorded.num_tokens) == store["misses"]
    assert store["peak_bytes"] <= p.slots * spec_bytes
