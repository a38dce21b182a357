"""gRPC-level retries and replicas (DESIGN section 8).

A stand-in v2 server answers UNAVAILABLE to the first ModelInfer and the real output to the second;
the client must get the output without falling back (gRPC only retries what it buffered, hence the
client's ``grpc.per_rpc_retry_buffer_size``). And a client given two real replicas as one ``ipv4:``
target spreads its requests over both, keeps running remotely when one stops, and uses it again once
it is back.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from splitdnn import graph
from splitdnn.errors import ServerUnavailableError
from splitdnn.models import ZOO, build_zoo_model
from splitdnn.profiler import profile_model
from splitdnn.runtime import serde
from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc
from splitdnn.runtime._proto import splitdnn_pb2_grpc as sd_grpc
from splitdnn.runtime.client import SplitClient
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer


class _Flaky(v2_grpc.GRPCInferenceServiceServicer, sd_grpc.SplitServiceServicer):
    """Fails the first ``failures`` ModelInfer calls with UNAVAILABLE, then runs the whole model."""

    def __init__(self, traced: graph.TracedModel, failures: int) -> None:
        self.traced, self.failures, self.calls = traced, failures, 0
        self.lock = threading.Lock()

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return serde.build_server_live(True)

    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return serde.build_model_info(self.traced.name, self.traced.fingerprint, None)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up, try again")
        data = serde.parse_infer_request(request, max_decoded_bytes=1 << 26)
        (x,) = data.inputs.values()
        with torch.inference_mode():
            y = self.traced.module(torch.from_numpy(np.array(x)))
        return serde.build_infer_response(data.model_name, data.request_id, {"output": y.numpy()})


@pytest.mark.parametrize("failures", [1, 5])
def test_unavailable_is_retried_for_a_large_request(failures: int) -> None:
    torch.manual_seed(0)
    small = (1, *ZOO["alexnet"].test_input_shape)
    traced = graph.trace(build_zoo_model("alexnet"), torch.randn(small), name="alexnet")
    device = profile_model(
        traced, threads=1, warmup=0, repeats=1, segments=4, check_cuts=0, progress=False, codecs=()
    )
    servicer = _Flaky(traced, failures)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", 1 << 26)]
    )
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    sd_grpc.add_SplitServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        x = torch.randn(1, 3, 224, 224)  # 602 KB raw: over gRPC's default 256 KiB retry buffer
        with torch.inference_mode():
            ref = traced.module(x)
        with SplitClient(
            f"127.0.0.1:{port}", traced, device_profile=device, force_boundary="cloud", retries=3,
            codecs=("raw",), fallback_local=False,
        ) as client:  # fmt: skip
            if failures < 3:
                y = client.infer(x)
                b = client.last_breakdown
                assert b is not None and not b.local and b.bytes_sent > 256 * 1024
                assert torch.equal(y, ref)
                assert servicer.calls == failures + 1
            else:  # more failures than attempts: the error reaches the caller, translated
                with pytest.raises(ServerUnavailableError, match="warming up"):
                    client.infer(x)
                assert servicer.calls == 3
    finally:
        server.stop(0)


def test_requests_spread_over_replicas_and_survive_one_stopping() -> None:
    shape = (1, *ZOO["alexnet"].test_input_shape)

    def replica(port: int = 0) -> TailServer:
        return TailServer(
            ServerConfig(models=(ModelSpec("alexnet", input_shapes=(shape,)),), port=port, grace_s=2)
        ).start()

    def served(server: TailServer) -> float:
        return server.metrics.registry.get_sample_value("splitdnn_requests_total", {"model": "alexnet"}) or 0

    a, b = replica(), replica()
    client = SplitClient(
        f"ipv4:{a.address},{b.address}", "alexnet", input_shape=shape, force_boundary="cloud",
        codecs=["raw"], profile_repeats=1, probe_interval_s=None,
    )  # fmt: skip
    x = torch.randn(shape)
    with torch.no_grad():
        expected = client.traced.module(x)

    def remote(n: int) -> None:
        for _ in range(n):
            assert torch.equal(client.infer(x), expected)
            assert client.last_breakdown is not None and not client.last_breakdown.local

    back = None
    try:
        remote(20)
        on_a = served(a)
        assert 5 <= on_a <= 15 and served(b) == 20 - on_a  # round_robin
        port = a.port
        a.stop(grace=2)
        remote(20)  # every request on b, none failed over to local
        assert served(a) == on_a and served(b) == 40 - on_a
        back = replica(port)  # the same address again: the channel reconnects to it
        deadline = time.monotonic() + 30
        while served(back) == 0:
            assert time.monotonic() < deadline, "the restarted replica got no request in 30 s"
            remote(1)
    finally:
        client.close()
        for server in (a, b, back):
            if server is not None:
                server.stop(grace=0)
