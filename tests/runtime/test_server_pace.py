"""ServerPace on its own, with synthetic numbers and an injected clock."""

from __future__ import annotations

import math
import re

import pytest

from splitdnn.errors import ConfigError
from splitdnn.runtime._server_pace import MAX_FACTOR, Load, LoadTracker, ServerPace


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_factor_is_the_median_ratio_once_there_are_enough_requests() -> None:
    pace = ServerPace(min_samples=3, clock=_Clock())
    assert pace.factor == 1.0
    assert pace.observe(10.0, 20.0) and pace.observe(10.0, 21.0)
    assert pace.factor == 1.0  # two of three: the profile still rules
    pace.observe(10.0, 90.0)  # one stall does not move the median far
    assert pace.factor == pytest.approx(2.1)
    assert pace.samples == 3


def test_only_the_last_window_counts() -> None:
    pace = ServerPace(window=3, min_samples=3, clock=_Clock())
    for reported in (50.0, 50.0, 50.0, 10.0, 10.0, 10.0):
        pace.observe(10.0, reported)
    assert pace.factor == pytest.approx(1.0)


def test_old_ratios_expire_and_the_profile_comes_back() -> None:
    clock = _Clock()
    pace = ServerPace(max_age_s=30.0, clock=clock)
    for _ in range(3):
        pace.observe(10.0, 30.0)
    assert pace.factor == pytest.approx(3.0)
    clock.now += 31.0  # edge-only for half a minute: nothing new from the server
    assert pace.factor == 1.0 and pace.samples == 0
    assert pace.due(3.0) == 1.0


def test_with_too_few_recent_ratios_the_factor_in_use_stays_until_none_is_left() -> None:
    """A client sending one request every 12 s kept only two ratios younger than 30 s: the factor
    went back to 1 and came again with every third request."""
    clock = _Clock()
    pace = ServerPace(max_age_s=30.0, min_samples=3, clock=clock)
    for _ in range(3):
        pace.observe(10.0, 30.0)
        clock.now += 12.0
    assert pace.samples == 2 and pace.factor == 1.0  # too few to set a factor...
    assert pace.due(3.0) is None  # ...or to drop the one in use
    clock.now += 30.0
    assert pace.due(3.0) == 1.0  # none left: the profile again


def test_bad_values_are_not_used() -> None:
    pace = ServerPace(min_predicted_ms=1.0, min_samples=1, clock=_Clock())
    for bad in (math.nan, math.inf, -1.0, True, "3"):
        assert not pace.observe(10.0, bad)  # type: ignore[arg-type]
        assert not pace.observe(bad, 10.0)  # type: ignore[arg-type]
    assert pace.samples == 0 and pace.factor == 1.0


def test_a_tiny_tails_answer_counts_for_the_queue_not_the_pace() -> None:
    """A tail of a few microseconds is all fixed cost: its ratio says nothing of the rest of the model;
    the time it waited in the queue is the queue any cut waits. The ratios expire as before, whatever
    tiny answers keep coming: the factor goes back to 1."""
    clock = _Clock()
    pace = ServerPace(min_predicted_ms=1.0, min_samples=2, max_age_s=30.0, clock=clock)
    pace.observe(10.0, 30.0, 0.0)
    pace.observe(10.0, 30.0, 0.0)
    assert pace.factor == pytest.approx(3.0) and pace.due(1.0) == pytest.approx(3.0)
    for _ in range(2):
        assert pace.observe(0.05, 80.5, 80.0)
    assert pace.samples == 2 and pace.queue_samples == 4  # two ratios, four queues (two of them 0)
    assert pace.factor == pytest.approx(3.0)  # the tiny answers leave the ratios alone
    assert pace.queue_ms == pytest.approx(40.0)  # median of 0, 0, 80, 80
    clock.now += 20.0
    for _ in range(8):  # a plan of a tiny tail: its answers fill the queue window, not the ratios
        pace.observe(0.05, 80.5, 80.0)
    assert pace.samples == 2 and pace.queue_ms == pytest.approx(80.0)
    clock.now += 15.0  # the ratios are 35 s old, the tiny answers 15 s
    assert pace.samples == 0 and pace.factor == 1.0 and pace.due(3.0) == 1.0
    assert pace.queue_ms == pytest.approx(80.0)


def test_a_request_held_past_the_give_up_counts_its_excess_as_queue() -> None:
    pace = ServerPace(min_samples=1, clock=_Clock())
    assert pace.held(40.0, 220.0, 2.0)  # 80 ms of compute as priced: 140 more held in the queue
    assert pace.queue_ms == pytest.approx(140.0) and pace.samples == 0 and pace.factor == 1.0
    assert not pace.held(40.0, 70.0, 2.0)  # under the compute as priced: says nothing
    for bad in (math.nan, -1.0, math.inf):
        assert not pace.held(40.0, bad, 1.0) and not pace.held(bad, 220.0, 1.0)
        assert not pace.held(40.0, 220.0, bad)
    assert pace.queue_samples == 1


def test_a_report_stands_for_the_pace_until_a_newer_ratio_and_for_the_queue_until_a_newer_queue() -> None:
    clock = _Clock()
    pace = ServerPace(min_samples=2, clock=clock)
    assert pace.report(2.0, requests=5, arrivals=5, in_flight=1, queue_ms=60.0)
    clock.now += 1.0
    pace.observe(0.05, 10.0, 9.0)  # a tiny tail's answer: a newer queue, no ratio
    assert pace.factor == pytest.approx(2.0) and pace.reported == 5  # the report's pace stands
    assert pace.queue_ms == 0.0 and pace.queue_due(60.0) is None  # one own queue: too few, it stays
    pace.observe(0.05, 12.0, 11.0)
    assert pace.queue_ms == pytest.approx(10.0) and pace.queue_due(60.0) == pytest.approx(10.0)
    pace.observe(10.0, 10.0, 0.0)  # a ratio newer than the report: the client's own evidence rules
    assert pace.reported is None and pace.factor == 1.0 and pace.due(2.0) is None  # one of two


def test_ratios_are_clamped() -> None:
    pace = ServerPace(min_samples=1, clock=_Clock())
    pace.observe(2.0, 1e6)
    assert pace.factor == MAX_FACTOR
    pace.clear()
    pace.observe(1e6, 0.0)
    assert pace.factor == 1 / MAX_FACTOR


def test_due_only_past_the_tolerance_either_way() -> None:
    pace = ServerPace(min_samples=1, window=1, tolerance=0.25, clock=_Clock())
    pace.observe(10.0, 12.0)
    assert pace.due(1.0) is None  # 1.2: within 25 %
    pace.observe(10.0, 13.0)
    assert pace.due(1.0) == pytest.approx(1.3)
    assert pace.due(1.3) is None
    pace.observe(10.0, 10.0)
    assert pace.due(1.3) == pytest.approx(1.0)  # 1.3 / 1.0 > 1.25
    pace.observe(10.0, 7.0)
    assert pace.due(1.0) == pytest.approx(0.7)  # faster than the profile counts too


def test_clear_forgets_every_ratio() -> None:
    pace = ServerPace(min_samples=1, clock=_Clock())
    pace.observe(10.0, 40.0)
    pace.clear()
    assert pace.factor == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window must be an integer >= 1"),
        ({"window": True}, "window must be an integer >= 1"),
        ({"min_samples": 0}, "min_samples must be an integer >= 1"),
        ({"window": 2, "min_samples": 3}, "must not exceed window"),
        ({"max_age_s": 0}, "max_age_s must be a finite number > 0"),
        ({"min_predicted_ms": math.nan}, "min_predicted_ms must be a finite number > 0"),
        ({"tolerance": 1.0}, "tolerance must be a fraction in [0, 1)"),
        ({"tolerance": -0.1}, "tolerance must be a fraction in [0, 1)"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ServerPace(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# the server's own report (a probe's answer) and the tracker that makes it


def test_a_report_over_enough_requests_sets_the_pace_before_any_request_of_the_clients() -> None:
    pace = ServerPace(min_samples=3, clock=_Clock())
    assert pace.report(4.2, requests=12, arrivals=14, in_flight=5)
    assert pace.factor == pytest.approx(4.2) and pace.reported == 12 and pace.samples == 0
    assert pace.due(1.0) == pytest.approx(4.2)
    assert pace.report(1000.0, requests=3, arrivals=3, in_flight=0) and pace.factor == MAX_FACTOR  # clamped


def test_an_idle_server_reports_the_profiles_pace_and_a_busy_one_without_answers_says_nothing() -> None:
    pace = ServerPace(min_samples=3, clock=_Clock())
    assert pace.report(5.0, requests=8, arrivals=9, in_flight=2)
    assert pace.report(0.0, requests=0, arrivals=0, in_flight=0)  # nothing arrived or running: idle
    assert pace.factor == 1.0 and pace.reported == 0
    # a slow request finished at the window's edge, none arrived since: idle too, and said as such
    assert pace.report(3.0, requests=2, arrivals=0, in_flight=0) and pace.reported == 0
    assert pace.due(5.0) == 1.0  # the busy factor in use goes at once, not max_age_s later
    for bad in (math.nan, math.inf, 0.0, -1.0):
        assert not pace.report(bad, requests=5, arrivals=5, in_flight=0)
    assert pace.reported == 0  # the idle report still stands
    # requests it could not measure (other shapes, a long one still running): no account of the
    # pace, and the server is not idle any more: the idle report goes, the client's own evidence rules
    assert not pace.report(0.0, requests=0, arrivals=6, in_flight=0)
    assert pace.reported is None and pace.due(5.0) == 1.0  # no own samples either: the profile
    pace.report(0.0, requests=0, arrivals=0, in_flight=0)
    assert not pace.report(0.0, requests=0, arrivals=0, in_flight=1)
    assert not pace.report(7.0, requests=2, arrivals=2, in_flight=0)
    assert pace.reported is None


def test_the_newest_evidence_decides_between_the_report_and_the_clients_own_requests() -> None:
    clock = _Clock()
    pace = ServerPace(min_samples=3, max_age_s=30.0, clock=clock)
    for _ in range(3):
        pace.observe(10.0, 30.0)
        clock.now += 1.0
    assert pace.factor == pytest.approx(3.0) and pace.reported is None
    pace.report(6.0, requests=10, arrivals=10, in_flight=3)  # newer than the last request: it stands
    assert pace.factor == pytest.approx(6.0) and pace.due(3.0) == pytest.approx(6.0)
    clock.now += 1.0
    pace.observe(10.0, 20.0)  # a request answered since: the client's own ratios decide again
    assert pace.reported is None and pace.factor == pytest.approx(3.0)
    clock.now += 1.0
    pace.report(6.0, requests=10, arrivals=10, in_flight=3)
    clock.now += 31.0  # the report ages out like a ratio, and so have the requests
    assert pace.reported is None and pace.factor == 1.0
    pace.report(6.0, requests=10, arrivals=10, in_flight=3)
    pace.clear()
    assert pace.reported is None and pace.factor == 1.0


def test_the_tracker_reports_each_models_medians_over_its_recent_requests() -> None:
    clock = _Clock()
    tracker = LoadTracker(window=4, max_age_s=10.0, clock=clock)
    assert tracker.report("m") == Load(0.0, 0.0, 0.0, 0, 0)
    # (queue, compute) ms against a 10 ms prediction; the oldest leaves the window of 4
    for queue, compute in ((5.0, 15.0), (10.0, 20.0), (25.0, 15.0), (990.0, 10.0), (30.0, 20.0)):
        tracker.arrived()
        tracker.observe("m", 10.0, queue, compute)
    tracker.arrived()
    tracker.observe("m", 0.5, 0.0, 100.0)  # a tail predicted under 1 ms: all fixed cost, not used
    for bad in (math.nan, -1.0, math.inf):
        tracker.observe("m", 10.0, bad, 10.0)  # not counted either
        tracker.observe("m", 10.0, 10.0, bad)
    tracker.observe("other", 10.0, 0.0, 10.0)
    m = tracker.report("m")
    # totals 3, 4, 10 (clamped from 100), 5: median 4.5; compute 2, 1.5, 1, 2: 1.75; queue 10, 25, 990, 30
    assert m == Load(pytest.approx(4.5), pytest.approx(1.75), pytest.approx(27.5), 4, 6)
    # arrivals are the server's, any model
    assert tracker.report("other") == Load(pytest.approx(1.0), pytest.approx(1.0), 0.0, 1, 6)
    clock.now += 5.0
    tracker.arrived()  # arrived, not measured (yet)
    clock.now += 6.0
    assert tracker.report("m") == Load(0.0, 0.0, 0.0, 0, 1)  # not idle: one arrived within the window
    # a model nobody asked for: the server is busy all the same
    assert tracker.report("third") == Load(0.0, 0.0, 0.0, 0, 1)
    clock.now += 5.0
    assert tracker.report("m") == Load(0.0, 0.0, 0.0, 0, 0)


# --------------------------------------------------------------------------------------------------
# the queue, priced apart from the compute


def test_the_queue_is_taken_out_of_the_ratio_and_kept_apart() -> None:
    pace = ServerPace(min_samples=3, clock=_Clock())
    for queue in (40.0, 60.0, 50.0):
        assert pace.observe(10.0, 20.0 + queue, queue)  # 20 ms of compute after the queue
    assert pace.factor == pytest.approx(2.0) and pace.queue_ms == pytest.approx(50.0)
    assert pace.due(1.0) == pytest.approx(2.0) and pace.queue_due(0.0) == pytest.approx(50.0)
    # a queue over the reported time is a server's rounding: the whole time was the queue
    pace.clear()
    for _ in range(3):
        pace.observe(10.0, 30.0, 31.0)
    assert pace.queue_ms == pytest.approx(30.0) and pace.factor == 1 / MAX_FACTOR


def test_a_single_factor_would_have_priced_a_queue_by_the_tail_it_was_measured_with() -> None:
    """A 100 ms queue ahead of a 10 ms tail: one factor read 11 (cut to MAX_FACTOR); the compute's own
    pace is 1, and the queue stands apart for any cut."""
    pace = ServerPace(min_samples=1, clock=_Clock())
    pace.observe(10.0, 110.0, 100.0)
    assert pace.factor == pytest.approx(1.0) and pace.queue_ms == pytest.approx(100.0)


def test_bad_queues_are_not_used() -> None:
    pace = ServerPace(min_samples=1, clock=_Clock())
    for bad in (math.nan, math.inf, -1.0, True, "3"):
        assert not pace.observe(10.0, 20.0, bad)  # type: ignore[arg-type]
        assert not pace.report(2.0, requests=5, arrivals=5, in_flight=0, queue_ms=bad)  # type: ignore[arg-type]
    assert pace.samples == 0 and pace.queue_ms == 0.0 and pace.reported is None


def test_queue_due_only_past_the_tolerance_and_the_floor() -> None:
    clock = _Clock()
    pace = ServerPace(min_samples=1, window=1, tolerance=0.25, min_queue_move_ms=2.0, clock=clock)
    pace.observe(10.0, 10.003, 0.003)  # an idle server's few microseconds
    assert pace.queue_due(0.0) is None
    pace.observe(10.0, 11.5, 1.5)
    assert pace.queue_due(0.0) is None  # under the 2 ms floor
    pace.observe(10.0, 60.0, 50.0)
    assert pace.queue_due(0.0) == pytest.approx(50.0)
    assert pace.queue_due(45.0) is None  # within 25 % of 50
    assert pace.queue_due(30.0) == pytest.approx(50.0)
    clock.now += 31.0  # nothing recent: no queue
    assert pace.queue_due(50.0) == 0.0


def test_a_report_carries_the_queue_and_an_idle_one_clears_it() -> None:
    pace = ServerPace(min_samples=3, clock=_Clock())
    assert pace.report(1.5, requests=10, arrivals=12, in_flight=4, queue_ms=80.0)
    assert pace.factor == pytest.approx(1.5) and pace.queue_ms == pytest.approx(80.0)
    assert pace.queue_due(0.0) == pytest.approx(80.0)
    assert pace.report(0.0, requests=0, arrivals=0, in_flight=0, queue_ms=80.0)  # idle: no queue
    assert pace.queue_ms == 0.0 and pace.queue_due(80.0) == 0.0


def test_a_bad_queue_floor_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="min_queue_move_ms must be a finite number > 0"):
        ServerPace(min_queue_move_ms=0.0)
