"""A small, strict safetensors reader (mmap, zero-copy) and a streaming writer.

Format: u64 little-endian header length N, N bytes of JSON header
`{"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}` padded with spaces,
then the data section; offsets are relative to its start.

Why not the `safetensors` package directly: its numpy API cannot hold BF16, its writer needs every tensor in
memory at once (a 20b shard is 5 GB), and its errors do not name what a user must fix. The package stays the
oracle in the tests: files written here load there, and files written there load here.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from ..errors import CheckpointError

NUMPY_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "U8": np.uint8, "I8": np.int8,
                "I32": np.int32, "I64": np.int64, "U16": np.uint16}
ITEM_BYTES = {name: np.dtype(t).itemsize for name, t in NUMPY_DTYPES.items()}
# the safetensors writer orders data by dtype (larger enum first), then name
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
               "F64", "I64", "U64"]
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """Where one tensor lives inside a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """Parse and check a safetensors header against the file it belongs to."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(str(path), f"truncated: {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(str(path), f"header length {n} does not fit a {size}-byte file")
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(str(path), "no such file") from None
    except IsADirectoryError:
        raise CheckpointError(str(path), "is a directory, expected a safetensors file") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(str(path), "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(str(path), "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise CheckpointError(str(path), "__metadata__ must map strings to strings (the safetensors format)")
    data_start = 8 + n
    entries: dict[str, Entry] = {}
    for name, info in header.items():
        entries[name] = _entry(path, name, info, data_start)
    _check_extents(path, entries, data_start, size)
    return entries, metadata


def _entry(path: Path, name: str, info: object, data_start: int) -> Entry:
    try:
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(str(path), "header entry lacks dtype/shape/data_offsets", name) from None
    if dtype not in NUMPY_DTYPES:
        raise CheckpointError(str(path), f"unsupported dtype {dtype!r}", name)
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(str(path), f"bad shape {shape!r}", name)
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
        raise CheckpointError(str(path), f"bad data_offsets [{begin}, {end}]", name)
    expected = math.prod(shape) * ITEM_BYTES[dtype]
    if end - begin != expected:
        raise CheckpointError(str(path), f"data_offsets [{begin}, {end}] hold {end - begin} bytes but "
                                         f"{dtype}{shape} needs {expected}", name)
    return Entry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _check_extents(path: Path, entries: dict[str, Entry], data_start: int, size: int) -> None:
    """Tensors must tile the data section without overlap and lie inside the file."""
    cursor = data_start
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != cursor:
            what = "overlaps the previous tensor" if e.begin < cursor else "leaves a gap before it"
            raise CheckpointError(str(path), f"data_offsets lie: tensor {what} "
                                             f"(starts at {e.begin - data_start}, expected {cursor - data_start})",
                                  e.name)
        cursor = e.end
    if cursor > size:
        raise CheckpointError(str(path), f"truncated: data runs to byte {cursor}, file has {size} bytes")
    if cursor < size:
        raise CheckpointError(str(path), f"{size - cursor} unexpected bytes after the last tensor")


class SafetensorsFile:
    """A safetensors file mapped read-only; tensors come back as zero-copy numpy views."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries, self.metadata = read_header(self.path)
        self._map: mmap.mmap | None = None

    def _buffer(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def array(self, name: str) -> np.ndarray:
        """The raw tensor (BF16 comes back as uint16 bit patterns)."""
        e = self.entries[name]
        flat = np.frombuffer(self._buffer(), dtype=NUMPY_DTYPES[e.dtype], count=math.prod(e.shape), offset=e.begin)
        return flat.reshape(e.shape)

    def advise(self, name: str, advice: int) -> None:
        """madvise over a tensor's pages (e.g. MADV_DONTNEED after streaming through it)."""
        e = self.entries[name]
        page = mmap.PAGESIZE
        start = e.begin - e.begin % page
        if e.end > start:
            self._buffer().madvise(advice, start, e.end - start)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # views still alive; the map closes when they go
                pass
            self._map = None


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> BF16 bit patterns (uint16), round to nearest even (NaN kept quiet)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)


# ---- writing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Planned:
    """A tensor to be written: its header entry is known before its bytes exist."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_BYTES[self.dtype]


def data_order(tensors: Iterable[Planned]) -> list[Planned]:
    """The order the reference writer lays tensors out: larger dtype enum first, then by name."""
    return sorted(tensors, key=lambda t: (-DTYPE_ORDER.index(t.dtype), t.name))


def header_bytes(tensors: list[Planned], metadata: dict[str, str] | None = None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class StreamingWriter:
    """Writes one safetensors file tensor by tensor, in the order given, chunk by chunk.

    The header is written first from the planned shapes; each tensor must then receive exactly its bytes.
    """

    def __init__(self, f: BinaryIO, tensors: list[Planned], metadata: dict[str, str] | None = None):
        self._f = f
        self._pending = list(tensors)
        self._left = 0
        f.write(header_bytes(self._pending, metadata))

    def begin(self, name: str) -> None:
        if self._left:
            raise ValueError(f"previous tensor still needs {self._left} bytes")
        if not self._pending or self._pending[0].name != name:
            expected = self._pending[0].name if self._pending else "nothing"
            raise ValueError(f"tensor {name!r} written out of order (expected {expected})")
        self._left = self._pending.pop(0).nbytes

    def write(self, chunk: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(chunk)).cast("B")
        if data.nbytes > self._left:
            raise ValueError("chunk overruns its tensor")
        self._f.write(data)
        self._left -= data.nbytes

    def finish(self) -> None:
        if self._left or self._pending:
            raise ValueError("not every planned tensor was written")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
