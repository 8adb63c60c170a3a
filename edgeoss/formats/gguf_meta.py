"""What a gpt-oss GGUF's metadata says, read back: the model spec, the dense type, the keys it lacks.

The inverse of the exporter's `add_metadata`, as llama.cpp reads the same keys (engines, packaging and parity
read GGUFs through here; `ggml_gguf.read_metadata` parses the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import gguf

from edgeoss.errors import SpecError, UsageError
from edgeoss.formats.ggml_gguf import GGUFFileError, GGUFMetadata, read_metadata
from edgeoss.formats.gguf_names import (ARCH, DENSE, DENSE_TYPES, EXPERT_PROJECTIONS, REQUIRED_KEYS, expert_name,
                                        tensor_name)
from edgeoss.formats.spec import FULL, SLIDING, ModelSpec, default_layer_types, tensor_table


def missing_keys(keys: Iterable[str]) -> list[str]:
    present = set(keys)
    return [k for k in REQUIRED_KEYS if k not in present]


def spec_from_metadata(meta: Mapping[str, object], vocab_size: int | None = None) -> ModelSpec:
    """The ModelSpec a gpt-oss GGUF describes (the inverse of `add_metadata`), as llama.cpp reads it: keys it
    would default take llama.cpp's defaults, and the YaRN range is truncated (llama.cpp always rounds it)."""
    def get(template: str, default: object = None) -> object:
        key = template.format(arch=ARCH)
        if key not in meta and default is None:
            raise SpecError(f"GGUF metadata lacks {key}")
        return meta.get(key, default)

    K = gguf.Keys
    if meta.get(K.General.ARCHITECTURE) != ARCH:
        raise SpecError(f"GGUF architecture is {meta.get(K.General.ARCHITECTURE)!r}, not {ARCH!r}")
    layers = int(get(K.LLM.BLOCK_COUNT))
    heads = int(get(K.Attention.HEAD_COUNT))
    hidden = int(get(K.LLM.EMBEDDING_LENGTH))
    pattern = meta.get(K.Attention.SLIDING_WINDOW_PATTERN.format(arch=ARCH))
    layer_types = (tuple(SLIDING if s else FULL for s in pattern) if isinstance(pattern, list)
                   else default_layer_types(layers))
    return ModelSpec(
        num_hidden_layers=layers,
        num_local_experts=int(get(K.LLM.EXPERT_COUNT)),
        num_experts_per_tok=int(get(K.LLM.EXPERT_USED_COUNT)),
        hidden_size=hidden,
        intermediate_size=int(get(K.LLM.EXPERT_FEED_FORWARD_LENGTH)),
        num_attention_heads=heads,
        num_key_value_heads=int(get(K.Attention.HEAD_COUNT_KV, heads)),
        head_dim=int(get(K.Attention.KEY_LENGTH, hidden // heads)),
        vocab_size=int(vocab_size if vocab_size is not None else get(K.LLM.VOCAB_SIZE)),
        sliding_window=int(get(K.Attention.SLIDING_WINDOW)),
        layer_types=layer_types,
        rope_theta=float(get(K.Rope.FREQ_BASE, 10000.0)),
        rope_factor=float(get(K.Rope.SCALING_FACTOR, 1.0)),
        rope_beta_fast=float(get(K.Rope.SCALING_YARN_BETA_FAST, 32.0)),
        rope_beta_slow=float(get(K.Rope.SCALING_YARN_BETA_SLOW, 1.0)),
        rope_original_context=int(get(K.Rope.SCALING_ORIG_CTX_LEN, get(K.LLM.CONTEXT_LENGTH))),
        rope_truncate=True,
        rms_norm_eps=float(f"{get(K.Attention.LAYERNORM_RMS_EPS):.7g}"),  # stored as float32
        max_position_embeddings=int(get(K.LLM.CONTEXT_LENGTH)),
        bos_token_id=int(meta.get(K.Tokenizer.BOS_ID, 199998)),
        eos_token_id=int(meta.get(K.Tokenizer.EOS_ID, 200002)),
        pad_token_id=int(meta.get(K.Tokenizer.PAD_ID, 199999)),
        name=str(meta.get(K.General.NAME, ARCH)),
    )


def gguf_dense_type(meta: GGUFMetadata, where: Path) -> str:
    """The --dense-type a GGUF was exported with: the storage of its token embedding."""
    names = {int(ggml): name for name, ggml in DENSE_TYPES.items()}
    stored = meta.tensor_types.get("token_embd.weight")
    if stored not in names:
        raise UsageError(f"{where}: token_embd.weight is missing from the first file or of a type edgeoss does "
                         "not plan for")
    return names[stored]


def expected_tensors(spec: ModelSpec) -> Iterator[tuple[str, set[int], int]]:
    """(GGUF name, the ggml types it may have, element count) of every tensor llama.cpp loads for `spec`: the
    dense 2-D weights in any --dense-type, vectors, router and expert biases in F32, experts in MXFP4."""
    dense, f32, mxfp4 = {int(t) for t in DENSE_TYPES.values()}, {int(gguf.GGMLQuantizationType.F32)}, \
        {int(gguf.GGMLQuantizationType.MXFP4)}
    for info in tensor_table(spec):
        if info.kind != "experts":
            name, storage = tensor_name(info.name)
            yield name, dense if storage == DENSE else f32, info.numel
    e, h, i = spec.num_local_experts, spec.hidden_size, spec.intermediate_size
    for layer in range(spec.num_hidden_layers):
        for projection in EXPERT_PROJECTIONS:
            rows, cols = (h, i) if projection == "down" else (i, h)
            yield expert_name(layer, projection, "weight"), mxfp4, e * rows * cols
            yield expert_name(layer, projection, "bias"), f32, e * rows


def check_tensors(files: Sequence[Path], first: GGUFMetadata, spec: ModelSpec) -> None:
    """Every tensor of a GGUF file set (`first`: the first file's metadata) is there, of a type edgeoss and
    llama.cpp use, and of the size the spec gives it; GGUFFileError names the first that is not."""
    types, nbytes = dict(first.tensor_types), {k: n for k, (_, n) in first.tensor_bytes.items()}
    for path in files[1:]:
        meta = read_metadata(path)
        types.update(meta.tensor_types)
        nbytes.update({k: n for k, (_, n) in meta.tensor_bytes.items()})
    where = files[0]
    for name, allowed, numel in expected_tensors(spec):
        if name not in types:
            raise GGUFFileError(f"{where}: tensor {name} is missing")
        if types[name] not in allowed:
            raise GGUFFileError(f"{where}: tensor {name} has ggml type {types[name]}, expected one of "
                                f"{', '.join(gguf.GGMLQuantizationType(t).name for t in sorted(allowed))}")
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(types[name])]
        if numel % block or nbytes[name] != numel // block * size:
            raise GGUFFileError(f"{where}: tensor {name} holds {nbytes[name]:,} bytes; gpt-oss's shape in this "
                                f"type needs {numel // block * size:,}")


EXPERT_ORDER_KEY = "edgeoss.expert_order.{layer}"  # int32 [E]: stored slot j holds checkpoint expert order[j]


def expert_order(meta: Mapping[str, object], spec: ModelSpec) -> dict[int, list[int]]:
    """The per-layer expert permutation a GGUF was exported with (identity where it records none)."""
    order = {}
    for layer in range(spec.num_hidden_layers):
        found = meta.get(EXPERT_ORDER_KEY.format(layer=layer))
        identity = list(range(spec.num_local_experts))
        if found is None:
            order[layer] = identity
        elif not isinstance(found, list) or sorted(found) != identity:
            raise SpecError(f"GGUF metadata {EXPERT_ORDER_KEY.format(layer=layer)} is not a permutation of "
                            f"0..{spec.num_local_experts - 1}")
        else:
            order[layer] = [int(e) for e in found]
    return order


def stored_expert_ids(meta: Mapping[str, object], ids: Mapping[int, Iterable[int]], spec: ModelSpec) \
        -> dict[int, tuple[int, ...]]:
    """Checkpoint expert ids per layer (a plan's) as the GGUF's stored slots."""
    order = expert_order(meta, spec)
    slot = {layer: {old: new for new, old in enumerate(perm)} for layer, perm in order.items()}
    stored = {}
    for layer, experts in ids.items():
        if not 0 <= int(layer) < spec.num_hidden_layers:
            raise UsageError(f"experts of layer {layer}: the model has layers 0..{spec.num_hidden_layers - 1}")
        bad = [e for e in experts if int(e) not in slot[int(layer)]]
        if bad:
            raise UsageError(f"expert {bad[0]} of layer {layer}: layers have experts 0..{spec.num_local_experts - 1}")
        stored[int(layer)] = tuple(sorted(slot[int(layer)][int(e)] for e in experts))
    return stored
