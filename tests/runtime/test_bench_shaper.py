"""scripts/bench_shaper.py: a gRPC echo through each kind of link, beside a busy Python thread."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_shaper")


def test_both_links_are_timed_and_summed_up(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [
        "--size-kib",
        "64",
        "--mbps",
        "200",
        "--calls",
        "4",
        "--warmup",
        "1",
        "--busy",
        "0.3",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    assert "| in-process |" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["calls"] == 4 and r["busy"] == 0.3 and r["at_rate_ms"] > 0 and "git_head" in r["code"]
    for kind in ("in-process", "process"):
        s = r[kind]
        assert 0 < s["median_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert 0 <= s["over_3x_median"] <= 4 and 0 <= s["over_30ms"] <= 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size-kib", "0"], "--size-kib must be in 1..32768"),
        (["--mbps", "0"], "--mbps must be > 0"),
        (["--busy", "1.5"], "--busy must be in [0, 1]"),
        (["--calls", "0"], "--calls must be >= 1"),
    ],
)
def test_bad_arguments_are_refused(bench, usage_error, argv, message):
    assert message in usage_error(bench.parse_args, argv)
