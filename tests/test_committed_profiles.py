"""The profiles committed in profiles/ stay loadable, complete and true to the zoo's current graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitdnn import solver
from splitdnn.schema import Link, load_profile

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
ZOO_NAMES = ("alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v2", "tiny_yolov2", "vit_tiny")


@pytest.mark.parametrize("model", ZOO_NAMES)
def test_every_zoo_model_has_cpu_profiles_for_one_and_two_threads(model):
    pair = [load_profile(PROFILES / f"{model}-cpu-t{t}.json") for t in (1, 2)]
    assert [p.machine.threads for p in pair] == [1, 2]
    assert all(p.model == model and p.machine.device == "cpu" and p.slowdown == 1.0 for p in pair)
    assert all(p.calibration.cuts_checked > 0 for p in pair), "each profile reports its held-out error"
    links = [Link(5.85, rtt_ms=20.0)]
    plan = solver.solve(pair, links)
    assert plan.exact and plan.cost.total_ms <= solver.edge_only(pair, links).cost.total_ms


@pytest.mark.integration
@pytest.mark.parametrize("model", ZOO_NAMES)
def test_committed_profiles_match_the_current_zoo_graph(model):
    torch = pytest.importorskip("torch")
    from splitdnn.graph import trace
    from splitdnn.models import build_zoo_model, default_input_shape

    prof = load_profile(PROFILES / f"{model}-cpu-t1.json")
    with torch.device("cpu"):
        traced = trace(build_zoo_model(model), torch.zeros(default_input_shape(model)), name=model)
    assert prof.fingerprint == traced.fingerprint, (
        f"profiles/{model}-*.json are stale: the model's graph changed; run scripts/make_profiles.sh"
    )
    assert [n.name for n in prof.nodes] == [n.name for n in traced.nodes]
