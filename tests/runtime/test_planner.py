"""The client's planner: link estimation from (bytes, ms) samples and re-planning with hysteresis."""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitdnn.errors import ConfigError, InfeasibleError, PlanError, ProfileError
from splitdnn.runtime._estimator import _theil_sen
from splitdnn.runtime.planner import (
    Hysteresis,
    LinkEstimator,
    Planner,
    plan_key,
    remote_ms,
    scale_profile,
)
from splitdnn.schema import CodecResult, Link, Profile
from splitdnn.solver import accuracy_table_from_dict
from splitdnn.solver.synthetic import SynthNode, make_profiles

MB = 1_000_000


def _network_ms(link: Link, up: int, down: int = 0) -> float:
    return link.rtt_ms + link.uplink_ms(up) + link.downlink_ms(down)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------------------------------
# link estimator


def test_two_sizes_separate_rtt_from_bandwidth() -> None:
    true = Link(5.0, rtt_ms=20.0)
    est = LinkEstimator(Link(50.0, rtt_ms=1.0), alpha=1.0)
    for up in (10_000, 200_000, 10_000, 200_000, 10_000, 200_000):
        est.observe(up, 0, _network_ms(true, up))
    assert est.fitted
    assert est.link.uplink_mbps == pytest.approx(5.0, rel=1e-6)
    assert est.link.rtt_ms == pytest.approx(20.0, rel=1e-6)


def test_a_bursty_link_is_priced_right_past_its_burst() -> None:
    # a token bucket: the first 62.5 kB go at once, the rest at 100 Mbit/s, 20 ms RTT
    def shaped_ms(up: int) -> float:
        return 20.0 + max(0, up - 62_500) * 8 / 100e3

    est = LinkEstimator(Link(100.0, rtt_ms=20.0), alpha=1.0)
    est.observe_ping(20.0)
    est.observe_ping(20.0)
    est.observe(100_000, 0, shaped_ms(100_000))  # one size and pings: the burst reads as speed
    assert est.link.uplink_mbps > 2 * 100.0
    est.observe(256_000, 0, shaped_ms(256_000))  # a second size (a probe): the pings leave the fit
    for _ in range(3):
        est.observe(100_000, 0, shaped_ms(100_000))
    assert est.fitted
    lk = est.link
    assert lk.uplink_mbps == pytest.approx(100.0, rel=0.02)
    for up in (100_000, 602_000, 2_000_000):  # every transfer past the burst, the larger ones too
        assert _network_ms(lk, up) == pytest.approx(shaped_ms(up), rel=0.02)


class _JitteryLink:
    """A link whose round trips run late by seeded noise: ``spread`` ms either way (uniform), or with
    ``late_share`` > 0, only late: that share of them by up to ``spread`` ms."""

    def __init__(self, link: Link, spread: float, *, late_share: float = 0.0, seed: int = 0) -> None:
        self.link, self.spread, self.late_share = link, spread, late_share
        self.rng = np.random.default_rng(seed)

    def ms(self, up: int) -> float:
        if self.late_share:
            late = self.rng.uniform(0.0, self.spread) if self.rng.random() < self.late_share else 0.0
        else:
            late = self.rng.uniform(-self.spread, self.spread)
        return _network_ms(self.link, up) + late

    def started(self, est: LinkEstimator) -> LinkEstimator:
        """``est`` after the client's start-up: three pings and its two sized probes."""
        for _ in range(3):
            est.observe_ping(self.ms(0))
        for up in (131_072, 262_144):
            est.observe(up, 0, self.ms(up))
        return est


class _BurstyLink(_JitteryLink):
    """A token bucket that lets ``burst`` bytes through at once, then the link's rate; pings take its
    RTT; every time runs late by up to ``jitter`` ms (seeded)."""

    def __init__(self, mbps: float, *, burst: int = 50_000, rtt_ms: float = 9.0, jitter: float = 0.2) -> None:
        super().__init__(Link(mbps, rtt_ms=rtt_ms), jitter, late_share=1.0, seed=7)
        self.burst = burst

    def ms(self, up: int) -> float:
        return super().ms(max(0, up - self.burst))

    def started(self, est: LinkEstimator) -> LinkEstimator:
        """``est`` after the client's start-up (three pings, its two sized probes) and ten requests."""
        super().started(est)
        for _ in range(10):
            est.observe(100_000, 0, self.ms(100_000))
        return est


def test_a_step_of_a_bursty_link_keeps_the_intercept_its_transfers_showed() -> None:
    # 100 kB over a 50 kB burst at 50 Mbit/s take 9 + 8 ms; a ping 9 ms. After a step the window
    # holds the pings and one transfer: anchored at the pings again (as before), the intercept rose
    # to the ping's 9 ms and every later 100 kB request read as 90-100 Mbit/s (bench_deadline's
    # clients: up to 650 Mbit/s on a 50 Mbit/s link)
    wire = _BurstyLink(50.0)
    est = wire.started(LinkEstimator(Link(50.0, rtt_ms=9.0)))
    assert est.link.uplink_mbps == pytest.approx(50.0, rel=0.05)
    intercept = est.link.rtt_ms
    assert intercept < 2.0  # 9 ms less the burst's 8 ms
    wire.link = Link(5.0, rtt_ms=9.0)
    est.observe(100_000, 0, wire.ms(100_000))  # a slow spell: 80 ms past the burst
    assert est.stepped and est.link.uplink_mbps < 10.0  # (its first 50 kB still went at once)
    wire.link = Link(50.0, rtt_ms=9.0)
    for k in range(12):
        if k % 3 == 0:  # pings keep coming: 9 ms, and one 10 ms late (behind a request given up)
            est.observe_ping(wire.ms(0) + (10.0 if k == 3 else 0.0))
        est.observe(100_000, 0, wire.ms(100_000))
    assert est.link.rtt_ms == pytest.approx(intercept, abs=0.5)
    assert est.link.uplink_mbps == pytest.approx(50.0, rel=0.15)
    # a 20 kB transfer fits in the burst (a ping's time): beside the 100 kB ones it made a line of
    # 9.7 ms and 100 Mbit/s; it is left out of the fit
    est.observe(20_000, 0, wire.ms(20_000))
    for _ in range(3):
        est.observe(100_000, 0, wire.ms(100_000))
    assert est.link.rtt_ms == pytest.approx(intercept, abs=0.5)
    assert est.link.uplink_mbps == pytest.approx(50.0, rel=0.15)
    for up in (100_000, 600_000):  # priced right past the burst
        assert _network_ms(est.link, up) == pytest.approx(wire.ms(up), abs=1.0)


@pytest.mark.parametrize("later_ms", [120.0, 60.0])
def test_a_fit_over_transfers_at_two_rates_leaves_the_rtt_alone(later_ms: float) -> None:
    # after a step down, a transfer that started slow and ended fast: a line through the two
    # transfers alone meets the axis at 68 ms, over the 9 ms pings, which no link explains (before:
    # the RTT went halfway there); or the larger one took less time than the smaller one
    wire = _BurstyLink(50.0)
    est = wire.started(LinkEstimator(Link(50.0, rtt_ms=9.0)))
    wire.link = Link(5.0, rtt_ms=9.0)
    est.observe(100_000, 0, wire.ms(100_000))  # 89 ms
    rtt = est.link.rtt_ms
    est.observe_ping(wire.ms(0))
    est.observe(250_000, 0, later_ms)
    assert not est.fitted and est.link.rtt_ms == rtt
    assert est.link.uplink_mbps < 50.0


def test_a_request_given_up_is_in_no_fit() -> None:
    # its time is a bound (the transfer took at least that long); in a fit beside a 10 kB transfer at
    # the new rate it made a line through 120 ms, and the RTT went there (before)
    link = Link(50.0, rtt_ms=5.0)
    est = LinkEstimator(link)
    for _ in range(5):
        est.observe(100_000, 0, _network_ms(link, 100_000))
    est.observe_overdue(100_000, 300.0)
    assert est.stepped
    est.observe(10_000, 0, _network_ms(Link(0.6, rtt_ms=5.0), 10_000))
    assert not est.stepped and not est.fitted and est.link.rtt_ms == pytest.approx(5.0)


def test_a_request_given_up_is_a_step_down_even_under_step_ratio() -> None:
    def settled() -> LinkEstimator:
        est = LinkEstimator(Link(18.88, rtt_ms=20.0), alpha=0.25)  # step_ratio 5
        est.observe_ping(20.0)
        for _ in range(4):
            est.observe(117_000, 0, _network_ms(Link(18.88, rtt_ms=20.0), 117_000))
        return est

    # given up after 220 ms: the transfer took 200 ms or more past the RTT, 4x the 49.6 ms expected
    est = settled()
    est.observe_overdue(117_000, 220.0)
    assert est.stepped and est.steps == 1
    # restarted step_ratio x under the rate it shows (an upper bound: the transfer was not done)
    assert est.link.uplink_mbps == pytest.approx(117_000 * 8 / 200e3 / 5, rel=0.01)
    # the same time as an answered request: 4x slower than expected is under step_ratio: smoothed
    plain = settled()
    plain.observe(117_000, 0, 220.0)
    assert not plain.stepped and plain.link.uplink_mbps > 2 * est.link.uplink_mbps
    # given up, but not slower than the estimate: no step
    quick = settled()
    quick.observe_overdue(117_000, 60.0)
    assert not quick.stepped and quick.link.uplink_mbps > 15.0
    with pytest.raises(ConfigError, match="bytes_up"):
        quick.observe_overdue(-1, 10.0)
    with pytest.raises(ConfigError, match="network_ms"):
        quick.observe_overdue(1000, float("nan"))


@pytest.mark.parametrize("probe_ms", [45.0, 60.0, 72.0])
def test_a_probe_at_the_fallen_rate_after_a_request_given_up_is_no_step_back(probe_ms) -> None:
    # the bench's step, 18.88 -> 1.1 Mbit/s: a request given up after 330 ms sets the estimate 5 x
    # under the bound it shows (0.56 Mbit/s), a ping runs late while the link drains it, and the
    # edge-only plan's 8 kB probe crosses at about the new rate (1-1.7 Mbit/s with the burst): 2-3 x
    # faster than the estimate. Taken for a step back within three samples of the step down, it
    # restored 19.5 Mbit/s, and the next request went into the slow link and was given up too.
    link = Link(18.88, rtt_ms=17.5)
    est = LinkEstimator(link)
    est.observe(8275, 0, 21.0)  # the start-up probe's two sizes, and pings over their intercept:
    for i in range(12):  # the shaper's burst, as measured there (pings 24-30 ms, intercept 17.4)
        est.observe(121_677, 0, 67.5 + (0.5 if i % 2 else -0.5))
        if i % 4 == 0:
            est.observe_ping(24.0 + i / 4)
    est.observe(117_489, 0, 166.0)  # the request in flight at the step: late, under step_ratio x
    est.observe_overdue(117_489, 330.0)
    assert est.stepped and est.link.uplink_mbps < 1.0
    est.observe_ping(293.0)
    est.observe(8275, 0, probe_ms)
    assert not est.stepped and 0.5 < est.link.uplink_mbps < 2.0


def test_the_climb_from_a_request_given_up_is_not_jitter() -> None:
    # the bench's step run, traced: after a request given up, the estimate sits 5 x under its bound
    # (0.46 Mbit/s on a 1.1 link), and each probe until it caught up read 12-90 ms faster than it.
    # Taken for jitter, those residuals widened the window's spread so far that, when the link came
    # back to 18.88 Mbit/s, a probe 18 x faster than the estimate was no step: the estimate climbed
    # by smoothing, and the client re-planned after 2.7-4.0 s instead of one probe
    est = LinkEstimator(Link(18.88, rtt_ms=18.0))
    est.observe(8275, 0, 21.5)  # the start-up probe's two sizes, pings over their intercept: a burst
    for i in range(12):
        est.observe(121_677, 0, 67.2 + (0.4 if i % 2 else -0.4))
        if i % 4 == 0:
            est.observe_ping(24.0 + i / 4)
    est.observe_overdue(117_489, 428.7)
    assert est.stepped and est.link.uplink_mbps < 0.6
    # at 1.1 Mbit/s: the late ping, then the probes (sizes and times as traced) with pings between
    for ping, size, ms in [(36.3, 8198, 71.4), (28.6, 8904, 77.3), (33.7, 11280, 93.6), (29.0, 12888, 105.5),
                           (26.8, 13843, 112.7), (24.8, 14309, 115.5)]:  # fmt: skip
        est.observe_ping(ping)
        est.observe(size, 0, ms)
        assert not est.stepped
    assert 0.9 < est.link.uplink_mbps < 1.3
    est.observe_ping(25.0)
    est.observe(14571, 0, 24.0)  # back at 18.88 Mbit/s
    assert est.stepped and est.link.uplink_mbps > 8.0


def test_pings_anchor_the_rtt_for_a_single_cut() -> None:
    true = Link(1.1, rtt_ms=40.0)
    est = LinkEstimator(Link(18.0, rtt_ms=5.0), alpha=1.0)
    est.observe_ping(40.0)
    est.observe_ping(40.0)
    for _ in range(4):
        est.observe(120_000, 4_000, _network_ms(true, 120_000, 4_000))
    assert est.fitted
    assert est.link.rtt_ms == pytest.approx(40.0, rel=1e-6)
    assert est.link.uplink_mbps == pytest.approx(1.1, rel=1e-6)


def test_same_size_samples_keep_the_rtt_and_measure_bandwidth() -> None:
    # one cut, no pings: the data cannot tell RTT from bandwidth; the prior RTT stays
    true = Link(2.0, rtt_ms=30.0)
    est = LinkEstimator(Link(20.0, rtt_ms=30.0))
    for _ in range(5):
        est.observe(100_000, 0, _network_ms(true, 100_000))
    assert not est.fitted
    assert est.link.rtt_ms == 30.0
    assert est.link.uplink_mbps == pytest.approx(2.0, rel=1e-6)


def test_first_sample_replaces_the_prior_then_ewma_smooths() -> None:
    est = LinkEstimator(Link(100.0, rtt_ms=0.0), alpha=0.25)
    est.observe(100_000, 0, Link(1.0).uplink_ms(100_000))  # 800 ms: 1 Mbit/s
    assert est.link.uplink_mbps == pytest.approx(1.0, rel=1e-6)
    est.observe(100_000, 0, Link(4.0).uplink_ms(100_000))  # a single 4 Mbit/s sample
    # the window median (two samples: mean of per-byte times) moves the estimate, damped by alpha
    assert 1.0 < est.link.uplink_mbps < 1.6


def test_a_small_outlier_does_not_move_the_estimate_much() -> None:
    true = Link(5.0, rtt_ms=20.0)
    est = LinkEstimator(Link(5.0, rtt_ms=20.0), alpha=1.0)
    for up in (10_000, 200_000) * 5:
        est.observe(up, 0, _network_ms(true, up))
    est.observe(200_000, 0, _network_ms(true, 200_000) + 600.0)  # a stall under step_ratio x
    assert not est.stepped
    assert est.link.uplink_mbps == pytest.approx(5.0, rel=0.15)
    assert est.link.rtt_ms == pytest.approx(20.0, abs=5.0)


def test_a_large_stall_is_undone_by_the_next_sample() -> None:
    true = Link(5.0, rtt_ms=20.0)
    est = LinkEstimator(Link(5.0, rtt_ms=20.0), alpha=1.0)
    for up in (10_000, 200_000) * 5:
        est.observe(up, 0, _network_ms(true, up))
    est.observe(200_000, 0, _network_ms(true, 200_000) + 2_000.0)  # 7x: looks like a collapse
    assert est.stepped and est.link.uplink_mbps < 1.0
    est.observe(200_000, 0, _network_ms(true, 200_000))  # the link was fine: a step back
    assert est.stepped and est.steps == 2
    assert est.link.uplink_mbps == pytest.approx(5.0, rel=0.05)
    assert est.link.rtt_ms == pytest.approx(20.0, abs=1.0)


def test_a_collapse_shows_after_one_request() -> None:
    fast, slow = Link(20.0, rtt_ms=20.0), Link(1.0, rtt_ms=20.0)
    est = LinkEstimator(fast)
    est.observe_ping(20.0)
    for _ in range(10):
        est.observe(100_000, 0, _network_ms(fast, 100_000))
    assert est.link.uplink_mbps == pytest.approx(20.0, rel=1e-6) and not est.stepped
    est.observe(100_000, 0, _network_ms(slow, 100_000))
    assert est.stepped and est.link.uplink_mbps == pytest.approx(1.0, rel=1e-6)
    est.observe(100_000, 0, _network_ms(slow, 100_000))
    assert not est.stepped and est.link.uplink_mbps == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(("after_mbps", "stepped"), [(30.0, True), (12.0, False)])
def test_a_request_twice_as_fast_right_after_a_step_down_is_a_step_back(after_mbps, stepped) -> None:
    # a link that flaps (bench_deadline's: 50 Mbit/s, a sixth of it now and then): one request in a
    # slow spell is a step down, and the next crossed the link mostly after it, at 30 Mbit/s. Before,
    # that was no step (3.6 x, under step_ratio): averaged with the slow one, the estimate went to
    # 10 Mbit/s, and passed 25 only on the fourth request. Within three samples of a step down, a step back
    # up needs what a second step the same way does: twice as fast. Not 1.4 x (a slow link's noise)
    fast = Link(50.0, rtt_ms=5.0)
    wire = _JitteryLink(fast, 0.2, late_share=0.5, seed=3)
    est = wire.started(LinkEstimator(fast))
    for _ in range(10):
        est.observe(150_000, 0, wire.ms(150_000))
    est.observe(150_000, 0, _network_ms(Link(50.0 / 6, rtt_ms=5.0), 150_000))
    assert est.stepped and est.link.uplink_mbps == pytest.approx(50.0 / 6, rel=0.05)
    est.observe(150_000, 0, _network_ms(Link(after_mbps, rtt_ms=5.0), 150_000))
    assert est.stepped == stepped
    if stepped:  # restarted from the sample (not the estimate from before the step: it does not fit)
        assert est.link.uplink_mbps == pytest.approx(after_mbps, rel=0.05)
    else:
        assert 50.0 / 6 < est.link.uplink_mbps < after_mbps


def test_steps_can_be_turned_off() -> None:
    fast, slow = Link(20.0, rtt_ms=20.0), Link(1.0, rtt_ms=20.0)
    est = LinkEstimator(fast, step_ratio=None)
    est.observe_ping(20.0)
    for _ in range(10):
        est.observe(100_000, 0, _network_ms(fast, 100_000))
    est.observe(100_000, 0, _network_ms(slow, 100_000))
    assert not est.stepped and est.link.uplink_mbps > 10.0  # median of three: one may be a stall
    with pytest.raises(ConfigError, match="step_ratio"):
        LinkEstimator(fast, step_ratio=1.0)


def test_a_recovery_seen_by_one_probe_is_not_poisoned_by_old_samples() -> None:
    # edge-only on a slow link: pings and small probes (one size), then the link comes back
    slow, fast = Link(1.1, rtt_ms=20.0), Link(18.88, rtt_ms=20.0)
    est = LinkEstimator(Link(18.88, rtt_ms=20.0))
    for _ in range(12):
        est.observe_ping(20.0)
        est.observe(8192, 10, _network_ms(slow, 8192, 10))
    assert est.link.uplink_mbps == pytest.approx(1.1, rel=0.01)
    est.observe_ping(20.0)
    est.observe(8192, 10, _network_ms(fast, 8192, 10))  # one probe on the recovered link
    assert est.stepped
    assert est.link.uplink_mbps == pytest.approx(18.88, rel=0.05)
    assert est.link.rtt_ms == pytest.approx(20.0, abs=0.5)
    assert [s.bytes_up for s in est.samples].count(8192) == 1  # the slow probes left the window


def test_a_tiny_transfer_does_not_claim_infinite_bandwidth() -> None:
    est = LinkEstimator(Link(5.0, rtt_ms=20.0))
    est.observe(100_000, 0, _network_ms(Link(5.0, rtt_ms=20.0), 100_000))
    est.observe(200, 0, 19.0)  # faster than the RTT: noise
    assert est.link.uplink_mbps == pytest.approx(5.0, rel=1e-6)
    est.observe(200, 0, 60.0)  # but a tiny request that takes far longer does count
    assert est.link.uplink_mbps < 5.0


def test_old_samples_expire() -> None:
    clock = FakeClock()
    est = LinkEstimator(Link(10.0), max_age_s=10.0, clock=clock)
    est.observe(1000, 0, 5.0)
    clock.t = 11.0
    est.observe(1000, 0, 5.0)
    assert len(est.samples) == 1


def test_downlink_bytes_count_at_the_downlink_speed() -> None:
    true = Link(1.0, downlink_mbps=10.0, rtt_ms=10.0)
    est = LinkEstimator(Link(2.0, downlink_mbps=20.0, rtt_ms=10.0), alpha=1.0)
    for up, down in ((10_000, 400_000), (100_000, 400_000)) * 3:
        est.observe(up, down, _network_ms(true, up, down))
    assert est.link.uplink_mbps == pytest.approx(1.0, rel=1e-6)
    assert est.link.downlink_mbps == pytest.approx(10.0, rel=1e-6)


@pytest.mark.parametrize("late_share", [0.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_small_transfer_over_a_jittery_fast_link_neither_flaps_nor_runs_low(
    late_share: float, seed: int
) -> None:
    # 4 KiB at 1 Gbit/s takes 0.03 ms of a 1 ms round trip that wanders by 0.3 ms (or, a third of the
    # time, runs up to 0.9 ms late): before the jitter was measured, 92 to 132 of these 300 requests
    # stepped (each a re-plan), and the estimate ended anywhere from 151 to 1589 Mbit/s
    wire = _JitteryLink(
        Link(1000.0, rtt_ms=1.0), 0.9 if late_share else 0.3, late_share=late_share, seed=seed
    )
    est = wire.started(LinkEstimator(Link(1000.0, rtt_ms=1.0)))
    steps = est.steps
    for _ in range(300):
        est.observe(4096, 0, wire.ms(4096))
    assert est.steps - steps <= 3
    assert est.link.uplink_mbps > 350.0


def test_a_fall_on_a_jittery_link_shows_at_once() -> None:
    # 12 kB over 100 Mbit/s (1 ms) in a 10 ms round trip that wanders by 2 ms, then 5 Mbit/s (19 ms)
    wire = _JitteryLink(Link(100.0, rtt_ms=10.0), 2.0)
    est = wire.started(LinkEstimator(Link(100.0, rtt_ms=10.0)))
    for _ in range(50):
        est.observe(12_000, 0, wire.ms(12_000))
    steps, wire.link = est.steps, Link(5.0, rtt_ms=10.0)
    est.observe(12_000, 0, wire.ms(12_000))
    assert est.stepped and est.steps == steps + 1
    assert est.link.uplink_mbps == pytest.approx(5.0, rel=0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_fall_smaller_than_the_jitter_shows_when_it_stays(seed: int) -> None:
    # 12 kB over 100 Mbit/s (1 ms) in a 10 ms round trip of which 30 % run up to 4 ms late; then
    # 14 Mbit/s (6.9 ms): less than twice a late round trip over the estimate, which one request
    # alone does not show, but every request from then on
    wire = _JitteryLink(Link(100.0, rtt_ms=10.0), 4.0, late_share=0.3, seed=seed)
    est = wire.started(LinkEstimator(Link(100.0, rtt_ms=10.0)))
    for _ in range(50):
        est.observe(12_000, 0, wire.ms(12_000))
    steps, wire.link = est.steps, Link(14.0, rtt_ms=10.0)
    for _ in range(3):
        est.observe(12_000, 0, wire.ms(12_000))
    assert est.steps == steps + 1
    assert est.link.uplink_mbps < 40.0


def test_a_stall_of_one_small_request_is_undone_whole() -> None:
    # a transfer hidden in the RTT: one request stalls 20 ms (a step down), the next is back to
    # normal; the estimate returns to what it was, not just step_ratio x up from the stall
    wire = _JitteryLink(Link(1000.0, rtt_ms=1.0), 0.3, seed=4)
    est = wire.started(LinkEstimator(Link(1000.0, rtt_ms=1.0)))
    for _ in range(40):
        est.observe(4096, 0, wire.ms(4096))
    before = est.link.uplink_mbps
    est.observe(4096, 0, wire.ms(4096) + 20.0)
    assert est.stepped and est.link.uplink_mbps < 10.0
    est.observe(4096, 0, wire.ms(4096))
    assert est.stepped and est.link.uplink_mbps == pytest.approx(before, rel=1e-6)


def test_negative_network_time_is_clamped_and_bad_input_refused() -> None:
    est = LinkEstimator(Link(10.0))
    est.observe(1000, 0, -0.5)  # clocks of two machines: tiny negatives happen
    assert est.samples[-1].network_ms == 0.0
    with pytest.raises(ConfigError, match="bytes_up"):
        est.observe(-1, 0, 1.0)
    with pytest.raises(ConfigError, match="window"):
        LinkEstimator(Link(10.0), window=1)


# --------------------------------------------------------------------------------------------------
# planner


def _profiles(with_codec: bool = False) -> tuple[Profile, Profile]:
    """x (1 MB) -> a (10 ms, 1 MB) -> b (10 ms, 10 kB) -> c (100 ms, 4 kB) -> out; server 10x faster."""
    nodes = [
        SynthNode("x", "placeholder", nbytes=MB),
        SynthNode("a", inputs=("x",), ms=10.0, nbytes=MB),
        SynthNode("b", inputs=("a",), ms=10.0, nbytes=10_000),
        SynthNode("c", inputs=("b",), ms=100.0, nbytes=4_000),
        SynthNode("output", "output", inputs=("c",), nbytes=4_000),
    ]
    device, server = make_profiles(nodes, (1.0, 10.0))
    if with_codec:
        zstd = CodecResult("zstd", 2_000, 1.0, 0.5, 0.0, 0.0, 1.0)

        def add(p: Profile) -> Profile:
            nodes = tuple(dataclasses.replace(n, codecs=(zstd,)) if n.name == "b" else n for n in p.nodes)
            return dataclasses.replace(p, nodes=nodes)

        device, server = add(device), add(server)
    return device, server


def test_a_device_profile_with_a_codec_this_build_lacks_is_refused_a_servers_is_not() -> None:
    """A plan would pick the device's unknown codec, and the first request fail to encode; the server's
    measurements only price decoding, so a codec only a newer server lists is never chosen."""
    device, server = _profiles(with_codec=True)
    odd = CodecResult("zstd+lz9", 1_000, 1.0, 0.5, 0.0, 0.0, 1.0)

    def listing(p: Profile) -> Profile:
        nodes = tuple(
            dataclasses.replace(n, codecs=(*n.codecs, odd)) if n.name == "b" else n for n in p.nodes
        )
        return dataclasses.replace(p, nodes=nodes)

    with pytest.raises(
        ProfileError, match="lists codec 'zstd\\+lz9' on node 'b', which this splitdnn cannot"
    ):
        Planner(listing(device), server, Link(10.0, rtt_ms=20.0))
    plan = Planner(device, listing(server), Link(10.0, rtt_ms=20.0)).plan
    assert all(b.codec != "zstd+lz9" for b in plan.boundary)


def test_an_unknown_codec_name_is_said_to_be_unknown() -> None:
    device, server = _profiles(with_codec=True)
    with pytest.raises(ConfigError, match="unknown codec 'nosuch'; known codecs"):
        Planner(device, server, Link(10.0), codecs=["zstd", "nosuch"])


def _two_tensor_cut() -> tuple[Profile, Profile]:
    """p -> (b1, b2: 30 kB each) -> c1 (10 kB) -> c2: the best cut sends b1 and b2 (device runs p, b1
    and b2 fast, the server c1 and c2); the next best sends c1 (the device runs c1 too, 50 ms)."""
    nodes = [
        SynthNode("x", "placeholder", nbytes=100_000),
        SynthNode("p", inputs=("x",), nbytes=100_000),
        SynthNode("b1", inputs=("p",), nbytes=30_000),
        SynthNode("b2", inputs=("p",), nbytes=30_000),
        SynthNode("c1", inputs=("b1", "b2"), nbytes=10_000),
        SynthNode("c2", inputs=("c1",), nbytes=1_000),
        SynthNode("output", "output", inputs=("c2",), nbytes=1_000),
    ]
    ms = [[0, 1, 1, 1, 50, 1000, 0], [0, 1000, 1000, 1000, 1, 1, 0]]
    device, server = make_profiles(nodes, tier_ms=ms)
    return device, server


def test_a_cut_whose_tensors_together_are_over_the_message_cap_is_not_chosen() -> None:
    """Each tensor was checked against the cap alone: the planner chose a cut whose 60 kB request the
    64 KiB cap (48 KiB for tensors) refuses, and every infer() raised."""
    device, server = _two_tensor_cut()
    link = Link(100.0, rtt_ms=1.0)
    assert set(Planner(device, server, link).plan.boundary_nodes) == {"b1", "b2"}
    capped = Planner(device, server, link, max_message_bytes=64 << 10)
    assert capped.plan.boundary_nodes == ("c1",) and not capped.plan.exact
    # a cap each tensor is over is priced in the solver as before (exact)
    small = Planner(device, server, link, max_message_bytes=(16 << 10) + 5_000)
    assert small.plan.strategy == "edge-only"


def test_a_cut_told_to_be_avoided_is_left_for_the_best_other_one() -> None:
    device, server = _two_tensor_cut()
    planner = Planner(device, server, Link(100.0, rtt_ms=1.0))
    first = planner.plan
    planner.avoid(first, "a request of it was over the cap")
    assert planner.plan.boundary_nodes == ("c1",) and planner.switches == 1
    assert planner.replan(Link(100.0, rtt_ms=1.0)).plan.boundary_nodes == ("c1",)
    assert planner.best(Link(1000.0, rtt_ms=1.0)).boundary_nodes != first.boundary_nodes


def test_avoided_cuts_carry_over_and_edge_only_is_never_avoided() -> None:
    device, server = _two_tensor_cut()
    link = Link(100.0, rtt_ms=1.0)
    planner = Planner(device, server, link)
    planner.avoid(planner.plan, "over the cap")
    # a planner replacing this one (the client rebuilds it when it learns the server's profile or cap)
    again = Planner(device, server, link, avoided=planner.avoided)
    assert again.plan.boundary_nodes == ("c1",) and dict(again.avoided) == dict(planner.avoided)
    edge = Planner(device, server, Link(0.001, rtt_ms=1.0))
    assert edge.plan.strategy == "edge-only"
    edge.avoid(edge.plan, "nothing is sent: nothing to avoid")
    assert not edge.avoided and edge.plan.strategy == "edge-only"


def test_a_fallback_plan_for_a_large_model_is_chosen_among_spaced_cuts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every cut in graph order was priced, each with the solver's problem built afresh: 0.16 s for a
    175-node model and 5.5 s for a 1000-node one, on every re-plan, holding the client's lock. Past 256
    compute nodes the candidates are the chain cuts and 256 spaced cuts, priced with one problem."""
    from splitdnn import solver

    n = 600  # every node reads the input too: no chain cut, so the spaced cuts are all there is
    nodes = [SynthNode("x", "placeholder", nbytes=4_000)]
    for i in range(n):
        nodes.append(SynthNode(f"n{i}", inputs=(f"n{i - 1}", "x") if i else ("x",), ms=1.0, nbytes=40_000))
    nodes.append(SynthNode("output", "output", inputs=(f"n{n - 1}",), nbytes=40_000))
    device, server = make_profiles(nodes, (1.0, 10.0))
    assert solver.chain_cuts(device) == []
    planner = Planner(device, server, Link(100.0, rtt_ms=1.0))
    first = planner.plan
    assert first.strategy != "edge-only"
    priced: list[int] = []
    ranked = solver.ranked

    def counting(profiles: Any, links: Any, candidates: Any, **kw: Any) -> Any:
        priced.append(len(candidates))
        return ranked(profiles, links, candidates, **kw)

    monkeypatch.setattr(solver, "ranked", counting)
    planner.avoid(first, "over the cap")
    assert priced == [257]  # 0..600 in 256 steps, both ends included
    assert planner.plan.tiers != first.tiers and not planner.plan.exact


def test_planner_picks_the_solver_plan_per_bandwidth() -> None:
    device, server = _profiles()
    slow = Planner(device, server, Link(0.01, rtt_ms=20.0))
    assert slow.plan.strategy == "edge-only"
    mid = Planner(device, server, Link(10.0, rtt_ms=20.0))
    assert mid.plan.boundary_nodes == ("b",)
    fast = Planner(device, server, Link(10_000.0, rtt_ms=0.0))
    assert fast.plan.strategy == "cloud-only"


def test_noise_around_break_even_does_not_flap() -> None:
    device, server = _profiles()
    # edge-only 120 ms; cut after b: 20 + 10 + rtt + transfer of 10 kB + 4 kB back
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 3, None))
    assert planner.plan.boundary_nodes == ("b",)
    # a noisy estimate around the break-even bandwidth (edge-only 120 ms; the split 136 ms at
    # 1.3 Mbit/s, 125 ms at 1.5): edge-only is never better by the margin twice in a row
    near_lo, near_hi = Link(1.3, rtt_ms=20.0), Link(1.5, rtt_ms=20.0)
    assert planner.price(planner.plan, near_lo).cost.total_ms > 120.0
    assert planner.price(planner.plan, near_hi).cost.total_ms > 120.0
    for lk in (near_lo, near_hi) * 5:
        d = planner.replan(lk)
        assert not d.switched
    assert planner.switches == 0


def test_switch_after_k_confirmations() -> None:
    device, server = _profiles()
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 3, None))
    slow = Link(0.05, rtt_ms=20.0)  # edge-only is far better now
    d1, d2 = planner.replan(slow), planner.replan(slow)
    assert not d1.switched and not d2.switched and d2.pending == 2
    d3 = planner.replan(slow)
    assert d3.switched and d3.plan.strategy == "edge-only"
    assert planner.switches == 1
    assert planner.replan(slow).reason == "the current plan is the best"


def test_a_server_factor_reprices_the_server_and_switches_by_the_hysteresis_rules() -> None:
    """A server measured 10x slower than its profile: the split's tail (10 ms on the profile) takes
    100, and edge-only (120 ms) beats the split (148) once the re-plans confirm it."""
    device, server = _profiles()
    link = Link(10.0, rtt_ms=20.0)
    planner = Planner(device, server, link, hysteresis=Hysteresis(0.1, 3, None))
    split = planner.plan
    assert split.strategy == "split" and split.cost.server_ms == pytest.approx(10.0)
    planner.set_server_factor(10.0)
    assert planner.server_factor == 10.0 and planner.plan is split  # re-priced by the next re-plan
    assert planner.price(split, link).cost.server_ms == pytest.approx(100.0)
    assert "priced 10.00x slower" in planner.profiles[1].notes
    d1, d2 = planner.replan(link), planner.replan(link)
    assert not d1.switched and not d2.switched and d2.plan.cost.server_ms == pytest.approx(100.0)
    d3 = planner.replan(link)
    assert d3.switched and d3.plan.strategy == "edge-only"
    planner.set_server_factor(1.0)  # the server is fast again: the profile as given, not a rescaled copy
    assert planner.profiles[1] is server
    for _ in range(2):
        assert not planner.replan(link).switched
    assert planner.replan(link).plan.strategy == "split"


def test_a_server_factor_scales_the_servers_decode_times_too() -> None:
    device, server = _profiles(with_codec=True)
    link = Link(1.0, rtt_ms=20.0)
    planner = Planner(device, server, link, codecs=["zstd"], max_error=0.0)
    assert [b.codec for b in planner.plan.boundary] == ["zstd"]
    decode = planner.plan.cost.decode_ms
    assert decode > 0
    planner.set_server_factor(4.0)
    assert planner.price(planner.plan, link).cost.decode_ms == pytest.approx(4 * decode)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True])
def test_a_bad_server_factor_is_refused(bad: object) -> None:
    planner = Planner(*_profiles(), Link(10.0, rtt_ms=20.0))
    with pytest.raises(ConfigError, match="server factor must be a finite number > 0"):
        planner.set_server_factor(bad)  # type: ignore[arg-type]
    assert planner.server_factor == 1.0


def test_a_server_queue_adds_the_same_time_to_every_plan_that_uses_the_server() -> None:
    """An 80 ms queue: the split (61 ms on the profile) and cloud-only both take 80 ms more, edge-only
    (120 ms) nothing; the split at 141 ms loses to edge-only once the re-plans confirm it."""
    device, server = _profiles()
    link = Link(10.0, rtt_ms=20.0)
    planner = Planner(device, server, link, hysteresis=Hysteresis(0.1, 3, None))
    split = planner.plan
    before = {
        "split": split.cost.total_ms,
        "cloud": planner.baseline("cloud").cost.total_ms,
        "edge": planner.baseline("edge").cost.total_ms,
    }
    assert split.strategy == "split" and before["split"] == pytest.approx(60.6, abs=1.0)
    assert before["edge"] == pytest.approx(120.0)
    planner.set_server_queue(80.0)
    assert planner.server_queue_ms == 80.0 and planner.plan is split  # re-priced by the next re-plan
    queued = planner.price(split, link).cost
    assert queued.total_ms == pytest.approx(before["split"] + 80.0)
    assert sum(queued.rtt_ms) == pytest.approx(20.0 + 80.0)  # priced in the round trip
    assert queued.server_ms == pytest.approx(split.cost.server_ms)  # the compute as before
    assert planner.baseline("cloud").cost.total_ms == pytest.approx(before["cloud"] + 80.0)
    assert planner.baseline("edge").cost.total_ms == pytest.approx(before["edge"])
    d1, d2 = planner.replan(link), planner.replan(link)
    assert not d1.switched and not d2.switched
    d3 = planner.replan(link)
    assert d3.switched and d3.plan.strategy == "edge-only"
    planner.set_server_queue(0.0)  # the queue is gone: the split again, by the same rules
    for _ in range(2):
        assert not planner.replan(link).switched
    assert planner.replan(link).plan.strategy == "split"


def test_a_queue_and_a_factor_price_a_small_tail_apart() -> None:
    """The same server time measured on cloud-only (120 ms: a 10x pace on its 12 ms, or a 108 ms queue
    ahead of them) prices the split's 10 ms tail at 100 ms as a factor, at 118 ms as a queue."""
    device, server = _profiles()
    link = Link(10.0, rtt_ms=20.0)
    as_factor = Planner(device, server, link)
    as_queue = Planner(device, server, link)
    split = as_factor.plan
    as_factor.set_server_factor(10.0)
    as_queue.set_server_queue(108.0)
    cloud = as_factor.baseline("cloud").cost
    assert cloud.server_ms == pytest.approx(120.0)  # 12 ms of compute on the profile, x10
    f, q = as_factor.price(split, link).cost, as_queue.price(split, link).cost
    assert f.server_ms + sum(f.rtt_ms) == pytest.approx(100.0 + 20.0)
    assert q.server_ms + sum(q.rtt_ms) == pytest.approx(10.0 + 108.0 + 20.0)
    assert as_queue.baseline("cloud").cost.server_ms + 108.0 == pytest.approx(cloud.server_ms)


def test_the_predicted_parts_put_the_priced_queue_in_the_servers_part() -> None:
    """The queue is priced in the round trip; split as a request measures its parts, it is the
    server's (which reports it), not the network's; a plan that sends nothing waits for no queue."""
    from splitdnn.runtime._client_report import predicted_parts

    device, server = _profiles()
    link = Link(10.0, rtt_ms=20.0)
    planner = Planner(device, server, link)
    plain = predicted_parts(planner.plan.cost)
    planner.set_server_queue(80.0)
    queued = planner.price(planner.plan, link).cost
    parts = predicted_parts(queued, 80.0)
    assert parts == pytest.approx((plain[0], plain[1], plain[2] + 80.0))
    assert sum(parts) == pytest.approx(queued.total_ms)
    assert predicted_parts(queued, 500.0)[1] >= 0  # never more moved than the round trip holds
    edge = planner.baseline("edge").cost
    assert predicted_parts(edge, 80.0) == pytest.approx(predicted_parts(edge))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "5"])
def test_a_bad_server_queue_is_refused(bad: object) -> None:
    planner = Planner(*_profiles(), Link(10.0, rtt_ms=20.0))
    with pytest.raises(ConfigError, match="server queue must be a finite number of ms >= 0"):
        planner.set_server_queue(bad)  # type: ignore[arg-type]
    assert planner.server_queue_ms == 0.0


def test_one_good_sample_resets_the_confirmations() -> None:
    device, server = _profiles()
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 2, None))
    slow, good = Link(0.05, rtt_ms=20.0), Link(10.0, rtt_ms=20.0)
    assert not planner.replan(slow).switched
    assert not planner.replan(good).switched
    assert not planner.replan(slow).switched  # counting starts again
    assert planner.replan(slow).switched


def test_a_step_needs_one_confirmation() -> None:
    device, server = _profiles()
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 3, None))
    slow = Link(0.05, rtt_ms=20.0)
    d = planner.replan(slow, step=True)
    assert d.switched and d.plan.strategy == "edge-only" and "step" in d.reason
    # a step that only finds a plan under the margin better keeps the plan
    near = Link(1.5, rtt_ms=20.0)  # edge-only 120 ms against 125 ms: under the margin
    keeper = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 3, None))
    assert not keeper.replan(near, step=True).switched


def test_a_plan_whose_remote_part_is_over_the_deadline_is_never_chosen() -> None:
    device, server = _profiles()
    link = Link(10.0, rtt_ms=20.0)
    split = Planner(device, server, link).plan
    assert split.boundary_nodes == ("b",) and remote_ms(split) > 20.0
    # a client with a 20 ms deadline would finish that split on the device every time
    capped = Planner(device, server, link, max_remote_ms=20.0)
    assert capped.plan.strategy == "edge-only" and remote_ms(capped.plan) == 0.0
    assert Planner(device, server, link, max_remote_ms=remote_ms(split) + 1).plan.boundary_nodes == ("b",)
    for bad in (0, -1.0, float("nan"), "20"):
        with pytest.raises(ConfigError, match="max_remote_ms must be a finite number > 0 or None"):
            Planner(device, server, link, max_remote_ms=bad)  # type: ignore[arg-type]


def test_urgent_margin_switches_at_once() -> None:
    device, server = _profiles()
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 5, 0.5))
    d = planner.replan(Link(0.01, rtt_ms=20.0))
    assert d.switched and "urgent" in d.reason


def _switch_to_cloud(clock: FakeClock, **kw: object) -> tuple[Planner, Link]:
    """A planner on the split after b, switched to cloud-only by a fast link estimate (the model
    predicts cloud-only far faster there) after three 100 ms requests on the split under it."""
    device, server = _profiles()
    h = Hysteresis(0.1, 2, None, **kw)  # type: ignore[arg-type]
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=h, clock=clock)
    split = planner.plan
    assert split.boundary_nodes == ("b",)
    fast = Link(10_000.0, rtt_ms=1.0)
    assert not planner.replan(fast).switched  # one confirmation of two
    for _ in range(3):
        assert planner.observe_latency(split, 100.0) is None
    d = planner.replan(fast)
    assert d.switched and planner.plan.strategy == "cloud-only"
    assert planner.price(planner.plan, fast).cost.total_ms < 0.5 * planner.price(split, fast).cost.total_ms
    return planner, fast


def test_a_switch_that_measures_slower_is_undone_and_held_off() -> None:
    clock = FakeClock()
    planner, fast = _switch_to_cloud(clock)
    cloud = planner.plan
    assert planner.observe_latency(cloud, 400.0) is None  # the warm-up request is not judged
    assert planner.observe_latency(cloud, 120.0) is None
    assert planner.observe_latency(cloud, 118.0) is None
    d = planner.observe_latency(cloud, 125.0)  # median 120 ms against the split's 100 ms
    assert d is not None and d.switched and "reverted" in d.reason and "120.0 ms" in d.reason
    assert planner.plan.boundary_nodes == ("b",) and planner.reverts == 1 and planner.switches == 2
    # the same estimate does not choose cloud-only again while the hold lasts
    d = planner.replan(fast)
    assert not d.switched and "measured slower" in d.reason and d.best.strategy == "cloud-only"
    assert planner.replan(Link(14_000.0, rtt_ms=1.0)).switched is False  # within 1.5 x of it
    clock.t += 61.0  # the hold ends: the usual confirmations again
    assert not planner.replan(fast).switched
    assert planner.replan(fast).switched and planner.plan.strategy == "cloud-only"


def test_a_replan_is_due_only_when_it_could_change_something() -> None:
    """Planner.replan_due: a steady link (within the tolerance) needs no re-plan; a moved uplink,
    downlink or RTT (RTT: at least 0.5 ms), a switch being confirmed, or a hold run out does."""
    clock = FakeClock()
    device, server = _profiles()
    h = Hysteresis(0.1, 3, None)
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=h, clock=clock)
    due = planner.replan_due
    assert not due(Link(10.0, rtt_ms=20.0), tolerance=0.02)
    assert not due(Link(10.15, rtt_ms=20.3), tolerance=0.02)  # 1.5 % both
    assert due(Link(10.3, rtt_ms=20.0), tolerance=0.02)  # uplink 3 %
    assert due(Link(9.7, rtt_ms=20.0), tolerance=0.02)
    assert due(Link(10.0, downlink_mbps=5.0, rtt_ms=20.0), tolerance=0.02)  # downlink now its own
    assert due(Link(10.0, rtt_ms=21.0), tolerance=0.02)  # RTT 5 %, 1 ms
    assert due(Link(10.0, rtt_ms=20.0), tolerance=0.0) is False
    assert due(Link(10.0001, rtt_ms=20.0), tolerance=0.0)  # tolerance 0: any move
    small = Planner(device, server, Link(10.0, rtt_ms=0.2), clock=clock)
    assert not small.replan_due(Link(10.0, rtt_ms=0.6), tolerance=0.02)  # 3x, but 0.4 ms < 0.5 ms
    assert small.replan_due(Link(10.0, rtt_ms=0.8), tolerance=0.02)
    # a switch being confirmed: every re-plan counts, so each is due even on a steady link
    slow = Link(0.05, rtt_ms=20.0)
    assert due(slow, tolerance=0.02)
    assert planner.replan(slow).pending == 1
    assert due(slow, tolerance=0.02)
    planner.replan(slow)
    assert planner.replan(slow).switched and not due(slow, tolerance=0.02)
    # a hold: due once it has run out, so the held plan can be tried again on a steady link
    held, fast = _switch_to_cloud(clock)
    for ms in (400.0, 130.0, 130.0, 130.0):
        d = held.observe_latency(held.plan, ms)
    assert d is not None and d.switched and not held.replan(fast).switched
    assert not held.replan_due(fast, tolerance=0.02)
    clock.t += 61.0
    assert held.replan_due(fast, tolerance=0.02)
    # ... and once only: the re-plan drops the hold, also when the held plan is no longer the best
    mid = Link(10.0, rtt_ms=20.0)
    held.replan(mid)
    assert not held.replan_due(mid, tolerance=0.02) and not held._holds
    for bad in (-0.1, 1.0, "2 %"):
        with pytest.raises(ConfigError, match="tolerance must be a fraction in"):
            planner.replan_due(fast, tolerance=bad)  # type: ignore[arg-type]


def test_a_drifting_link_replans_within_the_budget_and_a_switch_being_confirmed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hysteresis.replan_budget: after a re-plan that took R s, one called for by a moved link alone
    waits R / budget s (timed on the planner's clock); confirmations of a switch do not wait."""
    clock = FakeClock()
    device, server = _profiles()
    assert Hysteresis().replan_budget == 0.02
    planner = Planner(
        device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 3, None), clock=clock
    )
    replan = planner._replan

    def five_ms(link: Link, step: bool) -> Any:
        clock.t += 0.005  # what the re-plan takes
        return replan(link, step)

    monkeypatch.setattr(planner, "_replan", five_ms)
    moved = Link(11.0, rtt_ms=20.0)
    assert planner.replan_due(moved, tolerance=0.05)  # nothing re-planned yet: no wait
    planner.replan(Link(10.0, rtt_ms=20.0))
    assert planner._replan_s == pytest.approx(0.005)
    clock.t += 0.2
    assert not planner.replan_due(moved, tolerance=0.05)  # 0.2 s after a 5 ms re-plan: 2.5 %
    assert not planner.replan_due(Link(10.0, rtt_ms=20.0), tolerance=0.05)
    clock.t += 0.05
    assert planner.replan_due(moved, tolerance=0.05)  # 0.25 s: 2 %
    assert not planner.replan_due(Link(10.2, rtt_ms=20.0), tolerance=0.05)  # still only if it moved
    # a switch being confirmed re-plans at once, whatever the last re-plan took
    slow = Link(0.05, rtt_ms=20.0)
    assert planner.replan(slow).pending == 1
    assert planner.replan_due(slow, tolerance=0.05)
    unlimited = Planner(
        device, server, Link(10.0, rtt_ms=20.0), clock=clock, hysteresis=Hysteresis(replan_budget=None)
    )
    monkeypatch.setattr(unlimited, "_replan", lambda link, step: clock.__setattr__("t", clock.t + 1.0))
    unlimited.replan(Link(10.0, rtt_ms=20.0))
    assert unlimited.replan_due(moved, tolerance=0.05)
    for bad in (0, 0.0, 1.5, -0.1, True, "2 %"):
        with pytest.raises(ConfigError, match="replan_budget must be None"):
            Hysteresis(replan_budget=bad)  # type: ignore[arg-type]


def test_a_hold_ends_when_the_link_moves_or_steps() -> None:
    for move in ("faster", "step"):
        clock = FakeClock()
        planner, fast = _switch_to_cloud(clock)
        cloud = planner.plan
        for ms in (400.0, 130.0, 130.0, 130.0):
            d = planner.observe_latency(cloud, ms)
        assert d is not None and d.switched
        if move == "faster":  # 2 x the estimate that chose it: two confirmations, as usual
            assert not planner.replan(Link(20_000.0, rtt_ms=1.0)).switched
            assert planner.replan(Link(20_000.0, rtt_ms=1.0)).switched
        else:
            assert planner.replan(fast, step=True).switched


def test_a_switch_that_measures_as_predicted_is_kept() -> None:
    clock = FakeClock()
    planner, _ = _switch_to_cloud(clock)
    cloud = planner.plan
    for ms in (400.0, 104.0, 60.0, 103.0, 104.0):  # median 103.5: within revert_margin of 100
        assert planner.observe_latency(cloud, ms) is None
    assert planner.plan.strategy == "cloud-only" and planner.reverts == 0


def test_a_collapsed_link_does_not_bring_back_the_old_plan() -> None:
    # the split measured 100 ms on a 10 Mbit/s link; the link collapses, edge-only is chosen and
    # measures 130 ms: slower than the split *was*, but the split would now take far longer
    device, server = _profiles()
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 3, None))
    split = planner.plan
    for _ in range(3):
        planner.observe_latency(split, 100.0)
    assert planner.replan(Link(0.05, rtt_ms=20.0), step=True).switched
    edge = planner.plan
    assert edge.strategy == "edge-only"
    for ms in (130.0, 130.0, 130.0, 130.0):
        assert planner.observe_latency(edge, ms) is None
    assert planner.plan.strategy == "edge-only" and planner.reverts == 0


def test_only_the_current_plan_is_measured() -> None:
    clock = FakeClock()
    planner, _ = _switch_to_cloud(clock)
    device, server = _profiles()
    old = Planner(device, server, Link(10.0, rtt_ms=20.0)).plan
    for _ in range(6):  # requests that started on the split before the switch
        assert planner.observe_latency(old, 900.0) is None
    assert planner.plan.strategy == "cloud-only" and planner.reverts == 0
    # no check without measurements of the replaced plan
    fresh = Planner(device, server, Link(10.0, rtt_ms=20.0), hysteresis=Hysteresis(0.1, 1, None))
    assert fresh.observe_latency(fresh.plan, 100.0) is None  # one is not enough to compare
    assert fresh.replan(Link(10_000.0, rtt_ms=1.0)).switched
    for ms in (400.0, 900.0, 900.0, 900.0, 900.0):
        assert fresh.observe_latency(fresh.plan, ms) is None
    # a forced plan is never checked; verify=0 turns the check off
    forced = Planner(device, server, Link(10.0), force="b")
    assert forced.observe_latency(forced.plan, 5.0) is None
    off, _ = _switch_to_cloud(FakeClock(), verify=0)
    for ms in (400.0, 900.0, 900.0, 900.0):
        assert off.observe_latency(off.plan, ms) is None
    assert off.plan.strategy == "cloud-only"


def test_latency_checks_refuse_bad_values() -> None:
    device, server = _profiles()
    planner = Planner(device, server, Link(10.0, rtt_ms=20.0))
    for bad in (-1.0, float("nan"), float("inf"), "5"):
        with pytest.raises(ConfigError, match="total_ms must be a finite number >= 0"):
            planner.observe_latency(planner.plan, bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="verify must be an integer >= 0"):
        Hysteresis(verify=-1)
    with pytest.raises(ConfigError, match="verify must be an integer >= 0"):
        Hysteresis(verify=True)
    with pytest.raises(ConfigError, match="revert_margin must be a fraction"):
        Hysteresis(revert_margin=1.0)
    with pytest.raises(ConfigError, match="hold_s must be a finite number >= 0"):
        Hysteresis(hold_s=-1.0)


def test_privacy_floor_forbids_cloud_only() -> None:
    device, server = _profiles()
    planner = Planner(device, server, Link(10_000.0), privacy_floor=True)
    assert planner.plan.strategy != "cloud-only"
    assert planner.plan.tiers["a"] == 0  # the input's reader stays on the device
    with pytest.raises(InfeasibleError, match="cloud-only"):
        Planner(device, server, Link(10_000.0), privacy_floor=True, force="cloud")


def test_forced_plans_are_kept_and_repriced() -> None:
    device, server = _profiles()
    edge = Planner(device, server, Link(10_000.0), force="edge")
    assert edge.plan.strategy == "edge-only"
    cloud = Planner(device, server, Link(0.05), force="cloud")
    assert cloud.plan.strategy == "cloud-only"
    cut = Planner(device, server, Link(10.0), force="a")
    assert cut.plan.boundary_nodes == ("a",)
    d = cut.replan(Link(1.0))
    assert not d.switched and d.plan.boundary_nodes == ("a",)
    assert d.plan.cost.total_ms > cut.price(cut.plan, Link(10.0)).cost.total_ms
    with pytest.raises(ConfigError, match="force_boundary"):
        Planner(device, server, Link(10.0), force="c")  # the last node: empty tail
    with pytest.raises(ConfigError, match="force_boundary"):
        Planner(device, server, Link(10.0), force="nope")


def test_unsendable_values_are_never_cut() -> None:
    device, server = _profiles()
    assert Planner(device, server, Link(10.0, rtt_ms=20.0)).plan.boundary_nodes == ("b",)
    guarded = Planner(device, server, Link(10.0, rtt_ms=20.0), unsendable={"b"})
    assert "b" not in guarded.plan.boundary_nodes
    for bw in (0.01, 1.0, 100.0, 10_000.0):
        assert "b" not in guarded.replan(Link(bw, rtt_ms=20.0)).best.boundary_nodes
    with pytest.raises(PlanError, match="not a single tensor"):
        Planner(device, server, Link(10.0), force="b", unsendable={"b"})


def test_codecs_are_chosen_with_the_cut_and_priced_as_used() -> None:
    device, server = _profiles(with_codec=True)
    planner = Planner(device, server, Link(1.0, rtt_ms=10.0))
    assert planner.plan.boundary_nodes == ("b",)
    assert planner.plan.boundary[0].codec == "zstd"
    assert planner.plan.boundary_bytes == 2_000
    # without the codec, 10 kB at 1 Mbit/s costs more than running c on the device
    raw_only = Planner(device, server, Link(1.0, rtt_ms=10.0), codecs=("raw",))
    assert raw_only.plan.strategy == "edge-only"
    # at a very fast link raw would be cheaper than zstd's encode + decode, but the running plan is
    # priced with the codec it uses, so its key does not change under re-pricing
    fast = Link(100_000.0, rtt_ms=10.0)
    assert planner.price(planner.plan, fast).boundary[0].codec == "zstd"
    assert plan_key(planner.price(planner.plan, fast)) == plan_key(planner.plan)


def _lossy_profiles() -> tuple[Profile, Profile]:
    """``_profiles(with_codec=True)`` plus int8+zstd on b: half zstd's bytes, a small numeric error."""
    int8 = CodecResult("int8+zstd", 1_000, 1.0, 0.5, 0.01, 1e-4, 0.9999)

    def add(p: Profile) -> Profile:
        nodes = tuple(
            dataclasses.replace(n, codecs=(*n.codecs, int8)) if n.name == "b" else n for n in p.nodes
        )
        return dataclasses.replace(p, nodes=nodes)

    device, server = _profiles(with_codec=True)
    return add(device), add(server)


def _table(fingerprint: str, loss_pts: float) -> dict:
    """A synthetic accuracy table (the JSON of scripts/bench_accuracy.py): int8+zstd at b, two seeds."""
    rows = [{"cut": "b", "spec": "int8+zstd", "loss_pts": loss_pts}]
    return {
        "format": "splitdnn.accuracy-table/1", "model_name": "synthetic", "fingerprint": fingerprint,
        "input_node": "x", "seeds": [{"rows": rows}, {"rows": [{**rows[0], "loss_pts": loss_pts / 2}]}],
    }  # fmt: skip


def test_accuracy_budget_decides_the_lossy_codec(tmp_path: Path) -> None:
    device, server = _lossy_profiles()
    link = Link(1.0, rtt_ms=10.0)
    codec = lambda planner: planner.plan.boundary[0].codec  # noqa: E731
    assert codec(Planner(device, server, link)) == "zstd"  # default: lossless only
    table = accuracy_table_from_dict(_table(device.fingerprint, 0.3))
    within = Planner(device, server, link, accuracy_table=table, max_accuracy_loss=0.5)
    assert codec(within) == "int8+zstd" and within.max_error is None  # the table alone decides
    assert codec(Planner(device, server, link, accuracy_table=table, max_accuracy_loss=0.1)) == "zstd"
    # both budgets, when given, apply
    both = Planner(device, server, link, accuracy_table=table, max_accuracy_loss=0.5, max_error=1e-6)
    assert codec(both) == "zstd"
    path = tmp_path / "acc.json"
    path.write_text(json.dumps(_table(device.fingerprint, 0.3)))
    assert codec(Planner(device, server, link, accuracy_table=path, max_accuracy_loss=0.5)) == "int8+zstd"


def test_named_codecs_that_no_plan_could_use_are_refused() -> None:
    device, server = _lossy_profiles()
    link = Link(1.0, rtt_ms=10.0)
    with pytest.raises(ConfigError, match=r"int8\+zstd's smallest measured relative MSE is 0.0001, over"):
        Planner(device, server, link, codecs=("zstd", "int8+zstd"))  # default budget: lossless only
    with pytest.raises(ConfigError, match="fp16 was not measured"):
        Planner(device, server, link, codecs=("fp16",), max_error=1.0)
    named = Planner(device, server, link, codecs=("zstd", "int8+zstd"), max_error=1e-3)
    assert named.plan.boundary[0].codec == "int8+zstd"
    assert Planner(device, server, link, codecs=("raw",)).plan.strategy == "edge-only"


def test_accuracy_budget_refusals(tmp_path: Path) -> None:
    device, server = _lossy_profiles()
    link = Link(1.0, rtt_ms=10.0)
    with pytest.raises(ConfigError, match="measured on model 'synthetic'"):
        other = accuracy_table_from_dict(_table("0" * 64, 0.3))
        Planner(device, server, link, accuracy_table=other, max_accuracy_loss=0.5)
    table = accuracy_table_from_dict(_table(device.fingerprint, 0.3))
    with pytest.raises(ConfigError, match="needs both"):
        Planner(device, server, link, accuracy_table=table)
    with pytest.raises(ConfigError, match="max_accuracy_loss must be"):
        Planner(device, server, link, accuracy_table=table, max_accuracy_loss=-1.0)
    with pytest.raises(ConfigError, match="cannot read accuracy table"):
        Planner(device, server, link, accuracy_table=tmp_path / "missing.json", max_accuracy_loss=1.0)


def test_scale_profile_divides_every_time() -> None:
    device, _ = _profiles(with_codec=True)
    slow = dataclasses.replace(device, slowdown=8.0)
    fast = scale_profile(slow, 8.0)
    assert fast.slowdown == 1.0
    assert fast.node("c").calibrated_ms == pytest.approx(100.0 / 8)
    codec = fast.node("b").codec("zstd")
    assert codec is not None and codec.encode_ms == pytest.approx(1.0 / 8)
    assert "estimated" in fast.notes
    with pytest.raises(ConfigError, match="speedup"):
        scale_profile(device, 0.0)


def test_scaling_the_emulation_away_takes_its_idle_factor_from_the_compute_times() -> None:
    """The client's estimated server profile (device / its slowdown) kept the device's slowdown
    after its padding's idle: compute priced 25 % high, described as padded."""
    device, _ = _profiles(with_codec=True)
    slow = dataclasses.replace(device, slowdown=8.0, idle_factor=1.25)
    server = scale_profile(slow, 8.0)
    assert server.slowdown == 1.0 and server.idle_factor == 1.0 and "idle" not in server.describe()
    assert server.node("c").calibrated_ms == pytest.approx(100.0 / 8 / 1.25)
    assert server.node("c").latency.median_ms == pytest.approx(slow.node("c").latency.median_ms / 10)
    assert server.total.median_ms == pytest.approx(slow.total.median_ms / 10)
    codec = server.node("b").codec("zstd")
    assert codec is not None and codec.encode_ms == pytest.approx(1.0 / 8)  # never had the factor
    assert "idle factor 1.25" in server.notes
    half = scale_profile(slow, 2.0)  # still emulated (x4): the factor stays, times / 2
    assert half.slowdown == 4.0 and half.idle_factor == 1.25
    assert half.node("c").calibrated_ms == pytest.approx(100.0 / 2)
    # the bench's refresh: the same emulated device, measured 10x faster now (slowdown x 1/10 < 1)
    now = scale_profile(slow, 10.0, keep_emulation=True)
    assert now.slowdown == 8.0 and now.idle_factor == 1.25
    assert now.node("c").calibrated_ms == pytest.approx(100.0 / 10)
    assert now.node("b").codec("zstd").encode_ms == pytest.approx(1.0 / 10)  # type: ignore[union-attr]


def test_the_planner_imports_neither_torch_nor_grpc() -> None:
    # it plans on any device: the solver's layering rule extends to it
    code = (
        "import sys, splitdnn.runtime.planner, splitdnn.runtime._server_pace; "
        "print(sorted({'torch', 'grpc'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _theil_sen_reference(pts: list[tuple[float, float]], min_spread: float) -> tuple[float, float] | None:
    """The fit written out as a double loop over the pairs (the definition the vectorised one keeps)."""
    slopes = []
    for a in range(len(pts)):
        for b in range(a + 1, len(pts)):
            (xa, ya), (xb, yb) = pts[a], pts[b]
            if max(xa, xb) > 0 and max(xa, xb) >= min_spread * min(xa, xb):
                slopes.append((yb - ya) / (xb - xa))
    if not slopes:
        return None
    slope = max(0.0, statistics.median(slopes))
    return statistics.median([y - slope * x for x, y in pts]), slope


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 1e3, 2e3, 5e4, 1e5, 1.2e5, 3e6]),  # pings and a few request sizes
            st.floats(min_value=0.0, max_value=5e3, allow_nan=False),
        ),
        max_size=40,
    ),
    st.sampled_from([1.1, 1.9, 4.0]),
)
def test_the_link_fit_equals_its_pairwise_definition(pts: list[tuple[float, float]], spread: float) -> None:
    got, want = _theil_sen(pts, spread), _theil_sen_reference(pts, spread)
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert got == pytest.approx(want, rel=1e-12, abs=1e-9)
