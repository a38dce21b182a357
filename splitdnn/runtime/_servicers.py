"""The tail server's gRPC face: the servicers, the token check, and exceptions -> status codes (grpc).

Split out of :mod:`splitdnn.runtime.server`, which owns the state (models, batcher, limits, metrics)
and the request logic (``TailServer._infer``); the servicers here only translate: a refusal is an
:class:`Abort` carrying its status and message, an exception from running a tail becomes the status
its request deserves (:func:`compute_error`), and anything else is INTERNAL with what failed, never
grpc's bare UNKNOWN. ``Probe`` answers at once, without a model or a concurrency slot, so that its
wall time is network time.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
import torch
from grpc_health.v1 import health

import splitdnn
from splitdnn import codec
from splitdnn.errors import SplitDNNError, WireError, first_line
from splitdnn.runtime import serde
from splitdnn.runtime._batcher import BatcherStopped
from splitdnn.runtime._metrics import UNKNOWN_MODEL, ServerMetrics
from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc
from splitdnn.runtime._proto import splitdnn_pb2_grpc as sd_grpc
from splitdnn.runtime._receive import ReceiveWatch, peer_host
from splitdnn.runtime._tail import ServedModel

if TYPE_CHECKING:
    from splitdnn.runtime.server import TailServer

__all__ = [
    "HEALTH_PREFIX",
    "PLATFORM",
    "STREAMS_STOPPING",
    "VERSION",
    "Abort",
    "InferenceServicer",
    "InflightBytes",
    "RequestLease",
    "SplitServicer",
    "TokenInterceptor",
    "add_inference_servicer",
    "add_servicer",
    "compute_error",
]

log = logging.getLogger(__name__)

PLATFORM = "splitdnn_torch"  # v2 ModelMetadata.platform
VERSION = "1"  # the one version of every served model; "" also selects it
HEALTH_PREFIX = "/grpc.health.v1.Health/"  # reachable without the token (load balancer probes)
#: how a ModelStreamInfer stream ends when the server stops
STREAMS_STOPPING = "the server is shutting down; open a stream to another replica, or call ModelInfer there"


# --------------------------------------------------------------------------------------------------
# errors -> statuses


class Abort(Exception):
    """A request ends with this status and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InflightBytes:
    """The server-wide budget of bytes that requests in flight hold (``ServerConfig.max_inflight_bytes``).

    Each ModelInfer request takes its message's size when it starts and the size of every tensor it
    decodes into new memory before decoding it, and gives it all back when it has been answered
    (:class:`RequestLease`). Past the limit a request is refused with RESOURCE_EXHAUSTED (transient:
    clients back off and retry or run locally), so many requests that each pass ``max_decoded_bytes``
    (say, small zstd frames of large zero tensors) cannot together decode more than the server can hold.

    It also keeps the ``max_concurrency`` slots (``slots``): a request takes one as it starts, with its
    message's bytes, under the same lock, and gives both back when its lease ends.
    """

    def __init__(self, limit: int, slots: int) -> None:
        self.limit = limit
        self.slots = slots
        self.used = 0
        self.requests = 0  # requests holding a lease now (the in_flight gauge)
        self._lock = threading.Lock()

    def enter(self, nbytes: int) -> None:
        """A request starts: a slot and its message's ``nbytes`` (Abort RESOURCE_EXHAUSTED when all
        slots are taken or the bytes are not there)."""
        with self._lock:
            if self.requests < self.slots and self.used + nbytes <= self.limit:
                self.requests += 1
                self.used += nbytes
                return
            used, full = self.used, self.requests >= self.slots
        if full:
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server already has max_concurrency={self.slots} requests in flight; retry with "
                f"backoff, or start it with a higher --max-concurrency",
            )
        raise self._over("the request's message", nbytes, used)

    def take(self, nbytes: int, what: str) -> None:
        with self._lock:
            used = self.used
            if used + nbytes <= self.limit:
                self.used = used + nbytes
                return
        raise self._over(what, nbytes, used)

    def _over(self, what: str, nbytes: int, used: int) -> Abort:
        return Abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{what} needs {nbytes} bytes, but requests in flight already hold {used} of the server's "
            f"max_inflight_bytes={self.limit}; retry with backoff, or start the server with a higher "
            f"--max-inflight-mib",
        )

    def leave(self, lease: RequestLease) -> None:
        """``lease`` ends (once; later calls do nothing): its slot and bytes come back."""
        with self._lock:
            if lease.released:
                return
            lease.released = True
            self.used -= lease.held
            self.requests -= 1


class RequestLease:
    """What one ModelInfer request holds while the server works on it: a concurrency slot, a count in
    the ``in_flight`` gauge and its bytes of the in-flight budget (its message's from the start, more
    with :meth:`take`); made only when they are there (else Abort, RESOURCE_EXHAUSTED).

    Released once: when the handler returns, or -- for a request whose deadline passed while a batch
    was running it -- when that batch ends (:meth:`release_when_done`), because its tensors are in use
    until then; so ``max_concurrency`` and ``max_inflight_bytes`` bound what the server really holds.
    """

    __slots__ = ("_inflight", "held", "released", "_deferred")

    def __init__(self, inflight: InflightBytes, nbytes: int) -> None:
        inflight.enter(nbytes)
        self._inflight = inflight
        self.held = nbytes
        self.released = False  # (read and set under the budget's lock)
        self._deferred = False

    def take(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` more of the budget (``what`` names them if refused: Abort)."""
        self._inflight.take(nbytes, what)
        self.held += nbytes

    def release_when_done(self, future: Future[Any]) -> None:
        self._deferred = True
        future.add_done_callback(lambda _f: self._inflight.leave(self))

    def close(self) -> None:
        """The handler is done with the request: release now, unless a running batch still needs it."""
        if not self._deferred:
            self._inflight.leave(self)


def compute_error(exc: BaseException, served: ServedModel, shapes: Mapping[str, list[int]]) -> Abort:
    """Map an exception from running a tail to the status its request gets."""
    if isinstance(exc, WireError):
        return Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, BatcherStopped):
        return Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica")
    if isinstance(exc, torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError since 2.5, same class
        return Abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"model {served.name!r} ran out of device memory on inputs {dict(shapes)}; send a smaller batch",
        )
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)  # torch's CPU allocator
    ):
        return Abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"model {served.name!r} ran out of memory on inputs {dict(shapes)}; send a smaller batch",
        )
    if isinstance(exc, (RuntimeError, ValueError, IndexError, TypeError)) and not isinstance(
        exc, SplitDNNError
    ):
        # inputs were checked for names, dtypes and ranks: what is left is a shape the model rejects
        return Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model {served.name!r} rejected inputs of shape {dict(shapes)}: {first_line(exc)}; send the "
            f"tensors the model's head produces (the server traced it at input shape "
            f"{[list(s) for s in served.traced.input_shapes]})",
        )
    log.exception("tail of model %r failed", served.name, exc_info=exc)
    return Abort(grpc.StatusCode.INTERNAL, f"model {served.name!r} failed: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------------
# servicers


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the server's models."""

    def __init__(self, server: TailServer) -> None:
        self._s = server
        self._streams = 0  # ModelStreamInfer streams open now
        self._streams_of: dict[str, int] = {}  # ... by peer address (with max_streams_per_peer)
        self._streams_lock = threading.Lock()

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return serde.build_server_live(True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return serde.build_server_ready(self._s.ready)

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok = request.name in self._s._models and request.version in ("", VERSION) and self._s.ready
        return serde.build_model_ready(ok)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return serde.build_server_metadata("splitdnn", splitdnn.__version__, ("splitdnn.v1",))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            served = self._s._model(request.name, request.version)
        except Abort as a:
            context.abort(a.code, a.message)
        return serde.build_model_metadata(
            served.name,
            platform=PLATFORM,
            inputs=served.input_specs,
            outputs=served.output_specs,
            versions=(VERSION,),
        )

    def ModelInfer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Bytes in, bytes out (see :func:`add_inference_servicer`): the raw contents are never copied
        by protobuf; a request protobuf cannot parse is INVALID_ARGUMENT."""
        try:
            return self._serve(self._read(request), context)
        except Abort as a:
            context.abort(a.code, a.message)
        raise AssertionError("unreachable: context.abort raises")  # (for the type checker)

    def ModelStreamInfer(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """Triton's streaming ModelInfer, bytes in and out: each request message is served as a
        ModelInfer call would be, and answered in order with a ModelStreamInferResponse; a refused
        request gets its status and message as the answer's ``error_message`` ("INVALID_ARGUMENT:
        ...") and the stream stays open. Each open stream holds a handler thread, so at most
        ``max_streams`` are open at once, and one idle for ``stream_idle_timeout_s`` is ended."""
        s = self._s
        peer = self._open_stream(context)
        try:
            while True:
                request = s._stream_watch.next_message(requests, context, serde.MODEL_STREAM_INFER_METHOD)
                if request is None:  # the client closed its side: the stream ends, OK
                    return
                yield self._stream_answer(request, context)
                # answered; once the server stops taking calls (after a stop's drain_s), the stream
                # ends before it waits again
                if s._stream_watch.closing:
                    context.abort(grpc.StatusCode.UNAVAILABLE, STREAMS_STOPPING)
        finally:
            with self._streams_lock:
                self._streams -= 1
                if peer is not None:
                    left = self._streams_of.pop(peer) - 1
                    if left:
                        self._streams_of[peer] = left

    @property
    def streams_open(self) -> int:
        """ModelStreamInfer streams open now."""
        return self._streams

    def _open_stream(self, context: grpc.ServicerContext) -> str | None:
        """Take a stream slot (aborts when none is free); the peer address counted against
        ``max_streams_per_peer``, if that is set."""
        limit, per_peer = self._s.config.stream_limit, self._s.config.max_streams_per_peer
        if limit == 0:
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "this server takes no ModelStreamInfer streams (started with --max-streams 0); call "
                "ModelInfer once per request",
            )
        peer = None if per_peer is None else peer_host(context.peer())
        with self._streams_lock:
            open_now = self._streams
            of_peer = 0 if peer is None else self._streams_of.get(peer, 0)
            if open_now < limit and (per_peer is None or of_peer < per_peer):
                self._streams = open_now + 1
                if peer is not None:
                    self._streams_of[peer] = of_peer + 1
                return peer
        if open_now < limit:  # this client's share is taken
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client's address ({peer}) already has {of_peer} ModelStreamInfer streams open, the "
                f"most one address may have (max_streams_per_peer={per_peer}); call ModelInfer once per "
                f"request instead, or end a stream first",
            )
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server already has max_streams={limit} ModelStreamInfer streams open; call ModelInfer "
            f"once per request instead, retry the stream later, or ask the operator for a higher "
            f"--max-streams",
        )
        raise AssertionError("unreachable: context.abort raises")  # (for the type checker)

    def _stream_answer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """One stream request's answer: its response, or its error as ``CODE: message``."""
        wire = None
        try:
            wire = self._read(request)
            return self._serve(wire, context, stream=True)
        except Abort as a:
            name, request_id = ("", "") if wire is None else (wire.model_name, wire.id)
            return serde.encode_stream_error(f"{a.code.name}: {a.message}", name, request_id)

    def _read(self, request: bytes) -> serde.InferRequestWire:
        """The request's small fields (Abort INVALID_ARGUMENT when protobuf cannot parse it)."""
        s = self._s
        try:
            return s._requests.read(request)
        except WireError as exc:
            s.metrics.refused_unknown("INVALID_ARGUMENT", model_infer=True)
            log.debug("ModelInfer refused, INVALID_ARGUMENT: %s", exc)
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def _serve(
        self, wire: serde.InferRequestWire, context: grpc.ServicerContext, stream: bool = False
    ) -> bytes:
        """The serialized answer to ``wire`` (``stream``: a ModelStreamInferResponse), counted in the
        metrics; Abort with the status of a refusal, INTERNAL with what failed for a bug."""
        s = self._s
        served = s._models.get(wire.model_name)
        label = served.name if served is not None else UNKNOWN_MODEL
        s.metrics.of(label).arrived(wire.nbytes)
        lease = None
        try:
            lease = RequestLease(s._inflight, wire.nbytes)
            return s._infer(wire, context, lease, served, stream)
        except Abort as a:
            s.metrics.failures.labels(label, a.code.name).inc()
            log.debug("ModelInfer for model %r refused, %s: %s", label, a.code.name, a.message)
            raise
        except Exception as exc:  # a bug: say what failed instead of grpc's bare UNKNOWN
            log.exception("ModelInfer for model %r failed", label)
            s.metrics.failures.labels(label, "INTERNAL").inc()
            raise Abort(
                grpc.StatusCode.INTERNAL, f"the server failed: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        finally:
            if lease is not None:
                lease.close()


class _Registration:
    """Stands in for the grpc server while the generated code registers a servicer: keeps the handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # rebuilt from the method handlers below

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers[service] = dict(handlers)


def add_servicer(
    register: Callable[[Any, Any], None],
    servicer: Any,
    server: grpc.Server,
    watch: ReceiveWatch,
    bytes_level: Mapping[str, Callable[[bytes, grpc.ServicerContext], bytes]] | None = None,
    thread_pool: ThreadPoolExecutor | None = None,
    streams: Mapping[str, Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]] | None = None,
) -> None:
    """Register ``servicer`` with its generated ``register`` function, the requests received and
    parsed here.

    Each method is registered as receiving a stream and takes its one message through ``watch``,
    which ends calls whose message does not arrive in time (:mod:`splitdnn.runtime._receive`): gRPC
    holds a worker thread from a call's headers on. gRPC answers a request its deserializer cannot
    parse with INTERNAL and logs a traceback (a bug, by our statuses, and a way to flood the log);
    here each handler parses its own request and answers INVALID_ARGUMENT. ``bytes_level`` replaces
    handlers by bytes-in, bytes-out ones (ModelInfer: its raw contents stay views, see
    :mod:`splitdnn.runtime.serde`), and ``streams`` by bytes-level streaming ones, which take their
    messages themselves (ModelStreamInfer: through the server's StreamWatch). ``thread_pool``: where
    the parsed handlers run instead of the server's pool (``bytes_level`` and ``streams`` ones stay
    there), so that health checks and metadata are answered while ModelInfer calls fill the server's
    pool.
    """
    record = _Registration()
    register(servicer, record)
    for service, handlers in record.handlers.items():
        handlers = {name: _parsing_here(service, name, h, watch, thread_pool) for name, h in handlers.items()}
        for name, behavior in (bytes_level or {}).items():
            handlers[name] = _received_here(f"/{service}/{name}", behavior, watch)
        for name, stream in (streams or {}).items():  # bytes in and out; they read their own messages
            handlers[name] = grpc.stream_stream_rpc_method_handler(stream)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)


def _received_here(
    method: str, behavior: Callable[[bytes, grpc.ServicerContext], bytes], watch: ReceiveWatch
) -> grpc.RpcMethodHandler:
    """A bytes-in, bytes-out unary ``behavior`` whose message arrives through ``watch``."""

    def answer(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return behavior(watch.receive(requests, context, method), context)

    return grpc.stream_unary_rpc_method_handler(answer)


def _parsing_here(
    service: str,
    method: str,
    handler: grpc.RpcMethodHandler,
    watch: ReceiveWatch,
    thread_pool: ThreadPoolExecutor | None,
) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer
    if parse is None or handler.request_streaming:
        return handler
    full_name = f"/{service}/{method}"

    def request(requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        data = watch.receive(requests, context, full_name)
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the request is malformed
            log.debug("%s/%s: a request protobuf cannot parse: %s", service, method, exc)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request ({len(data)} bytes) is not a valid {service}.{method} message; send the "
                f"service's request message",
            )

    if handler.response_streaming:
        streams = handler.unary_stream

        def stream(requests: Iterator[bytes], context: grpc.ServicerContext, *callback: Any) -> Any:
            return streams(request(requests, context), context, *callback)

        # gRPC's non-blocking streams (health Watch): it passes a send callback to a behavior so marked
        for attr in ("experimental_non_blocking", "experimental_thread_pool"):
            if hasattr(streams, attr):
                setattr(stream, attr, getattr(streams, attr))
        if thread_pool is not None:
            stream.experimental_thread_pool = thread_pool  # type: ignore[attr-defined]
        return grpc.stream_stream_rpc_method_handler(stream, response_serializer=handler.response_serializer)
    answers = handler.unary_unary

    def answer(requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        return answers(request(requests, context), context)

    if thread_pool is not None:
        answer.experimental_thread_pool = thread_pool  # type: ignore[attr-defined]  # read by gRPC's server
    return grpc.stream_unary_rpc_method_handler(answer, response_serializer=handler.response_serializer)


def add_inference_servicer(
    servicer: InferenceServicer,
    server: grpc.Server,
    watch: ReceiveWatch,
    thread_pool: ThreadPoolExecutor | None = None,
) -> None:
    """inference.GRPCInferenceService with ModelInfer bytes-level (see :func:`add_servicer`).

    Its handler has no (de)serializers: the servicer gets the request's bytes and answers bytes, and
    ``serde`` converts them with the raw contents as views (one copy of each tensor per direction
    instead of three). Stock clients see the same protocol: the bytes are the same messages.
    """
    add_servicer(
        v2_grpc.add_GRPCInferenceServiceServicer_to_server,
        servicer,
        server,
        watch,
        {"ModelInfer": servicer.ModelInfer},
        thread_pool=thread_pool,
        streams={"ModelStreamInfer": servicer.ModelStreamInfer},
    )


_MAX_MODEL_NAME = 1024  # characters of a probe's model name worth looking up


class SplitServicer(sd_grpc.SplitServiceServicer):
    """splitdnn.v1.SplitService: what v2 has no message for."""

    def __init__(self, server: TailServer) -> None:
        self._s = server
        self._info: dict[tuple[str, tuple[str, ...]], Any] = {}

    def GetModelInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        s = self._s
        try:
            served = s._model(request.name, "")
        except Abort as a:
            context.abort(a.code, a.message)
        # built once per model (and set of codecs, which a process may extend): serializing the
        # profile takes ~20 ms for ResNet-50, holding the interpreter lock that the requests in
        # flight need, every time a client connects
        key = (served.name, tuple(codec.known_codecs()))
        info = self._info.get(key)
        if info is None:
            info = self._info[key] = serde.build_model_info(
                served.name,
                served.fingerprint,
                s._profiles.get(served.name),
                inputs=served.input_names,
                codecs=key[1],
                max_message_bytes=s.config.max_message_bytes,
                max_decoded_bytes=s.config.max_decoded_bytes,
                max_batch_size=s.config.max_batch_size,
                weights=served.weights,
            )
        return info

    def Probe(self, request: Any, context: grpc.ServicerContext) -> Any:
        # no slot, no model run: the answer must leave at once so the call's wall time is network time
        # (the message size cap of the server already bounds the payload); the asked model's load is
        # a few counters read under a lock (a name over _MAX_MODEL_NAME characters is not looked up)
        model = serde.probe_model(request)
        load = self._s.load_of(model) if 0 < len(model) <= _MAX_MODEL_NAME else None
        return serde.build_probe_response(serde.parse_probe_request(request), load)


class ShutdownHealth(health.HealthServicer):
    """grpc's health servicer, whose Watch streams a stop can end (:meth:`end_watches`)."""

    def __init__(self) -> None:
        self._streams: set[Callable[[Any], None]] = set()
        self._streams_lock = threading.Lock()
        super().__init__()

    def Watch(self, request: Any, context: grpc.ServicerContext, send_response_callback: Any = None) -> Any:
        if send_response_callback is not None:  # gRPC's non-blocking streams (how the server runs it)
            with self._streams_lock:
                self._streams.add(send_response_callback)
            context.add_callback(lambda: self._forget(send_response_callback))
        return super().Watch(request, context, send_response_callback)

    def _forget(self, callback: Callable[[Any], None]) -> bool:
        with self._streams_lock:
            if callback not in self._streams:
                return False
            self._streams.discard(callback)
            return True

    def end_watches(self) -> None:
        """End every open Watch stream with status OK (after the NOT_SERVING a shutdown sent)."""
        with self._streams_lock:
            streams = list(self._streams)
        for send in streams:
            if self._forget(send):  # once: the stream's own close callback may race this
                send(None)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call without ``authorization: Bearer <token>`` (health checks excepted)."""

    def __init__(self, token: str, metrics: ServerMetrics | None = None) -> None:
        self._expected = token.encode()
        self._metrics = metrics

        def deny(requests: Any, context: grpc.ServicerContext) -> Any:  # answers before the message
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: send metadata 'authorization: Bearer <token>' once, with "
                "the server's token",
            )

        # receives a stream, which it never reads: a unary handler would wait for the message first
        self._deny = grpc.stream_unary_rpc_method_handler(deny)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method  # type: ignore[attr-defined]
        if method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        sent = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]  # type: ignore[attr-defined]
        if len(sent) == 1:  # several: one call must not try several tokens
            got = sent[0].encode() if isinstance(sent[0], str) else bytes(sent[0])
            scheme, _, credentials = got.partition(b" ")
            # the scheme is case-insensitive (RFC 7235); the token is compared as sent, in constant time
            if scheme.lower() == b"bearer" and hmac.compare_digest(credentials, self._expected):
                return continuation(handler_call_details)
        if self._metrics is not None:  # refused before any servicer (and any model name) is read
            self._metrics.refused_unknown("UNAUTHENTICATED", model_infer=method == serde.MODEL_INFER_METHOD)
        return self._deny
