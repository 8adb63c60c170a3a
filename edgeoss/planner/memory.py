"""What a gpt-oss model costs in memory on an engine, part by part: weights, KV cache, scratch, overhead.

Weights. Experts are MXFP4 (17 bytes per 32 weights) plus their biases. Everything else is "dense":
embedding, unembedding, attention (q/k/v/o weights and biases, sinks), router, norms. `--dense-type` sets the
type of the dense matrices (embedding, unembedding, q/k/v/o): f32 4 B, f16/bf16 2 B, q8_0 34 B per 32
weights. The rest follows the engine's file format:
- reference (reads the checkpoint): vectors, router and expert biases as stored (bf16), except that f32
  dense makes every dense tensor f32. With bf16, dense + experts is exactly the checkpoint's tensor bytes.
- llamacpp (reads GGUF): router weights, vectors (norms, biases, sinks) and expert biases are F32, as
  llama.cpp's converter writes them.
- llamacpp-stream (llama.cpp with edgeoss's expert store, runtimes/llamacpp_store.py): the same GGUF. The
  store streams the experts' MXFP4 weights; their F32 biases stay resident with the dense weights. A resident
  expert costs the pages its three slices span in the store's reservations (`expert_page_costs`), a little
  more than its bytes; a miss reads its bytes.

KV cache. K and V of every layer, `kv_dim` wide each, at `--kv-type` (default f16, llama.cpp's default).
Full-attention layers hold every position; sliding layers hold the window. The reference holds exactly
`context` and `min(context, window)` cells. llama.cpp pads n_ctx to 256 cells and, without `--swa-full`
(llama-server's default and edgeoss's; the library's own default is on), sizes a sliding layer at
pad256(window + n_ubatch). onnxruntime-genai allocates max_length cells in every layer, sliding ones too.

The reference keeps its KV cache in float32 whatever `--kv-type` says (`EngineTraits.kv_type`), and grows it
as positions arrive (capacity not yet written is never touched, so never resident).

Mapped embedding. An engine that maps the weights file (the reference) reads one embedding row per token: only
the pages of rows it touched are resident, at most `context` rows of ceil(row / 4 KiB) + 1 pages each, never
more than the table (`resident_dense_bytes`). Everything else it maps (unembedding, attention, router) is read
in full by every token, so it is resident.

Scratch. The activations of one layer for one prefill chunk (float32: residual and its norm, q, k, v,
attention output, router logits, k experts' gate/up and down outputs), attention scores where the engine
materializes them (a chunk at the end of a full context: [chunk, heads, context]; onnxruntime-genai does;
llama.cpp with flash attention does not, but keeps a mask of [cache cells, n_ubatch] in f16; the reference's
kernel keeps one row per (query, head) task), the logits it returns (the reference returns every prompt position: the prompt's rows
plus the chunk being computed; llama.cpp one row), and, for the reference runtime, which builds a missed expert
before it is cached, a buffer for one layer's k missed experts (llama.cpp's store reads into its own pages).

Engine overhead. The engine's own code and runtime (measured: Python + numpy + numba + edgeoss import at
98 MiB RSS on our build machine; we count 128 MiB for the reference; llama.cpp's library and threads are an
estimate of 64 MiB), an Android app's ART process (estimate 160 MiB), a discrete GPU's driver context
(estimate 512 MiB, on the GPU), and llama.cpp's repacked copy of CPU-side experts when the file is
mmapped: llama.cpp repacks MXFP4 on every AVX2 and NEON+dotprod CPU (ggml-cpu repack.cpp), so with mmap
the mapped file pages and an anonymous copy of the same experts are both resident at load
(gguf.md §12, baselines-20b.md: 20.8-22.4 GiB peak for a 12.8 GiB model). With `use_mmap = false` the
experts are read straight into the repacked buffer and counted once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..formats import dense_digits
from ..errors import UsageError
from ..formats.spec import ModelSpec, tensor_table

MIB = 1 << 20

DENSE_TYPES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}
KV_TYPES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}
MXFP4_BYTES_PER_WEIGHT = 17 / 32
STORED_BYTES = 2  # bf16: how the checkpoint stores every non-expert tensor and the expert biases
F32_BYTES = 4

LLAMACPP_PAD = 256  # llama.cpp rounds KV cells up to this
ANDROID_APP_BYTES = 160 * MIB  # estimate: an Android app's ART process around the engine
GPU_CONTEXT_BYTES = 512 * MIB  # estimate: CUDA context and driver reservations on a discrete GPU
ORT_RUNTIME_BYTES = 256 * MIB  # measured 243 MiB at 20b (see ENGINES["ortgenai"]), rounded up
INT4_BYTES_PER_WEIGHT = (16 + 4) / 32  # ONNX int4 experts: 4-bit codes and a float32 scale per block of 32


@dataclass(frozen=True)
class EngineTraits:
    """How an engine lays out and uses memory."""

    name: str
    weight_format: str  # "checkpoint", "gguf" or "onnx"
    streams_experts: bool  # can run with experts left on flash
    prefill_chunk: int  # tokens per prefill step (llama.cpp: n_ubatch; its store may shrink it, `stream_ubatch`;
    # 0: the whole prompt in one step)
    materializes_scores: bool  # attention scores [chunk, heads, context (whole prompt: chunk)] exist at once
    logits_per_position: bool  # prefill returns a logits row for every prompt position
    runtime_bytes: int
    maps_embedding: bool  # the embedding table is mapped from the file: only touched rows are resident
    kv_type: str | None  # the KV cache's type whatever was asked (None: as asked)
    reads_per_expert: int = 0  # contiguous reads of one missed expert
    miss_buffer: bool = False  # a missed expert is built in a buffer of its own before it is cached
    page_slots: bool = False  # a resident expert costs the pages its slices span (llama.cpp's store)
    expert_encoding: str = "mxfp4"  # how its file stores the experts (ONNX: `export onnx --experts`)


ENGINES = {
    "reference": EngineTraits("reference", "checkpoint", True, 128, False, True, 128 * MIB, True, "f32",
                              reads_per_expert=6, miss_buffer=True),
    "llamacpp": EngineTraits("llamacpp", "gguf", False, 512, False, False, 64 * MIB, False, None),
    # llama.cpp with edgeoss's expert store (an app's native code; measured from Python, the host process adds
    # the interpreter, ~70 MiB)
    "llamacpp-stream": EngineTraits("llamacpp-stream", "gguf", True, 512, False, False, 64 * MIB, True, None,
                                    reads_per_expert=3, page_slots=True),
    # onnxruntime-genai on an edgeoss ONNX folder: MXFP4 experts (QMoE fp4) or int4 ones; the whole prompt in one
    # step; GroupQueryAttention's scores; a logits row per position; KV in float32 for max_length positions in
    # every layer. Runtime bytes measured: RSS after loading 20b less the resident dense weights and the Python
    # interpreter (benchmarks/README.md, issue 23).
    "ortgenai": EngineTraits("ortgenai", "onnx", False, 0, True, True, ORT_RUNTIME_BYTES, True, "f32"),
    "ortgenai-int4": EngineTraits("ortgenai-int4", "onnx", False, 0, True, True, ORT_RUNTIME_BYTES, True, "f32",
                                  expert_encoding="int4"),
}
STREAM_UBATCH = ENGINES["llamacpp-stream"].prefill_chunk

PAGE_BYTES = 4096


def engine_traits(name: str) -> EngineTraits:
    if name not in ENGINES:
        raise UsageError(f"unknown engine {name!r} for planning (choose from {', '.join(ENGINES)})")
    return ENGINES[name]


def _type_bytes(table: dict[str, float], name: str, what: str) -> float:
    if name not in table:
        raise UsageError(f"unknown {what} {name!r} (choose from {', '.join(table)})")
    return table[name]


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of the model's weights in one engine's format."""

    embedding: int
    unembedding: int
    attention: int
    router: int
    norms: int
    expert: int  # one expert of one layer as the engine streams it (biases included, except llamacpp-stream's)
    embedding_row: int  # what one token reads of the embedding table
    layers: int
    experts_per_layer: int
    expert_biases: int = 0  # llamacpp-stream: every expert bias, resident with the dense weights
    expert_slot: int = 0  # what one resident expert occupies (0: `expert`; llamacpp-stream: its pages)

    @property
    def dense(self) -> int:
        return self.embedding + self.unembedding + self.attention + self.router + self.norms + self.expert_biases

    @property
    def slot(self) -> int:
        return self.expert_slot or self.expert

    @property
    def experts_total(self) -> int:
        return self.expert * self.layers * self.experts_per_layer

    @property
    def expert_layer(self) -> int:
        return self.expert * self.experts_per_layer

    @property
    def dense_per_token(self) -> int:
        """Dense bytes one decoded token reads: all but the embedding table, of which it reads one row."""
        return self.dense - self.embedding + self.embedding_row


MATRIX_KINDS = ("embedding", "unembedding", "attention")


def weight_bytes(spec: ModelSpec, dense_type: str, engine: str) -> WeightBytes:
    dense_b = _type_bytes(DENSE_TYPES, dense_type, "dense type")
    traits = engine_traits(engine)
    onnx = traits.weight_format == "onnx"
    if onnx:  # an ONNX folder as exported by default (--dense compact): the attention matrices as 4-bit digits,
        # the unembedding's bf16 widened to float32 when ONNX Runtime folds its Cast at load, the embedding bf16
        dense_b = F32_BYTES
    wide = traits.weight_format in ("gguf", "onnx")  # vectors, router and expert biases in float32
    other_b = F32_BYTES if wide or dense_type == "f32" else STORED_BYTES
    by_kind = dict.fromkeys(("embedding", "unembedding", "attention", "router", "norm", "expert_biases"), 0)
    expert_layer = 0.0
    for info in tensor_table(spec):
        if info.kind == "experts":
            bias = info.name.endswith(".bias")
            bias_bytes = info.numel * (F32_BYTES if wide else STORED_BYTES)
            if bias and traits.page_slots:
                by_kind["expert_biases"] += bias_bytes
            elif info.layer == 0 and bias:
                expert_layer += bias_bytes
            elif info.layer == 0 and traits.expert_encoding == "int4":  # 32 weights per 16 bytes of blocks
                expert_layer += 0 if info.name.endswith(".scales") else 2 * info.numel * INT4_BYTES_PER_WEIGHT
            elif info.layer == 0:
                expert_layer += info.numel  # MXFP4 blocks and scales are bytes already
            continue
        matrix = len(info.shape) == 2 and info.kind in MATRIX_KINDS
        stored = dense_b
        if onnx and info.kind == "embedding":
            stored = STORED_BYTES
        elif onnx and info.kind == "attention" and matrix and dense_digits.fits(info.shape[1]):
            stored = dense_digits.BYTES_PER_WEIGHT
        by_kind[info.kind] += math.ceil(info.numel * (stored if matrix else other_b))
    row = math.ceil(spec.hidden_size * (STORED_BYTES if onnx else dense_b))
    return WeightBytes(embedding=by_kind["embedding"], unembedding=by_kind["unembedding"],
                       attention=by_kind["attention"], router=by_kind["router"], norms=by_kind["norm"],
                       expert=int(expert_layer) // spec.num_local_experts, embedding_row=row,
                       layers=spec.num_hidden_layers, experts_per_layer=spec.num_local_experts,
                       expert_biases=by_kind["expert_biases"],
                       expert_slot=max(expert_page_costs(expert_slice_bytes(spec), spec.num_local_experts))
                       if traits.page_slots else 0)


def expert_slice_bytes(spec: ModelSpec) -> list[int]:
    """Bytes of one expert in each of llama.cpp's stacked tensors (gate, up, down): MXFP4 rows, 17 B per 32."""
    i, h = spec.intermediate_size, spec.hidden_size
    return [i * h // 32 * 17, i * h // 32 * 17, h * i // 32 * 17]


def expert_page_costs(strides: list[int], experts: int, page: int = PAGE_BYTES) -> list[int]:
    """What each expert id costs resident in llama.cpp's store: the pages its slice spans in every stacked
    tensor's page-aligned reservation (expert e at byte e * stride), summed over the tensors."""
    return [sum((-(-(e + 1) * s // page) - e * s // page) * page for s in strides) for e in range(experts)]


def stream_ubatch(free_slots: int, experts: int, k: int, fewest_pinned: int, default: int = STREAM_UBATCH) -> int:
    """llama.cpp's ubatch under the expert store: its default when `free_slots` (non-pinned) hold the largest
    routed union of a layer, min(experts - pinned there, k x ubatch); else free_slots // k; 0 when not even one
    token's top-k fits."""
    def needed(ubatch: int) -> int:
        return min(experts - fewest_pinned, k * ubatch)

    if needed(1) > free_slots:
        return 0
    if needed(default) <= free_slots:
        return default
    return max(1, free_slots // k)


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class KvCache:
    full_cells: int  # positions held by each full-attention layer
    sliding_cells: int  # positions held by each sliding layer
    full_bytes: int
    sliding_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.full_bytes + self.sliding_bytes


def kv_cache(spec: ModelSpec, context: int, kv_type: str, engine: str, swa_full: bool = False) -> KvCache:
    """swa_full: llama.cpp's full-size SWA cache (its library's default; llama-server's and edgeoss's is off)."""
    per_cell = 2 * spec.kv_dim * _type_bytes(KV_TYPES, kv_type, "KV type")  # K and V
    weight_format = engine_traits(engine).weight_format
    if weight_format == "gguf":
        full = _pad(context, LLAMACPP_PAD)
        sliding = full if swa_full else min(_pad(spec.sliding_window + ENGINES["llamacpp"].prefill_chunk,
                                                 LLAMACPP_PAD), full)
    elif weight_format == "onnx":  # onnxruntime-genai allocates max_length cells in every layer
        full = sliding = context
    else:
        full, sliding = context, min(context, spec.sliding_window)
    return KvCache(full, sliding, math.ceil(len(spec.full_layers) * full * per_cell),
                   math.ceil(len(spec.sliding_layers) * sliding * per_cell))


def activation_floats_per_token(spec: ModelSpec) -> int:
    """float32 values one token keeps alive inside one layer (see the module docstring)."""
    return (2 * spec.hidden_size + 2 * spec.q_dim + 2 * spec.kv_dim + spec.num_local_experts
            + spec.num_experts_per_tok * 3 * spec.intermediate_size)


def engine_kv_type(engine: str, requested: str) -> str:
    """The type an engine really stores its KV cache in."""
    return engine_traits(engine).kv_type or requested


def resident_dense_bytes(w: WeightBytes, context: int, engine: str) -> int:
    """Dense bytes resident on an engine at a context: all of them, except a mapped embedding table's
    untouched rows (see the module docstring)."""
    if not engine_traits(engine).maps_embedding:
        return w.dense
    row_pages = (-(-w.embedding_row // PAGE_BYTES) + 1) * PAGE_BYTES
    return w.dense - w.embedding + min(w.embedding, context * row_pages)


def scratch_bytes(spec: ModelSpec, context: int, engine: str, expert_bytes: int, prompt_tokens: int = 1) -> int:
    t = engine_traits(engine)
    chunk = min(context, t.prefill_chunk or max(1, prompt_tokens))
    activations = 4 * chunk * activation_floats_per_token(spec)
    # a chunk at the end of a full context attends over all of it (onnxruntime-genai's GroupQueryAttention sizes
    # its probabilities by max_length and touches the filled part: benchmarks/README.md, memory against context)
    scores = 4 * chunk * spec.num_attention_heads * context if t.materializes_scores else 0
    # llama.cpp's mask over the cache: n_kv x n_ubatch, f16 with flash attention (measured: 2.3-2.6 bytes a cell
    # with the f32 input it is cast from reused), for the full layers and the sliding ring
    mask = 2 * chunk * (_pad(context, LLAMACPP_PAD) + _pad(spec.sliding_window + chunk, LLAMACPP_PAD)) \
        if t.weight_format == "gguf" else 0
    prompt = min(context, max(1, prompt_tokens))
    if t.logits_per_position:  # the prompt's rows, and a chunk's own rows while a long prompt fills them
        logits_rows = prompt + (chunk if prompt > chunk else 0)
    else:
        logits_rows = 1
    logits = 4 * spec.vocab_size * logits_rows
    stream_buffer = spec.num_experts_per_tok * expert_bytes if t.miss_buffer else 0
    return activations + scores + mask + logits + stream_buffer


def overhead_bytes(engine: str, platform: str) -> int:
    """Host-side runtime bytes (the GPU context and the repack copy are counted by the planner)."""
    return engine_traits(engine).runtime_bytes + (ANDROID_APP_BYTES if platform == "android" else 0)
