"""`splitdnn bench --link netns`: the server in one namespace, the client part in the other, kernel tbf.

The end-to-end test is marked ``root`` and skips, saying why, where namespaces cannot be made; the
refusal without root runs everywhere (the reason is simulated).
"""

from __future__ import annotations

import io
import json
import warnings

import pytest

from splitdnn.errors import ConfigError
from splitdnn.runtime import netns
from splitdnn.runtime.bench import BenchConfig, run_bench
from splitdnn.runtime.bench_report import bench_document

_REASON = netns.unavailable_reason()


def test_netns_link_is_refused_clearly_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        netns, "unavailable_reason", lambda script=None: "needs root (network namespaces and tc)"
    )
    config = BenchConfig(models=("alexnet",), uplinks_mbps=(20.0,), input_shape=(1, 3, 64, 64), link="netns")
    with pytest.raises(
        ConfigError, match=r"--link netns needs network namespaces.*needs root.*--link shaper"
    ):
        run_bench(config)


@pytest.mark.root
@pytest.mark.skipif(_REASON is not None, reason=f"netns link: {_REASON}")
def test_bench_over_a_kernel_shaped_link() -> None:
    config = BenchConfig(
        models=("alexnet",), uplinks_mbps=(20.0,), slowdowns=(1.5,), input_shape=(1, 3, 64, 64),
        requests=1, warmup=0, rtt_ms=2.0, profile_repeats=1, budget_s=2.0, oracle_max_cuts=2, link="netns",
    )  # fmt: skip
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cells = run_bench(config, progress=True, out=out)
    assert "[netns]" in out.getvalue() and "server in namespace" in out.getvalue()
    doc = json.loads(json.dumps(bench_document(cells, config), allow_nan=False))
    assert doc["settings"]["link"] == "veth + tc tbf (netns)"
    assert [r["strategy"] for r in doc["records"]] == [
        "edge-only",
        "cloud-raw",
        "cloud-lossless",
        "splitdnn",
        "oracle",
    ]
    for rec in doc["records"]:
        assert rec["link"] == "netns" and rec["measured"]
        assert rec["regret"] >= 1.0
    # the cloud-only request crossed the kernel link: its bytes were counted by the client
    raw = next(r for r in doc["records"] if r["strategy"] == "cloud-raw")
    assert raw["bytes_sent"] > 3 * 64 * 64 * 4
