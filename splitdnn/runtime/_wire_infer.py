"""ModelInfer on the wire: its records, parameters, and message conversions both ways (numpy, protobuf).

The ModelInfer half of :mod:`splitdnn.runtime.serde`, which re-exports every public name here (import
them from there). Two doors per direction: ``build_*`` / ``parse_*`` take and give generated messages
(for callers that hold a stock stub), ``encode_*`` / ``read_infer_request`` / ``decode_infer_response``
take and give serialized bytes, with the raw contents written after the protobuf-serialized small
fields and read back as views of the received bytes (:mod:`splitdnn.runtime._wire`): one copy of a
tensor per direction instead of protobuf's three, the same messages on the wire.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, ParamSpec, TypeVar

import numpy as np
from google.protobuf.message import DecodeError

from splitdnn.errors import WireError, first_line
from splitdnn.runtime import _wire
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._serde_tensors import (
    PARAM_FRAMED,
    Budget,
    add_tensors,
    refuse_extensions,
    show,
    tensors_from_proto,
)

__all__ = [
    "PARAM_BATCH_SIZE",
    "PARAM_COMPUTE_MS",
    "PARAM_DECODE_MS",
    "PARAM_FINGERPRINT",
    "PARAM_QUEUE_MS",
    "PARAM_PAD",
    "RAW_ALIGN",
    "PARAM_TAIL_BUILD_MS",
    "PARAM_WEIGHTS",
    "InferRequestData",
    "InferRequestWire",
    "InferResponseData",
    "ParamValue",
    "build_infer_request",
    "build_infer_response",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "encode_stream_error",
    "param_ms",
    "parse_infer_request",
    "parse_infer_response",
    "read_infer_request",
    "StreamAnswer",
    "stream_answer",
]

PARAM_FINGERPRINT = "splitdnn.fingerprint"  # string: fingerprint of the traced model the client split
PARAM_WEIGHTS = "splitdnn.weights"  # string: weights digest of the client's model (runtime._weights)
PARAM_QUEUE_MS = "splitdnn.queue_ms"  # double: time the request waited for a batch slot, ms
PARAM_COMPUTE_MS = "splitdnn.compute_ms"  # double: time running the model (tail) on its batch, ms
PARAM_DECODE_MS = "splitdnn.decode_ms"  # double: time validating and decoding the request, ms
PARAM_BATCH_SIZE = "splitdnn.batch_size"  # int64: number of requests in the batch this one ran in
PARAM_TAIL_BUILD_MS = "splitdnn.tail_build_ms"  # double: of decode_ms, building the cut's tail (when it did)
#: string of spaces, ignored: placed before a raw content so that its bytes start RAW_ALIGN-byte
#: aligned in the message (RequestEncoder), where the server's tail reads them without a copy
PARAM_PAD = "splitdnn.pad"
#: bytes a tensor's data must be aligned to for a tail to compute what the model computes locally:
#: MKL's sgemm (the AVX2 path) rounds differently for inputs that are not 16-byte aligned, so a view
#: of a message's bytes at an odd offset made a split's output differ from the local one in the last
#: bit (torch's own tensors are 64-byte aligned). The server copies a view that is not (_tail.copied);
#: splitdnn's client pads its requests so that none needs to be.
RAW_ALIGN = 16

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

ParamValue = str | int | float | bool
_P = ParamSpec("_P")
_R = TypeVar("_R")
_RAW_INPUT_FIELD = v2_pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number  # 7
_RAW_OUTPUT_FIELD = v2_pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number  # 6
_STREAM_FIELDS = v2_pb.ModelStreamInferResponse.DESCRIPTOR.fields_by_name
STREAM_ERROR_FIELD = _STREAM_FIELDS["error_message"].number  # 1
STREAM_RESPONSE_FIELD = _STREAM_FIELDS["infer_response"].number  # 2
MAX_TENSORS = 4096  # inputs, outputs (requested or answered) of one message
MAX_PARAMETERS = 1024  # parameters of one message
_REQUEST_FIELDS = v2_pb.ModelInferRequest.DESCRIPTOR.fields_by_name
_REQUEST_NAME, _RESPONSE_NAME = "inference.ModelInferRequest", "inference.ModelInferResponse"
_RESPONSE_FIELDS = v2_pb.ModelInferResponse.DESCRIPTOR.fields_by_name
#: entries per top-level field checked before protobuf parses a message (each entry it parses costs
#: a sub-message: 32 MiB of empty inputs took 5 GB and a minute); field number -> (name, limit)
_L = _wire.Limit
_PARAMETERS = _L("parameters", MAX_PARAMETERS)
#: inside one tensor: its shape (one packed entry, or one per dimension), parameters, and typed
#: contents, of which bytes_contents is the field whose entries cost a sub-object each
_TENSOR = {3: _L("shape", 64), 4: _PARAMETERS, 5: _L("contents", 1, {8: _L("bytes_contents", MAX_TENSORS)})}
_REQUEST_LIMITS = {
    _REQUEST_FIELDS["parameters"].number: _PARAMETERS,
    _REQUEST_FIELDS["inputs"].number: _L("inputs", MAX_TENSORS, _TENSOR),
    _REQUEST_FIELDS["outputs"].number: _L("outputs", MAX_TENSORS, {2: _PARAMETERS}),
}
_RESPONSE_LIMITS = {
    _RESPONSE_FIELDS["parameters"].number: _PARAMETERS,
    _RESPONSE_FIELDS["outputs"].number: _L("outputs", MAX_TENSORS, _TENSOR),
}
_MAX_FIELDS = 3 * MAX_TENSORS + MAX_PARAMETERS + 64  # top-level fields of any valid message, and more
_SCAN_FROM_BYTES = 1024  # a message part smaller than this holds at most 512 entries: not walked
#: parameters build_infer_request sets from its own arguments
_ARGUMENT_PARAMS = frozenset({PARAM_FINGERPRINT, PARAM_FRAMED, PARAM_WEIGHTS})

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
    weights: str | None = None  # the splitdnn.weights parameter (digest of the client's weights), if sent
    #: the checked header it was read by (``_wire_repeat.RequestDecoder``): the same object for every
    #: request whose small fields (all but the id) are the same bytes; None when not read through one
    header: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class InferRequestWire:
    """A received ModelInfer request: protobuf-parsed but for its raw contents, which stay views of
    the received bytes (:func:`read_infer_request`); :func:`parse_infer_request` validates it."""

    message: v2_pb.ModelInferRequest  # every field except raw_input_contents
    raw: list[memoryview]  # raw_input_contents, in order: read-only views of the received bytes
    nbytes: int  # serialized size of the whole request
    #: from RequestDecoder.read: the small fields but the id, as bytes (None: not the plain layout),
    #: the checked header they match (then ``message`` is that header's, its id another request's),
    #: and this request's id
    key: bytes | None = None
    checked: Any = None
    request_id: str = ""

    @property
    def model_name(self) -> str:
        if self.checked is not None:  # (read from its template: protobuf's fields are not free)
            return str(self.checked.template.model_name)
        return str(self.message.model_name)

    @property
    def model_version(self) -> str:
        if self.checked is not None:
            return str(self.checked.template.model_version)
        return str(self.message.model_version)

    @property
    def id(self) -> str:
        """The request's id (a repeat's ``message`` is its header's, with another request's id)."""
        return self.request_id if self.checked is not None else str(self.message.id)


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


# --------------------------------------------------------------------------------------------------
# parameters


def _unicode_text(build: Callable[_P, _R]) -> Callable[_P, _R]:
    """``build``, raising WireError for text protobuf cannot write (a lone surrogate: not UTF-8)."""

    @functools.wraps(build)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return build(*args, **kwargs)
        except UnicodeEncodeError as exc:
            raise not_unicode(exc) from exc

    return checked


def not_unicode(exc: UnicodeEncodeError) -> WireError:
    """The WireError for text that is not UTF-8 (a lone surrogate), which protobuf cannot write."""
    return WireError(
        f"a name, id or string parameter is not valid Unicode text ({exc.reason}: "
        f"{exc.object[exc.start : exc.end]!r}); send UTF-8 text"
    )


def _set_param(parameters: Any, key: str, value: ParamValue) -> None:
    """Store ``value`` in the map ``parameters`` under ``key``, in the matching oneof field."""
    if not isinstance(key, str) or not key:
        raise WireError(f"parameter names must be non-empty strings, found {key!r}")
    msg = parameters[key]
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
            raise WireError(f"{where} parameter {show(key)} has no value; set one of its *_param fields")
        out[key] = getattr(p, choice)
    return out


def _string_param(params: Mapping[str, ParamValue], key: str) -> str | None:
    """A ``splitdnn.*`` parameter that must be a string_param; None when absent."""
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise WireError(
            f"parameter {key} must be a string_param, found {type(value).__name__} {value!r:.40}; "
            f"send it as string_param"
        )
    return value


# --------------------------------------------------------------------------------------------------
# ModelInfer


@_unicode_text
def _infer_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray | bytes],
    fingerprint: str | None,
    request_id: str,
    parameters: Mapping[str, ParamValue] | None,
    bfloat16: Collection[str],
    model_version: str,
    weights: str | None,
) -> tuple[v2_pb.ModelInferRequest, list[memoryview]]:
    """The request without its raw contents, and those contents (views of ``inputs``, in order)."""
    msg = v2_pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    raw: list[memoryview] = []
    framed: list[str] = []
    for name, value in inputs.items():
        if not isinstance(name, str) or not name:
            raise WireError(f"input names must be non-empty strings, found {name!r}")
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = memoryview(value)
            data = data.cast("B") if data.c_contiguous else memoryview(data.tobytes())  # (nbytes,)
            msg.inputs.append(
                v2_pb.ModelInferRequest.InferInputTensor(name=name, datatype="UINT8", shape=[len(data)])
            )
            raw.append(data)
            framed.append(name)
        else:
            raw += add_tensors(msg.inputs, v2_pb.ModelInferRequest.InferInputTensor, {name: value}, bfloat16)
    for key, param in (parameters or {}).items():
        if key in _ARGUMENT_PARAMS:
            raise WireError(f"parameter {key!r} is set by build_infer_request itself; pass it as an argument")
        _set_param(msg.parameters, key, param)
    if fingerprint is not None:
        msg.parameters[PARAM_FINGERPRINT].string_param = fingerprint
    if weights is not None:
        msg.parameters[PARAM_WEIGHTS].string_param = weights
    if framed:
        if any("," in n for n in framed):
            raise WireError(f"framed input names cannot contain ',', found {framed}")
        msg.parameters[PARAM_FRAMED].string_param = ",".join(framed)
    return msg, raw


def build_infer_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray | bytes],
    *,
    fingerprint: str | None = None,
    request_id: str = "",
    parameters: Mapping[str, ParamValue] | None = None,
    bfloat16: Collection[str] = (),
    model_version: str = "",
    weights: str | None = None,
) -> v2_pb.ModelInferRequest:
    """A ModelInfer request: arrays as their v2 datatype and shape; ``bytes`` as a codec frame.

    A frame is sent as ``UINT8 [len(frame)]`` and listed in ``splitdnn.framed``; ``fingerprint``
    goes in ``splitdnn.fingerprint`` and ``weights`` (the weights digest) in ``splitdnn.weights``.
    ``bfloat16`` names uint16 arrays holding bfloat16 bits. :func:`encode_infer_request` gives the
    same request serialized, with one copy of the tensors instead of three.
    """
    msg, raw = _infer_request(
        model_name, inputs, fingerprint, request_id, parameters, bfloat16, model_version, weights
    )
    msg.raw_input_contents.extend(bytes(v) for v in raw)
    return msg


def encode_infer_request(
    model_name: str,
    inputs: Mapping[str, np.ndarray | bytes],
    *,
    fingerprint: str | None = None,
    request_id: str = "",
    parameters: Mapping[str, ParamValue] | None = None,
    bfloat16: Collection[str] = (),
    model_version: str = "",
    weights: str | None = None,
) -> bytes:
    """:func:`build_infer_request`, serialized: the small fields by protobuf, the tensors' bytes
    appended as ``raw_input_contents`` with one copy (send it on a bytes-level ModelInfer call)."""
    msg, raw = _infer_request(
        model_name, inputs, fingerprint, request_id, parameters, bfloat16, model_version, weights
    )
    return _wire.append_field(msg.SerializeToString(), _RAW_INPUT_FIELD, raw)


Split = tuple[bytes, list[memoryview]] | None  # _wire.split_field's answer: (rest, raw entries)


def split_raw(data: bytes | memoryview, field: int, what: str) -> Split:
    """``data``'s raw contents (bytes field ``field``) cut out by :func:`_wire.split_field`; WireError
    when ``data`` is neither ``bytes`` nor a view of ``bytes`` (:func:`is_bytes_view`)."""
    if not (isinstance(data, bytes) or is_bytes_view(data)):
        raise WireError(f"expected a serialized {what} as bytes, found {type(data).__name__}")
    return _wire.split_field(data, field, MAX_TENSORS)


def is_bytes_view(data: Any) -> bool:
    """Whether ``data`` is a plain view of (immutable) ``bytes``: what :func:`stream_answer` gives, and
    what a decoder may keep views of as of ``bytes`` themselves."""
    return (
        type(data) is memoryview
        and type(data.obj) is bytes
        and data.format == "B"
        and data.ndim == 1
        and data.c_contiguous
    )


def _read(
    data: bytes | memoryview,
    split: Split,
    message: Any,
    field: int,
    what: str,
    limits: Mapping[int, _wire.Limit],
) -> tuple[Any, list[Any]]:
    """``data`` parsed into ``message`` but for bytes field ``field``, returned apart (views when
    ``split``, :func:`split_raw`'s answer, has them)."""
    # what protobuf parses next: a few hundred bytes for splitdnn's own requests, too few entries to
    # matter (the counts are checked after parsing), so the walk is skipped on their path
    parsed = data if split is None else split[0]
    over = _wire.over_limit(parsed, limits, _MAX_FIELDS) if len(parsed) > _SCAN_FROM_BYTES else None
    if over is not None:
        where, limit = over
        entries = "fields in one message" if where.endswith("fields") else f"{where!r} entries"
        raise WireError(
            f"the {what} has more than {limit} {entries}; a message carries at most {MAX_TENSORS} "
            f"inputs and outputs and {MAX_PARAMETERS} parameters"
        )
    try:
        if split is None:  # not the plain layout: protobuf parses it all, as any v2 server would
            message.ParseFromString(data)
            name = message.DESCRIPTOR.fields_by_number[field].name
            raw: list[Any] = list(getattr(message, name))
            message.ClearField(name)
            return message, raw
        message.ParseFromString(split[0])
    except DecodeError as exc:
        raise WireError(f"the message is not a valid {what} ({len(data)} bytes): {exc}") from exc
    return message, split[1]


def read_infer_request(data: bytes) -> InferRequestWire:
    """A serialized ModelInfer request, parsed by protobuf but for its raw contents (views of ``data``).

    Accepts exactly the bytes protobuf accepts, with the same content; anything else is a WireError.
    """
    return request_from(data, split_raw(data, _RAW_INPUT_FIELD, _REQUEST_NAME))


def request_from(data: bytes, split: Split) -> InferRequestWire:
    """:func:`read_infer_request` of ``data`` already cut by :func:`split_raw`."""
    msg, raw = _read(data, split, v2_pb.ModelInferRequest(), _RAW_INPUT_FIELD, _REQUEST_NAME, _REQUEST_LIMITS)
    return InferRequestWire(msg, raw, len(data))


def parse_infer_request(
    msg: v2_pb.ModelInferRequest | InferRequestWire,
    *,
    max_decoded_bytes: int,
    reserve: Callable[[int, str], None] | None = None,
) -> InferRequestData:
    """Validate a ModelInfer request and decode its inputs (frames included) within the byte budget.

    ``reserve(nbytes, name)``, if given, is called before each tensor that allocates memory (a decoded
    frame, typed contents; raw contents stay views of the message) and may raise to refuse it.
    """
    raw: Sequence[bytes | memoryview]
    if isinstance(msg, InferRequestWire):
        raw, wire_bytes, msg = msg.raw, msg.nbytes, msg.message
    elif isinstance(msg, v2_pb.ModelInferRequest):
        raw, wire_bytes = msg.raw_input_contents, -1
    else:
        raise WireError(f"expected an inference.ModelInferRequest, found {type(msg).__name__}")
    _check_counts(msg, "request")
    budget = Budget(max_decoded_bytes, reserve)
    params = _params_from(msg.parameters, "request")
    fingerprint = _string_param(params, PARAM_FINGERPRINT)
    weights = _string_param(params, PARAM_WEIGHTS)
    framed_text = _string_param(params, PARAM_FRAMED) or ""
    if len(framed_text) > 4096 + sum(len(t.name) + 1 for t in msg.inputs):  # not millions of names
        raise WireError(
            f"parameter {PARAM_FRAMED} ({len(framed_text)} characters) is longer than the names of the "
            f"request's {len(msg.inputs)} input(s); list only names of framed inputs"
        )
    framed = frozenset(n for n in framed_text.split(",") if n)
    if not msg.inputs:
        raise WireError("the request has no inputs; send the model input(s) or the boundary tensors of a cut")
    requested = tuple(o.name for o in msg.outputs)
    if len(set(requested)) != len(requested) or any(not o for o in requested):  # before anything is decoded
        shown = ", ".join(show(o) for o in requested[:8]) + (", ..." if len(requested) > 8 else "")
        raise WireError(f"requested outputs must be distinct non-empty names, found [{shown}]")
    for o in msg.outputs:
        refuse_extensions(o.parameters, f"requested output {show(o.name)}")
    inputs, bf16 = tensors_from_proto(msg.inputs, raw, budget=budget, framed=framed, where="request")
    return InferRequestData(
        model_name=msg.model_name,
        model_version=msg.model_version,
        request_id=msg.id,
        inputs=inputs,
        framed=framed,
        fingerprint=fingerprint,
        parameters=params,
        wire_bytes=wire_bytes if wire_bytes >= 0 else msg.ByteSize(),
        bfloat16=bf16,
        requested_outputs=requested,
        weights=weights,
    )


@_unicode_text
def _infer_response(
    model_name: str,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, ParamValue] | None,
    bfloat16: Collection[str],
    model_version: str,
) -> tuple[v2_pb.ModelInferResponse, list[memoryview]]:
    msg = v2_pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    raw = add_tensors(msg.outputs, v2_pb.ModelInferResponse.InferOutputTensor, outputs, bfloat16)
    for key, value in (parameters or {}).items():
        _set_param(msg.parameters, key, value)
    return msg, raw


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
    msg, raw = _infer_response(model_name, request_id, outputs, parameters, bfloat16, model_version)
    msg.raw_output_contents.extend(bytes(v) for v in raw)
    return msg


def encode_infer_response(
    model_name: str,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    *,
    parameters: Mapping[str, ParamValue] | None = None,
    bfloat16: Collection[str] = (),
    model_version: str = "",
    stream: bool = False,
) -> bytes:
    """:func:`build_infer_response`, serialized, with one copy of the outputs (the final join);
    ``stream``: as a ModelStreamInferResponse holding it (no error), in the same join."""
    msg, raw = _infer_response(model_name, request_id, outputs, parameters, bfloat16, model_version)
    wrap = STREAM_RESPONSE_FIELD if stream else 0
    return _wire.append_field(msg.SerializeToString(), _RAW_OUTPUT_FIELD, raw, wrap=wrap)


def encode_stream_error(message: str, model_name: str = "", request_id: str = "") -> bytes:
    """A serialized ModelStreamInferResponse refusing one request of a stream: ``message`` as its
    error_message, and the request's model name and id (where the request was read that far) in its
    infer_response, so that a client with several requests in flight knows which one failed."""
    answer = v2_pb.ModelStreamInferResponse(error_message=message)
    answer.infer_response.model_name = model_name
    answer.infer_response.id = request_id
    return answer.SerializeToString()


class StreamAnswer(NamedTuple):
    """One ModelStreamInferResponse, cut by :func:`stream_answer`."""

    error: str  # its error_message: "" for an answer
    response: memoryview  # its infer_response, serialized: a view of the message (empty when absent)
    request_id: str  # of an error, the id of the request it refuses ("" when unknown); else ""


def stream_answer(data: bytes) -> StreamAnswer:
    """A serialized ModelStreamInferResponse cut in two: its error_message and its infer_response, a
    serialized ModelInferResponse viewed in ``data``, for :meth:`ResponseDecoder.decode` without a
    copy; of an error, also the id its infer_response names.

    Strict, as splitdnn's server and Triton write it: each of the two fields at most once, canonically
    encoded, nothing malformed; anything else is a WireError (fields of a later version are skipped).
    """
    if not isinstance(data, bytes):
        raise WireError(
            f"expected a serialized inference.ModelStreamInferResponse as bytes, found {type(data).__name__}"
        )
    spans = _wire.field_spans(data, (STREAM_ERROR_FIELD, STREAM_RESPONSE_FIELD), 3)
    numbers = [number for number, _, _ in spans or ()]
    if spans is None or numbers.count(STREAM_ERROR_FIELD) > 1 or numbers.count(STREAM_RESPONSE_FIELD) > 1:
        raise WireError(
            f"the stream's answer ({len(data)} bytes) is not a well-formed inference."
            f"ModelStreamInferResponse with each field at most once; the server is not a v2 server, or "
            f"the bytes were damaged on the way"
        )
    view = memoryview(data)
    error, response = "", view[0:0]
    for number, start, stop in spans:
        if number == STREAM_RESPONSE_FIELD:
            response = view[start:stop]
            continue
        try:
            error = str(view[start:stop], "utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(
                f"the stream answer's error_message is not UTF-8 ({first_line(exc)}); the bytes were "
                f"damaged on the way, or the server is not a v2 server"
            ) from exc
    if not error:
        if not numbers:  # neither field: no answer and no error
            raise WireError(
                "the stream's answer holds neither an error_message nor an infer_response; the server "
                "is not a v2 server, or the bytes were damaged on the way"
            )
        return StreamAnswer("", response, "")
    if len(response) > _MAX_ERROR_RESPONSE:  # an error's response carries a name and an id
        raise WireError(
            f"the stream's error answer holds a {len(response)}-byte response, more than the "
            f"{_MAX_ERROR_RESPONSE} bytes of a model name and a request id; the server is not a v2 server"
        )
    try:
        refused = v2_pb.ModelInferResponse.FromString(response)
    except DecodeError as exc:
        raise WireError(f"the stream's error answer holds a malformed response: {first_line(exc)}") from exc
    return StreamAnswer(error, response, refused.id)


_MAX_ERROR_RESPONSE = 64 << 10


def parse_infer_response(msg: v2_pb.ModelInferResponse, *, max_decoded_bytes: int) -> InferResponseData:
    """Validate a ModelInfer response and decode its outputs within the byte budget."""
    if not isinstance(msg, v2_pb.ModelInferResponse):
        raise WireError(f"expected an inference.ModelInferResponse, found {type(msg).__name__}")
    return _response_data(msg, msg.raw_output_contents, msg.ByteSize(), max_decoded_bytes)


def decode_infer_response(data: bytes | memoryview, *, max_decoded_bytes: int) -> InferResponseData:
    """:func:`parse_infer_response` of a serialized response (``bytes``, or a view of them such as
    :func:`stream_answer` gives); outputs are read-only views of ``data``."""
    split = split_raw(data, _RAW_OUTPUT_FIELD, _RESPONSE_NAME)
    return response_from(data, split, max_decoded_bytes=max_decoded_bytes)


def response_from(data: bytes | memoryview, split: Split, *, max_decoded_bytes: int) -> InferResponseData:
    """:func:`decode_infer_response` of ``data`` already cut by :func:`split_raw`."""
    msg, raw = _read(
        data, split, v2_pb.ModelInferResponse(), _RAW_OUTPUT_FIELD, _RESPONSE_NAME, _RESPONSE_LIMITS
    )
    return _response_data(msg, raw, len(data), max_decoded_bytes)


def _check_counts(msg: Any, what: str) -> None:
    """WireError past the entry limits (:func:`_read` checks them before parsing; this, for messages
    a stock stub parsed)."""
    for name, limit in (("inputs", MAX_TENSORS), ("outputs", MAX_TENSORS), ("parameters", MAX_PARAMETERS)):
        n = len(getattr(msg, name, ()))
        if n > limit:
            raise WireError(f"the {what} has {n} {name!r} entries; at most {limit} are accepted")


def _response_data(
    msg: v2_pb.ModelInferResponse, raw: Sequence[bytes | memoryview], nbytes: int, max_decoded_bytes: int
) -> InferResponseData:
    _check_counts(msg, "response")
    budget = Budget(max_decoded_bytes)
    params = _params_from(msg.parameters, "response")
    outputs, bf16 = tensors_from_proto(msg.outputs, raw, budget=budget, framed=(), where="response")
    if not outputs:
        raise WireError("the response has no outputs; expected one per model output")
    return InferResponseData(
        model_name=msg.model_name,
        request_id=msg.id,
        outputs=outputs,
        parameters=params,
        bfloat16=bf16,
        model_version=msg.model_version,
        wire_bytes=nbytes,
    )


def param_ms(params: Mapping[str, ParamValue], key: str) -> float:
    """A timing parameter as a finite float >= 0 (0.0 when absent or invalid)."""
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    v = float(value)
    return v if math.isfinite(v) and v >= 0 else 0.0
