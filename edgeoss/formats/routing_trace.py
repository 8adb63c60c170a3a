"""The routing-trace file: which experts every token chose in every layer, and with what weight.

File format (`.npz`, written by `write_trace`, read by `read_trace`), N tokens, L layers, top-k = k:

| array         | dtype   | shape     | meaning                                                              |
|---------------|---------|-----------|----------------------------------------------------------------------|
| `experts`     | int16   | [N, L, k] | selected expert ids, highest router logit first                      |
| `weights`     | float32 | [N, L, k] | their routing weights (softmax over the k selected logits; sum to 1) |
| `positions`   | int32   | [N]       | position of each token in its sequence (0 starts a new sequence)     |
| `tokens`      | int32   | [N]       | token ids                                                            |
| `num_experts` | int64   | []        | experts per layer (E)                                                |
| `meta`        | str     | []        | JSON: {"format": "edgeoss-routing-trace", "version": 1, "model": name, |
|               |         |           |        "spec": {ModelSpec fields}, ...}                              |

Rows are in the order the engine processed the tokens (prompt prefill, then each decoded token).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeoss.atomic import atomic_file
from edgeoss.errors import UsageError

FORMAT, VERSION = "edgeoss-routing-trace", 1
ARRAYS = ("experts", "weights", "positions", "tokens", "num_experts", "meta")


@dataclass(frozen=True, eq=False)
class Trace:
    experts: np.ndarray  # int16 [N, L, k]
    weights: np.ndarray  # float32 [N, L, k]
    positions: np.ndarray  # int32 [N]
    tokens: np.ndarray  # int32 [N]
    num_experts: int
    meta: dict

    @property
    def num_tokens(self) -> int:
        return self.experts.shape[0]

    @property
    def num_layers(self) -> int:
        return self.experts.shape[1]

    @property
    def top_k(self) -> int:
        return self.experts.shape[2]

    def counts(self) -> np.ndarray:
        """int64 [L, E]: how many tokens selected each expert of each layer."""
        counts = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        layer = np.broadcast_to(np.arange(self.num_layers)[None, :, None], self.experts.shape)
        np.add.at(counts, (layer.ravel(), self.experts.ravel().astype(np.int64)), 1)
        return counts


def write_trace(path: str | Path, trace: Trace) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
            np.savez_compressed(f, experts=trace.experts.astype(np.int16), weights=trace.weights.astype(np.float32),
                                positions=trace.positions.astype(np.int32), tokens=trace.tokens.astype(np.int32),
                                num_experts=np.int64(trace.num_experts), meta=np.array(json.dumps(trace.meta)))
    return path


def read_trace(path: str | Path) -> Trace:
    """Load and check a trace written by `write_trace`; any problem is one UsageError line."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [a for a in ARRAYS if a not in z.files]
            if missing:
                raise UsageError(f"{path}: not an edgeoss routing trace (missing {', '.join(missing)})")
            data = {a: z[a] for a in ARRAYS}
    except FileNotFoundError:
        raise UsageError(f"{path}: no such trace file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path}: not a readable .npz routing trace ({e or 'empty file'})") from None
    try:
        meta = json.loads(str(data["meta"]))
    except json.JSONDecodeError:
        raise UsageError(f"{path}: meta is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UsageError(f"{path}: not a version-{VERSION} {FORMAT} file")
    experts, weights, positions, tokens = data["experts"], data["weights"], data["positions"], data["tokens"]
    n = experts.shape[0] if experts.ndim == 3 else -1
    num_experts = int(data["num_experts"])
    if experts.ndim != 3 or weights.shape != experts.shape or positions.shape != (n,) or tokens.shape != (n,):
        raise UsageError(f"{path}: inconsistent shapes experts {experts.shape}, weights {weights.shape}, "
                         f"positions {positions.shape}, tokens {tokens.shape}")
    if experts.size and not (0 <= experts.min() and experts.max() < num_experts):
        raise UsageError(f"{path}: expert ids outside 0..{num_experts - 1}")
    return Trace(experts.astype(np.int16), weights.astype(np.float32), positions.astype(np.int32),
                 tokens.astype(np.int32), num_experts, meta)
