"""Decode speed and time to first token from a roofline: bytes each memory tier must move, flash reads,
and arithmetic, against the device's bandwidths and throughput.

One decoded token (at a full context, the slowest point):
- reads the dense weights it uses (all but the embedding table, of which it reads one row), the whole KV
  cache, and k experts per layer: a hit is read from RAM (or GPU memory, for llama.cpp layers on the GPU),
  a miss from flash;
- computes 2 FLOP per weight it uses plus attention (4 x q_dim FLOP per cached position per layer); an expert
  kernel slower than llama.cpp's (ONNX Runtime's QMoE, by CPU ISA: edgeoss/planner/kernels.py) reaches only a
  measured fraction of cpu_gflops, so its FLOP count divided by that fraction;
- time = max(host bytes / (RAM bandwidth x memory efficiency), host FLOP / CPU throughput)
       + max(GPU bytes / (GPU bandwidth x memory efficiency), GPU FLOP / GPU throughput)
       + misses x (reads per expert x read latency + expert bytes / (flash sequential x flash efficiency)),
  the three tiers in sequence (layers run one after another; nothing overlaps in this model).
  Read latency comes from the 4 KiB random figure: 4096 / random - 4096 / sequential seconds.
  A unified GPU (Apple, Jetson) has the RAM's bandwidth, so the formula holds unchanged.

Prefill (TTFT) of a prompt of P tokens in chunks of c (the engine's prefill chunk): each chunk reads the
dense weights once and the distinct experts its tokens choose (E (1 - (1 - k/E)^c) per layer), from RAM if
resident and flash if not (at the decode miss rate), and computes 2 FLOP per used weight per token plus
attention over the prompt so far; TTFT is the sum over chunks. Model load time (reading every resident byte
from flash once) is reported separately.

Efficiencies scale the device's peak figures to what kernels achieve. The default memory efficiency, 0.55,
is calibrated on the one anchor with a known byte count: llama.cpp decoding gpt-oss-20b at ~26 tok/s on a
16 GB Mac mini M4 (anchors §2b, mlx-lm #644) moves ~2.6 GB per token (q8_0 dense + 4 MXFP4 experts x 24
layers), i.e. ~67 of 120 GB/s. Flash efficiency 0.8: PowerInfer-2 read 3.5 of 4 GB/s with 512 KB random
reads on UFS 4.0 (anchors §1). `cpu_gflops` in a profile is already a sustained figure (efficiency 1.0).
`edgeoss plan --calibrate FILE` replaces them: FILE holds the efficiencies themselves, or is the JSON of
`edgeoss profile` run with the same engine on the device (see edgeoss.planner.plan.calibration_from_profile).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import UsageError
from .kernels import LLAMA_CPP, KernelRate
from .memory import KvCache, WeightBytes
from .profiles import DecodeRates, DeviceProfile
from ..formats.spec import ModelSpec, sizes

RANDOM_READ_BYTES = 4096


_VALUE_KINDS = {"miss_scale": "positive", "rate_scale": "positive", "miss_overhead_s": "at least 0"}  # else fractions


@dataclass(frozen=True)
class Calibration:
    """Fractions of the profile's peak figures that the engine reaches on the device."""

    memory_efficiency: float = 0.55
    flash_efficiency: float = 0.8
    compute_efficiency: float = 1.0
    # measured misses per token / the plan's own figure for the same run (its placement and popularity model);
    # not an efficiency: any positive number
    miss_scale: float = 1.0
    # the engine's measured kernel rates (DeviceProfile.decode_rates) / what it reached in a run on the device;
    # any positive number
    rate_scale: float = 1.0
    # seconds each missed expert costs beyond its read (fitted to a run with misses where the kernel rates were
    # measured: in issue 22's runs ~2.5 ms a miss, on both streaming engines, outside the timed reads)
    miss_overhead_s: float = 0.0

    @classmethod
    def from_dict(cls, data: object, where: str) -> "Calibration":
        """From {memory_efficiency, flash_efficiency, compute_efficiency} (any of them; 0 < x <= 1), miss_scale
        and rate_scale (> 0) and miss_overhead_s (>= 0)."""
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not known & set(data):
            raise UsageError(f"{where}: expected a JSON object with any of {', '.join(sorted(known))} "
                             "(or an `edgeoss profile --json` result)")
        values = {}
        for key in known & set(data):
            value = data[key]
            kind = _VALUE_KINDS.get(key, "fraction")
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not number or not {"fraction": 0 < value <= 1, "positive": value > 0, "at least 0": value >= 0}[kind]:
                raise UsageError(f"{where}: {key} = {value!r}: expected "
                                 + {"fraction": "a number in (0, 1]", "positive": "a positive number",
                                    "at least 0": "a number >= 0"}[kind])
            values[key] = float(value)
        return cls(**values)


@dataclass(frozen=True)
class Layout:
    """Where the weights a token uses live while it runs."""

    dense_on_gpu: bool  # dense weights, KV cache and their compute on the GPU
    gpu_expert_layers: int  # layers whose experts are in GPU memory (llama.cpp); the rest on the host
    misses_per_token: float  # experts read from flash per decoded token
    prefill_chunk: int
    reads_per_expert: int = 0  # contiguous reads of one missed expert (the engine's)
    expert_kernel: KernelRate = LLAMA_CPP  # the share of cpu_gflops the expert kernel reaches
    extra_dense_params: int = 0  # weights multiplied more than once a token (ONNX's attention digits: 3 extra)
    rates: DecodeRates | None = None  # the engine's kernels, measured on the device (decode on the CPU)


@dataclass(frozen=True)
class Prediction:
    decode_tok_s: float
    decode_s_per_token: float
    ttft_s: float
    prompt_tokens: int
    load_s: float
    misses_per_token: float
    miss_bytes_per_token: float
    hit_rate: float
    ram_bytes_per_token: float
    gpu_bytes_per_token: float
    memory_s_per_token: float
    compute_s_per_token: float
    flash_s_per_token: float

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def read_latency_s(device: DeviceProfile) -> float:
    rnd, seq = device.flash_random_read_mb_s * 1e6, device.flash_seq_read_mb_s * 1e6
    return max(0.0, RANDOM_READ_BYTES / rnd - RANDOM_READ_BYTES / seq)


def flash_read_s(nbytes: float, reads: float, device: DeviceProfile, cal: Calibration) -> float:
    return reads * read_latency_s(device) + nbytes / (device.flash_seq_read_mb_s * 1e6 * cal.flash_efficiency)


def _tier_s(nbytes: float, flops: float, bandwidth_gb_s: float, gflops: float, cal: Calibration) -> float:
    if nbytes == 0 and flops == 0:
        return 0.0
    return max(nbytes / (bandwidth_gb_s * 1e9 * cal.memory_efficiency),
               flops / (gflops * 1e9 * cal.compute_efficiency))


def _attention_flops(spec: ModelSpec, full_positions: float, sliding_positions: float) -> float:
    return 4 * spec.q_dim * (len(spec.full_layers) * full_positions + len(spec.sliding_layers) * sliding_positions)


def predict(spec: ModelSpec, weights: WeightBytes, kv: KvCache, device: DeviceProfile, layout: Layout,
            resident_bytes: int, prompt_tokens: int, cal: Calibration) -> Prediction:
    layers, k, experts = spec.num_hidden_layers, spec.num_experts_per_tok, spec.num_local_experts
    per_token = layers * k
    misses = min(float(per_token), max(0.0, layout.misses_per_token * cal.miss_scale))
    hits = per_token - misses
    gpu_share = layout.gpu_expert_layers / layers
    expert_params = sizes(spec).params_per_expert
    dense_params = dense_params_per_token(spec) + layout.extra_dense_params
    # decode
    dense_bytes = weights.dense_per_token + kv.total_bytes
    dense_flops = 2 * dense_params + _attention_flops(spec, kv.full_cells, kv.sliding_cells)
    kernel = layout.expert_kernel  # a slower expert kernel counts as more FLOP at cpu_gflops
    expert_bytes, expert_flops = hits * weights.expert, 2 * per_token * expert_params / kernel.decode
    gpu_bytes = (dense_bytes if layout.dense_on_gpu else 0) + expert_bytes * gpu_share
    ram_bytes = (0 if layout.dense_on_gpu else dense_bytes) + expert_bytes * (1 - gpu_share)
    gpu_flops = (dense_flops if layout.dense_on_gpu else 0) + expert_flops * gpu_share
    cpu_flops = (0 if layout.dense_on_gpu else dense_flops) + expert_flops * (1 - gpu_share)
    host_s = _tier_s(ram_bytes, cpu_flops, device.memory_bandwidth_gb_s, device.cpu_gflops, cal)
    rated = layout.rates is not None and not gpu_bytes and not gpu_flops
    if rated:
        weights_s, attention_s = _rated_host_s(spec, weights, kv, layout.rates, per_token, cal)
        host_s = weights_s + attention_s
    gpu_s = _tier_s(gpu_bytes, gpu_flops, device.gpu_memory_bandwidth_gb_s, device.gpu_gflops, cal) \
        if gpu_bytes or gpu_flops else 0.0
    flash_s = flash_read_s(misses * weights.expert, misses * layout.reads_per_expert, device, cal) \
        + misses * cal.miss_overhead_s
    step_s = host_s + gpu_s + flash_s
    memory_s = ram_bytes / (device.memory_bandwidth_gb_s * 1e9 * cal.memory_efficiency) + (
        gpu_bytes / (device.gpu_memory_bandwidth_gb_s * 1e9 * cal.memory_efficiency) if gpu_bytes else 0.0)
    compute_s = cpu_flops / (device.cpu_gflops * 1e9 * cal.compute_efficiency) + (
        gpu_flops / (device.gpu_gflops * 1e9 * cal.compute_efficiency) if gpu_flops else 0.0)
    if rated:
        memory_s, compute_s = weights_s, attention_s
    # prefill
    ttft = 0.0
    miss_rate = misses / per_token
    for start in range(0, prompt_tokens, layout.prefill_chunk):
        c = min(layout.prefill_chunk, prompt_tokens - start)
        distinct = layers * experts * (1 - (1 - k / experts) ** c)
        end = start + c
        attn = _attention_flops(spec, c * (start + end) / 2, c * min(end, spec.sliding_window))
        chunk_dense_flops = 2 * dense_params * c + attn
        chunk_expert_bytes = distinct * (1 - miss_rate) * weights.expert
        chunk_expert_flops = 2 * per_token * expert_params * c / kernel.prefill
        ttft += _tier_s((0 if layout.dense_on_gpu else weights.dense_per_token) + chunk_expert_bytes * (1 - gpu_share),
                        (0 if layout.dense_on_gpu else chunk_dense_flops) + chunk_expert_flops * (1 - gpu_share),
                        device.memory_bandwidth_gb_s, device.cpu_gflops, cal)
        if layout.dense_on_gpu or layout.gpu_expert_layers:
            ttft += _tier_s((weights.dense_per_token if layout.dense_on_gpu else 0) + chunk_expert_bytes * gpu_share,
                            (chunk_dense_flops if layout.dense_on_gpu else 0) + chunk_expert_flops * gpu_share,
                            device.gpu_memory_bandwidth_gb_s, device.gpu_gflops, cal)
        chunk_misses = distinct * miss_rate
        ttft += flash_read_s(chunk_misses * weights.expert, chunk_misses * layout.reads_per_expert, device,
                             cal) + chunk_misses * cal.miss_overhead_s
    load_s = flash_read_s(resident_bytes, 0, device, cal)
    return Prediction(decode_tok_s=1.0 / step_s, decode_s_per_token=step_s, ttft_s=ttft, prompt_tokens=prompt_tokens,
                      load_s=load_s, misses_per_token=misses, miss_bytes_per_token=misses * weights.expert,
                      hit_rate=hits / per_token, ram_bytes_per_token=ram_bytes, gpu_bytes_per_token=gpu_bytes,
                      memory_s_per_token=memory_s, compute_s_per_token=compute_s, flash_s_per_token=flash_s)


def _rated_host_s(spec: ModelSpec, weights: WeightBytes, kv: KvCache, rates: DecodeRates, experts_per_token: int,
                  cal: Calibration) -> tuple[float, float]:
    """(weights, attention) seconds of one decoded token on the CPU at the engine's measured kernel rates: the dense
    weights and every routed expert (resident or just read) through their matvecs, and attention at its measured
    rate, or, where that was not measured, the KV cache read at the dense rate."""
    weights_s = (weights.dense_per_token / (rates.dense_gb_s * 1e9)
                 + experts_per_token * weights.expert / (rates.expert_gb_s * 1e9))
    attention_s = (_attention_flops(spec, kv.full_cells, kv.sliding_cells) / (rates.attention_gflops * 1e9)
                   if rates.attention_gflops else kv.total_bytes / (rates.dense_gb_s * 1e9))
    return weights_s / cal.rate_scale, attention_s / cal.rate_scale


def dense_params_per_token(spec: ModelSpec) -> int:
    """Dense weights one token multiplies with: attention, router, norms, unembedding (not the embedding)."""
    s = sizes(spec)
    return s.params_active - spec.num_hidden_layers * spec.num_experts_per_tok * s.params_per_expert


def uniform_misses_per_token(spec: ModelSpec, pinned: int) -> float:
    """Misses per token when every expert is equally likely and choices are independent: each of the Lk
    choices hits a pinned expert with probability pinned / total (a small LRU pool adds nothing: it is
    flushed before a layer comes round again)."""
    total = spec.num_hidden_layers * spec.num_local_experts
    return spec.num_hidden_layers * spec.num_experts_per_tok * (1 - min(pinned, total) / total)
