"""scripts/bench_deadline.py: three clients (the history rule with and without probes, the medians) on a
link that flaps."""

from __future__ import annotations

import json
import warnings

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_deadline")


def test_both_clients_run_every_deadline_and_are_summed_up(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--model", "alexnet", "--slowdown", "2", "--pairs", "4", "--warmup", "2", "--deadlines", "1.5,3",
            "--uplink-mbps", "200", "--rtt-ms", "1", "--period-ms", "20", "--slow-share", "0.5",
            "--slow-first", "2", "--json", str(out)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a 3-repeat profile on a busy machine may warn
        assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "| 1.5x" in text and "| 3x" in text and "history" in text and "medians" in text
    assert "no probes" in text
    r = json.loads(out.read_text())
    assert r["model"] == "alexnet" and r["device_ms"] > 0 and len(r["deadlines"]) == 2
    assert "git_head" in r["code"] and r["cpu"]
    for d in r["deadlines"]:
        assert d["deadline_ms"] == pytest.approx(d["deadline_x"] * r["device_ms"])
        for name in ("history", "no probes", "medians"):
            s = d[name]
            assert s["requests"] == 4 and 0.0 <= s["met"] <= 1.0
            assert 0 < s["median_ms"] <= s["p90_ms"] <= s["p99_ms"]
            assert 0.0 <= s["device_at_once"] + s["device_after_wait"] <= 1.0
            assert 0.0 <= s["probed"] <= (s["device_at_once"] if name == "history" else 0.0)
            assert 0 <= s["first_sent"] <= 4
        assert set(d["ratios"]) == {"remote", "heads", "finishes"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nope"], "expected a zoo model among"),
        (["--slowdown", "0.5"], "--slowdown must be >= 1"),
        (["--uplink-mbps", "0"], "--uplink-mbps must be > 0"),
        (["--slow-share", "1.5"], "--slow-share must be in [0, 1]"),
        (["--slow-factor", "0.5"], "--slow-factor >= 1"),
        (["--period-ms", "0"], "--period-ms > 0"),
        (["--deadlines", "1,x"], "expected numbers separated by commas"),
        (["--deadlines", "0,2"], "expected positive multiples"),
        (["--pairs", "0"], "--pairs must be >= 1, found 0"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--slow-first", "-1"], "--slow-first must be >= 0, found -1"),
    ],
)
def test_bad_arguments_are_refused(bench, usage_error, argv, message):
    assert message in usage_error(bench.parse_args, argv)
