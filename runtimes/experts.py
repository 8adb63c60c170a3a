"""Where the reference runtime gets its experts: read on demand, held within a byte budget.

Only the experts a token selects are ever read. Two modes:

- no budget ("all experts in RAM"): each expert is a zero-copy view of the mmapped checkpoint; the OS pages
  its bytes in on first use and keeps them.
- a byte budget: an expert is read with pread (its blocks, scales and biases, located with
  `Checkpoint.byte_range(name, expert=e)`) into a cache that never holds more than `budget` bytes. A plan
  may pin experts (read once at start, never evicted); the rest of the budget is an LRU cache.

Counters (both modes): hits, misses, and bytes read from disk (stored bytes of each miss; in the mmap mode a
miss is an expert's first use), and the wall time misses cost (reading, dropping the page cache, building
the expert: what the planner's flash term stands for).

The budget is the only copy: after each pread the store tells the kernel to drop those file pages
(POSIX_FADV_DONTNEED), so the bytes it read do not stay behind as page cache. On a phone the page cache is
charged to the app's budget (as in a memory cgroup), and an expert kept twice would push out the dense
weights the runtime maps, which would then be read from flash again.

An `Expert` keeps its weights as stored: MXFP4 matrices and bf16 biases.

Plans: `load_plan(path)` accepts `{"pinned": {"<layer>": [expert ids]}}` or the planner's plan.json with a
top-level `"experts": {"pinned": {...}, "budget_bytes": N}`.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from edgeoss.formats.checkpoint import EXPERT_PROJECTIONS, Checkpoint
from edgeoss.errors import CheckpointError, UsageError
from edgeoss.formats.mxfp4 import dequantize
from edgeoss.runtimes import kernels
from edgeoss.formats.safetensors_io import bf16_to_f32
from edgeoss.units import human
from edgeoss.jsonfile import read_json


DROP_PAGE_CACHE = hasattr(os, "posix_fadvise")  # Linux, Android; not macOS or Windows


class Projection(Protocol):
    """A weight matrix W [rows, in] that can multiply activations: x [T, in] -> x @ W.T [T, rows]."""

    nbytes: int

    def matmul(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class MXFP4Matrix:
    """W as stored: E2M1 codes packed two per byte (blocks [rows, G, 16]) and E8M0 scales [rows, G]."""

    blocks: np.ndarray
    scales: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.blocks.nbytes + self.scales.nbytes

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return kernels.mxfp4_matmul(x, self.blocks, self.scales)


@dataclass(frozen=True, eq=False)
class DenseMatrix:
    """W as float32 [rows, in] (an expert transform's output, e.g. dequantized or requantized weights)."""

    weight: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weight.T


@dataclass(frozen=True, eq=False)
class Expert:
    """One expert of one layer. gate_up rows interleave gate (even) and up (odd); biases are bf16 bits."""

    layer: int
    index: int
    gate_up: Projection
    gate_up_bias: np.ndarray
    down: Projection
    down_bias: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.gate_up.nbytes + self.gate_up_bias.nbytes + self.down.nbytes + self.down_bias.nbytes

    def biases(self) -> tuple[np.ndarray, np.ndarray]:
        return bf16_to_f32(self.gate_up_bias), bf16_to_f32(self.down_bias)


ExpertTransform = Callable[[Expert], Expert]


def dense_experts(expert: Expert) -> Expert:
    """An expert transform: the same weights dequantized to float32 (matmuls through BLAS, as transformers)."""
    def dense(m: MXFP4Matrix) -> DenseMatrix:
        return DenseMatrix(dequantize(m.blocks, m.scales))

    return Expert(expert.layer, expert.index, dense(expert.gate_up), expert.gate_up_bias, dense(expert.down),
                  expert.down_bias)


# ---- plans ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertPlan:
    """Experts to pin per layer, and the budget the plan was made for (None: not given)."""

    pinned: dict[int, tuple[int, ...]] = field(default_factory=dict)
    budget_bytes: int | None = None


def load_plan(path: str | Path) -> ExpertPlan:
    path = Path(path)
    doc = read_json(path, "plan file")
    section = doc.get("experts", doc) if isinstance(doc, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("pinned", {}), dict):
        raise UsageError(f"{path}: expected {{\"pinned\": {{\"<layer>\": [expert ids]}}}} "
                         "or {\"experts\": {\"pinned\": ..., \"budget_bytes\": N}}")
    pinned: dict[int, tuple[int, ...]] = {}
    for layer, ids in section.get("pinned", {}).items():
        if not str(layer).isdigit() or not isinstance(ids, list) or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise UsageError(f"{path}: pinned[{layer!r}] must map a layer number to a list of expert ids")
        pinned[int(layer)] = tuple(sorted(set(ids)))
    budget = section.get("budget_bytes")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0):
        raise UsageError(f"{path}: budget_bytes must be a positive integer, got {budget!r}")
    return ExpertPlan(pinned, budget)


# ---- the store -----------------------------------------------------------------------------------------
@dataclass
class StoreCounters:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    miss_seconds: float = 0.0  # wall time of misses: read, page-cache drop, expert built (what flash costs)


class ExpertStore:
    """Experts of a checkpoint, read on demand within `budget` bytes (None: lazily mapped, no limit)."""

    def __init__(self, ckpt: Checkpoint, budget: int | None = None, plan: ExpertPlan | None = None,
                 transform: ExpertTransform | None = None):
        self.ckpt, self.spec, self.budget, self.transform = ckpt, ckpt.spec, budget, transform
        # bytes one expert occupies in the checkpoint: blocks, scales and biases of both projections
        self.stored_expert_bytes = sum(ckpt.byte_range(f"layers.0.{proj}.{part}", expert=0)[2]
                                       for proj in EXPERT_PROJECTIONS for part in ("blocks", "scales", "bias"))
        self.counters = StoreCounters()
        self._fds: dict[Path, int] = {}
        self._cache: OrderedDict[tuple[int, int], Expert] = OrderedDict()
        self._cache_bytes = 0
        plan = plan or ExpertPlan()
        self._check_plan(plan)
        pinned = [(layer, e) for layer, ids in sorted(plan.pinned.items()) for e in ids]
        self._check_fits(self.stored_expert_bytes, len(pinned), len(pinned) * self.stored_expert_bytes)
        self._pinned = {key: self._load(*key) for key in pinned}
        self.pinned_bytes = self.peak_bytes = sum(x.nbytes for x in self._pinned.values())

    def _check_fits(self, expert_bytes: int, pinned: int, pinned_bytes: int) -> None:
        everything_pinned = pinned == self.spec.num_hidden_layers * self.spec.num_local_experts
        if everything_pinned and self.budget is not None and self.budget >= pinned_bytes:
            return  # nothing is ever fetched: no cache slot needed
        if self.budget is not None and self.budget - pinned_bytes < expert_bytes:
            raise UsageError(f"expert budget {human(self.budget)} leaves less than one expert "
                             f"({human(expert_bytes)}) beside {pinned} pinned experts ({human(pinned_bytes)})")

    def _check_plan(self, plan: ExpertPlan) -> None:
        layers, experts = self.spec.num_hidden_layers, self.spec.num_local_experts
        for layer, ids in plan.pinned.items():
            if not 0 <= layer < layers:
                raise UsageError(f"plan pins experts of layer {layer}, but the model has layers 0..{layers - 1}")
            bad = [e for e in ids if not 0 <= e < experts]
            if bad:
                raise UsageError(f"plan pins expert {bad[0]} of layer {layer}, but layers have experts "
                                 f"0..{experts - 1}")

    # ---- reading -------------------------------------------------------------------------------------
    def _pread(self, name: str, expert: int, dtype, shape) -> np.ndarray:
        path, offset, nbytes = self.ckpt.byte_range(name, expert=expert)
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
            if DROP_PAGE_CACHE:  # no readahead past an expert: those pages would stay behind as page cache
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        buffer = np.empty(nbytes, dtype=np.uint8)
        done = 0
        while done < nbytes:
            n = os.preadv(fd, [memoryview(buffer)[done:]], offset + done)
            if n <= 0:
                raise CheckpointError(str(path), f"file ends inside expert {expert}", name)
            done += n
        if DROP_PAGE_CACHE:
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)  # the store's copy is the only one
        buffer.setflags(write=False)  # like the mapped views: one kernel specialization, identical numerics
        return buffer.view(dtype).reshape(shape)

    def _read(self, layer: int, e: int) -> Expert:
        """One expert: zero-copy views of the mapping (no budget) or private copies read with pread."""
        parts = {}
        for proj in EXPERT_PROJECTIONS:
            blocks, scales, bias = self.ckpt.expert(layer, proj, e)  # views: shapes and dtypes
            if self.budget is not None:
                blocks, scales, bias = (self._pread(f"layers.{layer}.{proj}.{part}", e, view.dtype, view.shape)
                                        for part, view in (("blocks", blocks), ("scales", scales), ("bias", bias)))
            parts[proj] = (MXFP4Matrix(blocks, scales), bias)
        return Expert(layer, e, parts["gate_up"][0], parts["gate_up"][1], parts["down"][0], parts["down"][1])

    def _load(self, layer: int, e: int) -> Expert:
        expert = self._read(layer, e)
        return self.transform(expert) if self.transform else expert

    # ---- lookup --------------------------------------------------------------------------------------
    def get(self, layer: int, e: int) -> Expert:
        key = (layer, e)
        expert = self._pinned.get(key)
        if expert is not None:
            self.counters.hits += 1
            return expert
        expert = self._cache.get(key)
        if expert is not None:
            self.counters.hits += 1
            self._cache.move_to_end(key)
            return expert
        self.counters.misses += 1
        self.counters.bytes_read += self.stored_expert_bytes
        start = time.perf_counter()
        expert = self._load(layer, e)
        if self.budget is not None:
            self._check_fits(expert.nbytes, len(self._pinned), self.pinned_bytes)  # a transform may grow it
            while self._cache and self.pinned_bytes + self._cache_bytes + expert.nbytes > self.budget:
                _, evicted = self._cache.popitem(last=False)
                self._cache_bytes -= evicted.nbytes
                del evicted  # its buffers go back to the OS now, inside the miss's time
        self.counters.miss_seconds += time.perf_counter() - start
        self._cache[key] = expert
        self._cache_bytes += expert.nbytes
        self.peak_bytes = max(self.peak_bytes, self.pinned_bytes + self._cache_bytes)
        return expert

    @property
    def resident_bytes(self) -> int:
        """Bytes of experts held now (pinned + cached; in the mmap mode, the experts touched so far)."""
        return self.pinned_bytes + self._cache_bytes

    def stats(self) -> dict:
        c = self.counters
        return {"mode": "mmap (all experts allowed in RAM)" if self.budget is None else "budget",
                "budget_bytes": self.budget, "pinned_experts": len(self._pinned), "pinned_bytes": self.pinned_bytes,
                "cached_experts": len(self._cache), "resident_bytes": self.resident_bytes,
                "peak_bytes": self.peak_bytes, "hits": c.hits, "misses": c.misses, "bytes_read": c.bytes_read,
                "miss_seconds": c.miss_seconds,
                "hit_rate": c.hits / max(1, c.hits + c.misses)}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._cache.clear()
        self._pinned.clear()
