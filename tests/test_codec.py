"""Tests for splitdnn.codec: golden bytes, exact lossless chains, lossy bounds, safe decoding, fuzzing."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import splitdnn
from splitdnn import codec
from splitdnn.codec import ByteCodec, CodecError, ValueCodec, decode, describe, encode, error_bound

LOSSLESS = ["raw", "zstd", "zstd:1", "shuffle+zstd", "raw+shuffle", "zstd:3t2", "zstd:tauto"]
LOSSY = [
    "fp16", "bf16", "int8", "int8:99.9", "int8c", "int4", "int4:100", "int2", "int2:100",
    "int8:aciq", "int4:aciq", "int2:aciq",
]  # fmt: skip
LOSSY_CHAINS = LOSSY + ["fp16+zstd", "int8+zstd", "int4+zstd", "int8c+zstd", "fp16+shuffle+zstd"]


def relu_like(shape=(2, 16, 9, 9), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(shape, dtype=np.float32) * 1.7 + 0.2, 0)


# ------------------------------------------------------------------------------------ golden bytes

HEAD_F32_2 = "53444e54010101010200000000000000"  # magic, v1, float32, rank 1, 1 stage, dim 2

GOLDEN = [
    (
        np.array([1.0, -2.0], np.float32),
        "raw",
        HEAD_F32_2 + "037261770000000008000000000000000000803f000000c0",
    ),
    (np.array(7, np.int64), "raw", "53444e5401080001037261770000000008000000000000000700000000000000"),
    (
        np.array([[True, False, True]]),
        "raw",
        "53444e54010902010100000000000000030000000000000003726177000000000300000000000000010001",
    ),
    (np.array([1.0, -2.0], np.float32), "fp16", HEAD_F32_2 + "0466703136000000000400000000000000003c00c0"),
    (np.array([1.0, -2.0], np.float32), "bf16", HEAD_F32_2 + "0462663136000000000400000000000000803f00c0"),
    (
        np.array([0.0, 1.0, 2.0], np.float32),
        "int8",  # lo = 0.0, scale = 2/255 (0x3c008081); codes 0, 127, 255
        "53444e5401010101030000000000000004696e743808000000000000008180003c0300000000000000007fff",
    ),
    (
        np.array([0.0, 1.0, 2.0], np.float32),
        "int4:100",  # scale = 2/15; codes 0, 7, 15 packed low nibble first: 0x70, 0x0f
        "53444e5401010101030000000000000004696e743408000000000000008988083e0200000000000000700f",
    ),
    (
        np.array([0.0, 1.0, 2.0, 3.0, 3.0], np.float32),
        "int2:100",  # scale 1; codes 0,1,2,3 | 3 -> 0b11100100, 0b00000011
        "53444e5401010101050000000000000004696e743208000000000000000000803f0200000000000000e403",
    ),
    (
        np.array([[0.0, 1.0], [2.0, -1.0]], np.float32),
        "int8c",  # C=2; lo = [0, -1]; scale = [2/255, 2/255]; codes row-major
        "53444e5401010201"
        "0200000000000000"
        "0200000000000000"
        "05696e743863"
        "14000000"
        "02000000"
        "00000000000080bf"
        "8180003c8180003c"
        "0400000000000000"
        "00ffff00",
    ),
    (
        np.array([1, 2], np.int16),
        "shuffle",  # raw + shuffle (itemsize 2): 01 00 02 00 -> 01 02 00 00
        "53444e5401060102020000000000000003726177000000000773687566666c650100000002040000000000000001020000",
    ),
]


@pytest.mark.parametrize(
    ("array", "spec", "hex_frame"), GOLDEN, ids=[g[1] + str(i) for i, g in enumerate(GOLDEN)]
)
def test_golden_bytes(array, spec, hex_frame):
    frame = encode(array, spec)
    assert frame.hex() == hex_frame
    out = decode(frame)
    assert out.shape == array.shape
    if codec.error_bound(spec, array) == 0:
        assert np.array_equal(out, array)


def test_golden_zstd_header_and_declared_size():
    frame = encode(np.zeros(4, np.float32), "zstd:3")
    header = "53444e540101010204000000000000000372617700000000047a7374640100000003"
    assert frame.hex().startswith(header)
    info = describe(frame)
    payload = frame[info.header_nbytes :]
    assert struct.unpack_from("<Q", frame, len(header) // 2)[0] == len(payload)
    assert payload[:4] == b"\x28\xb5\x2f\xfd"
    assert zstandard.frame_content_size(payload) == 16


def test_describe_reads_the_header_only():
    frame = bytearray(encode(relu_like(), "int8+zstd"))
    info = describe(frame)
    frame[-3:] = b"\x00\x00\x00"  # corrupt the zstd payload: describe does not look at it
    assert describe(frame) == info
    assert info.dtype == "float32" and info.shape == (2, 16, 9, 9) and info.chain == ("int8", "zstd")
    assert info.spec == "int8+zstd" and info.decoded_nbytes == 2 * 16 * 81 * 4
    assert info.frame_nbytes == len(frame)
    with pytest.raises(CodecError, match="zstd"):
        decode(frame)


# ------------------------------------------------------------------------------------- round trips

DTYPE_SAMPLES = {
    "float32": np.array([[0.0, -0.0, 1.5, np.nan], [np.inf, -np.inf, 1e-45, 3.4e38]], np.float32),
    "float16": np.array([0.0, np.nan, np.inf, -65504.0, 6e-8], np.float16),
    "int8": np.array([-128, 0, 127], np.int8),
    "uint8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "int16": np.array([-32768, 1, 32767], np.int16),
    "int32": np.array([[-(2**31), 2**31 - 1]], np.int32),
    "int64": np.array([-(2**63), 2**63 - 1, 0], np.int64),
    "bool": np.array([[True, False], [False, True]]),
}


@pytest.mark.parametrize("spec", LOSSLESS)
@pytest.mark.parametrize("name", sorted(DTYPE_SAMPLES))
def test_lossless_chains_are_exact_for_every_dtype(spec, name):
    array = DTYPE_SAMPLES[name]
    out = decode(encode(array, spec))
    assert out.dtype == array.dtype and out.shape == array.shape
    assert np.array_equal(out, array, equal_nan=array.dtype.kind == "f")
    if array.dtype.kind == "f":  # bit-exact, signed zeros and NaN payloads included
        assert out.tobytes() == array.tobytes()
    assert out.flags.writeable and error_bound(spec, array) == 0.0
    assert describe(encode(array, spec)).dtype == name


@pytest.mark.parametrize("spec", LOSSLESS + LOSSY_CHAINS)
@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (), (1, 1)])
def test_empty_and_scalar_arrays(spec, shape):
    array = np.full(shape, 0.5, np.float32)
    if spec.startswith("int8c") and len(shape) < 2:
        with pytest.raises(CodecError, match="rank >= 2"):
            encode(array, spec)
        return
    out = decode(encode(array, spec))
    assert out.shape == shape and out.dtype == np.float32
    assert np.all(np.abs(out - array) <= error_bound(spec, array))


def test_non_contiguous_big_endian_and_bfloat16_inputs():
    base = relu_like((4, 6))
    assert np.array_equal(decode(encode(base[:, ::2], "zstd")), base[:, ::2])
    assert np.array_equal(decode(encode(base.astype(">f4"), "raw")), base)
    bits = np.array([0x3F80, 0xC000, 0x7FC0], np.uint16)  # bfloat16 1.0, -2.0, NaN
    frame = encode(bits, "shuffle+zstd", bfloat16=True)
    assert describe(frame).dtype == "bfloat16"
    assert np.array_equal(decode(frame), bits)
    assert np.array_equal(decode(encode(bits.astype(">u2"), "raw", bfloat16=True)), bits)
    with pytest.raises(CodecError, match="cannot encode dtype bfloat16"):
        encode(bits, "int8", bfloat16=True)
    with pytest.raises(CodecError, match="uint16 bit patterns"):
        encode(base, "raw", bfloat16=True)


@pytest.mark.parametrize("spec", LOSSY_CHAINS)
def test_lossy_codecs_stay_within_their_stated_bound(spec):
    rng = np.random.default_rng(1)
    for array in (
        relu_like(),
        rng.standard_normal((3, 5, 7), dtype=np.float32) * 40,
        np.full((2, 3), -1.25, np.float32),
    ):
        out = decode(encode(array, spec))
        bound = error_bound(spec, array)
        assert out.dtype == np.float32 and out.shape == array.shape
        assert float(np.abs(out - array).max()) <= bound, (spec, bound)


def test_affine_codecs_keep_relu_zeros_and_bounds_are_tight():
    x = relu_like()
    for spec in ("int8", "int8c", "int4", "int2"):
        out = decode(encode(x, spec))
        assert np.all(out[x == 0] == 0), spec
    scale = float(x.max()) / 255
    assert error_bound("int8", x) == pytest.approx(scale / 2, rel=1e-3)
    assert float(np.abs(decode(encode(x, "int8")) - x).max()) > 0.4 * scale  # the bound is not vacuous


def test_aciq_clip_matches_the_paper_and_beats_min_max_on_laplace_data():
    from splitdnn.codec._builtin import aciq_alpha

    # Banner et al. 2019, optimal clip / Laplace scale b for 2, 3, 4 and 8 bits
    for bits, alpha in ((2, 2.83), (3, 3.89), (4, 5.03), (8, 9.89)):
        assert aciq_alpha(bits) == pytest.approx(alpha, abs=0.01)
    rng = np.random.default_rng(3)
    x = rng.laplace(0.3, 1.0, (4, 64, 64)).astype(np.float32)  # (4, 64, 64) two-sided, heavy tails
    relu = np.maximum(x, 0)  # one-sided
    for array in (x, relu):
        power = float((array.astype(np.float64) ** 2).mean())
        for bits in (2, 4):
            mse = {
                clip: float(((decode(encode(array, f"int{bits}:{clip}")) - array) ** 2).mean()) / power
                for clip in ("aciq", "100")
            }
            assert mse["aciq"] < 0.7 * mse["100"], (bits, mse)


@pytest.mark.parametrize("spec", ["int2:aciq", "int4:aciq", "int8:aciq"])
def test_aciq_bound_holds_inside_the_clip_range_and_counts_the_outliers(spec):
    x = relu_like((1, 8, 32, 32))
    x[0, 0, 0, 0] = 1000.0  # an outlier ACIQ clips
    y = np.random.default_rng(2).laplace(-0.5, 0.7, (3, 40, 40)).astype(np.float32)
    for array in (x, y):
        frame = encode(array, spec)
        out = decode(frame)
        err = np.abs(out - array)
        assert float(err.max()) <= error_bound(spec, array)  # clipped values included
        lo, scale = struct.unpack("<ff", describe(frame).params[0])
        levels = (1 << int(spec[3])) - 1
        inside = (array >= lo) & (array <= lo + levels * scale)
        slack = 16 * np.finfo(np.float32).eps * (abs(lo) + abs(lo + levels * scale) + scale)
        assert float(err[inside].max()) <= scale / 2 + slack  # the stated in-range bound
        assert np.all(out[array == 0] == 0)  # zero stays exact
    lo, scale = struct.unpack("<ff", describe(encode(x, spec)).params[0])
    assert error_bound(spec, x) >= 1000.0 - (lo + levels * scale)  # the clipped outlier is counted


def test_zstd_threads_round_trip_in_one_standard_frame():
    from splitdnn.codec._builtin import ZSTD_MT_MIN_BYTES

    rng = np.random.default_rng(4)
    big = np.maximum(rng.standard_normal(ZSTD_MT_MIN_BYTES // 4 + 4096, dtype=np.float32), 0)  # > threshold
    for spec in ("zstd:3t2", "zstd:tauto", "zstd:1t3", "int8+zstd:t2", "shuffle+zstd:3tauto"):
        frame = encode(big, spec)
        info = describe(frame)
        assert info.chain[-1] == "zstd"
        payload = frame[info.header_nbytes :]
        assert zstandard.frame_content_size(payload) > 0  # the size is declared, as decode requires
        out = decode(frame)
        single = encode(big, re.sub(r":?t(\d+|auto)$", "", spec))  # the same chain on one thread
        if spec.startswith(("zstd", "shuffle")):
            assert np.array_equal(out, big)
            assert frame[: info.header_nbytes - 8] == single[: info.header_nbytes - 8]  # same header
            assert abs(len(frame) - len(single)) < 0.01 * len(single)
        else:
            assert np.all(np.abs(out - big) <= error_bound(spec, big))


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("t0", r"threads must be an integer in 1\.\.64 or 'auto', got '0'"),
        ("3t65", "threads must be an integer in 1..64"),
        ("3t", "argument must be LEVEL, LEVELtTHREADS"),
        ("tx", "argument must be LEVEL"),
        ("t-2", "argument must be LEVEL"),
        ("3tauto2", "argument must be LEVEL"),
        ("auto", "argument must be LEVEL"),
        ("23t2", "level must be an integer in -7..22"),
    ],
)
def test_zstd_bad_thread_values_are_refused(arg, message):
    with pytest.raises(CodecError, match=message):
        encode(np.zeros(8, np.float32), f"zstd:{arg}")


def test_percentile_clipping_bound_counts_the_outliers():
    x = relu_like((1, 8, 32, 32))
    x[0, 0, 0, 0] = 1000.0  # an outlier far beyond the 99.9th percentile
    out = decode(encode(x, "int4"))
    bound = error_bound("int4", x)
    assert float(np.abs(out - x).max()) <= bound
    inside = x < np.percentile(x, 99)
    assert float(np.abs(out - x)[inside].max()) < float(x[inside].max()) / 15  # the clip protects the rest


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=4, max_side=6),
        elements=st.floats(-6e4, 6e4, width=32, allow_nan=False),  # inside the fp16 range,
    ),
    st.sampled_from(LOSSY_CHAINS),
)
def test_lossy_bound_property(array, spec):
    out = decode(encode(array, spec))
    assert np.all(np.abs(out - array) <= error_bound(spec, array))


@pytest.mark.parametrize("spec", ["int8", "int4", "int2", "int4:aciq", "int8c"])
@pytest.mark.parametrize(
    "values",
    [
        [1.1754944e-38],  # float32's smallest normal: 1/scale overflows float32 (found by the property test)
        [3e-42, 0.0, -1e-45],  # subnormal values only
        [-2e-38, 5e-39, 1e-40],
    ],
)
def test_integer_codecs_keep_their_bound_on_ranges_too_small_for_a_float32_reciprocal(spec, values):
    x = np.array([values], np.float32)  # (1, n): rank 2 for int8c
    out = decode(encode(x, spec))
    assert np.all(np.isfinite(out))
    assert np.all(np.abs(out - x) <= error_bound(spec, x)), (out, x)


def test_fp16_and_bf16_keep_non_finite_values():
    x = np.array([np.nan, np.inf, -np.inf, 1.0, 3.4e38], np.float32)
    bf = decode(encode(x, "bf16"))
    assert np.isnan(bf[0]) and bf[1] == np.inf and bf[2] == -np.inf and np.isfinite(bf[4])
    assert abs(bf[4] - x[4]) <= error_bound("bf16", x)
    fp = decode(encode(x[:4], "fp16+zstd"))
    assert np.isnan(fp[0]) and fp[1] == np.inf and fp[2] == -np.inf and fp[3] == 1.0
    with pytest.raises(CodecError, match="fp16 cannot hold"):
        encode(x, "fp16")


@pytest.mark.parametrize("bits", [0xFFFFFFFF, 0x7FFFFFFF, 0x7FFF8000, 0xFFFF8000, 0x7F800001, 0xFFC00000])
def test_bf16_keeps_every_nan_a_nan(bits):
    # a NaN whose payload rounds up carried into the sign bit and came back as 0.0 / -0.0, but only in
    # a tensor with no other special value (memset 0xFF leaves 0xFFFFFFFF)
    x = np.array([1.0, 2.0], np.float32)
    x.view(np.uint32)[1] = bits
    out = decode(encode(x, "bf16"))
    assert out[0] == 1.0 and np.isnan(out[1]), out


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3.4e38, 1.5])
def test_bf16_encodes_a_rank_0_array(value):
    out = decode(encode(np.array(value, np.float32), "bf16"))
    assert out.shape == ()
    if np.isnan(value):
        assert np.isnan(out)
    elif np.isinf(value):
        assert out == value
    else:
        assert np.isfinite(out) and abs(out - value) <= error_bound("bf16", np.array(value, np.float32))


def test_bf16_frames_take_a_bfloat16_dtype_flagged_as_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    assert decode(encode(x, "raw", bfloat16=True)).tobytes() == x.tobytes()


def test_a_subclass_of_ndarray_is_encoded_as_its_plain_array_and_a_masked_one_refused():
    m = np.matrix([[1.0, 2.0]], dtype=np.float32)
    out = decode(encode(m, "raw"))
    assert type(out) is np.ndarray and out.shape == (1, 2) and out.tolist() == [[1.0, 2.0]]
    with pytest.raises(CodecError, match="masked array; fill it first"):
        encode(np.ma.masked_array(np.ones(2, np.float32), mask=[0, 1]), "raw")


def test_decode_takes_a_numpy_integer_cap():
    frame = encode(np.zeros(3, np.float32), "raw")
    assert decode(frame, max_decoded_bytes=np.int64(100)).shape == (3,)


@pytest.mark.parametrize("cap", [None, -1, 1.5, True, "10", np.int64(-1)])
def test_decode_refuses_a_cap_that_is_not_a_byte_count(cap):
    frame = encode(np.zeros(3, np.float32), "raw")
    for call in (decode, describe):
        with pytest.raises(CodecError, match="max_decoded_bytes must be an integer >= 0"):
            call(frame, max_decoded_bytes=cap)


# ------------------------------------------------------------------------------------ encode errors


@pytest.mark.parametrize(
    ("array", "spec", "message"),
    [
        (np.zeros(3, np.float64), "raw", "dtype float64 cannot be framed"),
        (np.zeros(3, np.complex64), "zstd", "cannot be framed"),
        (np.zeros(3, np.int32), "int8", "cannot encode dtype int32"),
        (np.array([1.0, np.nan], np.float32), "int8", "need finite values"),
        (np.array([[1.0, np.inf]], np.float32), "int8c", "need finite values"),
        (np.array([-3e38, 3e38], np.float32), "int8", r"span \[-3e\+38, 3e\+38\], too wide for float32"),
        (
            np.array([[[1.0]], [[-3e38]], [[3e38]]], np.float32).reshape(1, 1, 3),
            "int8c",
            r"channel 0 spans \[-3e\+38, 3e\+38\], too wide for float32",
        ),
        (
            np.zeros(3, np.float32),
            "zstd+int8",
            "stage 2 is 'int8'; only the first stage may be a value codec",
        ),
        (np.zeros(3, np.float32), "int8+int4", "only the first stage may be a value codec"),
        (np.zeros(3, np.float32), "zstd+shuffle", "must be the last stage"),
        (np.zeros(3, np.float32), "zstd:30", "level must be an integer in -7..22"),
        (np.zeros(3, np.float32), "int4:20", r"percentile must be in \(50, 100\] or 'aciq'"),
        (np.zeros(3, np.float32), "int4:acq", r"percentile must be in \(50, 100\] or 'aciq'"),
        (np.zeros(3, np.float32), "raw:1", "takes no argument"),
        (np.zeros(3, np.float32), "", "non-empty string"),
        (np.zeros(3, np.float32), "int8+zstd:3!", "argument"),
        (np.zeros([1] * 9, np.float32), "raw", "rank 9 exceeds"),
    ],
)
def test_encode_errors(array, spec, message):
    with pytest.raises(CodecError, match=message):
        encode(array, spec)


def test_unknown_codec_lists_the_known_ones():
    with pytest.raises(CodecError, match=r"unknown codec 'lz4'; known codecs: bf16, fp16, int2, int4, int8"):
        encode(np.zeros(2, np.float32), "lz4")
    with pytest.raises(CodecError, match="encode takes a numpy.ndarray"):
        encode([1.0, 2.0], "raw")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- decoding safety


def _header(
    dtype=1, dims=(2,), stages=((b"raw", b""),), payload_len=None, payload=b"", magic=b"SDNT", version=1
):
    out = struct.pack("<4sBBBB", magic, version, dtype, len(dims), len(stages))
    out += b"".join(struct.pack("<Q", d) for d in dims)
    for name, params in stages:
        out += bytes([len(name)]) + name + struct.pack("<I", len(params)) + params
    return out + struct.pack("<Q", len(payload) if payload_len is None else payload_len) + payload


ZSTD = ((b"raw", b""), (b"zstd", b"\x03"))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "frame truncated: the fixed header needs 8 bytes at offset 0, only 0 remain"),
        (_header(magic=b"NOPE", payload=bytes(8)), r"expected magic b'SDNT', found b'NOPE'"),
        (_header(version=2, payload=bytes(8)), "unsupported frame version 2; this splitdnn reads version 1"),
        (_header(dtype=10, payload=bytes(8)), "unknown dtype code 10; allowed codes: 1=float32"),
        (_header(dtype=0, payload=bytes(8)), "unknown dtype code 0"),
        (_header(dims=(1,) * 9), "rank 9 exceeds the maximum 8"),
        (_header(dims=(2**32,)), "dim 0 is 4294967296; the maximum is 4294967295"),
        (_header(dims=(2**32 - 1,) * 3), "elements .* the maximum is 1099511627776"),
        (_header(dims=(0, 2**32 - 1, 2**32 - 1)), "zero dimensions counted as 1"),
        (
            _header(dims=(2**20, 2**18)),
            "frame decodes to 1099511627776 bytes .* over the cap max_decoded_bytes=",
        ),
        (_header(stages=()), "expected 1 to 4 codec stages, found 0"),
        (_header(stages=((b"raw", b""),) * 5), "expected 1 to 4 codec stages, found 5"),
        (_header(stages=((b"nope", b""),), payload=bytes(8)), "unknown codec 'nope'; known codecs: bf16"),
        (_header(stages=((b"\xff", b""),), payload=bytes(8)), "not ASCII"),
        (_header(stages=((b"", b""),), payload=bytes(8)), "codec name length must be 1..16, found 0"),
        (
            _header(stages=((b"raw", b"x"),), payload=bytes(8)),
            "codec 'raw' expects 0 parameter bytes, found 1",
        ),
        (_header(stages=((b"zstd", b"\x03"),), payload=bytes(8)), "the first stage must be a value codec"),
        (_header(stages=((b"raw", b""), (b"int8", b"")), payload=bytes(8)), "only the first stage may be"),
        (_header(payload=bytes(7)), r"float32\[2\] with raw needs exactly 8"),
        (_header(payload=bytes(9)), r"float32\[2\] with raw needs exactly 8"),
        (
            _header(payload=bytes(8))[:-1],
            r"header says the payload is 8 bytes; the frame holds 7 \(truncated\)",
        ),
        (_header(payload=bytes(8)) + b"\0", r"the frame holds 9 \(trailing bytes are refused\)"),
        (_header(payload_len=2**64 - 1, payload=bytes(8)), "header says the payload is 18446744073709551615"),
        (_header(dtype=9, payload=b"\x00\x02"), "bool payload holds byte value 2; expected only 0 or 1"),
        (
            _header(stages=((b"fp16", b""),), dtype=7, payload=bytes(4)),
            "decodes to float32, but the frame says",
        ),
        (
            _header(stages=((b"int8", struct.pack("<ff", 0.0, float("nan"))),), payload=bytes(2)),
            "expected finite lo and scale >= 0",
        ),
        (_header(stages=((b"int8", struct.pack("<ff", 0.0, -1.0)),), payload=bytes(2)), "scale >= 0"),
        (  # finite in float64, but code 255 * scale overflows the float32 the decoder computes in
            _header(stages=((b"int8", struct.pack("<ff", 0.0, 1.7e36)),), payload=bytes(2)),
            r"lo \+ 255 \* scale overflows float32",
        ),
        (
            _header(stages=((b"int4", struct.pack("<ff", -3.0e38, 4.4e37)),), payload=bytes(1)),
            r"lo \+ 15 \* scale overflows float32",
        ),
        (_header(stages=((b"int8", b"\0" * 4),), payload=bytes(2)), "expects 8 parameter bytes, found 4"),
        (
            _header(dims=(1, 2), stages=((b"int8c", struct.pack("<I", 3) + bytes(16)),), payload=bytes(2)),
            "int8c' expects 20 parameter bytes, found 20|3 channels in params, shape\\[1\\] is 2",
        ),
        (
            _header(stages=((b"raw", b""), (b"shuffle", b"\x03")), payload=bytes(8)),
            r"8 bytes are not whole elements of 3 bytes",
        ),
        (
            _header(stages=ZSTD, payload=b"abcd"),
            "must start with the zstd frame magic 28b52ffd, found 61626364",
        ),
        (_header(stages=ZSTD, payload=b""), "found nothing"),
        (_header(stages=ZSTD, payload=b"\x28\xb5\x2f\xfd"), "zstd frame header is corrupt"),
        (
            _header(
                stages=ZSTD, payload=zstandard.ZstdCompressor(write_content_size=False).compress(bytes(8))
            ),
            "zstd frame declares no content size; expected a declared size of 8",
        ),
        (
            _header(stages=ZSTD, payload=zstandard.ZstdCompressor().compress(bytes(9))),
            "declares 9 bytes of content",
        ),
        (
            _header(stages=ZSTD, payload=zstandard.ZstdCompressor().compress(bytes(8)) + b"\0"),
            "zstd payload is corrupt: .*unused data",
        ),
        (
            _header(stages=ZSTD, payload=zstandard.ZstdCompressor().compress(bytes(8)) * 2),
            "zstd payload is corrupt",
        ),
    ],
)
def test_decode_refuses_with_a_precise_message(frame, message):
    with pytest.raises(CodecError, match=message):
        decode(frame)


def test_decode_refuses_non_bytes():
    with pytest.raises(CodecError, match="a frame must be bytes-like, got str"):
        decode("SDNT")  # type: ignore[arg-type]
    assert np.array_equal(decode(memoryview(encode(np.arange(3, dtype=np.int32)))), np.arange(3))


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except CodecError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_zstd_bomb_is_refused_before_decompressing():
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(64 << 20))  # 64 MiB of zeros, ~2 KiB on the wire
    assert len(bomb) < 8192
    small = _header(stages=ZSTD, dims=(16,), payload=bomb)  # the header claims 64 bytes
    with pytest.raises(CodecError, match="declares 67108864 bytes of content; the header implies 64"):
        decode(small)
    honest = _header(stages=ZSTD, dims=(16 << 20,), payload=bomb)  # a true header, over a 1 MiB cap
    with pytest.raises(CodecError, match="frame decodes to 67108864 bytes .* max_decoded_bytes=1048576"):
        decode(honest, max_decoded_bytes=1 << 20)
    unsized = _header(
        stages=ZSTD,
        dims=(16,),
        payload=zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20)),
    )
    with pytest.raises(CodecError, match="declares no content size"):
        decode(unsized)
    for frame, cap in ((small, 1 << 30), (honest, 1 << 20), (unsized, 1 << 30)):
        assert _peak_bytes(lambda f=frame, c=cap: decode(f, max_decoded_bytes=c)) < 256 << 10
    assert np.array_equal(decode(honest), np.zeros(16 << 20, np.float32))  # under the default cap it is fine


def test_cap_applies_to_the_decoded_size():
    frame = encode(np.zeros(1000, np.float32), "int8+zstd")
    assert decode(frame, max_decoded_bytes=4000).shape == (1000,)
    with pytest.raises(CodecError, match="frame decodes to 4000 bytes \\(float32\\[1000\\]\\), over the cap"):
        decode(frame, max_decoded_bytes=3999)
    with pytest.raises(CodecError, match="over the cap"):
        describe(frame, max_decoded_bytes=3999)


def test_decode_books_the_header_before_any_payload_byte_is_decoded():
    x = relu_like()
    frame = encode(x, "int8+zstd")
    seen = []
    out = decode(frame, reserve=seen.append)
    assert seen == [describe(frame)] and np.array_equal(out, decode(frame))

    class Refused(Exception):
        pass

    def refuse(info):
        raise Refused(info.decoded_nbytes)

    corrupt = bytearray(frame)
    corrupt[-3:] = b"\x00\x00\x00"  # the payload is never reached: the refusal comes first
    with pytest.raises(Refused):
        decode(bytes(corrupt), reserve=refuse)
    with pytest.raises(CodecError, match="zstd"):  # booked, then the payload fails as without a hook
        decode(bytes(corrupt), reserve=seen.append)
    with pytest.raises(CodecError, match="over the cap"):  # a bad header: nothing booked
        decode(frame, max_decoded_bytes=100, reserve=refuse)


class _Padded(ValueCodec):
    """A user value codec that stores more bytes than it decodes to (raw float32 and 64 zero bytes)."""

    name = "padded"
    lossless = True

    def encode(self, array, arg):
        return b"", array.astype("<f4").tobytes() + bytes(64)

    def stored_nbytes(self, shape, dtype, params):
        return int(np.prod(shape)) * 4 + 64

    def decode(self, stored, shape, dtype, params):
        return np.frombuffer(stored[: len(stored) - 64], "<f4").reshape(shape).copy()


def test_a_booked_decode_caps_what_the_codec_stores_at_the_decoded_size():
    codec.register_codec(_Padded())
    try:
        frame = encode(np.ones(4, np.float32), "padded")
        assert decode(frame).tolist() == [1.0] * 4  # within the message's cap
        info = describe(frame)
        refusal = "codec 'padded' stores 80 bytes, over the cap max_decoded_bytes=16"
        with pytest.raises(CodecError, match=refusal):
            decode(frame, max_decoded_bytes=info.decoded_nbytes)  # describe, then decode: as before
        with pytest.raises(CodecError, match=refusal):
            decode(frame, reserve=lambda info: None)  # one parse, the same refusal
    finally:
        codec.unregister_codec("padded")


# ------------------------------------------------------------------------------------------- fuzz

FUZZ_CAP = 4096
SEEDS = [
    encode(relu_like((1, 4, 4, 4)), spec)
    for spec in (
        "raw",
        "zstd",
        "fp16+zstd",
        "bf16",
        "int8+zstd",
        "int8c",
        "int4+zstd",
        "int2",
        "shuffle+zstd",
    )
] + [encode(DTYPE_SAMPLES["bool"], "raw"), encode(DTYPE_SAMPLES["int64"], "zstd")]


def _decode_checked(frame: bytes) -> None:
    """decode either succeeds within the cap or raises CodecError; nothing else escapes."""
    tracemalloc.start()
    try:
        out = decode(frame, max_decoded_bytes=FUZZ_CAP)
    except CodecError:
        out = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # the frame itself is already allocated; decoding holds a few buffers of at most the cap each
    assert peak <= 4 * FUZZ_CAP + 2 * len(frame) + 32768, peak
    if out is not None:
        assert isinstance(out, np.ndarray) and out.nbytes <= FUZZ_CAP


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    _decode_checked(data)
    _decode_checked(b"SDNT\x01" + data)


@st.composite
def mutated_frames(draw) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "extend", "field", "splice"]))
        if kind == "flip" and frame:
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and frame:
            frame[draw(st.integers(0, min(len(frame), 80) - 1))] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del frame[draw(st.integers(0, len(frame))) :]
        elif kind == "extend":
            frame += draw(st.binary(min_size=1, max_size=16))
        elif kind == "field" and len(frame) >= 16:  # overwrite a header-sized integer with an extreme value
            width = draw(st.sampled_from([1, 4, 8]))
            i = draw(st.integers(0, min(len(frame), 96) - width))
            value = draw(st.sampled_from([0, 1, 2 ** (8 * width) - 1, 2 ** (8 * width - 1), 255, 9, 2**32]))
            frame[i : i + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            i = draw(st.integers(0, len(frame)))
            frame[i:] = other[i:]
    return bytes(frame)


@settings(max_examples=400, deadline=None)
@given(mutated_frames())
def test_fuzz_mutated_frames(frame):
    _decode_checked(frame)


def _outcome(call):
    try:
        out = call()
    except CodecError as exc:
        return "refused", str(exc)
    return "decoded", out.dtype.str, out.shape, out.tobytes()


@settings(max_examples=300, deadline=None)
@given(mutated_frames())
def test_fuzz_a_booked_decode_is_describe_then_decode(frame):
    """decode(reserve=...) refuses or decodes exactly as describe() then decode() at the decoded size,
    and books only a header that describe() accepts."""

    def two_parses():
        info = describe(frame, max_decoded_bytes=FUZZ_CAP)
        return decode(frame, max_decoded_bytes=info.decoded_nbytes)

    booked = []
    got = _outcome(lambda: decode(frame, max_decoded_bytes=FUZZ_CAP, reserve=booked.append))
    assert got == _outcome(two_parses)
    if booked:
        assert booked == [describe(frame, max_decoded_bytes=FUZZ_CAP)]
    else:
        assert got[0] == "refused"


# --------------------------------------------------------------------------------------- registry


class _Negate(ValueCodec):
    """A user value codec: stores -x as raw float32 (lossless)."""

    name = "negate"
    lossless = True

    def encode(self, array, arg):
        return b"", (-array).tobytes()

    def stored_nbytes(self, shape, dtype, params):
        return int(np.prod(shape)) * 4

    def decode(self, stored, shape, dtype, params):
        return -np.frombuffer(stored, "<f4").reshape(shape)


class _Xor(ByteCodec):
    """A user byte codec that breaks on purpose when the key is 0."""

    name = "xor"

    def encode(self, data, arg, itemsize):
        key = int(arg or 90)
        return bytes([key]), (np.frombuffer(data, np.uint8) ^ key).tobytes()

    def decode(self, data, params, expected_nbytes):
        if params[0] == 0:
            raise ZeroDivisionError("boom")
        return (np.frombuffer(data, np.uint8) ^ params[0]).tobytes()


def test_registry_user_codecs_work_in_specs_and_frames():
    codec.register_codec(_Negate())
    codec.register_codec(_Xor())
    try:
        assert {"negate", "xor"} <= set(codec.known_codecs())
        x = relu_like((2, 3))
        for spec in ("negate", "negate+xor+zstd", "int8+xor:7"):
            out = decode(encode(x, spec))
            assert np.all(np.abs(out - x) <= error_bound("int8" if "int8" in spec else "raw", x))
        assert describe(encode(x, "negate+xor")).chain == ("negate", "xor")
        with pytest.raises(CodecError, match="codec 'xor' failed on this frame: ZeroDivisionError: boom"):
            decode(encode(x, "xor:0"))
        with pytest.raises(CodecError, match="already registered"):
            codec.register_codec(_Xor())
        codec.register_codec(_Xor(), replace=True)
    finally:
        codec.unregister_codec("negate")
        codec.unregister_codec("xor")
    assert "xor" not in codec.known_codecs()
    with pytest.raises(CodecError, match="unknown codec 'xor'"):
        encode(np.zeros(2, np.float32), "xor")


def test_registry_refuses_bad_codecs():
    bad = _Negate()
    bad.name = "Bad+Name"
    with pytest.raises(CodecError, match="codec name 'Bad\\+Name' is invalid"):
        codec.register_codec(bad)
    with pytest.raises(CodecError, match="expected a ValueCodec or ByteCodec"):
        codec.register_codec(object())  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="is not registered"):
        codec.unregister_codec("nope")


# ------------------------------------------------------------------------------------- packaging


def test_codec_error_is_exported():
    assert splitdnn.CodecError is CodecError
    assert issubclass(CodecError, splitdnn.SplitDNNError) and issubclass(CodecError, ValueError)
    assert "CodecError" in splitdnn.__all__
    assert codec.__all__ == sorted(codec.__all__, key=lambda n: (not n.isupper(), n[0].islower(), n))
    public = {n for n in dir(codec) if not n.startswith("_") and not n.islower() or n in codec.__all__}
    assert {n for n in public if n in vars(codec) and not isinstance(vars(codec)[n], type(codec))} <= set(
        codec.__all__
    ) | {"annotations"}


def test_import_loads_neither_torch_nor_grpc():
    code = (
        "import sys, splitdnn.codec\n"
        "bad = [m for m in ('torch', 'grpc') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_parse_codec_list() -> None:
    from splitdnn.codec import parse_codec_list
    from splitdnn.errors import ConfigError

    assert parse_codec_list("raw, zstd,int8+zstd") == ("raw", "zstd", "int8+zstd")
    assert parse_codec_list("none") == () and parse_codec_list("") == ()
    for bad in ("raw,,zstd", "zstd,zstd", "nope"):
        with pytest.raises(ConfigError):
            parse_codec_list(bad)


def test_zstd_auto_threads_only_from_the_threshold(monkeypatch):
    from splitdnn.codec import _builtin

    monkeypatch.setattr(_builtin.os, "cpu_count", lambda: 4)
    assert _builtin._auto_threads(_builtin.ZSTD_MT_MIN_BYTES - 1) == 1
    assert _builtin._auto_threads(_builtin.ZSTD_MT_MIN_BYTES) == 4
    monkeypatch.setattr(_builtin.os, "cpu_count", lambda: 1)
    assert _builtin._auto_threads(10 * _builtin.ZSTD_MT_MIN_BYTES) == 1
    assert _builtin._zstd_options(None) == (3, 1) and _builtin._zstd_options("3t2") == (3, 2)
    assert _builtin._zstd_options("-5tauto") == (-5, None) and _builtin._zstd_options("t8") == (3, 8)


def test_measuring_codecs_decodes_each_frame_up_to_the_arrays_own_size(monkeypatch):
    # decode's default cap (256 MiB) once dropped every codec of a bigger boundary tensor silently;
    # here a 1 KiB default stands in for it, on a 4 KiB array
    from splitdnn.codec import _measure

    real = _measure.decode
    monkeypatch.setattr(
        _measure,
        "decode",
        lambda frame, max_decoded_bytes=1024: real(frame, max_decoded_bytes=max_decoded_bytes),
    )
    x = np.linspace(-1, 1, 1024, dtype=np.float32)
    results = codec.measure(x, ["raw", "zstd", "int8"])
    assert [r.spec for r in results] == ["raw", "zstd", "int8"]
    assert results[0].rel_mse == 0.0 and results[0].wire_bytes > x.nbytes
