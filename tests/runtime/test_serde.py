"""serde: wire messages <-> arrays, exact round trips, and bounded, precise refusals of bad messages."""

from __future__ import annotations

import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitdnn import codec
from splitdnn.errors import CodecError, WireError
from splitdnn.runtime import _serde_tensors, serde
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._proto import splitdnn_pb2 as sd_pb
from splitdnn.schema import load_profile

ROOT = Path(__file__).resolve().parents[2]
CAP = 1 << 20
RNG = np.random.default_rng(0)

ARRAYS = {
    "BOOL": RNG.random((2, 3)) > 0.5,
    "UINT8": RNG.integers(0, 256, (2, 3), dtype=np.uint8),
    "INT8": RNG.integers(-128, 128, (4,), dtype=np.int8),
    "INT16": RNG.integers(-(2**15), 2**15, (2, 2), dtype=np.int16),
    "INT32": RNG.integers(-(2**31), 2**31, (3,), dtype=np.int32),
    "INT64": RNG.integers(-(2**62), 2**62, (1, 2, 2), dtype=np.int64),
    "FP16": RNG.standard_normal((2, 5)).astype(np.float16),
    "FP32": RNG.standard_normal((1, 3, 4, 4)).astype(np.float32),
    "FP64": RNG.standard_normal((3,)),
}


def _request(**inputs: np.ndarray | bytes) -> v2_pb.ModelInferRequest:
    return serde.build_infer_request("m", inputs, fingerprint="f" * 64)


# --------------------------------------------------------------------------------------------------
# round trips


def test_serde_loads_neither_torch_nor_grpc() -> None:
    code = "import sys, splitdnn.runtime.serde; print(sorted({'torch', 'grpc'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_raw_round_trip_every_datatype(datatype: str) -> None:
    array = ARRAYS[datatype]
    msg = _request(t=array)
    assert msg.inputs[0].datatype == datatype
    assert list(msg.inputs[0].shape) == list(array.shape)
    data = serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    got = data.inputs["t"]
    assert got.dtype == array.dtype.newbyteorder("<") or got.dtype == array.dtype
    assert np.array_equal(got, array)
    assert data.framed == frozenset() and data.fingerprint == "f" * 64


def test_bf16_bits_round_trip_raw_and_framed() -> None:
    bits = RNG.integers(0, 2**16, (2, 3), dtype=np.uint16)
    msg = serde.build_infer_request(
        "m", {"a": bits, "b": codec.encode(bits, "zstd", bfloat16=True)}, bfloat16={"a"}
    )
    assert msg.inputs[0].datatype == "BF16"
    data = serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    assert data.bfloat16 == {"a", "b"}
    assert np.array_equal(data.inputs["a"], bits) and np.array_equal(data.inputs["b"], bits)


def test_big_endian_arrays_are_sent_little_endian() -> None:
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    msg = _request(t=array)
    assert msg.raw_input_contents[0] == np.arange(6, dtype="<i4").tobytes()
    assert np.array_equal(serde.parse_infer_request(msg, max_decoded_bytes=CAP).inputs["t"], array)


@pytest.mark.parametrize("spec", ["raw", "zstd", "shuffle+zstd", "int8+zstd", "fp16"])
def test_frames_round_trip(spec: str) -> None:
    array = RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)
    frame = codec.encode(array, spec)
    msg = serde.build_infer_request("m", {"layer1": frame, "skip": array}, fingerprint="abc")
    assert msg.parameters[serde.PARAM_FRAMED].string_param == "layer1"
    assert (msg.inputs[0].datatype, list(msg.inputs[0].shape)) == ("UINT8", [len(frame)])
    data = serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    assert data.framed == {"layer1"}
    assert np.array_equal(data.inputs["layer1"], codec.decode(frame))
    assert np.array_equal(data.inputs["skip"], array)
    assert data.wire_bytes == msg.ByteSize()


def test_parameters_and_ids_round_trip() -> None:
    params: dict[str, serde.ParamValue] = {"a": "text", "b": 7, "c": 2.5, "d": True, "big": 2**63 + 5}
    msg = serde.build_infer_request("m", {"x": ARRAYS["FP32"]}, request_id="r1", parameters=params)
    assert msg.parameters["big"].WhichOneof("parameter_choice") == "uint64_param"
    data = serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    assert data.request_id == "r1" and data.fingerprint is None
    assert {k: data.parameters[k] for k in params} == params
    assert type(data.parameters["d"]) is bool
    assert data.weights is None


def test_weights_digest_round_trips_and_is_an_argument() -> None:
    msg = serde.build_infer_request("m", {"x": ARRAYS["FP32"]}, fingerprint="f", weights="ab" * 16)
    data = serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    assert data.weights == "ab" * 16 and data.fingerprint == "f"
    assert data.parameters[serde.PARAM_WEIGHTS] == "ab" * 16
    with pytest.raises(WireError, match="set by build_infer_request"):
        serde.build_infer_request("m", {"x": ARRAYS["FP32"]}, parameters={serde.PARAM_WEIGHTS: "ab"})


def test_builder_refuses_reserved_parameters_and_bad_values() -> None:
    with pytest.raises(WireError, match="set by build_infer_request"):
        serde.build_infer_request("m", {"x": ARRAYS["FP32"]}, parameters={serde.PARAM_FRAMED: "x"})
    with pytest.raises(WireError, match="64-bit"):
        serde.build_infer_request("m", {"x": ARRAYS["FP32"]}, parameters={"n": 2**70})
    with pytest.raises(WireError, match="cannot send dtype"):
        serde.build_infer_request("m", {"x": np.zeros(2, dtype=np.complex64)})


def test_response_round_trip() -> None:
    out = {"output_0": ARRAYS["FP32"], "output_1": ARRAYS["INT64"]}
    params = {serde.PARAM_QUEUE_MS: 1.5, serde.PARAM_COMPUTE_MS: 3.0, serde.PARAM_BATCH_SIZE: 2}
    msg = serde.build_infer_response("m", "id7", out, parameters=params)
    data = serde.parse_infer_response(msg, max_decoded_bytes=CAP)
    assert data.request_id == "id7" and data.model_name == "m"
    assert data.parameters == params
    assert all(np.array_equal(data.outputs[k], v) for k, v in out.items())
    assert serde.param_ms(data.parameters, serde.PARAM_QUEUE_MS) == 1.5
    assert serde.param_ms(data.parameters, "absent") == 0.0


def test_typed_contents_of_stock_clients() -> None:
    msg = v2_pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    t.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.5])
    t = msg.inputs.add(name="i", datatype="INT8", shape=[3])
    t.contents.int_contents.extend([-128, 0, 127])
    t = msg.inputs.add(name="b", datatype="BOOL", shape=[2])
    t.contents.bool_contents.extend([True, False])
    t = msg.inputs.add(name="u", datatype="UINT8", shape=[1])
    t.contents.uint_contents.extend([255])
    data = serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    assert np.array_equal(data.inputs["x"], np.array([[1, 2], [3, 4.5]], dtype=np.float32))
    assert data.inputs["i"].dtype == np.int8 and data.inputs["i"].tolist() == [-128, 0, 127]
    assert data.inputs["b"].tolist() == [True, False]
    assert data.inputs["u"].dtype == np.uint8 and data.inputs["u"].tolist() == [255]


def test_metadata_and_model_info() -> None:
    specs = (serde.TensorSpec("x", "FP32", (-1, 3, 32, 32)),)
    msg = serde.build_model_metadata("m", platform="p", inputs=specs, outputs=specs, versions=("1",))
    assert serde.parse_model_metadata(msg) == ("m", specs, specs)

    profile = load_profile(ROOT / "profiles" / "resnet18-cpu-t1.json")
    info = serde.build_model_info(
        "resnet18", profile.fingerprint, profile, inputs=("x",), codecs=("raw", "zstd"), max_message_bytes=10
    )
    data = serde.parse_model_info(info)
    assert data.profile == profile and data.fingerprint == profile.fingerprint
    assert data.inputs == ("x",) and data.codecs == ("raw", "zstd") and data.max_message_bytes == 10
    assert serde.parse_model_info(serde.build_model_info("m", "abc", None)).profile is None
    assert data.weights == ""  # an older server publishes no digest
    assert (
        serde.parse_model_info(serde.build_model_info("m", "abc", None, weights="cd" * 16)).weights
        == "cd" * 16
    )


def test_probe_messages() -> None:
    assert serde.parse_probe_request(serde.build_probe_request(b"abc")) == 3
    assert serde.parse_probe_response(serde.build_probe_response(3), 3) == 3
    with pytest.raises(WireError, match="received 2 probe bytes, expected 3"):
        serde.parse_probe_response(serde.build_probe_response(2), 3)


def test_probe_messages_carry_the_asked_models_load() -> None:
    request = serde.build_probe_request(b"abc", "resnet18")
    assert (
        serde.probe_model(request) == "resnet18" and serde.probe_model(serde.build_probe_request(b"")) == ""
    )
    load = serde.ServerLoadData(
        pace=2.5, requests=7, in_flight=3, window_s=10.0, arrivals=9, compute_pace=1.25, queue_ms=40.0
    )
    assert serde.parse_server_load(serde.build_probe_response(3, load)) == load
    assert serde.parse_server_load(serde.build_probe_response(3)) is None  # an older server, or no profile
    idle = serde.ServerLoadData(pace=0.0, requests=0, in_flight=0, window_s=10.0, arrivals=0)
    assert serde.parse_server_load(serde.build_probe_response(0, idle)) == idle  # present though all zero


@pytest.mark.parametrize(
    ("compute_pace", "queue_ms", "message"),
    [
        (math.nan, 0.0, "compute_pace=nan"),
        (-0.5, 0.0, "compute_pace=-0.5"),
        (1.0, math.inf, "queue_ms=inf"),
        (1.0, -2.0, "queue_ms=-2.0"),
    ],
)
def test_a_compute_pace_or_queue_no_server_sends_is_refused(
    compute_pace: float, queue_ms: float, message: str
) -> None:
    load = serde.ServerLoadData(2.0, 3, 0, 10.0, 3, compute_pace=compute_pace, queue_ms=queue_ms)
    with pytest.raises(WireError, match=re.escape(message)):
        serde.parse_server_load(serde.build_probe_response(3, load))


@pytest.mark.parametrize(
    ("pace", "requests", "in_flight", "window_s", "arrivals", "message"),
    [
        (math.nan, 3, 0, 10.0, 3, "expected finite paces and queue >= 0"),
        (-1.0, 3, 0, 10.0, 3, "expected finite paces and queue >= 0"),
        (2.0, -3, 0, 10.0, 3, "counts >= 0"),
        (2.0, 3, -1, 10.0, 3, "counts >= 0"),
        (2.0, 3, 0, 10.0, -1, "arrivals=-1; expected"),
        (2.0, 3, 0, 0.0, 3, "load window of 0.0 s; expected a finite number > 0"),
        (2.0, 3, 0, math.inf, 3, "load window of inf s"),
    ],
)
def test_a_load_no_server_sends_is_refused(
    pace: float, requests: int, in_flight: int, window_s: float, arrivals: int, message: str
) -> None:
    msg = serde.build_probe_response(3, serde.ServerLoadData(pace, requests, in_flight, window_s, arrivals))
    with pytest.raises(WireError, match=message):
        serde.parse_server_load(msg)


def test_model_info_refuses_bad_profiles() -> None:
    with pytest.raises(WireError, match="invalid profile"):
        serde.parse_model_info(sd_pb.ModelInfoResponse(name="m", fingerprint="abc", profile_json="{not json"))
    with pytest.raises(WireError, match="invalid profile.*too deeply"):  # a hostile server's
        serde.parse_model_info(sd_pb.ModelInfoResponse(name="m", fingerprint="ab", profile_json="[" * 99_999))
    profile = load_profile(ROOT / "profiles" / "resnet18-cpu-t1.json")
    with pytest.raises(WireError, match="profile of another model"):
        serde.parse_model_info(serde.build_model_info("m", "0" * 64, profile))
    with pytest.raises(WireError, match="no fingerprint"):
        serde.parse_model_info(sd_pb.ModelInfoResponse(name="m"))


# --------------------------------------------------------------------------------------------------
# refusals: one test per malformation, each with the error type and what its message must say


def _raw(datatype: str, shape: list[int], data: bytes, name: str = "x") -> v2_pb.ModelInferRequest:
    msg = v2_pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name=name, datatype=datatype, shape=shape)
    msg.raw_input_contents.append(data)
    return msg


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (_raw("FP32", [2, 2], b"\0" * 15), "expected 16 raw bytes, found 15"),
        (_raw("FP32", [2, -1], b""), "dimension 1 = -1"),
        (_raw("FP32", [2**33], b""), "dimension 0"),
        (_raw("FP32", [1] * 9, b"\0" * 4), "rank 9"),
        # 2**39 elements (2 TiB): compared to the 8 bytes given in Python ints, nothing allocated
        (_raw("FP32", [2**20, 2**19], b"\0" * 8), "raw bytes, found 8"),
        (_raw("FP32", [2**32 - 1, 2**32 - 1], b"\0" * 8), "the maximum is 1099511627776"),
        # empty, but numpy cannot describe it: found by the fuzz test below (a BOOL tensor, 0 bytes)
        (_raw("BOOL", [0, 691, 37127175, 359517285], b""), "zero dimensions counted as 1"),
        (_raw("COMPLEX", [1], b"\0" * 8), "datatype 'COMPLEX'"),
        (_raw("BYTES", [1], b"\0"), "datatype 'BYTES'"),
        (_raw("FP32", [1], b"\0" * 4, name=""), "empty name"),
        (v2_pb.ModelInferRequest(model_name="m"), "no inputs"),
    ],
)
def test_malformed_tensors(msg: v2_pb.ModelInferRequest, match: str) -> None:
    with pytest.raises(WireError, match=match):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)


def test_duplicate_names_and_raw_count() -> None:
    msg = _raw("FP32", [1], b"\0" * 4)
    msg.inputs.add(name="x", datatype="FP32", shape=[1])
    msg.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(WireError, match="twice"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    msg.raw_input_contents.pop()
    with pytest.raises(WireError, match="2 tensor.* but 1 raw"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)


def test_typed_contents_refusals() -> None:
    mixed = _raw("FP32", [1], b"\0" * 4)
    mixed.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(WireError, match="one or the other"):
        serde.parse_infer_request(mixed, max_decoded_bytes=CAP)
    for datatype, field, values, match in [
        ("FP32", "fp32_contents", [1.0], "expected 2 value"),
        ("INT8", "int_contents", [1, 300], "do not fit INT8"),
        ("UINT8", "uint_contents", [1, 256], "do not fit UINT8"),
        ("FP16", "fp32_contents", [1.0, 2.0], "only as raw"),
        (
            "FP32",
            "int_contents",
            [1, 2],
            "is FP32 but sets contents.int_contents; use contents.fp32_contents",
        ),
    ]:
        msg = v2_pb.ModelInferRequest(model_name="m")
        t = msg.inputs.add(name="x", datatype=datatype, shape=[2])
        getattr(t.contents, field).extend(values)
        with pytest.raises(WireError, match=match):
            serde.parse_infer_request(msg, max_decoded_bytes=CAP)


def test_extensions_the_server_lacks_are_refused_before_anything_else() -> None:
    # tritonclient sends a shared-memory input without a raw entry: the extension is named, not the count
    msg = v2_pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[2]).parameters["shared_memory_region"].string_param = "r"
    msg.inputs.add(name="y", datatype="FP32", shape=[1])
    msg.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(
        WireError, match="request tensor 'x' sets parameter 'shared_memory_region': the shared-memory"
    ):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    top_k = _raw("FP32", [1], b"\0" * 4)
    top_k.outputs.add(name="output").parameters["classification"].int64_param = 2
    with pytest.raises(WireError, match="requested output 'output' sets parameter 'classification'"):
        serde.parse_infer_request(top_k, max_decoded_bytes=CAP)


def test_raw_bool_tensors_hold_only_zeros_and_ones() -> None:
    ok = serde.parse_infer_request(_raw("BOOL", [3], b"\x00\x01\x01"), max_decoded_bytes=CAP)
    assert ok.inputs["x"].tolist() == [False, True, True]
    with pytest.raises(WireError, match="BOOL but holds byte value 255; BOOL raw contents are one byte"):
        serde.parse_infer_request(_raw("BOOL", [3], b"\x00\x02\xff"), max_decoded_bytes=CAP)


def test_narrow_typed_integers_count_the_width_they_are_read_at() -> None:
    msg = v2_pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="INT8", shape=[1000]).contents.int_contents.extend([1] * 1000)
    with pytest.raises(WireError, match="decodes to 4000 bytes"):  # read as int32 before narrowing
        serde.parse_infer_request(msg, max_decoded_bytes=3999)
    assert serde.parse_infer_request(msg, max_decoded_bytes=4000).inputs["x"].dtype == np.int8


def test_decoded_size_is_capped_over_the_whole_message() -> None:
    a = np.zeros((64, 64), np.float32)  # 16 KiB each
    with pytest.raises(WireError, match="at most 20000 bytes in all"):
        serde.parse_infer_request(_request(a=a, b=a), max_decoded_bytes=20000)
    with pytest.raises(WireError, match="at most 20000 bytes"):
        serde.parse_infer_request(_request(a=a, b=codec.encode(a, "zstd")), max_decoded_bytes=20000)
    serde.parse_infer_request(_request(a=a, b=codec.encode(a, "zstd")), max_decoded_bytes=40000)


def test_frame_refusals() -> None:
    array = RNG.standard_normal((4, 4)).astype(np.float32)
    frame = codec.encode(array, "zstd")
    msg = _request(t=frame)
    msg.inputs[0].shape[0] = len(frame) + 1
    with pytest.raises(WireError, match="declares"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    msg = _request(t=frame)
    msg.inputs[0].datatype = "FP32"
    with pytest.raises(WireError, match="a framed tensor is UINT8"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    msg = _request(t=array)
    msg.parameters[serde.PARAM_FRAMED].string_param = "t,ghost"
    with pytest.raises(WireError, match="ghost"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    msg = _request(t=frame[:-3])
    with pytest.raises(CodecError, match="payload"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    forged = b"XXXX" + frame[4:]
    with pytest.raises(CodecError, match="magic"):
        serde.parse_infer_request(_request(t=forged), max_decoded_bytes=CAP)


def test_decompression_bombs_are_refused_before_decompressing() -> None:
    # an honest frame over the cap: refused from its header
    big = codec.encode(np.zeros((512, 1024), np.float32), "zstd")  # 2 MiB of zeros, a few hundred bytes
    assert len(big) < 4096
    with pytest.raises(CodecError, match="over the cap"):
        serde.parse_infer_request(_request(t=big), max_decoded_bytes=CAP)
    # a forged one: a small declared tensor whose zstd payload inflates to 64 MiB
    small = codec.encode(np.zeros(16, np.float32), "zstd")
    header = codec.describe(small).header_nbytes
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    forged = small[: header - 8] + struct.pack("<Q", len(bomb)) + bomb
    with pytest.raises(CodecError):
        serde.parse_infer_request(_request(t=forged), max_decoded_bytes=CAP)


def test_parameter_refusals() -> None:
    msg = _request(x=ARRAYS["FP32"])
    msg.parameters["empty"].CopyFrom(v2_pb.InferParameter())
    with pytest.raises(WireError, match="has no value"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    msg = _request(x=ARRAYS["FP32"])
    msg.parameters[serde.PARAM_FINGERPRINT].int64_param = 3
    with pytest.raises(WireError, match="must be a string_param"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    msg = _request(x=ARRAYS["FP32"])
    msg.parameters[serde.PARAM_WEIGHTS].double_param = 1.0
    with pytest.raises(WireError, match="splitdnn.weights must be a string_param, found float"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)


# --------------------------------------------------------------------------------------------------
# property: whatever arrives, the parser answers with an array dict or a WireError / CodecError


_DATATYPES = [*serde.DATATYPES, "BYTES", "", "fp32"]


@st.composite
def _random_requests(draw: st.DrawFn) -> v2_pb.ModelInferRequest:
    msg = v2_pb.ModelInferRequest(model_name="m")
    n = draw(st.integers(0, 3))
    use_raw = draw(st.booleans())
    names = []
    for _ in range(n):
        name = draw(st.sampled_from(["x", "y", "layer1", "", "a,b"]))
        names.append(name)
        shape = draw(st.lists(st.integers(-2, 2**33), max_size=10))
        if draw(st.booleans()):
            shape = draw(st.lists(st.integers(0, 4), max_size=4))
        t = msg.inputs.add(name=name, datatype=draw(st.sampled_from(_DATATYPES)), shape=shape)
        if use_raw:
            msg.raw_input_contents.append(draw(st.binary(max_size=64)))
        elif draw(st.booleans()):
            field = draw(st.sampled_from(["fp32_contents", "int_contents", "bool_contents", "uint_contents"]))
            values = draw(st.lists(st.integers(-300, 300), max_size=20))
            if field == "bool_contents":
                values = [bool(v) for v in values]
            elif field == "uint_contents":
                values = [abs(v) for v in values]
            getattr(t.contents, field).extend(values)
    if use_raw and draw(st.booleans()):
        msg.raw_input_contents.append(b"extra")
    if draw(st.booleans()):
        msg.parameters[serde.PARAM_FRAMED].string_param = ",".join(
            draw(st.lists(st.sampled_from(names + ["z"])))
        )
    return msg


def _valid_request(array: np.ndarray, spec: str) -> bytes:
    return serde.build_infer_request(
        "m", {"a": array, "b": codec.encode(array, spec)}, fingerprint="f"
    ).SerializeToString()


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_random_requests())
def test_random_requests_raise_only_wire_or_codec_errors(msg: v2_pb.ModelInferRequest) -> None:
    try:
        data = serde.parse_infer_request(msg, max_decoded_bytes=4096)
    except (WireError, CodecError):
        return
    for name, arr in data.inputs.items():
        assert isinstance(arr, np.ndarray) and name


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["raw", "zstd", "int8+zstd", "int4", "shuffle+zstd"]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 40),
)
def test_mutated_requests_raise_only_wire_or_codec_errors(
    spec: str, flips: list[tuple[int, int]], cut: int
) -> None:
    wire = bytearray(_valid_request(np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4), spec))
    for pos, value in flips:
        wire[pos % len(wire)] = value
    wire = wire[: len(wire) - cut]
    try:
        msg = v2_pb.ModelInferRequest.FromString(bytes(wire))
    except Exception:  # not a protobuf any more: grpc refuses it before serde sees it
        return
    try:
        serde.parse_infer_request(msg, max_decoded_bytes=4096)
    except (WireError, CodecError):
        pass


def test_an_ml_dtypes_bfloat16_array_flagged_bfloat16_is_bf16_as_codec_frames_take_it() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from splitdnn.runtime._serde_tensors import datatype_of

    x = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    assert datatype_of(x, bfloat16=True) == datatype_of(x) == "BF16"
    with pytest.raises(WireError, match="BF16 tensors are uint16 bit patterns"):
        datatype_of(np.zeros(2, np.int16), bfloat16=True)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.zeros((0, 3), np.float32),  # empty, two dimensions
        np.zeros((2, 0, 5), np.int64),
        np.float64(2.5) * np.ones(()),  # 0-d
        np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],  # not contiguous
        np.arange(4, dtype=">f4"),  # big-endian: converted
    ],
)
def test_raw_view_gives_the_wire_bytes_of_any_array(array: np.ndarray) -> None:
    datatype = {"f": "FP32", "l": "INT64", "d": "FP64"}[array.dtype.char]
    view = _serde_tensors.raw_view(array, datatype)
    want = np.ascontiguousarray(array, dtype=_serde_tensors.DATATYPES[datatype]).tobytes()
    assert view.format == "B" and view.ndim == 1 and bytes(view) == want
