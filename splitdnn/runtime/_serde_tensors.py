"""Tensors on the wire (numpy, no torch): v2 datatypes, bounded decoding of tensors and codec frames.

The private half of :mod:`splitdnn.runtime.serde` (which re-exports ``DATATYPES``, ``MAX_RANK``,
``MAX_DIM`` and ``datatype_of``): the datatype tables and the code that turns the ``inputs`` /
``outputs`` of a v2 message into numpy arrays and back. Split out because it is the part with the
safety rules of DESIGN section 6, and it reads best on its own: every shape is checked (rank, each
dimension, element count in Python integers) and every tensor draws its decoded size from one
:class:`Budget` per message *before* anything is allocated, frames included (their header states
the decoded size; it is checked before decompressing).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np

from splitdnn import codec
from splitdnn.errors import WireError

__all__ = [
    "DATATYPES",
    "MAX_DIM",
    "MAX_RANK",
    "PARAM_FRAMED",
    "UNSUPPORTED_TENSOR_PARAMETERS",
    "Budget",
    "add_tensors",
    "check_shape",
    "datatype_of",
    "raw_view",
    "refuse_extensions",
    "show",
    "tensors_from_proto",
]

PARAM_FRAMED = "splitdnn.framed"  # string: comma-separated names of inputs that are codec frames

MAX_RANK = codec.MAX_RANK  # 8, as in codec frames
MAX_DIM = codec.MAX_DIM  # 2**32 - 1 per dimension

#: v2 datatype name -> little-endian numpy dtype of its raw bytes (BF16: uint16 bit patterns).
DATATYPES: Mapping[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
_NAME_BY_KIND = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}
# typed-contents field of InferTensorContents that may carry each datatype (FP16/BF16: raw only)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_FIELD_DTYPE = {"int_contents": np.int32, "int64_contents": np.int64, "uint_contents": np.uint32}
_SHOW = 60  # characters of a client-chosen string quoted in an error message


def show(text: str) -> str:
    """A client-chosen string, quoted and cut short for an error message."""
    return repr(text if len(text) <= _SHOW else text[:_SHOW] + "...")


def datatype_of(array: np.ndarray, *, bfloat16: bool = False) -> str:
    """The v2 datatype name of ``array`` (``bfloat16=True``: a uint16 array of bfloat16 bits)."""
    dt = array.dtype
    # as codec frames take them: bits, or an ml_dtypes array (kind "V"; numpy builds a dtype's name
    # in Python, a few microseconds, so only such a dtype is asked for it)
    if bfloat16 or (dt.kind == "V" and dt.name == "bfloat16"):
        if dt.itemsize != 2 or not (dt.kind == "u" or dt.name == "bfloat16"):
            raise WireError(
                f"BF16 tensors are uint16 bit patterns (or an ml_dtypes bfloat16 array), found {dt}"
            )
        return "BF16"
    name = _NAME_BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise WireError(
            f"cannot send dtype {dt}: expected one of bool, uint8, int8, int16, int32, int64, float16, "
            f"float32, float64 (or bfloat16); cast the array first"
        )
    return name


def raw_view(array: np.ndarray, datatype: str) -> memoryview:
    """Row-major little-endian bytes of ``array`` as ``datatype``: a view when ``array`` already is them.

    The view aliases ``array`` (no copy when it is C-contiguous in the wire's dtype): use it before
    anything writes to the array again.
    """
    # every tensor sent, here (memoryview refuses to cast an empty array of more than one dimension)
    if array.dtype is DATATYPES.get(datatype) and array.flags.c_contiguous and array.size:
        return memoryview(array).cast("B")  # type: ignore[arg-type]  # (ndarray exports a buffer)
    if datatype == "BF16":
        arr = np.ascontiguousarray(array)
        arr = arr.view("<u2") if arr.dtype.kind != "u" else arr.astype("<u2", copy=False)
    else:
        arr = np.ascontiguousarray(array, dtype=DATATYPES[datatype])
    return arr.reshape(-1).view(np.uint8).data  # (nbytes,) bytes


def check_shape(shape: Sequence[int], name: str) -> tuple[tuple[int, ...], int]:
    """Validated shape and its element count (Python ints: no overflow)."""
    if len(shape) > MAX_RANK:
        raise WireError(
            f"tensor {show(name)} has rank {len(shape)}; the maximum is {MAX_RANK}; send fewer dimensions"
        )
    n = extent = 1
    for i, d in enumerate(shape):
        if d < 0 or d > MAX_DIM:
            raise WireError(
                f"tensor {show(name)} has dimension {i} = {d}; expected 0..{MAX_DIM} (-1 is only "
                f"for metadata, a request states the real size)"
            )
        n *= d
        extent *= max(d, 1)
    if extent > codec.MAX_ELEMENTS:  # numpy cannot even describe an empty array this wide
        raise WireError(
            f"tensor {show(name)} has shape {list(shape)}: {extent} elements with its zero dimensions "
            f"counted as 1; the maximum is {codec.MAX_ELEMENTS}"
        )
    return tuple(int(d) for d in shape), n


class Budget:
    """Bytes one message may still decode to; every tensor draws from it before it is allocated.

    ``reserve`` (optional) is also called, with the bytes and the tensor's name, for each tensor that
    allocates new memory (a decoded frame, typed contents) -- not for raw contents, which are views
    of the message -- and may raise to refuse it (the tail server's in-flight memory budget).
    """

    def __init__(self, limit: int, reserve: Callable[[int, str], None] | None = None) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise WireError(f"max_decoded_bytes must be an integer >= 0, found {limit!r}")
        self.limit, self.left = limit, limit
        self._reserve = reserve

    def take(self, nbytes: int, name: str, *, allocates: bool = False) -> None:
        if nbytes > self.left:
            raise WireError(
                f"tensor {show(name)} decodes to {nbytes} bytes; the message may decode to at most "
                f"{self.limit} bytes in all ({self.left} left); send a smaller tensor or raise "
                f"max_decoded_bytes"
            )
        if allocates and self._reserve is not None:
            self._reserve(nbytes, name)
        self.left -= nbytes


#: tensor parameters of v2 extensions this server does not implement: refused, not ignored (a client
#: asking for top-k labels or a shared-memory output would silently get something else)
UNSUPPORTED_TENSOR_PARAMETERS = ("classification", "shared_memory_region", "shared_memory_byte_size",
                                 "shared_memory_offset")  # fmt: skip


def refuse_extensions(parameters: Collection[str], what: str) -> None:
    """WireError when ``parameters`` (a tensor's) ask for a v2 extension this server lacks."""
    if not parameters:  # the common case, on every tensor of every request
        return
    asked = [k for k in UNSUPPORTED_TENSOR_PARAMETERS if k in parameters]
    if asked:
        extension = "classification" if asked[0] == "classification" else "shared-memory"
        raise WireError(
            f"{what} sets parameter {show(asked[0])}: the {extension} extension, which this server does "
            f"not implement; send and receive the values in the message itself (raw or typed contents)"
        )


def tensors_from_proto(
    tensors: Sequence[Any],
    raw: Sequence[bytes | memoryview],
    *,
    budget: Budget,
    framed: Collection[str],
    where: str,
) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """Decode v2 tensors (raw or typed contents; frames for ``framed`` names) into arrays."""
    for i, t in enumerate(tensors):  # first: a shared-memory input has no raw entry, so counts mislead
        refuse_extensions(t.parameters, f"{where} tensor {show(t.name) if t.name else i}")
    if raw and len(raw) != len(tensors):
        raise WireError(
            f"{where} has {len(tensors)} tensor(s) but {len(raw)} raw content entries; expected one raw "
            f"entry per tensor, in order, or none (typed contents)"
        )
    unknown = set(framed) - {t.name for t in tensors}
    if unknown:
        raise WireError(
            f"parameter {PARAM_FRAMED} lists {show(', '.join(sorted(unknown)))}, which the message "
            f"has no tensor for; list only names of framed inputs"
        )
    out: dict[str, np.ndarray] = {}
    bf16: set[str] = set()
    for i, t in enumerate(tensors):
        name = t.name
        if not name:
            raise WireError(f"{where} tensor {i} has an empty name; name every tensor")
        if name in out:
            raise WireError(f"{where} names tensor {show(name)} twice; each tensor name must be unique")
        has_contents = t.HasField("contents")
        if raw and has_contents:
            raise WireError(
                f"{where} tensor {show(name)} has typed contents while the message uses raw contents; "
                f"use one or the other for all tensors"
            )
        shape, n = check_shape(t.shape, name)
        if name in framed:
            out[name], is_bf16 = _decode_frame(
                t.datatype, shape, raw[i] if raw else None, name, budget, where
            )
            if is_bf16:
                bf16.add(name)
            continue
        dtype = DATATYPES.get(t.datatype)
        if dtype is None:
            raise WireError(
                f"{where} tensor {show(name)} has datatype {show(t.datatype)}; expected one of "
                f"{', '.join(DATATYPES)}"
            )
        nbytes = n * dtype.itemsize
        if raw:
            data = raw[i]
            if len(data) != nbytes:
                raise WireError(
                    f"{where} tensor {show(name)} is {t.datatype}{list(shape)}: expected {nbytes} raw "
                    f"bytes, found {len(data)}; send exactly the elements of the shape, row major"
                )
            budget.take(nbytes, name)
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
            arr.flags.writeable = False  # a view of the message: whoever writes must copy first
            if dtype == np.bool_ and arr.size and int(arr.view(np.uint8).max()) > 1:
                raise WireError(
                    f"{where} tensor {show(name)} is BOOL but holds byte value "
                    f"{int(arr.view(np.uint8).max())}; BOOL raw contents are one byte per value, 0 or 1"
                )
        else:
            arr = _from_contents(t, shape, n, dtype, has_contents, budget, where)
        if t.datatype == "BF16":
            bf16.add(name)
        out[name] = arr
    return out, frozenset(bf16)


def _decode_frame(
    datatype: str,
    shape: tuple[int, ...],
    data: bytes | memoryview | None,
    name: str,
    budget: Budget,
    where: str,
) -> tuple[np.ndarray, bool]:
    """Decode one framed tensor; also says whether it holds bfloat16 bit patterns."""
    if datatype != "UINT8" or len(shape) != 1:
        raise WireError(
            f"{where} tensor {show(name)} is listed in {PARAM_FRAMED} but is {show(datatype)}"
            f"{list(shape)}; a framed tensor is UINT8 of shape [frame bytes]"
        )
    if data is None:
        raise WireError(
            f"{where} tensor {show(name)} is a codec frame but the message has no raw contents; "
            f"frames travel in raw_input_contents"
        )
    if len(data) != shape[0]:
        raise WireError(
            f"{where} frame {show(name)} declares {shape[0]} bytes but carries {len(data)}; the shape "
            f"of a framed tensor is [len(frame)]"
        )
    header: list[codec.FrameInfo] = []

    def book(info: codec.FrameInfo) -> None:  # the header read, nothing decoded yet
        budget.take(info.decoded_nbytes, name, allocates=True)
        header.append(info)

    array = codec.decode(data, max_decoded_bytes=budget.limit, reserve=book)
    return array, header[0].dtype == "bfloat16"


def _from_contents(
    t: Any, shape: tuple[int, ...], n: int, dtype: np.dtype, has: bool, budget: Budget, where: str
) -> np.ndarray:
    field_name = _CONTENTS_FIELD.get(t.datatype)
    if field_name is None:
        raise WireError(
            f"{where} tensor {show(t.name)} is {t.datatype}, which v2 carries only as raw contents; "
            f"send it in raw_input_contents"
        )
    for other, _desc in t.contents.ListFields() if has else ():  # first: the likelier mistake
        if other.name != field_name:
            raise WireError(
                f"{where} tensor {show(t.name)} is {t.datatype} but sets contents.{other.name}; use "
                f"contents.{field_name}"
            )
    values = getattr(t.contents, field_name) if has else ()
    if len(values) != n:
        raise WireError(
            f"{where} tensor {show(t.name)} is {t.datatype}{list(shape)}: expected {n} value(s) in "
            f"contents.{field_name}, found {len(values)}"
        )
    # narrow integers are read through the proto field's own width first (int8 values as int32)
    wide_itemsize = np.dtype(_FIELD_DTYPE[field_name]).itemsize if dtype.kind in "iu" else dtype.itemsize
    budget.take(n * max(dtype.itemsize, wide_itemsize), t.name, allocates=True)
    if dtype.kind in "iu" and n:
        # the proto field's own width (int32, int64, uint32): every value fits, then check the range;
        # fromiter: one value at a time, not a list of n Python objects (30x the array's bytes)
        wide = np.fromiter(values, dtype=_FIELD_DTYPE[field_name], count=n)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise WireError(
                f"{where} tensor {show(t.name)}: values {int(wide.min())}..{int(wide.max())} do not fit "
                f"{t.datatype} ({info.min}..{info.max})"
            )
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype=dtype, count=n).reshape(shape)


def add_tensors(
    msg: Any, tensor_type: Any, arrays: Mapping[str, np.ndarray], bfloat16: Collection[str]
) -> list[memoryview]:
    """Append a v2 tensor entry per array to ``msg``; returns each array's raw bytes (views, in order).

    The caller puts the views in the message's raw contents: appended to the repeated field (a copy),
    or written after the serialized message by :func:`splitdnn.runtime._wire.append_field`.
    """
    views = []
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise WireError(f"tensor {show(str(name))} must be a numpy array, found {type(array).__name__}")
        datatype = datatype_of(array, bfloat16=name in bfloat16)
        msg.append(tensor_type(name=name, datatype=datatype, shape=list(array.shape)))
        views.append(raw_view(array, datatype))
    return views
