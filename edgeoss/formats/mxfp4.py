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

import numba
import numpy as np

from .safetensors_io import bf16_to_f32

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


def _round_to_fp4_codes(x: np.ndarray, keep_negative_zero: bool = False) -> np.ndarray:
    """Nearest E2M1 code for each value of x (already divided by its block scale), ties to even (the code whose
    mantissa bit is 0), saturating at +-6; a value that rounds to zero keeps its sign only if asked."""
    mag = np.minimum(np.abs(x), 6.0)
    positive = FP4_VALUES[:8]
    idx = np.clip(np.searchsorted(positive, mag), 1, 7)  # first candidate >= mag
    lo, hi = positive[idx - 1], positive[idx]
    d_lo, d_hi = mag - lo, hi - mag
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (idx % 2 == 0))
    code = np.where(mag == 0, 0, np.where(take_hi, idx, idx - 1)).astype(np.uint8)
    negative = np.signbit(x) if keep_negative_zero else np.signbit(x) & (code != 0)
    return code | negative.astype(np.uint8) << 3


# llama.cpp's E2M1 table, doubled to integers (ggml-common.h kvalues_mxfp4), in code order
_KVALUES_X2 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


@numba.njit(cache=True, parallel=True)
def _quantize_ocp(grouped: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> None:
    """llama.cpp's quantize_row_mxfp4_ref, block by block, in float32 as it computes: e = floor(log2f(amax)) - 2
    + 127 (0 for an all-zero block), d = 2^(e - 127) / 2 (ggml_e8m0_to_fp32_half), each code the first of the 16
    table entries with the least |kvalue * d - x| (ties to the lower code, so never -0)."""
    for b in numba.prange(grouped.shape[0]):
        amax = np.float32(0.0)
        for j in range(BLOCK):
            amax = max(amax, abs(grouped[b, j]))
        e = np.uint8(np.int32(np.floor(np.log2(amax))) - 2 + 127) if amax > 0 else np.uint8(0)
        d = np.float32(np.ldexp(np.float32(1.0), np.int32(e) - 128))
        scales[b] = e
        for j in range(BLOCK):
            x = grouped[b, j]
            best, best_err = 0, abs(_KVALUES_X2[0] * d - x)
            for i in range(1, 16):
                err = abs(_KVALUES_X2[i] * d - x)
                if err < best_err:
                    best, best_err = i, err
            codes[b, j] = best


RULES = ("ocp", "triton")  # quantize's rounding rules


def quantize(weights: np.ndarray, rule: str = "ocp") -> tuple[np.ndarray, np.ndarray]:
    """float [..., K] (K a multiple of 32) -> (blocks [..., K/32, 16], scales [..., K/32]). Two rules:

    - "ocp" (the default): llama.cpp's `quantize_row_mxfp4_ref` byte for byte (`_quantize_ocp`): the OCP MX
      shared exponent floor(log2(amax)) - emax(E2M1) = floor(log2(amax)) - 2, each element the nearest E2M1
      value, ties toward the lower code (the smaller magnitude), never -0; an all-zero block gets scale byte 0.
    - "triton" (triton_kernels / transformers): the block's scale is amax / 6 rounded up to a power of two
      (exponent ceil(log2(amax / 6))), so nothing saturates; elements round to nearest, ties to even, and keep
      their sign when they round to zero.
    On values that are exact upcasts of MXFP4 both give back the same values. They give back the stored codes and
    scale of every block whose largest magnitude is 4 or 6 times its scale (codes 6, 7, 14, 15), except for signed
    zeros; a block whose largest magnitude is smaller gets a smaller exponent and codes twice (or 4, 8 times) as
    large, for the same values.
    """
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if w.shape[-1] % BLOCK:
        raise ValueError(f"last dimension {w.shape[-1]} is not a multiple of {BLOCK}")
    groups = w.shape[-1] // BLOCK
    grouped = w.reshape(-1, BLOCK)
    if rule == "ocp":
        codes = np.empty(grouped.shape, dtype=np.uint8)
        scales = np.empty(grouped.shape[0], dtype=np.uint8)
        _quantize_ocp(grouped, codes, scales)
    elif rule == "triton":
        amax = np.abs(grouped).max(axis=-1)
        mantissa, exponent = np.frexp(amax / np.float32(6.0))  # amax/6 = m * 2^exponent, m in [0.5, 1)
        exp = np.where(amax > 0, exponent - (mantissa == 0.5), -SCALE_BIAS)  # ceil(log2(amax / 6))
        exp = np.clip(exp, -SCALE_BIAS, SCALE_BIAS).astype(np.int32)
        scales = (exp + SCALE_BIAS).astype(np.uint8)
        codes = _round_to_fp4_codes(grouped / np.ldexp(np.float32(1.0), exp)[:, None], keep_negative_zero=True)
    else:
        raise ValueError(f"unknown MXFP4 rounding rule {rule!r} (ocp or triton)")
    lead = w.shape[:-1]
    return pack_codes(codes).reshape(*lead, groups, BLOCK_BYTES), scales.reshape(*lead, groups)


def quantize_bf16_expert(bits: np.ndarray, rule: str = "ocp") -> tuple[np.ndarray, np.ndarray]:
    """One expert's BF16 weight as transformers' unquantized GptOssExperts stores it, bits [in, out], as the
    published MXFP4 checkpoints store it: (blocks [out, in/32, 16], scales [out, in/32]), blocks along `in`."""
    return quantize(bf16_to_f32(bits).T, rule)


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
