"""Live link estimation for the edge client (pure Python: no torch, no grpc, unit-tested with numbers).

Split out of :mod:`splitdnn.runtime.planner`, which re-exports :class:`LinkEstimator` and
:class:`LinkSample`.

:class:`LinkEstimator` turns the client's own requests into a :class:`~splitdnn.schema.Link`. For each
request the client knows the bytes it sent and received and the network share of the wall time
(``network_ms`` = RPC wall time - server queue - server compute - server decode, all reported by the
server). The model is the cost model's own: ``network_ms = rtt_ms + bytes * 8 / (mbps * 1e3)``,
bytes counting the response at the downlink's relative speed. Separating the fixed RTT from the
per-byte term is the hard part: a client that keeps one cut sends the same number of bytes every time,
and one (bytes, ms) point cannot tell a long RTT from a slow link. The choice made here:

* the RTT: a window of the last ``window`` samples (younger than ``max_age_s``), pings included (a
  ping is an empty RPC, ``observe_ping``: a sample at 0 bytes that measures the RTT alone). When the
  window holds pairs of samples whose sizes differ by at least ``min_spread`` x (default 1.9: the
  start-up probe's last two payloads, 128 and 256 KiB on a fast link, are 2 x apart less the few
  bytes of their answers; pings and requests;
  two cuts), a Theil-Sen fit: slope = the median of those pairs' slopes, intercept (the RTT) = the
  median residual; medians make it robust to a GC pause or a retransmission. When the requests
  alone have two such sizes (a request and a sized probe, two cuts), the fit leaves the pings out:
  a link with a burst (a token bucket, a NIC's queue) carries its first bytes at once, so a transfer
  takes ``rtt + (bytes - burst) / rate``, affine in the bytes but not through the pings' point;
  anchored at the pings, a 100 kB request through a 5 ms burst reads as a link 2.7 x faster than it
  is, and a plan that sends 600 kB looks far cheaper than it is. The fitted intercept (the RTT less
  the burst's time) prices every transfer past the burst right. Such a fit is refused when its
  intercept lies over the least ping (pings run late, never early; without pings, over two of the
  transfers' times), or its slope is not positive: no link carries bytes faster than its intercept,
  so those transfers crossed it at different rates (the link changed during one). A request given
  up (``observe_overdue``) is a bound, not a time: it is in no fit. Otherwise the RTT comes from
  pings (or stays the initial link's), unless the transfers showed a burst: with five or more of
  them beside pings, their intercept under the least ping by more than 3 x their median absolute
  deviation about the line (measured at each such fit; by no more than one, there is none; between
  the two, it stays as it was). Then their intercept stands until transfers fit again, and a
  transfer of fewer bytes than the burst carries is left out of their fits (it took a ping's time,
  off the line). A step empties the window of its transfers and keeps its pings, and pings run late
  when the link drains a request given up or the device is busy: anchored at the pings after a
  step, as before, the clients of ``scripts/bench_deadline.py`` (50 Mbit/s, a 50 kB burst: pings
  6-20 ms, a 100 kB request 17.3) read the burst as speed. Replayed through both estimators
  (``scripts/replay_estimator.py``, 36 clients' logged calls of four runs), the estimate ran over
  75 Mbit/s after 19.3 % of their samples before, 3.9 % now (four other runs: 40.8 and 10.9 %;
  docs/benchmarks.md);
* the bandwidth: each request's time per byte once that RTT is taken off, ``(network_ms - rtt) /
  bytes``; the median of the last three (one stalled request is ignored, a real change shows after
  two) is folded into an EWMA (``alpha``). A window-wide fit would be steadier on a constant link but
  would take half a window to notice a collapse, which is when re-planning matters most. A small
  transfer hidden in the RTT's noise (under a tenth of its sample's time) folds nothing in unless it
  is a step: alone it would claim an infinite rate, and counting it whenever it looked slower (as
  this did before) counted every late round trip, so the estimate ran 2 to 8 x low;
* steps: a single sample whose time per byte is at least ``step_ratio`` x slower, or (not hidden in
  the RTT's noise) ``step_ratio`` x faster, than the estimate, and off the estimate by more than the
  path's jitter explains, is taken as a change of the link, not noise. The jitter is measured, not
  assumed: the residuals (ms off the estimate) of the last ``window`` samples that were no steps;
  a sample must lie 3 x their spread off their median (the spread: the median's distance to the
  second largest, or smallest, residual; one GC pause does not widen it), or three samples in a row
  1.5 x (a fall smaller than one late round trip, on a transfer hidden in the noise, shows only so).
  Before, a 4 KiB request over loopback stepped on 90 of 300 requests, each a re-plan (now 4). On a
  step the estimate restarts from the sample at once (no median, no smoothing), and the window drops its
  older sized samples (pings stay: a bandwidth step does not move the RTT), so that samples from
  before the step no longer pull the RTT fit (a fit over slow and fast samples of the same sizes
  reads the difference as RTT). ``stepped`` says so for the planner, which then needs one
  confirmation instead of several. A sample right after a step that moves the same way by 2 x is a
  step too (a probe after a step up sized for the old rate may only bound the new one; a transfer
  too short to time counts as exactly ``step_ratio`` x faster), and so is one 2 x faster within
  three samples of a step down: a step down is one sample, and the next one tells whether the link
  stayed there. On a link that flaps (``bench_deadline.py``'s: a request caught in a slow spell, the
  next one at 30 of 50 Mbit/s) the estimate went from 8 to 10 Mbit/s, averaged with the slow
  sample, and passed half the rate only on the fourth request; replayed over logged runs, it was
  under half the rate after 9.5 % of the samples taken at that rate, 6.1 % with this. Not after a
  request given up (``observe_overdue``): that step set the estimate ``step_ratio`` x under the
  bound the request showed, so the next probe at the link's new rate reads 2-5 x faster than the
  estimate without the link moving; taken for a step back, it restored the rate from before the
  fall, sent the next request into the slow link to be given up in turn, and a bench step run
  repeated that four times in five seconds. For the same reason the residuals of the samples that
  pull such an estimate back up (faster than it, until one is not) are its error, not the path's
  jitter, and are not kept as jitter: kept, they were 12-90 ms off a 1.1 Mbit/s estimate, and when
  the link came back to 18.88 Mbit/s a probe 18 x faster than the estimate lay within 3 spreads,
  so the estimate climbed by smoothing and the client re-planned after 2.7-4.0 s in traced
  runs, not on the next probe. The price: a one-off stall of ``step_ratio`` x the expected time (and
  past the jitter) moves the estimate too, until the next normal sample, itself a step back, restores
  it (one request, or one probe, on another plan): a step back up within three samples of a step down,
  to where the sample fits the estimate from before the step down, restores that estimate whole. Noise
  under 2 x is still smoothed away, and under ``step_ratio`` x when no step down came just before;
* the EWMA is bias-corrected, so the first real measurement replaces the initial guess instead of
  being averaged with it, and it runs on the time per byte, not on Mbit/s: averaging rates
  overestimates a fluctuating link (Jensen), averaging times gives the expected transfer time, which
  is what the planner adds up.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from splitdnn.errors import ConfigError
from splitdnn.schema import Link

__all__ = ["LinkEstimator", "LinkSample", "check_positive"]

_MAX_MBPS = 100_000.0  # the fastest link the estimator reports (a 100 Gbit/s LAN is "free")
_FOLLOW_RATIO = 2.0  # a step right after a step the same way, or back up after one down, needs only this
_UNTIMED = 0.05  # a transfer under this share of its round trip is within the RTT's jitter
_HIDDEN = 0.1  # a transfer under this share of its sample's time is hidden in the RTT's noise
_JITTER_SPREADS = 3.0  # a step must lie this many of the window's usual spreads off its middle
_SUSTAINED_SPREADS = 1.5  # or three samples in a row (each of them) this many
_STALL_SAMPLES = 3  # a step back up within this many samples of a step down may undo it
_JITTER_POINTS = 5  # earlier samples needed to measure the jitter (fewer: every move counts)


# --------------------------------------------------------------------------------------------------
# link estimation


@dataclass(frozen=True)
class LinkSample:
    """One observed request (or ping): what went over the network and how long the network took."""

    bytes_up: int  # serialized request message (HTTP/2 and gRPC framing fall in the RTT term)
    bytes_down: int  # serialized response message
    network_ms: float  # RPC wall time minus the server's reported queue, compute and decode time
    at_s: float  # monotonic time of the observation


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        wanted = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ConfigError(f"{name} must be {wanted}, found {value!r}")
    return float(value)


class LinkEstimator:
    """Live estimate of the uplink bandwidth and the RTT from the client's own requests.

    See the module docstring for the method. ``initial`` is the prior (used until samples arrive);
    its downlink/uplink ratio is kept, so a response's bytes count at the downlink's relative speed.
    ``clock`` is injectable (seconds, monotonic) for tests.
    """

    def __init__(
        self,
        initial: Link,
        *,
        window: int = 32,
        alpha: float = 0.5,
        min_spread: float = 1.9,
        max_age_s: float = 60.0,
        step_ratio: float | None = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(initial, Link):
            raise ConfigError(f"initial must be a splitdnn.schema.Link, found {type(initial).__name__}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ConfigError(f"window must be an integer >= 2 (samples kept for the fit), found {window!r}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha <= 1):
            raise ConfigError(f"alpha must be in (0, 1] (EWMA weight of a new estimate), found {alpha!r}")
        if not (isinstance(min_spread, (int, float)) and min_spread > 1):
            raise ConfigError(
                f"min_spread must be > 1 (size ratio of a sample pair that separates RTT from "
                f"bandwidth), found {min_spread!r}"
            )
        if step_ratio is not None and not (
            isinstance(step_ratio, (int, float)) and not isinstance(step_ratio, bool) and step_ratio > 1
        ):
            raise ConfigError(
                f"step_ratio must be None or > 1 (how much slower or faster one sample must be to count "
                f"as a step of the link), found {step_ratio!r}"
            )
        self._step_ratio = None if step_ratio is None else float(step_ratio)
        self._max_age_s = check_positive("max_age_s", max_age_s)
        self._initial = initial
        self._alpha = float(alpha)
        self._min_spread = float(min_spread)
        self._clock = clock
        self._samples: deque[LinkSample] = deque(maxlen=window)
        # each sample's (size in uplink-equivalent bytes, network ms), kept beside it: every update
        # fits over the whole window, which then need not be sized again on each request
        self._points: deque[tuple[float, float]] = deque(maxlen=window)
        # whether each sample is a request given up (observe_overdue): a bound, not a time, so no fit
        self._censored: deque[bool] = deque(maxlen=window)
        self._recent: deque[float] = deque(maxlen=3)  # latest per-request times per byte
        # the downlink's speed relative to the uplink: a response byte costs this many uplink bytes
        self._down_weight = initial.uplink_mbps / initial.effective_downlink_mbps
        self._ms_per_byte = _ms_per_byte(initial.uplink_mbps)  # smoothed
        self._rtt_ms = initial.rtt_ms  # smoothed
        self._updates = 0  # raw estimates folded in so far (for the EWMA's bias correction)
        self._rtt_updates = 0
        # how far the pings' RTT lies over the transfers' intercept (a burst: see the module docstring),
        # measured when a fit of the transfers alone had pings beside it; while not 0 the pings do not
        # anchor the RTT (after a step the window keeps its pings, not its transfers)
        self._burst_ms = 0.0
        self.fitted = False  # whether the last update could separate RTT from bandwidth
        self.stepped = False  # whether the last observation was taken as a step of the link
        self.steps = 0  # steps seen so far
        self._last_step = 0  # the direction of the last sample if it was a step: -1 slower, 1 faster
        # each sample's residual, ms off the estimate of its time, as it arrived, steps left out; a
        # step does not clear them (the path's jitter does not change with its rate): their spread is
        # how far one sample may stray by the jitter alone
        self._residuals: deque[float] = deque(maxlen=window)
        # the time per byte before the last step down, and the samples seen since (a stall of one
        # request reads as a step down, and the next request as a step back up: that one restores it)
        self._before_down: float | None = None
        self._since_down = 0
        # whether the last step down was a request given up (``observe_overdue``), and no sized sample
        # since was slower than the estimate: the estimate was set step_ratio x under the bound the
        # request showed, so a sample 2 x faster says nothing new, and the residuals of the samples
        # that pull it back up are its error, not the path's jitter
        self._down_bounded = False

    # observations ---------------------------------------------------------------------------------

    def observe(self, bytes_up: int, bytes_down: int, network_ms: float) -> None:
        """Fold in one request: bytes sent and received, and its network time in ms."""
        self.remember(bytes_up, bytes_down, network_ms)
        self._update()

    def remember(self, bytes_up: int, bytes_down: int, network_ms: float) -> None:
        """Keep a transfer in the window for later fits without updating the estimate now.

        For a probe's smaller payload sent just before a larger one: alone (one size and pings) it
        would move the estimate by the link's burst; beside the larger one, observed next, it lets
        the fit tell the burst from the rate (see the module docstring).
        """
        if isinstance(bytes_up, bool) or not isinstance(bytes_up, int) or bytes_up < 0:
            raise ConfigError(f"bytes_up must be an integer >= 0, found {bytes_up!r}")
        if isinstance(bytes_down, bool) or not isinstance(bytes_down, int) or bytes_down < 0:
            raise ConfigError(f"bytes_down must be an integer >= 0, found {bytes_down!r}")
        if not (isinstance(network_ms, (int, float)) and math.isfinite(network_ms)):
            raise ConfigError(f"network_ms must be a finite number, found {network_ms!r}")
        # clock noise (the server's times are measured on another clock) can make it slightly < 0
        sample = LinkSample(bytes_up, bytes_down, max(0.0, float(network_ms)), self._clock())
        self._samples.append(sample)
        self._points.append((self._x(sample), sample.network_ms))
        self._censored.append(False)

    def observe_overdue(self, bytes_up: int, waited_ms: float) -> None:
        """Fold in a request given up after ``waited_ms`` without an answer: its transfer takes at
        least that long. When that is slower than the estimate, it is a step down, however far under
        ``step_ratio`` (the caller gave up because the link fell), and the estimate restarts
        ``step_ratio`` x under the rate it shows. That rate is only an upper bound, and erring low is
        the cheap side: a plan that sends less (edge-only, whose probes re-measure the link every
        quarter second) corrects a low estimate within about a second, while a plan chosen on the
        bound sends a request into the fallen link and learns only when that one is given up too
        (measured on the bench's 18.88 -> 1.1 Mbit/s step: a second request given up, 0.41 s lost).
        """
        self.remember(bytes_up, 0, waited_ms)
        self._censored[-1] = True
        self._update(down_ratio=1.0)
        if self.stepped and self._step_ratio is not None:
            self._ms_per_byte *= self._step_ratio
            self._down_bounded = True

    @property
    def stepped_up(self) -> bool:
        """Whether the last observation was a step of the link to a faster rate."""
        return self.stepped and self._last_step > 0

    def observe_ping(self, rtt_ms: float) -> None:
        """Fold in an empty round trip (a health or liveness RPC): a direct RTT sample."""
        self.observe(0, 0, rtt_ms)

    @property
    def samples(self) -> tuple[LinkSample, ...]:
        """The samples in the current window, oldest first."""
        self._expire()
        return tuple(self._samples)

    @property
    def link(self) -> Link:
        """The current estimate (the initial link until samples arrive)."""
        up = min(_MAX_MBPS, 8.0 / (self._ms_per_byte * 1e3))
        down = 0.0 if self._initial.downlink_mbps == 0 else up / self._down_weight
        return Link(uplink_mbps=up, downlink_mbps=down, rtt_ms=max(0.0, self._rtt_ms))

    # estimation -----------------------------------------------------------------------------------

    def _x(self, s: LinkSample) -> float:
        """A sample's size in uplink-equivalent bytes."""
        return s.bytes_up + s.bytes_down * self._down_weight

    def _expire(self) -> None:
        now = self._clock()
        while self._samples and now - self._samples[0].at_s > self._max_age_s:
            self._samples.popleft()
            self._points.popleft()
            self._censored.popleft()

    def _update(self, *, down_ratio: float | None = None) -> None:
        """Fold in the newest sample; ``down_ratio`` overrides how much slower it must be to be a step."""
        self._expire()
        x, y = self._points[-1]
        residual = y - self._rtt_ms - (x * self._ms_per_byte if x else self._burst_ms)  # (a ping: RTT)
        self._since_down += 1
        if self._since_down > _STALL_SAMPLES:
            self._before_down = None
        before_down = self._before_down
        self.stepped = self._is_step(self._points[-1], down_ratio)
        # a step is a change of the link (or a stall), not its jitter; nor is the climb from a
        # request given up: its estimate lies under the link on purpose until a sample is slower
        climbing = False
        if self._down_bounded and x > 0:
            climbing = self._down_bounded = residual < 0
        if not self.stepped and not climbing:
            self._residuals.append(residual)
        if self.stepped:
            self._before_down = self._ms_per_byte if self._last_step < 0 else None
            self._since_down = 0
            self._down_bounded = False
        if self.stepped:  # restart from this sample: older sized samples describe another link
            pairs = list(zip(self._samples, self._points, self._censored, strict=True))
            kept = [(s, p, c) for s, p, c in pairs[:-1] if p[0] == 0]  # the pings, then the newest
            kept.append(pairs[-1])
            self._samples.clear()
            self._points.clear()
            self._censored.clear()
            for sample, point, censored in kept:
                self._samples.append(sample)
                self._points.append(point)
                self._censored.append(censored)
            self._recent.clear()
            self._updates = 0
            self.steps += 1
        pts = list(self._points)
        if True in self._censored:  # (a scan in C; the filter only when there is one)
            pts = [p for p, censored in zip(pts, self._censored, strict=True) if not censored]
        sized = [p for p in pts if p[0] > 0]
        pings = [y for x, y in pts if x == 0] if len(sized) < len(pts) else []
        intercept = self._transfers_intercept(sized, pings)  # transfers alone: see above
        if intercept is None and pings and not self._burst_ms:  # anchored at the pings
            fit = _theil_sen(pts, self._min_spread) if sized else None  # (else the same points)
            if fit is None and self._points[-1][0] == 0:  # a ping and nothing to fit against: it
                fit = (self._points[-1][1], 0.0)  # measures the RTT directly
            if fit is not None:
                intercept = fit[0]
        # (past a burst the transfers' intercept stands until they fit again: see the docstring)
        self.fitted = intercept is not None
        last_x, last_y = self._points[-1]
        if intercept is not None:
            self._rtt_ms = self._ewma(self._rtt_ms, max(0.0, intercept), self._rtt_updates)
            self._rtt_updates += 1
        if last_x == 0:
            return
        # the newest request's time per byte, once the RTT is taken off
        excess = last_y - self._rtt_ms
        expected = last_x * self._ms_per_byte
        per_byte = excess / last_x
        if self._updates > 0 and not self.stepped and expected < _HIDDEN * last_y:
            # a small transfer hidden in the RTT's noise says nothing of the bandwidth unless it is a
            # step: alone it would claim an infinite one, or a slower one on every late round trip
            return
        if self.stepped and self._last_step > 0 and before_down is not None:
            if not self._off_jitter(excess - last_x * before_down, slower=True):
                # straight back to what the estimate was before a step down: that was a stall of
                # one request, and the estimate from before it holds (or a faster one measured now)
                per_byte = before_down if excess < _UNTIMED * last_y else min(per_byte, before_down)
        if self.stepped and self._step_ratio is not None and excess < _UNTIMED * last_y:
            # a step up, but the transfer was too short to time (inside the link's burst or the
            # RTT's jitter): the link is at least step_ratio x faster, and that is all it says
            per_byte = max(per_byte, min(self._ms_per_byte / self._step_ratio, before_down or math.inf))
        self._recent.append(max(per_byte, _ms_per_byte(_MAX_MBPS)))
        self._ms_per_byte = self._ewma(self._ms_per_byte, _median(self._recent), self._updates)
        self._updates += 1

    def _is_step(self, point: tuple[float, float], down_ratio_override: float | None = None) -> bool:
        """Whether a sample's ``(size, network ms)`` alone shows the link ``step_ratio`` x slower or
        faster than estimated."""
        x, network_ms = point
        if self._step_ratio is None or x == 0 or self._updates == 0:
            return False
        excess = network_ms - self._rtt_ms
        expected = x * self._ms_per_byte
        # right after a step, a further move the same way needs less: the first sample after a
        # step up may have been too short to time, and only bounded the new rate from below; and
        # soon after a step down (one sample), so does a move back up: the link did not stay there
        # (not after a request given up: its estimate lies step_ratio x under what it showed, on purpose)
        measured_down = self._before_down is not None and not self._down_bounded
        up_ratio = _FOLLOW_RATIO if self._last_step > 0 or measured_down else self._step_ratio
        down_ratio = _FOLLOW_RATIO if self._last_step < 0 else self._step_ratio
        if down_ratio_override is not None:
            down_ratio = down_ratio_override
        if excess >= down_ratio * expected and self._slower_than_jitter(excess - expected):
            self._last_step = -1
            return True
        hidden = expected < _HIDDEN * network_ms  # the transfer is lost in the RTT's noise
        if not hidden and excess * up_ratio <= expected and self._off_jitter(excess - expected, slower=False):
            self._last_step = 1
            return True
        self._last_step = 0
        return False

    def _slower_than_jitter(self, residual: float) -> bool:
        """Whether the newest sample, ``residual`` ms slower than estimated, is slower than the path's
        jitter explains: far off alone, or less far but with the two before it (a link that
        fell by less than a late round trip does, on a transfer hidden in the RTT's noise, shows as
        round trips that stay late; missed, it would never be seen, since such transfers fold no
        rate in)."""
        if self._off_jitter(residual, slower=True):
            return True
        older = list(self._residuals)[-2:]
        if len(older) < 2:
            return False
        return self._off_jitter(min(*older, residual), slower=True, spreads=_SUSTAINED_SPREADS, skip=2)

    def _off_jitter(
        self, residual: float, *, slower: bool, spreads: float = _JITTER_SPREADS, skip: int = 0
    ) -> bool:
        """Whether a new sample's ``residual`` (ms over the estimate's prediction) lies further off the
        earlier residuals' median than the path's jitter explains: ``spreads`` x their spread on that
        side (the distance from the median to the second largest or smallest: one outlier, a GC pause,
        does not widen it; none measured before ``_JITTER_POINTS`` samples); ``skip``: the newest
        earlier residuals left out (they are part of the sample tested). Without this, a transfer that
        takes a small share of its round trip (4 KiB over a fast LAN) read each late round trip as a
        step down and the next one as a step back up: 100 of 300 requests re-planned on a simulated
        link with 0.3 ms of jitter, and the estimate ran 2-8 x low."""
        earlier = list(self._residuals)
        r = sorted(earlier[: len(earlier) - skip])
        if len(r) < _JITTER_POINTS:
            return skip == 0
        mid = _median(r)
        if slower:
            return residual - mid > spreads * (r[-2] - mid)
        return mid - residual > spreads * (mid - r[1])

    def _transfers_intercept(self, sized: list[tuple[float, float]], pings: list[float]) -> float | None:
        """The intercept of a fit of the transfers alone, when they have two sizes and agree with a
        line; with the pings beside them, it also measures the burst (``_burst_ms``).

        A fit whose intercept lies over the least ping (without pings, over two of the transfers'
        times: one may be early by noise) is refused: no link carries bytes faster than its
        intercept, so the transfers crossed it at different rates (it flapped during one). So is
        one whose larger transfers took no longer than its smaller ones. Once a burst is known, a
        transfer of fewer bytes than it carries at the estimated rate is left out: it took a ping's
        time, off the line.
        """
        if self._burst_ms:  # a transfer within the burst takes a ping's time: off the line
            within = self._burst_ms / self._ms_per_byte  # (bytes the burst carries at this rate)
            sized = [p for p in sized if p[0] > within]
        fit = _theil_sen(sized, self._min_spread)
        if fit is None or fit[1] <= 0:  # (larger transfers no slower: the link changed between them)
            return None
        intercept, slope = fit
        # the least a sample took: pings run late, never early; of transfers alone, one may be by noise
        least = min(pings) if pings else sorted(y for _, y in sized)[1]
        if intercept > least:
            return None
        if pings and len(sized) >= _JITTER_POINTS:  # enough transfers to tell a burst from noise
            spread = _mad([y - intercept - slope * x for x, y in sized])
            gap = least - intercept
            if gap > _JITTER_SPREADS * spread:
                self._burst_ms = gap
            elif gap <= spread:  # none (between the two, it stays as it was)
                self._burst_ms = 0.0
        return intercept

    def _ewma(self, old: float, new: float, updates: int) -> float:
        """Bias-corrected EWMA: the first estimate replaces the prior, later ones weigh ``alpha``."""
        weight = max(self._alpha, 1.0 / (updates + 1))
        return (1.0 - weight) * old + weight * new


def _ms_per_byte(mbps: float) -> float:
    return 8.0 / (mbps * 1e3)


def _mad(xs: Sequence[float]) -> float:
    """The median absolute deviation from the median."""
    mid = _median(xs)
    return _median([abs(v - mid) for v in xs])


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


@functools.lru_cache(maxsize=32)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of every pair ``i < j`` of ``n`` samples (the window's sizes repeat)."""
    i, j = np.triu_indices(n, 1)
    i.flags.writeable = j.flags.writeable = False  # shared by every call with this n
    return i, j


def _theil_sen(pts: Sequence[tuple[float, float]], min_spread: float) -> tuple[float, float] | None:
    """``(intercept, slope)`` of a Theil-Sen fit over the pairs whose x differ by ``min_spread`` x.

    None when no pair qualifies (all samples about the same size): the data cannot separate the
    intercept (RTT) from the slope (time per byte). Vectorised over the pairs: it runs twice per
    request on a window of ~30 samples, where a Python double loop cost ~0.1 ms a request.
    """
    n = len(pts)
    if n < 2:
        return None
    # no pair qualifies when the widest one does not (every request of one cut the same size, the
    # steady state): said in O(n), before the O(n^2) pairs
    xs = [p[0] for p in pts]
    widest, narrowest = max(xs), min(xs)
    if widest <= 0 or widest < min_spread * narrowest:
        return None
    xy = np.asarray(pts, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    i, j = _pairs(n)
    xi, xj = x[i], x[j]
    hi = np.maximum(xi, xj)
    pair = (hi > 0) & (hi >= min_spread * np.minimum(xi, xj))
    if not pair.any():
        return None
    i, j = i[pair], j[pair]
    slope = max(0.0, float(np.median((y[j] - y[i]) / (x[j] - x[i]))))
    intercept = float(np.median(y - slope * x))
    return intercept, slope
