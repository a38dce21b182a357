"""Plan choice for the live edge client: a link estimator and a re-planner with hysteresis (torch-free).

Two parts, both pure Python (no torch, no grpc) so they are unit-tested with synthetic numbers:

:class:`LinkEstimator` (in :mod:`splitdnn.runtime._estimator`, re-exported here) turns the client's own
requests and probes into a :class:`~splitdnn.schema.Link`: the RTT from a robust fit over a window
of samples (pings included), the bandwidth from the newest requests' time per byte, smoothed.

:class:`Planner` picks a two-tier plan with :func:`splitdnn.solver.solve` (device and server
profiles, the estimated link, the best allowed codec per boundary tensor within the error budget,
the privacy floor as :class:`~splitdnn.solver.Constraints`) and re-plans with hysteresis: the current
plan is re-priced under the *same* new link estimate (with the codecs it really uses) and replaced
only when the best plan is predicted at least ``margin`` faster on ``confirmations`` consecutive
re-plans, or ``urgent_margin`` faster once (a collapsed link should not wait), or ``margin`` faster
once right after the estimator saw a step of the link (``replan(link, step=True)``: a sample
several times slower or faster than the estimate is a change, not noise). So measurement noise
around a break-even bandwidth does not make the cut flap, each flap costing a new split and cold
caches.

A switch is a prediction, and the cost model can be wrong where the switch matters most: a link
estimate measured with one cut's transfers extrapolates badly to a plan that sends six times as
much (a shaper's burst lets a 100 kB request through almost free, so the link looks faster than it
is for 600 kB). So every switch is checked against measurements (:meth:`Planner.observe_latency`):
once the new plan has ``Hysteresis.verify`` measured requests (after one warm-up request, which
builds the new split and warms its caches), their median is compared with the median of the last
requests of the plan it replaced, scaled by how much the cost model says the link changed that
plan's time since. If the new plan is more than ``revert_margin`` slower, the planner goes back and
holds the new plan off for ``hold_s`` seconds, or until the link estimate moves by more than 1.5 x
from the one that chose it, or the estimator sees a step.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from splitdnn import codec, solver
from splitdnn.errors import CodecError, ConfigError, PlanError
from splitdnn.runtime._estimator import LinkEstimator, LinkSample, check_positive
from splitdnn.schema import CodecResult, LatencyStats, Link, NodeProfile, Plan, Profile
from splitdnn.solver import AccuracyTable, Constraints, TensorCostFn, TensorHop, WireCost

__all__ = [
    "FORCED_CHOICES",
    "Decision",
    "Hysteresis",
    "LinkEstimator",
    "LinkSample",
    "Planner",
    "plan_key",
    "remote_ms",
    "scale_profile",
]

#: ``force_boundary`` values besides a node name: all on the device, all on the server
FORCED_CHOICES = ("edge", "cloud")

#: a held-off plan is reconsidered when the uplink estimate moves this many times from the one that chose it
_HOLD_MOVE = 1.5

#: what a value that cannot cross the network (a tuple, a Python int) is priced at: no plan picks it
_UNSENDABLE_BYTES = 1 << 50
_MAX_PREFIXES = 256  # cuts in graph order a fallback plan is chosen from (see Planner._best_accepted)
_HEADER_BYTES = 16 << 10  # a request's fields besides its tensors' bytes (names, shapes, parameters)


# --------------------------------------------------------------------------------------------------
# profiles


def scale_profile(
    profile: Profile, speedup: float, *, note: str = "", keep_emulation: bool = False
) -> Profile:
    """``profile`` as a machine ``speedup`` x faster would measure it (every time divided by it).

    The client's fallback server profile when the server publishes none: the device profile divided
    by the device-emulation factor is "this machine without emulation". The result records no
    emulation (``slowdown`` 1) and says in ``notes`` that it is an estimate. Where that takes the
    emulation away, its ``idle_factor`` goes too (the slowdown after the padding's idle: a machine
    that pads nothing has none), from the compute times only, as the profiler applied it.
    ``keep_emulation``: only the times change; ``slowdown`` and ``idle_factor`` stay as they are (the
    same emulated device, measured faster or slower now).
    """
    f = check_positive("speedup", speedup)
    k = 1.0 / f
    slowdown = profile.slowdown if keep_emulation else max(1.0, profile.slowdown * k)
    # out of the compute times (a profile at slowdown 1 has none: Profile checks it)
    idle = profile.idle_factor if slowdown == 1.0 else 1.0
    kc = k / idle

    def codec(c: CodecResult) -> CodecResult:
        return dataclasses.replace(c, encode_ms=c.encode_ms * k, decode_ms=c.decode_ms * k)

    def node(n: NodeProfile) -> NodeProfile:
        return dataclasses.replace(
            n,
            latency=n.latency.scaled(kc),
            calibrated_ms=n.calibrated_ms * kc,
            codecs=tuple(codec(c) for c in n.codecs),
        )

    text = note or f"estimated: {profile.describe()} with every time divided by {f:g}" + (
        f" and its compute times by its idle factor {idle:.2f}" if idle != 1.0 else ""
    )
    return dataclasses.replace(
        profile,
        slowdown=slowdown,
        total=LatencyStats.scaled(profile.total, kc),
        nodes=tuple(node(n) for n in profile.nodes),
        notes=text,
        idle_factor=profile.idle_factor / idle,
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

    After a switch, ``verify`` measured requests of the new plan (after one warm-up) are compared with
    the plan it replaced; more than ``revert_margin`` slower and the planner switches back and holds
    the new plan off for ``hold_s`` seconds (see the module docstring). ``verify=0`` turns it off.

    ``replan_budget`` is the share of the client's time that re-plans called for only by a drifting
    estimate may take (see :meth:`Planner.replan_due`): after a re-plan that took R seconds, the next
    such one waits R / ``replan_budget`` seconds. On a fast link the estimate moves by 5 % on most
    requests (a transfer of a few ms is mostly jitter), and a solve on the request's path on most
    requests cost a LAN client 11-14 % of its time (``scripts/bench_replan.py --uplink-mbps 1000
    --rtt-ms 1``: 27-36 re-plans of 4.6-5.4 ms in 40 requests of 31-34 ms).
    A step of the link, a switch being confirmed and a hold that ran out re-plan at once. None: no
    limit.
    """

    margin: float = 0.10
    confirmations: int = 3
    urgent_margin: float | None = 0.5
    verify: int = 3
    revert_margin: float = 0.05
    hold_s: float = 60.0
    replan_budget: float | None = 0.02

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
        v = self.verify
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(
                f"hysteresis verify must be an integer >= 0 (measured requests that check a switch; "
                f"0: no check), found {v!r}"
            )
        r = self.revert_margin
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ConfigError(f"hysteresis revert_margin must be a fraction in [0, 1), found {r!r}")
        check_positive("hysteresis hold_s", self.hold_s, allow_zero=True)
        b = self.replan_budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= 1):
            raise ConfigError(
                f"hysteresis replan_budget must be None (no limit) or a share of the time in (0, 1], "
                f"found {b!r}"
            )


@dataclass(frozen=True)
class _Trial:
    """A switch waiting for its measured check."""

    previous: Plan  # the plan it replaced
    previous_ms: float  # the median of that plan's last measured requests
    measured_under: Link  # the link estimate while they were measured
    chosen_by: Link  # the link estimate that chose the switch


#: RTT moves smaller than this never call for a re-plan (see Planner.replan_due).
_RTT_FLOOR_MS = 0.5


@dataclass(frozen=True)
class _Hold:
    """A plan that measured slower than the one it replaced: not chosen again for a while."""

    until_s: float  # monotonic time the hold ends
    uplink_mbps: float  # the estimate that chose it; a move by _HOLD_MOVE x from it ends the hold


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
    return _device_side(plan.tiers), tuple((b.node, b.codec) for b in plan.boundary)


def prefix_tiers(compute: Sequence[str], k: int) -> dict[str, int]:
    """The assignment that runs the first ``k`` compute nodes (graph order) on the device and the
    rest on the server: 0 is cloud-only, ``len(compute)`` edge-only."""
    return {name: 0 if i < k else 1 for i, name in enumerate(compute)}


def _device_side(tiers: Mapping[str, int]) -> frozenset[str]:
    """The nodes a plan runs on the device (tier 0): what identifies its cut."""
    return frozenset(n for n, t in tiers.items() if t == 0)


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


def remote_ms(plan: Plan) -> float:
    """The part of ``plan``'s predicted latency after the device's compute: encoding, transfers,
    the server's queue (in the round trip) and compute (0 for edge-only)."""
    return max(0.0, plan.cost.total_ms - plan.cost.compute_ms[0])


class Planner:
    """Chooses and keeps the two-tier plan a client runs (see the module docstring).

    ``codecs``: codec specs a boundary tensor may use (None = every codec the profiles measured; raw
    always allowed); ``max_error``: budget on ``metric`` for lossy codecs (0 = lossless only; None,
    the default: 0, or no such budget under an accuracy budget, as ``splitdnn solve`` does).
    ``accuracy_table`` (an :class:`~splitdnn.solver.AccuracyTable` or the path of the JSON that
    ``scripts/bench_accuracy.py --json`` writes) with ``max_accuracy_loss`` (top-1 points): a lossy
    codec may carry a node's value only if its measured loss there is within the budget (lossless
    codecs always may); the table must be measured on the profiles' model (ConfigError otherwise).
    ``privacy_floor``: the raw input never leaves the device (cloud-only is forbidden; the input's
    readers stay on the device). ``force``: "edge", "cloud" or a compute node name to cut after; a
    forced plan is never replaced, only re-priced. ``unsendable``: nodes whose value is not a single
    tensor (a tuple, a Python number): they are priced out of every plan, and a forced plan that
    would send one is refused. ``max_remote_ms``: a plan whose part after the device's compute is
    predicted longer (the client's deadline) is never chosen; edge-only is, instead.
    ``check``: raises PlanError for a plan the model cannot run split (``graph.check_tiers`` on the
    traced model, whose in-place changes the profiles do not show); a forced plan it refuses is a
    ConfigError. ``max_message_bytes``: the smaller of both ends' message caps; a boundary tensor is
    sent only with a codec whose frame fits (less a margin for the request's other fields), a value
    nothing fits is priced out of every plan, and a cut whose tensors together are predicted over the
    cap is not chosen. Not for a forced plan: the client refuses its request, if over a cap, with a
    ConfigError. When the solver's optimum cannot run for one of these reasons (or :meth:`avoid` was
    told so; ``avoided`` carries that over from a planner this one replaces), the fastest plan that
    can among the cuts in graph order is chosen instead (edge-only always can, but for a memory cap).
    """

    def __init__(
        self,
        device: Profile,
        server: Profile,
        link: Link,
        *,
        codecs: Sequence[str] | None = None,
        max_error: float | None = None,
        metric: str = "rel_mse",
        privacy_floor: bool = False,
        hysteresis: Hysteresis | None = None,
        constraints: Constraints | None = None,
        force: str | None = None,
        unsendable: Collection[str] = (),
        check: Callable[[Mapping[str, int]], object] | None = None,
        avoided: Mapping[frozenset[str], str] | None = None,
        accuracy_table: AccuracyTable | str | Path | None = None,
        max_accuracy_loss: float | None = None,
        max_remote_ms: float | None = None,
        max_message_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(device, Profile) or not isinstance(server, Profile):
            raise ConfigError("device and server must be splitdnn.schema.Profile records")
        if not isinstance(link, Link):
            raise ConfigError(f"link must be a splitdnn.schema.Link, found {type(link).__name__}")
        if isinstance(codecs, str):
            raise ConfigError(f"codecs must be a sequence of codec specs, found the string {codecs!r}")
        self.profiles = (device, server)
        # the device's: plans pick codecs from the sender's measurements, so one only a (newer) server
        # lists is never chosen, and need not be known here
        codec.check_profile_codecs([device])
        solver.evaluate(self.profiles, [link], {n.name: 0 for n in device.compute_nodes})  # checks
        self.hysteresis = hysteresis if hysteresis is not None else Hysteresis()
        base = constraints if constraints is not None else Constraints()
        if privacy_floor:
            base = dataclasses.replace(base, keep_input_on_device=True)
        self.constraints = base
        self.privacy_floor = bool(privacy_floor)
        if isinstance(accuracy_table, (str, Path)):
            accuracy_table = solver.load_accuracy_table(accuracy_table)
        self.accuracy_table = accuracy_table
        self.max_accuracy_loss = max_accuracy_loss
        if max_error is None and accuracy_table is None:
            max_error = 0.0  # lossless only, unless an accuracy budget says which lossy codecs may go
        self.max_error = max_error
        if max_message_bytes is not None and (
            isinstance(max_message_bytes, bool)
            or not isinstance(max_message_bytes, int)
            or max_message_bytes < 1
        ):
            raise ConfigError(
                f"max_message_bytes must be an integer >= 1 or None, found {max_message_bytes!r}"
            )
        # a forced plan is the caller's: priced as it is, its request is refused with a clear error
        wire_cap = (
            None
            if max_message_bytes is None or force is not None
            else max(0, max_message_bytes - _HEADER_BYTES)
        )
        # what the best codec per tensor depends on besides the profiles (rebuilt with them)
        self._codec_choice: dict[str, object] = {
            "allowed": None if codecs is None else tuple(codecs), "max_error": max_error, "metric": metric,
            "accuracy": accuracy_table, "max_accuracy_loss": max_accuracy_loss, "max_wire_bytes": wire_cap,
        }  # fmt: skip
        if codecs is not None:
            for spec in codecs:  # a name no build knows, before "not measured" (which says: measure it)
                if spec not in ("raw", "none"):
                    try:
                        codec.parse_spec(spec)
                    except CodecError as exc:
                        raise ConfigError(f"codecs={list(codecs)}: {exc}") from exc
            unusable = solver.unusable_codecs(self.profiles, codecs, max_error=max_error, metric=metric)
            if unusable:
                raise ConfigError(
                    f"codecs={list(codecs)}: {'; '.join(unusable)}; no plan could use such a codec. "
                    "Measure it in the device profile (splitdnn profile --codecs) and give a max_error "
                    "that admits it, or leave it out"
                )
        self.unsendable = frozenset(unsendable)
        self._server_profile = server  # as given: what server_factor scales
        self.server_factor = 1.0
        self.server_queue_ms = 0.0  # added to every plan that uses the server (set_server_queue)
        self.tensor_cost = self._tensor_cost()
        if max_remote_ms is not None and not (
            isinstance(max_remote_ms, (int, float)) and math.isfinite(max_remote_ms) and max_remote_ms > 0
        ):
            raise ConfigError(f"max_remote_ms must be a finite number > 0 or None, found {max_remote_ms!r}")
        self.max_remote_ms = max_remote_ms
        self.check = check
        self._checked: dict[frozenset[str], str | None] = {}  # check's verdict per cut (_refused)
        self._prefixes: list[dict[str, int]] | None = None  # _best_accepted's candidates, once built
        self._wire_cap = wire_cap  # None without a cap, or for a forced plan
        # cuts whose request was over a cap: why (a rebuilt planner is given its predecessor's)
        self._avoided: dict[frozenset[str], str] = dict(avoided or {})
        self.force = force
        self._forced_tiers = self._forced(force) if force is not None else None
        self._pending = 0
        self.switches = 0  # plan changes since construction (reverts included)
        self.reverts = 0  # switches undone because the new plan measured slower
        self._clock = clock
        # the current plan's last ``verify`` measured latencies, ms (what a switch is checked with)
        self._latencies: deque[float] = deque(maxlen=max(1, self.hysteresis.verify))
        self._seen = 0  # requests measured on the current plan (warm-up included)
        self._trial: _Trial | None = None
        self._holds: dict[tuple[frozenset[str], tuple[tuple[str, str], ...]], _Hold] = {}
        self._replanned_at = -math.inf  # (clock) when the last re-plan ended, and what it took, s
        self._replan_s = 0.0
        self.link = link
        self.plan = self._initial_plan(link)

    # public ---------------------------------------------------------------------------------------

    def set_server_factor(self, factor: float) -> None:
        """Price the server ``factor`` x slower than its profile from now on (its compute and decode
        times; 1: the profile as given); the measured pace of a loaded server
        (:class:`~splitdnn.runtime._server_pace.ServerPace`). The plan is not re-priced here: the next
        :meth:`replan` does it, with the hysteresis rules."""
        f = check_positive("server factor", factor)
        server = self._server_profile
        if f != 1.0:
            server = scale_profile(
                server, 1.0 / f, keep_emulation=True,
                note=f"{server.describe()}, priced {f:.2f}x slower: the server's measured pace",
            )  # fmt: skip
        self.server_factor = f
        self.profiles = (self.profiles[0], server)
        self.tensor_cost = self._tensor_cost()

    def set_server_queue(self, queue_ms: float) -> None:
        """Price every plan that uses the server ``queue_ms`` slower from now on, whatever its cut: the
        server's measured queue (requests of other clients ahead of each of ours), which adds time
        rather than multiplying it (:class:`~splitdnn.runtime._server_pace.ServerPace`). It is priced
        as part of the link's round trip, which the solver charges once to every plan that sends
        anything, so a plan's ``cost.rtt_ms`` includes it. The plan is not re-priced here: the next
        :meth:`replan` does it, with the hysteresis rules."""
        number = isinstance(queue_ms, (int, float)) and not isinstance(queue_ms, bool)
        if not (number and math.isfinite(queue_ms) and queue_ms >= 0):
            raise ConfigError(f"server queue must be a finite number of ms >= 0, found {queue_ms!r}")
        self.server_queue_ms = float(queue_ms)

    def _priced(self, link: Link) -> list[Link]:
        """The links a plan is priced under: ``link`` with the server's queue in its round trip."""
        if not self.server_queue_ms:
            return [link]
        return [dataclasses.replace(link, rtt_ms=link.rtt_ms + self.server_queue_ms)]

    def _tensor_cost(self) -> TensorCostFn:
        best = solver.codec_tensor_cost(self.profiles, **self._codec_choice)  # type: ignore[arg-type]
        return _guarded(best, self.unsendable) if self.unsendable else best

    @property
    def forced(self) -> bool:
        return self._forced_tiers is not None

    def price(self, plan: Plan, link: Link) -> Plan:
        """``plan`` re-priced under ``link`` with the codecs it uses."""
        codecs = {b.node: b.codec for b in plan.boundary}
        return solver.evaluate(
            self.profiles, self._priced(link), plan.tiers, constraints=self.constraints,
            tensor_cost=_fixed_codecs(codecs, self.tensor_cost),
        )  # fmt: skip

    def best(self, link: Link) -> Plan:
        """The solver's optimal plan under ``link`` (codecs chosen with the cut); edge-only instead
        when its remote part is predicted over ``max_remote_ms`` (the client's deadline)."""
        plan = solver.solve(
            self.profiles, self._priced(link), constraints=self.constraints, tensor_cost=self.tensor_cost
        )
        if self._unfit(plan) is not None:
            plan = self._best_accepted(link)
        if self.max_remote_ms is not None and remote_ms(plan) > self.max_remote_ms:
            return solver.edge_only(self.profiles, self._priced(link), tensor_cost=self.tensor_cost)
        return plan

    @property
    def avoided(self) -> Mapping[frozenset[str], str]:
        """The cuts (device-side nodes) told to be avoided, with why (:meth:`avoid`)."""
        return MappingProxyType(self._avoided)

    def avoid(self, plan: Plan, why: str) -> None:
        """Never choose ``plan``'s cut again (its request turned out over a message cap: the profile
        predicted its frames smaller); if it is the current plan, switch to the best other one now.
        Edge-only sends nothing and is never avoided."""
        if not plan.boundary:
            return
        head = _device_side(plan.tiers)
        self._avoided[head] = why
        if self._trial is not None and _device_side(self._trial.previous.tiers) == head:
            self._trial = None  # never reverted to
        if _device_side(self.plan.tiers) == head and not self.forced:
            self._switch_to(self.best(self.link), None)

    def _refused(self, tiers: Mapping[str, int], head: frozenset[str]) -> str | None:
        """Why ``check`` refuses ``tiers`` (None: accepted, or no check); kept per cut (``head``, its
        device side), as it does not depend on the link (a check is ~1 ms for a 150-node model)."""
        if self.check is None:
            return None
        if head not in self._checked:
            try:
                self.check(tiers)
            except PlanError as exc:
                self._checked[head] = str(exc)
            else:
                self._checked[head] = None
        return self._checked[head]

    def _unfit(self, plan: Plan) -> str | None:
        """Why ``plan`` cannot run although the solver allows it (None: it can): the model refuses
        it (``check``), its tensors together are predicted over the message cap (the solver checks
        each tensor alone), or a request of it was over the cap (:meth:`avoid`)."""
        head = _device_side(plan.tiers)
        if head in self._avoided:
            return self._avoided[head]
        if self._wire_cap is not None and plan.boundary_bytes > self._wire_cap:
            return (
                f"its {len(plan.boundary)} boundary tensors together are predicted at {plan.boundary_bytes} "
                f"bytes, over the {self._wire_cap} a request may carry"
            )
        return self._refused(plan.tiers, head)

    def _best_accepted(self, link: Link) -> Plan:
        """The fastest plan that can run among the cuts in graph order (cloud-only to edge-only; for
        a model of more than ``_MAX_PREFIXES`` compute nodes, the chain cuts and that many evenly
        spaced ones), for when the solver's optimum cannot (:meth:`_unfit`): not proven optimal
        (``exact`` False). Edge-only sends nothing: no cap or avoidance applies, and every plan
        check accepts it. About 20 ms for ResNet-50's 175 nodes here, against 1.5 ms for a solve."""
        if self._prefixes is None:  # the cuts depend on the profiles only: built once
            compute = [n.name for n in self.profiles[0].compute_nodes]
            n = len(compute)
            ends: Collection[int] = range(n + 1)
            if n > _MAX_PREFIXES:
                position = {name: i for i, name in enumerate(compute)}
                spaced = {round(i * n / _MAX_PREFIXES) for i in range(_MAX_PREFIXES + 1)}
                ends = sorted(spaced | {position[c] + 1 for c in solver.chain_cuts(self.profiles[0])})
            self._prefixes = [prefix_tiers(compute, k) for k in ends]
        unfit = []
        for plan in solver.ranked(
            self.profiles,
            self._priced(link),
            self._prefixes,
            constraints=self.constraints,
            tensor_cost=self.tensor_cost,
        ):
            why = self._unfit(plan)
            if why is None:
                return plan  # priced, not proven optimal: exact is False
            unfit.append(f"{plan.strategy} {list(plan.boundary_nodes)[:3]}: {why}")
        raise PlanError(  # edge-only broke the constraints (a device memory cap), or the check refused it
            f"no plan can run: the solver's optimum cannot, nor can any cut in graph order under the "
            f"constraints, edge-only included ({'; '.join(unfit[:3]) or 'edge-only breaks them'})"
        )

    def baseline(self, kind: str, link: Link | None = None) -> Plan:
        """The edge-only or cloud-only plan under ``link`` (default: the current one), best codec.

        Raises InfeasibleError for cloud-only under the privacy floor.
        """
        lk = link or self.link
        if kind == "edge":
            return solver.edge_only(self.profiles, self._priced(lk), tensor_cost=self.tensor_cost)
        if kind == "cloud":
            return solver.cloud_only(
                self.profiles, self._priced(lk), constraints=self.constraints, tensor_cost=self.tensor_cost
            )
        raise ConfigError(f"baseline kind must be 'edge' or 'cloud', found {kind!r}")

    def replan_due(self, link: Link, *, tolerance: float) -> bool:
        """Whether re-planning under ``link`` could change anything since the last re-plan.

        It could when a switch is being confirmed (a re-plan counts toward it), a hold has run out,
        or ``link`` moved from the link of the last re-plan: uplink or downlink by ``tolerance`` or
        more (a fraction), or the RTT by as much and at least 0.5 ms. Otherwise a re-plan would price
        the same plans under (nearly) the same link and decide the same: a re-plan (about 2.5 ms
        for a 150-node model on this project's machine, more on a slow device) saved on every request.
        A moved link waits, though, until the time since the last re-plan is that re-plan's time over
        ``hysteresis.replan_budget`` (see :class:`Hysteresis`); it is then still due, as the link is
        compared with the one of the last re-plan.
        """
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
            raise ConfigError(f"tolerance must be a fraction in [0, 1), found {tolerance!r}")
        if self._pending or any(self._clock() >= h.until_s for h in self._holds.values()):
            return True
        old = self.link

        def moved(a: float, b: float, floor: float = 0.0) -> bool:
            return abs(b - a) > max(tolerance * abs(a), floor)

        if not (
            moved(old.uplink_mbps, link.uplink_mbps)
            or moved(old.downlink_mbps, link.downlink_mbps)
            or moved(old.rtt_ms, link.rtt_ms, _RTT_FLOOR_MS)
        ):
            return False
        budget = self.hysteresis.replan_budget  # a drift waits until the last re-plan is paid for
        return budget is None or self._clock() - self._replanned_at >= self._replan_s / budget

    def replan(self, link: Link, *, step: bool = False) -> Decision:
        """Re-price the current plan under ``link`` and maybe switch (hysteresis rules).

        ``step``: ``link`` follows a step the estimator detected (:attr:`LinkEstimator.stepped`); one
        re-plan that finds a plan ``margin`` faster is then enough. Timed on the planner's clock, for
        ``replan_budget``.
        """
        start = self._clock()
        try:
            return self._replan(link, step)
        finally:
            self._replanned_at = self._clock()
            self._replan_s = max(0.0, self._replanned_at - start)

    def _replan(self, link: Link, step: bool) -> Decision:
        before, self.link = self.link, link
        now = self._clock()
        for key in [k for k, h in self._holds.items() if now >= h.until_s]:
            del self._holds[key]  # run out: replan_due said so once, and this re-plan answers it
        current = self.price(self.plan, link)
        if self._forced_tiers is not None:
            self.plan = current
            return Decision(current, current, False, 0, f"forced plan ({self.force})")
        best = self.best(link)
        if plan_key(best) == plan_key(current):
            self._pending = 0
            self.plan = current
            return Decision(current, best, False, 0, "the current plan is the best")
        if step:
            self._holds.clear()  # the link changed: what measured slower before may not be now
        hold = self._held(best, link)
        if hold is not None:
            self._pending = 0
            self.plan = current
            return Decision(
                current, best, False, 0,
                f"kept: the best plan measured slower than this one after the last switch to it; held "
                f"off for {max(0.0, hold.until_s - self._clock()):.0f} s more, or until the uplink "
                f"estimate leaves {hold.uplink_mbps / _HOLD_MOVE:.3g}..{hold.uplink_mbps * _HOLD_MOVE:.3g} "
                f"Mbit/s",
            )  # fmt: skip
        gain = 1.0 - best.cost.total_ms / current.cost.total_ms if current.cost.total_ms > 0 else 0.0
        h = self.hysteresis
        urgent = h.urgent_margin is not None and gain >= h.urgent_margin
        if gain >= h.margin and gain > 0:
            self._pending += 1
        else:
            self._pending = 0
        confirmed = self._pending >= h.confirmations or (step and self._pending >= 1)
        if urgent or (confirmed and gain > 0):
            why = (
                "urgent" if urgent
                else "a step of the link" if self._pending < h.confirmations
                else f"{self._pending} consecutive confirmation(s)"
            )  # fmt: skip
            self._pending = 0
            self._switch_to(best, (before, link))
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

    def observe_latency(self, plan: Plan, total_ms: float) -> Decision | None:
        """Record a request's measured latency (ms) on ``plan``; a Decision when it undid a switch.

        Only requests that ran as ``plan`` says belong here (not local fallbacks); a request of a plan
        that is no longer the current one (it started before a switch) is ignored.
        """
        if not (isinstance(total_ms, (int, float)) and math.isfinite(total_ms) and total_ms >= 0):
            raise ConfigError(f"total_ms must be a finite number >= 0, found {total_ms!r}")
        if self._forced_tiers is not None or plan_key(plan) != plan_key(self.plan):
            return None
        self._seen += 1
        if self._trial is not None and self._seen == 1:
            return None  # the warm-up request of a new plan: cold caches, a tail built on the server
        self._latencies.append(float(total_ms))
        trial, n = self._trial, self.hysteresis.verify
        if trial is None or len(self._latencies) < n:
            return None
        self._trial = None
        measured = statistics.median(self._latencies)
        # what the replaced plan would take now: its measured time, moved as the model says the link
        # change since the switch moved it (a link that collapsed makes any old time look too good)
        before = self.price(trial.previous, trial.measured_under).cost.total_ms
        after = self.price(trial.previous, self.link).cost.total_ms
        expected = trial.previous_ms * (after / before if before > 0 else 1.0)
        if measured <= expected * (1.0 + self.hysteresis.revert_margin):
            return None
        new = self.plan
        until = self._clock() + self.hysteresis.hold_s
        self._holds[plan_key(new)] = _Hold(until, trial.chosen_by.uplink_mbps)
        self._switch_to(self.price(trial.previous, self.link), None)
        self.reverts += 1
        return Decision(
            self.plan, new, True, 0,
            f"reverted: the new plan measured {measured:.1f} ms (median of {n}) against "
            f"{expected:.1f} ms expected of the plan it replaced; held off for "
            f"{self.hysteresis.hold_s:g} s",
        )  # fmt: skip

    # internals ------------------------------------------------------------------------------------

    def _switch_to(self, plan: Plan, links: tuple[Link, Link] | None) -> None:
        """Make ``plan`` current; ``links``: the estimates before the re-plan and the one that chose
        ``plan`` (checked by measurements if the plan it replaces has enough of them), None for a
        revert (not checked)."""
        n = self.hysteresis.verify
        self._trial = None
        if links is not None and n > 0 and len(self._latencies) >= n:
            self._trial = _Trial(self.plan, statistics.median(self._latencies), *links)
        self._latencies.clear()
        self._seen = 0
        self.plan = plan
        self.switches += 1

    def _held(self, plan: Plan, link: Link) -> _Hold | None:
        """The hold on ``plan`` if one is in force under ``link`` (expired ones are dropped)."""
        key = plan_key(plan)
        hold = self._holds.get(key)
        if hold is None:
            return None
        ratio = link.uplink_mbps / hold.uplink_mbps
        if self._clock() >= hold.until_s or not 1 / _HOLD_MOVE <= ratio <= _HOLD_MOVE:
            del self._holds[key]
            return None
        return hold

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
            plan = solver.evaluate(
                self.profiles, self._priced(link), self._forced_tiers, constraints=self.constraints,
                tensor_cost=self.tensor_cost,
            )  # fmt: skip
        except PlanError as exc:
            raise ConfigError(f"force_boundary={self.force!r} is not allowed here: {exc}") from exc
        refused = self._refused(
            plan.tiers, _device_side(plan.tiers)
        )  # the cap: its request is refused, if over, when built
        if refused is not None:
            raise ConfigError(f"force_boundary={self.force!r} cannot run split: {refused}")
        return plan

    def _forced(self, force: str) -> dict[str, int]:
        device = self.profiles[0]
        compute = [n.name for n in device.compute_nodes]
        if force in FORCED_CHOICES:
            return prefix_tiers(compute, len(compute) if force == "edge" else 0)
        if not isinstance(force, str) or force not in compute or force == compute[-1]:
            cuts = solver.chain_cuts(device)
            raise ConfigError(
                f"force_boundary must be 'edge', 'cloud' or a compute node of {device.model!r} other "
                f"than the last to cut after, found {force!r}; chain cuts: {', '.join(cuts[:8])}"
                f"{', ...' if len(cuts) > 8 else ''}"
            )
        return prefix_tiers(compute, compute.index(force) + 1)
