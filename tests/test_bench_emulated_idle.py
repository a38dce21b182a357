"""scripts/bench_emulated_idle.py: an emulated device's two kinds of profile against its requests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_emulated_idle")


@pytest.mark.filterwarnings("ignore:profile of:RuntimeWarning")
def test_both_profile_kinds_are_compared_with_requests_for_every_plan(bench, tmp_path, capsys):
    out, md = tmp_path / "idle.json", tmp_path / "idle.md"
    argv = ["--models", "alexnet", "--slowdown", "1.5", "--rounds", "1", "--requests", "2"]
    argv += ["--profile-repeats", "1", "--fractions", "0.5", "--json", str(out), "--md", str(md)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["slowdown"] == 1.5 and "git_head" in result["code"]
    plans = result["models"][0]["plans"]
    assert sorted((p["plan"] != "edge", p["profile"]) for p in plans) == [
        (False, "back to back"), (False, "x idle factor"), (True, "back to back"), (True, "x idle factor"),
    ]  # fmt: skip
    for p in plans:
        (pred,), (meas,), (err,), (factor,) = (
            p["predicted_ms"],
            p["measured_ms"],
            p["error_pct"],
            p["idle_factor"],
        )
        assert (
            pred > 0 and meas > 0 and err == pytest.approx(100 * (pred - meas) / meas, abs=0.1)
        )  # from rounded values
        # back to back carries no factor; the other kind carries the measured one, which may itself
        # round to 1.000 on a machine where the padding's idle does not slow the device (CI saw it)
        assert factor == 1.0 if p["profile"] == "back to back" else factor > 0.0
    table = md.read_text()
    assert table.count("| alexnet |") == 4 and "| alexnet | edge-only | back to back | 1.00 |" in table
    assert table in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slowdown", "1"], "--slowdown must be > 1"),
        (["--fractions", "0.5,1"], "strictly between 0 and 1"),
        (["--fractions", "half"], "expected fractions"),
        (["--requests", "0"], "integer >= 1"),
        (["--models", "nope"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(bench, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
