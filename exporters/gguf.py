"""Export a gpt-oss checkpoint (either layout) to a GGUF file that llama.cpp runs, streaming tensor by tensor.

    export_gguf("gpt-oss-20b/", "gpt-oss-20b.gguf")                 # bf16 dense, MXFP4 experts
    export_gguf(ckpt, "out.gguf", dense_type="q8_0", split_max_size=2 << 30, expert_order={0: [3, 1, 0, 2]})

What is written (names and storage from `edgeoss.formats.gguf_names`):
- every key llama.cpp reads for `gpt-oss` (none left to a silent default), general.* and the tokenizer
  (o200k_harmony as gpt2 BPE with the `gpt-4o` pre-tokenizer, the harmony chat template);
- experts as one 3-D MXFP4 tensor (ggml type 39) per projection and layer: the checkpoint's codes and scale
  bytes moved into ggml's `block_mxfp4` (the bit shuffle of `edgeoss.mxfp4.to_ggml`, compiled), never
  dequantized; gate and up split out of the interleaved rows;
- norms, sinks, biases and the router in F32; the other 2-D weights in bf16 (the checkpoint's bits), f16,
  f32 or q8_0.

Memory stays bounded: tensor infos are declared first, then header, metadata and tensor infos are written,
then each tensor's bytes are produced in chunks (one expert, or ~32 MiB of rows) read with pread, converted on
a small thread pool and appended to the file. The output appears only when complete (temporary file in the
target folder, renamed at the end); with `split_max_size` it is a set of shards in llama.cpp's split format.
The same checkpoint always gives the same bytes, whatever its layout.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import gguf
import numba
import numpy as np
from gguf import GGMLQuantizationType as GGML

from edgeoss.formats import mxfp4, tokenizer
from edgeoss.atomic import atomic_file
from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.errors import CheckpointError, EdgeossError, SpecError, UsageError
from edgeoss.progress import byte_progress
from edgeoss.formats.safetensors_io import NUMPY_DTYPES, bf16_to_f32
from edgeoss.formats.spec import BF16, BF16_EXPERTS, ModelSpec, tensor_table
from edgeoss.formats.gguf_names import (ARCH, DENSE, DENSE_TYPES, EXPERT_PROJECTIONS, expert_name, tensor_name)
from edgeoss.formats.gguf_meta import EXPERT_ORDER_KEY, missing_keys

CHUNK_BYTES = 32 << 20  # source bytes per chunk of a dense tensor
LLAMA_CPP_SWIGLU_LIMIT = 7.0  # hard-coded in llama.cpp's gpt-oss graph (no metadata key)

ExpertOrder = Mapping[int, Sequence[int]]  # layer -> new expert slot j holds checkpoint expert order[j]
Task = Callable[[], np.ndarray]


class ExportError(EdgeossError):
    """An export that cannot be written as asked."""


# ---- what goes into the file --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFTensor:
    """One output tensor: its GGUF name, element shape (numpy order), ggml type, and the tasks that produce
    its bytes in order (each returns a C-contiguous array)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGML
    tasks: tuple[Task, ...]

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape GGUFWriter takes: bytes along the last axis for block-quantized types."""
        if self.ggml_type in (GGML.F32, GGML.F16, GGML.BF16):
            return self.shape
        return gguf.quant_shape_to_byte_shape(self.shape, self.ggml_type)

    @property
    def numpy_dtype(self) -> type:
        return {GGML.F32: np.float32, GGML.F16: np.float16, GGML.BF16: np.uint16}.get(self.ggml_type, np.uint8)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.stored_shape)) * np.dtype(self.numpy_dtype).itemsize


class _Reader:
    """A checkpoint's canonical tensors read with pread: bounded memory, nothing left mapped."""

    def __init__(self, ckpt: Checkpoint, mxfp4_rule: str = "ocp"):
        self.ckpt = ckpt
        self.mxfp4_rule = mxfp4_rule  # how BF16 experts are quantized (edgeoss.formats.mxfp4.quantize)
        self._fds: dict[Path, int] = {}

    def read(self, name: str, rows: tuple[int, int] | None = None, expert: int | None = None) -> np.ndarray:
        info = self.ckpt.info(name)
        path, offset, nbytes = self.ckpt.byte_range(name, expert)
        shape = info.shape[1:] if expert is not None else info.shape
        if rows is not None:
            row_bytes = nbytes // shape[0]
            offset += rows[0] * row_bytes
            nbytes = (rows[1] - rows[0]) * row_bytes
            shape = (rows[1] - rows[0], *shape[1:])
        buf = bytearray(nbytes)
        view, done = memoryview(buf), 0
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        while done < nbytes:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise ExportError(f"{path}: unexpected end of file reading {name}")
            done += n
        array = np.frombuffer(buf, dtype=NUMPY_DTYPES[info.dtype]).reshape(shape)
        return self.ckpt.check_finite(name, array) if info.dtype == BF16 else array

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _convert_dense(bits: np.ndarray, ggml_type: GGML) -> np.ndarray:
    """BF16 bits -> the stored form of a dense tensor in `ggml_type`."""
    if ggml_type == GGML.BF16:
        return np.ascontiguousarray(bits)
    values = bf16_to_f32(bits)
    if ggml_type == GGML.F32:
        return values
    if ggml_type == GGML.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(values, ggml_type)


def _dense_tensor(reader: _Reader, canonical: str, name: str, ggml_type: GGML) -> GGUFTensor:
    info = reader.ckpt.info(canonical)
    if ggml_type not in (GGML.F32, GGML.F16, GGML.BF16):
        block = gguf.GGML_QUANT_SIZES[ggml_type][0]
        if info.shape[-1] % block:
            raise UsageError(f"{canonical}: rows of {info.shape[-1]} do not split into {ggml_type.name} blocks "
                             f"of {block}; choose another --dense-type")
    rows = info.shape[0]
    step = max(1, CHUNK_BYTES // max(1, info.nbytes // rows))
    tasks = tuple((lambda r=(start, min(rows, start + step)): _convert_dense(reader.read(canonical, r), ggml_type))
                  for start in range(0, rows, step))
    return GGUFTensor(name, info.shape, ggml_type, tasks)


def _router_tensor(reader: _Reader, canonical: str, name: str, order: np.ndarray) -> GGUFTensor:
    """The router weight [E, H] or bias [E] in F32, rows permuted with the experts."""
    info = reader.ckpt.info(canonical)
    return GGUFTensor(name, info.shape, GGML.F32,
                      (lambda: np.ascontiguousarray(bf16_to_f32(reader.read(canonical))[order]),))


@numba.njit(nogil=True, cache=True)
def _repack_rows(blocks: np.ndarray, scales: np.ndarray, first: int, step: int, out: np.ndarray) -> None:
    """out[r] = block_mxfp4 bytes of checkpoint row first + r*step: the bit shuffle of `edgeoss.mxfp4.to_ggml`
    (tested equal to it) as one pass without temporaries, so that the export keeps up with the disk.

    Checkpoint byte m of a block holds elements 2m (low nibble) and 2m+1 (high); ggml byte j holds elements j
    and j+16. So ggml byte 2m = low(b[m]) | low(b[m+8]) << 4 and byte 2m+1 = high(b[m]) | high(b[m+8]) << 4,
    each block led by its unchanged scale byte.
    """
    for r in range(out.shape[0]):
        src = first + r * step
        for g in range(scales.shape[1]):
            o = g * 17
            out[r, o] = scales[src, g]
            for m in range(8):
                lo, hi = blocks[src, g, m], blocks[src, g, m + 8]
                out[r, o + 1 + 2 * m] = (lo & 0x0F) | ((hi & 0x0F) << 4)
                out[r, o + 2 + 2 * m] = (lo >> 4) | (hi & 0xF0)


def repack_rows(blocks: np.ndarray, scales: np.ndarray, first: int = 0, step: int = 1) -> np.ndarray:
    """block_mxfp4 bytes [rows', G*17] of rows first::step of one expert's blocks [rows, G, 16] / scales."""
    rows = len(range(first, blocks.shape[0], step))
    out = np.empty((rows, scales.shape[1] * mxfp4.GGML_BLOCK_BYTES), dtype=np.uint8)
    _repack_rows(blocks, scales, first, step, out)
    return out


def _expert_tensors(reader: _Reader, layer: int, projection: str, order: np.ndarray) -> list[GGUFTensor]:
    """ffn_{gate,up,down}_exps weight [E, rows, in] in MXFP4 and bias [E, rows] in F32, experts in `order`."""
    _, source, first, step = EXPERT_PROJECTIONS[projection]
    p = f"layers.{layer}.{source}"
    bf16 = reader.ckpt.experts == BF16_EXPERTS
    if bf16:  # [E, in, out]
        experts, inputs, rows = reader.ckpt.info(f"{p}.weight").shape
        groups = inputs // mxfp4.BLOCK
    else:
        experts, rows, groups, _ = reader.ckpt.info(f"{p}.blocks").shape

    def weight(old: int) -> np.ndarray:
        if bf16:  # quantized on the way: this expert's rows first::step as [out, in]
            blocks, scales = mxfp4.quantize_bf16_expert(reader.read(f"{p}.weight", expert=old), reader.mxfp4_rule)
            return mxfp4.to_ggml(blocks[first::step], scales[first::step])
        scales = reader.read(f"{p}.scales", expert=old)
        if mxfp4.has_nan_scale(scales):
            raise CheckpointError(str(reader.ckpt.stored_file(f"{p}.scales")),
                                  f"MXFP4 scale byte 0xFF (NaN) in expert {old}", f"{p}.scales")
        return repack_rows(reader.read(f"{p}.blocks", expert=old), scales, first, step)

    def bias() -> np.ndarray:
        return np.ascontiguousarray(bf16_to_f32(reader.read(f"{p}.bias"))[order][:, first::step])

    out_rows = len(range(first, rows, step))
    return [
        GGUFTensor(expert_name(layer, projection, "weight"), (experts, out_rows, groups * mxfp4.BLOCK), GGML.MXFP4,
                   tuple((lambda old=int(old): weight(old)) for old in order)),
        GGUFTensor(expert_name(layer, projection, "bias"), (experts, out_rows), GGML.F32, (bias,)),
    ]


def plan_tensors(reader: _Reader, dense_type: GGML, expert_order: ExpertOrder) -> list[GGUFTensor]:
    """Every output tensor in file order: embedding, each layer (attention, router, experts), norm, output."""
    spec = reader.ckpt.spec
    out: list[GGUFTensor] = []
    for info in tensor_table(spec):
        part = info.name.split(".", 2)[-1] if info.layer is not None else info.name
        if info.kind == "experts":
            if part == "gate_up.blocks":
                order = _order_array(spec, info.layer, expert_order)
                for projection in EXPERT_PROJECTIONS:
                    out += _expert_tensors(reader, info.layer, projection, order)
            continue
        name, storage = tensor_name(info.name)
        if info.kind == "router":
            out.append(_router_tensor(reader, info.name, name, _order_array(spec, info.layer, expert_order)))
        else:
            out.append(_dense_tensor(reader, info.name, name, dense_type if storage == DENSE else GGML.F32))
    return out


# ---- expert order (hot-expert reordering) -----------------------------------------------------------------
def _order_array(spec: ModelSpec, layer: int, expert_order: ExpertOrder) -> np.ndarray:
    order = expert_order.get(layer)
    return np.arange(spec.num_local_experts) if order is None else np.asarray(order, dtype=np.int64)


def check_expert_order(spec: ModelSpec, expert_order: ExpertOrder, where: str = "expert order") -> dict[int, list[int]]:
    """Validated {layer: permutation of range(num_experts)}; raises UsageError naming the problem."""
    checked: dict[int, list[int]] = {}
    for key, order in expert_order.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: layer {key!r} is not an integer") from None
        if not 0 <= layer < spec.num_hidden_layers:
            raise UsageError(f"{where}: layer {layer} is outside 0..{spec.num_hidden_layers - 1}")
        if not isinstance(order, (list, tuple)) or sorted(order) != list(range(spec.num_local_experts)):
            raise UsageError(f"{where}: layer {layer} is not a permutation of the experts "
                             f"0..{spec.num_local_experts - 1}")
        checked[layer] = [int(e) for e in order]
    return checked


def read_plan_expert_order(plan_path: str | Path, spec: ModelSpec) -> dict[int, list[int]]:
    """The per-layer expert permutation of a plan file: {"experts": {"order": {"<layer>": [ids...]}}}."""
    from edgeoss.planner.plan import read_plan

    path = Path(plan_path)
    plan = read_plan(path)  # format, version and keys
    model = plan["model"] if isinstance(plan["model"], dict) else {}
    made_for = (model.get("layers"), model.get("experts_per_layer"), model.get("experts_per_token"))
    if made_for != (spec.num_hidden_layers, spec.num_local_experts, spec.num_experts_per_tok):
        raise UsageError(f"{path}: made for {model.get('name', 'another model')} ({made_for[0]} layers x "
                         f"{made_for[1]} experts, top-{made_for[2]}); this checkpoint is {spec.name or 'a model'} "
                         f"({spec.num_hidden_layers} x {spec.num_local_experts}, top-{spec.num_experts_per_tok})")
    if plan.get("fits") is False and plan.get("experts") is None:
        raise UsageError(f"{path}: this plan does not fit its device, so it places no experts "
                         "(see its advice; make a plan that fits first)")
    order = (plan.get("experts") or {}).get("order", {}) if isinstance(plan, dict) else None
    if not isinstance(order, dict):
        raise UsageError(f"{path}: experts.order must be an object {{layer: [expert ids]}}")
    return check_expert_order(spec, order, str(path))


# ---- metadata -------------------------------------------------------------------------------------------------
def check_exportable(spec: ModelSpec) -> None:
    """What llama.cpp's gpt-oss cannot express is refused rather than exported wrong."""
    if spec.swiglu_limit != LLAMA_CPP_SWIGLU_LIMIT:
        raise SpecError(f"swiglu_limit {spec.swiglu_limit:g}: llama.cpp hard-codes {LLAMA_CPP_SWIGLU_LIMIT:g} "
                        "for gpt-oss, so this model cannot run there")


def add_metadata(writer: gguf.GGUFWriter, spec: ModelSpec, name: str, chat_template: str | None = None) -> None:
    """Every key llama.cpp reads for gpt-oss, written explicitly, plus general.* and the tokenizer.

    Not written, on purpose: rope.scaling.attn_factor / finetuned (llama.cpp derives the YaRN attention
    factor itself), swiglu limit and gating function (hard-coded for gpt-oss). llama.cpp always rounds the
    YaRN correction range (the HF config's `truncate: false` cannot be expressed).
    """

    w = writer
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(spec.max_position_embeddings)
    w.add_embedding_length(spec.hidden_size)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_expert_feed_forward_length(spec.intermediate_size)
    w.add_block_count(spec.num_hidden_layers)
    w.add_expert_count(spec.num_local_experts)
    w.add_expert_used_count(spec.num_experts_per_tok)
    w.add_vocab_size(spec.vocab_size)
    w.add_head_count(spec.num_attention_heads)
    w.add_head_count_kv(spec.num_key_value_heads)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_layer_norm_rms_eps(spec.rms_norm_eps)
    w.add_sliding_window(spec.sliding_window)
    w.add_sliding_window_pattern([spec.is_sliding(i) for i in range(spec.num_hidden_layers)])
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_rope_freq_base_swa(spec.rope_theta)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(spec.rope_factor)
    w.add_rope_scaling_orig_ctx_len(spec.rope_original_context)
    w.add_rope_scaling_yarn_beta_fast(spec.rope_beta_fast)
    w.add_rope_scaling_yarn_beta_slow(spec.rope_beta_slow)

    vocab = tokenizer.gguf_vocab(spec.vocab_size)
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(spec.bos_token_id)
    w.add_eos_token_id(spec.eos_token_id)
    w.add_pad_token_id(spec.pad_token_id)
    w.add_add_bos_token(False)  # harmony prompts start with <|start|>, never <|startoftext|>
    w.add_add_eos_token(False)
    w.add_chat_template(tokenizer.chat_template() if chat_template is None else chat_template)


# ---- writing ------------------------------------------------------------------------------------------------
class _Writer(gguf.GGUFWriter):
    """GGUFWriter whose file(s) go to given temporary paths, so each appears only when complete."""

    temp_paths: list[Path] | None = None

    def format_shard_names(self, path: Path) -> list[Path]:
        return super().format_shard_names(path) if self.temp_paths is None else self.temp_paths


class _Streamed:
    """What GGUFWriter.write_tensor_data needs of a tensor (nbytes, tofile), produced chunk by chunk on a thread
    pool (a few chunks ahead) instead of held whole in memory."""

    def __init__(self, tensor: GGUFTensor, pool: ThreadPoolExecutor, ahead: int, advance: Callable[[int], None]):
        self.tensor, self.pool, self.ahead, self.advance = tensor, pool, ahead, advance
        self.nbytes = tensor.nbytes

    def _chunks(self) -> Iterator[np.ndarray]:
        pending: deque = deque()
        for task in self.tensor.tasks:
            pending.append(self.pool.submit(task))
            if len(pending) > self.ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def tofile(self, fout) -> None:
        written = 0
        for chunk in self._chunks():
            chunk = np.ascontiguousarray(chunk, dtype=self.tensor.numpy_dtype)
            fout.write(memoryview(chunk).cast("B"))
            written += chunk.nbytes
            self.advance(chunk.nbytes)
        if written != self.nbytes:
            raise AssertionError(f"{self.tensor.name}: wrote {written} bytes, declared {self.nbytes}")


def export_gguf(checkpoint: str | Path | Checkpoint, out: str | Path, *, dense_type: str = "bf16",
                expert_order: ExpertOrder | None = None, split_max_size: int | None = None,
                name: str | None = None, workers: int | None = None, progress: bool | None = None,
                mxfp4_rule: str = "ocp", chat_template: str = "checkpoint") -> list[Path]:
    """Write `checkpoint` as GGUF at `out` (or as shards of at most `split_max_size` tensor bytes each).

    expert_order: {layer: permutation}; slot j of that layer's experts holds checkpoint expert order[j], and
    the router's rows and bias follow, so the model computes the same function. mxfp4_rule: how BF16 experts are
    quantized ("ocp", llama.cpp's, or "triton"; MXFP4 experts are carried as stored). chat_template: "checkpoint"
    (its own when it has one, else edgeoss's harmony template), "harmony" or a Jinja file's path. Returns the
    files written.
    """
    if dense_type not in DENSE_TYPES:
        raise UsageError(f"dense type {dense_type!r}: choose from {', '.join(DENSE_TYPES)}")
    if mxfp4_rule not in mxfp4.RULES:
        raise UsageError(f"MXFP4 rule {mxfp4_rule!r}: choose from {', '.join(mxfp4.RULES)}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint, bf16_experts=True)
    check_exportable(ckpt.spec)
    order = check_expert_order(ckpt.spec, expert_order or {})
    template, _ = tokenizer.resolve_chat_template(chat_template, ckpt.folder)
    reader = _Reader(ckpt, mxfp4_rule)
    try:
        tensors = plan_tensors(reader, DENSE_TYPES[dense_type], order)
        return write_gguf(out, ckpt.spec, tensors, name=name, split_max_size=split_max_size, workers=workers,
                          progress=progress, expert_order=order, chat_template=template)
    finally:
        reader.close()


def write_gguf(out: str | Path, spec: ModelSpec, tensors: Sequence[GGUFTensor], *, name: str | None = None,
               split_max_size: int | None = None, workers: int | None = None,
               progress: bool | None = None, expert_order: ExpertOrder | None = None,
               chat_template: str | None = None) -> list[Path]:
    """Write metadata for `spec` and `tensors` (in order, each streamed from its tasks) as one GGUF file or
    llama.cpp split shards; each file appears only when complete. Returns the paths written. A layer whose
    experts were reordered records its permutation (`edgeoss.expert_order.<layer>`), so that a plan's expert
    ids can be found in the file."""
    out = Path(out)
    workers = workers or min(4, os.cpu_count() or 1)
    writer = _Writer(None, ARCH, split_max_size=split_max_size or 0)
    add_metadata(writer, spec, name or spec.name, chat_template)
    for layer, order in sorted((expert_order or {}).items()):
        if list(order) != list(range(spec.num_local_experts)):
            writer.add_array(EXPERT_ORDER_KEY.format(layer=layer), np.asarray(order, dtype=np.int32).tolist())
    missing = missing_keys(writer.kv_data[0])
    if missing:  # never hand llama.cpp a file it would default silently or abort on
        raise AssertionError(f"GGUF metadata lacks {', '.join(missing)}")
    for t in tensors:
        writer.add_tensor_info(t.name, t.stored_shape, np.dtype(t.numpy_dtype), t.nbytes, raw_dtype=t.ggml_type)
    writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))  # e.g. "32x2.4B" (converter's)
    finals = writer.format_shard_names(out)  # llama.cpp's split names: NAME-00001-of-00003.gguf
    total = sum(t.nbytes for t in tensors)
    with contextlib.ExitStack() as stack:
        writer.temp_paths = [stack.enter_context(atomic_file(p)) for p in finals]
        advance = stack.enter_context(byte_progress(total, f"export {out.name}", progress))
        pool = stack.enter_context(ThreadPoolExecutor(workers))
        try:
            writer.write_header_to_file(out)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in tensors:
                writer.write_tensor_data(_Streamed(t, pool, 2 * workers, advance),
                                         tensor_endianess=gguf.GGUFEndian.LITTLE)
        finally:
            writer.close()
    return finals


__all__ = ["export_gguf", "write_gguf", "plan_tensors", "add_metadata", "check_expert_order", "read_plan_expert_order",
           "GGUFTensor", "ExportError"]
