"""Time one of llama.cpp's own CPU kernels: a ggml matrix product built and computed through ggml's public C API.

llama-cpp-python ships ggml as shared libraries (libggml-base: graphs and tensors; libggml-cpu: the CPU
backend that computes them). A decode step of gpt-oss in llama.cpp is mostly `mul_mat` of a weight matrix
(MXFP4 experts, bf16/q8_0 dense) with one activation column; `matvec_seconds` builds exactly that graph on
ggml's CPU backend, with the weights in a plain CPU buffer as llama.cpp's mmap without repack holds them (the
expert store's layout), and times `ggml_graph_compute_with_ctx`.

    seconds = matvec_seconds("mxfp4", rows=5760, cols=2880, threads=2, matrices=8)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import time

import numpy as np

# enum ggml_type (ggml.h), and bytes per block of 32 values where the type is blocked
TYPES = {"f32": (0, 4 * 32), "f16": (1, 2 * 32), "q8_0": (8, 34), "bf16": (30, 2 * 32), "mxfp4": (39, 17)}
BLOCK = 32
MXFP4_SCALE_BYTE = 120  # e8m0 2^-7: finite, ordinary values for timing


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    from llama_cpp._ggml import libggml_base_path

    base = ctypes.CDLL(str(libggml_base_path / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(libggml_base_path / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    p = ctypes.c_void_p
    for lib, fn, args, res in (
            (base, "ggml_init", [_InitParams], p), (base, "ggml_free", [p], None),
            (base, "ggml_new_tensor_2d", [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], p),
            (base, "ggml_mul_mat", [p, p, p], p), (base, "ggml_new_graph", [p], p),
            (base, "ggml_build_forward_expand", [p, p], None), (base, "ggml_get_data", [p], p),
            (base, "ggml_nbytes", [p], ctypes.c_size_t),
            (cpu, "ggml_graph_compute_with_ctx", [p, p, ctypes.c_int], ctypes.c_int)):
        getattr(lib, fn).argtypes, getattr(lib, fn).restype = args, res
    return base, cpu


class _Context:
    """A ggml context that holds its tensors' data, freed on exit."""

    def __init__(self, nbytes: int):
        self.base, self.cpu = _libs()
        self.ctx = self.base.ggml_init(_InitParams(nbytes + (1 << 20), None, False))
        if not self.ctx:
            raise MemoryError(f"ggml_init could not allocate {nbytes} bytes")
        self.graph = self.base.ggml_new_graph(self.ctx)

    def __enter__(self) -> "_Context":
        return self

    def __exit__(self, *exc) -> None:
        self.base.ggml_free(self.ctx)

    def tensor(self, kind: str, cols: int, rows: int) -> int:
        return self.base.ggml_new_tensor_2d(self.ctx, TYPES[kind][0], cols, rows)

    def data(self, tensor: int) -> np.ndarray:
        """The tensor's bytes, as a writable uint8 view."""
        size = self.base.ggml_nbytes(tensor)
        return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(self.base.ggml_get_data(tensor)))

    def mul_mat(self, weight: int, x: int) -> int:
        out = self.base.ggml_mul_mat(self.ctx, weight, x)
        self.base.ggml_build_forward_expand(self.graph, out)
        return out

    def compute(self, threads: int) -> float:
        start = time.perf_counter()
        if self.cpu.ggml_graph_compute_with_ctx(self.ctx, self.graph, threads) != 0:
            raise RuntimeError("ggml_graph_compute_with_ctx failed")
        return time.perf_counter() - start


def _fill(data: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    """Random ordinary values: floats in [-1, 1), quantized blocks with moderate scales."""
    if kind == "f32":
        data.view(np.float32)[:] = rng.uniform(-1, 1, data.size // 4)
    elif kind in ("f16", "bf16"):
        values = rng.uniform(-1, 1, data.size // 2).astype(np.float32)
        data.view(np.uint16)[:] = (values.astype(np.float16).view(np.uint16) if kind == "f16"
                                   else (values.view(np.uint32) >> 16).astype(np.uint16))
    else:
        data[:] = rng.integers(0, 256, data.size, dtype=np.uint8)
        blocks = data.reshape(-1, TYPES[kind][1])
        if kind == "mxfp4":
            blocks[:, 0] = MXFP4_SCALE_BYTE
        else:  # q8_0: an f16 scale, then 32 int8
            blocks[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)


def mul_mat_f32(weight: np.ndarray, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """x [T, K] @ weight.T [K, N] -> [T, N], computed by ggml in float32 (checks the binding against numpy)."""
    rows, cols = weight.shape
    with _Context(4 * (weight.size + x.size + rows * len(x))) as g:
        w, a = g.tensor("f32", cols, rows), g.tensor("f32", cols, len(x))
        g.data(w).view(np.float32)[:] = np.ascontiguousarray(weight, dtype=np.float32).ravel()
        g.data(a).view(np.float32)[:] = np.ascontiguousarray(x, dtype=np.float32).ravel()
        out = g.mul_mat(w, a)
        g.compute(threads)
        return g.data(out).view(np.float32).reshape(len(x), rows).copy()


@contextlib.contextmanager
def matvec_graph(kind: str, rows: int, cols: int, threads: int, matrices: int = 1, tokens: int = 1):
    """A graph multiplying `matrices` different [rows, cols] weight matrices of `kind` (random ordinary values) with
    `tokens` activation columns each, built once and computed once to warm the thread pool; yields a function that
    computes it again and returns the seconds it took."""
    weight_bytes = matrices * rows * cols // BLOCK * TYPES[kind][1]
    with _Context(weight_bytes + 4 * cols * tokens + matrices * 4 * rows * tokens) as g:
        rng = np.random.default_rng(0)
        x = g.tensor("f32", cols, tokens)
        _fill(g.data(x), "f32", rng)
        for _ in range(matrices):
            w = g.tensor(kind, cols, rows)
            _fill(g.data(w), kind, rng)
            g.mul_mat(w, x)
        g.compute(threads)
        yield lambda: g.compute(threads)


def matvec_seconds(kind: str, rows: int, cols: int, threads: int, matrices: int = 1, tokens: int = 1,
                   repeats: int = 3) -> float:
    """The best of `repeats` computes of `matvec_graph`'s graph, in seconds."""
    with matvec_graph(kind, rows, cols, threads, matrices, tokens) as compute:
        return min(compute() for _ in range(repeats))
