"""Plan choice for the live edge client: a link estimator and a re-planner with hysteresis (torch-free).

Two parts, both pure Python (no torch, no grpc) so they are unit-tested with synthetic numbers:

:class:`LinkEstimator` turns the client's own requests into a :class:`~splitdnn.schema.Link`. For each
request the client knows the bytes it sent and received and the network share of the wall time
(``network_ms`` = RPC wall time - server queue - server compute - server decode, all reported by the
server). The model is the cost model's own: ``network_ms = rtt_ms + bytes * 8 / (mbps * 1e3)``,
bytes counting the response at the downlink's relative speed. Separating the fixed RTT from the
per-byte term is the hard part: a client that keeps one cut sends the same number of bytes every time,
and one (bytes, ms) point cannot tell a long RTT from a slow link. The choice made here:

* the RTT: a window of the last ``window`` samples (younger than ``max_age_s``), pings included (a
  ping is an empty RPC, ``observe_ping``: a sample at 0 bytes that measures the RTT alone). When the
  window holds pairs of samples whose sizes differ by at least ``min_spread`` x (pings and requests;
  two cuts), a Theil-Sen fit: slope = the median of those pairs' slopes, intercept (the RTT) = the
  median residual; medians make it robust to a GC pause or a retransmission. Otherwise the RTT comes
  from pings (or stays the initial link's);
* the bandwidth: each request's time per byte once that RTT is taken off, ``(network_ms - rtt) /
  bytes``; the median of the last three (one stalled request is ignored, a real change shows after
  two) is folded into an EWMA (``alpha``). A window-wide fit would be steadier on a constant link but
  would take half a window to notice a collapse, which is when re-planning matters most. A small
  transfer hidden in the RTT's noise is not used unless it shows the link slower than estimated;
* the EWMA is bias-corrected, so the first real measurement replaces the initial guess instead of
  being averaged with it, and it runs on the time per byte, not on Mbit/s: averaging rates
  overestimates a fluctuating link (Jensen), averaging times gives the expected transfer time, which
  is what the planner adds up.

:class:`Planner` picks a two-tier plan with :func:`splitdnn.solver.solve` (device and server
profiles, the estimated link, the best allowed codec per boundary tensor within the error budget,
the privacy floor as :class:`~splitdnn.solver.Constraints`) and re-plans with hysteresis: the current
plan is re-priced under the *same* new link estimate (with the codecs it really uses) and replaced
only when the best plan is predicted at least ``margin`` faster on ``confirmations`` consecutive
re-plans, or ``urgent_margin`` faster once (a collapsed link should not wait). So measurement noise
around a break-even bandwidth does not make the cut flap, each flap costing a new split and cold
caches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from splitdnn import solver
from splitdnn.errors import ConfigError, PlanError
from splitdnn.schema import CodecResult, LatencyStats, Link, NodeProfile, Plan, Profile
from splitdnn.solver import Constraints, TensorCostFn, TensorHop, WireCost

__all__ = [
    "FORCED_CHOICES",
    "Decision",
    "Hysteresis",
    "LinkEstimator",
    "LinkSample",
    "Planner",
    "plan_key",
    "scale_profile",
]

#: ``force_boundary`` values besides a node name: all on the device, all on the server
FORCED_CHOICES = ("edge", "cloud")

_MAX_MBPS = 100_000.0  # the fastest link the estimator reports (a 100 Gbit/s LAN is "free")
#: what a value that cannot cross the network (a tuple, a Python int) is priced at: no plan picks it
_UNSENDABLE_BYTES = 1 << 50


# --------------------------------------------------------------------------------------------------
# link estimation


@dataclass(frozen=True)
class LinkSample:
    """One observed request (or ping): what went over the network and how long the network took."""

    bytes_up: int  # serialized request message (HTTP/2 and gRPC framing fall in the RTT term)
    bytes_down: int  # serialized response message
    network_ms: float  # RPC wall time minus the server's reported queue, compute and decode time
    at_s: float  # monotonic time of the observation


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
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
        min_spread: float = 2.0,
        max_age_s: float = 60.0,
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
        self._max_age_s = _check_positive("max_age_s", max_age_s)
        self._initial = initial
        self._alpha = float(alpha)
        self._min_spread = float(min_spread)
        self._clock = clock
        self._samples: deque[LinkSample] = deque(maxlen=window)
        self._recent: deque[float] = deque(maxlen=3)  # latest per-request times per byte
        # the downlink's speed relative to the uplink: a response byte costs this many uplink bytes
        self._down_weight = initial.uplink_mbps / initial.effective_downlink_mbps
        self._ms_per_byte = _ms_per_byte(initial.uplink_mbps)  # smoothed
        self._rtt_ms = initial.rtt_ms  # smoothed
        self._updates = 0  # raw estimates folded in so far (for the EWMA's bias correction)
        self._rtt_updates = 0
        self.fitted = False  # whether the last update could separate RTT from bandwidth

    # observations ---------------------------------------------------------------------------------

    def observe(self, bytes_up: int, bytes_down: int, network_ms: float) -> None:
        """Fold in one request: bytes sent and received, and its network time in ms."""
        if isinstance(bytes_up, bool) or not isinstance(bytes_up, int) or bytes_up < 0:
            raise ConfigError(f"bytes_up must be an integer >= 0, found {bytes_up!r}")
        if isinstance(bytes_down, bool) or not isinstance(bytes_down, int) or bytes_down < 0:
            raise ConfigError(f"bytes_down must be an integer >= 0, found {bytes_down!r}")
        if not (isinstance(network_ms, (int, float)) and math.isfinite(network_ms)):
            raise ConfigError(f"network_ms must be a finite number, found {network_ms!r}")
        # clock noise (the server's times are measured on another clock) can make it slightly < 0
        self._samples.append(LinkSample(bytes_up, bytes_down, max(0.0, float(network_ms)), self._clock()))
        self._update()

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

    def _update(self) -> None:
        self._expire()
        pts = [(self._x(s), s.network_ms) for s in self._samples]
        fit = _theil_sen(pts, self._min_spread)
        self.fitted = fit is not None
        last_x, last_y = pts[-1]
        if fit is not None:
            self._rtt_ms = self._ewma(self._rtt_ms, max(0.0, fit[0]), self._rtt_updates)
            self._rtt_updates += 1
        elif last_x == 0:  # a ping and nothing to fit against: it measures the RTT directly
            self._rtt_ms = self._ewma(self._rtt_ms, last_y, self._rtt_updates)
            self._rtt_updates += 1
        if last_x == 0:
            return
        # the newest request's time per byte, once the RTT is taken off
        excess = last_y - self._rtt_ms
        expected = last_x * self._ms_per_byte
        if self._updates > 0 and expected < 0.1 * last_y and excess < 2.0 * expected:
            # a small transfer hidden in the RTT's noise says little about the bandwidth (it would
            # claim an infinite one); it counts only when it shows the link slower than estimated
            return
        self._recent.append(max(excess / last_x, _ms_per_byte(_MAX_MBPS)))
        self._ms_per_byte = self._ewma(self._ms_per_byte, _median(self._recent), self._updates)
        self._updates += 1

    def _ewma(self, old: float, new: float, updates: int) -> float:
        """Bias-corrected EWMA: the first estimate replaces the prior, later ones weigh ``alpha``."""
        weight = max(self._alpha, 1.0 / (updates + 1))
        return (1.0 - weight) * old + weight * new


def _ms_per_byte(mbps: float) -> float:
    return 8.0 / (mbps * 1e3)


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _theil_sen(pts: Sequence[tuple[float, float]], min_spread: float) -> tuple[float, float] | None:
    """``(intercept, slope)`` of a Theil-Sen fit over the pairs whose x differ by ``min_spread`` x.

    None when no pair qualifies (all samples about the same size): the data cannot separate the
    intercept (RTT) from the slope (time per byte).
    """
    slopes = []
    for i in range(len(pts)):
        xi, yi = pts[i]
        for j in range(i + 1, len(pts)):
            xj, yj = pts[j]
            lo, hi = (xi, xj) if xi <= xj else (xj, xi)
            if hi > 0 and hi >= min_spread * lo:
                slopes.append((yj - yi) / (xj - xi))
    if not slopes:
        return None
    slope = max(0.0, _median(slopes))
    intercept = _median([y - slope * x for x, y in pts])
    return intercept, slope


# --------------------------------------------------------------------------------------------------
# profiles


def scale_profile(profile: Profile, speedup: float, *, note: str = "") -> Profile:
    """``profile`` as a machine ``speedup`` x faster would measure it (every time divided by it).

    The client's fallback server profile when the server publishes none: the device profile divided
    by the device-emulation factor is "this machine without emulation". The result records no
    emulation (``slowdown`` 1) and says in ``notes`` that it is an estimate.
    """
    f = _check_positive("speedup", speedup)
    k = 1.0 / f

    def codec(c: CodecResult) -> CodecResult:
        return dataclasses.replace(c, encode_ms=c.encode_ms * k, decode_ms=c.decode_ms * k)

    def node(n: NodeProfile) -> NodeProfile:
        return dataclasses.replace(
            n,
            latency=n.latency.scaled(k),
            calibrated_ms=n.calibrated_ms * k,
            codecs=tuple(codec(c) for c in n.codecs),
        )

    text = note or f"estimated: {profile.describe()} with every time divided by {f:g}"
    return dataclasses.replace(
        profile,
        slowdown=max(1.0, profile.slowdown * k),
        total=LatencyStats.scaled(profile.total, k),
        nodes=tuple(node(n) for n in profile.nodes),
        notes=text,
    )


# --------------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class Hysteresis:
    """When a running client may switch plans.

    A new plan must be predicted at least ``margin`` (a fraction: 0.1 = 10 %) faster than the current
    plan, re-priced under the same link estimate, on ``confirmations`` consecutive re-plans (the best
    plan of the last one is taken: on a drifting link the best plan may change while the current one
    keeps losing); or at least ``urgent_margin`` faster on one (None disables the shortcut).
    ``margin=0, confirmations=1`` follows the solver on every request.
    """

    margin: float = 0.10
    confirmations: int = 3
    urgent_margin: float | None = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.margin, (int, float)) and 0 <= self.margin < 1):
            raise ConfigError(f"hysteresis margin must be a fraction in [0, 1), found {self.margin!r}")
        c = self.confirmations
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"hysteresis confirmations must be an integer >= 1, found {c!r}")
        u = self.urgent_margin
        if u is not None and not (isinstance(u, (int, float)) and self.margin <= u < 1):
            raise ConfigError(
                f"hysteresis urgent_margin must be None or a fraction in [margin, 1), found {u!r}"
            )


@dataclass(frozen=True)
class Decision:
    """What one re-plan concluded."""

    plan: Plan  # the plan to run now, priced under the link the decision used
    best: Plan  # the solver's best plan under that link
    switched: bool  # the plan changed in this decision
    pending: int  # consecutive re-plans so far that found a plan better by the margin
    reason: str  # one line: why it switched or kept the plan


def plan_key(plan: Plan) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    """What identifies a plan for the runtime: the device-side nodes and each boundary codec."""
    head = frozenset(n for n, t in plan.tiers.items() if t == 0)
    return head, tuple((b.node, b.codec) for b in plan.boundary)


def _fixed_codecs(codecs: dict[str, str], fallback: TensorCostFn) -> TensorCostFn:
    """A tensor cost that prices each node with the codec a running plan uses for it."""

    def cost(hop: TensorHop) -> WireCost:
        spec = codecs.get(hop.node)
        if spec is None or spec == "raw":
            return fallback(hop) if spec is None else WireCost(hop.nbytes, 0.0, 0.0, "raw")
        sent = _codec_result(hop.sender, hop.node, spec)
        if sent is None:  # not measured (cannot happen for a plan the solver made): best estimate
            return fallback(hop)
        got = _codec_result(hop.receiver, hop.node, spec)
        decode = got.decode_ms if got is not None else sent.decode_ms
        return WireCost(sent.wire_bytes, sent.encode_ms, decode, spec)

    return cost


def _guarded(cost: TensorCostFn, unsendable: frozenset[str]) -> TensorCostFn:
    """``cost``, but values that cannot be sent are priced so that no plan sends them."""

    def guarded(hop: TensorHop) -> WireCost:
        if hop.node in unsendable:
            return WireCost(_UNSENDABLE_BYTES, 0.0, 0.0, "raw")
        return cost(hop)

    return guarded


def _codec_result(profile: Profile, node: str, spec: str) -> CodecResult | None:
    try:
        return profile.node(node).codec(spec)
    except KeyError:
        return None


class Planner:
    """Chooses and keeps the two-tier plan a client runs (see the module docstring).

    ``codecs``: codec specs a boundary tensor may use (None = every codec the profiles measured; raw
    always allowed); ``max_error``: budget on ``metric`` for lossy codecs (0 = lossless only).
    ``privacy_floor``: the raw input never leaves the device (cloud-only is forbidden; the input's
    readers stay on the device). ``force``: "edge", "cloud" or a compute node name to cut after; a
    forced plan is never replaced, only re-priced. ``unsendable``: nodes whose value is not a single
    tensor (a tuple, a Python number): they are priced out of every plan, and a forced plan that
    would send one is refused.
    """

    def __init__(
        self,
        device: Profile,
        server: Profile,
        link: Link,
        *,
        codecs: Sequence[str] | None = None,
        max_error: float = 0.0,
        metric: str = "rel_mse",
        privacy_floor: bool = False,
        hysteresis: Hysteresis | None = None,
        constraints: Constraints | None = None,
        force: str | None = None,
        unsendable: Collection[str] = (),
    ) -> None:
        if not isinstance(device, Profile) or not isinstance(server, Profile):
            raise ConfigError("device and server must be splitdnn.schema.Profile records")
        if not isinstance(link, Link):
            raise ConfigError(f"link must be a splitdnn.schema.Link, found {type(link).__name__}")
        if isinstance(codecs, str):
            raise ConfigError(f"codecs must be a sequence of codec specs, found the string {codecs!r}")
        self.profiles = (device, server)
        solver.evaluate(self.profiles, [link], {n.name: 0 for n in device.compute_nodes})  # checks
        self.hysteresis = hysteresis if hysteresis is not None else Hysteresis()
        base = constraints if constraints is not None else Constraints()
        if privacy_floor:
            base = dataclasses.replace(base, keep_input_on_device=True)
        self.constraints = base
        self.privacy_floor = bool(privacy_floor)
        best_codec = solver.codec_tensor_cost(
            self.profiles, allowed=None if codecs is None else tuple(codecs), max_error=max_error,
            metric=metric,
        )  # fmt: skip
        self.unsendable = frozenset(unsendable)
        self.tensor_cost = _guarded(best_codec, self.unsendable) if self.unsendable else best_codec
        self.force = force
        self._forced_tiers = self._forced(force) if force is not None else None
        self._pending = 0
        self.switches = 0  # plan changes since construction
        self.link = link
        self.plan = self._initial_plan(link)

    # public ---------------------------------------------------------------------------------------

    @property
    def forced(self) -> bool:
        return self._forced_tiers is not None

    def price(self, plan: Plan, link: Link) -> Plan:
        """``plan`` re-priced under ``link`` with the codecs it uses."""
        codecs = {b.node: b.codec for b in plan.boundary}
        return solver.evaluate(
            self.profiles, [link], plan.tiers, constraints=self.constraints,
            tensor_cost=_fixed_codecs(codecs, self.tensor_cost),
        )  # fmt: skip

    def best(self, link: Link) -> Plan:
        """The solver's optimal plan under ``link`` (codecs chosen with the cut)."""
        return solver.solve(self.profiles, [link], constraints=self.constraints, tensor_cost=self.tensor_cost)

    def baseline(self, kind: str, link: Link | None = None) -> Plan:
        """The edge-only or cloud-only plan under ``link`` (default: the current one), best codec.

        Raises InfeasibleError for cloud-only under the privacy floor.
        """
        lk = link or self.link
        if kind == "edge":
            return solver.edge_only(self.profiles, [lk], tensor_cost=self.tensor_cost)
        if kind == "cloud":
            return solver.cloud_only(
                self.profiles, [lk], constraints=self.constraints, tensor_cost=self.tensor_cost
            )
        raise ConfigError(f"baseline kind must be 'edge' or 'cloud', found {kind!r}")

    def replan(self, link: Link) -> Decision:
        """Re-price the current plan under ``link`` and maybe switch (hysteresis rules)."""
        self.link = link
        current = self.price(self.plan, link)
        if self._forced_tiers is not None:
            self.plan = current
            return Decision(current, current, False, 0, f"forced plan ({self.force})")
        best = self.best(link)
        if plan_key(best) == plan_key(current):
            self._pending = 0
            self.plan = current
            return Decision(current, best, False, 0, "the current plan is the best")
        gain = 1.0 - best.cost.total_ms / current.cost.total_ms if current.cost.total_ms > 0 else 0.0
        h = self.hysteresis
        urgent = h.urgent_margin is not None and gain >= h.urgent_margin
        if gain >= h.margin and gain > 0:
            self._pending += 1
        else:
            self._pending = 0
        if urgent or (self._pending >= h.confirmations and gain > 0):
            why = "urgent" if urgent else f"{self._pending} consecutive confirmation(s)"
            self._pending = 0
            self.plan = best
            self.switches += 1
            return Decision(
                best, best, True, 0,
                f"switched: predicted {best.cost.total_ms:.1f} ms vs {current.cost.total_ms:.1f} ms "
                f"({gain:.0%} faster, {why})",
            )  # fmt: skip
        self.plan = current
        return Decision(
            current, best, False, self._pending,
            f"kept: best is {gain:.0%} faster (margin {h.margin:.0%}, "
            f"{self._pending}/{h.confirmations} confirmations)",
        )  # fmt: skip

    # internals ------------------------------------------------------------------------------------

    def _initial_plan(self, link: Link) -> Plan:
        plan = self._initial(link)
        crossing = [n for n in plan.boundary_nodes if n in self.unsendable]
        if crossing:
            raise PlanError(
                f"force_boundary={self.force!r} would send {crossing}, whose value is not a single tensor "
                f"(a tuple or a Python number) and cannot cross the network; cut elsewhere"
            )
        return plan

    def _initial(self, link: Link) -> Plan:
        if self._forced_tiers is None:
            return self.best(link)
        if self.force == "cloud":
            return self.baseline("cloud", link)
        if self.force == "edge":
            return self.baseline("edge", link)
        try:
            return solver.evaluate(
                self.profiles, [link], self._forced_tiers, constraints=self.constraints,
                tensor_cost=self.tensor_cost,
            )  # fmt: skip
        except PlanError as exc:
            raise ConfigError(f"force_boundary={self.force!r} is not allowed here: {exc}") from exc

    def _forced(self, force: str) -> dict[str, int]:
        device = self.profiles[0]
        compute = [n.name for n in device.compute_nodes]
        if force in FORCED_CHOICES:
            return {n: 0 if force == "edge" else 1 for n in compute}
        if not isinstance(force, str) or force not in compute or force == compute[-1]:
            cuts = solver.chain_cuts(device)
            raise ConfigError(
                f"force_boundary must be 'edge', 'cloud' or a compute node of {device.model!r} other "
                f"than the last to cut after, found {force!r}; chain cuts: {', '.join(cuts[:8])}"
                f"{', ...' if len(cuts) > 8 else ''}"
            )
        pos = compute.index(force)
        return {n: 0 if i <= pos else 1 for i, n in enumerate(compute)}
