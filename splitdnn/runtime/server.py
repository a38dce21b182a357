"""The tail-model service: runs the full model or the tail of any cut for clients over gRPC.

::

    cfg = ServerConfig(models=("resnet18",), port=8001)
    with TailServer(cfg) as server:          # loads and traces the models, binds, starts serving
        print(server.address)                # "127.0.0.1:8001"
        server.wait()                        # or serve_forever(): stops gracefully on SIGTERM / SIGINT

Served over one port (DESIGN sections 5, 6, 8):

- ``inference.GRPCInferenceService`` (Open Inference Protocol v2): ServerLive, ServerReady,
  ModelReady, ServerMetadata, ModelMetadata, ModelInfer. Anything else answers UNIMPLEMENTED.
  A request's inputs define its cut: the model's own inputs run the whole model; boundary tensors
  named by their producer nodes run the tail that computes the output from them (built once per set
  of names, kept in an LRU cache). Split requests carry ``splitdnn.fingerprint``.
- ``splitdnn.v1.SplitService/GetModelInfo``: fingerprint, weights digest, the server's profile
  (given in ``profiles``, or measured at start with ``profile_at_start``, before the port opens),
  limits; ``Probe``: answers at once with the payload's size (clients measure the link with it).
- ``grpc.health.v1.Health``: SERVING while up, NOT_SERVING from the start of a shutdown; for the
  server (``""``), each of the two services, and each served model by its v2 name.
- Prometheus metrics over HTTP on ``metrics_port`` (see :mod:`splitdnn.runtime._metrics`).
- Services of the caller's own, if given: ``TailServer(cfg, handlers=[...])``.

Status codes: NOT_FOUND (a model the server does not serve), INVALID_ARGUMENT (malformed request,
wrong input names, dtypes or shapes, bad or oversized frames, decompression bombs),
FAILED_PRECONDITION (fingerprint of another model, or ``splitdnn.weights`` naming other weights than
the served ones: same architecture, different values; requests without it, as from stock v2 clients,
are accepted), RESOURCE_EXHAUSTED (more than ``max_concurrency`` requests in flight, a message over
``max_message_bytes``, or a request that would take the bytes held by requests in flight -- their
messages and decoded tensors -- past ``max_inflight_bytes``, or a call past
``max_receiving_per_peer`` calls of its address still waiting for their message), UNAUTHENTICATED
(missing or wrong bearer token), DEADLINE_EXCEEDED (the client's deadline passed while queued or
running, or the request message did not arrive within ``receive_timeout_s``), INTERNAL
(a bug; the message says what failed). A bad request never affects any other one.

Dynamic batching (:mod:`splitdnn.runtime._batcher`): requests for the same model, cut and per-item
shapes are concatenated along the batch dimension, up to ``max_batch_size`` rows, the oldest waiting at
most ``max_queue_delay_ms`` while more requests are arriving. A model whose rows depend on each
other (batch statistics, or anything that mixes rows; checked once at load on two random rows, see
``_tail.rows_independent``) is never batched: :meth:`TailServer.never_batched` says which and why.
The tail runs on ``device`` under ``torch.inference_mode``; responses report ``splitdnn.queue_ms``,
``splitdnn.compute_ms``, ``splitdnn.decode_ms`` and ``splitdnn.batch_size``.

At start the server sets glibc's malloc thresholds for its process so that freed tensor-sized
buffers are reused instead of faulted in again on every request (:mod:`splitdnn.runtime.memory`;
``keep_freed_memory=False`` leaves malloc alone).

The servicers, the token interceptor and the mapping of exceptions to statuses live in
:mod:`splitdnn.runtime._servicers`; the tails in :mod:`splitdnn.runtime._tail`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from functools import partial
from typing import Any

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitdnn.errors import CodecError, ConfigError, ProfileMismatchError, WireError
from splitdnn.graph import TracedModel
from splitdnn.runtime import serde
from splitdnn.runtime._batcher import Batcher, BatchResult, Job
from splitdnn.runtime._config import (
    ModelSpec,
    ServerConfig,
    bare_host,
    check_port_free,
    device_of,
    host_port,
    load_served,
    read_pem,
)
from splitdnn.runtime._metrics import ModelSeries, ServerMetrics
from splitdnn.runtime._proto import splitdnn_pb2_grpc as sd_grpc
from splitdnn.runtime._receive import ReceiveWatch, StreamWatch
from splitdnn.runtime._server_pace import LoadTracker
from splitdnn.runtime._servicers import (
    STREAMS_STOPPING,
    VERSION,
    Abort,
    InferenceServicer,
    InflightBytes,
    RequestLease,
    ShutdownHealth,
    SplitServicer,
    TokenInterceptor,
    add_inference_servicer,
    add_servicer,
    compute_error,
)
from splitdnn.runtime._tail import ServedModel, Tail, from_numpy, shown_names, to_numpy
from splitdnn.runtime.memory import keep_freed_memory
from splitdnn.schema import Profile

__all__ = ["ModelSpec", "ServerConfig", "TailServer"]

log = logging.getLogger(__name__)

#: the name prefix of the gRPC handler threads (a request that runs alone runs on one)
RPC_THREAD_PREFIX = "splitdnn-rpc"

_EXTRA_WORKERS = 8  # threads beyond max_concurrency, for rejecting overflow
_CONTROL_WORKERS = 8  # a pool of its own for health, metadata, GetModelInfo and Probe (see add_servicer)


_INFER_POOL, _CONTROL_POOL = "ModelInfer", "health, metadata and probes"  # the two handler pools


def _pool_of(method: str) -> str:
    """Which handler pool serves ``method``: a client's calls waiting for their message are capped
    per pool (max_receiving_per_peer), so its uploads in flight never refuse its health checks."""
    return _INFER_POOL if method == serde.MODEL_INFER_METHOD else _CONTROL_POOL


# --------------------------------------------------------------------------------------------------
# the server


class TailServer:
    """A running tail service (see the module docstring); use as a context manager or start()/stop()."""

    def __init__(self, config: ServerConfig, *, handlers: Iterable[grpc.GenericRpcHandler] = ()) -> None:
        """``handlers``: gRPC services of the caller's own served on the same port (a benchmark's echo,
        an operator's admin service). The token, when one is set, guards them too; nothing else of
        the server's does (no receive watch, concurrency slots, byte budget or metrics), and they
        cannot take over one of its methods: those are looked up first."""
        if not isinstance(config, ServerConfig):
            raise ConfigError(f"TailServer takes a ServerConfig, found {type(config).__name__}")
        if isinstance(handlers, grpc.GenericRpcHandler):
            raise ConfigError(
                f"TailServer's handlers are a sequence of grpc.GenericRpcHandler objects, found one "
                f"{type(handlers).__name__} alone; pass handlers=(handler,)"
            )
        handlers = tuple(handlers)  # (an iterator is read once, here)
        wrong = [type(h).__name__ for h in handlers if not isinstance(h, grpc.GenericRpcHandler)]
        if wrong:
            raise ConfigError(
                f"TailServer's handlers must be grpc.GenericRpcHandler objects (as "
                f"grpc.method_handlers_generic_handler makes), found {', '.join(wrong)}"
            )
        self.config = config
        self._handlers = handlers
        self.metrics = ServerMetrics()
        self._models: dict[str, ServedModel] = {}
        self._profiles: dict[str, Profile] = {}  # GetModelInfo's: the config's and those measured at start
        self._server: grpc.Server | None = None
        self._unstarted: grpc.Server | None = None  # created, maybe bound, not yet started
        self._health: ShutdownHealth | None = None
        self._batcher: Batcher | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._control: futures.ThreadPoolExecutor | None = None
        self._inflight = InflightBytes(config.inflight_limit, config.max_concurrency)
        self._loads = LoadTracker()  # each model's pace against its profile, for probes (ServerLoad)
        # a client's repeat requests: their small fields parsed and checked once, their answers'
        # small fields serialized once (serde.RequestDecoder, serde.ResponseEncoder)
        self._requests = serde.RequestDecoder()
        self._answers = serde.ResponseEncoder()
        self._port = 0
        self._metrics_port: int | None = None
        self._stopping = False
        self._stopped = threading.Event()
        self._hurried = threading.Event()
        self._lock = threading.Lock()
        self._watch = ReceiveWatch(
            config.receive_timeout_s, on_timeout=self._receive_timed_out,
            max_per_peer=config.max_receiving_per_peer, on_refused=self._receive_refused, pool_of=_pool_of,
        )  # fmt: skip
        self._stream_watch = StreamWatch(config.stream_idle_timeout_s, on_timeout=self._receive_timed_out)

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> TailServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> TailServer:
        """Load and trace the models, bind the port(s) and start serving; returns self.

        On failure (a model that does not load, a port in use, ...) nothing is left running.
        """
        with self._lock:
            if self._server is not None or self._stopping:
                raise ConfigError("this TailServer was already started; create a new one to serve again")
            try:
                self._start()
            except BaseException:
                if self._unstarted is not None:
                    self._unstarted.stop(None)  # releases a port already bound
                    self._unstarted = None
                if self._batcher is not None:
                    self._batcher.stop(timeout=5)
                    self._batcher = None
                self._release_threads()
                self.metrics.close()
                self._models.clear()
                self._profiles.clear()
                raise
        return self

    def _start(self) -> None:
        cfg = self.config
        device = device_of(cfg.device)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if cfg.keep_freed_memory:
            setting = keep_freed_memory()
            if not setting:
                log.info("malloc left as it is: %s", setting.reason)
        # what can fail without a model fails before the models load (seconds to minutes each)
        tls = self._read_tls()
        check_port_free(cfg.host, cfg.port, "the gRPC port")
        if cfg.metrics_port is not None:
            check_port_free(cfg.metrics_host or cfg.host, cfg.metrics_port, "the metrics port")
        for spec in cfg.models:
            served = load_served(spec, device, cfg.tail_cache_size, check_batching=cfg.max_batch_size > 1)
            if served.name in self._models:
                raise ConfigError(
                    f"two models are named {served.name!r}; serve each once (Python API: give one a "
                    f"ModelSpec(name=...))"
                )
            self._models[served.name] = served
            self.metrics.of(served.name)  # its series exist from the start, at zero
            if not served.batchable:
                log.info("model %r is never batched: %s", served.name, served.batching_note)
            if served.grad_mode_note:
                log.info("model %r: %s", served.name, served.grad_mode_note)
        self._check_profiles()
        self._profiles = dict(cfg.profiles)
        if cfg.profile_at_start:
            self._profile_models()
        for name, served in self._models.items():  # tails price by it (the server's pace, probes)
            served.set_profile(self._profiles.get(name))
        models = self._models
        self.metrics.track_tails(lambda: {n: (m.tail_builds, m.cached_tails()) for n, m in models.items()})
        inflight = self._inflight
        self.metrics.inflight_bytes.set_function(lambda: inflight.used)
        self.metrics.in_flight.set_function(lambda: inflight.requests)
        metrics = self.metrics
        self._batcher = Batcher(
            cfg.max_batch_size,
            cfg.max_queue_delay_ms / 1000.0,
            on_batch=lambda model, jobs: metrics.of(model).batch(jobs),
        )
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            # ModelInfer answers are checked against max_message_bytes by the servicer; the others (the
            # profile in GetModelInfo: 0.3 MB for ResNet-50) may be larger than a small cap
            ("grpc.max_send_message_length", max(cfg.max_message_bytes, serde.CONTROL_MESSAGE_BYTES)),
            ("grpc.so_reuseport", 0),
        ]
        if cfg.max_connection_age_s is not None:
            options.append(("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)))
            # requests running when a connection ages out get the same grace as a shutdown
            options.append(("grpc.max_connection_age_grace_ms", int(cfg.grace_s * 1000)))
        workers = cfg.max_concurrency + _EXTRA_WORKERS
        cap = cfg.max_receiving_per_peer
        pools = ((_INFER_POOL, workers), (_CONTROL_POOL, _CONTROL_WORKERS))
        unbounded = [f"{name} ({n} threads)" for name, n in pools if cap is not None and cap >= n]
        if unbounded:
            log.warning(
                "max_receiving_per_peer=%s lets one client address hold every handler thread of %s: it "
                "bounds nothing there; set it lower to keep threads for other clients",
                cap, " and ".join(unbounded),
            )  # fmt: skip
        self._executor = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=RPC_THREAD_PREFIX)
        self._control = control = futures.ThreadPoolExecutor(
            _CONTROL_WORKERS, thread_name_prefix="splitdnn-control"
        )
        server = grpc.server(
            self._executor,
            interceptors=[TokenInterceptor(cfg.token, self.metrics)] if cfg.token else [],
            options=options,
            maximum_concurrent_rpcs=4 * workers,
        )
        self._unstarted = server
        watch = self._watch
        inference = InferenceServicer(self)
        self.metrics.streams_open.set_function(lambda: inference.streams_open)
        add_inference_servicer(inference, server, watch, control)
        split = SplitServicer(self)
        add_servicer(sd_grpc.add_SplitServiceServicer_to_server, split, server, watch, thread_pool=control)
        self._health = ShutdownHealth()
        add_servicer(
            health_pb2_grpc.add_HealthServicer_to_server, self._health, server, watch, thread_pool=control
        )
        if self._handlers:  # after the server's own: a method of those is never theirs
            server.add_generic_rpc_handlers(self._handlers)
        address = host_port(cfg.host, cfg.port)
        try:
            if tls is not None:
                key, cert, ca = tls
                creds = grpc.ssl_server_credentials(
                    [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
                )
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            hint = "are the TLS certificate and key a matching PEM pair?" if cfg.tls_cert is not None else ""
            raise ConfigError(
                f"cannot listen on {address}: {exc}; is the port in use or the host wrong? {hint}".rstrip()
            ) from exc
        if not port:
            raise ConfigError(f"cannot listen on {address}; is the port in use or the host wrong?")
        self._port = port
        if cfg.metrics_port is not None:
            metrics_host = cfg.metrics_host or cfg.host
            try:
                self._metrics_port = self.metrics.serve(bare_host(metrics_host), cfg.metrics_port)
            except OSError as exc:
                self._port = 0
                raise ConfigError(
                    f"cannot serve metrics on {host_port(metrics_host, cfg.metrics_port)}: {exc.strerror}; "
                    f"pick another metrics port (0: any free port)"
                ) from exc
        server.start()
        watch.start()  # before the server is published: a stop() from now on stops the watch too
        self._stream_watch.start()
        self._server, self._unstarted = server, None
        # the server, its two services and each served model by its v2 name
        for name in ("", "inference.GRPCInferenceService", "splitdnn.v1.SplitService", *self._models):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s", ", ".join(self._models), self.address)

    def _read_tls(self) -> tuple[bytes, bytes, bytes | None] | None:
        """The server's TLS key, certificate and client CA (PEM), or None for plaintext."""
        cfg = self.config
        if cfg.tls_cert is None or cfg.tls_key is None:
            return None
        ca = read_pem(cfg.tls_client_ca, "client CA") if cfg.tls_client_ca is not None else None
        return read_pem(cfg.tls_key, "TLS key"), read_pem(cfg.tls_cert, "TLS certificate"), ca

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: health NOT_SERVING, refuse new requests, let in-flight ones finish.

        In-flight requests get ``grace`` seconds (default ``config.grace_s``), then are cancelled.
        Health Watch streams, which never end by themselves, are ended once they have been told
        NOT_SERVING, so they do not hold the stop for the whole grace. :meth:`hurry` from another
        thread (or a second SIGTERM under :meth:`serve_forever`) cancels the requests in flight. A
        request is in flight from its call's start, so one whose message is still arriving when the
        stop begins is answered too if the message arrives within the grace; calls started after
        the stop are refused (UNAVAILABLE), and a client retries them elsewhere or runs them locally.
        ``drain_s`` gives load balancers time to stop sending.
        Safe to call more than once.
        """
        with self._lock:
            if self._server is None or self._stopping:
                return
            self._stopping = True
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if self.config.drain_s > 0:
            self._hurried.wait(self.config.drain_s)
        done = self._server.stop(self.config.grace_s if grace is None else grace)
        # streams waiting for their next message end now (those answering one end after it): an open
        # stream never ends by itself, and gRPC's graceful stop would wait out its whole grace for it
        self._stream_watch.close(STREAMS_STOPPING)
        if self._health is not None:
            # each Watch stream has had its NOT_SERVING; ended now, as they never end by themselves
            # and gRPC's graceful stop waits out its whole grace for any call still open
            self._health.end_watches()
        while not done.wait(0.05):
            if self._hurried.is_set():
                self._server.stop(None)
                done.wait()
        if self._batcher is not None:
            # what is still queued or running now has no client left (its call ended or was cancelled)
            self._batcher.stop(timeout=0.5)
        self._watch.stop()
        self._stream_watch.stop()
        self._release_threads()
        self.metrics.close()
        self._stopped.set()

    def _release_threads(self) -> None:
        """Let the handler threads go (grpc leaves its executor running): a process that starts and
        stops servers would otherwise keep every server's threads. A handler still running (stopped
        without grace) finishes on its own; nothing waits for it."""
        for pool in (self._executor, self._control):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._executor = self._control = None

    def _receive_timed_out(self, method: str) -> None:
        """A call of ``method`` was ended without its request message (see ReceiveWatch)."""
        self.metrics.receive_timeouts.labels(method).inc()
        if method == serde.MODEL_INFER_METHOD:  # which model it was for is unknown: no message
            self.metrics.refused_unknown("DEADLINE_EXCEEDED", model_infer=True)

    def _receive_refused(self, method: str) -> None:
        """A call of ``method`` was refused: its peer had max_receiving_per_peer calls waiting."""
        self.metrics.receive_refused.labels(method).inc()
        if method == serde.MODEL_INFER_METHOD:
            self.metrics.refused_unknown("RESOURCE_EXHAUSTED", model_infer=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout`` s passed); True if it stopped."""
        return self._stopped.wait(timeout)

    def hurry(self) -> None:
        """Make a :meth:`stop` under way (or the next one) cancel the requests in flight now."""
        self._hurried.set()

    def serve_forever(self) -> None:
        """Start if needed, then serve until SIGTERM or SIGINT, and stop gracefully (main thread only).

        A second signal while stopping cancels the requests still in flight (:meth:`hurry`)."""
        if self._server is None:
            self.start()
        # The handler only appends: it runs in the main thread between two bytecodes, maybe while that
        # thread holds an Event's or logging's lock, and taking one there again would deadlock (seen
        # once: serve ignored SIGTERM for good). A watcher thread acts on a second signal instead.
        signals: list[int] = []
        done = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            signals.append(signum)

        def watch() -> None:
            while True:  # looks first: both signals may have come before it started
                if len(signals) > 1:
                    log.warning(
                        "%s again while stopping: cancelling the requests in flight",
                        signal.Signals(signals[1]).name,
                    )
                    self.hurry()
                    return
                if done.wait(0.1):
                    return

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        watcher = threading.Thread(target=watch, name="splitdnn-signals", daemon=True)
        try:
            while not signals and not self._stopped.wait(0.2):
                pass
        finally:
            watcher.start()  # a second signal, before or during the stop below, hurries it
            try:
                self.stop()  # the handlers stay
            finally:
                done.set()
                watcher.join()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    # -- introspection -----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` actually bound (the port is real even when the config said 0)."""
        if not self._port:
            raise ConfigError("the server is not started; call start() or use it as a context manager")
        host = self.config.host
        return (
            f"[{host}]:{self._port}" if ":" in host and not host.startswith("[") else f"{host}:{self._port}"
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def metrics_address(self) -> str | None:
        """``host:port`` of the Prometheus endpoint, or None when metrics are off."""
        if self._metrics_port is None:
            return None
        return host_port(self.config.metrics_host or self.config.host, self._metrics_port)

    @property
    def queue_depth(self) -> int:
        """Requests validated and waiting for their batch to start."""
        return self._batcher.pending() if self._batcher is not None else 0

    @property
    def ready(self) -> bool:
        return self._server is not None and not self._stopping

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self._models)

    def never_batched(self) -> dict[str, str]:
        """The served models whose requests are never batched together, with why (their rows depend
        on each other, or they cannot run a batch of two; see ``_tail.rows_independent``)."""
        return {n: m.batching_note for n, m in self._models.items() if not m.batchable}

    def served_model(self, name: str) -> TracedModel:
        """The traced model served as ``name`` (its weights are the ones the server computes with)."""
        try:
            return self._models[name].traced
        except KeyError:
            raise ConfigError(
                f"this server does not serve {name!r}; it serves {sorted(self._models)}"
            ) from None

    # -- request handling --------------------------------------------------------------------------

    def _profile_models(self) -> None:
        """Measure every served model that has no given profile, before the port opens (an idle
        machine: no request competes with the timings)."""
        from splitdnn.profiler import profile_model

        for name, served in self._models.items():
            if name in self._profiles:
                continue
            t0 = time.perf_counter()
            self._profiles[name] = profile_model(
                served.traced, device=str(served.device), threads=self.config.threads, progress=False,
                notes="measured by the tail server at start",
            )  # fmt: skip
            took = time.perf_counter() - t0
            log.info("profiled %s in %.1f s: %s", name, took, self._profiles[name].describe())

    def profile(self, name: str) -> Profile | None:
        """The profile of served model ``name`` that clients get: given in the config, measured at
        start (``profile_at_start``), or None."""
        if name not in self._models:
            raise ConfigError(f"{name!r} is not served here; served: {sorted(self._models)}")
        return self._profiles.get(name)

    def load_of(self, name: str) -> serde.ServerLoadData | None:
        """How busy the server is with served model ``name`` (a probe's answer); None when it does not
        serve it or has no profile of it (nothing to measure its pace against)."""
        if name not in self._models or name not in self._profiles:
            return None
        load = self._loads.report(name)
        return serde.ServerLoadData(
            load.pace, load.requests, self._inflight.requests, self._loads.max_age_s, load.arrivals,
            compute_pace=load.compute_pace, queue_ms=load.queue_ms,
        )  # fmt: skip

    def _measure_pace(self, model: str, predicted_ms: float, future: Future[Any]) -> None:
        """When a request's batch has run (also for a client that stopped waiting): its queue and its
        compute against ``predicted_ms``, the profile's time for its tail."""
        if future.cancelled() or future.exception() is not None:
            return
        result: BatchResult = future.result()
        self._loads.observe(model, predicted_ms, result.queue_s * 1000.0, result.compute_s * 1000.0)

    def _check_profiles(self) -> None:
        for name, profile in self.config.profiles.items():
            served = self._models.get(name)
            if served is None:
                raise ConfigError(
                    f"a profile is given for {name!r}, which is not served; serve {sorted(self._models)}"
                )
            if profile.fingerprint and profile.fingerprint != served.fingerprint:
                raise ProfileMismatchError(
                    f"the profile for {name!r} has fingerprint {profile.fingerprint[:12]}, the served model "
                    f"{served.fingerprint[:12]}; profile this model (splitdnn profile {name})"
                )
            # its input shapes may differ from the ones traced here: the tails serve any shape the
            # model takes, and a client uses the profile only when it is for its own input shapes

    def _model(self, name: str, version: str) -> ServedModel:
        served = self._models.get(name)
        if not name:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request names no model (empty model_name); this server serves {sorted(self._models)}",
            )
        if served is None:
            shown = name if len(name) <= 60 else name[:60] + "..."
            raise Abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {shown!r} is not served here; this server serves {sorted(self._models)}",
            )
        if version not in ("", VERSION):
            raise Abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} has only version {VERSION!r}; leave model_version empty",
            )
        return served

    def _infer(
        self,
        request: serde.InferRequestWire,
        context: grpc.ServicerContext,
        lease: RequestLease,
        served: ServedModel | None = None,
        stream: bool = False,
    ) -> bytes:
        """One ModelInfer call (request read, response serialized; ``stream``: as a
        ModelStreamInferResponse); raises Abort for every refusal.

        ``served``: the model the request names, if the caller looked it up. Each decoded tensor is
        taken from the in-flight byte budget through ``lease`` before it is allocated; a request that
        times out while its batch runs leaves ``lease`` to that batch."""
        header = request.checked
        kept: _Route | None = None if header is None else header.verdicts.get("server")
        if kept is None or kept.served is not served:  # else its model and version were checked
            served, kept = self._model(request.model_name, request.model_version), None
        else:
            served = kept.served
        if self._profiles:  # arrivals of any model tell a probe the server is busy (load_of): only
            self._loads.arrived()  # a server with a profile reports a load
        batcher = self._batcher
        if batcher is None:
            raise Abort(grpc.StatusCode.UNAVAILABLE, "the server is not started; retry shortly")
        t0 = time.perf_counter()
        batcher.arriving()
        try:
            # a repeat of a header whose checks passed: its tensors are views of the message's bytes
            inputs = None if kept is None else header.inputs(request.raw, self.config.max_decoded_bytes)
            if kept is not None and inputs is not None:
                route, request_id, facts = kept, request.request_id, header.template
            else:
                route, data = self._parsed(request, served, lease)
                inputs, request_id, facts = data.inputs, data.request_id, data
            tail, build_s, run = route.tail()
            writable = tail.writes_inputs and served.on_cpu  # else a copy is made anyway
            cpu = served.on_cpu  # a CPU tail's inputs are aligned as torch's own (from_numpy)
            bf16 = facts.bfloat16
            take = lease.take  # a copy of a view of the message is taken from the budget first
            tensors = [
                from_numpy(
                    inputs[n], bfloat16=n in bf16, writable=writable, aligned=cpu, reserve=take, name=n
                )
                for n in tail.inputs
            ]
            key, rows = route.key_and_rows(tail, inputs, bf16)
            job = Job(
                key, tensors, rows, run, is_active=context.is_active, label=served.name,
                alone=not served.batchable,  # its rows depend on each other: never batched
            )  # fmt: skip
            decode_s = time.perf_counter() - t0
        except BaseException:
            batcher.arrived()  # refused before it was queued
            raise
        series = self.metrics.of(served.name)
        # measured against the profile when its tensors have the shapes the profile timed (not other
        # rows or image sizes), and not a fresh tail's first run
        predicted_ms = None if build_s else route.predicted_ms(tail, inputs)
        try:
            result = self._ran(batcher, job, context, served, inputs, lease, series, predicted_ms)
        except Abort:
            series.decoded(decode_s)
            raise
        sent = 0
        try:
            response = self._answer(
                served, request_id, facts.requested_outputs, result, decode_s, build_s, stream
            )
            sent = len(response)
        finally:  # (an answer that cannot be sent still ran)
            series.served(decode_s, result.queue_s, result.compute_s, sent, 1 if result.inline else 0)
        return response

    def _parsed(
        self, request: serde.InferRequestWire, served: ServedModel, lease: RequestLease
    ) -> tuple[_Route, serde.InferRequestData]:
        """``request`` parsed and checked against ``served`` (Abort when it is refused), and its route,
        kept with its header (if it has one) for the repeats: ``_infer`` takes a route it finds
        there without parsing or checking again."""
        try:
            data = self._requests.parse(
                request, max_decoded_bytes=self.config.max_decoded_bytes, reserve=lease.take
            )
        except (WireError, CodecError) as exc:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        self._check_request(served, data)
        route = _Route(served, data)
        if data.header is not None:
            data.header.verdicts["server"] = route
        return route, data

    def _ran(
        self,
        batcher: Batcher,
        job: Job,
        context: grpc.ServicerContext,
        served: ServedModel,
        inputs: Mapping[str, np.ndarray],  # their shapes go in a failure's message
        lease: RequestLease,
        series: ModelSeries,
        predicted_ms: float | None,
    ) -> BatchResult:
        """``job`` run at once on this thread, or queued and awaited; every failure an Abort."""
        try:
            ran = batcher.run(job)
            if isinstance(ran, BatchResult):  # it ran alone, on this thread
                if predicted_ms is not None:  # (late or not: the server's pace counts every run)
                    self._loads.observe(
                        served.name, predicted_ms, ran.queue_s * 1000.0, ran.compute_s * 1000.0
                    )
                if _past(context):  # past the deadline: nobody takes the answer, but a batch ran
                    series.batch(1)
                    raise self._late(served)
                return ran
            if predicted_ms is not None:
                ran.add_done_callback(partial(self._measure_pace, served.name, predicted_ms))
            return self._await(job, context, served, lease)
        except Abort:
            raise
        except futures.CancelledError:
            if _past(context):
                raise self._late(served) from None
            raise Abort(grpc.StatusCode.CANCELLED, "the request was cancelled before it ran") from None
        except Exception as exc:  # (the shapes are for its message: worked out only here)
            raise compute_error(exc, served, {n: list(a.shape) for n, a in inputs.items()}) from exc

    def _answer(
        self, served: ServedModel, request_id: str, wanted: tuple[str, ...], result: BatchResult,
        decode_s: float, build_s: float, stream: bool = False,
    ) -> bytes:  # fmt: skip
        """The serialized answer to request ``request_id`` with its batch's ``result``, of the outputs
        ``wanted`` (all when empty; ``stream``: as a ModelStreamInferResponse); Abort when too big to
        send."""
        outputs = {}
        bf16 = set()
        for name, tensor in zip(served.output_names, result.outputs, strict=True):
            if wanted and name not in wanted:
                continue
            outputs[name], is_bf16 = to_numpy(tensor)
            if is_bf16:
                bf16.add(name)
        parameters: dict[str, serde.ParamValue] = {
            serde.PARAM_QUEUE_MS: result.queue_s * 1000.0,
            serde.PARAM_COMPUTE_MS: result.compute_s * 1000.0,
            serde.PARAM_DECODE_MS: decode_s * 1000.0,
            serde.PARAM_BATCH_SIZE: result.batch_size,
        }
        if build_s:
            parameters[serde.PARAM_TAIL_BUILD_MS] = build_s * 1000.0
        response = self._answers.encode(
            served.name, request_id, outputs, parameters=parameters, bfloat16=bf16, model_version=VERSION,
            stream=stream,
        )  # fmt: skip
        if len(response) > self.config.max_message_bytes:  # checked here: gRPC's own cap is wider
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the answer of model {served.name!r} is {len(response)} bytes, over the server's "
                f"max_message_bytes={self.config.max_message_bytes}; send a smaller batch, request fewer "
                f"outputs, or start the server with a higher --max-message-mib",
            )
        return response

    def _check_request(self, served: ServedModel, data: serde.InferRequestData) -> None:
        """Refuse a request ``served`` cannot run: another model's fingerprint or weights, unknown
        input or output names, inputs of the wrong datatype or rank (raises Abort)."""
        full = set(data.inputs) == set(served.input_names)
        if data.fingerprint is not None and data.fingerprint != served.fingerprint:
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the client split a model with fingerprint {data.fingerprint[:12]!r}, but this server's "
                f"{served.name!r} has fingerprint {served.fingerprint[:12]}; use the same model "
                f"definition on both sides (GetModelInfo gives the server's)",
            )
        if data.weights is not None and data.weights != served.weights:
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the client computes with weights {data.weights[:12]!r}, but this server's "
                f"{served.name!r} has weights {served.weights[:12]!r} (same architecture, different "
                f"parameter values: the split would compute garbage); load the same weights file on "
                f"both ends (GetModelInfo gives the server's weights digest)",
            )
        if not full and data.fingerprint is None:  # a stock v2 client's, with the wrong names
            missing = [n for n in served.input_names if n not in data.inputs]
            unknown = sorted(n for n in data.inputs if n not in served.input_names)
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {served.name!r} takes input(s) {list(served.input_names)} (see ModelMetadata); "
                f"the request has [{shown_names(sorted(data.inputs))}] (missing "
                f"[{shown_names(missing)}], unknown [{shown_names(unknown)}]). A split request, whose "
                f"inputs are boundary tensors named by their nodes, must carry parameter "
                f"{serde.PARAM_FINGERPRINT}",
            )
        unknown_out = [n for n in data.requested_outputs if n not in served.output_names]
        if unknown_out:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {served.name!r} has outputs {list(served.output_names)}, not "
                f"[{shown_names(unknown_out)}]",
            )
        try:
            served.check_inputs(data.inputs, data.bfloat16)
        except WireError as exc:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc

    def _await(
        self, job: Job, context: grpc.ServicerContext, served: ServedModel, lease: RequestLease
    ) -> BatchResult:
        """The result of ``job``, queued: Abort DEADLINE_EXCEEDED when the request's deadline passes
        first; the batch's errors raised as they are."""
        remaining = context.time_remaining()
        timeout = None if remaining is None or remaining > 1e8 else max(0.0, remaining)
        future = job.future
        try:
            result = future.result(timeout=timeout)
        except futures.TimeoutError:
            batcher = self._batcher
            if batcher is None or not batcher.withdraw(job):  # a batch is running it: its tensors are
                lease.release_when_done(future)  # in use, so its slot and bytes stay taken until then
            raise self._late(served) from None
        if _past(context):  # it ran past the deadline: nobody takes the answer
            raise self._late(served)
        return result

    @staticmethod
    def _late(served: ServedModel) -> Abort:
        return Abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"model {served.name!r} did not finish within the request's deadline; allow more time",
        )


class _Route:
    """What the server concluded from a request's small fields (the model, the inputs' names, dtypes
    and shapes) once it checked them: which tail to run, and what its jobs share. A repeat header
    keeps it in its verdicts, so the next request with it skips working it out again."""

    __slots__ = ("served", "provided", "_tail", "_key", "_paced")

    def __init__(self, served: ServedModel, data: serde.InferRequestData) -> None:
        self.served = served
        self.provided = frozenset(data.inputs)
        self._tail: tuple[Tail, Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]] | None = None
        self._key: tuple[Tail, Any, int] | None = None
        self._paced: tuple[Tail, float | None] | None = None

    def tail(self) -> tuple[Tail, float, Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]]:
        """The tail these inputs run (:meth:`ServedModel.tail_built`: with the seconds this call spent
        building it; asked every time, so that the model's cache keeps the tails in use), and what
        runs it on them."""
        try:
            tail, build_s = self.served.tail_built(self.provided)
        except WireError as exc:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        kept = self._tail
        if kept is not None and kept[0] is tail:
            return tail, build_s, kept[1]
        run = partial(self.served.run, tail)
        self._tail = (tail, run)
        return tail, build_s, run

    def key_and_rows(
        self, tail: Tail, inputs: Mapping[str, np.ndarray], bfloat16: frozenset[str]
    ) -> tuple[Any, int]:
        """The batcher's key of a job of ``tail`` on ``inputs`` (jobs batch when their model, inputs
        and each input's dtype and shape past the batch dimension agree), and its rows."""
        kept = self._key
        if kept is not None and kept[0] is tail:
            return kept[1], kept[2]
        first = inputs[tail.inputs[0]]
        key = (
            self.served.name,
            tail.inputs,
            tuple((inputs[n].dtype, inputs[n].shape[1:], n in bfloat16) for n in tail.inputs),
        )
        self._key = (tail, key, int(first.shape[0]))
        return key, int(first.shape[0])

    def predicted_ms(self, tail: Tail, inputs: Mapping[str, np.ndarray]) -> float | None:
        """The profile's time for ``tail`` when its inputs have the shapes the profile timed (not
        other rows or image sizes); None otherwise, or without a profile."""
        kept = self._paced
        if kept is not None and kept[0] is tail:
            return kept[1]
        predicted = None
        if tail.profiled is not None:
            shapes, ms = tail.profiled
            if shapes == tuple(tuple(inputs[n].shape) for n in tail.inputs):
                predicted = ms
        self._paced = (tail, predicted)
        return predicted


def _past(context: grpc.ServicerContext) -> bool:
    """The request's deadline has passed."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0
