"""The solver agrees with splitdnn.graph on real traced models (needs torch).

The solver only sees profiles; graph sees the traced model. Their notions of chain cuts, boundary
tensors and valid plans must match, or a solved plan would be split into something else.
"""

from __future__ import annotations

import random

import pytest

from splitdnn.schema import Link
from splitdnn.solver import Constraints, chain_cuts, solve
from splitdnn.solver.synthetic import SynthNode, make_profiles

torch = pytest.importorskip("torch")
graph = pytest.importorskip("splitdnn.graph")
registry = pytest.importorskip("splitdnn.models.registry")
capture = pytest.importorskip("splitdnn._capture")

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_tiny", "tiny_yolov2"])
def test_solver_and_graph_agree_on_zoo_models(name: str) -> None:
    torch.manual_seed(0)
    model = registry.build_zoo_model(name).eval()
    traced = capture.trace(model, torch.randn(*registry.default_input_shape(name)), name=name)
    rng = random.Random(0)
    # the real graph with made-up times and sizes (small tensors, so that splits win)
    nodes = [
        SynthNode(n.name, n.op, tuple(n.inputs), rng.uniform(0, 5), rng.randint(1, 3 * 10**4), 0)
        for n in traced.nodes
    ]
    assert chain_cuts(make_profiles(nodes)[0]) == graph.chain_cuts(traced)
    splits = 0
    for speedups in [(1.0, 10.0), (1.0, 10.0, 30.0)]:
        for mbps in (1.0, 5.85, 50.0, 1e4):
            for constraints in (None, Constraints(keep_input_on_device=True)):
                links = [Link(mbps, rtt_ms=20.0), Link(200.0, rtt_ms=30.0)][: len(speedups) - 1]
                plan = solve(make_profiles(nodes, speedups), links, constraints=constraints)
                assert plan.exact
                mine = sorted((b.node, b.src_tier, b.dst_tier) for b in plan.boundary)
                assert mine == sorted(graph.boundary(traced, plan.tiers))
                pieces = graph.split(traced, plan.tiers)
                assert len(pieces) == max(plan.tiers.values()) + 1
                splits += plan.strategy in ("split", "three-tier")
    assert splits >= 2  # real cuts were exercised, not only the trivial plans
