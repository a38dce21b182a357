"""What a request with a deadline does once its head has run: send it, and for how long to wait.

A request with ``infer(..., deadline_ms=)`` has two ways to finish from the head's outputs: send the
rest to the server, or finish on the device. It may also send first and, if no answer has come by
some moment ``w``, finish on the device from there. Judged by the medians alone (the profiles and
the link estimate), a deadline near them is missed about half the time, and the moment to give up
is a guess. So the client keeps how its recent requests went against what was predicted for them
(:class:`History`: measured over predicted, one window for the remote rest, one for the device's
runs that finish a request, one for its heads) and picks the ``w`` that makes the deadline most
likely (:func:`deadline_wait_ms`): with ``P_r`` the chance the answer is in by a time and ``P_d``
the chance the device finishes within one,

    P(made) = P_r(w) + (1 - P_r(w)) * P_d(left - w)

over ``w`` from 0 (finish on the device now, send nothing) to waiting for the answer whatever it
takes. Ratios instead of times carry the history across plans, rows and a moving link estimate: the
estimate follows the link's rate, the ratios its spread and the estimate's own error.

A request given up says only that its answer would have come later than it waited: a censored
sample. The chance of an answer by a time is the Kaplan-Meier estimate, which neither counts such a
request as made nor as never coming. Kept as censored: the client's give-up of a fallen link, and a
deadline's cut after which the device surely made it (by its window). Not kept: a deadline's cut the
device might miss after. That cut was this rule's own choice; kept, it would hide every later answer
from the rule for good, and the rule would keep cutting there. Left out, the window looks better
than the link is, so the rule waits longer next time and sees the late answers. After a sure cut
only whether answers beat it matters, and censoring tells that exactly.

The windows keep 64 samples each, none older than 60 s. A client whose deadlines finish on the
device at once sends nothing that would renew its remote window (nor its link estimate), so what a
slow spell of the link left there would decide the next minute's choices: the device, even once the
remote had become the faster path or the likelier one. So such a request is also sent in the
background now and then, as a probe (:class:`RemoteProbes`: one at a time, not while the window has
a sample younger than the probes' interval, spaced to take at most :data:`PROBE_SHARE` of the time
on the remote path, cancelled by the client's next request sent and then kept as given up), whose
answer only renews the window and the estimate; the caller's result is the device's. Measured in
``scripts/bench_deadline.py`` (docs/benchmarks.md). Pure Python: no torch, no grpc.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from splitdnn.errors import SplitDNNError

__all__ = [
    "MIN_SAMPLES",
    "PROBE_SHARE",
    "Choice",
    "Distribution",
    "History",
    "RemoteProbes",
    "Spread",
    "deadline_wait_ms",
    "median_rule_wait_ms",
    "spread_or_none",
]

#: answered requests a window needs before its distribution replaces the medians
MIN_SAMPLES = 8
#: requests and device runs kept per window
WINDOW = 64
#: ... for this long (s): a client whose deadlines all finish on the device sends nothing that would
#: renew its remote window, so what the window holds ages out, and the medians send again
MAX_AGE_S = 60.0
#: deadline probes take at most this share of the time on the remote path (by the plan's prediction
#: of the request's: a probe predicted at 100 ms comes at most once a second)
PROBE_SHARE = 0.1
#: device computations predicted shorter than this are not kept: a 0.2 ms layer's jitter says little
#: about a 50 ms local finish
MIN_DEVICE_MS = 1.0


@dataclass(frozen=True)
class Distribution:
    """An empirical distribution of ratios, measured over predicted: ``P(ratio <= x)`` by :meth:`cdf`."""

    points: tuple[float, ...]  # distinct ratios at which the chance steps up, ascending
    steps: tuple[float, ...]  # P(ratio <= points[i])

    def cdf(self, ratio: float) -> float:
        i = bisect_right(self.points, ratio)
        return self.steps[i - 1] if i else 0.0

    def partial_mean(self, ratio: float = math.inf) -> float:
        """``E[r; r <= ratio]``: the mean of the ratios up to ``ratio``, weighted by their chance (the
        plain mean at infinity when nothing is censored)."""
        total, below = 0.0, 0.0
        for point, step in zip(self.points, self.steps, strict=True):
            if point > ratio:
                break
            total += point * (step - below)
            below = step
        return total

    @classmethod
    def of(cls, samples: Iterable[tuple[float, bool]]) -> Distribution:
        """The Kaplan-Meier estimate from ``(ratio, censored)`` samples: a censored ratio was not
        reached by the time it was given up. Without censored samples: the plain empirical CDF."""
        ordered = sorted(samples, key=lambda s: (s[0], s[1]))  # a death before a censoring at one time
        at_risk, survive = len(ordered), 1.0
        points: list[float] = []
        steps: list[float] = []
        i = 0
        while i < len(ordered):
            ratio, deaths, censored = ordered[i][0], 0, 0
            while i < len(ordered) and ordered[i][0] == ratio:
                if ordered[i][1]:
                    censored += 1
                else:
                    deaths += 1
                i += 1
            if deaths:
                survive *= 1.0 - deaths / at_risk
                points.append(ratio)
                steps.append(1.0 - survive)
            at_risk -= deaths + censored
        return cls(tuple(points), tuple(steps))


#: one sure ratio of 1: the medians taken as they are
EXACT = Distribution((1.0,), (1.0,))


class Spread:
    """The last ``window`` ratios of measured to predicted time of one kind of work, none older than
    ``max_age_s`` (thread-safe). ``censored``: the work was given up after ``measured_ms`` without
    finishing. ``clock``: seconds, monotonic (tests pass their own)."""

    def __init__(
        self, window: int = WINDOW, max_age_s: float = MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, bool, float]] = deque(maxlen=window)
        self._max_age_s = max_age_s
        self._clock = clock
        # (samples, their distribution, how many finished) as they are; None: changed since
        self._known: tuple[list[tuple[float, bool]], Distribution, int] | None = None

    def add(self, measured_ms: float, predicted_ms: float, *, censored: bool = False) -> None:
        if not (predicted_ms > 0 and math.isfinite(predicted_ms) and measured_ms >= 0):
            return
        with self._lock:
            self._samples.append((measured_ms / predicted_ms, censored, self._clock()))
            self._known = None

    def _state(self) -> tuple[list[tuple[float, bool]], Distribution, int]:
        """The fresh ``(ratio, censored)`` samples, their distribution and how many finished (kept
        until they change: a request with a deadline asks for all of two or three windows)."""
        with self._lock:
            oldest = self._clock() - self._max_age_s
            while self._samples and self._samples[0][2] < oldest:
                self._samples.popleft()
                self._known = None
            if self._known is None:
                samples = [(r, c) for r, c, _ in self._samples]
                self._known = samples, Distribution.of(samples), sum(1 for _, c in samples if not c)
            return self._known

    def _fresh(self) -> list[tuple[float, bool]]:
        return self._state()[0]

    def age_s(self) -> float:
        """Seconds since the newest sample was kept (infinite: none in the window)."""
        with self._lock:
            return self._clock() - self._samples[-1][2] if self._samples else math.inf

    def __len__(self) -> int:
        return len(self._fresh())

    def answered(self) -> int:
        """Samples that finished (not censored)."""
        return self._state()[2]

    def distribution(self) -> Distribution:
        return self._state()[1]

    def quantile(self, q: float) -> float | None:
        """The ratio at or under which a share ``q`` of the work finished (None: never, as far as
        the window knows, or no samples); for reports."""
        d = self.distribution()
        for point, p in zip(d.points, d.steps, strict=True):
            if p >= q:
                return point
        return None


def median_rule_wait_ms(left_ms: float, rest_ms: float, local_ms: float) -> float:
    """The wait by the medians alone: finish on the device now (0) when the rest is predicted to miss
    the deadline and the device is predicted sooner; otherwise until the last moment the device still
    makes it, or for the answer (infinite) once that has passed."""
    if rest_ms > left_ms and local_ms < rest_ms:
        return 0.0
    wait = left_ms - local_ms
    return wait if wait > 0 else math.inf


@dataclass(frozen=True)
class Choice:
    """What a request with a deadline does after its head (:func:`deadline_wait_ms`)."""

    wait_ms: float  # how long to wait for the answer: 0, send nothing; infinite, whatever it takes
    made: float  # the chance it makes the deadline so (by the windows; nan by the medians)
    sure: bool  # the device surely makes it after the wait (by its window), if the answer is not in


def deadline_wait_ms(
    left_ms: float,
    rest_ms: float,
    local_ms: float,
    remote: Distribution | None,
    device: Distribution | None,
) -> Choice:
    """How long from now to wait for the server's answer before finishing on the device instead, to
    make a deadline ``left_ms`` away most likely: 0 means finish on the device now and send nothing,
    infinite means send and wait for the answer whatever it takes.

    ``rest_ms``: the plan's predicted time for the rest of the request (encode, network, server,
    decode); ``local_ms``: the device's predicted time to finish it; ``remote`` and ``device``: the
    ratios, measured over predicted, of recent requests' rests and device runs (None: too few: the
    medians are taken as they are, :func:`median_rule_wait_ms`, when ``remote`` is; the device's
    prediction as exact when ``device`` is).

    Among waits equally likely to make it: the longest after which the device still surely makes
    it (by its window), since a cut then hedges against an answer later than any in the window (a
    network's tail is heavier than a device's), unless finishing on the device at once is as likely,
    sooner on average, and the answer mostly comes after that cut; without such a wait, waiting for
    the answer (the plan is the fastest one predicted). Never a wait by the end of which no answer
    has come yet (finishing here at once makes it as often, and sends nothing). When no wait makes
    it at all, as the medians say (the path that misses by less)."""
    if remote is None or left_ms <= 0 or rest_ms <= 0:
        return Choice(median_rule_wait_ms(left_ms, rest_ms, local_ms), math.nan, False)
    device = device or EXACT

    # P(made) is a step function of w: it can rise only where an answer comes (a remote point) and
    # fall only just past the last moment the device still makes it (left - a device point). One
    # sweep up the waits, a pointer into each window (a tolerance of 1e-9: left - (left - x) != x)
    answers = [rest_ms * r for r in remote.points]
    finishes = [local_ms * d for d in device.points] if local_ms > 0 else [0.0]
    d_steps = device.steps if local_ms > 0 else (1.0,)
    tol = 1e-9 * max(1.0, left_ms)
    waits = sorted(
        {0.0, *(a for a in answers if a < left_ms), *(left_ms - f for f in finishes if f < left_ms)}
    )
    i = 0  # answers in by w
    j = bisect_right(finishes, left_ms + tol)  # device runs that make it from w on
    in_time = bisect_right(answers, left_ms)
    chances = {math.inf: (remote.steps[in_time - 1] if in_time else 0.0, 0.0)}  # no cut: the answer in time
    for w in waits:
        while i < len(answers) and answers[i] <= w + tol:
            i += 1
        while j and finishes[j - 1] > left_ms - w + tol:
            j -= 1
        pr = remote.steps[i - 1] if i else 0.0
        if pr <= 0.0 and w > 0.0:  # no answer comes by then: finishing here now makes it as often
            continue
        pd = d_steps[j - 1] if j else 0.0
        chances[w] = (pr + (1.0 - pr) * pd, pd)
    best = max(p for p, _ in chances.values())
    if best <= 0.0:
        return Choice(median_rule_wait_ms(left_ms, rest_ms, local_ms), 0.0, False)
    tied = [w for w, (p, _) in chances.items() if p >= best - 1e-12]
    # the hedges: a cut after which the device still surely makes it. One the device may miss is
    # worse than waiting for an answer later than the window's latest: any answer between the cut
    # and the deadline is lost, for a device that may not make it
    hedges = [w for w in tied if 0.0 < w < math.inf and chances[w][1] >= 1.0 - 1e-12]
    if hedges:
        w = max(hedges)
        pr = remote.cdf(w / rest_ms)
        if 0.0 in tied and pr < 0.5:
            # the device at once is as sure, and the answer mostly comes after the cut: sending
            # mostly delays the device, so the device at once if it is also the sooner on average.
            # (Not where the answer mostly beats the cut: the plan's speed is the planner's call)
            device_ms = local_ms * device.partial_mean() if local_ms > 0 else 0.0
            hedge_ms = rest_ms * remote.partial_mean(w / rest_ms) + (1.0 - pr) * (w + device_ms)
            if device_ms <= hedge_ms:
                w = 0.0
    else:
        w = math.inf if math.inf in tied else max(tied)
    return Choice(w, best, chances[w][1] >= 1.0 - 1e-12)


def spread_or_none(spread: Spread, min_samples: int = MIN_SAMPLES) -> Distribution | None:
    """The window's distribution once it has ``min_samples`` finished samples, else None."""
    return spread.distribution() if spread.answered() >= min_samples else None


class History:
    """How a client's recent requests went against their predictions, and the choice it makes by
    them for a request with a deadline (:meth:`choose`; thread-safe).

    Three windows: ``remote``, the rest of each request answered after its head (encode, network,
    server, decode; censored when given up); ``finishes``, the device's runs that finish a request
    (the whole model, or a tail after a cut); ``heads``, its head runs. A deadline's choice is about
    finishing, and a finish after a cut may run slower than the heads (measured here, one machine
    for both ends: 1.33 against 1.11 times the profile, the server still computing the abandoned
    request), so the device is judged by its finishes once there are enough, by all its runs until then.
    """

    def __init__(
        self, window: int = WINDOW, max_age_s: float = MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.remote, self.heads, self.finishes = (Spread(window, max_age_s, clock) for _ in range(3))

    def device(self) -> Distribution | None:
        """The device's ratios: its finishes once there are :data:`MIN_SAMPLES`, else all its runs
        once there are as many, else None."""
        finishes = spread_or_none(self.finishes)
        if finishes is not None:
            return finishes
        runs = self.heads._fresh() + self.finishes._fresh()
        return Distribution.of(runs) if len(runs) >= MIN_SAMPLES else None

    def describe(self) -> str:
        """One line of the windows: per kind, the median and p90 ratio and how many samples (``-``:
        not reached, the rest was given up); empty while all are."""
        parts = []
        for name, spread in (
            ("rest", self.remote),
            ("device finishes", self.finishes),
            ("heads", self.heads),
        ):
            n, answered = len(spread), spread.answered()
            if n:
                q50, q90 = (spread.quantile(q) for q in (0.5, 0.9))
                given_up = f", {n - answered} given up" if n > answered else ""
                text = "/".join("-" if q is None else f"x{q:.2f}" for q in (q50, q90))
                parts.append(f"{name} {text} ({n}{given_up})")
        return "; ".join(parts)

    def choose(self, left_ms: float, rest_ms: float, local_ms: float) -> Choice:
        """:func:`deadline_wait_ms` by these windows (the medians until the remote one has
        :data:`MIN_SAMPLES` answers)."""
        return deadline_wait_ms(left_ms, rest_ms, local_ms, spread_or_none(self.remote), self.device())


class RemoteProbes:
    """The background requests that keep a deadline's remote window fresh (thread-safe).

    A request whose deadline is finished on the device at once sends nothing, so its client learns
    nothing new of the remote path; the remote window must stay current for the next choice to be
    fair to the remote. :meth:`start` runs one such request (``work``: encode, send, keep how its
    rest went) on a thread of its own: one at a time, none sooner than ``interval_s`` (or the
    caller's ``gap_s``, if longer) after the last one started, and none while the remote window has
    a sample younger than that (the client's own requests are renewing it). The caller
    never waits for it. A probe gives the uplink up to the client's own requests: one about to be
    sent cancels a probe still in flight (:meth:`give_way`; the request renews the window itself),
    which would otherwise share the link with it and slow it. ``clock`` is injectable for tests.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Event()  # no probe running
        self._idle.set()
        self._last_start = -math.inf
        self._closed = False
        self._cancel: Callable[[], object] | None = None  # the call in flight's cancel
        self.started = 0  # probes started
        self.failures = 0  # probes that ended without an answer (refused, no answer in time, closed)
        self.cancelled = 0  # ... of them, given up for a request of the client's own (give_way)

    def due(self, remote: Spread, gap_s: float = 0.0) -> bool:
        """Whether a probe would start now (the caller then prepares one; :meth:`start` decides)."""
        since = min(self._clock() - self._last_start, remote.age_s())
        return not self._busy() and since >= max(self.interval_s, gap_s)

    def _busy(self) -> bool:
        return self._closed or not self._idle.is_set()

    def start(self, remote: Spread, work: Callable[[], bool], gap_s: float = 0.0) -> bool:
        """Run ``work`` (True: answered) on a thread of its own if a probe is :meth:`due`; never blocks.
        True if it started."""
        with self._lock:
            if not self.due(remote, gap_s):
                return False
            self._last_start = self._clock()
            self.started += 1
            self._idle.clear()
            thread = threading.Thread(target=self._run, args=(work,), name="splitdnn-deadline-probe")
            thread.daemon = True
            try:
                thread.start()
            except RuntimeError:  # no thread to be had (the process is at its limit): no probe
                self.started -= 1
                self._idle.set()
                return False
        return True

    def sending(self, cancel: Callable[[], object]) -> bool:
        """The probe's call is in flight and ``cancel`` cancels it; False when it must not be sent
        (closed meanwhile)."""
        with self._lock:
            self._cancel = None if self._closed else cancel
            return not self._closed

    def give_way(self) -> None:
        """A request of the client's own is about to be sent: cancel the probe's call in flight."""
        if self._cancel is None:  # (the common case, without a lock)
            return
        with self._lock:
            cancel, self._cancel = self._cancel, None
            if cancel is not None:
                self.cancelled += 1
        if cancel is not None:
            cancel()

    def _run(self, work: Callable[[], bool]) -> None:
        answered = False
        try:
            answered = work()
        except SplitDNNError:  # the server refused it or went away: the next request sees that itself
            pass
        except ValueError:  # grpc: "Cannot invoke RPC on closed channel!" -- close() came in between
            if not self._closed:
                raise
        finally:
            with self._lock:
                self._cancel = None
                if not answered:
                    self.failures += 1
                self._idle.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the probe in flight (if any) to finish; True when none is running."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Start no more probes; wait up to ``timeout`` s for the one in flight."""
        with self._lock:
            self._closed = True
            cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()
        self.wait(timeout)
