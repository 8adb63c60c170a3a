"""Re-lay a checkpoint into a published layout (HF <-> original/), streaming: bit-exact from MXFP4, and from BF16
experts (fine-tunes) with the experts quantized to MXFP4 on the way (`edgeoss.formats.mxfp4.quantize`).

Used to give the parity report OpenAI's gpt_oss reference (which reads only original/) as a second witness
when a user has only the HF folder, to turn a BF16 fine-tune into the published MXFP4 layout (transformers then
loads it with its MXFP4 path), and as `edgeoss convert` on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from . import mxfp4, tokenizer
from .checkpoint import Checkpoint
from .spec import BF16, BF16_EXPERTS, TensorInfo
from .synth import CHUNK_BYTES, write_checkpoint


class QuantizedExperts:
    """MXFP4 blocks and scales of a BF16 checkpoint's experts, one (layer, projection) at a time: both tensors
    come from one quantization, kept until the next projection is asked for."""

    def __init__(self, ckpt: Checkpoint, rule: str):
        self.ckpt, self.rule = ckpt, rule
        self._key: str | None = None
        self._value: tuple[np.ndarray, np.ndarray] | None = None

    def get(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """(blocks [E, out, in/32, 16], scales [E, out, in/32]) of `prefix` ("layers.N.gate_up" or ".down")."""
        if self._key != prefix:
            self._key, self._value = None, None  # drop the previous projection before building this one
            weight = f"{prefix}.weight"
            stored = self.ckpt.raw(weight)
            parts = [mxfp4.quantize_bf16_expert(self.ckpt.check_finite(weight, np.ascontiguousarray(stored[e])),
                                                self.rule) for e in range(stored.shape[0])]
            self._value = (np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]))
            self._key = prefix
        return self._value


def convert(src: str | Path, out: str | Path, layout: str, force: bool = False, progress: bool | None = None,
            mxfp4_rule: str = "ocp") -> Path:
    """Write `src` in `layout` at `out`. BF16 experts are quantized with `mxfp4_rule` ("ocp", llama.cpp's, or
    "triton"); a checkpoint's own chat template goes along (HF layout)."""
    with Checkpoint.open(src, bf16_experts=True) as ckpt:
        quantized = QuantizedExperts(ckpt, mxfp4_rule) if ckpt.experts == BF16_EXPERTS else None

        def chunks(info: TensorInfo) -> Iterator[np.ndarray]:
            prefix, _, what = info.name.rpartition(".")
            if quantized is not None and what in ("blocks", "scales"):
                yield quantized.get(prefix)[what == "scales"]
                return
            arr = ckpt.raw(info.name)
            step = max(1, CHUNK_BYTES // max(1, arr[:1].nbytes))
            for start in range(0, arr.shape[0], step):
                chunk = np.ascontiguousarray(arr[start:start + step])
                yield ckpt.check_finite(info.name, chunk) if info.dtype == BF16 else chunk

        template = tokenizer.checkpoint_chat_template(ckpt.folder)
        return write_checkpoint(out, ckpt.spec, layout, chunks, force, progress, chat_template=template)
