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
