"""The bandwidth-change run: a step while one client sends requests back to back; schedule parsing.

Asserted: the structure of the record, zero failed requests across a step, the step located and its
re-plan delay computed from the requests. Not asserted: how long the re-plan took (a benchmark goal).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest

from splitdnn.errors import ConfigError
from splitdnn.runtime import bench_change
from splitdnn.runtime.bench_change import DEFAULT_CHANGE, parse_schedule, run_change
from splitdnn.runtime.bench_report import format_change_markdown, plot_change
from splitdnn.runtime.shaper import RateSchedule


def test_a_bandwidth_step_fails_no_request(tmp_path: Path) -> None:
    schedule = RateSchedule.step(50.0, 0.3, at_s=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_change(
            "alexnet", schedule, duration_s=2.5, slowdown=1.5, rtt_ms=2.0, input_shape=(1, 3, 64, 64),
            profile_repeats=1, progress=True, out=io.StringIO(),
        )  # fmt: skip
    json.dumps(result, allow_nan=False)
    assert result["failures"] == 0
    recs = result["records"]
    assert len(recs) >= 5 and result["requests"] == len(recs)
    assert all(r["ok"] and r["latency_ms"] > 0 for r in recs)
    assert [r["start_s"] for r in recs] == sorted(r["start_s"] for r in recs)
    assert {r["uplink_mbps"] for r in recs} == {50.0, 0.3}  # requests on both sides of the step
    (step,) = result["steps"]
    assert (step["from_mbps"], step["to_mbps"]) == (50.0, 0.3)
    assert step["at_s"] == pytest.approx(1.0, abs=0.2)
    # at 0.3 Mbit/s the solver keeps a 64x64 alexnet on the device (sending costs seconds)
    assert step["target_plan"] == "edge-only"
    if step["replan_s"] is not None:
        assert step["replan_s"] >= 0 and step["requests_until_replan"] >= 0
    assert result["goal"]["goal"].startswith("re-plan <= 1 s")
    assert isinstance(result["goal"]["met"], bool)
    path = plot_change(result, tmp_path / "change.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    # the link it ran through is said (a --link netns grid did not say its change ran on the shaper)
    said = format_change_markdown(result)
    assert "through the in-process token-bucket shaper with downlink = uplink" in said


def test_a_downlink_factor_shapes_and_prices_the_downlink_at_every_step(monkeypatch) -> None:
    from splitdnn.runtime import shaper

    rates: list[tuple[float, float]] = []  # (uplink, downlink) of the link at start and at every step
    real_init, real_set = shaper.ShapedLink.__init__, shaper.ShapedLink.set_rates

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        rates.append((self.uplink_mbps, self.downlink_mbps))

    def set_rates(self, uplink_mbps, downlink_mbps=None, rtt_ms=None):
        real_set(self, uplink_mbps, downlink_mbps, rtt_ms)
        rates.append((self.uplink_mbps, self.downlink_mbps))

    monkeypatch.setattr(shaper.ShapedLink, "__init__", init)
    monkeypatch.setattr(shaper.ShapedLink, "set_rates", set_rates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_change(
            "alexnet", RateSchedule.step(50.0, 0.3, at_s=0.5), duration_s=1.2, slowdown=1.5, rtt_ms=2.0,
            downlink_factor=4.0, input_shape=(1, 3, 64, 64), profile_repeats=1,
        )  # fmt: skip
    assert rates == [(50.0, 200.0), (50.0, 200.0), (0.3, 1.2)]  # before: downlink = uplink throughout
    assert result["failures"] == 0 and result["downlink_factor"] == 4.0
    assert "through the in-process token-bucket shaper with downlink = 4 x uplink" in format_change_markdown(
        result
    )
    with pytest.raises(ConfigError, match="downlink_factor must be a positive finite number"):
        run_change("alexnet", RateSchedule.step(5.0, 1.0, at_s=1.0), downlink_factor=0.0)


def test_bench_change_takes_the_grids_downlink_factor(tmp_path: Path, monkeypatch) -> None:
    from splitdnn.cli import main
    from splitdnn.runtime import bench_change

    given: list[dict[str, object]] = []

    def captured(model: str, schedule: RateSchedule, **kw: object) -> dict[str, object]:
        given.append({"model": model, **kw})
        raise ConfigError("stopped before measuring")

    monkeypatch.setattr(bench_change, "run_change", captured)
    argv = ["bench", "--models", "alexnet", "--change", "5:1@1", "--no-grid", "--out-dir", str(tmp_path)]
    assert main([*argv, "--downlink-factor", "4", "--rtt-ms", "3"]) == 1
    assert main(argv) == 1
    assert [(g["model"], g["downlink_factor"], g["rtt_ms"]) for g in given] == [
        ("alexnet", 4.0, 3.0),
        ("alexnet", None, 20.0),
    ]


def _request(start_s: float, label: str) -> dict[str, object]:
    return {"start_s": start_s, "end_s": start_s + 0.05, "cut_label": label}


@pytest.mark.parametrize(
    ("f5_ms", "replan_s", "note"),
    [
        (104.0, 0.1, "ran features_5, within 10% of features_2 at the new rate"),  # a near-tie: re-planned
        (115.0, 0.5, ""),  # 15 % slower at the new rate: not a plan for it, the solver's counts
    ],
)
def test_a_plan_within_the_hysteresis_margin_of_the_target_counts_as_re_planned(
    f5_ms, replan_s, note
) -> None:
    # alexnet at 18.88 Mbit/s: the solver picks features_2, the client's estimate a few percent off
    # picks features_5, and hysteresis (10 %) keeps it there. That re-planned; before, the run said
    # "never ran the new plan" and missed the goal on a near-tie.
    schedule = RateSchedule.step(1.1, 18.88, at_s=1.0)
    labels = ["edge-only", "edge-only", "features_5", "features_5", "features_2", "features_2"]
    records = [_request(t, label) for t, label in zip([0.5, 1.0, 1.1, 1.3, 1.5, 1.7], labels, strict=True)]
    targets = {1.1: "edge-only", 18.88: "features_2"}
    priced = {18.88: {"features_2": 100.0, "features_5": f5_ms, "edge-only": 400.0}}
    (step,) = bench_change._steps(schedule, [], targets, records, 2.0, priced=priced, margin=0.10)
    assert step["target_plan"] == "features_2"
    assert step["replan_s"] == pytest.approx(replan_s) and step["exact_replan_s"] == pytest.approx(0.5)
    assert step["note"] == note
    assert list(step["priced_ms"]) == ["features_2", "features_5", "edge-only"]  # cheapest first
    # without prices, only the solver's own plan counts (what the run reported before)
    (plain,) = bench_change._steps(schedule, [], targets, records, 2.0)
    assert plain["replan_s"] == pytest.approx(0.5) and plain["near_plans"] == ["features_2"]
    # a run that never reaches either says so, and the report has both columns
    (never,) = bench_change._steps(schedule, [], targets, records[:2], 2.0, priced=priced, margin=0.10)
    assert never["replan_s"] is None and never["note"].startswith("never ran the new plan")
    said = format_change_markdown({
        "model": "alexnet", "slowdown": 8.0, "schedule": "s", "requests": 6, "duration_s": 2.0,
        "failures": 0, "fallbacks": 0, "switches": 2, "steps": [step],
    })  # fmt: skip
    assert "| to that plan s |" in said and "within its hysteresis margin" in said


def test_schedules_parse(tmp_path: Path) -> None:
    assert [(s.time_s, s.uplink_mbps) for s in parse_schedule("step").steps] == list(DEFAULT_CHANGE)
    one = parse_schedule("18.88:1.1@5")
    assert [(s.time_s, s.uplink_mbps) for s in one.steps] == [(0.0, 18.88), (5.0, 1.1)]
    trace = tmp_path / "trace.csv"
    trace.write_text("# a trace\ntime_s,mbps\n0,5.85\n2.5,0.13\n4,18.88\n", encoding="utf-8")
    assert len(parse_schedule(str(trace))) == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("fast", "neither 'step', BEFORE:AFTER@SECONDS"),
        ("18.88:1.1@0", "the step time must be > 0 s, found 0"),
        ("18.88:0@5", "uplink_mbps must be"),
        ("1..2:3@4", "expected BEFORE:AFTER@SECONDS"),
    ],
)
def test_bad_schedules_are_refused(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_schedule(text)


def test_bad_change_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least one change, found 1 step"):
        run_change("alexnet", RateSchedule([(0.0, 5.0)]))
    with pytest.raises(ConfigError, match=r"longer than the schedule's last step at 5 s, found 3"):
        run_change("alexnet", RateSchedule.step(5.0, 1.0, at_s=5.0), duration_s=3)
    with pytest.raises(ConfigError, match="schedule must be a RateSchedule, found list"):
        run_change("alexnet", [(0, 5.0), (1, 1.0)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected names among"):
        run_change("nope", RateSchedule.step(5.0, 1.0, at_s=1.0))
