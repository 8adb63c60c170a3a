"""Recording routing traces while an engine runs (the file format: edgeoss.formats.routing_trace)."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgeoss.formats.routing_trace import FORMAT, VERSION, Trace
from edgeoss.formats.spec import ModelSpec


class TraceRecorder:
    """Collects routing decisions batch by batch (one `add` per layer per forward call)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._batches: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._layers: list[tuple[np.ndarray, np.ndarray]] = []

    def layer(self, experts: np.ndarray, weights: np.ndarray) -> None:
        """Routing of the current batch in the next layer: experts [T, k], weights [T, k]."""
        self._layers.append((experts.astype(np.int16), weights.astype(np.float32)))

    def end_batch(self, positions: np.ndarray, tokens: np.ndarray) -> None:
        experts = np.stack([e for e, _ in self._layers], axis=1)
        weights = np.stack([w for _, w in self._layers], axis=1)
        self._batches.append((experts, weights, np.asarray(positions, np.int32), np.asarray(tokens, np.int32)))
        self._layers = []

    def trace(self, **meta) -> Trace:
        k, layers = self.spec.num_experts_per_tok, self.spec.num_hidden_layers
        parts = list(zip(*self._batches)) or [[np.zeros((0, layers, k), np.int16)],
                                              [np.zeros((0, layers, k), np.float32)],
                                              [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]]
        experts, weights, positions, tokens = (np.concatenate(p) for p in parts)
        info = {"format": FORMAT, "version": VERSION, "model": self.spec.name,
                "spec": dataclasses.asdict(self.spec), **meta}
        return Trace(experts, weights, positions, tokens, self.spec.num_local_experts, info)
