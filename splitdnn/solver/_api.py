"""The solver's public functions: solve, the trivial baselines, evaluate, the oracle and sweeps."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from splitdnn.errors import ConfigError, InfeasibleError, PlanError
from splitdnn.schema import Link, Plan, PowerModel, Profile

from ._chain import solve_chain
from ._cost import device_memory, evaluate_assignment, make_plan, objective_value, violations
from ._cut import propagate, solve_cases
from ._maxflow import min_cut, min_cut_networkx
from ._oracle import monotone_assignments
from ._problem import COMPUTE, OUTPUT, PLACEHOLDER, Constraints, Graph, Problem, TensorCostFn, check_inputs
from ._search import branch_and_bound, memory_candidates, throughput_candidates

__all__ = [
    "METHODS",
    "SweepPoint",
    "brute_force",
    "cloud_only",
    "edge_only",
    "evaluate",
    "ranked",
    "solve",
    "sweep",
]

#: ``solve(method=...)``: "auto" picks the fastest exact method; the others force one (for tests,
#: benchmarks and comparisons): "chain" cut enumeration (chain models only), "reduced" min cut after
#: separator reduction, "mincut" one min cut over the whole unreduced graph, "search" branch and bound.
METHODS = ("auto", "chain", "reduced", "mincut", "search")

#: node visits the branch-and-bound search may spend before it settles for its best plan so far
SEARCH_BUDGET = 400_000


def solve(
    profiles: Sequence[Profile],
    links: Sequence[Link],
    *,
    objective: str = "latency",
    power: PowerModel | None = None,
    constraints: Constraints | None = None,
    method: str = "auto",
    tensor_cost: TensorCostFn | None = None,
) -> Plan:
    """The best plan for ``objective`` over the tiers the profiles describe (device first).

    Two profiles and one link give a device/server split; three and two links a device -> edge
    server -> cloud plan. ``power`` (for energy; default :class:`PowerModel()`) prices the device's
    energy in every plan. The returned plan's ``exact`` says whether it is proven optimal.
    """
    check_inputs(profiles, links, objective, constraints, power)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    problem = Problem(Graph.of(profiles[0]), profiles, links, tensor_cost)
    tier, exact = _solve(problem, objective, power, constraints, method)
    return make_plan(problem, tier, objective, power, exact)


def edge_only(
    profiles: Sequence[Profile],
    links: Sequence[Link] = (),
    *,
    objective: str = "latency",
    power: PowerModel | None = None,
    constraints: Constraints | None = None,
    tensor_cost: TensorCostFn | None = None,
) -> Plan:
    """Everything on the device (tier 0). Raises InfeasibleError if ``constraints`` forbid it."""
    problem = _checked_problem(profiles, links, objective, constraints, power, tensor_cost)
    tier = [0] * problem.graph.n
    _refuse_violations(problem, tier, constraints, "edge-only")
    return make_plan(problem, tier, objective, power, exact=False)


def cloud_only(
    profiles: Sequence[Profile],
    links: Sequence[Link],
    *,
    objective: str = "latency",
    power: PowerModel | None = None,
    constraints: Constraints | None = None,
    tensor_cost: TensorCostFn | None = None,
) -> Plan:
    """Every compute node on the last tier; the raw input is sent up every link."""
    problem = _checked_problem(profiles, links, objective, constraints, power, tensor_cost)
    g = problem.graph
    tier = [problem.K - 1 if g.kind[v] == COMPUTE else 0 for v in range(g.n)]
    _refuse_violations(problem, tier, constraints, "cloud-only")
    return make_plan(problem, tier, objective, power, exact=False)


def evaluate(
    profiles: Sequence[Profile],
    links: Sequence[Link],
    tiers: Mapping[str, int],
    *,
    objective: str = "latency",
    power: PowerModel | None = None,
    constraints: Constraints | None = None,
    tensor_cost: TensorCostFn | None = None,
) -> Plan:
    """Price a given assignment (compute node name -> tier) with the cost model.

    Raises PlanError when the assignment is not a valid plan: a missing or unknown node, a tier out of
    range, a node on an earlier tier than one of its inputs, or (with ``constraints``) a violation.
    """
    problem = _checked_problem(profiles, links, objective, constraints, power, tensor_cost)
    tier = _checked_assignment(problem, tiers)
    found = violations(problem, tier, constraints)
    if found:
        raise PlanError("the plan violates its constraints: " + "; ".join(found))
    return make_plan(problem, tier, objective, power, exact=False)


def ranked(
    profiles: Sequence[Profile],
    links: Sequence[Link],
    candidates: Sequence[Mapping[str, int]],
    *,
    objective: str = "latency",
    power: PowerModel | None = None,
    constraints: Constraints | None = None,
    tensor_cost: TensorCostFn | None = None,
) -> Iterator[Plan]:
    """The plans among ``candidates`` (assignments as for :func:`evaluate`), best first.

    Candidates that are not valid plans or break ``constraints`` are skipped. The problem is built
    once and every candidate priced once; a :class:`~splitdnn.schema.Plan` is made only for those
    taken from the iterator, so a caller looking for the best one with a property the solver does
    not know pays for the few it looks at.
    """
    problem = _checked_problem(profiles, links, objective, constraints, power, tensor_cost)
    scored = []
    for i, tiers in enumerate(candidates):
        try:
            tier = _checked_assignment(problem, tiers)
        except PlanError:
            continue
        if violations(problem, tier, constraints):
            continue
        cost, _ = evaluate_assignment(problem, tier, power)
        scored.append((objective_value(cost, objective), i, tier))
    scored.sort(key=lambda item: (item[0], item[1]))
    for _, _, tier in scored:
        yield make_plan(problem, tier, objective, power, exact=False)


def brute_force(
    profiles: Sequence[Profile],
    links: Sequence[Link],
    *,
    objective: str = "latency",
    power: PowerModel | None = None,
    constraints: Constraints | None = None,
    tensor_cost: TensorCostFn | None = None,
    max_assignments: int = 200_000,
) -> Plan:
    """The test oracle: price every monotone assignment and return the best (exact by construction).

    Refuses (ConfigError) graphs with more than ``max_assignments`` assignments.
    """
    problem = _checked_problem(profiles, links, objective, constraints, power, tensor_cost)
    best = math.inf
    best_tier: list[int] | None = None
    for tier in monotone_assignments(problem, max_assignments):
        if violations(problem, tier, constraints):
            continue
        cost, _ = evaluate_assignment(problem, tier, power)
        value = objective_value(cost, objective)
        if value < best or best_tier is None:
            best = value
            best_tier = tier[:]
    if best_tier is None:
        raise InfeasibleError(f"no assignment satisfies the constraints ({_describe(constraints)})")
    return make_plan(problem, best_tier, objective, power, exact=True)


@dataclass(frozen=True)
class SweepPoint:
    """The optimal plan and the two trivial baselines at one uplink bandwidth."""

    uplink_mbps: float
    link: Link  # link 0 (device uplink) as used at this point
    objective: str
    plan: Plan  # optimal under the constraints
    edge_only: Plan  # baselines, priced without constraints
    cloud_only: Plan

    @property
    def best_baseline(self) -> Plan:
        """Whichever of edge-only and cloud-only is better for the objective."""
        a, b = self.edge_only, self.cloud_only
        va, vb = objective_value(a.cost, self.objective), objective_value(b.cost, self.objective)
        return a if va <= vb else b

    @property
    def gain(self) -> float:
        """How many times better the plan is than the best baseline (>= 1 when no constraint binds)."""
        base = objective_value(self.best_baseline.cost, self.objective)
        mine = objective_value(self.plan.cost, self.objective)
        return base / mine if mine > 0 else math.inf


def sweep(
    profiles: Sequence[Profile],
    uplink_mbps_values: Sequence[float],
    *,
    rtt_ms: float = 0.0,
    downlink_mbps: float = 0.0,
    upper_links: Sequence[Link] = (),
    objective: str = "latency",
    power: PowerModel | None = None,
    constraints: Constraints | None = None,
    method: str = "auto",
    tensor_cost: TensorCostFn | None = None,
) -> list[SweepPoint]:
    """Solve at each device uplink bandwidth (Mbit/s), next to edge-only and cloud-only.

    Link 0 is ``Link(uplink, downlink_mbps, rtt_ms)``; with three or more tiers the links above it are
    ``upper_links`` (fixed). Points come back in the order of ``uplink_mbps_values``.
    """
    values = list(uplink_mbps_values)
    if not values:
        raise ConfigError("uplink_mbps_values is empty; give at least one bandwidth in Mbit/s")
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (x > 0 and math.isfinite(x)):
            raise ConfigError(f"every uplink bandwidth must be a positive number of Mbit/s, found {x!r}")
    first_links = [Link(float(values[0]), downlink_mbps, rtt_ms), *upper_links]
    check_inputs(profiles, first_links, objective, constraints, power)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    graph = Graph.of(profiles[0])
    points = []
    for x in values:
        link = Link(float(x), downlink_mbps, rtt_ms)
        problem = Problem(graph, profiles, [link, *upper_links], tensor_cost)
        tier, exact = _solve(problem, objective, power, constraints, method)
        g = graph
        edge = [0] * g.n
        cloud = [problem.K - 1 if g.kind[v] == COMPUTE else 0 for v in range(g.n)]
        points.append(
            SweepPoint(
                uplink_mbps=float(x),
                link=link,
                objective=objective,
                plan=make_plan(problem, tier, objective, power, exact),
                edge_only=make_plan(problem, edge, objective, power, exact=False),
                cloud_only=make_plan(problem, cloud, objective, power, exact=False),
            )
        )
    return points


# --------------------------------------------------------------------------------------------------
# internals


def _checked_problem(
    profiles: Sequence[Profile],
    links: Sequence[Link],
    objective: str,
    constraints: Constraints | None,
    power: PowerModel | None,
    tensor_cost: TensorCostFn | None,
) -> Problem:
    """Validate the public arguments, then build the problem every entry point prices."""
    check_inputs(profiles, links, objective, constraints, power)
    return Problem(Graph.of(profiles[0]), profiles, links, tensor_cost)


def _solve(
    problem: Problem,
    objective: str,
    power: PowerModel | None,
    constraints: Constraints | None,
    method: str,
    *,
    flow: str = "dinic",
) -> tuple[list[int], bool]:
    """The dispatcher: returns ``(tier per vertex, proven optimal)``."""
    g, K = problem.graph, problem.K
    flow_fn = min_cut_networkx if flow == "networkx" else min_cut
    lo, hi = _base_bounds(problem, constraints)
    cap = constraints.device_memory_bytes if constraints is not None else None
    _check_memory_feasible(problem, hi, cap, constraints)
    if K == 1:
        return [0] * g.n, True
    if method == "chain" and not g.is_chain:
        raise ConfigError(
            f"method='chain' needs a chain model (each node reads only the previous one); "
            f"{problem.profiles[0].model!r} is a DAG: use method='auto'"
        )
    linear = objective in ("latency", "energy")
    w = problem.weights(objective, power) if linear else None

    if method == "chain" or (method == "auto" and g.is_chain):
        min_head = 0
        if constraints is not None:
            min_head = constraints.device_min_nodes
            if constraints.keep_input_on_device and g.compute:
                min_head = max(min_head, 1)
        tier = solve_chain(problem, objective, w, constraints, min_head)
        if tier is None:  # pragma: no cover - memory feasibility was checked above
            raise InfeasibleError(f"no chain cut satisfies the constraints ({_describe(constraints)})")
        return tier, True

    reduce = method != "mincut"
    candidates: list[list[int]] = []
    if linear:
        assert w is not None
        cases = solve_cases(problem, w, lo, hi, reduce=reduce, flow=flow_fn)
        # the case with the least relaxed value holds a true optimum (see _cut's docstring)
        best = min(cases, key=lambda case: case[1])[0] if cases else None
        if method != "search" and best is not None and (cap is None or device_memory(problem, best) <= cap):
            return best, True
        candidates = [t for t, _ in cases]
        if cap is not None:
            candidates += memory_candidates(problem, w, lo, hi, cap)
    else:
        # stage-balancing plans, and the latency optimum (often a good pipeline too)
        candidates = throughput_candidates(problem, lo, hi)
        lat = problem.weights("latency")
        candidates += [t for t, _ in solve_cases(problem, lat, lo, hi, reduce=reduce, flow=flow_fn)]
        if cap is not None:
            candidates += memory_candidates(problem, problem.weights("latency"), lo, hi, cap)
    candidates.append([0] * g.n)
    incumbent = _best(problem, candidates, objective, power, cap)
    tier, complete = branch_and_bound(problem, objective, w, power, lo, hi, cap, incumbent, SEARCH_BUDGET)
    if tier is None:  # pragma: no cover - a feasible incumbent always exists
        raise InfeasibleError(f"no plan satisfies the constraints ({_describe(constraints)})")
    return tier, complete


def _best(
    problem: Problem, tiers: list[list[int]], objective: str, power: PowerModel | None, cap: int | None
) -> list[int] | None:
    best = math.inf
    pick = None
    for tier in tiers:
        if cap is not None and device_memory(problem, tier) > cap:
            continue
        cost, _ = evaluate_assignment(problem, tier, power)
        value = objective_value(cost, objective)
        if value < best or pick is None:
            best, pick = value, tier
    return pick


def _base_bounds(problem: Problem, constraints: Constraints | None) -> tuple[list[int], list[int]]:
    """Tier bounds per vertex: inputs on the device, privacy pins, then propagated along the graph."""
    g, K = problem.graph, problem.K
    lo = [0] * g.n
    hi = [0 if g.kind[v] == PLACEHOLDER else K - 1 for v in range(g.n)]
    if constraints is not None:
        k = constraints.device_min_nodes
        if k > len(g.compute):
            raise ConfigError(
                f"device_min_nodes={k} but {problem.profiles[0].model!r} has only {len(g.compute)} "
                f"compute nodes; use at most {len(g.compute)} (all of them means edge-only)"
            )
        for v in g.compute[:k]:
            hi[v] = 0
        if constraints.keep_input_on_device:
            for p in g.placeholders:
                for w in g.succs[p]:
                    hi[w] = 0
    ok = propagate(g, lo, hi)
    assert ok  # only upper bounds of 0 were added: all-on-device always satisfies them
    return lo, hi


def _check_memory_feasible(
    problem: Problem, hi: list[int], cap: int | None, constraints: Constraints | None
) -> None:
    if cap is None:
        return
    g = problem.graph
    must = [0 if hi[v] == 0 else 1 for v in range(g.n)]
    need = device_memory(problem, must)
    if need > cap:
        pinned = sum(1 for v in g.compute if hi[v] == 0)
        raise InfeasibleError(
            f"device_memory_bytes={cap} cannot be met: the {pinned} compute node(s) that must stay on "
            f"the device ({_describe(constraints)}) need {need} bytes, {need - cap} over the cap; "
            f"raise the cap or relax keep_input_on_device / device_min_nodes"
        )


def _refuse_violations(problem: Problem, tier: list[int], constraints: Constraints | None, what: str) -> None:
    found = violations(problem, tier, constraints)
    if found:
        raise InfeasibleError(f"{what} is not allowed by the constraints: " + "; ".join(found))


def _checked_assignment(problem: Problem, tiers: Mapping[str, int]) -> list[int]:
    g, K = problem.graph, problem.K
    if not isinstance(tiers, Mapping):
        raise PlanError(f"tiers must map compute node names to tiers, found {type(tiers).__name__}")
    tier = [0] * g.n
    for name, t in tiers.items():
        v = g.index.get(name)
        if v is None:
            raise PlanError(
                f"tiers names {name!r}, which is not a placeable node of {problem.profiles[0].model!r}"
            )
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < K:
            raise PlanError(f"node {name!r} has tier {t!r}; expected an integer in 0..{K - 1}")
        if g.kind[v] == PLACEHOLDER:
            if t != 0:
                raise PlanError(f"{name!r} is a model input: it is always on tier 0, found tier {t}")
            continue
        if g.kind[v] == OUTPUT:
            raise PlanError(f"{name!r} is the output node: its tier follows its inputs, do not assign it")
        tier[v] = t
    missing = [g.names[v] for v in g.compute if g.names[v] not in tiers]
    if missing:
        raise PlanError(f"tiers must assign every compute node; {len(missing)} missing, e.g. {missing[:5]}")
    for v in g.compute:
        for u in g.preds[v]:
            if tier[u] > tier[v]:
                raise PlanError(
                    f"node {g.names[v]!r} on tier {tier[v]} reads {g.names[u]!r} on tier {tier[u]}: a node "
                    f"never runs on an earlier tier than a node it consumes"
                )
    return tier


def _describe(constraints: Constraints | None) -> str:
    if constraints is None:
        return "none"
    parts = []
    if constraints.device_memory_bytes is not None:
        parts.append(f"device_memory_bytes={constraints.device_memory_bytes}")
    if constraints.keep_input_on_device:
        parts.append("keep_input_on_device")
    if constraints.device_min_nodes:
        parts.append(f"device_min_nodes={constraints.device_min_nodes}")
    return ", ".join(parts or ["none"])
