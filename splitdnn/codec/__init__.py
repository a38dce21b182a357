"""Tensor frames for the wire: quantize, compress and safely decode arrays (numpy + zstandard, no torch).

API::

    frame = encode(array, "int8+zstd")          # bytes, one self-describing frame
    array = decode(frame, max_decoded_bytes=...)  # numpy array; any failure is a CodecError
    array = decode(frame, reserve=book)         # book(info) sees the checked header before the payload
    info  = describe(frame)                     # FrameInfo from the header alone
    bound = error_bound("int4+zstd", array)     # max abs error the chain guarantees on this array

A spec is a ``+``-separated chain ``value[:arg][+byte[:arg]...]``: one value codec first (``raw`` is
implied if the chain starts with a byte codec, so ``"zstd"`` means ``"raw+zstd"``), then byte codecs;
a byte codec that changes the length (zstd) must be last.

Codecs (``known_codecs()``) and the max abs error each guarantees on finite values:

- ``raw``: the array's little-endian bytes, any allowed dtype. Lossless, NaN and inf included.
- ``fp16``: float32 -> IEEE half; refuses finite |x| > 65504; NaN/inf kept. Bound max|x| * 2**-11 + 2**-25.
- ``bf16``: float32 -> bfloat16, round to nearest even; NaN/inf kept. Bound max|x| * 2**-8 + 2**-126.
- ``int8[:p|aciq]``: affine per tensor, x ~ lo + q * scale with q in 0..255; the range is min..max
  (or the [100-p, p] percentiles, or the ACIQ range below, clipping outliers) widened to contain 0, so
  ReLU zeros stay exactly 0. Bound scale / 2 (+ slack) for values inside the range.
- ``int8c``: affine 8-bit per channel (axis 1, rank >= 2), min..max per channel. Bound scale_c / 2 (+ slack).
- ``int4[:p|aciq]``, ``int2[:p|aciq]``: as int8 with 4 / 2 bits, bit-packed two / four codes per byte;
  p defaults to 99.9 / 99.0. Bound scale / 2 (+ slack) inside the clip range.
- ``aciq`` clipping (Banner et al. 2019, "Post training 4-bit quantization of convolutional networks
  for rapid-deployment"): the clip range comes from a Laplace fit instead of a percentile. Two-sided
  tensors: mu -/+ alpha(bits) * b with mu the median and b = mean |x - mu|; one-sided tensors (min >= 0,
  ReLU outputs): [0, alpha(bits + 1) * b] with b the mean of the positive values; alpha(bits) minimises
  the Laplace clipping + rounding MSE (2.83, 5.03, 9.89 for 2, 4, 8 bits). Same bound as above: scale / 2
  (+ slack) inside the clip range, clipped values add their distance to it.
- ``shuffle[:size]``: byte shuffle (element size defaults to the stored element size). Lossless.
- ``zstd[:LEVEL][tTHREADS|tauto]``: zstd, level -7..22 (default 3), one frame with its content size
  declared. Lossless. ``tN`` compresses on N threads (1..64; 1 MiB jobs), ``tauto`` uses every core
  (at most 8) only for inputs of at least 4 MiB, where it measurably pays, and one thread below:
  ``zstd:3t2``, ``zstd:t4``, ``int8+zstd:1tauto``. Threads change the encoder only: the frame (and
  its declared size) is the same standard single frame, decoded single-threaded; old specs are unchanged.

"slack" is 16 float32 epsilons of the range; values clipped by a percentile add their distance to
the clip range. :func:`error_bound` computes the exact figure for a given array. The lossy codecs take
float32 only; the integer codecs refuse NaN/inf. Integer codes q are unsigned (0..2**bits - 1).

Frame layout, version 1 (all integers little-endian, no padding)::

    offset  size  field
    0       4     magic b"SDNT"
    4       1     version = 1
    5       1     dtype code: 1 float32, 2 float16, 3 bfloat16 (uint16 bit patterns), 4 int8, 5 uint8,
                  6 int16, 7 int32, 8 int64, 9 bool (bytes 0/1)   -- the decoded array's dtype
    6       1     rank r, 0..8
    7       1     number of codec stages k, 1..4
    8       8*r   dims, uint64 each, each <= 2**32 - 1, product <= 2**40 elements
    then k stages, in encode order (the first is a value codec, the rest byte codecs):
            1     name length m, 1..16
            m     codec name, ASCII
            4     params length p, uint32, <= 1 MiB
            p     codec parameters:
                    raw, fp16, bf16: none
                    int8, int4, int2: <f4 lo, <f4 scale           (x = lo + q * scale)
                    int8c: <u4 C (= dims[1]), C x <f4 lo, C x <f4 scale
                    shuffle: <u1 element size;  zstd: <i1 level (informative; threads are not recorded)
    then    8     payload length n, uint64; must equal the bytes left (trailing bytes are refused)
            n     payload: the last stage's output. Bit-packed codes put the first element in the
                  lowest bits of each byte. Without a size-changing stage n must equal the stored size
                  (elements * itemsize for raw, *2 for fp16/bf16, ceil(elements * bits / 8) for intN).

Decoding validates the whole header (magic, version, dtype allow-list, rank, dims, element count in
Python integers, codec names, parameters, exact payload length) and checks the decoded and stored
sizes against ``max_decoded_bytes`` (default 256 MiB) before touching the payload; a zstd payload
must declare its content size, which must equal the expected size before anything is decompressed.
Peak allocation while decoding is a small multiple (about 3x) of the decoded size, hence of the cap.

``measure(array, specs)`` measures codecs on one array (frame bytes, encode/decode time, max abs error,
relative MSE, cosine) as :class:`~splitdnn.schema.CodecResult` records; the profiler stores them.

Adding a codec: subclass :class:`ValueCodec` or :class:`ByteCodec` and call :func:`register_codec`;
its name then works in specs and frames, with nothing else to change.
"""

from splitdnn.codec._builtin import register_builtins as _register_builtins
from splitdnn.codec._frame import (
    DEFAULT_MAX_DECODED_BYTES,
    DTYPES,
    MAGIC,
    MAX_DIM,
    MAX_ELEMENTS,
    MAX_RANK,
    VERSION,
    FrameInfo,
    decode,
    describe,
    encode,
    error_bound,
    parse_spec,
)
from splitdnn.codec._measure import DEFAULT_CODECS, check_profile_codecs, measure, parse_codec_list
from splitdnn.codec._registry import ByteCodec, ValueCodec, known_codecs, register_codec, unregister_codec
from splitdnn.errors import CodecError

_register_builtins()

__all__ = [
    "DEFAULT_CODECS",
    "DEFAULT_MAX_DECODED_BYTES",
    "DTYPES",
    "MAGIC",
    "MAX_DIM",
    "MAX_ELEMENTS",
    "MAX_RANK",
    "VERSION",
    "ByteCodec",
    "CodecError",
    "FrameInfo",
    "ValueCodec",
    "check_profile_codecs",
    "decode",
    "describe",
    "encode",
    "error_bound",
    "known_codecs",
    "measure",
    "parse_codec_list",
    "parse_spec",
    "register_codec",
    "unregister_codec",
]
