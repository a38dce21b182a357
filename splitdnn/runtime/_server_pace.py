"""How fast the server really answers, against its profile (pure Python: no torch, no grpc).

The planner prices the server's part of a plan from the server's profile, measured when the server
was idle. A server that other clients keep busy, that shares its machine, or that computes slower
after idling through a long upload (its caches cold, its core clocked down) answers slower than that,
and a client planning with the profile alone keeps sending it work it no longer does fast.
Neurosurgeon (Kang et al., ASPLOS 2017) re-prices the server by a load factor for the same reason.

:class:`ServerPace` keeps, for the client's last requests, the server's own reported time (decode +
compute, from the answer's parameters; the queue apart, see below) over what the profile predicted
for that part, and offers their median as the factor to scale the server's profile by:

* only requests whose predicted server part is at least ``min_predicted_ms``: a tail of a few
  microseconds is all fixed per-request cost, and its ratio says nothing about the rest of the model
  (its queue counts all the same);
* the median of the last ``window`` ratios younger than ``max_age_s``, once there are
  ``min_samples``. With fewer (but some), the factor in use stays; with none, it is 1 (the profile as
  published). So a client that stopped sending (edge-only) forgets the load ``max_age_s`` after its
  last answer and tries the server again; its switch is then checked by measurement
  (``Hysteresis.verify``) like any other;
* :meth:`due` proposes a new factor only when it differs from the one in use by more than
  ``tolerance`` (a fraction, either way), so noise does not re-price every request; :meth:`queue_due`
  a new queue only when it moved by more than ``tolerance`` of it and ``min_queue_move_ms``.

A splitdnn server also keeps its own account (:class:`LoadTracker`): per model, the median of compute
over what its profile predicts for each request's tail, and of the queue, over all its clients'
recent requests, and reports them in the answer to a link probe that names the model
(``ServerLoad``). The client folds them in with :meth:`ServerPace.report`: while edge-only it sends
no requests, so without the report it would forget a busy server ``max_age_s`` after its last answer
and pay give-ups to learn it again, and on a server that went idle it would wait out ``max_age_s``
before trying it. The newest evidence decides: a report newer than the client's last own ratio
stands for the pace, and one newer than its last own queue for the queue (from ``min_samples``
measured requests; a server where no request of any model arrived within its window and none is in
flight reports itself idle: pace 1, no queue), and the client's own samples take over as they
come. The server's ratio leaves out the decode (it does not know each frame's predicted decode
time): it differs from the client's own by the decode's share of the server part. A client folds
reports in only while it plans with the server's own profile, the one the server's ratio is against.

The server's time has two parts, priced apart. Its queue (the wait for a batch slot behind other
clients' requests) adds time whatever the cut: :attr:`ServerPace.queue_ms` is the median queue the
answers report (every answer's, a tiny tail's too, and the excess of a request the server held past
the client's give-up: :meth:`ServerPace.held`), over the last ``window`` younger than ``max_age_s``
as for the ratios, which the planner adds to every plan that uses the server. Its compute (and decode)
is slower by a factor on a server whose cores are shared: the factor is the median of (reported time
less the queue) over the prediction, and scales the server's profile. A single factor for both, as
before, priced a queue behind a 100 ms model as 100 ms times a factor: a cut with a 5 ms tail then
looked to wait 5 ms times that factor, and a factor over ``MAX_FACTOR`` was cut short there. Ratios
are clamped to ``[1 / MAX_FACTOR, MAX_FACTOR]``.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from splitdnn.errors import ConfigError
from splitdnn.runtime._estimator import check_positive

__all__ = ["MAX_FACTOR", "Load", "LoadTracker", "ServerPace"]

_V = TypeVar("_V")

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
        min_queue_move_ms: float = 2.0,
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
        self._min_queue_move_ms = check_positive("min_queue_move_ms", min_queue_move_ms)
        self._min_samples = min_samples
        self._tolerance = float(tolerance)
        self._clock = clock
        # per answered request of a tail big enough to time: (at_s, (reported - queue) / predicted)
        self._ratios: deque[tuple[float, float]] = deque(maxlen=window)
        # per answered request, and per request the server held past its give-up: (at_s, queue ms)
        self._queues: deque[tuple[float, float]] = deque(maxlen=window)
        self._reported: _Report | None = None  # the server's own account

    def observe(self, predicted_ms: float, reported_ms: float, queue_ms: float = 0.0) -> bool:
        """Fold in one answered request: the server part its profile predicted (unscaled by any
        factor in use), the time the server reported, and the part of it spent in the server's queue.
        The queue counts whatever the prediction; the ratio only for a prediction of at least
        ``min_predicted_ms``. False when nothing is used (a value that is not a finite number >= 0)."""
        if not (_finite(predicted_ms) and _finite(reported_ms) and _finite(queue_ms)):
            return False
        if predicted_ms < 0 or reported_ms < 0 or queue_ms < 0:
            return False
        now, queue = self._clock(), min(float(queue_ms), float(reported_ms))
        if predicted_ms >= self._min_predicted_ms:
            self._ratios.append((now, _clamped((reported_ms - queue) / predicted_ms)))
        self._queues.append((now, queue))
        return True

    def held(self, predicted_ms: float, at_least_ms: float, factor: float) -> bool:
        """Fold in a request the server held past the client's give-up: it took at least
        ``at_least_ms`` where ``predicted_ms`` (the profile's) times ``factor`` (the pace it was
        priced with) was its compute. The excess is queue: the server's other work, which every cut
        waits for alike; it says nothing of the compute's pace (a ratio from it would only repeat the
        factor in use). False when it says nothing (not over the compute as priced, or a value that
        is not a finite number >= 0)."""
        if not all(_finite(v) and v >= 0 for v in (predicted_ms, at_least_ms, factor)):
            return False
        excess = at_least_ms - predicted_ms * factor
        if excess <= 0:
            return False
        self._queues.append((self._clock(), float(excess)))
        return True

    def report(
        self, pace: float, requests: int, arrivals: int, in_flight: int, queue_ms: float = 0.0
    ) -> bool:
        """Fold in the server's own account (a probe's answer: over its ``requests`` recent measured
        requests, the median ``pace`` of their compute against its profile and their median
        ``queue_ms``; ``arrivals`` requests of any model in the same window, ``in_flight`` requests
        being served now). False when it says nothing: fewer than ``min_samples`` measured requests
        while the server is not idle (a standing report of an idle server then goes: it is not idle
        any more), or a pace that is not a finite number > 0 or a queue that is not one >= 0."""
        if requests >= self._min_samples:
            if not _finite(pace) or pace <= 0 or not _finite(queue_ms) or queue_ms < 0:
                return False
            ratio, queue = _clamped(float(pace)), float(queue_ms)
        elif arrivals == 0 and in_flight == 0:
            # nothing arrived, nothing being served: an idle server is as fast as its profile, no queue
            ratio, queue = 1.0, 0.0
            requests = 0  # an idle report, whatever few requests finished at the window's edge
        else:
            if self._reported is not None and self._reported.requests == 0:
                self._reported = None
            return False
        self._reported = _Report(self._clock(), ratio, requests, queue)
        return True

    def clear(self) -> None:
        """Forget every sample (the server's profile changed: the ratios were against another)."""
        self._ratios.clear()
        self._queues.clear()
        self._reported = None

    @property
    def samples(self) -> int:
        """Ratios within ``max_age_s`` now (the client's own answered requests of a tail big enough
        to time)."""
        return len(_fresh(self._ratios, self._clock() - self._max_age_s))

    @property
    def queue_samples(self) -> int:
        """Queues within ``max_age_s`` now (the client's own answered and held requests)."""
        return len(_fresh(self._queues, self._clock() - self._max_age_s))

    @property
    def reported(self) -> int | None:
        """When the server's report stands for the pace now: the number of requests it is over (0: an
        idle server); else None (the client's own samples decide)."""
        rep = self._standing_report(self._ratios)
        return None if rep is None else rep.requests

    @property
    def factor(self) -> float:
        """The compute pace now: the server's report when it is newer than the client's last ratio,
        else the median recent ratio; 1 with neither (fewer than ``min_samples`` recent ratios)."""
        rep = self._standing_report(self._ratios)
        if rep is not None:
            return rep.pace
        return self._median(self._ratios, 1.0)

    @property
    def queue_ms(self) -> float:
        """The server's queue now (ms): the server's report when it is newer than the client's last
        queue sample, else the median recent queue; 0 with neither."""
        rep = self._standing_report(self._queues)
        if rep is not None:
            return rep.queue_ms
        return self._median(self._queues, 0.0)

    def due(self, applied: float) -> float | None:
        """The factor to price the server with instead of ``applied`` (the one in use), or None when
        it is within ``tolerance`` of it, or there are recent ratios but too few to say (it stays)."""
        if self._undecided(self._ratios):
            return None
        new = self.factor
        if abs(math.log(new / applied)) <= math.log1p(self._tolerance):
            return None
        return new

    def queue_due(self, applied_ms: float) -> float | None:
        """The queue (ms) to price the server with instead of ``applied_ms``, or None when it moved
        by no more than ``tolerance`` of the larger of the two or ``min_queue_move_ms`` (an idle
        server's few microseconds never re-price it), or there are recent queues but too few to say
        (it stays)."""
        if self._undecided(self._queues):
            return None
        new = self.queue_ms
        if abs(new - applied_ms) <= max(self._min_queue_move_ms, self._tolerance * max(new, applied_ms)):
            return None
        return new

    def _median(self, series: deque[tuple[float, float]], default: float) -> float:
        values = _fresh(series, self._clock() - self._max_age_s)
        return statistics.median(values) if len(values) >= self._min_samples else default

    def _undecided(self, series: deque[tuple[float, float]]) -> bool:
        """Some recent samples of the client's own in ``series``, too few to say, and no report newer."""
        n = len(_fresh(series, self._clock() - self._max_age_s))
        return self._standing_report(series) is None and 0 < n < self._min_samples

    def _standing_report(self, series: deque[tuple[float, float]]) -> _Report | None:
        """The server's report if it is within ``max_age_s`` and newer than the client's last sample
        in ``series`` (its ratios for the pace, its queues for the queue)."""
        rep = self._reported
        if rep is None or rep.at_s < self._clock() - self._max_age_s:
            return None
        if series and series[-1][0] > rep.at_s:
            return None
        return rep


def _fresh(series: deque[tuple[float, _V]], oldest: float) -> list[_V]:
    """The values of ``series`` (at_s, value) no older than ``oldest``; older ones are dropped."""
    while series and series[0][0] < oldest:
        series.popleft()
    return [v for _, v in series]


class _Report(NamedTuple):
    at_s: float
    pace: float  # compute pace, clamped; 1 for an idle server
    requests: int  # 0: an idle server
    queue_ms: float


class Load(NamedTuple):
    """What :meth:`LoadTracker.report` says of one model."""

    pace: float  # median (queue + compute) / predicted: the single factor of older clients
    compute_pace: float  # median compute / predicted
    queue_ms: float  # median queue
    requests: int  # how many measured requests these medians are over (0: the three are 0)
    arrivals: int  # requests of any model within the window


class LoadTracker:
    """The server's side: per model, its pace and queue over its recent requests (all clients'), for
    probes.

    Each measured request gives its queue (ms) and its compute over what its profile predicts for the
    request's tail; :meth:`report` gives, over the last ``window`` requests younger than
    ``max_age_s``, the median of (queue + compute) over the prediction (the single factor older
    clients read), of compute over it, and of the queue; how many; and how many requests of any model
    arrived in that time (measured or not, server-wide: a server busy with requests it cannot
    measure, or with another model, is not idle). Predictions under 1 ms are not measured (all fixed
    cost). Thread-safe (request handlers and batches observe, probe handlers report)."""

    def __init__(
        self, *, window: int = 32, max_age_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window, self.max_age_s = window, max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        # per model: (at_s, ((queue + compute) / predicted, compute / predicted, queue ms)), clamped
        self._samples: dict[str, deque[tuple[float, tuple[float, float, float]]]] = {}
        self._arrivals: deque[float] = deque(maxlen=4096)  # enough to say "busy"

    def arrived(self) -> None:
        """A request (of any model) arrived."""
        with self._lock:
            self._arrivals.append(self._clock())

    def observe(self, model: str, predicted_ms: float, queue_ms: float, compute_ms: float) -> None:
        if not all(_finite(v) and v >= 0 for v in (predicted_ms, queue_ms, compute_ms)) or predicted_ms < 1.0:
            return
        total, compute = (queue_ms + compute_ms) / predicted_ms, compute_ms / predicted_ms
        sample = (self._clock(), (_clamped(total), _clamped(compute), float(queue_ms)))
        with self._lock:
            kept = self._samples.get(model)
            if kept is None:
                kept = self._samples[model] = deque(maxlen=self.window)
            kept.append(sample)

    def report(self, model: str) -> Load:
        """``model``'s medians and the arrivals of any model (the medians 0 with none measured)."""
        with self._lock:
            oldest = self._clock() - self.max_age_s
            kept = _fresh(self._samples.get(model, deque()), oldest)
            times = self._arrivals
            while times and times[0] < oldest:
                times.popleft()
            if not kept:
                return Load(0.0, 0.0, 0.0, 0, len(times))
            total, compute, queue = (statistics.median(column) for column in zip(*kept, strict=True))
            return Load(total, compute, queue, len(kept), len(times))


def _clamped(ratio: float) -> float:
    return min(MAX_FACTOR, max(1.0 / MAX_FACTOR, ratio))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
