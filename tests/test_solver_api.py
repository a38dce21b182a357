"""The solver's public API: layering, refusals, baselines at extreme links, constraints, sweeps."""

from __future__ import annotations

import dataclasses
import gc
import random
import subprocess
import sys

import pytest
from solver_helpers import chain_profiles, profiles_from, same, value

import splitdnn.solver as solver
from splitdnn.errors import ConfigError, InfeasibleError, ProfileMismatchError
from splitdnn.schema import Link, PowerModel
from splitdnn.solver import (
    Constraints,
    brute_force,
    chain_cuts,
    cloud_only,
    edge_only,
    evaluate,
    solve,
    sweep,
)
from splitdnn.solver.synthetic import SynthNode, make_profiles, network_dag, resnet50_like

RESNET = make_profiles(resnet50_like(), (1.0, 10.0))
RESNET3 = make_profiles(resnet50_like(), (1.0, 10.0, 40.0))


def test_import_loads_no_torch_numpy_or_grpc() -> None:
    code = (
        "import sys, splitdnn.solver, splitdnn.solver.synthetic\n"
        "from splitdnn.solver import _api, _chain, _cost, _cut, _maxflow, _oracle, _problem, _search\n"
        "bad = [m for m in ('torch', 'numpy', 'grpc', 'networkx') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import splitdnn.solver loaded {out.stdout.strip()}"


def test_public_api_is_curated() -> None:
    # isort-style, as in splitdnn.schema: constants, then classes, then functions
    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert solver.__all__ == sorted(solver.__all__, key=kind)
    for name in solver.__all__:
        assert hasattr(solver, name), name
    public = {n for n, v in vars(solver).items() if not n.startswith("_") and not isinstance(v, type(sys))}
    assert public <= set(solver.__all__), public - set(solver.__all__)


# refusals ----------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_with_clear_errors() -> None:
    link = Link(10.0)
    with pytest.raises(ConfigError, match="need 1 link"):
        solve(RESNET, [link, link])
    with pytest.raises(ConfigError, match="need 2 link"):
        solve(RESNET3, [link])
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        solve(RESNET, [link], objective="speed")
    with pytest.raises(ConfigError, match="unknown method"):
        solve(RESNET, [link], method="magic")
    with pytest.raises(ConfigError, match="chain model"):
        solve(RESNET, [link], method="chain")
    with pytest.raises(ConfigError, match="sequence of Profile"):
        solve(RESNET[0], [link])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="positive"):
        Link(0.0)
    with pytest.raises(ConfigError, match="positive"):
        sweep(RESNET, [10.0, -1.0])
    with pytest.raises(ConfigError, match="empty"):
        sweep(RESNET, [])
    with pytest.raises(ConfigError, match="device_min_nodes=500"):
        solve(RESNET, [link], constraints=Constraints(device_min_nodes=500))
    with pytest.raises(ConfigError, match="device_memory_bytes"):
        Constraints(device_memory_bytes=-1)


def test_profiles_of_different_models_are_refused() -> None:
    other = make_profiles(network_dag(60), (1.0, 10.0))
    with pytest.raises(ProfileMismatchError, match="different models"):
        solve([RESNET[0], other[1]], [Link(10.0)])
    # same fingerprint but a different graph is refused too
    edges_a = [("x", "placeholder", ()), ("a", "call_module", ("x",)), ("output", "output", ("a",))]
    pa = profiles_from(edges_a, {"a": (1.0, 1.0)}, {"x": 4, "a": 4, "output": 4})
    tampered = dataclasses.replace(
        pa[1],
        nodes=pa[1].nodes[:1]
        + (dataclasses.replace(pa[1].nodes[1], name="b"),)
        + (dataclasses.replace(pa[1].nodes[2], inputs=("b",)),),
    )
    with pytest.raises(ProfileMismatchError, match="different graphs"):
        solve([pa[0], tampered], [Link(10.0)])


def test_brute_force_refuses_large_graphs() -> None:
    with pytest.raises(ConfigError, match="max_assignments"):
        brute_force(RESNET, [Link(10.0)], max_assignments=100)
    big = make_profiles(network_dag(300), (1.0, 10.0))
    with pytest.raises(ConfigError, match="more than 200 compute nodes"):
        brute_force(big, [Link(10.0)])


# strategies at extreme links ---------------------------------------------------------------------


@pytest.mark.parametrize("profiles", [RESNET, RESNET3], ids=["2-tier", "3-tier"])
def test_extreme_bandwidths_pick_the_trivial_plans(profiles) -> None:
    k = len(profiles)
    slow = solve(profiles, [Link(1e-3, rtt_ms=50.0)] * (k - 1))
    assert slow.strategy == "edge-only" and slow.exact
    assert slow.cost.total_ms == pytest.approx(edge_only(profiles, [Link(1e-3)] * (k - 1)).cost.total_ms)
    fast = solve(profiles, [Link(1e7)] * (k - 1))
    assert fast.strategy == "cloud-only" and fast.exact
    assert set(fast.tiers.values()) == {k - 1}  # the fastest tier does everything
    assert fast.cost.total_ms == pytest.approx(cloud_only(profiles, [Link(1e7)] * (k - 1)).cost.total_ms)
    for plan in (slow, fast):
        assert set(plan.tiers) == {n.name for n in profiles[0].compute_nodes}


def test_a_split_wins_where_the_activation_shrinks() -> None:
    # a big input, a cheap layer that shrinks it 1000x, then heavy layers: cut after the shrink
    edges = [
        ("x", "placeholder", ()),
        ("shrink", "call_module", ("x",)),
        ("heavy1", "call_module", ("shrink",)),
        ("heavy2", "call_module", ("heavy1",)),
        ("output", "output", ("heavy2",)),
    ]
    ms = {"shrink": (1.0, 0.1), "heavy1": (100.0, 1.0), "heavy2": (100.0, 1.0)}
    nbytes = {"x": 10**7, "shrink": 10**4, "heavy1": 10**4, "heavy2": 10**3, "output": 10**3}
    profiles = profiles_from(edges, ms, nbytes)
    plan = solve(profiles, [Link(10.0, rtt_ms=5.0)])
    assert plan.strategy == "split" and plan.boundary_nodes == ("shrink",) and plan.exact
    for method in solver.METHODS:
        assert same(value(solve(profiles, [Link(10.0, rtt_ms=5.0)], method=method)), value(plan))


def test_ranked_gives_the_valid_candidates_best_first_priced_as_evaluate_does() -> None:
    profiles = RESNET
    compute = [n.name for n in profiles[0].compute_nodes]
    link = Link(20.0, rtt_ms=5.0)
    ends = range(0, len(compute) + 1, 7)
    candidates = [{n: 0 if i < k else 1 for i, n in enumerate(compute)} for k in ends]
    bad = {**candidates[1], compute[0]: 1, compute[1]: 0}  # not downward closed: skipped
    keep = Constraints(keep_input_on_device=True)  # cloud-only breaks it: skipped
    plans = list(solver.ranked(profiles, [link], [bad, *candidates], constraints=keep))
    assert len(plans) == len(candidates) - 1 and all(not p.exact for p in plans)
    totals = [p.cost.total_ms for p in plans]
    assert totals == sorted(totals)
    for plan in plans:
        alone = evaluate(profiles, [link], plan.tiers, constraints=keep)
        assert same(plan.cost.total_ms, alone.cost.total_ms)


def test_energy_objective_avoids_the_radio_when_it_is_expensive() -> None:
    link = [Link(5.0)]
    cheap_radio = solve(RESNET, link, objective="energy", power=PowerModel(5.0, 0.01, 0.0))
    costly_radio = solve(RESNET, link, objective="energy", power=PowerModel(0.01, 1e6, 0.0))
    assert costly_radio.strategy == "edge-only"
    assert cheap_radio.strategy == "cloud-only"
    assert cheap_radio.exact and costly_radio.exact


def test_single_tier_is_edge_only() -> None:
    plan = solve(RESNET[:1], [])
    assert plan.strategy == "edge-only" and plan.exact and plan.num_tiers == 1


def test_plans_carry_the_device_slowdown() -> None:
    device = dataclasses.replace(RESNET[0], slowdown=4.0)
    plan = solve([device, RESNET[1]], [Link(10.0)])
    assert plan.slowdown == 4.0
    assert plan.model == device.model and plan.fingerprint == device.fingerprint


# constraints -------------------------------------------------------------------------------------


def test_keep_input_on_device_pins_the_input_readers() -> None:
    fast = [Link(1e7)]
    assert solve(RESNET, fast).strategy == "cloud-only"
    plan = solve(RESNET, fast, constraints=Constraints(keep_input_on_device=True))
    assert plan.exact and plan.strategy == "split"
    assert plan.tiers[RESNET[0].compute_nodes[0].name] == 0
    assert "x" not in plan.boundary_nodes
    with pytest.raises(InfeasibleError, match="cloud-only is not allowed"):
        cloud_only(RESNET, fast, constraints=Constraints(keep_input_on_device=True))


def test_device_min_nodes_pins_the_first_layers() -> None:
    plan = solve(RESNET, [Link(1e7)], constraints=Constraints(device_min_nodes=10))
    names = [n.name for n in RESNET[0].compute_nodes]
    assert all(plan.tiers[n] == 0 for n in names[:10])
    assert plan.exact


def test_memory_cap_is_respected_and_infeasible_caps_are_refused() -> None:
    link = [Link(1.0, rtt_ms=10.0)]
    free = solve(RESNET, link)
    assert free.strategy == "edge-only"
    cap = 8_000_000
    plan = solve(RESNET, link, constraints=Constraints(device_memory_bytes=cap))
    head = [n for n in RESNET[0].compute_nodes if plan.tiers[n.name] == 0]
    need = sum(n.param_bytes for n in head) + max((n.output_bytes for n in head), default=0)
    assert need <= cap
    assert plan.exact and plan.cost.total_ms >= free.cost.total_ms
    with pytest.raises(InfeasibleError, match="edge-only is not allowed"):
        edge_only(RESNET, link, constraints=Constraints(device_memory_bytes=cap))
    # the input's first reader must stay on the device, and alone it needs more than 1 kB
    with pytest.raises(InfeasibleError, match="over the cap"):
        solve(RESNET, link, constraints=Constraints(device_memory_bytes=1000, keep_input_on_device=True))


def test_memory_cap_on_a_chain_matches_the_oracle() -> None:
    profiles = chain_profiles(random.Random(3), 12, 2)
    for cap in (0, 10**5, 5 * 10**5, 10**6, 10**7):
        c = Constraints(device_memory_bytes=cap)
        assert same(
            value(solve(profiles, [Link(2.0)], constraints=c)),
            value(brute_force(profiles, [Link(2.0)], constraints=c)),
        )


# larger graphs: two independent exact methods agree ---------------------------------------------


@pytest.mark.parametrize("tiers", [2, 3])
def test_reduced_and_unreduced_cuts_agree_on_network_graphs(tiers) -> None:
    profiles = make_profiles(network_dag(250, seed=1), (1.0, 10.0, 30.0)[:tiers])
    for mbps in (0.5, 5.85, 50.0):
        links = [Link(mbps, rtt_ms=20.0), Link(200.0, rtt_ms=30.0)][: tiers - 1]
        a = solve(profiles, links, method="reduced")
        b = solve(profiles, links, method="mincut")
        assert a.exact and b.exact and same(value(a), value(b))


def test_throughput_on_resnet_is_proven_and_no_worse_than_the_baselines() -> None:
    link = [Link(18.88, rtt_ms=20.0)]
    plan = solve(RESNET, link, objective="throughput")
    assert plan.exact
    for base in (edge_only(RESNET, link), cloud_only(RESNET, link)):
        assert plan.cost.throughput_rps >= base.cost.throughput_rps * (1 - 1e-9)


# sweeps and chain cuts ---------------------------------------------------------------------------


def test_sweep_reports_plan_and_baselines_per_bandwidth() -> None:
    values = [0.13, 1.1, 5.85, 18.88, 1000.0]
    points = sweep(RESNET, values, rtt_ms=20.0)
    assert [p.uplink_mbps for p in points] == values
    for p in points:
        assert p.link.uplink_mbps == p.uplink_mbps and p.link.rtt_ms == 20.0
        assert p.plan.exact and p.objective == "latency"
        assert p.edge_only.strategy == "edge-only" and p.cloud_only.strategy == "cloud-only"
        assert p.plan.cost.total_ms <= p.best_baseline.cost.total_ms * (1 + 1e-9)
        assert p.gain >= 1 - 1e-9
        assert same(p.plan.cost.total_ms, solve(RESNET, [p.link]).cost.total_ms)
    assert points[0].plan.strategy == "edge-only" and points[-1].plan.strategy == "cloud-only"
    three = sweep(RESNET3, [1.0, 100.0], upper_links=[Link(1000.0)], objective="energy")
    assert all(p.plan.num_tiers == 3 and p.objective == "energy" for p in three)


def test_chain_cuts() -> None:
    nodes = [SynthNode("x", "placeholder", (), 0, 4)]
    nodes += [SynthNode(f"c{i}", "call_module", (f"c{i - 1}" if i else "x",), 1, 4) for i in range(4)]
    nodes.append(SynthNode("output", "output", ("c3",), 0, 4))
    assert chain_cuts(make_profiles(nodes)[0]) == ["c0", "c1", "c2"]  # every compute node but the last
    # inside a residual block two values are alive: only the ends are chain cuts
    edges = [
        ("x", "placeholder", ()),
        ("stem", "call_module", ("x",)),
        ("w", "get_attr", ()),
        ("conv", "call_module", ("stem", "w")),
        ("bn", "call_module", ("conv",)),
        ("add", "call_function", ("bn", "stem")),
        ("head", "call_module", ("add",)),
        ("dead", "call_module", ("head",)),  # read by nobody: never a cut
        ("tail", "call_module", ("head",)),
        ("output", "output", ("tail",)),
    ]
    names = ("stem", "conv", "bn", "add", "head", "dead", "tail")
    profiles = profiles_from(edges, {k: (1.0, 1.0) for k in names}, {})
    assert chain_cuts(profiles[0]) == ["stem", "add", "head"]  # not "dead": its value is not read
    # a second input read late keeps everything before it from being a single-tensor cut
    edges2 = [
        ("x", "placeholder", ()),
        ("mask", "placeholder", ()),
        ("a", "call_module", ("x",)),
        ("b", "call_module", ("a", "mask")),
        ("c", "call_module", ("b",)),
        ("output", "output", ("c",)),
    ]
    assert chain_cuts(profiles_from(edges2, {k: (1.0, 1.0) for k in "abc"}, {})[0]) == ["b"]
    cuts = chain_cuts(RESNET[0])
    # the 4 stem nodes, each block's add and relu, avgpool and flatten (fc is last)
    assert cuts[0] == "conv_1" and len(cuts) == 4 + 2 * 16 + 2


def test_what_the_solver_derives_from_a_profile_is_kept_per_profile_object(monkeypatch) -> None:
    from splitdnn.solver import _problem

    dev, srv = RESNET
    built: list[object] = []

    def build(p):  # type: ignore[no-untyped-def]
        built.append(p)
        return len(p.nodes)

    assert _problem.derived(dev, "test", build) == _problem.derived(dev, "test", build) == len(dev.nodes)
    assert built == [dev]  # built once
    twin = dataclasses.replace(dev)  # equal, but another object: a fresh entry
    assert twin == dev and twin is not dev
    _problem.derived(twin, "test", build)
    assert built == [dev, twin]
    assert _problem.Graph.of(dev) is _problem.Graph.of(dev)
    assert _problem.Graph.of(twin) is not _problem.Graph.of(dev)
    # a changed profile (rescaled, as a bench refresh makes them) is priced from its own numbers
    nodes = tuple(dataclasses.replace(n, calibrated_ms=n.calibrated_ms * 50) for n in srv.nodes)
    slow = dataclasses.replace(srv, nodes=nodes)
    fast_plan, slow_plan = solve([dev, srv], [Link(1000.0)]), solve([dev, slow], [Link(1000.0)])
    assert value(slow_plan) > value(fast_plan) and slow_plan.tiers != fast_plan.tiers
    _problem._DERIVED.clear()
    assert solve([dev, slow], [Link(1000.0)]) == slow_plan  # as if nothing had been kept
    # the store is bounded: past DERIVED_MAX it is dropped whole and rebuilt on demand
    monkeypatch.setattr(_problem, "DERIVED_MAX", 2)
    _problem.derived(srv, "test", build)
    _problem.derived(slow, "test", build)
    assert len(_problem._DERIVED) <= 2
    _problem.derived(dev, "test", build)
    assert built[-1] is dev  # built again after the drop
    # an entry goes with its profile: a closed client's profiles are not kept alive
    monkeypatch.setattr(_problem, "DERIVED_MAX", 128)
    gone = dataclasses.replace(dev)
    _problem.Graph.of(gone)
    key = (id(gone), "graph")
    assert key in _problem._DERIVED
    del gone
    gc.collect()
    assert key not in _problem._DERIVED
    assert _problem.Graph.of(dev) is _problem.Graph.of(dev)  # a live one stays
