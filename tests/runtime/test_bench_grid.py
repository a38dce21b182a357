"""`splitdnn bench` end to end on a tiny grid: JSON schema, oracle regret, predicted-only markers, refusals.

One tiny run (alexnet at 1x3x64x64, two bandwidths, two requests) is shared by the tests of this
module. No timing is asserted (DESIGN section 7): only the structure and the definitions.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from splitdnn.cli import main
from splitdnn.errors import ConfigError
from splitdnn.runtime.bench import STRATEGIES, BenchConfig, CellResult, pool_cuts, run_bench
from splitdnn.runtime.bench_measure import Timing
from splitdnn.runtime.bench_netns import cell_from_dict, cell_to_dict
from splitdnn.runtime.bench_report import bench_document, format_markdown, write_results

TINY = {"input_shape": (1, 3, 64, 64), "slowdowns": (1.5,), "requests": 2, "warmup": 0, "rtt_ms": 2.0,
        "profile_repeats": 1, "oracle_max_cuts": 2}  # fmt: skip
#: 0.2 Mbit/s: a raw 64x64 input (48 KiB) takes ~2 s, over the 1 s budget: cloud-raw is predicted only
LOW, HIGH = 0.2, 50.0
REQUIRED = ("model", "uplink_mbps", "strategy", "predicted_ms", "measured_ms", "regret")


@pytest.fixture(scope="module")
def run() -> tuple[BenchConfig, list[CellResult], dict[str, Any]]:
    config = BenchConfig(models=("alexnet",), uplinks_mbps=(LOW, HIGH), budget_s=1.0, **TINY)  # type: ignore[arg-type]
    with warnings.catch_warnings():  # profiling warns about noisy timings: irrelevant to structure
        warnings.simplefilter("ignore", RuntimeWarning)
        cells = run_bench(config, progress=True, out=io.StringIO())
    return config, cells, bench_document(cells, config, command="splitdnn bench (test)")


def test_records_have_the_interface_fields(run: tuple[BenchConfig, list[CellResult], dict[str, Any]]) -> None:
    _, cells, doc = run
    text = json.dumps(doc, allow_nan=False)  # strict JSON: no NaN or infinity anywhere
    back = json.loads(text)
    assert back["schema"] == "splitdnn.bench/1"
    assert len(back["records"]) == len(cells) * len(STRATEGIES) == 2 * 5
    for rec in back["records"]:
        for key in REQUIRED:
            assert key in rec, key
        assert rec["model"] == "alexnet" and rec["uplink_mbps"] in (LOW, HIGH)
        assert rec["strategy"] in STRATEGIES
        assert isinstance(rec["measured"], bool)
        assert rec["profile_scale_device"] > 0 and rec["profile_scale_server"] > 0
    assert {r["strategy"] for r in back["records"]} == set(STRATEGIES)
    assert isinstance(back["mape"], float) and back["mape"] >= 0
    assert set(back["mape_by_strategy"]) == set(STRATEGIES)
    mine = [r for r in back["records"] if r["strategy"] == "splitdnn" and r["measured"]]
    assert back["mape"] == pytest.approx(statistics.fmean(abs(r["error_pct"]) for r in mine))
    assert back["cuts"] and all("predicted_ms" in c and "measured" in c for c in back["cuts"])
    # where a strategy's requests' time went: every measured run of one client has it (the oracle's
    # record pools runs of several)
    for rec in back["records"]:
        if rec["measured"] and rec["strategy"] != "oracle":
            parts = rec["parts_ms"]
            assert set(parts) == {"device", "network", "server"}
            assert all(v["measured"] >= 0 and v["predicted"] >= 0 for v in parts.values())
            if rec["plan"] == "edge-only":
                assert parts["network"]["predicted"] == parts["server"]["predicted"] == 0


def test_regret_is_at_least_one_and_the_oracle_is_the_best_measured(
    run: tuple[BenchConfig, list[CellResult], dict[str, Any]],
) -> None:
    _, cells, doc = run
    for cell in cells:
        oracle = cell.runs["oracle"].timing
        assert oracle.measured
        pooled = pool_cuts(tuple(cell.runs.values()), cell.cuts)
        assert oracle.median_ms == min(Timing(0.0, s).median_ms for s in pooled.values())
        # every measured run is in its cut's pool
        n_runs = sum(len(r.timing.samples_ms) for k, r in cell.runs.items() if k != "oracle")
        n_runs += sum(len(c.timing.samples_ms) for c in cell.cuts if c.timing is not None)
        assert sum(len(s) for s in pooled.values()) == n_runs
        # edge-only is one cut however often it ran
        assert sum(1 for key in pooled if key[0] == "edge-only") == 1
    for rec in doc["records"]:
        if rec["measured"]:
            assert rec["regret"] >= 1.0 and rec["cut_ms"] > 0
        if rec["strategy"] == "oracle":
            assert rec["regret"] == 1.0
            assert rec["candidates"] >= 3 and 1 <= rec["candidates_measured"] <= rec["candidates"]
    # every chain cut of the model is a candidate of every cell, measured or not
    chain = [c for c in cells[0].cuts if c.kind == "chain"]
    assert len(chain) >= 10 and all(c.note or c.timing is not None for c in chain)


def test_hopeless_cells_are_predicted_only_and_excluded(
    run: tuple[BenchConfig, list[CellResult], dict[str, Any]],
) -> None:
    _, _, doc = run
    raw_low = next(r for r in doc["records"] if r["strategy"] == "cloud-raw" and r["uplink_mbps"] == LOW)
    assert raw_low["measured"] is False
    assert raw_low["measured_ms"] is None and raw_low["regret"] is None and raw_low["error_pct"] is None
    assert raw_low["predicted_ms"] > 1000.0 and "budget" in raw_low["note"]
    assert doc["excluded"]["cloud-raw"] >= 1
    assert "not run" in format_markdown(doc)
    # the speed-up of a cell whose best baseline was not run says so; here edge-only is run and wins
    mine_low = next(r for r in doc["records"] if r["strategy"] == "splitdnn" and r["uplink_mbps"] == LOW)
    assert mine_low["measured"] and mine_low["speedup_vs_best_baseline"] > 0


def test_results_are_written(
    run: tuple[BenchConfig, list[CellResult], dict[str, Any]], tmp_path: Path
) -> None:
    _, _, doc = run
    paths = write_results(doc, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["bench.json", "bench.md", "bench_alexnet_x1.5.png"]
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["records"]
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "splitdnn bench (test)" in md and "## alexnet [1, 3, 64, 64], device slowdown x1.5" in md
    assert (tmp_path / "out" / "bench_alexnet_x1.5.png").read_bytes()[:4] == b"\x89PNG"


def test_cells_survive_the_process_boundary(
    run: tuple[BenchConfig, list[CellResult], dict[str, Any]],
) -> None:
    """The netns client part sends its cell back as JSON: the round trip must be exact."""
    _, cells, _ = run
    for cell in cells:
        assert cell_from_dict(json.loads(json.dumps(cell_to_dict(cell)))) == cell


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"models": ()}, "models must be a non-empty list"),
        ({"models": ("nope",)}, r"expected names among .*found \['nope'\]"),
        ({"models": ("alexnet", "alexnet")}, "duplicates"),
        ({"uplinks_mbps": (0.0,)}, r"uplinks_mbps must hold finite numbers > 0.*found 0\.0"),
        ({"uplinks_mbps": (math.inf,)}, "uplinks_mbps must hold finite numbers > 0"),
        ({"uplinks_mbps": "5"}, "uplinks_mbps must be a non-empty list"),
        ({"slowdowns": (0.5,)}, r"factors >= 1.*found \[0\.5\]"),
        ({"requests": 0}, "requests must be an integer >= 1, found 0"),
        ({"warmup": -1}, "warmup must be an integer >= 0"),
        ({"budget_s": 0}, "budget_s must be a number"),
        ({"oracle_prune": 0.5}, "oracle_prune must be a number >= 1"),
        ({"input_shape": (3,)}, "input_shape must be batch first"),
        ({"link": "wifi"}, "link must be one of shaper, netns, found 'wifi'"),
        ({"refresh_runs": -1}, "refresh_runs must be an integer >= 0, found -1"),
        ({"refresh_pool": 0}, "refresh_pool must be an integer >= 1, found 0"),
        ({"rtt_ms": 1e9}, r"rtt_ms must be at most 10000 \(10 s"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BenchConfig(**kwargs)


def test_cli_refuses_before_measuring(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", "--no-grid", "--out-dir", str(tmp_path)]) == 1
    assert "--no-grid leaves nothing to run" in capsys.readouterr().err
    assert main(["bench", "--models", "nope", "--out-dir", str(tmp_path)]) == 1
    assert "expected names among" in capsys.readouterr().err
    assert main(["bench", "--models", "alexnet", "--change", "fast:slow", "--out-dir", str(tmp_path)]) == 1
    assert "neither 'step', BEFORE:AFTER@SECONDS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--oracle-prune", "0.5"])
    assert "expected a factor >= 1 or 'inf'" in capsys.readouterr().err
    # a folder that cannot be made: refused before measuring (it failed after the whole grid)
    (tmp_path / "file").write_text("x")
    started = time.monotonic()
    assert main(["bench", "--models", "alexnet", "--out-dir", str(tmp_path / "file" / "sub")]) == 1
    assert "cannot hold the results" in capsys.readouterr().err and time.monotonic() - started < 10


def test_the_recorded_command_keeps_every_digit_and_sigterm_interrupts_the_run() -> None:
    import argparse
    import os
    import signal

    from splitdnn._cli_runtime import _bench_command, _sigterm_interrupts

    args = argparse.Namespace(
        models=["alexnet"], uplink_mbps=[0.1234567, 5.85], slowdown=[8.0], requests=5, warmup=1,
        rtt_ms=20.0, device_threads=1, profile_repeats=3, budget_s=30.0, oracle_prune=math.inf,
        oracle_max_cuts=12, refresh_runs=5, refresh_pool=3, link="shaper", server_threads=None,
        max_error=None, input_shape=None, change=None, no_grid=False, out_dir="results",
        downlink_factor=4.0,
    )  # fmt: skip
    command = _bench_command(args)
    assert "--uplink-mbps 0.1234567 5.85 --downlink-factor 4" in command and "--oracle-prune inf" in command
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):  # what Ctrl-C tears down, SIGTERM now does too
        with _sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_profiles_are_rescaled_to_a_fresh_run_before_each_cell() -> None:
    """refresh_profiles scales every time of both profiles by (fresh whole-model run / profile's
    fused total), keeps the device's emulation factor, and says so in the profile's notes."""
    import dataclasses

    from splitdnn.runtime.bench import prepare_model, refresh_profiles

    # 3 profiling repeats: with TINY's one, a single timing of this ~ms model is the baseline (a CI run
    # got fd 1.08 where ~1/3 was expected: the fresh runs 3.2x that one timing)
    # one server thread: with torch's default the server's runs competed with whatever else the CI
    # machine ran (a fresh-clone run got fs 0.64 where ~1/3 was expected, with profiles 3x slower)
    settings = {**TINY, "refresh_runs": 3, "profile_repeats": 3, "server_threads": 1}
    config = BenchConfig(models=("alexnet",), **settings)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        prepared = prepare_model(config, "alexnet", lambda _: None)
    # pretend the start-of-run profiles came from a machine 10x slower than this one is now
    # with an idle factor (--idle-factor), which the refresh must keep however far it rescales
    slow = {
        s: dataclasses.replace(p, total=p.total.scaled(10.0), idle_factor=1.25)
        for s, p in prepared.devices.items()
    }
    prepared = dataclasses.replace(prepared, devices=slow, server=dataclasses.replace(
        prepared.server, total=prepared.server.total.scaled(10.0)))  # fmt: skip
    device, server, (fd, fs) = refresh_profiles(prepared, config, 1.5)
    assert 0.02 < fd < 0.5 and 0.02 < fs < 0.5  # about 1/10, give or take this machine's noise
    old = prepared.devices[1.5]
    assert device.slowdown == old.slowdown == 1.5
    assert device.idle_factor == old.idle_factor == 1.25  # rescaled below x1 overall: the same emulation
    assert device.total.median_ms == pytest.approx(old.total.median_ms * fd)
    for a, b in zip(device.nodes, old.nodes, strict=True):
        assert a.calibrated_ms == pytest.approx(b.calibrated_ms * fd)
    assert server.total.median_ms == pytest.approx(prepared.server.total.median_ms * fs)
    assert "rescaled" in device.notes and "rescaled" in server.notes

    off = dataclasses.replace(config, refresh_runs=0)
    assert refresh_profiles(prepared, off, 1.5) == (old, prepared.server, (1.0, 1.0))


def test_a_burst_during_one_refresh_moves_a_minority_of_the_pooled_samples() -> None:
    """DriftTracker: the factors are medians over the samples of the last `pooled` refreshes; one
    refresh caught by a burst does not set its cell's factor, a lasting change takes over."""
    from splitdnn.runtime.bench import DriftTracker

    drift = DriftTracker(3)
    assert drift.add([1.0, 1.02, 0.98], [1.0, 1.01, 0.99]) == (1.0, 1.0)
    assert drift.add([1.01, 0.99, 1.0], [1.0, 1.0, 1.0]) == (1.0, 1.0)
    fd, fs = drift.add([1.4, 1.41, 1.39], [1.2, 1.22, 1.21])  # the burst: alone it would say 1.4 / 1.21
    assert fd == pytest.approx(1.01) and fs == pytest.approx(1.0)
    drift.add([1.4, 1.4, 1.4], [1.2, 1.2, 1.2])  # it lasts: two of three refreshes slow
    assert drift.add([1.4, 1.4, 1.4], [1.2, 1.2, 1.2]) == (1.4, 1.2)  # the first ones left the pool
    alone = DriftTracker(1)
    alone.add([1.0], [1.0])
    assert alone.add([1.4], [1.2]) == (1.4, 1.2)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match=r"pools >= 1 refreshes, found"):
            DriftTracker(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one sample"):
        drift.add([], [1.0])


def test_the_refresh_pools_its_factors_with_the_models_earlier_refreshes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """refresh_profiles(drift=...) rescales by the pooled factors, not by this refresh's alone."""
    from types import SimpleNamespace

    import splitdnn.runtime.bench as bench

    cost = {"ms": 1.0}

    class Sleeper(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(cost["ms"] / 1e3)
            return x

    prof = SimpleNamespace(total=SimpleNamespace(median_ms=1.0))
    prepared = SimpleNamespace(devices={1.0: prof}, server=prof, traced=SimpleNamespace(module=Sleeper()),
                               x=torch.ones(1))  # fmt: skip
    monkeypatch.setattr(bench, "_rescaled", lambda p, f, what: what)
    config = BenchConfig(models=("alexnet",), **{**TINY, "refresh_runs": 3, "device_threads": 2})  # type: ignore[arg-type]
    drift = bench.DriftTracker(3)
    cost["ms"] = 20.0
    for _ in range(2):
        _, _, (fd, fs) = bench.refresh_profiles(prepared, config, 1.0, span_s=0.0, drift=drift)  # type: ignore[arg-type]
    assert 15 < fd < 60 and 15 < fs < 60  # sleeping 20 ms against a 1 ms profile (the wall clock; load adds)
    cost["ms"] = 80.0
    _, _, (fd, fs) = bench.refresh_profiles(prepared, config, 1.0, span_s=0.0, drift=drift)  # type: ignore[arg-type]
    assert 15 < fd < 60 and 15 < fs < 60  # one slow refresh of three: the pooled median stays
    _, _, (alone_d, alone_s) = bench.refresh_profiles(prepared, config, 1.0, span_s=0.0)  # type: ignore[arg-type]
    assert alone_d > 75 and alone_s > 75  # without the tracker: this refresh alone


def test_a_lost_cell_is_rematched_and_pooled(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the best measured cut is not splitdnn's, both run again side by side and the samples are
    pooled: a rival that won one noisy round by luck no longer decides the regret alone."""
    import dataclasses
    from types import SimpleNamespace

    from splitdnn.runtime import bench
    from splitdnn.runtime.bench import CutRun, StrategyRun, _best_measured, _rematch

    mine = StrategyRun("splitdnn", 100.0, Timing(100.0, (110.0,) * 5), "split", ("a",), ("raw",))
    rival_cut = CutRun("b", "chain", 105.0, Timing(105.0, (100.0,) * 5), ("b",), ("raw",))
    runs = {"splitdnn": mine}
    assert _best_measured(tuple(runs.values()), (rival_cut,)).cut == ("b",)  # lost the first round

    calls: list[list[str]] = []

    def fake_measure(clients: dict, x: Any, warmup: int, requests: int, budget: float) -> dict:
        calls.append(list(clients))
        return {"splitdnn": Timing(100.0, (101.0,) * requests), "cut:b": Timing(105.0, (104.0,) * requests)}

    monkeypatch.setattr(bench, "measure_interleaved", fake_measure)
    client = SimpleNamespace(planner=SimpleNamespace(switches=0))
    ctx = SimpleNamespace(x=None, config=BenchConfig(requests=5))
    extra = _rematch({"splitdnn": client, "cut:b": client}, runs, (rival_cut,), ctx)  # type: ignore[arg-type]
    assert calls == [["splitdnn", "cut:b"]]
    assert [c.label for c in extra] == ["rematch:splitdnn", "rematch:cut:b"]
    assert all(len(c.timing.samples_ms) == 10 for c in extra if c.timing)
    best = _best_measured(tuple(runs.values()), (rival_cut, *extra))
    assert best.cut == ("a",)  # 5 x 110 + 10 x 101 pooled beats 5 x 100 + 10 x 104

    # the same cut, or a client that switched plans: no rematch
    same = {"splitdnn": StrategyRun("splitdnn", 100.0, Timing(100.0, (99.0,) * 5), "split", ("a",), ("raw",))}
    assert _rematch({"splitdnn": client}, same, (rival_cut,), ctx) == ()  # type: ignore[arg-type]
    switched = {"splitdnn": dataclasses.replace(mine, switches=1)}
    both = {"splitdnn": client, "cut:b": client}
    assert _rematch(both, switched, (rival_cut,), ctx) == ()  # type: ignore[arg-type]
    assert len(calls) == 1

    # splitdnn's cut was an oracle candidate too: its pinned client runs the rematch
    mine_cut = CutRun("a", "chain", 100.0, Timing(100.0, (112.0,) * 5), ("a",), ("raw",))

    def fake_pinned(clients: dict, x: Any, warmup: int, requests: int, budget: float) -> dict:
        calls.append(list(clients))
        return {"cut:a": Timing(100.0, (101.0,) * requests), "cut:b": Timing(105.0, (104.0,) * requests)}

    monkeypatch.setattr(bench, "measure_interleaved", fake_pinned)
    pinned = {"splitdnn": client, "cut:a": client, "cut:b": client}
    extra = _rematch(pinned, runs, (rival_cut, mine_cut), ctx)  # type: ignore[arg-type]
    assert calls[-1] == ["cut:a", "cut:b"]
    assert [c.label for c in extra] == ["rematch:cut:a", "rematch:cut:b"] and extra[0].cut == ("a",)


def test_the_refresh_alternates_device_and_server_runs_spread_over_its_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of load shorter than the span moves a minority of the samples, not the median."""
    from types import SimpleNamespace

    import splitdnn.runtime.bench as bench

    calls: list[tuple[float, int]] = []

    class Recording(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append((time.perf_counter(), torch.get_num_threads()))
            return x

    total = SimpleNamespace(median_ms=1.0)
    prof = SimpleNamespace(total=total)
    prepared = SimpleNamespace(devices={2.0: prof}, server=prof, traced=SimpleNamespace(module=Recording()),
                               x=torch.ones(1))  # fmt: skip
    monkeypatch.setattr(bench, "_rescaled", lambda p, f, what: what)
    config = BenchConfig(models=("alexnet",), **{**TINY, "refresh_runs": 4, "device_threads": 1,
                                                  "server_threads": 2})  # type: ignore[arg-type]  # fmt: skip
    device, server, (fd, fs) = bench.refresh_profiles(prepared, config, 2.0, span_s=0.6)  # type: ignore[arg-type]
    assert (device, server) == ("device", "server") and fd > 0 and fs > 0
    assert [threads for _, threads in calls] == [1, 2] * 5  # a warm-up pair, then 4 alternating rounds
    timed = [t for t, _ in calls[2::2]]
    assert timed[-1] - timed[0] >= 0.55  # the 4 rounds span 0.6 s, not a burst of back-to-back runs
    assert all(b - a >= 0.18 for a, b in itertools.pairwise(timed))


class _Recorder:
    """Stands in for a SplitClient in measure_interleaved: logs its requests and probe waits."""

    def __init__(self, name: str, log: list[str]) -> None:
        from types import SimpleNamespace

        self.name, self.log = name, log
        cost = SimpleNamespace(
            total_ms=1.0, device_ms=0.25, encode_ms=0.05, transfer_ms=(0.3,), rtt_ms=(0.1,), result_ms=0.0,
            server_ms=0.25, decode_ms=0.05,
        )  # fmt: skip
        self.plan = SimpleNamespace(cost=cost, strategy="split")
        self.server_queue_ms = 0.05  # the server's queue its plans are priced with (in rtt_ms)
        self.last_breakdown: Any = None

    def infer(self, x: Any) -> None:
        from types import SimpleNamespace

        self.log.append(f"infer {self.name}")
        self.last_breakdown = SimpleNamespace(
            total_ms=1.0, strategy="split", fallback="", bytes_sent=0, boundary=(), codecs=(),
            predicted_ms=1.0, head_ms=0.2, encode_ms=0.1, tail_local_ms=0.0, network_ms=0.3, client_ms=0.1,
            server_queue_ms=0.0, decode_ms=0.1, server_compute_ms=0.2,
        )  # fmt: skip

    def wait_for_probe(self, timeout: float | None = None) -> bool:
        self.log.append(f"probe-wait {self.name}")
        return True


def test_interleaved_requests_wait_for_each_probe_and_vary_their_order() -> None:
    """A client's background link probe crossed the next client's request on the shared link, and the
    order only rotated, so the same strategy followed splitdnn in most rounds."""
    from splitdnn.runtime.bench_measure import measure_interleaved

    log: list[str] = []
    clients = {k: _Recorder(k, log) for k in "abcd"}
    timings = measure_interleaved(clients, None, 2, 8, 1e6)  # type: ignore[arg-type]  # warm-up too
    assert all(len(t.samples_ms) == 8 for t in timings.values())
    for t in timings.values():  # each request's parts, and the plan's
        assert t.device_ms == pytest.approx((0.3,) * 8) and t.network_ms == pytest.approx((0.4,) * 8)
        assert t.server_ms == pytest.approx((0.3,) * 8)
        # the priced queue moved from the network part (transfer + round trip) to the server's
        assert t.predicted_parts_ms == pytest.approx((0.3, 0.35, 0.35))
    for i, entry in enumerate(log):
        if entry.startswith("infer"):
            assert log[i + 1] == f"probe-wait {entry.split()[1]}"  # before anyone else's request
    rounds = [[e.split()[1] for e in log if e.startswith("infer")][r * 4 : r * 4 + 4] for r in range(8)]
    followers = {rnd[rnd.index("a") + 1] for rnd in rounds if rnd.index("a") < 3}
    assert len(followers) > 1 and len({tuple(r) for r in rounds}) > 2
    again: list[str] = []
    measure_interleaved({k: _Recorder(k, again) for k in "abcd"}, None, 2, 8, 1e6)  # type: ignore[arg-type]
    assert [e for e in again if e.startswith("infer")] == [e for e in log if e.startswith("infer")]


def _one_cell() -> CellResult:
    from splitdnn.runtime.bench import StrategyRun

    t = Timing(200.0, (200.0, 201.0), "edge-only", bytes_sent=(0, 0))
    runs = {s: StrategyRun(s, 200.0, t) for s in ("edge-only", "cloud-raw", "cloud-lossless", "splitdnn")}
    runs["oracle"] = StrategyRun("oracle", 200.0, t)
    return CellResult("alexnet", 8.0, 5.85, runs, ())


def test_an_interrupted_run_keeps_the_cells_it_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Results were written only at the end: an interrupt after hours of cells left nothing."""
    from splitdnn.runtime import bench as bench_module
    from splitdnn.runtime.bench_netns import cell_from_dict

    def two_then_interrupted(config: Any, *, on_cell: Any, **kw: Any) -> list[CellResult]:
        on_cell(_one_cell())
        on_cell(_one_cell())
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_module, "run_bench", two_then_interrupted)
    assert main(["bench", "--models", "alexnet", "--out-dir", str(tmp_path), "--no-plots"]) == 130
    lines = (tmp_path / "bench.partial.jsonl").read_text().splitlines()
    assert len(lines) == 2 and cell_from_dict(json.loads(lines[0])).model == "alexnet"
    assert "the cells measured so far are in" in capsys.readouterr().err

    def two(config: Any, *, on_cell: Any, **kw: Any) -> list[CellResult]:
        cells = [_one_cell(), _one_cell()]
        for c in cells:
            on_cell(c)
        return cells

    monkeypatch.setattr(bench_module, "run_bench", two)
    assert main(["bench", "--models", "alexnet", "--out-dir", str(tmp_path), "--no-plots", "--quiet"]) == 0
    assert (tmp_path / "bench.json").exists() and not (tmp_path / "bench.partial.jsonl").exists()


def test_the_oracle_names_each_source_once_and_old_plots_are_not_left_behind(tmp_path: Path) -> None:
    from splitdnn.runtime.bench import CutRun, _best_measured

    cell = _one_cell()
    edge = CutRun("edge-only", "edge", 200.0, Timing(200.0, (199.0, 200.0), "edge-only", bytes_sent=(0, 0)))
    oracle = _best_measured(tuple(r for k, r in cell.runs.items() if k != "oracle"), (edge,))
    assert oracle.source == "edge-only"  # it was "edge-only + edge-only": a strategy and a cut label
    for stale in ("bench_vgg16_x8.png", "change.png"):  # an earlier run's, in the same folder
        (tmp_path / stale).write_bytes(b"old")
    doc = bench_document([cell], BenchConfig(models=("alexnet",), uplinks_mbps=(5.85,)))
    paths = write_results(doc, tmp_path, plots=True)
    assert not (tmp_path / "bench_vgg16_x8.png").exists() and not (tmp_path / "change.png").exists()
    assert tmp_path / "bench_alexnet_x8.png" in paths


def test_the_same_cut_with_another_codec_is_not_the_oracles_cut() -> None:
    """A regret over the goal on the oracle's cut is called noise; the cut was compared without its
    codecs, so splitdnn's zstd beside the oracle's raw on the same tensor was called noise too."""
    from splitdnn.runtime.bench import CutRun, StrategyRun, _best_measured

    def timing(
        ms: float, samples: tuple[float, ...], cut: tuple[str, ...] = (), codecs: tuple[str, ...] = ()
    ) -> Timing:
        return Timing(ms, samples, "split" if cut else "edge-only", boundary=cut, codecs=codecs,
                      bytes_sent=(1,) * len(samples))  # fmt: skip

    runs = {
        "edge-only": StrategyRun("edge-only", 200, timing(200, (200, 201, 202))),
        "cloud-raw": StrategyRun("cloud-raw", 300, timing(300, (300,)), "cloud-only", ("x",), ("raw",)),
        "cloud-lossless": StrategyRun(
            "cloud-lossless", 300, timing(300, (300,)), "cloud-only", ("x",), ("zstd",)
        ),
        "splitdnn": StrategyRun(
            "splitdnn", 100, timing(100, (110, 111, 112), ("f5",), ("zstd",)), "split", ("f5",), ("zstd",)
        ),
    }
    cuts = (CutRun("f5", "chain", 101, timing(101, (100, 101, 102), ("f5",), ("raw",)), ("f5",), ("raw",)),)
    runs["oracle"] = _best_measured(tuple(runs.values()), cuts)
    cell = CellResult("alexnet", 8.0, 5.85, runs, cuts)
    started = "2020-01-01T00:00:00+00:00"
    doc = bench_document([cell], BenchConfig(models=("alexnet",), uplinks_mbps=(5.85,)), started_utc=started)
    mine = next(r for r in doc["records"] if r["strategy"] == "splitdnn")
    assert mine["regret"] > 1.05 and mine["same_cut_as_oracle"] is False
    # what a published table rests on is in the file: the cut's own samples (regret is recomputed
    # from pooled samples), the code, the machine, when, and the link's fixed settings
    json.dumps(doc, allow_nan=False)
    (cut,) = doc["cuts"]
    assert cut["samples_ms"] == [100.0, 101.0, 102.0]
    import subprocess

    import splitdnn

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(splitdnn.__file__).parent, capture_output=True, text=True
    )
    if head.returncode == 0:  # a checkout (CI's clone is one)
        assert doc["code"]["git_head"] == head.stdout.strip()
    assert doc["code"]["splitdnn"] == splitdnn.__version__
    assert doc["machine"]["hostname"] and doc["machine"]["cpu_model"]
    assert doc["started_utc"] == started and doc["finished_utc"] > started


def test_a_downlink_factor_shapes_and_prices_every_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The downlink was always the uplink's rate (0.25 s for 4 KB of logits at 0.13 Mbit/s)."""
    from splitdnn.runtime import bench as bench_module
    from splitdnn.runtime.shaper import ShapedLink
    from splitdnn.schema import Link

    config = BenchConfig(models=("alexnet",), uplinks_mbps=(1.0, 5.0), downlink_factor=4.0, **TINY)  # type: ignore[arg-type]
    assert config.link_at(5.0) == Link(5.0, downlink_mbps=20.0, rtt_ms=2.0)
    assert BenchConfig().link_at(5.0).effective_downlink_mbps == 5.0
    for bad in (0, -1.0, math.inf, True, "4"):
        with pytest.raises(ConfigError, match="downlink_factor must be a positive finite number"):
            BenchConfig(downlink_factor=bad)  # type: ignore[arg-type]
    shaped: list[tuple[float, float]] = []
    real_set_rates = ShapedLink.set_rates

    def set_rates(self: ShapedLink, **kw: Any) -> None:
        shaped.append((kw["uplink_mbps"], kw["downlink_mbps"]))
        real_set_rates(self, **kw)

    monkeypatch.setattr(ShapedLink, "set_rates", set_rates)

    def unchanged(prepared: Any, config: BenchConfig, slowdown: float, drift: Any = None) -> Any:
        return prepared.devices[slowdown], prepared.server, (1.0, 1.0)

    monkeypatch.setattr(bench_module, "refresh_profiles", unchanged)
    monkeypatch.setattr(bench_module, "measure_cell", lambda *a, **kw: _one_cell())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_bench(config)
    assert shaped == [(1.0, 4.0), (5.0, 20.0)]
    doc = bench_document([_one_cell()], config)
    assert doc["settings"]["downlink"] == "4 x uplink" and "downlink 4 x uplink" in format_markdown(doc)


def test_the_link_parameters_recorded_are_those_of_the_link_that_ran() -> None:
    """A netns run recorded the in-process shaper's burst, which only delays there."""
    import re

    script = (Path(__file__).resolve().parents[2] / "scripts" / "netns_link.sh").read_text()
    rule = re.search(r"b = r \* 1e6 / 8 \* ([0-9.]+); if \(b < ([0-9]+)\)", script)
    assert rule is not None, "netns_link.sh's burst rule moved: update bench_report._link_parameters"
    seconds, floor = float(rule.group(1)), int(rule.group(2))
    netns = bench_document([_one_cell()], BenchConfig(link="netns"))["settings"]["link_parameters"]
    assert netns["burst"].startswith(f"{seconds * 1e3:g} ms of traffic, at least {floor} bytes (tc tbf")
    assert "SDNN_TBF_LATENCY_MS" in netns["tbf"]
    shaped = bench_document([_one_cell()], BenchConfig(link="shaper"))["settings"]["link_parameters"]
    assert shaped["burst"] == "5 ms of traffic, at least 1500 bytes" and "tbf" not in shaped
