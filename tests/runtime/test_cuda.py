"""The tail server on a CUDA device, through real gRPC (skipped without CUDA; CI has none).

``scripts/device_check.sh`` runs these on a machine with an NVIDIA GPU. The client runs its head on
the CPU; the server moves the boundary tensors to the GPU, runs the tail there and returns the output
as CPU bytes. GPU kernels (TF32 convolutions and matrix products among them) do not reproduce the
CPU's float sums bit for bit, so outputs are compared with the CPU model by relative error, and the
checks that a CUDA server gives nothing different from its CPU twin are made on the wire: the same
boundary tensors reach it, and a batch of requests answers each as it answers it alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import torch

from splitdnn import graph
from splitdnn.models import ZOO, build_zoo_model
from splitdnn.profiler import profile_model
from splitdnn.runtime.client import SplitClient
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
from splitdnn.schema import Link, Profile

# SPLITDNN_TEST_DEVICE=cpu runs the same tests with the server on the CPU: a check of the tests
# themselves, for a machine without a GPU, before a GPU session spends its minutes on them
DEVICE = os.environ.get("SPLITDNN_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA"),
]

MODELS = ("alexnet", "resnet18", "mobilenet_v2")  # a chain, a DAG, depthwise convolutions
# relative L2 error of a GPU tail's output against the CPU model: cuDNN convolutions run in TF32 by
# default (a 10-bit mantissa, ~5e-4 per layer); a wrong tensor, dtype or batch row errs by ~1
REL_TOL = 5e-2


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def _spec(name: str) -> ModelSpec:
    torch.manual_seed(0)
    return ModelSpec(name, module=build_zoo_model(name), input_shapes=((1, *ZOO[name].test_input_shape),))


@pytest.fixture(scope="module")
def cuda_server() -> Iterator[tuple[TailServer, dict[str, tuple[graph.TracedModel, Profile, torch.Tensor]]]]:
    specs = [_spec(n) for n in MODELS]
    config = ServerConfig(models=tuple(specs), device=DEVICE, max_batch_size=8, max_queue_delay_ms=20)
    with TailServer(config) as server:
        out = {}
        for s in specs:
            served = server.served_model(s.spec)
            assert all(p.device.type == torch.device(DEVICE).type for p in served.module.parameters())
            cpu = graph.trace(build_zoo_model(s.spec), torch.randn(s.input_shapes[0]), name=s.spec)
            cpu.module.load_state_dict({k: v.cpu() for k, v in served.module.state_dict().items()})
            prof = profile_model(
                cpu, threads=1, warmup=0, repeats=1, segments=4, check_cuts=0, progress=False
            )
            x = torch.randn(s.input_shapes[0], generator=torch.Generator().manual_seed(1))
            out[s.spec] = (cpu, prof, x)
        yield server, out


def _client(server: TailServer, cpu: graph.TracedModel, prof: Profile, **kw: object) -> SplitClient:
    return SplitClient(
        server.address, cpu, device_profile=prof, server_profile=prof, link=Link(1000.0, rtt_ms=0.1),
        codecs=["raw", "zstd"], probe_interval_s=None, fallback_local=False,  # remote, or an error
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("name", MODELS)
def test_chain_cuts_on_a_cuda_tail_match_the_cpu_model(cuda_server, name: str) -> None:
    server, models = cuda_server
    cpu, prof, x = models[name]
    with torch.inference_mode():
        ref = cpu.module(x)
    cuts = graph.chain_cuts(cpu)
    for cut in ["cloud", *cuts[:: max(1, len(cuts) // 5)]]:
        with _client(server, cpu, prof, force_boundary=cut) as client:
            y = client.infer(x)
            b = client.last_breakdown
        assert b is not None and not b.local and b.fallback == "", f"cut {cut}: {b}"
        assert y.device.type == "cpu" and y.dtype == ref.dtype and y.shape == ref.shape
        err = _rel_err(y, ref)
        assert err < REL_TOL, f"cut {cut}: relative error {err:.2e} against the CPU model"
        assert b.server_compute_ms > 0  # the server times the tail with the copy back included


def test_a_batch_on_the_gpu_answers_each_request_as_alone(cuda_server) -> None:
    server, models = cuda_server
    cpu, prof, _ = models["resnet18"]
    cut = graph.chain_cuts(cpu)[len(graph.chain_cuts(cpu)) // 2]
    shape = (1, *ZOO["resnet18"].test_input_shape)
    xs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    with _client(server, cpu, prof, force_boundary=cut) as client:
        alone = [client.infer(x) for x in xs]
    rounds = 5  # 8 requests at once, a few times: at least one batch forms
    together: list[list[torch.Tensor]] = [[] for _ in xs]
    sizes: list[int] = []
    start = threading.Barrier(len(xs))

    def one(i: int) -> None:
        with _client(server, cpu, prof, force_boundary=cut) as client:
            client.infer(xs[i])  # connect and warm up first
            for _ in range(rounds):
                start.wait(60)
                together[i].append(client.infer(xs[i]))
                sizes.append(client.last_breakdown.batch_size if client.last_breakdown else -1)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [len(ys) for ys in together] == [rounds] * len(xs), "a client thread failed (see its error above)"
    assert min(sizes) >= 1, f"a request did not reach the server: batch sizes {sizes}"
    assert max(sizes) > 1, f"no request was batched with another: batch sizes {sizes}"
    for i, (a, ys) in enumerate(zip(alone, together, strict=True)):
        for y in ys:
            # a batch may pick other GPU kernels than a lone request: agreement within TF32 rounding
            assert _rel_err(y, a) < 1e-2, f"request {i}: batched output differs from its lone output"
