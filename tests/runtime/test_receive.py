"""ReceiveWatch on its own, with stand-ins for gRPC's call context (the server tests use real gRPC)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from splitdnn.runtime._receive import ReceiveWatch, peer_host


class _Aborted(Exception):
    pass


class _Context:
    """What ReceiveWatch touches of gRPC's server context: abort, and the call object under it."""

    def __init__(self, peer: str = "ipv4:127.0.0.1:50000") -> None:
        self._peer = peer
        self.cancelled = threading.Event()
        self.status: tuple[Any, str] | None = None
        self._rpc_event = SimpleNamespace(call=SimpleNamespace(cancel=self._cancel_with))

    def _cancel_with(self, code: Any, details: str) -> None:
        self.status = (code, details)
        self.cancelled.set()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def peer(self) -> str:
        return self._peer


def _soon(predicate: Any) -> bool:
    """``predicate()`` within 5 s (the handler's abort can reach the test before the watch's thread
    has finished ending the call)."""
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


def test_a_call_is_counted_before_its_client_hears_it_was_ended() -> None:
    """The watch cancelled the call, then counted it: a client (or a test) reading the metrics as soon
    as its call ended could miss the last one (a CI run read 9 of 10)."""
    counted_before_cancel: list[bool] = []
    ctx = _Context()
    watch = ReceiveWatch(
        0.2, on_timeout=lambda method: counted_before_cancel.append(not ctx.cancelled.is_set())
    )
    watch.start()
    try:
        with pytest.raises(_Aborted):
            watch.receive(_after(ctx.cancelled, b"late"), ctx, "/s/M")  # type: ignore[arg-type]
        assert _soon(lambda: counted_before_cancel == [True])
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


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.7:5123", "10.0.0.7"),
        ("ipv6:%5B::1%5D:37656", "::1"),  # what gRPC 1.85 gives: the brackets percent-encoded
        ("ipv6:%5B2001:db8::1%5D:443", "2001:db8::1"),
        ("ipv6:%5Bfe80::1%25eth0%5D:80", "fe80::1"),  # a zone id is the same address
        ("ipv6:[2001:db8::1]:443", "2001:db8::1"),
        ("ipv6:[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1"),
        ("unix:", "unix:"),  # every Unix-socket peer: one address
        ("ipv6:[::1", "[::1"),
        ("", ""),
    ],
)
def test_a_peer_is_its_address_without_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


@pytest.mark.parametrize("timeout_s", [None, 5.0])
def test_a_peer_past_its_calls_waiting_for_their_message_is_refused_and_others_are_not(
    timeout_s: float | None,
) -> None:
    refused: list[str] = []
    watch = ReceiveWatch(timeout_s, max_per_peer=2, on_refused=refused.append)
    watch.start()
    release = [threading.Event() for _ in range(2)]
    answers: list[Any] = []
    stalled = [
        threading.Thread(
            target=lambda e=e: answers.append(
                watch.receive(_after(e, b"late"), _Context("ipv4:10.0.0.7:1"), "/s/M")
            )
        )
        for e in release
    ]
    try:
        for t in stalled:
            t.start()
        assert _soon(lambda: watch._per_peer == {("10.0.0.7", ""): 2})
        with pytest.raises(_Aborted) as info:  # a third from that address, on another port
            watch.receive(_after(release[0], b"x"), _Context("ipv4:10.0.0.7:2"), "/s/M")  # type: ignore[arg-type]
        assert info.value.args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (
            "(10.0.0.7) already has 2 call(s) open that have not sent their request message"
            in info.value.args[1]
        )
        assert "--max-receiving-per-peer" in info.value.args[1] and refused == ["/s/M"]
        ready = threading.Event()
        ready.set()  # another address is served meanwhile
        assert watch.receive(_after(ready, b"b"), _Context("ipv6:[::1]:3"), "/s/M") == b"b"  # type: ignore[arg-type]
        release[0].set()  # one of the two sends its message: the address may open one more
        assert _soon(lambda: watch._per_peer == {("10.0.0.7", ""): 1})
        assert watch.receive(_after(ready, b"c"), _Context("ipv4:10.0.0.7:4"), "/s/M") == b"c"  # type: ignore[arg-type]
        with pytest.raises(_Aborted, match="takes exactly one request message"):  # a refusal after
            watch.receive(iter(()), _Context("ipv4:10.0.0.7:5"), "/s/M")  # type: ignore[arg-type]  # admission
        assert watch._per_peer == {("10.0.0.7", ""): 1} and refused == ["/s/M"]  # ... gives its place back
    finally:
        for e in release:
            e.set()
        for t in stalled:
            t.join(10)
        watch.stop()
    assert sorted(answers) == [b"late", b"late"] and watch._per_peer == {}


def test_the_cap_counts_each_pool_of_a_peer_apart() -> None:
    """A client uploading its requests is not refused its health checks (they have a pool of their own)."""
    watch = ReceiveWatch(
        None, max_per_peer=1, pool_of=lambda method: "infer" if method == "/v2/Infer" else "other"
    )
    release = threading.Event()
    ctx = _Context("ipv6:%5B::1%5D:1")
    upload = threading.Thread(target=lambda: watch.receive(_after(release, b"big"), ctx, "/v2/Infer"))  # type: ignore[arg-type]
    upload.start()
    try:
        assert _soon(lambda: watch._per_peer == {("::1", "infer"): 1})
        ready = threading.Event()
        ready.set()
        check = watch.receive(_after(ready, b"ok"), _Context("ipv6:%5B::1%5D:2"), "/health/Check")  # type: ignore[arg-type]
        assert check == b"ok"
        with pytest.raises(_Aborted) as info:
            watch.receive(_after(ready, b"x"), _Context("ipv6:%5B::1%5D:3"), "/v2/Infer")  # type: ignore[arg-type]
        assert "(::1) already has 1 call(s) for infer open" in info.value.args[1]
    finally:
        release.set()
        upload.join(10)
    assert watch._per_peer == {}
