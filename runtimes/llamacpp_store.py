"""An expert store for llama.cpp: experts stream from the GGUF into a byte budget, the plan's hot set pinned.

It uses only llama.cpp's public C API (as llama-cpp-python 0.3.36 vendors it) through ctypes; llama.cpp is not
patched. `runtimes/llamacpp.py` loads the model and hands this store the context's eval callback.

The algorithm (the Android app's C++ store follows this text; keep the two in step)
-----------------------------------------------------------------------------------
Load. The model is loaded with mmap and without extra buffer types (`use_extra_bufts = false`): no repacked
copy, so every tensor's bytes are the file's, and each stacked expert tensor `blk.L.ffn_{gate,up,down}_exps.weight`
(ne = [in, rows, E]) holds expert e at byte `e * nb[2]`, at file offset `tensor offset + e * nb[2]`.

Reservations. For each stacked expert tensor the store maps an anonymous reservation of the tensor's size,
`PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE`, `madvise(MADV_NOHUGEPAGE)`: no memory until a
page is written, and then one page (a transparent huge page would hold 2 MiB for a byte).

Budget. An expert (L, e) costs the pages its three slices span in their reservations (edge pages shared with
a neighbour are counted by both). `pinned` experts (per layer, the GGUF's stored ids) are read at start and
never evicted. What the budget leaves beside them holds `slots` more experts (at the largest cost), shared by
all layers, kept in least-recently-used order. A budget whose slots cannot hold one layer's top-k gets a
one-line error.

Ubatch. A ubatch needs the union of its tokens' routed experts resident at once. The store's `n_ubatch`
keeps llama.cpp's default (512) when the slots hold the largest possible union, min(E - pinned in a layer,
k x 512), for every layer; otherwise it is slots // k (at least 1), so that k x n_ubatch unpinned experts fit.

Route. The eval callback answers "ask" with true for the nodes named `ffn_moe_topk-L` only, so ggml computes up
to each layer's top-k, stops, and calls back with it before that layer's MUL_MAT_IDs run. The node is an int32
view [k, T] of the router's argsort (row stride nb[1]). For the union U of its ids:
- each choice of a resident expert is a hit; the first choice of a missing expert is a miss (it is loaded),
  its other choices in the ubatch are hits: hits + misses = k x T per layer;
- every member of U is protected; unprotected, unpinned experts are evicted in LRU order until all the
  missing ones fit; then their slices are read, READ_LANES (4) at a time; hits and loads move to the LRU's
  most-recent end.
Loading a slice is one `pread` of its bytes at its file offset into its place in the reservation, then
`posix_fadvise(DONTNEED)` of that file range, so the budget holds the only copy. Evicting a slice is
`madvise(MADV_DONTNEED)` of the pages it spans, except an edge page a resident neighbour shares.

Bind. While asked about nodes, until every weight is bound: a MUL_MAT_ID's src[0] (the stacked expert tensor,
checked by name and size) gets `data` = its reservation; every other weight the graph reads (attention,
router, norms, biases, output), found among the nodes' inputs by its GGUF name, is copied once into
anonymous memory and rebound there, so the kernel cannot drop it and re-read it from the file. The token
embedding stays mapped (a token reads one row). Once all are bound, the original mapping's pages of every
tensor are released (`madvise(MADV_DONTNEED)` on the mapping, `posix_fadvise(DONTNEED)` on the file; the
embedding's range also `MADV_RANDOM`, so a row fault reads no more than its pages).

Counters: hits, misses, bytes read, read seconds (pread + fadvise), evictions, resident bytes (accounted)
and their peak; `resident_pages_bytes()` asks the kernel (mincore) what the reservations really hold.
"""

from __future__ import annotations

import ctypes
import mmap as _mmap
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgeoss.errors import EdgeossError, UsageError
from edgeoss.formats.ggml_gguf import GGUFMetadata
from edgeoss.formats.gguf_names import EXPERT_PROJECTIONS, expert_name
from edgeoss.planner.memory import STREAM_UBATCH, expert_page_costs, stream_ubatch
from edgeoss.runtimes import ggml_graph
from edgeoss.units import human

PAGE = _mmap.PAGESIZE
DEFAULT_UBATCH = STREAM_UBATCH  # llama.cpp's own n_ubatch
PROJECTIONS = tuple(EXPERT_PROJECTIONS)  # gate, up, down: the stacked tensors of a layer
READ_LANES = 4  # concurrent preads of a ubatch's missed slices
TOPK_PREFIX = b"ffn_moe_topk-"
EMBEDDING = "token_embd.weight"
MAP_NORESERVE = getattr(_mmap, "MAP_NORESERVE", 0x4000)
MADV_DONTNEED, MADV_RANDOM, MADV_NOHUGEPAGE = 4, 1, 15
MAP_FAILED = ctypes.c_void_p(-1).value


class StoreError(EdgeossError):
    """The expert store cannot run as asked."""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    for fn, args, res in (("mmap", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.c_long], ctypes.c_void_p),
                          ("munmap", [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int),
                          ("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int),
                          ("mincore", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p], ctypes.c_int),
                          ("pread", [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long],
                           ctypes.c_ssize_t)):
        getattr(libc, fn).argtypes, getattr(libc, fn).restype = args, res
    return libc


LIBC = _libc()


def _check(result: int, what: str) -> int:
    if result == -1 or result == MAP_FAILED:
        raise StoreError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def anonymous(nbytes: int, noreserve: bool) -> int:
    """Address of a fresh private anonymous mapping of nbytes (rounded up to pages). A reservation (noreserve) is
    kept off transparent huge pages, so that a written byte costs one page, as the budget counts it."""
    flags = _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS | (MAP_NORESERVE if noreserve else 0)
    address = _check(LIBC.mmap(None, _round_up(nbytes), _mmap.PROT_READ | _mmap.PROT_WRITE, flags, -1, 0),
                     f"mmap of {human(nbytes)}")
    if noreserve:
        LIBC.madvise(address, _round_up(nbytes), MADV_NOHUGEPAGE)  # fails harmlessly where THP does not exist
    return address


def release(address: int, nbytes: int, advice: int = MADV_DONTNEED) -> None:
    """madvise the whole pages inside [address, address + nbytes)."""
    first, last = _round_up(address), (address + nbytes) // PAGE * PAGE
    if last > first:
        _check(LIBC.madvise(first, last - first, advice), "madvise")


def resident_bytes(address: int, nbytes: int) -> int:
    """Bytes of the pages of [address, address + nbytes) that are resident (mincore)."""
    start = address // PAGE * PAGE
    pages = (_round_up(address + nbytes) - start) // PAGE
    vec = (ctypes.c_ubyte * pages)()
    _check(LIBC.mincore(start, pages * PAGE, vec), "mincore")
    return int(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1)) * PAGE


def _round_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _pread_into(fd: int, address: int, nbytes: int, offset: int, where: str) -> None:
    done = 0
    while done < nbytes:
        n = LIBC.pread(fd, address + done, nbytes - done, offset + done)
        if n <= 0:
            raise StoreError(f"{where}: read failed at byte {offset + done} "
                             f"({os.strerror(ctypes.get_errno()) if n < 0 else 'end of file'})")
        done += n


# ---- where the experts are ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertTensor:
    """One stacked expert tensor of the GGUF: where its bytes are, and its reservation."""

    name: str
    layer: int
    projection: str
    path: Path
    offset: int  # absolute file offset of its data
    nbytes: int
    experts: int
    reservation: int  # address of its anonymous MAP_NORESERVE reservation

    @property
    def stride(self) -> int:
        return self.nbytes // self.experts

    def span(self, e: int) -> tuple[int, int]:
        """[first page, end page) addresses of expert e's slice in the reservation."""
        start = self.reservation + e * self.stride
        return start // PAGE * PAGE, _round_up(start + self.stride)


def expert_tensor_name(layer: int, projection: str) -> str:
    return expert_name(layer, projection, "weight")


@dataclass
class StoreCounters:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    read_seconds: float = 0.0
    evictions: int = 0

    def snapshot(self) -> dict:
        return dict(vars(self))


@dataclass
class _Bound:
    """A weight rebound away from the original mapping: where it was, its new home (None: left mapped)."""

    original: int
    nbytes: int
    copy: int | None


class LlamaExpertStore:
    """Experts of a loaded gpt-oss GGUF within `budget` bytes; `callback` is the context's cb_eval."""

    def __init__(self, files: Sequence[Path], metas: Sequence[GGUFMetadata], layers: int, experts: int, k: int,
                 budget: int, pinned: Mapping[int, Sequence[int]] | None = None):
        self.layers, self.experts, self.k, self.budget = layers, experts, k, int(budget)
        self.tensors: dict[str, ExpertTensor] = {}
        self.dense: dict[str, int] = {}  # every other weight: name -> nbytes
        self._fds: dict[Path, int] = {}
        self._file_of: dict[str, tuple[Path, int]] = {}  # weight name -> (file, offset)
        try:
            self._map_tensors(files, metas)
            self.cost = self._costs()
            self.expert_bytes = sum(self.tensors[expert_tensor_name(0, p)].stride for p in PROJECTIONS)  # one read
            self.pinned = self._checked_pinned(pinned or {})
            pinned_cost = sum(self.cost[e] for layer, ids in self.pinned.items() for e in ids)
            self.slots = max(0, (self.budget - pinned_cost) // max(self.cost))
            self.n_ubatch = self._ubatch()
            self.counters = StoreCounters()
            self._resident: set[tuple[int, int]] = set()
            self._lru: OrderedDict[tuple[int, int], None] = OrderedDict()
            self.resident_cost = self.peak_cost = 0
            self._bound: dict[str, _Bound] = {}
            self._seen: set[int] = set()
            self._all_bound = False
            self._released = False
            self.error: BaseException | None = None
            self._lanes = ThreadPoolExecutor(READ_LANES, thread_name_prefix="expert-read")
            for layer, ids in sorted(self.pinned.items()):
                self._load_union(layer, list(ids), protect=set())
            self.pinned_bytes, self.pinned_read_seconds = self.resident_cost, self.counters.read_seconds
            self.counters = StoreCounters()  # counting starts with the first token
        except BaseException:
            self.close()
            raise

    # ---- set-up -------------------------------------------------------------------------------------------
    def _map_tensors(self, files: Sequence[Path], metas: Sequence[GGUFMetadata]) -> None:
        stacked = {expert_tensor_name(layer, p): (layer, p) for layer in range(self.layers) for p in PROJECTIONS}
        for path, meta in zip(files, metas):
            for name, (offset, nbytes) in meta.tensor_bytes.items():
                self._file_of[name] = (Path(path), offset)
                if name not in stacked:
                    if name != EMBEDDING:
                        self.dense[name] = nbytes
                    continue
                if nbytes % self.experts:
                    raise StoreError(f"{path}: {name} holds {nbytes} bytes, not a multiple of {self.experts} experts")
                layer, projection = stacked[name]
                self.tensors[name] = ExpertTensor(name, layer, projection, Path(path), offset, nbytes, self.experts,
                                                  anonymous(nbytes, noreserve=True))
        if set(self.tensors) != set(stacked):
            missing = sorted(set(stacked) - set(self.tensors))
            raise StoreError(f"{files[0]}: lacks the stacked expert tensor {missing[0]}")
        for path in {t.path for t in self.tensors.values()}:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead past a slice

    def _costs(self) -> list[int]:
        """Bytes of the pages each expert id spans, over its three slices (the same in every layer: each
        reservation starts on a page)."""
        return expert_page_costs([self.tensors[expert_tensor_name(0, p)].stride for p in PROJECTIONS],
                                 self.experts, PAGE)

    def _checked_pinned(self, pinned: Mapping[int, Sequence[int]]) -> dict[int, tuple[int, ...]]:
        checked = {}
        for layer, ids in pinned.items():
            if not 0 <= int(layer) < self.layers:
                raise UsageError(f"the plan pins experts of layer {layer}; the model has layers 0..{self.layers - 1}")
            bad = [e for e in ids if not 0 <= int(e) < self.experts]
            if bad:
                raise UsageError(f"the plan pins expert {bad[0]} of layer {layer}; layers have experts "
                                 f"0..{self.experts - 1}")
            if ids:
                checked[int(layer)] = tuple(sorted({int(e) for e in ids}))
        cost = sum(self.cost[e] for ids in checked.values() for e in ids)
        if cost > self.budget:
            raise UsageError(f"the plan's {sum(map(len, checked.values()))} pinned experts need {human(cost)}; the "
                             f"expert budget is {human(self.budget)}")
        return checked

    def _ubatch(self) -> int:
        fewest_pinned = min(len(self.pinned.get(layer, ())) for layer in range(self.layers))
        ubatch = stream_ubatch(self.slots, self.experts, self.k, fewest_pinned)
        if not ubatch:
            needed = min(self.experts - fewest_pinned, self.k)
            raise UsageError(f"expert budget {human(self.budget)} holds {self.slots} experts beside the "
                             f"{sum(map(len, self.pinned.values()))} pinned; one token's top-{self.k} in a layer "
                             f"needs {needed} ({human(needed * max(self.cost))})")
        return ubatch

    # ---- the eval callback --------------------------------------------------------------------------------
    def callback(self, address: int, ask: bool, _user: int) -> bool:
        """cb_eval: ask for every layer's top-k node; load its routed experts when it is computed."""
        try:
            if ask:
                if ggml_graph.name(address).startswith(TOPK_PREFIX):
                    return True
                if not self._all_bound:
                    self._bind(address)
                return False
            t = ggml_graph.node(address)
            layer = int(t.name[len(TOPK_PREFIX):])
            ids = ggml_graph.routed_ids(t)
            self._route(layer, ids)
            return True
        except BaseException as e:  # never raise through C: stop the graph, report after llama_decode
            self.error = self.error or e
            return False

    def _route(self, layer: int, ids: np.ndarray) -> None:
        if ids.size and not (0 <= ids.min() and ids.max() < self.experts):
            raise StoreError(f"layer {layer}: routed expert ids outside 0..{self.experts - 1}")
        union, counts = np.unique(ids, return_counts=True)
        missing = []
        for e, c in zip(union.tolist(), counts.tolist()):
            key = (layer, e)
            if key in self._resident:
                self.counters.hits += c
                if key in self._lru:
                    self._lru.move_to_end(key)
            else:
                self.counters.misses += 1
                self.counters.hits += c - 1
                missing.append(e)
        self._load_union(layer, missing, protect={(layer, e) for e in union.tolist()})

    def _load_union(self, layer: int, experts: list[int], protect: set[tuple[int, int]]) -> None:
        need = sum(self.cost[e] for e in experts)
        while self.resident_cost + need > self.budget:
            victim = next((key for key in self._lru if key not in protect), None)
            if victim is None:
                raise StoreError(f"layer {layer}: the routed experts of one ubatch do not fit the expert budget "
                                 f"of {human(self.budget)} (n_ubatch {self.n_ubatch})")
            self._evict(victim)
        self._read(layer, experts)
        pinned = set(self.pinned.get(layer, ()))
        for e in experts:
            self._resident.add((layer, e))
            self.resident_cost += self.cost[e]
            if e not in pinned:
                self._lru[(layer, e)] = None
        self.peak_cost = max(self.peak_cost, self.resident_cost)

    def _read(self, layer: int, experts: list[int]) -> None:
        """Every slice of these experts, READ_LANES preads at a time (the flash's queue is deeper than one)."""
        if not experts:
            return
        start = time.perf_counter()
        slices = [(self.tensors[expert_tensor_name(layer, p)], e) for e in experts for p in PROJECTIONS]
        list(self._lanes.map(self._read_slice, slices))
        self.counters.bytes_read += sum(t.stride for t, _ in slices)
        self.counters.read_seconds += time.perf_counter() - start

    def _read_slice(self, job: tuple[ExpertTensor, int]) -> None:
        t, e = job
        offset, fd = t.offset + e * t.stride, self._fds[t.path]
        _pread_into(fd, t.reservation + e * t.stride, t.stride, offset, f"{t.path}: {t.name} expert {e}")
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, offset, t.stride, os.POSIX_FADV_DONTNEED)  # the budget holds the only copy

    def _evict(self, key: tuple[int, int]) -> None:
        layer, e = key
        del self._lru[key]
        self._resident.discard(key)
        self.resident_cost -= self.cost[e]
        self.counters.evictions += 1
        for p in PROJECTIONS:
            t = self.tensors[expert_tensor_name(layer, p)]
            first, end = t.span(e)
            if self._shared(t, first, e):  # only the edge pages can hold another expert's bytes
                first += PAGE
            if end - PAGE >= first and self._shared(t, end - PAGE, e):
                end -= PAGE
            if end > first:
                _check(LIBC.madvise(first, end - first, MADV_DONTNEED), "madvise")

    def _shared(self, t: ExpertTensor, page: int, e: int) -> bool:
        """Whether another resident expert's slice of `t` has bytes in this page."""
        lo = max(0, (page - t.reservation) // t.stride)
        hi = min(self.experts - 1, (page + PAGE - 1 - t.reservation) // t.stride)
        return any(other != e and (t.layer, other) in self._resident for other in range(lo, hi + 1))

    # ---- binding the weights -------------------------------------------------------------------------------
    def _bind(self, address: int) -> None:
        t = ggml_graph.node(address)
        if not self._seen:
            ggml_graph.check_layout(address)
        for src in ggml_graph.sources(t):
            if src in self._seen:
                continue
            self._seen.add(src)
            name = ggml_graph.name(src).decode(errors="replace")
            if name in self._bound:
                continue
            if name in self.tensors:
                if t.op != ggml_graph.op_code("MUL_MAT_ID"):
                    raise StoreError(f"{name} is read by a {ggml_graph.node(address).name.decode()} node, not by "
                                     "MUL_MAT_ID: this llama.cpp's gpt-oss graph is not the one the store knows")
                self._rebind(src, name, self.tensors[name].reservation, copy=False)
            elif name in self.dense:
                self._rebind(src, name, anonymous(self.dense[name], noreserve=False), copy=True)
            elif name == EMBEDDING:
                self._bound[name] = _Bound(ggml_graph.node(src).data, ggml_graph.nbytes(src), None)
        if len(self._bound) == len(self.tensors) + len(self.dense) + 1:
            self._all_bound = True
            self._release_originals()

    def _rebind(self, src: int, name: str, target: int, copy: bool) -> None:
        w = ggml_graph.node(src)
        size = ggml_graph.nbytes(src)
        expected = self.tensors[name].nbytes if name in self.tensors else self.dense[name]
        if size != expected:
            raise StoreError(f"{name}: ggml says {size} bytes, the GGUF {expected}")
        if copy:
            ctypes.memmove(target, w.data, size)
        self._bound[name] = _Bound(w.data, size, target)
        w.data = target

    def _release_originals(self) -> None:
        """Drop the original mapping's pages and their page cache (the embedding's rows fault back as needed)."""
        for name, b in self._bound.items():
            if name == EMBEDDING:
                release(b.original, b.nbytes, MADV_RANDOM)
            release(b.original, b.nbytes)
            path, offset = self._file_of[name]
            if hasattr(os, "posix_fadvise"):
                fd = self._fds.get(path)
                if fd is None:
                    fd = self._fds[path] = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, offset, b.nbytes, os.POSIX_FADV_DONTNEED)
        self._released = True

    # ---- reporting ------------------------------------------------------------------------------------------
    def raise_pending(self) -> None:
        """Raise what the callback met (it cannot raise through llama.cpp)."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error if isinstance(error, EdgeossError) else StoreError(f"expert store: {error!r}")

    def resident_pages_bytes(self) -> int:
        """What the reservations really hold now, asked of the kernel."""
        return sum(resident_bytes(t.reservation, t.nbytes) for t in self.tensors.values())

    def stats(self) -> dict:
        c = self.counters
        return {"mode": "llama.cpp expert store", "budget_bytes": self.budget, "slots": int(self.slots),
                "n_ubatch": self.n_ubatch, "pinned_experts": sum(map(len, self.pinned.values())),
                "pinned_bytes": self.pinned_bytes, "pinned_read_seconds": self.pinned_read_seconds,
                "cached_experts": len(self._lru), "resident_experts": len(self._resident),
                "resident_bytes": self.resident_cost,
                "peak_bytes": self.peak_cost, "hits": c.hits, "misses": c.misses, "bytes_read": c.bytes_read,
                "read_seconds": c.read_seconds, "miss_seconds": c.read_seconds, "evictions": c.evictions,
                "hit_rate": c.hits / max(1, c.hits + c.misses), "weights_bound": self._all_bound,
                "original_mapping_released": self._released}

    def close(self) -> None:
        lanes = getattr(self, "_lanes", None)
        if lanes is not None:
            lanes.shutdown()
        for t in self.tensors.values():
            LIBC.munmap(t.reservation, _round_up(t.nbytes))
        for b in getattr(self, "_bound", {}).values():
            if b.copy is not None:
                LIBC.munmap(b.copy, _round_up(b.nbytes))
        self.tensors, self._bound = {}, {}
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


@dataclass(frozen=True)
class StoreRequest:
    """What the engine asks of the store: a budget, and the pinned experts in the GGUF's stored ids."""

    budget: int
    pinned: dict[int, tuple[int, ...]] = field(default_factory=dict)
