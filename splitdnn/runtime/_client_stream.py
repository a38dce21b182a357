"""ModelInfer over one open ModelStreamInfer stream: the edge client's requests without a call each (grpc).

A unary call costs its own set-up on both ends (headers, a server handler thread handed the call,
the call's end); on one open stream each request is one more message. ``SplitClient(stream=True)``
sends through :class:`InferStream`, which takes the same serialized requests as the unary
bytes-level ModelInfer and gives back the same serialized answers, so everything after the send is
unchanged. One request is on a stream at a time (answers come back in order, so none can be taken
for another's): a request sent while the stream is busy with another thread's, or while the server
refuses streams, goes as a unary call instead (:meth:`InferStream.send` answers None).

What can go wrong, and what the caller sees:

- the server refuses the request (its answer's ``error_message``, "CODE: message"): a
  :class:`StreamRefusal`, a ``grpc.RpcError`` with that code, as the unary call would raise; the
  stream stays open;
- no answer within the request's timeout: the stream is cancelled (an answer still coming would be
  taken for the next request's) and a :class:`StreamRefusal` with DEADLINE_EXCEEDED raised; the next
  request opens a new stream;
- the stream ends under the request (the server stopped, ended it as idle, the connection dropped or
  aged out): the stream is dropped and :meth:`send` answers None, so the request is sent as a unary
  call, with gRPC's retries and the caller's error handling (inference is idempotent: a request the
  server may have run is run again);
- the server takes no streams (UNIMPLEMENTED: ``--max-streams 0`` or a server without the RPC) or no
  more of them (RESOURCE_EXHAUSTED): None, and unary calls for a while (for good after UNIMPLEMENTED).

The deadline of a request on a stream is the client's own: a watch thread cancels the stream when
it passes (gRPC's deadlines are per call, and the stream has none).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from splitdnn.runtime import serde

__all__ = ["InferStream", "StreamRefusal"]

log = logging.getLogger(__name__)

#: after a server refused a stream for want of room (RESOURCE_EXHAUSTED), unary calls for this long
STREAM_BACKOFF_S = 30.0
#: the deadline watch thread ends after this long with no request armed (and waits at most this long)
_WATCH_IDLE_S = 30.0


class StreamRefusal(grpc.RpcError):
    """A request on a stream refused by the server, or not answered in time: its status code and
    message, read as a unary call's ``grpc.RpcError`` (``code()``, ``details()``)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_CODES = {c.name: c for c in grpc.StatusCode}


def refusal_of(error_message: str) -> StreamRefusal:
    """The refusal a stream answer's ``error_message`` says: splitdnn's server writes "CODE: message";
    any other server's text is UNKNOWN with the text as its details."""
    name, sep, details = error_message.partition(": ")
    code = _CODES.get(name) if sep else None
    if code is None or code is grpc.StatusCode.OK:
        return StreamRefusal(grpc.StatusCode.UNKNOWN, error_message)
    return StreamRefusal(code, details)


class _Open:
    """One open stream: its call, the queue its request iterator reads, and how many it answered."""

    __slots__ = ("call", "requests", "answered")

    def __init__(self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]]) -> None:
        self.requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.call: Any = channel.stream_stream(serde.MODEL_STREAM_INFER_METHOD)(
            self._sent(), metadata=tuple(metadata)
        )
        self.answered = 0

    def _sent(self) -> Iterator[bytes]:
        while True:
            request = self.requests.get()
            if request is None:  # the client's side is done
                return
            yield request

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


class InferStream:
    """Serialized ModelInfer requests over one ModelStreamInfer stream of ``channel`` (opened at the
    first request, again after it ended), with ``metadata`` (the token) sent at each opening.

    Thread-safe: one request at a time is on the stream; a concurrent one gets None from
    :meth:`send` and goes unary. :meth:`close` ends the stream for good.
    """

    def __init__(self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._channel = channel
        self._metadata = tuple(metadata)
        self._busy = threading.Lock()  # the one request on the stream
        self._open: _Open | None = None
        self._off_until = 0.0  # unary until then (inf: the server takes no streams)
        self.closed = False
        self.opened = 0  # streams opened (tests, diagnostics)
        self.unary_reasons: list[str] = []  # why requests went unary, the newest last (a few kept)
        # the deadline watch: cancels the stream when the request on it is overdue
        self._watch_lock = threading.Condition(threading.Lock())
        self._due = math.inf  # of the request on the stream
        self._wake_at = math.inf  # when the watch thread wakes by itself (inf: when notified)
        self._armed: _Open | None = None  # the stream a request waits on, while it waits
        self._expired: _Open | None = None  # the stream the watch cancelled for its deadline
        self._watch: threading.Thread | None = None

    def send(self, request: bytes, timeout: float) -> memoryview | None:
        """The serialized ModelInferResponse answering ``request`` (a view of the stream's message),
        or None: send it as a unary call instead (module docstring). Raises :class:`StreamRefusal`
        for a refusal or an answer not in ``timeout`` seconds, ``WireError`` for a malformed answer."""
        if not self._busy.acquire(blocking=False):
            return None
        try:
            if self.closed or time.monotonic() < self._off_until:
                return None
            return self._send(request, timeout)
        finally:
            self._busy.release()

    def _send(self, request: bytes, timeout: float) -> memoryview | None:
        stream = self._open
        if stream is None:
            stream = self._open = _Open(self._channel, self._metadata)
            self.opened += 1
        answered = False
        self._arm(stream, time.monotonic() + timeout)
        try:
            stream.requests.put(request)
            data = next(stream.call)
            answered = True
        except StopIteration:  # ended OK without an answer: only a stream closed under it
            self._unary("the stream ended without answering")
            return None
        except grpc.RpcError as exc:
            self._failed(stream, exc, timeout)
            return None
        finally:
            self._disarm()
            if not answered:  # (also for an exception of the caller's, e.g. KeyboardInterrupt: a
                self._drop(stream)  # request left unanswered on it would answer the next one)
        try:
            answer = serde.stream_answer(data)
        except Exception:
            self._drop(stream)  # what follows on it cannot be trusted either
            raise
        stream.answered += 1
        if answer.error:
            raise refusal_of(answer.error)
        return answer.response

    def _failed(self, stream: _Open, exc: grpc.RpcError, timeout: float) -> None:
        """After the stream failed under a request: raise what the caller must see, or return (unary)."""
        if self._expired is stream:
            raise StreamRefusal(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer on the stream within {timeout:.3g} s (the stream was cancelled)",
            ) from exc
        if self.closed:  # close() cancelled it under the request: not to be sent again
            raise StreamRefusal(grpc.StatusCode.CANCELLED, "the client was closed") from exc
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise exc  # a setting to fix: the unary call would be refused the same
        if stream.answered == 0 and code is grpc.StatusCode.UNIMPLEMENTED:
            self._off_until = math.inf
            log.info("the server takes no ModelInfer streams (%s); requests go as unary calls", details)
        elif stream.answered == 0 and code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            self._off_until = time.monotonic() + STREAM_BACKOFF_S
            log.info("the server has no room for another stream (%s); unary calls for %g s", details,
                     STREAM_BACKOFF_S)  # fmt: skip
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        self._unary(f"the stream ended: {name}: {details}")

    def _unary(self, why: str) -> None:
        log.debug("a request goes as a unary call: %s", why)
        self.unary_reasons = [*self.unary_reasons[-7:], why]

    def _drop(self, stream: _Open) -> None:
        if self._open is stream:
            self._open = None
        stream.close()

    def close(self) -> None:
        """End the stream and the watch now (a request on the stream raises CANCELLED); later
        requests go unary."""
        self.closed = True
        stream = self._open
        if stream is not None:
            stream.close()
        with self._watch_lock:
            self._watch_lock.notify()

    # -- the deadline watch ------------------------------------------------------------------------

    def _arm(self, stream: _Open, due: float) -> None:
        with self._watch_lock:
            self._due, self._armed = due, stream
            self._expired = None
            if self._watch is None:  # (the thread clears it, under this lock, as it ends)
                self._watch = threading.Thread(target=self._watch_deadlines, name="splitdnn-stream-watch",
                                               daemon=True)  # fmt: skip
                self._watch.start()
            elif due < self._wake_at:  # it sleeps past the new deadline: wake it to wait for that
                self._watch_lock.notify()

    def _disarm(self) -> None:
        with self._watch_lock:  # (so a deadline the watch has just read cannot cancel what follows)
            self._due, self._armed = math.inf, None

    def _watch_deadlines(self) -> None:
        """Cancel the armed stream at its request's deadline; ends with the client, or after
        ``_WATCH_IDLE_S`` with nothing armed (so an unclosed client's stream can be collected; the
        next request starts it again)."""
        with self._watch_lock:
            while not self.closed:
                left = self._due - time.monotonic()
                if left > 0:
                    idle = left == math.inf
                    self._wake_at = self._due
                    woken = self._watch_lock.wait(_WATCH_IDLE_S if idle else min(left, _WATCH_IDLE_S))
                    if idle and not woken and self._due == math.inf:
                        break
                    continue
                stream, self._due, self._armed = self._armed, math.inf, None
                if stream is not None:
                    self._expired = stream
                    stream.call.cancel()  # (safe from any thread; next() on it raises CANCELLED)
            self._wake_at = math.inf
            self._watch = None
