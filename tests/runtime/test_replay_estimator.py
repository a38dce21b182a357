"""scripts/replay_estimator.py: bench_deadline's estimator calls, logged and replayed."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

ESTIMATOR = Path(__file__).resolve().parents[2] / "splitdnn" / "runtime" / "_estimator.py"


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("replay_estimator")


def _bursty_log() -> dict:
    """One client on a 50 Mbit/s link with a 50 kB burst (pings 9 ms, 100 kB in 17): start-up pings
    and probes, requests, one slow request (a step), then requests and pings again."""

    def ms(up: int, mbps: float = 50.0) -> float:
        return 9.0 + max(0, up - 50_000) * 8 / (mbps * 1e3)

    calls, t = [], 0.0
    plan = [(0, 50.0)] * 3 + [(131_072, 50.0), (262_144, 50.0)] + [(100_000, 50.0)] * 10
    plan += [(100_000, 5.0)] + [(0, 50.0), (100_000, 50.0), (100_000, 50.0)] * 4
    for k, (up, mbps) in enumerate(plan):
        t += 0.1
        late = 0.1 * (k % 3)
        calls.append({"client": "c#0", "kind": "observe", "args": [up, 0, ms(up, mbps) + late], "t": t,
                      "shaper_mbps": mbps, "estimate_mbps": None})  # fmt: skip
    return {"uplink_mbps": 50.0, "log": calls}


def test_a_replay_counts_estimates_over_the_link(script):
    est = script.load_estimator("here", ESTIMATOR)
    s = script.replay([_bursty_log()], {"here": est}, 1.5)["here"]
    assert s["clients"] == 1
    # one of its 28 estimates (the first probe's, anchored at the pings) is over 75 Mbit/s; the
    # estimator before `_burst_ms` read the burst as speed after the step: 12 of 28, p50 0.38
    assert s["over_mean"] == pytest.approx(1 / 28)
    assert s["abs_log_error"]["p50"] < 0.1


def test_record_logs_every_client_and_replays_alike_through_a_copy(script, tmp_path, capsys):
    log = tmp_path / "log.json"
    argv = ["record", str(log), "--model", "alexnet", "--slowdown", "2", "--pairs", "3", "--warmup", "1",
            "--deadlines", "3", "--uplink-mbps", "200", "--rtt-ms", "1", "--period-ms", "20"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a 3-repeat profile on a busy machine may warn
        assert script.main(argv) == 0
    data = json.loads(log.read_text())
    assert data["uplink_mbps"] == 200.0 and data["result"]["deadlines"]
    clients = {c["client"] for c in data["log"]}
    assert clients == {"history#0", "no probes#0", "medians#0"}  # start-up probes included, named
    assert {c["kind"] for c in data["log"]} <= {"observe", "remember", "observe_overdue"}
    # the log replays the run: each client's calls (the outer ones alone: observe() calls remember()
    # inside, which logged as well would feed each sample twice) give the estimates the run's had
    est = script.load_estimator("here", ESTIMATOR)
    for client, prior in data["priors"].items():
        calls = [c for c in data["log"] if c["client"] == client]
        assert script.replayed(est, calls, prior) == [c["estimate_mbps"] for c in calls]
    copy = tmp_path / "copy.py"
    shutil.copy(ESTIMATOR, copy)
    capsys.readouterr()
    assert script.main(["replay", str(log), "--estimator", f"copy={copy}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("this checkout: 3 clients")
    assert lines[1].startswith("copy: 3 clients") and lines[1][4:] == lines[0][len("this checkout") :]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "x.json", "--estimator", "nope"], "--estimator takes NAME=PATH"),
        (["replay", "x.json", "--estimator", "a=/no/such.py"], "--estimator takes NAME=PATH"),
        (["replay", "x.json", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(script, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        script.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
