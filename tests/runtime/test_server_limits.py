"""The tail server's limits and lifecycle through real gRPC: bounded concurrency, deadlines, dynamic
batching (a bad neighbour never hurts a batch), bearer token, TLS and mutual TLS, graceful stop.

A tiny model with a gate (an fx-wrapped function that blocks until the test opens it) holds requests
inside the server, so every scenario is deterministic and needs no timing assumptions.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tls_certs import make_certs
from torch import nn

from splitdnn.errors import ConfigError, RemoteError
from splitdnn.runtime import serde
from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc
from splitdnn.runtime.server import RPC_THREAD_PREFIX, ModelSpec, ServerConfig, TailServer

_OPEN = threading.Event()
_OPEN.set()
_ENTERED = threading.Event()


def _gate(x: torch.Tensor) -> torch.Tensor:
    """Blocks the tail until the test opens the gate (at most 30 s)."""
    _ENTERED.set()
    if not _OPEN.wait(timeout=30):
        raise RuntimeError("the test never opened the gate")
    return x


torch.fx.wrap("_gate")


class Gated(nn.Module):
    """(B, 4) -> (B, 3); row-independent, so batching gives the same rows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_gate(x) * 2.0)


@contextmanager
def _server(**kw: Any) -> Iterator[TailServer]:
    kw.setdefault("models", (ModelSpec("gated", module=Gated(), input_shapes=((1, 4),)),))
    _OPEN.set()
    with TailServer(ServerConfig(**kw)) as server:
        _ENTERED.clear()
        try:
            yield server
        finally:
            _OPEN.set()


@contextmanager
def _gate_closed() -> Iterator[None]:
    _ENTERED.clear()
    _OPEN.clear()
    try:
        yield
    finally:
        _OPEN.set()


def _stub(address: str, creds: grpc.ChannelCredentials | None = None, **opts: Any) -> Any:
    options = list(opts.items())
    channel = grpc.secure_channel(address, creds, options) if creds else grpc.insecure_channel(address)
    return v2_grpc.GRPCInferenceServiceStub(channel), channel


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def _infer(stub: Any, x: np.ndarray, **kw: Any) -> serde.InferResponseData:
    reply = stub.ModelInfer(serde.build_infer_request("gated", {"x": x}), **kw)
    return serde.parse_infer_response(reply, max_decoded_bytes=1 << 20)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def _expected(server: TailServer, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return server.served_model("gated").module(torch.from_numpy(x)).numpy()


def test_concurrency_limit_answers_resource_exhausted() -> None:
    with _server(max_concurrency=1) as server, ThreadPoolExecutor(2) as pool:
        stub, channel = _stub(server.address)
        with _gate_closed():
            first = pool.submit(_infer, stub, _rows(1, 0), timeout=30)
            assert _ENTERED.wait(20)
            assert _code(lambda: _infer(stub, _rows(1, 1), timeout=30)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert np.array_equal(first.result(30).outputs["output"], _expected(server, _rows(1, 0)))
        assert np.array_equal(
            _infer(stub, _rows(2, 2), timeout=30).outputs["output"], _expected(server, _rows(2, 2))
        )
        channel.close()


def test_requests_in_flight_cannot_together_decode_past_max_inflight_bytes() -> None:
    """Each request passes max_decoded_bytes (1 MiB from a ~100-byte zstd frame); the third at once
    would take the server past max_inflight_bytes and is refused as RESOURCE_EXHAUSTED, not decoded."""
    from splitdnn import codec

    mib = 1 << 20
    rows = np.zeros((mib // 16, 4), dtype=np.float32)  # 1 MiB decoded
    frame = codec.encode(rows, "zstd")
    assert len(frame) < 1024
    held = lambda s: s.metrics.registry.get_sample_value("splitdnn_inflight_bytes")  # noqa: E731

    def send(stub: Any) -> serde.InferResponseData:
        reply = stub.ModelInfer(serde.build_infer_request("gated", {"x": frame}), timeout=30)
        return serde.parse_infer_response(reply, max_decoded_bytes=4 * mib)

    kw = {"max_message_bytes": mib, "max_decoded_bytes": mib, "max_inflight_bytes": 2 * mib + mib // 2}
    with _server(**kw) as server, ThreadPoolExecutor(3) as pool:
        assert server.config.inflight_limit == 2 * mib + mib // 2
        stub, channel = _stub(server.address)
        with _gate_closed():
            first = pool.submit(send, stub)
            assert _ENTERED.wait(20)
            second = pool.submit(send, stub)  # 2 MiB and two frames held: still within 2.5 MiB
            _wait_for(lambda: server.queue_depth == 1)
            assert 2 * mib < held(server) < 2 * mib + 4096
            with pytest.raises(grpc.RpcError) as info:
                send(stub)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_inflight_bytes=2621440" in str(info.value.details())
            assert "--max-inflight-mib" in str(info.value.details())
            assert 2 * mib < held(server) < 2 * mib + 4096  # the refused request gave its share back
        expected = _expected(server, rows)
        for future in (first, second):
            assert np.array_equal(future.result(30).outputs["output"], expected)
        assert held(server) == 0
        assert np.array_equal(send(stub).outputs["output"], expected)  # room again
        failed = {"model": "gated", "code": "RESOURCE_EXHAUSTED"}
        assert server.metrics.registry.get_sample_value("splitdnn_failures_total", failed) == 1
        channel.close()


def _offset_request(x: np.ndarray, misalign: int) -> bytes:
    """A stock client's request for ``x`` whose raw contents start ``misalign`` bytes past a multiple of
    16 into the message (gRPC hands the server the message in a 16-byte aligned buffer)."""
    for spaces in range(64):
        msg = serde.build_infer_request("gated", {"x": x})
        msg.parameters[serde.PARAM_PAD].string_param = " " * spaces
        data: bytes = msg.SerializeToString()
        if (len(data) - x.nbytes) % 16 == misalign:
            return data
    raise AssertionError(f"no padding puts the raw contents {misalign} bytes off")


class GatedAfter(Gated):
    """Gated with its input read by a plain op first: the tail never writes its input, so it may
    compute on a view of the message's bytes (the gate, opaque to the in-place check, gets a copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_gate(x * 2.0))


@pytest.mark.parametrize("misalign", [0, 4])
def test_a_request_computed_on_a_copy_holds_the_copy_in_the_inflight_bytes(misalign: int) -> None:
    """The tail computes on a view of the message's bytes where those start aligned; else on a copy
    (MKL rounds unaligned inputs differently), which counts in the in-flight bytes while it lives."""
    x = _rows(64, 3)
    request = _offset_request(x, misalign)
    held = lambda s: s.metrics.registry.get_sample_value("splitdnn_inflight_bytes")  # noqa: E731
    models = (ModelSpec("gated", module=GatedAfter(), input_shapes=((1, 4),)),)
    with _server(models=models) as server, ThreadPoolExecutor(1) as pool:
        assert not server._models["gated"].tail(frozenset({"x"})).writes_inputs
        channel = grpc.insecure_channel(server.address)
        call = channel.unary_unary(serde.MODEL_INFER_METHOD)
        with _gate_closed():
            pending = pool.submit(call, request, timeout=30)
            assert _ENTERED.wait(20)
            assert held(server) == len(request) + (x.nbytes if misalign else 0)
        reply = serde.decode_infer_response(pending.result(30), max_decoded_bytes=1 << 20)
        assert np.array_equal(reply.outputs["output"], _expected(server, x))
        assert held(server) == 0
        channel.close()


_SECOND_OPEN = threading.Event()
_SECOND_ENTERED = threading.Event()


def _second_gate(x: torch.Tensor) -> torch.Tensor:
    """Rows marked with x[:, 0] >= 500 wait for the second gate; the others pass the first one."""
    if bool((x[:, 0] >= 500).any()):
        _SECOND_ENTERED.set()
        if not _SECOND_OPEN.wait(timeout=30):
            raise RuntimeError("the test never opened the second gate")
        return x
    return _gate(x)


torch.fx.wrap("_second_gate")


class TwoGated(Gated):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_second_gate(x) * 2.0)


def _marked(seed: int) -> np.ndarray:
    x = _rows(1, seed)
    x[:, 0] = 1000.0
    return x


def test_a_request_timing_out_in_the_queue_leaves_it_and_gives_back_its_bytes() -> None:
    from splitdnn import codec

    mib = 1 << 20
    frame = codec.encode(np.zeros((mib // 16, 4), dtype=np.float32), "zstd")  # 1 MiB decoded
    kw = {"max_concurrency": 2, "max_message_bytes": mib, "max_decoded_bytes": mib}
    with _server(**kw, max_inflight_bytes=2 * mib + mib // 2) as server, ThreadPoolExecutor(1) as pool:
        stub, channel = _stub(server.address)
        registry = server.metrics.registry
        with _gate_closed():
            blocker = pool.submit(_infer, stub, _rows(1, 0), timeout=30)
            assert _ENTERED.wait(20)
            held = registry.get_sample_value("splitdnn_inflight_bytes")
            request = serde.build_infer_request("gated", {"x": frame})
            late = lambda: stub.ModelInfer(request, timeout=0.3)  # noqa: E731
            for _ in range(6):  # each fits when it arrives; before, the queue kept every one of them
                assert _code(late) == grpc.StatusCode.DEADLINE_EXCEEDED
                _wait_for(lambda: registry.get_sample_value("splitdnn_in_flight") == 1)
                assert server.queue_depth == 0
                assert registry.get_sample_value("splitdnn_inflight_bytes") == held
        assert np.array_equal(blocker.result(30).outputs["output"], _expected(server, _rows(1, 0)))
        failed = {"model": "gated", "code": "DEADLINE_EXCEEDED"}
        assert registry.get_sample_value("splitdnn_failures_total", failed) == 6
        channel.close()


def test_a_request_timing_out_while_its_batch_runs_keeps_its_slot_until_the_batch_ends() -> None:
    models = (ModelSpec("gated", module=TwoGated(), input_shapes=((1, 4),)),)
    _SECOND_OPEN.clear()
    _SECOND_ENTERED.clear()
    with _server(models=models, max_concurrency=2) as server, ThreadPoolExecutor(2) as pool:
        stub, channel = _stub(server.address)
        registry = server.metrics.registry
        sample = lambda name: registry.get_sample_value(name)  # noqa: E731
        try:
            with _gate_closed():
                blocker = pool.submit(_infer, stub, _rows(1, 0), timeout=30)  # inline, at the first gate
                assert _ENTERED.wait(20)
                late = pool.submit(_infer, stub, _marked(1), timeout=1.0)  # queued behind it
                _wait_for(lambda: server.queue_depth == 1)
            blocker.result(30)  # the worker now runs `late`, held at the second gate
            assert _SECOND_ENTERED.wait(20)
            with pytest.raises(grpc.RpcError) as info:
                late.result(30)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            failed = {"model": "gated", "code": "DEADLINE_EXCEEDED"}
            _wait_for(lambda: registry.get_sample_value("splitdnn_failures_total", failed) == 1)
            # its handler has answered, but the batch still computes on its tensors: still counted
            assert sample("splitdnn_in_flight") == 1 and sample("splitdnn_inflight_bytes") > 0
            queued = pool.submit(_infer, stub, _rows(1, 2), timeout=30)  # the second slot
            _wait_for(lambda: server.queue_depth == 1)
            code = _code(lambda: _infer(stub, _rows(1, 3), timeout=30))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # max_concurrency=2: both slots taken
        finally:
            _SECOND_OPEN.set()
        assert np.array_equal(queued.result(30).outputs["output"], _expected(server, _rows(1, 2)))
        _wait_for(lambda: sample("splitdnn_in_flight") == 0 and sample("splitdnn_inflight_bytes") == 0)
        assert np.array_equal(
            _infer(stub, _rows(1, 4), timeout=30).outputs["output"], _expected(server, _rows(1, 4))
        )
        channel.close()


def test_a_lone_request_finishing_past_its_deadline_is_counted_as_late() -> None:
    with _server() as server, ThreadPoolExecutor(1) as pool:
        stub, channel = _stub(server.address)
        with _gate_closed():
            late = pool.submit(_infer, stub, _rows(1, 0), timeout=0.5)  # runs inline: on its handler
            assert _ENTERED.wait(20)
            with pytest.raises(grpc.RpcError) as info:
                late.result(30)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        registry = server.metrics.registry
        failed = {"model": "gated", "code": "DEADLINE_EXCEEDED"}
        _wait_for(lambda: registry.get_sample_value("splitdnn_failures_total", failed) == 1)
        assert registry.get_sample_value("splitdnn_response_bytes_total", {"model": "gated"}) == 0
        channel.close()


class InplaceGated(Gated):
    """Writes into its input, so the server computes on a copy of the request's bytes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_gate(x.mul_(2.0)))


def test_the_copy_of_a_request_that_a_tail_writes_into_counts_as_held() -> None:
    x = _rows(64, 0)  # 1 KiB of raw contents
    message = serde.build_infer_request("gated", {"x": x}).ByteSize()
    models = (ModelSpec("gated", module=InplaceGated(), input_shapes=((1, 4),)),)
    with _server(models=models) as server, ThreadPoolExecutor(1) as pool:
        stub, channel = _stub(server.address)
        assert server._models["gated"].tail(frozenset({"x"})).writes_inputs
        with _gate_closed():
            done = pool.submit(_infer, stub, x, timeout=30)
            assert _ENTERED.wait(20)
            held = server.metrics.registry.get_sample_value("splitdnn_inflight_bytes")
        assert np.array_equal(done.result(30).outputs["output"], _expected(server, x))
        channel.close()
    assert held == message + x.nbytes  # the message, and the copy the tail computes on


def test_deadline_is_honoured_and_the_server_goes_on() -> None:
    with _server() as server:
        stub, channel = _stub(server.address)
        with _gate_closed():
            code = _code(lambda: _infer(stub, _rows(1, 0), timeout=0.3))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        got = _infer(stub, _rows(1, 3), timeout=30)
        assert np.array_equal(got.outputs["output"], _expected(server, _rows(1, 3)))
        channel.close()


def test_dynamic_batching_and_a_bad_neighbour() -> None:
    with _server(max_batch_size=8, max_queue_delay_ms=2.0) as server, ThreadPoolExecutor(6) as pool:
        stub, channel = _stub(server.address)
        with _gate_closed():
            blocker = pool.submit(_infer, stub, _rows(1, 10), timeout=30)
            assert _ENTERED.wait(20)  # the worker is busy: what comes next queues up
            batched = [pool.submit(_infer, stub, _rows(n, 20 + n), timeout=30) for n in (1, 2, 3)]
            bad = pool.submit(_infer, stub, _rows(1, 9).astype(np.float64), timeout=30)
            with pytest.raises(grpc.RpcError) as info:
                bad.result(30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            _wait_for(lambda: server.queue_depth == 3)
        assert blocker.result(30).parameters[serde.PARAM_BATCH_SIZE] == 1
        for n, future in zip((1, 2, 3), batched, strict=True):
            got = future.result(30)
            assert got.parameters[serde.PARAM_BATCH_SIZE] == 3
            assert got.outputs["output"].shape == (n, 3)
            np.testing.assert_allclose(
                got.outputs["output"], _expected(server, _rows(n, 20 + n)), rtol=1e-6, atol=1e-6
            )
        registry = server.metrics.registry
        assert registry.get_sample_value("splitdnn_batch_size_count", {"model": "gated"}) == 2  # batches
        assert registry.get_sample_value("splitdnn_batch_size_sum", {"model": "gated"}) == 4  # requests
        failed = {"model": "gated", "code": "INVALID_ARGUMENT"}
        assert registry.get_sample_value("splitdnn_failures_total", failed) == 1
        channel.close()


class Centred(nn.Module):
    """(B, 4) -> (B, 4), each row minus the batch's mean: its rows depend on each other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gate(x) - x.mean(0, keepdim=True)


def test_a_model_whose_rows_depend_on_each_other_is_never_batched() -> None:
    """Stacking such requests would answer each with its neighbours' data mixed in (a reviewer's
    model x - x.mean(0): 29 of 40 concurrent answers wrong, silently)."""
    spec = ModelSpec("centred", module=Centred(), input_shapes=((1, 4),))
    with _server(models=(spec,), max_batch_size=8) as server, ThreadPoolExecutor(4) as pool:
        assert list(server.never_batched()) == ["centred"]
        assert "changes with the other rows of its batch" in server.never_batched()["centred"]
        stub, channel = _stub(server.address)

        def call(x: np.ndarray) -> serde.InferResponseData:
            reply = stub.ModelInfer(serde.build_infer_request("centred", {"x": x}), timeout=30)
            return serde.parse_infer_response(reply, max_decoded_bytes=1 << 20)

        inputs = [_rows(2, 0), _rows(1, 1), _rows(2, 2), _rows(3, 3)]
        with _gate_closed():
            futures = [pool.submit(call, inputs[0])]
            assert _ENTERED.wait(20)
            futures += [pool.submit(call, x) for x in inputs[1:]]
            _wait_for(lambda: server.queue_depth == 3)  # would have been one batch of 6 rows
        for x, future in zip(inputs, futures, strict=True):
            got = future.result(30)
            assert got.parameters[serde.PARAM_BATCH_SIZE] == 1
            np.testing.assert_allclose(
                got.outputs["output"], x - x.mean(0, keepdims=True), rtol=1e-5, atol=1e-6
            )
        channel.close()
    with _server() as server:
        assert server.never_batched() == {}  # a row-wise model is batched (test_dynamic_batching...)


class SizeBranch(nn.Module):
    """A branch on the batch size: torch.fx cannot trace it, torch.export fixes the example's branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] > 1 else x - 100


def test_an_export_captured_model_runs_only_at_its_traced_shapes() -> None:
    """Its graph is the example's branch: at another batch size (a client's, or a batch of requests) it
    answered that branch's formula, silently (a reviewer's model: h * 2 where the model gives h - 100)."""
    spec = ModelSpec("branch", module=SizeBranch(), input_shapes=((2, 4),))
    with _server(models=(spec,), max_batch_size=8) as server:
        assert server.served_model("branch").static_shapes
        assert "captured by torch.export at fixed shapes" in server.never_batched()["branch"]
        stub, channel = _stub(server.address)
        meta = stub.ModelMetadata(serde.v2_pb.ModelMetadataRequest(name="branch"), timeout=10)
        assert list(meta.inputs[0].shape) == [2, 4] and list(meta.outputs[0].shape) == [2, 4]

        def call(x: np.ndarray) -> serde.InferResponseData:
            reply = stub.ModelInfer(serde.build_infer_request("branch", {"x": x}), timeout=30)
            return serde.parse_infer_response(reply, max_decoded_bytes=1 << 20)

        x = _rows(2, 0)
        np.testing.assert_array_equal(call(x).outputs["output"], x * 2)
        with pytest.raises(grpc.RpcError) as info:
            call(_rows(1, 1))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected shape [2, 4], found [1, 4]" in info.value.details()
        assert "captured by torch.export" in info.value.details()
        channel.close()


def test_batches_respect_max_batch_size() -> None:
    with _server(max_batch_size=2) as server, ThreadPoolExecutor(4) as pool:
        stub, channel = _stub(server.address)
        with _gate_closed():
            blocker = pool.submit(_infer, stub, _rows(1, 0), timeout=30)
            assert _ENTERED.wait(20)
            queued = [pool.submit(_infer, stub, _rows(1, i), timeout=30) for i in range(1, 4)]
            _wait_for(lambda: server.queue_depth == 3)
        blocker.result(30)
        sizes = sorted(f.result(30).parameters[serde.PARAM_BATCH_SIZE] for f in queued)
        assert sizes == [1, 2, 2]
        channel.close()


def test_bearer_token() -> None:
    with _server(token="s3cret") as server:
        stub, channel = _stub(server.address)
        assert _code(lambda: _infer(stub, _rows(1, 0), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer nope"),)
        assert (
            _code(lambda: _infer(stub, _rows(1, 0), timeout=10, metadata=wrong))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        right = (("authorization", "Bearer s3cret"),)
        assert _infer(stub, _rows(1, 0), timeout=10, metadata=right).outputs["output"].shape == (1, 3)
        health = health_pb2_grpc.HealthStub(channel)  # probes need no token
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        # the scheme is case-insensitive (RFC 7235); the token is not
        lower = (("authorization", "bearer s3cret"),)
        assert _infer(stub, _rows(1, 0), timeout=10, metadata=lower).outputs["output"].shape == (1, 3)
        upper = (("authorization", "Bearer S3CRET"),)
        assert (
            _code(lambda: _infer(stub, _rows(1, 0), timeout=10, metadata=upper))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        # refused before any servicer, and counted: 3 refusals of 5 ModelInfer requests
        registry = server.metrics.registry
        refused = {"model": "<unknown>", "code": "UNAUTHENTICATED"}
        assert registry.get_sample_value("splitdnn_failures_total", refused) == 3
        assert registry.get_sample_value("splitdnn_requests_total", {"model": "<unknown>"}) == 3
        # one call cannot try several tokens: the right one among others is refused too
        several = (("authorization", "Bearer nope"), ("authorization", "Bearer s3cret"))
        assert (
            _code(lambda: _infer(stub, _rows(1, 0), timeout=10, metadata=several))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert registry.get_sample_value("splitdnn_requests_total", {"model": "gated"}) == 2
        channel.close()


def test_graceful_stop_lets_in_flight_requests_finish() -> None:
    server = TailServer(
        ServerConfig(models=(ModelSpec("gated", module=Gated(), input_shapes=((1, 4),)),), drain_s=2.0)
    ).start()
    stub, channel = _stub(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    with ThreadPoolExecutor(3) as pool:
        with _gate_closed():
            in_flight = pool.submit(_infer, stub, _rows(1, 0), timeout=30)
            assert _ENTERED.wait(20)
            stopping = pool.submit(server.stop, 10.0)
            _wait_for(lambda: not server.ready)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not stub.ServerReady(serde.v2_pb.ServerReadyRequest(), timeout=10).ready
            during_drain = pool.submit(_infer, stub, _rows(2, 1), timeout=30)  # still served while draining
            _wait_for(lambda: server.queue_depth == 1)
        assert np.array_equal(in_flight.result(30).outputs["output"], _expected(server, _rows(1, 0)))
        assert np.array_equal(during_drain.result(30).outputs["output"], _expected(server, _rows(2, 1)))
        stopping.result(30)
    assert server.wait(0)
    code = _code(lambda: _infer(stub, _rows(1, 0), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_a_request_whose_message_is_still_arriving_when_a_stop_begins_is_answered() -> None:
    """A call is in flight from its start: one still sending its message gets the grace too."""
    server = TailServer(ServerConfig(models=(ModelSpec("gated", module=Gated(), input_shapes=((1, 4),)),)))
    server.start()
    channel = grpc.insecure_channel(server.address)
    release, x = threading.Event(), _rows(1, 0)
    request = serde.build_infer_request("gated", {"x": x}).SerializeToString()

    def late() -> Iterator[bytes]:
        release.wait(20)
        yield request

    call = channel.stream_unary(serde.MODEL_INFER_METHOD).future(late(), timeout=30)
    _wait_for(lambda: server._watch.waiting == 1)  # its handler waits for the message
    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(server.stop, 20.0)
        _wait_for(lambda: not server.ready)
        release.set()
        reply = serde.decode_infer_response(call.result(30), max_decoded_bytes=1 << 20)
        stopping.result(30)
    assert np.array_equal(reply.outputs["output"], _expected(server, x))
    channel.close()


def test_stop_ends_at_once_when_nothing_is_in_flight_even_with_a_health_watch_open() -> None:
    """A health Watch stream never ends by itself, so gRPC waited out the whole grace for it."""
    with _server(grace_s=20.0) as server:
        channel = grpc.insecure_channel(server.address)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="gated"), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # per model, by its name
        t0 = time.monotonic()
        server.stop()
        assert time.monotonic() - t0 < 5.0  # not the 20 s grace
        statuses = []
        with contextlib.suppress(grpc.RpcError):
            statuses.extend(r.status for r in watch)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        channel.close()


def test_hurry_cancels_the_requests_a_stop_is_waiting_for() -> None:
    with _server(grace_s=30.0) as server, ThreadPoolExecutor(2) as pool:
        stub, channel = _stub(server.address)
        with _gate_closed():
            in_flight = pool.submit(_infer, stub, _rows(1, 0), timeout=60)
            assert _ENTERED.wait(20)
            stopping = pool.submit(server.stop)
            time.sleep(0.3)
            assert not stopping.done()  # a request is in flight: the grace holds
            server.hurry()
            stopping.result(10)  # not the 30 s grace
            cancelled = (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)  # gRPC says either
            assert _code(lambda: in_flight.result(10)) in cancelled
        channel.close()


def _needs_ipv6() -> None:
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 here")


def test_an_ipv6_host_in_brackets_serves_grpc_and_metrics_with_series_from_the_start() -> None:
    _needs_ipv6()
    with _server(host="[::1]", metrics_port=0) as server:
        url = f"http://{server.metrics_address}/metrics"
        scrape = lambda: urllib.request.urlopen(url, timeout=10).read().decode()  # noqa: E731
        assert server.metrics_address is not None and server.metrics_address.startswith("[::1]:")
        # every served model's series exist before its first request, at zero (dashboards show a rate)
        assert 'splitdnn_requests_total{model="gated"} 0.0' in scrape()
        stub, channel = _stub(server.address)
        assert _infer(stub, _rows(1, 0), timeout=10).outputs["output"].shape == (1, 3)
        assert 'splitdnn_requests_total{model="gated"} 1.0' in scrape()
        channel.close()


def _rpc_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(RPC_THREAD_PREFIX))


def test_stopped_servers_leave_no_handler_threads() -> None:
    """grpc does not shut down the executor it is given: every stopped server kept its handler
    threads until the TailServer object went away."""
    before = _rpc_threads()
    servers = []  # kept alive on purpose: their threads must go at stop(), not at collection
    for _ in range(4):
        with _server() as server:
            stub, channel = _stub(server.address)
            with ThreadPoolExecutor(3) as pool:  # a few requests at once: a few handler threads
                list(pool.map(lambda i, s=stub: _infer(s, _rows(1, i), timeout=10), range(6)))
            channel.close()
        servers.append(server)
    _wait_for(lambda: _rpc_threads() <= before, timeout=10)


def test_a_port_in_use_is_a_config_error_and_leaves_nothing_running() -> None:
    with _server() as first:
        spec = ModelSpec("gated", module=Gated(), input_shapes=((1, 4),))
        with pytest.raises(ConfigError, match=r"cannot listen on .* \(the gRPC port\): the port is in use"):
            TailServer(ServerConfig(models=(spec,), port=first.port)).start()
        with pytest.raises(ConfigError, match=r"\(the metrics port\): the port is in use"):
            TailServer(ServerConfig(models=(spec,), metrics_port=first.port)).start()
        # said before any model loads (each takes seconds, a profile at start minutes): a model that
        # cannot load is not even tried
        with pytest.raises(ConfigError, match="the port is in use"):
            TailServer(ServerConfig(models=("no_such_module_xyz:build",), port=first.port)).start()
        with pytest.raises(ConfigError, match="TLS key"):
            missing = "/nonexistent/key.pem"
            TailServer(
                ServerConfig(models=("no_such_module_xyz:build",), tls_cert=missing, tls_key=missing)
            ).start()
        with pytest.raises(ConfigError, match="does not resolve"):
            TailServer(
                ServerConfig(models=("no_such_module_xyz:build",), host="no-such-host.invalid", port=1)
            ).start()
        stub, channel = _stub(first.address)
        assert _infer(stub, _rows(1, 0), timeout=10).outputs["output"].shape == (1, 3)
        channel.close()


def test_config_is_validated() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"models": ()}, "empty"),
        ({"models": ("resnet18",), "max_batch_size": 0}, "max_batch_size"),
        ({"models": ("resnet18",), "port": 70000}, "port"),
        ({"models": ("resnet18",), "tls_cert": b"x"}, "both tls_cert and tls_key"),
        ({"models": ("resnet18",), "tls_client_ca": b"x"}, "needs tls_cert"),
        ({"models": ("resnet18",), "max_queue_delay_ms": -1}, "max_queue_delay_ms"),
        ({"models": ("resnet18",), "max_inflight_bytes": 0}, "max_inflight_bytes must be an integer >= 1"),
        ({"models": ("resnet18",), "max_message_bytes": 1 << 31}, "at most 2147483647"),
        ({"models": ("resnet18",), "token": "s\u00e9same"}, "the token must be printable ASCII"),
        ({"models": ("resnet18",), "max_inflight_bytes": 300 << 20}, r"cannot hold one largest request"),
        ({"models": ("resnet18",), "receive_timeout_s": 0.05}, r"receive_timeout_s must be .* \[0.1, 1e6\)"),
        ({"models": ("resnet18",), "receive_timeout_s": float("nan")}, "receive_timeout_s must be"),
        ({"models": ("resnet18",), "receive_timeout_s": "30"}, "receive_timeout_s must be"),
        ({"models": ("resnet18",), "receive_timeout_s": True}, "receive_timeout_s must be"),
        # gRPC takes the age in int32 milliseconds: infinity failed at start with OverflowError
        ({"models": ("resnet18",), "max_connection_age_s": float("inf")}, "max_connection_age_s must be"),
        (
            {"models": ("resnet18",), "max_receiving_per_peer": 0},
            "max_receiving_per_peer must be an integer >= 1",
        ),
        ({"models": ("resnet18",), "max_receiving_per_peer": True}, "max_receiving_per_peer must be"),
        ({"models": ("resnet18",), "max_receiving_per_peer": 2.0}, "max_receiving_per_peer must be"),
    ]
    for kw, match in cases:
        with pytest.raises(ConfigError, match=match):
            ServerConfig(**kw)
    # the default budget: 1 GiB, or one largest request (message + decoded) where that is more
    assert ServerConfig(models=("resnet18",)).inflight_limit == 1 << 30
    big = ServerConfig(models=("resnet18",), max_decoded_bytes=2 << 30)
    assert big.inflight_limit == (2 << 30) + (64 << 20)
    assert ServerConfig(models=("resnet18",), max_inflight_bytes=320 << 20).inflight_limit == 320 << 20
    with pytest.raises(ConfigError, match="CUDA is not available"):
        if torch.cuda.is_available():
            raise ConfigError("CUDA is not available (skipped: CUDA is here)")
        TailServer(ServerConfig(models=("resnet18",), device="cuda")).start()


def test_what_would_fail_later_is_refused_at_start_by_name(tmp_path: Any) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"the TLS key .*is not PEM"):
        TailServer(ServerConfig(models=("alexnet",), tls_cert=str(bad), tls_key=str(bad))).start()


def test_devices_that_are_not_here_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from splitdnn.runtime._config import device_of

    assert device_of("cpu") == torch.device("cpu")
    for bad, match in (("tpu", "unknown device|not supported"), ("cuda:x", "unknown device")):
        with pytest.raises(ConfigError, match=match):
            device_of(bad)
    # a machine with two GPUs, as torch reports it: cuda:1 is served, cuda:2 is refused by name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_of("cuda:1") == torch.device("cuda", 1)
    assert device_of("cuda") == torch.device("cuda")
    with pytest.raises(
        ConfigError, match=r"'cuda:2' requested but this machine has 2 CUDA device\(s\), cuda:0..cuda:1"
    ):
        device_of("cuda:2")


# --------------------------------------------------------------------------------------------------
# TLS and mutual TLS, with certificates made for the test


def test_tls_and_mutual_tls(tmp_path: Any) -> None:
    c = make_certs()
    (tmp_path / "server.pem").write_bytes(c["server_cert"])
    (tmp_path / "server.key").write_bytes(c["server_key"])
    with _server(tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server.key") as server:
        stub, channel = _stub(server.address, grpc.ssl_channel_credentials(root_certificates=c["ca"]))
        assert _infer(stub, _rows(1, 0), timeout=10).outputs["output"].shape == (1, 3)
        channel.close()
        plain, channel = _stub(server.address)
        assert _code(lambda: _infer(plain, _rows(1, 0), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        channel.close()
    with _server(tls_cert=c["server_cert"], tls_key=c["server_key"], tls_client_ca=c["ca"]) as server:
        with_cert = grpc.ssl_channel_credentials(c["ca"], c["client_key"], c["client_cert"])
        stub, channel = _stub(server.address, with_cert)
        assert _infer(stub, _rows(1, 0), timeout=10).outputs["output"].shape == (1, 3)
        channel.close()
        no_cert, channel = _stub(server.address, grpc.ssl_channel_credentials(root_certificates=c["ca"]))
        assert _code(lambda: _infer(no_cert, _rows(1, 0), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        channel.close()


_SERVE = """
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
server = TailServer(ServerConfig(models=(ModelSpec("resnet18", input_shapes=((1, 3, 32, 32),)),))).start()
print(server.address, flush=True)
server.serve_forever()
print("stopped", flush=True)
"""


def test_sigterm_stops_gracefully() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SERVE], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        channel = grpc.insecure_channel(address)
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        x = np.zeros((1, 3, 32, 32), np.float32)
        reply = stub.ModelInfer(serde.build_infer_request("resnet18", {"x": x}), timeout=30)
        assert reply.outputs[0].name == "output"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().strip() == "stopped"
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_SERVE_HELD_LOCKS = """
import signal, threading
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
server = TailServer(ServerConfig(models=(ModelSpec("resnet18", input_shapes=((1, 3, 32, 32),)),))).start()
handlers, real_signal = {}, signal.signal
def spy(sig, handler):
    handlers[sig] = handler
    return real_signal(sig, handler)
signal.signal = spy
held = []  # locks the handler takes: the main thread may hold them when a signal arrives
real_set, real_hurry = threading.Event.set, TailServer.hurry
def in_handler():
    import inspect
    return any(f.function == "on_signal" for f in inspect.stack())
threading.Event.set = lambda self: (held.append("Event.set") if in_handler() else None, real_set(self))[1]
TailServer.hurry = lambda self: (held.append("hurry") if in_handler() else None, real_hurry(self))[1]
def fire():  # both signals, straight into the handler, as a signal would run it
    while signal.SIGTERM not in handlers:
        threading.Event().wait(0.01)
    handlers[signal.SIGTERM](signal.SIGTERM, None)
    handlers[signal.SIGTERM](signal.SIGTERM, None)
threading.Thread(target=fire).start()
server.serve_forever()
print("held", held, "hurried", server._hurried.is_set(), flush=True)
"""


def test_the_signal_handler_takes_no_lock() -> None:
    """A handler runs in the main thread between two bytecodes, maybe inside Event.wait holding its
    lock; one that set an Event there deadlocked `serve` for good (seen once under load)."""
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_HELD_LOCKS], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "held [] hurried True"  # the second signal still hurries, off the handler


def test_module_callable_models_need_an_input_shape() -> None:
    spec = "splitdnn.models.resnet:resnet18"
    with pytest.raises(ConfigError, match="input_shapes"):
        TailServer(ServerConfig(models=(spec,))).start()
    with _server(models=(ModelSpec(spec, input_shapes=((1, 3, 32, 32),)),)) as server:
        assert server.model_names == (spec,)
        stub, channel = _stub(server.address)
        reply = stub.ModelInfer(
            serde.build_infer_request(spec, {"x": np.zeros((1, 3, 32, 32), np.float32)}), timeout=30
        )
        assert list(reply.outputs[0].shape) == [1, 1000]
        channel.close()


def test_running_out_of_host_memory_is_resource_exhausted_not_a_bad_shape() -> None:
    from types import SimpleNamespace

    from splitdnn.runtime._servicers import compute_error

    served: Any = SimpleNamespace(name="m", traced=SimpleNamespace(input_shapes=((1, 4),)))
    oom = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"
    )
    for exc in (oom, MemoryError()):
        abort = compute_error(exc, served, {"x": [1, 4]})
        assert abort.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "ran out of memory" in abort.message
    assert (
        compute_error(RuntimeError("size mismatch"), served, {"x": [1, 4]}).code
        == grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/ServerLive",
        "/splitdnn.v1.SplitService/GetModelInfo",
        "/splitdnn.v1.SplitService/Probe",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ],
)
def test_a_request_protobuf_cannot_parse_is_invalid_argument_on_every_method(method: str, caplog) -> None:
    """gRPC's own deserializer answered INTERNAL and logged an ERROR traceback per call."""
    with _server() as server:
        channel = grpc.insecure_channel(server.address)
        garbage = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length past the end
        call = channel.unary_stream(method) if method.endswith("Watch") else channel.unary_unary(method)
        with caplog.at_level("ERROR"), pytest.raises(grpc.RpcError) as info:
            result = call(garbage, timeout=10)
            if method.endswith("Watch"):
                next(iter(result))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid" in info.value.details()
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        # and the server serves valid requests of the same method
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        channel.close()


def test_a_request_naming_no_model_is_invalid_argument() -> None:
    _refused(
        serde.build_infer_request("", {"x": _rows(1, 0)}),
        "names no model (empty model_name); this server serves ['gated']",
    )


def _refused(request: Any, message: str) -> None:
    """``request`` to a fresh 'gated' server gets INVALID_ARGUMENT saying ``message``."""
    with _server() as server:
        stub, channel = _stub(server.address)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()
        channel.close()


def test_the_output_node_is_not_a_cut_input() -> None:
    with _server() as server:
        fingerprint = server.served_model("gated").fingerprint
    request = serde.build_infer_request("gated", {"output": _rows(1, 0)}, fingerprint=fingerprint)
    _refused(request, "names the output node of model 'gated', which no cut sends")


def test_calls_that_never_send_their_request_leave_health_and_metadata_answered() -> None:
    """gRPC holds a worker while a unary request's message arrives: max_concurrency + 8 calls that
    never send one filled the pool, and health checks and GetModelInfo timed out with everything else."""
    from splitdnn.runtime._proto import splitdnn_pb2_grpc as sd_grpc

    held = threading.Event()

    def never() -> Iterator[bytes]:
        held.wait(30)
        return
        yield b""

    with _server(max_concurrency=2) as server:
        channels = [grpc.insecure_channel(server.address) for _ in range(2)]
        idle = [
            channels[i % 2].stream_unary(serde.MODEL_INFER_METHOD).future(never(), timeout=30)
            for i in range(2 + 8 + 2)
        ]
        try:
            time.sleep(1.0)  # every ModelInfer worker now waits for a message
            channel = grpc.insecure_channel(server.address)
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            sd_grpc.SplitServiceStub(channel).GetModelInfo(serde.build_model_info_request("gated"), timeout=5)
            meta = v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                serde.v2_pb.ModelMetadataRequest(name="gated"), timeout=5
            )
            assert meta.name == "gated"
            channel.close()
        finally:
            held.set()
            for f in idle:
                with contextlib.suppress(Exception):
                    f.result(30)
            for c in channels:
                c.close()


def _never_sends(held: threading.Event) -> Iterator[bytes]:
    """A request stream that sends nothing until ``held`` is set (or 30 s), then closes."""
    held.wait(30)
    return
    yield b""


def _sample(server: TailServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_call_that_never_sends_its_message_is_ended_at_the_receive_timeout() -> None:
    """Before, it held a handler thread until its own deadline (none here) or the connection aged out."""
    held = threading.Event()
    with _server(receive_timeout_s=0.5) as server:
        channel = grpc.insecure_channel(server.address)
        try:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                channel.stream_unary(serde.MODEL_INFER_METHOD)(_never_sends(held), timeout=30)
            waited = time.monotonic() - started
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no complete request message within 0.5 s of starting" in info.value.details()
            assert "--receive-timeout-s" in info.value.details()
            assert 0.4 < waited < 5.0
            method = serde.MODEL_INFER_METHOD
            assert _sample(server, "splitdnn_receive_timeouts_total", method=method) == 1.0
            failures = {"model": "<unknown>", "code": "DEADLINE_EXCEEDED"}
            assert _sample(server, "splitdnn_failures_total", **failures) == 1.0
            # a call that sends its message at once is answered as before
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            assert _infer(stub, _rows(2, 0), timeout=10).outputs["output"].shape == (2, 3)
            assert _sample(server, "splitdnn_receive_timeouts_total", method=method) == 1.0
        finally:
            held.set()
            channel.close()


def test_calls_that_never_send_their_message_give_every_pool_back() -> None:
    """More idle calls than the ModelInfer pool (max_concurrency + 8) and the control pool (8) have
    threads: before the receive timeout, inference and health checks both waited for them."""
    held = threading.Event()
    check = "/grpc.health.v1.Health/Check"
    with _server(max_concurrency=2, receive_timeout_s=1.0) as server:
        channels = [grpc.insecure_channel(server.address) for _ in range(2)]
        idle = [
            channels[i % 2].stream_unary(serde.MODEL_INFER_METHOD).future(_never_sends(held), timeout=30)
            for i in range(2 + 8 + 2)
        ]
        checks = [channels[i % 2].stream_unary(check) for i in range(10)]
        idle += [c.future(_never_sends(held), timeout=30) for c in checks]
        channel = grpc.insecure_channel(server.address)
        try:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            assert _infer(stub, _rows(1, 0), timeout=15).outputs["output"].shape == (1, 3)
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=15)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            codes = {_code(lambda f=f: f.result(30)) for f in idle}
            assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
            assert _sample(server, "splitdnn_receive_timeouts_total", method=check) == 10.0
        finally:
            held.set()
            channel.close()
            for c in channels:
                c.close()


def test_a_call_that_closes_without_a_message_is_refused_by_name() -> None:
    with _server() as server:
        channel = grpc.insecure_channel(server.address)
        for method in (serde.MODEL_INFER_METHOD, "/inference.GRPCInferenceService/ServerLive"):
            with pytest.raises(grpc.RpcError) as info:
                channel.stream_unary(method)(iter(()), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"{method} takes exactly one request message" in info.value.details()
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert _infer(stub, _rows(1, 0), timeout=10).outputs["output"].shape == (1, 3)
        channel.close()


def test_a_call_without_the_token_is_refused_before_its_message_arrives() -> None:
    """The refusal waited for the request message first: calls without the token that never sent one
    held handler threads like any other."""
    held = threading.Event()
    with _server(token="s3cret") as server:
        channel = grpc.insecure_channel(server.address)
        try:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                channel.stream_unary(serde.MODEL_INFER_METHOD)(_never_sends(held), timeout=20)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() - started < 10  # the receive timeout (30 s) did not end it
        finally:
            held.set()
            channel.close()


class Widen(nn.Module):
    """(B, 4) -> (B, 400): answers a hundred times the bytes it is sent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 100)


@pytest.mark.filterwarnings("ignore:profile of .wide.:RuntimeWarning")  # a model of microseconds
def test_a_small_message_cap_bounds_model_answers_but_not_the_profile_reply() -> None:
    """Under a cap smaller than its profile (4 KiB against this model's 4.7 KB) GetModelInfo failed; an
    answer over the cap failed in gRPC after the whole compute, counted as a success."""
    from splitdnn.runtime._proto import splitdnn_pb2_grpc as sd_grpc
    from splitdnn.runtime.client import SplitClient

    spec = ModelSpec("wide", module=Widen(), input_shapes=((1, 4),))
    with _server(models=(spec,), max_message_bytes=4 << 10, profile_at_start=True) as server:
        channel = grpc.insecure_channel(
            server.address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        info = sd_grpc.SplitServiceStub(channel).GetModelInfo(
            serde.build_model_info_request("wide"), timeout=30
        )
        assert info.ByteSize() > 4 << 10  # the profile is larger than the cap, and still answered
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        ok = stub.ModelInfer(serde.build_infer_request("wide", {"x": _rows(2, 0)}), timeout=10)
        assert list(ok.outputs[0].shape) == [2, 400]
        with pytest.raises(grpc.RpcError) as too_big:
            stub.ModelInfer(serde.build_infer_request("wide", {"x": _rows(20, 0)}), timeout=10)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the server's max_message_bytes=4096" in too_big.value.details()
        failed = {"model": "wide", "code": "RESOURCE_EXHAUSTED"}
        assert server.metrics.registry.get_sample_value("splitdnn_failures_total", failed) == 1
        channel.close()
        traced = server.served_model("wide")
        with SplitClient(server.address, traced, max_message_bytes=4 << 10, force_boundary="cloud") as client:
            assert client.server_profile_source == "the server's (GetModelInfo)"  # 4 KiB on this end too
            with pytest.raises(
                RemoteError, match="over a size cap.*over the server's max_message_bytes=4096"
            ):
                client.infer(torch.from_numpy(_rows(20, 0)))  # the same request would fail again: raised
            assert client.fallbacks == 0


def test_an_address_past_max_receiving_per_peer_is_refused_at_once_while_another_is_served() -> None:
    """One client's stalled calls held handler threads, a receive timeout at a time, however many it
    opened. Two peers here: the server listens on both stacks, one channel comes over IPv4, one over IPv6."""
    _needs_ipv6()
    held = threading.Event()
    method = serde.MODEL_INFER_METHOD
    with _server(host="[::]", max_receiving_per_peer=2, receive_timeout_s=20.0) as server:
        v4 = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        v6 = grpc.insecure_channel(f"[::1]:{server.port}")
        try:
            idle = [v4.stream_unary(method).future(_never_sends(held), timeout=30) for _ in range(2)]
            _wait_for(lambda: server._watch.waiting == 2)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                v4.stream_unary(method)(_never_sends(held), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "(max_receiving_per_peer=2)" in info.value.details()
            assert time.monotonic() - started < 5  # at once, not at the receive timeout
            failures = {"model": "<unknown>", "code": "RESOURCE_EXHAUSTED"}
            assert _sample(server, "splitdnn_failures_total", **failures) == 1.0
            other = v2_grpc.GRPCInferenceServiceStub(v6)  # another address is served meanwhile
            assert _infer(other, _rows(1, 0), timeout=10).outputs["output"].shape == (1, 3)
            # and the same address's health checks: they are served by a pool of their own
            reply = health_pb2_grpc.HealthStub(v4).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert _sample(server, "splitdnn_receive_refused_total", method=method) == 1.0
            held.set()  # the two stalled calls close without a message
            assert {_code(lambda f=f: f.result(30)) for f in idle} == {grpc.StatusCode.INVALID_ARGUMENT}
            stub = v2_grpc.GRPCInferenceServiceStub(v4)
            assert _infer(stub, _rows(2, 1), timeout=10).outputs["output"].shape == (2, 3)
            assert _sample(server, "splitdnn_failures_total", **failures) == 1.0
        finally:
            held.set()
            v4.close()
            v6.close()


def test_max_receiving_per_peer_holds_for_a_client_on_several_ipv6_connections() -> None:
    """gRPC writes IPv6 peers percent-encoded (ipv6:%5B::1%5D:port): each connection counted apart."""
    _needs_ipv6()
    held = threading.Event()
    method = serde.MODEL_INFER_METHOD
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel
    with _server(host="[::1]", max_receiving_per_peer=1, receive_timeout_s=20.0) as server:
        channels = [grpc.insecure_channel(server.address, options=own) for _ in range(2)]
        try:
            first = channels[0].stream_unary(method).future(_never_sends(held), timeout=30)
            _wait_for(lambda: server._watch.waiting == 1)
            with pytest.raises(grpc.RpcError) as info:
                channels[1].stream_unary(method)(_never_sends(held), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "address (::1) already has 1 call(s) for ModelInfer open" in info.value.details()
            held.set()
            assert _code(lambda: first.result(30)) == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            held.set()
            for c in channels:
                c.close()


def _echo_service(seen: list[bytes]) -> tuple[grpc.GenericRpcHandler, ...]:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(request)
        return request

    takeover = grpc.unary_unary_rpc_method_handler(lambda request, context: b"not the server's answer")
    return grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    ), grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": takeover})


def test_services_of_the_callers_own_are_served_on_the_port_behind_the_token_and_take_over_nothing() -> None:
    seen: list[bytes] = []
    spec = ModelSpec("gated", module=Gated(), input_shapes=((1, 4),))
    with TailServer(ServerConfig(models=(spec,), token="s3cret"), handlers=_echo_service(seen)) as server:
        stub, channel = _stub(server.address)
        echo = channel.unary_unary("/test.Echo/Echo")
        right = (("authorization", "Bearer s3cret"),)
        assert echo(b"\x00abc", timeout=10, metadata=right) == b"\x00abc"
        assert _code(lambda: echo(b"x", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert seen == [b"\x00abc"]  # the refused call never reached it
        # a handler of theirs for one of the server's methods is never asked
        x = _rows(2, 0)
        np.testing.assert_array_equal(
            _infer(stub, x, timeout=10, metadata=right).outputs["output"], _expected(server, x)
        )
        unknown = channel.unary_unary("/test.Echo/Other")
        assert _code(lambda: unknown(b"x", timeout=10, metadata=right)) == grpc.StatusCode.UNIMPLEMENTED
        channel.close()


def test_a_handler_that_is_not_a_grpc_generic_handler_is_refused_at_construction() -> None:
    spec = ModelSpec("gated", module=Gated(), input_shapes=((1, 4),))
    # a method's handler, not a service's
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    with pytest.raises(ConfigError, match=r"grpc.GenericRpcHandler objects .* found RpcMethodHandler"):
        TailServer(ServerConfig(models=(spec,)), handlers=[echo])  # type: ignore[list-item]
    service = grpc.method_handlers_generic_handler("test.Echo", {"Echo": echo})
    with pytest.raises(ConfigError, match=r"found one .* alone; pass handlers=\(handler,\)"):
        TailServer(ServerConfig(models=(spec,)), handlers=service)  # type: ignore[arg-type]
    # an iterator is taken whole: its handlers are served, not read once by the check and lost
    assert TailServer(ServerConfig(models=(spec,)), handlers=iter([service]))._handlers == (service,)
