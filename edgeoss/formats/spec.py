"""The model spec: a gpt-oss config as a frozen dataclass, its presets, its tensors and its sizes.

Both published config files map onto one `ModelSpec`:
- the Hugging Face `config.json` (num_local_experts, num_experts_per_tok, rope_scaling {...}, layer_types, ...);
- OpenAI's `original/config.json` (num_experts, experts_per_token, rope_scaling_factor, rope_ntk_alpha/beta,
  initial_context_length, ...).

`tensor_table(spec)` is the one place where the names, shapes and dtypes of a gpt-oss checkpoint are written
down, in edgeoss's canonical naming; layouts, writers and readers all derive from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..jsonfile import read_json

MXFP4_BLOCK = 32  # elements per MXFP4 block (one E8M0 scale byte each)
MXFP4_BLOCK_BYTES = MXFP4_BLOCK // 2  # packed 4-bit codes per block

SLIDING, FULL = "sliding_attention", "full_attention"

# dtype names as safetensors writes them
BF16, U8, F32 = "BF16", "U8", "F32"
DTYPE_BYTES = {BF16: 2, U8: 1, F32: 4}


@dataclass(frozen=True)
class ModelSpec:
    """Every number that shapes a gpt-oss model (names follow the HF config where it has one)."""

    num_hidden_layers: int
    num_local_experts: int
    num_experts_per_tok: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_theta: float = 150000.0
    rope_factor: float = 32.0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_original_context: int = 4096
    rope_truncate: bool = False
    swiglu_limit: float = 7.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    bos_token_id: int = 199998
    eos_token_id: int = 200002
    pad_token_id: int = 199999
    name: str = "gpt-oss"

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        ints = ("num_hidden_layers", "num_local_experts", "num_experts_per_tok", "hidden_size",
                "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "vocab_size", "sliding_window")
        for key in ints:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SpecError(f"config: {key} must be a positive integer, got {value!r}")
        if self.num_experts_per_tok > self.num_local_experts:
            raise SpecError(f"config: experts_per_token ({self.num_experts_per_tok}) > "
                            f"num_experts ({self.num_local_experts})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise SpecError(f"config: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                            f"of num_key_value_heads ({self.num_key_value_heads})")
        for key in ("hidden_size", "intermediate_size"):
            if getattr(self, key) % MXFP4_BLOCK:
                raise SpecError(f"config: {key} ({getattr(self, key)}) must be a multiple of {MXFP4_BLOCK} "
                                "for MXFP4 experts")
        if self.head_dim % 2:
            raise SpecError(f"config: head_dim ({self.head_dim}) must be even for rotary embeddings")
        if len(self.layer_types) != self.num_hidden_layers:
            raise SpecError(f"config: layer_types has {len(self.layer_types)} entries, "
                            f"expected num_hidden_layers = {self.num_hidden_layers}")
        bad = [t for t in self.layer_types if t not in (SLIDING, FULL)]
        if bad:
            raise SpecError(f"config: unknown layer type {bad[0]!r} (expected {SLIDING!r} or {FULL!r})")
        if not (self.rms_norm_eps > 0 and self.swiglu_limit > 0 and self.rope_theta > 0 and self.rope_factor >= 1):
            raise SpecError("config: rms_norm_eps, swiglu_limit, rope_theta must be > 0 and rope factor >= 1")

    # ---- derived shapes ------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    @property
    def sliding_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == SLIDING)

    @property
    def full_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == FULL)

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)


def default_layer_types(num_layers: int) -> tuple[str, ...]:
    """gpt-oss alternates: even layers slide, odd layers attend to everything."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(num_layers))


# ---- presets ---------------------------------------------------------------------------------------
def _preset(layers: int, experts: int, name: str, **dims: Any) -> ModelSpec:
    base = dict(num_hidden_layers=layers, num_local_experts=experts, num_experts_per_tok=4, hidden_size=2880,
                intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
                vocab_size=201088, sliding_window=128, layer_types=default_layer_types(layers), name=name)
    base.update(dims)
    return ModelSpec(**base)


PRESETS: dict[str, ModelSpec] = {
    "20b": _preset(24, 32, "gpt-oss-20b"),
    "120b": _preset(36, 128, "gpt-oss-120b"),
    # The built-in default: real vocabulary, tokenizer, head_dim and rope (YaRN x32 from 4096), tiny widths;
    # runs everywhere in seconds. A sliding window of 8 puts window behaviour inside a short test.
    "tiny": _preset(4, 8, "gpt-oss-tiny", num_experts_per_tok=2, hidden_size=64, intermediate_size=64,
                    num_attention_heads=4, num_key_value_heads=2, sliding_window=8),
    # Deliberately odd shapes: 3 layers, 6 experts top-3, feed-forward width != hidden, 6 query / 2 KV heads
    # whose head_dim (gpt-oss's 64) is not hidden / heads (16), so q width (384) != hidden (96), window 5.
    # The rope geometry is gpt-oss's own (head_dim 64, YaRN x32 from 4096): llama.cpp rounds the YaRN range
    # to whole dimensions, which costs ~0.1 % top-1 at this geometry and ~3 % at head_dim 16 with an original
    # context of 256 (benchmarks/README.md, "GGUF top-1"), a geometry no gpt-oss has.
    "odd": _preset(3, 6, "gpt-oss-odd", num_experts_per_tok=3, hidden_size=96, intermediate_size=64,
                   num_attention_heads=6, num_key_value_heads=2, sliding_window=5),
}
PRESET_ALIASES = {"gpt-oss-20b": "20b", "gpt-oss-120b": "120b"}


def preset(name: str) -> ModelSpec:
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise SpecError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[key]


# ---- config files ----------------------------------------------------------------------------------
ORIGINAL_KEYS = ("num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
                 "intermediate_size", "swiglu_limit", "head_dim", "num_attention_heads", "num_key_value_heads",
                 "sliding_window", "initial_context_length", "rope_theta", "rope_scaling_factor",
                 "rope_ntk_alpha", "rope_ntk_beta")


def _need(cfg: dict, key: str, where: str) -> Any:
    if key not in cfg:
        raise SpecError(f"{where}: missing key {key!r}")
    return cfg[key]


def from_hf_config(cfg: dict, where: str = "config.json") -> ModelSpec:
    """A spec from the Hugging Face config.json (transformers' GptOssConfig keys)."""
    model_type = cfg.get("model_type", "gpt_oss")
    if model_type != "gpt_oss":
        raise SpecError(f"{where}: model_type {model_type!r}: edgeoss reads gpt-oss checkpoints (model_type "
                        "'gpt_oss')")
    quant = cfg.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        if method != "mxfp4":
            raise SpecError(f"{where}: quantization_config.quant_method {method!r}: gpt-oss stores its experts "
                            "in MXFP4 (quant_method 'mxfp4')")
    layers = _need(cfg, "num_hidden_layers", where)
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if rope and rope.get("rope_type", rope.get("type")) not in ("yarn", None):
        raise SpecError(f"{where}: rope_scaling.rope_type {rope.get('rope_type')!r} is not 'yarn'")
    # transformers reads only num_experts_per_tok; experts_per_token is a leftover of the original config
    k = cfg.get("num_experts_per_tok", cfg.get("experts_per_token", 4))
    eos = cfg.get("eos_token_id", 200002)
    try:
        return ModelSpec(
            num_hidden_layers=layers,
            num_local_experts=_need(cfg, "num_local_experts", where),
            num_experts_per_tok=k,
            hidden_size=_need(cfg, "hidden_size", where),
            intermediate_size=_need(cfg, "intermediate_size", where),
            num_attention_heads=_need(cfg, "num_attention_heads", where),
            num_key_value_heads=_need(cfg, "num_key_value_heads", where),
            head_dim=cfg.get("head_dim", 64),
            vocab_size=_need(cfg, "vocab_size", where),
            sliding_window=cfg.get("sliding_window", 128),
            layer_types=tuple(cfg.get("layer_types") or default_layer_types(layers)),
            rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 150000.0))),
            rope_factor=float(rope.get("factor", 1.0)) if rope else 1.0,
            rope_beta_fast=float(rope.get("beta_fast", 32.0)),
            rope_beta_slow=float(rope.get("beta_slow", 1.0)),
            rope_original_context=int(rope.get("original_max_position_embeddings",
                                               cfg.get("initial_context_length", 4096))),
            rope_truncate=bool(rope.get("truncate", True)),
            swiglu_limit=float(cfg.get("swiglu_limit", 7.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 131072)),
            bos_token_id=int(cfg.get("bos_token_id", 199998) or 199998),
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
            pad_token_id=int(cfg.get("pad_token_id", 199999)),
        )
    except TypeError as e:  # e.g. a string where a number belongs
        raise SpecError(f"{where}: {e}") from None


def from_original_config(cfg: dict, where: str = "original/config.json") -> ModelSpec:
    """A spec from OpenAI's original/config.json (the fields of gpt_oss.torch.model.ModelConfig)."""
    layers = _need(cfg, "num_hidden_layers", where)
    try:
        return ModelSpec(
            num_hidden_layers=layers,
            num_local_experts=_need(cfg, "num_experts", where),
            num_experts_per_tok=_need(cfg, "experts_per_token", where),
            hidden_size=_need(cfg, "hidden_size", where),
            intermediate_size=_need(cfg, "intermediate_size", where),
            num_attention_heads=_need(cfg, "num_attention_heads", where),
            num_key_value_heads=_need(cfg, "num_key_value_heads", where),
            head_dim=cfg.get("head_dim", 64),
            vocab_size=_need(cfg, "vocab_size", where),
            sliding_window=cfg.get("sliding_window", 128),
            layer_types=default_layer_types(layers),  # gpt_oss: layer i slides iff i is even
            rope_theta=float(cfg.get("rope_theta", 150000.0)),
            rope_factor=float(cfg.get("rope_scaling_factor", 32.0)),
            rope_beta_fast=float(cfg.get("rope_ntk_beta", 32.0)),
            rope_beta_slow=float(cfg.get("rope_ntk_alpha", 1.0)),
            rope_original_context=int(cfg.get("initial_context_length", 4096)),
            rope_truncate=False,  # the gpt_oss reference never rounds the YaRN correction range
            swiglu_limit=float(cfg.get("swiglu_limit", 7.0)),
        )
    except TypeError as e:
        raise SpecError(f"{where}: {e}") from None


def is_original_config(cfg: dict) -> bool:
    return "num_experts" in cfg and "num_local_experts" not in cfg


def from_config(cfg: dict, where: str = "config.json") -> ModelSpec:
    spec = from_original_config(cfg, where) if is_original_config(cfg) else from_hf_config(cfg, where)
    return named_like_preset(spec)


def named_like_preset(spec: ModelSpec) -> ModelSpec:
    """A spec that equals a preset's shapes takes its name (gpt-oss-20b, ...); token ids and limits aside."""
    ignore = dict(name="", bos_token_id=0, eos_token_id=0, pad_token_id=0, max_position_embeddings=1)
    for p in PRESETS.values():
        if p.replace(**ignore) == spec.replace(**ignore):
            return spec.replace(name=p.name)
    return spec


def load_config(path: Path) -> dict:
    """Read a config.json, turning every way it can be broken into one SpecError line."""
    cfg = read_json(path, "file", SpecError)
    if not isinstance(cfg, dict):
        raise SpecError(f"{path}: expected a JSON object")
    return cfg


def to_hf_config(spec: ModelSpec) -> dict:
    """config.json as the published HF repos write it (same keys, same order)."""
    return {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": spec.eos_token_id,
        "experts_per_token": spec.num_experts_per_tok,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initial_context_length": spec.rope_original_context,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "layer_types": list(spec.layer_types),
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": "gpt_oss",
        "num_attention_heads": spec.num_attention_heads,
        "num_experts_per_tok": spec.num_experts_per_tok,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "num_local_experts": spec.num_local_experts,
        "output_router_logits": False,
        "pad_token_id": spec.pad_token_id,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": {
            "beta_fast": spec.rope_beta_fast,
            "beta_slow": spec.rope_beta_slow,
            "factor": spec.rope_factor,
            "original_max_position_embeddings": spec.rope_original_context,
            "rope_type": "yarn",
            "truncate": spec.rope_truncate,
        },
        "rope_theta": spec.rope_theta,
        "router_aux_loss_coef": 0.9,
        "sliding_window": spec.sliding_window,
        "swiglu_limit": spec.swiglu_limit,
        "tie_word_embeddings": False,
        "transformers_version": "4.55.0.dev0",
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }


def to_original_config(spec: ModelSpec) -> dict:
    """original/config.json: exactly the 16 ModelConfig keys (gpt_oss rejects any other key)."""
    if spec.layer_types != default_layer_types(spec.num_hidden_layers):
        raise SpecError("the original layout cannot express layer_types other than even=sliding, odd=full")
    if spec.rope_truncate:
        raise SpecError("the original layout cannot express a truncated YaRN range")
    values = dict(num_hidden_layers=spec.num_hidden_layers, num_experts=spec.num_local_experts,
                  experts_per_token=spec.num_experts_per_tok, vocab_size=spec.vocab_size,
                  hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                  swiglu_limit=spec.swiglu_limit, head_dim=spec.head_dim,
                  num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
                  sliding_window=spec.sliding_window, initial_context_length=spec.rope_original_context,
                  rope_theta=spec.rope_theta, rope_scaling_factor=spec.rope_factor,
                  rope_ntk_alpha=spec.rope_beta_slow, rope_ntk_beta=spec.rope_beta_fast)
    return {k: values[k] for k in ORIGINAL_KEYS}


def apply_overrides(spec: ModelSpec, settings: list[str]) -> ModelSpec:
    """`--set key=value` on top of a spec (value parsed as JSON, else kept as a string)."""
    changes: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(ModelSpec)}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise SpecError(f"--set {item!r}: expected key=value with key one of {', '.join(fields)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        changes[key] = tuple(value) if isinstance(value, list) else value
    if "num_hidden_layers" in changes and "layer_types" not in changes:
        changes["layer_types"] = default_layer_types(changes["num_hidden_layers"])
    return spec.replace(**changes)


# ---- tensors --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the model in edgeoss's canonical naming."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # embedding | attention | norm | router | experts | unembedding
    layer: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


MXFP4_EXPERTS, BF16_EXPERTS = "mxfp4", "bf16"  # how a checkpoint stores its experts


def expert_tensors(spec: ModelSpec, layer: int, experts: str = MXFP4_EXPERTS) -> list[TensorInfo]:
    """A layer's expert tensors. MXFP4 (as gpt-oss is published): blocks and scales per projection, rows = outputs,
    gate/up rows interleaved (even = gate, odd = up). BF16 (fine-tunes, dequantized copies; transformers'
    unquantized GptOssExperts): gate_up.weight [E, H, 2I] with gate/up interleaved along the last axis, and
    down.weight [E, I, H], inputs first."""
    e, h, i = spec.num_local_experts, spec.hidden_size, spec.intermediate_size
    p = f"layers.{layer}"
    if experts == BF16_EXPERTS:
        return [TensorInfo(f"{p}.gate_up.weight", (e, h, 2 * i), BF16, "experts", layer),
                TensorInfo(f"{p}.gate_up.bias", (e, 2 * i), BF16, "experts", layer),
                TensorInfo(f"{p}.down.weight", (e, i, h), BF16, "experts", layer),
                TensorInfo(f"{p}.down.bias", (e, h), BF16, "experts", layer)]
    return [
        TensorInfo(f"{p}.gate_up.blocks", (e, 2 * i, h // MXFP4_BLOCK, MXFP4_BLOCK_BYTES), U8, "experts", layer),
        TensorInfo(f"{p}.gate_up.scales", (e, 2 * i, h // MXFP4_BLOCK), U8, "experts", layer),
        TensorInfo(f"{p}.gate_up.bias", (e, 2 * i), BF16, "experts", layer),
        TensorInfo(f"{p}.down.blocks", (e, h, i // MXFP4_BLOCK, MXFP4_BLOCK_BYTES), U8, "experts", layer),
        TensorInfo(f"{p}.down.scales", (e, h, i // MXFP4_BLOCK), U8, "experts", layer),
        TensorInfo(f"{p}.down.bias", (e, h), BF16, "experts", layer),
    ]


def layer_tensors(spec: ModelSpec, layer: int, experts: str = MXFP4_EXPERTS) -> list[TensorInfo]:
    h, q, kv, nh, e = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.num_attention_heads, spec.num_local_experts
    p = f"layers.{layer}"
    t = lambda name, shape, kind: TensorInfo(f"{p}.{name}", shape, BF16, kind, layer)  # noqa: E731
    return [
        t("attn_norm", (h,), "norm"),
        t("q.weight", (q, h), "attention"), t("q.bias", (q,), "attention"),
        t("k.weight", (kv, h), "attention"), t("k.bias", (kv,), "attention"),
        t("v.weight", (kv, h), "attention"), t("v.bias", (kv,), "attention"),
        t("o.weight", (h, q), "attention"), t("o.bias", (h,), "attention"),
        t("sinks", (nh,), "attention"),
        t("mlp_norm", (h,), "norm"),
        t("router.weight", (e, h), "router"), t("router.bias", (e,), "router"),
        *expert_tensors(spec, layer, experts),
    ]


def tensor_table(spec: ModelSpec, experts: str = MXFP4_EXPERTS) -> list[TensorInfo]:
    """Every tensor of the model, canonical names, in file order (embedding, layers, norm, unembedding)."""
    table = [TensorInfo("embed", (spec.vocab_size, spec.hidden_size), BF16, "embedding")]
    for layer in range(spec.num_hidden_layers):
        table += layer_tensors(spec, layer, experts)
    table.append(TensorInfo("norm", (spec.hidden_size,), BF16, "norm"))
    table.append(TensorInfo("unembed", (spec.vocab_size, spec.hidden_size), BF16, "unembedding"))
    return table


# ---- sizes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Parameter and byte counts derived from the tensor table."""

    params_total: int
    params_active: int  # per token: all dense (unembedding counted, embedding not) + k experts per layer
    tensor_bytes: int
    bytes_by_kind: dict[str, int] = field(hash=False)
    params_by_kind: dict[str, int] = field(hash=False)
    bytes_per_expert: int  # one expert of one layer: gate_up + down blocks, scales and biases
    params_per_expert: int
    kv_bytes_per_token_per_layer: int  # K and V, bf16

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def weight_params(info: TensorInfo) -> int:
    """Parameters a tensor holds: MXFP4 blocks hold 2 weights per byte, scales hold none of their own."""
    if info.name.endswith(".blocks"):
        return info.numel * 2
    if info.name.endswith(".scales"):
        return 0
    return info.numel


def sizes(spec: ModelSpec, kv_dtype_bytes: int = 2) -> Sizes:
    table = tensor_table(spec)
    by_kind_bytes: dict[str, int] = {}
    by_kind_params: dict[str, int] = {}
    for info in table:
        by_kind_bytes[info.kind] = by_kind_bytes.get(info.kind, 0) + info.nbytes
        by_kind_params[info.kind] = by_kind_params.get(info.kind, 0) + weight_params(info)
    total = sum(by_kind_params.values())
    experts_layer0 = expert_tensors(spec, 0)
    params_per_expert = sum(weight_params(t) for t in experts_layer0) // spec.num_local_experts
    bytes_per_expert = sum(t.nbytes for t in experts_layer0) // spec.num_local_experts
    dense = total - by_kind_params["experts"]
    active = dense - by_kind_params["embedding"] + \
        spec.num_hidden_layers * spec.num_experts_per_tok * params_per_expert
    return Sizes(params_total=total, params_active=active, tensor_bytes=sum(by_kind_bytes.values()),
                 bytes_by_kind=by_kind_bytes, params_by_kind=by_kind_params, bytes_per_expert=bytes_per_expert,
                 params_per_expert=params_per_expert,
                 kv_bytes_per_token_per_layer=2 * spec.kv_dim * kv_dtype_bytes)


def kv_cache_bytes(spec: ModelSpec, context: int, kv_dtype_bytes: int = 2) -> dict[str, int]:
    """KV cache for one sequence of `context` tokens: full layers grow, sliding layers stop at the window."""
    per = 2 * spec.kv_dim * kv_dtype_bytes
    full = len(spec.full_layers) * per * context
    sliding = len(spec.sliding_layers) * per * min(context, spec.sliding_window)
    return {"full": full, "sliding": sliding, "total": full + sliding}


def correction_range(spec: ModelSpec, truncate: bool) -> tuple[float, float]:
    """The YaRN ramp's [low, high] in rotary pair indices (floored / ceiled when truncating)."""
    dim = spec.head_dim

    def correction_dim(rotations: float) -> float:
        return dim * math.log(spec.rope_original_context / (rotations * 2 * math.pi)) / (2 * math.log(spec.rope_theta))

    low, high = correction_dim(spec.rope_beta_fast), correction_dim(spec.rope_beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)
