"""Two small tools to write an ONNX model of any size without holding its weights: an external-data file that
grows tensor by tensor, and a graph whose initializers are only references into that file.

    with open(folder / "model.onnx.data", "wb") as f:
        data = ExternalData(f, "model.onnx.data")
        g = Graph()
        w = g.initializer(data.add("w", np.float32, (4, 8), chunks))   # chunks: arrays, written as they come
        y = g.op("MatMul", "x", w)
    g.save(folder / "model.onnx", inputs, outputs)

Offsets are aligned (64 KiB for tensors of 1 MiB and more, so ONNX Runtime can map them), the proto is
serialized deterministically, and nothing in it depends on time or paths: the same calls give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

MS = "com.microsoft"
BIG = 1 << 20  # tensors from this size on start on a mapping boundary
BIG_ALIGN = 1 << 16
SMALL_ALIGN = 64
IR_VERSION = 11  # ONNX 1.18+ (opset 23); ONNX Runtime 1.31 reads it

ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
              np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32}


class ExternalData:
    """Appends tensors to one open binary file and returns the TensorProto references to them."""

    def __init__(self, f: BinaryIO, location: str, advance: Callable[[int], None] = lambda n: None):
        self.f, self.location, self.advance, self.offset = f, location, advance, 0

    def add(self, name: str, dtype: type, shape: Sequence[int], chunks: Iterable[np.ndarray],
            elem_type: int | None = None) -> TensorProto:
        """Write a tensor given as row-major chunks of `dtype` (whose sizes add up to the tensor's); `elem_type`
        names an ONNX type numpy lacks (BFLOAT16 written as uint16 bits)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        align = BIG_ALIGN if nbytes >= BIG else SMALL_ALIGN
        pad = -self.offset % align
        self.f.write(b"\0" * pad)
        begin = self.offset = self.offset + pad
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            self.f.write(chunk.data)
            self.offset += chunk.nbytes
            self.advance(chunk.nbytes)
        if self.offset - begin != nbytes:
            raise AssertionError(f"{name}: wrote {self.offset - begin} bytes, shape {list(shape)} needs {nbytes}")
        t = TensorProto(name=name, dims=list(shape), data_type=elem_type or ONNX_TYPES[dtype])
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(begin)), ("length", str(nbytes))):
            t.external_data.add(key=key, value=value)
        return t

    def array(self, name: str, value: np.ndarray) -> TensorProto:
        return self.add(name, value.dtype.type, value.shape, [value])


class Graph:
    """Nodes and initializers in the order they are added; every output name is unique."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._counts: dict[str, int] = {}

    def _name(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def initializer(self, tensor: TensorProto) -> str:
        self.initializers.append(tensor)
        return tensor.name

    def const(self, name: str, value: np.ndarray) -> str:
        """A small constant stored inside the proto."""
        return self.initializer(onnx.numpy_helper.from_array(np.asarray(value), self._name(name)))

    def op(self, op_type: str, *inputs: str, outputs: int | Sequence[str] = 1, domain: str = "",
           name: str | None = None, **attrs) -> str | list[str]:
        """Add a node; returns its output name (or names when `outputs` > 1 or is a list). '' skips an input."""
        node_name = self._name(name or op_type)
        names = list(outputs) if not isinstance(outputs, int) else \
            [f"{node_name}/out{i}" if outputs > 1 else f"{node_name}/out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, domain=domain, **attrs))
        return names if (not isinstance(outputs, int) or outputs > 1) else names[0]

    def save(self, path: Path, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
             opsets: dict[str, int], doc: str = "") -> None:
        graph = helper.make_graph(self.nodes, "main", inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                                  producer_name="edgeoss", doc_string=doc, ir_version=IR_VERSION)
        Path(path).write_bytes(model.SerializeToString(deterministic=True))


def value_info(name: str, elem_type: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))
