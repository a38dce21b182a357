"""The edge client through real gRPC on 127.0.0.1:0 against an in-process TailServer.

Invariants, not examples: for every chain cut of a chain and a DAG zoo model the split output equals
the local full-model output exactly (lossless codecs); a lossy codec gives exactly what the tail
computes from the decoded boundary tensor, whose error is within the codec's stated bound. Then the
failure paths: a stopped server (local fallback), a wrong token, another model, the privacy floor.
Models run at their small test input size; profiles are quick (1 repeat): no timing is asserted.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from resources import HAVE_PROC, growth

from splitdnn import codec, graph
from splitdnn.errors import (
    AuthenticationError,
    ConfigError,
    DeadlineError,
    ModelMismatchError,
    ProfileMismatchError,
    RemoteError,
    ServerUnavailableError,
)
from splitdnn.models import ZOO, build_zoo_model
from splitdnn.profiler import profile_model
from splitdnn.runtime import serde
from splitdnn.runtime._client_rpc import connection_state, is_transient
from splitdnn.runtime.client import (
    Breakdown,
    SplitClient,
    _unsendable,
    format_breakdown,
    run_requests,
    translate_rpc_error,
)
from splitdnn.runtime.planner import Hysteresis, scale_profile
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
from splitdnn.runtime.shaper import ShapedLink
from splitdnn.schema import Link, Profile

MODELS = ("alexnet", "resnet18")  # a chain and a DAG


@dataclass
class Served:
    traced: graph.TracedModel
    device: Profile  # quick profile of this machine
    server: Profile  # the same, "10x faster" (what the server publishes)
    x: torch.Tensor
    ref: torch.Tensor  # the local full-model output on x


def _spec(name: str) -> ModelSpec:
    torch.manual_seed(0)
    return ModelSpec(name, module=build_zoo_model(name), input_shapes=((1, *ZOO[name].test_input_shape),))


def _profile(traced: graph.TracedModel) -> Profile:
    return profile_model(
        traced, threads=1, warmup=0, repeats=1, segments=4, check_cuts=0, progress=False,
        codecs=("raw", "zstd", "int8+zstd"), codec_nodes="chain",
    )  # fmt: skip


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TailServer, dict[str, Served]]]:
    specs = [_spec(n) for n in MODELS]
    # profile first (the served weights do not matter for timing; the fingerprint is the same)
    profiles = {}
    for s in specs:
        assert s.module is not None and s.input_shapes is not None
        traced = graph.trace(s.module, torch.randn(s.input_shapes[0]), name=s.spec)
        profiles[s.spec] = _profile(traced)
    fast = {n: scale_profile(p, 10.0) for n, p in profiles.items()}
    with TailServer(ServerConfig(models=tuple(specs), profiles=fast)) as server:
        out = {}
        for n in MODELS:
            traced = server.served_model(n)
            x = torch.randn(1, *ZOO[n].test_input_shape, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                ref = traced.module(x)
            out[n] = Served(traced, profiles[n], fast[n], x, ref)
        yield server, out


def _last(client: SplitClient) -> Breakdown:
    b = client.last_breakdown
    assert b is not None
    return b


def _client(server: TailServer, s: Served, **kw: object) -> SplitClient:
    kw.setdefault("device_profile", s.device)
    kw.setdefault("link", Link(100.0, rtt_ms=1.0))
    return SplitClient(server.address, s.traced, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# correctness


@pytest.mark.parametrize("name", MODELS)
def test_every_chain_cut_gives_the_local_output_exactly(served, name: str) -> None:
    server, models = served
    s = models[name]
    cuts = ["edge", "cloud", *graph.chain_cuts(s.traced)]
    seen: set[str] = set()
    for cut in cuts:
        with _client(server, s, force_boundary=cut) as client:
            y = client.infer(s.x)
            b = client.last_breakdown
        assert b is not None
        assert torch.equal(y, s.ref), f"cut {cut}: split output differs from the local output"
        assert b.fallback == ""
        if cut == "edge":
            assert b.local and b.bytes_sent == 0
        elif cut == "cloud":
            assert b.boundary == ("x",) and not b.local
        else:
            assert b.boundary == (cut,) and not b.local and b.bytes_sent > 0
            assert set(b.codecs) <= {"raw", "zstd"}
        seen.update(b.codecs)
    assert "zstd" in seen or "raw" in seen


def test_dag_cuts_with_several_boundary_tensors_are_exact(served) -> None:
    server, models = served
    s = models["resnet18"]
    chain = set(graph.chain_cuts(s.traced))
    inside = [n.name for n in s.traced.compute_nodes()[:-1] if n.name not in chain]
    for cut in inside[:: max(1, len(inside) // 4)]:  # a few cuts inside residual blocks
        with _client(server, s, force_boundary=cut) as client:
            y = client.infer(s.x)
            b = client.last_breakdown
        assert b is not None and len(b.boundary) >= 2 and not b.local
        assert torch.equal(y, s.ref), f"cut after {cut}: split output differs from the local output"


@pytest.mark.parametrize("name", sorted(set(ZOO) - set(MODELS)))
def test_the_other_zoo_models_split_exactly_at_sampled_cuts(name: str) -> None:
    """Every other zoo model through real gRPC: cloud-only, about six chain cuts spread over the model,
    and up to three cuts inside its blocks (several boundary tensors), all equal to the local output."""
    entry = ZOO[name]
    module = build_zoo_model(name, **entry.test_kwargs)
    x = torch.randn(1, *entry.test_input_shape, generator=torch.Generator().manual_seed(1))
    spec = ModelSpec(name, module=module, input_shapes=(tuple(x.shape),))
    with TailServer(ServerConfig(models=(spec,))) as server:
        traced = server.served_model(name)
        with torch.inference_mode():
            ref = traced.module(x)
        device = profile_model(
            traced, threads=1, warmup=0, repeats=1, segments=2, check_cuts=0, progress=False,
            codecs=("raw", "zstd"), codec_nodes="chain",
        )  # fmt: skip
        chain = graph.chain_cuts(traced)
        inner = [n.name for n in traced.compute_nodes()[:-1] if n.name not in set(chain)]
        cuts = ["cloud", *chain[:: max(1, len(chain) // 6)], *inner[:: max(1, len(inner) // 3)][:3]]
        for cut in cuts:
            with SplitClient(
                server.address, traced, device_profile=device, server_speedup=10.0,
                link=Link(100.0, rtt_ms=1.0), force_boundary=cut, probe_interval_s=None,
            ) as client:  # fmt: skip
                y = client.infer(x)
                b = _last(client)
            assert not b.local and b.fallback == "", f"{name} cut {cut}: {b}"
            assert set(b.codecs) <= {"raw", "zstd"}
            assert torch.equal(y, ref), f"{name} cut {cut}: split output differs from the local output"
            if cut in inner:
                assert len(b.boundary) >= 2, f"{name} cut {cut}: {b.boundary}"


def test_the_pieces_of_the_plan_of_the_moment_are_found_without_keying_the_plan_again(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request asks for its plan's pieces; the plan of the moment's are kept beside it, so a
    request does not key a plan of every node again. Another plan with the same cut finds the same
    pieces by its key; a plan with another cut is split anew."""
    import splitdnn.runtime.client as client_module

    server, models = served
    s = models["alexnet"]
    cut, other = graph.chain_cuts(s.traced)[2:4]
    with _client(server, s, force_boundary=cut) as client:
        assert torch.equal(client.infer(s.x), s.ref)
        plan = client.plan
        pieces = client._pieces_for(plan)
        assert pieces.head is not None and pieces.tail is not None
        keyed: list[object] = []
        real_key = client_module.plan_key
        monkeypatch.setattr(client_module, "plan_key", lambda p: keyed.append(p) or real_key(p))
        assert client._pieces_for(plan) is pieces and keyed == []
        assert torch.equal(client.infer(s.x), s.ref) and keyed == []
        same_cut = dataclasses.replace(plan)  # equal, but another object
        assert client._pieces_for(same_cut) is pieces and keyed == [same_cut]
        tiers = {n: 0 if n in (cut, other) else t for n, t in plan.tiers.items()}
        moved = dataclasses.replace(plan, tiers=tiers)
        other_pieces = client._pieces_for(moved)
        assert other_pieces is not pieces and other_pieces.head is not None
        assert client._pieces_for(plan) is pieces  # the first cut's, kept by its key


def test_server_profile_is_fetched_and_used(served) -> None:
    server, models = served
    s = models["alexnet"]
    with _client(server, s) as client:
        assert client.server_profile_source.startswith("the server's")
        assert client.server_profile.total.median_ms == pytest.approx(s.server.total.median_ms)
        assert "server" in client.describe()


def test_lossy_codec_is_within_its_bound(served) -> None:
    server, models = served
    s = models["alexnet"]
    cut = graph.chain_cuts(s.traced)[2]
    # a slow link and a generous budget: int8+zstd wins on the boundary tensor
    with _client(server, s, force_boundary=cut, link=Link(0.5, rtt_ms=1.0), max_error=1.0) as client:
        assert client.plan.boundary[0].codec == "int8+zstd"
        y = client.infer(s.x)
    head, tail = graph.head_tail(s.traced, cut)
    with torch.inference_mode():
        outs = head({"x": s.x})
        assert isinstance(outs, dict)
        value = outs[cut]
        arr = value.numpy()
        sent = codec.decode(codec.encode(arr, "int8+zstd"))
        assert np.abs(sent - arr).max() <= codec.error_bound("int8+zstd", arr)
        expected = tail({cut: torch.from_numpy(np.array(sent))})
    assert isinstance(expected, torch.Tensor) and torch.equal(y, expected)


def test_adaptive_client_feeds_the_estimator_and_replans(served) -> None:
    server, models = served
    s = models["resnet18"]
    with _client(server, s, force_boundary=None, link=Link(1000.0, rtt_ms=0.5)) as client:
        pings = len(client.estimator.samples)
        # the start-up ping, then the start-up probe's ping and its last payload (a sized sample), and
        # the payload before it when that one took a fifth of the probe's target over the RTT (a
        # loaded machine: seen in CI on loopback)
        sized = [s.bytes_up > 0 for s in client.estimator.samples]
        assert sized in ([False, False, True], [False, False, True, True]) and client.probes == 1, sized
        for _ in range(3):
            y = client.infer(s.x)
            assert torch.equal(y, s.ref)
        b = client.last_breakdown
        assert b is not None and client.last_decision is not None
        if not b.local:
            # each request is a sample (a step of the link, against the prior, drops older sized ones)
            newest = client.estimator.samples[-1]
            assert (newest.bytes_up, newest.bytes_down) == (b.bytes_sent, b.bytes_received)
            assert client.estimator.steps > 0 or len(client.estimator.samples) == pings + 3
            assert b.bytes_received > 0 and b.network_ms >= 0
            parts = b.head_ms + b.encode_ms + b.network_ms + b.server_queue_ms + b.server_compute_ms
            assert parts <= b.total_ms + 1.0


def test_requests_on_a_steady_link_do_not_solve_again(served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request re-plans (a solve on the device, on the request's path) only on a step or when the
    planner says a re-plan could change something; its sample is folded in every time."""
    server, models = served
    s = models["resnet18"]
    with _client(server, s, force_boundary="cloud", probe_interval_s=None) as client:
        est, planner = client.estimator, client.planner
        observe, replan = est.observe, planner.replan

        folded: list[tuple[Any, ...]] = []

        def without_steps(*args: Any, **kw: Any) -> None:
            observe(*args, **kw)
            folded.append(args)
            est.stepped = False  # loopback against the prior link may look like a step: not this test's

        replans: list[Link] = []

        def counting(link: Link, *, step: bool = False) -> Any:
            replans.append(link)
            return replan(link, step=step)

        due = {"now": False}
        monkeypatch.setattr(est, "observe", without_steps)
        monkeypatch.setattr(planner, "replan", counting)
        monkeypatch.setattr(planner, "replan_due", lambda link, *, tolerance: due["now"])
        for _ in range(3):
            assert torch.equal(client.infer(s.x), s.ref)
        b = client.last_breakdown
        assert b is not None and not b.local and b.bytes_sent > 0
        # each request folded in (counted here: a sample 5x off the estimate is a step, which also
        # drops the window's older requests, as a loaded CI machine's loopback once made one)
        assert [a[0] for a in folded] == [b.bytes_sent] * 3 and replans == []
        due["now"] = True
        client.infer(s.x)
        assert replans == [est.link]


def test_client_switches_to_edge_when_the_shaped_link_collapses(served) -> None:
    server, models = served
    s = models["alexnet"]
    device = dataclasses.replace(scale_profile(s.device, 1.0), slowdown=4.0)  # a slow device...
    device = dataclasses.replace(
        device, nodes=tuple(dataclasses.replace(n, calibrated_ms=n.calibrated_ms * 4) for n in device.nodes)
    )
    with ShapedLink(server.address, uplink_mbps=200.0, rtt_ms=2.0) as link:
        with SplitClient(
            link.address, s.traced, device_profile=device, server_profile=scale_profile(s.device, 50.0),
            link=Link(200.0, rtt_ms=2.0), hysteresis=Hysteresis(0.1, 3, 0.5),
        ) as client:  # fmt: skip
            assert client.plan.strategy != "edge-only"  # ...and a fast link: offload
            assert torch.equal(client.infer(s.x), s.ref)
            if client.plan.strategy == "edge-only":  # pragma: no cover - a very busy machine
                pytest.skip("the loopback link measured too slow to offload on this machine now")
            switches, before = client.planner.switches, client.plan
            link.set_rates(uplink_mbps=0.5, rtt_ms=2.0)  # the link collapses
            for _ in range(4):  # one slow request may be a stall; a few show the change
                assert torch.equal(client.infer(s.x), s.ref)
                # the request caught by the fall is given up and finished on the device, or answered
                assert not _last(client).local or "no answer after" in _last(client).fallback
                if client.planner.switches > switches:
                    break
            assert client.link.uplink_mbps < 5.0, client.describe()  # the estimator saw it
            # one switch, to a plan that sends much less: a later cut or nothing at all
            assert client.planner.switches == switches + 1
            assert client.last_decision is not None and client.last_decision.switched
            assert client.plan.boundary_bytes < before.boundary_bytes / 2
            assert torch.equal(client.infer(s.x), s.ref)


def test_run_requests_prints_breakdowns(served) -> None:
    server, models = served
    s = models["alexnet"]
    out = io.StringIO()
    cut = graph.chain_cuts(s.traced)[5]
    with _client(server, s, force_boundary=cut, emulate_slowdown=2.0) as client:
        found = run_requests(client, 2, out=out)
    assert len(found) == 2 and all(b.boundary == (cut,) for b in found)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("request 1: split:") and "network" in lines[0] and "padding" in lines[0]
    assert format_breakdown(dataclasses.replace(found[0], fallback="UNAVAILABLE")).endswith("UNAVAILABLE")
    assert "deadline" not in lines[0] and not found[0].deadline_missed
    total = found[0].total_ms
    met, missed = (dataclasses.replace(found[0], deadline_ms=total + d) for d in (1.0, -1.0))
    assert format_breakdown(met).endswith(f"; deadline {total + 1:g} ms met") and not met.deadline_missed
    assert format_breakdown(missed).endswith(f"; deadline {total - 1:g} ms missed") and missed.deadline_missed


def test_emulated_slowdown_is_padding_and_reported(served) -> None:
    server, models = served
    s = models["alexnet"]
    with _client(server, s, force_boundary="edge", emulate_slowdown=3.0) as client:
        client.infer(s.x)
        b = client.last_breakdown
        assert b is not None and b.local
        assert b.padding_ms == pytest.approx(b.head_ms * 2 / 3)
        assert any("slowdown" in n for n in client.notes)  # the profile was measured without it


# --------------------------------------------------------------------------------------------------
# failures and security


class _AliasInPlace(torch.nn.Module):
    """Changes its hidden tensor in place through a view, which the profiles do not show."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        v = h.view(-1)
        v.mul_(3)
        return h + 1


def _timed(profile: Profile, ms: dict[str, float]) -> Profile:
    nodes = tuple(
        dataclasses.replace(n, calibrated_ms=ms.get(n.name, n.calibrated_ms)) for n in profile.nodes
    )
    return dataclasses.replace(profile, nodes=nodes)


@pytest.mark.filterwarnings("ignore:profile of .alias.:RuntimeWarning")  # a model of microseconds
def test_a_cut_the_model_cannot_run_split_is_never_chosen() -> None:
    """The solver's optimum here (cut after 'view') sends 'fc' and its view as two copies, and the
    in-place change on the server would reach only one: the client planned it, and every infer()
    raised PlanError. Now it runs the best cut the plan check accepts."""
    from splitdnn import solver

    torch.manual_seed(0)
    model = _AliasInPlace().eval()
    x = torch.randn(1, 4)
    with torch.no_grad():
        ref = model(x.clone())
    base = _profile(graph.trace(model, x, name="alias"))
    device = _timed(base, {"fc": 0.01, "view": 0.01, "mul_": 500.0, "add": 1000.0})
    server = _timed(base, {"fc": 1000.0, "view": 1000.0, "mul_": 0.01, "add": 0.01})
    link = Link(100.0, rtt_ms=1.0)
    assert set(solver.solve([device, server], [link]).head()) == {"fc", "view"}
    spec = ModelSpec("alias", module=model, input_shapes=((1, 4),))
    kw: dict[str, Any] = {
        "model_name": "alias",
        "device_profile": device,
        "link": link,
        "probe_interval_s": None,
    }
    with TailServer(ServerConfig(models=(spec,), profiles={"alias": server})) as srv:
        traced = srv.served_model("alias")
        with SplitClient(srv.address, traced, fallback_local=False, **kw) as client:
            y = client.infer(x)
            # cut after 'fc' (1000 ms on the server) and edge-only (1500) are slower
            assert set(client.plan.head()) == {"fc", "view", "mul_"} and not client.plan.exact
            assert not _last(client).local
        with pytest.raises(ConfigError, match=r"force_boundary='view' cannot run split: .*'mul_' on tier 1"):
            SplitClient(srv.address, traced, force_boundary="view", **kw)
    assert torch.equal(y, ref)


class _TwoHeads(torch.nn.Module):
    """Returns a dict of two tensors: the server sends them flat, the client must give the dict back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(4, 8)
        self.cls, self.box = torch.nn.Linear(8, 3), torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x))
        return {"logits": self.cls(h), "box": [self.box(h), h.sum(1)]}


class _Scores(torch.nn.Module):
    """Returns a flat dict of tensors: v2 names its outputs by the keys."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc(x)
        return {"logits": logits, "probs": torch.softmax(logits, 1)}


def test_a_flat_dict_output_is_named_by_its_keys_for_v2_clients() -> None:
    from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc

    model = _Scores().eval()
    spec = ModelSpec("scores", module=model, input_shapes=((1, 4),))
    x = torch.randn(2, 4)
    with torch.inference_mode():
        ref = model(x)
    with TailServer(ServerConfig(models=(spec,))) as server:
        channel = grpc.insecure_channel(server.address)
        v2 = v2_grpc.GRPCInferenceServiceStub(channel)
        meta = v2.ModelMetadata(serde.v2_pb.ModelMetadataRequest(name="scores"), timeout=10)
        assert [t.name for t in serde.parse_model_metadata(meta)[2]] == ["logits", "probs"]
        request = serde.build_infer_request("scores", {"x": x.numpy()})
        request.outputs.add(name="probs")  # a stock client asks for one output by its name
        got = serde.parse_infer_response(v2.ModelInfer(request, timeout=10), max_decoded_bytes=1 << 20)
        assert list(got.outputs) == ["probs"] and np.allclose(got.outputs["probs"], ref["probs"].numpy())
        channel.close()
        traced = server.served_model("scores")
        kw: dict[str, Any] = {"force_boundary": "cloud", "fallback_local": False, "probe_interval_s": None}
        with SplitClient(
            server.address, traced, model_name="scores", device_profile=_profile(traced), **kw
        ) as c:
            y = c.infer(x)
    assert type(y) is dict and list(y) == ["logits", "probs"]
    assert all(torch.equal(y[k], ref[k]) for k in ref)


@pytest.mark.parametrize("force", ["cloud", "relu", "edge"])
def test_a_structured_output_comes_back_in_the_models_structure(force: str) -> None:
    """Before, a remote answer was a flat tuple while a local run gave the model's dict."""
    model = _TwoHeads().eval()
    spec = ModelSpec("two_heads", module=model, input_shapes=((1, 4),))
    with TailServer(ServerConfig(models=(spec,))) as server:
        traced = server.served_model("two_heads")
        device = _profile(traced)
        x = torch.randn(2, 4)
        with torch.inference_mode():
            ref = model(x)
        kw: dict[str, Any] = {"force_boundary": force, "fallback_local": False, "probe_interval_s": None}
        with SplitClient(
            server.address, traced, model_name="two_heads", device_profile=device, **kw
        ) as client:
            y = client.infer(x)
            assert _last(client).local == (force == "edge")
    # the plain dict and list a local call returns (not fx's immutable containers)
    assert type(y) is dict and list(y) == ["logits", "box"] and type(y["box"]) is list
    assert torch.equal(y["logits"], ref["logits"])
    assert all(torch.equal(a, b) for a, b in zip(y["box"], ref["box"], strict=True))


@pytest.mark.parametrize("force", ["edge", "cloud", "cut"])
def test_the_output_is_a_plain_tensor_wherever_it_was_computed(served, force: str) -> None:
    """Local runs gave inference-mode tensors (in-place changes and autograd refused), remote ones
    plain tensors: an app's y.add_(1) broke whenever the plan moved to the device."""
    server, models = served
    s = models["alexnet"]
    cuts = graph.chain_cuts(s.traced)
    with _client(server, s, force_boundary=cuts[len(cuts) // 2] if force == "cut" else force) as client:
        y = client.infer(s.x)
        assert _last(client).local == (force == "edge")
        assert not y.is_inference() and not y.requires_grad
        y.add_(1)  # writable, its own memory
        assert torch.equal(y, s.ref + 1)


@pytest.mark.parametrize("force", ["edge", "cloud", "cut"])
def test_inputs_of_another_dtype_or_rank_get_one_error_whatever_the_plan(served, force: str) -> None:
    """They raised torch's RuntimeError on the device, a CodecError or an INVALID_ARGUMENT RemoteError
    on the server: an app could not catch one type, as the plan moves at run time."""
    server, models = served
    s = models["alexnet"]
    cuts = graph.chain_cuts(s.traced)
    with _client(server, s, force_boundary=cuts[len(cuts) // 2] if force == "cut" else force) as client:
        for bad in (s.x.double(), s.x[0], s.x[:0], s.x.to(torch.int64)):
            with pytest.raises(ConfigError, match=r"input 0 of model 'alexnet': expected a torch.float32"):
                client.infer(bad)
        assert client.requests == 0
        assert torch.equal(client.infer(s.x), s.ref)


def test_edge_only_never_calls_the_server(served) -> None:
    _, models = served
    s = models["alexnet"]
    with SplitClient("127.0.0.1:1", s.traced, device_profile=s.device, force_boundary="edge") as client:
        y = client.infer(s.x)
    assert torch.equal(y, s.ref)


def test_the_quick_device_profile_measures_the_codecs_named(served) -> None:
    _, models = served
    s = models["alexnet"]
    kw: dict[str, Any] = {"force_boundary": "edge", "profile_repeats": 1, "probe_interval_s": None}
    with SplitClient("127.0.0.1:1", s.traced, codecs=["fp16+zstd"], max_error=1e-2, **kw) as client:
        measured = {c.spec for n in client.planner.profiles[0].nodes for c in n.codecs}
    assert measured == {"raw", "fp16+zstd"}
    # named with no budget that admits a lossy codec, it could never be used: refused, not ignored
    with pytest.raises(ConfigError, match=r"fp16\+zstd's smallest measured relative MSE is .* over the"):
        SplitClient("127.0.0.1:1", s.traced, codecs=["fp16+zstd"], **kw)
    with pytest.raises(ConfigError, match="codecs must be a sequence of codec specs"):
        SplitClient("127.0.0.1:1", s.traced, codecs="zstd", **kw)


def _alexnet_of(server: TailServer) -> tuple[graph.TracedModel, Profile, torch.Tensor, torch.Tensor, str]:
    """The server's alexnet, a quick profile of it, an input, the local output, its fourth chain cut."""
    traced = server.served_model("alexnet")
    x = torch.randn(1, *ZOO["alexnet"].test_input_shape)
    with torch.inference_mode():
        ref = traced.module(x)
    return traced, _profile(traced), x, ref, graph.chain_cuts(traced)[3]


def test_fallback_to_local_when_the_server_stops() -> None:
    spec = _spec("alexnet")
    with TailServer(ServerConfig(models=(spec,), grace_s=0.0)) as server:
        traced, device, x, ref, cut = _alexnet_of(server)
        client = SplitClient(server.address, traced, device_profile=device, force_boundary=cut, retries=2)
        strict = SplitClient(
            server.address, traced, device_profile=device, force_boundary=cut, fallback_local=False
        )
        measured: list[float] = []  # what the planner is told: requests that ran as planned
        real = client.planner.observe_latency
        client.planner.observe_latency = lambda plan, ms: measured.append(ms) or real(plan, ms)  # type: ignore[method-assign]
        assert torch.equal(client.infer(x), ref) and not _last(client).local
        assert measured == [_last(client).total_ms]
        assert "server" in client.describe()
        server.stop(grace=0.0)
    with client, strict:
        y = client.infer(x)
        b = client.last_breakdown
        assert torch.equal(y, ref)
        assert b is not None and b.local and "UNAVAILABLE" in b.fallback
        assert b.head_ms > 0 and b.tail_local_ms > 0  # the head's work was kept
        y = client.infer(x)  # within the back-off: not even tried
        assert torch.equal(y, ref) and "retrying it later" in _last(client).fallback
        assert client.fallbacks == 2
        assert len(measured) == 1  # local fallbacks say nothing about the plan
        with pytest.raises(ServerUnavailableError, match="unavailable"):
            strict.infer(x)


def test_a_server_stopping_mid_request_is_not_read_as_the_link_falling() -> None:
    """A request given up at its overdue time is taken as a link fallen to a crawl, unless the
    connection is down then: a stopped server (gRPC still retrying within the call) says nothing of
    the link's rate. Before, the estimate fell from hundreds of Mbit/s to 0.8 (6 runs in 6)."""
    spec = _spec("alexnet")
    with TailServer(ServerConfig(models=(spec,), grace_s=0.0)) as server:
        traced, device, x, ref, cut = _alexnet_of(server)
        with SplitClient(
            server.address, traced, device_profile=device, server_profile=device, codecs=["raw"],
            link=Link(1000.0, rtt_ms=0.2), probe_interval_s=None, force_boundary=cut,
        ) as client:  # fmt: skip
            for _ in range(3):  # the cut's tail is built: its requests may be given up when overdue
                client.infer(x)
                assert not _last(client).local
            before = client.estimator.link
            server.stop(grace=0.0)
            assert torch.equal(client.infer(x), ref)
            b = _last(client)
            assert b.local and "the connection to the server is" in b.fallback, b.fallback
            assert client.estimator.link == before
            client.infer(x)
            assert "retrying it later" in _last(client).fallback  # and it backed off


def test_connection_state_is_read_without_a_polling_thread_or_unknown() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")
    assert connection_state(channel) is grpc.ChannelConnectivity.IDLE
    assert not [t.name for t in threading.enumerate() if "_poll_connectivity" in t.name]
    channel.close()
    assert connection_state(channel) is None  # closed: unknown, so a deadline counts as before
    assert connection_state(object()) is None  # type: ignore[arg-type]


def test_ping_after_close_is_a_config_error(served) -> None:
    server, models = served
    client = _client(server, models["alexnet"])
    assert client.ping() > 0
    client.close()
    with pytest.raises(ConfigError, match="this SplitClient is closed"):
        client.ping()


def test_unreachable_at_start_runs_locally_or_raises(served) -> None:
    _, models = served
    s = models["alexnet"]
    with SplitClient("127.0.0.1:1", s.traced, device_profile=s.device, connect_timeout_s=0.2) as client:
        assert torch.equal(client.infer(s.x), s.ref)
        assert client.last_breakdown is not None and client.last_breakdown.local
    with pytest.raises(ServerUnavailableError, match="cannot connect"):
        SplitClient(
            "127.0.0.1:1", s.traced, device_profile=s.device, connect_timeout_s=0.2, fallback_local=False
        )


def test_requests_failing_in_one_outage_share_one_back_off(served) -> None:
    """Six requests in flight when a server went down pushed the back-off to 30 s: the app ran locally
    for 29 s after the server was back. A back-off grows only when a try after it fails again."""
    _, models = served
    s = models["alexnet"]
    with SplitClient("127.0.0.1:1", s.traced, device_profile=s.device, connect_timeout_s=0.2) as client:
        first = client._down_until - time.monotonic()  # the failed connect backed off once
        assert 0 < first <= 1.0
        for _ in range(5):  # the others of the same outage
            client._mark_down()
        assert client._down_until - time.monotonic() <= first
        # a request sent before that back-off began, failing at its own deadline after it ran out
        client._down_until = 0.0
        client._mark_down(sent_at=client._marked_down_at - 0.5)
        assert client._down_until == 0.0  # the same outage: no new back-off, no doubling
        client._mark_down(sent_at=time.monotonic())  # sent after it: the server still fails
        assert 1.0 < client._down_until - time.monotonic() <= 2.0


def test_connecting_starts_no_connectivity_polling_thread(served) -> None:
    """gRPC's ``channel_ready_future`` starts a thread polling the channel's state that outlives the
    wait, and close() then waited for it (0.15-0.2 s); the client waits inside its first call."""
    server, models = served
    s = models["alexnet"]
    for address in (server.address, "127.0.0.1:1"):
        before = {t.ident for t in threading.enumerate()}
        client = SplitClient(address, s.traced, device_profile=s.device, connect_timeout_s=0.2)
        try:
            assert torch.equal(client.infer(s.x), s.ref)
            started = [
                t.name
                for t in threading.enumerate()
                if t.ident not in before and not t.name.startswith("splitdnn-")  # the server's own
            ]
            assert not started, (address, started)
        finally:
            client.close()


def _alexnet_for_a_later_server() -> tuple[ModelSpec, int, graph.TracedModel, torch.Tensor]:
    """alexnet's spec, a free port no server listens on yet, the model traced here and an input."""
    spec = _spec("alexnet")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert spec.module is not None and spec.input_shapes is not None
    traced = graph.trace(spec.module, torch.zeros(spec.input_shapes[0]), name="alexnet")
    return spec, port, traced, torch.randn(spec.input_shapes[0])


def test_a_server_that_starts_after_the_client_is_used_once_it_answers() -> None:
    """Down at construction (local), then a server comes up on that address: within the client's
    back-off (1 s, doubling) and gRPC's reconnect back-off (at most 2 s) requests go remote again."""
    spec, port, traced, x = _alexnet_for_a_later_server()
    with torch.inference_mode():
        ref = traced.module(x)
    cut = graph.chain_cuts(traced)[3]
    device = _profile(traced)
    with SplitClient(
        f"127.0.0.1:{port}", traced, device_profile=device, force_boundary=cut, connect_timeout_s=0.2
    ) as client:
        assert torch.equal(client.infer(x), ref) and _last(client).local
        assert client.server_profile_source.startswith("estimated")
        published = scale_profile(device, 10.0)
        with TailServer(ServerConfig(models=(spec,), port=port, profiles={"alexnet": published})):
            end = time.monotonic() + 20.0
            while _last(client).local:
                assert time.monotonic() < end, "the client never went back to the server"
                time.sleep(0.05)
                assert torch.equal(client.infer(x), ref)
            b = _last(client)
            assert b.boundary == (cut,) and b.bytes_sent > 0 and b.server_compute_ms > 0
            # its first answer: the client checks the server's model and plans with its profile now
            assert client.server_profile_source == "the server's (GetModelInfo)"
            assert client.server_profile.total == published.total
            assert torch.equal(client.infer(x), ref) and not _last(client).local


def test_a_server_that_starts_after_an_edge_only_client_is_checked_once_a_probe_reaches_it() -> None:
    """Edge-only (the server's speed estimated as the device's), the client sends no request, so it
    never asked the server for its model and profile: it stayed edge-only against a server 10x faster."""
    spec, port, traced, x = _alexnet_for_a_later_server()
    device = _profile(traced)
    with SplitClient(f"127.0.0.1:{port}", traced, device_profile=device, connect_timeout_s=0.2) as client:
        client.infer(x)
        assert client.planner.plan.strategy == "edge-only" and client.server_profile_source.startswith(
            "estimated"
        )
        published = scale_profile(device, 10.0)
        with TailServer(ServerConfig(models=(spec,), port=port, profiles={"alexnet": published})):
            end = time.monotonic() + 20.0
            while client.server_profile_source != "the server's (GetModelInfo)":
                assert time.monotonic() < end, "the client never asked the server that came up"
                time.sleep(0.1)
                client.infer(x)
            assert client.server_profile.total == published.total


def test_the_plan_fits_the_servers_message_cap(served) -> None:
    """The client learned a 40 KiB cap from GetModelInfo, yet planned cloud-only with a 49 KB request:
    every infer() raised, though a split sending a few KB fits."""
    _, models = served
    s = models["alexnet"]
    spec = _spec("alexnet")
    with TailServer(
        ServerConfig(models=(spec,), max_message_bytes=40 << 10, profiles={"alexnet": s.server})
    ) as server:
        fast = Link(1000.0, rtt_ms=1.0)  # so fast that sending the input would be best, but it is 49 KB
        with SplitClient(
            server.address, server.served_model("alexnet"), device_profile=s.device, link=fast
        ) as client:
            assert client.message_cap() == (40 << 10, "server's")
            plan = client.planner.plan
            assert plan.strategy != "cloud-only", plan.describe()
            assert all(b.wire_bytes <= 40 << 10 for b in plan.boundary)
            y = client.infer(s.x)
            assert torch.equal(y, s.ref) and not _last(client).local


def _zstd_claims(profile: Profile, node: str, wire_bytes: int) -> Profile:
    """``profile`` with ``node``'s zstd frame measured at ``wire_bytes`` (as on an all-zero input)."""
    nodes = tuple(
        dataclasses.replace(
            n,
            codecs=tuple(
                dataclasses.replace(c, wire_bytes=wire_bytes) if c.spec == "zstd" else c for c in n.codecs
            ),
        )  # fmt: skip
        if n.name == node
        else n
        for n in profile.nodes
    )
    return dataclasses.replace(profile, nodes=nodes)


@pytest.mark.parametrize("fallback", [True, False])
def test_a_cut_whose_request_turns_out_over_the_cap_is_not_planned_again(served, fallback: bool) -> None:
    """The device profile predicts a 1 kB zstd frame of the input (measured on zeros, say); the real one
    is 45 kB, over the server's 40 KiB cap. Every infer() raised ConfigError on the same plan."""
    _, models = served
    s = models["alexnet"]
    # a device 4x slower than measured: cloud-only wins by far, whatever the quick profile's noise
    # (at the measured speed a split plan won once, in a full run of this file)
    device = _zstd_claims(scale_profile(s.device, 0.25, keep_emulation=True), "x", 1_000)
    spec = ModelSpec("alexnet", module=s.traced.module, input_shapes=((1, *ZOO["alexnet"].test_input_shape),))
    config = ServerConfig(models=(spec,), max_message_bytes=40 << 10, profiles={"alexnet": s.server})
    with TailServer(config) as server:
        fast = Link(1000.0, rtt_ms=1.0)
        kw: dict[str, Any] = {"device_profile": device, "link": fast, "probe_interval_s": None}
        with SplitClient(server.address, s.traced, codecs=["zstd"], fallback_local=fallback, **kw) as client:
            assert client.plan.strategy == "cloud-only" and client.plan.boundary[0].codec == "zstd"
            if fallback:
                assert torch.equal(client.infer(s.x), s.ref)
                assert _last(client).local and "this cut is not planned again" in _last(client).fallback
                assert _last(client).bytes_sent == 0  # refused before it was sent
            else:
                with pytest.raises(ConfigError, match=r"over the server's max_message_bytes=40960; this cut"):
                    client.infer(s.x)
            assert client.plan.strategy != "cloud-only"
            assert torch.equal(client.infer(s.x), s.ref) and not _last(client).local


def test_a_batch_larger_than_the_profiles_is_not_given_up_as_a_fallen_link(served) -> None:
    """Its remote part was predicted at the profile's batch of 1 and given up after about 65 ms as "the
    link fell", then computed again on the device, on every request."""
    server, models = served
    s = models["alexnet"]
    cuts = graph.chain_cuts(s.traced)
    x = s.x.repeat(256, 1, 1, 1)
    with torch.no_grad():
        ref = s.traced.module(x)
    with _client(server, s, force_boundary=cuts[len(cuts) // 2]) as client:
        for _ in range(3):
            y = client.infer(x)
            b = _last(client)
            assert not b.local and not b.fallback, b.fallback
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_is_served_and_split_at_its_precision(dtype: torch.dtype) -> None:
    """Tracing drew float32 examples: a float16 model could not be served or given to the client."""
    torch.manual_seed(0)
    model = build_zoo_model("alexnet").eval().to(dtype)
    shape = (1, *ZOO["alexnet"].test_input_shape)
    spec = ModelSpec("alexnet", module=model, input_shapes=(shape,))
    with TailServer(ServerConfig(models=(spec,))) as server:
        traced = server.served_model("alexnet")
        assert traced.example_inputs[0].dtype == dtype
        client_side = SplitClient(
            server.address, model, input_shape=shape, force_boundary=graph.chain_cuts(traced)[3]
        )
        with client_side as client:
            assert client.traced.fingerprint == traced.fingerprint
            x = torch.randn(shape).to(dtype)
            with torch.no_grad():
                ref = model(x)
            y = client.infer(x)
            assert y.dtype == dtype and not _last(client).local
            torch.testing.assert_close(y, ref)


def test_a_late_servers_message_cap_reaches_the_planner(served) -> None:
    """With server_profile given, the cap a server that came up late published was stored but never
    planned with, and a first request over it raised before the client could learn it: every infer()
    raised. Now the refused request teaches the client the cap, and it runs again under a plan that fits."""
    _, models = served
    s = models["alexnet"]  # its profiles were measured on random inputs: zstd does not shrink them
    spec = _spec("alexnet")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # a server 100x the device and a 10 Gbit/s link: sending the 49 KB input is best by far (with the
    # fixture's 10x and 1 Gbit/s a quick profile's noise sometimes made a split best), were it allowed
    fast, server = Link(10_000.0, rtt_ms=1.0), scale_profile(s.device, 100.0)
    with SplitClient(
        f"127.0.0.1:{port}", s.traced, device_profile=s.device, server_profile=server, link=fast,
        connect_timeout_s=0.2,
    ) as client:  # fmt: skip
        assert client.plan.strategy == "cloud-only"
        with TailServer(ServerConfig(models=(spec,), port=port, max_message_bytes=40 << 10)):
            end = time.monotonic() + 20.0
            while client.message_cap()[1] != "server's" or _last(client).local:
                assert time.monotonic() < end, "the client never learned the server's cap"
                time.sleep(0.1)
                y = client.infer(s.x)  # never raises: the refused request runs again under the new plan
            assert torch.equal(y, s.ref) and client.plan.strategy != "cloud-only"
            assert all(b.wire_bytes <= 40 << 10 for b in client.plan.boundary)
            b = _last(client)  # the run that answered, not the refused one before it
            assert not b.local and not b.fallback and b.boundary == client.plan.boundary_nodes


def test_token_is_required_and_sent() -> None:
    spec = _spec("alexnet")
    with TailServer(ServerConfig(models=(spec,), token="s3cret")) as server:
        traced = server.served_model("alexnet")
        device = _profile(traced)
        with pytest.raises(AuthenticationError, match="token"):
            SplitClient(server.address, traced, device_profile=device)
        with pytest.raises(AuthenticationError):
            SplitClient(server.address, traced, device_profile=device, token="wrong")
        x = torch.randn(1, *ZOO["alexnet"].test_input_shape)
        with SplitClient(
            server.address, traced, device_profile=device, token="s3cret", force_boundary="cloud"
        ) as c:
            c.infer(x)
            assert c.last_breakdown is not None and not c.last_breakdown.local


def test_another_model_is_refused(served) -> None:
    server, models = served
    s = models["resnet18"]
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        SplitClient(server.address, s.traced, model_name="alexnet", device_profile=s.device)


def test_privacy_floor_keeps_the_input_on_the_device(served) -> None:
    server, models = served
    s = models["alexnet"]
    fast = Link(100_000.0, rtt_ms=0.0)  # cloud-only would win
    with _client(server, s, link=fast, server_profile=scale_profile(s.device, 1000.0)) as free:
        assert free.plan.strategy == "cloud-only"
    with _client(
        server, s, link=fast, server_profile=scale_profile(s.device, 1000.0), privacy_floor=True
    ) as c:
        assert c.plan.strategy != "cloud-only"
        y = c.infer(s.x)
        assert torch.equal(y, s.ref)
        assert "x" not in _last(c).boundary
    with pytest.raises(ConfigError, match="privacy_floor"):
        _client(server, s, force_boundary="cloud", privacy_floor=True)


def test_predicted_deadline_miss_runs_locally(served) -> None:
    server, models = served
    s = models["alexnet"]
    with _client(server, s, force_boundary="cloud", link=Link(0.001, rtt_ms=1.0), timeout_s=1.0) as c:
        y = c.infer(s.x)
        b = c.last_breakdown
    assert torch.equal(y, s.ref)
    assert b is not None and b.local and "deadline" in b.fallback and b.bytes_sent == 0


def test_values_that_are_not_tensors_are_found() -> None:
    # ViT's attention blocks return (output, weights) tuples: no plan may cut right after them
    entry = ZOO["vit_tiny"]
    model = build_zoo_model("vit_tiny", **entry.test_kwargs)
    traced = graph.trace(model, torch.randn(1, *entry.test_input_shape), name="vit_tiny")
    found = _unsendable(traced)
    attention = {n.name for n in traced.nodes if n.name.endswith("self_attention")}
    assert attention and attention <= found
    assert not found & set(graph.chain_cuts(traced))
    assert _unsendable(traced) is found  # kept per traced module: a second client runs nothing
    other = graph.trace(model, torch.randn(1, *entry.test_input_shape), name="vit_tiny")
    assert _unsendable(other) == found and _unsendable(other) is not found


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "cls"),
    [
        (grpc.StatusCode.UNAVAILABLE, "connection refused", ServerUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", DeadlineError),
        (grpc.StatusCode.CANCELLED, "the request was cancelled before it ran", ServerUnavailableError),
        (grpc.StatusCode.UNAUTHENTICATED, "no token", AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, "", AuthenticationError),
        (grpc.StatusCode.FAILED_PRECONDITION, "fingerprint abc is not def", ModelMismatchError),
        (grpc.StatusCode.FAILED_PRECONDITION, "the client computes with weights 'ab'", ModelMismatchError),
        (grpc.StatusCode.FAILED_PRECONDITION, "the index is not built", RemoteError),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad frame", RemoteError),
    ],
)
def test_grpc_errors_are_translated(code: grpc.StatusCode, details: str, cls: type) -> None:
    err = translate_rpc_error(_FakeRpcError(code, details), "ModelInfer('m')")
    assert type(err) is cls
    assert err.code == code.name and err.details == details
    assert "ModelInfer('m')" in str(err)
    # what a client with a local fallback finishes on the device instead of raising
    transient = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    assert is_transient(err) == (code in transient)


def test_a_message_over_a_size_cap_is_a_configuration_error_not_an_overload() -> None:
    over = translate_rpc_error(
        _FakeRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (45734 vs. 16384)"
        ),
        "ModelInfer('m')",
    )
    assert not is_transient(over) and "over a size cap" in str(over) and "--max-message-mib" in str(over)
    busy = translate_rpc_error(
        _FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "the server already has max_concurrency=64"), "m"
    )
    assert is_transient(busy)


def test_a_request_over_either_ends_message_cap_raises_before_it_is_sent(served) -> None:
    server, models = served
    s = models["alexnet"]  # a (1, 3, 64, 64) fp32 input: 49 KB raw
    with _client(server, s, force_boundary="cloud", codecs=["raw"], max_message_bytes=40 << 10) as c:
        with pytest.raises(ConfigError, match=r"over the client's max_message_bytes=40960; raise it"):
            c.infer(s.x)
        assert c.fallbacks == 0
    small = TailServer(ServerConfig(models=(_spec("alexnet"),), max_message_bytes=32 << 10)).start()
    try:
        with SplitClient(small.address, s.traced, device_profile=s.device, force_boundary="cloud",
                         codecs=["raw"], link=Link(100.0, rtt_ms=1.0)) as c:  # fmt: skip
            with pytest.raises(ConfigError, match=r"over the server's max_message_bytes=32768"):
                c.infer(s.x)
    finally:
        small.stop(0)


def test_no_answer_within_the_deadline_backs_off_and_slows_the_link_estimate() -> None:
    spec = ModelSpec("held", module=_Held(), input_shapes=((1, 4),))
    with TailServer(ServerConfig(models=(spec,))) as server:
        traced = server.served_model("held")
        x = torch.randn(1, 4)
        with torch.inference_mode():
            ref = traced.module(x)
        kw = {"device_profile": _profile(traced), "link": Link(100.0, rtt_ms=1.0)}
        _HELD.clear()
        _RELEASE.clear()  # the server's tail now waits (up to 10 s); the device's does not
        try:
            with SplitClient(server.address, traced, force_boundary="cloud", timeout_s=0.15, **kw) as c:
                before = c.estimator.link.uplink_mbps
                assert torch.equal(c.infer(x), ref)
                b = _last(c)
                assert b.local and "DEADLINE_EXCEEDED" in b.fallback and b.bytes_sent > 0
                assert c.estimator.link.uplink_mbps < before / 10  # taken as a slow link, at least
                assert torch.equal(c.infer(x), ref)  # backed off: straight to the device
                b = _last(c)
                assert b.local and b.bytes_sent == 0 and "retrying it later" in b.fallback
        finally:
            _RELEASE.set()


def test_a_device_profile_of_another_input_shape_is_refused(served) -> None:
    server, models = served
    s = models["alexnet"]
    other = graph.trace(s.traced.module, torch.randn(2, *ZOO["alexnet"].test_input_shape), name="alexnet")
    with pytest.raises(
        ProfileMismatchError, match=r"measured for input shapes \[\[1, 3, .*traced the model for \[\[2, 3"
    ):
        SplitClient(server.address, other, device_profile=s.device, force_boundary="cloud")
    with pytest.raises(ConfigError, match="the token must be printable ASCII"):
        _client(server, s, token="caf\u00e9")
    with pytest.raises(ConfigError, match=r"the root certificate \(the bytes given\) is not PEM"):
        _client(server, s, root_cert=b"garbage")


def test_a_closed_client_refuses_requests_clearly(served) -> None:
    server, models = served
    c = _client(server, models["alexnet"], force_boundary="cloud")
    c.infer(models["alexnet"].x)
    c.close()
    with pytest.raises(ConfigError, match="this SplitClient is closed; create a new one"):
        c.infer(models["alexnet"].x)


@pytest.mark.parametrize("threads", [1, None])
def test_emulation_multiplies_the_device_work_not_time_spent_waiting(threads: int | None) -> None:
    """With one device thread the padding follows the thread's CPU time: a device-side step that
    mostly waits (here: sleeps, as when the shaper or the server holds the machine) is not multiplied
    by the slowdown. With more threads CPU time of one thread says nothing, so wall time is used."""
    from types import SimpleNamespace

    from splitdnn.runtime._client_request import Run

    fake = SimpleNamespace(emulate_slowdown=8.0, threads=threads)
    run = Run(fake, None, time.perf_counter())  # type: ignore[arg-type]

    def waits_then_works() -> int:
        time.sleep(0.05)
        end = time.thread_time() + 0.01
        while time.thread_time() < end:  # ~10 ms of CPU
            pass
        return 7

    t = time.perf_counter()
    out, emulated_ms = run._timed_device(waits_then_works)
    wall_ms = (time.perf_counter() - t) * 1e3
    assert out == 7
    if threads == 1:  # 8 x ~10 ms of work (>= the 60 ms already spent): ~80 ms, not 8 x 60 ms
        assert 75 <= emulated_ms <= 200
        assert wall_ms == pytest.approx(emulated_ms, abs=30)
    else:
        assert emulated_ms >= 8 * 60 * 0.95
        assert run.padding_ms == pytest.approx(emulated_ms * 7 / 8, rel=0.01)


def test_head_padding_is_slept_after_the_encode_not_between() -> None:
    """A deferred step owes its padding; the next step sleeps it after its own work, so head and
    encode run back to back as on a real device. The emulated times are unchanged."""
    from types import SimpleNamespace

    from splitdnn.runtime._client_request import Run

    run = Run(SimpleNamespace(emulate_slowdown=4.0, threads=None), None, time.perf_counter())  # type: ignore[arg-type]
    stamps: list[float] = []

    def work() -> None:
        stamps.append(time.perf_counter())
        time.sleep(0.02)

    _, head_ms = run._timed_device(work, defer=True)
    assert run._owed_ms == pytest.approx(head_ms * 3 / 4)
    t = time.perf_counter()
    _, encode_ms = run._timed_device(work)
    after = time.perf_counter() - t
    assert stamps[1] - stamps[0] < 0.05  # the second step started right after the first
    assert run._owed_ms == 0.0
    assert after * 1e3 >= encode_ms + head_ms * 3 / 4 - 2  # it slept both paddings
    assert run.padding_ms == pytest.approx((head_ms + encode_ms) * 3 / 4)


# --------------------------------------------------------------------------------------------------
# a long run: nothing grows


@pytest.mark.skipif(not HAVE_PROC, reason="counts threads and file descriptors in /proc")
def test_clients_opened_and_closed_and_a_long_run_leak_nothing(served) -> None:
    """An application that opens a client per session (each fetching the server's profile,
    planning, splitting the model) and one long-lived client: after a warm-up, 6 more sessions
    and 60 more requests leave no thread, descriptor or object behind, nor what they allocated.
    Measured here: 26 objects more, 162 KB held (the long-lived client's bounded caches: its
    pieces, the estimator's pair indices). Before the solver's store let go of closed clients'
    profiles and splitdnn's fx modules took their generated source along: 3,806 objects and 1.08 MB
    (about 180 KB a session), which these bounds refuse."""
    server, models = served
    s = models["resnet18"]
    cuts = graph.chain_cuts(s.traced)[1:5]  # the server's tails for these are built in the warm-up

    def session(k: int) -> None:
        with _client(server, s, force_boundary=cuts[k % len(cuts)]) as client:
            for _ in range(3):
                assert torch.equal(client.infer(s.x), s.ref)
        with SplitClient("127.0.0.1:1", s.traced, device_profile=s.device, connect_timeout_s=0.05) as down:
            assert torch.equal(down.infer(s.x), s.ref)  # no server: local

    with _client(server, s) as long_lived:
        for k in range(len(cuts)):
            session(k)
            long_lived.infer(s.x)
        with growth() as g:
            for k in range(6):
                session(k)
                for _ in range(10):
                    assert torch.equal(long_lived.infer(s.x), s.ref)
    more = g.more
    assert more["threads"] <= 2 and more["fds"] <= 4, g  # a leak: one per session
    # one run in six held 777 more (not reproduced alone: the long-lived client's bounded state, a
    # re-plan or its estimator's window, is the likely holder); 6 leaking sessions held 3,806
    assert more["objects"] < 1500, g
    assert g.held < 512 << 10, f"{g.held} bytes allocated by 6 sessions and 60 requests are still held"
    assert more["rss_mib"] < 64, g


# --------------------------------------------------------------------------------------------------
# the server stops while a request is in it

_HELD = threading.Event()
_RELEASE = threading.Event()


def _hold_on_server(x: torch.Tensor) -> torch.Tensor:
    """Blocks the tail while it runs on a server thread (at most 10 s); returns x unchanged."""
    if threading.current_thread().name.startswith("splitdnn-"):
        _HELD.set()
        _RELEASE.wait(timeout=10)
    return x


torch.fx.wrap("_hold_on_server")


class _Held(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_hold_on_server(self.fc1(x)))


def test_a_server_stopping_under_a_request_leaves_it_to_the_device() -> None:
    """Stopped with no grace while the tail runs: the call is cancelled, which the client takes as
    the server going away (transient): it finishes the request locally instead of raising."""
    model = _Held()
    spec = ModelSpec("held", module=model, input_shapes=((1, 4),))
    x = torch.randn(1, 4)
    with TailServer(ServerConfig(models=(spec,), max_batch_size=1, grace_s=0.0)) as server:
        traced = server.served_model("held")
        with torch.inference_mode():
            ref = traced.module(x)
        device = _profile(traced)
        _HELD.clear()
        _RELEASE.clear()
        with SplitClient(server.address, traced, device_profile=device, force_boundary="fc1") as client:
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(client.infer, x)
                try:
                    assert _HELD.wait(timeout=20), "the request never reached the tail"
                    server.stop(grace=0.0)
                    y = pending.result(timeout=20)
                finally:
                    _RELEASE.set()
            b = _last(client)
            assert torch.equal(y, ref) and b.local and b.fallback, b
