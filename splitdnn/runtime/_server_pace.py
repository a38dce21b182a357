"""How fast the server really answers, against its profile (pure Python: no torch, no grpc).

The planner prices the server's part of a plan from the server's profile, measured when the server
was idle. A server that other clients keep busy, that shares its machine, or that computes slower
after idling through a long upload (its caches cold, its core clocked down) answers slower than that,
and a client planning with the profile alone keeps sending it work it no longer does fast.
Neurosurgeon (Kang et al., ASPLOS 2017) re-prices the server by a load factor for the same reason.

:class:`ServerPace` keeps, for the client's last requests, the server's own reported time (queue +
decode + compute, from the answer's parameters) over what the profile predicted for that part, and
offers their median as the factor to scale the server's profile by:

* only requests whose predicted server part is at least ``min_predicted_ms``: a tail of a few
  microseconds is all fixed per-request cost, and its ratio says nothing about the rest of the model;
* the median of the last ``window`` ratios younger than ``max_age_s``, once there are
  ``min_samples``. With fewer (but some), the factor in use stays; with none, it is 1 (the profile as
  published). So a client that stopped sending (edge-only) forgets the load ``max_age_s`` after its
  last answer and tries the server again; its switch is then checked by measurement
  (``Hysteresis.verify``) like any other;
* :meth:`due` proposes a new factor only when it differs from the one in use by more than
  ``tolerance`` (a fraction, either way), so noise does not re-price every request.

A splitdnn server also keeps its own account (:class:`LoadTracker`): per model, the median of (queue +
compute) over what its profile predicts for each request's tail, over all its clients' recent requests,
and reports it in the answer to a link probe that names the model (``ServerLoad``). The client folds
that in with :meth:`ServerPace.report`: while edge-only it sends no requests, so without the report it
would forget a busy server ``max_age_s`` after its last answer and pay give-ups to learn it again, and
on a server that went idle it would wait out ``max_age_s`` before trying it. The newest evidence
decides: a report newer than the client's last own sample stands for the pace (from ``min_samples``
measured requests; a server where no request of any model arrived within its window and none is in
flight reports an idle pace, 1), and the client's own samples take over as they come. The server's
ratio leaves out the decode (it does not know each frame's predicted decode time): it differs from
the client's own by the decode's share of the server part. A client folds reports in only while it
plans with the server's own profile, the one the server's ratio is against.

The factor scales every server time the same way (the whole tail, the decode), which is a model: a
queue behind other clients adds time rather than multiplying it. It is right on average for the cut
it is measured with and approximate for others; ratios are clamped to ``[1 / MAX_FACTOR, MAX_FACTOR]``.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

from splitdnn.errors import ConfigError
from splitdnn.runtime._estimator import check_positive

__all__ = ["MAX_FACTOR", "LoadTracker", "ServerPace"]

MAX_FACTOR = 10.0  # a server measured more than this many times slower (or faster) is priced at this


class ServerPace:
    """The server's measured time over its profile's prediction, over the client's recent requests.

    ``clock`` is injectable (seconds, monotonic) for tests.
    """

    def __init__(
        self,
        *,
        window: int = 8,
        min_samples: int = 3,
        max_age_s: float = 30.0,
        tolerance: float = 0.25,
        min_predicted_ms: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value, low in (("window", window, 1), ("min_samples", min_samples, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, found {value!r}")
        if min_samples > window:
            raise ConfigError(f"min_samples ({min_samples}) must not exceed window ({window})")
        self._max_age_s = check_positive("max_age_s", max_age_s)
        self._min_predicted_ms = check_positive("min_predicted_ms", min_predicted_ms)
        if not _finite(tolerance) or not 0 <= tolerance < 1:
            raise ConfigError(f"tolerance must be a fraction in [0, 1), found {tolerance!r}")
        self._min_samples = min_samples
        self._tolerance = float(tolerance)
        self._clock = clock
        self._ratios: deque[tuple[float, float]] = deque(maxlen=window)  # (at_s, reported / predicted)
        self._reported: tuple[float, float, int] | None = None  # the server's own: (at_s, pace, requests)

    def observe(self, predicted_ms: float, reported_ms: float) -> bool:
        """Fold in one answered request: the server part its profile predicted (unscaled by any
        factor in use) and the time the server reported. False when it is not used (a prediction
        under ``min_predicted_ms``, or a value that is not a finite number >= 0)."""
        if not (_finite(predicted_ms) and _finite(reported_ms)) or reported_ms < 0:
            return False
        if predicted_ms < self._min_predicted_ms:
            return False
        ratio = min(MAX_FACTOR, max(1.0 / MAX_FACTOR, reported_ms / predicted_ms))
        self._ratios.append((self._clock(), ratio))
        return True

    def report(self, pace: float, requests: int, arrivals: int, in_flight: int) -> bool:
        """Fold in the server's own account of its pace (a probe's answer: the median over its
        ``requests`` recent measured requests, ``arrivals`` requests of any model in the same window,
        ``in_flight`` requests being served now). False when it says nothing: fewer than
        ``min_samples`` measured requests while the server is not idle (a standing report of an idle
        server then goes: it is not idle any more), or a pace that is not a finite number > 0."""
        if requests >= self._min_samples:
            if not _finite(pace) or pace <= 0:
                return False
            ratio = min(MAX_FACTOR, max(1.0 / MAX_FACTOR, float(pace)))
        elif arrivals == 0 and in_flight == 0:
            ratio = 1.0  # nothing arrived, nothing being served: an idle server is as fast as its profile
            requests = 0  # an idle report, whatever few requests finished at the window's edge
        else:
            if self._reported is not None and self._reported[2] == 0:
                self._reported = None
            return False
        self._reported = (self._clock(), ratio, requests)
        return True

    def clear(self) -> None:
        """Forget every sample (the server's profile changed: the ratios were against another)."""
        self._ratios.clear()
        self._reported = None

    @property
    def samples(self) -> int:
        """Ratios within ``max_age_s`` now (the client's own requests)."""
        return len(self._fresh())

    @property
    def reported(self) -> int | None:
        """When the server's report stands for the pace now: the number of requests it is over (0: an
        idle server); else None (the client's own samples decide)."""
        rep = self._standing_report()
        return None if rep is None else rep[2]

    @property
    def factor(self) -> float:
        """The pace now: the server's report when it is the newest evidence, else the median recent
        ratio; 1 with neither (fewer than ``min_samples`` recent requests of the client's own)."""
        rep = self._standing_report()
        if rep is not None:
            return rep[1]
        fresh = self._fresh()
        return statistics.median(fresh) if len(fresh) >= self._min_samples else 1.0

    def due(self, applied: float) -> float | None:
        """The factor to price the server with instead of ``applied`` (the one in use), or None when
        it is within ``tolerance`` of it, or there are recent ratios but too few to say (it stays)."""
        if self._standing_report() is None and 0 < self.samples < self._min_samples:
            return None
        new = self.factor
        if abs(math.log(new / applied)) <= math.log1p(self._tolerance):
            return None
        return new

    def _fresh(self) -> list[float]:
        oldest = self._clock() - self._max_age_s
        while self._ratios and self._ratios[0][0] < oldest:
            self._ratios.popleft()
        return [r for _, r in self._ratios]

    def _standing_report(self) -> tuple[float, float, int] | None:
        """The server's report if it is within ``max_age_s`` and newer than the client's last sample."""
        rep = self._reported
        if rep is None or rep[0] < self._clock() - self._max_age_s:
            return None
        if self._ratios and self._ratios[-1][0] > rep[0]:
            return None
        return rep


class LoadTracker:
    """The server's side: per model, its pace over its recent requests (all clients'), for probes.

    Each measured request gives (queue + compute) over the compute its profile predicts for the
    request's tail; :meth:`report` gives their median over the last ``window`` requests younger than
    ``max_age_s``, how many, and how many requests of any model arrived in that time (measured or
    not, server-wide: a server busy with requests it cannot measure, or with another model, is not
    idle). Thread-safe (request handlers
    and batches observe, probe handlers report)."""

    def __init__(
        self, *, window: int = 32, max_age_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window, self.max_age_s = window, max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._paces: dict[str, ServerPace] = {}
        self._arrivals: deque[float] = deque(maxlen=4096)  # enough to say "busy"

    def arrived(self) -> None:
        """A request (of any model) arrived."""
        with self._lock:
            self._arrivals.append(self._clock())

    def observe(self, model: str, predicted_ms: float, took_ms: float) -> None:
        with self._lock:
            pace = self._paces.get(model)
            if pace is None:
                pace = self._paces[model] = ServerPace(
                    window=self.window, min_samples=1, max_age_s=self.max_age_s, clock=self._clock
                )
            pace.observe(predicted_ms, took_ms)

    def report(self, model: str) -> tuple[float, int, int]:
        """(median pace, requests it is over) for ``model``, and the arrivals of any model; pace 0
        with none measured."""
        with self._lock:
            pace = self._paces.get(model)
            n = pace.samples if pace is not None else 0
            times, oldest = self._arrivals, self._clock() - self.max_age_s
            while times and times[0] < oldest:
                times.popleft()
            return (pace.factor if pace is not None and n else 0.0), n, len(times)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
