"""scripts/bench_replan.py: counts and times a SplitClient's re-plans through a real server and shaper."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_replan")


def test_re_plans_are_counted_and_timed(bench):
    args = bench.parse_args(["--model", "alexnet", "--slowdown", "2", "--requests", "3", "--warmup", "1",
                             "--forced", "2", "--uplink-mbps", "50", "--rtt-ms", "2"])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a 2-repeat profile on a busy machine may warn
        r = bench.measure(args)
    assert r["requests"] == 3 and 0 <= r["replans_in_requests"] <= 3
    assert r["replan_ms_forced"] > 0  # two re-plans called directly, always run
    if r["replans_in_requests"]:
        assert r["replan_ms_in_requests"] > 0
    q = r["request_ms"]
    assert 0 < q["p10"] <= q["median"] <= q["p90"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nope"], "expected a zoo model among"),
        (["--slowdown", "0.5"], "--slowdown must be >= 1"),
        (["--uplink-mbps", "0"], "--uplink-mbps must be > 0"),
        (["--requests", "0"], "--requests must be >= 1, found 0"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
    ],
)
def test_bad_arguments_are_refused(bench, usage_error, argv, message):
    assert message in usage_error(bench.parse_args, argv)
