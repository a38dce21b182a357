"""The codec interfaces (value codecs and byte codecs) and the registry that maps names to codecs."""

from __future__ import annotations

import abc
import re

import numpy as np

from splitdnn.errors import CodecError

__all__ = ["ByteCodec", "ValueCodec", "get_codec", "known_codecs", "register_codec", "unregister_codec"]

Buffer = bytes | bytearray | memoryview

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")


class ValueCodec(abc.ABC):
    """First stage of a chain: turns an array into stored bytes plus parameters, and back.

    ``encode`` gets a C-contiguous little-endian array of an allowed dtype and returns
    ``(params, stored)``. ``stored_nbytes`` must validate ``params`` (raise :class:`CodecError`)
    and return the exact length ``stored`` must have; it is called before any payload is decoded,
    so the decoder can refuse a frame before allocating. ``decode`` gets exactly that many bytes.
    """

    name: str = ""
    lossless: bool = False

    def accepts(self, dtype: np.dtype) -> bool:
        """Whether this codec can encode arrays of ``dtype`` (default: float32 only)."""
        return dtype == np.dtype("<f4")

    def stored_itemsize(self, dtype: np.dtype) -> int:
        """Bytes per stored element, the natural unit of a byte shuffle (default 1)."""
        return 1

    @abc.abstractmethod
    def encode(self, array: np.ndarray, arg: str | None) -> tuple[bytes, Buffer]:
        """``array`` -> (params, stored bytes)."""

    @abc.abstractmethod
    def stored_nbytes(self, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> int:
        """Validate ``params`` for this shape and dtype; return the exact stored byte length."""

    @abc.abstractmethod
    def decode(
        self, stored: memoryview, shape: tuple[int, ...], dtype: np.dtype, params: bytes
    ) -> np.ndarray:
        """Stored bytes -> a writable array of ``dtype`` and ``shape``."""

    def error_bound(self, array: np.ndarray, params: bytes) -> float:
        """Max abs error of decode(encode(array)) over the finite values of ``array`` (0.0 if lossless)."""
        return 0.0 if self.lossless else float("inf")


class ByteCodec(abc.ABC):
    """A later stage of a chain: bytes -> bytes (compression, shuffling), always lossless.

    A codec that is not ``size_preserving`` (zstd) must be the last stage, so every decoder knows the
    exact byte count it has to produce and can refuse anything else before allocating it.
    """

    name: str = ""
    size_preserving: bool = True

    @abc.abstractmethod
    def encode(self, data: Buffer, arg: str | None, itemsize: int) -> tuple[bytes, Buffer]:
        """``data`` -> (params, encoded bytes); ``itemsize`` is the stored element size."""

    @abc.abstractmethod
    def decode(self, data: memoryview, params: bytes, expected_nbytes: int) -> Buffer:
        """Encoded bytes -> exactly ``expected_nbytes`` bytes, never allocating more; else CodecError."""


_REGISTRY: dict[str, ValueCodec | ByteCodec] = {}


def register_codec(codec: ValueCodec | ByteCodec, *, replace: bool = False) -> None:
    """Make ``codec`` usable in specs and decodable in frames under ``codec.name``."""
    if not isinstance(codec, (ValueCodec, ByteCodec)):
        raise CodecError(f"expected a ValueCodec or ByteCodec instance, got {type(codec).__name__}")
    if not isinstance(codec.name, str) or not _NAME.match(codec.name):
        raise CodecError(
            f"codec name {codec.name!r} is invalid: expected 1-16 characters of [a-z0-9_] "
            "starting with a letter"
        )
    if codec.name in _REGISTRY and not replace:
        raise CodecError(f"codec {codec.name!r} is already registered; pass replace=True to override it")
    _REGISTRY[codec.name] = codec


def unregister_codec(name: str) -> None:
    """Remove a codec (mainly for tests); unknown names are an error."""
    if name not in _REGISTRY:
        raise CodecError(f"codec {name!r} is not registered; known codecs: {', '.join(known_codecs())}")
    del _REGISTRY[name]


def known_codecs() -> tuple[str, ...]:
    """Names of every registered codec, sorted."""
    return tuple(sorted(_REGISTRY))


def get_codec(name: str) -> ValueCodec | ByteCodec:
    """The codec registered as ``name``; CodecError listing the known codecs otherwise."""
    codec = _REGISTRY.get(name)
    if codec is None:
        raise CodecError(f"unknown codec {name!r}; known codecs: {', '.join(known_codecs())}")
    return codec
