"""Link probing for the edge client: measure the link when the client's own requests cannot (grpc-free).

The client estimates the link from its own requests (:class:`~splitdnn.runtime.planner.LinkEstimator`).
Once it plans edge-only because the link looked slow, it sends nothing and would never see the link
recover. A :class:`LinkProber` closes that loop: when the plan is edge-only, or the newest link
observation is older than ``interval_s`` (e.g. every request finished locally), an ``infer()`` call
starts one probe on a background thread, so the caller's inference is never delayed:

1. an empty round trip (v2 ServerLive) -> a direct RTT sample (``observe_ping``);
2. a splitdnn.v1 ``Probe`` carrying ``n`` random bytes, answered at once by the server -> a
   ``(n bytes, wall ms)`` sample, exactly like a request whose server time is zero (``observe``).
   The payload is random (no compression on the path can shrink it) and is never the input or any
   tensor of the model, so it respects ``privacy_floor``. ``n`` is what the current estimate says
   the link carries in ``target_ms``, within ``[min_bytes, max_bytes]``: a probe on a slow link
   stays short, one on a fast link is large enough to stand out of the RTT's noise.

Then the client re-plans (the same hysteresis as after a request).

Cost, by construction: at most one probe in flight and one started per ``interval_s`` (default 5 s),
only while ``infer()`` is being called and the link is not otherwise observed. A probe is about
100 bytes of ServerLive plus ``n`` <= ``max_bytes`` (default 256 KiB) up and ~10 bytes down, so it
takes about ``target_ms`` (default 100 ms) of the link per ``interval_s``, ~2 % of its capacity on the
default settings (at most 256 KiB / 5 s = 0.4 Mbit/s on a link faster than 20 Mbit/s). A server
without the Probe RPC (a stock v2 server) answers UNIMPLEMENTED: the prober then pings only, which
tracks the RTT but not the bandwidth.

Recovery time: a collapse is seen at once (the estimator's slow-wins rule); a recovery needs a few
probes, because the estimator takes the median of its last three per-byte times and smooths them
(each probe on a recovered link about halves the estimated time per byte), then the planner's
hysteresis: a plan predicted ``urgent_margin`` faster switches at once, else after ``confirmations``
re-plans. With the defaults that is seconds to tens of seconds; ``interval_s`` scales it.
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


@dataclass(frozen=True)
class ProbeSettings:
    """How often and how big a link probe is (see the module docstring for what it costs)."""

    interval_s: float = 5.0  # at most one probe started per interval; also "stale observation" age
    max_bytes: int = 256 << 10  # the largest probe payload
    min_bytes: int = 8 << 10  # the smallest: enough to show a slow link's per-byte time over its RTT
    target_ms: float = 100.0  # a probe is sized to take about this long at the estimated bandwidth

    def __post_init__(self) -> None:
        for name in ("interval_s", "target_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"probe {name} must be a finite number > 0, found {v!r}")
        lo, hi = self.min_bytes, self.max_bytes
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (lo, hi)) or not 1 <= lo <= hi:
            raise ConfigError(
                f"probe min_bytes and max_bytes must be integers with 1 <= min_bytes <= max_bytes, "
                f"found {lo!r} and {hi!r}"
            )

    def payload_bytes(self, link: Link) -> int:
        """The payload for a link estimated at ``link``: ``target_ms`` of its uplink, clamped."""
        n = int(link.uplink_mbps * 1e6 / 8 * self.target_ms / 1e3)
        return max(self.min_bytes, min(self.max_bytes, n))


class LinkProber:
    """Starts background probes when they are due; the client supplies the calls and the bookkeeping.

    ``ping()`` returns an RTT in ms; ``send(payload)`` returns ``(bytes_up, bytes_down, wall_ms)`` of
    one Probe RPC; ``observe_ping(ms)`` / ``observe(up, down, ms)`` fold samples into the estimate and
    re-plan (under the client's lock); ``link()`` is the current estimate; ``note(text)`` records what
    went wrong (a probe never raises into the client). ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        settings: ProbeSettings,
        *,
        ping: Callable[[], float],
        send: Callable[[bytes], tuple[int, int, float]],
        observe_ping: Callable[[float], None],
        observe: Callable[[int, int, float], None],
        link: Callable[[], Link],
        note: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._ping, self._send, self._link, self._note = ping, send, link, note
        self._observe_ping, self._observe = observe_ping, observe
        self._clock = clock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_start = -math.inf
        self._closed = False
        self._bandwidth = True  # False once the server said it has no Probe RPC
        self._random = os.urandom(settings.max_bytes)  # drawn once; slices of it are the payloads
        self.probes = 0  # probes started
        self.failures = 0  # probes that ended with an error

    def maybe_start(self, *, edge_only: bool, last_observed: float) -> bool:
        """Start a probe if one is due (edge-only, or no observation for ``interval_s``); never blocks.

        ``last_observed`` is the monotonic time of the newest link observation. True if one started.
        """
        now = self._clock()
        interval = self.settings.interval_s
        if not edge_only and now - last_observed < interval:
            return False
        with self._lock:
            busy = self._thread is not None and self._thread.is_alive()
            if self._closed or busy or now - self._last_start < interval:
                return False
            self._last_start = now
            self.probes += 1
            self._thread = threading.Thread(target=self._probe, name="splitdnn-link-probe", daemon=True)
            self._thread.start()
        return True

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

    def _probe(self) -> None:
        try:
            self._observe_ping(self._ping())
            if not self._bandwidth:
                return
            n = self.settings.payload_bytes(self._link())
            try:
                up, down, ms = self._send(self._random[:n])
            except RemoteError as err:
                if err.code != "UNIMPLEMENTED":
                    raise
                self._bandwidth = False
                self._note("the server has no splitdnn.v1 Probe RPC: link probes measure the RTT only")
                return
            self._observe(up, down, ms)
        except SplitDNNError as err:  # the server went away, a deadline, ...: the next request sees it
            self.failures += 1
            if not self._closed:
                self._note(f"link probe failed: {err}"[:300])
