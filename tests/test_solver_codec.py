"""Codec choice together with the cut: the cheapest allowed codec within the error budget, per hop,
and the solvers' optimum with codecs still equals the brute-force oracle with the same tensor cost."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from solver_helpers import dag_cases, same, value

from splitdnn.errors import ConfigError
from splitdnn.schema import CodecResult, Link, Profile, profile_from_json, profile_to_json
from splitdnn.solver import (
    OVER_CAP_BYTES,
    TensorHop,
    brute_force,
    cloud_only,
    codec_tensor_cost,
    edge_only,
    explain_codec,
    measured_codecs,
    solve,
    sweep,
    unusable_codecs,
)
from splitdnn.solver._problem import Graph, Problem
from splitdnn.solver.synthetic import SynthNode, make_profiles

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECS = ("raw", "zstd", "fp16+zstd", "int8+zstd", "int4+zstd")


def _results(rng: random.Random, nbytes: int, slow: float = 1.0) -> tuple[CodecResult, ...]:
    out = [CodecResult("raw", nbytes + 40, 0.01 * slow, 0.01 * slow, 0.0, 0.0, 1.0)]
    for spec in SPECS[1:]:
        lossless = spec == "zstd"
        err = 0.0 if lossless else 10 ** rng.uniform(-8, -1)
        out.append(
            CodecResult(
                spec,
                int(nbytes * rng.uniform(0.05, 1.1)) + 40,
                rng.uniform(0, 30) * slow,
                rng.uniform(0, 10) * slow,
                0.0 if lossless else err * 10,
                err,
                1.0 if lossless else 1.0 - err / 2,
            )
        )
    rng.shuffle(out)
    return tuple(out)


def with_codecs(profiles: list[Profile], rng: random.Random, p_measured: float = 0.8) -> list[Profile]:
    """Copies of ``profiles`` where most nodes carry random codec measurements (per tier)."""
    chosen = {n.name for n in profiles[0].nodes if n.op != "output" and rng.random() < p_measured}
    out = []
    for t, p in enumerate(profiles):
        nodes = tuple(
            dataclasses.replace(n, codecs=_results(random.Random(f"{n.name}/{t}"), n.output_bytes, 1 + t))
            if n.name in chosen
            else n
            for n in p.nodes
        )
        out.append(dataclasses.replace(p, nodes=nodes))
    return out


def _toy() -> list[Profile]:
    nodes = [
        SynthNode("x", "placeholder", nbytes=600_000),
        SynthNode("conv", "call_module", ("x",), ms=10.0, nbytes=100_000),
        SynthNode("fc", "call_module", ("conv",), ms=200.0, nbytes=4_000),
        SynthNode("output", "output", ("fc",), nbytes=4_000),
    ]
    dev, srv = make_profiles(nodes, speedups=(1.0, 20.0), model="toy")
    conv = (
        CodecResult("raw", 100_040, 0.05, 0.05, 0.0, 0.0, 1.0),
        CodecResult("zstd", 60_000, 2.0, 1.0, 0.0, 0.0, 1.0),
        CodecResult("int8+zstd", 20_000, 1.0, 0.5, 0.01, 1e-4, 0.99995),
        CodecResult("int4+zstd", 9_000, 1.0, 0.5, 0.2, 5e-3, 0.997),
    )

    def put(p: Profile, dec_ms: float) -> Profile:
        nodes = tuple(
            dataclasses.replace(n, codecs=tuple(dataclasses.replace(c, decode_ms=dec_ms) for c in conv))
            if n.name == "conv"
            else n
            for n in p.nodes
        )
        return dataclasses.replace(p, nodes=nodes)

    return [put(dev, 99.0), put(srv, 0.5)]


def _hop(profiles: list[Profile], node: str, mbps: float) -> TensorHop:
    n = profiles[0].node(node)
    return TensorHop(node, n.output_bytes, 0, Link(mbps), profiles[0], profiles[1])


def test_the_cheapest_allowed_codec_within_budget_is_chosen() -> None:
    profiles = _toy()
    hop = _hop(profiles, "conv", 5.85)
    # int4: 1 + 9000 B at 5.85 Mbit/s (12.3 ms) + 0.5 (receiver's decode, not the sender's 99) ms
    assert codec_tensor_cost(profiles)(hop).codec == "int4+zstd"
    assert codec_tensor_cost(profiles)(hop).decode_ms == 0.5
    assert codec_tensor_cost(profiles, max_error=1e-3)(hop).codec == "int8+zstd"
    assert codec_tensor_cost(profiles, max_error=0.0)(hop).codec == "zstd"
    assert codec_tensor_cost(profiles, max_error=0.05, metric="max_abs")(hop).codec == "int8+zstd"
    assert codec_tensor_cost(profiles, max_error=1e-4, metric="cosine")(hop).codec == "int8+zstd"
    assert codec_tensor_cost(profiles, allowed=["zstd"])(hop).codec == "zstd"
    assert codec_tensor_cost(profiles, allowed=["raw"])(hop).codec == "raw"
    # raw is priced as before: the value's own bytes, no encode or decode
    raw = codec_tensor_cost(profiles, allowed=())(hop)
    assert (raw.wire_bytes, raw.encode_ms, raw.decode_ms, raw.codec) == (100_000, 0.0, 0.0, "raw")
    # an absurdly fast link: compressing costs more than it saves
    assert codec_tensor_cost(profiles)(_hop(profiles, "conv", 1e7)).codec == "raw"
    # unmeasured tensors are sent raw
    assert codec_tensor_cost(profiles)(_hop(profiles, "fc", 0.1)).codec == "raw"
    why = explain_codec(hop, max_error=1e-3)
    assert (why.codec, why.wire_bytes, why.error, why.max_error) == ("int8+zstd", 20_000, 1e-4, 1e-3)
    assert why.candidates == 3  # raw, zstd, int8 (int4 is over budget)


def test_a_message_cap_keeps_only_the_codecs_whose_frame_fits() -> None:
    profiles = _toy()
    hop = _hop(profiles, "conv", 5.85)
    fast = _hop(profiles, "conv", 10_000.0)  # raw (100 kB) is the cheapest here, without a cap
    assert codec_tensor_cost(profiles, max_error=0.0)(fast).codec == "raw"
    capped = codec_tensor_cost(profiles, max_error=0.0, max_wire_bytes=60_000)
    assert capped(fast).codec == "zstd" and capped(fast).wire_bytes <= 60_000
    assert codec_tensor_cost(profiles, max_wire_bytes=9_001)(hop).codec == "int4+zstd"  # 9001 B fits
    over = codec_tensor_cost(profiles, max_wire_bytes=100)(hop)
    assert over.wire_bytes == OVER_CAP_BYTES  # nothing fits: no plan sends it
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="max_wire_bytes must be an integer >= 0"):
            codec_tensor_cost(profiles, max_wire_bytes=bad)


def test_an_exact_decode_is_lossless_under_the_cosine_metric() -> None:
    """Profiles store an exact decode's cosine as 0.9999999999999998 for a third of the nodes: under
    the default budget of 0 the cosine metric dropped zstd there (a 9 % worse cut, reviewer's)."""
    profiles = _toy()

    def rounded(p: Profile) -> Profile:
        def one(c):  # type: ignore[no-untyped-def]
            return dataclasses.replace(c, cosine=0.9999999999999998) if c.max_abs_error == 0 else c

        nodes = tuple(dataclasses.replace(n, codecs=tuple(one(c) for c in n.codecs)) for n in p.nodes)
        return dataclasses.replace(p, nodes=nodes)

    hop = _hop([rounded(p) for p in profiles], "conv", 5.85)
    assert (
        codec_tensor_cost([rounded(p) for p in profiles], max_error=0.0, metric="cosine")(hop).codec == "zstd"
    )


def test_codecs_that_no_plan_could_use_are_named_with_why() -> None:
    profiles = _toy()
    # measured on conv only: int8's rel MSE is 1e-4, int4's 5e-3
    assert unusable_codecs(profiles, ["raw", "zstd", "int8+zstd"], max_error=1e-3) == []
    assert unusable_codecs(profiles, ["int8+zstd"], max_error=None) == []
    why = unusable_codecs(profiles, ["zstd", "int8+zstd", "int4+zstd", "bf16"], max_error=0.0)
    assert why == [
        "int8+zstd's smallest measured relative MSE is 0.0001, over the error budget 0",
        "int4+zstd's smallest measured relative MSE is 0.005, over the error budget 0",
        "bf16 was not measured in the profiles",
    ]
    # the budget is on the metric asked for: int8's max abs error is 0.01
    assert unusable_codecs(profiles, ["int8+zstd"], max_error=0.05, metric="max_abs") == []
    why = unusable_codecs(profiles, ["int8+zstd"], max_error=1e-3, metric="max_abs")
    assert why == ["int8+zstd's smallest measured max abs error is 0.01, over the error budget 0.001"]


@FAST
@given(dag_cases(tiers=2, max_compute=8))
def test_picked_codec_is_the_minimum_over_allowed_candidates(case) -> None:
    profiles, links, rng = case
    profiles = with_codecs(profiles, rng)
    budget = rng.choice((None, 0.0, 1e-5, 1e-3, 1e-1))
    allowed = rng.choice((None, ("zstd", "int8+zstd"), ("int4+zstd",), ()))
    fn = codec_tensor_cost(profiles, allowed=allowed, max_error=budget)
    for n in profiles[0].nodes:
        hop = TensorHop(n.name, n.output_bytes, 0, links[0], profiles[0], profiles[1])
        got = fn(hop)
        link = links[0]
        best = link.uplink_ms(n.output_bytes)
        for r in n.codecs:
            ok = r.spec != "raw" and (allowed is None or r.spec in allowed)
            ok = ok and (budget is None or r.rel_mse <= budget)
            if ok:
                dec = profiles[1].node(n.name).codec(r.spec).decode_ms
                best = min(best, r.encode_ms + link.uplink_ms(r.wire_bytes) + dec)
        assert same(got.encode_ms + link.uplink_ms(got.wire_bytes) + got.decode_ms, best)
        if got.codec != "raw":
            chosen = n.codec(got.codec)
            assert allowed is None or got.codec in allowed
            assert budget is None or chosen.rel_mse <= budget


def _check_oracle(profiles, links, rng) -> None:
    profiles = with_codecs(profiles, rng)
    fn = codec_tensor_cost(profiles, max_error=rng.choice((None, 1e-4, 1e-2)))
    problem = Problem(Graph(profiles[0]), profiles, links, fn)
    w = problem.weights("latency")
    scale = sum(map(sum, w.a)) + sum(map(sum, w.b)) + sum(w.r) + sum(w.s)
    for objective in ("latency", "energy"):
        oracle = brute_force(profiles, links, objective=objective, tensor_cost=fn)
        for method in ("auto", "reduced", "mincut"):
            plan = solve(profiles, links, objective=objective, tensor_cost=fn, method=method)
            assert plan.exact
            assert same(value(plan), value(oracle), scale), (objective, method)
        for b in plan.boundary:
            hop = TensorHop(b.node, b.nbytes, b.src_tier, links[b.src_tier], profiles[0], profiles[1])
            if len(profiles) == 2:
                assert b.codec == fn(hop).codec
                assert b.wire_bytes == fn(hop).wire_bytes


@FAST
@given(dag_cases(tiers=2, max_compute=10))
def test_solver_with_codecs_matches_oracle_two_tiers(case) -> None:
    _check_oracle(*case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_cases(tiers=3, max_compute=7))
def test_solver_with_codecs_matches_oracle_three_tiers(case) -> None:
    _check_oracle(*case)


def test_plans_name_the_chosen_codec_and_baselines_use_it() -> None:
    profiles = _toy()
    links = [Link(5.85, rtt_ms=20)]
    fn = codec_tensor_cost(profiles, max_error=1e-3)
    plan = solve(profiles, links, tensor_cost=fn)
    assert plan.boundary_nodes == ("conv",)
    (b,) = plan.boundary
    assert (b.codec, b.wire_bytes, b.nbytes) == ("int8+zstd", 20_000, 100_000)
    assert plan.cost.total_ms < solve(profiles, links).cost.total_ms
    assert plan.cost.encode_ms == 1.0 and plan.cost.decode_ms == 0.5
    assert edge_only(profiles, links, tensor_cost=fn).cost.total_ms == pytest.approx(210.0)
    assert cloud_only(profiles, links, tensor_cost=fn).boundary[0].codec == "raw"  # x is unmeasured
    (pt,) = sweep(profiles, [5.85], rtt_ms=20, tensor_cost=fn)
    assert pt.plan.boundary[0].codec == "int8+zstd"
    assert measured_codecs(profiles) == ("raw", "zstd", "int8+zstd", "int4+zstd")


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="metric"):
        codec_tensor_cost(metric="psnr")
    with pytest.raises(ConfigError, match="max_error"):
        codec_tensor_cost(max_error=-1)
    with pytest.raises(ConfigError, match="sequence"):
        codec_tensor_cost(allowed="zstd")


def test_codec_results_round_trip_and_old_profiles_load() -> None:
    profiles = _toy()
    text = profile_to_json(profiles[0])
    assert profile_from_json(text) == profiles[0]
    assert '"codecs"' in text and '"int8+zstd"' in text
    # a profile written before codecs existed (no "codecs" key) still loads, with none measured
    import json

    data = json.loads(text)
    for n in data["nodes"]:
        del n["codecs"]
    old = profile_from_json(json.dumps(data))
    assert all(n.codecs == () for n in old.nodes)
    bad = json.loads(text)
    bad["nodes"][1]["codecs"][0]["cosine"] = 3.0
    with pytest.raises(Exception, match="cosine"):
        profile_from_json(json.dumps(bad))


# --------------------------------------------------------------------------------------------------
# accuracy-loss budget from a measured table (scripts/bench_accuracy.py --json)


def _table(profiles: list[Profile], rows_per_seed: list[list[tuple[str, str, float]]], **over) -> dict:
    data = {
        "format": "splitdnn.accuracy-table/1",
        "model_name": profiles[0].model,
        "fingerprint": profiles[0].fingerprint,
        "input_node": "x",
        "seeds": [
            {"seed": i, "rows": [{"cut": c, "spec": s, "loss_pts": loss} for c, s, loss in rows]}
            for i, rows in enumerate(rows_per_seed)
        ],
    }
    data.update(over)
    return data


def test_accuracy_budget_allows_only_codecs_measured_within_it_at_that_node() -> None:
    from splitdnn.solver import accuracy_table_from_dict

    profiles = _toy()
    hop = _hop(profiles, "conv", 5.85)
    rows = [
        [("conv", "int8+zstd", 0.22), ("conv", "int4+zstd", 0.44), ("<input>", "int4+zstd", 0.0)],
        [("conv", "int8+zstd", 0.0), ("conv", "int4+zstd", 1.5)],  # the worst seed counts: int4 1.5
    ]
    table = accuracy_table_from_dict(_table(profiles, rows), source="t.json")
    assert table.loss("conv", "int4+zstd") == 1.5 and table.loss("x", "int4+zstd") == 0.0
    assert table.loss("conv", "fp16+zstd") is None and table.seeds == 2

    def pick(budget: float, **kw) -> str:
        return codec_tensor_cost(profiles, accuracy=table, max_accuracy_loss=budget, **kw)(hop).codec

    assert pick(2.0) == "int4+zstd"
    assert pick(1.0) == "int8+zstd"
    assert pick(0.1) == "zstd"  # lossless codecs need no table entry
    assert pick(2.0, max_error=1e-3) == "int8+zstd"  # both budgets apply
    why = explain_codec(hop, accuracy=table, max_accuracy_loss=1.0)
    assert (why.codec, why.accuracy_loss_pts, why.max_accuracy_loss_pts) == ("int8+zstd", 0.22, 1.0)
    assert why.accuracy_table == "t.json"
    lossless = explain_codec(hop, accuracy=table, max_accuracy_loss=0.0)
    assert (lossless.codec, lossless.accuracy_loss_pts) == ("zstd", None)
    # a codec the table lacks is not allowed at all, however cheap
    only_int8 = accuracy_table_from_dict(_table(profiles, [[("conv", "int8+zstd", 0.0)]]))
    assert codec_tensor_cost(profiles, accuracy=only_int8, max_accuracy_loss=50.0)(hop).codec == "int8+zstd"


def test_accuracy_budget_plans_still_equal_the_oracle() -> None:
    from splitdnn.solver import accuracy_table_from_dict

    profiles = _toy()
    table = accuracy_table_from_dict(
        _table(profiles, [[("conv", "int8+zstd", 0.2), ("conv", "int4+zstd", 3.0)]])
    )
    for mbps in (0.5, 5.85, 50.0):
        cost = codec_tensor_cost(profiles, accuracy=table, max_accuracy_loss=1.0)
        links = [Link(mbps, 0.0, 20.0)]
        plan = solve(profiles, links, tensor_cost=cost)
        assert same(plan.cost.total_ms, brute_force(profiles, links, tensor_cost=cost).cost.total_ms)
        assert all(b.codec != "int4+zstd" for b in plan.boundary)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"format": None}, "expected \"format\": 'splitdnn.accuracy-table/1', found None"),
        ({"fingerprint": ""}, "'fingerprint' must be a non-empty string"),
        ({"model_name": 3}, "'model_name' must be a non-empty string, found 3"),
        ({"seeds": []}, "'seeds' must be a non-empty list"),
        ({"seeds": [{"rows": "x"}]}, r"seeds\[0\] must be an object with a list 'rows'"),
        ({"seeds": [{"rows": [{"cut": "conv", "spec": "int8+zstd", "loss_pts": "NaN"}]}]}, "finite number"),
        ({"seeds": [{"rows": [{"cut": "conv", "spec": "int8+zstd", "loss_pts": float("inf")}]}]}, "finite"),
        ({"seeds": [{"rows": [{"cut": "", "spec": "int8+zstd", "loss_pts": 0}]}]}, "non-empty strings"),
        ({"seeds": [{"fingerprint": "ab" * 32, "rows": []}]}, "one table holds one model"),
    ],
)
def test_malformed_accuracy_tables_are_refused(over, message) -> None:
    from splitdnn.solver import accuracy_table_from_dict

    with pytest.raises(ConfigError, match=message):
        accuracy_table_from_dict(_table(_toy(), [[("conv", "int8+zstd", 0.0)]], **over), source="t.json")


def test_accuracy_table_of_another_model_or_a_half_budget_is_refused(tmp_path) -> None:
    from splitdnn.solver import accuracy_table_from_dict, load_accuracy_table

    profiles = _toy()
    other = _table(profiles, [[("conv", "int8+zstd", 0.0)]], fingerprint="f" * 64, model_name="digits_cnn")
    table = accuracy_table_from_dict(other, source="other.json")
    with pytest.raises(
        ConfigError, match=r"other.json was measured on model 'digits_cnn' \(fingerprint ffff"
    ):
        codec_tensor_cost(profiles, accuracy=table, max_accuracy_loss=1.0)
    stranger = accuracy_table_from_dict(_table(profiles, [[("layer9", "int8+zstd", 0.0)]]))
    with pytest.raises(ConfigError, match=r"names node\(s\) \['layer9'\]"):
        codec_tensor_cost(profiles, accuracy=stranger, max_accuracy_loss=1.0)
    good = accuracy_table_from_dict(_table(profiles, [[("conv", "int8+zstd", 0.0)]]))
    with pytest.raises(ConfigError, match="needs both"):
        codec_tensor_cost(profiles, accuracy=good)
    with pytest.raises(ConfigError, match="needs both"):
        codec_tensor_cost(profiles, max_accuracy_loss=1.0)
    with pytest.raises(ConfigError, match="finite number of top-1 points >= 0"):
        codec_tensor_cost(profiles, accuracy=good, max_accuracy_loss=-1)
    with pytest.raises(ConfigError, match="cannot read accuracy table"):
        load_accuracy_table(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_accuracy_table(tmp_path / "bad.json")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(ConfigError, match="too deeply"):
        load_accuracy_table(tmp_path / "deep.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe[]")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_accuracy_table(tmp_path / "binary.json")
    with pytest.raises(ConfigError, match="'loss_pts' must be a finite number"):  # not OverflowError
        accuracy_table_from_dict(_table(profiles, [[("conv", "int8+zstd", 10**400)]]))


def test_is_lossless_reads_the_value_stage() -> None:
    from splitdnn.solver import is_lossless

    assert all(is_lossless(s) for s in ("raw", "zstd", "zstd:3t2", "shuffle+zstd", "raw+zstd:1"))
    assert not any(is_lossless(s) for s in ("fp16+zstd", "int8+zstd", "int4:aciq+zstd", "bf16"))


def test_one_tensor_cost_prices_each_link_and_each_profile_afresh() -> None:
    """A planner keeps one tensor cost for its life and calls it under every new link estimate, and
    the bench hands it rescaled copies of the same profiles: what it keeps per hop must follow both."""
    profiles = _toy()
    fn = codec_tensor_cost(profiles)
    for mbps in (5.85, 1e7, 5.85, 100.0, 0.5, 1e7):  # cheapest codec changes with the link
        hop = _hop(profiles, "conv", mbps)
        assert fn(hop) == codec_tensor_cost(profiles)(hop)
    assert fn(_hop(profiles, "conv", 5.85)).codec == "int4+zstd"
    assert fn(_hop(profiles, "conv", 1e7)).codec == "raw"
    # equal node names, other measurements: int4 now sends more than raw, int8 decodes slower
    changed = [
        dataclasses.replace(
            p,
            nodes=tuple(
                dataclasses.replace(
                    n,
                    codecs=tuple(
                        dataclasses.replace(c, wire_bytes=500_000) if c.spec == "int4+zstd"
                        else dataclasses.replace(c, decode_ms=c.decode_ms + 100.0) if c.spec == "int8+zstd"
                        else c
                        for c in n.codecs
                    ),
                )
                for n in p.nodes
            ),
        )
        for p in profiles
    ]  # fmt: skip
    hop = _hop(changed, "conv", 5.85)
    assert fn(hop).codec == codec_tensor_cost(changed)(hop).codec == "zstd"
    assert fn(_hop(profiles, "conv", 5.85)).codec == "int4+zstd"  # the first profiles are still known
    for p in (profiles, changed):
        plan = solve(p, [Link(5.85)], tensor_cost=fn)
        oracle = brute_force(p, [Link(5.85)], tensor_cost=codec_tensor_cost(p))
        assert same(value(plan), value(oracle))
        assert [b.codec for b in plan.boundary] == [b.codec for b in oracle.boundary]
