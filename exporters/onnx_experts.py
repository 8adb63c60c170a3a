"""MXFP4 experts as ONNX Runtime QMoE weights, and the QMoE node of one layer.

QMoE (com.microsoft) stores each projection as block-quantized weights: uint8 [E, N, K * bits / 8] (row = output
channel, packed along K, low nibble first for 4 bits), scales [E, N, K / 32]. Three encodings of the checkpoint's
MXFP4 blocks (block 32 along K, like QMoE's):

- mxfp4 (exact, 4.25 bits, the default): the checkpoint's bytes as they are. onnxruntime >= 1.32 reads MXFP4 on
  CPU with quant_type "fp4": the E2M1 codes as stored (low nibble = even k), the E8M0 scale bytes as FLOAT8E8M0
  block scales, a float32 global scale of 1.0 per expert, and `weights_prepacked=1` (without it the session
  cannot be created). Its fast kernel is AVX-512 (onnx.md: about 70x slower with ORT_QMOE_CPU_DISABLE_AVX512).

- int8 (exact, 8 bits): q = 128 + 2 * fp4, scale = 2^(e - 128) (edgeoss.mxfp4.to_int8), value
  (q - 128) * scale. Every weight is the
  checkpoint's value. ONNX Runtime's CPU kernel quantizes the *activations* to int8 for 8-bit experts unless
  the environment has ORT_QMOE_CPU_QNBIT_GEMM=fp32 when the session is created (then it dequantizes and runs
  an fp32 GEMM: exact, about 5x slower).
- int4 (lossy, 4 bits): per block, the signed scale s that minimizes the block's squared error over the
  grid {-8..7} * s. A block's MXFP4 values are at most 15 distinct multiples of its power of two, so a block
  is described by the histogram of its 16 codes. Candidate level assignments come from the scales
  every |value| / k (k = 1..8, both signs: the value lands exactly on level +-k); each one fixes the codes'
  levels, the least-squares scale for those levels is priced for all candidates at once (one small matmul
  over the histograms), and the block keeps the best. The error is measured and reported (QuantError).

The layer: routing in fp32 (the router logits go in raw, QMoE takes the top k and softmaxes them:
normalize_routing_weights=1), SwiGLU on interleaved gate/up rows (swiglu_fusion=1) with gpt-oss's clamp:
gate <= limit, -limit <= up <= limit, out = gate * sigmoid(1.702 * gate) * (up + 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from onnx import TensorProto

from edgeoss.formats import mxfp4
from edgeoss.exporters.onnx_graph import MS, ExternalData, Graph

SWIGLU_ALPHA = 1.702  # gpt-oss's sigmoid gain, fixed in the model code (not in any config)
SWIGLU_BETA = 1.0  # the +1 on the up projection
ROWS_PER_CHUNK = 1 << 13  # int4 search: blocks per vectorized step (temporaries stay in cache)

# (blocks [N, G, 16], scales [N, G], bias float32 [N]) of one expert's projection
ExpertSource = Callable[[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class QuantError:
    """Weight error of an encoding against the MXFP4 values, accumulated over everything it encoded."""

    sum_sq_error: float = 0.0
    sum_sq: float = 0.0
    max_abs: float = 0.0
    count: int = 0

    def add(self, sq_error: float, sq: float, max_abs: float, count: int) -> None:
        self.sum_sq_error += sq_error
        self.sum_sq += sq
        self.max_abs = max(self.max_abs, max_abs)
        self.count += count

    def as_dict(self) -> dict:
        rel = (self.sum_sq_error / self.sum_sq) ** 0.5 if self.sum_sq else 0.0
        rms = (self.sum_sq_error / self.count) ** 0.5 if self.count else 0.0
        return {"weights": self.count, "rms_error": rms, "relative_rms_error": rel, "max_abs_error": self.max_abs}


# ---- int4: the least-squares scale per block ---------------------------------------------------------------
_VALUES = mxfp4.FP4_VALUES.astype(np.float64)  # what each code means, in units of the block's 2^(e-127)


def _candidate_scales() -> np.ndarray:
    magnitudes = np.unique(np.abs(_VALUES[_VALUES != 0]))
    positive = np.unique((magnitudes[:, None] / np.arange(1, 9)[None, :]).ravel())
    return np.concatenate([-positive[::-1], positive])


def _levels(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values / scale), -8, 7)


_SCALES = _candidate_scales()
_LEVELS = _levels(_VALUES[None, :], _SCALES[:, None])  # [C, 16]: each candidate's level for each code
# per code: value * level and level^2 for every candidate, side by side [16, 2C]; weighted by counts (<= 32) they
# sum to multiples of 1/2 below 2^11, which float32 holds exactly
_PRICES = np.ascontiguousarray(np.concatenate([(_VALUES * _LEVELS).T, (_LEVELS ** 2).T], axis=1), dtype=np.float32)


def _code_histogram(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [N, 32] -> counts [N, 16]."""
    n = codes.shape[0]
    flat = codes.astype(np.int64) + 16 * np.arange(n, dtype=np.int64)[:, None]
    return np.bincount(flat.ravel(), minlength=16 * n).reshape(n, 16)


def _int4_block_scales(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts float32 [N, 16] -> (normalized scale [N], candidate [N], squared error [N]), each block's best.

    Every candidate fixes the levels L of the 16 codes; for fixed levels the least-squares scale is
    s = sum(h v L) / sum(h L^2), and the error sum(h v^2) - sum(h v L)^2 / sum(h L^2): one small matmul
    prices every candidate of every block.
    """
    num, den = np.split(hist @ _PRICES, 2, axis=1)  # [N, C] each; den is 0 only where num is
    gain = num * num
    gain /= np.maximum(den, 1.0)
    best = gain.argmax(axis=1)
    rows = np.arange(len(best))
    num, den = num[rows, best].astype(np.float64), den[rows, best].astype(np.float64)
    scale = num / np.maximum(den, 1.0) + (den == 0)  # an all-zero block gets scale 1
    error = hist.astype(np.float64) @ _VALUES ** 2 - scale * num
    return scale, best, np.maximum(error, 0.0)


def to_int4(blocks: np.ndarray, scales: np.ndarray, error: QuantError) -> tuple[np.ndarray, np.ndarray]:
    """MXFP4 [rows, G, 16] / [rows, G] -> (packed uint8 [rows, G*16], float32 scales [rows, G]); adds to `error`."""
    rows, groups = scales.shape
    codes = mxfp4.unpack_codes(blocks).reshape(rows * groups, mxfp4.BLOCK)
    pow2 = np.ldexp(1.0, scales.reshape(-1).astype(np.int32) - mxfp4.SCALE_BIAS)
    packed = np.empty((rows * groups, mxfp4.BLOCK_BYTES), dtype=np.uint8)
    out_scales = np.empty(rows * groups, dtype=np.float32)
    for start in range(0, rows * groups, ROWS_PER_CHUNK):
        part = slice(start, start + ROWS_PER_CHUNK)
        hist = _code_histogram(codes[part]).astype(np.float32)
        scale, best, sq_error = _int4_block_scales(hist)
        out_scales[part] = scale * pow2[part]
        levels = _LEVELS[best[:, None], codes[part]]  # [n, 32] in -8..7
        stored = (levels + 8).astype(np.uint8)
        packed[part] = stored[:, 0::2] | (stored[:, 1::2] << 4)
        worst = np.abs(_VALUES - scale[:, None] * _LEVELS[best]) * (hist > 0)  # per code present, normalized
        error.add(float((sq_error * pow2[part] ** 2).sum()), float((hist @ _VALUES ** 2 * pow2[part] ** 2).sum()),
                  float((worst.max(axis=1) * pow2[part]).max(initial=0.0)), int(hist.sum()))
    return packed.reshape(rows, groups * mxfp4.BLOCK_BYTES), out_scales.reshape(rows, groups)


def int4_values(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 weights [rows, G*32] an int4 export holds for these MXFP4 blocks ((level - 8) * scale)."""
    packed, block_scales = to_int4(blocks, scales, QuantError())
    levels = np.empty((packed.shape[0], packed.shape[1] * 2), np.float32)
    levels[:, 0::2], levels[:, 1::2] = packed & 15, packed >> 4
    return ((levels - 8).reshape(*block_scales.shape, mxfp4.BLOCK) * block_scales[..., None]).reshape(levels.shape)


# ---- the encodings ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertEncoding:
    name: str
    bits: int
    exact: bool
    description: str
    fp4: bool = False  # QMoE quant_type "fp4": E2M1 codes with FLOAT8E8M0 block scales

    @property
    def scale_type(self) -> tuple[type, int]:
        """(numpy dtype of the stored scales, their ONNX element type)."""
        return (np.uint8, TensorProto.FLOAT8E8M0) if self.fp4 else (np.float32, TensorProto.FLOAT)

    def encode(self, blocks: np.ndarray, scales: np.ndarray, error: QuantError) -> tuple[np.ndarray, np.ndarray]:
        if self.fp4:
            return blocks.reshape(blocks.shape[0], -1), scales
        if self.bits == 8:
            return mxfp4.to_int8(blocks, scales)
        return to_int4(blocks, scales, error)


ENCODINGS = {
    "mxfp4": ExpertEncoding("mxfp4", 4, True, "MXFP4 as stored (QMoE fp4: E2M1 codes, E8M0 block scales, "
                            "onnxruntime >= 1.32)", fp4=True),
    "int8": ExpertEncoding("int8", 8, True, "exact MXFP4 as int8 (q = 128 + 2 fp4, scale 2^(e-128)), block 32"),
    "int4": ExpertEncoding("int4", 4, False, "int4 with a least-squares scale per 32-block (lossy)"),
}
DEFAULT_ENCODING = "mxfp4"


# ---- the QMoE node of a layer ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoeShape:
    experts: int
    top_k: int
    hidden: int
    intermediate: int
    swiglu_limit: float


def write_moe(g: Graph, data: ExternalData, prefix: str, shape: MoeShape, encoding: ExpertEncoding,
              source: ExpertSource, x: str, router_logits: str, error: QuantError) -> str:
    """Write one layer's experts (one expert in memory at a time) and add its QMoE node; returns its output."""
    inputs = []
    scale_dtype, scale_type = encoding.scale_type
    projections = (("gate_up", 2 * shape.intermediate, shape.hidden), ("down", shape.hidden, shape.intermediate))
    for proj, rows, k in projections:
        scales: list[np.ndarray] = []
        biases: list[np.ndarray] = []

        def weights() -> Iterator[np.ndarray]:
            for e in range(shape.experts):
                blocks, block_scales, bias = source(proj, e)
                q, s = encoding.encode(blocks, block_scales, error)
                scales.append(s)
                biases.append(bias.astype(np.float32))
                yield q

        groups = k // mxfp4.BLOCK
        w = data.add(f"{prefix}.{proj}.weight", np.uint8, (shape.experts, rows, k * encoding.bits // 8), weights())
        s = data.add(f"{prefix}.{proj}.scales", scale_dtype, (shape.experts, rows, groups), scales,
                     elem_type=scale_type)
        b = data.add(f"{prefix}.{proj}.bias", np.float32, (shape.experts, rows), biases)
        inputs += [g.initializer(w), g.initializer(s), g.initializer(b)]
    fp4 = {}
    if encoding.fp4:  # inputs 8-14 (fc3, zero points, router weights) absent; 15, 16: global scales of 1.0
        ones = g.const(f"{prefix}.global_scale", np.ones(shape.experts, np.float32))
        inputs += [""] * 7 + [ones, ones]
        fp4 = {"quant_type": "fp4", "weights_prepacked": 1}
    return g.op("QMoE", x, router_logits, *inputs, domain=MS, name=f"{prefix}.moe",
                k=shape.top_k, activation_type="swiglu", swiglu_fusion=1, activation_alpha=SWIGLU_ALPHA,
                activation_beta=SWIGLU_BETA, swiglu_limit=shape.swiglu_limit, normalize_routing_weights=1,
                expert_weight_bits=encoding.bits, block_size=mxfp4.BLOCK, **fp4)
