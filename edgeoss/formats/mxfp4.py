"""MXFP4 (OCP Microscaling FP4): the codec gpt-oss stores its experts in, and its repacks.

Checkpoint encoding (both published layouts, bit-identical):
- blocks: uint8 [..., G, 16], G = in/32. Byte b of a block holds element 2b in its low nibble and element
  2b+1 in its high nibble. Each nibble is an FP4 E2M1 code indexing `FP4_VALUES`.
- scales: uint8 [..., G], E8M0: the block's 32 elements are multiplied by 2^(s - 127). 0xFF is NaN (rejected).

ggml's `block_mxfp4` (GGML_TYPE_MXFP4 = 39) is 17 bytes: the same scale byte, then 16 bytes where byte j holds
element j in the low nibble and element j + 16 in the high nibble. The codes and the scale byte are carried
unchanged, so the repack is a pure bit shuffle (no dequantize / requantize).
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
BLOCK_BYTES = BLOCK // 2
GGML_BLOCK_BYTES = 1 + BLOCK_BYTES
SCALE_BIAS = 127
SCALE_NAN = 0xFF

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)
# E2M1 has emax = 2: the largest magnitude 6 = 1.5 * 2^2.
FP4_EMAX = 2


def unpack_codes(blocks: np.ndarray) -> np.ndarray:
    """uint8 [..., 16] -> uint8 codes [..., 32] in element order (low nibble = even element)."""
    codes = np.empty(blocks.shape[:-1] + (BLOCK,), dtype=np.uint8)
    codes[..., 0::2] = blocks & 0x0F
    codes[..., 1::2] = blocks >> 4
    return codes


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [..., 32] -> packed blocks [..., 16] (the checkpoint's nibble order)."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def scale_values(scales: np.ndarray) -> np.ndarray:
    """E8M0 bytes -> float32 powers of two 2^(s - 127). Exact for every byte but 0xFF."""
    return np.ldexp(np.float32(1.0), scales.astype(np.int32) - SCALE_BIAS).astype(np.float32)


def has_nan_scale(scales: np.ndarray) -> bool:
    return bool((scales == SCALE_NAN).any())


def dequantize(blocks: np.ndarray, scales: np.ndarray, dtype=np.float32) -> np.ndarray:
    """blocks [..., G, 16] and scales [..., G] -> weights [..., G*32] (input dimension last)."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK_BYTES:
        raise ValueError(f"MXFP4 blocks {blocks.shape} do not match scales {scales.shape}")
    values = FP4_VALUES[unpack_codes(blocks)] * scale_values(scales)[..., None]
    return values.reshape(*scales.shape[:-1], scales.shape[-1] * BLOCK).astype(dtype, copy=False)


def _round_to_fp4_codes(x: np.ndarray) -> np.ndarray:
    """Nearest E2M1 code for each value of x (already divided by its block scale), ties to even, saturating."""
    mag = np.minimum(np.abs(x), 6.0)
    positive = FP4_VALUES[:8]
    # candidates are sorted; pick the nearest, and on a tie the one whose code is even (mantissa bit 0)
    idx = np.searchsorted(positive, mag)  # first candidate >= mag
    idx = np.clip(idx, 1, 7)
    lo, hi = positive[idx - 1], positive[idx]
    d_lo, d_hi = mag - lo, hi - mag
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (idx % 2 == 0))
    code = np.where(take_hi, idx, idx - 1).astype(np.uint8)
    code = np.where(mag == 0, 0, code).astype(np.uint8)
    return code | (np.signbit(x) & (code != 0)).astype(np.uint8) << 3


def quantize(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., K] (K a multiple of 32) -> (blocks [..., K/32, 16], scales [..., K/32]).

    OCP MX scale rule: shared exponent = floor(log2(amax)) - emax(E2M1); elements round to nearest even and
    saturate at +-6. This is the rule gguf-py and ggml use for MXFP4 too.
    """
    w = np.asarray(weights, dtype=np.float32)
    if w.shape[-1] % BLOCK:
        raise ValueError(f"last dimension {w.shape[-1]} is not a multiple of {BLOCK}")
    grouped = w.reshape(*w.shape[:-1], w.shape[-1] // BLOCK, BLOCK)
    amax = np.abs(grouped).max(axis=-1)
    with np.errstate(divide="ignore"):
        exp = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - FP4_EMAX, -SCALE_BIAS)
    exp = np.clip(exp, -SCALE_BIAS, SCALE_BIAS).astype(np.int32)
    scales = (exp + SCALE_BIAS).astype(np.uint8)
    scaled = grouped / np.ldexp(np.float32(1.0), exp)[..., None]
    return pack_codes(_round_to_fp4_codes(scaled)), scales


def to_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Checkpoint blocks [..., G, 16] + scales [..., G] -> ggml block_mxfp4 bytes [..., G*17].

    Byte 0 of each 17 is the E8M0 scale; byte 1 + j holds code j (low nibble) and code j + 16 (high nibble).
    """
    codes = unpack_codes(blocks)
    qs = (codes[..., :BLOCK_BYTES] | (codes[..., BLOCK_BYTES:] << 4)).astype(np.uint8)
    out = np.concatenate([scales[..., None], qs], axis=-1)
    return out.reshape(*scales.shape[:-1], scales.shape[-1] * GGML_BLOCK_BYTES)


def from_ggml(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml block_mxfp4 bytes [..., G*17] -> checkpoint blocks [..., G, 16] and scales [..., G]."""
    grouped = data.reshape(*data.shape[:-1], data.shape[-1] // GGML_BLOCK_BYTES, GGML_BLOCK_BYTES)
    scales, qs = grouped[..., 0], grouped[..., 1:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return pack_codes(codes), np.ascontiguousarray(scales)


def to_int8(blocks: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MXFP4 -> (q uint8 [..., G*32], float32 scales [..., G]) with (q - 128) * scale == the MXFP4 value exactly.

    2 * E2M1 is an integer in [-12, 12], so q = 128 + 2 * fp4 with scale 2^(s - 128) is the same number: ONNX
    Runtime's 8-bit block quantization (block 32, implicit zero point 128) with no value rounded.
    """
    q = (128 + 2 * FP4_VALUES).astype(np.uint8)[unpack_codes(blocks)]
    scale = np.ldexp(np.float32(1.0), scales.astype(np.int32) - SCALE_BIAS - 1).astype(np.float32)
    return q.reshape(*scales.shape[:-1], scales.shape[-1] * BLOCK), scale
