"""Replay a router trace through an expert cache and count misses: the plan's policy against LRU, LFU and
Belady's optimum, all with the same number of expert slots.

The access stream is the trace in execution order: token by token, layer by layer, the k experts of a layer
in id order (the order the reference runtime visits them, so a replay of its token-by-token decoding
reproduces its expert store's hits and misses exactly; batched prefill visits a layer's experts for the whole
batch at once, which the token-by-token replay approximates); an item is one expert of one layer
(`layer * num_experts + expert`). A miss is an expert that must be read
from flash before the layer can run. Policies:
- plan: the plan's pinned experts are always resident; its `cache_slots` extra slots hold the most recently
  missed experts (one LRU pool shared by all layers). Pinned experts are loaded at start, the pool is empty.
- lru: every slot is one LRU pool.
- lfu: every slot is one pool that evicts the expert with the fewest uses so far (perfect LFU: counts are
  kept for evicted experts too), the least recently used among equals.
- belady: evicts the resident expert whose next use is furthest away, and does not admit a missed expert
  whose next use is further than all of them (Belady's MIN with bypass): the fewest misses any policy can
  have with that many slots, given the future.
- none: no slots; every access misses.
Every policy starts from the same state, holding the plan's pinned experts (the others in the order of the
plan's `order`, least popular treated as least recently used), so no policy is charged a cold start the
others skip; Belady's optimality then holds for the whole replay: belady <= plan, belady <= lru.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..errors import UsageError
from ..formats.routing_trace import Trace

POLICIES = ("plan", "lru", "lfu", "belady", "none")


def access_stream(trace: Trace) -> np.ndarray:
    """int32 [tokens * layers * k]: item ids in execution order."""
    layer_base = (np.arange(trace.num_layers, dtype=np.int32) * trace.num_experts)[None, :, None]
    return (np.sort(trace.experts.astype(np.int32), axis=-1) + layer_base).ravel()


def next_uses(items: np.ndarray) -> np.ndarray:
    """int64 [n]: the index of the next access to the same item, or n if there is none."""
    n = len(items)
    order = np.lexsort((np.arange(n), items))  # by item, then by time
    result = np.full(n, n, dtype=np.int64)
    same = items[order[1:]] == items[order[:-1]]
    result[order[:-1][same]] = order[1:][same]
    return result


# ---- a binary min-heap of (key_a, key_b, item) entries on parallel arrays, for numba ----------------------
@numba.njit(cache=True)
def _less(ka, kb, i, j):
    return ka[i] < ka[j] or (ka[i] == ka[j] and kb[i] < kb[j])


@numba.njit(cache=True)
def _swap(ka, kb, kv, i, j):
    ka[i], ka[j] = ka[j], ka[i]
    kb[i], kb[j] = kb[j], kb[i]
    kv[i], kv[j] = kv[j], kv[i]


@numba.njit(cache=True)
def _push(ka, kb, kv, size, a, b, item):
    ka[size], kb[size], kv[size] = a, b, item
    i = size
    while i > 0:
        parent = (i - 1) // 2
        if not _less(ka, kb, i, parent):
            break
        _swap(ka, kb, kv, i, parent)
        i = parent
    return size + 1


@numba.njit(cache=True)
def _pop(ka, kb, kv, size):
    size -= 1
    _swap(ka, kb, kv, 0, size)
    i = 0
    while True:
        left, right, smallest = 2 * i + 1, 2 * i + 2, i
        if left < size and _less(ka, kb, left, smallest):
            smallest = left
        if right < size and _less(ka, kb, right, smallest):
            smallest = right
        if smallest == i:
            return size
        _swap(ka, kb, kv, i, smallest)
        i = smallest


# ---- policies ---------------------------------------------------------------------------------------------
@numba.njit(cache=True)
def _lru(items, per_token, n_items, pinned, capacity, initial):
    """LRU pool of `capacity` slots over the non-pinned items; `initial` fills it, least recent first."""
    misses = np.zeros(len(items) // per_token, dtype=np.int64)
    prev = np.full(n_items, -1, dtype=np.int64)
    nxt = np.full(n_items, -1, dtype=np.int64)
    resident = np.zeros(n_items, dtype=np.bool_)
    head, tail, size = -1, -1, 0  # head = least recently used
    for x in initial:
        if size < capacity and not pinned[x] and not resident[x]:
            resident[x] = True
            prev[x] = tail
            if tail >= 0:
                nxt[tail] = x
            else:
                head = x
            tail, size = x, size + 1
    for i in range(len(items)):
        x = items[i]
        if pinned[x]:
            continue
        if resident[x]:
            if x != tail:  # unlink, then append at the tail
                if prev[x] >= 0:
                    nxt[prev[x]] = nxt[x]
                else:
                    head = nxt[x]
                prev[nxt[x]] = prev[x]
                prev[x], nxt[x] = tail, -1
                nxt[tail] = x
                tail = x
            continue
        misses[i // per_token] += 1
        if capacity == 0:
            continue
        if size == capacity:
            victim = head
            head = nxt[victim]
            if head >= 0:
                prev[head] = -1
            else:
                tail = -1
            resident[victim], prev[victim], nxt[victim] = False, -1, -1
            size -= 1
        resident[x] = True
        prev[x], nxt[x] = tail, -1
        if tail >= 0:
            nxt[tail] = x
        else:
            head = x
        tail, size = x, size + 1
    return misses


@numba.njit(cache=True)
def _lfu(items, per_token, n_items, capacity, initial):
    misses = np.zeros(len(items) // per_token, dtype=np.int64)
    count = np.zeros(n_items, dtype=np.int64)
    last = np.zeros(n_items, dtype=np.int64)
    resident = np.zeros(n_items, dtype=np.bool_)
    slots = len(items) + len(initial) + 1
    ka, kb, kv = np.empty(slots, np.int64), np.empty(slots, np.int64), np.empty(slots, np.int64)
    heap, size = 0, 0
    for j in range(len(initial)):  # initial residents: no uses yet, least popular least recent
        x = initial[j]
        if size < capacity and not resident[x]:
            resident[x], last[x] = True, j - len(initial)
            heap = _push(ka, kb, kv, heap, 0, last[x], x)
            size += 1
    for i in range(len(items)):
        x = items[i]
        count[x] += 1
        last[x] = i
        if resident[x]:
            heap = _push(ka, kb, kv, heap, count[x], i, x)  # the old entry goes stale
            continue
        misses[i // per_token] += 1
        if capacity == 0:
            continue
        if size == capacity:
            while True:  # drop stale entries until the top is a resident item's current key
                y = kv[0]
                valid = resident[y] and ka[0] == count[y] and kb[0] == last[y]
                heap = _pop(ka, kb, kv, heap)
                if valid:
                    resident[y] = False
                    size -= 1
                    break
        resident[x] = True
        size += 1
        heap = _push(ka, kb, kv, heap, count[x], i, x)
    return misses


@numba.njit(cache=True)
def _belady(items, next_use, first_use, per_token, n_items, capacity, initial):
    """Belady's MIN with bypass; heap keys are -(next use) so the top is the furthest."""
    misses = np.zeros(len(items) // per_token, dtype=np.int64)
    resident = np.zeros(n_items, dtype=np.bool_)
    current = np.zeros(n_items, dtype=np.int64)  # next use of each resident item
    slots = len(items) + len(initial) + 1
    ka, kb, kv = np.empty(slots, np.int64), np.empty(slots, np.int64), np.empty(slots, np.int64)
    heap, size = 0, 0
    for x in initial:
        if size < capacity and not resident[x]:
            resident[x], current[x] = True, first_use[x]
            heap = _push(ka, kb, kv, heap, -first_use[x], x, x)
            size += 1
    for i in range(len(items)):
        x = items[i]
        nu = next_use[i]
        if resident[x]:
            current[x] = nu
            heap = _push(ka, kb, kv, heap, -nu, x, x)
            continue
        misses[i // per_token] += 1
        if capacity == 0:
            continue
        if size == capacity:
            while not (resident[kv[0]] and -ka[0] == current[kv[0]]):
                heap = _pop(ka, kb, kv, heap)
            if -ka[0] <= nu:  # nothing resident is needed later than x: do not admit it
                continue
            resident[kv[0]] = False
            heap = _pop(ka, kb, kv, heap)
            size -= 1
        resident[x], current[x] = True, nu
        heap = _push(ka, kb, kv, heap, -nu, x, x)
        size += 1
    return misses


@dataclass(frozen=True)
class Replay:
    policy: str
    slots: int  # expert slots (pinned + cache for the plan)
    misses_per_token: float
    flash_bytes_per_token: float
    hit_rate: float

    def as_dict(self) -> dict:
        return {"policy": self.policy, "slots": self.slots, "misses_per_token": self.misses_per_token,
                "flash_bytes_per_token": self.flash_bytes_per_token, "hit_rate": self.hit_rate}


def replay(trace: Trace, policy: str, pinned: np.ndarray, cache_slots: int, rank: np.ndarray,
           bytes_per_expert: int) -> Replay:
    """Misses of one policy with the plan's slot count (pinned.sum() + cache_slots).

    pinned: bool [layers, experts], the plan's pinned set (the shared start state of every policy).
    rank: [layers, experts] popularity order per layer (the plan's `order`), used to order the start state.
    """
    if policy not in POLICIES:
        raise UsageError(f"unknown cache policy {policy!r} (choose from {', '.join(POLICIES)})")
    if pinned.shape != (trace.num_layers, trace.num_experts):
        raise UsageError(f"trace has {trace.num_layers} layers x {trace.num_experts} experts, the plan "
                         f"{pinned.shape[0]} x {pinned.shape[1]}")
    items = access_stream(trace)
    per_token = trace.num_layers * trace.top_k
    n_items = pinned.size
    slots = int(pinned.sum()) + cache_slots
    initial = _start_state(pinned, rank)
    if policy == "plan":
        misses = _lru(items, per_token, n_items, pinned.ravel(), cache_slots, np.empty(0, np.int64))
    elif policy == "lru":
        misses = _lru(items, per_token, n_items, np.zeros(n_items, np.bool_), slots, initial)
    elif policy == "lfu":
        misses = _lfu(items, per_token, n_items, slots, initial)
    elif policy == "belady":
        nu = next_uses(items)
        first = np.full(n_items, len(items), dtype=np.int64)
        np.minimum.at(first, items, np.arange(len(items)))
        misses = _belady(items, nu, first, per_token, n_items, slots, initial)
    else:
        misses = np.full(trace.num_tokens, per_token, dtype=np.int64)
    per = float(misses.mean())
    return Replay(policy, slots if policy != "none" else 0, per, per * bytes_per_expert, 1.0 - per / per_token)


def plan_policy_misses(items: np.ndarray, pinned: np.ndarray, cache_slots: int) -> np.ndarray:
    """int64 [len(items)]: 1 where the plan's policy misses, for an access stream in any order (e.g. a
    prefill batch's experts grouped per layer, as the reference runtime visits them)."""
    return _lru(np.asarray(items, np.int32), 1, pinned.size, pinned.ravel(), cache_slots, np.empty(0, np.int64))


def _start_state(pinned: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The pinned items, least popular first (so LRU evicts those first)."""
    layers, experts = pinned.shape
    position = np.empty_like(rank)
    position[np.arange(layers)[:, None], rank] = np.arange(experts)[None, :]  # position of each expert
    layer_ids, expert_ids = np.nonzero(pinned)
    by_unpopularity = np.lexsort((layer_ids, -position[layer_ids, expert_ids]))
    return (layer_ids * experts + expert_ids)[by_unpopularity].astype(np.int64)


def compare(trace: Trace, pinned: np.ndarray, cache_slots: int, rank: np.ndarray, bytes_per_expert: int,
            policies: tuple[str, ...] = POLICIES) -> dict[str, Replay]:
    return {p: replay(trace, p, pinned, cache_slots, rank, bytes_per_expert) for p in policies}
