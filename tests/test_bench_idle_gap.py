"""scripts/bench_idle_gap.py: times the heads and the whole model back to back and after idle gaps."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_idle_gap")


def test_heads_and_the_whole_model_are_timed_at_every_gap(bench, tmp_path, capsys):
    out = tmp_path / "gap.json"
    argv = ["--models", "alexnet", "--repeats", "2", "--rounds", "2", "--gaps-ms", "3"]
    argv += ["--fractions", "0,0.5"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    pieces = list(dict.fromkeys(r["piece"] for r in rows))
    # the heads at the first and the middle chain cut, then the whole model, each without and with the gap
    assert len(pieces) == 3 and pieces[-1] == "whole model (22 nodes)"
    assert pieces[0].startswith("head to ") and "(1/22 nodes)" in pieces[0]
    assert [r["gap_ms"] for r in rows] == [0.0, 3.0] * 3
    for r in rows:
        assert r["n"] == 4 and 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        if r["gap_ms"] == 0:
            assert r["excess_ms"] == 0.0
    whole = [r["median_ms"] for r in rows if r["piece"] == pieces[-1]]
    first = [r["median_ms"] for r in rows if r["piece"] == pieces[0]]
    assert min(whole) > max(first)  # the whole model does more work than its first node
    table = capsys.readouterr().out
    assert "| alexnet | whole model (22 nodes) | 3 |" in table and "thread CPU time" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "nope"], "expected zoo models among"),
        (["--gaps-ms", "0"], "--gaps-ms must list sleeps in (0, 10000] ms"),
        (["--gaps-ms", "x"], "expected comma-separated numbers"),
        (["--fractions", "1"], "--fractions must lie in [0, 1)"),
        (["--repeats", "0"], "--repeats must be >= 1, found 0"),
    ],
)
def test_bad_arguments_are_refused(bench, usage_error, argv, message):
    assert message in usage_error(bench.parse_args, argv)
