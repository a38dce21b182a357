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

import itertools
import os
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
    PARAM_PAD,
    RAW_ALIGN,
    STREAM_RESPONSE_FIELD,
    InferRequestData,
    InferRequestWire,
    InferResponseData,
    ParamValue,
    _infer_request,
    _infer_response,
    _params_from,
    _set_param,
    _unicode_text,
    encode_infer_request,
    encode_infer_response,
    is_bytes_view,
    not_unicode,
    parse_infer_request,
    request_from,
    response_from,
    split_raw,
)

__all__ = [
    "CheckedHeader",
    "RequestDecoder",
    "RequestEncoder",
    "RequestIds",
    "ResponseDecoder",
    "ResponseEncoder",
]

_ID_FIELD = v2_pb.ModelInferRequest.DESCRIPTOR.fields_by_name["id"].number  # 3, in requests and responses

_MAX_KEY_BYTES = 4096  # small fields longer than this (thousands of names, parameters) are not kept
_CACHE_ENTRIES = 64


class _Layout:
    """How a kept header's raw contents are viewed: each tensor's name, numpy dtype, shape and size."""

    __slots__ = ("specs", "nbytes")

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.specs = tuple((n, a.dtype, a.shape, a.nbytes) for n, a in arrays.items())
        self.nbytes = sum(s[3] for s in self.specs)

    @staticmethod
    def of(arrays: Mapping[str, np.ndarray], raw: Sequence[memoryview]) -> _Layout | None:
        """The layout of ``arrays`` decoded from ``raw``; None when a repeat could not be viewed the
        same way: not one raw entry per tensor (typed contents), or BOOL (its values are checked)."""
        if len(raw) != len(arrays) or any(a.dtype == np.bool_ for a in arrays.values()):
            return None
        return _Layout(arrays)

    def views(self, raw: Sequence[memoryview], max_decoded_bytes: int) -> dict[str, np.ndarray] | None:
        """``raw`` viewed as these tensors (read-only views); None when it does not fit them, or the
        budget is not one :class:`Budget` takes or is smaller (then decode in full: that says why)."""
        if type(max_decoded_bytes) is not int or not 0 <= self.nbytes <= max_decoded_bytes:
            return None
        if len(raw) != len(self.specs):
            return None
        out = {}
        for (name, dtype, shape, size), data in zip(self.specs, raw, strict=True):
            if len(data) != size:
                return None
            arr = np.ndarray(shape, dtype, data)
            if arr.flags.writeable:  # (a view of bytes is read-only already)
                arr.flags.writeable = False  # a view of the message: whoever writes must copy first
            out[name] = arr
        return out


class CheckedHeader:
    """The small fields of a request that :func:`parse_infer_request` accepted, all but its id.

    ``verdicts``: what callers concluded from these fields, by the caller's own key (the tail server
    keeps its checks' result there, so a repeat header skips them too): dropped with the header.
    """

    __slots__ = ("message", "template", "layout", "verdicts")

    def __init__(self, message: v2_pb.ModelInferRequest, data: InferRequestData, layout: _Layout) -> None:
        self.message = v2_pb.ModelInferRequest()  # parsed once, never changed; without its id, which
        self.message.CopyFrom(message)  # the key leaves out: of any size (the request's, not the header's)
        self.message.ClearField("id")
        self.layout = layout
        # no views of the message: a template must not keep the first request's bytes alive
        self.template = replace(data, inputs={}, request_id="", wire_bytes=0)
        self.verdicts: dict[str, Any] = {}

    def inputs(self, raw: Sequence[memoryview], max_decoded_bytes: int) -> dict[str, np.ndarray] | None:
        """The input tensors of a request with these small fields and the raw contents ``raw``
        (read-only views); None when ``raw`` does not fit them (then parse it in full: that says
        what is wrong)."""
        return self.layout.views(raw, max_decoded_bytes)

    def request(
        self, raw: Sequence[memoryview], request_id: str, nbytes: int, max_decoded_bytes: int
    ) -> InferRequestData | None:
        """The request with these small fields, ``request_id`` and the raw contents ``raw``; None when
        ``raw`` does not fit them (then parse it in full: that says what is wrong)."""
        inputs = self.inputs(raw, max_decoded_bytes)
        if inputs is None:
            return None
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


class _Holes:
    """A message accepted before, as the bytes a repeat must have: all of them but the holes (an id's
    value, raw contents, a double's 8 bytes), whose contents may differ. A message of the same size with
    the same bytes outside the holes has the same fields, in the same places, with the same lengths:
    protobuf parses it to the same content but for what lies in the holes."""

    __slots__ = ("size", "fixed", "holes")

    def __init__(self, data: bytes | memoryview, holes: Sequence[tuple[int, int]]) -> None:  # in order, apart
        fixed, pos = [], 0
        for start, stop in holes:
            if start > pos:
                fixed.append((pos, bytes(data[pos:start])))  # (of a view: a copy, not the view's buffer)
            pos = stop
        if len(data) > pos:
            fixed.append((pos, bytes(data[pos:])))
        self.size = len(data)
        self.fixed = tuple(fixed)
        self.holes = tuple(holes)

    def fits(self, data: bytes | memoryview) -> bool:
        if len(data) != self.size:
            return False
        if type(data) is not bytes:  # a view of bytes (is_bytes_view): no startswith
            return all(data[at : at + len(part)] == part for at, part in self.fixed)
        for at, part in self.fixed:
            if not data.startswith(part, at):
                return False
        return True


class _BySize:
    """At most ``entries`` :class:`_Holes`, each with a value, found by the size of the message they
    fit (the oldest forgotten first; stores under a lock, finds without: a size's entries are a tuple,
    replaced whole)."""

    def __init__(self, entries: int) -> None:
        self.entries = max(1, entries)
        self._by_size: dict[int, tuple[tuple[_Holes, Any], ...]] = {}
        self._order: list[_Holes] = []
        self._lock = threading.Lock()

    def find(self, data: bytes | memoryview) -> tuple[_Holes, Any] | None:
        for found in self._by_size.get(len(data), ()):
            if found[0].fits(data):
                return found
        return None

    def put(self, holes: _Holes, value: Any) -> None:
        with self._lock:
            while len(self._order) >= self.entries:
                old = self._order.pop(0)
                left = tuple(e for e in self._by_size[old.size] if e[0] is not old)
                if left:
                    self._by_size[old.size] = left
                else:
                    del self._by_size[old.size]
            self._by_size[holes.size] = (*self._by_size.get(holes.size, ()), (holes, value))
            self._order.append(holes)

    def __len__(self) -> int:
        return len(self._order)


def _utf8(data: bytes | memoryview) -> str | None:
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError:
        return None


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
        self._shapes = _BySize(entries)  # where a kept header's repeats hold their id and raw contents

    def read(self, data: bytes) -> InferRequestWire:
        """:func:`read_infer_request`, from the remembered header when there is one."""
        found = self._shapes.find(data) if type(data) is bytes else None
        if found is not None:  # a repeat byte for byte but for its id and raw contents: no walk
            key, checked, id_at, raw_at = found[1]
            request_id = "" if id_at is None else _utf8(data[id_at[0] : id_at[1]])
            if request_id is not None:
                view = memoryview(data)
                raw = [view[start:stop] for start, stop in raw_at]
                return InferRequestWire(checked.message, raw, len(data), key, checked, request_id)
        split = split_raw(data, _RAW_INPUT_FIELD, "inference.ModelInferRequest")
        cut = None if split is None else _wire.split_fields(split[0], (_ID_FIELD,), MAX_TENSORS)
        if split is None or cut is None or len(cut[0]) > _MAX_KEY_BYTES:
            return request_from(data, split)
        key, (ids,) = cut
        checked = self._known.items.get(key)
        request_id = _last_string(ids) if checked is not None else None
        if checked is None or request_id is None:  # a new header, or an id protobuf refuses
            wire = request_from(data, split)
            return InferRequestWire(wire.message, wire.raw, wire.nbytes, key)
        self._remember_shape(data, key, checked)
        return InferRequestWire(checked.message, split[1], len(data), key, checked, request_id)

    def _remember_shape(self, data: bytes, key: bytes, checked: CheckedHeader) -> None:
        """Where ``data``, a repeat of ``checked``'s header, holds its id and raw contents: the next
        repeat of the same size and the same other bytes is read without walking its fields."""
        spans = _wire.field_spans(data, (_ID_FIELD, _RAW_INPUT_FIELD), MAX_TENSORS)
        if spans is None:
            return
        ids = _where(spans, _ID_FIELD)
        if len(ids) > 1:  # the last one counts: not worth a shape of its own
            return
        raw = _where(spans, _RAW_INPUT_FIELD)
        holes = _Holes(data, [(start, stop) for _, start, stop in spans])
        self._shapes.put(holes, (key, checked, ids[0] if ids else None, raw))

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
            data = checked.request(wire.raw, wire.request_id, wire.nbytes, max_decoded_bytes)
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
        layout = _Layout.of(data.inputs, wire.raw) if wire.key is not None and not data.framed else None
        if layout is not None:
            checked = CheckedHeader(wire.message, data, layout)
            self._known.put(wire.key, checked)
            data = replace(data, header=checked)
        return data

    def __len__(self) -> int:
        return len(self._known.items)


_DOUBLE = struct.Struct("<d")
_PARAMETERS_FIELD = v2_pb.ModelInferResponse.DESCRIPTOR.fields_by_name["parameters"].number  # 4
_ID_TAG, _PARAMETERS_TAG = (bytes(((n << 3) | 2,)) for n in (_ID_FIELD, _PARAMETERS_FIELD))
_RAW_INPUT_TAG = bytes(((_RAW_INPUT_FIELD << 3) | 2,))


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
        stream: bool = False,
    ) -> bytes:
        if type(request_id) is not str or not all(isinstance(a, np.ndarray) for a in outputs.values()):
            return encode_infer_response(  # what it refuses or takes (bytes for the id), it says
                model_name, request_id, outputs, parameters=parameters, bfloat16=bfloat16,
                model_version=model_version, stream=stream,
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
            parts = _head_and_body(msg, tuple(t.datatype for t in msg.outputs))
            self._headers.put(key, parts)
        head, body, datatypes = parts
        params = b"".join([self._params.entry(k, v) for k, v in (parameters or {}).items()])
        views = [raw_view(a, d) for a, d in zip(outputs.values(), datatypes, strict=True)]
        wrap = STREAM_RESPONSE_FIELD if stream else 0
        head = b"".join((head, id_field, params, body))
        return _wire.append_field(head, _RAW_OUTPUT_FIELD, views, wrap=wrap)


def _head_and_body(msg: Any, datatypes: tuple[str, ...]) -> tuple[bytes, bytes, tuple[str, ...]]:
    """``msg`` (with no id, no parameters and no raw contents) serialized as the part before the id
    (model name and version) and the part after, in protobuf's field order; and its tensors'
    datatypes."""
    head = type(msg)(model_name=msg.model_name, model_version=msg.model_version)
    body = type(msg)()
    body.CopyFrom(msg)
    body.ClearField("model_name")
    body.ClearField("model_version")
    return head.SerializeToString(), body.SerializeToString(), datatypes


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
            parts = _head_and_body(msg, tuple(t.datatype for t in msg.inputs))
            self._headers.put(key, parts)
        head, body, datatypes = parts
        views = [raw_view(v, d) for v, d in zip(inputs.values(), datatypes, strict=True)]  # type: ignore[arg-type]
        return _aligned_raw(b"".join((head, id_field, body)), views)


def _pad_entries() -> tuple[bytes, ...]:
    """For each ``r`` in 0..RAW_ALIGN-1, the shortest serialized ``parameters`` entry of PARAM_PAD (a
    string of spaces) whose length is ``r`` modulo RAW_ALIGN (the entry for 0 is never used)."""
    best: dict[int, bytes] = {}
    for spaces in range(2 * RAW_ALIGN):
        msg = v2_pb.ModelInferRequest()
        msg.parameters[PARAM_PAD].string_param = " " * spaces
        entry = msg.SerializeToString()
        best.setdefault(len(entry) % RAW_ALIGN, entry)
    return tuple(best[r] for r in range(RAW_ALIGN))


_PADS = _pad_entries()
_MAX_PADDED = 64  # inputs of a request aligned one by one (each pad is a parameters entry)


def _aligned_raw(head: bytes, views: Sequence[memoryview]) -> bytes:
    """``head`` with ``views`` appended as raw_input_contents (:func:`_wire.append_field`), each after
    a PARAM_PAD entry where one is needed for its bytes to start at a multiple of RAW_ALIGN bytes into
    the message: the receiver's ``bytes`` start aligned (CPython's allocator), so its tensors are
    views it computes on without a copy. Protobuf reads fields in any order: the same request."""
    if len(views) > _MAX_PADDED:
        return _wire.append_field(head, _RAW_INPUT_FIELD, views)
    parts: list[bytes | memoryview] = [head]
    at = len(head)
    for view in views:
        n = memoryview(view).nbytes
        prefix = _RAW_INPUT_TAG + _wire.length_prefix(n)
        need = (-(at + len(prefix))) % RAW_ALIGN
        if need:
            parts.append(_PADS[need])
            at += len(_PADS[need])
        parts += (prefix, view)
        at += len(prefix) + n
    return b"".join(parts)


class RequestIds:
    """Ids for one client's requests: a random prefix of its own (64 bits) and a counter, 24 hex
    characters in all. Unique across clients but for odds of one in 2**32 among 65,536 of them, and
    in order within one; cheaper than a uuid4 per request, and always of one length, so a client's
    repeat requests keep one size (``RequestDecoder`` reads those by where their fields lie)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()  # (its next() is atomic: one client's threads may share it)

    def next(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFFFFFF:08x}"


class ResponseDecoder:
    """:func:`decode_infer_response` that remembers the small fields of the answers it accepted, but
    for their id and parameters (a server's timings, different in every answer): an answer whose
    other small fields are the bytes of one accepted before has only its parameters parsed (by
    protobuf) and its raw contents viewed with the shapes checked then. Anything that does not fit
    is decoded in full, which refuses it as before. Kept as :class:`RequestDecoder` keeps requests."""

    def __init__(self, entries: int = _CACHE_ENTRIES) -> None:
        self._known = _Bounded(entries)
        self._shapes = _BySize(entries)  # where a kept answer's repeats hold their id, doubles, raw

    def decode(self, data: bytes | memoryview, *, max_decoded_bytes: int) -> InferResponseData:
        """``data`` (``bytes``, or a view of them: :func:`stream_answer`'s) decoded; outputs are
        read-only views of it."""
        found = self._shapes.find(data) if type(data) is bytes or is_bytes_view(data) else None
        if found is not None:  # a repeat byte for byte but for its id, doubles and raw contents
            answer = _response_in(data, found[1], max_decoded_bytes)
            if answer is not None:
                return answer
        split = split_raw(data, _RAW_OUTPUT_FIELD, "inference.ModelInferResponse")
        cut = (
            None
            if split is None
            else _wire.split_fields(split[0], (_ID_FIELD, _PARAMETERS_FIELD), MAX_TENSORS)
        )
        if split is None or cut is None or len(cut[0]) > _MAX_KEY_BYTES:
            return response_from(data, split, max_decoded_bytes=max_decoded_bytes)
        key, (ids, params) = cut
        known = self._known.items.get(key)
        if known is not None:
            answer = _known_response(known, split[1], ids, params, len(data), max_decoded_bytes)
            if answer is not None:
                if len(ids) <= 1:
                    self._remember_shape(data, known, answer)
                return answer
            return response_from(data, split, max_decoded_bytes=max_decoded_bytes)  # to say what is wrong
        decoded = response_from(data, split, max_decoded_bytes=max_decoded_bytes)
        layout = _Layout.of(decoded.outputs, split[1])
        if layout is not None:
            message = v2_pb.ModelInferResponse.FromString(key)  # accepted just now as part of the whole
            self._known.put(key, (message, layout, decoded.bfloat16))
        return decoded

    def _remember_shape(
        self, data: bytes | memoryview, known: tuple[Any, _Layout, frozenset[str]], answer: InferResponseData
    ) -> None:
        """Where ``data`` (``answer``, of a kept header) holds its id, its raw contents and the 8 bytes
        of each double parameter (an entry exactly as protobuf writes it: the name, then the value);
        every other parameter is fixed bytes of the shape, its value ``answer``'s."""
        spans = _wire.field_spans(data, (_ID_FIELD, _PARAMETERS_FIELD, _RAW_OUTPUT_FIELD), MAX_TENSORS)
        if spans is None:
            return
        entries = _where(spans, _PARAMETERS_FIELD)
        if len(entries) != len(answer.parameters):  # a name twice (the last counts): no shape
            return
        holes: list[tuple[int, int]] = []
        order: list[tuple[str, int | None]] = []  # each name, and where its double lies (None: fixed)
        for number, start, stop in spans:
            if number != _PARAMETERS_FIELD:
                holes.append((start, stop))
                continue
            for name, value in answer.parameters.items():
                if type(value) is float and data[start : stop - _DOUBLE.size] == _double_prefix(name):
                    holes.append((stop - _DOUBLE.size, stop))
                    order.append((name, stop - _DOUBLE.size))
                    break
            else:
                fixed_name = _entry_name(data[start:stop])
                if fixed_name is None or fixed_name not in answer.parameters:
                    return
                order.append((fixed_name, None))
        fixed = len(data) - sum(stop - start for start, stop in holes)
        if fixed > 2 * _MAX_KEY_BYTES:  # a long string parameter: not kept
            return
        ids, raw = _where(spans, _ID_FIELD), _where(spans, _RAW_OUTPUT_FIELD)
        fixed_values = {name: answer.parameters[name] for name, at in order if at is None}
        where = dict(order)  # in the order protobuf's map gave them (the same keys: the same order)
        shape = (
            known,
            ids[0] if ids else None,
            raw,
            fixed_values,
            tuple((n, where[n]) for n in answer.parameters),
        )
        self._shapes.put(_Holes(data, holes), shape)


def _known_response(
    known: tuple[Any, _Layout, frozenset[str]],
    raw: Sequence[memoryview],
    ids: Sequence[memoryview],
    params: Sequence[memoryview],
    nbytes: int,
    max_decoded_bytes: int,
) -> InferResponseData | None:
    """The answer with ``known``'s small fields; None when the rest does not fit them."""
    message, layout, bf16 = known
    request_id = _last_string(ids)
    outputs = layout.views(raw, max_decoded_bytes)
    if outputs is None or request_id is None or len(params) > MAX_PARAMETERS:
        return None
    try:
        parsed = v2_pb.ModelInferResponse()
        if params:  # the map's entries, parsed by protobuf as they would be in the whole message
            parsed.ParseFromString(b"".join(_parameters_field(p) for p in params))
        parameters = _params_from(parsed.parameters, "response")
    except (DecodeError, WireError):
        return None
    return InferResponseData(
        message.model_name, request_id, outputs, parameters, bf16, message.model_version, nbytes
    )


def _where(spans: Sequence[tuple[int, int, int]], number: int) -> tuple[tuple[int, int], ...]:
    """Where the values of field ``number`` lie, from :func:`_wire.field_spans`' answer."""
    return tuple((start, stop) for n, start, stop in spans if n == number)


def _parameters_field(entry: bytes | memoryview) -> bytes:
    """One entry of the ``parameters`` map (its bytes without tag and length) as a whole field."""
    return b"".join((_PARAMETERS_TAG, _wire.varint_bytes(len(entry)), entry))


def _entry_name(entry: bytes | memoryview) -> str | None:
    """The name of one ``parameters`` entry (its bytes without tag and length), as protobuf reads it;
    None when protobuf reads no single entry from it."""
    msg = v2_pb.ModelInferResponse()
    try:
        msg.ParseFromString(_parameters_field(entry))
    except DecodeError:
        return None
    names = list(msg.parameters)
    return names[0] if len(names) == 1 else None


def _double_prefix(name: str) -> bytes:
    """A ``parameters`` entry's bytes before its double value, as protobuf writes them."""
    key = name.encode("utf-8")
    return b"".join((b"\x0a", _wire.varint_bytes(len(key)), key, b"\x12\x09\x21"))


def _response_in(
    data: bytes | memoryview, shape: tuple[Any, ...], max_decoded_bytes: int
) -> InferResponseData | None:
    """The answer ``data`` that fits ``shape`` (:meth:`ResponseDecoder._remember_shape`); None when its
    id is not UTF-8 or its raw contents do not fit ``max_decoded_bytes`` (then decode it in full)."""
    (message, layout, bf16), id_at, raw_at, fixed_values, order = shape
    request_id = "" if id_at is None else _utf8(data[id_at[0] : id_at[1]])
    view = memoryview(data)
    outputs = layout.views([view[start:stop] for start, stop in raw_at], max_decoded_bytes)
    if request_id is None or outputs is None:
        return None
    parameters = {  # in the order protobuf's map gives them
        name: fixed_values[name] if at is None else _DOUBLE.unpack_from(data, at)[0] for name, at in order
    }
    return InferResponseData(
        message.model_name, request_id, outputs, parameters, bf16, message.model_version, len(data)
    )
