"""SplitClient behind a proxy that mangles the server's answers: a broken or hostile server.

The proxy forwards every call to a real tail server as bytes, and changes the bytes of the answers
of ModelInfer and of ModelStreamInfer (``SplitClient(stream=True)``) while ``mangle`` is set: bits
flipped, bytes changed, cut off, added, repeated, removed. A request then either gives a tensor of
the shape and dtype the model gives (its values may be the server's lie: integrity is TLS's job, not
the decoder's), or raises a splitdnn error; never another exception, and never a tensor of another
shape. The next request through an honest proxy gives the
exact local output: nothing of the mangled answers stays in the client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from test_server_fuzz import _mangled
from torch import nn

from splitdnn.errors import SplitDNNError
from splitdnn.graph import chain_cuts
from splitdnn.runtime import serde
from splitdnn.runtime.client import SplitClient
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

SHAPE = (1, 6)


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class _Proxy(grpc.GenericRpcHandler):
    """Every call forwarded as bytes (ModelStreamInfer as a stream, the rest unary); the answers of
    ModelInfer and ModelStreamInfer mangled by ``mangle`` when set."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.mangle: Callable[[bytes], bytes] | None = None
        self.mangled = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        if method == serde.MODEL_STREAM_INFER_METHOD:
            return grpc.stream_stream_rpc_method_handler(self._stream)
        forward = self.channel.unary_unary(method)

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                answer = forward(request, timeout=30, metadata=context.invocation_metadata())
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
            mangle = self.mangle
            if mangle is not None and method == serde.MODEL_INFER_METHOD:
                self.mangled += 1
                return mangle(answer)
            return answer  # type: ignore[no-any-return]

        return grpc.unary_unary_rpc_method_handler(handle)

    def _stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        call = self.channel.stream_stream(serde.MODEL_STREAM_INFER_METHOD)(
            requests, timeout=60, metadata=context.invocation_metadata()
        )
        try:
            for answer in call:
                mangle = self.mangle
                if mangle is not None:
                    self.mangled += 1
                    answer = mangle(answer)
                yield answer
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[_Proxy, str, TailServer]]:
    torch.manual_seed(0)
    spec = ModelSpec("chain", module=_Chain(), input_shapes=(SHAPE,))
    with TailServer(ServerConfig(models=(spec,))) as server:
        proxy = _Proxy(server.address)
        front = grpc.server(ThreadPoolExecutor(max_workers=4))
        front.add_generic_rpc_handlers((proxy,))
        port = front.add_insecure_port("127.0.0.1:0")
        front.start()
        try:
            yield proxy, f"127.0.0.1:{port}", server
        finally:
            front.stop(None)
            proxy.channel.close()


@pytest.mark.parametrize(("cut", "stream"), [("cloud", False), ("mid", False), ("mid", True)])
def test_mangled_answers_give_a_tensor_of_the_models_shape_or_splitdnn_error(
    proxied: Any, cut: str, stream: bool
) -> None:
    proxy, address, server = proxied
    traced = server.served_model("chain")
    boundary = "cloud" if cut == "cloud" else chain_cuts(traced)[1]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = traced.module(x)
    client = SplitClient(
        address, traced, model_name="chain", codecs=["raw"], force_boundary=boundary, fallback_local=False,
        retries=1, profile_repeats=1, timeout_s=30.0, stream=stream,
    )  # fmt: skip
    rng = np.random.default_rng(3 if cut == "cloud" else 4 + stream)
    outcomes = {"tensor": 0, "refused": 0}
    mangled_before = proxy.mangled
    try:
        assert torch.equal(client.infer(x), expected)
        for _ in range(150):
            proxy.mangle = lambda answer: _mangled(answer, len(answer), rng)
            try:
                got = client.infer(x)
            except SplitDNNError:
                outcomes["refused"] += 1
            else:
                assert isinstance(got, torch.Tensor)
                assert got.shape == expected.shape and got.dtype == expected.dtype, got.shape
                outcomes["tensor"] += 1
            finally:
                proxy.mangle = None
            assert torch.equal(client.infer(x), expected)  # the honest answer is read exactly again
    finally:
        proxy.mangle = None
        client.close()
    assert proxy.mangled - mangled_before == 150  # every one of them went through the mangler
    assert outcomes["tensor"] >= 5 and outcomes["refused"] >= 50, outcomes
