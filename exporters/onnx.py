"""Export a gpt-oss checkpoint to an ONNX folder that ONNX Runtime and onnxruntime-genai run.

    export_onnx("gpt-oss-20b/", "gpt-oss-20b-onnx/")                  # MXFP4 experts as stored (QMoE fp4)
    export_onnx("gpt-oss-20b/", "gpt-oss-20b-onnx/", experts="int8")  # or exact int8, or lossy int4

The folder holds `model.onnx` (the graph; every weight a reference into the next file), `model.onnx.data`,
`genai_config.json` (onnxruntime-genai, model type "gptoss"), the tokenizer files and `edgeoss.json` (how
the experts were encoded, with their measured weight error).

The graph, per layer (ONNX opset 23 + com.microsoft contrib ops, fp32 activations and dense weights):

    x = Cast(Gather(embed, input_ids))                              (embedding kept bf16; rows [B*S, H])
    h = RMSNormalization(x, attn_norm)
    a = GroupQueryAttention(h @ [Wq; Wk; Wv]^T + b, past k/v, seqlens_k, total_len, cos, sin, head_sink=sinks)
          rotary in the op (half-split; YaRN cos/sin tables as the original computes them, see rope_tables); sliding
          layers: local_window_size = sliding_window and a window-sized KV cache (sliding_window_cache=1)
    x = x + a @ Wo^T + bo
    h = RMSNormalization(x, mlp_norm)
    x = x + QMoE(h, router logits = h @ Wr^T + br)                  (edgeoss.exporters.onnx_experts)
    logits = RMSNormalization(x, norm) @ Wunembed^T

Dense matrices (--dense): "compact" (the default) stores the attention matrices as four 4-bit digits per weight
for MatMulNBits (edgeoss.formats.dense_digits: 2.56 bytes a weight in RAM, within 2^-15 of each block's largest
weight, 99 % of weights exact), "exact" stores them bf16 behind a Cast that ONNX Runtime folds to float32 at load
(4 bytes a weight in RAM). The router and the unembedding are exact in both.

Inputs/outputs follow onnxruntime-genai's decoder contract: input_ids, attention_mask,
past_key_values.N.{key,value} (BNSH) -> logits, present.N.{key,value}; seqlens_k = sum(attention_mask) - 1.

Streaming: tensors are read with pread (no mapping grows the RSS) and written one at a time, experts one
expert at a time, dense matrices in row chunks; the output folder appears only when complete, and the same
inputs give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from onnx import TensorProto

from edgeoss.formats import mxfp4, tokenizer
from edgeoss.atomic import atomic_dir
from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.errors import CheckpointError, UsageError
from edgeoss.formats import dense_digits
from edgeoss.exporters.onnx_experts import DEFAULT_ENCODING, ENCODINGS, MoeShape, QuantError, write_moe
from edgeoss.exporters.onnx_graph import MS, ExternalData, Graph, value_info
from edgeoss.progress import byte_progress
from edgeoss.formats.safetensors_io import bf16_to_f32
from edgeoss.formats.spec import BF16, BF16_EXPERTS, ModelSpec
from edgeoss.formats.rope import yarn_rope
from edgeoss.jsonfile import read_json

MODEL, DATA, GENAI_CONFIG, MANIFEST = "model.onnx", "model.onnx.data", "genai_config.json", "edgeoss.json"
OPSETS = {"": 23, MS: 1}
CHUNK_BYTES = 32 << 20  # dense tensors are converted in row chunks of about this many source bytes
DEFAULT_MAX_LENGTH = 4096
DENSE = {"compact": "attention as four 4-bit digits a weight (MatMulNBits; within 2^-15 of each block's largest "
                    "weight), router and unembedding exact in float32",
         "exact": "bf16 as stored, widened to float32 when the session loads"}
DEFAULT_DENSE = "compact"
FOLD_LIMIT = 1 << 30  # ONNX Runtime (1.32) skips constant folding of a node whose output exceeds 1 GiB
PAST, PRESENT = "past_key_values.%d.%s", "present.%d.%s"


@dataclass
class ExportReport:
    path: Path
    experts: str
    exact: bool
    seconds: float
    nbytes: int
    weight_error: dict = field(default_factory=dict)  # int4: QuantError.as_dict(); exact encodings: {}


# ---- reading the checkpoint without mapping it ----------------------------------------------------------------
class Reader:
    """Canonical tensors read with pread, counted for the progress bar."""

    def __init__(self, ckpt: Checkpoint, advance, mxfp4_rule: str = "ocp"):
        self.ckpt, self.advance = ckpt, advance
        self.mxfp4_rule = mxfp4_rule  # how BF16 experts are quantized (edgeoss.formats.mxfp4.quantize)
        self._fds: dict[Path, int] = {}

    def _pread(self, name: str, expert: int | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        info = self.ckpt.info(name)
        path, offset, nbytes = self.ckpt.byte_range(name, expert)
        shape = info.shape[1:] if expert is not None else info.shape
        if rows is not None:
            row_bytes = nbytes // shape[0]
            offset, nbytes, shape = offset + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes, \
                (rows[1] - rows[0], *shape[1:])
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        buf = os.pread(self._fds[path], nbytes, offset)
        self.advance(nbytes)
        if info.dtype == BF16:
            return self.ckpt.check_finite(name, np.frombuffer(buf, dtype=np.uint16).reshape(shape))
        return np.frombuffer(buf, dtype=np.uint8).reshape(shape)

    def chunks(self, name: str, first: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
        """A tensor as stored (rows first..end), in chunks of rows."""
        info = self.ckpt.info(name)
        end = info.shape[0] if end is None else end
        per = max(1, CHUNK_BYTES // (info.nbytes // info.shape[0]))
        for start in range(first, end, per):
            yield self._pread(name, rows=(start, min(start + per, end)))

    def expert(self, layer: int, proj: str, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(MXFP4 blocks, scales, float32 bias) of one expert: as stored, or BF16 experts quantized on the way."""
        p = f"layers.{layer}.{proj}"
        if self.ckpt.experts == BF16_EXPERTS:
            blocks, scales = mxfp4.quantize_bf16_expert(self._pread(f"{p}.weight", e), self.mxfp4_rule)
            return blocks, scales, bf16_to_f32(self._pread(f"{p}.bias", e))
        scales = self._pread(f"{p}.scales", e)
        if mxfp4.has_nan_scale(scales):
            raise CheckpointError(str(self.ckpt.stored_file(f"{p}.scales")),
                                  f"expert {e}: MXFP4 scale byte 0xFF (NaN)", f"{p}.scales")
        return self._pread(f"{p}.blocks", e), scales, bf16_to_f32(self._pread(f"{p}.bias", e))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)


# ---- the graph ------------------------------------------------------------------------------------------------
def rope_tables(spec: ModelSpec, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """GroupQueryAttention's cos/sin caches [positions, head_dim / 2] (the export's max_length: the positions it
    can run), YaRN concentration folded in: the rope of edgeoss.formats.rope, computed as the original model
    computes it (float32 angles p * inv_freq). Angles evaluated in float64 would be closer to the true rotation,
    but 1e-4 away from the original's logits at position 8,192 (transformers' and gpt_oss's float32 angles drift
    by ~5e-4 rad there): parity with the original comes first."""
    return yarn_rope(spec).cos_sin(np.arange(positions))


class DecoderWriter:
    """Adds the decoder's nodes in order while its weights stream into the external-data file."""

    def __init__(self, spec: ModelSpec, reader: Reader, data: ExternalData, encoding: str, max_length: int,
                 dense: str = DEFAULT_DENSE):
        self.spec, self.reader, self.data, self.encoding = spec, reader, data, ENCODINGS[encoding]
        self.max_length, self.dense = max_length, dense
        self.g = Graph()
        self.error = QuantError()

    def weight(self, *names: str) -> str:
        """Canonical tensors (rows concatenated) as one fp32 initializer named after the first."""
        infos = [self.reader.ckpt.info(n) for n in names]
        shape = (sum(i.shape[0] for i in infos), *infos[0].shape[1:])
        chunks = (bf16_to_f32(chunk) for n in names for chunk in self.reader.chunks(n))
        return self.g.initializer(self.data.add(names[0], np.float32, shape, chunks))

    def embedding(self, ids: str) -> str:
        """Rows of the bf16 embedding, widened after the lookup: half the bytes of an fp32 table, same values."""
        info = self.reader.ckpt.info("embed")
        table = self.data.add("embed", np.uint16, info.shape, self.reader.chunks("embed"), TensorProto.BFLOAT16)
        rows = self.g.op("Gather", self.g.initializer(table), ids, name="embed")
        return self.g.op("Cast", rows, to=TensorProto.FLOAT)

    def matrix(self, *names: str) -> str:
        """A weight matrix (rows of the named tensors concatenated) stored as the checkpoint stores it, bf16, and
        widened to fp32 by a Cast that ONNX Runtime folds when the session loads: the folder holds the
        checkpoint's bytes, the values are exact, and RAM holds fp32 as before (ONNX Runtime's CPU kernels have
        no bf16 MatMul; an fp16 one is widened the same way). A checkpoint that stores fp32 keeps fp32. The
        matrix's fp32 form must stay within FOLD_LIMIT (see `row_parts` for larger ones)."""
        infos = [self.reader.ckpt.info(n) for n in names]
        if any(i.dtype != BF16 for i in infos):
            return self.weight(*names)
        shape = (sum(i.shape[0] for i in infos), *infos[0].shape[1:])
        if math.prod(shape) * 4 > FOLD_LIMIT:
            raise AssertionError(f"{names[0]}: {shape} is too large for one folded Cast; use row_parts")
        chunks = (chunk for n in names for chunk in self.reader.chunks(n))
        return self._widened(names[0], shape, chunks)

    def row_parts(self, name: str) -> list[str]:
        """A large matrix as row blocks, each stored bf16 and widened by its own folded Cast (ONNX Runtime does not
        fold a Cast whose output exceeds FOLD_LIMIT; unfolded, it would widen the weights at every token)."""
        info = self.reader.ckpt.info(name)
        if info.dtype != BF16:
            return [self.weight(name)]
        rows, cols = info.shape
        per = max(1, FOLD_LIMIT // (cols * 4))
        if per >= rows:
            return [self.matrix(name)]
        return [self._widened(f"{name}.{i}", (min(rows, start + per) - start, cols),
                              self.reader.chunks(name, start, min(rows, start + per)))
                for i, start in enumerate(range(0, rows, per))]

    def _widened(self, name: str, shape: tuple[int, ...], chunks: Iterator[np.ndarray]) -> str:
        stored = self.g.initializer(self.data.add(name, np.uint16, shape, chunks, TensorProto.BFLOAT16))
        return self.g.op("Cast", stored, to=TensorProto.FLOAT, name=f"{name}.fp32")

    def linear(self, x: str, *names: str, compact: bool = False) -> str:
        """x @ W^T + b with W stored as checkpointed, [out, in] (Gemm transB: no transpose to write), or as 4-bit
        digits when `compact` and the export's dense encoding is "compact"."""
        weights = [f"{n}.weight" for n in names]
        b = self.weight(*(f"{n}.bias" for n in names))
        infos = [self.reader.ckpt.info(n) for n in weights]
        if not (compact and self.dense == "compact" and all(i.dtype == BF16 for i in infos)
                and dense_digits.fits(infos[0].shape[1])):
            return self.g.op("Gemm", x, self.matrix(*weights), b, transB=1, name=names[0])
        n, k = sum(i.shape[0] for i in infos), infos[0].shape[1]
        parts = [dense_digits.split(chunk) for w in weights for chunk in self.reader.chunks(w)]
        stored = [self.g.initializer(self.data.add(f"{names[0]}.{what}", np.uint8 if i != 1 else np.float32,
                                                   (n, *parts[0][i].shape[1:]), (p[i] for p in parts)))
                  for i, what in enumerate(("digits", "scales", "zero_points"))]
        repeated = self.g.op("Concat", *[x] * dense_digits.DIGITS, axis=-1, name=f"{names[0]}.repeat")
        return self.g.op("MatMulNBits", repeated, stored[0], stored[1], stored[2], "", b, domain=MS, name=names[0],
                         K=dense_digits.DIGITS * k, N=n, bits=4, block_size=dense_digits.BLOCK, accuracy_level=1)

    def norm(self, x: str, name: str) -> str:
        return self.g.op("RMSNormalization", x, self.weight(name), epsilon=self.spec.rms_norm_eps, name=name)

    def build(self) -> tuple[list, list]:
        s, g = self.spec, self.g
        mask_sum = g.op("ReduceSum", "attention_mask", g.const("axis1", np.array([1], np.int64)), keepdims=0)
        seqlens_k = g.op("Cast", g.op("Sub", mask_sum, g.const("one", np.array(1, np.int64))), to=TensorProto.INT32,
                         name="seqlens_k")
        mask_len = g.op("Gather", g.op("Shape", "attention_mask"), g.const("dim1", np.array(1, np.int64)))
        total_len = g.op("Cast", mask_len, to=TensorProto.INT32, name="total_sequence_length")
        batch_seq = g.op("Shape", "input_ids")
        cos, sin = (g.initializer(self.data.array(n, t))
                    for n, t in zip(("rope.cos", "rope.sin"), rope_tables(s, self.max_length)))

        x = g.op("Reshape", self.embedding("input_ids"), g.const("rows_h", np.array([-1, s.hidden_size], np.int64)))
        qkv_shape = g.op("Concat", batch_seq, g.const("qkv_width", np.array([s.q_dim + 2 * s.kv_dim], np.int64)),
                         axis=0)
        for layer in range(s.num_hidden_layers):
            p = f"layers.{layer}"
            qkv = self.linear(self.norm(x, f"{p}.attn_norm"), f"{p}.q", f"{p}.k", f"{p}.v", compact=True)
            window = dict(local_window_size=s.sliding_window, sliding_window_cache=1) if s.is_sliding(layer) \
                else dict(local_window_size=-1)
            attn = g.op("GroupQueryAttention", g.op("Reshape", qkv, qkv_shape), "", "", PAST % (layer, "key"),
                        PAST % (layer, "value"), seqlens_k, total_len, cos, sin, "", "", self.weight(f"{p}.sinks"),
                        domain=MS, name=f"{p}.attn",
                        outputs=[f"{p}.attn/out", PRESENT % (layer, "key"), PRESENT % (layer, "value")],
                        num_heads=s.num_attention_heads, kv_num_heads=s.num_key_value_heads,
                        scale=float(s.head_dim ** -0.5), do_rotary=1, rotary_interleaved=0, **window)[0]
            attn = g.op("Reshape", attn, g.const("rows_q", np.array([-1, s.q_dim], np.int64)))
            x = g.op("Add", x, self.linear(attn, f"{p}.o", compact=True))
            h = self.norm(x, f"{p}.mlp_norm")
            router_logits = self.linear(h, f"{p}.router")
            experts = lambda proj, e, layer=layer: self.reader.expert(layer, proj, e)  # noqa: E731
            x = g.op("Add", x, write_moe(g, self.data, p, self.moe_shape, self.encoding, experts, h, router_logits,
                                         self.error))
        h = self.norm(x, "norm")
        parts = [g.op("Gemm", h, w, transB=1, name="unembed") for w in self.row_parts("unembed")]
        logits = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1, name="unembed.concat")
        logits_shape = g.op("Concat", batch_seq, g.const("vocab", np.array([s.vocab_size], np.int64)), axis=0)
        g.op("Reshape", logits, logits_shape, outputs=["logits"])
        return self.inputs(), self.outputs()

    @property
    def moe_shape(self) -> MoeShape:
        s = self.spec
        return MoeShape(s.num_local_experts, s.num_experts_per_tok, s.hidden_size, s.intermediate_size,
                        s.swiglu_limit)

    def _kv(self, layer: int, pattern: str, length: str) -> list:
        s = self.spec
        if s.is_sliding(layer):
            length = length.replace("sequence", "sliding")  # the windowed cache has its own length
        return [value_info(pattern % (layer, kv), TensorProto.FLOAT,
                           ["batch_size", s.num_key_value_heads, length, s.head_dim]) for kv in ("key", "value")]

    def inputs(self) -> list:
        ids = [value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
               value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])]
        return ids + [v for layer in range(self.spec.num_hidden_layers)
                      for v in self._kv(layer, PAST, "past_sequence_length")]

    def outputs(self) -> list:
        logits = [value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", self.spec.vocab_size])]
        return logits + [v for layer in range(self.spec.num_hidden_layers)
                         for v in self._kv(layer, PRESENT, "total_sequence_length")]


# ---- the side files --------------------------------------------------------------------------------------------
def eos_ids(ckpt: Checkpoint) -> list[int]:
    """Where generation stops: generation_config.json's list when the folder has one, else the config's eos."""
    path = ckpt.folder / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        if eos is not None:
            return [int(i) for i in (eos if isinstance(eos, list) else [eos])]
    return [ckpt.spec.eos_token_id]


def genai_config(spec: ModelSpec, eos: list[int], max_length: int) -> dict:
    """onnxruntime-genai's config for this graph. search.max_length sizes the preallocated full-attention KV."""
    return {
        "model": {
            "bos_token_id": spec.bos_token_id,
            "context_length": max_length,  # the rope tables hold this many positions
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL,
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": spec.num_attention_heads,
                "num_hidden_layers": spec.num_hidden_layers,
                "num_key_value_heads": spec.num_key_value_heads,
                "sliding_window": {"window_size": spec.sliding_window, "slide_key_value_cache": False,
                                   "slide_inputs": False, "layers": list(spec.sliding_layers), "cache_slack": 0},
            },
            "eos_token_id": eos,
            "pad_token_id": spec.pad_token_id,
            "type": "gptoss",
            "vocab_size": spec.vocab_size,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": max_length, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---- the export -------------------------------------------------------------------------------------------------
def export_onnx(checkpoint: str | Path, out_dir: str | Path, experts: str = DEFAULT_ENCODING,
                max_length: int | None = None, force: bool = False, progress: bool | None = None,
                dense: str = DEFAULT_DENSE, mxfp4_rule: str = "ocp", chat_template: str = "checkpoint") \
        -> ExportReport:
    """Write the ONNX folder for a checkpoint; it appears at `out_dir` only once complete. max_length: the positions
    the folder runs (onnxruntime-genai's KV cache, the rope tables); default 4096, or the model's own limit when
    that is less. mxfp4_rule: how BF16 experts are quantized ("ocp", llama.cpp's, or "triton"); MXFP4 experts
    are carried as stored. chat_template: "checkpoint" (its own when it has one, else edgeoss's harmony template),
    "harmony" or a Jinja file's path."""
    if mxfp4_rule not in mxfp4.RULES:
        raise UsageError(f"MXFP4 rule {mxfp4_rule!r}: choose from {', '.join(mxfp4.RULES)}")
    if experts not in ENCODINGS:
        raise UsageError(f"unknown expert encoding {experts!r} (choose from {', '.join(ENCODINGS)})")
    if dense not in DENSE:
        raise UsageError(f"unknown dense encoding {dense!r} (choose from {', '.join(DENSE)})")
    start = time.perf_counter()
    with Checkpoint.open(checkpoint, bf16_experts=True) as ckpt:
        spec = ckpt.spec
        template, _ = tokenizer.resolve_chat_template(chat_template, ckpt.folder)
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, spec.max_position_embeddings)
        if not 0 < max_length <= spec.max_position_embeddings:
            raise UsageError(f"--max-length {max_length} must be in 1..{spec.max_position_embeddings}")
        with atomic_dir(out_dir, overwrite=force) as tmp, \
                byte_progress(ckpt.nbytes, f"export onnx ({experts})", progress) as advance:
            reader = Reader(ckpt, advance, mxfp4_rule)
            try:
                with open(tmp / DATA, "wb") as f:
                    writer = DecoderWriter(spec, reader, ExternalData(f, DATA), experts, max_length, dense)
                    inputs, outputs = writer.build()
            finally:
                reader.close()
            encoding = writer.encoding
            writer.g.save(tmp / MODEL, inputs, outputs, OPSETS,
                          doc=f"{spec.name}, experts {encoding.name}: {encoding.description}; dense {dense}: "
                              f"{DENSE[dense]}")
            _write_json(tmp / GENAI_CONFIG, genai_config(spec, eos_ids(ckpt), max_length))
            tokenizer.write_hf_tokenizer_files(tmp, bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id,
                                               pad_token_id=spec.pad_token_id,
                                               model_max_length=spec.max_position_embeddings, template=template)
            weight_error = writer.error.as_dict() if not encoding.exact else {}
            _write_json(tmp / MANIFEST, {"format": "onnx", "experts": encoding.name, "exact": encoding.exact,
                                         "description": encoding.description, "weight_error": weight_error,
                                         "dense": dense, "dense_description": DENSE[dense],
                                         "quantized_from_bf16": mxfp4_rule if ckpt.experts == BF16_EXPERTS else None,
                                         "max_length": max_length, "spec": dataclasses.asdict(spec)})
            nbytes = sum(p.stat().st_size for p in tmp.iterdir())
    return ExportReport(Path(out_dir), experts, encoding.exact, time.perf_counter() - start, nbytes, weight_error)


def export_info(folder: str | Path) -> dict:
    """What the exporter recorded in an ONNX folder (edgeoss.json: experts, exact, weight_error, spec)."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{folder}: not an ONNX folder written by edgeoss (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None


def plan_max_length(plan_path: str | Path) -> int | None:
    """The KV length a plan.json sizes onnxruntime-genai for: engines.ortgenai.max_length, else its context.

    (A plan's experts.order is not applied: QMoE keeps every expert of a layer resident, so order changes
    nothing in ONNX Runtime.)"""
    path = Path(plan_path)
    plan = read_json(path, "plan file")
    if not isinstance(plan, dict):
        raise UsageError(f"{path}: not a plan (expected a JSON object)")
    ortgenai = (plan.get("engines") or {}).get("ortgenai") or {}
    value = ortgenai.get("max_length", plan.get("context"))
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise UsageError(f"{path}: max_length / context must be a positive integer, got {value!r}")
    return value
