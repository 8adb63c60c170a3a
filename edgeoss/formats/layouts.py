"""The two published checkpoint layouts, as name tables over edgeoss's canonical tensor names.

- "hf": the Hugging Face repo (`model.layers.N.self_attn.q_proj.weight`, `...mlp.experts.gate_up_proj_blocks`).
- "original": OpenAI's `original/` folder (`block.N.attn.qkv.weight` with q, k, v fused along rows,
  `block.N.mlp.gate.weight` is the router, `block.N.mlp.mlp1_weight.blocks` the gate/up experts).

A canonical tensor maps to a stored tensor, optionally a row range of it (q/k/v inside qkv).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .spec import MXFP4_EXPERTS, ModelSpec, TensorInfo, tensor_table

HF, ORIGINAL = "hf", "original"
LAYOUTS = (HF, ORIGINAL)


@dataclass(frozen=True)
class Stored:
    """Where a canonical tensor is kept: a stored tensor name, and a row range when it is a slice of one."""

    name: str
    rows: tuple[int, int] | None = None


_HF_GLOBAL = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "unembed": "lm_head.weight"}
_HF_LAYER = {
    "attn_norm": "input_layernorm.weight",
    "q.weight": "self_attn.q_proj.weight", "q.bias": "self_attn.q_proj.bias",
    "k.weight": "self_attn.k_proj.weight", "k.bias": "self_attn.k_proj.bias",
    "v.weight": "self_attn.v_proj.weight", "v.bias": "self_attn.v_proj.bias",
    "o.weight": "self_attn.o_proj.weight", "o.bias": "self_attn.o_proj.bias",
    "sinks": "self_attn.sinks",
    "mlp_norm": "post_attention_layernorm.weight",
    "router.weight": "mlp.router.weight", "router.bias": "mlp.router.bias",
    "gate_up.blocks": "mlp.experts.gate_up_proj_blocks", "gate_up.scales": "mlp.experts.gate_up_proj_scales",
    "gate_up.bias": "mlp.experts.gate_up_proj_bias",
    "down.blocks": "mlp.experts.down_proj_blocks", "down.scales": "mlp.experts.down_proj_scales",
    "down.bias": "mlp.experts.down_proj_bias",
    "gate_up.weight": "mlp.experts.gate_up_proj", "down.weight": "mlp.experts.down_proj",  # BF16 experts
}
_ORIG_GLOBAL = {"embed": "embedding.weight", "norm": "norm.scale", "unembed": "unembedding.weight"}
_ORIG_LAYER = {
    "attn_norm": "attn.norm.scale",
    "o.weight": "attn.out.weight", "o.bias": "attn.out.bias",
    "sinks": "attn.sinks",
    "mlp_norm": "mlp.norm.scale",
    "router.weight": "mlp.gate.weight", "router.bias": "mlp.gate.bias",
    "gate_up.blocks": "mlp.mlp1_weight.blocks", "gate_up.scales": "mlp.mlp1_weight.scales",
    "gate_up.bias": "mlp.mlp1_bias",
    "down.blocks": "mlp.mlp2_weight.blocks", "down.scales": "mlp.mlp2_weight.scales", "down.bias": "mlp.mlp2_bias",
}
_QKV = ("q", "k", "v")
_LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)")


def stored_name(spec: ModelSpec, layout: str, canonical: str) -> Stored:
    """The stored tensor (and row slice) that holds a canonical tensor in a layout."""
    m = _LAYER_NAME.fullmatch(canonical)
    if layout == HF:
        if not m:
            return Stored(_HF_GLOBAL[canonical])
        return Stored(f"model.layers.{m[1]}.{_HF_LAYER[m[2]]}")
    if not m:
        return Stored(_ORIG_GLOBAL[canonical])
    layer, rest = m[1], m[2]
    proj, _, kind = rest.partition(".")
    if proj in _QKV:
        q, kv = spec.q_dim, spec.kv_dim
        start = {"q": 0, "k": q, "v": q + kv}[proj]
        width = q if proj == "q" else kv
        return Stored(f"block.{layer}.attn.qkv.{kind}", (start, start + width))
    return Stored(f"block.{layer}.{_ORIG_LAYER[rest]}")


def stored_table(spec: ModelSpec, layout: str, experts: str = MXFP4_EXPERTS) -> list[TensorInfo]:
    """Every stored tensor of a layout, with its full shape (fused qkv counted once). BF16 experts exist in the
    Hugging Face layout only (OpenAI publishes `original/` in MXFP4)."""
    out: dict[str, TensorInfo] = {}
    for info in tensor_table(spec, experts):
        s = stored_name(spec, layout, info.name)
        if s.rows is None:
            out[s.name] = TensorInfo(s.name, info.shape, info.dtype, info.kind, info.layer)
        elif s.name not in out:
            rows = spec.q_dim + 2 * spec.kv_dim
            out[s.name] = TensorInfo(s.name, (rows, *info.shape[1:]), info.dtype, info.kind, info.layer)
    return list(out.values())
