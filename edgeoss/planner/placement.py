"""Which experts stay in RAM: pinned experts per layer, extra cache slots, the order that puts hot experts first.

Given S expert slots (the expert budget divided by the bytes of one expert):
- pinned: the S - C most popular (layer, expert) pairs over all layers, from a router trace's statistics
  (how often each expert was chosen per token). For a router that picks experts independently token to
  token, keeping the most popular experts is the best any policy can do without knowing the future, and
  layers with more skew get more slots. Without a trace, every expert is equally popular and slots go round
  robin over the layers (expert 0 of every layer, then expert 1, ...), so each layer gets S / L or one more.
- cache slots C: slots that hold the most recently missed experts (LRU), for routers that reuse the previous
  token's experts. With a trace, C is the candidate (1, Lk/4, Lk/2, Lk, 2Lk, ... up to S, L layers x k
  experts per token) with the fewest misses when the trace is replayed; without one, C = 1: a layer's experts
  come back only after a whole token, so under an independent router an LRU pool smaller than one token's
  misses is flushed before anything in it is reused, and pinning is the better use of a slot. C >= 1
  whenever some expert is not pinned: the reference runtime reads a missed expert into its cache first.
- order: per layer, a permutation of the expert ids: pinned experts first, each group by popularity
  (ties by id). Exporters store experts in this order (and permute the router rows to match) so the hot
  experts of a layer are contiguous at the front of its stacked tensors; `order[l][i]` is the original id of
  the expert stored at position i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cache_sim import replay
from ..formats.routing_trace import Trace
from .traces import popularity


@dataclass(frozen=True)
class ExpertPlacement:
    pinned: np.ndarray  # bool [layers, experts]
    cache_slots: int
    order: np.ndarray  # int [layers, experts]: order[l, i] = original id stored at position i
    popularity: np.ndarray  # float [layers, experts]: choices per token

    @property
    def slots(self) -> int:
        return int(self.pinned.sum()) + self.cache_slots

    def pinned_ids(self) -> dict[str, list[int]]:
        """{"<layer>": [ids]}, most popular first (the plan file's `experts.pinned`)."""
        return {str(layer): [int(e) for e in self.order[layer] if self.pinned[layer, e]]
                for layer in range(self.pinned.shape[0])}

    def on_flash_ids(self) -> dict[str, list[int]]:
        return {str(layer): [int(e) for e in self.order[layer] if not self.pinned[layer, e]]
                for layer in range(self.pinned.shape[0])}


def uniform_popularity(layers: int, experts: int, k: int) -> np.ndarray:
    return np.full((layers, experts), k / experts)


def hot_order(popularity: np.ndarray, pinned: np.ndarray) -> np.ndarray:
    """Per layer: pinned first, then the rest, each by popularity (descending), ties by id."""
    layers, experts = popularity.shape
    ids = np.broadcast_to(np.arange(experts), (layers, experts))
    keys = (ids, -popularity, ~pinned)  # np.lexsort sorts by the last key first
    return np.stack([np.lexsort(tuple(k[layer] for k in keys)) for layer in range(layers)])


def most_popular(popularity: np.ndarray, count: int) -> np.ndarray:
    """bool mask of the `count` most popular (layer, expert) pairs; ties go round robin over layers."""
    layers, experts = popularity.shape
    rank_in_layer = np.argsort(np.argsort(-popularity, axis=1, kind="stable"), axis=1, kind="stable")
    layer_ids = np.broadcast_to(np.arange(layers)[:, None], (layers, experts))
    order = np.lexsort((layer_ids.ravel(), rank_in_layer.ravel(), -popularity.ravel()))
    mask = np.zeros(layers * experts, dtype=bool)
    mask[order[:count]] = True
    return mask.reshape(layers, experts)


def cache_slot_candidates(slots: int, per_token: int) -> list[int]:
    """1, Lk/4, Lk/2, Lk, 2Lk, 4Lk, ... up to `slots` (Lk = experts one token uses)."""
    sizes = {min(1, slots)}
    power = -2
    while (size := max(1, round(per_token * 2.0 ** power))) < slots:
        sizes.add(size)
        power += 1
    sizes.add(slots)  # every slot a cache slot: plain LRU
    return sorted(sizes)


def place_experts(slots: int, layers: int, experts: int, k: int, trace: Trace | None = None,
                  cache_slots: int | None = None) -> ExpertPlacement:
    """Pinned experts, cache slots (chosen here unless given) and hot-first order for `slots` resident experts."""
    total = layers * experts
    slots = max(0, min(slots, total))
    popularity = _popularity(trace, layers, experts, k)
    if slots == total:
        cache_slots = 0
    elif cache_slots is not None:
        cache_slots = max(0, min(slots, cache_slots))
    elif trace is None:
        cache_slots = min(slots, 1)
    else:
        cache_slots = _best_cache_slots(trace, popularity, slots, layers * k)
    pinned = most_popular(popularity, slots - cache_slots)
    return ExpertPlacement(pinned, cache_slots, hot_order(popularity, pinned), popularity)


def _popularity(trace: Trace | None, layers: int, experts: int, k: int) -> np.ndarray:
    return uniform_popularity(layers, experts, k) if trace is None else popularity(trace)


def _best_cache_slots(trace: Trace, popularity: np.ndarray, slots: int, per_token: int) -> int:
    best, best_misses = 0, np.inf
    for cache_slots in cache_slot_candidates(slots, per_token):
        pinned = most_popular(popularity, slots - cache_slots)
        misses = replay(trace, "plan", pinned, cache_slots, hot_order(popularity, pinned), 1).misses_per_token
        if misses < best_misses - 1e-9:
            best, best_misses = cache_slots, misses
    return best


def cpu_moe_layers(layers: int, gpu_free_bytes: int, expert_layer_bytes: int) -> int:
    """llama.cpp `--n-cpu-moe`: how many leading layers keep their experts in host RAM so the rest fit on
    the GPU (llama.cpp places experts per layer and per projection, never per expert)."""
    on_gpu = max(0, min(layers, gpu_free_bytes // expert_layer_bytes)) if expert_layer_bytes else layers
    return layers - on_gpu
