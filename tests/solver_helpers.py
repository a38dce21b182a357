"""Shared helpers for the solver tests: hand-built and random synthetic profiles, hypothesis strategies."""

from __future__ import annotations

import math
import random

from hypothesis import strategies as st

from splitdnn.schema import Link, Plan, PowerModel, Profile
from splitdnn.solver import Constraints
from splitdnn.solver._problem import Graph, Problem
from splitdnn.solver.synthetic import SynthNode, make_profiles, random_dag, random_profiles

#: bandwidths from hopeless to absurd (Mbit/s), including the DADS paper's standard settings
EXTREME_MBPS = (1e-3, 0.13, 1.1, 5.85, 18.88, 100.0, 1e4, 1e7)


def value(plan: Plan) -> float:
    """The number the plan's objective minimises."""
    c = plan.cost
    if plan.objective == "latency":
        return c.total_ms
    if plan.objective == "energy":
        return c.device_energy_j
    return 1000.0 / c.throughput_rps


def same(a: float, b: float, scale: float = 0.0) -> bool:
    """Equal up to float noise; ``scale`` is the problem's cost magnitude (see :func:`cost_scale`)."""
    return math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-9 + 1e-11 * scale)


def cost_scale(
    profiles: list[Profile], links: list[Link], objective: str, power: PowerModel | None = None
) -> float:
    """Sum of every cost term of the problem: float noise in a cut is relative to this, not to the
    optimum (a 1 kbit/s link makes some transfers ~1e9 ms while the best plan may cost ~0)."""
    problem = Problem(Graph(profiles[0]), profiles, links)
    w = problem.weights("latency" if objective == "throughput" else objective, power)
    return sum(map(sum, w.a)) + sum(map(sum, w.b)) + sum(w.r) + sum(w.s)


def profiles_from(
    edges: list[tuple[str, str, tuple[str, ...]]],
    ms: dict[str, tuple[float, ...]],
    nbytes: dict[str, int],
    params: dict[str, int] | None = None,
) -> list[Profile]:
    """Profiles from ``(name, op, inputs)`` triples, per-tier times ``ms[name]`` and ``nbytes[name]``."""
    params = params or {}
    tiers = len(next(iter(ms.values())))
    nodes = [
        SynthNode(name, op, inputs, 0.0, nbytes.get(name, 0), params.get(name, 0))
        for name, op, inputs in edges
    ]
    tier_ms = [[ms.get(n.name, (0.0,) * tiers)[t] for n in nodes] for t in range(tiers)]
    return make_profiles(nodes, tier_ms=tier_ms)


def chain_profiles(rng: random.Random, n: int, tiers: int) -> list[Profile]:
    nodes = [SynthNode("x", "placeholder", (), 0.0, rng.randint(0, 10**6))]
    prev = "x"
    for i in range(n):
        name = f"c{i}"
        nodes.append(
            SynthNode(
                name, "call_module", (prev,), rng.uniform(0, 20), rng.randint(0, 10**6), rng.randint(0, 10**5)
            )
        )
        prev = name
    nodes.append(SynthNode("output", "output", (prev,), 0.0, rng.randint(0, 10**5)))
    return random_profiles(nodes, rng, tiers)


def random_links(rng: random.Random, tiers: int) -> list[Link]:
    out = []
    for _ in range(tiers - 1):
        up = rng.choice(EXTREME_MBPS) if rng.random() < 0.6 else 10 ** rng.uniform(-2, 4)
        down = rng.choice((0.0, up, 10 ** rng.uniform(-2, 4)))
        out.append(Link(up, down, rng.choice((0.0, 0.0, rng.uniform(0, 200)))))
    return out


def random_constraints(rng: random.Random, profile: Profile) -> Constraints:
    n = len(profile.compute_nodes)
    total = sum(p.param_bytes for p in profile.compute_nodes) + max(
        (p.output_bytes for p in profile.nodes), default=0
    )
    cap = None if rng.random() < 0.3 else rng.randint(0, max(total, 1))
    return Constraints(
        device_memory_bytes=cap,
        keep_input_on_device=rng.random() < 0.3,
        device_min_nodes=rng.randint(0, min(n, 2)) if rng.random() < 0.4 else 0,
    )


@st.composite
def dag_cases(draw: st.DrawFn, tiers: int = 2, max_compute: int = 11, chain: bool = False, odd: bool = False):
    """``(profiles, links, rng)`` for a random small DAG (or chain) with random per-tier times.

    ``odd`` makes nodes without inputs and dead code common (they break the usual separator shapes).
    """
    rng = draw(st.randoms(use_true_random=False))
    n = draw(st.integers(1, max_compute))
    if chain:
        profiles = chain_profiles(rng, n, tiers)
    elif odd:
        nodes = random_dag(
            rng,
            n,
            n_inputs=draw(st.sampled_from((1, 2, 3))),
            p_sourceless=0.3,
            p_dead=0.2,
            max_output_inputs=4,
        )
        profiles = random_profiles(nodes, rng, tiers)
    else:
        nodes = random_dag(rng, n, n_inputs=draw(st.sampled_from((1, 1, 2))))
        profiles = random_profiles(nodes, rng, tiers)
    return profiles, random_links(rng, tiers), rng
