"""Tests for splitdnn.runtime.shaper: exact token-bucket arithmetic on a fake clock, then the real proxy.

The bucket tests never sleep. The socket tests bind 127.0.0.1:0 and use fast rates, except the one
throughput check, whose bounds are generous because the machine is shared (timing goals live in benchmarks).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitdnn.errors import ConfigError
from splitdnn.runtime.shaper import (
    MIN_BURST_BYTES,
    RateSchedule,
    RateStep,
    ShapedLink,
    TokenBucket,
    default_burst_bytes,
)
from splitdnn.runtime.shaper_process import ProcessLink


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------ token bucket


def test_default_burst_is_5ms_of_traffic_with_a_frame_floor() -> None:
    assert default_burst_bytes(0.13) == MIN_BURST_BYTES == 1500
    assert default_burst_bytes(8.0) == 5000  # 1e6 B/s * 5 ms
    assert default_burst_bytes(1000.0) == 625_000


def test_bucket_starts_full_then_waits_exactly() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8.0, burst_bytes=4000, clock=clock)  # 1e6 bytes/s
    assert bucket.grant(4000) == (4000, 0.0)
    granted, wait_s = bucket.grant(1000)
    assert granted == 0
    assert wait_s == pytest.approx(1e-3)
    clock.now += wait_s
    assert bucket.grant(1000) == (1000, 0.0)


def test_bucket_cuts_large_requests_into_pieces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8.0, burst_bytes=4000, clock=clock)
    assert bucket.grant(1_000_000) == (4000, 0.0)
    granted, wait_s = bucket.grant(1_000_000)
    assert granted == 0 and wait_s == pytest.approx(1e-3)  # a quarter-burst piece, not the request
    clock.now += wait_s
    assert bucket.grant(1_000_000) == (1000, 0.0)


def test_a_sender_woken_late_catches_up_and_an_idle_link_banks_one_burst() -> None:
    """A reader woken late (another thread holding the interpreter lock) found a bucket capped at one
    burst and lost the rest: 5.85 Mbit/s delivered 3 with a busy Python thread in the process."""
    clock = FakeClock()
    bucket = TokenBucket(8.0, burst_bytes=4000, clock=clock)  # 1e6 B/s
    start, remaining = clock.now, 1_000_000
    while remaining:
        granted, wait_s = bucket.grant(remaining)
        remaining -= granted
        clock.now += wait_s + 5e-3  # every wake-up 5 ms late
    # late by about two wake-ups in all (the last piece, and the step after it), not 5 ms per piece:
    # the capped bucket took 2.25 s here (each 4000-byte piece waited 4 ms, then 5 ms more)
    assert (1_000_000 - 4000) / 1e6 <= clock.now - start <= (1_000_000 - 4000) / 1e6 + 0.011
    clock.now += 1.0  # idle: no more than a burst is banked
    assert bucket.tokens == 4000


def test_bucket_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8.0, burst_bytes=4000, clock=clock)
    bucket.grant(4000)
    clock.now += 3600.0  # an hour idle earns no more than one burst
    assert bucket.tokens == 4000
    assert bucket.grant(4000)[0] == 4000
    assert bucket.grant(1)[0] == 0


def test_bucket_sustained_rate_is_exact() -> None:
    """Sending N bytes as fast as allowed takes (N - burst) / rate on the fake clock."""
    clock = FakeClock()
    bucket = TokenBucket(0.13, clock=clock)  # 16 250 B/s, burst 1500
    start, remaining = clock.now, 100_000
    while remaining:
        granted, wait_s = bucket.grant(remaining)
        remaining -= granted
        clock.now += wait_s
    assert clock.now - start == pytest.approx((100_000 - 1500) / 16_250)


def test_bucket_set_rate_keeps_earned_tokens_and_retimes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8.0, burst_bytes=4000, clock=clock)
    bucket.grant(4000)
    clock.now += 1e-3  # 1000 tokens earned at 1e6 B/s
    bucket.set_rate(16.0, burst_bytes=4000)  # 2e6 B/s from now on
    assert bucket.tokens == pytest.approx(1000)
    assert bucket.grant(3000) == (1000, 0.0)  # what accrued: a quarter-burst piece
    granted, wait_s = bucket.grant(2000)
    assert granted == 0 and wait_s == pytest.approx(0.5e-3)  # the next 1000 bytes at 2e6 B/s
    assert bucket.rate_mbps == 16.0 and bucket.bytes_per_s == 2e6
    bucket.set_rate(0.13)  # default burst shrinks to 1500 and the tokens with it
    assert bucket.burst_bytes == 1500 and bucket.tokens <= 1500


def test_bucket_ignores_a_clock_going_backwards() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8.0, burst_bytes=4000, clock=clock)
    bucket.grant(4000)
    clock.now -= 10.0
    assert bucket.tokens == 0


@given(
    rate=st.floats(0.05, 2000.0),
    steps=st.lists(st.tuples(st.integers(1, 300_000), st.floats(0.0, 0.05)), min_size=1, max_size=60),
)
def test_bucket_never_exceeds_burst_plus_rate_times_time(rate: float, steps: list[tuple[int, float]]) -> None:
    """The defining invariant: bytes granted by time t <= burst + rate * t, for any request pattern."""
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock)
    start, sent = clock.now, 0
    for want, idle in steps:
        clock.now += idle
        granted, wait_s = bucket.grant(want)
        assert (granted > 0) != (wait_s > 0)
        assert granted <= want
        sent += granted
        assert sent <= bucket.burst_bytes + bucket.bytes_per_s * (clock.now - start) + 1e-3
        if wait_s:
            clock.now += wait_s  # after the announced wait, a piece is granted
            again = bucket.grant(want)[0]
            assert min(want, max(1, bucket.burst_bytes // 4)) <= again <= want
            sent += again
            assert sent <= bucket.burst_bytes + bucket.bytes_per_s * (clock.now - start) + 1e-3


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "5", None, True])
def test_bucket_rejects_bad_rates(bad: object) -> None:
    with pytest.raises(ConfigError, match="rate_mbps"):
        TokenBucket(bad)  # type: ignore[arg-type]


def test_bucket_rejects_bad_burst_and_grant() -> None:
    with pytest.raises(ConfigError, match="burst_bytes"):
        TokenBucket(1.0, burst_bytes=0)
    with pytest.raises(ConfigError, match="byte count"):
        TokenBucket(1.0).grant(0)


# ------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("127.0.0.1", "add the server's port"),
        (":8001", "add the server's port"),
        ("127.0.0.1:http", "found port 'http'"),
        ("127.0.0.1:0", "1..65535"),
        ("127.0.0.1:70000", "1..65535"),
        ("::1:8001", "brackets"),
        (8001, "host:port"),
        (("", 8001), "found host"),
    ],
)
def test_link_rejects_bad_targets(target: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ShapedLink(target, uplink_mbps=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"uplink_mbps": 0}, "uplink_mbps must be a finite rate > 0"),
        ({"uplink_mbps": -5.85}, "uplink_mbps must be a finite rate > 0"),
        ({"uplink_mbps": math.nan}, "uplink_mbps"),
        ({"uplink_mbps": 1.0, "downlink_mbps": 0.0}, "downlink_mbps"),
        ({"uplink_mbps": 1.0, "rtt_ms": -1.0}, "rtt_ms must be a finite number >= 0"),
        ({"uplink_mbps": 1.0, "rtt_ms": math.inf}, "rtt_ms"),
        ({"uplink_mbps": 1.0, "listen_port": -1}, "listen_port"),
    ],
)
def test_link_rejects_bad_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ShapedLink("127.0.0.1:8001", **kwargs)  # type: ignore[arg-type]


def test_link_misuse_says_what_to_do() -> None:
    link = ShapedLink(("127.0.0.1", 8001), uplink_mbps=5.85)
    assert link.target == ("127.0.0.1", 8001)
    assert link.downlink_mbps == 5.85  # None: same as the uplink
    with pytest.raises(ConfigError, match="not started"):
        _ = link.address
    with link:
        with pytest.raises(ConfigError, match="uplink_mbps"):
            link.set_rates(-1.0)
        with pytest.raises(ConfigError, match="already running"):
            link.start()
    link.close()  # idempotent


def test_link_reports_a_busy_listen_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            ShapedLink("127.0.0.1:8001", uplink_mbps=1.0, listen_port=port).start()


# ------------------------------------------------------------------------------------ real sockets


@contextlib.contextmanager
def _serve(handler: Callable[[socket.socket], None]) -> Iterator[str]:
    """A threaded TCP server on 127.0.0.1:0 running ``handler`` per connection; yields its address."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_handle, args=(conn,), daemon=True).start()

    def _handle(conn: socket.socket) -> None:
        with conn:
            try:
                handler(conn)
            except OSError:
                pass

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(1 << 16):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def _digest_after_eof(conn: socket.socket) -> None:
    """Reads until the client's half-close, then answers: proves the FIN crossed the link."""
    data = _recv_all(conn)
    conn.sendall(len(data).to_bytes(8, "big") + hashlib.sha256(data).digest())
    conn.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo_server() -> Iterator[str]:
    with _serve(_echo) as address:
        yield address


@pytest.fixture
def digest_server() -> Iterator[str]:
    with _serve(_digest_after_eof) as address:
        yield address


def _dial(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def _echo_through(address: str, payload: bytes) -> bytes:
    with _dial(address) as sock:
        sender = threading.Thread(target=_send_and_close, args=(sock, payload))
        sender.start()
        received = _recv_all(sock)
        sender.join()
    return received


def _send_and_close(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_bytes_pass_unchanged_over_many_connections(echo_server: str) -> None:
    payloads = [os.urandom(size) for size in [1, 17, 1500, 65_537, 300_000] * 4]  # 20 connections
    with ShapedLink(echo_server, uplink_mbps=800.0, downlink_mbps=400.0, rtt_ms=2.0) as link:
        with ThreadPoolExecutor(len(payloads)) as pool:
            results = list(pool.map(lambda p: _echo_through(link.address, p), payloads))
        assert all(got == sent for got, sent in zip(results, payloads, strict=True))
        total = sum(map(len, payloads))
        assert link.bytes_up == total and link.bytes_down == total
        assert _wait_for(lambda: link.connections == 0), "finished connections must be released"


def test_half_close_crosses_the_link(digest_server: str) -> None:
    payload = os.urandom(200_000)
    with ShapedLink(digest_server, uplink_mbps=200.0, rtt_ms=10.0) as link:
        with _dial(link.address) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # the server answers only after seeing this FIN
            answer = _recv_all(sock)
    assert answer == len(payload).to_bytes(8, "big") + hashlib.sha256(payload).digest()


def test_rtt_is_added_once_per_round_trip(echo_server: str) -> None:
    with ShapedLink(echo_server, uplink_mbps=100.0, rtt_ms=120.0) as link, _dial(link.address) as sock:
        sock.sendall(b"warm")
        assert sock.recv(16) == b"warm"
        start = time.monotonic()
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"
        elapsed = time.monotonic() - start
    assert 0.120 <= elapsed < 0.120 + 0.5


@pytest.mark.parametrize("kind", [ShapedLink, ProcessLink], ids=["in-process", "process"])
def test_throughput_follows_the_rate_with_pipelined_delay(digest_server: str, kind: type[ShapedLink]) -> None:
    """1 MB at 8 Mbit/s with 40 ms RTT: ~1.0 s + 40 ms. Serialising the delay per piece would take 5 s.
    The same in a process of its own (ProcessLink)."""
    payload = os.urandom(1_000_000)
    with kind(digest_server, uplink_mbps=8.0, downlink_mbps=100.0, rtt_ms=40.0) as link:
        with _dial(link.address) as sock:
            start = time.monotonic()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = _recv_all(sock)
            elapsed = time.monotonic() - start
    assert answer[:8] == len(payload).to_bytes(8, "big")
    measured_mbps = len(payload) * 8 / 1e6 / elapsed
    assert 0.6 * 8.0 <= measured_mbps <= 1.3 * 8.0, f"{measured_mbps:.2f} Mbit/s in {elapsed:.2f} s"


def _send_requested(conn: socket.socket) -> None:
    """Answers an 8-byte size with that many bytes: a download, shaped by the downlink."""
    size = int.from_bytes(conn.recv(8), "big")
    conn.sendall(bytes(size))
    conn.shutdown(socket.SHUT_WR)


def test_the_downlink_rate_is_shared_by_all_connections() -> None:
    """4 downloads of 125 kB at once over one 8 Mbit/s downlink: 0.5 s in all (per-socket: 0.125 s)."""
    with _serve(_send_requested) as address:

        def download(_: int) -> int:
            with _dial(link.address) as sock:
                sock.sendall((125_000).to_bytes(8, "big"))
                return len(_recv_all(sock))

        with ShapedLink(address, uplink_mbps=100.0, downlink_mbps=8.0) as link:
            start = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                sizes = list(pool.map(download, range(4)))
            elapsed = time.monotonic() - start
        assert sizes == [125_000] * 4
        measured_mbps = 4 * 125_000 * 8 / 1e6 / elapsed
        assert 0.6 * 8.0 <= measured_mbps <= 1.3 * 8.0, f"{measured_mbps:.2f} Mbit/s in {elapsed:.2f} s"


@pytest.mark.parametrize("kind", [ShapedLink, ProcessLink], ids=["in-process", "process"])
def test_set_rates_retimes_bytes_already_waiting(digest_server: str, kind: type[ShapedLink]) -> None:
    """400 kB at 0.2 Mbit/s would take 16 s; raising the rate mid-transfer must take effect at once
    (in the child, for a ProcessLink)."""
    payload = os.urandom(400_000)
    with kind(digest_server, uplink_mbps=0.2) as link:
        with _dial(link.address) as sock:
            start = time.monotonic()
            sender = threading.Thread(target=_send_and_close, args=(sock, payload))
            sender.start()
            time.sleep(0.3)
            assert link.bytes_up < 20_000
            link.set_rates(uplink_mbps=80.0, downlink_mbps=None, rtt_ms=4.0)
            answer = _recv_all(sock)
            elapsed = time.monotonic() - start
            sender.join()
        assert (link.uplink_mbps, link.downlink_mbps, link.rtt_ms) == (80.0, 80.0, 4.0)
    assert answer[8:] == hashlib.sha256(payload).digest()
    assert elapsed < 4.0


def test_close_with_transfers_in_flight_does_not_hang(echo_server: str) -> None:
    link = ShapedLink(echo_server, uplink_mbps=0.5, rtt_ms=50.0).start()
    socks = [_dial(link.address) for _ in range(8)]
    blob = os.urandom(4_000_000)  # 64 s at 0.5 Mbit/s: certainly in flight when the link closes
    senders = [threading.Thread(target=_ignore_oserror, args=(sock.sendall, blob)) for sock in socks]
    for sender in senders:
        sender.start()
    time.sleep(0.2)
    start = time.monotonic()
    link.close()
    assert time.monotonic() - start < 2.0
    for sock in socks:  # the clients see the link cut (EOF or reset), not a hang
        sock.settimeout(5)
        _ignore_oserror(_recv_all, sock)
        sock.close()
    for sender in senders:
        sender.join(5)
        assert not sender.is_alive()
    assert link.connections == 0


def _ignore_oserror(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def test_unreachable_target_drops_the_client_and_the_link_survives() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with ShapedLink(f"127.0.0.1:{dead_port}", uplink_mbps=10.0) as link:
        for _ in range(3):  # the acceptor keeps serving after each failure
            try:
                with _dial(link.address) as sock:
                    sock.settimeout(5)
                    assert sock.recv(16) == b""
            except OSError:
                pass  # the cut may arrive as a reset, even during connect: also fine
            assert _wait_for(lambda: link.connections == 0)


# ------------------------------------------------------------------------------------ gRPC through it


def test_grpc_unary_echo_through_the_link() -> None:
    grpc = pytest.importorskip("grpc")

    def echo(request: bytes, context: object) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "splitdnn.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(ThreadPoolExecutor(2), options=[("grpc.max_receive_message_length", 8 << 20)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        payload = os.urandom(200_000)
        with ShapedLink(f"127.0.0.1:{port}", uplink_mbps=50.0, rtt_ms=10.0) as link:
            # The proxy is our own: keep grpc from picking up an http_proxy from the environment.
            with grpc.insecure_channel(link.address, options=[("grpc.enable_http_proxy", 0)]) as channel:
                call = channel.unary_unary("/splitdnn.test.Echo/Echo")
                for _ in range(3):
                    assert call(payload, timeout=20) == payload
            assert link.bytes_up >= 3 * len(payload) and link.bytes_down >= 3 * len(payload)
    finally:
        server.stop(None)


# ------------------------------------------------------------------------------------ schedules


def test_schedule_from_steps_and_rate_at() -> None:
    schedule = RateSchedule([(0, 5.85), (2.5, 1.1), RateStep(4.0, 18.88)])
    assert schedule.steps == (RateStep(0.0, 5.85), RateStep(2.5, 1.1), RateStep(4.0, 18.88))
    assert [schedule.rate_at(t) for t in (0.0, 2.49, 2.5, 3.9, 100.0)] == [5.85, 5.85, 1.1, 1.1, 18.88]
    assert schedule.duration_s == 4.0 and len(schedule) == 3
    assert RateSchedule.step(5.85, 1.1, at_s=3.0).steps == (RateStep(0.0, 5.85), RateStep(3.0, 1.1))


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        ([], "at least one"),
        ([(1.0, 5.0)], "first step at time_s 0"),
        ([(0, 5.0), (2.0, 1.0), (2.0, 3.0)], r"step 2: expected time_s > 2.0"),
        ([(0, 5.0), (1.0, 0.0)], r"step 1: uplink_mbps must be a finite rate > 0"),
        ([(0, 5.0), (math.nan, 1.0)], "finite number of seconds"),
        ([(0, 5.0, 1.0)], r"expected a \(time_s, uplink_mbps\) pair"),
        (["0,5"], "pair"),
    ],
)
def test_schedule_rejects_bad_steps(steps: list[object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RateSchedule(steps)  # type: ignore[arg-type]


def test_schedule_trace_file_round_trip(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("# measured on a 4G phone\ntime_s,mbps\r\n0,5.85\n\n1.5, 0.13\n3,18.88\n")
    schedule = RateSchedule.from_csv(trace)
    assert [(s.time_s, s.uplink_mbps) for s in schedule.steps] == [(0, 5.85), (1.5, 0.13), (3, 18.88)]
    assert schedule.source == str(trace)
    schedule.to_csv(tmp_path / "copy.csv")
    assert RateSchedule.from_csv(tmp_path / "copy.csv").steps == schedule.steps


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("time,mbps\n0,1\n", r":1: expected the header 'time_s,mbps', found 'time,mbps'"),
        ("0,5.85\n", "expected the header"),
        ("time_s,mbps\n0,5.85,1\n", r":2: expected 2 fields 'time_s,mbps', found 3"),
        ("time_s,mbps\n0\n", "found 1"),
        ("time_s,mbps\n0,fast\n", r":2: mbps must be a number, found 'fast'"),
        ("time_s,mbps\n0,nan\n", r":2: mbps must be finite"),
        ("time_s,mbps\nzero,1\n", "time_s must be a number"),
        ("time_s,mbps\n0,1\n2,-3\n", r"bad.csv:3: uplink_mbps must be a finite rate > 0 Mbit/s"),
        ("time_s,mbps\n", "no rows"),
        ("time_s,mbps\n0,1\n2,3\n1,3\n", r"bad.csv:4: expected time_s > 2.0 \(times strictly increasing\)"),
        ("# c\ntime_s,mbps\n5,1\n", r"bad.csv:3: expected the first step at time_s 0"),
    ],
)
def test_trace_file_errors_are_precise(tmp_path: Path, text: str, match: str) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text(text)
    with pytest.raises(ConfigError, match=match):
        RateSchedule.from_csv(trace)


def test_trace_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the rate trace"):
        RateSchedule.from_csv(tmp_path / "nope.csv")


def test_schedule_plays_on_a_link(echo_server: str) -> None:
    schedule = RateSchedule([(0, 2.0), (0.15, 30.0), (0.3, 12.0)])
    seen: list[RateStep] = []
    with ShapedLink(echo_server, uplink_mbps=100.0) as link:
        player = schedule.play(link, on_step=seen.append)
        player.join(5)
        assert player.done and player.error is None
        assert seen == list(schedule.steps)
        assert (link.uplink_mbps, link.downlink_mbps) == (12.0, 12.0)
        assert player.started_at is not None
        offsets = [t - player.started_at for t, _ in player.applied]
        assert offsets[0] < 0.1 and 0.15 <= offsets[1] < 0.6 and 0.3 <= offsets[2] < 0.8
        with schedule.play(link, downlink_mbps=7.0) as second:
            pass  # leaving the block stops it after its first (time 0) step at the latest
        assert second.done
        assert link.downlink_mbps in (7.0, 12.0)
        with pytest.raises(ConfigError, match="downlink_mbps"):
            schedule.play(link, downlink_mbps=0.0)


def test_a_schedule_with_a_downlink_factor_moves_the_downlink_with_each_step(echo_server: str) -> None:
    schedule = RateSchedule([(0, 2.0), (0.1, 30.0)])
    with ShapedLink(echo_server, uplink_mbps=100.0) as link:
        player = schedule.play(link, downlink_factor=4.0)
        player.join(5)
        assert player.done and player.error is None
        assert (link.uplink_mbps, link.downlink_mbps) == (30.0, 120.0)
        with pytest.raises(ConfigError, match="not both"):
            schedule.play(link, downlink_mbps=7.0, downlink_factor=4.0)
        for bad in (0.0, -1.0, math.inf, True, "4"):
            with pytest.raises(ConfigError, match="downlink_factor must be a positive finite number"):
                schedule.play(link, downlink_factor=bad)  # type: ignore[arg-type]
        assert (link.uplink_mbps, link.downlink_mbps) == (30.0, 120.0)  # refused before any step
