"""ModelStreamInfer (Triton's streaming extension of v2) through real gRPC on 127.0.0.1.

The server answers each request message of a stream as a ModelInfer call would, in order, and a
refused one with its status in ``error_message`` (the stream stays open); it caps the streams open at
once, ends idle ones, and ends waiting ones at a stop. ``SplitClient(stream=True)`` sends its
requests on one stream and gets the same outputs; where the stream cannot take a request (the
server takes no streams, the stream ended, the deadline passed) the request goes as a unary call or
falls back as a unary one would. Also: a stock client (tritonclient) streams to the server.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from torch import nn

from splitdnn import codec, graph
from splitdnn.errors import ConfigError, WireError
from splitdnn.models import ZOO
from splitdnn.profiler import profile_model
from splitdnn.runtime import serde
from splitdnn.runtime._client_stream import InferStream, StreamRefusal, refusal_of
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime.client import SplitClient
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
from splitdnn.schema import Link

MODEL = "alexnet"
SHAPE = (1, *ZOO[MODEL].test_input_shape)
CAP = 64 << 20
TOKEN = "stream-token-0123456789"


class Stream:
    """A raw ModelStreamInfer call of bytes: put requests, take answers."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.call: Any = channel.stream_stream(serde.MODEL_STREAM_INFER_METHOD)(
            self._sent(), metadata=metadata, timeout=60
        )

    def _sent(self) -> Iterator[bytes]:
        while (request := self.requests.get()) is not None:
            yield request

    def ask(self, request: bytes) -> serde.StreamAnswer:
        self.requests.put(request)
        return serde.stream_answer(next(self.call))

    def end(self) -> grpc.StatusCode:
        """Half-close; the status the stream ends with."""
        self.requests.put(None)
        assert list(self.call) == []
        return self.call.code()

    def failure(self) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            next(self.call)
        return info.value


@pytest.fixture(scope="module")
def server() -> Iterator[TailServer]:
    cfg = ServerConfig(
        models=(ModelSpec(MODEL, input_shapes=(SHAPE,)),), max_batch_size=1, max_streams=3, token=TOKEN
    )
    with TailServer(cfg) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server: TailServer) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(server.address)
    yield ch
    ch.close()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE, dtype=np.float32)


def _local(server: TailServer, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return server.served_model(MODEL).module(torch.from_numpy(x)).numpy()


def _boundary(server: TailServer, x: np.ndarray, cut: str) -> dict[str, np.ndarray]:
    head, _ = graph.head_tail(server.served_model(MODEL), cut)
    with torch.no_grad():
        return {k: v.numpy() for k, v in head({"x": torch.from_numpy(x)}).items()}


# --------------------------------------------------------------------------------------------------
# the server


def test_a_stream_answers_each_request_in_order_as_a_unary_call_does(
    server: TailServer, channel: grpc.Channel
) -> None:
    traced = server.served_model(MODEL)
    cut = graph.chain_cuts(traced)[3]
    stream, encoder, decoder = Stream(channel, AUTH), serde.RequestEncoder(), serde.ResponseDecoder()
    unary = channel.unary_unary(serde.MODEL_INFER_METHOD)
    for i in range(4):  # full requests and split ones, raw and framed, repeats among them
        x = _x(i % 2)
        inputs: dict[str, Any] = {"x": x} if i < 2 else _boundary(server, x, cut)
        if i == 3:
            inputs = {k: codec.encode(v, "zstd") for k, v in inputs.items()}
        request = encoder.encode(MODEL, inputs, fingerprint=traced.fingerprint, request_id=f"q{i}")
        answer = stream.ask(request)
        assert answer.error == "" and answer.request_id == ""
        got = decoder.decode(answer.response, max_decoded_bytes=CAP)  # a view of the stream's message
        assert got.request_id == f"q{i}"
        assert np.array_equal(got.outputs["output"], _local(server, x))
        alone = serde.decode_infer_response(unary(request, metadata=AUTH, timeout=60), max_decoded_bytes=CAP)
        assert np.array_equal(alone.outputs["output"], got.outputs["output"])
        assert got.parameters[serde.PARAM_BATCH_SIZE] == 1
    assert stream.end() == grpc.StatusCode.OK  # the client closed its side: the stream ends, OK


def test_a_refused_request_gets_its_error_and_the_stream_stays_open(
    server: TailServer, channel: grpc.Channel
) -> None:
    traced = server.served_model(MODEL)
    stream, encoder = Stream(channel, AUTH), serde.RequestEncoder()
    failures_before = server.metrics.failures.labels("<unknown>", "NOT_FOUND")._value.get()
    x, flat = _x(0), np.zeros((1, 3, 8), np.float32)
    bad = [
        (b"\xff\xff not a message", "INVALID_ARGUMENT", ""),
        (encoder.encode("no-such-model", {"x": x}, request_id="a"), "NOT_FOUND", "a"),
        (encoder.encode(MODEL, {"x": x}, fingerprint="0" * 64, request_id="b"), "FAILED_PRECONDITION", "b"),
        (encoder.encode(MODEL, {"not_a_node": x}, request_id="c"), "INVALID_ARGUMENT", "c"),
        (encoder.encode(MODEL, {"x": flat}, request_id="d"), "INVALID_ARGUMENT", "d"),
    ]
    for request, code, request_id in bad:
        answer = stream.ask(request)
        assert answer.error.startswith(f"{code}: "), answer.error
        assert answer.request_id == request_id
        refusal = refusal_of(answer.error)
        assert refusal.code().name == code and refusal.details() == answer.error.split(": ", 1)[1]
        good = stream.ask(encoder.encode(MODEL, {"x": _x(1)}, fingerprint=traced.fingerprint))
        assert good.error == ""  # the next request on the same stream is served
        out = serde.decode_infer_response(good.response, max_decoded_bytes=CAP).outputs["output"]
        assert np.array_equal(out, _local(server, _x(1)))
    assert server.metrics.failures.labels("<unknown>", "NOT_FOUND")._value.get() == failures_before + 1
    assert stream.end() == grpc.StatusCode.OK


def test_a_stream_needs_the_token(channel: grpc.Channel) -> None:
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        failure = Stream(channel, metadata).failure()
        assert failure.code() == grpc.StatusCode.UNAUTHENTICATED


def test_streams_past_max_streams_are_refused(server: TailServer, channel: grpc.Channel) -> None:
    encoder = serde.RequestEncoder()
    request = encoder.encode(MODEL, {"x": _x(0)}, fingerprint=server.served_model(MODEL).fingerprint)
    open_ = [Stream(channel, AUTH) for _ in range(3)]
    for s in open_:
        assert s.ask(request).error == ""  # each is open on the server, holding its slot
    assert server.metrics.registry.get_sample_value("splitdnn_streams_open") == 3
    failure = Stream(channel, AUTH).failure()
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_streams=3" in (failure.details() or "") and "ModelInfer" in (failure.details() or "")
    assert open_[0].end() == grpc.StatusCode.OK  # a slot comes back when a stream ends ...
    again = [_reopened(channel, request)]
    open_[1].call.cancel()  # ... or when its client goes away without ending it
    again.append(_reopened(channel, request))
    for s in (open_[2], *again):
        s.end()
    deadline = time.monotonic() + 10
    while server.metrics.registry.get_sample_value("splitdnn_streams_open") != 0:
        assert time.monotonic() < deadline, "streams ended by their clients still hold their slots"
        time.sleep(0.05)


def _reopened(channel: grpc.Channel, request: bytes, metadata: tuple[tuple[str, str], ...] = AUTH) -> Stream:
    """A new stream that got a slot (a freed slot comes back once the server sees its stream end)."""
    deadline = time.monotonic() + 10
    while True:
        stream = Stream(channel, metadata)
        try:
            assert stream.ask(request).error == ""
            return stream
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the ended stream's slot never came back"
            time.sleep(0.05)


def test_a_client_address_gets_at_most_max_streams_per_peer() -> None:
    spec = ModelSpec(MODEL, input_shapes=(SHAPE,))
    cfg = ServerConfig(models=(spec,), max_batch_size=1, max_streams=4, max_streams_per_peer=2)
    with TailServer(cfg) as srv:
        ch = grpc.insecure_channel(srv.address)
        request = serde.RequestEncoder().encode(MODEL, {"x": _x(0)})
        mine = [Stream(ch) for _ in range(2)]
        for s in mine:
            assert s.ask(request).error == ""
        failure = Stream(ch).failure()
        assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_peer=2" in (failure.details() or "")
        assert mine[0].end() == grpc.StatusCode.OK  # the address's count comes back with its streams
        assert _reopened(ch, request, ()).end() == grpc.StatusCode.OK
        mine[1].end()
        ch.close()
    with pytest.raises(ConfigError, match="max_streams_per_peer"):
        ServerConfig(models=(MODEL,), max_streams_per_peer=0)


def test_no_streams_when_max_streams_is_0_and_bad_settings_are_refused() -> None:
    spec = ModelSpec(MODEL, input_shapes=(SHAPE,))
    with TailServer(ServerConfig(models=(spec,), max_streams=0)) as srv:
        with grpc.insecure_channel(srv.address) as ch:
            failure = Stream(ch).failure()
    assert failure.code() == grpc.StatusCode.UNIMPLEMENTED and "--max-streams 0" in (failure.details() or "")
    assert ServerConfig(models=(MODEL,), max_concurrency=4).stream_limit == 2  # half: the rest unary
    assert ServerConfig(models=(MODEL,), max_concurrency=1).stream_limit == 1
    assert ServerConfig(models=(MODEL,)).stream_limit == 16
    for bad in ({"max_streams": -1}, {"max_streams": 65, "max_concurrency": 64}, {"max_streams": True}):
        with pytest.raises(ConfigError, match="max_streams"):
            ServerConfig(models=(MODEL,), **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="stream_idle_timeout_s"):
        ServerConfig(models=(MODEL,), stream_idle_timeout_s=0.01)


def test_an_idle_stream_is_ended_and_a_stop_ends_waiting_streams_at_once() -> None:
    spec = ModelSpec(MODEL, input_shapes=(SHAPE,))
    cfg = ServerConfig(models=(spec,), max_batch_size=1, stream_idle_timeout_s=1.0, grace_s=20.0, drain_s=0.3)
    with TailServer(cfg) as srv:
        ch = grpc.insecure_channel(srv.address)
        request = serde.RequestEncoder().encode(MODEL, {"x": _x(0)})
        idle = Stream(ch)
        assert idle.ask(request).error == ""
        time.sleep(1.6)
        failure = idle.failure()
        assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle timeout" in (failure.details() or "")
        assert srv.metrics.receive_timeouts.labels(serde.MODEL_STREAM_INFER_METHOD)._value.get() == 1
        # a stream that keeps sending within the timeout stays open
        busy = Stream(ch)
        for _ in range(4):
            assert busy.ask(request).error == ""
            time.sleep(0.3)
        t0 = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            stopping = pool.submit(srv.stop)  # a grace of 20 s, which an open stream would take whole
            time.sleep(0.1)
            for _ in range(2):  # in the drain (health NOT_SERVING), the stream is served as before
                assert busy.ask(request).error == ""
            stopping.result(timeout=30)
        took = time.monotonic() - t0
        failure = busy.failure()
        ch.close()
    assert took < 5.0, f"the stop waited {took:.1f} s for an open stream"
    # UNAVAILABLE: with the server's "shutting down", or the connection's close when that came first
    assert failure.code() == grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------------------------------
# the wire: the stream's answers


def test_stream_answers_are_what_protobuf_writes_and_reads() -> None:
    out = {"output": np.arange(6, dtype=np.float32).reshape(2, 3)}
    data = serde.encode_infer_response("m", "r7", out, parameters={"a": 1.5}, stream=True)
    parsed = v2_pb.ModelStreamInferResponse.FromString(data)
    assert parsed.error_message == "" and parsed.infer_response.id == "r7"
    assert parsed.infer_response.SerializeToString() == serde.encode_infer_response(
        "m", "r7", out, parameters={"a": 1.5}
    )
    encoder, decoder = serde.ResponseEncoder(), serde.ResponseDecoder()
    for i in range(3):  # the repeat path: the same answers with a view as with bytes
        wrapped = encoder.encode("m", f"r{i}", out, parameters={"a": float(i)}, stream=True)
        plain = encoder.encode("m", f"r{i}", out, parameters={"a": float(i)})
        answer = serde.stream_answer(wrapped)
        assert bytes(answer.response) == plain
        via_view = decoder.decode(answer.response, max_decoded_bytes=CAP)
        whole = serde.decode_infer_response(plain, max_decoded_bytes=CAP)
        assert (via_view.request_id, via_view.parameters) == (whole.request_id, whole.parameters)
        assert np.array_equal(via_view.outputs["output"], whole.outputs["output"])
    error = serde.encode_stream_error("NOT_FOUND: no model", "m", "r9")
    assert serde.stream_answer(error)[0::2] == ("NOT_FOUND: no model", "r9")


def test_a_malformed_stream_answer_is_refused() -> None:
    good = serde.encode_infer_response("m", "", {"output": np.zeros(2, np.float32)}, stream=True)
    twice = v2_pb.ModelStreamInferResponse(error_message="x").SerializeToString() * 2
    not_utf8 = b"\x0a\x02\xff\xfe"
    huge_error = serde.encode_stream_error("E: e") + b"\x12" + b"\x80\x80\x08" + bytes(128 << 10)
    for data, match in (
        (b"", "neither"),  # no answer and no error
        (good[:-3], "not a well-formed"),  # truncated
        (twice, "not a well-formed"),
        (not_utf8, "not UTF-8"),
        (huge_error, "not a well-formed|more than"),
        (bytearray(good), "as bytes"),
    ):
        with pytest.raises(WireError, match=match):
            serde.stream_answer(data)  # type: ignore[arg-type]
    with pytest.raises(WireError, match="as bytes"):  # a decoder keeps views only of immutable bytes
        serde.ResponseDecoder().decode(memoryview(bytearray(good))[2:], max_decoded_bytes=CAP)
    with pytest.raises(WireError, match="as bytes"):  # ... flat ones
        serde.ResponseDecoder().decode(memoryview(good[:8]).cast("B", (2, 4)), max_decoded_bytes=CAP)
    assert refusal_of("an error text from another server").code() == grpc.StatusCode.UNKNOWN
    assert refusal_of("OK: odd").code() == grpc.StatusCode.UNKNOWN


# --------------------------------------------------------------------------------------------------
# the client


@pytest.fixture(scope="module")
def device(server: TailServer) -> Any:
    return profile_model(
        server.served_model(MODEL), threads=1, warmup=0, repeats=1, segments=4, check_cuts=0,
        progress=False, codecs=("raw", "zstd"), codec_nodes="chain",
    )  # fmt: skip


def _client(server: TailServer, device: Any, **kw: Any) -> SplitClient:
    kw.setdefault("link", Link(100.0, rtt_ms=1.0))
    return SplitClient(server.address, server.served_model(MODEL), device_profile=device, token=TOKEN, **kw)


@pytest.mark.parametrize("boundary", ["cloud", "features_5"])
def test_a_streaming_client_gets_the_outputs_of_a_unary_one(
    server: TailServer, device: Any, boundary: str
) -> None:
    with _client(server, device, stream=True, force_boundary=boundary, fallback_local=False) as client:
        for seed in range(4):
            x = _x(seed)
            y = client.infer(torch.from_numpy(x))
            b = client.last_breakdown
            assert b is not None and not b.local and b.bytes_received > 0
            assert np.array_equal(y.numpy(), _local(server, x))
        assert client._stream is not None
        assert client._stream.opened == 1 and client._stream.unary_reasons == []
    with pytest.raises(ConfigError, match="stream must be True or False"):
        _client(server, device, stream="yes")


def test_a_streaming_client_sends_unary_calls_to_a_server_without_streams(device: Any) -> None:
    spec = ModelSpec(MODEL, input_shapes=(SHAPE,))
    with TailServer(ServerConfig(models=(spec,), max_batch_size=1, max_streams=0)) as srv:
        traced = srv.served_model(MODEL)
        with SplitClient(
            srv.address, traced, device_profile=device, stream=True, force_boundary="cloud",
            fallback_local=False,
        ) as client:  # fmt: skip
            for seed in range(3):
                x = _x(seed)
                assert np.array_equal(client.infer(torch.from_numpy(x)).numpy(), _local(srv, x))
            stream = client._stream
            assert stream is not None and stream.opened == 1  # asked once, then unary for good
            assert len(stream.unary_reasons) == 1 and "UNIMPLEMENTED" in stream.unary_reasons[0]


def test_a_stream_ended_by_the_server_is_opened_again(device: Any) -> None:
    spec = ModelSpec(MODEL, input_shapes=(SHAPE,))
    cfg = ServerConfig(models=(spec,), max_batch_size=1, stream_idle_timeout_s=0.3)
    with TailServer(cfg) as srv:
        with SplitClient(
            srv.address, srv.served_model(MODEL), device_profile=device, stream=True, force_boundary="cloud",
            fallback_local=False,
        ) as client:  # fmt: skip
            x = _x(0)
            assert np.array_equal(client.infer(torch.from_numpy(x)).numpy(), _local(srv, x))
            time.sleep(0.8)  # the server ends the idle stream
            for _ in range(2):  # the first goes unary (its stream had ended), the next on a new one
                assert np.array_equal(client.infer(torch.from_numpy(x)).numpy(), _local(srv, x))
            stream = client._stream
            assert stream is not None and stream.opened == 2
            assert len(stream.unary_reasons) == 1 and "DEADLINE_EXCEEDED" in stream.unary_reasons[0]


def _delay(x: torch.Tensor) -> torch.Tensor:
    """A second's sleep for a request whose first value is over 100 (a call the tracer keeps)."""
    if float(x.flatten()[0]) > 100.0:
        time.sleep(1.0)
    return x


torch.fx.wrap("_delay")


class _Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(_delay(x))


def test_no_answer_in_time_cancels_the_stream_and_the_next_request_opens_another() -> None:
    module = _Slow().eval()
    spec = ModelSpec("slow", name="slow", module=module, input_shapes=((1, 4),))
    with TailServer(ServerConfig(models=(spec,), max_batch_size=1)) as srv:
        traced = srv.served_model("slow")
        inputs = [n.name for n in traced.nodes if n.op == "placeholder"]
        fast, slow = np.zeros((1, 4), np.float32), np.full((1, 4), 1000.0, np.float32)
        stream = InferStream(grpc.insecure_channel(srv.address))
        encoder = serde.RequestEncoder()

        def ask(x: np.ndarray, timeout: float) -> Any:
            request = encoder.encode("slow", {inputs[0]: x}, fingerprint=traced.fingerprint)
            return stream.send(request, timeout)

        assert ask(fast, 10.0) is not None
        t0 = time.monotonic()
        with pytest.raises(StreamRefusal) as info:
            ask(slow, 0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 0.9  # the watch cancelled it, not the slow answer
        answer = ask(fast, 10.0)  # on a new stream: the late answer is not taken for this one
        assert answer is not None and stream.opened == 2
        got = serde.decode_infer_response(answer, max_decoded_bytes=CAP).outputs["output"]
        with torch.no_grad():
            assert np.array_equal(got, module(torch.from_numpy(fast)).numpy())
        assert ask(fast, 1e12) is not None  # a deadline past what a wait can take: no watch lost
        # closing under a request ends it at once (CANCELLED), not at its deadline or its answer
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(ask, slow, 30.0)
            time.sleep(0.3)
            t0 = time.monotonic()
            stream.close()
            with pytest.raises(StreamRefusal) as info:
                pending.result(timeout=10)
        assert info.value.code() == grpc.StatusCode.CANCELLED and time.monotonic() - t0 < 0.9
        assert ask(fast, 10.0) is None  # closed: unary from now on


def test_a_streaming_client_falls_back_when_the_server_stops(device: Any) -> None:
    spec = ModelSpec(MODEL, input_shapes=(SHAPE,))
    with TailServer(ServerConfig(models=(spec,), max_batch_size=1, grace_s=0.0)) as srv:
        client = SplitClient(
            srv.address, srv.served_model(MODEL), device_profile=device, stream=True, force_boundary="cloud",
            retries=1,
        )  # fmt: skip
        x = _x(0)
        assert np.array_equal(client.infer(torch.from_numpy(x)).numpy(), _local(srv, x))
        srv.stop(grace=0.0)
    with client:
        y = client.infer(torch.from_numpy(x))
        b = client.last_breakdown
        assert b is not None and b.local and "UNAVAILABLE" in b.fallback
        assert np.array_equal(y.numpy(), _local(srv, x))


# --------------------------------------------------------------------------------------------------
# a stock client


def test_a_stock_client_streams(server: TailServer) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    answers: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
    client = grpcclient.InferenceServerClient(url=server.address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=dict(AUTH))
    try:
        xs = [_x(seed) for seed in range(3)]
        for i, x in enumerate(xs):
            inp = grpcclient.InferInput("x", list(SHAPE), "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer(MODEL, [inp], request_id=f"s{i}")
        bad = grpcclient.InferInput("x", list(SHAPE), "FP32")
        bad.set_data_from_numpy(xs[0])
        client.async_stream_infer("no-such-model", [bad], request_id="bad")
        for i, x in enumerate(xs):
            result, error = answers.get(timeout=60)
            assert error is None
            assert result.get_response().id == f"s{i}"
            assert np.array_equal(result.as_numpy(result.get_response().outputs[0].name), _local(server, x))
        result, error = answers.get(timeout=60)
        assert result is None and "NOT_FOUND" in str(error)
    finally:
        client.stop_stream()
        client.close()
