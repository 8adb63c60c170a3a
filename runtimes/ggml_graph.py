"""ggml's graph nodes as the eval callback sees them: a ctypes mirror of `struct ggml_tensor`, checked at run time.

llama.cpp's public C API hands an eval callback (`llama_context_params.cb_eval`) a `struct ggml_tensor *` for
every node of the graph, once to ask whether the caller wants its data ("ask") and, for the nodes it wanted,
again once the node is computed. The struct is public (ggml.h of the llama.cpp that llama-cpp-python 0.3.36
vendors: GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_OP_PARAMS 64, GGML_MAX_NAME 64; 336 bytes). `check_layout`
compares the mirror with the library itself (`ggml_tensor_overhead`, `ggml_nbytes`, `ggml_get_name`) before
anything is read through it, so a changed header fails loudly instead of reading garbage.

    t = node(address)                # GGMLTensor at that address
    name(address)                    # b"ffn_moe_topk-3"
    routed_ids(t)                    # int32 [tokens, k] of a top-k node, read through its strides
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from edgeoss.errors import EdgeossError

MAX_DIMS, MAX_SRC, MAX_OP_PARAMS, MAX_NAME = 4, 10, 64, 64
OBJECT_BYTES = 32  # sizeof(struct ggml_object): ggml_tensor_overhead() = this + sizeof(struct ggml_tensor)
TYPE_I32 = 26  # enum ggml_type GGML_TYPE_I32


class GGMLTensor(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * MAX_DIMS), ("nb", ctypes.c_size_t * MAX_DIMS),
                ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * (MAX_OP_PARAMS // 4)), ("flags", ctypes.c_int32),
                ("src", ctypes.c_void_p * MAX_SRC), ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
                ("data", ctypes.c_void_p), ("name", ctypes.c_char * MAX_NAME), ("extra", ctypes.c_void_p),
                ("padding", ctypes.c_char * 8)]


NAME_OFFSET = GGMLTensor.name.offset


class GraphLayoutError(EdgeossError):
    """This llama.cpp's ggml_tensor is not the one edgeoss mirrors."""


@functools.cache
def _lib() -> ctypes.CDLL:
    from llama_cpp._ggml import libggml as lib

    for fn, args, res in (("ggml_tensor_overhead", [], ctypes.c_size_t),
                          ("ggml_nbytes", [ctypes.c_void_p], ctypes.c_size_t),
                          ("ggml_nelements", [ctypes.c_void_p], ctypes.c_int64),
                          ("ggml_get_data", [ctypes.c_void_p], ctypes.c_void_p),
                          ("ggml_get_name", [ctypes.c_void_p], ctypes.c_char_p),
                          ("ggml_op_name", [ctypes.c_int], ctypes.c_char_p)):
        getattr(lib, fn).argtypes, getattr(lib, fn).restype = args, res
    return lib


def node(address: int) -> GGMLTensor:
    return GGMLTensor.from_address(address)


def name(address: int) -> bytes:
    return ctypes.string_at(address + NAME_OFFSET)


def nbytes(address: int) -> int:
    """ggml_nbytes, asked of the library."""
    return _lib().ggml_nbytes(address)


@functools.cache
def op_code(op_name: str) -> int:
    """The enum ggml_op value whose name is `op_name` (e.g. "MUL_MAT_ID"), asked of the library."""
    lib = _lib()
    for code in range(256):
        if lib.ggml_op_name(code) == op_name.encode():
            return code
    raise GraphLayoutError(f"this ggml has no op {op_name!r}")


def check_layout(address: int) -> None:
    """Raise GraphLayoutError unless the mirror reads this real tensor as ggml itself does: its size, name,
    element count and data pointer (a node's inputs are checked where they are used, by name and size)."""
    lib = _lib()
    if lib.ggml_tensor_overhead() != ctypes.sizeof(GGMLTensor) + OBJECT_BYTES:
        raise GraphLayoutError(f"ggml_tensor is {lib.ggml_tensor_overhead() - OBJECT_BYTES} bytes in this ggml, "
                               f"{ctypes.sizeof(GGMLTensor)} in edgeoss's mirror")
    t = node(address)
    elements = t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3]
    if (lib.ggml_get_name(address) != t.name or lib.ggml_nelements(address) != elements
            or lib.ggml_get_data(address) != t.data):
        raise GraphLayoutError("edgeoss's ggml_tensor mirror reads a name, shape or data pointer that ggml does not")


def routed_ids(t: GGMLTensor) -> np.ndarray:
    """int32 [tokens, k]: the expert ids of a top-k node (a strided view of the router's argsort)."""
    if t.type != TYPE_I32:
        raise GraphLayoutError(f"{t.name.decode()}: expected int32 expert ids, got ggml type {t.type}")
    k, tokens = int(t.ne[0]), int(t.ne[1])
    if tokens == 0:
        return np.zeros((0, k), dtype=np.int32)
    span = (tokens - 1) * int(t.nb[1]) + k * int(t.nb[0])
    buffer = (ctypes.c_char * span).from_address(t.data)
    return np.ndarray((tokens, k), dtype=np.int32, buffer=buffer, strides=(int(t.nb[1]), int(t.nb[0]))).copy()


def sources(t: GGMLTensor) -> list[int]:
    """Addresses of a node's inputs (src[0..], up to the first NULL)."""
    out = []
    for s in t.src:
        if not s:
            break
        out.append(s)
    return out
