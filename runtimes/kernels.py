"""The reference runtime's hot loops (numba): matmuls that read weights as stored, attention, and ggml's Q8_0
activation rounding. This is the one place for MXFP4 arithmetic beyond `edgeoss.mxfp4`'s codec.

Both weight matmuls compute `y[t] = W @ x[t]` for a batch of tokens, row by row (threads over rows for large
matrices), one token at a time per row, float32 accumulation:

- `mxfp4_matmul`: W in MXFP4 exactly as the checkpoint stores it (blocks [rows, G, 16], E8M0 scales [rows, G]),
  decoded on the fly, never ahead of time: a decode step touches each selected expert's packed bytes once.
  Low nibbles (even inputs) and high nibbles (odd inputs) are dotted with the even and odd halves of x, so the
  packed bytes are never shuffled; 16 lanes hold one block's 16 bytes; each block's sum is scaled by its
  E8M0 scale 2^(s-127) (s = 0: the subnormal 2^-127). Decoding an E2M1 code to its float32 value:
    * on CPUs with AVX-512 (`PERMUTE`): a 16-entry in-register table lookup (vpermps), emitted as LLVM IR;
    * elsewhere: integer bit arithmetic that LLVM vectorizes: a magnitude m in 2..7 has float32 bits
      (m + 252) << 22, m = 1 is 0.5, m = 0 is 0; bit 3 is the sign.
  Both give exactly `edgeoss.mxfp4.dequantize`'s weights.
- `bf16_matmul`: W as bf16 bits (uint16, the checkpoint's own mmapped bytes), widened by a 16-bit shift.
- `attention`: per (query, head), exactly its visible keys, in position order.

A token's arithmetic never depends on the batch it comes in (the same per-token code runs for every T; a
matmul's serial/threaded variant is chosen by the weight's shape, attention always runs serially), so a decode
step reproduces a prefill bit for bit. Keep inputs' types uniform too (e.g. weights read-only, like the mapped
checkpoint): numba compiles one specialization per type, and two specializations may vectorize differently.

`q8_0_roundtrip` reproduces what llama.cpp does to activations before an MXFP4 matmul (Q8_0, blocks of 32):
d = amax / 127 stored as f16, q = round-half-even(x * 127 / amax), x' = q * d.
"""

from __future__ import annotations

import types as pytypes

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeoss.formats.mxfp4 import BLOCK, BLOCK_BYTES, FP4_VALUES

ROWS_PER_TASK = 16  # output rows per scheduling unit: keeps per-row scratch allocations off the hot path


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret a uint32 as float32 (LLVM bitcast; vectorizes)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


U32 = np.uint32  # every bit operation is spelled in uint32 so that LLVM keeps 16 lanes per AVX-512 register


@numba.njit(inline="always")
def _e2m1(code):
    """float32 value of a 4-bit E2M1 code (uint32 in 0..15)."""
    magnitude = U32(code & U32(7))
    bits = U32(U32(magnitude + U32(252)) << U32(22))
    bits = bits if magnitude >= U32(2) else (U32(0x3F000000) if magnitude == U32(1) else U32(0))
    return _f32_from_bits(U32(bits | U32(U32(code & U32(8)) << U32(28))))


@numba.njit(inline="always")
def _e8m0(byte):
    """float32 2^(byte - 127) of an E8M0 scale byte (uint32; 0 is the subnormal 2^-127)."""
    return _f32_from_bits(U32(byte << U32(23)) if byte != U32(0) else U32(0x00400000))


def _serial_and_parallel(kernel):
    """Compile a prange kernel twice: threads pay off only for large work (a thread launch costs ~0.1-1 ms on a
    busy machine). Both variants run the same per-row / per-query code (tests check they agree bit for bit);
    matmuls choose by the weight's shape alone, never by the batch."""
    options = dict(fastmath=True, cache=True)
    return numba.njit(parallel=False, **options)(kernel), numba.njit(parallel=True, **options)(_renamed(kernel))


def _renamed(kernel, suffix: str = "_parallel"):
    """The same code under another qualified name. numba's on-disk cache is keyed by the function's module and
    qualified name, not by its compile options: without this, the parallel variant loads the serial variant's
    cached machine code (or the reverse) and silently runs on one thread."""
    copy = pytypes.FunctionType(kernel.__code__, kernel.__globals__, kernel.__name__ + suffix, kernel.__defaults__,
                                kernel.__closure__)
    copy.__qualname__ = kernel.__qualname__ + suffix
    return copy


PARALLEL_MIN_WORK = 1 << 20  # multiply-adds (a matmul counts its weights) below which one thread runs


def _pick(kernels: tuple, work: int):
    return kernels[work >= PARALLEL_MIN_WORK]


@numba.njit(inline="always")
def _mxfp4_row_dot_portable(blocks, scales, x_even, x_odd, lanes):
    """One MXFP4 row (blocks [G, 16], scales [G]) dotted with one token; 16 lanes = one block's bytes.
    Codes are decoded with integer bit arithmetic (`_e2m1`): any CPU, vectorized by LLVM."""
    lanes[:] = 0.0
    for g in range(scales.shape[0]):
        scale = _e8m0(U32(scales[g]))
        base = g * BLOCK_BYTES
        for j in range(BLOCK_BYTES):
            byte = U32(blocks[g, j])
            lanes[j] += (_e2m1(U32(byte & U32(15))) * x_even[base + j] +
                         _e2m1(U32(byte >> U32(4))) * x_odd[base + j]) * scale
    return lanes.sum()


_F32, _I32, _I8 = ir.FloatType(), ir.IntType(32), ir.IntType(8)
_LANES = BLOCK_BYTES
_V_F32, _V_I32, _V_I8 = (ir.VectorType(t, _LANES) for t in (_F32, _I32, _I8))


def _splat(builder, value, vector_type):
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, vector_type.count), [0] * vector_type.count))


@intrinsic
def _mxfp4_row_dot_permute(typingctx, blocks, scales, x_even, x_odd):
    """The same row dot with AVX-512's 16-entry in-register table lookup (vpermps): a block's 16 bytes are
    widened, split into low and high codes, and each code vector becomes its 16 E2M1 values in one
    instruction. Written in LLVM IR because numba has no vector types; ~2.5x the portable loop."""
    if any(a.layout != "C" for a in (blocks, scales, x_even, x_odd)):
        return None  # reads raw memory: contiguous rows only
    sig = types.float32(blocks, scales, x_even, x_odd)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(t)(context, builder, a) for t, a in zip(signature.args, args)]
        block_data, scale_data, even_data, odd_data = (a.data for a in arrays)
        permute = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_F32, [_V_F32, _V_I32]),
                                                 "llvm.x86.avx512.permvar.sf.512")
        table = ir.Constant(_V_F32, [float(v) for v in FP4_VALUES])
        low_mask, shift = ir.Constant(_V_I32, [15] * _LANES), ir.Constant(_V_I32, [4] * _LANES)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V_F32, [0.0] * _LANES))
        contract = ["contract"]

        def vector(data, offset, vector_type):
            return builder.load(builder.bitcast(builder.gep(data, [offset]), vector_type.as_pointer()), align=1)

        with cgutils.for_range(builder, builder.extract_value(arrays[1].shape, 0)) as loop:
            g = loop.index
            base = builder.mul(g, ir.Constant(g.type, _LANES))
            codes = builder.zext(vector(block_data, base, _V_I8), _V_I32)
            low = builder.call(permute, [table, builder.and_(codes, low_mask)])
            high = builder.call(permute, [table, builder.lshr(codes, shift)])
            byte = builder.zext(builder.load(builder.gep(scale_data, [g])), _I32)
            scale_bits = builder.select(builder.icmp_unsigned("==", byte, ir.Constant(_I32, 0)),
                                        ir.Constant(_I32, 0x00400000), builder.shl(byte, ir.Constant(_I32, 23)))
            scale = _splat(builder, builder.bitcast(scale_bits, _F32), _V_F32)
            pair = builder.fadd(builder.fmul(low, vector(even_data, base, _V_F32), flags=contract),
                                builder.fmul(high, vector(odd_data, base, _V_F32), flags=contract), flags=contract)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(pair, scale, flags=contract), flags=contract),
                          acc)
        total = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32, [_F32, _V_F32]),
                                               "llvm.vector.reduce.fadd.v16f32")
        return builder.call(total, [ir.Constant(_F32, 0.0), builder.load(acc)])

    return sig, codegen


def _target_has_avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512F (the host, unless NUMBA_CPU_NAME/FEATURES say else)."""
    if numba.config.CPU_NAME not in (None, "host"):
        return "+avx512f" in (numba.config.CPU_FEATURES or "")
    return "+avx512f" in (numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten())


PERMUTE = _target_has_avx512()


@numba.njit(inline="always")
def _mxfp4_row_dot(blocks, scales, x_even, x_odd, lanes):
    if PERMUTE:  # a compile-time constant: the other branch is never emitted
        return _mxfp4_row_dot_permute(blocks, scales, x_even, x_odd)
    return _mxfp4_row_dot_portable(blocks, scales, x_even, x_odd, lanes)


def _mxfp4_matmul(x_even, x_odd, blocks, scales, out):
    """Row by row, each token in turn (the row's bytes stay in L1 while the tokens go by)."""
    rows = scales.shape[0]
    tokens = x_even.shape[0]
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        lanes = np.empty(BLOCK_BYTES, dtype=np.float32)
        for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
            for t in range(tokens):
                out[t, r] = _mxfp4_row_dot(blocks[r], scales[r], x_even[t], x_odd[t], lanes)


_MXFP4_MATMUL = _serial_and_parallel(_mxfp4_matmul)


def mxfp4_matmul(x: np.ndarray, blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """x float32 [T, G*32] @ W.T -> [T, rows], W the MXFP4 matrix (blocks [rows, G, 16], scales [rows, G])."""
    rows, groups = scales.shape
    if blocks.shape != (rows, groups, BLOCK_BYTES) or x.ndim != 2 or x.shape[1] != groups * BLOCK:
        raise ValueError(f"mxfp4_matmul: x {x.shape}, blocks {blocks.shape}, scales {scales.shape} do not match")
    x = np.asarray(x, dtype=np.float32)
    x_even, x_odd = np.ascontiguousarray(x[:, 0::2]), np.ascontiguousarray(x[:, 1::2])
    blocks, scales = np.ascontiguousarray(blocks), np.ascontiguousarray(scales)  # no copy for stored tensors
    out = np.empty((x.shape[0], rows), dtype=np.float32)
    _pick(_MXFP4_MATMUL, rows * groups * BLOCK)(x_even, x_odd, blocks, scales, out)
    return out


@numba.njit(inline="always")
def _bf16_row_dot(weight_bits, x):
    total = np.float32(0.0)
    for k in range(x.shape[0]):
        total += _f32_from_bits(U32(U32(weight_bits[k]) << U32(16))) * x[k]
    return total


def _bf16_matmul(x, weight_bits, out):
    rows = weight_bits.shape[0]
    tokens = x.shape[0]
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
            for t in range(tokens):
                out[t, r] = _bf16_row_dot(weight_bits[r], x[t])


_BF16_MATMUL = _serial_and_parallel(_bf16_matmul)


def bf16_matmul(x: np.ndarray, weight_bits: np.ndarray) -> np.ndarray:
    """x float32 [T, K] @ W.T -> [T, rows], W given as bf16 bits uint16 [rows, K] (e.g. a mmapped tensor)."""
    if weight_bits.ndim != 2 or x.ndim != 2 or x.shape[1] != weight_bits.shape[1]:
        raise ValueError(f"bf16_matmul: x {x.shape} does not match weight {weight_bits.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], weight_bits.shape[0]), dtype=np.float32)
    _pick(_BF16_MATMUL, weight_bits.size)(x, weight_bits, out)
    return out


def q8_0_roundtrip(x: np.ndarray) -> np.ndarray:
    """llama.cpp's Q8_0 quantize -> dequantize of activations, per block of 32 along the last axis."""
    blocks = np.asarray(x, dtype=np.float32).reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    d = (amax / np.float32(127.0)).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(blocks * inverse), -127, 127)
    return (q * d).reshape(x.shape).astype(np.float32)


def _attention(q, keys, values, q_pos, k_pos, sinks, window, out):
    """One task per (query, head): its visible keys, in position order."""
    tokens, heads, dim = q.shape
    group = heads // keys.shape[1]
    scale = np.float32(1.0 / np.sqrt(dim))
    for task in prange(tokens * heads):
        t, h = task // heads, task % heads
        kv = h // group
        first = np.searchsorted(k_pos, q_pos[t] - window + 1) if window > 0 else 0
        last = np.searchsorted(k_pos, q_pos[t], side="right")
        scores = np.empty(last - first, dtype=np.float32)
        top = sinks[h]
        for s in range(first, last):
            dot = np.float32(0.0)
            for i in range(dim):
                dot += q[t, h, i] * keys[s, kv, i]
            scores[s - first] = dot * scale
            top = max(top, scores[s - first])
        total = np.exp(sinks[h] - top)
        for s in range(last - first):
            scores[s] = np.exp(scores[s] - top)
            total += scores[s]
        out[t, h, :] = 0.0
        for s in range(first, last):
            weight = scores[s - first] / total
            for i in range(dim):
                out[t, h, i] += weight * values[s, kv, i]


# One variant only: numba compiles a prange body differently from the same loop run serially (the two differ
# in the last bits), and the attention work depends on the batch, so picking by size would make a decode step
# differ from a prefill of the same tokens. The serial one: attention is a small share of a token's time (the
# weights dominate), and its summation order is the one llama.cpp's parity was measured against (the threaded
# compile flips a Q8_0 rounding tie at one position of the `odd` preset's 260).
_ATTENTION = numba.njit(parallel=False, fastmath=True, cache=True)(_attention)


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
              sinks: np.ndarray, window: int | None) -> np.ndarray:
    """Causal GQA attention with one sink logit per head (the math: `edgeoss.runtimes.reference.attention`).

    Keys must be in position order (k_pos ascending). Each (query, head) visits exactly its visible keys in
    that order, so a query's result does not depend on how the sequence was batched."""
    out = np.empty(q.shape, dtype=np.float32)
    _ATTENTION(
        np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(keys, dtype=np.float32),
        np.ascontiguousarray(values, dtype=np.float32), np.ascontiguousarray(q_pos, dtype=np.int64),
        np.ascontiguousarray(k_pos, dtype=np.int64), np.ascontiguousarray(sinks, dtype=np.float32),
        window or 0, out)
    return out.reshape(len(q), -1)


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel variant the reference uses, on tiny read-only
    inputs like the checkpoint's mapped arrays, so that timings do not include it."""
    blocks = np.zeros((1, 1, BLOCK_BYTES), dtype=np.uint8)
    scales = np.full((1, 1), 127, dtype=np.uint8)
    bits = np.zeros((1, BLOCK), dtype=np.uint16)
    for array in (blocks, scales, bits):
        array.setflags(write=False)
    x = np.zeros((1, BLOCK), dtype=np.float32)
    half = np.zeros((1, BLOCK_BYTES), dtype=np.float32)
    q = np.zeros((1, 1, 2), dtype=np.float32)
    positions = np.zeros(1, dtype=np.int64)
    for variant in (0, 1):
        _MXFP4_MATMUL[variant](half, half, blocks, scales, np.empty((1, 1), dtype=np.float32))
        _BF16_MATMUL[variant](x, bits, np.empty((1, 1), dtype=np.float32))
    _ATTENTION(q, q, q, positions, positions, np.zeros(1, dtype=np.float32), 0, np.empty_like(q))
