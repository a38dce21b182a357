"""Mangled requests through real gRPC: the server answers each exactly as protobuf reads it, or refuses
it with a precise status, and keeps serving.

A small two-branch model (``(x * 2) * (x + 1)``) is served; three valid requests are sent until the
server keeps their headers (a full input; a DAG cut with two raw boundary tensors; the same cut with
codec frames), then 1,440 copies of them per transport with bits flipped, bytes changed, cut off, added,
repeated or removed. The oracle is protobuf itself, not splitdnn's parser: an answered request must
parse with protobuf, and its output must be the model's output on the tensors protobuf reads from it
(frames decoded by the codec), with the id protobuf reads. A refused one gets a status a client can act
on, never UNKNOWN or INTERNAL, with a message; a request protobuf cannot parse is INVALID_ARGUMENT.
After every batch of mangled requests, the valid ones still get their exact answers. Both the unary
ModelInfer and the ModelStreamInfer stream (its refusals in ``error_message``) are fuzzed; many
mangled requests keep the kept header's bytes and size, so the repeat path of ``RequestDecoder`` and
the server's kept checks are fuzzed as well as the full parse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from google.protobuf.message import DecodeError
from test_stream import Stream
from torch import nn

from splitdnn import codec
from splitdnn.errors import CodecError
from splitdnn.graph import head_tail
from splitdnn.runtime import serde
from splitdnn.runtime._client_stream import refusal_of
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

SHAPE = (1, 4, 8)
CAP = 1 << 20
NAME = "pair"
# what a client can act on; UNKNOWN and INTERNAL would mean the server failed on the request
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class _Pair(nn.Module):
    """Two branches joined: a cut after both sends two boundary tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x * 2
        b = x + 1
        return a * b


def _expected(inputs: dict[str, np.ndarray], names: tuple[str, str]) -> np.ndarray:
    """The model's output on ``inputs`` as protobuf read them, computed apart from the server (numpy;
    the same IEEE operations in the same order as the graph)."""
    with np.errstate(all="ignore"):  # mangled values overflow as they do in torch
        if set(inputs) == {"x"}:
            x = inputs["x"]
            return (x * np.float32(2)) * (x + np.float32(1))
        a, b = names
        return inputs[a] * inputs[b]


_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64}


def _read_by_protobuf(data: bytes) -> v2_pb.ModelInferRequest | None:
    try:
        return v2_pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return None


def _inputs_of(msg: v2_pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The tensors of an accepted request as protobuf read them: raw contents by position, a UINT8
    codec frame decoded (only FP32 tensors can have been accepted by a server of an FP32 model)."""
    out = {}
    assert len(msg.raw_input_contents) == len(msg.inputs), "an accepted request has one raw entry per input"
    for tensor, raw in zip(msg.inputs, msg.raw_input_contents, strict=True):
        if tensor.datatype == "UINT8":
            out[tensor.name] = codec.decode(raw, max_decoded_bytes=CAP)
        else:
            assert tensor.datatype in _NUMPY, f"accepted a {tensor.datatype} tensor"
            out[tensor.name] = np.frombuffer(raw, _NUMPY[tensor.datatype]).reshape(tuple(tensor.shape))
    return out


def _mangled(data: bytes, header: int, rng: np.random.Generator) -> bytes:
    """``data`` changed in one to three places, mostly in its first ``header`` bytes (the small fields:
    changing the tensors' values alone tells little)."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        if not out:
            break
        end = min(len(out), header) if rng.random() < 0.8 else len(out)
        near = int(rng.integers(0, end))
        kind = int(rng.integers(0, 7))
        if kind == 0:  # a bit flipped
            out[near] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # a byte changed
            out[near] = int(rng.integers(0, 256))
        elif kind == 2:  # cut off
            del out[near:]
        elif kind == 3:  # bytes added at the end
            out += rng.integers(0, 256, int(rng.integers(1, 12)), dtype=np.uint8).tobytes()
        elif kind == 4:  # a span repeated (fields twice, a length over its field)
            span = out[near : near + int(rng.integers(1, 24))]
            out[near:near] = span
        elif kind == 5:  # a span removed
            del out[near : near + int(rng.integers(1, 8))]
        else:  # a byte of a small value (lengths, varints, shapes)
            out[near] = int(rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF]))
    return bytes(out)


def _streamed(stream: Stream) -> Callable[[bytes], tuple[grpc.StatusCode, str, bytes]]:
    """Requests sent on ``stream``, one answer each, read as a unary call's outcome."""

    def send(request: bytes) -> tuple[grpc.StatusCode, str, bytes]:
        answer = stream.ask(request)
        if answer.error:
            refusal = refusal_of(answer.error)
            return refusal.code(), refusal.details(), b""
        return grpc.StatusCode.OK, "", bytes(answer.response)

    return send


def _unary(channel: grpc.Channel) -> Callable[[bytes], tuple[grpc.StatusCode, str, bytes]]:
    call = channel.unary_unary(serde.MODEL_INFER_METHOD)

    def send(request: bytes) -> tuple[grpc.StatusCode, str, bytes]:
        try:
            return grpc.StatusCode.OK, "", call(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", b""

    return send


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TailServer, dict[str, bytes], tuple[str, str]]]:
    model = _Pair()
    spec = ModelSpec("pair", name=NAME, module=model, input_shapes=(SHAPE,))
    with TailServer(ServerConfig(models=(spec,), max_message_bytes=CAP, max_decoded_bytes=CAP)) as server:
        traced = server.served_model(NAME)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        cut = next(n.name for n in traced.compute_nodes() if n.name.startswith("add"))
        head, _ = head_tail(traced, cut)
        with torch.no_grad():
            boundary = {k: v.numpy() for k, v in head({"x": x}).items()}
        assert len(boundary) == 2, boundary  # both branches cross the cut
        names = tuple(boundary)
        fp = traced.fingerprint
        encoder = serde.RequestEncoder()
        requests = {
            "full": encoder.encode(NAME, {"x": x.numpy()}, request_id="fuzz-full-000000"),
            "split": encoder.encode(NAME, boundary, fingerprint=fp, request_id="fuzz-split-00000"),
            "framed": encoder.encode(
                NAME,
                {k: codec.encode(v, "zstd") for k, v in boundary.items()},
                fingerprint=fp,
                request_id="fuzz-frame-00000",
            ),  # fmt: skip
        }
        yield server, requests, names  # type: ignore[misc]


def _check_answer(request: bytes, answer: tuple[grpc.StatusCode, str, bytes], names: tuple[str, str]) -> str:
    """What the server did with ``request``, checked against protobuf's reading of it: "ok" or
    "refused"."""
    code, details, response = answer
    msg = _read_by_protobuf(request)
    if code is not grpc.StatusCode.OK:
        assert code in ALLOWED, f"{code.name}: {details}"
        assert details, f"{code.name} without a message"
        if msg is None:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{code.name} for bytes protobuf cannot parse"
        return "refused"
    assert msg is not None, "answered a request that protobuf cannot parse"
    try:
        inputs = _inputs_of(msg)
    except (CodecError, ValueError) as exc:
        raise AssertionError(f"answered a request whose tensors do not read: {exc}") from exc
    got = serde.parse_infer_response(v2_pb.ModelInferResponse.FromString(response), max_decoded_bytes=CAP)
    assert msg.model_name == NAME and got.request_id == msg.id
    out = got.outputs["output"]
    want = _expected(inputs, names)
    assert out.dtype == want.dtype and out.shape == want.shape
    assert np.array_equal(out, want, equal_nan=True), "the answer is not the model's output on what was sent"
    return "ok"


@pytest.mark.parametrize("transport", ["unary", "stream"])
def test_mangled_requests_are_answered_as_protobuf_reads_them_or_refused(served: Any, transport: str) -> None:
    server, requests, names = served
    channel = grpc.insecure_channel(server.address)
    stream = Stream(channel) if transport == "stream" else None
    send = _streamed(stream) if stream is not None else _unary(channel)
    rng = np.random.default_rng(7 if transport == "unary" else 8)
    outcomes: dict[str, dict[str, int]] = {kind: {"ok": 0, "refused": 0} for kind in requests}
    # where the small fields end (the raw contents come last); a frame's own header counts as small
    raw = {k: v2_pb.ModelInferRequest.FromString(r).raw_input_contents for k, r in requests.items()}
    headers = {k: len(requests[k]) - (0 if k == "framed" else sum(len(c) for c in raw[k])) for k in requests}
    try:
        for _ in range(3):  # kept headers first: many mangled repeats then take the repeat path
            for request in requests.values():
                assert _check_answer(request, send(request), names) == "ok"
        for batch in range(12):
            for kind, request in requests.items():
                for _ in range(40):
                    mangled = _mangled(request, headers[kind], rng)
                    outcomes[kind][_check_answer(mangled, send(mangled), names)] += 1
            for kind, request in requests.items():  # still served exactly
                assert _check_answer(request, send(request), names) == "ok", f"{kind} after batch {batch}"
        if stream is not None:  # the stream stayed open through every refusal
            assert stream.end() is grpc.StatusCode.OK
    finally:
        if stream is not None:
            stream.call.cancel()  # (ended already, unless a check above failed)
        channel.close()
    for kind, counts in outcomes.items():  # both outcomes were exercised for every kind of request
        assert counts["ok"] >= 20 and counts["refused"] >= 100, (kind, counts)
