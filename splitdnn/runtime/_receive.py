"""A time limit on a call's request message: calls that never finish sending give their thread back.

gRPC's synchronous server hands a call to a worker thread as soon as the call's headers arrive (and
a worker is free), and for a unary method that thread then waits for the request message with no
limit but the call's own deadline (which the client chooses, or leaves out). A client that opens
calls and sends their messages slowly, or never, holds one worker per call: enough of them and no
request is served until the connections age out (``max_connection_age_s``, then ``grace_s``).

So every method is registered here as one that receives a stream (the bytes on the wire are the
same: a unary client sends one message and half-closes): its handler starts before the message
arrives, registers the call with a :class:`ReceiveWatch`, and takes the one message. The watch's
thread ends every call whose message has not arrived within ``receive_timeout_s`` of its handler's
start with DEADLINE_EXCEEDED and a message saying so; the waiting handler then returns its worker.
Whichever of the watch and the handler takes the call's entry first decides: a message arriving as
the watch ends its call is not served (the call is counted and answered as timed out, once).

This bounds how long one call holds a worker, not how many a client may open. ``max_per_peer``
bounds that too: at most that many calls from one peer address may wait for their message at once,
and one more is answered RESOURCE_EXHAUSTED at once, before it takes a worker for long. Off by
default: clients behind one NAT or proxy share an address, and a proxy in front (request timeouts,
connections per client) is the remedy there (README, "What the limits leave unbounded").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import grpc

__all__ = ["ReceiveWatch", "StreamWatch"]

log = logging.getLogger(__name__)

_POLL_S = 1.0  # the watch looks at least this often (sooner for a shorter timeout)
_MIN_POLL_S = 0.01
_WARN_EVERY_S = 60.0  # at most one warning per minute about calls ended (a stalled client may open many)


def peer_host(peer: str) -> str:
    """The address part of gRPC's ``context.peer()``: ``ipv4:10.0.0.7:5123`` -> ``10.0.0.7``;
    ``ipv6:%5B::1%5D:5123`` (gRPC percent-encodes the brackets; a zone id is dropped) -> ``::1``;
    anything else whole (gRPC names every Unix-socket peer just ``unix:``: they share one address)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        rest = unquote(rest)
        if rest.startswith("[") and "]" in rest:
            return rest[1 : rest.index("]")].partition("%")[0]
        return rest
    return peer


class ReceiveWatch:
    """Ends calls whose request message has not arrived within ``timeout_s`` (None: no limit), and
    refuses a peer's call past ``max_per_peer`` calls of that peer waiting for theirs (None: no cap).

    The cap counts per peer and per ``pool_of(method)`` (the server passes which thread pool serves
    the method, so that a client's uploads in flight never refuse its health checks); by default all
    methods are one pool. ``on_timeout(method)`` is called for each call ended and
    ``on_refused(method)`` for each refused (metrics); ``method`` is the full method name.
    Thread-safe; :meth:`start` and :meth:`stop` bracket the server's life.
    """

    _ENDED = "call(s)"  # what the watch ends, in its warning

    def __init__(
        self,
        timeout_s: float | None,
        on_timeout: Callable[[str], None] | None = None,
        *,
        max_per_peer: int | None = None,
        on_refused: Callable[[str], None] | None = None,
        pool_of: Callable[[str], str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_per_peer = max_per_peer
        self._on_timeout = on_timeout
        self._on_refused = on_refused
        self._pool_of = pool_of
        # calls waiting for their message, by (peer address, pool)
        self._per_peer: dict[tuple[str, str], int] = {}
        self._waiting: dict[grpc.ServicerContext, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended_since_warning = 0
        self._warned_at = -math.inf

    def start(self) -> None:
        if self.timeout_s is None or self._thread is not None:
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._watch, name="splitdnn-receive-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    @property
    def waiting(self) -> int:
        """Calls whose handler waits for their request message now."""
        return len(self._waiting)

    def receive(self, requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Any:
        """The call's one request message, within the time limit (else gRPC raises and the call ends);
        RESOURCE_EXHAUSTED at once if its peer already has ``max_per_peer`` calls waiting."""
        if self.max_per_peer is None:
            return self._receive(requests, context, method)
        key = self._admit(context, method)
        try:
            return self._receive(requests, context, method)
        finally:
            with self._lock:
                left = self._per_peer.pop(key) - 1
                if left:
                    self._per_peer[key] = left

    def _admit(self, context: grpc.ServicerContext, method: str) -> tuple[str, str]:
        assert self.max_per_peer is not None
        peer = peer_host(context.peer())
        key = (peer, self._pool_of(method) if self._pool_of is not None else "")
        with self._lock:
            waiting = self._per_peer.get(key, 0)
            if waiting < self.max_per_peer:
                self._per_peer[key] = waiting + 1
                return key
        if self._on_refused is not None:
            self._on_refused(method)
        log.debug("%s from %s refused: %d call(s) of that peer wait for their message", method, peer, waiting)
        which = f" for {key[1]}" if key[1] else ""
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this client's address ({peer}) already has {waiting} call(s){which} open that have not sent "
            f"their request message, the most one address may have (max_receiving_per_peer="
            f"{self.max_per_peer}); send each call's message at once, or ask the operator for a higher "
            f"--max-receiving-per-peer",
        )
        raise AssertionError("context.abort returned")  # it raises; for type checkers

    def _receive(self, requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Any:
        if self.timeout_s is None:
            return self._one(requests, context, method)
        with self._lock:
            self._waiting[context] = (time.monotonic() + self.timeout_s, method)
        try:
            message = self._one(requests, context, method)
        finally:
            with self._lock:
                mine = self._waiting.pop(context, None) is not None
        if not mine:  # the watch took the call as its message arrived: it is timed out, not served
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, self._message())
        return message

    @staticmethod
    def _one(requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Any:
        try:
            return next(requests)
        except StopIteration:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method} takes exactly one request message, and the call closed without sending one; "
                f"send exactly one",
            )

    def _message(self) -> str:
        return (
            f"the server received no complete request message within {self.timeout_s:g} s of starting "
            f"to handle the call (its receive timeout); send the message at once, over a faster link, "
            f"or ask the operator for a longer --receive-timeout-s"
        )

    def _watch(self) -> None:
        assert self.timeout_s is not None
        poll = max(_MIN_POLL_S, min(_POLL_S, self.timeout_s / 4))
        wait = poll
        while not self._stopped.wait(wait):
            now = time.monotonic()
            with self._lock:
                overdue = [(ctx, method) for ctx, (due, method) in self._waiting.items() if due <= now]
                for ctx, _ in overdue:
                    del self._waiting[ctx]
                first_due = min((due for due, _ in self._waiting.values()), default=None)
            for ctx, method in overdue:
                try:
                    self._end(ctx, method)
                except Exception:  # noqa: BLE001 - the watch must outlive any one call
                    log.exception("ending %s after its receive timeout failed", method)
            wait = poll if first_due is None else min(poll, max(0.0, first_due - time.monotonic()))

    def _end(self, context: grpc.ServicerContext, method: str) -> None:
        log.debug("%s: ended, no request message within %g s", method, self.timeout_s)
        # counted before the cancel: the client of a call that never sent its message sees the count
        # when it sees the status (one whose message arrives as it is ended may hear first, from its handler)
        try:
            if self._on_timeout is not None:
                self._on_timeout(method)
        finally:
            _cancel(context, grpc.StatusCode.DEADLINE_EXCEEDED, self._message())
        self._ended_since_warning += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            log.warning(
                "%d %s ended without their request message after %g s (slow or stalled clients; see "
                "splitdnn_receive_timeouts_total)",
                self._ended_since_warning,
                self._ENDED,
                self.timeout_s,
            )
            self._warned_at, self._ended_since_warning = now, 0


class StreamWatch(ReceiveWatch):
    """:class:`ReceiveWatch` for ModelStreamInfer streams, which take many messages: each stream holds
    a handler thread while open, so one whose next message has not fully arrived within ``timeout_s``
    of its last answer (an idle or stalled client) is ended with DEADLINE_EXCEEDED, and :meth:`close`
    ends every stream waiting for a message at a shutdown (and any that waits from then on).

    Which of the watch, a close and the stream takes the stream's entry first decides, as for
    :class:`ReceiveWatch`: a message that arrives as the stream is ended is not served.
    """

    _ENDED = "idle stream(s)"

    def __init__(self, timeout_s: float | None, on_timeout: Callable[[str], None] | None = None) -> None:
        super().__init__(timeout_s, on_timeout)
        self._closing: str | None = None  # set by close(): why every waiting stream ends

    def next_message(self, requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Any | None:
        """The stream's next request message, or None when the client has closed its side."""
        due = math.inf if self.timeout_s is None else time.monotonic() + self.timeout_s
        with self._lock:
            closing = self._closing
            if closing is None:
                self._waiting[context] = (due, method)
        if closing is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, closing)
        try:
            message = next(requests, None)
        finally:
            with self._lock:
                mine = self._waiting.pop(context, None) is not None
                closing = self._closing
        if not mine:  # close() or the watch ended the stream as its message arrived: not served
            if closing is not None:
                context.abort(grpc.StatusCode.UNAVAILABLE, closing)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, self._message())
        return message

    @property
    def closing(self) -> bool:
        """:meth:`close` was called: streams end when they next wait for a message."""
        return self._closing is not None

    def close(self, message: str) -> None:
        """End every stream waiting for its next message with UNAVAILABLE and ``message``; streams
        that come to wait later end the same way at once. Streams working on a message are not
        touched: they answer it, and end when they next wait."""
        with self._lock:
            self._closing = message
            waiting = list(self._waiting)
            self._waiting.clear()
        for context in waiting:
            _cancel(context, grpc.StatusCode.UNAVAILABLE, message)

    def _message(self) -> str:
        return (
            f"the stream sent no complete request message within {self.timeout_s:g} s of its last "
            f"answer (the server's stream idle timeout), and was ended to free its handler thread; open "
            f"a new stream when there is more to send, or ask the operator for a longer "
            f"--stream-idle-timeout-s"
        )


def _cancel(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """End the call from another thread, with ``code`` and ``message`` for the client.

    gRPC Python's public ``cancel()`` ends it as CANCELLED, which a client reads as "the server went
    away"; the call object under the context can end it with a status of our choosing (gRPC core's
    cancel-with-status, safe from any thread). Where that is missing (another gRPC version), the
    public cancel still frees the worker."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        call.cancel(code.value[0], message)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        log.debug("gRPC's call object cannot be cancelled with a status here: cancelled plainly")
        context.cancel()
