"""MXFP4: bit-exact against the original model's dequantizers and against gguf's ggml codec."""

import numpy as np
import pytest
import torch

from edgeoss.formats import mxfp4


@pytest.fixture
def random_mxfp4():
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, size=(3, 40, 4, 16), dtype=np.uint8)
    scales = rng.integers(100, 140, size=(3, 40, 4), dtype=np.uint8)
    return blocks, scales


def test_matches_gpt_oss_dequantizer(random_mxfp4, tmp_path):
    from gpt_oss.torch.weights import Checkpoint
    from safetensors.torch import save_file

    blocks, scales = random_mxfp4
    save_file({"w.blocks": torch.from_numpy(blocks), "w.scales": torch.from_numpy(scales)},
              str(tmp_path / "x.safetensors"))
    theirs = Checkpoint(str(tmp_path), torch.device("cpu"))._get_mxfp4_tensor("w.blocks", "w.scales",
                                                                              dtype=torch.float32)
    assert np.array_equal(mxfp4.dequantize(blocks, scales), theirs.numpy())


def test_matches_transformers_dequantizer(random_mxfp4):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    blocks, scales = random_mxfp4
    theirs = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
    assert np.array_equal(mxfp4.dequantize(blocks, scales), theirs.transpose(1, 2).numpy())  # they return [E, in, out]


def test_ggml_repack_decodes_identically_in_gguf(random_mxfp4):
    from gguf import GGMLQuantizationType, quants

    blocks, scales = random_mxfp4
    packed = mxfp4.to_ggml(blocks, scales)
    assert packed.shape == (3, 40, 4 * 17)
    theirs = quants.dequantize(packed, GGMLQuantizationType.MXFP4)
    assert np.array_equal(theirs, mxfp4.dequantize(blocks, scales))
    assert all(np.array_equal(a, b) for a, b in zip(mxfp4.from_ggml(packed), (blocks, scales)))


def test_quantize_matches_ggml_quantizer():
    from gguf import GGMLQuantizationType, quants

    w = np.random.default_rng(3).standard_normal((16, 256)).astype(np.float32) * 0.05
    blocks, scales = mxfp4.quantize(w)
    assert np.array_equal(mxfp4.to_ggml(blocks, scales), quants.quantize(w, GGMLQuantizationType.MXFP4))


def test_quantize_round_trips_representable_values():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 16, size=(8, 64), dtype=np.uint8)
    codes[:, ::32] = 7  # every block reaches +6 so its scale is recovered exactly
    blocks = mxfp4.pack_codes(codes.reshape(8, 2, 32))
    scales = rng.integers(110, 130, size=(8, 2), dtype=np.uint8)
    w = mxfp4.dequantize(blocks, scales)
    again = mxfp4.dequantize(*mxfp4.quantize(w))
    assert np.array_equal(again, w)


def test_nan_scale_detected():
    assert mxfp4.has_nan_scale(np.array([1, 255], dtype=np.uint8))
    assert not mxfp4.has_nan_scale(np.array([1, 254], dtype=np.uint8))


def _ggml_quantize(w: np.ndarray) -> np.ndarray:
    """llama.cpp's own MXFP4 quantizer (ggml_quantize_chunk -> quantize_row_mxfp4_ref) in the vendored ggml."""
    import ctypes

    from gguf import GGMLQuantizationType
    from llama_cpp._ggml import libggml

    fn = libggml.ggml_quantize_chunk
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]
    fn.restype = ctypes.c_size_t
    w = np.ascontiguousarray(w, dtype=np.float32)
    out = np.zeros(w.size // 32 * 17, dtype=np.uint8)
    assert fn(int(GGMLQuantizationType.MXFP4), w.ctypes.data, out.ctypes.data, 0, w.shape[0], w.shape[1],
              None) == out.size
    return out.reshape(w.shape[0], -1)


def _upcasts(rng, shape=(128, 256), exponent=-6) -> tuple[np.ndarray, np.ndarray]:
    codes = rng.integers(0, 16, shape).astype(np.uint8)
    return codes, mxfp4.FP4_VALUES[codes] * np.float32(2.0 ** exponent)


def test_ocp_rule_is_llamacpps_quantizer_byte_for_byte():
    rng = np.random.default_rng(11)
    codes, exact = _upcasts(rng)
    ties = exact + rng.choice([0.0, 0.25, -0.25], exact.shape).astype(np.float32) * np.float32(2.0 ** -6)
    near = np.ldexp(np.float32(1) - np.float32(2 ** -24), rng.integers(-20, 20, (128, 1))).astype(np.float32)
    below_powers = rng.uniform(-1, 1, (128, 256)).astype(np.float32) * near
    below_powers[:, ::32] = near  # every block's amax just below a power of two (log2 rounding)
    cases = {"normal": (rng.standard_normal((128, 256)) * 0.05).astype(np.float32), "exact": exact,
             "ties": ties, "below powers of two": below_powers,
             "tiny": (rng.standard_normal((32, 256)) * 1e-38).astype(np.float32),
             "signed zeros": np.where(rng.random((32, 256)) < 0.5, -0.0, 0.0).astype(np.float32),
             "huge": (rng.standard_normal((32, 256)) * 1e30).astype(np.float32)}
    for name, w in cases.items():
        assert np.array_equal(mxfp4.to_ggml(*mxfp4.quantize(w)), _ggml_quantize(w)), name


@pytest.mark.parametrize("rule", ["ocp", "triton"])
def test_exact_upcasts_come_back(rule):
    """Same values always; same codes and scale in every block whose largest magnitude is 4 or 6 units."""
    rng = np.random.default_rng(12)
    codes, w = _upcasts(rng)
    blocks, scales = mxfp4.quantize(w, rule)
    assert np.array_equal(mxfp4.dequantize(blocks, scales), w)
    canonical = (codes.reshape(128, 8, 32) & 7).max(axis=-1) >= 6
    back = mxfp4.unpack_codes(blocks)
    same = (back == codes.reshape(128, 8, 32)) | ((back & 7) == 0) & ((codes.reshape(128, 8, 32) & 7) == 0)
    assert same[canonical].all() and (scales[canonical] == 127 - 6).all()
    assert (scales[~canonical] < 127 - 6).all()


def test_triton_rule_never_saturates_and_rounds_half_to_even():
    rng = np.random.default_rng(13)
    w = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    blocks, scales = mxfp4.quantize(w, "triton")
    amax = np.abs(w.reshape(64, 8, 32)).max(axis=-1)
    unit = np.ldexp(np.float32(1.0), scales.astype(np.int32) - 127)
    assert (amax <= 6 * unit).all() and (amax > 3 * unit).all()  # the smallest power of two that holds amax / 6
    ties = np.array([[0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -0.25, -5.0] + [6.0] + [0.0] * 21],
                    dtype=np.float32)
    codes = mxfp4.unpack_codes(mxfp4.quantize(ties, "triton")[0])[0, 0, :11]
    assert mxfp4.FP4_VALUES[codes].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -1.0, -0.0, -4.0, 6.0]
    assert codes[8] == 8  # -0.25 rounds to -0 and keeps its sign under this rule
    ocp = mxfp4.unpack_codes(mxfp4.quantize(ties, "ocp")[0])[0, 0, :11]
    assert mxfp4.FP4_VALUES[ocp].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, -0.5, 0.0, -4.0, 6.0]
    with pytest.raises(ValueError, match="rounding rule"):
        mxfp4.quantize(ties, "nearest")
