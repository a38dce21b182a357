"""The one door to the wire: conversions between generated protobuf messages and numpy / domain objects.

Nothing else in splitdnn builds or reads a generated message field by field. Builders (``build_*``)
turn arrays and records into messages; parsers (``parse_*``) validate a received message completely
and return frozen records, raising only :class:`~splitdnn.errors.WireError` (malformed or inconsistent
message) or :class:`~splitdnn.errors.CodecError` (a bad codec frame).

Tensors follow the Open Inference Protocol v2: a datatype name, a shape, and the elements either as
``raw_input_contents`` / ``raw_output_contents`` bytes (row major, little endian, what splitdnn sends)
or as the typed ``contents`` fields that stock clients may use. A split request may carry a boundary
tensor as a codec frame instead: datatype ``UINT8``, shape ``[nbytes]``, raw bytes, and its name
listed in the ``splitdnn.framed`` request parameter.

Every decode is bounded before anything is allocated (DESIGN section 6): rank <= 8, each dimension
<= 2**32 - 1, element count and byte length compared in Python integers, and the total decoded size
of one message (frames included) capped by ``max_decoded_bytes``. Arrays returned by the parsers may
be read-only views of the message's bytes; copy before writing to them.

bfloat16 has no numpy dtype without ml_dtypes, so BF16 tensors are carried as uint16 bit patterns
and their names listed in the record's ``bfloat16`` set (an ml_dtypes ``bfloat16`` array is also
accepted when sending).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitdnn import codec
from splitdnn.errors import ProfileError, WireError
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._proto import splitdnn_pb2 as sd_pb
from splitdnn.schema import Profile, profile_from_json, profile_to_json

__all__ = [
    "DATATYPES",
    "MAX_DIM",
    "MAX_RANK",
    "PARAM_BATCH_SIZE",
    "PARAM_COMPUTE_MS",
    "PARAM_DECODE_MS",
    "PARAM_FINGERPRINT",
    "PARAM_FRAMED",
    "PARAM_QUEUE_MS",
    "InferRequestData",
    "InferResponseData",
    "ModelInfoData",
    "TensorSpec",
    "build_infer_request",
    "build_infer_response",
    "build_model_info",
    "build_model_info_request",
    "build_model_metadata",
    "build_model_ready",
    "build_server_live",
    "build_server_metadata",
    "build_server_ready",
    "datatype_of",
    "parse_infer_request",
    "parse_infer_response",
    "parse_model_info",
    "parse_model_metadata",
    "param_ms",
]

PARAM_FINGERPRINT = "splitdnn.fingerprint"  # string: fingerprint of the traced model the client split
PARAM_FRAMED = "splitdnn.framed"  # string: comma-separated names of inputs that are codec frames
PARAM_QUEUE_MS = "splitdnn.queue_ms"  # double: time the request waited for a batch slot, ms
PARAM_COMPUTE_MS = "splitdnn.compute_ms"  # double: time running the model (tail) on its batch, ms
PARAM_DECODE_MS = "splitdnn.decode_ms"  # double: time validating and decoding the request, ms
PARAM_BATCH_SIZE = "splitdnn.batch_size"  # int64: number of requests in the batch this one ran in

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
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
_SHOW = 60  # characters of a client-chosen string quoted in an error message

ParamValue = str | int | float | bool


# --------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class InferRequestData:
    """A validated ModelInfer request: named input arrays, frames already decoded."""

    model_name: str
    model_version: str
    request_id: str
    inputs: dict[str, np.ndarray]  # by input name (model input or boundary node), request order
    framed: frozenset[str]  # inputs that arrived as codec frames
    fingerprint: str | None  # the splitdnn.fingerprint parameter, if sent
    parameters: dict[str, ParamValue]  # every request parameter, splitdnn.* included
    wire_bytes: int  # serialized size of the request message
    bfloat16: frozenset[str] = frozenset()  # inputs holding bfloat16 bit patterns (uint16 arrays)
    requested_outputs: tuple[str, ...] = ()  # output names the client asked for; () = all


@dataclass(frozen=True)
class InferResponseData:
    """A validated ModelInfer response: named output arrays and the server's parameters."""

    model_name: str
    request_id: str
    outputs: dict[str, np.ndarray]  # by output name ("output", or "output_0", "output_1", ...)
    parameters: dict[str, ParamValue]  # splitdnn.queue_ms, splitdnn.compute_ms, ...
    bfloat16: frozenset[str] = frozenset()  # outputs holding bfloat16 bit patterns (uint16 arrays)
    model_version: str = ""
    wire_bytes: int = 0  # serialized size of the response message


@dataclass(frozen=True)
class ModelInfoData:
    """What splitdnn.v1 GetModelInfo says about one served model."""

    name: str
    fingerprint: str
    profile: Profile | None  # the server's own profile of the model, if it has one
    inputs: tuple[str, ...] = ()  # placeholder node names, graph order
    codecs: tuple[str, ...] = ()  # codec names the server decodes
    max_message_bytes: int = 0  # 0: not stated
    max_decoded_bytes: int = 0  # 0: not stated
    max_batch_size: int = 1


@dataclass(frozen=True)
class TensorSpec:
    """A tensor in v2 model metadata; -1 marks a dimension of variable size (the batch)."""

    name: str
    datatype: str  # v2 name, e.g. "FP32"
    shape: tuple[int, ...]


# --------------------------------------------------------------------------------------------------
# small helpers


def _show(text: str) -> str:
    """A client-chosen string, quoted and cut short for an error message."""
    return repr(text if len(text) <= _SHOW else text[:_SHOW] + "...")


def datatype_of(array: np.ndarray, *, bfloat16: bool = False) -> str:
    """The v2 datatype name of ``array`` (``bfloat16=True``: a uint16 array of bfloat16 bits)."""
    dt = array.dtype
    if bfloat16 or dt.name == "bfloat16":
        if dt.itemsize != 2 or (bfloat16 and dt.kind != "u"):
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


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """Row-major little-endian bytes of ``array`` as ``datatype``."""
    target = DATATYPES[datatype]
    if datatype == "BF16":
        arr = np.ascontiguousarray(array)
        return (arr.view("<u2") if arr.dtype.kind != "u" else arr.astype("<u2", copy=False)).tobytes()
    return np.ascontiguousarray(array, dtype=target).tobytes()


def _set_param(msg: Any, key: str, value: ParamValue) -> None:
    """Store ``value`` in the InferParameter ``msg`` under the matching oneof field."""
    if not isinstance(key, str) or not key:
        raise WireError(f"parameter names must be non-empty strings, found {key!r}")
    if isinstance(value, bool):
        msg.bool_param = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            msg.int64_param = value
        elif 0 <= value <= _UINT64_MAX:
            msg.uint64_param = value
        else:
            raise WireError(f"parameter {key!r} = {value} does not fit a 64-bit integer")
    elif isinstance(value, float):
        msg.double_param = value
    elif isinstance(value, str):
        msg.string_param = value
    else:
        raise WireError(
            f"parameter {key!r} has type {type(value).__name__}; expected str, int, float or bool"
        )


def _params_from(proto_map: Any, where: str) -> dict[str, ParamValue]:
    out: dict[str, ParamValue] = {}
    for key, p in proto_map.items():
        choice = p.WhichOneof("parameter_choice")
        if choice is None:
            raise WireError(f"{where} parameter {_show(key)} has no value; set one of its *_param fields")
        out[key] = getattr(p, choice)
    return out


def _check_shape(shape: Sequence[int], name: str) -> tuple[tuple[int, ...], int]:
    """Validated shape and its element count (Python ints: no overflow)."""
    if len(shape) > MAX_RANK:
        raise WireError(
            f"tensor {_show(name)} has rank {len(shape)}; the maximum is {MAX_RANK}; send fewer dimensions"
        )
    n = 1
    for i, d in enumerate(shape):
        if d < 0 or d > MAX_DIM:
            raise WireError(
                f"tensor {_show(name)} has dimension {i} = {d}; expected 0..{MAX_DIM} (-1 is only "
                f"for metadata, a request states the real size)"
            )
        n *= d
    return tuple(int(d) for d in shape), n


class _Budget:
    """Bytes one message may still decode to; every tensor draws from it before it is allocated."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise WireError(f"max_decoded_bytes must be an integer >= 0, found {limit!r}")
        self.limit, self.left = limit, limit

    def take(self, nbytes: int, name: str) -> None:
        if nbytes > self.left:
            raise WireError(
                f"tensor {_show(name)} decodes to {nbytes} bytes; the message may decode to at most "
                f"{self.limit} bytes in all ({self.left} left); send a smaller tensor or raise "
                f"max_decoded_bytes"
            )
        self.left -= nbytes


# --------------------------------------------------------------------------------------------------
# tensors


def _tensors_from_proto(
    tensors: Sequence[Any],
    raw: Sequence[bytes],
    *,
    budget: _Budget,
    framed: Collection[str],
    where: str,
) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """Decode v2 tensors (raw or typed contents; frames for ``framed`` names) into arrays."""
    if raw and len(raw) != len(tensors):
        raise WireError(
            f"{where} has {len(tensors)} tensor(s) but {len(raw)} raw content entries; expected one raw "
            f"entry per tensor, in order, or none (typed contents)"
        )
    unknown = set(framed) - {t.name for t in tensors}
    if unknown:
        raise WireError(
            f"parameter {PARAM_FRAMED} lists {_show(', '.join(sorted(unknown)))}, which the message "
            f"has no tensor for; list only names of framed inputs"
        )
    out: dict[str, np.ndarray] = {}
    bf16: set[str] = set()
    for i, t in enumerate(tensors):
        name = t.name
        if not name:
            raise WireError(f"{where} tensor {i} has an empty name; name every tensor")
        if name in out:
            raise WireError(f"{where} names tensor {_show(name)} twice; each tensor name must be unique")
        has_contents = t.HasField("contents")
        if raw and has_contents:
            raise WireError(
                f"{where} tensor {_show(name)} has typed contents while the message uses raw contents; "
                f"use one or the other for all tensors"
            )
        shape, n = _check_shape(t.shape, name)
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
                f"{where} tensor {_show(name)} has datatype {_show(t.datatype)}; expected one of "
                f"{', '.join(DATATYPES)}"
            )
        nbytes = n * dtype.itemsize
        if raw:
            data = raw[i]
            if len(data) != nbytes:
                raise WireError(
                    f"{where} tensor {_show(name)} is {t.datatype}{list(shape)}: expected {nbytes} raw "
                    f"bytes, found {len(data)}; send exactly the elements of the shape, row major"
                )
            budget.take(nbytes, name)
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            arr = _from_contents(t, shape, n, dtype, has_contents, budget, where)
        if t.datatype == "BF16":
            bf16.add(name)
        out[name] = arr
    return out, frozenset(bf16)


def _decode_frame(
    datatype: str, shape: tuple[int, ...], data: bytes | None, name: str, budget: _Budget, where: str
) -> tuple[np.ndarray, bool]:
    """Decode one framed tensor; also says whether it holds bfloat16 bit patterns."""
    if datatype != "UINT8" or len(shape) != 1:
        raise WireError(
            f"{where} tensor {_show(name)} is listed in {PARAM_FRAMED} but is {_show(datatype)}"
            f"{list(shape)}; a framed tensor is UINT8 of shape [frame bytes]"
        )
    if data is None:
        raise WireError(
            f"{where} tensor {_show(name)} is a codec frame but the message has no raw contents; "
            f"frames travel in raw_input_contents"
        )
    if len(data) != shape[0]:
        raise WireError(
            f"{where} frame {_show(name)} declares {shape[0]} bytes but carries {len(data)}; the shape "
            f"of a framed tensor is [len(frame)]"
        )
    info = codec.describe(data, max_decoded_bytes=budget.limit)  # header only: nothing decoded yet
    budget.take(info.decoded_nbytes, name)
    return codec.decode(data, max_decoded_bytes=info.decoded_nbytes), info.dtype == "bfloat16"


def _from_contents(
    t: Any, shape: tuple[int, ...], n: int, dtype: np.dtype, has: bool, budget: _Budget, where: str
) -> np.ndarray:
    field_name = _CONTENTS_FIELD.get(t.datatype)
    if field_name is None:
        raise WireError(
            f"{where} tensor {_show(t.name)} is {t.datatype}, which v2 carries only as raw contents; "
            f"send it in raw_input_contents"
        )
    values = getattr(t.contents, field_name) if has else ()
    if len(values) != n:
        raise WireError(
            f"{where} tensor {_show(t.name)} is {t.datatype}{list(shape)}: expected {n} value(s) in "
            f"contents.{field_name}, found {len(values)}"
        )
    for other, _desc in t.contents.ListFields() if has else ():
        if other.name != field_name:
            raise WireError(
                f"{where} tensor {_show(t.name)} is {t.datatype} but sets contents.{other.name}; use "
                f"contents.{field_name}"
            )
    budget.take(n * dtype.itemsize, t.name)
    if dtype.kind in "iu" and n:
        # the proto field's own width (int32, int64, uint32): every value fits, then check the range
        wide = np.asarray(values, dtype=_FIELD_DTYPE[field_name])
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise WireError(
                f"{where} tensor {_show(t.name)}: values {int(wide.min())}..{int(wide.max())} do not fit "
                f"{t.datatype} ({info.min}..{info.max})"
            )
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def _add_tensors(
    msg: Any, tensor_type: Any, raw: Any, arrays: Mapping[str, np.ndarray], bfloat16: Collection[str]
) -> None:
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise WireError(f"tensor {_show(str(name))} must be a numpy array, found {type(array).__name__}")
        datatype = datatype_of(array, bfloat16=name in bfloat16)
        t = tensor_type(name=name, datatype=datatype, shape=list(array.shape))
        msg.append(t)
        raw.append(_raw_bytes(array, datatype))


# --------------------------------------------------------------------------------------------------
# ModelInfer


def build_infer_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray | bytes],
    *,
    fingerprint: str | None = None,
    request_id: str = "",
    parameters: Mapping[str, ParamValue] | None = None,
    bfloat16: Collection[str] = (),
    model_version: str = "",
) -> v2_pb.ModelInferRequest:
    """A ModelInfer request: arrays as their v2 datatype and shape; ``bytes`` as a codec frame.

    A frame is sent as ``UINT8 [len(frame)]`` and listed in ``splitdnn.framed``; ``fingerprint``
    goes in ``splitdnn.fingerprint``. ``bfloat16`` names uint16 arrays holding bfloat16 bits.
    """
    msg = v2_pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    framed: list[str] = []
    for name, value in inputs.items():
        if not isinstance(name, str) or not name:
            raise WireError(f"input names must be non-empty strings, found {name!r}")
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            msg.inputs.append(
                v2_pb.ModelInferRequest.InferInputTensor(name=name, datatype="UINT8", shape=[len(data)])
            )
            msg.raw_input_contents.append(data)
            framed.append(name)
        else:
            _add_tensors(
                msg.inputs, v2_pb.ModelInferRequest.InferInputTensor, msg.raw_input_contents,
                {name: value}, bfloat16,
            )  # fmt: skip
    for key, param in (parameters or {}).items():
        if key in (PARAM_FINGERPRINT, PARAM_FRAMED):
            raise WireError(f"parameter {key!r} is set by build_infer_request itself; pass it as an argument")
        _set_param(msg.parameters[key], key, param)
    if fingerprint is not None:
        msg.parameters[PARAM_FINGERPRINT].string_param = fingerprint
    if framed:
        if any("," in n for n in framed):
            raise WireError(f"framed input names cannot contain ',', found {framed}")
        msg.parameters[PARAM_FRAMED].string_param = ",".join(framed)
    return msg


def parse_infer_request(msg: v2_pb.ModelInferRequest, *, max_decoded_bytes: int) -> InferRequestData:
    """Validate a ModelInfer request and decode its inputs (frames included) within the byte budget."""
    if not isinstance(msg, v2_pb.ModelInferRequest):
        raise WireError(f"expected an inference.ModelInferRequest, found {type(msg).__name__}")
    budget = _Budget(max_decoded_bytes)
    params = _params_from(msg.parameters, "request")
    fingerprint = params.get(PARAM_FINGERPRINT)
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise WireError(
            f"parameter {PARAM_FINGERPRINT} must be a string_param, found {type(fingerprint).__name__}"
        )
    framed_param = params.get(PARAM_FRAMED, "")
    if not isinstance(framed_param, str):
        raise WireError(
            f"parameter {PARAM_FRAMED} must be a string_param, found {type(framed_param).__name__}"
        )
    framed = frozenset(n for n in framed_param.split(",") if n)
    if not msg.inputs:
        raise WireError("the request has no inputs; send the model input(s) or the boundary tensors of a cut")
    inputs, bf16 = _tensors_from_proto(
        msg.inputs, msg.raw_input_contents, budget=budget, framed=framed, where="request"
    )
    requested = tuple(o.name for o in msg.outputs)
    if len(set(requested)) != len(requested) or any(not o for o in requested):
        raise WireError(f"requested outputs must be distinct non-empty names, found {list(requested)[:8]}")
    return InferRequestData(
        model_name=msg.model_name,
        model_version=msg.model_version,
        request_id=msg.id,
        inputs=inputs,
        framed=framed,
        fingerprint=fingerprint,
        parameters=params,
        wire_bytes=msg.ByteSize(),
        bfloat16=bf16,
        requested_outputs=requested,
    )


def build_infer_response(
    model_name: str,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    *,
    parameters: Mapping[str, ParamValue] | None = None,
    bfloat16: Collection[str] = (),
    model_version: str = "",
) -> v2_pb.ModelInferResponse:
    """A ModelInfer response with raw output contents; ``bfloat16`` names uint16 arrays of bf16 bits."""
    msg = v2_pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    _add_tensors(
        msg.outputs, v2_pb.ModelInferResponse.InferOutputTensor, msg.raw_output_contents, outputs, bfloat16
    )
    for key, value in (parameters or {}).items():
        _set_param(msg.parameters[key], key, value)
    return msg


def parse_infer_response(msg: v2_pb.ModelInferResponse, *, max_decoded_bytes: int) -> InferResponseData:
    """Validate a ModelInfer response and decode its outputs within the byte budget."""
    if not isinstance(msg, v2_pb.ModelInferResponse):
        raise WireError(f"expected an inference.ModelInferResponse, found {type(msg).__name__}")
    budget = _Budget(max_decoded_bytes)
    params = _params_from(msg.parameters, "response")
    outputs, bf16 = _tensors_from_proto(
        msg.outputs, msg.raw_output_contents, budget=budget, framed=(), where="response"
    )
    if not outputs:
        raise WireError("the response has no outputs; expected one per model output")
    return InferResponseData(
        model_name=msg.model_name,
        request_id=msg.id,
        outputs=outputs,
        parameters=params,
        bfloat16=bf16,
        model_version=msg.model_version,
        wire_bytes=msg.ByteSize(),
    )


# --------------------------------------------------------------------------------------------------
# health and metadata (v2)


def build_server_live(live: bool) -> v2_pb.ServerLiveResponse:
    """v2 ServerLive answer."""
    return v2_pb.ServerLiveResponse(live=live)


def build_server_ready(ready: bool) -> v2_pb.ServerReadyResponse:
    """v2 ServerReady answer."""
    return v2_pb.ServerReadyResponse(ready=ready)


def build_model_ready(ready: bool) -> v2_pb.ModelReadyResponse:
    """v2 ModelReady answer."""
    return v2_pb.ModelReadyResponse(ready=ready)


def build_server_metadata(
    name: str, version: str, extensions: Sequence[str] = ()
) -> v2_pb.ServerMetadataResponse:
    """v2 ServerMetadata answer: server name, version, protocol extensions."""
    return v2_pb.ServerMetadataResponse(name=name, version=version, extensions=list(extensions))


def build_model_metadata(
    name: str,
    *,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    versions: Sequence[str] = (),
) -> v2_pb.ModelMetadataResponse:
    """v2 model metadata: the model's input and output tensors (-1 for the variable batch dimension)."""
    meta = v2_pb.ModelMetadataResponse.TensorMetadata
    return v2_pb.ModelMetadataResponse(
        name=name,
        versions=list(versions),
        platform=platform,
        inputs=[meta(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in inputs],
        outputs=[meta(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in outputs],
    )


def parse_model_metadata(
    msg: v2_pb.ModelMetadataResponse,
) -> tuple[str, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """``(name, inputs, outputs)`` of a v2 model metadata response."""
    if not isinstance(msg, v2_pb.ModelMetadataResponse):
        raise WireError(f"expected an inference.ModelMetadataResponse, found {type(msg).__name__}")

    def specs(items: Any) -> tuple[TensorSpec, ...]:
        out = []
        for t in items:
            if len(t.shape) > MAX_RANK or any(d < -1 for d in t.shape):
                raise WireError(f"metadata tensor {_show(t.name)} has an invalid shape {list(t.shape)[:12]}")
            out.append(TensorSpec(t.name, t.datatype, tuple(t.shape)))
        return tuple(out)

    return msg.name, specs(msg.inputs), specs(msg.outputs)


# --------------------------------------------------------------------------------------------------
# splitdnn.v1


def build_model_info_request(name: str) -> sd_pb.ModelInfoRequest:
    """A splitdnn.v1 GetModelInfo request for model ``name``."""
    return sd_pb.ModelInfoRequest(name=name)


def build_model_info(
    name: str,
    fingerprint: str,
    profile: Profile | None,
    *,
    inputs: Sequence[str] = (),
    codecs: Sequence[str] = (),
    max_message_bytes: int = 0,
    max_decoded_bytes: int = 0,
    max_batch_size: int = 1,
) -> sd_pb.ModelInfoResponse:
    """A GetModelInfo response; the profile travels as splitdnn.schema JSON (empty when none)."""
    return sd_pb.ModelInfoResponse(
        name=name,
        fingerprint=fingerprint,
        profile_json=profile_to_json(profile) if profile is not None else "",
        inputs=list(inputs),
        codecs=list(codecs),
        max_message_bytes=max_message_bytes,
        max_decoded_bytes=max_decoded_bytes,
        max_batch_size=max_batch_size,
    )


def parse_model_info(msg: sd_pb.ModelInfoResponse) -> ModelInfoData:
    """Validate a GetModelInfo response; its profile is parsed with splitdnn.schema's strict loader.

    A profile that does not load, or whose fingerprint is not the model's, is a WireError.
    """
    if not isinstance(msg, sd_pb.ModelInfoResponse):
        raise WireError(f"expected a splitdnn.v1.ModelInfoResponse, found {type(msg).__name__}")
    if not msg.fingerprint:
        raise WireError(
            f"the server sent no fingerprint for model {_show(msg.name)}; is it a splitdnn server?"
        )
    profile = None
    if msg.profile_json:
        try:
            profile = profile_from_json(msg.profile_json, source=f"the server's profile of {msg.name!r}")
        except ProfileError as exc:
            raise WireError(f"the server sent an invalid profile: {exc}") from exc
        if profile.fingerprint and profile.fingerprint != msg.fingerprint:
            raise WireError(
                f"the server's profile is of fingerprint {profile.fingerprint[:12]}, but it serves model "
                f"{msg.name!r} with fingerprint {msg.fingerprint[:12]}; the server was started with a "
                f"profile of another model"
            )
    for what, value in (
        ("max_message_bytes", msg.max_message_bytes),
        ("max_decoded_bytes", msg.max_decoded_bytes),
    ):
        if value < 0:
            raise WireError(f"the server sent {what}={value}; expected >= 0")
    return ModelInfoData(
        name=msg.name,
        fingerprint=msg.fingerprint,
        profile=profile,
        inputs=tuple(msg.inputs),
        codecs=tuple(msg.codecs),
        max_message_bytes=int(msg.max_message_bytes),
        max_decoded_bytes=int(msg.max_decoded_bytes),
        max_batch_size=max(1, int(msg.max_batch_size)),
    )


def param_ms(params: Mapping[str, ParamValue], key: str) -> float:
    """A timing parameter as a finite float >= 0 (0.0 when absent or invalid)."""
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    v = float(value)
    return v if math.isfinite(v) and v >= 0 else 0.0
