"""The solver's cost model: hand-computed breakdowns, the pay-once rule, validation, the codec seam."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from solver_helpers import dag_cases, profiles_from, same

from splitdnn.errors import ConfigError, PlanError
from splitdnn.schema import Link, PowerModel
from splitdnn.solver import (
    Constraints,
    TensorHop,
    WireCost,
    cloud_only,
    edge_only,
    evaluate,
    raw_tensor_cost,
)
from splitdnn.solver._cost import evaluate_assignment, objective_value
from splitdnn.solver._problem import Graph, Problem

# x -> a -> b -> c -> output; 8 Mbit/s up = 1 ms per 1000 bytes, 4 Mbit/s down, 5 ms RTT
CHAIN = [
    ("x", "placeholder", ()),
    ("a", "call_module", ("x",)),
    ("b", "call_module", ("a",)),
    ("c", "call_module", ("b",)),
    ("output", "output", ("c",)),
]
CHAIN_MS = {"a": (10.0, 1.0), "b": (20.0, 2.0), "c": (30.0, 3.0)}
CHAIN_BYTES = {"x": 1000, "a": 500, "b": 250, "c": 100, "output": 100}
LINK = Link(uplink_mbps=8.0, downlink_mbps=4.0, rtt_ms=5.0)
POWER = PowerModel(compute_w=2.0, radio_w=1.0, idle_w=0.5)


def chain() -> list:
    return profiles_from(CHAIN, CHAIN_MS, CHAIN_BYTES)


def test_three_node_chain_breakdown_by_hand() -> None:
    plan = evaluate(chain(), [LINK], {"a": 0, "b": 1, "c": 1}, power=POWER)
    c = plan.cost
    assert c.compute_ms == pytest.approx((10.0, 5.0))
    assert c.transfer_ms == pytest.approx((0.5,))  # a's 500 bytes at 8 Mbit/s
    assert c.rtt_ms == (5.0,)
    assert c.result_ms == pytest.approx(0.2)  # 100 bytes down at 4 Mbit/s
    assert c.encode_ms == 0.0 and c.decode_ms == 0.0
    assert c.total_ms == pytest.approx(20.7)
    # 2 W x 10 ms + 1 W x (0.5 + 0.2) ms + 0.5 W x (20.7 - 10 - 0.7) ms = 25.7 mJ
    assert c.device_energy_j == pytest.approx(0.0257)
    assert c.throughput_rps == pytest.approx(100.0)  # slowest stage: the device's 10 ms
    assert plan.strategy == "split" and not plan.exact
    assert plan.boundary_nodes == ("a",)
    (b,) = plan.boundary
    assert (b.nbytes, b.wire_bytes, b.src_tier, b.dst_tier, b.codec) == (500, 500, 0, 1, "raw")
    assert plan.head() == ("a",)


def test_edge_and_cloud_only_by_hand() -> None:
    edge = edge_only(chain(), [LINK], power=POWER)
    assert edge.cost.total_ms == pytest.approx(60.0)
    assert edge.cost.rtt_ms == (0.0,) and edge.cost.result_ms == 0.0 and edge.boundary == ()
    assert edge.cost.device_energy_j == pytest.approx(0.12)
    assert edge.strategy == "edge-only"
    cloud = cloud_only(chain(), [LINK], power=POWER)
    # 6 ms server + 1000 raw input bytes (1 ms) + 5 ms RTT + 0.2 ms result
    assert cloud.cost.total_ms == pytest.approx(12.2)
    assert cloud.boundary_nodes == ("x",) and cloud.strategy == "cloud-only"
    assert set(cloud.tiers.values()) == {1}


def test_pay_once_on_fan_out() -> None:
    # a is read by b and c; both on the server: a's bytes cross once
    edges = [
        ("x", "placeholder", ()),
        ("a", "call_module", ("x",)),
        ("b", "call_module", ("a",)),
        ("c", "call_module", ("a",)),
        ("d", "call_function", ("b", "c")),
        ("output", "output", ("d",)),
    ]
    ms = {k: (1.0, 1.0) for k in "abcd"}
    nbytes = {"x": 4000, "a": 1000, "b": 2000, "c": 3000, "d": 10, "output": 10}
    profiles = profiles_from(edges, ms, nbytes)
    link = Link(8.0)
    plan = evaluate(profiles, [link], {"a": 0, "b": 1, "c": 1, "d": 1})
    assert plan.cost.transfer_ms == pytest.approx((1.0,))
    assert plan.boundary_nodes == ("a",)
    # b stays: a (read by c) and b (read by d) cross, each once
    plan = evaluate(profiles, [link], {"a": 0, "b": 0, "c": 1, "d": 1})
    assert plan.cost.transfer_ms == pytest.approx((3.0,))
    assert sorted(plan.boundary_nodes) == ["a", "b"]


def test_three_tiers_relay_and_forward_to_output() -> None:
    # a (tier 0) read on tier 2 crosses both links once; the output forwards a lower-tier input
    edges = [
        ("x", "placeholder", ()),
        ("a", "call_module", ("x",)),
        ("b", "call_module", ("a",)),
        ("c", "call_module", ("a", "b")),
        ("output", "output", ("c", "a")),
    ]
    ms = {k: (1.0, 1.0, 1.0) for k in "abc"}
    nbytes = {"x": 1, "a": 1000, "b": 2000, "c": 500, "output": 1500}
    profiles = profiles_from(edges, ms, nbytes)
    links = [Link(8.0, rtt_ms=1.0), Link(16.0, rtt_ms=2.0)]
    plan = evaluate(profiles, links, {"a": 0, "b": 1, "c": 2})
    assert plan.cost.compute_ms == pytest.approx((1.0, 1.0, 1.0))
    # link 0: a (1000 B) ; link 1: a again (relayed, 1000 B at 16) + b (2000 B at 16)
    assert plan.cost.transfer_ms == pytest.approx((1.0, 1.5))
    assert plan.cost.rtt_ms == (1.0, 2.0)
    # the output (on tier 2) returns 1500 bytes down both links
    assert plan.cost.result_ms == pytest.approx(1.5 + 0.75)
    assert {(b.node, b.src_tier, b.dst_tier) for b in plan.boundary} == {("a", 0, 2), ("b", 1, 2)}
    assert plan.strategy == "three-tier"
    # nothing above tier 1: link 1 pays no RTT, the output comes back from tier 1
    plan = evaluate(profiles, links, {"a": 0, "b": 1, "c": 1})
    assert plan.cost.rtt_ms == (1.0, 0.0)
    assert plan.cost.transfer_ms == pytest.approx((1.0, 0.0))


def test_evaluate_refuses_invalid_assignments() -> None:
    p = chain()
    with pytest.raises(PlanError, match="earlier tier"):
        evaluate(p, [LINK], {"a": 1, "b": 0, "c": 1})
    with pytest.raises(PlanError, match="missing"):
        evaluate(p, [LINK], {"a": 0, "b": 0})
    with pytest.raises(PlanError, match="not a placeable node"):
        evaluate(p, [LINK], {"a": 0, "b": 0, "c": 0, "zzz": 0})
    with pytest.raises(PlanError, match="expected an integer in 0..1"):
        evaluate(p, [LINK], {"a": 0, "b": 0, "c": 2})
    with pytest.raises(PlanError, match="model input"):
        evaluate(p, [LINK], {"x": 1, "a": 1, "b": 1, "c": 1})
    with pytest.raises(PlanError, match="output node"):
        evaluate(p, [LINK], {"a": 0, "b": 0, "c": 0, "output": 0})
    with pytest.raises(PlanError, match="violates"):
        evaluate(p, [LINK], {"a": 1, "b": 1, "c": 1}, constraints=Constraints(keep_input_on_device=True))
    # the input may be named with tier 0
    assert evaluate(p, [LINK], {"x": 0, "a": 0, "b": 0, "c": 0}).strategy == "edge-only"


def test_tensor_cost_seam_prices_every_hop() -> None:
    seen: list[TensorHop] = []

    def halve(hop: TensorHop) -> WireCost:
        seen.append(hop)
        return WireCost(hop.nbytes // 2, encode_ms=0.25, decode_ms=0.5, codec="half")

    plan = evaluate(chain(), [LINK], {"a": 0, "b": 1, "c": 1}, tensor_cost=halve, power=POWER)
    assert {h.node for h in seen} == {"x", "a", "b", "c"}  # every value that has a reader
    assert all(h.link_index == 0 and h.link == LINK for h in seen)
    c = plan.cost
    assert c.transfer_ms == pytest.approx((0.25,)) and c.encode_ms == 0.25 and c.decode_ms == 0.5
    assert c.total_ms == pytest.approx(20.7 - 0.25 + 0.75)
    (b,) = plan.boundary
    assert (b.wire_bytes, b.codec) == (250, "half")
    # device energy: the encode runs on the device at compute power, the decode is idle time
    idle = c.total_ms - 10.0 - 0.25 - 0.25 - 0.2
    assert c.device_energy_j == pytest.approx((2.0 * 10.25 + 1.0 * 0.45 + 0.5 * idle) / 1000)
    assert raw_tensor_cost(seen[0]) == WireCost(seen[0].nbytes, 0.0, 0.0, "raw")


def test_tensor_cost_must_return_a_wire_cost() -> None:
    with pytest.raises(ConfigError, match="WireCost"):
        evaluate(chain(), [LINK], {"a": 0, "b": 0, "c": 0}, tensor_cost=lambda hop: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="wire_bytes"):
        evaluate(chain(), [LINK], {"a": 0, "b": 0, "c": 0}, tensor_cost=lambda hop: WireCost(-1))


def test_no_compute_on_server_means_no_rtt_even_with_dead_code() -> None:
    edges = [
        ("x", "placeholder", ()),
        ("a", "call_module", ("x",)),
        ("dead", "call_module", ("a",)),  # nobody reads it
        ("output", "output", ("a",)),
    ]
    profiles = profiles_from(edges, {"a": (1.0, 1.0), "dead": (5.0, 0.1)}, {"x": 8, "a": 1000, "output": 8})
    plan = evaluate(profiles, [Link(8.0, rtt_ms=3.0)], {"a": 0, "dead": 1})
    # dead code on the server: a crosses, the RTT is paid, but the output never leaves the device
    assert plan.cost.rtt_ms == (3.0,) and plan.cost.result_ms == 0.0
    assert plan.cost.transfer_ms == pytest.approx((1.0,))


@settings(max_examples=40, deadline=None)
@given(dag_cases(tiers=3, max_compute=9))
def test_linear_weights_agree_with_the_cost_model(case) -> None:
    """The weights the min cuts use add up to exactly what the cost model says, for any plan."""
    profiles, links, rng = case
    problem = Problem(Graph(profiles[0]), profiles, links)
    g = problem.graph
    power = PowerModel(rng.uniform(0, 5), rng.uniform(0, 5), rng.uniform(0, 5))
    for _ in range(5):
        tier = [0] * g.n
        for v in g.compute:
            low = max((tier[u] for u in g.preds[v]), default=0)
            tier[v] = rng.randint(low, problem.K - 1)
        out_tier = max((tier[u] for u in g.preds[g.out]), default=0)
        tier[g.out] = out_tier
        top = max((tier[v] for v in g.compute), default=0)
        cost, _ = evaluate_assignment(problem, tier, power)
        for objective in ("latency", "energy"):
            w = problem.weights(objective, power)
            total = sum(w.a[v][tier[v]] for v in range(g.n))
            for u in range(g.n):
                if g.succs[u]:
                    total += sum(w.b[u][i] for i in range(tier[u], max(tier[x] for x in g.succs[u])))
            total += w.rtt_upto(top) + w.result_upto(out_tier)
            assert same(total, objective_value(cost, objective))


def test_energy_uses_default_power_model_when_none_given() -> None:
    plan = evaluate(chain(), [LINK], {"a": 0, "b": 0, "c": 0})
    assert plan.cost.device_energy_j == pytest.approx(PowerModel().compute_w * 60.0 / 1000)
