"""The expert-offload planner: does a model fit a device, which experts stay in RAM, how fast will it run,
and the engine settings that realize the plan.

`make_plan(PlanRequest(...))` returns the plan as a JSON-ready dict; `write_plan` / `read_plan` store it.

Plan file, format "edgeoss-plan", version 1 (other tools read exactly these keys; new keys may be added,
none removed or renamed without a new version):

    format          "edgeoss-plan"
    version         1
    model           name, source (preset name or checkpoint path), layers, experts_per_layer,
                    experts_per_token, expert_bytes (one expert of one layer, as the engine stores it),
                    expert_slot_bytes (what one resident expert occupies: llama.cpp's store rounds its slices
                    to pages), dense_type, kv_type, weight_bytes (all weights in the engine's format)
    device          name, description, platform, cpu_arch, cpu_isa, ram_bytes, app_budget_bytes, gpu_memory_bytes,
                    gpu_unified, memory_bandwidth_gb_s, flash_seq_read_mb_s, max_file_bytes (null: no limit), and the
                    measured kernel rates where the profile has them (reference_expert_gb_s, ...)
    engine          the engine the fit and the prediction are for: "reference" (streams experts from
                    flash), "llamacpp" (every expert resident, per-layer CPU/GPU split) or "llamacpp-stream"
                    (llama.cpp with edgeoss's expert store: streams experts from flash)
    context         tokens of context the KV cache is sized for
    fits            true when the plan runs inside the device's app budget (and GPU memory); false means
                    nothing below `fits` but `memory`, `alternatives` and `advice` is filled in
    fits_in_ram     true when every expert is resident (no flash reads while decoding)
    memory          dense_bytes + kv_cache_bytes + scratch_bytes + engine_overhead_bytes
                    + resident_expert_bytes = total_bytes (exactly; dense_bytes is what is resident: the
                    reference maps the embedding table, so only the rows a context can touch count, and
                    keeps its KV cache in f32 whatever kv_type says); ram_bytes (the part in host RAM:
                    total_bytes less gpu_bytes on a discrete GPU), gpu_bytes, app_budget_bytes,
                    headroom_bytes = app_budget_bytes - ram_bytes, reserve_bytes (the headroom the planner
                    keeps free: max(128 MiB, 2 % of the budget)), kv_full_bytes + kv_sliding_bytes =
                    kv_cache_bytes, repack_copy_bytes (part of engine_overhead_bytes: llama.cpp's second copy
                    of mmapped CPU-side experts, resident at load), gpu_budget_bytes
    experts         pinned {"<layer>": [expert ids, most popular first]}, cache_slots (extra LRU slots shared
                    by all layers), budget_bytes ((pinned + cache_slots) x expert_slot_bytes: what the engine may
                    hold in experts), resident_slots, total_experts, resident_fraction, on_flash
                    {"<layer>": [ids not pinned]}, order {"<layer>": [a permutation of 0..E-1: pinned first,
                    then by popularity; order[i] is the original id stored at position i]}, popularity
                    {"<layer>": [choices per token, by expert id]}, popularity_source ("uniform" or the
                    trace path)
    prediction      decode_tok_s, decode_s_per_token, ttft_s, prompt_tokens, load_s, misses_per_token,
                    miss_bytes_per_token, hit_rate, ram_bytes_per_token, gpu_bytes_per_token,
                    memory_s_per_token, compute_s_per_token, flash_s_per_token (see edgeoss/planner/predict.py),
                    calibration {memory_efficiency, flash_efficiency, compute_efficiency, miss_scale, rate_scale},
                    uncertainty {fraction, why}, decode_positions (the cache fill the decode speed is for)
    engines         llamacpp {n_ctx, n_gpu_layers, n_cpu_moe, use_mmap, use_mlock, flash_attn, swa_full,
                    n_ubatch, n_threads, type_k, type_v, override_tensors ["regex=CPU"], flags [command-line
                    flags], fits, ram_bytes, gpu_bytes}; ortgenai {max_length, past_present_share_buffer,
                    provider, search {...}}; reference {memory_budget, pinned, cache_slots, prefill_chunk,
                    dense_type, kv_type, flags}; llamacpp_stream (null unless the plan's engine is
                    llamacpp-stream) {memory_budget, pinned, cache_slots, n_ubatch, n_ctx, n_threads, use_mmap,
                    repack, flash_attn, type_k, type_v, flags}
    alternatives    [{change, flag, fits, decode_tok_s, misses_per_token, ram_bytes, resident_fraction}]: single
                    changes (dense type, KV type, context, engine) that fit, smallest first; listed when the
                    plan does not fit, or when it streams
    advice          [sentences]: why it does not fit and the smallest change that would, streaming costs,
                    file-size limits

The reference runtime and llama.cpp's expert store read `experts.pinned` and `experts.budget_bytes`
(`--plan plan.json`); exporters apply `experts.order`; the Android app reads `fits`, `memory`, `prediction` and
`engines.llamacpp`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..formats import dense_digits
from ..atomic import atomic_file
from .cache_sim import compare, replay
from ..errors import UsageError
from .memory import (DENSE_TYPES, F32_BYTES, GPU_CONTEXT_BYTES, KV_TYPES, STREAM_UBATCH, engine_kv_type,
                     engine_traits, kv_cache, overhead_bytes, resident_dense_bytes, scratch_bytes, stream_ubatch,
                     weight_bytes)
from .kernels import SLOW_FRACTION, expert_kernel
from .measured import measured_context
from .placement import ExpertPlacement, cpu_moe_layers, hot_order, most_popular, place_experts
from .predict import Calibration, Layout, Prediction, predict, read_latency_s, uniform_misses_per_token
from .profiles import CPU_ISAS, RATE_KEYS, DeviceProfile
from ..formats.routing_trace import Trace
from ..formats.spec import ModelSpec
from .traces import split_trace
from ..units import human
from ..jsonfile import read_json

FORMAT, VERSION = "edgeoss-plan", 1
MIB = 1 << 20
RESERVE_MIN_BYTES, RESERVE_FRACTION = 128 * MIB, 0.02
SLOW_TOK_S = 2.0  # below this, streaming is not practically usable (jundot/omlx #2482: 2-3 tok/s rejected)
LLAMACPP_ALL_LAYERS = 99  # -ngl 99: every layer on the GPU
DEFAULT_PROMPT_TOKENS = 512


@dataclass(frozen=True)
class PlanRequest:
    spec: ModelSpec
    device: DeviceProfile
    context: int
    model_source: str = ""
    engine: str = "reference"
    dense_type: str = "bf16"
    kv_type: str = "f16"
    trace: Trace | None = None
    trace_source: str = ""
    calibration: Calibration = field(default_factory=Calibration)
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    use_mmap: bool | None = None  # llamacpp only; None lets the planner choose
    # positions in the cache while the predicted tokens decode (None: the whole context, the slowest point); a
    # measured run is compared at its own (prompt and generated tokens), with memory still planned for the context
    decode_positions: int | None = None

    def __post_init__(self) -> None:
        engine_traits(self.engine)
        if self.dense_type not in DENSE_TYPES:
            raise UsageError(f"unknown dense type {self.dense_type!r} (choose from {', '.join(DENSE_TYPES)})")
        if self.kv_type not in KV_TYPES:
            raise UsageError(f"unknown KV type {self.kv_type!r} (choose from {', '.join(KV_TYPES)})")
        limit = self.spec.max_position_embeddings
        if self.context < 1:
            raise UsageError(f"--context {self.context}: must lie in 1..{limit}")
        if self.context > limit:
            fits = largest_context(dataclasses.replace(self, context=limit, trace=None))
            where = f"{self.device.name} with the {self.engine} engine"
            raise UsageError(f"--context {self.context}: {self.spec.name} accepts at most {limit} positions; "
                             + (f"the largest context that fits {where} is {fits}" if fits else
                                f"no context fits {where}"))
        if self.prompt_tokens < 1:
            raise UsageError(f"prompt tokens must be positive, got {self.prompt_tokens}")
        t = self.trace
        if t is not None and (t.num_layers, t.num_experts, t.top_k) != (self.spec.num_hidden_layers,
                                                                self.spec.num_local_experts,
                                                                self.spec.num_experts_per_tok):
            raise UsageError(f"trace has {t.num_layers} layers x {t.num_experts} experts, top-{t.top_k}; the model has "
                             f"{self.spec.num_hidden_layers} x {self.spec.num_local_experts}, "
                             f"top-{self.spec.num_experts_per_tok}")

    def replace(self, **changes) -> "PlanRequest":
        return dataclasses.replace(self, **changes)


def reserve_bytes(budget: int) -> int:
    return max(RESERVE_MIN_BYTES, int(RESERVE_FRACTION * budget))


@dataclass(frozen=True)
class Fit:
    """One configuration's memory against the device: whether it fits, why not, and how many expert slots
    (and, for llama.cpp, which CPU/GPU split) it leaves; experts are placed only for the plan itself."""

    fits: bool
    memory: dict
    reason: str = ""
    resident_slots: int = 0
    llamacpp: dict | None = None  # n_gpu_layers, n_cpu_moe, use_mmap, dense_on_gpu


# ---- fitting ----------------------------------------------------------------------------------------------
def _memory_section(parts: dict, kv, ram_bytes: int, gpu_bytes: int, budget: int, gpu_budget: int,
                    repack: int) -> dict:
    """The five parts, their exact total, where they live, and the budget they are held against."""
    return {**parts, "total_bytes": sum(parts.values()), "ram_bytes": ram_bytes, "gpu_bytes": gpu_bytes,
            "app_budget_bytes": budget, "headroom_bytes": budget - ram_bytes, "reserve_bytes": reserve_bytes(budget),
            "gpu_budget_bytes": gpu_budget, "kv_full_bytes": kv.full_bytes, "kv_sliding_bytes": kv.sliding_bytes,
            "repack_copy_bytes": repack}


def _parts(dense: int, kv, scratch: int, overhead: int, experts: int) -> dict:
    return {"dense_bytes": dense, "kv_cache_bytes": kv.total_bytes, "scratch_bytes": scratch,
            "engine_overhead_bytes": overhead, "resident_expert_bytes": experts}


def fit(req: PlanRequest) -> Fit:
    """Memory of `req` on its device, without placing experts (cheap: used to search alternatives)."""
    traits = engine_traits(req.engine)
    if traits.streams_experts:
        return _fit_streaming(req)
    return _fit_mapped(req) if traits.weight_format == "onnx" else _fit_llamacpp(req)


def _fit_mapped(req: PlanRequest) -> Fit:
    """onnxruntime-genai: the dense weights as exported by default (attention as 4-bit digits, the unembedding
    widened to float32 at load), the embedding and every expert mapped
    from the file, the KV cache for max_length (= context) positions. ONNX Runtime pins nothing: below this the
    kernel re-reads mapped experts from flash at every token (benchmarks/README.md, issue 23: 0.45-1.06 tok/s
    at 8-12 GiB for 20b), so the plan counts every expert resident."""
    w, kv, dense, scratch, overhead = _host_parts(req)
    budget = req.device.app_budget_bytes
    parts = _parts(dense, kv, scratch, overhead, w.experts_total)
    ram = sum(parts.values())
    memory = _memory_section(parts, kv, ram_bytes=ram, gpu_bytes=0, budget=budget, gpu_budget=0, repack=0)
    if ram + reserve_bytes(budget) > budget:
        return Fit(False, memory, f"ONNX Runtime maps every expert and pins none: {human(ram)} (dense weights, "
                                  f"experts, float32 KV cache) plus {human(reserve_bytes(budget))} "
                                  f"free exceeds the app budget of {human(budget)}; below that it re-reads "
                                  "experts from flash at every token")
    return Fit(True, memory, resident_slots=req.spec.num_hidden_layers * req.spec.num_local_experts)


def _host_parts(req: PlanRequest):
    """(weight bytes, KV cache, resident dense bytes, scratch, runtime overhead) of an engine that holds its dense
    weights, KV cache and scratch in host RAM."""
    w = weight_bytes(req.spec, req.dense_type, req.engine)
    scratch = scratch_bytes(req.spec, req.context, req.engine, w.expert, req.prompt_tokens)
    return (w, _kv(req), resident_dense_bytes(w, req.context, req.engine), scratch,
            overhead_bytes(req.engine, req.device.platform))


def _fit_streaming(req: PlanRequest) -> Fit:
    """An engine that streams experts (the reference runtime, llama.cpp's expert store): dense weights, KV and
    scratch resident; experts fill what is left. llama.cpp's store needs room for one token's top-k beside
    whatever is pinned (the reference, for one expert)."""
    spec, engine = req.spec, req.engine
    w, kv, dense, scratch, overhead = _host_parts(req)
    budget = req.device.app_budget_bytes
    fixed = dense + kv.total_bytes + scratch + overhead
    expert_budget = budget - reserve_bytes(budget) - fixed
    total = w.layers * w.experts_per_layer
    slots = max(0, min(total, expert_budget // w.slot))
    memory = _memory_section(_parts(dense, kv, scratch, overhead, slots * w.slot), kv,
                             ram_bytes=fixed + slots * w.slot, gpu_bytes=0, budget=budget, gpu_budget=0, repack=0)
    least = min(total, spec.num_experts_per_tok) if engine_traits(engine).page_slots else 1
    if slots < least:
        return Fit(False, memory, f"dense weights, KV cache, scratch and runtime need {human(fixed)}, "
                                  f"{least} expert{'s' if least > 1 else ''} {human(least * w.slot)}, and "
                                  f"{human(reserve_bytes(budget))} stays free; the app budget is {human(budget)}")
    return Fit(True, memory, resident_slots=int(slots))


def _fit_llamacpp(req: PlanRequest) -> Fit:
    """llama.cpp: every expert resident. With a GPU, dense weights, KV and compute go to the GPU (the token
    embedding stays on the host) and the experts of the first n_cpu_moe layers stay in host RAM so the rest
    fit in GPU memory (the host then needs a compute buffer of its own for those layers); a unified GPU's
    memory is part of RAM and capped by its working-set limit."""
    spec, device = req.spec, req.device
    w = weight_bytes(spec, req.dense_type, "llamacpp")
    kv = _kv(req)
    scratch = scratch_bytes(spec, req.context, "llamacpp", w.expert, req.prompt_tokens)
    host_overhead = overhead_bytes("llamacpp", device.platform)
    budget, layers = device.app_budget_bytes, spec.num_hidden_layers
    gpu_overhead = GPU_CONTEXT_BYTES if device.has_gpu and not device.gpu_unified else 0
    gpu_budget = device.gpu_memory_bytes - reserve_bytes(device.gpu_memory_bytes) if device.has_gpu else 0
    gpu_fixed = (w.dense - w.embedding) + kv.total_bytes + scratch + gpu_overhead
    dense_on_gpu = device.has_gpu and gpu_fixed <= gpu_budget
    if dense_on_gpu:
        n_cpu_moe = cpu_moe_layers(layers, gpu_budget - gpu_fixed, w.expert_layer)
        gpu_bytes = gpu_fixed + (layers - n_cpu_moe) * w.expert_layer
    else:
        n_cpu_moe, gpu_bytes, gpu_overhead = layers, 0, 0
    cpu_experts = n_cpu_moe * w.expert_layer
    use_mmap = (cpu_experts == 0) if req.use_mmap is None else req.use_mmap
    repack = cpu_experts if use_mmap else 0  # mapped file pages and the repacked anonymous copy, both resident
    host_scratch = scratch if dense_on_gpu and n_cpu_moe else 0
    parts = _parts(w.dense, kv, scratch + host_scratch, host_overhead + gpu_overhead + repack, w.experts_total)
    total = sum(parts.values())
    ram_bytes = total if device.gpu_unified or not dense_on_gpu else total - gpu_bytes
    memory = _memory_section(parts, kv, ram_bytes=ram_bytes, gpu_bytes=gpu_bytes, budget=budget,
                             gpu_budget=gpu_budget, repack=repack)
    settings = {"n_gpu_layers": LLAMACPP_ALL_LAYERS if dense_on_gpu else 0,
                "n_cpu_moe": n_cpu_moe if dense_on_gpu else 0, "use_mmap": use_mmap, "dense_on_gpu": dense_on_gpu,
                "gpu_expert_layers": layers - n_cpu_moe if dense_on_gpu else 0}
    if ram_bytes + reserve_bytes(budget) > budget:
        where = "host RAM" if dense_on_gpu and not device.gpu_unified else "RAM"
        return Fit(False, memory, f"llama.cpp keeps every expert resident: {human(ram_bytes)} of {where} plus "
                                  f"{human(reserve_bytes(budget))} free exceeds the app budget of {human(budget)}",
                   llamacpp=settings)
    return Fit(True, memory, resident_slots=layers * spec.num_local_experts, llamacpp=settings)


# ---- the plan ---------------------------------------------------------------------------------------------
def make_plan(req: PlanRequest) -> dict:
    result = fit(req)
    plan = {"format": FORMAT, "version": VERSION, "model": _model_section(req), "device": _device_section(req.device),
            "engine": req.engine, "context": req.context, "fits": result.fits, "fits_in_ram": False,
            "memory": result.memory, "experts": None, "prediction": None, "engines": None,
            "alternatives": [], "advice": []}
    if not result.fits:
        plan["alternatives"] = alternatives(req)
        plan["advice"] = _does_not_fit_advice(req, result, plan["alternatives"]) + \
            _kv_advice(req, result.memory["ram_bytes"])
        if _kernel_is_slow(req):  # and what it would run at with the memory
            everything = dataclasses.replace(result, resident_slots=req.spec.num_hidden_layers
                                             * req.spec.num_local_experts)
            plan["advice"] += _slow_kernel_advice(req, _place_and_predict(req, everything)[1],
                                                  plan["alternatives"], fits=False)
        return plan
    placement, prediction = _place_and_predict(req, result)
    total = req.spec.num_hidden_layers * req.spec.num_local_experts
    plan["fits_in_ram"] = placement.slots == total
    plan["experts"] = _experts_section(req, placement)
    plan["prediction"] = prediction.as_dict() | {"calibration": dataclasses.asdict(req.calibration),
                                                 "decode_positions": min(req.context,
                                                                         req.decode_positions or req.context),
                                                 "uncertainty": speed_uncertainty(req)}
    plan["engines"] = engine_settings(req, placement)
    if engine_traits(req.engine).weight_format == "onnx":
        plan["engines"]["ortgenai"]["by_isa"] = _by_isa(req, result)
    if not plan["fits_in_ram"]:
        plan["alternatives"] = alternatives(req)
    plan["advice"] = _advice(req, plan, prediction)
    return plan


def _placement(req: PlanRequest, slots: int) -> ExpertPlacement:
    """Where the experts go. For llama.cpp's store, enough cache slots beside the pinned experts to hold a
    layer's largest routed union at llama.cpp's own ubatch (so prefill keeps its batching), as far as the
    slots allow."""
    spec = req.spec
    layers, experts, k = spec.num_hidden_layers, spec.num_local_experts, spec.num_experts_per_tok
    p = place_experts(slots, layers, experts, k, req.trace)
    if not engine_traits(req.engine).page_slots or p.slots == layers * experts:
        return p
    cache = p.cache_slots
    while True:
        union = min(experts - int(p.pinned.sum(axis=1).min()), k * STREAM_UBATCH)
        if cache >= union or cache >= p.slots:
            return p
        cache = min(p.slots, union)
        p = place_experts(slots, layers, experts, k, req.trace, cache_slots=cache)


def _prefill_chunk(req: PlanRequest, p: ExpertPlacement) -> int:
    if not engine_traits(req.engine).page_slots:
        return engine_traits(req.engine).prefill_chunk
    spec = req.spec
    return stream_ubatch(p.cache_slots, spec.num_local_experts, spec.num_experts_per_tok,
                         int(p.pinned.sum(axis=1).min())) or 1


def _place_and_predict(req: PlanRequest, result: Fit) -> tuple[ExpertPlacement, Prediction]:
    spec = req.spec
    w = weight_bytes(spec, req.dense_type, req.engine)
    placement = _placement(req, result.resident_slots)
    misses = _planned_misses(req, placement.slots, int(placement.pinned.sum()))
    resident = result.memory["dense_bytes"] + result.memory["resident_expert_bytes"]
    layout = _layout(req, result, misses, _prefill_chunk(req, placement))
    return placement, predict(spec, w, _decode_kv(req), req.device, layout, resident, req.prompt_tokens,
                              req.calibration)


def _planned_misses(req: PlanRequest, slots: int, pinned: int) -> float:
    """Misses per token the plan predicts with `slots` experts resident, `pinned` of them pinned (the rest a cache):
    none when all fit, held out from the request's trace, else uniform."""
    spec = req.spec
    if slots >= spec.num_hidden_layers * spec.num_local_experts:
        return 0.0
    if req.trace is not None:
        return held_out_misses(req.trace, slots, spec, slots - pinned if engine_traits(req.engine).page_slots else None)
    return uniform_misses_per_token(spec, pinned)


def _kv(req: PlanRequest):
    """The KV cache of the request's engine at its context, in the type that engine really stores."""
    return kv_cache(req.spec, req.context, engine_kv_type(req.engine, req.kv_type), req.engine)


def _decode_kv(req: PlanRequest):
    """The KV cache a decoded token reads: the whole context's, or that of `decode_positions` when given."""
    if req.decode_positions is None or req.decode_positions >= req.context:
        return _kv(req)
    return _kv(req.replace(context=max(1, req.decode_positions)))


def _layout(req: PlanRequest, result: Fit, misses_per_token: float, prefill_chunk: int | None = None) -> Layout:
    settings = result.llamacpp or {}
    traits = engine_traits(req.engine)
    return Layout(dense_on_gpu=settings.get("dense_on_gpu", False),
                  gpu_expert_layers=settings.get("gpu_expert_layers", 0), misses_per_token=misses_per_token,
                  prefill_chunk=prefill_chunk or traits.prefill_chunk or req.prompt_tokens,
                  reads_per_expert=traits.reads_per_expert,
                  expert_kernel=expert_kernel(req.engine, req.device.cpu_isa),
                  extra_dense_params=_digit_params(req.spec) * (dense_digits.DIGITS - 1)
                  if traits.weight_format == "onnx" else 0, rates=req.device.decode_rates(req.engine))


def _attention_params(spec: ModelSpec) -> int:
    """Weights of the attention matrices (q, k, v, o) in all layers."""
    return spec.num_hidden_layers * spec.hidden_size * 2 * (spec.q_dim + spec.kv_dim)


def _digit_params(spec: ModelSpec) -> int:
    """Attention weights an ONNX export (--dense compact) stores as 4-bit digits: each is multiplied once a digit."""
    return _attention_params(spec) if dense_digits.fits(spec.hidden_size) and dense_digits.fits(spec.q_dim) else 0


def held_out_misses(trace: Trace, slots: int, spec: ModelSpec, cache_slots: int | None = None) -> float:
    """Misses per token of a trace-made placement on tokens it has not seen: two-fold cross-validation (place
    from one half of the trace, replay the other half, and the reverse; the mean). Replaying the trace the
    placement was made from would be optimistic: the experts a short trace happens to favour are pinned, and
    new text favours them less (on 20b under 8-12 GiB plans the in-sample replay predicted 14-47 % too few)."""
    if trace.num_tokens < 2:
        return uniform_misses_per_token(spec, slots)
    halves = split_trace(trace, 0.5)
    layers, experts, k = spec.num_hidden_layers, spec.num_local_experts, spec.num_experts_per_tok
    total = 0.0
    for made_from, scored_on in (halves, halves[::-1]):
        p = place_experts(slots, layers, experts, k, made_from, cache_slots)
        total += replay(scored_on, "plan", p.pinned, p.cache_slots, p.order, 1).misses_per_token
    return total / 2


def _model_section(req: PlanRequest) -> dict:
    spec = req.spec
    w = weight_bytes(spec, req.dense_type, req.engine)
    return {"name": spec.name, "source": req.model_source, "layers": spec.num_hidden_layers,
            "experts_per_layer": spec.num_local_experts, "experts_per_token": spec.num_experts_per_tok,
            "expert_bytes": w.expert, "expert_slot_bytes": w.slot,
            "dense_type": "compact" if engine_traits(req.engine).weight_format == "onnx" else req.dense_type,
            "kv_type": engine_kv_type(req.engine, req.kv_type),
            "weight_bytes": w.dense + w.experts_total}


def _device_section(d: DeviceProfile) -> dict:
    return {"name": d.name, "description": d.description, "platform": d.platform, "cpu_arch": d.cpu_arch,
            "cpu_isa": d.cpu_isa,
            "ram_bytes": d.ram_bytes, "app_budget_bytes": d.app_budget_bytes, "gpu_memory_bytes": d.gpu_memory_bytes,
            "gpu_unified": d.gpu_unified, "memory_bandwidth_gb_s": d.memory_bandwidth_gb_s,
            "flash_seq_read_mb_s": d.flash_seq_read_mb_s, "max_file_bytes": d.max_file_bytes} | {
        key: getattr(d, key) for key in RATE_KEYS if getattr(d, key)}


def _per_layer(values: np.ndarray) -> dict[str, list]:
    return {str(layer): row for layer, row in enumerate(values.tolist())}


def _experts_section(req: PlanRequest, p: ExpertPlacement) -> dict:
    w = weight_bytes(req.spec, req.dense_type, req.engine)
    total = p.pinned.size
    return {"pinned": p.pinned_ids(), "cache_slots": p.cache_slots, "budget_bytes": p.slots * w.slot,
            "resident_slots": p.slots, "total_experts": total, "resident_fraction": p.slots / total,
            "on_flash": p.on_flash_ids(), "order": _per_layer(p.order), "popularity": _per_layer(p.popularity),
            "popularity_source": req.trace_source or ("trace" if req.trace is not None else "uniform")}


# ---- engine settings --------------------------------------------------------------------------------------
def llamacpp_settings(req: PlanRequest) -> dict:
    """llama.cpp settings for the device (every expert resident; per-layer CPU/GPU split)."""
    req = req.replace(engine="llamacpp")
    result = _fit_llamacpp(req)
    s = result.llamacpp
    n_ctx = _kv(req).full_cells
    kv_ggml = {"bf16": "bf16", "f16": "f16", "f32": "f32", "q8_0": "q8_0"}[req.kv_type]
    flags = ["-c", str(n_ctx), "-ngl", str(s["n_gpu_layers"]), "-fa", "on", "-t", str(req.device.cpu_threads),
             "-ctk", kv_ggml, "-ctv", kv_ggml]
    if s["n_cpu_moe"]:
        flags += ["--n-cpu-moe", str(s["n_cpu_moe"])]
    if not s["use_mmap"]:
        flags.append("--no-mmap")
    cpu_layers = range(s["n_cpu_moe"]) if s["dense_on_gpu"] else ()
    override = ([r"blk\.(" + "|".join(map(str, cpu_layers)) + r")\.ffn_(up|down|gate)_exps=CPU"]
                if cpu_layers else [])
    return {"n_ctx": n_ctx, "n_gpu_layers": s["n_gpu_layers"], "n_cpu_moe": s["n_cpu_moe"],
            "use_mmap": s["use_mmap"], "use_mlock": False, "flash_attn": True, "swa_full": False,
            "n_ubatch": engine_traits("llamacpp").prefill_chunk, "n_threads": req.device.cpu_threads,
            "type_k": kv_ggml, "type_v": kv_ggml, "override_tensors": override, "flags": flags,
            "fits": result.fits, "ram_bytes": result.memory["ram_bytes"], "gpu_bytes": result.memory["gpu_bytes"]}


def engine_settings(req: PlanRequest, placement: ExpertPlacement) -> dict:
    w = weight_bytes(req.spec, req.dense_type, "reference")
    discrete_gpu = req.device.has_gpu and not req.device.gpu_unified
    onnx_experts = engine_traits(req.engine).expert_encoding
    return {
        "llamacpp": llamacpp_settings(req),
        "ortgenai": {"max_length": req.context, "past_present_share_buffer": True,
                     "provider": "cuda" if discrete_gpu else "cpu",
                     "search": {"max_length": req.context, "past_present_share_buffer": True},
                     "experts": onnx_experts, "cpu_isa": req.device.cpu_isa,
                     "flags": ["--experts", onnx_experts, "--plan", "plan.json"]},
        "reference": {"memory_budget": placement.slots * w.expert, "pinned": placement.pinned_ids(),
                      "cache_slots": placement.cache_slots,
                      "prefill_chunk": engine_traits("reference").prefill_chunk, "dense_type": req.dense_type,
                      "kv_type": engine_kv_type("reference", req.kv_type), "flags": ["--plan", "plan.json"]},
        "llamacpp_stream": llamacpp_stream_settings(req, placement) if req.engine == "llamacpp-stream" else None,
    }


def _by_isa(req: PlanRequest, result: Fit) -> dict:
    """An ONNX plan's prediction on every vector ISA of the device's architecture (its expert kernel's measured
    rate on each, edgeoss/planner/kernels.py): what the same model does on a CPU with or without AVX-512."""
    found = {}
    for isa, arch in CPU_ISAS.items():
        if arch == req.device.cpu_arch:
            at = req.replace(device=dataclasses.replace(req.device, cpu_isa=isa))
            _, p = _place_and_predict(at, result)
            kernel = expert_kernel(req.engine, isa)
            found[isa] = {"decode_tok_s": p.decode_tok_s, "ttft_s": p.ttft_s, "kernel_decode_fraction": kernel.decode,
                          "kernel_prefill_fraction": kernel.prefill, "kernel_source": kernel.source}
    return found


def llamacpp_stream_settings(req: PlanRequest, placement: ExpertPlacement) -> dict:
    """llama.cpp with edgeoss's expert store: mmap without repack, the plan's pinned experts and budget, the ubatch
    the store keeps, flash attention and the KV type as planned."""
    plain = llamacpp_settings(req)
    w = weight_bytes(req.spec, req.dense_type, req.engine)
    budget = placement.slots * w.slot
    return {"memory_budget": budget, "pinned": placement.pinned_ids(), "cache_slots": placement.cache_slots,
            "n_ubatch": _prefill_chunk(req, placement), "n_ctx": plain["n_ctx"], "n_threads": plain["n_threads"],
            "use_mmap": True, "repack": False, "flash_attn": True, "type_k": plain["type_k"],
            "type_v": plain["type_v"], "flags": ["--engine", "llamacpp", "--plan", "plan.json"]}


# ---- calibration -----------------------------------------------------------------------------------------
# How far decode and TTFT predictions have been found from measurements (stated, with where it was measured):
# - a published profile (the roofline of its bandwidth and GFLOP/s figures, no kernel rates): 1.3-2.1x optimistic
#   on this project's 2-core x86 VM with roofline figures measured there (issue 22: the reference at 10 GiB
#   predicted 2.94 tok/s against 1.42 measured), so +/-50 %;
# - a profile with the engine's measured kernel rates (`profiles measure`): within 3-24 % at 6, 10 and 12 GiB for
#   the reference and the llama.cpp expert store (benchmarks/README.md, prediction error), so +/-25 %: the VM's own
#   speed moves 15-35 % between sweeps an hour apart;
# - calibrated with one run on the device: within 6 % at 4-10 GiB, 15 % at 12 GiB (issue 10); with a run of the
#   same plan, within 9 % at 6-12 GiB (issue 22), so +/-15 %.
UNCALIBRATED_UNCERTAINTY = 0.5
MEASURED_RATES_UNCERTAINTY = 0.25
CALIBRATED_UNCERTAINTY = 0.15


def speed_uncertainty(req: PlanRequest) -> dict:
    """The stated uncertainty of the plan's decode and TTFT predictions (see the constants above)."""
    if req.calibration != Calibration():
        return {"fraction": CALIBRATED_UNCERTAINTY,
                "why": "calibrated with a run on the device (issue 10: within 6-15 % at 4-12 GiB)"}
    if req.device.decode_rates(req.engine) is not None:
        return {"fraction": MEASURED_RATES_UNCERTAINTY,
                "why": f"{req.engine}'s kernel rates measured on {req.device.name} (issue 22: within 3-24 % at "
                       "6-12 GiB); `--calibrate` with one run on the device narrows it"}
    return {"fraction": UNCALIBRATED_UNCERTAINTY,
            "why": f"uncalibrated {req.device.name} figures (issue 22: 1.3-2.1x optimistic on a measured host); "
                   "`--calibrate` with one run on the device narrows it"}


def calibration_from_profile(req: PlanRequest, result: dict, where: str = "profile") -> Calibration:
    """Efficiencies that make the roofline reproduce a measured decode speed (`edgeoss profile --json` of the
    same engine on the device), at the context it ran with (`measured.measured_context`).

    Misses: the measured misses per token over the plan's own figure for that run's residency (its pinned and
    resident experts, whatever budget it ran at; the placement's popularity model) become `miss_scale`, which
    scales the plan's misses wherever it predicts at this device.

    Flash: when the engine timed its misses (the reference's `decode_miss_seconds_per_token`: reading, dropping
    the page cache, building the expert), the flash efficiency is set so that the predicted flash time of the
    measured bytes per token equals that time; otherwise the measured bytes keep the current flash efficiency.
    The rest of the measured time fixes one factor r that scales the memory and compute efficiencies alike, so
    the non-flash part of the prediction becomes exactly the measured one: through the efficiencies, and where
    the device profile carries the engine's measured kernel rates, through `rate_scale`.

    Except: where the rates were measured and the run missed at least one expert a token, a run slower than
    predicted is put down to its misses (`miss_overhead_s` a miss: on issue 22's runs, both streaming engines
    spent ~2.5 ms a missed expert outside the timed read, while their rates held with every expert resident), so
    that a budget with fewer misses is not predicted slower than its kernels run."""
    try:
        measured_s = 1.0 / float(result["decode_tok_s"]["median"])
        context = measured_context(result, req.spec)
        stats = result.get("engine_stats") or {}
        read_per_token = float(stats.get("decode_bytes_read_per_token", result["disk_read_bytes_per_decode_token"]))
        miss_s = float(stats.get("decode_miss_seconds_per_token") or 0.0)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise UsageError(f"{where}: not an `edgeoss profile --json` result ({e!r} missing or invalid)") from None
    if result.get("engine") != req.engine:
        raise UsageError(f"{where}: measured the {result.get('engine')!r} engine; the plan is for {req.engine!r}")
    at = req.replace(context=context, calibration=Calibration(),
                     decode_positions=int(result["prompt_tokens"]) + int(result["gen_tokens"]))
    w = weight_bytes(at.spec, at.dense_type, at.engine)
    misses = read_per_token / w.expert
    base = at.calibration
    transfer_s = miss_s - misses * engine_traits(at.engine).reads_per_expert * read_latency_s(at.device)
    if read_per_token > 0 and transfer_s > 0:
        efficiency = read_per_token / (transfer_s * at.device.flash_seq_read_mb_s * 1e6)
        base = dataclasses.replace(base, flash_efficiency=min(1.0, efficiency))
    planned = fit(at)
    layout = _layout(at, planned, misses)
    p = predict(at.spec, w, _decode_kv(at), at.device, layout, 0, 1, base)
    predicted_misses = _measured_run_misses(at, result, w.expert)
    base = dataclasses.replace(base, miss_scale=misses / predicted_misses if predicted_misses and misses > 0 else 1.0)
    extra_s = measured_s - p.decode_s_per_token
    if layout.rates is not None and misses >= MISSES_FOR_OVERHEAD and extra_s > 0:
        return dataclasses.replace(base, miss_overhead_s=extra_s / misses)  # the rates stand: they were measured
    r = (p.decode_s_per_token - p.flash_s_per_token) / max(measured_s - p.flash_s_per_token, 1e-3 * measured_s)
    return dataclasses.replace(base, memory_efficiency=min(1.0, base.memory_efficiency * r),
                               compute_efficiency=min(1.0, base.compute_efficiency * r),
                               rate_scale=base.rate_scale * r if layout.rates is not None else base.rate_scale)


MISSES_FOR_OVERHEAD = 1.0  # a run with at least this many misses per token fits a per-miss overhead (rated profiles)


def _measured_run_misses(req: PlanRequest, result: dict, expert_bytes: int) -> float | None:
    """What the plan predicts for the measured run's own expert residency (its engine_stats.experts: pinned and
    resident experts, pinned and slots, or the budget in experts), or None where the run does not say (nothing to
    scale then)."""
    experts = (result.get("engine_stats") or {}).get("experts") or {}
    pinned, resident, slots = experts.get("pinned_experts"), experts.get("resident_experts"), experts.get("slots")
    if not isinstance(resident, int) and isinstance(pinned, int) and isinstance(slots, int):
        resident = pinned + slots  # the expert stores (Python and the app's C++): pinned, and a pool of slots
    if not isinstance(resident, int) and isinstance(experts.get("budget_bytes"), int):
        resident = experts["budget_bytes"] // expert_bytes  # the reference: its budget in experts
    if not isinstance(pinned, int) or not isinstance(resident, int) or resident < pinned:
        return None
    return _planned_misses(req, resident, pinned)


def load_calibration(path: str | Path, req: PlanRequest) -> Calibration:
    """`--calibrate FILE`: explicit efficiencies, or an `edgeoss profile --json` result to fit them to (also one
    run with --memory-limit, whose measurement sits under "profile")."""
    data = read_json(path, "calibration file")
    if isinstance(data, dict) and isinstance(data.get("profile"), dict):  # `profile --memory-limit --json`
        data = data["profile"]
    if isinstance(data, dict) and "decode_tok_s" in data:
        return calibration_from_profile(req, data, str(path))
    return Calibration.from_dict(data, str(path))


# ---- alternatives and advice ------------------------------------------------------------------------------
CONTEXT_STEP = 256


def largest_context(req: PlanRequest) -> int:
    """The longest context (a multiple of 256, at most the requested one) that fits; 0 if none does."""
    lo, hi = 0, req.context // CONTEXT_STEP
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fit(req.replace(context=mid * CONTEXT_STEP)).fits:
            lo = mid
        else:
            hi = mid - 1
    return lo * CONTEXT_STEP


def _candidate_changes(req: PlanRequest) -> list[tuple[str, str, PlanRequest]]:
    """(description, flag, changed request) for every single change worth trying, smallest first."""
    changes = []
    for name, size in sorted(DENSE_TYPES.items(), key=lambda kv: -kv[1]):
        if size < DENSE_TYPES[req.dense_type] and name != "f16":
            changes.append((f"dense weights in {name}", f"--dense-type {name}", req.replace(dense_type=name)))
    for name, size in sorted(KV_TYPES.items(), key=lambda kv: -kv[1]):
        if size < KV_TYPES[req.kv_type] and name != "bf16" and engine_traits(req.engine).kv_type is None:
            changes.append((f"KV cache in {name}", f"--kv-type {name}", req.replace(kv_type=name)))
    context = largest_context(req)
    if 0 < context < req.context:
        changes.append((f"context {context}", f"--context {context}", req.replace(context=context)))
    if engine_traits(req.engine).weight_format == "onnx":
        changes = [c for c in changes if c[1].startswith("--context")]  # the export fixes dense and KV types
        changes.append(("llama.cpp, every expert resident", "--engine llamacpp",
                        req.replace(engine="llamacpp", use_mmap=None)))
        if req.engine != "ortgenai-int4":
            changes.append(("onnxruntime-genai with int4 experts (lossy: 83-89 % top-1 agreement on tiny and odd)",
                            "--engine ortgenai-int4", req.replace(engine="ortgenai-int4")))
    if req.engine != "llamacpp-stream":
        changes.append(("stream experts from flash (llama.cpp with edgeoss's expert store)",
                        "--engine llamacpp-stream", req.replace(engine="llamacpp-stream", use_mmap=None)))
    if req.engine == "llamacpp":
        changes.append(("stream experts from flash (reference runtime)", "--engine reference",
                        req.replace(engine="reference", use_mmap=None)))
    return changes


def alternatives(req: PlanRequest) -> list[dict]:
    """Single changes that fit, with their predicted decode speed and RAM."""
    found = []
    for description, flag, changed in _candidate_changes(req):
        result = fit(changed)
        if not result.fits:
            continue
        _, prediction = _place_and_predict(changed, result)
        found.append({"change": description, "flag": flag, "fits": True, "decode_tok_s": prediction.decode_tok_s,
                      "misses_per_token": prediction.misses_per_token, "ram_bytes": result.memory["ram_bytes"],
                      "resident_fraction": result.resident_slots / changed.spec.num_hidden_layers
                      / changed.spec.num_local_experts})
    return found


def _does_not_fit_advice(req: PlanRequest, result: Fit, found: list[dict]) -> list[str]:
    advice = [f"does not fit on {req.device.name} with the {req.engine} engine: {result.reason}"]
    if found:
        best = found[0]
        advice.append(f"smallest change that fits: {best['flag']} ({best['change']}: "
                      f"{human(best['ram_bytes'])} RAM, {best['decode_tok_s']:.1f} tok/s predicted)")
        advice += [f"also fits: {a['flag']} ({a['decode_tok_s']:.1f} tok/s)" for a in found[1:]]
    else:
        advice.append("no single change (dense type, KV type, context, engine) makes it fit this device")
    return advice


def _advice(req: PlanRequest, plan: dict, p: Prediction) -> list[str]:
    advice = []
    spec, experts = req.spec, plan["experts"]
    w = weight_bytes(spec, req.dense_type, req.engine)
    if not plan["fits_in_ram"]:
        advice.append(
            f"does not fit in RAM: {human(w.dense + w.experts_total)} of weights, {human(req.device.app_budget_bytes)} "
            f"app budget; {experts['resident_slots']} of {experts['total_experts']} experts "
            f"({100 * experts['resident_fraction']:.0f} %) stay resident and the rest stream from flash: "
            f"{p.misses_per_token:.1f} misses/token = {p.miss_bytes_per_token / 1e6:.0f} MB/token, "
            f"{1e3 * p.flash_s_per_token:.0f} ms/token of flash reads -> {p.decode_tok_s:.2f} tok/s predicted")
        faster = [a for a in plan["alternatives"] if a["decode_tok_s"] > p.decode_tok_s]
        advice += [f"faster: {a['flag']} ({a['change']}: {100 * a['resident_fraction']:.0f} % resident, "
                   f"{a['decode_tok_s']:.2f} tok/s predicted)" for a in faster]
        if max([p.decode_tok_s] + [a["decode_tok_s"] for a in faster]) < SLOW_TOK_S:
            advice.append(f"{p.decode_tok_s:.2f} tok/s is below what users accept as usable "
                          f"(~{SLOW_TOK_S:g} tok/s); a smaller model or a device with more RAM fits better")
    if _kernel_is_slow(req):
        advice += _slow_kernel_advice(req, p, plan["alternatives"] or alternatives(req))
    if engine_traits(req.engine).weight_format == "onnx" and plan["fits_in_ram"]:
        advice += _exact_dense_advice(req, plan["memory"]["ram_bytes"])
    llamacpp = plan["engines"]["llamacpp"]
    if req.engine != "llamacpp" and llamacpp["fits"]:
        advice.append(f"llama.cpp can hold the whole model here: {' '.join(llamacpp['flags'])}")
    if req.engine == "llamacpp" and plan["memory"]["repack_copy_bytes"]:
        advice.append(f"use_mmap costs a second copy of {human(plan['memory']['repack_copy_bytes'])} of experts "
                      "(llama.cpp repacks MXFP4 on AVX2/NEON CPUs); --no-mmap loads them once")
    advice += _kv_advice(req, plan["memory"]["ram_bytes"])
    limit = req.device.max_file_bytes
    if limit is not None and w.dense + w.experts_total > limit:
        shards = -(-(w.dense + w.experts_total) // limit)
        advice.append(f"the weights ({human(w.dense + w.experts_total)}) exceed the largest file this device's "
                      f"app storage accepts ({human(limit)}): split them into {shards}+ files "
                      f"(GGUF: export with --split-max-size {limit})")
    return advice


KV_ADVICE_SHARE = 0.05  # the KV cache is named in the advice once it is this share of the plan's RAM


def _kv_advice(req: PlanRequest, ram: int) -> list[str]:
    """What the KV cache costs on this engine at this context, and the settings that shrink it (benchmarks/README.md,
    memory against context: each engine's KV as allocated, measured)."""
    kv = _kv(req)
    if kv.total_bytes < KV_ADVICE_SHARE * ram:
        return []
    engine, kv_type = engine_traits(req.engine), engine_kv_type(req.engine, req.kv_type)
    head = f"KV cache {human(kv.total_bytes)} at context {req.context} ({100 * kv.total_bytes / ram:.0f} % of RAM): "
    if engine.weight_format == "gguf":
        text = (f"{head}{kv_type}, {len(req.spec.full_layers)} full layers x {kv.full_cells} cells "
                f"{human(kv.full_bytes)}, sliding layers a ring of {kv.sliding_cells} cells {human(kv.sliding_bytes)} "
                "(keep swa_full off: llama.cpp's library default, --swa-full, gives them n_ctx cells, "
                f"{human(kv_cache(req.spec, req.context, kv_type, req.engine, swa_full=True).sliding_bytes)})")
        if kv_type != "q8_0":
            q8 = kv_cache(req.spec, req.context, "q8_0", req.engine).total_bytes
            text += f"; -ctk q8_0 -ctv q8_0 makes it {human(q8)}"
        return [text + "; a smaller -c shrinks the full layers"]
    if engine.weight_format == "onnx":
        return [f"{head}onnxruntime-genai preallocates search.max_length = {req.context} cells of float32 in every "
                f"layer, the sliding ones too ({len(req.spec.sliding_layers)} of them: "
                f"{human(kv.sliding_bytes)} for a window of {req.spec.sliding_window}); set max_length (export "
                "--max-length, or genai_config.json) to the longest conversation the app needs"]
    return [f"{head}the reference runtime keeps float32 keys and values ({kv_type} whatever --kv-type says), "
            f"written as positions arrive: a shorter conversation holds less; --context sets the most it may hold"]


def _exact_dense_advice(req: PlanRequest, ram: int) -> list[str]:
    """An ONNX plan counts the default export (--dense compact: attention as 4-bit digits). Where the attention in
    float32 fits too, say what --dense exact costs and buys (measured at 20b on this project's x86 VM,
    benchmarks/README.md: decode 1.32x onnxruntime-genai's compact speed, TTFT 0.65x)."""
    exact = ram + round(_digit_params(req.spec) * (F32_BYTES - dense_digits.BYTES_PER_WEIGHT))
    budget = req.device.app_budget_bytes
    if exact + reserve_bytes(budget) > budget:
        return []
    return [f"export onnx --dense exact fits too ({human(exact)} of RAM instead of {human(ram)}): attention in "
            "float32, exactly the checkpoint's weights and faster (measured at 20b: decode 1.3x, time to first "
            "token 0.65x of the compact default)"]


def _kernel_is_slow(req: PlanRequest) -> bool:
    return expert_kernel(req.engine, req.device.cpu_isa).decode < SLOW_FRACTION


def _slow_kernel_advice(req: PlanRequest, p: Prediction, found: list[dict], fits: bool = True) -> list[str]:
    """The engine's expert kernel is slow on the device's ISA (ONNX Runtime's fp4 MoE without AVX-512): say so,
    with the engines among `found` (the plan's alternatives) that run faster (for a plan that does not fit, `p` is
    what it would run at with the memory)."""
    kernel = expert_kernel(req.engine, req.device.cpu_isa)
    advice = [f"the {req.engine} expert kernel is slow on this device's CPU ({req.device.cpu_isa}): "
              f"{100 * kernel.decode:.2g} % of llama.cpp's throughput decoding, {100 * kernel.prefill:.2g} % "
              f"prefilling ({kernel.source}) -> {p.decode_tok_s:.2f} tok/s, TTFT {p.ttft_s:.0f} s predicted"
              f"{'' if fits else ' even with the memory'}; ONNX Runtime 1.32's fast fp4 MoE path needs AVX-512"]
    for a in found:
        if a["flag"].startswith("--engine") and a["decode_tok_s"] > p.decode_tok_s:
            advice.append(f"better here: {a['flag']} ({a['change']}): {a['decode_tok_s']:.2f} tok/s predicted")
    return advice


# ---- files ------------------------------------------------------------------------------------------------
REQUIRED_KEYS = ("format", "version", "model", "device", "engine", "context", "fits", "memory", "experts",
                 "prediction", "engines", "advice")


def write_plan(path: str | Path, plan: dict) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(plan, indent=2) + "\n")
    return path


def read_plan(path: str | Path) -> dict:
    plan = read_json(path, "plan file")
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise UsageError(f"{path}: not an edgeoss plan (format is not {FORMAT!r})")
    if plan.get("version") != VERSION:
        raise UsageError(f"{path}: plan version {plan.get('version')!r}; this edgeoss reads version {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in plan]
    if missing:
        raise UsageError(f"{path}: plan has no {missing[0]!r}")
    return plan


# ---- evaluation -------------------------------------------------------------------------------------------
CURVE_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def plan_arrays(plan: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pinned mask, order and popularity [layers, experts] from a plan's experts section."""
    layers, experts = plan["model"]["layers"], plan["model"]["experts_per_layer"]
    pinned = np.zeros((layers, experts), dtype=bool)
    for layer, ids in plan["experts"]["pinned"].items():
        pinned[int(layer), ids] = True
    order = np.array([plan["experts"]["order"][str(layer)] for layer in range(layers)], dtype=np.int64)
    popularity = np.array([plan["experts"]["popularity"][str(layer)] for layer in range(layers)])
    return pinned, order, popularity


def evaluate(plan: dict, trace: Trace, fractions: tuple[float, ...] = CURVE_FRACTIONS) -> dict:
    """Replay `trace` through the plan, LRU, LFU and Belady at the plan's slot count, and a curve of misses per
    token against the resident fraction (the plan re-made at each budget from its own popularity, with the
    same share of cache slots)."""
    if not plan["fits"] or not plan["experts"]:
        raise UsageError("the plan does not fit its device; there is nothing to evaluate")
    model = plan["model"]
    if (trace.num_layers, trace.num_experts, trace.top_k) != (model["layers"], model["experts_per_layer"],
                                                               model["experts_per_token"]):
        raise UsageError(f"trace has {trace.num_layers} layers x {trace.num_experts} experts, top-{trace.top_k}; the "
                         f"plan's model has {model['layers']} x {model['experts_per_layer']}, "
                         f"top-{model['experts_per_token']}")
    pinned, order, popularity = plan_arrays(plan)
    cache_slots, expert_bytes = plan["experts"]["cache_slots"], model["expert_bytes"]
    at_plan = compare(trace, pinned, cache_slots, order, expert_bytes)
    cache_share = cache_slots / max(1, plan["experts"]["resident_slots"])
    curve = []
    for fraction in fractions:
        slots = int(round(fraction * pinned.size))
        cache = int(round(cache_share * slots))
        f_pinned = most_popular(popularity, slots - cache)
        replays = compare(trace, f_pinned, cache, hot_order(popularity, f_pinned), expert_bytes)
        curve.append({"resident_fraction": fraction, "slots": slots,
                      **{policy: r.misses_per_token for policy, r in replays.items()}})
    return {"tokens": trace.num_tokens, "slots": int(pinned.sum()) + cache_slots,
            "resident_fraction": plan["experts"]["resident_fraction"],
            "policies": {policy: r.as_dict() for policy, r in at_plan.items()},
            "predicted_misses_per_token": plan["prediction"]["misses_per_token"], "curve": curve}


def plot_curve(result: dict, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [row["resident_fraction"] for row in result["curve"]]
    for policy, style in (("none", ":"), ("lru", "--"), ("lfu", "-."), ("plan", "-"), ("belady", "-")):
        ax.plot(xs, [row[policy] for row in result["curve"]], style, marker="o", ms=3, label=policy)
    ax.plot([result["resident_fraction"]], [result["policies"]["plan"]["misses_per_token"]], "k*", ms=12,
            label="this plan")
    ax.set_xlabel("resident fraction of experts")
    ax.set_ylabel("expert misses per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
