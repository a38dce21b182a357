"""scripts/bench_server_pace.py: a client pricing the server at its pace against its profile alone."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_server_pace")


@pytest.mark.filterwarnings("ignore:profile of:RuntimeWarning")
def test_both_clients_run_against_an_idle_and_a_loaded_server(bench, tmp_path, capsys):
    out, md = tmp_path / "pace.json", tmp_path / "pace.md"
    argv = ["--model", "alexnet", "--slowdown", "2", "--rounds", "1", "--requests", "2"]
    argv += ["--load-clients", "1", "--json", str(out), "--md", str(md)]
    argv += ["--long-s", "1", "--after-s", "1", "--gap-s", "0.1"]  # and a tiny long phase
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["load_clients"] == 1 and "git_head" in result["code"]
    assert sorted(result["summary"]) == [
        "idle/one factor", "idle/profile only", "idle/with pace",
        "loaded/one factor", "loaded/profile only", "loaded/with pace",
    ]  # fmt: skip
    assert result["load"]["loaded"]["requests"] > 0  # the load process really sent requests
    for key, v in result["summary"].items():
        (rec,) = result["phases"][key.split("/")[0]][key.split("/")[1]]
        assert len(rec["latency_ms"]) == 2 and v["median_ms"] > 0
        if key.endswith("profile only"):
            assert v["server_factors"] == [1.0] and v["server_queues_ms"] == [0.0]  # never paced
        if key.endswith("one factor"):
            assert v["server_queues_ms"] == [0.0]  # the queue folded into the factor
        assert len(v["predicted_cloud_at_end_ms"]) == 1 and v["measured_cloud_median_ms"] > 0
    assert {k: len(v) for k, v in result["cloud_ms"].items()} == {"idle": 2, "loaded": 2}  # forced cloud-only
    assert sorted(result["long"]) == ["own requests only", "the server's reports"]
    for rec in result["long"].values():
        assert rec["loaded_requests"] > 0 and len(rec["events"]) > rec["loaded_requests"]  # some after
        assert rec["load"]["requests"] > 0 and rec["load_stopped_at_s"] >= 1.0
        for e in rec["events"]:  # each request recorded: when, which plan, and whether it was given up
            assert e["t_s"] >= 0 and e["strategy"] in ("edge-only", "split", "cloud-only")
            assert isinstance(e["gave_up"], bool) and e["total_ms"] > 0
            assert not (e["gave_up"] and e["remote"])  # a request given up finished on the device
    table = md.read_text()
    assert table.count("| idle |") == 3 and table.count("| loaded |") == 3
    assert "with one factor for queue and compute" in table
    assert "Loaded for 1 s, then idle for 1 s" in table and "| the server's reports |" in table
    assert table in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slowdown", "0.5"], "--slowdown must be >= 1"),
        (["--requests", "0"], "expected an integer in 1..1000000"),
        (["--uplink-mbps", "nan"], "expected a positive number"),
    ],
)
def test_bad_arguments_are_refused(bench, argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err


def test_one_factor_folds_the_queue_into_the_ratio_and_reads_the_single_pace(bench):
    from splitdnn.runtime import serde
    from splitdnn.runtime._server_pace import ServerPace

    load = serde.ServerLoadData(6.0, 20, 3, 10.0, 25, compute_pace=1.5, queue_ms=90.0)
    with bench.one_factor():
        pace = ServerPace(min_samples=1)
        pace.observe(10.0, 60.0, 50.0)
        assert pace.factor == 6.0 and pace.queue_ms == 0.0  # (50 + 10) / 10, nothing queued apart
        assert not pace.observe(0.05, 60.0, 50.0) and pace.samples == 1  # a tiny tail: not used
        pace.clear()
        assert pace.held(10.0, 80.0, 1.0) and pace.factor == 8.0 and pace.queue_ms == 0.0
        read = serde.parse_server_load(serde.build_probe_response(1, load))
        assert read is not None and (read.pace, read.compute_pace, read.queue_ms) == (6.0, 0.0, 0.0)
    pace = ServerPace(min_samples=1)  # the patches are gone
    pace.observe(10.0, 60.0, 50.0)
    assert pace.factor == 1.0 and pace.queue_ms == 50.0
