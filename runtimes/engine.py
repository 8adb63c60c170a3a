"""The one interface every engine speaks: the reference runtime and the adapters over real engines.

An engine holds one sequence. `prefill` feeds a batch of tokens and returns their logits; `step` feeds one
token and returns the logits that follow it; `reset` starts a new sequence. Parity, profiling, `edgeoss logits`
and `edgeoss run` are written against this interface only, so a new engine is one new adapter module
registered in ENGINES.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from edgeoss.errors import UsageError
from edgeoss.formats.spec import ModelSpec


@runtime_checkable
class Engine(Protocol):
    name: str  # "reference", "llamacpp", "onnxruntime", "ortgenai"
    spec: ModelSpec

    def reset(self) -> None:
        """Forget the sequence (KV cache) but keep the weights loaded."""

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Append tokens to the sequence; float32 logits [len(tokens), vocab], one row per position (an engine
        opened for generation only, llamacpp's logits_all=False, returns the last row alone: [1, vocab])."""

    def step(self, token: int) -> np.ndarray:
        """Append one token; float32 logits [vocab] for the next position."""

    def stats(self) -> dict[str, Any]:
        """Engine counters (e.g. expert cache hits/misses, bytes read); {} when it has none."""

    def close(self) -> None:
        """Release weights, files and native resources."""


# name -> "module:Class"; each class takes (artifact_path, **options)
ENGINES = {
    "reference": "edgeoss.runtimes.reference:ReferenceEngine",
    "llamacpp": "edgeoss.runtimes.llamacpp:LlamaCppEngine",
    "onnxruntime": "edgeoss.runtimes.onnxrt:OnnxRuntimeEngine",
    "ortgenai": "edgeoss.runtimes.onnxrt:OrtGenaiEngine",
}


def load_engine(name: str, artifact: str | Path, **options: Any) -> Engine:
    """Load an artifact (checkpoint folder, .gguf, ONNX folder) in a named engine."""
    if name not in ENGINES:
        raise UsageError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(Path(artifact), **options)


def all_logits(engine: Engine, tokens: Sequence[int], chunk: int | None = None) -> np.ndarray:
    """Logits for every position of `tokens` from a fresh sequence, prefilled in chunks (None: one batch)."""
    engine.reset()
    if not chunk:
        return engine.prefill(tokens)
    parts = [engine.prefill(tokens[i:i + chunk]) for i in range(0, len(tokens), chunk)]
    return np.concatenate(parts, axis=0)
