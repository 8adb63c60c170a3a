"""Compact dense matrices for ONNX Runtime: bf16 weights as four 4-bit digits in one MatMulNBits node. The bound,
the exact share, ONNX Runtime computing exactly the digits' weights, and the whole model against the original
with the exact variant kept."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeoss.formats import dense_digits
from edgeoss.exporters.onnx import export_onnx
from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.formats.safetensors_io import bf16_to_f32, f32_to_bf16
from edgeoss.runtimes.engine import all_logits, load_engine
from edgeoss.runtimes.reference import Emulation, ReferenceEngine
from edgeoss.validate.oracles import transformers_logits


def _bf16(rng, shape, scale=0.02) -> np.ndarray:
    w = (rng.standard_normal(shape) * scale).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block
    w[1, :8] = [1e-30, -1e-30, 3e38, -3e38, 2.0 ** -126, 1.0, -1.0, 0.5]  # extremes in one block
    w[2, 32:64] = -0.0
    return f32_to_bf16(w)


def test_digits_are_within_their_bound_and_exact_near_the_blocks_largest():
    rng = np.random.default_rng(0)
    bits = _bf16(rng, (64, 2880))
    w = bf16_to_f32(bits).astype(np.float64).reshape(64, -1, 32)
    got = dense_digits.digit_values(bits).astype(np.float64).reshape(w.shape)
    largest = np.abs(w).max(axis=-1, keepdims=True)
    power = np.exp2(np.floor(np.log2(np.where(largest > 0, largest, 1.0))))
    err = np.abs(got - w)
    assert (err <= power * 2.0 ** -15).all()  # |error| <= 2^(E-15)
    near = np.abs(w) >= power * 2.0 ** -7  # within 128x of the block's largest: exact
    assert (err[near] == 0).all() and near.mean() > 0.98
    assert (got[0, 0] == 0).all() and (got[2, 1] == 0).all()
    assert dense_digits.fits(2880) and not dense_digits.fits(2880 + 16)


def _nbits_session(bits: np.ndarray, bias: np.ndarray) -> ort.InferenceSession:
    n, k = bits.shape
    digits, scales, zero_points = dense_digits.split(bits)
    assert digits.shape == (n, dense_digits.DIGITS * k // 32, 16) and scales.dtype == np.float32
    nodes = [helper.make_node("Concat", ["x"] * dense_digits.DIGITS, ["xs"], axis=1),
             helper.make_node("MatMulNBits", ["xs", "B", "S", "Z", "", "b"], ["y"], domain="com.microsoft",
                              K=dense_digits.DIGITS * k, N=n, bits=4, block_size=32, accuracy_level=1)]
    inits = [numpy_helper.from_array(a, name) for a, name in ((digits, "B"), (scales, "S"), (zero_points, "Z"),
                                                               (bias, "b"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("n,k", [(96, 64), (130, 2880), (33, 96)])  # tiny, 20b-wide, odd block count (padding)
def test_onnxruntime_multiplies_exactly_the_digits_weights(n, k):
    """What MatMulNBits computes is x @ digit_values^T + b to float32 rounding: the emulation is the engine."""
    rng = np.random.default_rng(n)
    bits = _bf16(rng, (n, k))
    bits[1] = f32_to_bf16((rng.standard_normal(k) * 0.02).astype(np.float32))  # no inf-sized products
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((5, k)).astype(np.float32)
    got = _nbits_session(bits, bias).run(None, {"x": x})[0].astype(np.float64)
    carried = x.astype(np.float64) @ dense_digits.digit_values(bits).astype(np.float64).T + bias
    original = x.astype(np.float64) @ bf16_to_f32(bits).astype(np.float64).T + bias
    scale = np.abs(original).max()
    assert np.abs(got - carried).max() <= 1e-5 * scale
    assert 0 < np.abs(carried - original).max() <= 1e-3 * scale


def test_compact_and_exact_exports_against_the_original_and_the_emulation(tiny_hf, tmp_path):
    """The default (compact) export is within 1e-4 of transformers fp32 and its deviation is the digits' (the
    reference runtime on the digits' weights), the exact one is the original's up to float32 rounding; the exact
    folder takes the attention's float32 widening in RAM that the compact one saves."""
    ids = np.random.default_rng(5).integers(0, 199998, 96).tolist()
    original = transformers_logits(tiny_hf, np.array(ids))
    logits = {}
    for dense in ("compact", "exact"):
        folder = export_onnx(tiny_hf, tmp_path / dense, progress=False, dense=dense).path
        engine = load_engine("onnxruntime", folder)
        logits[dense] = all_logits(engine, ids)
        engine.close()
    emulated = ReferenceEngine(tiny_hf, emulation=Emulation(attention_transform=dense_digits.attention_values))
    emulated_logits = all_logits(emulated, ids)
    digits_error = np.abs(emulated_logits - original).max()
    assert np.abs(logits["exact"] - original).max() <= 1e-5
    assert np.abs(logits["compact"] - original).max() <= 1e-4
    assert 0 < digits_error <= 1e-4 and np.abs(logits["compact"] - emulated_logits).max() <= 1e-5
    with Checkpoint.open(tiny_hf) as ckpt:  # tiny's attention widened to float32 is what compact saves
        attention = sum(ckpt.info(f"layers.{i}.{m}.weight").numel for i in range(4) for m in "qkvo")
    stored = {d: _attention_bytes(tmp_path / d / "model.onnx") for d in logits}
    assert stored["exact"] == attention * 2
    assert stored["compact"] == pytest.approx(attention * dense_digits.BYTES_PER_WEIGHT, rel=0.01)


def _attention_bytes(model: Path) -> int:
    """Bytes of the attention matrices' initializers (q, k, v fused, and o) in an ONNX folder's data file."""
    graph = onnx.load(model, load_external_data=False).graph
    return sum(int({e.key: e.value for e in t.external_data}["length"]) for t in graph.initializer
               if re.fullmatch(r"layers\.\d+\.[qo]\.(weight|digits|scales|zero_points)", t.name))
