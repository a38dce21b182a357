"""A third-party Open Inference Protocol v2 client (NVIDIA's ``tritonclient.grpc``) calls the tail server.

Nothing here uses splitdnn's generated stubs or serde on the client side: the requests are built by
tritonclient from its own copy of the v2 proto. That is the check that the protocol was written with
the public specification's package, service, messages and field numbers. Skipped where tritonclient
is not installed (it is in the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from splitdnn import codec
from splitdnn.graph import split
from splitdnn.models import ZOO
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "alexnet"
SHAPE = (1, *ZOO[MODEL].test_input_shape)


@pytest.fixture(scope="module")
def server() -> Iterator[TailServer]:
    config = ServerConfig(models=(ModelSpec(MODEL, input_shapes=(SHAPE,)),), max_batch_size=1)
    with TailServer(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: TailServer) -> Iterator[object]:
    c = grpcclient.InferenceServerClient(url=server.address)
    yield c
    c.close()


def _inputs(server: TailServer) -> list[str]:
    return [n.name for n in server.served_model(MODEL).nodes if n.op == "placeholder"]


def _local(server: TailServer, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return server.served_model(MODEL).module(torch.from_numpy(x)).numpy()


def test_health_and_metadata(server: TailServer, client: object) -> None:
    assert client.is_server_live() and client.is_server_ready()  # type: ignore[attr-defined]
    assert client.is_model_ready(MODEL)  # type: ignore[attr-defined]
    assert not client.is_model_ready("no-such-model")  # type: ignore[attr-defined]
    meta = client.get_model_metadata(MODEL)  # type: ignore[attr-defined]
    assert meta.name == MODEL
    assert [i.name for i in meta.inputs] == _inputs(server)
    assert meta.inputs[0].datatype == "FP32"
    assert meta.outputs and meta.outputs[0].datatype == "FP32"
    assert client.get_server_metadata().name  # type: ignore[attr-defined]


def test_full_inference_equals_the_local_model(server: TailServer, client: object) -> None:
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    name = _inputs(server)[0]
    inp = grpcclient.InferInput(name, list(SHAPE), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(MODEL, [inp])  # type: ignore[attr-defined]
    out = result.get_response().outputs[0].name
    assert np.array_equal(result.as_numpy(out), _local(server, x))


@pytest.mark.parametrize("framed", [False, True])
def test_split_request_from_a_stock_client(server: TailServer, client: object, framed: bool) -> None:
    """A stock client can send a split request: boundary tensors as inputs, splitdnn.* parameters."""
    traced = server.served_model(MODEL)
    nodes = [n.name for n in traced.compute_nodes()]
    cut = nodes.index("features_5")  # after the second conv block
    head, _ = split(traced, {n: (0 if i <= cut else 1) for i, n in enumerate(nodes)})
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    with torch.no_grad():
        values = head({_inputs(server)[0]: torch.from_numpy(x)})
    ((boundary, tensor),) = values.items()
    array = tensor.numpy()
    params = {"splitdnn.fingerprint": traced.fingerprint}
    if framed:
        frame = np.frombuffer(codec.encode(array, "zstd"), dtype=np.uint8)
        inp = grpcclient.InferInput(boundary, [frame.size], "UINT8")
        inp.set_data_from_numpy(frame)
        params["splitdnn.framed"] = boundary
    else:
        inp = grpcclient.InferInput(boundary, list(array.shape), "FP32")
        inp.set_data_from_numpy(array)
    result = client.infer(MODEL, [inp], parameters=params)  # type: ignore[attr-defined]
    response = result.get_response()
    assert np.array_equal(result.as_numpy(response.outputs[0].name), _local(server, x))
    assert response.parameters["splitdnn.compute_ms"].double_param >= 0


def test_errors_reach_a_stock_client_as_statuses(server: TailServer, client: object) -> None:
    x = np.zeros(SHAPE, dtype=np.float32)
    inp = grpcclient.InferInput("x", list(SHAPE), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [inp])  # type: ignore[attr-defined]
    assert "NOT_FOUND" in str(info.value.status())
    bad = grpcclient.InferInput("not_a_node", list(SHAPE), "FP32")
    bad.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [bad])  # type: ignore[attr-defined]
    assert "INVALID_ARGUMENT" in str(info.value.status())
    # and the server keeps serving
    test_full_inference_equals_the_local_model(server, client)
