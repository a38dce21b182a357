"""Frame version 1: header packing and the safe parser; encode, decode, describe and error_bound."""

from __future__ import annotations

import operator
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from splitdnn.codec._registry import Buffer, ByteCodec, ValueCodec, get_codec
from splitdnn.errors import CodecError

MAGIC = b"SDNT"
VERSION = 1
MAX_RANK = 8
MAX_DIM = 2**32 - 1
MAX_ELEMENTS = 2**40
MAX_STAGES = 4
MAX_PARAMS_BYTES = 1 << 20
DEFAULT_MAX_DECODED_BYTES = 256 << 20  # 256 MiB

_FIXED = struct.Struct("<4sBBBB")  # magic, version, dtype code, rank, number of stages
_DIM = struct.Struct("<Q")
_PARAMS_LEN = struct.Struct("<I")
_PAYLOAD_LEN = struct.Struct("<Q")

# code -> (name, storage dtype). bfloat16 is carried as its raw uint16 bit patterns.
DTYPES: dict[int, tuple[str, np.dtype]] = {
    1: ("float32", np.dtype("<f4")),
    2: ("float16", np.dtype("<f2")),
    3: ("bfloat16", np.dtype("<u2")),
    4: ("int8", np.dtype("i1")),
    5: ("uint8", np.dtype("u1")),
    6: ("int16", np.dtype("<i2")),
    7: ("int32", np.dtype("<i4")),
    8: ("int64", np.dtype("<i8")),
    9: ("bool", np.dtype("?")),
}
_CODE_BY_NAME = {name: code for code, (name, _) in DTYPES.items()}
_T = TypeVar("_T")
_ARG = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


@dataclass(frozen=True)
class FrameInfo:
    """What a frame's header says, read without decoding its payload."""

    version: int
    dtype: str  # one of the allow-listed names, e.g. "float32", "bfloat16"
    shape: tuple[int, ...]
    chain: tuple[str, ...]  # codec names in encode order, e.g. ("int8", "zstd")
    params: tuple[bytes, ...]  # each stage's parameter bytes, same order
    header_nbytes: int  # everything before the payload
    payload_nbytes: int
    decoded_nbytes: int  # bytes of the decoded array

    @property
    def spec(self) -> str:
        """The chain as a spec string (without arguments), e.g. ``"int8+zstd"``."""
        return "+".join(self.chain)

    @property
    def frame_nbytes(self) -> int:
        return self.header_nbytes + self.payload_nbytes


def parse_spec(spec: str) -> list[tuple[ValueCodec | ByteCodec, str | None]]:
    """``"int4:99.9+shuffle+zstd:3"`` -> [(codec, arg), ...], a value codec first (``raw`` if omitted)."""
    if not isinstance(spec, str) or not spec.strip():
        raise CodecError(f"codec spec must be a non-empty string like 'int8+zstd', got {spec!r}")
    stages: list[tuple[ValueCodec | ByteCodec, str | None]] = []
    for token in spec.strip().split("+"):
        name, sep, arg = token.strip().partition(":")
        if sep and not _ARG.match(arg):
            raise CodecError(f"codec argument {arg!r} in spec {spec!r} is invalid; expected e.g. 'zstd:3'")
        stages.append((get_codec(name), arg if sep else None))
    if isinstance(stages[0][0], ByteCodec):
        stages.insert(0, (get_codec("raw"), None))
    _check_chain([codec for codec, _ in stages], f"spec {spec!r}")
    return stages


def _check_chain(codecs: list[ValueCodec | ByteCodec], where: str) -> None:
    if not 1 <= len(codecs) <= MAX_STAGES:
        raise CodecError(f"{where}: expected 1 to {MAX_STAGES} codec stages, found {len(codecs)}")
    if not isinstance(codecs[0], ValueCodec):
        raise CodecError(
            f"{where}: the first stage must be a value codec (raw, fp16, int8, ...), found {codecs[0].name!r}"
        )
    for i, codec in enumerate(codecs[1:], start=1):
        if not isinstance(codec, ByteCodec):
            raise CodecError(
                f"{where}: stage {i} is {codec.name!r}; only the first stage may be a value codec"
            )
    for i, codec in enumerate(codecs[1:], start=1):
        if isinstance(codec, ByteCodec) and not codec.size_preserving and i != len(codecs) - 1:
            raise CodecError(f"{where}: {codec.name!r} changes the byte count, so it must be the last stage")


def _dtype_code(array: np.ndarray, bfloat16: bool) -> tuple[int, np.ndarray]:
    """The frame dtype code and a C-contiguous little-endian array to store."""
    dt = array.dtype
    native = dt.name == "bfloat16"  # ml_dtypes' bfloat16
    if bfloat16 or native:  # or uint16 bit patterns flagged by the caller
        if dt.itemsize != 2 or not (native or dt.kind == "u"):
            raise CodecError(f"bfloat16 frames take uint16 bit patterns (or a bfloat16 dtype), got {dt}")
        if not native:  # uint16 bit patterns, possibly big-endian: convert values, not bytes
            return 3, array.astype("<u2", order="C", copy=False)
        return 3, array.astype(dt, order="C", copy=False).view("<u2")  # a native bfloat16 dtype
    name = "bool" if dt.kind == "b" else dt.newbyteorder("=").name
    code = _CODE_BY_NAME.get(name)
    if code is None or name == "bfloat16":
        raise CodecError(
            f"dtype {dt} cannot be framed; allowed: {', '.join(_CODE_BY_NAME)} (cast float64 to float32)"
        )
    return code, array.astype(DTYPES[code][1], order="C", copy=False)  # keeps rank 0


def encode(array: np.ndarray, spec: str = "raw", *, bfloat16: bool = False) -> bytes:
    """Encode ``array`` as one version-1 frame with the codec chain ``spec`` (e.g. ``"int8+zstd"``).

    ``bfloat16=True`` marks a uint16 array as bfloat16 bit patterns (lossless codecs only).
    """
    if not isinstance(array, np.ndarray):
        raise CodecError(f"encode takes a numpy.ndarray, got {type(array).__name__}")
    if isinstance(array, np.ma.MaskedArray):  # its mask would be lost
        raise CodecError(
            "encode takes a plain numpy.ndarray, got a masked array; fill it first (array.filled(...))"
        )
    array = np.asarray(array)  # a subclass (np.matrix keeps 2 dimensions through reshape) as a plain array
    stages = parse_spec(spec)
    code, arr = _dtype_code(array, bfloat16)
    if arr.ndim > MAX_RANK:
        raise CodecError(f"rank {arr.ndim} exceeds the frame maximum {MAX_RANK}")
    if any(d > MAX_DIM for d in arr.shape) or arr.size > MAX_ELEMENTS:
        raise CodecError(
            f"shape {arr.shape} exceeds the frame limits ({MAX_DIM} per dim, {MAX_ELEMENTS} elements)"
        )
    value, arg = stages[0]
    assert isinstance(value, ValueCodec)
    if not value.accepts(arr.dtype) or (code == 3 and not value.lossless):
        raise CodecError(
            f"codec {value.name!r} cannot encode dtype {DTYPES[code][0]}; "
            "use 'raw' or 'zstd' (lossy codecs take float32)"
        )
    params, data = value.encode(arr, arg)
    all_params = [params]
    itemsize = value.stored_itemsize(arr.dtype)
    for codec, arg in stages[1:]:
        assert isinstance(codec, ByteCodec)
        params, data = codec.encode(data, arg, itemsize)
        all_params.append(params)
    parts: list[Buffer] = [_FIXED.pack(MAGIC, VERSION, code, arr.ndim, len(stages))]
    parts += [_DIM.pack(d) for d in arr.shape]
    for (codec, _), params in zip(stages, all_params, strict=True):
        if len(params) > MAX_PARAMS_BYTES:
            raise CodecError(
                f"codec {codec.name!r} made {len(params)} parameter bytes; max {MAX_PARAMS_BYTES}"
            )
        name = codec.name.encode("ascii")
        parts += [bytes([len(name)]), name, _PARAMS_LEN.pack(len(params)), params]
    parts.append(_PAYLOAD_LEN.pack(len(data)))
    parts.append(data)
    return b"".join(parts)


class _Reader:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise CodecError(
                f"frame truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.buf) - self.pos} remain"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def _parse(frame: Buffer, max_decoded_bytes: int):
    try:  # any integer (numpy's too), not a bool, a float or None
        if isinstance(max_decoded_bytes, bool):
            raise TypeError
        max_decoded_bytes = operator.index(max_decoded_bytes)
    except TypeError:
        raise CodecError(f"max_decoded_bytes must be an integer >= 0, found {max_decoded_bytes!r}") from None
    if max_decoded_bytes < 0:
        raise CodecError(f"max_decoded_bytes must be an integer >= 0, found {max_decoded_bytes!r}")
    try:
        buf = memoryview(frame).cast("B")
    except TypeError as exc:
        raise CodecError(f"a frame must be bytes-like, got {type(frame).__name__}") from exc
    r = _Reader(buf)
    magic, version, code, rank, n_stages = _FIXED.unpack(r.take(_FIXED.size, "the fixed header"))
    if magic != MAGIC:
        raise CodecError(f"not a splitdnn tensor frame: expected magic {MAGIC!r}, found {bytes(magic)!r}")
    if version != VERSION:
        raise CodecError(f"unsupported frame version {version}; this splitdnn reads version {VERSION}")
    if code not in DTYPES:
        raise CodecError(
            f"unknown dtype code {code}; allowed codes: "
            + ", ".join(f"{c}={n}" for c, (n, _) in DTYPES.items())
        )
    dtype_name, dtype = DTYPES[code]
    if rank > MAX_RANK:
        raise CodecError(f"rank {rank} exceeds the maximum {MAX_RANK}")
    if not 1 <= n_stages <= MAX_STAGES:
        raise CodecError(f"expected 1 to {MAX_STAGES} codec stages, found {n_stages}")
    shape = tuple(_DIM.unpack(r.take(_DIM.size, f"dim {i}"))[0] for i in range(rank))
    for i, d in enumerate(shape):
        if d > MAX_DIM:
            raise CodecError(f"dim {i} is {d}; the maximum is {MAX_DIM}")
    n = extent = 1
    for d in shape:
        n *= d  # Python ints: no overflow, and every factor is already bounded
        extent *= max(d, 1)
    if extent > MAX_ELEMENTS:  # numpy cannot even describe an empty array this wide
        raise CodecError(
            f"shape {shape} has {extent} elements (zero dimensions counted as 1); the maximum is "
            f"{MAX_ELEMENTS}"
        )
    decoded = n * dtype.itemsize
    if decoded > max_decoded_bytes:
        raise CodecError(
            f"frame decodes to {decoded} bytes ({dtype_name}{list(shape)}), over the cap "
            f"max_decoded_bytes={max_decoded_bytes}; raise the cap if this size is expected"
        )
    codecs: list[ValueCodec | ByteCodec] = []
    params: list[bytes] = []
    for i in range(n_stages):
        name_len = r.take(1, f"stage {i} name length")[0]
        if not 1 <= name_len <= 16:
            raise CodecError(f"stage {i}: codec name length must be 1..16, found {name_len}")
        raw_name = bytes(r.take(name_len, f"stage {i} name"))
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise CodecError(f"stage {i}: codec name {raw_name!r} is not ASCII") from None
        codecs.append(get_codec(name))
        (p_len,) = _PARAMS_LEN.unpack(r.take(_PARAMS_LEN.size, f"stage {i} params length"))
        if p_len > MAX_PARAMS_BYTES:
            raise CodecError(f"stage {i}: {p_len} parameter bytes, over the maximum {MAX_PARAMS_BYTES}")
        params.append(bytes(r.take(p_len, f"stage {i} params")))
    _check_chain(codecs, "frame")
    (payload_len,) = _PAYLOAD_LEN.unpack(r.take(_PAYLOAD_LEN.size, "payload length"))
    header_len = r.pos
    remaining = len(buf) - header_len
    if payload_len != remaining:
        raise CodecError(
            f"header says the payload is {payload_len} bytes; the frame holds {remaining} "
            + ("(trailing bytes are refused)" if remaining > payload_len else "(truncated)")
        )
    value = codecs[0]
    assert isinstance(value, ValueCodec)
    stored = _guard(value.name, value.stored_nbytes, shape, dtype, params[0])
    if not isinstance(stored, int) or stored < 0:
        raise CodecError(f"codec {value.name!r} reported a stored size of {stored!r}; expected an int >= 0")
    _check_stored(value.name, stored, max_decoded_bytes)
    if all(getattr(c, "size_preserving", True) for c in codecs[1:]) and payload_len != stored:
        raise CodecError(
            f"payload is {payload_len} bytes; {dtype_name}{list(shape)} with "
            f"{'+'.join(c.name for c in codecs)} needs exactly {stored}"
        )
    info = FrameInfo(
        VERSION,
        dtype_name,
        shape,
        tuple(c.name for c in codecs),
        tuple(params),
        header_len,
        payload_len,
        decoded,
    )
    return info, codecs, dtype, stored, buf[header_len:]


def _check_stored(name: str, stored: int, cap: int) -> None:
    if stored > cap:
        raise CodecError(f"codec {name!r} stores {stored} bytes, over the cap max_decoded_bytes={cap}")


def _guard(name: str, fn: Callable[..., _T], *args: Any) -> _T:
    """Call a codec's decode-side method; a (user) codec's own exception becomes a CodecError."""
    try:
        return fn(*args)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"codec {name!r} failed on this frame: {type(exc).__name__}: {exc}") from exc


def describe(frame: Buffer, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> FrameInfo:
    """Validate and return a frame's header, without decoding its payload."""
    return _parse(frame, max_decoded_bytes)[0]


def decode(
    frame: Buffer,
    *,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    reserve: Callable[[FrameInfo], None] | None = None,
) -> np.ndarray:
    """Decode one frame into a writable array; every failure is a :class:`CodecError`.

    The header is fully validated, and every size checked against ``max_decoded_bytes``, before any
    payload byte is decoded. bfloat16 frames decode to uint16 bit patterns.

    ``reserve``, if given, is called with the validated header (what :func:`describe` gives) before
    any payload byte is decoded, and may raise to refuse the frame (its exception propagates as it
    is). The decode then works within the bytes the header declares: the stored size is capped at
    ``info.decoded_nbytes`` too, exactly as ``decode(frame, max_decoded_bytes=info.decoded_nbytes)``
    after a :func:`describe` would. One header parse instead of two, for a caller that books memory
    by the decoded size first (the tail server's in-flight budget).
    """
    info, codecs, dtype, stored, payload = _parse(frame, max_decoded_bytes)
    if reserve is not None:
        reserve(info)
        _check_stored(codecs[0].name, stored, info.decoded_nbytes)
    data: Buffer = payload
    for codec, params in zip(reversed(codecs[1:]), reversed(info.params[1:]), strict=True):
        assert isinstance(codec, ByteCodec)
        data = _guard(codec.name, codec.decode, memoryview(data).cast("B"), params, stored)
        if len(data) != stored:
            raise CodecError(f"codec {codec.name!r} produced {len(data)} bytes; expected {stored}")
    value = codecs[0]
    assert isinstance(value, ValueCodec)
    out = _guard(value.name, value.decode, memoryview(data).cast("B"), info.shape, dtype, info.params[0])
    if not isinstance(out, np.ndarray):
        raise CodecError(f"codec {value.name!r} returned {type(out).__name__}; expected a numpy array")
    if out.shape != info.shape or out.dtype != dtype:
        raise CodecError(
            f"codec {value.name!r} decoded {out.dtype}{list(out.shape)}; expected {dtype}{list(info.shape)}"
        )
    return out


def error_bound(spec: str, array: np.ndarray) -> float:
    """The max abs error ``spec`` guarantees on ``array``'s finite values (0.0 for lossless chains).

    Runs the chain's value codec once (byte stages are lossless and skipped).
    """
    stages = parse_spec(spec)
    value, arg = stages[0]
    assert isinstance(value, ValueCodec)
    if value.lossless:
        return 0.0
    code, arr = _dtype_code(np.asarray(array), False)
    if not value.accepts(arr.dtype):
        raise CodecError(f"codec {value.name!r} cannot encode dtype {DTYPES[code][0]}")
    params, _ = value.encode(arr, arg)
    return value.error_bound(arr, params)
