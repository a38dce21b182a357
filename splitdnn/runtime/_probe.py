"""Link probing for the edge client: measure the link when the client's own requests cannot (grpc-free).

The client estimates the link from its own requests (:class:`~splitdnn.runtime.planner.LinkEstimator`).
Once it plans edge-only because the link looked slow, it sends nothing and would never see the link
recover. A :class:`LinkProber` closes that loop: while the plan is edge-only, an ``infer()`` call
starts one probe on a background thread, so the caller's inference is never delayed. (The prober also
supports probing a remote plan whose link observation went stale, but :class:`SplitClient` does not
use that: a probe beside a remote request competes with it for the same uplink.)

1. an empty round trip (v2 ServerLive) -> a direct RTT sample (``observe_ping``);
2. a splitdnn.v1 ``Probe`` carrying ``n`` random bytes, answered at once by the server -> a
   ``(n bytes, wall ms)`` sample, exactly like a request whose server time is zero (``observe``).
   The payload is random (no compression on the path can shrink it) and is never the input or any
   tensor of the model, so it respects ``privacy_floor``. ``n`` is what the current estimate says
   the link carries in ``target_ms`` (``optimism`` x that while edge-only), within
   ``[min_bytes, max_bytes]``: a probe on a slow link stays short, one on a fast link is large
   enough to stand out of the RTT's noise.

Then the client re-plans (the same hysteresis as after a request).

Cost on a remote plan whose requests stopped measuring the link (when a caller uses that), by
construction: at most one probe in flight and one started per ``interval_s`` (default 5 s), only while
``infer()`` is being called and the link is not otherwise observed. A probe is about 100 bytes of
ServerLive plus ``n`` <= ``max_bytes`` (default 256 KiB) up and ~10 bytes down, so it takes about
``target_ms`` (default 25 ms) of the link per ``interval_s``, ~0.5 % of its capacity on the default
settings (at most 256 KiB / 5 s = 0.4 Mbit/s on a link faster than 84 Mbit/s). A server without the
Probe RPC (a stock v2 server) answers UNIMPLEMENTED: the prober then pings only, which tracks the RTT
but not the bandwidth.

Recovery time: a probe ``step_ratio`` x faster than the estimate is a step of the link
(:class:`~splitdnn.runtime._estimator.LinkEstimator`): the estimate restarts from it, free of the
slow samples before it, and the planner switches on that one re-plan if the new plan is ``margin``
faster. While edge-only, a payload is sized to ``target_ms`` (25 ms) of a link ``optimism`` (4) x
faster than estimated, so it still takes a measurable time if the link has come back; when it was
too short to time anyway (it fitted in the link's burst), the estimate only says "``step_ratio`` x
faster", and while the plan stays edge-only up to two more payloads, sized for the new estimate, go
at once. Probes run every ``edge_interval_s`` (default 0.25 s, counted from the end of the previous
probe, only when ``infer()`` is called), so a recovered link is seen within about
``edge_interval_s`` + one probe + one local request.

Cost while edge-only, by construction: one probe per ``edge_interval_s`` + its own duration. A probe
is ~100 bytes of ServerLive plus a payload of ``optimism`` x ``target_ms`` = ~100 ms of the link at
its estimated rate (at least ``min_bytes``, 8 KiB), so two round trips and ~100 ms of the link per
~0.4 s: on a 1.1 Mbit/s link with a 20 ms RTT, 13.75 KB every ~0.39 s, ~35 KB/s (~280 kbit/s, ~26 %
of the link, ~127 MB an hour spent edge-only); on a 0.13 Mbit/s link, where the 8 KiB floor takes
0.5 s, ~10 KB/s (~64 % of that link). That is the price of a recovery seen within a second. Raise
``edge_interval_s`` (``SplitClient(probe_edge_interval_s=...)``) to trade recovery time for bytes:
the cost scales as 1 / (``edge_interval_s`` + probe time).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from splitdnn.errors import ConfigError, RemoteError, SplitDNNError
from splitdnn.schema import Link

__all__ = ["LinkProber", "ProbeSettings"]


#: payloads sent right after one that showed a step while the plan stayed edge-only (sized for the
#: new estimate: the first, sized for the old one, may have been too short to time on the new link)
_FOLLOW_UPS = 2


@dataclass(frozen=True)
class ProbeSettings:
    """How often and how big a link probe is (see the module docstring for what it costs)."""

    interval_s: float = 5.0  # at most one probe started per interval; also "stale observation" age
    max_bytes: int = 256 << 10  # the largest probe payload
    min_bytes: int = 8 << 10  # the smallest: enough to show a slow link's per-byte time over its RTT
    target_ms: float = 25.0  # a probe is sized to take about this long at the estimated bandwidth
    # while edge-only: the pause from one probe's end to the next one's start (recovery time vs bytes)
    edge_interval_s: float = 0.25
    # while edge-only, a probe is sized for a link this many times faster than estimated: one that
    # carries about target_ms of that link stands out of the RTT's noise (and the link's burst) if
    # the link has come back, and takes optimism x target_ms if it has not
    optimism: float = 4.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.optimism, bool)
            or not isinstance(self.optimism, (int, float))
            or not (1 <= self.optimism < math.inf)
        ):
            raise ConfigError(f"probe optimism must be a finite number >= 1, found {self.optimism!r}")
        for name in ("interval_s", "target_ms", "edge_interval_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"probe {name} must be a finite number > 0, found {v!r}")
        lo, hi = self.min_bytes, self.max_bytes
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (lo, hi)) or not 1 <= lo <= hi:
            raise ConfigError(
                f"probe min_bytes and max_bytes must be integers with 1 <= min_bytes <= max_bytes, "
                f"found {lo!r} and {hi!r}"
            )

    def payload_bytes(self, link: Link, *, edge_only: bool = False) -> int:
        """The payload for a link estimated at ``link``: ``target_ms`` of its uplink (``optimism`` x
        its uplink while edge-only), clamped."""
        mbps = link.uplink_mbps * (self.optimism if edge_only else 1.0)
        n = int(mbps * 1e6 / 8 * self.target_ms / 1e3)
        return max(self.min_bytes, min(self.max_bytes, n))


class LinkProber:
    """Starts background probes when they are due; the client supplies the calls and the bookkeeping.

    ``ping()`` returns an RTT in ms; ``send(payload)`` returns ``(bytes_up, bytes_down, wall_ms)`` of
    one Probe RPC; ``observe_ping(ms)`` / ``observe(up, down, ms)`` fold samples into the estimate and
    re-plan (under the client's lock; ``observe`` returns True to ask for one more payload at once:
    the sample was a step, the plan is still edge-only, and the estimate it gave is a lower bound);
    ``link()`` is the current estimate; ``note(text)`` records what went wrong (a probe never raises
    into the client); ``remember(up, down, ms)`` keeps a sample for later fits without an update of
    its own (default: ``observe``). ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        settings: ProbeSettings,
        *,
        ping: Callable[[], float],
        send: Callable[[bytes], tuple[int, int, float]],
        observe_ping: Callable[[float], None],
        observe: Callable[[int, int, float], bool],
        link: Callable[[], Link],
        note: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        remember: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self._remember = remember if remember is not None else observe
        self._ping, self._send, self._link, self._note = ping, send, link, note
        self._observe_ping, self._observe = observe_ping, observe
        self._clock = clock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_start = -math.inf
        self._last_end = -math.inf  # when the last probe finished
        self._edge_only = False  # the plan was edge-only when the probe in flight started
        self._closed = False
        self._bandwidth = True  # False once the server said it has no Probe RPC
        self._random = os.urandom(settings.max_bytes)  # drawn once; slices of it are the payloads
        self.probes = 0  # probes started
        self.failures = 0  # probes that ended with an error

    def maybe_start(self, *, edge_only: bool, last_observed: float) -> bool:
        """Start a probe if one is due (edge-only, or no observation for ``interval_s``); never blocks.

        ``last_observed`` is the monotonic time of the newest link observation. Edge-only, a probe is
        due ``edge_interval_s`` after the previous one ended; otherwise ``interval_s`` after the
        previous one started. True if one started.
        """
        now = self._clock()
        interval = self.settings.interval_s
        if not edge_only and now - last_observed < interval:
            return False
        with self._lock:
            busy = self._thread is not None and self._thread.is_alive()
            if edge_only:
                early = now - self._last_end < min(self.settings.edge_interval_s, interval)
            else:
                early = now - self._last_start < interval
            if self._closed or busy or early:
                return False
            self._last_start = now
            self._edge_only = edge_only
            self.probes += 1
            self._thread = threading.Thread(target=self._probe, name="splitdnn-link-probe", daemon=True)
            self._thread.start()
        return True

    def probe_now(self) -> None:
        """Size up the link on the caller's thread, now (the client's start-up probe); never raises.

        A ping, then payloads of ``min_bytes``, 4 x that, ... up to ``max_bytes``, until one takes
        ``target_ms`` over the RTT: a slow link stops the ladder at its first, small rung (8 KiB: 0.5 s
        at 0.13 Mbit/s), a fast one climbs past its burst in a few round trips. The last rung is a
        sample for the estimator, and so is the one before it when it took a fifth of ``target_ms``
        over the RTT: past the link's burst, on the affine part of the curve (a rung inside the burst
        would read as infinitely fast). Two sizes 4 x apart let the estimator tell the burst from the
        rate before any request, whatever size the requests will be (see
        :mod:`splitdnn.runtime._estimator`).
        """
        with self._lock:
            if self._closed:
                return
            self._last_start = self._clock()
            self._edge_only = False
            self.probes += 1
        try:
            rtt = self._ping()
            self._observe_ping(rtt)
            n = self.settings.min_bytes
            timed: tuple[int, int, float] | None = None  # the rung before, if past the burst
            while not self._closed:
                sample = self._payload(n)
                if sample is None:
                    return
                up, down, ms = sample
                if ms - rtt >= self.settings.target_ms or n >= self.settings.max_bytes:
                    if timed is not None:
                        self._remember(*timed)
                    self._observe(up, down, ms)
                    return
                timed = sample if ms - rtt >= 0.2 * self.settings.target_ms else None
                n = min(self.settings.max_bytes, 4 * n)
        except SplitDNNError as err:
            self.failures += 1
            self._note(f"start-up link probe failed: {err}"[:300])
        finally:
            self._last_end = self._clock()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the probe in flight (if any) to finish; True when none is running."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self, timeout: float = 1.0) -> None:
        """Start no more probes; wait up to ``timeout`` s for the one in flight."""
        with self._lock:
            self._closed = True
        self.wait(timeout)

    def _payload(self, n: int) -> tuple[int, int, float] | None:
        """Send ``n`` random bytes: ``(bytes up, bytes down, wall ms)``; None if the server has no
        Probe RPC (said once: from then on probes only ping). Other errors are raised."""
        if not self._bandwidth:
            return None
        try:
            return self._send(self._random[:n])
        except RemoteError as err:
            if err.code != "UNIMPLEMENTED":
                raise
            self._bandwidth = False
            self._note("the server has no splitdnn.v1 Probe RPC: link probes measure the RTT only")
            return None

    def _probe(self) -> None:
        try:
            self._observe_ping(self._ping())
            for _ in range(1 + _FOLLOW_UPS):
                sample = self._payload(self.settings.payload_bytes(self._link(), edge_only=self._edge_only))
                if sample is None:
                    return
                if not self._observe(*sample) or self._closed:
                    return
        except SplitDNNError as err:  # the server went away, a deadline, ...: the next request sees it
            self.failures += 1
            if not self._closed:
                self._note(f"link probe failed: {err}"[:300])
        except ValueError:  # grpc: "Cannot invoke RPC on closed channel!" -- close() came in between
            if not self._closed:
                raise
        finally:
            self._last_end = self._clock()
