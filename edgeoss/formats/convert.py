"""Re-lay a checkpoint into the other published layout (HF <-> original/), streaming, bit-exact.

Used to give the parity report OpenAI's gpt_oss reference (which reads only original/) as a second witness
when a user has only the HF folder, and as `edgeoss convert` on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .checkpoint import Checkpoint
from .spec import BF16, TensorInfo
from .synth import CHUNK_BYTES, write_checkpoint


def convert(src: str | Path, out: str | Path, layout: str, force: bool = False, progress: bool | None = None) -> Path:
    with Checkpoint.open(src) as ckpt:
        def chunks(info: TensorInfo) -> Iterator[np.ndarray]:
            arr = ckpt.raw(info.name)
            step = max(1, CHUNK_BYTES // max(1, arr[:1].nbytes))
            for start in range(0, arr.shape[0], step):
                chunk = np.ascontiguousarray(arr[start:start + step])
                yield ckpt.check_finite(info.name, chunk) if info.dtype == BF16 else chunk

        return write_checkpoint(out, ckpt.spec, layout, chunks, force, progress)
