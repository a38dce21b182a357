"""`splitdnn bench`: measured partition experiments through the real client, server and a shaped link.

:func:`run_bench` measures a grid, models x uplink bandwidths x device slowdowns, and in every cell
runs these strategies side by side through :class:`~splitdnn.runtime.client.SplitClient` and
:class:`~splitdnn.runtime.server.TailServer` (DESIGN section 7: one run, same machine, quote ratios):

- ``edge-only``: the whole model on the emulated device;
- ``cloud-raw``: the raw fp32 input sent, the whole model on the server;
- ``cloud-lossless``: the input sent with the best lossless codec measured (raw included: at a high
  bandwidth compressing costs more than it saves, and a baseline should be as strong as it can be);
- ``splitdnn``: the client's own adaptive plan, starting from the cell's nominal link and refining
  its estimate from its own requests, exactly as in production;
- ``oracle``: the best *measured* of every candidate cut: edge-only, cloud-only, every chain cut of
  the model (:func:`splitdnn.graph.chain_cuts`) and every DAG cut the solver finds optimal anywhere
  in 0.1-1000 Mbit/s. The splitdnn strategy's own measurement counts as a measured cut too, so
  ``regret`` (splitdnn measured / oracle) is >= 1 by definition and 1 means "no measured cut beat it".

Every cell records median and p90 latency, bytes sent, the prediction of the cost model *under the
cell's nominal link* (so its error is the cost model's, not the link estimator's) and the error,
regret and the speed-up against the best baseline. Time budget (shared with the demo,
:mod:`splitdnn.runtime.bench_measure`): a strategy whose requests would exceed ``budget_s`` is run
fewer times, and one whose single request would exceed it is not run: its record says
``measured: false`` and it is left out of MAPE and regret, which count what they left out.

The oracle prunes what it measures: candidates predicted slower than ``oracle_prune`` x the best
prediction are not run (at most ``oracle_max_cuts`` are run, the best predicted first). A cut the cost
model mis-predicts by more than that factor could be missed; every candidate is listed under ``cuts``
in the JSON with its prediction and whether it was measured, so the pruning is visible.

Links: ``link="shaper"`` (default) runs server and shaper in this process; ``link="netns"`` runs
the server in a network namespace behind a veth pair shaped by the kernel (see
:mod:`splitdnn.runtime.bench_netns`). Reports: :mod:`splitdnn.runtime.bench_report`.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import torch

from splitdnn import graph, solver
from splitdnn.errors import ConfigError, PlanError
from splitdnn.runtime._client_request import device_compute, emulation_clock
from splitdnn.runtime.bench_config import (
    BASELINES,
    BENCH_UPLINKS_MBPS,
    LOSSLESS_CODECS,
    STRATEGIES,
    BenchConfig,
)
from splitdnn.runtime.bench_measure import Timing, measure_interleaved, requests_within
from splitdnn.runtime.client import SplitClient
from splitdnn.runtime.planner import Hysteresis, plan_key, prefix_tiers, scale_profile
from splitdnn.schema import Link, Plan, Profile

__all__ = [
    "BASELINES",
    "BENCH_UPLINKS_MBPS",
    "STRATEGIES",
    "BenchConfig",
    "CellResult",
    "CutRun",
    "DriftTracker",
    "PreparedModel",
    "StrategyRun",
    "format_cell_line",
    "cut_key",
    "measure_cell",
    "pool_cuts",
    "prepare_model",
    "run_bench",
]

#: The range the oracle searches for DAG cuts the solver picks (DESIGN section 7's sweep).
DAG_SWEEP_MBPS = (0.1, 1000.0)
#: A hysteresis that never switches: pins a client to the plan it is given (oracle DAG cuts).
_PINNED = Hysteresis(margin=0.99, confirmations=1 << 30, urgent_margin=None)


# --------------------------------------------------------------------------------------------------
# results of one cell


@dataclass(frozen=True)
class StrategyRun:
    """One strategy in one cell: what ran, the cost model's prediction for it and the measurements."""

    strategy: str  # one of STRATEGIES
    predicted_ms: float  # the plan that ran, priced under the cell's nominal link
    timing: Timing  # measured latencies (empty samples: predicted only)
    plan: str = ""  # "edge-only", "split" or "cloud-only"
    cut: tuple[str, ...] = ()  # boundary tensors of the plan that ran
    codecs: tuple[str, ...] = ()
    note: str = ""  # why it was not measured, or what to know about it
    switches: int = 0  # plan changes during its requests (splitdnn)
    estimate_mbps: float | None = None  # the client's uplink estimate at the end (splitdnn)
    source: str = ""  # oracle: the candidate that won


@dataclass(frozen=True)
class CutRun:
    """One oracle candidate: a cut, its prediction, and its measurement when it was run."""

    label: str  # the node cut after, "edge-only", "cloud-only" or "dag:<boundary nodes>"
    kind: str  # "edge", "cloud", "chain" or "dag"
    predicted_ms: float  # under the nominal link (inf: the cut sends a value that is not a tensor)
    timing: Timing | None  # None: not run (pruned or over the budget; ``note`` says which)
    cut: tuple[str, ...] = ()
    codecs: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class CellResult:
    """Everything measured in one cell (model, slowdown, uplink)."""

    model: str
    slowdown: float
    uplink_mbps: float
    runs: dict[str, StrategyRun]  # strategy -> run
    cuts: tuple[CutRun, ...] = field(default=())
    notes: tuple[str, ...] = ()  # about the model's profiles (re-measured, unreliable)
    # the factor the cell's device and server profiles were rescaled by (refresh_profiles)
    profile_scale: tuple[float, float] = (1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# measuring one cell


@dataclass(frozen=True)
class _CellContext:
    """What every client of a cell shares."""

    address: str
    traced: graph.TracedModel
    device: Profile
    server: Profile
    link: Link  # the nominal link of the cell
    slowdown: float
    config: BenchConfig
    x: torch.Tensor


def _client(ctx: _CellContext, **kw: Any) -> SplitClient:
    return SplitClient(
        ctx.address, ctx.traced, device_profile=ctx.device, server_profile=ctx.server, link=ctx.link,
        emulate_slowdown=ctx.slowdown, threads=ctx.config.device_threads, timeout_s=600.0, **kw,
    )  # fmt: skip


def _cut_of(plan: Plan) -> tuple[str, ...]:
    return tuple(plan.boundary_nodes)


def _codecs_of(plan: Plan) -> tuple[str, ...]:
    return tuple(b.codec for b in plan.boundary)


def _over_budget(predicted_ms: float, budget_s: float) -> str:
    return (
        f"not run: one request is predicted to take {predicted_ms / 1e3:.1f} s, over the {budget_s:g} s "
        "budget"
    )


def _candidates(ctx: _CellContext, base: SplitClient) -> list[tuple[str, str, Plan]]:
    """Every oracle candidate as ``(label, kind, plan priced under the nominal link)``."""
    planner = base.planner
    profiles = (ctx.device, ctx.server)
    compute = [n.name for n in ctx.device.compute_nodes]
    out: list[tuple[str, str, Plan]] = [
        ("edge-only", "edge", planner.baseline("edge", ctx.link)),
        ("cloud-only", "cloud", planner.baseline("cloud", ctx.link)),
    ]
    seen = {plan_key(out[0][2])[0], plan_key(out[1][2])[0]}
    for node in graph.chain_cuts(ctx.traced):
        if node not in compute or node == compute[-1]:
            continue
        try:
            tiers = prefix_tiers(compute, compute.index(node) + 1)  # force_boundary=node
            plan = solver.evaluate(
                profiles, [ctx.link], tiers, constraints=planner.constraints, tensor_cost=planner.tensor_cost
            )
        except PlanError:
            continue
        seen.add(plan_key(plan)[0])
        out.append((node, "chain", plan))
    lo, hi = (math.log10(v) for v in DAG_SWEEP_MBPS)
    n = ctx.config.dag_points
    for i in range(n):
        mbps = 10 ** (lo + (hi - lo) * i / (n - 1))
        best = planner.best(ctx.config.link_at(mbps))
        key = plan_key(best)[0]
        if key in seen:
            continue
        seen.add(key)
        plan = solver.evaluate(profiles, [ctx.link], best.tiers, constraints=planner.constraints,
                               tensor_cost=planner.tensor_cost)  # fmt: skip
        out.append(("dag:" + ",".join(plan.boundary_nodes), "dag", plan))
    return out


def _cut_client_kw(ctx: _CellContext, label: str, kind: str) -> dict[str, Any]:
    """The client settings that run one oracle candidate (a DAG cut is pinned after construction)."""
    if kind == "edge":
        return {"force_boundary": "edge"}
    if kind == "cloud":
        return {"force_boundary": "cloud", "max_error": ctx.config.max_error}
    if kind == "chain":
        return {"force_boundary": label, "max_error": ctx.config.max_error}
    return {"hysteresis": _PINNED, "max_error": ctx.config.max_error, "server_pace": False}  # as measured


def _select(ctx: _CellContext, cands: list[tuple[str, str, Plan]]) -> list[tuple[str, str, Plan, str]]:
    """Each candidate with ``""`` when it is to be run, else why not (pruned, over budget, unsendable)."""
    cfg = ctx.config
    best_pred = min(c[2].cost.total_ms for c in cands)
    out = []
    chosen = 0
    for label, kind, plan in sorted(cands, key=lambda c: c[2].cost.total_ms):
        pred = plan.cost.total_ms
        if not math.isfinite(pred):
            note = "not run: it would send a value that is not a tensor"
        elif pred > cfg.oracle_prune * best_pred:
            note = f"pruned: predicted {pred / best_pred:.2f}x the best prediction (> {cfg.oracle_prune:g}x)"
        elif chosen >= cfg.oracle_max_cuts:
            note = f"pruned: {cfg.oracle_max_cuts} better-predicted cuts are run already"
        elif requests_within(pred, cfg.warmup, cfg.requests, cfg.budget_s)[1] == 0:
            note = _over_budget(pred, cfg.budget_s)
        else:
            note = ""
            chosen += 1
        out.append((label, kind, plan, note))
    return out


def _strategy_of(kind: str) -> str:
    return {"edge": "edge-only", "cloud": "cloud-only"}.get(kind, "split")


CutKey = tuple[str, tuple[str, ...], tuple[str, ...]]


def cut_key(plan: str, cut: Sequence[str], codecs: Sequence[str]) -> CutKey:
    """What identifies a cut as run: the plan kind, its boundary tensors and their codecs."""
    if plan == "edge-only":
        return ("edge-only", (), ())
    return (plan, tuple(cut), tuple(codecs))


def pool_cuts(runs: Sequence[StrategyRun], cuts: Sequence[CutRun]) -> dict[CutKey, tuple[float, ...]]:
    """Every measured cut of a cell with the samples of all its runs merged.

    One cut is often run more than once in a cell: splitdnn's choice, a baseline and an oracle
    candidate may be the very same plan. Their samples are merged, so that comparing two plans
    compares plans rather than two noisy runs of one plan (a minimum over many noisy runs of similar
    cuts would otherwise be biased low, and regret biased high). A run whose client switched plans
    is left out: its samples belong to more than one cut.
    """
    pooled: dict[CutKey, list[float]] = {}
    for r in runs:
        # a run that switched plans mixes cuts: it cannot be credited to one (it keeps its own median)
        if r.strategy != "oracle" and r.timing.measured and r.switches == 0:
            pooled.setdefault(cut_key(r.plan, r.cut, r.codecs), []).extend(r.timing.samples_ms)
    for c in cuts:
        if c.timing is not None and c.timing.measured:
            pooled.setdefault(cut_key(_strategy_of(c.kind), c.cut, c.codecs), []).extend(c.timing.samples_ms)
    return {k: tuple(v) for k, v in pooled.items()}


def _best_measured(runs: Sequence[StrategyRun], cuts: Sequence[CutRun]) -> StrategyRun:
    """The oracle: the measured cut of the cell with the lowest median, its runs pooled (:func:`pool_cuts`).

    The baselines and the splitdnn run are measured cuts too, so they compete: regret is then >= 1
    for every strategy by definition.
    """
    pooled = pool_cuts(runs, cuts)
    if not pooled:
        best = min((c.predicted_ms for c in cuts), default=math.nan)
        return StrategyRun("oracle", best, Timing(best), note="not run: no candidate fits the budget")
    key = min(pooled, key=lambda k: Timing(0.0, pooled[k]).median_ms)
    sources = [r.strategy for r in runs if r.strategy != "oracle" and r.timing.measured
               and r.switches == 0 and cut_key(r.plan, r.cut, r.codecs) == key]  # fmt: skip
    sources += [c.label for c in cuts if c.timing is not None and c.timing.measured
                and cut_key(_strategy_of(c.kind), c.cut, c.codecs) == key]  # fmt: skip
    predicted = next(
        (c.predicted_ms for c in cuts if cut_key(_strategy_of(c.kind), c.cut, c.codecs) == key),
        next((r.predicted_ms for r in runs if cut_key(r.plan, r.cut, r.codecs) == key), math.nan),
    )
    sent: list[int] = []
    for r in runs:
        if r.strategy != "oracle" and r.switches == 0 and cut_key(r.plan, r.cut, r.codecs) == key:
            sent += r.timing.bytes_sent
    for c in cuts:
        if c.timing is not None and cut_key(_strategy_of(c.kind), c.cut, c.codecs) == key:
            sent += c.timing.bytes_sent
    plan, cut, codecs = key
    timing = Timing(predicted, pooled[key], plan, bytes_sent=tuple(sent), boundary=cut, codecs=codecs)
    source = " + ".join(dict.fromkeys(sources))  # once each ("edge-only" is a strategy and a cut's label)
    return StrategyRun("oracle", predicted, timing, plan, cut, codecs, source=source)


def measure_cell(
    address: str,
    traced: graph.TracedModel,
    device: Profile,
    server: Profile,
    uplink_mbps: float,
    slowdown: float,
    config: BenchConfig,
    x: torch.Tensor,
) -> CellResult:
    """Measure every strategy of one cell against the server at ``address`` (the link already shaped).

    ``device`` is the emulated device's profile (measured with ``slowdown``), ``server`` the server's.
    All clients are made first, then measured round-robin (:func:`measure_interleaved`), so the
    strategies and the oracle's candidates meet the same machine load.
    """
    ctx = _CellContext(address, traced, device, server, config.link_at(uplink_mbps), slowdown,
                       config, x)  # fmt: skip
    lossless_non_raw = tuple(c for c in LOSSLESS_CODECS if c != "raw")
    settings: dict[str, dict[str, Any]] = {
        "edge-only": {"force_boundary": "edge"},
        "cloud-raw": {"force_boundary": "cloud", "codecs": ("raw",)},
        "cloud-lossless": {"force_boundary": "cloud", "codecs": lossless_non_raw},
        "splitdnn": {"max_error": config.max_error, "server_pace": config.server_pace},
    }
    with ExitStack() as stack:
        clients = {k: stack.enter_context(_client(ctx, **kw)) for k, kw in settings.items()}
        # the candidates, priced by a planner that has not run a request yet (the splitdnn client's)
        selected = _select(ctx, _candidates(ctx, clients["splitdnn"]))
        for i, (label, kind, plan, note) in enumerate(selected):
            if note:
                continue
            try:
                c = stack.enter_context(_client(ctx, **_cut_client_kw(ctx, label, kind)))
            except (ConfigError, PlanError) as exc:  # a cut the client refuses: say so, run the rest
                selected[i] = (label, kind, plan, f"not run: {exc}")
                continue
            if kind == "dag":
                c.planner.plan = plan  # pinned: _PINNED never lets the planner replace it
            clients["cut:" + label] = c
        timings = measure_interleaved(clients, x, config.warmup, config.requests, config.budget_s)
        runs: dict[str, StrategyRun] = {}
        for k in settings:
            c, t = clients[k], timings[k]
            plan = c.planner.price(c.plan, ctx.link)  # the plan that ran last, under the nominal link
            runs[k] = StrategyRun(
                k, plan.cost.total_ms, t, plan.strategy, _cut_of(plan), _codecs_of(plan),
                note="" if t.measured else _over_budget(t.predicted_ms, config.budget_s),
                switches=c.planner.switches,
                estimate_mbps=c.link.uplink_mbps if t.measured and plan.strategy != "edge-only" else None,
            )  # fmt: skip
        cuts = tuple(
            CutRun(
                label,
                kind,
                plan.cost.total_ms,
                timings.get("cut:" + label),
                _cut_of(plan),
                _codecs_of(plan),
                note,
            )
            for label, kind, plan, note in selected
        )
        cuts += _rematch(clients, runs, cuts, ctx)
    runs["oracle"] = _best_measured(tuple(runs.values()), cuts)
    return CellResult(traced.name, slowdown, uplink_mbps, runs, cuts)


_KIND_OF_PLAN = {"edge-only": "edge", "cloud-only": "cloud", "split": "chain"}


def _rematch(
    clients: dict[str, SplitClient],
    runs: dict[str, StrategyRun],
    cuts: tuple[CutRun, ...],
    ctx: _CellContext,
) -> tuple[CutRun, ...]:
    """More requests for the two contenders when the best measured cut is not splitdnn's choice.

    The oracle is the minimum over many noisy medians, so its winner's median is biased low (it won
    partly by luck) and regret biased high. When the winner is another cut than splitdnn's, both are
    run ``2 x requests`` more times side by side; the new samples are pooled with the earlier ones
    (as ``rematch:`` entries of ``cuts``) and the oracle is chosen again. splitdnn's cut runs on the
    oracle's client pinned to that cut when it has one (the same plan, and it cannot switch away
    mid-rematch), else on the splitdnn client. Nothing when the two agree, splitdnn switched plans,
    or the splitdnn client switches during the rematch.
    """
    mine = runs["splitdnn"]
    best = _best_measured(tuple(runs.values()), cuts)
    mine_key, best_key = cut_key(mine.plan, mine.cut, mine.codecs), cut_key(best.plan, best.cut, best.codecs)
    if not (mine.timing.measured and best.timing.measured) or mine.switches or mine_key == best_key:
        return ()
    rival = next(
        (k for k in [*best.source.split(" + "), *(f"cut:{s}" for s in best.source.split(" + "))]
         if k in clients and k != "splitdnn"),
        None,
    )  # fmt: skip
    if rival is None:
        return ()
    same = [c.label for c in cuts if c.timing is not None and c.timing.measured
            and cut_key(_strategy_of(c.kind), c.cut, c.codecs) == mine_key]  # fmt: skip
    me = next((k for k in [*same, *(f"cut:{s}" for s in same)] if k in clients and k != rival), "splitdnn")
    switches = clients[me].planner.switches
    n = 2 * ctx.config.requests
    got = measure_interleaved({me: clients[me], rival: clients[rival]}, ctx.x, 0, n, ctx.config.budget_s)
    if clients[me].planner.switches != switches:
        return ()
    out = []
    for who, (plan, cut, codecs), predicted in (
        (me, mine_key, mine.predicted_ms),
        (rival, best_key, best.predicted_ms),
    ):
        t = got[who]
        if t.measured:
            out.append(CutRun(f"rematch:{who}", _KIND_OF_PLAN.get(plan, "chain"), predicted, t, cut, codecs))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# the grid


def run_bench(
    config: BenchConfig,
    *,
    progress: bool = False,
    out: TextIO | None = None,
    on_cell: Callable[[CellResult], None] | None = None,
) -> list[CellResult]:
    """Measure the grid of ``config`` (module docstring); print progress to ``out`` when asked.

    Returns one :class:`CellResult` per model, slowdown and uplink, in that order; ``on_cell`` gets
    each as soon as it is measured (the CLI saves them, so an interrupted run keeps what it measured).
    :func:`splitdnn.runtime.bench_report.bench_document` turns them into the JSON document.
    """
    stream = out if out is not None else sys.stdout

    def say(text: str) -> None:
        if progress:
            print(text, file=stream, flush=True)

    if config.link == "netns":
        from splitdnn.runtime.bench_netns import run_netns_grid

        return run_netns_grid(config, say, on_cell)
    cells: list[CellResult] = []
    for model in config.models:
        cells.extend(_run_model_in_process(config, model, say, on_cell))
    return cells


#: Profiling attempts per profile: a profile the calibration check flags as unreliable (the machine
#: was busy) is measured again, because every prediction and every plan of the run rests on it.
PROFILE_ATTEMPTS = 3


@dataclass(frozen=True)
class PreparedModel:
    """A model ready to bench: built, traced, its input, and both profiles measured in this run."""

    module: torch.nn.Module
    traced: graph.TracedModel
    x: torch.Tensor  # the request input, (B, C, H, W), seeded
    server: Profile
    devices: dict[float, Profile]  # per slowdown
    notes: tuple[str, ...] = ()  # what to know about the profiles (re-measured, still unreliable)


def _profile(
    traced: graph.TracedModel, what: str, say: Callable[[str], None], **kw: Any
) -> tuple[Profile, str]:
    """Profile ``traced``; re-measure (up to PROFILE_ATTEMPTS) while the profiler flags it unreliable."""
    from splitdnn.profiler import profile_model

    problem = ""
    for attempt in range(1, PROFILE_ATTEMPTS + 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            profile = profile_model(traced, warmup=1, codec_nodes="chain", progress=False, **kw)
        flagged = [str(w.message) for w in caught if "look unreliable" in str(w.message)]
        for w in caught:
            if "look unreliable" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if not flagged:
            return profile, "" if attempt == 1 else f"{what} profile re-measured: clean on attempt {attempt}"
        problem = flagged[0]
        say(f"  {what} profile, attempt {attempt}: {problem[:160]}")
    return profile, f"{what} profile unreliable after {PROFILE_ATTEMPTS} attempts (used anyway): {problem}"


def prepare_model(config: BenchConfig, model: str, say: Callable[[str], None]) -> PreparedModel:
    """Build, trace and profile ``model`` (the server once, the device once per slowdown).

    The device is profiled with ``device_threads`` threads and the slowdown, the server with
    ``server_threads``; both on this machine, in this run, so the predictions are of this run.
    """
    from splitdnn.models import build_zoo_model

    shape = config.shape_of(model)
    module = build_zoo_model(model).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    traced = graph.trace(module, torch.randn(shape, generator=torch.Generator().manual_seed(0)), name=model)
    say(f"{model} {list(shape)}: profiling as server and as device ({config.profile_repeats} repeats) ...")
    common = {"repeats": config.profile_repeats, "codecs": config.codecs}
    server, note = _profile(traced, f"{model} server", say, threads=config.server_threads, **common)
    notes = [note] if note else []
    devices = {}
    for s in config.slowdowns:
        clock = emulation_clock(config.device_threads, s)  # what the emulated device's padding follows
        devices[s], note = _profile(
            traced,
            f"{model} device x{s:g}",
            say,
            threads=config.device_threads,
            slowdown=s,
            timer=clock,
            **common,
        )
        notes += [note] if note else []
    return PreparedModel(module, traced, x, server, devices, tuple(notes))


def _rescaled(profile: Profile, factor: float, what: str) -> Profile:
    """``profile`` with every time multiplied by ``factor`` (its emulation factor kept)."""
    note = f"{what} profile rescaled x{factor:.3f} to a fresh whole-model run"
    text = f"{profile.notes}; {note}" if profile.notes else note
    return scale_profile(profile, 1.0 / factor, note=text, keep_emulation=True)


#: Seconds the refresh's timed runs are spread over (see refresh_profiles).
REFRESH_SPAN_S = 1.0


class DriftTracker:
    """How much slower (> 1) or faster than its profiles one model runs now, from recent refreshes.

    Each refresh adds its whole-model timings as factor samples (the run over the profile's fused
    total; the device's times the slowdown, so samples of every slowdown compare); the factors are
    the medians of the samples of the last ``pooled`` refreshes. Why pool: a burst of load on the
    host that covers one refresh's second (seen here: a ResNet-18 refresh at 1.22 with the runs just
    before and after it at 1.0, the process and the other core idle, so from outside this VM) set
    that cell's factors alone; pooled with the refreshes before it, it moves a minority of the
    samples. A lasting change takes over the median within ``pooled`` cells.
    """

    def __init__(self, pooled: int) -> None:
        if isinstance(pooled, bool) or not isinstance(pooled, int) or pooled < 1:
            raise ConfigError(f"DriftTracker pools >= 1 refreshes, found {pooled!r}")
        self._device: deque[list[float]] = deque(maxlen=pooled)
        self._server: deque[list[float]] = deque(maxlen=pooled)

    def add(self, device: Sequence[float], server: Sequence[float]) -> tuple[float, float]:
        """Record one refresh's factor samples; the pooled ``(device, server)`` factors."""
        if not device or not server:
            raise ConfigError("a refresh adds at least one sample of device and of server")
        self._device.append(list(device))
        self._server.append(list(server))
        return (
            statistics.median(v for run in self._device for v in run),
            statistics.median(v for run in self._server for v in run),
        )


def refresh_profiles(
    prepared: PreparedModel,
    config: BenchConfig,
    slowdown: float,
    *,
    span_s: float = REFRESH_SPAN_S,
    drift: DriftTracker | None = None,
) -> tuple[Profile, Profile, tuple[float, float]]:
    """The device (at ``slowdown``) and server profiles rescaled to how fast this machine is now.

    A shared machine's speed drifts (here: the same 1-thread MobileNetV2 run took 28 ms and then
    35 ms twenty minutes later), so profiles taken at the start of a long run go stale. Before each
    cell the whole model is run ``config.refresh_runs`` times as the device (its emulation clock,
    times the slowdown) and as the server (its threads, wall clock), alternately, the rounds spread
    over ``span_s`` seconds; each profile is scaled by its median's ratio to its fused total, pooled
    with the model's previous refreshes in ``drift`` when given (:class:`DriftTracker`). The
    factors are recorded per cell (``profile_scale``). Why spread: back to back, the runs took a
    fraction of a second, and a neighbour's burst of load that long set a cell's scale (AlexNet x8,
    5.85 Mbit/s: the device profile rescaled x1.18, then edge-only measured 23 % under its prediction,
    and the plan's cut was chosen on inflated head times); spread, such a burst moves a minority of
    the samples, and the median ignores it. Spread, each device run also follows a pause (about
    ``span_s / (runs - 1)`` less the runs), as an emulated request follows its padding. The bench's
    profiles are timed back to back (``prepare_model`` asks for no ``emulated_idle``), so this
    refresh absorbs part of that slowdown into the device's scale; a profile with an ``idle_factor``
    would include it already."""
    device, server = prepared.devices[slowdown], prepared.server
    runs = config.refresh_runs
    if runs == 0:
        return device, server, (1.0, 1.0)
    module, x = prepared.traced.module, prepared.x
    device_clock = emulation_clock(config.device_threads, slowdown)

    def once(threads: int | None, clock: Callable[[], float]) -> float:
        with device_compute(threads):
            t = clock()
            module(x)
            return (clock() - t) * 1e3

    once(config.device_threads, device_clock)  # warm-up
    once(config.server_threads, time.perf_counter)
    d_ms, s_ms = [], []
    pause = span_s / (runs - 1) if runs > 1 else 0.0
    for i in range(runs):
        started = time.perf_counter()
        d_ms.append(once(config.device_threads, device_clock))
        s_ms.append(once(config.server_threads, time.perf_counter))
        if i < runs - 1:
            time.sleep(max(0.0, pause - (time.perf_counter() - started)))
    d_factors = [slowdown * ms / device.total.median_ms for ms in d_ms]
    s_factors = [ms / server.total.median_ms for ms in s_ms]
    if drift is None:
        fd, fs = statistics.median(d_factors), statistics.median(s_factors)
    else:
        fd, fs = drift.add(d_factors, s_factors)
    return _rescaled(device, fd, "device"), _rescaled(server, fs, "server"), (fd, fs)


def _run_model_in_process(
    config: BenchConfig,
    model: str,
    say: Callable[[str], None],
    on_cell: Callable[[CellResult], None] | None = None,
) -> list[CellResult]:
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
    from splitdnn.runtime.shaper import ShapedLink

    prepared = prepare_model(config, model, say)
    x, server_prof = prepared.x, prepared.server
    spec = ModelSpec(model, module=prepared.module, input_shapes=(tuple(x.shape),))
    server_config = ServerConfig(
        models=(spec,), host="127.0.0.1", port=0, threads=config.server_threads,
        profiles={model: server_prof},
    )  # fmt: skip
    cells = []
    drift = DriftTracker(config.refresh_pool)
    with TailServer(server_config) as server:
        served = server.served_model(model)
        up0 = config.uplinks_mbps[0]
        with ShapedLink(
            server.address, uplink_mbps=up0, downlink_mbps=config.downlink_of(up0), rtt_ms=config.rtt_ms
        ) as link:
            for slowdown in config.slowdowns:
                for uplink in config.uplinks_mbps:
                    link.set_rates(
                        uplink_mbps=uplink, downlink_mbps=config.downlink_of(uplink), rtt_ms=config.rtt_ms
                    )
                    started = time.perf_counter()
                    device, server_now, scale = refresh_profiles(prepared, config, slowdown, drift=drift)
                    cell = measure_cell(link.address, served, device, server_now, uplink, slowdown, config, x)
                    cells.append(replace(cell, notes=prepared.notes, profile_scale=scale))
                    if on_cell is not None:
                        on_cell(cells[-1])
                    say(format_cell_line(cell, time.perf_counter() - started))
    return cells


def format_cell_line(cell: CellResult, seconds: float) -> str:
    """One progress line: a cell's splitdnn and oracle runs, regret (pooled cuts) and the baselines."""
    r = cell.runs
    mine, best = r["splitdnn"], r["oracle"].timing
    pooled = pool_cuts(tuple(r.values()), cell.cuts).get(cut_key(mine.plan, mine.cut, mine.codecs))
    if mine.switches:
        pooled = mine.timing.samples_ms
    regret = (  # over every run of splitdnn's cut in the cell, not only its own requests shown before it
        f"regret {Timing(0.0, pooled).median_ms / best.median_ms:.3f} (its cut's pooled runs)"
        if pooled and best.measured
        else "regret -"
    )
    return (
        f"  {cell.model} x{cell.slowdown:g} {cell.uplink_mbps:g} Mbit/s: splitdnn {mine.plan} "
        f"{mine.timing.text(with_prediction=True)} ms, oracle {r['oracle'].source or '-'} {best.text()}; "
        f"{regret}; edge {r['edge-only'].timing.text()}, cloud raw {r['cloud-raw'].timing.text()}, "
        f"cloud lossless {r['cloud-lossless'].timing.text()} ({seconds:.0f} s)"
    )
