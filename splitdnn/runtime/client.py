"""The edge client: run the head on the device, send the boundary tensors, get the model output (torch, grpc).

::

    with SplitClient("server:8001", "resnet18", link=Link(5.85, rtt_ms=20)) as client:
        y = client.infer(x)             # torch.Tensor in, the model's output out
        client.last_breakdown           # head, encode, network, server queue/compute, decode, bytes

What one :meth:`SplitClient.infer` does, and why:

1. The :class:`~splitdnn.runtime.planner.Planner` holds the current plan (solved from the device
   profile, the server's profile and the live link estimate). Edge-only runs the whole model here
   and never calls the server.
2. Otherwise the head piece runs (``splitdnn.graph.split`` pieces, cached per plan); each boundary
   tensor is encoded with the plan's codec (``raw`` stays a real-typed v2 tensor, anything else is a
   codec frame), and one ModelInfer request carries them with the model's fingerprint, so the server
   refuses a different model instead of computing garbage. Cloud-only sends the model's input.
3. The server reports its queue, compute and decode time; the rest of the RPC's wall time is network.
   That sample feeds the :class:`~splitdnn.runtime.planner.LinkEstimator`, and the planner re-plans
   with hysteresis.
4. Failures: gRPC retries UNAVAILABLE itself (a service-config retry policy, with a per-RPC retry
   buffer larger than the largest request: gRPC does not retry a request it could not buffer). When
   the server stays unreachable, the deadline passes or the server is overloaded, the request
   finishes locally (``fallback_local``), from the head's outputs when the head already ran, and the
   server is left alone for a growing back-off. Errors that mean misconfiguration (credentials, a
   model mismatch, a malformed request) are raised, never hidden by a local run. Every
   ``grpc.RpcError`` is translated into :mod:`splitdnn.errors` (``raise ... from``).

Device emulation (DESIGN section 7): ``emulate_slowdown=f`` sleeps ``(f - 1) x`` the measured time of
every device-side computation (head, encode, local fallback), so a fast machine behaves like a device
``f`` times slower; ``threads`` limits torch's intra-op threads while the device computes. The padding
is reported in every :class:`Breakdown` (``padding_ms``) and by :meth:`SplitClient.describe`.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
import torch
from torch import nn

from splitdnn import codec as _codec
from splitdnn import graph
from splitdnn.errors import (
    AuthenticationError,
    ConfigError,
    DeadlineError,
    ModelMismatchError,
    PlanError,
    ProfileMismatchError,
    RemoteError,
    ServerUnavailableError,
    WireError,
)
from splitdnn.runtime import serde
from splitdnn.runtime._proto import grpc_service_pb2 as v2_pb
from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc
from splitdnn.runtime._proto import splitdnn_pb2_grpc as sd_grpc
from splitdnn.runtime.planner import Decision, Hysteresis, LinkEstimator, Planner, plan_key, scale_profile
from splitdnn.schema import Link, Plan, Profile

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

_SERVICES = ("inference.GRPCInferenceService", "splitdnn.v1.SplitService")
_TRANSIENT = (ServerUnavailableError, DeadlineError)  # plus RESOURCE_EXHAUSTED, see _is_transient
_BACKOFF_START_S, _BACKOFF_MAX_S = 1.0, 30.0


# --------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class Breakdown:
    """Where the time of one :meth:`SplitClient.infer` went (ms) and what crossed the network.

    ``head_ms`` + ``encode_ms`` + ``client_ms`` + (``network_ms`` + ``server_queue_ms`` +
    ``server_compute_ms`` + ``decode_ms``) + ``tail_local_ms`` ~ ``total_ms``. Device-side times include
    the emulation padding (``padding_ms`` of them is sleep).
    """

    head_ms: float  # device compute of the head (the whole model when local)
    encode_ms: float  # codec encoding of the boundary tensors on the device
    network_ms: float  # RPC wall time minus the server's queue, compute and decode time
    server_queue_ms: float  # waiting for a batch slot on the server (reported by it)
    server_compute_ms: float  # running the tail on the server (reported by it; its whole batch)
    decode_ms: float  # the server decoding the request's frames (reported by it)
    total_ms: float  # wall time of infer()
    bytes_sent: int  # serialized request size (0 when nothing was sent)
    boundary: tuple[str, ...]  # tensors sent: boundary node names, the model input(s) for cloud-only
    local: bool  # the output was computed on the device only
    bytes_received: int = 0  # serialized response size
    tail_local_ms: float = 0.0  # device compute of the tail after a fallback
    client_ms: float = 0.0  # building the request and parsing the response
    padding_ms: float = 0.0  # emulation sleep included in the device-side times above
    predicted_ms: float = 0.0  # the plan's predicted end-to-end latency when the request started
    strategy: str = ""  # "edge-only", "split" or "cloud-only": the plan the request started with
    codecs: tuple[str, ...] = ()  # codec per tensor in ``boundary``
    fallback: str = ""  # why the request finished locally against its plan ("" = as planned)
    batch_size: int = 0  # requests in the server's batch (0 when not sent)


@dataclass
class _Pieces:
    head: graph.Piece | None  # None for cloud-only
    tail: graph.Piece | None  # None for cloud-only (the local fallback runs the whole model)


# --------------------------------------------------------------------------------------------------
# errors


def translate_rpc_error(exc: grpc.RpcError, what: str) -> RemoteError:
    """A :class:`~splitdnn.errors.RemoteError` subclass for a failed RPC; ``what`` names the call."""
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if name == "UNAVAILABLE":
        return ServerUnavailableError(
            f"{what}: the server is unavailable ({details or 'no details'}); check the address and that "
            f"`splitdnn serve` is running, or keep fallback_local=True to run locally meanwhile",
            code=name, details=details,
        )  # fmt: skip
    if name == "DEADLINE_EXCEEDED":
        return DeadlineError(
            f"{what}: no answer within the deadline ({details or 'deadline exceeded'}); raise timeout_s "
            f"or use a cut that sends fewer bytes",
            code=name, details=details,
        )  # fmt: skip
    if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return AuthenticationError(
            f"{what}: the server refused the credentials ({name}: {details}); pass the server's token "
            f"(token=...) and, for mTLS, a client certificate it trusts",
            code=name, details=details,
        )  # fmt: skip
    if name == "FAILED_PRECONDITION" and "fingerprint" in details.lower():
        return ModelMismatchError(
            f"{what}: the server serves a different model ({details}); serve the same model (structure "
            f"and weights) the client splits",
            code=name, details=details,
        )  # fmt: skip
    return RemoteError(f"{what}: the server answered {name}: {details}", code=name, details=details)


def _is_transient(exc: RemoteError) -> bool:
    return isinstance(exc, _TRANSIENT) or exc.code == "RESOURCE_EXHAUSTED"


# --------------------------------------------------------------------------------------------------
# torch <-> numpy


def _to_numpy(value: Any, name: str) -> tuple[np.ndarray, bool]:
    """``(array, is_bfloat16)`` of a boundary value; bfloat16 travels as uint16 bit patterns."""
    if not isinstance(value, torch.Tensor):
        raise PlanError(
            f"boundary value {name!r} is a {type(value).__name__}, not a tensor: only tensors can be "
            f"sent; cut elsewhere (force_boundary=...) or keep that node on one side"
        )
    t = value.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), True
    return t.numpy(), False


def _unsendable(traced: graph.TracedModel) -> frozenset[str]:
    """Nodes whose value is not one tensor (a tuple, a Python number), from one run on the example
    input: only tensors can cross the network, so no plan may cut right after these."""
    tensors: set[str] = set()

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                tensors.add(n.name)
            return value

    with torch.inference_mode():
        _Recorder(traced.module).run(*(t.clone() for t in traced.example_inputs))
    return frozenset(n.name for n in traced.nodes if n.op != "get_attr" and n.name not in tensors)


def _from_numpy(array: np.ndarray, bfloat16: bool) -> torch.Tensor:
    arr = np.array(array, copy=True)  # writable, owned: the response's buffer is read-only
    if bfloat16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def _read_pem(value: bytes | str | Path | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the {what} {str(value)!r}: {exc}; pass a PEM file path or bytes"
        ) from exc


# --------------------------------------------------------------------------------------------------
# the client


class SplitClient:
    """Split inference against a ``splitdnn serve`` tail service (see the module docstring).

    ``model``: a zoo name or ``module:callable`` spec, an ``nn.Module`` or a traced model; it must be
    the model the server serves (same structure *and* weights; the fingerprint checks the structure).
    ``input_shape`` (batch first) traces a module or spec (default: the zoo's shape, batch 1).

    Profiles: ``device_profile`` (default: profiled now, with ``threads`` and ``emulate_slowdown``,
    which takes seconds: pass a saved one); ``server_profile`` (default: the server's own, fetched
    with GetModelInfo; when it has none, the device profile divided by ``server_speedup``, default
    the device's emulation factor: "this machine, not emulated").

    Plan: ``link`` is the initial link estimate; ``codecs`` the allowed codec specs (None: every codec
    the profiles measured) within ``max_error`` (relative MSE; 0 = lossless); ``privacy_floor``
    keeps the raw input on the device (cloud-only is never used); ``hysteresis`` when to switch;
    ``force_boundary`` fixes the plan: "edge", "cloud" or a node name to cut after (baselines).

    Network: ``token`` (bearer), TLS with ``tls=True`` or any of ``root_cert`` / ``client_cert`` +
    ``client_key`` (PEM bytes or paths; mTLS with the pair) and ``tls_server_name`` (override the
    name checked in the server certificate); ``timeout_s`` per request; ``retries`` attempts on
    UNAVAILABLE; ``max_message_bytes`` caps both directions; ``fallback_local`` finishes requests on
    the device when the server cannot.
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
        max_error: float = 0.0,
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
    ) -> None:
        if not isinstance(address, str) or not address:
            raise ConfigError(f"address must be 'host:port' (or a gRPC target), found {address!r}")
        for what, value in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{what} must be a number of seconds > 0, found {value!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 1 <= retries <= 5:
            raise ConfigError(f"retries must be an integer 1..5 (gRPC's maximum attempts), found {retries!r}")
        if (
            isinstance(max_message_bytes, bool)
            or not isinstance(max_message_bytes, int)
            or max_message_bytes < 1024
        ):
            raise ConfigError(f"max_message_bytes must be an integer >= 1024, found {max_message_bytes!r}")
        if not (isinstance(emulate_slowdown, (int, float)) and math.isfinite(emulate_slowdown)
                and emulate_slowdown >= 1):  # fmt: skip
            raise ConfigError(
                f"emulate_slowdown must be a finite factor >= 1 (1 = no emulation), "
                f"found {emulate_slowdown!r}"
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be None or an integer >= 1, found {threads!r}")
        if force_boundary is not None and privacy_floor and force_boundary == "cloud":
            raise ConfigError(
                "force_boundary='cloud' sends the raw input, which privacy_floor=True forbids; drop one"
            )
        self.address = address
        self.timeout_s = float(timeout_s)
        self.fallback_local = bool(fallback_local)
        self.privacy_floor = bool(privacy_floor)
        self.emulate_slowdown = float(emulate_slowdown)
        self.threads = threads
        self.max_message_bytes = max_message_bytes
        self.traced = self._resolve_model(model, input_shape)
        self.model_name = model_name or self.traced.name
        self._placeholders = tuple(n.name for n in self.traced.nodes if n.op == "placeholder")
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = self._make_channel(
            address, tls or any(v is not None for v in (root_cert, client_cert, client_key)),
            root_cert, client_cert, client_key, tls_server_name, retries, max_message_bytes,
        )  # fmt: skip
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)
        self._sd = sd_grpc.SplitServiceStub(self._channel)
        self._pieces: dict[Any, _Pieces] = {}
        self._lock = threading.Lock()  # planner, estimator and piece cache: infer() may run in threads
        self._down_until = 0.0
        self._backoff_s = _BACKOFF_START_S
        self.last_breakdown: Breakdown | None = None
        self.last_decision: Decision | None = None
        self.requests = 0
        self.fallbacks = 0
        self.notes: list[str] = []  # what the client assumed (shown by describe())
        try:
            self._setup(
                device_profile, server_profile, server_speedup, link or DEFAULT_LINK, codecs, max_error,
                hysteresis, force_boundary, connect_timeout_s, profile_repeats,
            )  # fmt: skip
        except BaseException:
            self._channel.close()
            raise

    # construction ---------------------------------------------------------------------------------

    @staticmethod
    def _resolve_model(model: Any, input_shape: Sequence[int] | None) -> graph.TracedModel:
        if isinstance(model, graph.TracedModel):
            return model
        from splitdnn.models import ZOO, default_input_shape, load_model

        name = "model"
        if isinstance(model, str):
            spec = model
            module, name = load_model(spec)
            if input_shape is None and spec in ZOO:
                input_shape = default_input_shape(spec)
        elif isinstance(model, nn.Module):
            module = model.eval()
            name = type(model).__name__.lower()
        else:
            raise ConfigError(
                f"model must be a zoo name or 'module:callable' spec, an nn.Module or a traced model, "
                f"found {type(model).__name__}"
            )
        if input_shape is None:
            raise ConfigError(
                f"model {name!r} is not in the zoo, so its input shape is unknown; pass input_shape, "
                f"e.g. (1, 3, 224, 224)"
            )
        shape = tuple(int(d) for d in input_shape)
        gen = torch.Generator().manual_seed(0)
        return graph.trace(module, torch.randn(shape, generator=gen), name=name)

    @staticmethod
    def _make_channel(
        address: str,
        secure: bool,
        root_cert: bytes | str | Path | None,
        client_cert: bytes | str | Path | None,
        client_key: bytes | str | Path | None,
        server_name: str | None,
        retries: int,
        max_message_bytes: int,
    ) -> grpc.Channel:
        config = {
            "loadBalancingConfig": [{"round_robin": {}}],  # spreads over dns:/// or ipv4: lists
            "methodConfig": [
                {
                    "name": [{"service": s} for s in _SERVICES],
                    "retryPolicy": {
                        "maxAttempts": retries,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
            if retries > 1
            else [],
        }
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1 if retries > 1 else 0),
            ("grpc.service_config", json.dumps(config)),
            # gRPC retries only what it buffered; the default per-RPC buffer is 256 KiB, smaller than
            # a 224x224 input. (This gRPC has no channel-wide "grpc.retry_buffer_size" any more.)
            ("grpc.per_rpc_retry_buffer_size", max_message_bytes + (1 << 20)),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if not secure:
            return grpc.insecure_channel(address, options=options)
        if (client_cert is None) != (client_key is None):
            raise ConfigError("mTLS needs both client_cert and client_key (PEM); pass both or neither")
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read_pem(root_cert, "root certificate"),
            private_key=_read_pem(client_key, "client key"),
            certificate_chain=_read_pem(client_cert, "client certificate"),
        )
        return grpc.secure_channel(address, creds, options=options)

    def _setup(
        self,
        device_profile: Profile | None,
        server_profile: Profile | None,
        server_speedup: float | None,
        link: Link,
        codecs: Sequence[str] | None,
        max_error: float,
        hysteresis: Hysteresis | None,
        force: str | None,
        connect_timeout_s: float,
        profile_repeats: int,
    ) -> None:
        self.estimator = LinkEstimator(link)
        fetched: Profile | None = None
        if force != "edge":
            fetched = self._connect(connect_timeout_s)
        device = device_profile if device_profile is not None else self._profile_device(profile_repeats)
        if device.fingerprint != self.traced.fingerprint:
            raise ProfileMismatchError(
                f"the device profile is of model {device.model!r} (fingerprint {device.fingerprint[:12]}), "
                f"not of {self.traced.name!r} ({self.traced.fingerprint[:12]}); profile this model"
            )
        if abs(device.slowdown - self.emulate_slowdown) > 1e-9:
            self.notes.append(
                f"the device profile was measured with slowdown x{device.slowdown:g} but the client "
                f"emulates x{self.emulate_slowdown:g}: predictions and measurements will differ"
            )
        server = server_profile
        if server is not None:
            self.server_profile_source = "given"
        elif fetched is not None and fetched.input_shapes == device.input_shapes:
            server, self.server_profile_source = fetched, "the server's (GetModelInfo)"
        else:
            if fetched is not None:
                self.notes.append(
                    f"the server's profile is for input shapes {list(fetched.input_shapes)}, the device's "
                    f"for {list(device.input_shapes)}: not used"
                )
            speedup = server_speedup if server_speedup is not None else device.slowdown
            server = scale_profile(device, speedup)
            self.server_profile_source = f"estimated: the device profile / {speedup:g}"
            self.notes.append(f"server profile {self.server_profile_source}")
        self.device_profile, self.server_profile = device, server
        self.planner = Planner(
            device, server, self.estimator.link, codecs=codecs, max_error=max_error,
            privacy_floor=self.privacy_floor, hysteresis=hysteresis, force=force,
            unsendable=_unsendable(self.traced),
        )  # fmt: skip

    def _connect(self, timeout_s: float) -> Profile | None:
        """Reach the server: check the model, fetch its profile, measure the RTT. None: no profile."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            err = ServerUnavailableError(
                f"cannot connect to {self.address} within {timeout_s:g} s; check the address and that "
                f"`splitdnn serve` is running",
                code="UNAVAILABLE",
            )
            if not self.fallback_local:
                raise err from None
            self.notes.append(f"{err}; running locally until it answers")
            self._mark_down()
            return None
        profile = None
        try:
            try:
                msg = self._sd.GetModelInfo(
                    serde.build_model_info_request(self.model_name), timeout=timeout_s,
                    metadata=self._metadata,
                )  # fmt: skip
            except grpc.RpcError as exc:
                info_err = translate_rpc_error(exc, f"GetModelInfo({self.model_name!r})")
                if info_err.code != "UNIMPLEMENTED":  # a stock v2 server: plan without splitdnn.v1
                    raise info_err from exc
                self.notes.append("the server has no splitdnn.v1 service: no fingerprint check, no profile")
            else:
                info = serde.parse_model_info(msg)
                if info.fingerprint != self.traced.fingerprint:
                    raise ModelMismatchError(
                        f"the server at {self.address} serves model {info.name!r} with fingerprint "
                        f"{info.fingerprint[:12]}, the client traced {self.traced.name!r} with "
                        f"{self.traced.fingerprint[:12]}; use the same model on both sides",
                        code="FAILED_PRECONDITION",
                    )
                profile = info.profile
            for _ in range(2):  # the first may still pay for the connection's set-up
                rtt = self.ping()
            self.estimator.observe_ping(rtt)
        except RemoteError as err:
            if not (self.fallback_local and _is_transient(err)):
                raise
            self.notes.append(f"{err}; running locally until it answers")
            self._mark_down()
        return profile

    def _profile_device(self, repeats: int) -> Profile:
        from splitdnn.profiler import profile_model

        self.notes.append(
            f"device profiled at start-up ({self.threads or 'all'} thread(s), slowdown "
            f"x{self.emulate_slowdown:g}); pass device_profile= to skip this"
        )
        return profile_model(
            self.traced, threads=self.threads, slowdown=self.emulate_slowdown, warmup=1,
            repeats=repeats, progress=False, codec_nodes="chain", codecs=("raw", "zstd", "int8+zstd"),
        )  # fmt: skip

    # public ---------------------------------------------------------------------------------------

    @property
    def plan(self) -> Plan:
        """The plan the next request will run, priced under the current link estimate."""
        return self.planner.plan

    @property
    def link(self) -> Link:
        """The live link estimate."""
        return self.estimator.link

    def describe(self) -> str:
        """Several lines: the emulation, the profiles, the plan and what was assumed."""
        p = self.plan
        lines = [
            f"device: {self.device_profile.describe()}; emulation: slowdown x{self.emulate_slowdown:g}, "
            f"{self.threads or 'all'} thread(s)",
            f"server: {self.server_profile.describe()} ({self.server_profile_source})",
            f"link estimate: {self.link.uplink_mbps:.3g} Mbit/s up, RTT {self.link.rtt_ms:.1f} ms",
            f"plan: {p.strategy}, boundary {list(p.boundary_nodes) or '-'}, codecs "
            f"{[b.codec for b in p.boundary] or '-'}, predicted {p.cost.total_ms:.1f} ms",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def ping(self) -> float:
        """Round-trip time of an empty ServerLive RPC, in ms."""
        t0 = time.perf_counter()
        try:
            self._v2.ServerLive(v2_pb.ServerLiveRequest(), timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, "ServerLive") from exc
        return (time.perf_counter() - t0) * 1e3

    def infer(self, *inputs: torch.Tensor) -> Any:
        """The model's output for ``inputs``, computed as the current plan says (see module docstring).

        Safe to call from several threads (each request runs on its own; the estimator and the planner
        are updated under a lock); ``last_breakdown`` is then the last request to finish. ``threads``
        and the emulation act process-wide while the device computes.
        """
        if len(inputs) != len(self._placeholders):
            raise ConfigError(
                f"model {self.traced.name!r} takes {len(self._placeholders)} input(s) "
                f"{list(self._placeholders)}, found {len(inputs)}"
            )
        for i, x in enumerate(inputs):
            if not isinstance(x, torch.Tensor):
                raise ConfigError(f"input {i} must be a torch.Tensor, found {type(x).__name__}")
        t0 = time.perf_counter()
        plan = self.planner.plan
        self.requests += 1
        run = _Run(self, plan, t0)
        try:
            if plan.strategy == "edge-only":
                return run.local(inputs, reason="")
            if time.monotonic() < self._down_until and self.fallback_local:
                return run.local(inputs, reason="the server was unreachable; retrying it later")
            return run.remote(inputs)
        finally:
            self.last_breakdown = run.breakdown()

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self._channel.close()

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals used by _Run -----------------------------------------------------------------------

    def _pieces_for(self, plan: Plan) -> _Pieces:
        key = plan_key(plan)[0]  # the device-side nodes: codecs do not change the pieces
        with self._lock:
            pieces = self._pieces.get(key)
        if pieces is None:
            if plan.strategy == "cloud-only":
                pieces = _Pieces(None, None)
            else:
                head, tail = graph.split(self.traced, plan.tiers)
                pieces = _Pieces(head, tail)
            with self._lock:
                if len(self._pieces) >= 8:  # a plan change is rare; keep the recent few
                    self._pieces.pop(next(iter(self._pieces)))
                self._pieces[key] = pieces
        return pieces

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)

    def _mark_up(self) -> None:
        self._down_until = 0.0
        self._backoff_s = _BACKOFF_START_S

    @contextmanager
    def _device(self) -> Iterator[None]:
        """Device-side compute: the thread limit, inference mode."""
        old = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            if self.threads is not None:
                torch.set_num_threads(old)

    def _observe(self, bytes_up: int, bytes_down: int, network_ms: float) -> None:
        with self._lock:
            self.estimator.observe(bytes_up, bytes_down, network_ms)
            self.last_decision = self.planner.replan(self.estimator.link)


class _Run:
    """The bookkeeping of one infer() call: times, bytes, and the local and remote paths."""

    def __init__(self, client: SplitClient, plan: Plan, t0: float) -> None:
        self.c = client
        self.plan = plan
        self.t0 = t0
        self.head_ms = self.encode_ms = self.tail_ms = self.client_ms = self.padding_ms = 0.0
        self.network_ms = self.queue_ms = self.compute_ms = self.decode_ms = 0.0
        self.bytes_sent = self.bytes_received = self.batch = 0
        self.sent: tuple[str, ...] = ()
        self.codecs: tuple[str, ...] = ()
        self.is_local = False
        self.fallback = ""

    def breakdown(self) -> Breakdown:
        return Breakdown(
            head_ms=self.head_ms, encode_ms=self.encode_ms, network_ms=self.network_ms,
            server_queue_ms=self.queue_ms, server_compute_ms=self.compute_ms, decode_ms=self.decode_ms,
            total_ms=(time.perf_counter() - self.t0) * 1e3, bytes_sent=self.bytes_sent,
            boundary=self.sent, local=self.is_local, bytes_received=self.bytes_received,
            tail_local_ms=self.tail_ms, client_ms=self.client_ms, padding_ms=self.padding_ms,
            predicted_ms=self.plan.cost.total_ms, strategy=self.plan.strategy, codecs=self.codecs,
            fallback=self.fallback, batch_size=self.batch,
        )  # fmt: skip

    def _timed_device(self, fn: Any) -> tuple[Any, float]:
        """Run ``fn`` as device compute; returns its result and the emulated time in ms."""
        with self.c._device():
            t = time.perf_counter()
            out = fn()
            ms = (time.perf_counter() - t) * 1e3
        pad = (self.c.emulate_slowdown - 1.0) * ms
        if pad > 0:
            time.sleep(pad / 1e3)
            self.padding_ms += pad
        return out, ms + pad

    def local(self, inputs: Sequence[torch.Tensor], *, reason: str) -> Any:
        self.is_local = True
        self.fallback = reason
        if reason:
            self.c.fallbacks += 1
        out, self.head_ms = self._timed_device(lambda: self.c.traced.module(*inputs))
        return out

    def _finish_locally(
        self, inputs: Sequence[torch.Tensor], values: dict[str, Any] | None, reason: str
    ) -> Any:
        """The request's remaining work on the device: the tail if the head ran, else everything."""
        pieces = self.c._pieces_for(self.plan)
        if values is None or pieces.tail is None:
            head_ms = self.head_ms
            out = self.local(inputs, reason=reason)
            self.tail_ms, self.head_ms = self.head_ms, head_ms
            return out
        self.is_local = True
        self.fallback = reason
        self.c.fallbacks += 1
        tail = pieces.tail
        out, self.tail_ms = self._timed_device(lambda: tail(values))
        return out

    def remote(self, inputs: Sequence[torch.Tensor]) -> Any:
        c, plan = self.c, self.plan
        pieces = c._pieces_for(plan)
        values: dict[str, Any] | None = None
        if pieces.head is None:  # cloud-only: the model's own inputs
            send = dict(zip(c._placeholders, inputs, strict=True))
        else:
            head = pieces.head
            values, self.head_ms = self._timed_device(
                lambda: head(dict(zip(c._placeholders, inputs, strict=True)))
            )
            send = dict(values)
        codec_of = {b.node: b.codec for b in plan.boundary}
        self.sent = tuple(send)
        self.codecs = tuple(codec_of.get(n, "raw") for n in self.sent)

        remote_ms = plan.cost.total_ms - plan.cost.compute_ms[0]
        if remote_ms > c.timeout_s * 1e3 and c.fallback_local:
            return self._finish_locally(
                inputs, values, f"the remote part is predicted to take {remote_ms:.0f} ms, over the "
                f"{c.timeout_s * 1e3:.0f} ms deadline",
            )  # fmt: skip

        def encode() -> tuple[dict[str, np.ndarray | bytes], list[str]]:
            wire: dict[str, np.ndarray | bytes] = {}
            bf16: list[str] = []
            for name, spec in zip(self.sent, self.codecs, strict=True):
                arr, is_bf16 = _to_numpy(send[name], name)
                if spec == "raw":
                    wire[name] = arr
                    if is_bf16:
                        bf16.append(name)
                else:
                    wire[name] = _codec.encode(arr, spec, bfloat16=is_bf16)
            return wire, bf16

        (wire, bf16), self.encode_ms = self._timed_device(encode)
        t = time.perf_counter()
        request = serde.build_infer_request(
            c.model_name, wire, fingerprint=c.traced.fingerprint, request_id=uuid.uuid4().hex[:16],
            bfloat16=bf16,
        )  # fmt: skip
        self.bytes_sent = request.ByteSize()
        self.client_ms = (time.perf_counter() - t) * 1e3
        t_rpc = time.perf_counter()
        try:
            response = c._v2.ModelInfer(request, timeout=c.timeout_s, metadata=c._metadata)
        except grpc.RpcError as exc:
            err = translate_rpc_error(exc, f"ModelInfer({c.model_name!r})")
            self.network_ms = (time.perf_counter() - t_rpc) * 1e3
            if isinstance(err, ServerUnavailableError):
                c._mark_down()
            if c.fallback_local and _is_transient(err):
                return self._finish_locally(inputs, values, f"{err.code}: {err.details or err}"[:200])
            raise err from exc
        rpc_ms = (time.perf_counter() - t_rpc) * 1e3
        c._mark_up()
        t = time.perf_counter()
        data = serde.parse_infer_response(response, max_decoded_bytes=c.max_message_bytes)
        out = _output(data)
        self.client_ms += (time.perf_counter() - t) * 1e3
        p = data.parameters
        self.queue_ms = serde.param_ms(p, serde.PARAM_QUEUE_MS)
        self.compute_ms = serde.param_ms(p, serde.PARAM_COMPUTE_MS)
        self.decode_ms = serde.param_ms(p, serde.PARAM_DECODE_MS)
        batch = p.get(serde.PARAM_BATCH_SIZE, 1)
        self.batch = int(batch) if isinstance(batch, int) and not isinstance(batch, bool) else 1
        self.bytes_received = data.wire_bytes or response.ByteSize()
        self.network_ms = max(0.0, rpc_ms - self.queue_ms - self.compute_ms - self.decode_ms)
        c._observe(self.bytes_sent, self.bytes_received, self.network_ms)
        return out


def _output(data: serde.InferResponseData) -> Any:
    """The model output from the response: one tensor (``output``) or a tuple (``output_0``...)."""
    outs = data.outputs
    if "output" in outs:
        return _from_numpy(outs["output"], "output" in data.bfloat16)
    items = []
    for i in range(len(outs)):
        name = f"output_{i}"
        if name not in outs:
            raise WireError(
                f"the server's response has outputs {sorted(outs)}; expected 'output' or output_0.."
                f"output_{len(outs) - 1}: is the server a splitdnn server of this model?"
            )
        items.append(_from_numpy(outs[name], name in data.bfloat16))
    return tuple(items)


# --------------------------------------------------------------------------------------------------
# reporting (the library part of `splitdnn run`)


def format_breakdown(b: Breakdown) -> str:
    """One line: where one request's time went."""
    if b.local and not b.bytes_sent:
        where = f"local {b.head_ms + b.tail_local_ms:.1f}"
    else:
        where = (
            f"head {b.head_ms:.1f} + encode {b.encode_ms:.1f} + network {b.network_ms:.1f} + server "
            f"queue {b.server_queue_ms:.1f} + compute {b.server_compute_ms:.1f} + decode {b.decode_ms:.1f}"
        )
        if b.tail_local_ms:
            where += f" + local tail {b.tail_local_ms:.1f}"
    tensors = ", ".join(f"{n}:{c}" for n, c in zip(b.boundary, b.codecs, strict=False))
    sent = f", sent {b.bytes_sent} B ({tensors})"
    text = (
        f"{b.strategy}: {b.total_ms:.1f} ms (predicted {b.predicted_ms:.1f}) = {where}"
        f"{sent if b.bytes_sent else ''}"
    )
    if b.padding_ms:
        text += f"; emulation padding {b.padding_ms:.1f} ms included"
    if b.fallback:
        text += f"; fell back: {b.fallback}"
    return text


def run_requests(
    client: SplitClient, requests: int, *, seed: int = 0, out: TextIO | None = None
) -> list[Breakdown]:
    """Run ``requests`` inferences on random inputs of the model's example shapes; print each
    request's breakdown to ``out`` (if given) and return them all."""
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise ConfigError(f"requests must be an integer >= 1, found {requests!r}")
    gen = torch.Generator().manual_seed(seed)
    shapes = [tuple(t.shape) for t in client.traced.example_inputs]
    found = []
    for i in range(requests):
        inputs = [torch.randn(shape, generator=gen) for shape in shapes]
        client.infer(*inputs)
        b = client.last_breakdown
        assert b is not None
        found.append(b)
        if out is not None:
            print(f"request {i + 1}: {format_breakdown(b)}", file=out, flush=True)
    return found
