"""The one table between edgeoss's canonical tensor names and llama.cpp's gpt-oss GGUF: names and storage.

Tensor names come from gguf-py's own table (`gguf.TENSOR_NAMES` for `MODEL_ARCH.GPT_OSS`), so they are the
names llama.cpp's loader looks up. Storage follows llama.cpp's converter: norms, sinks, biases and the router
in F32; the other 2-D weights in the chosen dense type; experts as one 3-D MXFP4 tensor per projection and
layer, gate/up split out of the checkpoint's interleaved rows (even rows gate, odd rows up).
"""

from __future__ import annotations

import re

import gguf
from gguf import GGMLQuantizationType as GGML
from gguf import MODEL_TENSOR as T

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT_OSS]  # "gpt-oss"

F32, DENSE = "f32", "dense"  # storage classes of the non-expert tensors

# canonical name (per-layer part after "layers.N.") -> (gguf tensor, suffix, storage)
LAYER_TENSORS: dict[str, tuple[T, str, str]] = {
    "attn_norm": (T.ATTN_NORM, "weight", F32),
    "q.weight": (T.ATTN_Q, "weight", DENSE), "q.bias": (T.ATTN_Q, "bias", F32),
    "k.weight": (T.ATTN_K, "weight", DENSE), "k.bias": (T.ATTN_K, "bias", F32),
    "v.weight": (T.ATTN_V, "weight", DENSE), "v.bias": (T.ATTN_V, "bias", F32),
    "o.weight": (T.ATTN_OUT, "weight", DENSE), "o.bias": (T.ATTN_OUT, "bias", F32),
    "sinks": (T.ATTN_SINKS, "weight", F32),
    "mlp_norm": (T.ATTN_POST_NORM, "weight", F32),
    "router.weight": (T.FFN_GATE_INP, "weight", F32), "router.bias": (T.FFN_GATE_INP, "bias", F32),
}
GLOBAL_TENSORS: dict[str, tuple[T, str, str]] = {
    "embed": (T.TOKEN_EMBD, "weight", DENSE),
    "norm": (T.OUTPUT_NORM, "weight", F32),
    "unembed": (T.OUTPUT, "weight", DENSE),
}
# GGUF expert projection -> (checkpoint projection, first row, row step): gate = gate_up rows 0::2, up = 1::2
EXPERT_PROJECTIONS: dict[str, tuple[T, str, int, int]] = {
    "gate": (T.FFN_GATE_EXP, "gate_up", 0, 2),
    "up": (T.FFN_UP_EXP, "gate_up", 1, 2),
    "down": (T.FFN_DOWN_EXP, "down", 0, 1),
}

# --dense-type -> ggml type of the 2-D dense weights
DENSE_TYPES: dict[str, GGML] = {"f32": GGML.F32, "f16": GGML.F16, "bf16": GGML.BF16, "q8_0": GGML.Q8_0}

_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def _name(tensor: T, suffix: str, layer: int | None = None) -> str:
    base = gguf.TENSOR_NAMES[tensor]
    return f"{base.format(bid=layer) if layer is not None else base}.{suffix}"


def tensor_name(canonical: str) -> tuple[str, str]:
    """(GGUF name, storage class) of a canonical non-expert tensor, e.g. 'layers.3.mlp_norm' ->
    ('blk.3.post_attention_norm.weight', 'f32')."""
    m = _LAYER.fullmatch(canonical)
    if m:
        tensor, suffix, storage = LAYER_TENSORS[m[2]]
        return _name(tensor, suffix, int(m[1])), storage
    tensor, suffix, storage = GLOBAL_TENSORS[canonical]
    return _name(tensor, suffix), storage


def expert_name(layer: int, projection: str, suffix: str) -> str:
    """GGUF name of a layer's expert tensor: projection gate | up | down, suffix weight | bias."""
    return _name(EXPERT_PROJECTIONS[projection][0], suffix, layer)


def expert_pattern(layers: list[int] | None = None) -> str:
    """The regex llama.cpp's --cpu-moe (all layers) / --n-cpu-moe (given layers) use for expert tensors;
    unanchored, so it also matches the expert biases."""
    exps = r"ffn_(up|down|gate|gate_up)_(ch|)exps"
    if layers is None:
        return rf"\.{exps}"
    return rf"blk\.({'|'.join(str(i) for i in sorted(layers))})\.{exps}"


# ---- metadata keys ---------------------------------------------------------------------------------------
K = gguf.Keys


def arch_key(template: str) -> str:
    return template.format(arch=ARCH)


# Every key llama.cpp reads for gpt-oss (llama_model_base::load_hparams + the openai-moe loader), tokenizer keys
# included. The exporter refuses to write a file lacking one: a missing expert_count aborts llama.cpp's whole
# process, and missing rope/key-length/pre-tokenizer keys load silently with wrong numerics.
REQUIRED_KEYS: tuple[str, ...] = (
    K.General.ARCHITECTURE, K.General.NAME, K.General.FILE_TYPE, K.General.QUANTIZATION_VERSION,
    *(arch_key(k) for k in (
        K.LLM.CONTEXT_LENGTH, K.LLM.EMBEDDING_LENGTH, K.LLM.FEED_FORWARD_LENGTH,
        K.LLM.EXPERT_FEED_FORWARD_LENGTH, K.LLM.BLOCK_COUNT, K.LLM.EXPERT_COUNT, K.LLM.EXPERT_USED_COUNT,
        K.LLM.VOCAB_SIZE,
        K.Attention.HEAD_COUNT, K.Attention.HEAD_COUNT_KV, K.Attention.KEY_LENGTH, K.Attention.VALUE_LENGTH,
        K.Attention.LAYERNORM_RMS_EPS, K.Attention.SLIDING_WINDOW, K.Attention.SLIDING_WINDOW_PATTERN,
        K.Rope.DIMENSION_COUNT, K.Rope.FREQ_BASE, K.Rope.FREQ_BASE_SWA, K.Rope.SCALING_TYPE,
        K.Rope.SCALING_FACTOR, K.Rope.SCALING_ORIG_CTX_LEN, K.Rope.SCALING_YARN_BETA_FAST,
        K.Rope.SCALING_YARN_BETA_SLOW)),
    K.Tokenizer.MODEL, K.Tokenizer.PRE, K.Tokenizer.LIST, K.Tokenizer.TOKEN_TYPE, K.Tokenizer.MERGES,
    K.Tokenizer.BOS_ID, K.Tokenizer.EOS_ID, K.Tokenizer.PAD_ID, K.Tokenizer.ADD_BOS, K.Tokenizer.ADD_EOS,
    K.Tokenizer.CHAT_TEMPLATE,
)
