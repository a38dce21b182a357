#!/usr/bin/env python3
"""Measure the gRPC tail server: per-request overhead against a raw gRPC echo, and dynamic batching.

Issue 4 asks for two numbers, both measured here on one machine (client and server share its cores):

1. **Per-request overhead** (goal: <= 1.3x a raw gRPC echo of the same bytes, for a 1 MB tensor).
   Baseline: a generic unary gRPC echo (``grpc.method_handlers_generic_handler``, no serializers:
   bytes in, the same bytes out) of the tensor's raw bytes. Against it, splitdnn's v2 ``ModelInfer``
   through :class:`~splitdnn.runtime.server.TailServer` for a model whose tail is nearly free
   (``x * 1``, served with ``ModelSpec(module=...)``) and returns a tensor of the same size:

   - ``v2 raw``: the stock-protobuf client path -- ``serde.build_infer_request`` + the generated
     stub's call + ``serde.parse_infer_response`` -- with the fp32 tensor as raw v2 contents;
   - ``v2 wire`` (``--wire``): splitdnn's own client path (what ``SplitClient`` does) --
     ``serde.RequestEncoder`` + a bytes-level ModelInfer call + ``serde.ResponseDecoder``, with a
     fresh request id each call: the same messages on the wire, the raw contents appended / read as
     views instead of copied, the small fields serialized / parsed once;
   - ``bare v2 echo``: the same client path against a plain v2 servicer that answers the raw input
     as the output (no splitdnn server code), which splits the overhead into "v2 protobuf messages
     instead of bytes" and "splitdnn's server";
   - ``v2 zstd``: the same with the tensor as a zstd codec frame (encoded once, outside the timing:
     the codec's own speed is ``bench_codec.py``'s business); the server decodes it (``decode_ms``)
     and answers raw fp32;
   - ``SplitClient``: ``SplitClient.infer`` with ``force_boundary="cloud"`` and the raw codec (torch
     tensor in and out, plan bookkeeping and the link estimator included);
   - ``bound`` (with ``--wire``): the wire client's request answered by a handler with no parsing,
     no checks and no bookkeeping (it views the tensor at the message's end, runs ``x * 1`` in torch
     and joins a response header built once): the least a Python server of this protocol that runs
     its tail in torch can cost, so the distance from it is what splitdnn's own server code costs;
   - ``bound, on one open stream`` and ``raw echo, on one open stream`` (with ``--wire``): the same
     handler and the echo, each call one message on a bidirectional stream opened once (no per-call
     set-up on either end): whether a streaming transport would leave more room than unary calls;
   - ``splitdnn wire client on one ModelStreamInfer stream`` (with ``--wire``): the wire client's
     requests as messages of one ModelStreamInfer stream to the tail server (``InferStream``, what
     ``SplitClient(stream=True)`` sends through), its answers read as views of the stream's messages;
   - ``floor``: what any split runtime must add to the echo, with no protocol at all: the client
     copies the tensor into the request's bytes, the server computes ``x * 1`` (numpy) and copies the
     result into the answer's bytes (generic unary gRPC, no messages, no checks). The goal's room
     above it is what is left for a protocol's parsing, checks and bookkeeping.

   The echo, the floor and the bound are served by the overhead pass's tail server itself, on its
   port (``TailServer(handlers=...)``), so that every variant but the bare v2 echo (a v2 servicer of
   its own, on a server of its own) takes one connection, one gRPC server and its threads. Served by
   a second server over a second connection, the echo measured the same but the 1 MiB ratio moved by
   up to 0.19 between runs of the same code (1.26-1.45x in three runs) against 0.02 for the same
   calls over one connection (1.33-1.35x; ad-hoc runs on ``f3597e1``, ``docs/benchmarks.md``).

   The tensor is ReLU(N(0, 1)) fp32 of 64 KiB, 1 MiB and 4 MiB (``(1, 256, n / 1024)``). The variants
   run interleaved (one call of each per repeat, in a fresh random order every repeat) after
   warm-up; per variant the median and p10/p90 of the call's wall time, the ratio of medians to the
   echo, and the median and p10/p90 of the per-repeat ratios (each call over the echo call of the
   same repeat).
   The server's own ``queue_ms`` / ``compute_ms`` / ``decode_ms`` (response parameters) are
   reported beside them.

2. **Dynamic batching** (goal: >= 1.5x throughput at no worse p99). ``--clients`` (16) client
   threads in this process, each with its **own channel and TCP connection** (a local subchannel
   pool), each in a closed loop (send, wait for the answer, send again), all sending split requests
   for the ResNet-18 tail after ``layer3`` (``layer3_1_relu_1``: ``layer4`` + avgpool + fc) at a
   112x112 input, i.e. a (1, 256, 7, 7) fp32 boundary tensor (50 KB) of real activations (the
   server's head on random inputs). Why this tail: its per-item compute is small, and at batch 1
   it runs far below the CPU's peak -- each conv is a GEMM over only 16 output positions (a 4x4
   map) and every run streams ``layer4``'s 8.4 M weights (33 MB, more than the cache) -- so a batch
   fills the GEMMs and reads the weights once for all (about 4.5 ms alone against 1.7 ms each in a
   batch of 8, measured here while choosing); each batch also pays the per-run Python / fx overhead
   once. A large-input tail would batch less well (its GEMMs are already big at batch 1).
   Two servers with identical settings except ``max_batch_size`` (``--max-batch-size``, 8, against
   1) run in one server process; timed rounds alternate between them (the first config alternates
   too), each round ``--warmup-s`` of load before a ``--duration-s`` window. A request counts when it
   completes inside the window: requests/s, latency p50/p99 (all rounds pooled), the batch size the
   server reports (``splitdnn.batch_size``), and the ratio of throughputs.

Memory: both processes run as splitdnn's commands do, with glibc's malloc keeping freed tensor-sized
buffers mapped (``splitdnn.runtime.memory.keep_freed_memory``: the tail server sets it for its process,
the echo included; ``splitdnn run`` for the client's). Before that, the overhead pass runs once with
glibc's defaults in both processes (a server process with ``ServerConfig(keep_freed_memory=False)``, this
process untouched; first, as ``mallopt`` cannot be undone here; ``--skip-malloc-defaults`` to skip it).
Each variant's minor page faults per call are counted in both processes.

The servers run in a child process (``--serve-child``), so the client threads and the server do not
share one Python interpreter lock; they do share the machine's cores. The client process runs torch on
one thread (it computes nothing but serde). In the overhead passes the server process does too
(``--server-threads``, 1): one core each is as near as one machine comes to an edge and a server of
their own, and with torch's default (a thread per core) the server's intra-op threads take the core the
client process needs at that moment (on this project's 2-core machine, ``x * 1`` on 1 MiB took 0.20
against 0.14 ms in the server, and the bound's call 0.2 ms longer). At 1 MiB the pass is run again with
torch's default in its own server process and reported beside it (``--skip-default-threads`` skips it).
The batching pass runs its own server process at torch's default: its tail is real compute.

    python scripts/bench_runtime.py [--json docs/results/runtime.json] [--md docs/results/runtime.md]
        [--sizes 65536,1048576,4194304] [--repeats 300,300,60] [--warmup 10]
        [--clients 16] [--max-batch-size 8] [--max-queue-delay-ms 2] [--rounds 4]
        [--duration-s 8] [--warmup-s 1.5] [--tail-input 112] [--cut layer3_1_relu_1]
        [--skip-malloc-defaults] [--no-client] [--wire] [--skip-batching] [--server-threads 1]
        [--skip-default-threads]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from splitdnn import codec  # noqa: E402
from splitdnn.runtime import serde  # noqa: E402
from splitdnn.runtime._client_stream import InferStream  # noqa: E402
from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc  # noqa: E402

ECHO_SERVICE = "splitdnn.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
FLOOR_METHOD = f"/{ECHO_SERVICE}/Floor"
MAX_MESSAGE = 64 << 20  # both directions, every channel and server here (ServerConfig's default)
READY = "BENCH-READY "  # the child's one line on stdout, followed by JSON
TAIL_MODEL = "resnet18"
DECODE_CAP = 256 << 20
GOAL_OVERHEAD = 1.3  # issue 4: <= 1.3x the raw echo for a 1 MB tensor
GOAL_THROUGHPUT = 1.5  # issue 4: >= 1.5x throughput with dynamic batching, at no worse p99
GOAL_SIZE = 1 << 20


def _channel_options(own_connection: bool = False) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    if own_connection:  # without it, channels with the same target and options share one connection
        options.append(("grpc.use_local_subchannel_pool", 1))
    return options


def shape_of(nbytes: int) -> tuple[int, int, int]:
    """The (1, 256, n) fp32 shape of an ``nbytes`` tensor."""
    if nbytes <= 0 or nbytes % 1024:
        raise SystemExit(f"--sizes: each size must be a positive multiple of 1024 bytes, found {nbytes}")
    return (1, 256, nbytes // 1024)


def _pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def _spread(values_s: Sequence[float] | np.ndarray, scale: float = 1000.0) -> dict[str, float]:
    """Median and p10/p90 (times in ms by default)."""
    return {
        "median": round(_pct(values_s, 50) * scale, 4),
        "p10": round(_pct(values_s, 10) * scale, 4),
        "p90": round(_pct(values_s, 90) * scale, 4),
    }


# --------------------------------------------------------------------------------------------------
# the server process


def _identity_class():  # type: ignore[no-untyped-def]
    from torch import nn

    class Identity(nn.Module):
        """A nearly free tail: one elementwise op (fx needs a node to serve), same size out as in."""

        def forward(self, x):  # type: ignore[no-untyped-def]
            return x * 1

    return Identity


class _BareV2(v2_grpc.GRPCInferenceServiceServicer):
    """ModelInfer with nothing of splitdnn: the request's first raw input answered as the output.

    The protobuf messages are parsed and built by gRPC as for the tail server; no validation, no
    batcher, no tensors. The gap between it and the raw echo is the v2 message itself, the gap between
    it and the tail server is splitdnn's server.
    """

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb

        response = v2_pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(
            name="output", datatype=request.inputs[0].datatype, shape=request.inputs[0].shape
        )
        response.raw_output_contents.append(request.raw_input_contents[0])
        return response


def _floor(request: bytes, context: grpc.ServicerContext) -> bytes:
    """The least a split server does with a request: the tail (``x * 1``) and its output copied into
    the answer's bytes."""
    return (np.frombuffer(request, dtype=np.float32) * 1).tobytes()


def _bound(nbytes: int) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    """The least a Python v2 server running the tail in torch can do for the wire client's request of
    ``nbytes`` of fp32: no parsing and no checks. It views the tensor at the message's end (where the
    wire client writes it), runs ``x * 1`` under inference mode, and joins the result to a response
    header built once (the same small fields as the tail server's answer)."""
    shape = shape_of(nbytes)
    params = {serde.PARAM_QUEUE_MS: 0.0, serde.PARAM_COMPUTE_MS: 0.0, serde.PARAM_DECODE_MS: 0.0,
              serde.PARAM_BATCH_SIZE: 1}  # fmt: skip
    zeros = np.zeros(shape, dtype=np.float32)
    header = serde.encode_infer_response(f"identity_{nbytes}", "", {"output": zeros}, parameters=params)
    header = header[: len(header) - nbytes]
    tail = _bound_tail(nbytes)

    def bound(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"".join((header, tail(request).numpy().data))

    return bound


def _bound_tail(nbytes: int) -> Callable[[bytes], Any]:
    """The bound's tail for requests of ``nbytes`` of fp32: ``x * 1`` under inference mode on the
    tensor the wire client writes at the end of the request, viewed there."""
    import torch

    shape = shape_of(nbytes)

    def tail(request: bytes) -> torch.Tensor:
        raw = np.frombuffer(request, dtype=np.float32, count=nbytes // 4, offset=len(request) - nbytes)
        with torch.inference_mode():
            return torch.from_numpy(raw.reshape(shape)) * 1

    return tail


def _stream_send(stream: Any) -> Callable[..., Any]:
    """``stream.send`` as a stub call: the answer, never a unary fallback (the bench times streams)."""

    def send(request: bytes, timeout: float) -> Any:
        answer = stream.send(request, timeout)
        if answer is None:
            raise RuntimeError(f"the stream did not take the request: {stream.unary_reasons[-1:]}")
        return answer

    return send


def _each(
    answer: Callable[[bytes, grpc.ServicerContext], bytes],
) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]:
    """``answer`` for every message of a bidirectional stream, in order (one stream, many requests)."""

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield answer(request, context)

    return stream


class StreamCall:
    """One persistent bidirectional stream called like a unary stub: each call sends one message and
    waits for its answer (the server answers in order). The stream opens on construction and ends
    with :meth:`close`; a stream has no per-message deadline, so ``timeout`` is accepted and unused
    (the stream's own deadline is ``timeout_s``: a server that stops answering holds the benchmark
    that long). What it measures is grpcio's synchronous streaming as a Python client and server
    would use it: each message goes from this thread through a queue to gRPC's request-consumer
    thread, and the server holds one handler thread for the stream's life."""

    def __init__(self, channel: grpc.Channel, method: str, timeout_s: float = 3600.0) -> None:
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._answers = channel.stream_stream(method)(self._sent(), timeout=timeout_s)

    def _sent(self) -> Iterator[bytes]:
        while (message := self._outbox.get()) is not None:
            yield message

    def __call__(self, request: bytes, timeout: float | None = None) -> bytes:
        self._outbox.put(request)
        return next(self._answers)

    def close(self) -> None:
        self._outbox.put(None)
        self._answers.cancel()


def serve_child(cfg: dict[str, Any]) -> int:
    """Run the tail servers (the overhead pass's with the echo) and the bare v2 server until stdin
    closes; print their addresses first."""
    import torch

    from splitdnn.graph import head_tail
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

    if cfg.get("threads"):  # torch's intra-op threads for every server here (process-wide)
        torch.set_num_threads(cfg["threads"])
    # the bare v2 servicer has a server of its own (it is another inference.GRPCInferenceService)
    bare = grpc.server(
        ThreadPoolExecutor(max_workers=cfg["echo_workers"], thread_name_prefix="bench-bare"),
        options=_channel_options(),
    )
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(_BareV2(), bare)
    bare_port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    # the echo, the floor and the bound are served by the tail server of the overhead pass, on its
    # port: each call of theirs takes the same connection, server and threads as splitdnn's calls
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "Floor": grpc.unary_unary_rpc_method_handler(_floor),
            **{f"Bound_{n}": grpc.unary_unary_rpc_method_handler(_bound(n)) for n in cfg["sizes"]},
            # the same on one persistent stream per client: no per-call set-up on either end
            "EchoStream": grpc.stream_stream_rpc_method_handler(_each(lambda request, context: request)),
            **{
                f"BoundStream_{n}": grpc.stream_stream_rpc_method_handler(_each(_bound(n)))
                for n in cfg["sizes"]
            },
        },
    )  # no (de)serializers: the request is bytes, the echo's response the same bytes object

    identity = _identity_class()
    overhead = TailServer(
        ServerConfig(
            models=tuple(
                ModelSpec("identity", name=f"identity_{n}", module=identity(), input_shapes=(shape_of(n),))
                for n in cfg["sizes"]
            ),
            keep_freed_memory=cfg["keep_freed_memory"],
        ),
        handlers=(handler,),
    ).start()
    batching: dict[str, Any] = {}
    for label, max_batch in (("batched", cfg["max_batch_size"]), ("unbatched", 1)) if cfg["batching"] else ():
        torch.manual_seed(0)  # the same weights in both servers
        batching[label] = TailServer(
            ServerConfig(
                models=(ModelSpec(TAIL_MODEL, input_shapes=((1, 3, cfg["tail_input"], cfg["tail_input"]),)),),
                max_batch_size=max_batch,
                max_queue_delay_ms=cfg["max_queue_delay_ms"],
                keep_freed_memory=cfg["keep_freed_memory"],
            ),
        ).start()
    info: dict[str, Any] = {}
    if batching:
        traced = batching["batched"].served_model(TAIL_MODEL)
        head, _ = head_tail(traced, cfg["cut"])
        gen = torch.Generator().manual_seed(1)
        x = torch.randn((cfg["boundaries"], 3, cfg["tail_input"], cfg["tail_input"]), generator=gen)
        with torch.no_grad():
            boundary = head({"x": x})[cfg["cut"]].numpy()  # (N, 256, H/16, W/16): real activations
        np.save(cfg["boundary_path"], boundary)
        info = {
            "batched": batching["batched"].address,
            "unbatched": batching["unbatched"].address,
            "tail_fingerprints": {k: s.served_model(TAIL_MODEL).fingerprint for k, s in batching.items()},
            "boundary_shape": list(boundary.shape),
        }
    info |= {
        "bare": f"127.0.0.1:{bare_port}",
        "overhead": overhead.address,
        "overhead_fingerprints": {
            name: overhead.served_model(name).fingerprint for name in overhead.model_names
        },
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "pid": os.getpid(),
        "keep_freed_memory": cfg["keep_freed_memory"],
    }
    print(READY + json.dumps(info), flush=True)
    try:
        sys.stdin.read()  # until the parent closes it (or dies)
    finally:
        for server in (overhead, *batching.values()):
            server.stop(grace=1.0)
        bare.stop(1.0).wait()
    return 0


class ServerProcess:
    """The child process holding every server; ``info`` is what it printed when ready."""

    def __init__(
        self, cfg: dict[str, Any], timeout_s: float = 600.0, env: dict[str, str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-child", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.info: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.close()
                raise SystemExit(f"the server process exited ({self.proc.returncode}) before it was ready")
            if line.startswith(READY):
                self.info = json.loads(line[len(READY) :])
                return
        self.close()
        raise SystemExit(f"the server process was not ready within {timeout_s:.0f} s")

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------------------
# part 1: per-request overhead against a raw echo


def _minor_faults(pid: int | None = None) -> int | None:
    """Minor page faults so far of this process (``pid`` None) or of process ``pid`` (Linux only)."""
    if pid is None:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[7])  # minflt: field 10 of proc(5), the 8th after the command name


def _rss_mib(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MiB (Linux only)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_around(info: dict[str, Any], measure: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """``measure()``'s result, and both processes' resident memory before and after it (MiB)."""
    before = {"client": _rss_mib(), "server": _rss_mib(info["pid"])}
    result = measure()
    after = {"client": _rss_mib(), "server": _rss_mib(info["pid"])}
    return result, {"before": before, "after": after}


def _overhead_for_size(
    info: dict[str, Any],
    nbytes: int,
    repeats: int,
    warmup: int,
    seed: int,
    with_client: bool,
    with_wire: bool = False,
) -> dict[str, Any]:
    import torch

    from splitdnn.graph import trace
    from splitdnn.runtime.client import SplitClient

    shape = shape_of(nbytes)
    name = f"identity_{nbytes}"
    fingerprint = info["overhead_fingerprints"][name]
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0.0)  # (1, 256, n): ReLU-like values
    payload = x.tobytes()
    t = time.perf_counter()
    frame = codec.encode(x, "zstd")
    encode_ms = (time.perf_counter() - t) * 1000.0

    channel = grpc.insecure_channel(info["overhead"], options=_channel_options())
    echo = channel.unary_unary(ECHO_METHOD)  # bytes in, bytes out
    floor = channel.unary_unary(FLOOR_METHOD)
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    bare_channel = grpc.insecure_channel(info["bare"], options=_channel_options())
    bare = v2_grpc.GRPCInferenceServiceStub(bare_channel)
    client = None
    if with_client:
        traced = trace(_identity_class()(), torch.zeros(shape), name=name)
        client = SplitClient(
            info["overhead"], traced, model_name=name, codecs=["raw"], force_boundary="cloud",
            fallback_local=False, retries=1, profile_repeats=1, timeout_s=60.0,
        )  # fmt: skip
        xt = torch.from_numpy(x)

    server_ms: dict[str, dict[str, list[float]]] = {}
    rpc_s: dict[str, list[float]] = {}
    build_s: dict[str, list[float]] = {}

    def call_echo() -> None:
        out = echo(payload, timeout=60)
        if len(out) != len(payload):
            raise RuntimeError(f"the echo answered {len(out)} bytes for {len(payload)}")

    def call_floor() -> None:
        out = floor(x.tobytes(), timeout=60)  # the client's one copy of the tensor into the request
        if np.frombuffer(out, dtype=np.float32).nbytes != nbytes:
            raise RuntimeError(f"the floor answered {len(out)} bytes for {nbytes}")

    def timed_call(
        label: str, build: Callable[[], Any], send: Callable[..., Any], parse: Callable[..., Any], keep: bool
    ) -> Callable[[], float]:
        """A v2 call whose client build, stub call and parse are timed apart; ``keep``: also the
        server's reported queue, compute and decode times."""

        def call() -> float:
            t0 = time.perf_counter()
            request = build()
            t1 = time.perf_counter()
            response = send(request, timeout=60)
            t2 = time.perf_counter()
            data = parse(response, max_decoded_bytes=DECODE_CAP)
            out = data.outputs["output"]
            if out.nbytes != nbytes:
                raise RuntimeError(f"{label}: the server answered {out.nbytes} bytes for {nbytes}")
            done = time.perf_counter()  # the call ends here: the benchmark's own bookkeeping follows
            build_s.setdefault(label, []).append(t1 - t0)
            rpc_s.setdefault(label, []).append(t2 - t1)
            if keep:
                times = server_ms.setdefault(label, {"queue": [], "compute": [], "decode": []})
                for key, param in (("queue", serde.PARAM_QUEUE_MS), ("compute", serde.PARAM_COMPUTE_MS),
                                   ("decode", serde.PARAM_DECODE_MS)):  # fmt: skip
                    times[key].append(serde.param_ms(data.parameters, param))
            return done

        return call

    def v2_call(label: str, value: np.ndarray | bytes, target: Any) -> Callable[[], float]:
        """Protobuf messages (a stock client's calls); the bare servicer reports no times."""
        return timed_call(
            label, lambda: serde.build_infer_request(name, {"x": value}, fingerprint=fingerprint),
            target.ModelInfer, serde.parse_infer_response, keep=target is not bare,
        )  # fmt: skip

    def wire_call(label: str, target: Any, keep: bool) -> Callable[[], float]:
        """Bytes in, bytes out: serde writes and reads the messages as SplitClient does (its small
        fields serialized and parsed once, a fresh request id every call)."""
        encoder, decoder, ids = serde.RequestEncoder(), serde.ResponseDecoder(), serde.RequestIds()
        return timed_call(
            label,
            lambda: encoder.encode(name, {"x": x}, fingerprint=fingerprint, request_id=ids.next()),
            target, decoder.decode, keep,
        )  # fmt: skip

    call_wire = wire_call("v2_wire", channel.unary_unary(serde.MODEL_INFER_METHOD), keep=True)
    # the bound's answer carries zeros for the server's times: it measures none
    call_bound = wire_call("v2_bound", channel.unary_unary(f"/{ECHO_SERVICE}/Bound_{nbytes}"), keep=False)
    streams: list[StreamCall] = []
    if with_wire:
        streams = [
            StreamCall(channel, f"/{ECHO_SERVICE}/{m}") for m in ("EchoStream", f"BoundStream_{nbytes}")
        ]
    echo_stream = streams[0] if streams else None
    # splitdnn's client on one ModelStreamInfer stream (SplitClient(stream=True) sends this way)
    infer_stream = InferStream(channel) if with_wire else None

    def call_echo_stream() -> None:
        assert echo_stream is not None
        out = echo_stream(payload)
        if len(out) != len(payload):
            raise RuntimeError(f"the stream echo answered {len(out)} bytes for {len(payload)}")

    def call_client() -> float:
        assert client is not None
        y = client.infer(xt)
        b = client.last_breakdown
        if b is None or b.local or y.numel() * 4 != nbytes:
            raise RuntimeError(f"SplitClient did not run remotely: {b}")
        done = time.perf_counter()
        keep = server_ms.setdefault("client", {"queue": [], "compute": [], "decode": []})
        keep["queue"].append(b.server_queue_ms)
        keep["compute"].append(b.server_compute_ms)
        keep["decode"].append(b.decode_ms)
        return done

    variants: dict[str, Callable[[], float | None]] = {
        "echo": call_echo,
        "floor": call_floor,
        "v2_bare": v2_call("v2_bare", x, bare),
        "v2_raw": v2_call("v2_raw", x, stub),
        "v2_wire": call_wire,
        "v2_bound": call_bound,
        "v2_zstd": v2_call("v2_zstd", frame, stub),
    }
    if streams:
        variants["echo_stream"] = call_echo_stream
        variants["v2_bound_stream"] = wire_call("v2_bound_stream", streams[1], keep=False)
        variants["v2_wire_stream"] = wire_call("v2_wire_stream", _stream_send(infer_stream), keep=True)
    else:
        del variants["v2_wire"], variants["v2_bound"]
    if client is not None:
        variants["client"] = call_client
    labels = list(variants)
    wall: dict[str, list[float]] = {k: [] for k in labels}
    faults: dict[str, dict[str, list[int]]] = {k: {"client": [], "server": []} for k in labels}
    pid = info.get("pid")
    try:
        for i in range(warmup + repeats):
            if i == warmup:  # forget the warm-up
                wall = {k: [] for k in labels}
                faults = {k: {"client": [], "server": []} for k in labels}
                server_ms.clear()
                rpc_s.clear()
                build_s.clear()
            # a fresh order every repeat: with the order only rotated, each variant always followed
            # the same one, whose traces (caches, threads woken) it then always inherited
            for label in (labels[k] for k in rng.permutation(len(labels))):
                c0, s0 = _minor_faults(), _minor_faults(pid)
                t0 = time.perf_counter()
                done = variants[label]()  # when the call ended, if bookkeeping follows it
                wall[label].append((time.perf_counter() if done is None else done) - t0)
                c1, s1 = _minor_faults(), _minor_faults(pid)
                for side, a, b in (("client", c0, c1), ("server", s0, s1)):
                    if a is not None and b is not None:
                        faults[label][side].append(b - a)
    finally:
        if client is not None:
            client.close()
        for stream in streams:
            stream.close()
        if infer_stream is not None:
            infer_stream.close()
        bare_channel.close()
        channel.close()

    echo_s = np.asarray(wall["echo"])
    rows: dict[str, Any] = {}
    for label in labels:
        s = np.asarray(wall[label])
        row: dict[str, Any] = {"wall_ms": _spread(s)}
        row["minor_faults_per_call_mean"] = {  # a mean: a few calls may fault a whole buffer in
            side: round(float(np.mean(v)), 1) if v else None for side, v in faults[label].items()
        }
        if label != "echo":
            paired = s / echo_s
            row["ratio_of_medians"] = round(float(np.median(s) / np.median(echo_s)), 4)
            row["paired_ratio"] = _spread(paired, scale=1.0)
            row["extra_ms_median"] = round(float(np.median(s - echo_s)) * 1000.0, 4)
        if label in rpc_s:
            row["rpc_ms"] = _spread(rpc_s[label])  # the stub call alone
            build = np.asarray(build_s[label])
            row["client_build_ms_median"] = round(float(np.median(build)) * 1000.0, 4)
            row["client_parse_ms_median"] = round(
                float(np.median(s - build - np.asarray(rpc_s[label]))) * 1000.0, 4
            )
        if label in server_ms:
            row["server_ms_median"] = {k: round(_pct(v, 50), 4) for k, v in server_ms[label].items()}
            # the tail's own compute (x * 1: a fresh 1 MB output) is model time, not per-request overhead
            rest = s - np.asarray(server_ms[label]["compute"]) / 1000.0
            row["ratio_without_compute"] = round(float(np.median(rest) / np.median(echo_s)), 4)
        rows[label] = row
    return {
        "bytes": nbytes,
        "shape": list(shape),
        "zstd_frame_bytes": len(frame),
        "zstd_encode_ms_once": round(encode_ms, 3),
        "repeats": repeats,
        "warmup": warmup,
        "variants": rows,
    }


def measure_overhead(
    info: dict[str, Any],
    sizes: Sequence[int],
    repeats: Sequence[int],
    warmup: int,
    with_client: bool,
    with_wire: bool = False,
) -> list[dict[str, Any]]:
    out = []
    for i, (nbytes, n) in enumerate(zip(sizes, repeats, strict=True)):
        row = _overhead_for_size(
            info, nbytes, n, warmup, seed=i, with_client=with_client, with_wire=with_wire
        )
        v = row["variants"]
        print(
            f"  {nbytes:>9,} B: echo {v['echo']['wall_ms']['median']:.3f} ms, v2 raw "
            f"{v['v2_raw']['wall_ms']['median']:.3f} ms ({v['v2_raw']['ratio_of_medians']:.2f}x), v2 zstd "
            f"{v['v2_zstd']['wall_ms']['median']:.3f} ms ({v['v2_zstd']['ratio_of_medians']:.2f}x)"
            + (
                f", SplitClient {v['client']['wall_ms']['median']:.3f} ms "
                f"({v['client']['ratio_of_medians']:.2f}x)"
                if "client" in v
                else ""
            ),  # fmt: skip
            flush=True,
        )
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------------
# part 2: throughput and latency with concurrent clients, with and without dynamic batching


def _round(
    address: str, fingerprint: str, cut: str, boundaries: np.ndarray, clients: int, warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    """One closed-loop round: ``clients`` threads, each its own channel; stats of the timed window."""
    start: list[float] = []
    barrier = threading.Barrier(clients, action=lambda: start.append(time.perf_counter()))
    records: list[list[tuple[float, float, int, float, float]]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def worker(k: int) -> None:
        channel = grpc.insecure_channel(address, options=_channel_options(own_connection=True))
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        x = boundaries[k % len(boundaries)][None]  # (1, 256, h, w)
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
            barrier.wait(timeout=60)
            w0 = start[0] + warmup_s
            w1 = w0 + duration_s
            while True:
                t0 = time.perf_counter()
                if t0 >= w1:
                    break
                msg = serde.build_infer_request(TAIL_MODEL, {cut: x}, fingerprint=fingerprint)
                data = serde.parse_infer_response(
                    stub.ModelInfer(msg, timeout=60), max_decoded_bytes=DECODE_CAP
                )
                t1 = time.perf_counter()
                if w0 <= t1 < w1:
                    p = data.parameters
                    records[k].append((
                        t1 - t0,
                        int(p.get(serde.PARAM_BATCH_SIZE, 0)),  # type: ignore[arg-type]
                        serde.param_ms(p, serde.PARAM_QUEUE_MS),
                        serde.param_ms(p, serde.PARAM_COMPUTE_MS),
                        t1,
                    ))  # fmt: skip
        except Exception as exc:  # reported in the results; a round with errors is not silently used
            barrier.abort()
            errors.append(f"client {k}: {type(exc).__name__}: {exc}")
        finally:
            channel.close()

    threads = [threading.Thread(target=worker, args=(k,), name=f"bench-client-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("a client failed: " + "; ".join(errors[:3]))
    flat = [r for per in records for r in per]
    if not flat:
        raise SystemExit(f"no request completed in a {duration_s} s window; use a longer --duration-s")
    lat = [r[0] for r in flat]
    batch = np.asarray([r[1] for r in flat], dtype=np.float64)
    per_client = [len(per) for per in records]
    return {
        "requests": len(flat),
        "requests_per_s": round(len(flat) / duration_s, 2),
        "latency_ms": {
            "p50": round(_pct(lat, 50) * 1000, 3),
            "p99": round(_pct(lat, 99) * 1000, 3),
            "mean": round(float(np.mean(lat)) * 1000, 3) if lat else float("nan"),
        },
        # a request's view (request-weighted) and the server's (per executed batch: n / sum(1/b))
        "mean_batch_size_per_request": round(float(batch.mean()), 3) if len(batch) else float("nan"),
        "mean_batch_size_per_batch": round(float(len(batch) / np.sum(1.0 / batch)), 3)
        if len(batch)
        else float("nan"),
        "server_queue_ms_median": round(_pct([r[2] for r in flat], 50), 3),
        "server_compute_ms_median": round(_pct([r[3] for r in flat], 50), 3),
        "requests_per_client_min_max": [min(per_client), max(per_client)],
        "_latencies_s": lat,
        "_batches": batch.tolist(),
    }


def measure_batching(
    info: dict[str, Any], boundaries: np.ndarray, cut: str, clients: int, rounds: int, warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    labels = ("batched", "unbatched")
    fps = info["tail_fingerprints"]
    for label in labels:  # one untimed round each: every batch size's kernels get created
        _round(info[label], fps[label], cut, boundaries, clients, 0.0, max(warmup_s, 0.2))
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in labels}
    for r in range(rounds):
        order = labels if r % 2 == 0 else labels[::-1]
        for label in order:
            res = _round(info[label], fps[label], cut, boundaries, clients, warmup_s, duration_s)
            runs[label].append(res)
            print(
                f"  round {r + 1} {label:>9}: {res['requests_per_s']:8.1f} req/s, p50 "
                f"{res['latency_ms']['p50']:.1f} ms, p99 {res['latency_ms']['p99']:.1f} ms, mean batch "
                f"{res['mean_batch_size_per_request']:.2f}",
                flush=True,
            )
    out: dict[str, Any] = {}
    for label in labels:
        lat = [v for res in runs[label] for v in res.pop("_latencies_s")]
        batch = np.asarray([v for res in runs[label] for v in res.pop("_batches")], dtype=np.float64)
        rps = [res["requests_per_s"] for res in runs[label]]
        out[label] = {
            "requests": len(lat),
            "requests_per_s": {"median": round(_pct(rps, 50), 2), "min": min(rps), "max": max(rps)},
            "latency_ms": {
                "p50": round(_pct(lat, 50) * 1000, 3),
                "p90": round(_pct(lat, 90) * 1000, 3),
                "p99": round(_pct(lat, 99) * 1000, 3),
                "mean": round(float(np.mean(lat)) * 1000, 3),
            },
            "mean_batch_size_per_request": round(float(batch.mean()), 3),
            "mean_batch_size_per_batch": round(float(len(batch) / np.sum(1.0 / batch)), 3),
            "batch_size_counts": {
                str(int(b)): int(c) for b, c in zip(*np.unique(batch, return_counts=True), strict=True)
            },
            "rounds": runs[label],
        }
    b, u = out["batched"], out["unbatched"]
    per_round = [
        x["requests_per_s"] / y["requests_per_s"]
        for x, y in zip(runs["batched"], runs["unbatched"], strict=True)
    ]
    out["throughput_ratio"] = {
        "pooled": round(b["requests"] / u["requests"], 3),
        "per_round_median": round(_pct(per_round, 50), 3),
        "per_round_min": round(min(per_round), 3),
        "per_round_max": round(max(per_round), 3),
    }
    out["p99_ratio"] = round(b["latency_ms"]["p99"] / u["latency_ms"]["p99"], 3)
    out["p50_ratio"] = round(b["latency_ms"]["p50"] / u["latency_ms"]["p50"], 3)
    return out


# --------------------------------------------------------------------------------------------------
# machine, goals, report


def machine_info() -> dict[str, Any]:
    import torch

    from splitdnn._measure import cpu_model

    model = cpu_model()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "client_torch_threads": torch.get_num_threads(),
        "one_machine": "client and server processes on the same machine, over 127.0.0.1",
    }


def code_state() -> dict[str, Any]:
    """Which code was measured: git HEAD, files changed since, and a hash of every runtime module."""
    import hashlib

    from splitdnn._measure import git_state

    state = git_state(ROOT)
    return {
        "git_head": state["git_head"] or "",
        "uncommitted": state["uncommitted"],
        "runtime_sha256_12": {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in sorted((ROOT / "splitdnn" / "runtime").glob("*.py"))
        },
    }


def goals(
    overhead: list[dict[str, Any]],
    batching: dict[str, Any] | None,
    malloc_defaults: list[dict[str, Any]] | None = None,
    default_threads: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in ("v2_raw", "v2_wire"):
        for key, rows in (
            (f"overhead_1MiB_{variant}", overhead),
            (f"overhead_1MiB_{variant}_malloc_defaults", malloc_defaults or []),
            (f"overhead_1MiB_{variant}_default_threads", default_threads or []),
        ):
            target = next((r for r in rows if r["bytes"] == GOAL_SIZE), None)
            if target is not None and variant in target["variants"]:
                row = target["variants"][variant]
                ratio = row["ratio_of_medians"]
                out[key] = {"ratio": ratio, "goal": GOAL_OVERHEAD, "met": ratio <= GOAL_OVERHEAD}
                if "ratio_without_compute" in row:
                    out[key]["ratio_without_server_compute"] = row["ratio_without_compute"]
    if batching is not None:
        tr = batching["throughput_ratio"]["pooled"]
        p99 = batching["p99_ratio"]
        out["batching"] = {
            "throughput_ratio": tr,
            "p99_ratio": p99,
            "goal": f">= {GOAL_THROUGHPUT}x throughput, p99 ratio <= 1",
            "met": tr >= GOAL_THROUGHPUT and p99 <= 1.0,
        }
    return out


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def _overhead_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| size | variant | wall ms | ratio of medians | per-repeat ratio | stub call ms "
        "| client build / parse ms | server queue / compute / decode ms "
        "| page faults client / server (mean) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        for label, v in row["variants"].items():
            w = v["wall_ms"]
            name = {"echo": "raw gRPC echo", "floor": "floor: copy in, `x * 1`, copy out (no protocol)",
                    "v2_bare": "bare v2 echo (no splitdnn server)",
                    "v2_raw": "v2 raw fp32 (stock protobuf client)",
                    "v2_wire": "**v2 raw fp32, splitdnn wire client**",
                    "v2_bound": "bound: the wire client, a handler with no checks",
                    "echo_stream": "raw echo, each call a message on one open stream",
                    "v2_bound_stream": "bound, each call a message on one open stream",
                    "v2_wire_stream": "**splitdnn wire client on one ModelStreamInfer stream**",
                    "v2_zstd": f"v2 zstd frame ({row['zstd_frame_bytes']:,} B)",
                    "client": "SplitClient.infer"}[label]  # fmt: skip
            ratio = "1" if label == "echo" else f"**{v['ratio_of_medians']:.2f}×**"
            pr = v.get("paired_ratio", {})
            paired = (
                "—" if label == "echo"
                else f"{pr['median']:.2f} [{pr['p10']:.2f}–{pr['p90']:.2f}]"
            )  # fmt: skip
            srv = v.get("server_ms_median")
            srv_s = "—" if srv is None else f"{srv['queue']:.3f} / {srv['compute']:.3f} / {srv['decode']:.3f}"
            rpc = f"{v['rpc_ms']['median']:.3f}" if "rpc_ms" in v else "—"
            cl = (
                f"{v['client_build_ms_median']:.3f} / {v['client_parse_ms_median']:.3f}"
                if "client_build_ms_median" in v else "—"
            )  # fmt: skip
            flt = v.get("minor_faults_per_call_mean", {})
            flt_s = " / ".join("—" if flt.get(k) is None else f"{flt[k]:.0f}" for k in ("client", "server"))
            lines.append(
                f"| {_size(row['bytes'])} ({row['repeats']} repeats) | {name} | {w['median']:.3f} "
                f"[{w['p10']:.3f}–{w['p90']:.3f}] | {ratio} | {paired} | {rpc} | {cl} | {srv_s} | {flt_s} |"
            )
    return lines


def _threads_note(result: dict[str, Any]) -> str:
    """Which torch thread counts the server processes ran with, and why."""
    srv, s = result["server"], result["settings"]
    text = (
        f"Server torch threads: {srv['torch_threads']} in the overhead passes (`--server-threads "
        f"{s['server_threads'] if isinstance(s['server_threads'], int) else 0}`)"
    )
    if "batching_torch_threads" in srv:
        text += f", {srv['batching_torch_threads']} (torch's default) in the batching pass"
    text += "; the client process computes on 1."
    if isinstance(s["server_threads"], int) and s["server_threads"] == 1:
        text += (
            " One thread each side is the closest this one machine comes to a client and a server on "
            "machines of their own: with torch's default here the server's intra-op threads take the "
            "core the client process runs on (the pass at torch's default is below)."
        )
    return text


def _per_item(r: dict[str, Any]) -> float:
    compute = _pct([x["server_compute_ms_median"] for x in r["rounds"]], 50)
    return compute / max(r["mean_batch_size_per_batch"], 1.0)


def _attribution(rows: list[dict[str, Any]]) -> list[str]:
    """Per size: echo, + protobuf messages (bare v2), + splitdnn's server (v2 raw), + SplitClient."""
    lines = []
    for row in rows:
        v = row["variants"]
        if not {"echo", "v2_bare", "v2_raw"} <= set(v):
            continue
        echo, bare, raw = (v[k]["wall_ms"]["median"] for k in ("echo", "v2_bare", "v2_raw"))
        srv = v["v2_raw"].get("server_ms_median", {})
        reported = sum(srv.get(k, 0.0) for k in ("queue", "compute", "decode"))
        floor = (
            f"the floor (copy in, `x * 1`, copy out) +{v['floor']['wall_ms']['median'] - echo:.2f} ms; "
            if "floor" in v else ""
        )  # fmt: skip
        text = (
            f"- {_size(row['bytes'])}: raw echo {echo:.2f} ms; {floor}v2 protobuf messages instead of bytes "
            f"+{bare - echo:.2f} ms (bare v2 echo, client build + parse "
            f"{v['v2_bare']['client_build_ms_median'] + v['v2_bare']['client_parse_ms_median']:.2f}); "
            f"splitdnn's server {raw - bare:+.2f} ms, of which it reports {reported:.2f} ms as queue + "
            f"compute + decode (the rest: building the response, thread hand-offs)"
        )
        if "v2_wire" in v:
            wire = v["v2_wire"]["wall_ms"]["median"]
            text += f"; splitdnn's wire client instead of protobuf's {wire - raw:+.2f} ms"
        if "client" in v:
            text += f"; SplitClient on top of the v2 call {v['client']['wall_ms']['median'] - raw:+.2f} ms"
        lines.append(text + ".")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        "# Runtime: per-request overhead and dynamic batching",
        "",
        f"Command: `{result['command']}`  ",
        f"Finished: {result['date_utc']} UTC; {result['wall_s']:.0f} s in all.",
        "",
        f"Machine: **{m['cpus_usable']} cores** ({m['cpu_model'] or 'unknown CPU'}), {m['memory_gib']} GiB, "
        f"torch {m['torch']}, grpcio {m['grpcio']}. "
        "**One machine**: the client process and the server process share these cores over 127.0.0.1, "
        "so client work competes with the server's compute (this matters most for the batching "
        f"result). {_threads_note(result)} Load average before / after: "
        f"{', '.join(_fmt(x) for x in result['load_before'])} / "
        f"{', '.join(_fmt(x) for x in result['load_after'])} (1, 5, 15 min; the load after is mostly the "
        "benchmark's own client threads and server).",
        "",
    ]
    if result["overhead"]:
        lines += [
            "## Per-request overhead against a raw gRPC echo",
            "",
            "Interleaved (one call of each variant per repeat, in a fresh random order each), "
            f"{s['warmup']} warm-up "
            "repeats dropped. Wall time per call, median [p10–p90] in ms; ratio = median over the echo's "
            "median, and median [p10–p90] of the per-repeat ratios. Echo: generic unary gRPC, the "
            "tensor's raw bytes in and the same bytes out, served by the tail server on its port (the "
            "floor and the bound too: one connection and one server for all but the bare v2 echo). "
            "v2 raw: `serde.build_infer_request` + the "
            "generated stub's `ModelInfer` + `serde.parse_infer_response` (a stock protobuf client); "
            "model `x * 1` (same size out). v2 wire (with `--wire`): `serde.RequestEncoder` + a "
            "bytes-level `ModelInfer` + `serde.ResponseDecoder`, a fresh request id each call, what "
            "SplitClient does (the same messages; raw contents appended and read as views, not copied by "
            "protobuf; the small fields serialized and parsed once, and on the server parsed and checked "
            "once by `serde.RequestDecoder`). Bare v2 echo: "
            "the same client calls, answered by a plain v2 servicer that copies the raw input to the "
            "output (protobuf messages, no splitdnn server). Floor: the least any split runtime adds to "
            "the echo, with no protocol: the client copies the tensor into the request's bytes, the "
            "server computes `x * 1` (numpy) and copies the result into its answer. zstd: the "
            "request carries a zstd frame (encoded once, outside the timing), the answer is raw fp32. "
            'SplitClient: `infer()` with `force_boundary="cloud"`, raw codec.',
            "",
            *_overhead_table(result["overhead"]),
            "",
            "Where the time goes (medians; differences of medians, so approximate):",
            "",
            *_attribution(result["overhead"]),
            "",
        ]
        default_threads = result.get("overhead_default_threads")
        if default_threads:
            lines += [
                "### The 1 MiB pass with torch's default threads in the server process",
                "",
                f"Its own server process with torch's default intra-op threads "
                f"({result['settings'].get('default_threads_pass_torch_threads', '?')}), after the pass "
                "above; its own echo baseline.",
                "",
                *_overhead_table(default_threads),
                "",
            ]
        defaults = result.get("overhead_malloc_defaults")
        if defaults:
            lines += [
                "### The same pass with glibc's malloc defaults in both processes",
                "",
                "Run first (`mallopt` cannot be undone in the client process), with its own server process "
                "(`ServerConfig(keep_freed_memory=False)`) and its own echo baseline. With glibc's defaults "
                "a freed tensor-sized buffer is often unmapped or trimmed, and the next request's buffer "
                "faults its pages in again (the last column); splitdnn's commands keep such buffers "
                "mapped (`splitdnn.runtime.memory`), as in the table above.",
                "",
                *_overhead_table(defaults),
                "",
            ]
            rss = [(label, s.get(key)) for label, key in (("glibc defaults", "rss_mib_malloc_defaults_pass"),
                                                          ("kept mapped", "rss_mib_main_pass"))]  # fmt: skip
            if all(r is not None for _, r in rss):
                lines += [
                    "Resident memory before → after the overhead pass (MiB; kept buffers stay mapped after "
                    "a burst instead of going back to the kernel), "
                    + "; ".join(
                        f"{label}: server {r['before']['server']} → {r['after']['server']}, client "
                        f"{r['before']['client']} → {r['after']['client']}"
                        for label, r in rss
                    )
                    + ".",
                    "",
                ]
    b = result.get("batching")
    if b is not None:
        lines += [
            "## Throughput with concurrent clients, with and without dynamic batching",
            "",
            f"{s['clients']} client threads in one process, **each with its own channel and TCP "
            "connection**, "
            f"closed loop; ResNet-18 tail after `{s['cut']}` at a {s['tail_input']}×{s['tail_input']} "
            f"input (boundary {tuple(result['server']['boundary_shape'][1:])} fp32 per request, real "
            f"activations). Two servers, identical but for `max_batch_size` ({s['max_batch_size']} vs 1; "
            f"`max_queue_delay_ms` {s['max_queue_delay_ms']}), {s['rounds']} alternating rounds of "
            f"{s['warmup_s']} s load + {s['duration_s']} s timed window each; latency pooled over the "
            "rounds; requests/s median [min–max] over rounds.",
            "",
            "| server | requests/s | p50 ms | p90 ms | p99 ms | mean batch (per request / per batch) "
            "| server queue / compute ms (median) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label in ("batched", "unbatched"):
            r = b[label]
            rps, lat = r["requests_per_s"], r["latency_ms"]
            q = _pct([x["server_queue_ms_median"] for x in r["rounds"]], 50)
            c = _pct([x["server_compute_ms_median"] for x in r["rounds"]], 50)
            name = f"max_batch_size {s['max_batch_size']}" if label == "batched" else "max_batch_size 1"
            lines.append(
                f"| {name} | {rps['median']:.1f} [{rps['min']:.1f}–{rps['max']:.1f}] | {lat['p50']:.1f} | "
                f"{lat['p90']:.1f} | {lat['p99']:.1f} | {r['mean_batch_size_per_request']:.2f} / "
                f"{r['mean_batch_size_per_batch']:.2f} | {q:.1f} / {c:.1f} |"
            )
        tr = b["throughput_ratio"]
        lines += [
            "",
            f"Throughput ratio batched / unbatched: **{tr['pooled']:.2f}×** (all rounds pooled; per round "
            f"{tr['per_round_min']:.2f}–{tr['per_round_max']:.2f}×). p99 ratio {b['p99_ratio']:.2f}, "
            f"p50 ratio {b['p50_ratio']:.2f}. Batch sizes seen (requests): "
            + ", ".join(f"{k}: {v}" for k, v in b["batched"]["batch_size_counts"].items())
            + ". Server compute per request (median compute / mean batch): "
            f"{_per_item(b['batched']):.1f} ms batched, {_per_item(b['unbatched']):.1f} ms unbatched; "
            f"unbatched, a request mostly waits in the queue for the {s['clients'] - 1} others.",
            "",
        ]
    g = result["goals"]
    lines += ["## Goals (issue 4)", ""]
    if "overhead_1MiB_v2_wire" in g:
        o = g["overhead_1MiB_v2_wire"]
        lines.append(
            f"- ≤ {o['goal']}× a raw gRPC echo for a 1 MiB tensor: **{'met' if o['met'] else 'missed'}** "
            f"({o['ratio']:.2f}×, v2 raw with splitdnn's wire client, ratio of medians; "
            f"{g['overhead_1MiB_v2_raw']['ratio']:.2f}× with a stock protobuf client)."
        )
        if "ratio_without_server_compute" in o:
            lines.append(
                f"  Without the tail's own compute (the server's reported compute time, `x * 1` writing a "
                f"fresh 1 MiB output, subtracted per call): {o['ratio_without_server_compute']:.2f}×. "
                f"The goal is judged on the full wall time above."
            )
    elif "overhead_1MiB_v2_raw" in g:
        o = g["overhead_1MiB_v2_raw"]
        lines.append(
            f"- ≤ {o['goal']}× a raw gRPC echo for a 1 MiB tensor: **{'met' if o['met'] else 'missed'}** "
            f"({o['ratio']:.2f}×, v2 raw, ratio of medians)."
        )
    bare = next((r for r in result["overhead"] if r["bytes"] == GOAL_SIZE), None)
    if bare is not None and "floor" in bare["variants"] and "overhead_1MiB_v2_raw" in g:
        lines.append(
            f"  The floor (copy in, `x * 1`, copy out, no protocol) is "
            f"{bare['variants']['floor']['ratio_of_medians']:.2f}×: the room the goal leaves above it is "
            f"what a protocol's parsing, checks and bookkeeping may take."
        )
    if bare is not None and {"v2_bound", "v2_wire"} <= set(bare["variants"]):
        bv, wv = bare["variants"]["v2_bound"], bare["variants"]["v2_wire"]
        lines.append(
            f"  The bound (the same wire client against a handler with no parsing, no checks and no "
            f"bookkeeping: it views the tensor, runs `x * 1` in torch and joins a header built once) is "
            f"{bv['ratio_of_medians']:.2f}×: about the least a Python server of this protocol that runs "
            f"its tail in torch can cost here. splitdnn's server adds "
            f"{wv['wall_ms']['median'] - bv['wall_ms']['median']:.2f} ms above it (its parsing, checks, "
            f"metrics, limits and batcher)."
        )
    if bare is not None and {"v2_bound_stream", "echo_stream"} <= set(bare["variants"]):
        v = bare["variants"]
        stream_echo = v["echo_stream"]["wall_ms"]["median"]
        lines.append(
            f"  On one open bidirectional stream instead of a call per request (no per-call set-up on "
            f"either end), the bound is {v['v2_bound_stream']['ratio_of_medians']:.2f}× the echo above "
            f"and {v['v2_bound_stream']['wall_ms']['median'] / stream_echo:.2f}× an echo on such a stream "
            f"(itself {v['echo_stream']['ratio_of_medians']:.2f}× the echo)."
        )
    if bare is not None and {"v2_wire_stream", "echo_stream"} <= set(bare["variants"]):
        v = bare["variants"]
        lines.append(
            f"  splitdnn's wire client on one ModelStreamInfer stream (`SplitClient(stream=True)`): "
            f"{v['v2_wire_stream']['ratio_of_medians']:.2f}× the unary echo above, "
            f"{v['v2_wire_stream']['wall_ms']['median'] / v['echo_stream']['wall_ms']['median']:.2f}× the "
            f"echo on a stream; the goal is judged on the unary call against the unary echo."
        )
    if "overhead_1MiB_v2_raw" in g and bare is not None and "v2_bare" in bare["variants"]:
        lines.append(
            f"  A bare v2 servicer with no splitdnn code is "
            f"{bare['variants']['v2_bare']['ratio_of_medians']:.2f}× with the stock protobuf client calls."
        )
    key = next((k for k in ("overhead_1MiB_v2_wire_default_threads", "overhead_1MiB_v2_raw_default_threads")
                if k in g), None)  # fmt: skip
    if key is not None:
        o = g[key]
        lines.append(
            f"  With torch's default threads in the server process (its own pass, above): "
            f"**{o['ratio']:.2f}×** against that pass's echo."
        )
    key = next((k for k in ("overhead_1MiB_v2_wire_malloc_defaults", "overhead_1MiB_v2_raw_malloc_defaults")
                if k in g), None)  # fmt: skip
    if key is not None:
        o = g[key]
        d = next(r for r in result["overhead_malloc_defaults"] if r["bytes"] == GOAL_SIZE)["variants"]
        m = next(r for r in result["overhead"] if r["bytes"] == GOAL_SIZE)["variants"]
        variant = key.split("_", 2)[2].rsplit("_malloc_defaults", 1)[0]
        lines.append(
            f"  With glibc's malloc defaults (the pass before): {o['ratio']:.2f}× against that pass's echo; "
            f"absolute: {variant} {d[variant]['wall_ms']['median']:.2f} ms there, "
            f"{m[variant]['wall_ms']['median']:.2f} ms here (echo {d['echo']['wall_ms']['median']:.2f} / "
            f"{m['echo']['wall_ms']['median']:.2f} ms)."
        )
    if "batching" in g:
        o = g["batching"]
        lines.append(
            f"- ≥ {GOAL_THROUGHPUT}× throughput with batching at no worse p99: "
            f"**{'met' if o['met'] else 'missed'}** ({o['throughput_ratio']:.2f}× throughput, p99 ratio "
            f"{o['p99_ratio']:.2f})."
        )
    lines.append("")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="65536,1048576,4194304", help="tensor bytes, multiples of 1024")
    p.add_argument("--repeats", default="300,300,60", help="timed repeats per size (one value: all sizes)")
    p.add_argument("--warmup", type=int, default=10, help="untimed repeats per size")
    p.add_argument("--no-client", action="store_true", help="skip the SplitClient variant")
    p.add_argument(
        "--wire", action="store_true", help="also time splitdnn's bytes-level wire client (v2 wire)"
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=4, help="timed rounds per server, alternating")
    p.add_argument("--duration-s", type=float, default=8.0, help="timed window of a round")
    p.add_argument("--warmup-s", type=float, default=1.5, help="load before each round's window")
    p.add_argument("--tail-input", type=int, default=112, help="ResNet-18 input side the tail runs at")
    p.add_argument("--cut", default="layer3_1_relu_1", help="ResNet-18 node whose output is sent")
    p.add_argument("--skip-batching", action="store_true")
    p.add_argument(
        "--server-threads", type=int, default=1,
        help="torch intra-op threads in the server process of the overhead passes (0: torch's default, "
        "one per core); the batching pass runs its own server process with torch's default",
    )  # fmt: skip
    p.add_argument(
        "--skip-default-threads", action="store_true",
        help="skip the 1 MiB overhead pass with torch's default threads in the server process",
    )  # fmt: skip
    p.add_argument(
        "--skip-malloc-defaults", action="store_true",
        help="skip the first overhead pass, with glibc's malloc defaults in both processes",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--from-json", type=Path, default=None, help="only rewrite --md from this result")
    p.add_argument("--serve-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_child is not None:
        return serve_child(json.loads(args.serve_child))
    if args.from_json is not None:
        md = to_markdown(json.loads(args.from_json.read_text()))
        if args.md:
            args.md.write_text(md)
        print(md)
        return 0
    sizes = _ints(args.sizes)
    repeats = _ints(args.repeats)
    if len(repeats) == 1:
        repeats *= len(sizes)
    if len(repeats) != len(sizes) or min(repeats) < 1 or args.warmup < 0:
        raise SystemExit("--repeats: one count >= 1, or one per size")
    for n in sizes:
        shape_of(n)
    if args.clients < 1 or args.max_batch_size < 2 or args.rounds < 1 or args.duration_s <= 0:
        raise SystemExit("--clients >= 1, --max-batch-size >= 2, --rounds >= 1, --duration-s > 0")
    if args.server_threads < 0:
        raise SystemExit(f"--server-threads: 0 (torch's default) or more, found {args.server_threads}")

    import tempfile

    import torch

    torch.set_num_threads(1)  # the client computes nothing heavy; leave the cores to the server
    t_start = time.perf_counter()
    load_before = list(os.getloadavg())
    settings = {
        "sizes_bytes": sizes,
        "repeats": repeats,
        "warmup": args.warmup,
        "overhead_server": (
            "ServerConfig defaults (max_batch_size 8, max_queue_delay_ms 2.0; a lone request runs at once)"
        ),
        "echo_server_workers": 16,
        "clients": args.clients,
        "client_channels": (
            "one channel and TCP connection per client thread (grpc.use_local_subchannel_pool)"
        ),
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "rounds": args.rounds,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "tail_model": TAIL_MODEL,
        "tail_input": args.tail_input,
        "cut": args.cut,
        "server_threads": args.server_threads or "torch default",  # the overhead passes'; see server.*
        "client_torch_threads": 1,
        "max_message_bytes": MAX_MESSAGE,
        "malloc": "both processes keep freed buffers mapped (splitdnn.runtime.memory.keep_freed_memory)",
        "malloc_defaults_pass_first": not args.skip_malloc_defaults,
        "env_malloc": {
            k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        cfg = {
            "sizes": sizes,
            "echo_workers": 16,
            "batching": not args.skip_batching,
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_ms": args.max_queue_delay_ms,
            "tail_input": args.tail_input,
            "cut": args.cut,
            "boundaries": max(1, args.clients),
            "boundary_path": str(Path(tmp) / "boundary.npy"),
            "keep_freed_memory": True,
            "threads": args.server_threads,
        }
        overhead_only = {**cfg, "batching": False}
        defaults = None
        if not args.skip_malloc_defaults:  # first: keep_freed_memory cannot be undone in this process
            print("per-request overhead with glibc's malloc defaults in both processes:", flush=True)
            server = ServerProcess({**overhead_only, "keep_freed_memory": False})
            try:
                defaults, settings["rss_mib_malloc_defaults_pass"] = rss_around(
                    server.info,
                    lambda: measure_overhead(
                        server.info,
                        sizes,
                        repeats,
                        args.warmup,
                        with_client=not args.no_client,
                        with_wire=args.wire,
                    ),
                )
            finally:
                server.close()
        from splitdnn.runtime.memory import keep_freed_memory

        client_malloc = keep_freed_memory()
        settings["client_keep_freed_memory"] = client_malloc.applied or client_malloc.reason
        print("starting the servers (child process) ...", flush=True)
        server = ServerProcess(overhead_only)
        try:
            info = server.info
            print("per-request overhead against a raw gRPC echo:", flush=True)
            overhead, settings["rss_mib_main_pass"] = rss_around(
                info,
                lambda: measure_overhead(
                    info, sizes, repeats, args.warmup, with_client=not args.no_client, with_wire=args.wire
                ),
            )
        finally:
            server.close()
        default_threads = None
        if args.server_threads and not args.skip_default_threads and GOAL_SIZE in sizes:
            print("the same at 1 MiB with torch's default threads in the server:", flush=True)
            server = ServerProcess({**overhead_only, "threads": 0})
            try:
                default_threads = measure_overhead(
                    server.info, [GOAL_SIZE], [repeats[sizes.index(GOAL_SIZE)]], args.warmup,
                    with_client=False, with_wire=args.wire,
                )  # fmt: skip
                settings["default_threads_pass_torch_threads"] = server.info["torch_threads"]
            finally:
                server.close()
        batching = None
        if not args.skip_batching:
            server = ServerProcess({**cfg, "threads": 0})  # the batching servers, at torch's default
            try:
                info |= {k: server.info[k] for k in ("boundary_shape", "tail_fingerprints")}
                info["batching_torch_threads"] = server.info["torch_threads"]
                boundaries = np.load(cfg["boundary_path"])
                print(f"{args.clients} concurrent clients, batching vs not:", flush=True)
                batching = measure_batching(
                    server.info, boundaries, args.cut, args.clients, args.rounds, args.warmup_s,
                    args.duration_s,
                )  # fmt: skip
            finally:
                server.close()
    result: dict[str, Any] = {
        "benchmark": "runtime",
        "command": "python scripts/bench_runtime.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": machine_info(),
        "code": code_state(),
        # addresses and pid: meaningless after the run
        "server": {
            k: v for k, v in info.items() if k not in ("pid", "bare", "overhead", "batched", "unbatched")
        },
        "settings": settings,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "overhead": overhead,
        "overhead_malloc_defaults": defaults,
        "overhead_default_threads": default_threads,
        "batching": batching,
        "goals": goals(overhead, batching, defaults, default_threads),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(result, indent=2, allow_nan=False)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    md = to_markdown(result)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
