"""Every fast solver equals the brute-force oracle on random small DAGs, wherever it claims exactness.

Random graphs have fan-out, fan-in, two model inputs, parameters (get_attr), nodes without inputs,
dead code and several values read by the output; tiers have independent random times (zeros and
extremes included) and links range from 1 kbit/s to 10 Tbit/s.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from solver_helpers import cost_scale, dag_cases, random_constraints, random_links, same, value

from splitdnn.errors import InfeasibleError
from splitdnn.schema import PowerModel
from splitdnn.solver import TensorHop, WireCost, brute_force, solve
from splitdnn.solver._api import _solve
from splitdnn.solver._cost import make_plan
from splitdnn.solver._problem import Graph, Problem
from splitdnn.solver.synthetic import SynthNode, random_profiles

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _power(rng) -> PowerModel:
    return PowerModel(rng.uniform(0, 5), rng.uniform(0, 5), rng.uniform(0, 5))


def _check_linear(profiles, links, rng, methods) -> None:
    power = _power(rng)
    for objective in ("latency", "energy"):
        oracle = brute_force(profiles, links, objective=objective, power=power)
        scale = cost_scale(profiles, links, objective, power)
        for method in methods:
            plan = solve(profiles, links, objective=objective, power=power, method=method)
            assert plan.exact, (objective, method)
            assert same(value(plan), value(oracle), scale), (objective, method, value(plan), value(oracle))
            assert set(plan.tiers) == {n.name for n in profiles[0].compute_nodes}


@FAST
@given(dag_cases(tiers=2, max_compute=11))
def test_two_tier_min_cut_matches_oracle(case) -> None:
    profiles, links, rng = case
    _check_linear(profiles, links, rng, ("auto", "reduced", "mincut"))


@FAST
@given(dag_cases(tiers=3, max_compute=8))
def test_three_tier_layered_cut_matches_oracle(case) -> None:
    profiles, links, rng = case
    _check_linear(profiles, links, rng, ("auto", "reduced", "mincut"))


@settings(max_examples=80, deadline=None)
@given(dag_cases(tiers=2, max_compute=10, odd=True))
def test_odd_graphs_match_oracle_two_tiers(case) -> None:
    """Nodes without inputs, dead code and several inputs: weak separators, non-monotone DP states."""
    profiles, links, rng = case
    _check_linear(profiles, links, rng, ("auto", "reduced", "mincut"))


@settings(max_examples=50, deadline=None)
@given(dag_cases(tiers=3, max_compute=7, odd=True))
def test_odd_graphs_match_oracle_three_tiers(case) -> None:
    profiles, links, rng = case
    _check_linear(profiles, links, rng, ("reduced", "mincut"))
    _check_constrained(profiles, links, rng, methods=("auto",))


@settings(max_examples=50, deadline=None)
@given(dag_cases(tiers=2, max_compute=10))
def test_networkx_flow_gives_the_same_optimum(case) -> None:
    """The hand-written max flow and networkx's agree inside the full solver (reduced and not)."""
    profiles, links, _ = case
    problem = Problem(Graph(profiles[0]), profiles, links)
    oracle = brute_force(profiles, links)
    scale = cost_scale(profiles, links, "latency")
    for method in ("reduced", "mincut"):
        tier, exact = _solve(problem, "latency", None, None, method, flow="networkx")
        assert exact and same(value(make_plan(problem, tier, "latency", None, exact)), value(oracle), scale)


@FAST
@given(dag_cases(tiers=2, max_compute=10))
def test_two_tier_throughput_matches_oracle(case) -> None:
    profiles, links, _ = case
    oracle = brute_force(profiles, links, objective="throughput")
    plan = solve(profiles, links, objective="throughput")
    assert plan.exact  # small graphs: the search always completes
    assert same(value(plan), value(oracle), cost_scale(profiles, links, "throughput"))


@settings(max_examples=60, deadline=None)
@given(dag_cases(tiers=3, max_compute=7))
def test_three_tier_throughput_matches_oracle(case) -> None:
    profiles, links, _ = case
    oracle = brute_force(profiles, links, objective="throughput")
    plan = solve(profiles, links, objective="throughput")
    assert plan.exact and same(value(plan), value(oracle), cost_scale(profiles, links, "throughput"))


def _check_constrained(profiles, links, rng, methods=("auto", "reduced", "mincut", "search")) -> None:
    constraints = random_constraints(rng, profiles[0])
    power = _power(rng)
    for objective in ("latency", "energy", "throughput"):
        try:
            oracle = brute_force(profiles, links, objective=objective, power=power, constraints=constraints)
        except InfeasibleError:
            for method in methods:
                with pytest.raises(InfeasibleError):
                    solve(
                        profiles,
                        links,
                        objective=objective,
                        power=power,
                        constraints=constraints,
                        method=method,
                    )
            continue
        scale = cost_scale(profiles, links, objective, power)
        for method in methods:
            plan = solve(
                profiles, links, objective=objective, power=power, constraints=constraints, method=method
            )
            assert plan.exact
            assert same(value(plan), value(oracle), scale), (objective, method, constraints)


@FAST
@given(dag_cases(tiers=2, max_compute=10))
def test_two_tier_constrained_solves_match_oracle(case) -> None:
    profiles, links, rng = case
    _check_constrained(profiles, links, rng)


@settings(max_examples=60, deadline=None)
@given(dag_cases(tiers=3, max_compute=7))
def test_three_tier_constrained_solves_match_oracle(case) -> None:
    profiles, links, rng = case
    _check_constrained(profiles, links, rng, methods=("auto", "search"))


@FAST
@given(dag_cases(tiers=2, max_compute=12, chain=True))
def test_chain_enumeration_matches_oracle(case) -> None:
    profiles, links, rng = case
    _check_constrained(profiles, links, rng, methods=("chain", "reduced"))
    _check_linear(profiles, links, rng, ("chain",))


@settings(max_examples=60, deadline=None)
@given(dag_cases(tiers=3, max_compute=9, chain=True))
def test_three_tier_chain_enumeration_matches_oracle(case) -> None:
    profiles, links, rng = case
    _check_constrained(profiles, links, rng, methods=("chain", "auto"))


# heavier profiles, run with -m slow --------------------------------------------------------------


@pytest.mark.slow
@SLOW
@given(dag_cases(tiers=2, max_compute=14))
def test_slow_two_tier_everything_matches_oracle(case) -> None:
    profiles, links, rng = case
    _check_linear(profiles, links, rng, ("auto", "reduced", "mincut"))
    _check_constrained(profiles, links, rng)


@pytest.mark.slow
@SLOW
@given(dag_cases(tiers=3, max_compute=9))
def test_slow_three_tier_everything_matches_oracle(case) -> None:
    profiles, links, rng = case
    _check_linear(profiles, links, rng, ("auto", "reduced", "mincut"))
    _check_constrained(profiles, links, rng, methods=("auto", "search"))


def _codec(hop: TensorHop) -> WireCost:
    """A made-up codec whose ratio and times depend on the tensor and the hop (deterministic)."""
    ratio = 1 + (len(hop.node) + hop.link_index) % 4
    return WireCost(
        hop.nbytes // ratio, encode_ms=0.001 * ratio * (hop.nbytes % 7), decode_ms=0.5 * (ratio - 1)
    )


@settings(max_examples=60, deadline=None)
@given(dag_cases(tiers=2, max_compute=9))
def test_every_solver_prices_tensors_through_the_codec_seam(case) -> None:
    profiles, links, rng = case
    power = _power(rng)
    for objective in ("latency", "energy", "throughput"):
        oracle = brute_force(profiles, links, objective=objective, power=power, tensor_cost=_codec)
        scale = cost_scale(profiles, links, objective, power)
        for method in ("auto", "mincut", "search"):
            plan = solve(profiles, links, objective=objective, power=power, method=method, tensor_cost=_codec)
            assert plan.exact and same(value(plan), value(oracle), scale), (objective, method)
            assert all(b.codec == "raw" or b.wire_bytes <= b.nbytes for b in plan.boundary)


@settings(max_examples=40, deadline=None)
@given(st.one_of(dag_cases(tiers=3, max_compute=7), dag_cases(tiers=3, max_compute=9, chain=True)))
def test_three_tier_codec_seam(case) -> None:
    profiles, links, rng = case
    for objective in ("latency", "throughput"):
        oracle = brute_force(profiles, links, objective=objective, tensor_cost=_codec)
        plan = solve(profiles, links, objective=objective, tensor_cost=_codec)
        assert plan.exact and same(value(plan), value(oracle), cost_scale(profiles, links, objective))


@st.composite
def residual_cases(draw: st.DrawFn):
    """Residual-style blocks with long single-input single-output runs (collapsed into gadgets)."""
    rng = draw(st.randoms(use_true_random=False))
    nodes = [SynthNode("x", "placeholder", (), 0.0, rng.randint(0, 10**6))]
    prev = "x"
    for b in range(draw(st.integers(1, 2))):
        stem = f"s{b}"
        nodes.append(SynthNode(stem, "call_module", (prev,), 0.0, rng.randint(0, 10**6)))
        branch = stem
        for i in range(draw(st.integers(1, 5))):
            nodes.append(SynthNode(f"b{b}_{i}", "call_module", (branch,), 0.0, rng.randint(0, 10**6)))
            branch = f"b{b}_{i}"
        short = stem
        if draw(st.booleans()):
            nodes.append(SynthNode(f"d{b}", "call_module", (stem,), 0.0, rng.randint(0, 10**6)))
            short = f"d{b}"
        nodes.append(SynthNode(f"add{b}", "call_function", (branch, short), 0.0, rng.randint(0, 10**6)))
        prev = f"add{b}"
    nodes.append(SynthNode("output", "output", (prev,), 0.0, rng.randint(0, 10**5)))
    return random_profiles(nodes, rng, 2), random_links(rng, 2), rng


@settings(max_examples=80, deadline=None)
@given(residual_cases())
def test_collapsed_runs_match_oracle(case) -> None:
    profiles, links, rng = case
    _check_linear(profiles, links, rng, ("auto", "reduced"))
