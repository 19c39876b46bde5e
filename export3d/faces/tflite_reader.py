"""A reader of TFLite model files: the few schema fields a plain float network needs, no dependency.

A ``.tflite`` file is a FlatBuffer of TensorFlow's ``lite/schema/schema.fbs``. This module decodes the wire
format directly (as :mod:`export3d.data.landmarker` decodes its protobuf), and only these tables:

- ``Model``: operator_codes (1), subgraphs (2), buffers (4), metadata (6);
- ``OperatorCode``: deprecated_builtin_code (0, int8), builtin_code (3, int32); the code is the larger of the two;
- ``SubGraph``: tensors (0), inputs (1), outputs (2), operators (3);
- ``Tensor``: shape (0), type (1), buffer (2), name (3);
- ``Operator``: opcode_index (0), inputs (1), outputs (2), builtin_options_type (3), builtin_options (4);
- ``Buffer``: data (0), or offset (1) + size (2) into the file for models past 2 GB;
- the options tables of :data:`OPTIONS` (field number, name, type and default of each).

FlatBuffer layout, as used here: a table at position ``t`` starts with an int32 ``s``; its vtable sits at
``t - s`` and holds uint16s: the vtable's size, the table's size, then one offset per field (0 = absent, the
field takes its schema default). A reference field (table, vector, string) holds a uint32 offset relative to
its own position; a vector or string there starts with a uint32 length. Everything is little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

# BuiltinOperator values (schema.fbs) of the ops the face models use, and a few neighbours for messages
BUILTIN_OPS = {
    0: "ADD", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED",
    14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 22: "RESHAPE", 34: "PAD", 39: "TRANSPOSE", 40: "MEAN",
    41: "SUB", 42: "DIV", 45: "STRIDED_SLICE", 54: "PRELU", 59: "NEG", 74: "SUM", 75: "SQRT", 76: "RSQRT",
    99: "SQUARED_DIFFERENCE",
}  # fmt: skip
# TensorType values -> numpy dtypes (the types a float model's tensors have)
TENSOR_TYPES = {0: "<f4", 1: "<f2", 2: "<i4", 3: "u1", 4: "<i8", 6: "?", 7: "<i2", 9: "i1", 10: "<f8"}
# Options tables: op -> (field number, name, struct format, default). Padding: SAME = 0, VALID = 1.
# ActivationFunctionType: NONE = 0, RELU = 1, RELU_N1_TO_1 = 2, RELU6 = 3, TANH = 4.
_CONV = ((0, "padding", "b", 0), (1, "stride_w", "i", 0), (2, "stride_h", "i", 0), (3, "activation", "b", 0),
         (4, "dilation_w", "i", 1), (5, "dilation_h", "i", 1))  # fmt: skip
OPTIONS = {
    "CONV_2D": _CONV,
    "DEPTHWISE_CONV_2D": ((0, "padding", "b", 0), (1, "stride_w", "i", 0), (2, "stride_h", "i", 0),
                          (3, "depth_multiplier", "i", 0), (4, "activation", "b", 0), (5, "dilation_w", "i", 1),
                          (6, "dilation_h", "i", 1)),
    "MAX_POOL_2D": ((0, "padding", "b", 0), (1, "stride_w", "i", 0), (2, "stride_h", "i", 0),
                    (3, "filter_w", "i", 0), (4, "filter_h", "i", 0), (5, "activation", "b", 0)),
    "ADD": ((0, "activation", "b", 0),),
    "SUB": ((0, "activation", "b", 0),),
    "MUL": ((0, "activation", "b", 0),),
    "DIV": ((0, "activation", "b", 0),),
    "CONCATENATION": ((0, "axis", "i", 0), (1, "activation", "b", 0)),
    "MEAN": ((0, "keep_dims", "?", False),),
    "SUM": ((0, "keep_dims", "?", False),),
    "STRIDED_SLICE": ((0, "begin_mask", "i", 0), (1, "end_mask", "i", 0), (2, "ellipsis_mask", "i", 0),
                      (3, "new_axis_mask", "i", 0), (4, "shrink_axis_mask", "i", 0), (5, "offset", "?", False)),
}  # fmt: skip


class TFLiteFormatError(ValueError):
    """The file is not a TFLite model this reader understands; the message names the file and the field."""


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype string, e.g. "<f4"
    buffer: int  # index into Graph.buffers; buffer 0 is the empty sentinel


@dataclass(frozen=True)
class Op:
    index: int  # position in the subgraph's execution order
    kind: str  # "CONV_2D", ...; "BUILTIN_<code>" for an op outside BUILTIN_OPS
    inputs: tuple[int, ...]  # tensor indices, -1 = an omitted optional input
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)  # the OPTIONS fields of this kind, defaults filled in


@dataclass(frozen=True)
class Graph:
    """The first subgraph of a TFLite model, with its constant buffers and the model's metadata buffers."""

    source: str  # where it was read from, for error messages
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    buffers: tuple[bytes, ...]
    metadata: dict[str, bytes]  # Model.metadata: name -> its buffer's bytes

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.source}: no tensor named {name!r}")

    @cached_property
    def _producers(self) -> dict[int, Op]:
        return {out: op for op in self.ops for out in op.outputs}

    def producer(self, index: int) -> Op | None:
        """The op whose output is tensor ``index`` (None for a graph input or a stored constant)."""
        return self._producers.get(index)

    def constant(self, index: int) -> np.ndarray | None:
        """The value of a constant tensor as float32 (or its integer type), through a DEQUANTIZE of fp16 weights;
        None when the tensor is computed from the graph's input."""
        t = self.tensors[index]
        data = self.buffers[t.buffer] if t.buffer < len(self.buffers) else b""
        if data:
            value = np.frombuffer(data, dtype=t.dtype).reshape(t.shape)
            return value.astype(np.float32) if value.dtype.kind == "f" else value.copy()
        op = self.producer(index)
        if op is not None and op.kind == "DEQUANTIZE":
            return self.constant(op.inputs[0])
        return None

    def compute_ops(self) -> list[Op]:
        """The ops that compute on the input: every op but the DEQUANTIZE of a stored constant."""
        return [op for op in self.ops if not (op.kind == "DEQUANTIZE" and self.constant(op.inputs[0]) is not None)]


# ----------------------------------------------------------------------------------------------- wire format
class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data, self.source = data, source

    def _u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.data, pos)[0]

    def field(self, table: int, number: int) -> int | None:
        """Absolute position of field ``number`` of the table at ``table``, or None when absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * number
        if slot + 2 > size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def scalar(self, table: int, number: int, fmt: str, default):
        pos = self.field(table, number)
        return default if pos is None else struct.unpack_from("<" + fmt, self.data, pos)[0]

    def ref(self, table: int, number: int) -> int | None:
        """Absolute position a reference field points to (a table, or a vector's length word)."""
        pos = self.field(table, number)
        return None if pos is None else pos + self._u32(pos)

    def tables(self, table: int, number: int) -> list[int]:
        vec = self.ref(table, number)
        if vec is None:
            return []
        return [vec + 4 + 4 * i + self._u32(vec + 4 + 4 * i) for i in range(self._u32(vec))]

    def ints(self, table: int, number: int, fmt: str = "i") -> tuple[int, ...]:
        vec = self.ref(table, number)
        if vec is None:
            return ()
        return struct.unpack_from(f"<{self._u32(vec)}{fmt}", self.data, vec + 4)

    def raw(self, table: int, number: int) -> bytes:
        vec = self.ref(table, number)
        return b"" if vec is None else self.data[vec + 4:vec + 4 + self._u32(vec)]

    def string(self, table: int, number: int) -> str:
        return self.raw(table, number).decode("utf-8", errors="replace")


def _opcode(r: _Reader, table: int) -> str:
    code = max(r.scalar(table, 0, "b", 0), r.scalar(table, 3, "i", 0))
    return BUILTIN_OPS.get(code, f"BUILTIN_{code}")


def _buffer(r: _Reader, table: int) -> bytes:
    offset, size = r.scalar(table, 1, "Q", 0), r.scalar(table, 2, "Q", 0)
    if offset > 1:  # stored after the FlatBuffer (models past 2 GB); offset 1 marks an empty placeholder
        return r.data[offset:offset + size]
    return r.raw(table, 0)


def _tensor(r: _Reader, table: int, index: int) -> Tensor:
    code = r.scalar(table, 1, "b", 0)
    if code not in TENSOR_TYPES:
        raise TFLiteFormatError(f"{r.source}: tensor {index} has TensorType {code}, which this reader does not know")
    shape = tuple(int(s) for s in r.ints(table, 0))
    return Tensor(index, r.string(table, 3), shape, TENSOR_TYPES[code], r.scalar(table, 2, "I", 0))


def _op(r: _Reader, table: int, index: int, kinds: list[str]) -> Op:
    kind = kinds[r.scalar(table, 0, "I", 0)]
    options = {}
    spec = OPTIONS.get(kind, ())
    body = r.ref(table, 4) if spec else None
    for number, name, fmt, default in spec:
        options[name] = default if body is None else r.scalar(body, number, fmt, default)
    return Op(index, kind, tuple(r.ints(table, 1)), tuple(r.ints(table, 2)), options)


def read_tflite(data: bytes, source: str = "<bytes>") -> Graph:
    """Decode a ``.tflite`` model (its first subgraph). ``source`` names it in errors."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteFormatError(f"{source}: not a TFLite model (expected the file identifier 'TFL3' at byte 4, "
                                f"got {data[4:8]!r})")
    r = _Reader(data, source)
    model = r._u32(0)
    subgraphs = r.tables(model, 2)
    if not subgraphs:
        raise TFLiteFormatError(f"{source}: the model has no subgraph")
    sub = subgraphs[0]
    kinds = [_opcode(r, t) for t in r.tables(model, 1)]
    tensors = tuple(_tensor(r, t, i) for i, t in enumerate(r.tables(sub, 0)))
    ops = tuple(_op(r, t, i, kinds) for i, t in enumerate(r.tables(sub, 3)))
    buffers = tuple(_buffer(r, t) for t in r.tables(model, 4))
    metadata = {r.string(t, 0): buffers[r.scalar(t, 1, "I", 0)] for t in r.tables(model, 6)}
    return Graph(source, tensors, ops, tuple(r.ints(sub, 1)), tuple(r.ints(sub, 2)), buffers, metadata)


def read_tflite_file(path: str | Path) -> Graph:
    return read_tflite(Path(path).read_bytes(), str(path))


# ----------------------------------------------------------------------------------------------- model metadata
@dataclass(frozen=True)
class TensorInfo:
    """What the TFLite Support metadata (``metadata_schema.fbs``, buffer "TFLITE_METADATA") says of a tensor."""

    name: str
    description: str
    mean: tuple[float, ...] = ()  # NormalizationOptions: the model reads (value - mean) / std
    std: tuple[float, ...] = ()


def tensor_infos(graph: Graph) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The metadata of the first subgraph's inputs and outputs, ([], []) when the model has none.

    Fields read: ModelMetadata.subgraph_metadata (3); SubGraphMetadata.input_tensor_metadata (2),
    output_tensor_metadata (3); TensorMetadata.name (0), description (1), process_units (4);
    ProcessUnit.options_type (0; NormalizationOptions = 1), options (1); NormalizationOptions.mean (0), std (1).
    """
    data = graph.metadata.get("TFLITE_METADATA")
    if not data:
        return [], []
    if data[4:8] != b"M001":
        raise TFLiteFormatError(f"{graph.source}: TFLITE_METADATA lacks the file identifier 'M001'")
    r = _Reader(data, graph.source)
    subgraphs = r.tables(r._u32(0), 3)
    if not subgraphs:
        return [], []

    def info(table: int) -> TensorInfo:
        mean: tuple[float, ...] = ()
        std: tuple[float, ...] = ()
        for unit in r.tables(table, 4):
            options = r.ref(unit, 1)
            if r.scalar(unit, 0, "B", 0) == 1 and options is not None:
                mean, std = r.ints(options, 0, "f"), r.ints(options, 1, "f")
        return TensorInfo(r.string(table, 0), r.string(table, 1), tuple(mean), tuple(std))

    return [info(t) for t in r.tables(subgraphs[0], 2)], [info(t) for t in r.tables(subgraphs[0], 3)]
