"""scripts/bench_plan.py: the predicted plan-latency benchmark keeps its invariants on committed profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench(load_script):
    pytest.importorskip("sklearn")
    return load_script("bench_plan")


def test_slow_device_scales_every_device_time(bench):
    from splitdnn.schema import load_profile

    dev = load_profile(ROOT / "profiles" / "alexnet-cpu-t1.json")
    slow = bench.slow_device(dev, 4.0)
    assert slow.slowdown == 4.0 * dev.slowdown and slow.total.median_ms == pytest.approx(
        4 * dev.total.median_ms
    )
    for a, b in zip(dev.nodes, slow.nodes, strict=True):
        assert b.calibrated_ms == pytest.approx(4 * a.calibrated_ms)
        for ca, cb in zip(a.codecs, b.codecs, strict=True):
            assert (cb.encode_ms, cb.wire_bytes) == (pytest.approx(4 * ca.encode_ms), ca.wire_bytes)


def test_plans_are_never_worse_than_what_they_include(bench, tmp_path, capsys):
    out = tmp_path / "plan.json"
    md = tmp_path / "plan.md"
    args = ["--models", "alexnet", "--slowdowns", "1,8", "--uplinks", "0.13,18.88", "--photo-repeats", "1"]
    assert bench.main([*args, "--json", str(out), "--md", str(md)]) == 0
    capsys.readouterr()
    data = json.loads(out.read_text())
    assert data["setup"]["rtt_ms"] == 20.0 and "relative MSE <= 0.001" in data["setup"]["budget_reason"]
    (model,) = data["models"]
    photo = {r["spec"]: r for r in model["photo"]["specs"]}
    assert photo["raw"]["wire_bytes"] > 224 * 224 * 3 and photo["zstd"]["ratio_vs_u8"] > 1.0
    assert len(model["points"]) == 4
    eps = 1e-6
    for p in model["points"]:
        ms = {k: v["total_ms"] for k, v in p["plans"].items()}
        assert ms["split_raw"] <= min(ms["edge"], ms["cloud_raw"]) + eps
        assert ms["plan_lossless"] <= min(ms["split_raw"], ms["cloud_lossless"]) + eps
        assert ms["plan_lossy"] <= ms["plan_lossless"] + eps
        assert ms["cloud_lossless"] <= ms["cloud_raw"] + eps
        assert ms["cloud_photo_u8"] < ms["cloud_raw"]  # uint8 and compressed: a quarter of fp32 or less
        for b in p["plans"]["plan_lossless"]["boundary"]:
            assert b["codec"] in ("raw", "zstd")
        assert p["vs_cloud_lossless"]["plan_lossy"] in ("beats", "ties")
    assert {(r["model"], r["slowdown"]) for r in data["claim"]} == {("alexnet", 1.0), ("alexnet", 8.0)}
    assert "Does the chosen plan beat cloud-only" in md.read_text()


def test_verdict_has_a_one_percent_tie_band(bench):
    assert bench.verdict(98.0, 100.0) == "beats"
    assert bench.verdict(99.5, 100.0) == bench.verdict(100.5, 100.0) == "ties"
    assert bench.verdict(102.0, 100.0) == "loses"
