"""serde's repeat-message doors (RequestDecoder, ResponseDecoder, RequestEncoder, ResponseEncoder):
the same decisions, content and error messages as the one-off functions, whatever the bytes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from splitdnn import codec
from splitdnn.errors import CodecError, WireError
from splitdnn.runtime import _wire, _wire_repeat, serde
from splitdnn.runtime._client_rpc import model_infer
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

CAP = 1 << 24
_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

X = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
Y = np.arange(6, dtype=np.int64).reshape(1, 6)


def _request(request_id: str = "r-1", x: np.ndarray = X, y: np.ndarray = Y, **kw: Any) -> bytes:
    return serde.encode_infer_request("m", {"x": x, "y": y}, fingerprint="fp", request_id=request_id, **kw)


def _outcome(parse: Callable[[], serde.InferRequestData]) -> tuple[str, Any]:
    """What a parse gives, comparable: its content, or the error's type and message."""
    try:
        d = parse()
    except (WireError, CodecError) as exc:
        return "refused", (type(exc).__name__, str(exc))
    return "read", (
        d.model_name, d.model_version, d.request_id, d.framed, d.fingerprint, d.parameters, d.wire_bytes,
        d.bfloat16, d.requested_outputs, d.weights,
        [(n, a.dtype.str, a.shape, a.tobytes(), a.flags.writeable) for n, a in d.inputs.items()],
    )  # fmt: skip


def _one_off(data: bytes, max_decoded_bytes: int = CAP) -> tuple[str, Any]:
    def parse() -> serde.InferRequestData:
        return serde.parse_infer_request(serde.read_infer_request(data), max_decoded_bytes=max_decoded_bytes)

    return _outcome(parse)


def _cached(decoder: serde.RequestDecoder, data: bytes, max_decoded_bytes: int = CAP) -> tuple[str, Any]:
    def parse() -> serde.InferRequestData:
        return decoder.parse(decoder.read(data), max_decoded_bytes=max_decoded_bytes)

    return _outcome(parse)


def _primed() -> serde.RequestDecoder:
    decoder = serde.RequestDecoder()
    data = decoder.parse(decoder.read(_request("first")), max_decoded_bytes=CAP)
    assert data.header is not None and len(decoder) == 1
    return decoder


# --------------------------------------------------------------------------------------------------
# requests, read by a decoder that already knows their header


def test_a_repeat_header_is_read_from_the_cache_with_its_own_id_and_bytes() -> None:
    decoder = _primed()
    x2 = X + 1
    wire = decoder.read(_request("second", x=x2))
    assert wire.checked is not None and wire.model_name == "m"
    got = decoder.parse(wire, max_decoded_bytes=CAP)
    assert got.header is wire.checked and got.request_id == "second"
    np.testing.assert_array_equal(got.inputs["x"], x2)
    np.testing.assert_array_equal(got.inputs["y"], Y)
    assert not got.inputs["x"].flags.writeable  # a view of the message, as the full parse gives
    assert _cached(decoder, _request("third", x=x2)) == _one_off(_request("third", x=x2))
    assert got.header.template.inputs == {}  # the template holds no request's bytes


def test_a_repeat_header_takes_neither_protobuf_nor_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = _primed()

    def fail(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("parsed in full")

    from splitdnn.runtime import _wire_repeat

    monkeypatch.setattr(_wire_repeat, "request_from", fail)
    monkeypatch.setattr(_wire_repeat, "parse_infer_request", fail)
    got = decoder.parse(decoder.read(_request("x")), max_decoded_bytes=CAP)
    assert got.request_id == "x"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: _request("a", x=X[:1]), id="other shape, same header? no: a new header"),
        pytest.param(lambda: _with_raw_cut(_request("a"), 4), id="raw contents 4 bytes short"),
        pytest.param(lambda: _request("a") + b"\x3a\x00", id="one raw entry more"),
        pytest.param(lambda: _with_id(_request(""), b"\xff\xfe"), id="id not UTF-8"),
        pytest.param(lambda: _with_id(_request(""), "é".encode()), id="id UTF-8"),
        pytest.param(lambda: _with_id(_with_id(_request(""), b"one"), b"two"), id="two ids: the last"),
        pytest.param(lambda: _with_id(_request(""), b"\xed\xa0\x80"), id="id a UTF-16 surrogate"),
        pytest.param(lambda: b"\x1a\x02ab" + _request(""), id="id first"),
        pytest.param(lambda: _request("a")[:-3], id="truncated"),
    ],
)
def test_a_known_header_with_other_contents_gets_the_full_parse_verdict(bad: Callable[[], bytes]) -> None:
    data = bad()
    assert _cached(_primed(), data) == _one_off(data)


def test_a_known_header_over_the_decode_budget_is_refused_as_before() -> None:
    data = _request("a")
    small = X.nbytes  # the two inputs take X.nbytes + Y.nbytes
    outcome = _cached(_primed(), data, max_decoded_bytes=small)
    assert outcome[0] == "refused" and outcome == _one_off(data, max_decoded_bytes=small)


def test_a_kept_header_holds_neither_the_first_id_nor_the_first_bytes() -> None:
    decoder = serde.RequestDecoder()
    data = decoder.parse(decoder.read(_request("i" * 100_000)), max_decoded_bytes=CAP)
    assert data.request_id == "i" * 100_000 and data.header is not None
    assert data.header.message.id == "" and data.header.message.ByteSize() < 4096  # the key's bound
    again = decoder.parse(decoder.read(_request("j")), max_decoded_bytes=CAP)
    assert again.header is data.header and again.request_id == "j"


@pytest.mark.parametrize("budget", [1e9, None, -1, True])
def test_a_known_header_with_a_bad_budget_is_refused_as_before(budget: Any) -> None:
    data = _request("a")
    outcome = _cached(_primed(), data, max_decoded_bytes=budget)
    assert outcome[0] == "refused" and outcome == _one_off(data, max_decoded_bytes=budget)


def _with_raw_cut(data: bytes, n: int) -> bytes:
    """The message with its last raw entry ``n`` bytes shorter (its length prefix rewritten)."""
    split = _wire.split_field(data, 7)
    assert split is not None
    rest, raw = split
    return _wire.append_field(rest, 7, [*raw[:-1], raw[-1][: len(raw[-1]) - n]])


def _with_id(data: bytes, request_id: bytes) -> bytes:
    return data + b"\x1a" + _wire.varint_bytes(len(request_id)) + request_id


@st.composite
def _mutations(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A request whose header the primed decoder knows, and it with a few edits anywhere."""
    x = draw(st.sampled_from([X, X * 0, -X]))
    base = _request(draw(st.text(max_size=6)), x=x)
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "id"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[:at]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at]
        else:
            data += _with_id(b"", draw(st.binary(max_size=5)))
        if not data:
            break
    return base, bytes(data)


@_FUZZ
@given(_mutations(), st.booleans())
def test_mutated_requests_same_verdict_and_content_with_a_known_header(
    base_and_data: tuple[bytes, bytes], by_shape: bool
) -> None:
    base, data = base_and_data
    decoder = _primed()
    if by_shape:  # a repeat of base's size: read by its shape from now on
        _cached(decoder, base)
        assert len(decoder._shapes) == 1
    assert _cached(decoder, data) == _one_off(data)


def test_a_repeat_of_a_known_shape_is_read_without_walking_its_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoder = _primed()
    decoder.read(_request("second"))  # a repeat: where its id and raw contents lie is kept
    monkeypatch.setattr(_wire_repeat, "split_raw", _never)
    x3 = X * 3
    got = decoder.parse(decoder.read(_request("thirds", x=x3)), max_decoded_bytes=CAP)
    assert got.request_id == "thirds" and got.header is not None
    np.testing.assert_array_equal(got.inputs["x"], x3)
    np.testing.assert_array_equal(got.inputs["y"], Y)
    assert not got.inputs["x"].flags.writeable
    # another id length is another size: walked, and its shape kept too
    monkeypatch.undo()
    assert decoder.read(_request("a-longer-id")).request_id == "a-longer-id"
    assert len(decoder._shapes) == 2


def _never(*args: Any) -> Any:
    raise AssertionError("the fields were walked")


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.replace(b"second", b"sec\xffnd"),  # an id protobuf refuses, in the id's place
        lambda d: d.replace(b"\x0a\x01m", b"\x0a\x01n"),  # another model, same size
        lambda d: d[:-1] + b"x",  # the raw contents differ: read, not refused
    ],
)
def test_a_request_of_a_known_shape_with_other_bytes_gets_the_full_parse_verdict(
    edit: Callable[[bytes], bytes],
) -> None:
    decoder = _primed()
    decoder.read(_request("second"))
    data = edit(_request("second"))
    assert len(data) == len(_request("second"))
    assert _cached(decoder, data) == _one_off(data)


def test_the_shapes_kept_are_bounded() -> None:
    decoder = serde.RequestDecoder(entries=3)
    for i in range(10):
        for _ in range(2):  # the second of each id length leaves a shape
            _cached(decoder, _request("i" * i))
    assert len(decoder._shapes) == 3
    assert sorted(decoder._shapes._by_size) == sorted(len(_request("i" * i)) for i in (7, 8, 9))
    assert _cached(decoder, _request("j" * 9)) == _one_off(_request("j" * 9))


def test_what_is_not_kept_and_how_many() -> None:
    decoder = serde.RequestDecoder(entries=2)
    frame = codec.encode(X, "zstd")
    kinds = [
        serde.encode_infer_request("m", {"f": frame}, request_id="a"),  # a frame: decoded every time
        serde.encode_infer_request("m", {"b": np.ones(3, bool)}, request_id="a"),  # BOOL: values checked
        serde.encode_infer_request("m", {"x": X}, fingerprint="f" * 5000),  # small fields over 4 KiB
    ]
    typed = v2_pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1.0, 2.0])
    kinds.append(typed.SerializeToString())  # typed contents
    for data in kinds:
        got = decoder.parse(decoder.read(data), max_decoded_bytes=CAP)
        assert got.header is None
    assert len(decoder) == 0
    for i in range(3):
        decoder.parse(decoder.read(_request("a", x=X[: i + 1])), max_decoded_bytes=CAP)
    assert len(decoder) == 2  # the oldest forgotten


# --------------------------------------------------------------------------------------------------
# answers, written by the server's encoder and read by the client's decoder


OUTPUTS: dict[str, np.ndarray] = {"output_0": X, "output_1": Y[:, ::-1]}  # one not contiguous
PARAMS: dict[str, serde.ParamValue] = {
    serde.PARAM_QUEUE_MS: 0.25, serde.PARAM_COMPUTE_MS: 1e-9, serde.PARAM_BATCH_SIZE: 3, "neg": -5,
    "big": 2**64 - 1, "yes": True, "no": False, "text": "é", "zero": 0.0, "minus": -1.5,
}  # fmt: skip


@pytest.mark.parametrize("request_id", ["", "r-1", "é" * 200])
def test_the_response_encoder_writes_the_same_message(request_id: str) -> None:
    encoder = serde.ResponseEncoder()
    for params in (PARAMS, {}, {"yes": 1, "no": 0, "big": 2**63}, PARAMS):  # the last from its cache
        ours = encoder.encode("m", request_id, OUTPUTS, parameters=params, model_version="1")
        want = serde.encode_infer_response("m", request_id, OUTPUTS, parameters=params, model_version="1")
        assert v2_pb.ModelInferResponse.FromString(ours) == v2_pb.ModelInferResponse.FromString(want)
        assert len(ours) == len(want)


def test_the_response_encoder_writes_bfloat16_and_refuses_as_the_function_does() -> None:
    encoder = serde.ResponseEncoder()
    bits = {"output": np.arange(4, dtype=np.uint16)}
    ours = encoder.encode("m", "i", bits, bfloat16={"output"})
    assert ours == serde.encode_infer_response("m", "i", bits, bfloat16={"output"})
    assert v2_pb.ModelInferResponse.FromString(ours).outputs[0].datatype == "BF16"
    bad: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({"o": [1, 2]}, {}, "must be a numpy array"),
        ({"o": np.zeros(2, complex)}, {}, "cannot send dtype"),
        (OUTPUTS, {"": 1.0}, "non-empty strings"),
        (OUTPUTS, {"k": 2**64}, "does not fit a 64-bit integer"),
        (OUTPUTS, {"k": None}, "expected str, int, float or bool"),
        (OUTPUTS, {"k": "\ud800"}, "not valid Unicode"),
    ]
    for outputs, params, message in [*bad, (OUTPUTS, {1: 1.0}, "non-empty strings")]:
        with pytest.raises(WireError, match=message) as one_off:
            serde.encode_infer_response("m", "i", outputs, parameters=params)
        for _ in range(2):  # also once its header is known
            with pytest.raises(WireError, match=message) as ours:
                encoder.encode("m", "i", outputs, parameters=params)
            assert str(ours.value) == str(one_off.value)
    for encode in (encoder.encode, serde.encode_infer_response):
        with pytest.raises(WireError, match="not valid Unicode"):
            encode("m", "\ud800", OUTPUTS)
        with pytest.raises(WireError, match="not valid Unicode"):
            encode("\udfff", "", OUTPUTS)
        with pytest.raises(WireError, match="not valid Unicode"):  # the id first, as protobuf sets it first
            encode("m", "\ud800", {"o": np.zeros(2, np.complex64)})
    assert v2_pb.ModelInferResponse.FromString(encoder.encode("m", b"r", OUTPUTS)).id == "r"  # type: ignore[arg-type]
    encoder.encode("m", "i", {"o": np.array(1.5, np.float32)})  # a 0-d array: its header kept
    for encode in (encoder.encode, serde.encode_infer_response):
        with pytest.raises(WireError, match="must be a numpy array, found float32"):
            encode("m", "i", {"o": np.float32(2.5)})  # type: ignore[dict-item]


def test_the_encoders_refuse_entries_past_protobufs_length_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wire, "MAX_LENGTH", 10)
    x = np.zeros(4, np.float32)  # 16 bytes
    encoders: list[Callable[[], bytes]] = [
        lambda: serde.encode_infer_response("m", "", {"o": x}),
        lambda: serde.ResponseEncoder().encode("m", "", {"o": x}),
        lambda: serde.encode_infer_request("m", {"x": x}),
        lambda: serde.RequestEncoder().encode("m", {"x": x}),
    ]
    for encode in encoders:
        with pytest.raises(WireError, match="at most 10 bytes, found 16"):
            encode()


def _response(
    request_id: str = "a", params: dict[str, serde.ParamValue] = PARAMS, x: np.ndarray = X
) -> bytes:
    return serde.ResponseEncoder().encode("m", request_id, {"output_0": x, "output_1": Y}, parameters=params)


def _decoded(decode: Callable[[], serde.InferResponseData]) -> tuple[str, Any]:
    try:
        d = decode()
    except WireError as exc:
        return "refused", str(exc)
    return "read", (  # the parameters in order: protobuf's map order, which callers may print
        d.model_name, d.request_id, list(d.parameters.items()), d.bfloat16, d.model_version, d.wire_bytes,
        [(n, a.dtype.str, a.shape, a.tobytes(), a.flags.writeable) for n, a in d.outputs.items()],
    )  # fmt: skip


def _primed_responses() -> serde.ResponseDecoder:
    decoder = serde.ResponseDecoder()
    decoder.decode(_response("first", {"q": 1.0}), max_decoded_bytes=CAP)
    return decoder


@_FUZZ
@given(
    st.text(max_size=5),
    st.dictionaries(
        st.text(min_size=1, max_size=4), st.floats(allow_nan=False) | st.integers(0, 9), max_size=4
    ),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    st.integers(0, 12),
)
def test_answers_read_with_a_known_header_as_decode_infer_response_reads_them(
    request_id: str, params: dict[str, serde.ParamValue], flips: list[tuple[int, int]], cut: int
) -> None:
    base = _response(request_id, params, x=-X)
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: len(data) - cut]
    for cap in (CAP, X.nbytes):  # the second: over the budget
        for shaped in (False, True):  # True: base seen twice before, so read by its shape
            decoder = _primed_responses()
            for _ in range(2 if shaped else 0):
                decoder.decode(base, max_decoded_bytes=CAP)
            ours = _decoded(lambda: decoder.decode(bytes(data), max_decoded_bytes=cap))  # noqa: B023
            want = _decoded(lambda: serde.decode_infer_response(bytes(data), max_decoded_bytes=cap))  # noqa: B023
            assert ours == want


def test_a_repeat_answer_of_a_known_shape_reads_its_doubles_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = _primed_responses()
    params: dict[str, serde.ParamValue] = {"q": 1.5, "n": 4, "s": "text", "f": True, "z": 0.0}
    decoder.decode(_response("b", params), max_decoded_bytes=CAP)
    assert len(decoder._shapes) == 1
    monkeypatch.setattr(_wire_repeat, "split_raw", _never)
    new: dict[str, serde.ParamValue] = {"q": -2.25, "n": 4, "s": "text", "f": True, "z": float("inf")}
    got = decoder.decode(_response("c", new, x=X * 2), max_decoded_bytes=CAP)
    assert got.request_id == "c" and got.parameters == new
    np.testing.assert_array_equal(got.outputs["output_0"], X * 2)
    nan = decoder.decode(_response("d", new | {"q": float("nan")}), max_decoded_bytes=CAP)
    assert np.isnan(nan.parameters["q"])  # (any 8 bytes are a double)
    monkeypatch.undo()  # an int that differs is in the fixed bytes: not the shape, walked
    assert decoder.decode(_response("e", new | {"n": 5}), max_decoded_bytes=CAP).parameters["n"] == 5


@pytest.mark.parametrize("budget", [1e9, None, -1, True])
def test_a_known_answer_header_with_a_bad_budget_is_refused_as_before(budget: Any) -> None:
    data = _response("b")
    ours = _decoded(lambda: _primed_responses().decode(data, max_decoded_bytes=budget))
    want = _decoded(lambda: serde.decode_infer_response(data, max_decoded_bytes=budget))
    assert ours[0] == "refused" and ours == want


def test_a_known_answer_header_reads_its_parameters_and_bytes_apart() -> None:
    decoder = _primed_responses()
    got = decoder.decode(_response("b", {"q": 2.5, "n": 4}, x=X * 3), max_decoded_bytes=CAP)
    assert got.request_id == "b" and got.parameters == {"q": 2.5, "n": 4}
    np.testing.assert_array_equal(got.outputs["output_0"], X * 3)
    parameter_without_value = b"\x22\x05\x0a\x01k\x12\x00"  # {k: InferParameter{}}
    with pytest.raises(WireError, match="has no value"):
        decoder.decode(_response("c", {}) + parameter_without_value, max_decoded_bytes=CAP)


# --------------------------------------------------------------------------------------------------
# requests written by the client's encoder


def test_the_request_encoder_writes_the_same_message_with_each_id() -> None:
    encoder = serde.RequestEncoder()
    bits = np.arange(3, dtype=np.uint16)
    for request_id in ("", "a", uuid.uuid4().hex, "é"):
        for x in (X, X[::-1], X.astype(np.float16)):  # a view that is not contiguous, another dtype
            kw: dict[str, Any] = {"fingerprint": "fp", "weights": "w", "request_id": request_id}
            inputs = {"x": x, "b": bits}
            ours = encoder.encode("m", inputs, bfloat16={"b"}, **kw)
            want = serde.encode_infer_request("m", inputs, bfloat16={"b"}, **kw)
            # the same message (the parameters map's order on the wire is protobuf's to choose), but
            # for the padding that puts each raw content at a multiple of 16 bytes into the message
            got = v2_pb.ModelInferRequest.FromString(ours)
            assert set(got.parameters[serde.PARAM_PAD].string_param) <= {" "}
            del got.parameters[serde.PARAM_PAD]
            assert got == v2_pb.ModelInferRequest.FromString(want)
            spans = _wire.field_spans(ours, (7,))  # raw_input_contents
            assert spans is not None and len(spans) == 2
            assert all(start % 16 == 0 for _, start, _ in spans)
            assert len(want) < len(ours) <= len(want) + 2 * 40
    frame = codec.encode(X, "zstd")
    assert encoder.encode("m", {"f": frame}, request_id="i") == serde.encode_infer_request(
        "m", {"f": frame}, request_id="i"
    )
    for bad, message in (({"": X}, "non-empty strings"), ({"x": X.astype(complex)}, "cannot send dtype")):
        with pytest.raises(WireError, match=message):
            encoder.encode("m", bad)  # type: ignore[arg-type]
    for encode in (encoder.encode, serde.encode_infer_request, serde.build_infer_request):
        with pytest.raises(WireError, match="not valid Unicode"):
            encode("m", {"x": X}, request_id="\udfff")
        with pytest.raises(WireError, match="not valid Unicode"):
            encode("m", {"\udfff": X})


# --------------------------------------------------------------------------------------------------
# the tail server: repeat requests skip the checks, and bad ones are still refused as before


@contextmanager
def _serving(spec: ModelSpec) -> Iterator[tuple[TailServer, Callable[..., bytes]]]:
    """A tail server for ``spec``, and a bytes-level ModelInfer call to it."""
    with TailServer(ServerConfig(models=(spec,))) as server:
        channel = grpc.insecure_channel(server.address)
        try:
            yield server, model_infer(channel)
        finally:
            channel.close()


class _Double(nn.Module):
    def forward(self, x: Any) -> Any:
        return x * 2.0


def test_the_server_answers_repeat_requests_and_refuses_a_repeat_header_with_bad_contents() -> None:
    spec = ModelSpec("double", module=_Double(), input_shapes=((1, 5),))
    x = np.arange(5, dtype=np.float32).reshape(1, 5)
    with _serving(spec) as (server, infer):
        encoder, decoder = serde.RequestEncoder(), serde.ResponseDecoder()
        for i in range(3):
            raw = infer(encoder.encode("double", {"x": x + i}, request_id=f"r{i}"), timeout=30)
            got = decoder.decode(raw, max_decoded_bytes=CAP)
            assert got.request_id == f"r{i}"
            np.testing.assert_array_equal(got.outputs["output"], (x + i) * 2.0)
        assert len(server._requests) == 1  # one header, checked once
        short = _with_raw_cut(encoder.encode("double", {"x": x}, request_id="bad"), 4)
        with pytest.raises(grpc.RpcError) as info:
            infer(short, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected 20 raw bytes, found 16" in (info.value.details() or "")
        wrong_rank = encoder.encode("double", {"x": x[0]}, request_id="r")  # a new header, checked
        with pytest.raises(grpc.RpcError) as info:
            infer(wrong_rank, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected rank 2" in (info.value.details() or "")
        for _ in range(2):  # a header with the wrong rank is refused every time, not remembered as good
            with pytest.raises(grpc.RpcError):
                infer(wrong_rank, timeout=30)
        raw = infer(encoder.encode("double", {"x": x}, request_id="again"), timeout=30)
        assert decoder.decode(raw, max_decoded_bytes=CAP).request_id == "again"  # still serving


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Any) -> Any:
        return self.fc(x)


def test_a_repeat_request_the_tail_rejects_is_refused_with_its_shapes_every_time() -> None:
    spec = ModelSpec("linear", module=_Linear(), input_shapes=((1, 5),))
    with _serving(spec) as (server, infer):
        encoder = serde.RequestEncoder()
        wide = np.ones((1, 7), np.float32)  # the rank the checks look at, a width the tail refuses
        for i in range(2):  # the second from the kept header, its checks' verdict kept too
            with pytest.raises(grpc.RpcError) as info:
                infer(encoder.encode("linear", {"x": wide}, request_id=f"r{i}"), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "rejected inputs of shape {'x': [1, 7]}" in (info.value.details() or "")
        assert len(server._requests) == 1
        raw = infer(encoder.encode("linear", {"x": np.ones((1, 5), np.float32)}), timeout=30)
        assert serde.ResponseDecoder().decode(raw, max_decoded_bytes=CAP).outputs["output"].shape == (
            1,
            3,
        )


def test_a_repeat_header_keeps_its_route_and_each_answer_is_counted_once() -> None:
    """The server's conclusions from a header (tail, batch key) are kept with it; every request is
    still counted once in each series, its inline run as a batch of one."""
    spec = ModelSpec("double", module=_Double(), input_shapes=((1, 5),))
    with _serving(spec) as (server, infer):
        encoder = serde.RequestEncoder()
        x = np.ones((1, 5), np.float32)
        sizes = [
            len(infer(encoder.encode("double", {"x": x + i}, request_id=f"r{i}"), timeout=30))
            for i in range(4)
        ]
        (header,) = server._requests._known.items.values()
        route = header.verdicts["server"]
        assert route.served is server._models["double"] and route.provided == {"x"}
        tail = server._models["double"].tail(frozenset({"x"}))
        assert route.key_and_rows(tail, {"x": x}, frozenset()) == (
            ("double", ("x",), ((x.dtype, (5,), False),)),
            1,
        )
        snap = server.metrics.of("double").snapshot()
        assert snap["requests"] == 4 and snap["bytes_out"] == sum(sizes)
        for series in ("decode", "queue", "compute", "batch_size"):
            assert snap[series][0][-1] == ("+Inf", 4.0), series
        assert snap["batch_size"][1] == 4.0  # four batches of one


def test_a_repeat_header_runs_the_models_cached_tail_and_a_dropped_one_is_built_again() -> None:
    """A repeat skips the checks but still takes its tail from the model's cache (which so keeps
    the tails in use): after a new profile drops them, the next repeat builds it again and says so
    in its answer."""
    spec = ModelSpec("double", module=_Double(), input_shapes=((1, 5),))
    x = np.arange(5, dtype=np.float32).reshape(1, 5)
    with _serving(spec) as (server, infer):
        encoder, decoder = serde.RequestEncoder(), serde.ResponseDecoder()
        served = server._models["double"]

        def ask(i: int) -> serde.InferResponseData:
            raw = infer(encoder.encode("double", {"x": x + i}, request_id=f"r{i}"), timeout=30)
            return decoder.decode(raw, max_decoded_bytes=CAP)

        ask(0)
        builds = served.tail_builds
        for i in range(1, 4):
            assert serde.PARAM_TAIL_BUILD_MS not in ask(i).parameters
        assert served.tail_builds == builds
        served.set_profile(None)  # (what a new profile does to the tails built before)
        got = ask(9)
        assert serde.PARAM_TAIL_BUILD_MS in got.parameters and served.tail_builds == builds + 1
        np.testing.assert_array_equal(got.outputs["output"], (x + 9) * 2.0)
        assert serde.PARAM_TAIL_BUILD_MS not in ask(10).parameters and served.tail_builds == builds + 1


def test_request_ids_are_unique_of_one_length_and_kept_shapes_take_them() -> None:
    ids, other = serde.RequestIds(), serde.RequestIds()
    mine = [ids.next() for _ in range(1000)]
    assert len(set(mine)) == 1000 and {len(i) for i in mine} == {24}
    assert all(int(i, 16) >= 0 for i in mine) and mine == sorted(mine)  # hex, in order within a client
    assert other.next()[:16] != mine[0][:16]  # another client: its own prefix (odds of 2**-64 to fail)
    decoder = serde.RequestDecoder()
    for request_id in mine[:5]:  # one size: after the second, every request is read by its shape
        assert _cached(decoder, _request(request_id))[0] == "read"
    assert len(decoder._shapes) == 1


class _Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 256) / 16)

    def forward(self, x: Any) -> Any:
        for _ in range(100):
            x = torch.tanh(x @ self.w)
        return x


def test_a_lone_run_past_its_deadline_is_refused_and_still_counted_as_a_batch() -> None:
    spec = ModelSpec("slow", module=_Slow(), input_shapes=((1, 256),))
    with _serving(spec) as (server, infer):
        x = np.ones((400, 256), np.float32)
        t = time.perf_counter()
        infer(serde.encode_infer_request("slow", {"x": x}, request_id="warm"), timeout=60)
        took = time.perf_counter() - t
        with pytest.raises(grpc.RpcError) as info:
            infer(serde.encode_infer_request("slow", {"x": x}, request_id="late"), timeout=took / 4)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        snap: dict[str, Any] = {}
        for _ in range(200):  # the late run ends on its own after the client gave up
            snap = server.metrics.of("slow").snapshot()
            if snap["batch_size"][0][-1][1] == 2.0 and server._inflight.requests == 0:
                break
            time.sleep(0.05)
        assert snap["batch_size"][0][-1] == ("+Inf", 2.0)  # both ran: two batches of one
        assert snap["compute"][0][-1] == ("+Inf", 1.0)  # only the answered one's compute
        assert server._inflight.used == 0 and server._inflight.requests == 0
