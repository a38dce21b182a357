"""An in-process TCP proxy that emulates a network link: bandwidth per direction and round-trip time.

Why in-process: the benchmarks must run on any machine, without root and without ``netem`` (absent here),
and must be deterministic enough to compare partitions at the DADS uplink settings (0.13, 1.1, 5.85,
18.88 Mbit/s). :class:`ShapedLink` listens on a local port; dial its :attr:`~ShapedLink.address`
instead of the real server and every byte crosses an emulated link::

    with ShapedLink("127.0.0.1:8001", uplink_mbps=5.85, rtt_ms=20.0) as link:
        client = SplitClient(link.address, "resnet18")
        link.set_rates(uplink_mbps=1.1)           # a bandwidth step, while requests run

The model of the link, per direction (uplink = client -> server, downlink = server -> client):

- **Bandwidth**: a token bucket (:class:`TokenBucket`) refilled at ``rate_mbps * 1e6 / 8`` bytes per
  second, shared by every connection through the link (it is one link, not one per socket). Its burst
  is :func:`default_burst_bytes`: 5 ms of traffic at the current rate, and never less than 1500 bytes
  (one Ethernet frame) so that very slow links still move whole frames. Data larger than the burst is cut
  into burst-sized pieces, each waiting for its tokens: a 1 MB tensor at 8 Mbit/s takes one second, not
  a burst and a pause.
- **Latency**: ``rtt_ms / 2`` one-way delay, applied as *pipeline* latency: a piece leaves the bucket at
  time t and is delivered at t + delay, while the next piece is already being shaped. So a transfer of
  B bytes takes ``B / rate + rtt / 2``, like a real link, not ``pieces * delay``.
- **Pacing**: a waiting sender is granted what has accrued once a quarter of the burst has, and while
  bytes wait the bucket keeps what accrues past the burst (up to 0.1 s of traffic), so a reader woken
  late catches up instead of losing the rate. The link's threads need the interpreter lock: a
  pure-Python thread busy in the same process slows them (docs/bench.md, "Links", has the numbers);
  :class:`~splitdnn.runtime.shaper_process.ProcessLink` runs the same link in a process of its own.
- **What is counted**: TCP payload bytes (what the application sends), not wire bytes; kernel ``tc tbf``
  (:mod:`splitdnn.runtime.netns`) also counts TCP/IP headers, so the same setting gives ~4% less goodput.
- **Order and close**: bytes are delivered in order; a half-close (FIN) travels through the link with
  the same delay, so protocols that rely on it (HTTP/1.0, ``shutdown(SHUT_WR)``) behave. A reset or error
  on one side aborts both sides of that connection.

Rates and RTT change at run time with :meth:`ShapedLink.set_rates` (bytes already shaped keep their
delivery time; waiting bytes are re-timed at the new rate at once). :class:`RateSchedule` holds a step
schedule or a trace file (``time_s,mbps``) and :meth:`RateSchedule.play` replays it on a link in a
background thread, for the bandwidth-step experiments of the bench harness.

Threads, not asyncio: each connection has one reader and one writer thread per direction (4 in all), all
blocking in the kernel or on a condition variable, never polling. Closing the link shuts every socket down,
which wakes every thread, so ``__exit__`` returns promptly even with transfers in flight (they are cut, as
if the cable were pulled). This module is stdlib only and does not import grpc: gRPC (HTTP/2 over TCP)
simply runs through it.
"""

from __future__ import annotations

import logging
import math
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from splitdnn.errors import ConfigError
from splitdnn.runtime._schedule import RateSchedule, RateStep, SchedulePlayer, _check_rate

__all__ = [
    "LINK_NAME",
    "RateSchedule",
    "RateStep",
    "SchedulePlayer",
    "ShapedLink",
    "TokenBucket",
    "default_burst_bytes",
]

log = logging.getLogger(__name__)

#: how results name this link
LINK_NAME = "in-process token-bucket shaper"
#: Bytes read from a socket at once; larger reads are cut into burst-sized pieces by the bucket anyway.
_RECV_BYTES = 64 * 1024
#: The burst floor: one Ethernet frame, so a 0.13 Mbit/s link still sends whole frames (92 ms apart).
MIN_BURST_BYTES = 1500
#: The burst is this much time of traffic at the current rate: small enough that a transfer is shaped
#: from its first bytes, large enough that a fast link (1000 Mbit/s -> 625 kB) is not woken per packet.
BURST_S = 0.005
#: A waiting sender is granted as soon as this fraction of the burst has accrued, so a reader woken a
#: little late sends what accrued meanwhile instead of finding a full bucket that lost the rest.
_PIECE_OF_BURST = 4
#: While bytes wait, tokens accrue past the burst by up to this much time of traffic: a reader woken
#: late (another Python thread holding the interpreter lock for its 5 ms switch interval) catches up,
#: as a real link keeps sending its queue; an idle link still banks only the burst.
_CATCH_UP_S = 0.1
#: How long the proxy waits for the real server to accept a connection before dropping the client.
_CONNECT_TIMEOUT_S = 10.0
#: How long closing the link waits for each of its threads after shutting its sockets down.
_JOIN_TIMEOUT_S = 5.0
#: Bytes queued in a delay line before the reader blocks (backpressure when the receiver is slow); at
#: least twice the bytes in flight (rate x one-way delay) so the delay line never throttles the rate.
_MIN_QUEUE_BYTES = 1 << 20

_Clock = Callable[[], float]


def _check_rtt(value: object) -> float:
    """A finite round-trip time >= 0 in milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"rtt_ms must be a number of milliseconds, found {value!r}")
    rtt = float(value)
    if not math.isfinite(rtt) or rtt < 0.0:
        raise ConfigError(
            f"rtt_ms must be a finite number >= 0 (milliseconds), found {value!r}; pass e.g. 20.0"
        )
    return rtt


def default_burst_bytes(rate_mbps: float) -> int:
    """The bucket depth for a rate: 5 ms of traffic (:data:`BURST_S`), at least :data:`MIN_BURST_BYTES`."""
    return max(MIN_BURST_BYTES, int(rate_mbps * 1e6 / 8.0 * BURST_S))


class TokenBucket:
    """Token-bucket arithmetic, pure and single-threaded, with an injectable clock.

    Kept apart from sockets and threads so that the shaping rule can be tested exactly with a fake clock.
    Tokens are bytes; they accrue at ``rate_mbps * 1e6 / 8`` per second up to ``burst_bytes``. The bucket
    starts full. :meth:`grant` hands out what has accrued, up to what is asked, once at least a piece
    (a quarter of the burst, or what is asked if less) has, or says how long to wait for one. While a
    sender waits (it asked for more than it got), tokens accrue past the burst by up to
    :data:`_CATCH_UP_S` of traffic, so a sender woken late catches up instead of losing the rate: the
    bytes granted by time t never exceed ``burst_bytes + rate * t``. Not thread-safe: the link calls it
    under its own lock.
    """

    def __init__(
        self, rate_mbps: float, *, burst_bytes: int | None = None, clock: _Clock = time.monotonic
    ) -> None:
        self._clock = clock
        self._rate_mbps = _check_rate("rate_mbps", rate_mbps)
        self._burst = self._check_burst(burst_bytes, self._rate_mbps)
        self._tokens = float(self._burst)
        self._stamp = clock()
        self._backlog = False  # a sender asked for more than it got: tokens may accrue past the burst

    @staticmethod
    def _check_burst(burst_bytes: int | None, rate_mbps: float) -> int:
        if burst_bytes is None:
            return default_burst_bytes(rate_mbps)
        if isinstance(burst_bytes, bool) or not isinstance(burst_bytes, int) or burst_bytes < 1:
            raise ConfigError(f"burst_bytes must be an int >= 1 or None (default), found {burst_bytes!r}")
        return burst_bytes

    @property
    def rate_mbps(self) -> float:
        """The refill rate in Mbit/s (1e6 bit/s)."""
        return self._rate_mbps

    @property
    def bytes_per_s(self) -> float:
        """The refill rate in bytes per second."""
        return self._rate_mbps * 1e6 / 8.0

    @property
    def burst_bytes(self) -> int:
        """The bucket depth: the most bytes sent back to back after an idle period."""
        return self._burst

    @property
    def tokens(self) -> float:
        """Bytes that could be sent right now (refills to the current clock first)."""
        self._refill(self._clock())
        return self._tokens

    def _refill(self, now: float) -> None:
        # A clock that goes backwards (it should not: monotonic) must not drain the bucket.
        if now > self._stamp:
            cap = float(self._burst)
            if self._backlog:  # what accrued while bytes waited is their due
                cap += self.bytes_per_s * _CATCH_UP_S
            self._tokens = min(cap, self._tokens + (now - self._stamp) * self.bytes_per_s)
            self._stamp = now

    def set_rate(self, rate_mbps: float, *, burst_bytes: int | None = None) -> None:
        """Change the rate from now on; tokens earned at the old rate are kept (up to the new burst)."""
        rate = _check_rate("rate_mbps", rate_mbps)
        burst = self._check_burst(burst_bytes, rate)
        self._refill(self._clock())
        self._rate_mbps = rate
        self._burst = burst
        self._tokens = min(self._tokens, float(burst))
        self._backlog = False

    def grant(self, want: int) -> tuple[int, float]:
        """Try to send ``want`` bytes now.

        Returns ``(granted, wait_s)``: either ``0 < granted <= want`` bytes (all that has accrued, up
        to ``want``) were taken from the bucket and may be sent now (``wait_s == 0``), or ``granted ==
        0`` and the caller should ask again after ``wait_s`` seconds, when a piece will be covered.
        """
        if isinstance(want, bool) or not isinstance(want, int) or want < 1:
            raise ConfigError(f"grant() needs a byte count >= 1, found {want!r}")
        now = self._clock()
        piece = max(1, self._burst // _PIECE_OF_BURST)
        if self._backlog and now - self._stamp > _CATCH_UP_S + piece / self.bytes_per_s:
            self._backlog = False  # asked again long after it was due: the link sat idle
        self._refill(now)
        piece = min(want, piece)
        # A tolerance of a millionth of a byte absorbs float rounding after an exact wait.
        if self._tokens + 1e-6 >= piece:
            granted = min(want, max(piece, int(self._tokens + 1e-6)))
            self._tokens = max(0.0, self._tokens - granted)
            self._backlog = granted < want
            return granted, 0.0
        self._backlog = True
        return 0, (piece - self._tokens) / self.bytes_per_s


def _parse_target(target: object) -> tuple[str, int]:
    """``"host:port"``, ``"[v6addr]:port"`` or a ``(host, port)`` tuple -> ``(host, port)``."""
    expected = "a 'host:port' string (e.g. '127.0.0.1:8001', '[::1]:8001') or a (host, port) tuple"
    host: object
    port: object
    if isinstance(target, tuple) and len(target) == 2:
        host, port = target
    elif isinstance(target, str):
        head, sep, tail = target.rpartition(":")
        if not sep or not head or not tail:
            raise ConfigError(f"target must be {expected}, found {target!r}; add the server's port")
        if head.startswith("[") and head.endswith("]"):
            head = head[1:-1]
        elif ":" in head:
            raise ConfigError(
                f"target must be {expected}, found {target!r}; write IPv6 addresses in brackets"
            )
        host = head
        try:
            port = int(tail)
        except ValueError:
            raise ConfigError(f"target must be {expected}, found port {tail!r} in {target!r}") from None
    else:
        raise ConfigError(f"target must be {expected}, found {target!r}")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"target must be {expected}, found host {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"target port must be an int in 1..65535, found {port!r} in {target!r}")
    return host, port


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Direction:
    """The shared state of one direction of the link: its bucket, delay and byte counter."""

    def __init__(self, name: str, rate_mbps: float, delay_s: float) -> None:
        self.name = name
        self.cond = threading.Condition()
        self.bucket = TokenBucket(rate_mbps)
        self.delay_s = delay_s
        self.bytes = 0
        self.closed = False

    def acquire(self, want: int) -> int:
        """Block until a piece of at most ``want`` bytes may go; 0 when the link is closing."""
        with self.cond:
            while not self.closed:
                granted, wait_s = self.bucket.grant(want)
                if granted:
                    return granted
                # Woken early by set_rates (re-timed at the new rate) or by close.
                self.cond.wait(wait_s)
            return 0

    def queue_limit(self) -> int:
        """Bytes a delay line may hold: twice the bytes in flight, at least 1 MiB."""
        with self.cond:
            return max(_MIN_QUEUE_BYTES, int(2 * self.bucket.bytes_per_s * self.delay_s))

    def count(self, nbytes: int) -> None:
        with self.cond:
            self.bytes += nbytes

    def set(self, rate_mbps: float, delay_s: float) -> None:
        with self.cond:
            self.bucket.set_rate(rate_mbps)
            self.delay_s = delay_s
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _EOF:
    """Marks the end of a direction's stream in a delay line (the FIN, delayed like data)."""


_EOF_MARK = _EOF()
_Item = bytes | _EOF


class _DelayLine:
    """A FIFO of (delivery time, bytes) between a direction's reader and writer; bounded in bytes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: deque[tuple[float, _Item]] = deque()
        self._bytes = 0
        self._closed = False

    def put(self, deliver_at: float, item: _Item, limit: int) -> bool:
        """Queue an item; blocks while the line is over ``limit`` bytes. False once the line is closed."""
        size = len(item) if isinstance(item, bytes) else 0
        with self._cond:
            while not self._closed and self._items and self._bytes + size > limit:
                self._cond.wait()
            if self._closed:
                return False
            self._items.append((deliver_at, item))
            self._bytes += size
            self._cond.notify_all()
            return True

    def get(self) -> _Item | None:
        """The next item once its delivery time has come; None once the line is closed (aborted)."""
        with self._cond:
            while not self._closed:
                if not self._items:
                    self._cond.wait()
                    continue
                deliver_at, item = self._items[0]
                wait_s = deliver_at - time.monotonic()
                if wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                self._items.popleft()
                if isinstance(item, bytes):
                    self._bytes -= len(item)
                self._cond.notify_all()
                return item
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()


class _Connection:
    """One proxied TCP connection: client socket, upstream socket and four pump threads."""

    def __init__(self, link: ShapedLink, client: socket.socket, peer: str) -> None:
        self.link = link
        self.client = client
        self.upstream: socket.socket | None = None
        self.peer = peer
        self._lock = threading.Lock()
        self._lines = (_DelayLine(), _DelayLine())  # (uplink, downlink)
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._aborted = False
        self._closed = False

    def start(self) -> None:
        # The uplink reader connects upstream first, so a slow connect never blocks the acceptor.
        self._spawn(self._connect_then_pump_up, "up-read")

    def _spawn(self, target: Callable[[], None], role: str) -> None:
        thread = threading.Thread(
            target=self._run, args=(target,), name=f"shaper-{self.peer}-{role}", daemon=True
        )
        with self._lock:
            self._running += 1
            self._threads.append(thread)
        try:
            thread.start()
        except RuntimeError:  # out of threads: undo the count so the connection can still finish
            with self._lock:
                self._running -= 1
                self._threads.remove(thread)
            raise

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        except OSError as exc:
            # A reset, a broken pipe or the link closing: the connection is over on both sides.
            log.debug("shaped connection %s: %s", self.peer, exc)
            self.abort()
        except Exception:  # pragma: no cover - a bug: never leave a half-dead connection behind
            log.exception("shaped connection %s failed", self.peer)
            self.abort()
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._finish()

    def _connect_then_pump_up(self) -> None:
        host, port = self.link.target
        try:
            upstream = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S)
        except OSError as exc:
            log.warning(
                "shaped link: cannot reach the target %s (%s); dropping the client %s",
                _format_address(host, port),
                exc,
                self.peer,
            )
            self.abort()
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._aborted:
                upstream.close()
                return
            self.upstream = upstream
        up, down = self.link._directions
        self._spawn(lambda: self._write(upstream, self._lines[0], up), "up-write")
        self._spawn(lambda: self._read(upstream, self._lines[1], down), "down-read")
        self._spawn(lambda: self._write(self.client, self._lines[1], down), "down-write")
        self._read(self.client, self._lines[0], up)

    def _read(self, src: socket.socket, line: _DelayLine, direction: _Direction) -> None:
        """Read, pass each piece through the bucket, stamp it with its delivery time, queue it."""
        while True:
            data = src.recv(_RECV_BYTES)
            if not data:
                line.put(time.monotonic() + direction.delay_s, _EOF_MARK, direction.queue_limit())
                return
            view = memoryview(data)
            while view:
                granted = direction.acquire(len(view))
                if not granted:
                    return
                deliver_at = time.monotonic() + direction.delay_s
                if not line.put(deliver_at, bytes(view[:granted]), direction.queue_limit()):
                    return
                view = view[granted:]

    def _write(self, dst: socket.socket, line: _DelayLine, direction: _Direction) -> None:
        """Deliver queued pieces at their time; pass the half-close on."""
        while True:
            item = line.get()
            if item is None:
                return
            if isinstance(item, _EOF):
                dst.shutdown(socket.SHUT_WR)
                return
            dst.sendall(item)
            direction.count(len(item))

    def abort(self) -> None:
        """Cut both sides: wake every thread of this connection (they then exit)."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
            sockets = [s for s in (self.client, self.upstream) if s is not None]
        for line in self._lines:
            line.close()
        for sock in sockets:
            try:
                # A reset (not a FIN) tells the peer the stream was cut, not finished.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _finish(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sockets = [s for s in (self.client, self.upstream) if s is not None]
        for sock in sockets:
            sock.close()
        self.link._forget(self)

    def join(self, deadline: float) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class ShapedLink:
    """A local TCP proxy to ``target`` that shapes bandwidth per direction and adds RTT (module docstring).

    ``uplink_mbps`` shapes client -> server, ``downlink_mbps`` server -> client (None: same as uplink);
    ``rtt_ms`` is split evenly between the directions. Use as a context manager, or call :meth:`start`
    and :meth:`close`. Listens on ``listen_host:listen_port`` (port 0: any free port; read
    :attr:`address`). Rates are shared by all connections, as on one physical link.
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        uplink_mbps: float,
        downlink_mbps: float | None = None,
        rtt_ms: float = 0.0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = _parse_target(target)
        up = _check_rate("uplink_mbps", uplink_mbps)
        down = up if downlink_mbps is None else _check_rate("downlink_mbps", downlink_mbps)
        rtt = _check_rtt(rtt_ms)
        if isinstance(listen_port, bool) or not isinstance(listen_port, int) or not 0 <= listen_port <= 65535:
            raise ConfigError(
                f"listen_port must be an int in 0..65535 (0: any free port), found {listen_port!r}"
            )
        if not isinstance(listen_host, str) or not listen_host:
            raise ConfigError(
                f"listen_host must be a host name or address such as '127.0.0.1', found {listen_host!r}"
            )
        self._listen = (listen_host, listen_port)
        self._rtt_ms = rtt
        self._directions = (
            _Direction("uplink", up, rtt / 2000.0),
            _Direction("downlink", down, rtt / 2000.0),
        )
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._server: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._address = ""
        self._state = "new"  # new -> running -> closed

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> ShapedLink:
        """Bind the listening socket and start accepting; returns self."""
        with self._lock:
            if self._state != "new":
                raise ConfigError(
                    f"ShapedLink.start(): expected a new link, found one already {self._state}; "
                    "create a new ShapedLink"
                )
            self._state = "running"
        host, port = self.target
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            self._state = "closed"
            raise ConfigError(
                f"target host {host!r} does not resolve ({exc}); expected a reachable host name or address"
            ) from exc
        listen_host, listen_port = self._listen
        family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        try:
            server = socket.create_server((listen_host, listen_port), family=family, backlog=128)
        except OSError as exc:
            self._state = "closed"
            raise ConfigError(
                f"cannot listen on {_format_address(listen_host, listen_port)}: {exc}; "
                "pass listen_port=0 for any free port, or a local address"
            ) from exc
        self._server = server
        bound_host, bound_port = server.getsockname()[:2]
        self._address = _format_address(bound_host, bound_port)
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"shaper-accept-{bound_port}", daemon=True
        )
        self._acceptor.start()
        log.debug("shaped link %s -> %s started", self._address, _format_address(*self.target))
        return self

    def close(self) -> None:
        """Stop accepting and cut every connection; waits for the threads (bounded), never hangs."""
        with self._lock:
            if self._state != "running":
                self._state = "closed"
                return
            self._state = "closed"
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        assert self._wake_w is not None and self._acceptor is not None and self._server is not None
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._acceptor.join(max(0.0, deadline - time.monotonic()))
        for direction in self._directions:
            direction.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.abort()
        for conn in connections:
            conn.join(deadline)
        self._server.close()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def __enter__(self) -> ShapedLink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        assert self._server is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._server, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        client, addr = self._server.accept()
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        # Out of file descriptors, say: back off instead of spinning on a ready listener.
                        log.warning("shaped link %s: accept failed: %s", self._address, exc)
                        time.sleep(0.05)
                        continue
                    self._adopt(client, addr)

    def _adopt(self, client: socket.socket, addr: tuple[object, ...]) -> None:
        client.settimeout(None)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(self, client, f"{addr[0]}:{addr[1]}")
        with self._lock:
            if self._state != "running":
                client.close()
                return
            self._connections.add(conn)
        try:
            conn.start()
        except RuntimeError as exc:  # cannot start a thread: drop this client, keep accepting
            log.warning("shaped link %s: dropping the client %s: %s", self._address, conn.peer, exc)
            conn.abort()
            conn._finish()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``"host:port"`` to dial instead of the target (the actual bound port)."""
        if not self._address:
            raise ConfigError(
                "ShapedLink.address: expected a started link, found one not started; "
                "use `with ShapedLink(...) as link:` or call start() first"
            )
        return self._address

    @property
    def uplink_mbps(self) -> float:
        """Current client -> server rate in Mbit/s."""
        with self._directions[0].cond:
            return self._directions[0].bucket.rate_mbps

    @property
    def downlink_mbps(self) -> float:
        """Current server -> client rate in Mbit/s."""
        with self._directions[1].cond:
            return self._directions[1].bucket.rate_mbps

    @property
    def rtt_ms(self) -> float:
        """Current round-trip time added by the link, in milliseconds."""
        return self._rtt_ms

    @property
    def bytes_up(self) -> int:
        """Bytes delivered to the server so far (client -> server), over all connections."""
        with self._directions[0].cond:
            return self._directions[0].bytes

    @property
    def bytes_down(self) -> int:
        """Bytes delivered to clients so far (server -> client), over all connections."""
        with self._directions[1].cond:
            return self._directions[1].bytes

    @property
    def connections(self) -> int:
        """Connections currently open through the link."""
        with self._lock:
            return len(self._connections)

    def set_rates(
        self, uplink_mbps: float, downlink_mbps: float | None = None, rtt_ms: float | None = None
    ) -> None:
        """Change the link while it runs: a bandwidth step.

        ``downlink_mbps=None`` means the same as the uplink (as in the constructor); ``rtt_ms=None``
        keeps the current RTT. Bytes waiting for tokens are re-timed at the new rate at once; bytes
        already shaped keep their delivery time (order is always kept).
        """
        up = _check_rate("uplink_mbps", uplink_mbps)
        down = up if downlink_mbps is None else _check_rate("downlink_mbps", downlink_mbps)
        rtt = self._rtt_ms if rtt_ms is None else _check_rtt(rtt_ms)
        self._rtt_ms = rtt
        self._directions[0].set(up, rtt / 2000.0)
        self._directions[1].set(down, rtt / 2000.0)

    def __repr__(self) -> str:
        where = self._address or "not started"
        return (
            f"ShapedLink({where} -> {_format_address(*self.target)}, up={self.uplink_mbps} Mbit/s, "
            f"down={self.downlink_mbps} Mbit/s, rtt={self._rtt_ms} ms)"
        )
