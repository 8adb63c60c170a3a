"""llama.cpp (through llama-cpp-python) behind the Engine interface, with per-position logits.

    engine = LlamaCppEngine(Path("gpt-oss-20b.gguf"), n_ctx=4096)        # or the first shard of a split
    logits = engine.prefill(ids)                                         # float32 [len(ids), vocab]
    engine = LlamaCppEngine(path, repack=False, cpu_moe_layers=8)        # what --no-repack / --n-cpu-moe 8 do
    engine = LlamaCppEngine(path, memory_budget="4GiB", plan="plan.json")  # experts stream within a budget

Defaults are the ones parity needs: logits for every position, an F32 KV cache and flash attention off
(llama.cpp's F16 cache and its f16 flash-attention kernel each move logits by ~1e-1 on random models). The adapter also reaches two loader
settings llama-cpp-python does not expose, through the model params it builds (`llama_model_default_params`
is swapped while the model loads):
- `repack=False` sets `use_extra_bufts = false` (llama.cpp's `--no-repack`): MXFP4 experts stay in the
  mapped file instead of being copied into a repacked anonymous buffer;
- `cpu_moe_layers` / `tensor_overrides` fill `tensor_buft_overrides` (llama.cpp's `--n-cpu-moe` / `-ot`):
  tensors whose name matches a regex go to a named buffer type ("CPU", or a GPU's in a GPU build).

With `memory_budget` or `plan`, the experts stream from the file through the expert store of
`runtimes/llamacpp_store.py` (mmap, no repack, the context's eval callback; the engine then calls itself
"llamacpp-stream"): the plan's pinned experts stay resident, the rest of the budget is LRU slots, and the
ubatch shrinks only when the budget cannot hold one layer's routed union at llama.cpp's default.

With `logits_all=False` llama.cpp computes the last position's logits only, as an app does, and `prefill`
returns that one row (what generation and profiling read), not one per position.

The file's metadata is checked with ggml's own reader before llama.cpp sees it: a gpt-oss GGUF without
expert counts makes llama.cpp abort the whole process instead of raising.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edgeoss.errors import EdgeossError, UsageError
from edgeoss.formats.gguf_meta import check_tensors, spec_from_metadata
from edgeoss.formats.gguf_names import ARCH, arch_key, expert_pattern
from edgeoss.formats.ggml_gguf import buffer_types, read_metadata, route_native_logs
from edgeoss.formats.gguf_meta import stored_expert_ids
from edgeoss.formats.spec import ModelSpec
from edgeoss.runtimes.llamacpp_store import DEFAULT_UBATCH, LlamaExpertStore
from edgeoss.units import parse_size

_PARAMS_LOCK = threading.Lock()  # the params hook is process-wide while a model loads

# keys without which llama.cpp would abort (GGML_ASSERT) rather than fail to load
_ABORTING_KEYS = ("{arch}.expert_count", "{arch}.expert_used_count", "{arch}.block_count", "{arch}.embedding_length")


class LlamaCppError(EdgeossError):
    """A GGUF llama.cpp cannot run, or a request beyond what the loaded context holds."""


class _Override(ctypes.Structure):
    """struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }"""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _overrides(patterns: Mapping[str, str]) -> ctypes.Array | None:
    """A NULL-terminated override array for regex -> buffer type name."""
    if not patterns:
        return None
    available = buffer_types()
    array = (_Override * (len(patterns) + 1))()
    for i, (pattern, buft_name) in enumerate(patterns.items()):
        if buft_name not in available:
            raise UsageError(f"buffer type {buft_name!r} for {pattern!r}: this llama.cpp build has "
                             f"{', '.join(available)}")
        array[i].pattern, array[i].buft = pattern.encode(), available[buft_name]
    return array


@contextlib.contextmanager
def _loader_params(repack: bool, overrides: ctypes.Array | None, cb_eval: Any = None):
    """Make llama-cpp-python's Llama() build its model params with our loader settings, and its context params
    with our eval callback (None: none)."""
    import llama_cpp

    lib = llama_cpp.llama_cpp
    with _PARAMS_LOCK:
        model_default, context_default = lib.llama_model_default_params, lib.llama_context_default_params

        def model_params():
            p = model_default()
            p.use_extra_bufts = repack
            if overrides is not None:
                p.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
            return p

        def context_params():
            p = context_default()
            if cb_eval is not None:
                p.cb_eval, p.cb_eval_user_data = cb_eval, None
            return p

        lib.llama_model_default_params, lib.llama_context_default_params = model_params, context_params
        try:
            yield
        finally:
            lib.llama_model_default_params, lib.llama_context_default_params = model_default, context_default


def cpu_moe_patterns(layers: int | Iterable[int] | None, num_layers: int) -> dict[str, str]:
    """--n-cpu-moe N (the first N layers) or an explicit set of layers: their expert tensors on "CPU"."""
    if layers is None:
        return {}
    chosen = list(range(min(layers, num_layers))) if isinstance(layers, int) else sorted(set(layers))
    if any(not 0 <= i < num_layers for i in chosen):
        raise UsageError(f"cpu_moe_layers {chosen}: layers are 0..{num_layers - 1}")
    return {expert_pattern(chosen): "CPU"} if chosen else {}


@functools.lru_cache(maxsize=1)
def _cpu_has_amx() -> bool:
    """llama-cpp-python builds llama.cpp for the machine it is installed on: AMX code exists iff the CPU has it."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_int8" in line for line in f)
    except OSError:
        return False


def repack_is_safe(tensor_types: Mapping[str, int]) -> bool:
    """False where llama.cpp's extra buffer types would crash: Q8_0 tensors on a CPU with AMX.

    llama.cpp (0.3.36's vendored copy) repacks Q8_0 weights into its AMX buffer at load (Sapphire Rapids and
    later) and then crashes (SIGSEGV) in the first decode on our q8_0-dense GGUFs. A tensor override to "CPU" does
    not avoid it (llama.cpp re-selects the extra buffer types for CPU overrides), so such a model loads without
    extra buffer types (no repack; the same model, computed by the plain CPU kernels).
    """
    import gguf

    return not (gguf.GGMLQuantizationType.Q8_0 in tensor_types.values() and _cpu_has_amx())


def llama_cpp_lib():
    import llama_cpp

    return llama_cpp.llama_cpp


def split_files(first: Path, count: int) -> list[Path]:
    """Every shard of a llama.cpp split GGUF from its first one (NAME-00001-of-0000N.gguf), or [first]."""
    if count <= 1:
        return [first]
    prefix = first.name.rsplit("-00001-of-", 1)[0]
    return [first.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def open_store(files: Sequence[Path], spec: ModelSpec, budget: int | str | None,
               plan: str | Path | None) -> LlamaExpertStore:
    """The expert store for a GGUF: the budget given (or the plan's), the plan's pinned experts in the file's
    stored order (a GGUF exported with a plan's expert order records it)."""
    from edgeoss.runtimes.experts import load_plan

    expert_plan = load_plan(plan) if plan is not None else None
    if budget is None:
        budget = expert_plan.budget_bytes if expert_plan else None
        if budget is None:
            raise UsageError(f"{plan}: the plan has no experts.budget_bytes; give --memory-budget")
    budget = parse_size(budget) if isinstance(budget, str) else int(budget)
    metas = [read_metadata(f) for f in files]
    pinned = stored_expert_ids(metas[0], expert_plan.pinned, spec) if expert_plan else {}
    return LlamaExpertStore(files, metas, spec.num_hidden_layers, spec.num_local_experts,
                            spec.num_experts_per_tok, budget, pinned)


MADV_DONTNEED = 4  # Linux


def release_rows(scores: np.ndarray, first: int, end: int) -> None:
    """Give back the memory of rows first..end of llama-cpp-python's logits buffer once they have been copied.

    With logits_all it keeps a float32 row of the vocabulary (804 KB for gpt-oss) for every position of n_ctx;
    the pages are touched as positions are evaluated, so 8,192 positions would hold 6.6 GB that nothing reads
    again (this engine returns copies and never samples from the buffer). Only whole pages inside the rows are
    released; they read back as zeros. Linux only, a no-op elsewhere."""
    if not sys.platform.startswith("linux") or end <= first:
        return
    page = mmap.PAGESIZE
    begin = scores.ctypes.data + first * scores.strides[0]
    stop = scores.ctypes.data + end * scores.strides[0]
    begin, stop = -(-begin // page) * page, stop // page * page
    if stop > begin:
        ctypes.CDLL(None).madvise(ctypes.c_void_p(begin), ctypes.c_size_t(stop - begin), MADV_DONTNEED)


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, artifact_path: Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, n_ubatch: int | None = None, f32_kv: bool = True, flash_attn: bool = False,
                 swa_full: bool = False,
                 use_mmap: bool = True, repack: bool = True, cpu_moe_layers: int | Iterable[int] | None = None,
                 tensor_overrides: Mapping[str, str] | None = None, memory_budget: int | str | None = None,
                 plan: str | Path | None = None, logits_all: bool = True, verbose: bool | None = None):
        import llama_cpp

        if verbose is None:  # `edgeoss --verbose`: llama.cpp's own loader lines on stderr
            verbose = os.environ.get("EDGEOSS_VERBOSE") == "1"
        route_native_logs(verbose=verbose)

        path = Path(artifact_path)
        if not path.is_file():
            raise UsageError(f"{path}: no such GGUF file")
        meta = read_metadata(path)
        if meta.get("general.architecture") != ARCH:
            raise LlamaCppError(f"{path}: architecture {meta.get('general.architecture')!r}, expected {ARCH!r}")
        missing = [arch_key(k) for k in _ABORTING_KEYS if arch_key(k) not in meta]
        if missing:
            raise LlamaCppError(f"{path}: lacks {', '.join(missing)} (llama.cpp would abort loading it)")
        self.spec = spec_from_metadata(meta, meta.array_lengths.get("tokenizer.ggml.tokens"))
        self.path, self.n_ctx = path, n_ctx
        self.files = split_files(path, int(meta.get("split.count", 1)))
        check_tensors(self.files, meta, self.spec)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.store: LlamaExpertStore | None = None
        self._llm = None
        if memory_budget is not None or plan is not None:
            if not use_mmap:
                raise UsageError("streaming experts within a memory budget needs the mapped file (not --no-mmap)")
            if cpu_moe_layers or tensor_overrides:
                raise UsageError("streaming experts within a memory budget keeps every tensor on the CPU: no "
                                 "tensor overrides")
            self.store = open_store(self.files, self.spec, memory_budget, plan)
            self.name, repack = "llamacpp-stream", False
            if n_ubatch is not None and n_ubatch > self.store.n_ubatch:
                self.close()
                raise UsageError(f"n_ubatch {n_ubatch}: the expert budget holds the routed experts of at most "
                                 f"{self.store.n_ubatch} tokens per ubatch")
            n_ubatch = n_ubatch or self.store.n_ubatch
        n_ubatch = min(n_batch, n_ubatch or DEFAULT_UBATCH)
        repack = repack and repack_is_safe(meta.tensor_types)
        self.options = dict(f32_kv=f32_kv, flash_attn=flash_attn, swa_full=swa_full, use_mmap=use_mmap,
                            repack=repack, n_batch=n_batch, n_ubatch=n_ubatch, logits_all=logits_all)
        self.overrides = {**cpu_moe_patterns(cpu_moe_layers, self.spec.num_hidden_layers),
                          **(tensor_overrides or {})}
        self._override_array = _overrides(self.overrides)  # must outlive the load
        self._cb_eval = (llama_cpp.ggml_backend_sched_eval_callback(self.store.callback)
                         if self.store is not None else None)  # must outlive the context
        kv_type = llama_cpp.GGML_TYPE_F32 if f32_kv else llama_cpp.GGML_TYPE_F16
        start = time.perf_counter()
        with _loader_params(repack, self._override_array, self._cb_eval):
            try:
                self._llm = llama_cpp.Llama(
                    model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch,
                    n_threads=self.n_threads, n_threads_batch=self.n_threads, logits_all=logits_all, type_k=kv_type,
                    type_v=kv_type, flash_attn=flash_attn, use_mmap=use_mmap, swa_full=swa_full,
                    yarn_beta_fast=self.spec.rope_beta_fast, yarn_beta_slow=self.spec.rope_beta_slow,
                    verbose=verbose)
            except ValueError as e:
                self.close()
                raise LlamaCppError(f"{path}: llama.cpp could not load it ({e})") from None
        self._load_s = time.perf_counter() - start
        self._counters = {"prefill_calls": 0, "prefill_tokens": 0, "prefill_s": 0.0,
                          "step_calls": 0, "step_s": 0.0}
        self._reads = {"prefill": [0, 0.0], "decode": [0, 0.0]}  # expert bytes read, read seconds

    # ---- Engine protocol ------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._llm.reset()

    def _eval(self, tokens: Sequence[int], phase: str) -> np.ndarray:
        start = self._llm.n_tokens
        if start + len(tokens) > self.n_ctx:
            raise LlamaCppError(f"sequence of {start + len(tokens)} tokens exceeds the context of {self.n_ctx} "
                                "(load the engine with a larger n_ctx)")
        if self.store is None:
            self._llm.eval(list(map(int, tokens)))
        else:
            before = self.store.counters.snapshot()
            try:
                self._llm.eval(list(map(int, tokens)))
            finally:
                after = self.store.counters.snapshot()
                self._reads[phase][0] += after["bytes_read"] - before["bytes_read"]
                self._reads[phase][1] += after["read_seconds"] - before["read_seconds"]
            self.store.raise_pending()
        if not self.options["logits_all"]:  # llama.cpp computed the last position's row only
            row = llama_cpp_lib().llama_get_logits_ith(self._llm.ctx, -1)
            return np.ctypeslib.as_array(row, shape=(1, self._llm.n_vocab())).astype(np.float32)
        rows = np.array(self._llm.scores[start:start + len(tokens)], dtype=np.float32)
        release_rows(self._llm.scores, start, start + len(tokens))
        return rows

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        t = time.perf_counter()
        logits = self._eval(tokens, "prefill")
        self._counters["prefill_calls"] += 1
        self._counters["prefill_tokens"] += len(tokens)
        self._counters["prefill_s"] += time.perf_counter() - t
        return logits

    def step(self, token: int) -> np.ndarray:
        t = time.perf_counter()
        logits = self._eval([token], "decode")[0]
        self._counters["step_calls"] += 1
        self._counters["step_s"] += time.perf_counter() - t
        return logits

    def stats(self) -> dict[str, Any]:
        import psutil

        stats = {"engine": self.name, "load_s": self._load_s, "n_ctx": self.n_ctx, "n_threads": self.n_threads,
                 **self.options, "overrides": dict(self.overrides), "position": self._llm.n_tokens,
                 **self._counters, "file_bytes": sum(f.stat().st_size for f in self.files),
                 "rss_bytes": psutil.Process().memory_info().rss}
        if self.store is not None:
            steps = max(1, self._counters["step_calls"])
            stats |= {"experts": self.store.stats(), "prefill_bytes_read": self._reads["prefill"][0],
                      "decode_tokens": self._counters["step_calls"], "decode_bytes_read": self._reads["decode"][0],
                      "decode_bytes_read_per_token": self._reads["decode"][0] / steps,
                      "decode_miss_seconds_per_token": self._reads["decode"][1] / steps}
        return stats

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None
        store = getattr(self, "store", None)
        if store is not None:  # after the model: its tensors point into the store's memory
            store.close()
            self.store = None


def options_from_plan(settings: dict) -> dict:
    """A plan's `engines.llamacpp` settings as LlamaCppEngine options (threads stay this machine's)."""
    overrides = dict(o.rsplit("=", 1) for o in settings.get("override_tensors") or [])
    return {"n_ctx": settings["n_ctx"], "use_mmap": settings["use_mmap"], "flash_attn": settings["flash_attn"],
            "f32_kv": settings["type_k"] == "f32", "swa_full": settings.get("swa_full", False),
            "cpu_moe_layers": settings["n_cpu_moe"] or None,
            "tensor_overrides": overrides or None}


def options_from_stream_plan(settings: dict, plan_path: str | Path) -> dict:
    """A plan's `engines.llamacpp_stream` settings as LlamaCppEngine options: the expert store reads its budget
    and pinned experts from the plan file itself."""
    return {"n_ctx": settings["n_ctx"], "flash_attn": settings["flash_attn"], "f32_kv": settings["type_k"] == "f32",
            "n_ubatch": settings["n_ubatch"], "plan": str(plan_path)}
