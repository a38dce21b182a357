"""The edge client's identity, probing, accuracy budget and thread safety, through real gRPC on 127.0.0.1.

- Weights identity: the fingerprint covers structure only, so both ends also compare a digest of the
  parameter values. Matching weights pass (also when client and server build the zoo model on their
  own); other weights are refused with ModelMismatchError, at construction (GetModelInfo) and per
  request (``splitdnn.weights``).
- Link probing: a client that went edge-only on a slow link notices the link recover, through
  background probes, and goes back to a remote plan.
- The accuracy budget reaches the solver: a synthetic table decides whether a lossy codec may carry
  the boundary tensor.
- Thread safety: one client used by 8 threads at once gives every thread its exact output.

The server runs with ``max_batch_size=1`` so that concurrent requests run alone and stay bit-exact
(batched kernels may round differently). Profiles are quick (1 repeat); timing is asserted only as
generous bounds on the probe's reaction.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import torch

from splitdnn import graph
from splitdnn.errors import ConfigError, DeadlineError, ModelMismatchError, WireError
from splitdnn.models import ZOO, build_zoo_model
from splitdnn.profiler import profile_model
from splitdnn.runtime import serde
from splitdnn.runtime._client_request import Run
from splitdnn.runtime._deadline import (
    MIN_DEVICE_MS,
    PROBE_SHARE,
    Choice,
    RemoteProbes,
    Spread,
    median_rule_wait_ms,
)
from splitdnn.runtime._proto import splitdnn_pb2_grpc as sd_grpc
from splitdnn.runtime._server_pace import MAX_FACTOR
from splitdnn.runtime._weights import weights_digest
from splitdnn.runtime.client import SplitClient, format_breakdown
from splitdnn.runtime.planner import Hysteresis, LinkEstimator, scale_profile
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
from splitdnn.runtime.shaper import ShapedLink
from splitdnn.schema import Link, Profile
from splitdnn.solver import accuracy_table_from_dict

MODEL = "resnet18"
SHAPE = (1, *ZOO[MODEL].test_input_shape)


@dataclass
class Live:
    server: TailServer
    traced: graph.TracedModel  # the server's own traced model (its weights)
    device: Profile  # quick profile of this machine
    x: torch.Tensor
    ref: torch.Tensor  # the local full-model output on x

    def client(self, **kw: object) -> SplitClient:
        kw.setdefault("device_profile", self.device)
        kw.setdefault("link", Link(100.0, rtt_ms=1.0))
        return SplitClient(self.server.address, self.traced, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    # the server builds the zoo model itself (seeded weights), as `splitdnn serve resnet18` does
    spec = ModelSpec(MODEL, input_shapes=(SHAPE,))
    with TailServer(ServerConfig(models=(spec,), max_batch_size=1)) as server:
        traced = server.served_model(MODEL)
        device = profile_model(
            traced, threads=1, warmup=0, repeats=1, segments=4, check_cuts=0, progress=False,
            codecs=("raw", "zstd", "int8+zstd"), codec_nodes="chain",
        )  # fmt: skip
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = traced.module(x)
        yield Live(server, traced, device, x, ref)


# --------------------------------------------------------------------------------------------------
# weights identity


def test_weights_digest_is_deterministic_and_sees_values() -> None:
    a, b = build_zoo_model(MODEL), build_zoo_model(MODEL)  # seeded: the same weights, bit for bit
    assert weights_digest(a) == weights_digest(b)
    traced = graph.trace(a, torch.randn(SHAPE), name=MODEL)
    assert weights_digest(traced.module) == weights_digest(a)  # tracing keeps names and values
    with torch.no_grad():
        b.get_parameter("fc.bias")[0] += (
            1e-6  # one value, a tiny change: a different digest, the same fingerprint
        )
    assert weights_digest(b) != weights_digest(a)
    assert graph.trace(b, torch.randn(SHAPE), name=MODEL).fingerprint == traced.fingerprint
    with torch.no_grad():
        b.get_buffer("bn1.running_mean")[0] += 1.0  # buffers count too
    assert weights_digest(b) != weights_digest(a)


def test_matching_weights_pass_also_when_built_independently(live: Live) -> None:
    cut = graph.chain_cuts(live.traced)[3]
    # the client builds the zoo model on its own: seeded, so the digests agree
    with SplitClient(
        live.server.address, MODEL, input_shape=SHAPE, device_profile=live.device, force_boundary=cut
    ) as client:
        assert client.weights_digest == weights_digest(live.traced.module)
        y = client.infer(live.x)
        b = client.last_breakdown
    assert b is not None and not b.local and b.boundary == (cut,)
    assert torch.equal(y, live.ref)


def test_other_weights_are_refused_at_construction(live: Live) -> None:
    module = build_zoo_model(MODEL)
    with torch.no_grad():
        module.get_parameter("fc.weight").mul_(1.01)
    with pytest.raises(ModelMismatchError) as info:
        SplitClient(
            live.server.address, module, model_name=MODEL, input_shape=SHAPE, device_profile=live.device
        )
    text = str(info.value)
    assert weights_digest(live.traced.module)[:12] in text and weights_digest(module)[:12] in text
    assert "same weights file" in text


def test_other_weights_are_refused_per_request(live: Live) -> None:
    cut = graph.chain_cuts(live.traced)[3]
    with live.client(force_boundary=cut) as client:
        client.weights_digest = "0" * 32  # as if the weights changed after the start-up check
        with pytest.raises(ModelMismatchError, match="same weights file") as info:
            client.infer(live.x)
        assert info.value.code == "FAILED_PRECONDITION"
        assert client.fallbacks == 0  # a misconfiguration is raised, never hidden by a local run


# --------------------------------------------------------------------------------------------------
# link probing


def test_probe_notices_a_recovered_link(live: Live) -> None:
    device = scale_profile(live.device, 0.2)  # a device 5x slower than this machine...
    server = scale_profile(live.device, 5.0)  # ...and a server 5x faster: remote wins on a fast link
    with ShapedLink(live.server.address, uplink_mbps=0.2, downlink_mbps=200.0, rtt_ms=2.0) as link:
        with SplitClient(
            link.address, live.traced, device_profile=device, server_profile=server,
            link=Link(100.0, rtt_ms=2.0), probe_interval_s=0.2,
        ) as client:  # fmt: skip
            # the prior says a fast link; the start-up probe (or else the first requests) meets the
            # 0.2 Mbit/s link, and the client goes edge-only
            assert client.probes == 1
            for _ in range(5):
                assert torch.equal(client.infer(live.x), live.ref)
                if client.plan.strategy == "edge-only":
                    break
            assert client.plan.strategy == "edge-only" and client.link.uplink_mbps < 1.0, client.describe()
            probes, up = client.probes, link.bytes_up
            end = time.monotonic() + 1.5
            while time.monotonic() < end:  # still slow: probes confirm it, the plan stays edge-only
                assert torch.equal(client.infer(live.x), live.ref)
                time.sleep(0.05)
            assert client.probes > probes and client.plan.strategy == "edge-only", client.describe()
            # what probing cost while the link was slow: a few probes of ~100 ms of that link each
            assert link.bytes_up - up < 64 << 10
            link.set_rates(uplink_mbps=200.0, downlink_mbps=200.0)
            t0, requests = time.monotonic(), 0
            while client.plan.strategy == "edge-only" and time.monotonic() - t0 < 20.0:
                client.infer(live.x)  # local, never delayed by a probe
                requests += 1
                time.sleep(0.05)
            took = time.monotonic() - t0
            assert client.plan.strategy != "edge-only", f"edge-only {took:.1f} s on: {client.describe()}"
            assert requests <= 400 and took < 20.0
            y = client.infer(live.x)
            b = client.last_breakdown
    assert b is not None and not b.local and torch.equal(y, live.ref)


# --------------------------------------------------------------------------------------------------
# the server's pace


def _server_ms(live: Live) -> tuple[float, float]:
    """The server's median reported time for the whole model, and the rest of the round trip (the
    network as the client sees it), here and now (a pinned client)."""
    with live.client(force_boundary="cloud", probe_interval_s=None) as client:
        server, network = [], []
        for _ in range(5):
            client.infer(live.x)
            b = client.last_breakdown
            assert b is not None and not b.local
            server.append(b.server_queue_ms + b.server_compute_ms + b.decode_ms)
            network.append(b.network_ms + b.client_ms)
    return statistics.median(server[1:]), statistics.median(network[1:])  # the first builds the tail


class _SteadyLink(LinkEstimator):
    """A link estimate that stays where it starts: the requests it is told of are not folded in."""

    def observe(self, bytes_up: int, bytes_down: int, network_ms: float) -> None:
        pass

    def observe_overdue(self, bytes_up: int, waited_ms: float) -> None:
        pass


def _paced(live: Live, **kw: Any) -> SplitClient:
    """A client told the server computes the whole model 8x faster than it does here (at least
    1.2 ms), and the device halfway (geometrically) between cloud-only's price on that profile and
    its real time, 10 % off: cloud-only on the profiles, not once the server is timed (whatever this
    machine's speed). No fallback: a stall of a busy CI machine must not turn a request into a local one.
    No re-plan budget, and a link estimate held at the 200 Mbit/s it starts from: these tests are
    of the server's pace, and over loopback the estimate of a 12 kB request is mostly the round
    trip's jitter. A loaded CI run read it as 16.6 Mbit/s, which made edge-only the better plan of
    this near tie; edge-only sends nothing, so without probes the estimate never came back
    (docs/benchmarks.md, "The client's own steps": the estimate on small transfers is open)."""
    server_ms, network_ms = _server_ms(live)
    told = max(1.2, server_ms / 8)
    device_ms = math.sqrt((told + network_ms) * (server_ms + network_ms) / 1.1)
    total = live.device.total.median_ms
    client = live.client(
        device_profile=scale_profile(live.device, total / device_ms),
        server_profile=scale_profile(live.device, total / told),
        link=Link(200.0, rtt_ms=1.0), probe_interval_s=None, fallback_local=False,
        hysteresis=Hysteresis(replan_budget=None), **kw,
    )  # fmt: skip
    # held where it starts, the start-up ping's RTT left out: one that stalled on a loaded CI run
    # (15 ms) had the client plan edge-only before the test began
    steady = Link(200.0, rtt_ms=1.0)
    client.estimator = _SteadyLink(steady)
    with client._lock:
        client.planner.replan(steady, step=True)
    return client


def test_a_server_slower_than_its_profile_is_priced_at_its_pace(live: Live) -> None:
    with _paced(live) as client:
        assert client.plan.strategy == "cloud-only" and client.server_factor == 1.0, client.describe()
        for _ in range(20):
            assert torch.equal(client.infer(live.x), live.ref)
            if client.plan.strategy != "cloud-only":
                break
        assert client.server_factor > 1.25, client.describe()  # its pace, not the profile's
        assert client.plan.strategy != "cloud-only", client.describe()
        assert "its measured pace" in client.describe()
        # no answer for 30 s (edge-only, no probes): the next request goes back to the profile
        assert client._pace is not None and client._pace.samples >= 3
        later = time.monotonic() + 31.0
        client._pace._clock = lambda: later
        client.infer(live.x)
        assert client.server_factor == 1.0
        assert "priced by its profile again" in client.describe()


def test_a_server_sample_is_against_the_unscaled_profile_at_the_profiles_rows(live: Live) -> None:
    """The pace in use is taken out of the prediction (else a factor, once applied, reads as 1 and
    undoes itself); a request of more rows than the profile's is no sample (a batch costs less than
    its rows alone: it would read as a faster server)."""
    with live.client(force_boundary="cloud", probe_interval_s=None) as client:
        plan = client.plan
        part = plan.cost.server_ms + plan.cost.decode_ms
        assert part > 0
        run = Run(client, plan, 0.0, scale=2.0, server_factor=4.0, profile_rows=False)
        assert run._predicted_parts()[1] == pytest.approx(part * 2.0 / 4.0)
        # a queue priced in the round trip is neither network nor the server's compute
        network = sum(plan.cost.transfer_ms) + sum(plan.cost.rtt_ms) + plan.cost.result_ms
        client.planner.set_server_queue(30.0)
        queued = client.planner.price(plan, client.planner.link)
        run = Run(client, queued, 0.0, scale=2.0, server_factor=4.0, server_queue_ms=30.0)
        assert run._predicted_parts() == pytest.approx((network * 2.0, part * 2.0 / 4.0))
    with live.client(
        device_profile=scale_profile(live.device, 0.2), server_profile=scale_profile(live.device, 2.0),
        link=Link(200.0, rtt_ms=1.0), probe_interval_s=None, fallback_local=False,
    ) as client:  # fmt: skip
        assert client._pace is not None and client.plan.strategy != "edge-only", client.describe()
        client.infer(torch.cat([live.x] * 3))  # builds the tail
        client.infer(torch.cat([live.x] * 3))
        assert client._pace.samples == 0
        client.infer(live.x)
        assert client._pace.samples == 1


def test_the_pace_can_be_left_out(live: Live) -> None:
    with _paced(live, server_pace=False) as client:
        for _ in range(12):
            assert torch.equal(client.infer(live.x), live.ref)
        assert client.server_factor == 1.0 and client.plan.strategy == "cloud-only", client.describe()


def test_a_request_given_up_while_the_link_stayed_fast_counts_against_the_server(live: Live) -> None:
    """A server whose queue holds a request past its give-up time made the client take the wait as
    a fallen link, then the next probe found the link fine and the client went back: a flap per
    request. Settled by the next observation: a step back up means the wait was the server's."""
    with live.client(link=Link(100.0, rtt_ms=1.0), probe_interval_s=None) as client:
        for _ in range(3):  # requests answered at 100 Mbit/s, the server computing at 2x its profile
            client._observe(600_000, 0, 49.0, server=(40.0, 80.0, 0.0))
        assert client.server_factor == 2.0  # the pace the requests below were priced with
        for _ in range(3):
            # given up after 240 ms: 20 predicted for the network, 40 for the server's compute at 1x
            client._observe(600_000, 0, 240.0, overdue=(20.0, 40.0, 2.0))
            assert client.link.uplink_mbps < 100.0 and client._overdue is not None
            client._observe_probe(256 << 10, 100, 22.0)  # the link as fast as before: a step up
            assert client.estimator.stepped_up and client._overdue is None
        assert client._pace is not None and client._pace.queue_samples == 6 and client._pace.samples == 3
        # at least the wait: 220 ms where 80 of compute were priced (40 at 2x), the rest held in the
        # queue (the median of three 0 and three 140); the compute's pace is not what held it: it stays
        assert client.server_factor == 2.0 and client.server_queue_ms == pytest.approx(70.0), (
            client.describe()
        )
        client._observe(600_000, 0, 240.0, overdue=(20.0, 40.0, 2.0))
        client._observe_probe(256 << 10, 100, 22.0)
        assert client.server_queue_ms == pytest.approx(140.0), client.describe()  # four 140 of seven
        # a probe that finds the link as slow as the give-up said: the link fell, the server is not blamed
        client._pace.clear()
        client._observe(600_000, 0, 240.0, overdue=(20.0, 40.0, 2.0))
        client._observe_probe(256 << 10, 100, 5000.0)
        assert not client.estimator.stepped_up and client._overdue is None and client._pace.queue_samples == 0
        # a bound under the compute as priced (80 ms) says nothing
        client._observe(600_000, 0, 90.0, overdue=(20.0, 40.0, 2.0))
        client._observe_probe(256 << 10, 100, 2.0)
        assert client._pace.queue_samples == 0


@contextmanager
def _offloading(live: Live, **kw: Any) -> Iterator[tuple[ShapedLink, SplitClient]]:
    """A client that offloads over a fast shaped link (tests change the link's rate mid-run): a device
    5x slower than this machine and a server 5x faster, no link probes."""
    device = scale_profile(live.device, 0.2)
    server = scale_profile(live.device, 5.0)
    with ShapedLink(live.server.address, uplink_mbps=200.0, downlink_mbps=200.0, rtt_ms=2.0) as link:
        with SplitClient(
            link.address, live.traced, device_profile=device, server_profile=server,
            link=Link(200.0, rtt_ms=2.0), probe_interval_s=None, **kw,
        ) as client:  # fmt: skip
            yield link, client


def test_a_request_caught_by_a_falling_link_finishes_on_the_device(live: Live) -> None:
    """The link falls while a split request is out: the client stops waiting once it has waited past
    the prediction as long as the local finish takes, finishes on the device (the exact output), and
    the estimate and the plan follow the fall at once instead of after the slow transfer."""
    with _offloading(live) as (link, client):
        for _ in range(3):
            assert torch.equal(client.infer(live.x), live.ref)
        b = client.last_breakdown
        assert b is not None and not b.local and b.bytes_sent > 8000, client.describe()
        slow_s = b.bytes_sent * 8 / 0.05e6  # the same bytes at 0.05 Mbit/s
        link.set_rates(uplink_mbps=0.05, downlink_mbps=200.0)
        t = time.perf_counter()
        y = client.infer(live.x)
        took = time.perf_counter() - t
        gave_up = client.last_breakdown
        assert torch.equal(y, live.ref)
        assert gave_up is not None and gave_up.local and "no answer after" in gave_up.fallback
        assert len(client._history.remote) == client._history.remote.answered() + 1  # kept as given up
        assert took < 0.5 * slow_s, (took, slow_s)
        # the estimate fell at once (to a fifth of the bound the abandoned transfer gives)
        assert client.link.uplink_mbps < 2.0, client.describe()
        assert client.estimator.stepped and client.plan.strategy == "edge-only", client.describe()


def test_a_request_is_not_given_up_without_a_local_fallback(live: Live) -> None:
    with _offloading(live, fallback_local=False) as (link, client):
        assert torch.equal(client.infer(live.x), live.ref)
        b = client.last_breakdown
        assert b is not None and not b.local
        link.set_rates(uplink_mbps=b.bytes_sent * 8 / 0.6e6, downlink_mbps=200.0)  # ~0.6 s
        assert torch.equal(client.infer(live.x), live.ref)  # waited for the server's answer
        b = client.last_breakdown
        assert b is not None and not b.local and b.network_ms > 400, b


def test_the_first_request_of_a_cut_is_not_given_up(live: Live) -> None:
    """A cut's first request also waits for the server to build that cut's tail (a CI run gave one
    up after 213 ms with 2 ms predicted): it waits for the answer. (Later requests of a cut that the
    link leaves behind are given up: test_a_request_caught_by_a_falling_link_finishes_on_the_device.)"""
    with _offloading(live) as (link, client):
        wire_bytes = client.plan.boundary_bytes
        assert client.plan.strategy != "edge-only" and wire_bytes > 8000, client.describe()
        link.set_rates(uplink_mbps=wire_bytes * 8 / 0.3e6, downlink_mbps=200.0)  # ~0.3 s, not ~1 ms
        t = time.perf_counter()
        assert torch.equal(client.infer(live.x), live.ref)
        b = client.last_breakdown
        assert b is not None and not b.local and not b.fallback, b
        assert time.perf_counter() - t > 0.2  # waited out the slow transfer


def test_a_request_merely_slower_than_predicted_is_not_given_up(live: Live) -> None:
    with _offloading(live) as (link, client):
        assert torch.equal(client.infer(live.x), live.ref)
        b = client.last_breakdown
        assert b is not None and not b.local
        # the transfer now takes ~20 ms more than predicted: under the 50 ms the client waits past it
        link.set_rates(uplink_mbps=b.bytes_sent * 8 / 20e3, downlink_mbps=200.0)
        for _ in range(3):
            assert torch.equal(client.infer(live.x), live.ref)
            b = client.last_breakdown
            assert b is not None and not b.local and not b.fallback, b


# --------------------------------------------------------------------------------------------------
# a deadline per request


def test_a_request_predicted_to_miss_its_deadline_remotely_finishes_on_the_device_at_once(
    live: Live,
) -> None:
    """A cloud-only plan held by force over a link estimated at 0.25 Mbit/s: the input's transfer is
    predicted at seconds. With a deadline under that, the request finishes on the device without
    sending anything; without one, or with one the transfer makes, it is sent."""
    device = scale_profile(live.device, 0.5)
    # (at 0.5 Mbit/s the transfer was predicted at 263 ms against a device of 29: a one-repeat profile
    # read in a slow moment left it under the 10x the test needs)
    # (no deadline probes either: what the deadline alone teaches the client is under test)
    kw: dict[str, Any] = {
        "link": Link(0.25, rtt_ms=1.0), "probe_interval_s": None, "timeout_s": 60.0,
        "deadline_probe_interval_s": None,
    }  # fmt: skip
    with live.client(device_profile=device, force_boundary="cloud", **kw) as client:
        rest_ms = client.plan.cost.total_ms
        local_ms = device.total.median_ms
        assert rest_ms > 10 * local_ms, client.describe()
        y = client.infer(live.x, deadline_ms=rest_ms / 2)
        b = client.last_breakdown
        assert torch.equal(y, live.ref)
        assert b is not None and b.local and b.bytes_sent == 0, b
        assert "deadline" in b.fallback and b.deadline_ms == rest_ms / 2, b
        assert not b.deadline_missed and client.fallbacks == 1
        assert client.estimator.steps == 0 and client._down_until == 0.0  # nothing learnt of the link
        y = client.infer(live.x, deadline_ms=rest_ms * 4)  # the remote path makes this one
        b = client.last_breakdown
        assert torch.equal(y, live.ref)
        assert b is not None and not b.local and not b.fallback and b.bytes_sent > 0, b


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_request_running_past_its_deadline_finishes_on_the_device_in_time(live: Live, stream: bool) -> None:
    """The link falls to seconds per request while the client does not know it yet. With a deadline,
    the request stops waiting at the last moment from which the device finishes in time, and does;
    the estimate and the back-off are left alone (the late answer says only that it was later than
    this request could wait). On a ModelStreamInfer stream as in a call of its own."""
    with _offloading(live, stream=stream) as (link, client):
        assert (client._stream is not None) is stream
        for _ in range(3):
            assert torch.equal(client.infer(live.x), live.ref)
        b = client.last_breakdown
        assert b is not None and not b.local and b.bytes_sent > 8000, client.describe()
        run = Run(client, client.plan, time.perf_counter())
        local_ms, remote_ms = run._local_ms(), run._remote_ms()
        assert client.plan.strategy == "cloud-only", client.describe()
        steps, estimate = client.estimator.steps, client.link
        kept, answered = len(client._history.remote), client._history.remote.answered()
        assert answered == 2  # the first request of the cut also waited for the tail's build
        link.set_rates(uplink_mbps=b.bytes_sent * 8 / 3e6, downlink_mbps=200.0)  # ~3 s a request
        # 20 ms to wait: sooner than the give-up of a request without a deadline (50 ms over the
        # prediction at least)
        deadline_ms = local_ms + 20.0
        assert (run._overdue_after_s(None) or 0) * 1e3 >= remote_ms + 50.0
        t = time.perf_counter()
        y = client.infer(live.x, deadline_ms=deadline_ms)
        took_ms = (time.perf_counter() - t) * 1e3
        b = client.last_breakdown
        assert torch.equal(y, live.ref)
        assert b is not None and b.local and "deadline: no answer after" in b.fallback, b
        assert b.bytes_sent > 0 and not b.deadline_missed, (b, took_ms)
        assert took_ms < deadline_ms + 100.0, (took_ms, deadline_ms)  # (the predicted local is 5x slow)
        assert client.estimator.steps == steps and client.link == estimate, client.describe()
        assert client._down_until == 0.0 and client.plan.strategy != "edge-only"
        # not kept: the cut came from the history itself, and kept as given up it would hide from it
        # for good every answer later than the cut
        assert len(client._history.remote) == kept and client._history.remote.answered() == answered


def test_a_deadline_without_a_local_fallback_raises_when_it_passes(live: Live) -> None:
    with _offloading(live, fallback_local=False) as (link, client):
        assert torch.equal(client.infer(live.x, deadline_ms=30_000.0), live.ref)
        b = client.last_breakdown
        assert b is not None and not b.local and b.deadline_ms == 30_000.0 and not b.deadline_missed
        link.set_rates(uplink_mbps=b.bytes_sent * 8 / 2e6, downlink_mbps=200.0)  # ~2 s a request
        t = time.perf_counter()
        with pytest.raises(DeadlineError, match=r"deadline_ms=200 .*fallback_local=True") as err:
            client.infer(live.x, deadline_ms=200.0)
        assert time.perf_counter() - t < 1.0 and err.value.code == "DEADLINE_EXCEEDED"
        assert client._down_until == 0.0  # not backed off from: the server did nothing wrong
        link.set_rates(uplink_mbps=200.0, downlink_mbps=200.0)
        assert torch.equal(client.infer(live.x), live.ref)


def test_requests_keep_how_their_rest_and_the_device_went_against_the_predictions(live: Live) -> None:
    cut = graph.chain_cuts(live.traced)[-1]  # the longest head: heads predicted under 1 ms are not kept
    with live.client(force_boundary=cut, probe_interval_s=None) as client:
        head_ms = client.plan.cost.compute_ms[0]
        assert head_ms >= MIN_DEVICE_MS, client.describe()
        for _ in range(6):
            assert torch.equal(client.infer(live.x), live.ref)
        remote, heads = client._history.remote, client._history.heads
        assert remote.answered() == len(remote) == 5  # the first also waited for the tail's build
        assert len(heads) == 6 and len(client._history.finishes) == 0  # every head
        for spread in (remote, heads):
            ratios = spread.distribution().points
            assert all(0.0 < r < 50.0 for r in ratios), ratios
        assert "(for deadlines): rest x" in client.describe() and "heads x" in client.describe()
    with live.client(force_boundary="edge", probe_interval_s=None) as client:
        for _ in range(3):
            client.infer(live.x)
        assert len(client._history.finishes) == 3 and len(client._history.remote) == 0
        assert len(client._history.heads) == 0


def test_a_deadline_follows_how_the_client_s_recent_requests_went(live: Live) -> None:
    """A cloud-only client whose last requests' answers came in at their predicted time half the
    time and were given up at 3x the other half, and whose device ran within 10 % of its profile:
    a deadline the device surely makes and the prediction also makes finishes on the device at once,
    where the medians would have sent it. With a history of answers on time, the same deadline is
    sent and waited for (the medians would have cut it before the answer was predicted)."""
    with live.client(force_boundary="cloud", probe_interval_s=None, link=Link(1000.0, rtt_ms=1.0)) as client:
        run = Run(client, client.plan, time.perf_counter())
        rest_ms, local_ms = run._rest_ms(), run._local_ms()
        assert 1.0 < rest_ms < 2.0 * local_ms, client.describe()
        deadline_ms = 1.1 * local_ms + 0.5 * rest_ms  # over the device's worst; the rest's median too
        assert median_rule_wait_ms(deadline_ms, rest_ms, local_ms) > 0  # the medians send it
        for i in range(8):
            client._history.finishes.add(1.0 + (0.1 if i % 2 else 0.0), 1.0)
            client._history.remote.add(1.0, 1.0)
            client._history.remote.add(3.0, 1.0, censored=True)
        y = client.infer(live.x, deadline_ms=deadline_ms)
        b = client.last_breakdown
        assert torch.equal(y, live.ref)
        assert b is not None and b.local and b.bytes_sent == 0 and "best bet" in b.fallback, b

        client._history.remote = Spread()
        for i in range(8):
            client._history.remote.add(1.0 + 0.01 * i, 1.0)
        run = Run(client, client.plan, time.perf_counter(), deadline_ms=deadline_ms)
        assert run._deadline_choice().wait_ms == math.inf
        y = client.infer(live.x, deadline_ms=deadline_ms)
        b = client.last_breakdown
        assert torch.equal(y, live.ref)
        assert b is not None and not b.local and b.bytes_sent > 0 and not b.fallback, b


def test_a_deadline_counts_the_padding_an_emulated_device_still_owes(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emulated device sleeps a head's padding after its next step (the encode, or the tail when
    the request finishes here): that time is gone whichever path follows. The deadline's choice is
    made on what is left after it, and a chosen wait for the answer starts once it is slept. (Both
    were counted from before it: a split plan's request finished on the device "surely" in time and
    missed, or gave its answer up before it was even sent.)"""
    cuts = graph.chain_cuts(live.traced)
    cut = cuts[len(cuts) // 2]  # a head of half the model: several ms of padding owed at x8
    device = scale_profile(live.device, 1 / 8)  # the profile of this machine emulated 8x slower
    with live.client(
        device_profile=device, emulate_slowdown=8.0, force_boundary=cut, probe_interval_s=None
    ) as client:  # fmt: skip
        seen: dict[str, float] = {}

        def choose(left_ms: float, rest_ms: float, local_ms: float, *_: object) -> Choice:
            seen["left"] = left_ms
            return Choice(20.0, math.nan, False)  # send, and wait 20 ms for the answer

        sends = client._send

        def send(request: bytes, timeout: float) -> Any:
            seen["timeout"] = timeout
            return sends(request, timeout)

        monkeypatch.setattr(client._history, "choose", choose)
        monkeypatch.setattr(client, "_send", send)
        client.infer(live.x, deadline_ms=10_000.0)
        b = client.last_breakdown
    assert b is not None and b.boundary == (cut,) and b.padding_ms > 5.0, b
    # the head's time, its padding included, is gone before the choice's time starts
    assert seen["left"] <= 10_000.0 - b.head_ms + 1.0, (seen, b)
    # the 20 ms wait is counted from after the padding the encode slept (less the encode's own work)
    assert 0.005 < seen["timeout"] <= 0.020, (seen, b)


def _choosing(client: SplitClient, monkeypatch: pytest.MonkeyPatch, choice: Choice) -> None:
    monkeypatch.setattr(client._history, "choose", lambda *_: choice)


def test_a_deadline_finished_on_the_device_at_once_renews_the_remote_record(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose deadline is best finished on the device at once is also sent in the
    background: its answer renews the remote window (and the link estimate), the caller gets the
    device's output without waiting for it. Not again within the interval, nor sooner than ten
    times the request's predicted remote time; also where the device is sure (the remote may have
    become the faster path since the window's samples)."""
    cut = graph.chain_cuts(live.traced)[3]
    with live.client(force_boundary=cut, probe_interval_s=None, deadline_probe_interval_s=0.2) as client:
        assert torch.equal(client.infer(live.x), live.ref)  # the cut's tail is built (not kept)
        remote, probes = client._history.remote, client._deadline_probes
        assert probes is not None and remote.answered() == 0
        samples = len(client.estimator.samples)
        time.sleep(0.25)  # (no sample in the remote window younger than the interval)
        _choosing(client, monkeypatch, Choice(0.0, 0.4, False))
        y = client.infer(live.x, deadline_ms=10_000.0)
        b = client.last_breakdown
        assert torch.equal(y, live.ref)
        assert b is not None and b.local and b.bytes_sent == 0 and b.probed, b
        assert "also sent in the background" in format_breakdown(b)
        assert probes.wait(10.0) and probes.started == 1 and probes.failures == 0
        assert remote.answered() == len(remote) == 1 and 0.0 < remote.quantile(0.5) < 50.0  # type: ignore[operator]
        assert len(client.estimator.samples) == samples + 1
        # within the interval: none (the probe's own answer is younger than it)
        client.infer(live.x, deadline_ms=10_000.0)
        assert client.last_breakdown is not None and not client.last_breakdown.probed
        time.sleep(0.25)
        _choosing(client, monkeypatch, Choice(0.0, 1.0, True))  # the device surely makes it
        gaps: list[float] = []
        due = probes.due
        monkeypatch.setattr(probes, "due", lambda r, gap_s=0.0: gaps.append(gap_s) or due(r, gap_s))
        run = Run(client, client.plan, time.perf_counter())  # (its probe's answer may move the plan)
        client.infer(live.x, deadline_ms=10_000.0)
        assert client.last_breakdown is not None and client.last_breakdown.probed
        assert probes.wait(10.0) and probes.started == 2 and remote.answered() == 2
        assert gaps and gaps[0] == pytest.approx(run._remote_ms() / PROBE_SHARE / 1e3)
    with live.client(force_boundary=cut, probe_interval_s=None, deadline_probe_interval_s=None) as client:
        _choosing(client, monkeypatch, Choice(0.0, 0.4, False))
        assert torch.equal(client.infer(live.x, deadline_ms=10_000.0), live.ref)
        assert client._deadline_probes is None and not client.last_breakdown.probed  # type: ignore[union-attr]


@contextmanager
def _probe_in_flight(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ShapedLink, SplitClient, RemoteProbes]]:
    """An offloading client whose deadline probe is still waiting for its answer (the link is down to
    about 20 s a request)."""
    with _offloading(live) as (link, client):
        assert torch.equal(client.infer(live.x), live.ref)
        b = client.last_breakdown
        assert b is not None and not b.local and b.bytes_sent > 8000, client.describe()
        link.set_rates(uplink_mbps=b.bytes_sent * 8 / 20e6, downlink_mbps=200.0)  # ~20 s a request
        with monkeypatch.context() as m:
            _choosing(client, m, Choice(0.0, 0.4, False))
            time.sleep(0.3)
            assert torch.equal(client.infer(live.x, deadline_ms=60_000.0), live.ref)
        probes = client._deadline_probes
        assert probes is not None and client.last_breakdown.probed  # type: ignore[union-attr]
        assert not probes.wait(0.3)  # still in flight
        yield link, client, probes


def test_a_request_of_the_client_s_own_cancels_a_deadline_probe_in_flight(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe must not share the uplink with the client's own requests: the next one sent cancels
    it (and renews the remote window itself). The probe is kept as given up after the time it had:
    dropped, the window would keep only the probes quicker than the client's next request."""
    with _probe_in_flight(live, monkeypatch) as (link, client, probes):
        remote = client._history.remote
        kept, answered = len(remote), remote.answered()
        link.set_rates(uplink_mbps=200.0, downlink_mbps=200.0)
        assert torch.equal(client.infer(live.x), live.ref)
        b = client.last_breakdown
        # sent; answered, or (a loaded machine: the probe's bytes already in the shaper drain first)
        # given up as overdue and finished here
        assert b is not None and b.bytes_sent > 0 and (not b.local or "no answer after" in b.fallback), b
        assert probes.wait(5.0) and probes.cancelled == 1 and probes.failures == 1
        assert remote.answered() == answered + (0 if b.local else 1)  # the request's
        assert len(remote) == kept + 2  # ... and the probe's, given up


def test_closing_the_client_ends_a_deadline_probe_in_flight(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe still waiting for its answer when the client closes: the close cancels it, the probe
    counts as failed, nothing is raised on either thread."""
    with _probe_in_flight(live, monkeypatch) as (_, client, probes):
        t = time.perf_counter()
        client.close()
        assert probes.wait(5.0) and time.perf_counter() - t < 5.0
        assert probes.started == 1 and probes.failures == 1
        assert len(client._history.remote) == client._history.remote.answered()  # (nothing kept)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "0.25"])
def test_the_deadline_probe_interval_must_be_a_positive_number_of_seconds(live: Live, bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"deadline_probe_interval_s \(None: no probes\) must be a finite"):
        live.client(force_boundary="edge", probe_interval_s=None, deadline_probe_interval_s=bad)


@pytest.mark.parametrize("bad", [0, -5.0, math.nan, math.inf, True, "50"])
def test_a_deadline_must_be_a_positive_number_of_ms(live: Live, bad: Any) -> None:
    with live.client(force_boundary="edge", probe_interval_s=None) as client:
        with pytest.raises(ConfigError, match=r"deadline_ms must be None or a finite number .* found"):
            client.infer(live.x, deadline_ms=bad)
        assert client.requests == 0


def test_probing_can_be_turned_off(live: Live) -> None:
    with live.client(link=Link(0.01, rtt_ms=1.0), probe_interval_s=None) as client:
        assert client.plan.strategy == "edge-only"
        for _ in range(3):
            client.infer(live.x)
        assert client.probes == 0 and len(client.estimator.samples) == 1  # the start-up ping only


# --------------------------------------------------------------------------------------------------
# accuracy budget


def _table(traced: graph.TracedModel, node: str, loss_pts: float) -> dict:
    """A synthetic accuracy table (the JSON of scripts/bench_accuracy.py) for int8+zstd at ``node``."""
    return {
        "format": "splitdnn.accuracy-table/1", "model_name": MODEL, "fingerprint": traced.fingerprint,
        "input_node": "x", "seeds": [{"rows": [{"cut": node, "spec": "int8+zstd", "loss_pts": loss_pts}]}],
    }  # fmt: skip


def test_accuracy_budget_reaches_the_solver(live: Live) -> None:
    cut = graph.chain_cuts(live.traced)[3]
    table = accuracy_table_from_dict(_table(live.traced, cut, 0.3))
    slow = Link(0.5, rtt_ms=1.0)  # int8+zstd's smaller frame wins when it is allowed
    with live.client(force_boundary=cut, link=slow) as client:
        assert client.plan.boundary[0].codec != "int8+zstd"  # default: lossless only
    with live.client(force_boundary=cut, link=slow, accuracy_table=table, max_accuracy_loss=0.1) as client:
        assert client.plan.boundary[0].codec != "int8+zstd"  # measured loss over the budget
    with live.client(force_boundary=cut, link=slow, accuracy_table=table, max_accuracy_loss=0.5) as client:
        assert client.plan.boundary[0].codec == "int8+zstd"
        y = client.infer(live.x)
        assert client.last_breakdown is not None and client.last_breakdown.codecs == ("int8+zstd",)
    assert y.shape == live.ref.shape and torch.allclose(y, live.ref, rtol=0.2, atol=0.2)


# --------------------------------------------------------------------------------------------------
# thread safety


@pytest.mark.parametrize("threads", [None, 1])
def test_one_client_from_eight_threads(live: Live, threads: int | None) -> None:
    cut = graph.chain_cuts(live.traced)[5]
    inputs = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(10 + i)) for i in range(8)]
    with torch.inference_mode():
        refs = [live.traced.module(x) for x in inputs]
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # differs from the client's limit, so a limit left behind shows
    start = threading.Barrier(8)

    def work(i: int) -> list[bool]:
        start.wait()
        # close, not equal: the server batches concurrent requests, and a batched GEMM rounds a few
        # last bits differently (1e-8 relative); another input's output differs entirely
        # half the threads with a deadline far off: they choose by the shared windows as they fill
        deadline = 60_000.0 if i % 2 else None
        return [
            torch.allclose(client.infer(inputs[i], deadline_ms=deadline), refs[i], rtol=1e-4, atol=1e-5)
            for _ in range(4)
        ]

    try:
        with live.client(force_boundary=cut, threads=threads) as client, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))  # re-raises any thread's exception
            assert client.requests == 32 and client.fallbacks == 0
            b = client.last_breakdown
            assert b is not None and not b.local
            # every request in the windows once: each head (heads predicted under 1 ms are not
            # kept, and a quick profile of a fast moment may predict this one so); each answer but
            # those that came back before any answer of the cut had (each waited for the tail's
            # build, at most 8)
            history = client._history
            kept = 32 if client.plan.cost.compute_ms[0] >= MIN_DEVICE_MS else 0
            assert len(history.heads) == kept and 24 <= history.remote.answered() == len(history.remote) < 32
            # overlapping thread limits are undone exactly: in this thread, in every pool thread
            # that computed (torch's OpenMP setting is per thread) and for threads started later
            start.reset()
            left = list(pool.map(lambda _: (start.wait(), torch.get_num_threads())[1], range(8)))
        assert torch.get_num_threads() == 2 and left == [2] * 8
        fresh: list[int] = []
        (t := threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))).start()
        t.join()
        assert fresh == [2]
    finally:
        torch.set_num_threads(before)
    assert all(all(r) for r in results), "a thread got another thread's output or a wrong one"


def _load(address: str, model: str) -> serde.ServerLoadData | None:
    """What a probe naming ``model`` says of the server's load."""
    with grpc.insecure_channel(address) as channel:
        answer = sd_grpc.SplitServiceStub(channel).Probe(serde.build_probe_request(b"x", model), timeout=10)
    return serde.parse_server_load(answer)


def test_a_probe_reports_the_servers_pace_and_a_new_client_starts_priced_at_it(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server keeps its pace against its own profile over all clients' requests and says it in
    a probe's answer; a client's start-up probe then prices the server before its first request
    (without it, three requests given up against a busy server: scripts/bench_server_pace.py)."""
    assert _load(live.server.address, MODEL) is None  # no profile: nothing to measure a pace against
    server_ms, _ = _server_ms(live)
    told = max(1.2, server_ms / 8)  # the profile says the server is faster than it is here
    profile = scale_profile(live.device, live.device.total.median_ms / told)
    predicted = sum(n.calibrated_ms for n in profile.nodes)  # the whole model: a cloud-only request
    spec = ModelSpec(MODEL, input_shapes=(SHAPE,))
    with TailServer(ServerConfig(models=(spec,), max_batch_size=1, profiles={MODEL: profile})) as server:
        assert _load(server.address, MODEL) == serde.ServerLoadData(0.0, 0, 0, 10.0, 0)  # idle
        assert _load(server.address, "") is None and _load(server.address, "zzz") is None
        assert _load(server.address, "m" * 5000) is None  # longer than any served name: not looked up
        ratios, computes, queues = [], [], []
        with SplitClient(
            server.address, live.traced, device_profile=live.device, force_boundary="cloud",
            probe_interval_s=None, fallback_local=False,
        ) as pinned:  # fmt: skip
            for i in range(5):
                pinned.infer(live.x)
                b = pinned.last_breakdown
                assert b is not None and not b.local
                if i:  # the first built the tail
                    ratios.append((b.server_queue_ms + b.server_compute_ms) / predicted)
                    computes.append(b.server_compute_ms / predicted)
                    queues.append(b.server_queue_ms)
        # exact at once: one client, one request at a time, max_batch_size 1: each ran inline on its
        # handler thread, which measured it before it answered (a batch thread's job may be measured
        # a moment after its client has the answer)
        busy = _load(server.address, MODEL)
        assert busy is not None and (busy.requests, busy.arrivals, busy.in_flight) == (4, 5, 0)

        def median(values: list[float]) -> float:  # as the server: ratios clamped
            return statistics.median(min(MAX_FACTOR, max(1 / MAX_FACTOR, r)) for r in values)

        assert busy.pace == pytest.approx(median(ratios), rel=0.02)  # the same times the answers reported
        assert busy.compute_pace == pytest.approx(median(computes), rel=0.02)
        assert busy.queue_ms == pytest.approx(statistics.median(queues), abs=0.05)  # inline: microseconds
        with SplitClient(
            server.address, live.traced, device_profile=live.device, link=Link(200.0, rtt_ms=1.0),
            fallback_local=False,
        ) as client:  # fmt: skip
            assert client.requests == 0
            # the compute's pace: the queue is priced apart (here a few microseconds: under its floor)
            if abs(math.log(busy.compute_pace)) > math.log(1.25):  # past the pace's tolerance: re-priced
                assert client.server_factor == pytest.approx(busy.compute_pace), client.describe()
                assert "the server reports it answers" in client.describe()
            else:  # a machine where the model computes in under 1.5 ms: within the tolerance
                assert client.server_factor == 1.0
            assert client.server_queue_ms == 0.0
            # a report no server sends costs the report, not the probe's link sample
            with monkeypatch.context() as patched:
                patched.setattr(serde, "parse_server_load", _malformed)
                assert client._probe_send(b"\0" * 64)[0] > 64
            assert any("load report was ignored" in note for note in client.notes)
        with SplitClient(
            server.address, live.traced, device_profile=live.device, link=Link(200.0, rtt_ms=1.0),
            fallback_local=False, server_pace=False,
        ) as unpaced:  # fmt: skip
            assert unpaced.server_factor == 1.0
        with SplitClient(  # planning with a profile of its own: the server's pace is not against it
            server.address, live.traced, device_profile=live.device, server_profile=live.device,
            link=Link(200.0, rtt_ms=1.0), fallback_local=False,
        ) as own:  # fmt: skip
            assert own.server_factor == 1.0 and own._pending_load is None


def test_the_clients_own_answers_price_the_queue_apart(live: Live) -> None:
    """Answers that waited 100 ms in the server's queue and then computed as its profile says: the
    compute is priced at 1x, the queue added to every remote plan (one factor read them as 11x)."""
    with live.client(link=Link(100.0, rtt_ms=1.0), probe_interval_s=None) as client:
        cloud = client.planner.baseline("cloud").cost
        for _ in range(3):
            client._observe(600_000, 0, 49.0, server=(10.0, 110.0, 100.0))  # (predicted, reported, queued)
        assert client.server_factor == 1.0 and client.server_queue_ms == pytest.approx(100.0), (
            client.describe()
        )
        assert "100 ms of queue added to every remote plan" in client.describe()
        assert any("1.00x its profile's compute after 100 ms in its queue" in n for n in client.notes)
        priced = client.planner.baseline("cloud").cost
        assert priced.server_ms == pytest.approx(cloud.server_ms)
        assert sum(priced.rtt_ms) == pytest.approx(sum(cloud.rtt_ms) + 100.0)


def test_a_reported_queue_is_priced_apart_from_the_compute(live: Live) -> None:
    """A server that reports its queue (a newer one): the client prices its compute at the reported
    compute pace and adds the queue to every remote plan; an older server's single pace is taken as
    a factor for both, as before."""
    with live.client(link=Link(100.0, rtt_ms=1.0), probe_interval_s=None) as client:
        assert client.server_queue_ms == 0.0
        edge = client.planner.baseline("edge").cost.total_ms
        cloud = client.planner.baseline("cloud").cost.total_ms
        client._pending_load = serde.ServerLoadData(9.0, 20, 3, 10.0, 25, compute_pace=1.5, queue_ms=400.0)
        client._observe_probe(256 << 10, 100, 3.0)
        assert client.server_factor == pytest.approx(1.5) and client.server_queue_ms == pytest.approx(400.0)
        assert "400 ms in its queue" in client.describe()
        priced = client.planner.baseline("cloud").cost
        assert sum(priced.rtt_ms) >= 400.0 and priced.total_ms > cloud + 400.0  # the queue, and x1.5
        assert client.planner.baseline("edge").cost.total_ms == pytest.approx(edge)
        assert client.plan.strategy == "edge-only", client.describe()  # 400 ms to wait: not worth it
        client._pending_load = serde.ServerLoadData(0.0, 0, 0, 10.0, 0)  # idle now: no queue, 1x
        client._observe_probe(256 << 10, 100, 3.0)
        assert client.server_factor == 1.0 and client.server_queue_ms == 0.0, client.describe()
        client._pending_load = serde.ServerLoadData(9.0, 20, 3, 10.0, 25)  # an older server's report
        client._observe_probe(256 << 10, 100, 3.0)
        assert client.server_factor == pytest.approx(9.0) and client.server_queue_ms == 0.0


def _malformed(msg: object) -> None:
    raise WireError("the server reported a load window of 0.0 s; expected a finite number > 0")


def test_a_report_after_a_give_up_stands_over_the_sample_the_give_up_left(live: Live) -> None:
    """The probe that settles a give-up also brings the server's report: folded in after the give-up's
    sample, it is the newer evidence (before it, the sample outranked it and the client stayed at 1x
    with too few samples of its own)."""
    with live.client(link=Link(100.0, rtt_ms=1.0), probe_interval_s=None) as client:
        client._observe(600_000, 0, 49.0)
        client._observe(600_000, 0, 49.0)
        client._observe(600_000, 0, 240.0, overdue=(20.0, 40.0, 1.0))  # given up
        client._pending_load = serde.ServerLoadData(6.0, 20, 3, 10.0, 25)  # what the probe brought
        client._observe_probe(256 << 10, 100, 22.0)  # the link as fast as before: the server's wait
        assert client._pace is not None and client._pace.queue_samples == 1 and client._pace.reported == 20
        assert client.server_queue_ms == 0.0  # the report (one factor, from an older server) stands
        assert client.server_factor == pytest.approx(6.0), client.describe()
