"""GGUF metadata and ggml buffer types through ggml's own C API (the libraries llama-cpp-python ships).

Why not gguf-py's GGUFReader here: it parses every element of every array into Python objects, ~10-20 s for
the 201,088-token vocabulary, and an engine reads metadata at every load. ggml's reader is what llama.cpp
itself uses, takes milliseconds, and reports a malformed file as NULL instead of aborting the process.

    meta = read_metadata("model.gguf")     # {key: int | float | bool | str | list (numeric arrays)}
    meta.array_lengths["tokenizer.ggml.tokens"]   # long arrays and string arrays are only counted
    meta.tensor_bytes["blk.0.ffn_up_exps.weight"] # (file offset, nbytes) of a tensor's data
    buffer_types()                         # {"CPU": <ggml_backend_buffer_type_t>, "CUDA0": ..., ...}
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import Any

from edgeoss.errors import EdgeossError

# enum gguf_type (ggml/include/gguf.h)
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR_GETTERS = {_U8: ("gguf_get_val_u8", ctypes.c_uint8), _I8: ("gguf_get_val_i8", ctypes.c_int8),
                   _U16: ("gguf_get_val_u16", ctypes.c_uint16), _I16: ("gguf_get_val_i16", ctypes.c_int16),
                   _U32: ("gguf_get_val_u32", ctypes.c_uint32), _I32: ("gguf_get_val_i32", ctypes.c_int32),
                   _F32: ("gguf_get_val_f32", ctypes.c_float), _BOOL: ("gguf_get_val_bool", ctypes.c_bool),
                   _U64: ("gguf_get_val_u64", ctypes.c_uint64), _I64: ("gguf_get_val_i64", ctypes.c_int64),
                   _F64: ("gguf_get_val_f64", ctypes.c_double)}
_ARRAY_ITEMS = {_U8: ctypes.c_uint8, _I8: ctypes.c_int8, _U16: ctypes.c_uint16, _I16: ctypes.c_int16,
                _U32: ctypes.c_uint32, _I32: ctypes.c_int32, _F32: ctypes.c_float, _BOOL: ctypes.c_bool,
                _U64: ctypes.c_uint64, _I64: ctypes.c_int64, _F64: ctypes.c_double}


MAX_DECODED = 1 << 12  # numeric arrays up to this length come back as lists (per-layer values, not vocabularies)


class GGUFFileError(EdgeossError):
    """A file ggml cannot read as GGUF."""


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


@functools.cache
def _lib() -> ctypes.CDLL:
    """libggml (with libggml-base behind it) as loaded by llama-cpp-python, with the signatures used here."""
    from llama_cpp._ggml import libggml as lib

    sig = {
        "gguf_init_from_file": ([ctypes.c_char_p, _InitParams], ctypes.c_void_p),
        "gguf_free": ([ctypes.c_void_p], None),
        "gguf_get_n_kv": ([ctypes.c_void_p], ctypes.c_int64),
        "gguf_get_key": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_char_p),
        "gguf_get_kv_type": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_int),
        "gguf_get_arr_type": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_int),
        "gguf_get_arr_n": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_size_t),
        "gguf_get_arr_data": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_void_p),
        "gguf_get_val_str": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_char_p),
        "gguf_get_n_tensors": ([ctypes.c_void_p], ctypes.c_int64),
        "gguf_get_tensor_name": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_char_p),
        "gguf_get_tensor_type": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_int),
        "gguf_get_tensor_offset": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_size_t),
        "gguf_get_tensor_size": ([ctypes.c_void_p, ctypes.c_int64], ctypes.c_size_t),
        "gguf_get_data_offset": ([ctypes.c_void_p], ctypes.c_size_t),
        "ggml_backend_dev_count": ([], ctypes.c_size_t),
        "ggml_backend_dev_get": ([ctypes.c_size_t], ctypes.c_void_p),
        "ggml_backend_dev_buffer_type": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_dev_host_buffer_type": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_buft_name": ([ctypes.c_void_p], ctypes.c_char_p),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    for getter, ctype in _SCALAR_GETTERS.values():
        fn = getattr(lib, getter)
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_int64], ctype
    lib.ggml_log_set.argtypes, lib.ggml_log_set.restype = [_LOG_CALLBACK, ctypes.c_void_p], None
    lib.ggml_log_set(_log_to_verbose, None)
    return lib


def route_native_logs(verbose: bool | None = None) -> None:
    """Send ggml's and llama.cpp's own log lines through `_log_to_verbose` (llama-cpp-python's logger prints
    some of them whatever its `verbose` says): shown when `verbose`, by default when EDGEOSS_VERBOSE=1
    (`edgeoss --verbose`)."""
    import llama_cpp

    _SHOW_LOGS[0] = verbose
    _lib().ggml_log_set(_log_to_verbose, None)
    llama_cpp.llama_log_set(_log_to_verbose, None)


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


_SHOW_LOGS: list[bool | None] = [None]  # set by route_native_logs; None: EDGEOSS_VERBOSE decides


@_LOG_CALLBACK
def _log_to_verbose(level: int, text: bytes | None, user_data: object) -> None:
    """ggml's and llama.cpp's own messages (a parser's complaint about a broken file, the loader's listing) reach
    stderr only when asked for: edgeoss says what went wrong in its own line."""
    show = os.environ.get("EDGEOSS_VERBOSE") == "1" if _SHOW_LOGS[0] is None else _SHOW_LOGS[0]
    if text and show:
        sys.stderr.write(text.decode("utf-8", "replace"))


class GGUFMetadata(dict):
    """Key -> value of a GGUF file (short numeric arrays as lists; the others only counted), and its tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.array_lengths: dict[str, int] = {}
        self.tensor_types: dict[str, int] = {}  # tensor name -> ggml type
        self.tensor_bytes: dict[str, tuple[int, int]] = {}  # tensor name -> (file offset, nbytes)

    @property
    def all_keys(self) -> set[str]:
        """Every key of the file, counted-only arrays included."""
        return set(self) | set(self.array_lengths)


def read_metadata(path: str | Path) -> GGUFMetadata:
    """Every key of a GGUF file read with ggml's parser; GGUFFileError if ggml cannot parse it."""
    lib = _lib()
    ctx = lib.gguf_init_from_file(str(path).encode(), _InitParams(True, None))
    if not ctx:
        raise GGUFFileError(f"{path}: not a readable GGUF file")
    try:
        meta = GGUFMetadata()
        for i in range(lib.gguf_get_n_kv(ctx)):
            key = lib.gguf_get_key(ctx, i).decode()
            kind = lib.gguf_get_kv_type(ctx, i)
            if kind == _STR:
                meta[key] = lib.gguf_get_val_str(ctx, i).decode("utf-8", "replace")
            elif kind == _ARR:
                n, item = lib.gguf_get_arr_n(ctx, i), lib.gguf_get_arr_type(ctx, i)
                meta.array_lengths[key] = n
                if item in _ARRAY_ITEMS and n <= MAX_DECODED:
                    data = ctypes.cast(lib.gguf_get_arr_data(ctx, i), ctypes.POINTER(_ARRAY_ITEMS[item]))
                    meta[key] = [data[j] for j in range(n)]
            else:
                meta[key] = getattr(lib, _SCALAR_GETTERS[kind][0])(ctx, i)
        data = lib.gguf_get_data_offset(ctx)
        for t in range(lib.gguf_get_n_tensors(ctx)):
            name = lib.gguf_get_tensor_name(ctx, t).decode()
            meta.tensor_types[name] = lib.gguf_get_tensor_type(ctx, t)
            meta.tensor_bytes[name] = (data + lib.gguf_get_tensor_offset(ctx, t), lib.gguf_get_tensor_size(ctx, t))
        _check_extents(path, meta)
        return meta
    except UnicodeDecodeError:
        raise GGUFFileError(f"{path}: a key or tensor name is not UTF-8 (a damaged header)") from None
    finally:
        lib.gguf_free(ctx)


def _check_extents(path: str | Path, meta: GGUFMetadata) -> None:
    """Every tensor's data lies inside the file (ggml's parser reads the header only, so a truncated file parses)."""
    size = Path(path).stat().st_size
    for name, (offset, nbytes) in meta.tensor_bytes.items():
        if offset + nbytes > size:
            raise GGUFFileError(f"{path}: truncated: tensor {name} ends at byte {offset + nbytes:,}, the file has "
                                f"{size:,} bytes")


def buffer_types() -> dict[str, Any]:
    """Buffer types by name, as llama.cpp's `--override-tensor` resolves them (each device's own, and its
    pinned host buffer type where it has one), plus "CPU"."""
    lib = _lib()
    found: dict[str, Any] = {}
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        for buft in (lib.ggml_backend_dev_buffer_type(dev), lib.ggml_backend_dev_host_buffer_type(dev)):
            if buft:
                found.setdefault(lib.ggml_backend_buft_name(buft).decode(), buft)
    return found
