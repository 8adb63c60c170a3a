"""The reference runtime: gpt-oss computed in float32 numpy straight from a checkpoint (either layout).

The model, as OpenAI's gpt_oss/torch/model.py and transformers' GptOssForCausalLM define it:

    x = embed[tokens]
    for each layer:
        h = rms_norm(x) * attn_norm
        q, k, v = h Wq + bq, h Wk + bk, h Wv + bv;  q, k = rope(q), rope(k)        (YaRN, NeoX halves)
        x += attention(q, k, v, sinks, window if the layer slides) Wo + bo           (GQA, learned sinks)
        h = rms_norm(x) * mlp_norm
        r = h Wr + br;  experts = top_k(r);  w = softmax(r[experts])                  (over the k selected)
        x += sum_e w_e (swiglu(h W1_e + b1_e) W2_e + b2_e)                            (MXFP4 experts)
    logits = (rms_norm(x) * norm) Wu

Weights are read as stored, never converted ahead of time:
- bf16 matrices (attention, router, unembedding) are zero-copy views of the mmapped checkpoint, widened to
  float32 inside the matmul kernel. For the 201088 x 2880 unembedding that means 1.16 GB read per decoded
  token; a float32 copy would double both the bytes per token and the RAM (2.3 GB), and a float16 copy would
  round the weights, so the bf16 kernel is the exact and the fastest choice.
- MXFP4 experts come from an `ExpertStore` that reads only the selected experts, within an optional byte
  budget; the kernel decodes the packed codes on the fly.

A KV cache makes `prefill` + `step` equal one forward over the whole sequence (bit for bit: every kernel
computes a token the same way whatever the batch): full-attention layers keep every position, sliding layers
a ring of `sliding_window` positions.

`Emulation` switches on known numerical deviations of other engines (all off: the exact model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import time

import numpy as np

from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.errors import UsageError
from edgeoss.planner.memory import engine_traits
from edgeoss.runtimes import kernels
from edgeoss.runtimes.experts import Expert, ExpertPlan, ExpertStore, ExpertTransform, load_plan
from edgeoss.formats.rope import Rope, yarn_rope
from edgeoss.formats.routing_trace import Trace
from edgeoss.runtimes.trace import TraceRecorder
from edgeoss.formats.safetensors_io import bf16_to_f32, f32_to_bf16
from edgeoss.formats.spec import ModelSpec
from edgeoss.units import parse_size

SWIGLU_ALPHA = 1.702
PREFILL_CHUNK = engine_traits("reference").prefill_chunk  # tokens per forward pass of a prefill (the planner's)


@dataclass(frozen=True)
class Emulation:
    """Deviations of other engines, reproduced on request. All off = the exact HF/OpenAI model.

    - ggml_yarn_rounding: floor/ceil the YaRN correction range, as llama.cpp does ([8, 18] for gpt-oss).
    - ggml_rope_angles: compute the rotary angles as ggml's CPU rope does (float32, one multiplication per pair of
      dimensions: edgeoss.formats.rope), which moves them by ~1e-2 rad at position 8,000.
    - q8_activations: round the input of every expert matmul (before gate_up and before down) to Q8_0 blocks
      of 32, as llama.cpp's CPU MXFP4 matmul does.
    - bf16_activations: round the input of the bf16 dense matmuls (q, k, v, o, unembedding; not the router,
      which a GGUF stores in F32) to bf16, as llama.cpp's CPU matmul does for bf16 weights.
    - expert_transform: replace each expert's weights when it is loaded (e.g. requantized experts, to mimic an
      exporter that stores them in another format); see `edgeoss.runtimes.experts.dense_experts`.
    - attention_transform: replace the bf16 matrices of q, k, v and o by the weights another encoding carries
      (bf16 bits [N, K] in; float32 [N, K], or the bits unchanged, out), e.g. the ONNX export's 4-bit digits
      (`edgeoss.formats.dense_digits.attention_values`).
    """

    ggml_yarn_rounding: bool = False
    ggml_rope_angles: bool = False
    q8_activations: bool = False
    bf16_activations: bool = False
    expert_transform: ExpertTransform | None = None
    attention_transform: Callable[[np.ndarray], np.ndarray] | None = None

    NAMES = ("ggml_yarn_rounding", "ggml_rope_angles", "q8_activations", "bf16_activations")

    @classmethod
    def named(cls, names: Sequence[str]) -> "Emulation":
        """From switch names; "llamacpp" turns on all of llama.cpp's deviations (for a bf16-dense GGUF)."""
        chosen: set[str] = set()
        for name in names:
            if name == "llamacpp":
                chosen.update(cls.NAMES)
            elif name in cls.NAMES:
                chosen.add(name)
            else:
                raise UsageError(f"unknown emulation {name!r} (choose from {', '.join(cls.NAMES)}, llamacpp)")
        return cls(**{name: True for name in chosen})


# ---- the math -------------------------------------------------------------------------------------------
def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x * (np.float32(1.0) / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))) * weight


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
              sinks: np.ndarray, window: int | None) -> np.ndarray:
    """Causal GQA attention with one learned sink logit per head.

    q [T, H, d]; keys, values [S, KV, d] at positions k_pos [S] (ascending); query head h reads KV head
    h // (H / KV). Key k is visible to query q iff k <= q and, in a sliding layer, q - window < k. Per query
    and head:
        s_k = (q . k) / sqrt(d)                        over the visible keys
        p   = softmax([s_1 .. s_n, sink_h])[:n]         (the sink takes its share, then is dropped)
        out = sum_k p_k v_k
    Returns [T, H * d]. The loops run in numba (`kernels.attention`), visiting only the visible keys.
    """
    return kernels.attention(q, keys, values, q_pos, k_pos, sinks, window)


def route(router_logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts per token (highest logit first) and their weights: softmax over the k selected logits."""
    experts = np.argsort(-router_logits, axis=-1, kind="stable")[:, :k]
    return experts, softmax(np.take_along_axis(router_logits, experts, axis=-1))


def swiglu(gate_up: np.ndarray, limit: float) -> np.ndarray:
    """gpt-oss's clamped SwiGLU over interleaved rows (even = gate, odd = up), with its (up + 1) term."""
    gate = np.minimum(gate_up[:, 0::2], np.float32(limit))
    up = np.clip(gate_up[:, 1::2], np.float32(-limit), np.float32(limit))
    with np.errstate(over="ignore"):
        sigmoid = np.float32(1.0) / (np.float32(1.0) + np.exp(-(gate * np.float32(SWIGLU_ALPHA))))
    return (up + np.float32(1.0)) * (gate * sigmoid)


def expert_mlp(expert: Expert, h: np.ndarray, limit: float, emulation: Emulation) -> np.ndarray:
    """One expert on the tokens routed to it: h [t, hidden] -> [t, hidden]."""
    activations = kernels.q8_0_roundtrip if emulation.q8_activations else (lambda a: a)
    gate_up_bias, down_bias = expert.biases()
    hidden = swiglu(expert.gate_up.matmul(activations(h)) + gate_up_bias, limit)
    return expert.down.matmul(activations(hidden)) + down_bias


# ---- weights --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Linear:
    """y = x W.T + b with W the checkpoint's bf16 bits (a zero-copy view of the mapping), or float32 weights
    (an emulated encoding's)."""

    weight: np.ndarray  # uint16 [out, in] (bf16 bits) or float32 [out, in]
    bias: np.ndarray | None  # float32 [out]
    bf16_input: bool = False  # emulate an engine that rounds the activations to bf16 first

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.bf16_input:
            x = bf16_to_f32(f32_to_bf16(x))
        y = x @ self.weight.T if self.weight.dtype == np.float32 else kernels.bf16_matmul(x, self.weight)
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True, eq=False)
class Layer:
    attn_norm: np.ndarray
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    sinks: np.ndarray
    mlp_norm: np.ndarray
    router: Linear
    window: int | None  # sliding window, None for a full-attention layer


def load_layer(ckpt: Checkpoint, i: int, emulation: "Emulation") -> Layer:
    p = f"layers.{i}"
    carried = emulation.attention_transform or (lambda bits: bits)

    def linear(name: str, emulated: bool = True) -> Linear:
        weight = ckpt.raw(f"{p}.{name}.weight")
        return Linear(carried(weight) if emulated else weight, ckpt.f32(f"{p}.{name}.bias"),
                      emulation.bf16_activations and emulated)

    spec = ckpt.spec
    return Layer(ckpt.f32(f"{p}.attn_norm"), linear("q"), linear("k"), linear("v"), linear("o"),
                 ckpt.f32(f"{p}.sinks"), ckpt.f32(f"{p}.mlp_norm"), linear("router", emulated=False),
                 spec.sliding_window if spec.is_sliding(i) else None)


# ---- KV cache -------------------------------------------------------------------------------------------
class LayerCache:
    """Keys and values of one layer: every position (full layer) or a ring of the last `window` (sliding).

    A full layer's arrays are allocated once for `positions` cells (the model's limit) with np.zeros, which maps
    fresh zero pages: only the cells written so far are resident, and the cache never copies itself to grow (a
    doubling copy would hold the old and the new arrays at once, twice the KV at its peak)."""

    def __init__(self, kv_heads: int, dim: int, window: int | None, positions: int):
        self.window = window
        capacity = window or positions
        self.keys = np.zeros((capacity, kv_heads, dim), dtype=np.float32)
        self.values = np.zeros(self.keys.shape, dtype=np.float32)  # not zeros_like: it writes every page
        self.positions = np.full(capacity, -1, dtype=np.int64) if window else np.zeros(0, dtype=np.int64)
        self.length = 0  # entries filled (grows to the ring size at most)

    def attend_over(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray) \
            -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add a batch's keys/values; return (keys, values, positions) its queries may look at."""
        if self.window is None:  # cells hold positions 0, 1, ... in order
            end = self.length + len(positions)
            self.keys[self.length:end], self.values[self.length:end] = k, v
            self.length = end
            return self.keys[:end], self.values[:end], np.arange(end)
        ring = np.argsort(self.positions[:self.length])  # the ring's entries in position order
        seen = (np.concatenate([self.keys[ring], k]), np.concatenate([self.values[ring], v]),
                np.concatenate([self.positions[ring], positions]))
        keep = slice(max(0, len(positions) - self.window), None)  # the batch's last `window` positions
        slots = positions[keep] % self.window
        self.keys[slots], self.values[slots], self.positions[slots] = k[keep], v[keep], positions[keep]
        self.length = min(self.window, self.length + len(positions))
        return seen


# ---- the engine -----------------------------------------------------------------------------------------
class ReferenceEngine:
    """The Engine protocol over a checkpoint folder (HF or original layout)."""

    name = "reference"

    def __init__(self, artifact_path: Path, memory_budget: str | int | None = None,
                 plan: str | Path | ExpertPlan | None = None, emulation: Emulation | dict | None = None,
                 trace: bool = False):
        """memory_budget: expert bytes held in RAM ("6GiB"; None: every expert mapped, or the plan's budget);
        plan: pinned experts (a plan.json path or an ExpertPlan); emulation: an Emulation or its fields as a
        dict; trace: record routing for `routing_trace()`."""
        kernels.warm_up()  # JIT compile / cache load now, not inside the first prefill
        self.ckpt = Checkpoint.open(artifact_path)
        self.spec: ModelSpec = self.ckpt.spec
        self.emulation = Emulation(**emulation) if isinstance(emulation, dict) else emulation or Emulation()
        plan = load_plan(plan) if isinstance(plan, (str, Path)) else plan
        budget = parse_size(memory_budget) if memory_budget is not None else (plan.budget_bytes if plan else None)
        self.experts = ExpertStore(self.ckpt, budget, plan, self.emulation.expert_transform)
        self.rope: Rope = yarn_rope(self.spec, ggml_rounding=self.emulation.ggml_yarn_rounding,
                                    ggml_angles=self.emulation.ggml_rope_angles)
        emu = self.emulation
        self.layers = [load_layer(self.ckpt, i, emu) for i in range(self.spec.num_hidden_layers)]
        self.embed = self.ckpt.raw("embed")
        self.norm = self.ckpt.f32("norm")
        self.unembed = Linear(self.ckpt.raw("unembed"), None, emu.bf16_activations)
        self.recorder = TraceRecorder(self.spec) if trace else None
        self.prefill_reads: list[tuple[int, int]] = []  # (tokens, expert bytes read) per prefill call
        self.step_reads: list[int] = []  # expert bytes read by each step
        self.step_miss_seconds: list[float] = []  # seconds each step spent on expert misses
        self.reset()

    # ---- Engine protocol ----------------------------------------------------------------------------------
    def reset(self) -> None:
        s = self.spec
        self.caches = [LayerCache(s.num_key_value_heads, s.head_dim, layer.window, s.max_position_embeddings)
                       for layer in self.layers]
        self.length = 0
        if not hasattr(self, "time_by_layer"):  # timings add up across sequences, like the read counters
            self.time_by_layer = np.zeros(s.num_hidden_layers)
            self.time_by_op = {"embed": 0.0, "attention": 0.0, "moe": 0.0, "unembed": 0.0}

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits of every position; computed in chunks of PREFILL_CHUNK tokens, so a long prompt's activations
        stay bounded (results are the same bit for bit: a token's arithmetic does not depend on its batch)."""
        before = self.experts.counters.bytes_read
        tokens = self._checked(tokens)  # the whole prompt, before any chunk changes the sequence
        logits = np.empty((len(tokens), self.spec.vocab_size), dtype=np.float32)
        for i in range(0, len(tokens), PREFILL_CHUNK):
            logits[i:i + PREFILL_CHUNK] = self.forward(tokens[i:i + PREFILL_CHUNK])
        self.prefill_reads.append((len(tokens), self.experts.counters.bytes_read - before))
        return logits

    def step(self, token: int) -> np.ndarray:
        c = self.experts.counters
        before, seconds = c.bytes_read, c.miss_seconds
        logits = self.forward([token])[0]
        self.step_reads.append(c.bytes_read - before)
        self.step_miss_seconds.append(c.miss_seconds - seconds)
        return logits

    def stats(self) -> dict[str, Any]:
        prefill_tokens = sum(t for t, _ in self.prefill_reads)
        return {"experts": self.experts.stats(),
                "prefill_tokens": prefill_tokens,
                "prefill_bytes_read": sum(b for _, b in self.prefill_reads),
                "decode_tokens": len(self.step_reads),
                "decode_bytes_read": sum(self.step_reads),
                "decode_bytes_read_per_token": sum(self.step_reads) / max(1, len(self.step_reads)),
                "decode_miss_seconds_per_token": sum(self.step_miss_seconds) / max(1, len(self.step_reads)),
                "time_by_layer": self.time_by_layer.tolist(), "time_by_op": dict(self.time_by_op)}

    def close(self) -> None:
        self.experts.close()
        self.ckpt.close()

    def routing_trace(self) -> Trace:
        if self.recorder is None:
            raise UsageError("this engine was opened without trace=True")
        return self.recorder.trace(engine=self.name)

    # ---- the forward pass -------------------------------------------------------------------------------
    def _checked(self, tokens: Sequence[int]) -> np.ndarray:
        """Token ids as int64 [T], if they are valid ids and fit after the sequence so far."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        s = self.spec
        if tokens.size and (tokens.min() < 0 or tokens.max() >= s.vocab_size):
            raise UsageError(f"token ids must lie in 0..{s.vocab_size - 1}")
        if self.length + len(tokens) > s.max_position_embeddings:
            raise UsageError(f"sequence of {self.length + len(tokens)} tokens exceeds the model's "
                             f"{s.max_position_embeddings} positions")
        return tokens

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Append tokens to the sequence; float32 logits [T, vocab]."""
        tokens = self._checked(tokens)
        s = self.spec
        if not tokens.size:
            return np.zeros((0, s.vocab_size), dtype=np.float32)
        clock, ops = time.perf_counter, self.time_by_op
        t0 = clock()
        positions = np.arange(self.length, self.length + len(tokens))
        cos, sin = self.rope.cos_sin(positions)
        x = bf16_to_f32(self.embed[tokens])
        t1 = clock()
        ops["embed"] += t1 - t0
        for i, layer in enumerate(self.layers):
            x = x + self.attention_block(i, layer, x, positions, cos, sin)
            t2 = clock()
            x = x + self.moe_block(i, layer, x)
            t3 = clock()
            ops["attention"] += t2 - t1
            ops["moe"] += t3 - t2
            self.time_by_layer[i] += t3 - t1
            t1 = t3
        self.length += len(tokens)
        if self.recorder is not None:
            self.recorder.end_batch(positions, tokens)
        logits = self.unembed(rms_norm(x, self.norm, s.rms_norm_eps))
        ops["unembed"] += clock() - t1
        return logits

    def attention_block(self, i: int, layer: Layer, x: np.ndarray, positions: np.ndarray, cos: np.ndarray,
                        sin: np.ndarray) -> np.ndarray:
        s = self.spec
        h = rms_norm(x, layer.attn_norm, s.rms_norm_eps)
        shape = (len(x), -1, s.head_dim)
        q = self.rope.rotate(layer.q(h).reshape(shape), cos, sin)
        k = self.rope.rotate(layer.k(h).reshape(shape), cos, sin)
        v = layer.v(h).reshape(shape)
        keys, values, key_positions = self.caches[i].attend_over(k, v, positions)
        return layer.o(attention(q, keys, values, positions, key_positions, layer.sinks, layer.window))

    def moe_block(self, i: int, layer: Layer, x: np.ndarray) -> np.ndarray:
        s = self.spec
        h = rms_norm(x, layer.mlp_norm, s.rms_norm_eps)
        experts, weights = route(layer.router(h), s.num_experts_per_tok)
        if self.recorder is not None:
            self.recorder.layer(experts, weights)
        out = np.zeros_like(h)
        for e in np.unique(experts):  # each selected expert once, on all the tokens that chose it
            rows, slots = np.nonzero(experts == e)
            y = expert_mlp(self.experts.get(i, int(e)), h[rows], s.swiglu_limit, self.emulation)
            out[rows] += weights[rows, slots, None] * y
        return out
