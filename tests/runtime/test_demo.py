"""`run_demo` end to end on a tiny configuration: server, shaper, clients, table. No timing is asserted."""

from __future__ import annotations

import io
import math

import pytest

from splitdnn.runtime.demo import DemoRow, Timing, _requests_within, format_demo, run_demo


@pytest.mark.filterwarnings("ignore:profile of:RuntimeWarning")
def test_run_demo_tiny() -> None:
    out = io.StringIO()
    rows = run_demo(
        "alexnet",
        (2.0, 50.0),
        slowdown=2.0,
        requests=2,
        warmup=0,
        rtt_ms=2.0,
        input_shape=(1, 3, 64, 64),
        profile_repeats=1,
        budget_s=5.0,
        out=out,
    )
    text = out.getvalue()
    assert [r.uplink_mbps for r in rows] == [2.0, 50.0]
    for r in rows:
        assert r.strategy in ("edge-only", "split", "cloud-only")
        assert r.edge_only.measured and len(r.edge_only.samples_ms) == 2
        assert r.chosen.measured and r.chosen.strategy
        assert r.speedup_vs_edge > 0 and r.speedup_vs_cloud > 0
    # the settings are printed, not hidden
    for needle in ("slowdown x2", "1 thread(s)", "shaper", "RTT 2 ms", "vs edge-only", "vs cloud-only"):
        assert needle in text
    assert "| 50 " in text
    for r in rows:  # where each request's time went, beside what the plan predicted for each part
        n = len(r.chosen.samples_ms)
        assert len(r.chosen.device_ms) == len(r.chosen.network_ms) == len(r.chosen.server_ms) == n
        # the three parts are the whole prediction, and within each measured request (the client's
        # own bookkeeping around them is in neither)
        assert sum(r.chosen.predicted_parts_ms) == pytest.approx(r.chosen.predicted_ms)
        for total, *parts in zip(
            r.chosen.samples_ms, r.chosen.device_ms, r.chosen.network_ms, r.chosen.server_ms, strict=True
        ):
            assert 0 < sum(parts) <= total + 1e-6 and min(parts) >= 0
        assert f"{r.uplink_mbps:g} Mbit/s, time by part (median measured / predicted ms): device " in text


def test_requests_fit_the_budget() -> None:
    assert _requests_within(100.0, 1, 5, 10.0) == (1, 5)
    assert _requests_within(3000.0, 1, 5, 10.0) == (0, 3)  # fewer, no warm-up
    assert _requests_within(30_000.0, 1, 5, 10.0) == (0, 0)  # predicted only


def test_predicted_only_entries_are_marked() -> None:
    edge = Timing(400.0, (400.0, 410.0, 420.0), "edge-only")
    row = DemoRow(
        uplink_mbps=0.13, rtt_ms=20.0, strategy="edge-only", boundary=(), codecs=(), wire_bytes=0,
        chosen=edge, edge_only=edge, cloud_only=Timing(35_000.0), link_estimate=None, switches=0,
    )  # fmt: skip
    assert row.speedup_vs_cloud == pytest.approx(35_000.0 / 410.0)
    text = format_demo([row])
    assert "35000 (predicted)" in text and "(predicted)" in text.splitlines()[2]
    assert math.isnan(Timing(1.0).median_ms)
    assert edge.text() == "410 [402-418] n=3"


def test_the_sent_column_is_measured_where_requests_ran() -> None:
    """It showed the plan's predicted bytes, beside measured latencies."""
    edge = Timing(400.0, (400.0, 410.0, 420.0), "edge-only")
    ran = Timing(300.0, (300.0, 310.0), "split", bytes_sent=(197_000, 199_000), boundary=("f",))

    def row(chosen: Timing) -> DemoRow:
        return DemoRow(
            uplink_mbps=18.88, rtt_ms=20.0, strategy="split", boundary=("f",), codecs=("zstd",),
            wire_bytes=150_000, chosen=chosen, edge_only=edge, cloud_only=edge, link_estimate=None,
            switches=0,
        )  # fmt: skip

    measured = format_demo([row(ran)]).splitlines()[2]
    assert "193.4 KiB" in measured and "146.5 KiB" not in measured  # 198 000 B, the median of the two
    assert "146.5 KiB (pred)" in format_demo([row(Timing(300.0))]).splitlines()[2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slowdown": 0.5}, r"slowdown must be a finite factor >= 1 .*found 0.5"),
        ({"slowdown": float("inf")}, "slowdown must be a finite factor"),
        ({"uplinks_mbps": [0.0]}, "uplinks_mbps must be positive"),
        ({"model": "nope"}, "the demo runs zoo models"),
        ({"requests": 0}, "requests must be an integer >= 1"),
    ],
)
def test_bad_settings_are_refused_before_any_work(
    kwargs: dict[str, object], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slowdown under 1 was found only after the model was built and profiling began."""
    import splitdnn.models
    from splitdnn.errors import ConfigError

    def no_build(*args: object, **kw: object) -> None:
        raise AssertionError("the model was built before the settings were checked")

    monkeypatch.setattr(splitdnn.models, "build_zoo_model", no_build)
    with pytest.raises(ConfigError, match=match):
        run_demo(**kwargs, out=io.StringIO())  # type: ignore[arg-type]


def test_time_by_part_shows_medians_against_the_prediction_and_leaves_out_parts_never_used() -> None:
    split = Timing(
        300.0, (320.0, 340.0, 330.0), "cloud-only", device_ms=(14.0, 16.0, 15.0),
        network_ms=(255.0, 260.0, 257.0), server_ms=(50.0, 60.0, 56.0),
        predicted_parts_ms=(13.0, 261.0, 30.0),
    )  # fmt: skip
    assert split.parts_text() == "device 15 / 13, network 257 / 261, server 56 / 30"
    local = Timing(400.0, (410.0,), "edge-only", device_ms=(410.0,), network_ms=(0.0,), server_ms=(0.0,),
                   predicted_parts_ms=(400.0, 0.0, 0.0))  # fmt: skip
    assert local.parts_text() == "device 410 / 400"
    assert Timing(400.0).parts_text() == ""  # not run: nothing measured
    row = DemoRow(
        uplink_mbps=18.88, rtt_ms=20.0, strategy="cloud-only", boundary=(), codecs=("zstd",), wire_bytes=1,
        chosen=split, edge_only=local, cloud_only=split, link_estimate=None, switches=0,
    )  # fmt: skip
    assert (
        "18.88 Mbit/s, time by part (median measured / predicted ms): device 15 / 13, network 257 / 261, "
        "server 56 / 30" in format_demo([row])
    )
