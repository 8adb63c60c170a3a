"""What `edgeoss inspect` reports about a checkpoint (or a preset): layout, spec, counts, bytes, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .checkpoint import Checkpoint
from .spec import ModelSpec, kv_cache_bytes, sizes


def spec_report(spec: ModelSpec) -> dict:
    s = sizes(spec)
    return {
        "spec": dataclasses.asdict(spec) | {"layer_types": list(spec.layer_types)},
        "params": {"total": s.params_total, "active_per_token": s.params_active, **{
            f"{k}": v for k, v in sorted(s.params_by_kind.items())}},
        "bytes": {"total": s.tensor_bytes, **dict(sorted(s.bytes_by_kind.items()))},
        "expert": {"params": s.params_per_expert, "bytes": s.bytes_per_expert,
                   "experts_total": spec.num_hidden_layers * spec.num_local_experts},
        "kv_cache": {
            "bytes_per_token_per_layer_bf16": s.kv_bytes_per_token_per_layer,
            "bytes_per_token_full_layers_bf16": s.kv_bytes_per_token_per_layer * len(spec.full_layers),
            "sliding_layers_cap_bytes_bf16": kv_cache_bytes(spec, spec.sliding_window)["sliding"],
            "full_layers": len(spec.full_layers), "sliding_layers": len(spec.sliding_layers),
        },
    }


def checkpoint_report(path: str | Path) -> dict:
    """Open, validate every tensor (names, shapes, dtypes, offsets, scale bytes) and describe."""
    with Checkpoint.open(path, bf16_experts=True) as ckpt:
        ckpt.check_values()  # raises a one-line CheckpointError naming file and tensor
        report = {"path": str(ckpt.folder), "layout": ckpt.layout, "experts": ckpt.experts,
                  "files": [{"name": f.path.name, "bytes": f.path.stat().st_size} for f in ckpt.files],
                  **spec_report(ckpt.spec), "validation": "ok"}
        report["bytes"]["stored"] = ckpt.nbytes
        return report
