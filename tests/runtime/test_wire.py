"""runtime._wire and serde's bytes-level ModelInfer door: the same decisions and content as protobuf."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from splitdnn import codec
from splitdnn.errors import WireError
from splitdnn.runtime import _wire, _wire_infer, serde
from splitdnn.runtime._client_rpc import model_infer
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

CAP = 1 << 24


def _stock(data: bytes) -> v2_pb.ModelInferRequest | None:
    msg = v2_pb.ModelInferRequest()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return None
    return msg


def _ours(data: bytes) -> v2_pb.ModelInferRequest | None:
    """The message serde.read_infer_request reads, raw contents put back (None: refused)."""
    try:
        wire = serde.read_infer_request(data)
    except WireError:
        return None
    msg = v2_pb.ModelInferRequest()
    msg.CopyFrom(wire.message)
    msg.raw_input_contents.extend(bytes(v) for v in wire.raw)
    assert wire.nbytes == len(data)
    return msg


def _same(data: bytes) -> None:
    stock, ours = _stock(data), _ours(data)
    assert (stock is None) == (ours is None), data[:80]
    if stock is not None:
        assert ours == stock
        assert ours.SerializeToString(deterministic=True) == stock.SerializeToString(deterministic=True)


def _valid_request(draw: st.DrawFn) -> bytes:
    msg = v2_pb.ModelInferRequest(
        model_name=draw(st.text(max_size=8)),
        id=draw(st.text(max_size=4)),
        model_version=draw(st.text(max_size=2)),
    )
    for i in range(draw(st.integers(0, 3))):
        msg.inputs.add(name=f"t{i}", datatype="UINT8", shape=draw(st.lists(st.integers(0, 9), max_size=3)))
    for key in draw(st.lists(st.text(max_size=4), max_size=3)):
        msg.parameters[key].string_param = draw(st.text(max_size=5))
    for _ in range(draw(st.integers(0, 2))):
        msg.outputs.add(name=draw(st.text(max_size=3)))
    msg.raw_input_contents.extend(draw(st.lists(st.binary(max_size=300), max_size=4)))
    data = msg.SerializeToString()
    if draw(st.booleans()):  # protobuf reads fields in any order: interleave raw entries with the rest
        parts = []
        pos = 0
        while pos < len(data):  # top-level fields, each (tag, length-delimited) as written above
            tag_end = pos + 1
            length, body = _varint(data, tag_end)
            parts.append(data[pos : body + length])
            pos = body + length
        data = b"".join(draw(st.permutations(parts)))
    return data


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    return _valid_request(draw)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_valid_request(draw))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif data:
            at = draw(st.integers(0, len(data) - 1))
            if op == "flip":
                data[at] = draw(st.integers(0, 255))
            else:
                del data[at]
    return bytes(data)


_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(requests())
def test_valid_requests_read_as_protobuf_reads_them(data: bytes) -> None:
    _same(data)
    split = _wire.split_field(data, 7)
    assert split is not None  # plainly encoded: the fast path takes it


@_FUZZ
@given(mutated())
def test_mutated_requests_same_decision_and_content(data: bytes) -> None:
    _same(data)


@_FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_same_decision_and_content(data: bytes) -> None:
    _same(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x3a\x80\x01",  # raw entry of length 128 with 0 bytes left
        b"\x3a\x81\x00ab",  # padded length varint: slow path, protobuf reads it
        b"\xba\x00\x02ab",  # padded tag of field 7: slow path
        b"\x38\x05",  # field 7 as a varint: an unknown field to protobuf
        b"\x3b\x3c",  # field 7 as a group
        b"\x00\x01",  # field number 0
        b"\x3a" + b"\xff" * 10 + b"\x01",  # length varint over 10 bytes
        b"\x0a\x02\xff\xfe",  # model_name not UTF-8: refused by protobuf in the rest
        b"\x3a\x02\xff\xfe",  # raw bytes are not UTF-8 checked
        b"\x0f",  # invalid wire type 7
        b"",
    ],
)
def test_edge_cases(data: bytes) -> None:
    _same(data)


def test_fast_path_views_and_one_copy_joins() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    frame = codec.encode(x, "zstd")
    data = serde.encode_infer_request("m", {"x": x, "f": frame}, fingerprint="fp", request_id="r")
    stock = serde.build_infer_request("m", {"x": x, "f": frame}, fingerprint="fp", request_id="r")
    assert v2_pb.ModelInferRequest.FromString(data) == stock
    wire = serde.read_infer_request(data)
    assert all(isinstance(v, memoryview) and v.readonly for v in wire.raw)
    assert [bytes(v) for v in wire.raw] == [x.tobytes(), frame]
    data_ = serde.parse_infer_request(wire, max_decoded_bytes=CAP)
    got = data_.inputs["x"]
    assert np.array_equal(got, x) and not got.flags.writeable  # a view: whoever writes copies first
    assert np.array_equal(data_.inputs["f"], x) and data_.framed == {"f"} and data_.wire_bytes == len(data)


def test_responses_round_trip_and_match_the_stock_message() -> None:
    out: dict[str, np.ndarray] = {
        "output_0": np.ones((2, 2), np.float16),
        "output_1": np.arange(3, dtype=np.int64)[::-1],
    }
    params = {serde.PARAM_QUEUE_MS: 1.5, serde.PARAM_BATCH_SIZE: 3}
    data = serde.encode_infer_response("m", "id", out, parameters=params, model_version="1")
    stock = serde.build_infer_response("m", "id", out, parameters=params, model_version="1")
    assert v2_pb.ModelInferResponse.FromString(data) == stock
    got = serde.decode_infer_response(data, max_decoded_bytes=CAP)
    want = serde.parse_infer_response(stock, max_decoded_bytes=CAP)
    assert got.parameters == want.parameters and got.model_version == "1"
    assert got.wire_bytes == len(data) == stock.ByteSize()
    for name, arr in out.items():
        assert np.array_equal(got.outputs[name], arr) and got.outputs[name].dtype == arr.dtype


def test_response_bytes_protobuf_refuses_are_a_wire_error() -> None:
    with pytest.raises(WireError, match="not a valid inference.ModelInferResponse"):
        serde.decode_infer_response(b"\x0a\x05ab", max_decoded_bytes=CAP)
    with pytest.raises(WireError, match="as bytes"):
        serde.read_infer_request(bytearray(b""))  # type: ignore[arg-type]


def _response_bytes() -> bytes:
    outputs = {"output_0": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4), "output_1": np.ones(3)}
    params = {serde.PARAM_QUEUE_MS: 0.5, serde.PARAM_COMPUTE_MS: 2.0, serde.PARAM_BATCH_SIZE: 2}
    return serde.encode_infer_response("m", "id", outputs, parameters=params)


@_FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 40),
)
def test_mutated_responses_raise_only_wire_errors(flips: list[tuple[int, int]], cut: int) -> None:
    """What a broken or hostile server answers: the client's decode (with its cap) either gives
    arrays and timing parameters it can use, or a WireError; never another exception."""
    data = bytearray(_response_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: len(data) - cut]
    try:
        got = serde.decode_infer_response(bytes(data), max_decoded_bytes=4096)
    except WireError:
        return
    assert all(isinstance(a, np.ndarray) and a.nbytes <= 4096 for a in got.outputs.values())
    for key in (serde.PARAM_QUEUE_MS, serde.PARAM_COMPUTE_MS, serde.PARAM_DECODE_MS):
        ms = serde.param_ms(got.parameters, key)
        assert ms >= 0.0 and np.isfinite(ms)


def test_append_field_is_protobufs_own_serialization() -> None:
    msg = v2_pb.ModelInferRequest(model_name="m")
    chunks: list[bytes | memoryview] = [b"", b"a" * 200, np.zeros(40_000, np.uint8).data]
    data = _wire.append_field(msg.SerializeToString(), 7, chunks)
    msg.raw_input_contents.extend(bytes(c) for c in chunks)
    assert data == msg.SerializeToString()
    with pytest.raises(WireError):
        _wire.split_field(b"", 16)


# --------------------------------------------------------------------------------------------------
# through a real server: stock clients and the bytes-level client see the same service


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def test_server_answers_stock_and_wire_clients_alike_and_refuses_garbage() -> None:
    x = np.random.default_rng(0).standard_normal((1, 5)).astype(np.float32)
    spec = ModelSpec("double", module=_Double(), input_shapes=((1, 5),))
    with TailServer(ServerConfig(models=(spec,))) as server:
        channel = grpc.insecure_channel(server.address)
        try:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            infer = model_infer(channel)
            reply = stub.ModelInfer(serde.build_infer_request("double", {"x": x}), timeout=30)
            stock = serde.parse_infer_response(reply, max_decoded_bytes=CAP)
            raw = infer(serde.encode_infer_request("double", {"x": x}), timeout=30)
            wire = serde.decode_infer_response(raw, max_decoded_bytes=CAP)
            assert v2_pb.ModelInferResponse.FromString(raw).raw_output_contents == reply.raw_output_contents
            for got in (stock, wire):
                np.testing.assert_array_equal(got.outputs["output"], x * 2.0)
            for garbage in (b"\x3a\xff\xff\xff\xff\x0f", b"\x0a\x02\xff\xfe", b"\x0f"):
                with pytest.raises(grpc.RpcError) as info:
                    infer(garbage, timeout=30)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid inference.ModelInferRequest" in (info.value.details() or "")
            again = serde.decode_infer_response(
                infer(serde.encode_infer_request("double", {"x": x})), max_decoded_bytes=CAP
            )
            np.testing.assert_array_equal(again.outputs["output"], x * 2.0)  # still serving
        finally:
            channel.close()


# --------------------------------------------------------------------------------------------------
# entry limits, checked before protobuf parses a message


def test_over_limit_counts_entries_in_any_encoding() -> None:
    lim = {5: _wire.Limit("inputs", 3)}
    empty_input = b"\x2a\x00"  # field 5 (inputs), length 0
    assert _wire.over_limit(empty_input * 3, lim, 100) is None
    assert _wire.over_limit(empty_input * 4, lim, 100) == ("inputs", 3)
    padded = b"\xaa\x80\x00\x00"  # the same tag and length as over-long varints: valid protobuf
    assert _wire.over_limit(padded * 4, lim, 100) == ("inputs", 3)
    group = b"\x0b" + empty_input * 10 + b"\x0c"  # field 1 as a group: its insides are not top-level
    assert _wire.over_limit(group + empty_input, lim, 100) is None
    assert _wire.over_limit(b"\x08\x01" * 101, {}, 100) == ("fields", 100)  # fields in all
    assert _wire.over_limit(b"\x2a\x05ab", {5: _wire.Limit("inputs", 0)}, 100) == ("inputs", 0)
    for malformed in (b"\x00\x00", b"\x0c", b"\x2f", b"\x2a"):  # field 0, stray end, wire type 7, cut
        assert _wire.over_limit(malformed, {5: _wire.Limit("inputs", 5)}, 100) is None
    # inside an entry: an input (field 5) whose contents (5) hold many bytes_contents (8)
    nested = {
        5: _wire.Limit("inputs", 3, {5: _wire.Limit("contents", 1, {8: _wire.Limit("bytes_contents", 2)})})
    }
    contents = b"\x42\x00" * 3  # three empty bytes_contents entries
    tensor = b"\x2a" + bytes([len(contents)]) + contents
    data = b"\x2a" + bytes([len(tensor)]) + tensor
    assert _wire.over_limit(data, nested, 100) == ("inputs.contents.bytes_contents", 2)


def test_a_message_of_countless_empty_entries_is_refused_before_it_is_parsed() -> None:
    """32 MiB of empty inputs took 5 GB and a minute through protobuf; here a few thousand steps."""
    for field, name in ((b"\x2a\x00", "inputs"), (b"\x32\x00", "outputs"), (b"\x22\x00", "parameters")):
        with pytest.raises(WireError, match=f"more than [0-9]+ '{name}' entries"):
            serde.read_infer_request(field * 500_000)  # 1 MB
    with pytest.raises(WireError, match="more than [0-9]+ fields in one message"):
        serde.read_infer_request(b"\x7a\x00" * 100_000)  # unknown field 15, empty
    # nested: one input whose typed contents hold 200,000 empty bytes_contents entries (15x in memory)
    contents = b"\x42\x00" * 200_000
    tensor = b"\x2a" + _wire.varint_bytes(len(contents)) + contents
    data = b"\x2a" + _wire.varint_bytes(len(tensor)) + tensor
    with pytest.raises(WireError, match="more than 4096 'inputs.contents.bytes_contents' entries"):
        serde.read_infer_request(data)
    with pytest.raises(WireError, match="more than 1024 'parameters' entries"):
        serde.decode_infer_response(b"\x22\x00" * 2000, max_decoded_bytes=CAP)
    msg = v2_pb.ModelInferResponse(outputs=[v2_pb.ModelInferResponse.InferOutputTensor()] * 5000)
    with pytest.raises(WireError, match="has 5000 'outputs' entries; at most 4096"):
        serde.parse_infer_response(msg, max_decoded_bytes=CAP)


def test_a_long_framed_list_and_long_duplicate_output_names_are_cut_short() -> None:
    x = np.zeros((1, 2), np.float32)
    msg = serde.build_infer_request("m", {"x": x}, parameters={"a": 1})
    msg.parameters[serde.PARAM_FRAMED].string_param = "x," * 100_000
    with pytest.raises(WireError, match="splitdnn.framed .200000 characters. is longer than the names"):
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    msg = serde.build_infer_request("m", {"x": x})
    msg.outputs.extend([v2_pb.ModelInferRequest.InferRequestedOutputTensor(name="y" * 20_000)] * 9)
    with pytest.raises(WireError) as info:
        serde.parse_infer_request(msg, max_decoded_bytes=CAP)
    assert "requested outputs must be distinct" in str(info.value) and len(str(info.value)) < 1000


def test_split_field_takes_at_most_max_entries_on_its_fast_path() -> None:
    """One view object per entry: past the cap it leaves the message to protobuf (whose entry counts
    are checked before and after it parses)."""
    data = b"\x3a\x01x" * 5
    rest, slices = _wire.split_field(data, 7, max_entries=5)
    assert rest == b"" and [bytes(v) for v in slices] == [b"x"] * 5
    assert _wire.split_field(data, 7, max_entries=4) is None
    # through a request: up to the cap its raw contents are views; one more, protobuf's copies
    at_cap = serde.read_infer_request(b"\x3a\x01x" * _wire_infer.MAX_TENSORS)
    past = serde.read_infer_request(b"\x3a\x01x" * (_wire_infer.MAX_TENSORS + 1))
    assert all(isinstance(v, memoryview) for v in at_cap.raw)
    assert all(isinstance(v, bytes) for v in past.raw) and past.raw == [b"x"] * (_wire_infer.MAX_TENSORS + 1)


def _from_spans(data: bytes, numbers: tuple[int, ...]) -> tuple[bytes, list[list[bytes]]] | None:
    """split_fields' answer rebuilt from field_spans: the entries, and the rest between them."""
    spans = _wire.field_spans(data, numbers)
    if spans is None:
        return None
    rest, pos, entries = [], 0, [[] for _ in numbers]
    for number, start, stop in spans:
        tag_at = start - 1
        while tag_at > pos and data[tag_at - 1] & 0x80:  # back over the length varint to the tag
            tag_at -= 1
        rest.append(data[pos : tag_at - 1])
        entries[numbers.index(number)].append(data[start:stop])
        pos = stop
    rest.append(data[pos:])
    return b"".join(rest), entries


@_FUZZ
@given(mutated() | requests(), st.sampled_from([(7,), (3,), (3, 7), (7, 4, 3)]))
def test_field_spans_are_where_split_fields_cuts(data: bytes, numbers: tuple[int, ...]) -> None:
    split = _wire.split_fields(data, numbers)
    rebuilt = _from_spans(data, numbers)
    if split is None:
        assert rebuilt is None
        return
    assert rebuilt is not None
    assert rebuilt[0] == split[0]
    assert rebuilt[1] == [[bytes(v) for v in views] for views in split[1]]
