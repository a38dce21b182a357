"""`splitdnn demo`: real split inference over an emulated device and shaped uplinks, against both baselines.

:func:`run_demo` does, in one process and one run (DESIGN section 7: compare side by side, quote ratios):

1. builds the model, profiles it twice on this machine: as the *device* (``device_threads`` threads,
   every time multiplied by ``slowdown``) and as the *server* (``server_threads``);
2. starts a :class:`~splitdnn.runtime.server.TailServer` on 127.0.0.1 (port 0) serving the same module
   (same weights) and publishing the server profile over GetModelInfo;
3. puts a :class:`~splitdnn.runtime.shaper.ShapedLink` in front of it (token bucket per direction, half
   the RTT each way) and, for each uplink bandwidth, runs :class:`~splitdnn.runtime.client.SplitClient`
   traffic three ways: the plan the client chooses (adaptive, with its live link estimate) and the two
   trivial baselines, forced: edge-only and cloud-only with the input losslessly compressed (raw or zstd,
   whichever is predicted faster). The device is emulated by the client: ``device_threads`` threads and
   a sleep that pads every device computation to ``slowdown`` x its measured time;
4. prints per bandwidth the chosen cut and codec, predicted and measured latency (median [p10-p90]) and
   the speed-up against each baseline.

Edge-only does not touch the network, so it is measured once and shown on every row. A strategy whose
predicted run time exceeds ``budget_s`` is measured with fewer requests (no warm-up: the connection
is already up), and one whose single request would exceed it is not run at all: the table then shows its
prediction, marked ``(predicted)``, and the speed-up against it is marked the same way. At 0.13 Mbit/s a
cloud-only request for a 224x224 input takes about half a minute, which is why.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import torch

from splitdnn import graph
from splitdnn.errors import ConfigError, InfeasibleError
from splitdnn.report import STANDARD_UPLINKS_MBPS, format_bytes, format_table
from splitdnn.runtime._client_request import emulation_clock
from splitdnn.runtime.bench_measure import Timing
from splitdnn.runtime.bench_measure import measure as _measure
from splitdnn.runtime.bench_measure import requests_within as _requests_within  # noqa: F401 (tests use it)
from splitdnn.runtime.client import SplitClient
from splitdnn.schema import Link, Plan, Profile

__all__ = ["DemoRow", "Timing", "format_demo", "run_demo"]


@dataclass(frozen=True)
class DemoRow:
    """The demo's result at one uplink bandwidth."""

    uplink_mbps: float
    rtt_ms: float
    strategy: str  # the chosen plan: "edge-only", "split" or "cloud-only"
    boundary: tuple[str, ...]  # its boundary tensors (cut)
    codecs: tuple[str, ...]  # codec per boundary tensor
    wire_bytes: int  # predicted bytes of the boundary tensors per request (the table shows measured)
    chosen: Timing
    edge_only: Timing
    cloud_only: Timing
    link_estimate: Link | None  # the chosen client's estimate after its requests (None: it sent none)
    switches: int  # plan changes of the chosen client during its requests

    @property
    def speedup_vs_edge(self) -> float:
        return self.edge_only.value_ms / self.chosen.value_ms

    @property
    def speedup_vs_cloud(self) -> float:
        return self.cloud_only.value_ms / self.chosen.value_ms


# --------------------------------------------------------------------------------------------------
# running


def run_demo(
    model: str = "resnet18",
    uplinks_mbps: Sequence[float] = STANDARD_UPLINKS_MBPS,
    *,
    slowdown: float = 8.0,
    requests: int = 5,
    warmup: int = 1,
    rtt_ms: float = 20.0,
    input_shape: Sequence[int] | None = None,
    max_error: float = 0.0,
    device_threads: int = 1,
    server_threads: int | None = None,
    profile_repeats: int = 3,
    budget_s: float = 8.0,
    device_profile: Profile | None = None,
    server_profile: Profile | None = None,
    progress: bool = False,
    server_pace: bool = True,
    out: TextIO | None = None,
) -> list[DemoRow]:
    """Run the demo (module docstring) and print its settings and table to ``out``; return the rows.

    ``input_shape`` is batch first (default: the zoo's input, batch 1). ``max_error`` is the codec
    budget (relative MSE) of the chosen plan; the cloud-only baseline is always lossless.
    ``budget_s`` caps the seconds one strategy may take at one bandwidth. Given profiles skip the
    profiling (they must be of this model and input shape). ``server_pace``: the chosen plan's client
    prices the server at its measured pace (``SplitClient(server_pace=)``).
    """
    from splitdnn.models import ZOO, build_zoo_model, default_input_shape
    from splitdnn.profiler import check_slowdown, profile_model
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
    from splitdnn.runtime.shaper import LINK_NAME, ShapedLink

    stream = out if out is not None else sys.stdout
    uplinks = [float(u) for u in uplinks_mbps]
    if not uplinks or any(not (u > 0 and math.isfinite(u)) for u in uplinks):
        raise ConfigError(f"uplinks_mbps must be positive numbers of Mbit/s, found {list(uplinks_mbps)}")
    for what, value in (("requests", requests), ("device_threads", device_threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{what} must be an integer >= 1, found {value!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, found {warmup!r}")
    if model not in ZOO:
        raise ConfigError(
            f"the demo runs zoo models; expected one of {', '.join(sorted(ZOO))}, found {model!r}"
        )
    check_slowdown(slowdown)  # before the model is built and profiled (it was found only when profiling)
    started = time.perf_counter()

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    shape = tuple(int(d) for d in input_shape) if input_shape is not None else default_input_shape(model)
    torch.manual_seed(0)
    module = build_zoo_model(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    traced = graph.trace(module, torch.randn(shape, generator=torch.Generator().manual_seed(0)), name=model)
    codecs = ("raw", "zstd") if max_error == 0 else ("raw", "zstd", "fp16+zstd", "int8+zstd", "int4+zstd")
    server_threads_n = server_threads or torch.get_num_threads()
    say(
        f"splitdnn demo: {model} input {list(shape)}; {requests} timed request(s) per strategy after "
        f"{warmup} warm-up, latency median [p10-p90] in ms"
    )
    clock = emulation_clock(device_threads, slowdown)  # what the device's profile and padding follow
    say(
        f"device (emulated): {device_threads} thread(s), slowdown x{slowdown:g}: every device-side "
        f"computation is padded with sleep to {slowdown:g}x its measured work"
        + (" (the thread's CPU time)" if clock is time.thread_time else "")
    )
    if device_profile is None or server_profile is None:
        say(f"profiling {model} as device and server ({profile_repeats} repeats each) ...")
    device = device_profile or profile_model(
        traced, threads=device_threads, slowdown=slowdown, warmup=1, repeats=profile_repeats,
        codecs=codecs, codec_nodes="chain", progress=progress, timer=clock,
    )  # fmt: skip
    server_prof = server_profile or profile_model(
        traced, threads=server_threads, warmup=1, repeats=profile_repeats, codecs=codecs,
        codec_nodes="chain", progress=progress,
    )  # fmt: skip
    spec = ModelSpec(model, module=module, input_shapes=(shape,))
    config = ServerConfig(
        models=(spec,), host="127.0.0.1", port=0, threads=server_threads, profiles={model: server_prof}
    )
    rows: list[DemoRow] = []
    with TailServer(config) as server:
        served = server.served_model(model)
        say(f"server: in-process TailServer at {server.address}, {server_threads_n} thread(s), not emulated")
        say(f"profile: {device.describe()}")
        say(f"profile: {server_prof.describe()}")
        with ShapedLink(server.address, uplink_mbps=uplinks[0], downlink_mbps=None, rtt_ms=rtt_ms) as shaper:
            say(
                f"link: {LINK_NAME} at {shaper.address} (splitdnn.runtime.shaper), "
                f"RTT {rtt_ms:g} ms, downlink = uplink; codecs: "
                + ("lossless only" if max_error == 0 else f"error budget {max_error:g} (rel MSE)")
                + "; cloud-only baseline: input losslessly compressed (raw or zstd)"
            )

            def client(uplink: float, **kw: object) -> SplitClient:
                return SplitClient(
                    shaper.address, served, device_profile=device, link=Link(uplink, rtt_ms=rtt_ms),
                    emulate_slowdown=slowdown, threads=device_threads, timeout_s=600.0, **kw,  # type: ignore[arg-type]
                )  # fmt: skip

            with client(uplinks[0], force_boundary="edge") as c:
                edge = _measure(c, x, warmup, requests, budget_s)
            say(f"edge-only (no network, measured once): {edge.text()} ms")
            for uplink in uplinks:
                shaper.set_rates(uplink_mbps=uplink, downlink_mbps=None, rtt_ms=rtt_ms)
                say(f"uplink {uplink:g} Mbit/s ...")
                with client(uplink, max_error=max_error, server_pace=server_pace) as c:
                    chosen = _measure(c, x, warmup, requests, budget_s)
                    plan: Plan = c.plan
                    estimate = c.link if chosen.strategy != "edge-only" else None
                    switches = c.planner.switches
                try:
                    with client(uplink, force_boundary="cloud", max_error=0.0) as c:
                        cloud = _measure(c, x, warmup, requests, budget_s)
                except InfeasibleError:  # pragma: no cover - no privacy floor in the demo
                    cloud = Timing(math.inf)
                rows.append(
                    DemoRow(
                        uplink_mbps=uplink, rtt_ms=rtt_ms, strategy=plan.strategy,
                        boundary=plan.boundary_nodes if plan.strategy == "split" else (),
                        codecs=tuple(b.codec for b in plan.boundary), wire_bytes=plan.boundary_bytes,
                        chosen=chosen, edge_only=edge, cloud_only=cloud, link_estimate=estimate,
                        switches=switches,
                    )
                )  # fmt: skip
    say(format_demo(rows))
    say(f"finished in {time.perf_counter() - started:.0f} s on {os.cpu_count()} CPU(s)")
    return rows


def _sent(r: DemoRow) -> str:
    """The bytes a request of the chosen plan sent, measured (the median request message); the
    plan's prediction of its tensors where none was measured."""
    if not r.codecs:
        return "-"
    sent = r.chosen.median_bytes_sent if r.chosen.measured else None
    return format_bytes(sent) if sent else f"{format_bytes(r.wire_bytes)} (pred)"


def format_demo(rows: Sequence[DemoRow]) -> str:
    """The demo's table, with a legend for predicted-only entries and the live link estimates."""
    table = []
    notes = []
    for r in rows:

        def ratio(base: Timing, r: DemoRow = r) -> str:
            mark = "" if base.measured and r.chosen.measured else " (predicted)"
            return f"x{base.value_ms / r.chosen.value_ms:.2f}{mark}"

        cut = ", ".join(r.boundary[:2]) + (f" (+{len(r.boundary) - 2})" if len(r.boundary) > 2 else "")
        table.append(
            [
                f"{r.uplink_mbps:g}",
                r.strategy,
                cut or ("x (input)" if r.strategy == "cloud-only" else "-"),
                ",".join(sorted(set(r.codecs))) or "-",
                _sent(r),
                f"{r.chosen.predicted_ms:.0f}",
                r.chosen.text(),
                r.edge_only.text(with_prediction=True),
                r.cloud_only.text(with_prediction=True),
                ratio(r.edge_only),
                ratio(r.cloud_only),
            ]
        )
        if r.link_estimate is not None:
            notes.append(
                f"{r.uplink_mbps:g} Mbit/s: the client estimated {r.link_estimate.uplink_mbps:.3g} Mbit/s, "
                f"RTT {r.link_estimate.rtt_ms:.0f} ms from its requests; {r.switches} plan switch(es)"
            )
        parts = r.chosen.parts_text()
        if parts:
            notes.append(f"{r.uplink_mbps:g} Mbit/s, time by part (median measured / predicted ms): {parts}")
        if r.chosen.local_runs:
            notes.append(f"{r.uplink_mbps:g} Mbit/s: {r.chosen.local_runs} request(s) fell back to local")
    text = format_table(
        [
            "uplink Mbit/s",
            "plan",
            "cut after",
            "codec",
            "sent",
            "predicted ms",
            "measured ms",
            "edge-only ms",
            "cloud-only ms",
            "vs edge-only",
            "vs cloud-only",
        ],
        table,
    )
    if any(r.strategy == "edge-only" for r in rows):
        notes.insert(
            0,
            "where the chosen plan is edge-only, it runs what the edge-only baseline runs, plus the "
            "client's background link probes (every 0.25 s, to notice the link recover); the "
            "baseline was measured once, before, not side by side, so that ratio is run-to-run noise "
            "plus what the probes cost the device (the padding follows the device thread's CPU time, "
            "so time spent waiting for them is not multiplied; `splitdnn bench` interleaves instead)",
        )
    if any(not (r.chosen.measured and r.cloud_only.measured) for r in rows):
        notes.insert(
            0,
            "(predicted): not run, its single request would take longer than the time budget; the "
            "prediction is shown and ratios against it say so",
        )
    return "\n".join([text, *notes])
