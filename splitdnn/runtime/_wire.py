"""Protobuf wire format at the top level of a message: big ``bytes`` fields without copies (stdlib only).

A ModelInfer message is a few hundred bytes of names, shapes and parameters plus megabytes of
``raw_input_contents`` / ``raw_output_contents``. Protobuf's own parser and serializer copy those
megabytes (into the message, then out as Python ``bytes``); here they are cut out of the received
buffer as ``memoryview`` slices, and only the small rest goes through the generated message.

:func:`split_field` is bounded and strict: it walks the top-level fields once, every varint at most 10
bytes, every length within the buffer. It takes the fast path only for a buffer whose structure is
plainly valid and whose entries of the wanted field are canonically encoded; for anything else
(groups, invalid wire types, field number 0, truncation, over-long encodings) it returns ``None`` and
the caller parses the whole buffer with protobuf, which then decides exactly as it always did. The
rest (every other top-level field, in order) is still parsed by protobuf, so its checks (UTF-8
strings, nested messages, unknown fields) are unchanged: the fast path accepts exactly what protobuf
accepts, with the same content (``tests/runtime/test_wire.py`` fuzzes this against protobuf).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from splitdnn.errors import WireError

__all__ = [
    "MAX_LENGTH",
    "Limit",
    "append_field",
    "field_spans",
    "length_prefix",
    "over_limit",
    "split_field",
    "split_fields",
    "varint_bytes",
]

#: longest length-delimited entry taken on the fast path (protobuf's own limit is 2 GiB - 1)
MAX_LENGTH = 2**31 - 1
#: most entries of the split field taken on the fast path (one view object each)
MAX_ENTRIES = 4096
_WIRE_LEN = 2  # wire type of length-delimited fields (bytes, strings, messages)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int] | None:
    """``(value, position after it)`` of the varint at ``pos``; None if over 10 bytes or truncated."""
    value = shift = 0
    for i in range(pos, min(pos + 10, end)):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    return None


def split_field(
    data: bytes | bytearray | memoryview, number: int, max_entries: int = MAX_ENTRIES
) -> tuple[bytes, list[memoryview]] | None:
    """Cut the entries of length-delimited field ``number`` out of a serialized message.

    Returns ``(rest, slices)``: ``rest`` holds every other top-level field in its original order (a
    valid serialization of the same message without field ``number``), ``slices`` the entries of
    field ``number`` as views of ``data``, in order; ``data`` must not change while they live. None
    when the fast path does not apply (see the module docstring), or past ``max_entries`` entries (a
    view each): parse ``data`` whole instead.
    """
    split = split_fields(data, (number,), max_entries)
    return None if split is None else (split[0], split[1][0])


def split_fields(
    data: bytes | bytearray | memoryview, numbers: Sequence[int], max_entries: int = MAX_ENTRIES
) -> tuple[bytes, list[list[memoryview]]] | None:
    """:func:`split_field` for several length-delimited fields at once: ``(rest, slices)``, with
    ``slices[i]`` the entries of field ``numbers[i]`` in order and ``rest`` every other field;
    ``max_entries`` counts the entries of all of them. None as for :func:`split_field`."""
    buf = memoryview(data).cast("B")  # (nbytes,) whatever the exporter's format
    spans = _spans(buf, numbers, max_entries)
    if spans is None:
        return None
    slices: list[list[memoryview]] = [[] for _ in numbers]
    if not spans:
        return data if isinstance(data, bytes) else bytes(buf), slices
    keep: list[memoryview] = []
    kept_from = 0
    for which, start, body, stop in spans:
        if start > kept_from:
            keep.append(buf[kept_from:start])
        slices[which].append(buf[body:stop])
        kept_from = stop
    if len(buf) > kept_from:
        keep.append(buf[kept_from:])
    return b"".join(keep), slices


def field_spans(
    data: bytes | bytearray | memoryview, numbers: Sequence[int], max_entries: int = MAX_ENTRIES
) -> list[tuple[int, int, int]] | None:
    """Where the entries of length-delimited fields ``numbers`` lie in a serialized message: ``(field
    number, first byte of the value, end of the value)`` for each, in order. None exactly when
    :func:`split_fields` gives None for the same arguments."""
    spans = _spans(memoryview(data).cast("B"), numbers, max_entries)
    return None if spans is None else [(numbers[which], body, stop) for which, _, body, stop in spans]


def _spans(
    buf: memoryview, numbers: Sequence[int], max_entries: int
) -> list[tuple[int, int, int, int]] | None:
    """``(index in numbers, tag's position, value's position, value's end)`` of every entry of the
    wanted fields, walking the top-level fields once; None off the fast path (module docstring)."""
    if not numbers or any(
        not 1 <= n <= 15 for n in numbers
    ):  # one-byte tags: the fast path compares the tag byte
        raise WireError(f"split_field takes field numbers 1..15, found {list(numbers)}")
    end = len(buf)
    wanted = {(n << 3) | _WIRE_LEN: i for i, n in enumerate(numbers)}
    spans: list[tuple[int, int, int, int]] = []
    pos = 0
    while pos < end:
        start = pos
        which = wanted.get(buf[pos])
        if which is not None:  # canonical one-byte tag of a wanted field
            got = _varint(buf, pos + 1, end)
            if got is None:
                return None
            length, body = got
            # canonical length: protobuf accepts padded varints too, but those take the slow path
            if length > MAX_LENGTH or body - pos - 1 > 5 or (body - pos > 2 and buf[body - 1] == 0):
                return None
            if length > end - body:
                return None
            if len(spans) == max_entries:
                return None
            pos = body + length
            spans.append((which, start, body, pos))
            continue
        got = _varint(buf, pos, end)
        if got is None:
            return None
        tag, pos = got
        field, wire_type = tag >> 3, tag & 7
        if field == 0 or tag > 0xFFFFFFFF or tag in wanted:  # tag in wanted: a padded tag
            return None
        after = _skip(buf, pos, end, wire_type)
        if after is None:  # truncated, groups (3, 4), the invalid wire types 6, 7: protobuf decides
            return None
        pos = after
    return spans


@dataclass(frozen=True)
class Limit:
    """At most ``count`` entries of a field in one message; ``inner``: limits inside each entry (the
    field is then a message: its entries are walked too)."""

    name: str
    count: int
    inner: Mapping[int, Limit] | None = None


def over_limit(
    data: bytes | memoryview, limits: Mapping[int, Limit], max_fields: int
) -> tuple[str, int] | None:
    """The first field of a serialized message seen more often than its :class:`Limit` allows, as its
    path (``"inputs.contents.bytes_contents"``) and limit; ``("fields", max_fields)`` past
    ``max_fields`` fields in one message (or sub-message walked); else None.

    Walks any valid encoding (padded varints, groups), so no encoding gets around it, and stops at the
    first field over a limit: a message of millions of tiny entries costs a few thousand steps here,
    instead of millions of parsed sub-messages (protobuf's parser allocates each). Stops silently at
    anything malformed, which protobuf's parser then refuses.
    """
    buf = memoryview(data).cast("B")
    return _over(buf, 0, len(buf), limits, max_fields, "")


def _over(
    buf: memoryview, pos: int, end: int, limits: Mapping[int, Limit], max_fields: int, path: str
) -> tuple[str, int] | None:
    counts: dict[int, int] = {}
    fields = depth = 0
    while pos < end:
        got = _varint(buf, pos, end)
        if got is None:
            return None
        tag, pos = got
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            return None
        if wire_type == 4:  # end of a group
            depth -= 1
            if depth < 0:
                return None
            continue
        limit = limits.get(field) if depth == 0 else None
        if depth == 0:
            fields += 1
            if fields > max_fields:
                return f"{path}fields", max_fields
            n = counts[field] = counts.get(field, 0) + 1
            if limit is not None and n > limit.count:
                return f"{path}{limit.name}", limit.count
        if wire_type == 3:  # start of a group: its fields are not this message's
            depth += 1
            if depth > 100:  # protobuf's own recursion limit
                return None
            continue
        after = _skip(buf, pos, end, wire_type)
        if after is None:
            return None
        if limit is not None and limit.inner is not None and wire_type == _WIRE_LEN:
            body = _varint(buf, pos, end)
            assert body is not None  # _skip read it
            inner = _over(buf, body[1], after, limit.inner, max_fields, f"{path}{limit.name}.")
            if inner is not None:
                return inner
        pos = after
    return None


def _skip(buf: memoryview, pos: int, end: int, wire_type: int) -> int | None:
    """The position after the value of ``wire_type`` (0, 1, 2 or 5) at ``pos``; None when it is cut
    short, or of another wire type (groups and the invalid 6, 7: the caller decides)."""
    if wire_type == 0:
        got = _varint(buf, pos, end)
        return None if got is None else got[1]
    if wire_type in (1, 5):
        pos += 8 if wire_type == 1 else 4
        return pos if pos <= end else None
    if wire_type == _WIRE_LEN:
        got = _varint(buf, pos, end)
        if got is None:
            return None
        length, pos = got
        return pos + length if length <= end - pos else None
    return None


def varint_bytes(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def append_field(head: bytes, number: int, chunks: Sequence[bytes | memoryview], *, wrap: int = 0) -> bytes:
    """``head`` (a serialized message) followed by ``chunks`` as entries of bytes field ``number``.

    Protobuf parsers read fields in any order, so this is the message with those entries appended to
    the repeated field; serializers put the highest field number last, so when ``number`` is the
    message's highest field the result is also what protobuf itself would write. One copy: the join.
    Each chunk must be C-contiguous bytes (a ``memoryview`` of a contiguous array cast to bytes).
    ``wrap``: a field number 1..15 of an outer message to return instead, holding the message as its
    only field (in the same join: no second copy); 0, the message itself.
    """
    if not 1 <= number <= 15 or not 0 <= wrap <= 15:
        raise WireError(f"append_field takes field numbers 1..15 (wrap 0..15), found {number} and {wrap}")
    tag = bytes(((number << 3) | _WIRE_LEN,))
    parts: list[bytes | memoryview] = [head]
    size = len(head)
    for chunk in chunks:
        n = memoryview(chunk).nbytes
        prefix = length_prefix(n)
        parts += (tag, prefix, chunk)
        size += 1 + len(prefix) + n
    if wrap:
        parts[0:0] = (bytes(((wrap << 3) | _WIRE_LEN,)), length_prefix(size))
    return b"".join(parts)


def length_prefix(n: int) -> bytes:
    """The length varint of an ``n``-byte entry of a bytes field (WireError past protobuf's limit)."""
    if n > MAX_LENGTH:
        raise WireError(f"a bytes field holds at most {MAX_LENGTH} bytes, found {n}")
    return varint_bytes(n)
