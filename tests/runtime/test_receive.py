"""ReceiveWatch on its own, with stand-ins for gRPC's call context (the server tests use real gRPC)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from splitdnn.runtime._receive import ReceiveWatch


class _Aborted(Exception):
    pass


class _Context:
    """What ReceiveWatch touches of gRPC's server context: abort, and the call object under it."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.status: tuple[Any, str] | None = None
        self._rpc_event = SimpleNamespace(call=SimpleNamespace(cancel=self._cancel_with))

    def _cancel_with(self, code: Any, details: str) -> None:
        self.status = (code, details)
        self.cancelled.set()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def _soon(predicate: Any) -> bool:
    """``predicate()`` within 5 s (the watch counts a call just after cancelling it)."""
    end = time.monotonic() + 5
    while not predicate() and time.monotonic() < end:
        time.sleep(0.01)
    return bool(predicate())


def _after(event: threading.Event, message: bytes) -> Iterator[bytes]:
    """One message, sent once ``event`` is set (or never: 10 s)."""
    if event.wait(10):
        yield message


def test_a_message_arriving_as_the_watch_ends_its_call_is_timed_out_not_served() -> None:
    """The watch took the call's entry, then the message arrived before its cancel did: the request
    was served and counted as timed out both."""
    ended: list[str] = []
    watch = ReceiveWatch(0.2, on_timeout=ended.append)
    watch.start()
    try:
        ctx = _Context()
        with pytest.raises(_Aborted) as info:  # the message comes as the watch cancels the call
            watch.receive(_after(ctx.cancelled, b"request"), ctx, "/s/M")  # type: ignore[arg-type]
        assert info.value.args[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no complete request message within 0.2 s" in info.value.args[1]
        assert _soon(lambda: ended == ["/s/M"]) and watch.waiting == 0
        # a message in time is served, and nothing is counted
        prompt = threading.Event()
        prompt.set()
        assert watch.receive(_after(prompt, b"ok"), _Context(), "/s/M") == b"ok"  # type: ignore[arg-type]
        assert ended == ["/s/M"]
    finally:
        watch.stop()


def test_the_watch_outlives_a_failure_while_ending_a_call() -> None:
    """An exception from the metrics callback (or gRPC's cancel) ended the watch's thread: no call
    was timed out after it."""
    calls = 0

    def on_timeout(method: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a metrics failure")

    watch = ReceiveWatch(0.2, on_timeout=on_timeout)
    watch.start()
    try:
        for _ in range(2):
            ctx = _Context()
            started = time.monotonic()
            with pytest.raises(_Aborted):
                watch.receive(_after(ctx.cancelled, b"late"), ctx, "/s/M")  # type: ignore[arg-type]
            assert time.monotonic() - started < 5
            assert ctx.status is not None and ctx.status[0] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert _soon(lambda: calls == 2)
    finally:
        watch.stop()


def test_without_a_timeout_there_is_no_watch_and_one_message_is_taken() -> None:
    watch = ReceiveWatch(None)
    watch.start()
    ready = threading.Event()
    ready.set()
    assert watch.receive(_after(ready, b"x"), _Context(), "/s/M") == b"x"  # type: ignore[arg-type]
    with pytest.raises(_Aborted, match="takes exactly one request message"):
        watch.receive(iter(()), _Context(), "/s/M")  # type: ignore[arg-type]
    watch.stop()
