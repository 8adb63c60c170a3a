"""Parity past 8k positions (issue 20): every engine runs the sequence as a chunked prefill with decode steps past
the sliding window and across initial_context_length (4,096, where YaRN's scaling matters), in lockstep with
transformers fp32, holding one segment of logits at a time."""

from __future__ import annotations

import numpy as np
import pytest

from edgeoss.exporters.gguf import export_gguf
from edgeoss.exporters.onnx import export_onnx
from edgeoss.formats.spec import preset
from edgeoss.validate import parity
from edgeoss.validate.parity import gguf_artifact, onnx_artifact, segments

POSITIONS = 8192
GREEDY = 4


def test_segments_cover_the_sequence_with_steps_past_the_window_and_across_the_original_context():
    spec = preset("tiny").replace(sliding_window=128)
    parts = segments(POSITIONS, spec)
    assert parts[0][0] == 0 and parts[0][1] > 1  # a prefill first
    assert [s for s, _ in parts] == list(np.cumsum([0] + [n for _, n in parts])[:-1])  # contiguous, in order
    assert sum(n for _, n in parts) == POSITIONS and max(n for _, n in parts) <= parity.PREFILL_CHUNK
    steps = {s for s, n in parts if n == 1}
    assert set(range(POSITIONS - 256, POSITIONS)) <= steps  # the last 2 x window positions decode
    assert set(range(4096 - 128, 4096 + 128)) <= steps  # across initial_context_length
    assert len(steps) == 512
    short = segments(100, preset("tiny"))  # shorter than the original context: steps at the end only
    assert {s for s, n in short if n == 1} == set(range(84, 100)) and short[0] == (0, 84)


@pytest.fixture(scope="module")
def long_artifacts(tiny_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    gguf = export_gguf(tiny_hf, root / "tiny.gguf", progress=False)[0]
    onnx_exact = export_onnx(tiny_hf, root / "onnx-exact", dense="exact", max_length=POSITIONS + GREEDY,
                             progress=False).path
    return gguf, onnx_exact


def test_parity_at_8192_positions(tiny_hf, long_artifacts):
    """The reference runtime and ONNX Runtime (exact dense) within 1e-4 of transformers fp32 over 8,192 positions;
    llama.cpp's difference reported with its emulation (the reference runtime with llama.cpp's numerics)."""
    gguf, onnx_exact = long_artifacts
    tokens = np.random.default_rng(11).integers(0, 199998, POSITIONS)
    report = parity.run(tiny_hf, [gguf_artifact(gguf), onnx_artifact(onnx_exact)], tokens, greedy=GREEDY)
    entries = {e["label"]: e for e in report["entries"]}
    assert report["positions"] == POSITIONS and "decode steps" in report["segments"]
    reference, llama, onnx = entries["checkpoint"], entries["tiny.gguf"], entries["onnx-exact (mxfp4, exact dense)"]
    assert reference["vs_original"]["max_abs"] <= 1e-4 and reference["vs_original"]["positions"] == POSITIONS
    assert onnx["vs_original"]["max_abs"] <= 1e-4 and onnx["greedy_match"] == GREEDY
    emulated = llama["vs_emulation"]
    assert emulated is not None and emulated["median_abs"] < llama["vs_original"]["median_abs"] / 3
    assert llama["vs_original"]["top1"] > 0.9
