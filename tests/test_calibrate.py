"""The profiler's pure arithmetic: statistics, isotonic fit, anchor choice, distribution, errors."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from itertools import pairwise

import pytest

from splitdnn.calibrate import (
    choose_positions,
    distribute,
    fit_prefix,
    isotonic,
    latency_stats,
    noise_note,
    percentile,
    prediction_errors,
)
from splitdnn.errors import ConfigError
from splitdnn.schema import Calibration, LatencyStats


def test_percentile_and_stats() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert percentile([1.0, 2.0], 0.5) == 1.5
    assert percentile([7.0], 0.9) == 7.0
    s = latency_stats([0.003, 0.001, 0.002, 0.010], factor=2.0)  # seconds -> ms, times 2
    assert s.repeats == 4
    assert s.median_ms == pytest.approx(5.0)
    assert s.p10_ms <= s.median_ms <= s.p90_ms
    assert latency_stats([]).repeats == 0


def test_isotonic_is_monotone_and_keeps_the_mean() -> None:
    rng = random.Random(1)
    for _ in range(50):
        values = [rng.uniform(0, 10) for _ in range(rng.randint(1, 12))]
        fit = isotonic(values)
        assert len(fit) == len(values)
        assert all(a <= b + 1e-12 for a, b in pairwise(fit))
        assert sum(fit) == pytest.approx(sum(values))
    assert isotonic([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert isotonic([3.0, 1.0]) == [2.0, 2.0]


def test_fit_prefix_methods() -> None:
    # heads measured 1, 3, 2.5 ms; whole model 10 ms
    assert fit_prefix([1.0, 3.0, 2.5], 10.0) == pytest.approx([1.0, 2.75, 2.75])
    assert fit_prefix([12.0], 10.0) == [10.0]  # a head slower than the model is clamped
    # tails 9.5, 7.5, 8: head-tail averages h and total - t
    fit = fit_prefix([1.0, 3.0, 2.5], 10.0, tail_ms=[9.5, 7.5, 8.0], method="segment-head-tail")
    assert fit == pytest.approx([0.75, 2.5, 2.5])  # (0.75, 2.75, 2.25) made monotone
    with pytest.raises(ConfigError):
        fit_prefix([1.0], 2.0, method="segment-head-tail")
    with pytest.raises(ConfigError):
        fit_prefix([1.0], 2.0, method="nonsense")


def test_distribute_hits_every_anchor_exactly() -> None:
    rng = random.Random(2)
    for _ in range(50):
        n = rng.randint(1, 30)
        isolated = [rng.choice([0.0, rng.uniform(0, 3)]) for _ in range(n)]
        positions = sorted({*rng.sample(range(1, n + 1), rng.randint(1, n)), n})
        prefix = sorted(rng.uniform(0, 50) for _ in positions)
        cal = distribute(isolated, positions, prefix)
        assert all(c >= 0 for c in cal)
        for p, t in zip(positions, prefix, strict=True):
            assert math.isclose(sum(cal[:p]), t, rel_tol=1e-9, abs_tol=1e-12)
    # proportional within a segment, equal when all isolated times are zero
    assert distribute([1.0, 3.0], [2], [8.0]) == pytest.approx([2.0, 6.0])
    assert distribute([0.0, 0.0], [2], [8.0]) == pytest.approx([4.0, 4.0])
    with pytest.raises(ValueError):
        distribute([1.0, 1.0], [1], [1.0])  # must end with the full model


@pytest.mark.parametrize("segments", [1, 2, 5, 16])
@pytest.mark.parametrize("check_cap", [0, 3, 12])
def test_choose_positions_invariants(segments: int, check_cap: int) -> None:
    rng = random.Random(segments * 100 + check_cap)
    for _ in range(30):
        n = rng.randint(1, 60)
        chain = rng.sample(range(1, n + 1), rng.randint(0, n))
        invalid = set(rng.sample(range(1, n), min(n - 1, 3))) if n > 1 else set()
        cuttable = set(range(1, n + 1)) - invalid
        anchors, checks = choose_positions(
            n, chain, segments=segments, check_cap=check_cap, valid=cuttable.__contains__
        )
        assert anchors[-1] == n and anchors == sorted(set(anchors))
        assert len(anchors) <= segments
        assert not set(anchors) & set(checks)
        assert set(checks) <= set(chain) - {n} - invalid
        assert not (set(anchors) - {n}) & invalid
        assert len(checks) <= check_cap
        usable = [p for p in set(chain) if p < n and p not in invalid]
        if check_cap and usable:
            assert checks  # something is always held out when there is a chain cut to hold out
        if not check_cap:
            assert not checks


def test_choose_positions_prefers_chain_cuts_and_fills_gaps() -> None:
    # 40 nodes, chain cuts only at the start (a DAG without any after node 6)
    anchors, checks = choose_positions(40, list(range(1, 7)), segments=8, check_cap=4)
    assert len(checks) == 3 and len(anchors) == 8  # at most half the chain cuts are held out
    assert any(p > 20 for p in anchors[:-1])  # the chain-free stretch got an anchor too
    with pytest.raises(ConfigError):
        choose_positions(4, [1], segments=0, check_cap=1)


def test_prediction_errors() -> None:
    mape, worst, median = prediction_errors([1.0, 2.0, 0.5], [2.0, 2.0, 0.0])
    assert mape == pytest.approx(25.0)  # 50% and 0%; the 0 ms measurement has no percentage
    assert worst == pytest.approx(1.0)
    assert median == pytest.approx(0.5)
    assert prediction_errors([], []) == (0.0, 0.0, 0.0)


def test_noise_note() -> None:
    calm = Calibration("segment-prefix", 4, 3, 5.0, 0.1, 0.05)
    assert noise_note(LatencyStats(10.0, 9.5, 11.0, 10), calm) == ""
    assert "p10-p90" in noise_note(LatencyStats(10.0, 5.0, 30.0, 10), calm)
    assert noise_note(LatencyStats(10.0, 5.0, 30.0, 2), calm) == ""  # too few runs to judge
    wild = Calibration("segment-prefix", 4, 3, 80.0, 5.0, 2.0)  # median miss 2 ms of 10 ms
    assert "MAPE 80%" in noise_note(LatencyStats(10.0, 9.5, 11.0, 10), wild)
    small_pieces = Calibration("segment-prefix", 4, 3, 80.0, 0.5, 0.2)  # big percentages, tiny misses
    assert noise_note(LatencyStats(10.0, 9.5, 11.0, 10), small_pieces) == ""


def test_calibrate_does_not_load_torch() -> None:
    code = "import sys, splitdnn.calibrate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_segment_prefix_scales_measured_segments_to_the_fused_total():
    from splitdnn.calibrate import segment_prefix

    # three segments measured 2 + 3 + 5 = 10 ms as pieces; the fused model took 8 ms
    assert segment_prefix([2.0, 3.0, 5.0], 8.0) == pytest.approx([1.6, 4.0, 8.0])
    assert segment_prefix([0.0, 0.0], 4.0) == [0.0, 4.0]  # nothing measured: all at the end
    assert segment_prefix([-1.0, 2.0], 2.0) == pytest.approx([0.0, 2.0])  # negative noise clamps
    with pytest.raises(ValueError):
        segment_prefix([], 1.0)
