"""Dense bf16 matrices for ONNX Runtime's CPU kernels, compact in RAM: each weight as a sum of 4-bit digits.

ONNX Runtime's CPU MatMul has no bf16 (or fp16) kernel, so an exact export widens the dense matrices
(attention, unembedding) to float32 when the session loads: 4 bytes a weight in RAM, twice the checkpoint's.
Its fast 4-bit kernel, MatMulNBits (com.microsoft, bits 4, block 32, accuracy_level 1 = float32 arithmetic),
keeps 0.5 byte a weight plus a float32 scale and a 4-bit zero point per block of 32, and runs at the speed of
memory. Four such digits carry a bf16 weight to within 2^-15 of its block's largest magnitude:

    per block of 32 weights along K, with 2^E the largest magnitude's power of two (bf16: |w| < 2^(E+1)),
        s1 = 2^(E-2),  s(i+1) = s(i) / 16                                 (powers of two: every product is exact)
        t  = w + s4 / 2                                                   (round to nearest, not down)
        d1 = floor(t / s1)                      in -8..7, stored d1 + 8, zero point 8
        d(i+1) = floor((t - d1 s1 - .. - di si) / s(i+1))   in 0..15, zero point 0
        w ~ d1 s1 + d2 s2 + d3 s3 + d4 s4,   |error| <= s4 / 2 = 2^(E-15)

A weight whose own power of two is at least 2^(E-7) (within 128x of the block's largest: on the tiny and odd
models 99 % of the weights) is a multiple of s4 and comes back exactly; smaller ones are rounded to the nearest
multiple of s4. The digits sit side by side along K (all d1 blocks, then d2, ...), so one MatMulNBits node
over the input repeated four times computes x W^T: 2.56 bytes a weight in RAM, no float32 copy (4 bytes).

What it costs: four times the multiply-adds, which a prefill (compute-bound) pays in full; a decoded token
(memory-bound) reads 2.56 bytes a weight instead of 4. Three digits (error 2^-11 of the block's largest) moved
the tiny model's logits by 6e-3, too far for parity; four move them by 2e-4 when used for the unembedding too
and by 1.3e-5 when used for attention only, which is what the exporter does (the unembedding stays exact).

`digit_values` gives the same weights as float32 (what ONNX Runtime multiplies), for the reference runtime's
emulation of this encoding in the parity report.
"""

from __future__ import annotations

import numpy as np

from .safetensors_io import bf16_to_f32

BLOCK = 32
DIGITS = 4
SLICE = 1 << 20
BYTES_PER_WEIGHT = DIGITS * (0.5 + (4 + 0.5) / BLOCK)  # digits, float32 scale and 4-bit zero point per block


def fits(k: int) -> bool:
    """Whether a matrix with K columns can be split (MatMulNBits blocks of 32 along K)."""
    return k % BLOCK == 0


def _digits(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bf16 bits [N, K] -> digits int8 [DIGITS, N, K/32, 32] (d1 signed, the others 0..15) and each digit's
    scale float64 [DIGITS, N, K/32]."""
    w = bf16_to_f32(bits).astype(np.float64).reshape(bits.shape[0], -1, BLOCK)
    amax = np.abs(w).max(axis=-1)
    _, e = np.frexp(np.where(amax > 0, amax, 1.0))  # amax = m 2^e, m in [0.5, 1): largest power 2^(e-1)
    scales = np.stack([np.ldexp(1.0, e - 3 - 4 * i) for i in range(DIGITS)])
    rest = w + scales[-1][..., None] / 2
    digits = np.empty((DIGITS, *w.shape), np.int8)
    for i in range(DIGITS):
        d = np.floor(rest / scales[i][..., None])
        rest = rest - d * scales[i][..., None]
        digits[i] = d
    return digits, scales


def split(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bf16 bits [N, K] -> MatMulNBits B uint8 [N, DIGITS*K/32, 16] (low nibble = even k), scales float32
    [N, DIGITS*K/32] and zero points uint8 [N, DIGITS*K/64] (packed two a byte, low nibble first). Rows go
    through in slices of about SLICE weights (the float64 temporaries stay small)."""
    rows = max(1, SLICE // bits.shape[1])
    parts = [_split(bits[r:r + rows]) for r in range(0, bits.shape[0], rows)]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def _split(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, k = bits.shape
    digits, scales = _digits(bits)
    codes = digits.astype(np.int16)
    codes[0] += 8
    if codes.min() < 0 or codes.max() > 15:
        raise AssertionError("a digit out of 0..15 (the split's bounds are wrong)")
    codes = codes.astype(np.uint8).transpose(1, 0, 2, 3).reshape(n, DIGITS * k // BLOCK, BLOCK)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    zero = np.zeros((n, DIGITS, k // BLOCK), np.uint8)
    zero[:, 0] = 8
    zero = zero.reshape(n, -1)
    if zero.shape[1] % 2:
        zero = np.concatenate([zero, np.zeros((n, 1), np.uint8)], axis=1)
    zero_points = zero[:, 0::2] | (zero[:, 1::2] << 4)
    return packed, scales.transpose(1, 0, 2).reshape(n, -1).astype(np.float32), zero_points


def digit_values(bits: np.ndarray) -> np.ndarray:
    """The float32 weights [N, K] that the split carries (bf16 bits [N, K] in)."""
    digits, scales = _digits(bits)
    values = sum(digits[i] * scales[i][..., None] for i in range(DIGITS))
    return values.reshape(bits.shape).astype(np.float32)


def attention_values(bits: np.ndarray) -> np.ndarray:
    """What a compact export carries for one attention matrix (bf16 bits [N, K]): the digits' float32 weights,
    or the bits unchanged where K does not split into blocks of 32 (the exporter keeps that matrix exact)."""
    return digit_values(bits) if fits(bits.shape[1]) else bits
