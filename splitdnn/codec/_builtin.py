"""The built-in codecs: raw, fp16, bf16, affine int8/int8c/int4/int2, and the byte stages shuffle and zstd."""

from __future__ import annotations

import math
import os
import re
import struct
import threading

import numpy as np
import zstandard

from splitdnn.codec._registry import Buffer, ByteCodec, ValueCodec, register_codec
from splitdnn.errors import CodecError

_F32 = np.dtype("<f4")
_EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
_F32_MAX = float(np.finfo(np.float32).max)
_FP16_MAX = 65504.0


def _as_bytes(a: np.ndarray) -> memoryview:
    """A flat byte view of C-contiguous ``a`` (no copy; works for empty arrays too)."""
    return a.reshape(-1).view(np.uint8).data


def _finite_abs_max(x: np.ndarray) -> float:
    """Largest |value| over the finite values of float32 ``x`` (0.0 if none)."""
    if x.size == 0:
        return 0.0
    lo, hi = float(x.min()), float(x.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return max(-lo, hi)
    finite = x[np.isfinite(x)]
    return float(np.abs(finite).max()) if finite.size else 0.0


# ---------------------------------------------------------------------------------------------- raw


class RawCodec(ValueCodec):
    """The array's own little-endian bytes. Lossless for every allowed dtype (NaN and inf included)."""

    name = "raw"
    lossless = True

    def accepts(self, dtype: np.dtype) -> bool:
        return True  # the frame layer has already checked the allow-list

    def stored_itemsize(self, dtype: np.dtype) -> int:
        return dtype.itemsize

    def encode(self, array: np.ndarray, arg: str | None) -> tuple[bytes, Buffer]:
        if arg is not None:
            raise CodecError(f"codec 'raw' takes no argument, got {arg!r}")
        return b"", _as_bytes(array)

    def stored_nbytes(self, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> int:
        if params:
            raise CodecError(f"codec 'raw' expects 0 parameter bytes, found {len(params)}")
        return math.prod(shape) * dtype.itemsize

    def decode(
        self, stored: memoryview, shape: tuple[int, ...], dtype: np.dtype, params: bytes
    ) -> np.ndarray:
        if dtype == np.dtype("bool") and len(stored):
            top = int(np.frombuffer(stored, np.uint8).max())
            if top > 1:
                raise CodecError(f"bool payload holds byte value {top}; expected only 0 or 1")
        return np.frombuffer(stored, dtype).reshape(shape).copy()


# ------------------------------------------------------------------------------------- float casts


class Fp16Codec(ValueCodec):
    """float32 -> IEEE half. Bound: |err| <= max|x| * 2**-11 + 2**-25 over finite x; NaN/inf kept.

    Finite values beyond the half range (|x| > 65504) are refused rather than turned into inf.
    """

    name = "fp16"

    def stored_itemsize(self, dtype: np.dtype) -> int:
        return 2

    def encode(self, array: np.ndarray, arg: str | None) -> tuple[bytes, Buffer]:
        if arg is not None:
            raise CodecError(f"codec 'fp16' takes no argument, got {arg!r}")
        top = _finite_abs_max(array)
        if top > _FP16_MAX:
            raise CodecError(
                f"fp16 cannot hold |x| = {top:g} (max {_FP16_MAX:g}); use 'bf16', an int codec or 'raw'"
            )
        return b"", _as_bytes(array.astype("<f2"))

    def stored_nbytes(self, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> int:
        _check_float32(self.name, dtype, params, 0)
        return math.prod(shape) * 2

    def decode(
        self, stored: memoryview, shape: tuple[int, ...], dtype: np.dtype, params: bytes
    ) -> np.ndarray:
        return np.frombuffer(stored, "<f2").astype(_F32).reshape(shape)

    def error_bound(self, array: np.ndarray, params: bytes) -> float:
        return _finite_abs_max(array) * 2.0**-11 + 2.0**-25


class Bf16Codec(ValueCodec):
    """float32 -> bfloat16 (round to nearest even). Bound: |err| <= max|x| * 2**-8 + 2**-126; NaN/inf kept.

    Finite values that would round up to inf are clamped to the largest finite bfloat16.
    """

    name = "bf16"

    def stored_itemsize(self, dtype: np.dtype) -> int:
        return 2

    def encode(self, array: np.ndarray, arg: str | None) -> tuple[bytes, Buffer]:
        if arg is not None:
            raise CodecError(f"codec 'bf16' takes no argument, got {arg!r}")
        u = array.reshape(-1).view(np.uint32)  # (n,): a 0-d array too
        r = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
        r >>= np.uint32(16)
        out = r.astype("<u2")
        # from the input's bits, not the rounded ones: rounding a NaN with a high payload carries into
        # the sign bit (0x7FFFFFFF -> -0.0), and that is neither special nor NaN any more
        magnitude = u & np.uint32(0x7FFFFFFF)
        nan = magnitude > np.uint32(0x7F800000)
        overflow = ((out & np.uint16(0x7F80)) == np.uint16(0x7F80)) & (magnitude < np.uint32(0x7F800000))
        if nan.any():
            out[nan] = 0x7FC0
        if overflow.any():  # finite values rounded up to inf: the largest finite bfloat16, same sign
            out[overflow] = (out[overflow] & np.uint16(0x8000)) | np.uint16(0x7F7F)
        return b"", _as_bytes(out)

    def stored_nbytes(self, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> int:
        _check_float32(self.name, dtype, params, 0)
        return math.prod(shape) * 2

    def decode(
        self, stored: memoryview, shape: tuple[int, ...], dtype: np.dtype, params: bytes
    ) -> np.ndarray:
        u = np.frombuffer(stored, "<u2").astype(np.uint32)
        u <<= np.uint32(16)
        return u.view(_F32).reshape(shape)

    def error_bound(self, array: np.ndarray, params: bytes) -> float:
        return _finite_abs_max(array) * 2.0**-8 + 2.0**-126


def _check_float32(name: str, dtype: np.dtype, params: bytes, n_params: int) -> None:
    if dtype != _F32:
        raise CodecError(f"codec {name!r} decodes to float32, but the frame says dtype {dtype}")
    if len(params) != n_params:
        raise CodecError(f"codec {name!r} expects {n_params} parameter bytes, found {len(params)}")


# ------------------------------------------------------------------------------------------ affine

_AFFINE = struct.Struct("<ff")  # lo, scale: x ~= lo + q * scale, q in [0, 2**bits - 1]


#: ``int4:aciq``: analytic clipping instead of a percentile (see :func:`aciq_alpha`)
ACIQ = "aciq"


def _parse_clip(name: str, arg: str | None, default: float | None) -> float | str | None:
    """The clip rule of an affine codec: None (min..max), a percentile in (50, 100), or ``"aciq"``."""
    if arg is None:
        return default
    if arg == ACIQ:
        return ACIQ
    try:
        pct = float(arg)
    except ValueError:
        pct = float("nan")
    if not 50.0 < pct <= 100.0:
        raise CodecError(f"codec {name!r}: clip percentile must be in (50, 100] or 'aciq', got {arg!r}")
    return None if pct == 100.0 else pct


_ACIQ_T: dict[int, float] = {}


def aciq_alpha(bits: int) -> float:
    """ACIQ's optimal clip for a Laplace(b) tensor quantized to ``bits`` bits over [-alpha, alpha], in b.

    After Banner, Nahshan and Soudry, "Post training 4-bit quantization of convolutional networks for
    rapid-deployment" (NeurIPS 2019; the "ACIQ" analytical clipping): clipping at alpha costs
    2 b**2 exp(-alpha / b) of expected squared error (the Laplace tails moved to the edge), rounding
    costs alpha**2 / (3 * 4**bits) (2**bits uniform bins of width 2 alpha / 2**bits), and the sum is least
    where exp(-t) = t / (3 * 4**bits), t = alpha / b. Solved here by bisection: 2.83, 3.89, 5.03 and
    9.89 for 2, 3, 4 and 8 bits, the paper's figures.
    """
    t = _ACIQ_T.get(bits)
    if t is None:
        k = 3.0 * 4.0**bits
        lo, hi = 0.0, 64.0  # exp(-t) - t / k falls from 1 at t = 0 to below 0 at t = 64
        for _ in range(100):
            mid = (lo + hi) / 2
            if math.exp(-mid) > mid / k:
                lo = mid
            else:
                hi = mid
        t = _ACIQ_T[bits] = (lo + hi) / 2
    return t


def _aciq_range(sample: np.ndarray, bits: int, xmin: float, xmax: float) -> tuple[float, float]:
    """ACIQ clip range of ``sample`` (float64) for ``bits`` bits, inside [xmin, xmax].

    Two-sided data: fit Laplace(mu, b) (mu = median, b = mean |x - mu|, the maximum-likelihood fit) and
    clip to mu -/+ aciq_alpha(bits) * b. One-sided data (min >= 0, e.g. ReLU outputs): fit the positive
    values as an exponential (b = their mean) and clip to [0, aciq_alpha(bits + 1) * b]: 2**bits levels
    on [0, alpha] have the step of 2**(bits + 1) levels on [-alpha, alpha], so the symmetric optimum
    for one more bit is the one-sided optimum.
    """
    if xmin >= 0.0:
        pos = sample[sample > 0]
        if pos.size == 0:
            return xmin, xmax
        return xmin, min(xmax, aciq_alpha(bits + 1) * float(pos.mean()))
    mu = float(np.median(sample))
    b = float(np.abs(sample - mu).mean())
    alpha = aciq_alpha(bits) * b
    return max(xmin, mu - alpha), min(xmax, mu + alpha)


def _range(x: np.ndarray, clip: float | str | None, bits: int = 8) -> tuple[float, float, float, float]:
    """(clip lo, clip hi, min, max) of finite float32 ``x``; the clip range always contains 0."""
    xmin, xmax = float(x.min()), float(x.max())
    if not (math.isfinite(xmin) and math.isfinite(xmax)):
        raise CodecError("integer codecs need finite values; found NaN or inf (use 'raw', 'zstd' or 'fp16')")
    lo, hi = xmin, xmax
    if clip is not None:
        flat = x.reshape(-1)
        sample = flat[:: max(1, flat.size // 65536)]  # a strided sample keeps this O(65k), not a sort of x
        if clip == ACIQ:
            lo, hi = _aciq_range(sample.astype(np.float64), bits, xmin, xmax)
        else:
            lo, hi = (float(v) for v in np.percentile(sample, [100.0 - float(clip), clip]))
    return min(lo, 0.0), max(hi, 0.0), xmin, xmax


def _affine_scale(lo: float, hi: float, levels: int) -> tuple[np.float32, np.float32, np.float64]:
    """(lo, scale) in float32 and 1/scale in float64; a zero range gives scale 0 (all decode to lo).

    1/scale stays float64: for a range under about ``levels`` x 2.9e-39 (scale subnormal) it is over
    float32's maximum, and :func:`_quantize` then works in float64.
    """
    lo32 = np.float32(lo)
    scale32 = np.float32((hi - lo) / levels)
    inv = np.float64(1.0 / float(scale32)) if scale32 > 0 else np.float64(0.0)
    return lo32, scale32, inv


def _inverse_scales(scale: np.ndarray) -> np.ndarray:
    """1/scale per element in float64 (0 where scale is 0), as :func:`_affine_scale` for arrays."""
    wide = scale.astype(np.float64)
    return np.divide(1.0, wide, out=np.zeros_like(wide), where=wide > 0)


def _quantize(x: np.ndarray, lo, inv, levels: int) -> np.ndarray:
    """codes = clip(floor((x - lo) / scale + 0.5), 0, levels) as uint8; lo, inv broadcast against x.

    In float32 (a scratch the size of x), unless some 1/scale does not fit in float32 (a range of
    ~1e-36 or less: subnormal scales), where float32 would turn it into inf and every code into
    garbage; then in float64.
    """
    if np.max(inv) > _F32_MAX:
        buf = np.multiply(x, inv, dtype=np.float64)
        buf += 0.5 - np.asarray(lo, np.float64) * inv
    else:
        inv32 = np.asarray(inv, dtype=_F32)
        buf = np.multiply(x, inv32, dtype=_F32)  # (x.shape) float32 scratch
        buf += np.float32(0.5) - lo * inv32
    np.clip(buf, 0, levels, out=buf)
    return buf.astype(np.uint8)


def _finite_range(lo: float, scale: float, levels: int) -> bool:
    """Whether decoding (``codes * scale + lo`` in float32, codes up to ``levels``) stays finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        span = np.float32(levels) * np.float32(scale)
        return bool(np.isfinite(span) and np.isfinite(np.float32(lo) + span))


def _dequantize(codes: np.ndarray, lo, scale) -> np.ndarray:
    out = np.multiply(codes, scale, dtype=_F32)
    out += lo
    return out


def _affine_bound(lo: float, scale: float, levels: int, xmin: float, xmax: float) -> float:
    top = lo + levels * scale
    clipped = max(0.0, xmax - top, lo - xmin)  # values outside the clip range move to its edge
    slack = 16 * _EPS32 * (max(abs(lo), abs(top)) + scale)  # float32 rounding in encode and decode
    return scale / 2 + clipped + slack


class AffineCodec(ValueCodec):
    """Affine per-tensor quantization of float32 to ``bits`` bits, bit-packed for bits < 8.

    x ~= lo + q * scale with q = round((x - lo) / scale) in [0, 2**bits - 1]; the range [lo, hi] is
    min..max (or the [100-p, p] percentiles with the argument ``p``, or ACIQ's analytic range from a
    fitted Laplace scale with the argument ``aciq``, clipping outliers) widened to contain 0, so ReLU
    zeros stay exactly zero. Bound: |err| <= scale / 2 for values in [lo, hi]
    (plus float32 rounding slack); clipped outliers add their distance to the range.
    Params: ``<ff`` lo, scale.
    """

    lossless = False

    def __init__(self, name: str, bits: int, default_pct: float | None) -> None:
        self.name = name
        self.bits = bits
        self.levels = (1 << bits) - 1
        self.per_byte = 8 // bits
        self.default_pct = default_pct

    def encode(self, array: np.ndarray, arg: str | None) -> tuple[bytes, Buffer]:
        clip = _parse_clip(self.name, arg, self.default_pct)
        x = array.reshape(-1)  # (n,)
        if x.size == 0:
            return _AFFINE.pack(0.0, 0.0), b""
        lo, hi, _, _ = _range(x, clip, self.bits)
        lo32, scale32, inv = _affine_scale(lo, hi, self.levels)
        if not _finite_range(float(lo32), float(scale32), self.levels):
            raise CodecError(
                f"codec {self.name!r}: the values span [{lo:g}, {hi:g}], too wide for float32 arithmetic "
                f"(lo + {self.levels} * scale overflows); use a lossless codec or bf16 for this tensor"
            )
        codes = _quantize(x, lo32, inv, self.levels)  # (n,) uint8
        return _AFFINE.pack(lo32, scale32), _pack(codes, self.bits)

    def stored_nbytes(self, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> int:
        _check_float32(self.name, dtype, params, _AFFINE.size)
        lo, scale = _AFFINE.unpack(params)
        if not (math.isfinite(lo) and math.isfinite(scale) and scale >= 0):
            raise CodecError(
                f"codec {self.name!r}: expected finite lo and scale >= 0, found {lo!r}, {scale!r}"
            )
        if not _finite_range(lo, scale, self.levels):
            raise CodecError(f"codec {self.name!r}: range lo + {self.levels} * scale overflows float32")
        return -(-math.prod(shape) // self.per_byte)

    def decode(
        self, stored: memoryview, shape: tuple[int, ...], dtype: np.dtype, params: bytes
    ) -> np.ndarray:
        lo, scale = _AFFINE.unpack(params)
        codes = _unpack(np.frombuffer(stored, np.uint8), self.bits, math.prod(shape))
        return _dequantize(codes, np.float32(lo), np.float32(scale)).reshape(shape)

    def error_bound(self, array: np.ndarray, params: bytes) -> float:
        if array.size == 0:
            return 0.0
        lo, scale = _AFFINE.unpack(params)
        return _affine_bound(lo, scale, self.levels, float(array.min()), float(array.max()))


def _pack(codes: np.ndarray, bits: int) -> Buffer:
    """(n,) uint8 codes < 2**bits -> ceil(n * bits / 8) bytes, first element in the low bits."""
    if bits == 8:
        return _as_bytes(codes)
    per = 8 // bits
    pad = -codes.size % per
    if pad:
        codes = np.concatenate([codes, np.zeros(pad, np.uint8)])
    groups = codes.reshape(-1, per)  # (ceil(n / per), per)
    out = groups[:, 0].copy()
    for i in range(1, per):
        out |= groups[:, i] << np.uint8(i * bits)
    return _as_bytes(out)


def _unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    if bits == 8:
        return packed
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((packed.size, per), np.uint8)  # (ceil(n / per), per)
    for i in range(per):
        np.bitwise_and(packed >> np.uint8(i * bits), mask, out=out[:, i])
    return out.reshape(-1)[:n]


_COUNT = struct.Struct("<I")


class Int8ChannelCodec(ValueCodec):
    """Affine int8 per channel (axis 1 of an array of rank >= 2), min..max of each channel widened to 0.

    Bound: |err| <= scale_c / 2 in channel c (plus float32 rounding slack).
    Params: ``<I`` C, then C float32 lo, then C float32 scale.
    """

    name = "int8c"
    levels = 255

    def encode(self, array: np.ndarray, arg: str | None) -> tuple[bytes, Buffer]:
        if arg is not None:
            raise CodecError(f"codec 'int8c' takes no argument, got {arg!r}")
        if array.ndim < 2:
            raise CodecError(
                f"codec 'int8c' quantizes per channel along axis 1; needs rank >= 2, got {array.ndim}"
            )
        c = array.shape[1]
        x = array.reshape(array.shape[0], c, math.prod(array.shape[2:]))  # (N, C, rest)
        if x.size == 0:
            return _COUNT.pack(c) + np.zeros(2 * c, "<f4").tobytes(), b""
        xmin, xmax = x.min(axis=(0, 2)), x.max(axis=(0, 2))  # (C,)
        if not (np.isfinite(xmin).all() and np.isfinite(xmax).all()):
            raise CodecError(
                "integer codecs need finite values; found NaN or inf (use 'raw', 'zstd' or 'fp16')"
            )
        lo = np.minimum(xmin, 0).astype(_F32)
        with np.errstate(over="ignore", invalid="ignore"):
            scale = ((np.maximum(xmax, 0).astype(np.float64) - lo) / self.levels).astype(_F32)
            top = lo + np.float32(self.levels) * scale
        if not (np.isfinite(scale).all() and np.isfinite(top).all()):  # what decoding checks, too
            c_bad = int(np.flatnonzero(~(np.isfinite(scale) & np.isfinite(top)))[0])
            raise CodecError(
                f"codec 'int8c': channel {c_bad} spans [{float(xmin[c_bad]):g}, {float(xmax[c_bad]):g}], too "
                f"wide for float32 arithmetic (lo + {self.levels} * scale overflows); use a lossless codec "
                f"or bf16 for this tensor"
            )
        codes = _quantize(x, lo[None, :, None], _inverse_scales(scale)[None, :, None], self.levels)
        return _COUNT.pack(c) + lo.tobytes() + scale.tobytes(), _as_bytes(codes)

    def _params(self, params: bytes) -> tuple[np.ndarray, np.ndarray]:
        c = _COUNT.unpack_from(params)[0]
        return (np.frombuffer(params, "<f4", c, 4), np.frombuffer(params, "<f4", c, 4 + 4 * c))

    def stored_nbytes(self, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> int:
        if len(shape) < 2:
            raise CodecError(f"codec 'int8c' needs rank >= 2, the frame has rank {len(shape)}")
        _check_float32(self.name, dtype, params, 4 + 8 * shape[1])
        if _COUNT.unpack_from(params)[0] != shape[1]:
            raise CodecError(
                f"codec 'int8c': {_COUNT.unpack_from(params)[0]} channels in params, shape[1] is {shape[1]}"
            )
        lo, scale = self._params(params)
        with np.errstate(over="ignore", invalid="ignore"):
            top = lo + np.float32(self.levels) * scale
            ok = np.isfinite(lo).all() and np.isfinite(top).all() and (scale >= 0).all()
        if not ok:
            raise CodecError(
                "codec 'int8c': expected finite lo, scale >= 0 and a finite range in every channel"
            )
        return math.prod(shape)

    def decode(
        self, stored: memoryview, shape: tuple[int, ...], dtype: np.dtype, params: bytes
    ) -> np.ndarray:
        lo, scale = self._params(params)
        codes = np.frombuffer(stored, np.uint8).reshape(
            shape[0], shape[1], math.prod(shape[2:])
        )  # (N, C, rest)
        return _dequantize(codes, lo[None, :, None], scale[None, :, None]).reshape(shape)

    def error_bound(self, array: np.ndarray, params: bytes) -> float:
        if array.size == 0:
            return 0.0
        lo, scale = self._params(params)
        x = array.reshape(array.shape[0], array.shape[1], math.prod(array.shape[2:]))
        xmin, xmax = x.min(axis=(0, 2)), x.max(axis=(0, 2))
        return max(
            _affine_bound(float(a), float(s), self.levels, float(mn), float(mx))
            for a, s, mn, mx in zip(lo, scale, xmin, xmax, strict=True)
        )


# ------------------------------------------------------------------------------------ byte stages


class ShuffleCodec(ByteCodec):
    """Byte shuffle: byte k of every element together, then byte k+1 ... (helps zstd on floats).

    Argument: the element size in bytes (default: the value codec's stored element size).
    Params: ``<B`` itemsize.
    """

    name = "shuffle"

    def encode(self, data: Buffer, arg: str | None, itemsize: int) -> tuple[bytes, Buffer]:
        if arg is not None:
            if not arg.isdigit() or not 1 <= int(arg) <= 16:
                raise CodecError(f"codec 'shuffle': itemsize must be an integer in 1..16, got {arg!r}")
            itemsize = int(arg)
        raw = np.frombuffer(data, np.uint8)
        if raw.size % itemsize:
            raise CodecError(f"codec 'shuffle': {raw.size} bytes is not a multiple of itemsize {itemsize}")
        return bytes([itemsize]), raw.reshape(-1, itemsize).T.tobytes()

    def decode(self, data: memoryview, params: bytes, expected_nbytes: int) -> Buffer:
        if len(params) != 1 or not 1 <= params[0] <= 16:
            raise CodecError(f"codec 'shuffle': expected 1 parameter byte in 1..16, found {bytes(params)!r}")
        itemsize = params[0]
        if len(data) != expected_nbytes:
            raise CodecError(f"codec 'shuffle': expected {expected_nbytes} bytes, found {len(data)}")
        if expected_nbytes % itemsize:
            raise CodecError(
                f"codec 'shuffle': {expected_nbytes} bytes are not whole elements of {itemsize} bytes, "
                f"as its parameter says"
            )
        return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_LOCAL = threading.local()
_ZSTD_ARG = re.compile(r"^(-?[0-9]+)?(?:t([0-9]+|auto))?$")

#: ``zstd:...tauto`` compresses with several threads only from this many input bytes up. Measured on a
#: shared 2-core VM (``scripts/bench_codec.py --zstd-threads``, docs/results/codec-zstd-threads.md):
#: 2 threads gave 0.8-1.2x below 4 MiB into zstd (thread hand-off and 1 MiB jobs cost what the second
#: core saves, when it is free at all) and 0.9-1.45x at 4-12.8 MiB; the rule only keeps threads away
#: from where they cannot pay. Single-threaded stays the default everywhere.
ZSTD_MT_MIN_BYTES = 4 << 20
#: input bytes per multi-threaded zstd job (zstd's default job is 4x the window, several MiB at low
#: levels, which leaves a tensor of a few MiB in one job: no parallelism at all)
ZSTD_MT_JOB_BYTES = 1 << 20
ZSTD_MAX_THREADS = 64


def _zstd_options(arg: str | None) -> tuple[int, int | None]:
    """``zstd:[LEVEL][tTHREADS|tauto]`` -> (level, threads); threads None = auto, 1 = single-threaded."""
    if arg is None:
        return 3, 1
    m = _ZSTD_ARG.match(arg)
    if m is None or not arg:
        raise CodecError(
            f"codec 'zstd': argument must be LEVEL, LEVELtTHREADS, tTHREADS or LEVELtauto "
            f"(e.g. 3, 3t2, t4, 1tauto), got {arg!r}"
        )
    level = 3 if m.group(1) is None else int(m.group(1))
    if not -7 <= level <= 22:
        raise CodecError(f"codec 'zstd': level must be an integer in -7..22, got {m.group(1)!r}")
    if m.group(2) is None:
        return level, 1
    if m.group(2) == "auto":
        return level, None
    threads = int(m.group(2))
    if not 1 <= threads <= ZSTD_MAX_THREADS:
        raise CodecError(
            f"codec 'zstd': threads must be an integer in 1..{ZSTD_MAX_THREADS} or 'auto', got {m.group(2)!r}"
        )
    return level, threads


def _auto_threads(nbytes: int) -> int:
    cores = os.cpu_count() or 1
    return min(cores, 8) if nbytes >= ZSTD_MT_MIN_BYTES and cores > 1 else 1


class ZstdCodec(ByteCodec):
    """zstd, one frame with its content size declared.

    Argument ``[LEVEL][tTHREADS|tauto]``: the level (default 3; -7..22), then optionally the number of
    compression threads (``zstd:3t2``: level 3 on 2 threads; ``zstd:t4``; ``zstd:3tauto``: several
    threads only for inputs of at least :data:`ZSTD_MT_MIN_BYTES`, where that measurably pays). Threads
    only change how the encoder works (1 MiB jobs compressed in parallel): the output is still one
    standard frame with its size declared, decoded by the same single-threaded decoder, and the frame
    format is unchanged.

    Decoding checks the frame's declared content size against the exact expected byte count *before*
    decompressing (zstandard ignores max_output_size when a frame declares its size), refuses frames
    that declare none, skippable frames and trailing data. Params: ``<b`` level (informative).
    """

    name = "zstd"
    size_preserving = False

    def encode(self, data: Buffer, arg: str | None, itemsize: int) -> tuple[bytes, Buffer]:
        level, threads = _zstd_options(arg)
        if threads is None:
            threads = _auto_threads(len(data))
        cache = _LOCAL.__dict__.setdefault("compressors", {})
        key = (level, threads)
        if key not in cache:
            if threads == 1:
                cache[key] = zstandard.ZstdCompressor(level=level, write_content_size=True)
            else:
                params = zstandard.ZstdCompressionParameters.from_level(
                    level, threads=threads, job_size=ZSTD_MT_JOB_BYTES, write_content_size=True
                )
                cache[key] = zstandard.ZstdCompressor(compression_params=params)
        return struct.pack("<b", level), cache[key].compress(data)

    def decode(self, data: memoryview, params: bytes, expected_nbytes: int) -> Buffer:
        if len(params) != 1:
            raise CodecError(f"codec 'zstd': expected 1 parameter byte, found {len(params)}")
        if bytes(data[:4]) != _ZSTD_MAGIC:
            raise CodecError(
                f"zstd payload must start with the zstd frame magic {_ZSTD_MAGIC.hex()}, "
                f"found {bytes(data[:4]).hex() or 'nothing'}"
            )
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd frame header is corrupt: {exc}") from exc
        if declared == -1:
            raise CodecError(
                f"zstd frame declares no content size; expected a declared size of {expected_nbytes}"
            )
        if declared != expected_nbytes:
            raise CodecError(
                f"zstd frame declares {declared} bytes of content; the header implies {expected_nbytes}"
            )
        if "dctx" not in _LOCAL.__dict__:
            _LOCAL.dctx = zstandard.ZstdDecompressor()
        try:
            out = _LOCAL.dctx.decompress(data, max_output_size=expected_nbytes, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd payload is corrupt: {exc}") from exc
        if len(out) != expected_nbytes:
            raise CodecError(f"zstd payload decompressed to {len(out)} bytes; expected {expected_nbytes}")
        return out


def register_builtins() -> None:
    """Register the built-in codecs (called once by ``splitdnn.codec``)."""
    for codec in (
        RawCodec(),
        Fp16Codec(),
        Bf16Codec(),
        AffineCodec("int8", 8, None),
        Int8ChannelCodec(),
        AffineCodec("int4", 4, 99.9),
        AffineCodec("int2", 2, 99.0),
        ShuffleCodec(),
        ZstdCodec(),
    ):
        register_codec(codec)
