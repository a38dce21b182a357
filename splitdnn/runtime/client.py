"""The edge client: run the head on the device, send the boundary tensors, get the model output (torch, grpc).

::

    with SplitClient("server:8001", "resnet18", link=Link(5.85, rtt_ms=20)) as client:
        y = client.infer(x)             # torch.Tensor in, the model's output out
        client.last_breakdown           # head, encode, network, server queue/compute, decode, bytes

What one :meth:`SplitClient.infer` does, and why:

1. The :class:`~splitdnn.runtime.planner.Planner` holds the current plan (solved from the device
   profile, the server's profile and the live link estimate, with the codecs allowed by the error
   budget and, if given, the accuracy budget). Edge-only runs the whole model here and never calls
   the server.
2. Otherwise the head piece runs (``splitdnn.graph.split`` pieces, cached per plan); each boundary
   tensor is encoded with the plan's codec (``raw`` stays a real-typed v2 tensor, anything else is a
   codec frame), and one ModelInfer request carries them with the model's fingerprint *and* its
   weights digest (:mod:`splitdnn.runtime._weights`), so the server refuses a different model, or
   the same model with other weights, instead of computing garbage. Cloud-only sends the model's input.
3. The server reports its queue, compute and decode time; the rest of the RPC's wall time is network.
   That sample feeds the :class:`~splitdnn.runtime.planner.LinkEstimator`, and the planner re-plans
   with hysteresis when that could change anything (:meth:`~splitdnn.runtime.planner.Planner.replan_due`:
   a step, the estimate moved 5 %, a switch being confirmed, a hold run out); a re-plan is a solve on
   the device, on the request's path (about 2.5 ms for MobileNetV2 here, docs/benchmarks.md), so a
   steady link does not pay it per request, and re-plans for a drifting estimate alone (on a fast
   link it moves 5 % on most requests) take at most ``Hysteresis.replan_budget`` (2 %) of the time.
   While nothing is sent (edge-only, or every request finishing locally) a background
   :class:`~splitdnn.runtime._probe.LinkProber` measures the link (every
   ``probe_edge_interval_s`` while edge-only), so a link that recovers is noticed within about a
   second (its cost is documented there; ``probe_interval_s=None`` turns it off). A sample several
   times slower or faster than the estimate is a step: the estimator restarts from it and the
   planner needs one confirmation, so a collapse is acted on after the first slow request. At
   start-up the client sizes up the link once (:meth:`~splitdnn.runtime._probe.LinkProber.probe_now`:
   payloads from 8 KiB up, by 4 x, until one takes 25 ms; a few round trips), so the estimate has a
   transfer of another size than its requests and can tell a link's burst from its rate. Each
   request that ran as planned also reports its wall time to the planner, which undoes a switch
   whose new plan measures slower than the one it replaced (``Hysteresis.verify``). The server's
   reported time also feeds a :class:`~splitdnn.runtime._server_pace.ServerPace` (``server_pace``,
   on by default): when the server computes its last requests (the median of up to 8, younger than
   30 s) more than 25 % slower or faster than its profile predicts -- it shares its machine, it
   computes slower after idling through a long upload -- the planner prices every server time at
   that factor (``Planner.set_server_factor``); the time they waited in its queue behind other
   clients' requests (their median) is added to every plan that uses the server, whatever its cut
   (``Planner.set_server_queue``); the client re-plans by the hysteresis rules as for a link change.
   With no recent answer (edge-only) the factor returns to 1 and the queue to 0 after 30 s, and the
   server is tried again. A splitdnn server with a profile also reports its
   pace over all its clients' recent requests in the answer to a link probe that names the model
   (``ServerLoad``); the newest evidence decides, so the client starts priced at a busy server's
   pace (its start-up probe), stays priced while edge-only, and tries the server again once it
   reports itself idle (:mod:`splitdnn.runtime._server_pace`).
4. Failures: gRPC retries UNAVAILABLE itself (a service-config retry policy, with a per-RPC retry
   buffer larger than the largest request: gRPC does not retry a request it could not buffer). When
   the server stays unreachable, the deadline passes or the server is overloaded, the request
   finishes locally (``fallback_local``), from the head's outputs when the head already ran, and the
   server is left alone for a growing back-off. A request that gets no answer once it has waited past
   its prediction as long as finishing locally would take (at least 2 x the prediction and 50 ms
   over it) is given up and finished locally too, and the estimator takes it as a step down of the
   link: a link that falls while a request is out is acted on within that request, not after the
   slow transfer (``Run._overdue_after_s``, sent as the call's deadline; only while no other request
   of the client is waiting, when the wait could be the server's queue, and not for the first
   request of a cut, which waits for the server to build that tail). Not when the channel's
   connection is down by then, though: a server that stopped or restarted while gRPC retried the
   request says nothing of the link's rate; it is backed off from like an unreachable one. A
   request with a deadline of its own (``infer(..., deadline_ms=)``) also finishes locally at once,
   or once its answer is not in by a chosen moment, whichever makes the deadline likelier by the
   client's recent requests and device runs (:mod:`splitdnn.runtime._deadline`); that says nothing
   of the link or the server, and is neither observed nor backed off from.
   Errors that mean misconfiguration (credentials, a model or weights mismatch, a malformed
   request) are raised, never hidden by a local run. Every ``grpc.RpcError`` is translated into
   :mod:`splitdnn.errors` (``raise ... from``).

One client may be used from several threads at once: shared state (the link estimate, the planner,
the piece cache, the back-off, the counters) changes under one lock, each request keeps its own
bookkeeping (:class:`~splitdnn.runtime._client_request.Run`), and torch's thread limit (per OS
thread, plus a process default) is set and restored so that overlapping requests never leave it behind.

Device emulation (DESIGN section 7): ``emulate_slowdown=f`` pads every device-side computation (head,
encode, local fallback) with sleep to ``f`` x its work, so a fast machine behaves like a device ``f``
times slower; ``threads`` limits torch's intra-op threads while the device computes. With one thread
the work is the computing thread's CPU time: on a machine that also runs the server, the shaper and
the link probes, time spent waiting for them (the GIL, a shared core) is not the device's, and would
otherwise be multiplied by ``f``. With more threads it is the wall time. The padding is reported in
every :class:`Breakdown` (``padding_ms``) and by :meth:`SplitClient.describe`.

The request path lives in :mod:`~splitdnn.runtime._client_request`, the channel and error translation
in :mod:`~splitdnn.runtime._client_rpc`, the breakdown record and its reporting in
:mod:`~splitdnn.runtime._client_report`; this module re-exports their public names.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import torch
from torch import nn

from splitdnn import graph
from splitdnn.errors import (
    AuthenticationError,
    ConfigError,
    ProfileMismatchError,
    RemoteError,
    ServerUnavailableError,
    WireError,
)
from splitdnn.runtime import _tls_probe as tls_probe
from splitdnn.runtime import serde
from splitdnn.runtime._client_report import Breakdown, format_breakdown, run_requests
from splitdnn.runtime._client_request import Pieces, Run
from splitdnn.runtime._client_request import unsendable as _unsendable  # tests use it from here
from splitdnn.runtime._client_rpc import (
    connection_state,
    is_over_size_cap,
    is_transient,
    make_channel,
    model_infer,
    translate_rpc_error,
)
from splitdnn.runtime._client_setup import (
    SERVER_OWN_PROFILE,
    check_address,
    check_int,
    check_model_info,
    check_number,
    choose_server_profile,
    profile_device,
    resolve_model,
)
from splitdnn.runtime._client_stream import InferStream, StreamRefusal
from splitdnn.runtime._credentials import check_token, read_pem
from splitdnn.runtime._deadline import History, RemoteProbes
from splitdnn.runtime._probe import LinkProber, ProbeSettings
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc
from splitdnn.runtime._proto import splitdnn_pb2_grpc as sd_grpc
from splitdnn.runtime._server_pace import ServerPace
from splitdnn.runtime._weights import weights_digest
from splitdnn.runtime.planner import Decision, Hysteresis, LinkEstimator, Planner, plan_key
from splitdnn.schema import Link, Plan, Profile
from splitdnn.solver import AccuracyTable

__all__ = [
    "DEFAULT_LINK",
    "Breakdown",
    "SplitClient",
    "format_breakdown",
    "run_requests",
    "translate_rpc_error",
]

#: the link assumed before the first request measures one (4G-like; say what you know instead)
DEFAULT_LINK = Link(uplink_mbps=5.85, rtt_ms=20.0)

#: a request, or a probe, re-plans only on a step, or when Planner.replan_due says the link estimate moved
#: this much (or a switch is being confirmed, or a hold ran out): a re-plan is a solve on the device,
#: and a request's sits on its path
_REQUEST_MIN_MOVE, _PROBE_MIN_MOVE = 0.05, 0.2
_BACKOFF_START_S, _BACKOFF_MAX_S = 1.0, 30.0
_MAX_NOTES = 32  # describe() lines kept; a note repeated (a probe failing each time) is kept once


class SplitClient:
    """Split inference against a ``splitdnn serve`` tail service (see the module docstring).

    ``model``: a zoo name or ``module:callable`` spec, an ``nn.Module`` or a traced model; it must be
    the model the server serves, with the same weights (the fingerprint checks the structure, the
    weights digest the values). ``input_shape`` (batch first) traces a module or spec (default: the
    zoo's shape, batch 1). A module is put in eval mode (the caller's object: the client computes
    inference) and traced at its parameters' precision (float16 / bfloat16 inputs for such a model).
    ``infer`` takes inputs of the traced dtype and rank, any batch of at least 1.

    Profiles: ``device_profile`` (default: profiled now, with ``threads`` and ``emulate_slowdown``,
    which takes seconds: pass a saved one); ``server_profile`` (default: the server's own, fetched
    with GetModelInfo; when it has none, the device profile divided by ``server_speedup``, default
    the device's emulation factor: "this machine, not emulated"; a server unreachable at
    construction is asked once it first answers a request, and its profile replaces the estimate).
    A given ``device_profile`` must be of this model at the traced input shapes.

    Plan: ``link`` is the initial link estimate; ``codecs`` the allowed codec specs (None: every codec
    the profiles measured) within ``max_error`` (on relative MSE; None: 0 = lossless, or no such
    budget under an accuracy budget); ``accuracy_table`` (an AccuracyTable or the path of
    ``scripts/bench_accuracy.py --json`` output) with ``max_accuracy_loss`` (top-1 points) allows a
    lossy codec on a node only within its measured loss, as ``splitdnn solve --accuracy-table``;
    ``privacy_floor`` keeps the raw input on the device (cloud-only is never used); ``hysteresis``
    when to switch; ``force_boundary`` fixes the plan: "edge", "cloud" or a node name to cut after
    (baselines). ``probe_interval_s`` / ``probe_max_bytes``: link probes while nothing is sent (see
    :mod:`splitdnn.runtime._probe`; None turns them off); ``probe_edge_interval_s``: the pause between
    probes while edge-only (recovery time against probe bytes; its cost is documented there).
    ``server_pace``: price the server at its measured pace (step 3 above; ``server_factor`` is the
    factor in use); False prices it by its profile alone. Not for a forced plan, which never changes.
    ``deadline_probe_interval_s``: a request whose deadline finishes on the device at once is now
    and then also sent in the background (its answer dropped), so that what the next deadline's
    choice knows of the remote path, and the link estimate, stay current; one at a time, at most one
    per this many seconds and spaced to take at most a tenth of the time on the remote path, none
    while the client's own requests are renewing that record, and cancelled by the next one sent
    (None: never; the cost is the uplink bytes and the server time of those requests; ``infer``).

    Network: ``token`` (bearer), TLS with ``tls=True`` or any of ``root_cert`` / ``client_cert`` +
    ``client_key`` (PEM bytes or paths; mTLS with the pair) and ``tls_server_name`` (override the
    name checked in the server certificate); ``timeout_s`` per request; ``retries`` attempts on
    UNAVAILABLE; ``max_message_bytes`` caps both directions of ModelInfer (the planner sends no request
    predicted over the smaller of both ends' caps, and drops a cut whose request turned out over it);
    ``fallback_local`` finishes requests on the device when the server cannot (not when a setting is
    wrong: a TLS mistake is an AuthenticationError at construction, whether gRPC names it (a CA the
    server's certificate does not match, TLS to a plaintext port) or only sees the connection closed
    (a plaintext client at a TLS port: a TLS connection of its own then tells, see ``_tls_probe``).
    A server closing the connection right after the handshake most likely refuses this client's
    certificate, or lack of one, but may be a TLS proxy whose backend is down: raised without
    ``fallback_local``, a note with it).
    """

    def __init__(
        self,
        address: str,
        model: str | nn.Module | graph.TracedModel,
        *,
        model_name: str | None = None,
        input_shape: Sequence[int] | None = None,
        device_profile: Profile | None = None,
        server_profile: Profile | None = None,
        server_speedup: float | None = None,
        link: Link | None = None,
        codecs: Sequence[str] | None = None,
        max_error: float | None = None,
        accuracy_table: AccuracyTable | str | Path | None = None,
        max_accuracy_loss: float | None = None,
        token: str | None = None,
        tls: bool = False,
        root_cert: bytes | str | Path | None = None,
        client_cert: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        tls_server_name: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        retries: int = 3,
        max_message_bytes: int = 64 << 20,
        fallback_local: bool = True,
        privacy_floor: bool = False,
        hysteresis: Hysteresis | None = None,
        emulate_slowdown: float = 1.0,
        threads: int | None = None,
        force_boundary: str | None = None,
        profile_repeats: int = 5,
        probe_interval_s: float | None = 5.0,
        probe_max_bytes: int = 256 << 10,
        probe_edge_interval_s: float = 0.25,
        server_pace: bool = True,
        stream: bool = False,
        deadline_probe_interval_s: float | None = 0.25,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise ConfigError(f"address must be 'host:port' (or a gRPC target), found {address!r}")
        check_address(address)
        check_number("timeout_s", timeout_s, low=0, unit="number of seconds")
        check_number("connect_timeout_s", connect_timeout_s, low=0, unit="number of seconds")
        check_int("retries (gRPC's maximum attempts)", retries, 1, 5)
        check_int("max_message_bytes", max_message_bytes, 1024, (1 << 31) - 1)  # gRPC: a C int
        check_number("emulate_slowdown (1 = no emulation)", emulate_slowdown, low=1, unit="factor")
        if threads is not None:
            check_int("threads (None: all)", threads, 1)
        if deadline_probe_interval_s is not None:
            check_number(
                "deadline_probe_interval_s (None: no probes)", deadline_probe_interval_s, low=0,
                unit="number of seconds",
            )  # fmt: skip
        if isinstance(codecs, str):
            raise ConfigError(f"codecs must be a sequence of codec specs, found the string {codecs!r}")
        if force_boundary is not None and privacy_floor and force_boundary == "cloud":
            raise ConfigError(
                "force_boundary='cloud' sends the raw input, which privacy_floor=True forbids; drop one"
            )
        probe = None
        if probe_interval_s is not None:
            probe = ProbeSettings(
                interval_s=probe_interval_s, max_bytes=probe_max_bytes,
                min_bytes=min(ProbeSettings.min_bytes, probe_max_bytes),
                edge_interval_s=probe_edge_interval_s,
            )  # fmt: skip
        self.address = address
        self.timeout_s = float(timeout_s)
        self.fallback_local = bool(fallback_local)
        self.privacy_floor = bool(privacy_floor)
        self.emulate_slowdown = float(emulate_slowdown)
        self.threads = threads
        self.max_message_bytes = max_message_bytes
        self.traced = resolve_model(model, input_shape, model_name)
        # what the server checks against its own (~0.1 s per 100 MB of weights, once)
        self.weights_digest = weights_digest(self.traced.module)
        # the small fields of a cut's requests serialized once, of its answers parsed once (serde)
        self._request_encoder = serde.RequestEncoder()
        self._request_ids = serde.RequestIds()
        self._response_decoder = serde.ResponseDecoder()
        self.model_name = model_name or self.traced.name
        self._placeholders = tuple(n.name for n in self.traced.nodes if n.op == "placeholder")
        # in-place changes the solver does not see may make its plan unrunnable: its plans are checked
        self._plan_check = (
            partial(graph.check_tiers, self.traced) if graph.modifies_in_place(self.traced) else None
        )
        check_token(token)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        secure = tls or any(v is not None for v in (root_cert, client_cert, client_key))
        # read once, for the channel and for the TLS diagnosis below
        client_cert = None if client_cert is None else read_pem(client_cert, "client certificate")
        client_key = None if client_key is None else read_pem(client_key, "client key")
        self._channel = make_channel(
            address, secure=secure, root_cert=root_cert, client_cert=client_cert, client_key=client_key,
            server_name=tls_server_name, retries=retries, max_message_bytes=max_message_bytes,
        )  # fmt: skip
        # what tells a TLS mistake from a server that is down, should it turn out unreachable
        self._diagnose_tls = partial(
            tls_probe.diagnose, address, secure=secure, server_name=tls_server_name,
            client_cert=client_cert, client_key=client_key,
        )  # fmt: skip
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)
        self._sd = sd_grpc.SplitServiceStub(self._channel)
        if not isinstance(stream, bool):
            raise ConfigError(f"stream must be True or False, found {stream!r}")
        # requests as messages of one open ModelStreamInfer stream (runtime._client_stream)
        self._stream = InferStream(self._channel, self._metadata) if stream else None
        self._pieces: dict[Any, Pieces] = {}
        # how recent requests' rests (after the head) and device runs went against their predictions:
        # a request with a deadline picks how long to wait for its answer by them (runtime._deadline)
        self._history = History()
        # ... and the background requests that keep its remote window current (_deadline.RemoteProbes)
        self._deadline_probes = (
            None if deadline_probe_interval_s is None else RemoteProbes(float(deadline_probe_interval_s))
        )
        self._last_pieces: tuple[Plan | None, Pieces] = (None, Pieces(None, None))  # (_pieces_for)
        self._lock = threading.Lock()  # estimator, planner, pieces, back-off, counters, notes
        self._build_lock = threading.Lock()  # one thread splits the model for a new plan
        self._down_until = 0.0
        self._marked_down_at = -math.inf  # when the current back-off began
        self._backoff_s = _BACKOFF_START_S
        self._last_observed = time.monotonic()  # newest link observation (request, ping or probe)
        self._prober: LinkProber | None = None
        self.last_breakdown: Breakdown | None = None
        self.last_decision: Decision | None = None
        self.requests = 0
        self.fallbacks = 0
        self._remote_in_flight = 0  # requests of this client waiting for the server's answer
        self._server_max_message: int | None = None  # the server's cap, from GetModelInfo
        self._info_pending = False  # GetModelInfo not answered at start (server down): ask on first answer
        self._catch_up_due = False  # ... and a link probe's ping has been answered since
        self.closed = False
        # sets of boundary names the server has answered for (it has built and cached their tail)
        self._answered_cuts: set[frozenset[str]] = set()
        # how much slower than its profile the server answers (a loaded server); None: not tracked
        if not isinstance(server_pace, bool):
            raise ConfigError(f"server_pace must be True or False, found {server_pace!r}")
        self._pace = ServerPace() if server_pace and force_boundary is None else None
        # a request given up as overdue, until the next observation says whose the wait was:
        # (ms waited, its network part as predicted, its server part as the profile predicts it, the
        # server's pace it was priced with)
        self._overdue: tuple[float, float, float, float] | None = None
        self._pending_load: serde.ServerLoadData | None = None  # a probe's load report, not yet folded in
        self.notes: list[str] = []  # what the client assumed (shown by describe())
        try:
            planning = {
                "codecs": codecs, "max_error": max_error, "hysteresis": hysteresis, "force": force_boundary,
                "accuracy_table": accuracy_table, "max_accuracy_loss": max_accuracy_loss,
            }  # fmt: skip
            self._setup(
                device_profile, server_profile, server_speedup, link or DEFAULT_LINK, connect_timeout_s,
                profile_repeats, planning,
            )  # fmt: skip
        except BaseException:
            self._channel.close()
            raise
        if probe is not None and force_boundary is None:  # a forced plan never changes: nothing to learn
            self._prober = LinkProber(
                probe, ping=self.ping, send=self._probe_send, observe_ping=self._observe_ping,
                observe=self._observe_probe, link=lambda: self.estimator.link, note=self._note,
                remember=self._remember_probe,
            )  # fmt: skip
            if time.monotonic() >= self._down_until:
                # transfers of other sizes than the requests, before the first one (see _estimator)
                self._prober.probe_now()

    # construction ---------------------------------------------------------------------------------

    def _setup(
        self,
        device_profile: Profile | None,
        server_profile: Profile | None,
        server_speedup: float | None,
        link: Link,
        connect_timeout_s: float,
        profile_repeats: int,
        planning: dict[str, Any],
    ) -> None:
        """Connect, settle the profiles and make the planner (``planning``: the Planner's options)."""
        self.estimator = LinkEstimator(link)
        if device_profile is not None:
            self._check_device_profile(device_profile)  # before waiting for the server
        fetched: Profile | None = None
        if planning["force"] != "edge":
            fetched = self._connect(connect_timeout_s)
        if device_profile is None:
            self.notes.append(
                f"device profiled at start-up ({self.threads or 'all'} thread(s), slowdown "
                f"x{self.emulate_slowdown:g}); pass device_profile= to skip this"
            )
            device_profile = profile_device(
                self.traced, self.threads, self.emulate_slowdown, profile_repeats, planning["codecs"]
            )
        device = device_profile
        if abs(device.slowdown - self.emulate_slowdown) > 1e-9:
            self.notes.append(
                f"the device profile was measured with slowdown x{device.slowdown:g} but the client "
                f"emulates x{self.emulate_slowdown:g}: predictions and measurements will differ"
            )
        server, self.server_profile_source, notes = choose_server_profile(
            server_profile, fetched, device, server_speedup
        )
        self.notes.extend(notes)
        self.device_profile, self.server_profile = device, server
        self._planning = planning
        self._server_speedup = server_speedup
        self._server_profile_given = server_profile is not None
        self.planner = self._make_planner(server, self.estimator.link)

    def _check_device_profile(self, device: Profile) -> None:
        """A given device profile must be of this model at the traced input shapes."""
        if device.fingerprint != self.traced.fingerprint:
            raise ProfileMismatchError(
                f"the device profile is of model {device.model!r} (fingerprint {device.fingerprint[:12]}), "
                f"not of {self.traced.name!r} ({self.traced.fingerprint[:12]}); profile this model"
            )
        if device.input_shapes != self.traced.input_shapes:
            raise ProfileMismatchError(
                f"the device profile was measured for input shapes {[list(t) for t in device.input_shapes]}, "
                f"the client traced the model for {[list(t) for t in self.traced.input_shapes]}: its "
                f"timings and tensor sizes would be wrong; profile at this shape or pass input_shape="
            )

    def _make_planner(self, server: Profile, link: Link) -> Planner:
        return Planner(
            self.device_profile, server, link, privacy_floor=self.privacy_floor,
            unsendable=_unsendable(self.traced),
            check=self._plan_check,
            # a remote part predicted over the deadline would always finish locally: never chosen
            max_remote_ms=self.timeout_s * 1e3 if self.fallback_local else None,
            max_message_bytes=self.message_cap()[0],
            # a planner replacing another keeps away from the cuts whose request was over a cap
            avoided=self.planner.avoided if hasattr(self, "planner") else None, **self._planning,
        )  # fmt: skip

    def _unreachable(self, timeout_s: float) -> None:
        """No answer to the first call in time: raise, or note it and run locally."""
        err = ServerUnavailableError(
            f"cannot connect to {self.address} within {timeout_s:g} s (no answer to GetModelInfo: the "
            f"server is down, unreachable or overloaded); check the address and that `splitdnn serve` "
            f"is running, or allow more time (connect_timeout_s)",
            code="UNAVAILABLE",
        )
        if not self.fallback_local:
            raise err from None
        self.notes.append(f"{err}; running locally until it answers")
        self._mark_down()

    def _raise_if_handshake_fails(self, timeout_s: float) -> None:
        """After a first call that waited in vain on a failing channel: one that does not wait says why
        (``wait_for_ready`` hides it), and a failed TLS handshake is raised as AuthenticationError."""
        if connection_state(self._channel) is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return  # still connecting (a slow or silent server): nothing to learn
        try:
            self._sd.GetModelInfo(
                serde.build_model_info_request(self.model_name), timeout=min(1.0, timeout_s),
                metadata=self._metadata,
            )  # fmt: skip
        except grpc.RpcError as exc:
            err = translate_rpc_error(exc, f"connecting to {self.address}")
            if isinstance(err, AuthenticationError):
                raise err from None
            if err.code == "UNAVAILABLE":  # what gRPC cannot tell from a server that is down
                found = self._diagnose_tls(timeout_s=min(2.0, max(timeout_s, 0.5)))
                if found is not None and (found.certain or not self.fallback_local):
                    raise AuthenticationError(
                        f"connecting to {self.address}: {found.message}", code=err.code, details=err.details
                    ) from None
                if found is not None:  # likely, not certain: run locally meanwhile, and say why
                    self.notes.append(f"connecting to {self.address}: {found.message}")

    def _connect(self, timeout_s: float) -> Profile | None:
        """Reach the server: check the model, fetch its profile, measure the RTT. None: no profile.

        The first call waits for the connection (``wait_for_ready``) instead of
        ``grpc.channel_ready_future``: that one starts gRPC's connectivity-polling thread, and every
        ``close()`` afterwards waited 0.15-0.2 s for it to wind down.
        """
        profile = None
        try:
            try:
                msg = self._sd.GetModelInfo(
                    serde.build_model_info_request(self.model_name), timeout=timeout_s,
                    metadata=self._metadata, wait_for_ready=True,
                )  # fmt: skip
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                    self._raise_if_handshake_fails(timeout_s)  # a setting to fix, never hidden
                    self._unreachable(timeout_s)  # raises, or marks the server down
                    self._info_pending = True
                    return None
                info_err = translate_rpc_error(exc, f"GetModelInfo({self.model_name!r})")
                if info_err.code != "UNIMPLEMENTED":  # a stock v2 server: plan without splitdnn.v1
                    raise info_err from exc
                self.notes.append("the server has no splitdnn.v1 service: no fingerprint check, no profile")
            else:
                info = serde.parse_model_info(msg)
                check_model_info(info, self.traced, self.weights_digest, self.address)
                profile = info.profile
                self._server_max_message = info.max_message_bytes or None
            for _ in range(2):  # the first may still pay for the connection's set-up
                rtt = self.ping()
            self._observe_ping(rtt)
        except RemoteError as err:
            if not (self.fallback_local and is_transient(err)):
                raise
            self.notes.append(f"{err}; running locally until it answers")
            self._mark_down()
            self._info_pending = profile is None and self._server_max_message is None
        return profile

    def _catch_up_with_server(self) -> None:
        """The server, unreachable at construction, has answered a request: check its model now and,
        unless a server profile was given, plan with the profile it publishes from here on."""
        with self._lock:
            if not self._info_pending:
                return
            self._info_pending = self._catch_up_due = False
        try:
            msg = self._sd.GetModelInfo(
                serde.build_model_info_request(self.model_name), timeout=min(self.timeout_s, 5.0),
                metadata=self._metadata,
            )  # fmt: skip
        except grpc.RpcError as exc:
            err = translate_rpc_error(exc, f"GetModelInfo({self.model_name!r})")
            if is_transient(err):
                with self._lock:
                    self._info_pending = True  # ask again after the next answer
                return
            if err.code != "UNIMPLEMENTED":
                raise err from exc
            return
        info = serde.parse_model_info(msg)
        check_model_info(info, self.traced, self.weights_digest, self.address)
        self._server_max_message = info.max_message_bytes or None
        server, source = self.server_profile, self.server_profile_source
        if not self._server_profile_given:
            published, published_source, _ = choose_server_profile(
                None, info.profile, self.device_profile, self._server_speedup
            )
            if published is info.profile:  # else none published, or for other shapes: the estimate stays
                server, source = published, published_source
        # rebuilt whatever the profile: the server's message cap is known only now
        planner = self._make_planner(server, self.estimator.link)
        with self._lock:
            self.server_profile, self.server_profile_source, self.planner = server, source, planner
            self._overdue = self._pending_load = None
            if self._pace is not None:  # its ratios were against the profile planned with until now
                self._pace.clear()
        if server is info.profile:
            self._note(f"the server answered after start-up: planning with its profile ({server.describe()})")

    # public ---------------------------------------------------------------------------------------

    @property
    def plan(self) -> Plan:
        """The plan the next request will run, priced under the current link estimate."""
        return self.planner.plan

    @property
    def link(self) -> Link:
        """The live link estimate."""
        return self.estimator.link

    @property
    def server_factor(self) -> float:
        """How many times its profile's times the server is priced at: its measured pace over the
        last requests (``server_pace``); 1 when not tracked or nothing recent."""
        return self.planner.server_factor

    @property
    def server_queue_ms(self) -> float:
        """The server's queue the plans are priced with, ms: its measured queue over the last requests
        (``server_pace``), added to every plan that uses it; 0 when not tracked or nothing recent."""
        return self.planner.server_queue_ms

    def _priced_text(self) -> str:
        """How the server is priced beyond its profile (its measured pace and queue), or ""."""
        priced = [f"{self.server_factor:.2f}x its times"] if self.server_factor != 1 else []
        if self.server_queue_ms:
            priced.append(f"{self.server_queue_ms:.3g} ms of queue added to every remote plan")
        return f"; priced {' and '.join(priced)} (its measured pace)" if priced else ""

    def describe(self) -> str:
        """Several lines: the emulation, the profiles, the plan and what was assumed."""
        p = self.plan
        lines = [
            f"device: {self.device_profile.describe()}; emulation: slowdown x{self.emulate_slowdown:g}, "
            f"{self.threads or 'all'} thread(s)",
            f"server: {self.server_profile.describe()} ({self.server_profile_source})" + self._priced_text(),
            f"link estimate: {self.link.uplink_mbps:.3g} Mbit/s up, RTT {self.link.rtt_ms:.1f} ms",
            f"plan: {p.strategy}, boundary {list(p.boundary_nodes) or '-'}, codecs "
            f"{[b.codec for b in p.boundary] or '-'}, predicted {p.cost.total_ms:.1f} ms",
        ]
        if self._prober is not None:
            lines.append(
                f"link probes: {self._prober.probes} ({self._prober.failures} failed), one per "
                f"{self._prober.settings.edge_interval_s:g} s (plus its own time) while edge-only, at most "
                f"one per {self._prober.settings.interval_s:g} s while nothing else measures the link"
            )
        history = self._history.describe()
        if history:
            lines.append(f"measured over predicted, median/p90 (for deadlines): {history}")
        with self._lock:
            notes = list(self.notes)
        return "\n".join(lines + [f"note: {n}" for n in notes])

    @property
    def probes(self) -> int:
        """Link probes started so far (0 when probing is off)."""
        return self._prober.probes if self._prober is not None else 0

    def wait_for_probe(self, timeout: float | None = None) -> bool:
        """Wait for the link probe in flight, if any (an edge-only ``infer`` may start one in the
        background); True when none is running. For measurements that share the link with others."""
        return self._prober.wait(timeout) if self._prober is not None else True

    def ping(self) -> float:
        """Round-trip time of an empty ServerLive RPC, in ms."""
        if self.closed:
            raise ConfigError("this SplitClient is closed; create a new one to reach the server")
        t0 = time.perf_counter()
        try:
            self._v2.ServerLive(v2_pb.ServerLiveRequest(), timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, "ServerLive") from exc
        return (time.perf_counter() - t0) * 1e3

    def infer(self, *inputs: torch.Tensor, deadline_ms: float | None = None) -> Any:
        """The model's output for ``inputs``, computed as the current plan says (see module docstring).

        ``deadline_ms``: when the caller needs the answer by, in ms from this call (a video frame's
        budget, say). The plan is still the fastest one predicted; the deadline decides what a
        remote request does once its head has run: finish on the device at once, or send the rest
        and wait for the answer until some moment, then finish on the device. It takes the choice
        that makes the deadline most likely by how the client's recent requests (their rest, after
        the head) and device runs went against their predictions (the last 64 of each, within 60 s;
        :mod:`splitdnn.runtime._deadline`); until it has 8 answers, by the medians (a request whose
        rest is predicted to miss, where the device is predicted sooner, finishes on the device; one
        sent is waited for until the last moment the device still makes it). With
        ``fallback_local=False`` it waits until the deadline, then raises
        :class:`~splitdnn.errors.DeadlineError`. Neither tells the link estimate or the back-off
        anything: an answer later than one request could wait for says nothing of the link. When
        neither path makes it, the request waits for the answer. A request finished on the device at
        once is also sent in the background now and then, to keep the record of the remote current
        (``deadline_probe_interval_s``; ``last_breakdown.probed``).
        ``last_breakdown.deadline_missed`` says how it went.

        Safe to call from several threads (each request runs on its own; the estimator, the planner and
        the counters change under a lock); ``last_breakdown`` is then the last request to finish.
        ``threads`` limits torch's threads while a request computes on the device (see the module
        docstring for how overlapping requests share that setting).
        """
        if self.closed:
            raise ConfigError("this SplitClient is closed; create a new one to run more requests")
        if deadline_ms is not None and not (
            isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool)
            and math.isfinite(deadline_ms) and deadline_ms > 0
        ):  # fmt: skip
            raise ConfigError(
                f"deadline_ms must be None or a finite number of milliseconds > 0, found {deadline_ms!r}"
            )
        if len(inputs) != len(self._placeholders):
            raise ConfigError(
                f"model {self.traced.name!r} takes {len(self._placeholders)} input(s) "
                f"{list(self._placeholders)}, found {len(inputs)}"
            )
        for i, (x, example) in enumerate(zip(inputs, self.traced.example_inputs, strict=True)):
            if not isinstance(x, torch.Tensor):
                raise ConfigError(f"input {i} must be a torch.Tensor, found {type(x).__name__}")
            # here, not wherever the plan of the moment runs it: one error type whatever the plan
            if x.dtype != example.dtype or x.ndim != example.ndim or (x.ndim and x.shape[0] < 1):
                raise ConfigError(
                    f"input {i} of model {self.traced.name!r}: expected a {example.dtype} tensor of rank "
                    f"{example.ndim}, a batch of at least 1 first (traced at shape {list(example.shape)}), "
                    f"found {x.dtype} of shape {list(x.shape)}; convert it first"
                )
        self.traced.check_input_shapes([x.shape for x in inputs])  # an export-captured model's graph
        t0 = time.perf_counter()
        with self._lock:
            # an edge-only client observes nothing without probes: its pace expires here
            if self.planner.plan.strategy == "edge-only" and self._pace_server(None):
                self.last_decision = self.planner.replan(self.estimator.link)
            plan, server_factor, queue_ms = (
                self.planner.plan,
                self.planner.server_factor,
                self.planner.server_queue_ms,
            )
            self.requests += 1
            down = time.monotonic() < self._down_until
        # Probe only while edge-only, when the link is otherwise idle: a remote plan's own requests
        # measure the link, and a probe beside one would compete with it for the same uplink (measured:
        # a cloud-only request 26% slower in the bench grid). Never waits: the probe has its own thread.
        if self._prober is not None and not down and plan.strategy == "edge-only":
            self._prober.maybe_start(edge_only=True, last_observed=self._last_observed)
        # predictions are for the profiles' batch; a request of more rows takes longer, about in proportion
        rows, profile_rows = int(inputs[0].shape[0]), max(1, self.device_profile.batch_size)
        scale = max(1.0, rows / profile_rows)
        run = Run(
            self, plan, t0, scale, server_factor, profile_rows=rows == profile_rows, server_queue_ms=queue_ms,
            deadline_ms=None if deadline_ms is None else float(deadline_ms),
        )  # fmt: skip
        again = False
        try:
            if plan.strategy == "edge-only":
                out = run.local(inputs, reason="")
            elif down and self.fallback_local:
                out = run.local(
                    inputs,
                    reason="the server failed a recent request (unreachable, overloaded or too "
                    "slow); retrying it later",
                )
            else:
                try:
                    out = run.remote(inputs)
                except RemoteError as err:
                    if not (self._info_pending and is_over_size_cap(err)):
                        raise
                    # a server that came up after start-up, with a cap smaller than ours: learn it,
                    # plan again with it, and run the request once more under the new plan
                    self._catch_up_with_server()
                    if self._info_pending:  # not reached after all
                        raise
                    again = True
        finally:
            self.last_breakdown = breakdown = run.breakdown()
        if again:  # the refused run tells the planner nothing
            if deadline_ms is not None:  # what is left of it (a run with none left finishes as it can)
                deadline_ms = max(1e-3, deadline_ms - breakdown.total_ms)
            return self.infer(*inputs, deadline_ms=deadline_ms)
        if self._info_pending and (not breakdown.local or self._catch_up_due):  # edge-only: a probe's
            self._catch_up_with_server()  # answer is the only one it gets
        if not breakdown.fallback:  # it ran as the plan says: a measurement of the plan
            with self._lock:
                decision = self.planner.observe_latency(plan, breakdown.total_ms / scale)
                if decision is not None:
                    self.last_decision = decision
            if decision is not None:
                self._note(decision.reason)
        return out

    def close(self) -> None:
        """Stop probing and close the channel; the client cannot be used afterwards."""
        self.closed = True
        if self._prober is not None:
            self._prober.close(timeout=0.0)  # no new probes
        if self._deadline_probes is not None:
            self._deadline_probes.close(timeout=0.0)
        if self._stream is not None:
            self._stream.close()
        self._channel.close()  # cancels a probe in flight
        if self._prober is not None:
            self._prober.wait(1.0)
        if self._deadline_probes is not None:
            self._deadline_probes.wait(1.0)

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals used by Run and the prober ----------------------------------------------------------

    def _send(self, request: bytes, timeout_s: float) -> bytes | memoryview:
        """The server's serialized answer to ``request``: on the open stream (``stream=True``), else,
        or when the stream cannot take it, a unary call; ``grpc.RpcError`` for a refusal or no answer
        within ``timeout_s`` seconds."""
        if self._stream is not None:
            t0 = time.monotonic()
            answer = self._stream.send(request, timeout_s)
            if answer is not None:
                return answer
            timeout_s -= time.monotonic() - t0  # (a stream that ended under the request took some)
            if timeout_s <= 0:
                raise StreamRefusal(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer within the deadline")
        return model_infer(self._channel)(request, timeout=timeout_s, metadata=self._metadata)  # type: ignore[no-any-return]

    def _pieces_for(self, plan: Plan) -> Pieces:
        last_plan, last_pieces = self._last_pieces  # every request asks for the plan of the moment's
        if last_plan is plan:
            return last_pieces
        pieces = self._pieces_by_key(plan)
        self._last_pieces = (plan, pieces)  # (one tuple: swapped whole, read whole by any thread)
        return pieces

    def _pieces_by_key(self, plan: Plan) -> Pieces:
        key = plan_key(plan)[0]  # the device-side nodes: codecs do not change the pieces
        with self._lock:
            pieces = self._pieces.get(key)
        if pieces is not None:
            return pieces
        with self._build_lock:  # one thread splits; the others wait for its pieces
            with self._lock:
                pieces = self._pieces.get(key)
            if pieces is None:
                if plan.strategy == "cloud-only":
                    pieces = Pieces(None, None)
                else:
                    head, tail = graph.split(self.traced, plan.tiers)
                    pieces = Pieces(head, tail)
                with self._lock:
                    if len(self._pieces) >= 8:  # a plan change is rare; keep the recent few
                        self._pieces.pop(next(iter(self._pieces)))
                    self._pieces[key] = pieces
        return pieces

    def message_cap(self) -> tuple[int, str]:
        """The largest request both ends accept, and whose cap it is ("client's" or "server's")."""
        server = self._server_max_message
        if server is not None and server < self.max_message_bytes:
            return server, "server's"
        return self.max_message_bytes, "client's"

    def _mark_down(self, sent_at: float | None = None) -> None:
        """A request failed for the server's sake: back off. Requests sent before the last back-off
        began (``sent_at``, ``time.monotonic()``; the ones in flight when the outage began, failing one
        by one at their deadlines) or failing within it share it; it doubles only when a request sent
        after it fails too."""
        with self._lock:
            now = time.monotonic()
            if now < self._down_until or (sent_at is not None and sent_at < self._marked_down_at):
                return
            self._marked_down_at = now
            self._down_until = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
            self._answered_cuts.clear()  # a server back from a restart builds its tails afresh

    def _mark_up(self, answered: Sequence[str] = ()) -> None:
        """The server answered (a request with the boundary tensors ``answered``: their tail is built)."""
        with self._lock:
            self._down_until = 0.0
            self._backoff_s = _BACKOFF_START_S
            if answered:
                self._answered_cuts.add(frozenset(answered))

    @contextmanager
    def _awaiting_server(self, sent: Sequence[str]) -> Iterator[bool]:
        """Around one request's wait for its answer; yields whether it may be given up when overdue.

        Not when another request of this client is waiting too (the wait may be the server's queue),
        nor for the first request of a cut (the server builds that tail first: tens of ms, a few
        hundred on a loaded machine; a CI run gave one up after 213 ms with 2 ms predicted).
        """
        with self._lock:
            self._remote_in_flight += 1
            may_give_up = self._remote_in_flight == 1 and frozenset(sent) in self._answered_cuts
        try:
            yield may_give_up
        finally:
            with self._lock:
                self._remote_in_flight -= 1

    def _count_fallback(self) -> None:
        with self._lock:
            self.fallbacks += 1

    def _note(self, text: str) -> None:
        with self._lock:
            if text not in self.notes[-4:]:
                self.notes.append(text)
                del self.notes[:-_MAX_NOTES]

    def _observe(
        self, bytes_up: int, bytes_down: int, network_ms: float, *, min_move: float = _REQUEST_MIN_MOVE,
        overdue: tuple[float, float, float] | None = None, server: tuple[float, float, float] | None = None,
    ) -> bool:  # fmt: skip
        """Fold in a request or probe and re-plan; True when it was a step and the plan is still edge-only
        (a probe then measures again at once, sized for the new estimate).

        It re-plans on a step, or when :meth:`Planner.replan_due` says a re-plan could change something:
        the estimate moved by ``min_move`` (a fraction) since the last re-plan, a switch is being
        confirmed, a hold ran out. A re-plan is a solve, device CPU that competes with the device's own
        inference and, for a request, sits on its path: requests use 5 %, probes 20 % (a probe on a
        steady link changes nothing). ``overdue``: a request given up after ``network_ms`` without an
        answer (``Run._overdue_after_s``, or its deadline; nothing received), with its network and
        server parts as predicted (neither with the queue, the server's without its pace) and the pace
        it was priced with: whether the link or the server was slow is told by the next observation
        (:meth:`_attribute_overdue`). ``server``: a request's
        server part, ``(predicted by the profile, reported, of which queued)`` ms, for the server's pace
        (``server_pace``): a pace or queue that moved past its tolerance re-prices the server and
        re-plans."""
        with self._lock:
            if overdue is not None:
                self.estimator.observe_overdue(bytes_up, network_ms)
                if self._pace is not None:  # settled by the next observation, for the pace alone
                    self._overdue = (network_ms, *overdue)
            else:
                self.estimator.observe(bytes_up, bytes_down, network_ms)
                overdue_before, self._overdue = self._overdue, None
                settled = self._attribute_overdue(*overdue_before) if overdue_before is not None else None
                if settled is not None and self._pace is not None:
                    self._pace.held(*settled)
                # a probe's report (taken here, not by a give-up observed meanwhile): after the give-up
                # this observation settled, so that the report, the newer evidence, stands over it
                load, self._pending_load = self._pending_load, None
                if load is not None and self._pace is not None:
                    if load.compute_pace > 0:  # the compute and the queue apart
                        pace, queue_ms = load.compute_pace, load.queue_ms
                    else:  # a server before those fields: one factor for both, as it was
                        pace, queue_ms = load.pace, 0.0
                    self._pace.report(pace, load.requests, load.arrivals, load.in_flight, queue_ms)
            self._last_observed = time.monotonic()
            link, stepped = self.estimator.link, self.estimator.stepped
            paced = self._pace_server(server)
            if paced or stepped or self.planner.replan_due(link, tolerance=min_move):
                self.last_decision = self.planner.replan(link, step=stepped)
            return stepped and self.planner.plan.strategy == "edge-only"

    def _attribute_overdue(
        self, waited_ms: float, network_ms: float, server_ms: float, factor: float
    ) -> tuple[float, float, float] | None:
        """What the first observation after a request given up says of it (under the lock; the request
        waited ``waited_ms``, its network and server parts predicted as given, neither with the
        server's queue, the server's without the pace ``factor`` it was priced with): when it is a
        step back up (a probe found the link as fast as before, as when the server's queue held the
        request), the link did not fall and the wait was the server's: it took at least the wait less
        the network part as predicted (the link as it was). When that is over its compute as priced,
        ``(server_ms, at least, factor)`` for :meth:`ServerPace.held`, which counts the excess as the
        server's queue. Otherwise (the link did fall, or the bound says nothing) none.

        Without this, a server that other clients keep busy made a client flap: each remote request
        was given up as a fallen link, the next probe found the link fine, and the client went back
        (``scripts/bench_server_pace.py``: 13 to 14 switches in 15 requests, a give-up every other one)."""
        at_least = waited_ms - network_ms
        if not self.estimator.stepped_up or at_least <= server_ms * factor:  # a bound under the price
            return None
        return server_ms, at_least, factor

    def _pace_server(self, sample: tuple[float, float, float] | None) -> bool:
        """Fold in a request's server part ``(predicted, reported, of which queued)`` ms and re-price
        the server if its pace or its queue moved (under the lock); True when it did. Also run for
        probes: a pace with nothing recent goes back to 1, a queue to 0."""
        if self._pace is None:  # off, or a forced plan (which never changes)
            return False
        if sample is not None:
            self._pace.observe(*sample)
        planner = self.planner
        before, queued = planner.server_factor, planner.server_queue_ms
        factor, queue_ms = self._pace.due(before), self._pace.queue_due(queued)
        if factor is None and queue_ms is None:
            return False
        if factor is None:
            factor = before
        else:
            planner.set_server_factor(factor)
        if queue_ms is None:
            queue_ms = queued
        else:
            planner.set_server_queue(queue_ms)
        pace = f"{factor:.2f}x its profile's compute after {queue_ms:.3g} ms in its queue"
        reported = self._pace.reported
        if reported is not None:
            said = (
                f"the server reports it answers {pace}, over its last {reported} request(s)"
                if reported else "the server reports it is idle"
            )  # fmt: skip
        elif self._pace.samples:
            said = f"the server answers {pace}, over its last {self._pace.samples} request(s)"
        else:
            said = "no recent answer from the server: priced by its profile again"
        self.notes.append(
            f"{said} (was priced at {before:.2f}x and {queued:.3g} ms of queue): re-planning with that"
        )
        del self.notes[:-_MAX_NOTES]
        return True

    def _observe_probe(self, bytes_up: int, bytes_down: int, network_ms: float) -> bool:
        return self._observe(bytes_up, bytes_down, network_ms, min_move=_PROBE_MIN_MOVE)

    def _remember_probe(self, bytes_up: int, bytes_down: int, network_ms: float) -> None:
        with self._lock:
            self.estimator.remember(bytes_up, bytes_down, network_ms)

    def _observe_ping(self, rtt_ms: float) -> None:
        with self._lock:
            self._catch_up_due = self._info_pending  # the server answers: check its model next request
            self.estimator.observe_ping(rtt_ms)
            self._last_observed = time.monotonic()
            if not hasattr(self, "planner"):  # pings at construction come before the first plan
                return
            # a re-plan costs device CPU (a solve); a ping changes only the RTT, so re-plan only when
            # the RTT moved (a probe's payload, which follows its ping, re-plans anyway)
            before, now = self.planner.link.rtt_ms, self.estimator.link.rtt_ms
            if abs(now - before) > max(1.0, 0.1 * before):
                self.last_decision = self.planner.replan(self.estimator.link)

    def _probe_send(self, payload: bytes) -> tuple[int, int, float]:
        """One Probe RPC: ``(bytes up, bytes down, wall ms)``; the server answers at once."""
        # with the pace tracked against the server's own profile, the answer also says how busy the
        # server is with this model (its pace is against that profile: not comparable with another)
        ask = self._pace is not None and self.server_profile_source == SERVER_OWN_PROFILE
        request = serde.build_probe_request(payload, self.model_name if ask else "")
        t0 = time.perf_counter()
        try:
            response = self._sd.Probe(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, "Probe") from exc
        ms = (time.perf_counter() - t0) * 1e3
        serde.parse_probe_response(response, len(payload))
        if ask:
            try:
                load = serde.parse_server_load(response)
            except WireError as exc:  # the link sample stands; only the report is dropped
                self._note(f"the server's load report was ignored: {exc}")
                load = None
            if load is not None:
                with self._lock:  # folded in by this probe's observation, after whatever it settles
                    self._pending_load = load
        return request.ByteSize(), response.ByteSize(), ms
