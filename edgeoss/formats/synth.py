"""Synthesize a gpt-oss checkpoint folder exactly in a published layout, streaming, deterministically.

Weights are random but healthy: BF16 dense tensors with small, fan-in-scaled standard deviations; MXFP4
experts with uniformly drawn E2M1 codes and E8M0 scale bytes chosen so each dequantized expert matrix has a
sensible gain. As in trained transformers, each layer adds a small update to the residual stream (attention
output and expert down-projection at gain RESIDUAL_GAIN): fully random unit-gain layers make a chaotic model
that turns a 0.4 % activation rounding (llama.cpp's Q8_0) into a 10 % logit change, which real models do not.
Gate/up biases are wide enough that the SwiGLU clamp is still reached now and then. Every canonical tensor is drawn
from its own generator, seeded by (seed, tensor name, chunk), so both layouts hold identical values and any
chunk can be produced alone: memory stays bounded by one chunk (~32 MB) whatever the model size.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import mxfp4
from ..atomic import atomic_dir
from .layouts import HF, ORIGINAL, stored_name, stored_table
from ..progress import byte_progress
from .safetensors_io import Planned, StreamingWriter, data_order, f32_to_bf16
from .spec import BF16_EXPERTS, MXFP4_EXPERTS, ModelSpec, TensorInfo, tensor_table, to_hf_config, to_original_config

CHUNK_BYTES = 32 << 20
FP4_RMS = float(np.sqrt(np.mean(mxfp4.FP4_VALUES ** 2)))  # rms of a uniformly drawn E2M1 code
SHARD_TARGET = 4.35e9  # the published shards: 20b = 3 files, 120b = 15 files
RESIDUAL_GAIN = 0.1  # gain of what each layer adds to the residual stream


@dataclass(frozen=True)
class Recipe:
    """How one tensor's values are drawn."""

    mean: float = 0.0
    std: float = 0.02
    scale_byte: int = 127  # MXFP4: centre of the E8M0 scale bytes (drawn within +-1)


def recipe(spec: ModelSpec, info: TensorInfo) -> Recipe:
    h, i = spec.hidden_size, spec.intermediate_size
    part = info.name.split(".", 2)[-1] if info.layer is not None else info.name
    fan_in = {"q.weight": h, "k.weight": h, "v.weight": h, "o.weight": spec.q_dim, "router.weight": h}
    if part in ("attn_norm", "mlp_norm", "norm"):
        return Recipe(mean=1.0, std=0.05)
    if part == "o.weight":
        return Recipe(std=RESIDUAL_GAIN / math.sqrt(spec.q_dim))
    if part in fan_in:
        return Recipe(std=1.0 / math.sqrt(fan_in[part]))
    if part == "embed":
        return Recipe(std=1.0)
    if part == "unembed":
        return Recipe(std=2.0 / math.sqrt(h))
    if part == "sinks":
        return Recipe(std=1.0)
    if part == "gate_up.bias":
        return Recipe(std=2.0)
    if part in ("gate_up.weight", "down.weight"):  # BF16 experts (a fine-tune's layout), the MXFP4 experts' gain
        return Recipe(std=(1.0 / math.sqrt(h)) if part == "gate_up.weight" else RESIDUAL_GAIN / math.sqrt(i))
    if part.endswith(".blocks") or part.endswith(".scales"):
        k = h if part.startswith("gate_up") else i
        gain = 1.0 if part.startswith("gate_up") else RESIDUAL_GAIN
        return Recipe(scale_byte=mxfp4.SCALE_BIAS + round(math.log2(gain / (FP4_RMS * math.sqrt(k)))))
    return Recipe(std=0.1 if part in ("q.bias", "k.bias", "v.bias", "router.bias") else 0.02)


def _rows_per_chunk(info: TensorInfo) -> int:
    row_bytes = max(1, info.nbytes // info.shape[0])
    return max(1, CHUNK_BYTES // row_bytes)


def tensor_chunks(spec: ModelSpec, info: TensorInfo, seed: int) -> Iterator[np.ndarray]:
    """The stored bytes of a canonical tensor (BF16 as uint16), in row-major chunks along axis 0."""
    r = recipe(spec, info)
    step = _rows_per_chunk(info)
    name_key = zlib.crc32(info.name.encode())
    for n, start in enumerate(range(0, info.shape[0], step)):
        shape = (min(step, info.shape[0] - start), *info.shape[1:])
        rng = np.random.default_rng([seed, name_key, n])
        count = math.prod(shape)
        if info.name.endswith(".blocks"):
            yield np.frombuffer(rng.bytes(count), dtype=np.uint8).reshape(shape)
        elif info.name.endswith(".scales"):
            yield rng.integers(r.scale_byte - 1, r.scale_byte + 2, size=shape, dtype=np.uint8)
        else:
            values = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(r.std) + np.float32(r.mean)
            yield f32_to_bf16(values)


Source = Callable[[TensorInfo], Iterator[np.ndarray]]  # a canonical tensor's stored bytes, chunk by chunk


def _stored_chunks(spec: ModelSpec, layout: str, stored: str, source: Source, experts: str = MXFP4_EXPERTS) \
        -> Iterator[np.ndarray]:
    """Chunks of a stored tensor: one canonical tensor, or several stacked along rows (fused qkv)."""
    parts = [t for t in tensor_table(spec, experts) if stored_name(spec, layout, t.name).name == stored]
    parts.sort(key=lambda t: stored_name(spec, layout, t.name).rows or (0, 0))
    for part in parts:
        yield from source(part)


def shard_plan(spec: ModelSpec, layout: str, experts: str = MXFP4_EXPERTS) -> dict[str, list[TensorInfo]]:
    """Which stored tensors go in which file, named like the published repos."""
    table = stored_table(spec, layout, experts)
    if layout == ORIGINAL:
        return {"model.safetensors": table}
    total = sum(t.nbytes for t in table)
    count = max(3, round(total / SHARD_TARGET))
    target = total / count
    groups: list[list[TensorInfo]] = [[] for _ in range(count)]
    start = 0
    for t in table:
        groups[min(count - 1, int(start // target))].append(t)
        start += t.nbytes
    groups = [g for g in groups if g]
    last = len(groups) - 1  # "-of-N" is the last index, not the count
    return {f"model-{k:05d}-of-{last:05d}.safetensors": g for k, g in enumerate(groups)}


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _side_files(folder: Path, spec: ModelSpec, layout: str, weight_map: dict[str, str], total: int,
                chat_template: str | None = None, experts: str = MXFP4_EXPERTS) -> None:
    if layout == ORIGINAL:
        _write_json(folder / "config.json", to_original_config(spec))
        dtypes = {t.name: ("FP4" if t.name.endswith(".blocks") else "UE8" if t.name.endswith(".scales") else "BF16")
                  for t in stored_table(spec, layout)}
        _write_json(folder / "dtypes.json", dtypes)
        return
    config = to_hf_config(spec)
    if experts == BF16_EXPERTS:  # transformers' unquantized GptOssForCausalLM: no quantization_config
        del config["quantization_config"]
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", {
        "bos_token_id": spec.bos_token_id, "do_sample": True,
        "eos_token_id": [spec.eos_token_id, spec.pad_token_id, 200012], "pad_token_id": spec.pad_token_id,
        "transformers_version": "4.55.0.dev0"})
    _write_json(folder / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    from . import tokenizer  # the tokenizer files are what transformers' loaders read
    tokenizer.write_hf_tokenizer_files(folder, template=chat_template)


def synthesize(out: str | Path, spec: ModelSpec, layout: str = HF, seed: int = 0, force: bool = False,
               progress: bool | None = None, experts: str = MXFP4_EXPERTS) -> Path:
    """Write a complete checkpoint folder of random weights; it appears at `out` only once complete. experts="bf16":
    the experts in BF16, as a fine-tune publishes them (Hugging Face layout only)."""
    return write_checkpoint(out, spec, layout, lambda info: tensor_chunks(spec, info, seed), force, progress,
                            experts=experts)


def write_checkpoint(out: str | Path, spec: ModelSpec, layout: str, source: Source, force: bool = False,
                     progress: bool | None = None, chat_template: str | None = None,
                     experts: str = MXFP4_EXPERTS) -> Path:
    """Write a checkpoint folder in a layout from any source of canonical tensors (synthesis, conversion);
    `chat_template`: the one its tokenizer files carry (default: edgeoss's harmony template)."""
    if layout not in (HF, ORIGINAL) or (experts == BF16_EXPERTS and layout != HF):
        raise ValueError(f"{layout} layout with {experts} experts")
    plan = shard_plan(spec, layout, experts)
    total = sum(t.nbytes for group in plan.values() for t in group)
    with atomic_dir(out, overwrite=force) as tmp, byte_progress(total, f"synth {spec.name}", progress) as advance:
        weight_map: dict[str, str] = {}
        for filename, group in plan.items():
            planned = data_order(Planned(t.name, t.dtype, t.shape) for t in group)
            with open(tmp / filename, "wb") as f:
                writer = StreamingWriter(f, planned, {"format": "pt"})
                for t in planned:
                    writer.begin(t.name)
                    for chunk in _stored_chunks(spec, layout, t.name, source, experts):
                        writer.write(chunk)
                        advance(chunk.nbytes)
                    weight_map[t.name] = filename
                writer.finish()
        _side_files(tmp, spec, layout, weight_map, total, chat_template, experts)
    return Path(out)


__all__ = ["synthesize", "write_checkpoint", "tensor_chunks", "shard_plan", "recipe"]
