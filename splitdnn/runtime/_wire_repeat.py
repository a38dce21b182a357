"""Repeat ModelInfer messages: their small fields checked, parsed or serialized once.

The caching half of :mod:`splitdnn.runtime.serde`, which re-exports every public name here. A split
client sends the same small fields with every request of a cut (model, fingerprint, the boundary
tensors' names, datatypes and shapes), and the server answers them with the same small fields too;
only the request id, the tensors' bytes and the answer's timing parameters change. The classes here
keep what protobuf and the checks make of those fields, so that a repeat costs a dictionary lookup
instead. Each is bounded and thread-safe, and gives what the one-off functions of
:mod:`splitdnn.runtime._wire_infer` give: the same bytes, or the same record or error for any input
(``tests/runtime/test_wire_cache.py`` fuzzes this).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from splitdnn.errors import WireError
from splitdnn.runtime import _wire
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._serde_tensors import raw_view
from splitdnn.runtime._wire_infer import (
    _RAW_INPUT_FIELD,
    _RAW_OUTPUT_FIELD,
    MAX_PARAMETERS,
    MAX_TENSORS,
    InferRequestData,
    InferRequestWire,
    InferResponseData,
    ParamValue,
    _infer_request,
    _infer_response,
    _params_from,
    _set_param,
    _unicode_text,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
    not_unicode,
    parse_infer_request,
    read_infer_request,
)

__all__ = ["CheckedHeader", "RequestDecoder", "RequestEncoder", "ResponseDecoder", "ResponseEncoder"]

_ID_FIELD = v2_pb.ModelInferRequest.DESCRIPTOR.fields_by_name["id"].number  # 3, in requests and responses

_MAX_KEY_BYTES = 4096  # small fields longer than this (thousands of names, parameters) are not kept
_CACHE_ENTRIES = 64


class CheckedHeader:
    """The small fields of a request that :func:`parse_infer_request` accepted, all but its id.

    ``verdicts``: what callers concluded from these fields, by the caller's own key (the tail server
    keeps its checks' result there, so a repeat header skips them too): dropped with the header.
    """

    __slots__ = ("message", "template", "specs", "nbytes", "verdicts")

    def __init__(self, message: v2_pb.ModelInferRequest, data: InferRequestData) -> None:
        self.message = v2_pb.ModelInferRequest()  # parsed once, never changed; without its id, which
        self.message.CopyFrom(message)  # the key leaves out: of any size (the request's, not the header's)
        self.message.ClearField("id")
        # each input as it is viewed: (name, numpy dtype, shape, bytes)
        self.specs = tuple((n, a.dtype, a.shape, a.nbytes) for n, a in data.inputs.items())
        # no views of the message: a template must not keep the first request's bytes alive
        self.template = replace(data, inputs={}, request_id="", wire_bytes=0)
        self.nbytes = sum(s[3] for s in self.specs)
        self.verdicts: dict[str, Any] = {}

    def request(self, raw: Sequence[memoryview], request_id: str, nbytes: int) -> InferRequestData | None:
        """The request with these small fields, ``request_id`` and the raw contents ``raw``; None when
        ``raw`` does not fit them (then parse it in full: that says what is wrong)."""
        specs = self.specs
        if len(raw) != len(specs):
            return None
        inputs = {}
        for (name, dtype, shape, size), data in zip(specs, raw, strict=True):
            if len(data) != size:
                return None
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
            arr.flags.writeable = False  # a view of the message: whoever writes must copy first
            inputs[name] = arr
        t = self.template
        return InferRequestData(  # (parameters copied: a caller may change its request's)
            t.model_name, t.model_version, request_id, inputs, t.framed, t.fingerprint, dict(t.parameters),
            nbytes, t.bfloat16, t.requested_outputs, t.weights, self,
        )  # fmt: skip


def _last_string(entries: Sequence[memoryview]) -> str | None:
    """A string field's value from its entries: the last one, as protobuf keeps it ("" when none);
    None when any of them is not UTF-8, which protobuf refuses."""
    try:
        values = [str(e, "utf-8") for e in entries]
    except UnicodeDecodeError:
        return None
    return values[-1] if values else ""


class _Bounded:
    """A dict that forgets its oldest entries past ``entries`` (stores under a lock, reads without)."""

    def __init__(self, entries: int) -> None:
        self.entries = max(1, entries)
        self.items: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            while len(self.items) >= self.entries:
                del self.items[next(iter(self.items))]
            self.items[key] = value


class RequestDecoder:
    """:func:`read_infer_request` and :func:`parse_infer_request` that remember the headers they
    accepted: a request whose small fields, but for the id, are the bytes of one accepted before is
    not parsed or checked again; its raw contents are viewed with the shapes checked then.

    The lookup is by those exact bytes, so it gives what a full parse would: the id is parsed here
    (UTF-8, as protobuf does), the raw contents' sizes are checked against the shapes, and anything
    that does not fit is parsed in full, which refuses it with the same message as before. Kept only:
    requests of raw, unframed inputs (a frame is decoded per request anyway) other than BOOL (whose
    values are checked), with small fields of at most 4 KiB; at most ``entries`` headers, the oldest
    forgotten first.
    """

    def __init__(self, entries: int = _CACHE_ENTRIES) -> None:
        self._known = _Bounded(entries)

    def read(self, data: bytes) -> InferRequestWire:
        """:func:`read_infer_request`, from the remembered header when there is one."""
        split = (
            _wire.split_fields(data, (_RAW_INPUT_FIELD, _ID_FIELD), MAX_TENSORS)
            if isinstance(data, bytes)
            else None
        )
        if split is None or len(split[0]) > _MAX_KEY_BYTES:
            return read_infer_request(data)
        key, (raw, ids) = split
        checked = self._known.items.get(key)
        if checked is not None:
            request_id = _last_string(ids)
            if request_id is None:
                return read_infer_request(data)  # which refuses it
            return InferRequestWire(checked.message, raw, len(data), key, checked, request_id)
        wire = read_infer_request(data)
        return InferRequestWire(wire.message, wire.raw, wire.nbytes, key)

    def parse(
        self,
        wire: InferRequestWire,
        *,
        max_decoded_bytes: int,
        reserve: Callable[[int, str], None] | None = None,
    ) -> InferRequestData:
        """:func:`parse_infer_request` of a request from :meth:`read`."""
        checked = wire.checked
        if checked is not None:
            budget_ok = type(max_decoded_bytes) is int and max_decoded_bytes >= 0  # else Budget says so
            if budget_ok and checked.nbytes <= max_decoded_bytes:
                data = checked.request(wire.raw, wire.request_id, wire.nbytes)
                if data is not None:
                    return data
            message = v2_pb.ModelInferRequest()  # in full, to say what is wrong
            message.CopyFrom(checked.message)
            message.id = wire.request_id
            return parse_infer_request(
                InferRequestWire(message, wire.raw, wire.nbytes), max_decoded_bytes=max_decoded_bytes,
                reserve=reserve,
            )  # fmt: skip
        data = parse_infer_request(wire, max_decoded_bytes=max_decoded_bytes, reserve=reserve)
        if (
            wire.key is not None
            and not data.framed
            and len(wire.raw) == len(data.inputs)
            and all(a.dtype != np.bool_ for a in data.inputs.values())
        ):
            checked = CheckedHeader(wire.message, data)
            self._known.put(wire.key, checked)
            data = replace(data, header=checked)
        return data

    def __len__(self) -> int:
        return len(self._known.items)


_DOUBLE = struct.Struct("<d")
_PARAMETERS_FIELD = v2_pb.ModelInferResponse.DESCRIPTOR.fields_by_name["parameters"].number  # 4
_ID_TAG, _PARAMETERS_TAG, _RAW_INPUT_TAG, _RAW_OUTPUT_TAG = (
    bytes(((n << 3) | 2,)) for n in (_ID_FIELD, _PARAMETERS_FIELD, _RAW_INPUT_FIELD, _RAW_OUTPUT_FIELD)
)


@_unicode_text
def _param_entry(key: str, value: ParamValue) -> bytes:
    """One entry of a message's ``parameters`` map, as protobuf writes it (or refuses it)."""
    msg = v2_pb.ModelInferResponse()
    _set_param(msg.parameters, key, value)
    return msg.SerializeToString()


class _ParamWriter:
    """Entries of the ``parameters`` map as protobuf writes them, from what it wrote before: each
    name's bytes before a double's value (the value's 8 bytes end the entry), and whole entries of
    small integers and booleans (a server's timings and batch size: the same names every answer,
    a few batch sizes)."""

    def __init__(self) -> None:
        self._double_prefix = _Bounded(256)
        self._small = _Bounded(1024)

    def entry(self, key: str, value: ParamValue) -> bytes:
        if type(value) is float and type(key) is str:
            prefix = self._double_prefix.items.get(key)
            if prefix is None:
                whole = _param_entry(key, value)
                prefix = whole[: len(whole) - _DOUBLE.size]
                self._double_prefix.put(key, prefix)
            return prefix + _DOUBLE.pack(value)
        if type(value) in (int, bool) and -1 <= value <= 1 << 14 and type(key) is str:  # type: ignore[operator]
            found = self._small.items.get((key, value, type(value)))
            if found is None:
                found = _param_entry(key, value)
                self._small.put((key, value, type(value)), found)
            return found  # type: ignore[no-any-return]
        return _param_entry(key, value)


def _id_field(request_id: str) -> bytes:
    """The id field's bytes (none for "", as protobuf leaves a proto3 default out)."""
    if not request_id:
        return b""
    try:
        data = request_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise not_unicode(exc) from exc
    return b"".join((_ID_TAG, _wire.varint_bytes(len(data)), data))


class ResponseEncoder:
    """:func:`encode_infer_response` with the small fields serialized once per model and outputs'
    names, datatypes and shapes: each answer writes only its id and its parameters' values, then
    joins its outputs' bytes (the one copy). The bytes are the same message (fields in protobuf's
    order; the parameters' order is a map's, any)."""

    def __init__(self, entries: int = _CACHE_ENTRIES) -> None:
        self._headers = _Bounded(entries)
        self._params = _ParamWriter()

    def encode(
        self,
        model_name: str,
        request_id: str,
        outputs: Mapping[str, np.ndarray],
        *,
        parameters: Mapping[str, ParamValue] | None = None,
        bfloat16: Collection[str] = (),
        model_version: str = "",
    ) -> bytes:
        if type(request_id) is not str or not all(isinstance(a, np.ndarray) for a in outputs.values()):
            return encode_infer_response(  # what it refuses or takes (bytes for the id), it says
                model_name, request_id, outputs, parameters=parameters, bfloat16=bfloat16,
                model_version=model_version,
            )  # fmt: skip
        id_field = _id_field(request_id)  # first, as the full path refuses it first
        key = (
            model_name,
            model_version,
            tuple((n, a.dtype, a.shape, n in bfloat16) for n, a in outputs.items()),
        )
        parts = self._headers.items.get(key)
        if parts is None:
            msg, _ = _infer_response(model_name, "", outputs, None, bfloat16, model_version)  # checks it all
            head = v2_pb.ModelInferResponse(model_name=model_name, model_version=model_version)
            body = v2_pb.ModelInferResponse()
            body.outputs.extend(msg.outputs)
            datatypes = tuple(t.datatype for t in msg.outputs)
            parts = (head.SerializeToString(), body.SerializeToString(), datatypes)
            self._headers.put(key, parts)
        head_bytes, outputs_bytes, datatypes = parts
        out: list[bytes | memoryview] = [head_bytes, id_field]
        for k, v in (parameters or {}).items():
            out.append(self._params.entry(k, v))
        out.append(outputs_bytes)
        tag = _RAW_OUTPUT_TAG
        for array, datatype in zip(outputs.values(), datatypes, strict=True):
            view = raw_view(array, datatype)
            out += (tag, _wire.length_prefix(view.nbytes), view)
        return b"".join(out)


class RequestEncoder:
    """:func:`encode_infer_request` with the small fields but the id serialized once per model,
    inputs' names, datatypes and shapes, fingerprint and weights (a split client sends the same ones
    with every request of a cut). The bytes are the same message. A request with a codec frame is
    encoded in full (its frame's size is one of those fields)."""

    def __init__(self, entries: int = _CACHE_ENTRIES) -> None:
        self._headers = _Bounded(entries)

    def encode(
        self,
        model_name: str,
        inputs: Mapping[str, np.ndarray | bytes],
        *,
        fingerprint: str | None = None,
        request_id: str = "",
        bfloat16: Collection[str] = (),
        model_version: str = "",
        weights: str | None = None,
    ) -> bytes:
        # arrays only: a codec frame's size is in its header (shape [nbytes]), different every time
        kinds = tuple(
            (n, v.dtype, v.shape, n in bfloat16) if isinstance(v, np.ndarray) else None
            for n, v in inputs.items()
        )
        if None in kinds or type(request_id) is not str:
            return encode_infer_request(
                model_name, inputs, fingerprint=fingerprint, request_id=request_id, bfloat16=bfloat16,
                model_version=model_version, weights=weights,
            )  # fmt: skip
        id_field = _id_field(request_id)  # first, as the full path refuses it first
        key = (model_name, model_version, fingerprint, weights, kinds)
        parts = self._headers.items.get(key)
        if parts is None:
            msg, _ = _infer_request(
                model_name, inputs, fingerprint, "", None, bfloat16, model_version, weights
            )
            head = v2_pb.ModelInferRequest(model_name=model_name, model_version=model_version)
            body = v2_pb.ModelInferRequest()
            body.MergeFrom(msg)
            body.ClearField("model_name")
            body.ClearField("model_version")
            parts = (
                head.SerializeToString(),
                body.SerializeToString(),
                tuple(t.datatype for t in msg.inputs),
            )
            self._headers.put(key, parts)
        head_bytes, body_bytes, datatypes = parts
        out: list[bytes | memoryview] = [head_bytes, id_field, body_bytes]
        tag = _RAW_INPUT_TAG
        for value, datatype in zip(inputs.values(), datatypes, strict=True):
            view = raw_view(value, datatype)  # type: ignore[arg-type]  # arrays only, above
            out += (tag, _wire.length_prefix(view.nbytes), view)
        return b"".join(out)


class ResponseDecoder:
    """:func:`decode_infer_response` that remembers the small fields of the answers it accepted, but
    for their id and parameters (a server's timings, different in every answer): an answer whose
    other small fields are the bytes of one accepted before has only its parameters parsed (by
    protobuf) and its raw contents viewed with the shapes checked then. Anything that does not fit
    is decoded in full, which refuses it as before. Kept as :class:`RequestDecoder` keeps requests."""

    def __init__(self, entries: int = _CACHE_ENTRIES) -> None:
        self._known = _Bounded(entries)

    def decode(self, data: bytes, *, max_decoded_bytes: int) -> InferResponseData:
        split = None
        if isinstance(data, bytes):
            split = _wire.split_fields(data, (_RAW_OUTPUT_FIELD, _ID_FIELD, _PARAMETERS_FIELD), MAX_TENSORS)
        if split is None or len(split[0]) > _MAX_KEY_BYTES:
            return decode_infer_response(data, max_decoded_bytes=max_decoded_bytes)
        key, (raw, ids, params) = split
        known = self._known.items.get(key)
        if known is not None:
            found = _known_response(known, raw, ids, params, len(data), max_decoded_bytes)
            if found is not None:
                return found
            return decode_infer_response(data, max_decoded_bytes=max_decoded_bytes)  # to say what is wrong
        decoded = decode_infer_response(data, max_decoded_bytes=max_decoded_bytes)
        if len(raw) == len(decoded.outputs) and all(a.dtype != np.bool_ for a in decoded.outputs.values()):
            message = v2_pb.ModelInferResponse.FromString(key)  # accepted just now as part of the whole
            specs = tuple((n, a.dtype, a.shape, a.nbytes) for n, a in decoded.outputs.items())
            self._known.put(key, (message, specs, sum(s[3] for s in specs), decoded.bfloat16))
        return decoded


def _known_response(
    known: tuple[Any, ...],
    raw: Sequence[memoryview],
    ids: Sequence[memoryview],
    params: Sequence[memoryview],
    nbytes: int,
    max_decoded_bytes: int,
) -> InferResponseData | None:
    """The answer with ``known``'s small fields; None when the rest does not fit them."""
    message, specs, total, bf16 = known
    if total > max_decoded_bytes or len(raw) != len(specs) or len(params) > MAX_PARAMETERS:
        return None
    try:
        request_id = _last_string(ids)
        if request_id is None:
            return None
        parsed = v2_pb.ModelInferResponse()
        if params:  # the map's entries, parsed by protobuf as they would be in the whole message
            parsed.ParseFromString(
                b"".join(b"".join((_PARAMETERS_TAG, _wire.varint_bytes(len(p)), p)) for p in params)
            )
        parameters = _params_from(parsed.parameters, "response")
    except (DecodeError, WireError):
        return None
    outputs = {}
    for (name, dtype, shape, size), view in zip(specs, raw, strict=True):
        if len(view) != size:
            return None
        arr = np.frombuffer(view, dtype=dtype).reshape(shape)
        arr.flags.writeable = False
        outputs[name] = arr
    return InferResponseData(
        message.model_name, request_id, outputs, parameters, bf16, message.model_version, nbytes
    )
