"""Tail-server configuration and model loading: :class:`ServerConfig`, :class:`ModelSpec` (torch).

Import them from :mod:`splitdnn.runtime.server`; this module holds the validation of every option
(a :class:`~splitdnn.errors.ConfigError` naming the option and the accepted values) and the loading
and tracing of the served models.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from splitdnn._measure import check_cuda_index
from splitdnn.errors import ConfigError
from splitdnn.graph import example_inputs, trace
from splitdnn.models import ZOO, load_model
from splitdnn.runtime._credentials import PathOrPem, check_token, read_pem
from splitdnn.runtime._tail import ServedModel
from splitdnn.schema import Profile

__all__ = [
    "DEFAULT_INFLIGHT_BYTES",
    "ModelSpec",
    "PathOrPem",
    "ServerConfig",
    "check_token",
    "device_of",
    "host_port",
    "load_served",
    "read_pem",
]

_GRPC_MAX_MESSAGE = (1 << 31) - 1  # gRPC keeps message sizes in a C int
DEFAULT_INFLIGHT_BYTES = 1 << 30  # ServerConfig.max_inflight_bytes when it is None (and large enough)
DEFAULT_MAX_STREAMS = 16  # ServerConfig.max_streams when it is None (and max_concurrency allows)

# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve, when a bare zoo name or ``module:callable`` string is not enough."""

    spec: str  # zoo name, "package.module:callable" or torchvision name (splitdnn.models.load_model)
    name: str | None = None  # v2 model name; default: the zoo name / spec
    weights: str | None = None  # safetensors or torch state_dict file (loaded with weights_only=True)
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)  # builder keyword arguments
    # example input shape(s), batch included, to trace with; default: the zoo entry's input shape
    input_shapes: tuple[tuple[int, ...], ...] | None = None
    module: nn.Module | None = field(default=None, compare=False)  # an already built model (Python API)

    @property
    def served_name(self) -> str:
        return self.name or self.spec


#: the most requests a server may hold in flight (one handler thread each, at most)
MAX_CONCURRENCY = 65536


@dataclass(frozen=True)
class ServerConfig:
    """Everything a tail server needs; sizes in bytes, times in the unit their names say."""

    models: tuple[str | ModelSpec, ...]  # zoo names, "module:callable" specs or ModelSpecs
    host: str = "127.0.0.1"  # "0.0.0.0" / "[::]" to accept other machines
    port: int = 0  # 0: a free port (read TailServer.address)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    threads: int | None = None  # torch intra-op threads (process-wide); None: torch's default
    max_batch_size: int = 8  # rows per dynamic batch; 1 disables batching
    max_queue_delay_ms: float = 2.0  # longest wait of a request for batch company
    max_message_bytes: int = 64 << 20  # each ModelInfer request and answer (other replies: >= 16 MiB)
    max_concurrency: int = 64  # ModelInfer requests in flight; more get RESOURCE_EXHAUSTED
    # bytes all requests in flight hold at once: each one's message plus what it decodes to (frames,
    # typed contents); a request past it gets RESOURCE_EXHAUSTED. None: DEFAULT_INFLIGHT_BYTES, or
    # one largest request (max_message_bytes + max_decoded_bytes) if that is more
    max_inflight_bytes: int | None = None
    token: str | None = None  # bearer token required in `authorization: Bearer <token>`
    tls_cert: PathOrPem | None = None  # server certificate chain (PEM file or bytes)
    tls_key: PathOrPem | None = None  # its private key
    tls_client_ca: PathOrPem | None = None  # CA for client certificates: set = mutual TLS required
    metrics_port: int | None = None  # Prometheus HTTP port; 0: a free port; None: no metrics endpoint
    profiles: Mapping[str, Profile] = field(default_factory=dict, hash=False)  # GetModelInfo's, by model
    # at start, profile every served model without one in `profiles` (on `device`, with `threads`;
    # seconds per model), so clients plan with this server's measured speed instead of an estimate
    profile_at_start: bool = False
    max_decoded_bytes: int = 256 << 20  # all tensors of one request decode to at most this
    tail_cache_size: int = 64  # tails kept per model (one per distinct set of input names)
    grace_s: float = 5.0  # stop(): time in-flight requests get to finish
    drain_s: float = 0.0  # stop(): time between health NOT_SERVING and refusing new requests
    max_connection_age_s: float | None = 300.0  # close connections this old so clients re-balance
    # a call whose request message has not fully arrived this long after its start is ended
    # (DEADLINE_EXCEEDED): each such call holds a handler thread. None: no limit but the call's deadline
    receive_timeout_s: float | None = 30.0
    # at most this many calls from one peer address wait for their request message at once; one more
    # is RESOURCE_EXHAUSTED at once. None: no cap (clients behind one NAT or proxy share an address)
    max_receiving_per_peer: int | None = None
    metrics_host: str | None = None  # metrics bind address; default: host
    # ModelStreamInfer streams open at once (each holds a handler thread for its life, out of the
    # max_concurrency + 8 that also serve ModelInfer); one more is RESOURCE_EXHAUSTED. 0: no streams;
    # None: DEFAULT_MAX_STREAMS, or half of max_concurrency (at least 1) if that is less (stream_limit)
    max_streams: int | None = None
    # a stream whose next request message has not fully arrived this long after its last answer is
    # ended (DEADLINE_EXCEEDED), giving its thread back. None: streams stay open until the client ends them
    stream_idle_timeout_s: float | None = 60.0
    # at most this many of those streams from one peer address; one more is RESOURCE_EXHAUSTED (a
    # splitdnn client then sends unary calls). None: no cap (clients behind one NAT share an address)
    max_streams_per_peer: int | None = None
    # glibc malloc keeps freed tensor-sized buffers mapped (process-wide; splitdnn.runtime.memory)
    keep_freed_memory: bool = True

    def __post_init__(self) -> None:
        models = (self.models,) if isinstance(self.models, (str, ModelSpec)) else tuple(self.models)
        if not models:
            raise ConfigError(
                "ServerConfig.models is empty; name at least one model to serve, e.g. 'resnet18'"
            )
        for m in models:
            if not isinstance(m, (str, ModelSpec)) or (isinstance(m, str) and not m.strip()):
                raise ConfigError(
                    f"each model must be a zoo name, 'module:callable' or a ModelSpec, found {m!r}"
                )
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "profiles", MappingProxyType(dict(self.profiles)))
        _positive_int("max_batch_size", self.max_batch_size)
        _positive_int("max_message_bytes", self.max_message_bytes)
        if self.max_message_bytes > _GRPC_MAX_MESSAGE:
            raise ConfigError(
                f"max_message_bytes must be at most {_GRPC_MAX_MESSAGE} (gRPC's limit, 2 GiB - 1), found "
                f"{self.max_message_bytes}; lower it (--max-message-mib at most 2047)"
            )
        _positive_int("max_concurrency", self.max_concurrency)
        if self.max_concurrency > MAX_CONCURRENCY:
            raise ConfigError(
                f"max_concurrency must be at most {MAX_CONCURRENCY} (each request in flight may hold a "
                f"handler thread), found {self.max_concurrency}"
            )
        _positive_int("max_decoded_bytes", self.max_decoded_bytes)
        _positive_int("tail_cache_size", self.tail_cache_size)
        if self.max_inflight_bytes is not None:
            _positive_int("max_inflight_bytes", self.max_inflight_bytes)
            largest = self.max_message_bytes + self.max_decoded_bytes
            if self.max_inflight_bytes < largest:
                raise ConfigError(
                    f"max_inflight_bytes={self.max_inflight_bytes} cannot hold one largest request "
                    f"(max_message_bytes + max_decoded_bytes = {largest}), which would then be refused "
                    f"forever; raise it to at least {largest} or lower those two"
                )
        if self.max_streams is not None and (
            isinstance(self.max_streams, bool)
            or not isinstance(self.max_streams, int)
            or not 0 <= self.max_streams <= self.max_concurrency
        ):
            raise ConfigError(
                f"max_streams must be an integer from 0 (no streams) to max_concurrency="
                f"{self.max_concurrency} (each open stream holds one of the handler threads ModelInfer "
                f"calls also need), found {self.max_streams!r}"
            )
        _seconds_or_none("stream_idle_timeout_s", self.stream_idle_timeout_s, 0.1, low_allowed=True)
        if self.max_streams_per_peer is not None:
            _positive_int("max_streams_per_peer", self.max_streams_per_peer)
        if self.threads is not None:
            _positive_int("threads", self.threads)
        if self.max_receiving_per_peer is not None:
            _positive_int("max_receiving_per_peer", self.max_receiving_per_peer)
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer 0..65535 (0: any free port), found {self.port!r}")
        if self.metrics_port is not None and (
            isinstance(self.metrics_port, bool)
            or not isinstance(self.metrics_port, int)
            or not 0 <= self.metrics_port <= 65535
        ):
            raise ConfigError(f"metrics_port must be 0..65535 or None, found {self.metrics_port!r}")
        for name in ("max_queue_delay_ms", "grace_s", "drain_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e6:
                raise ConfigError(f"{name} must be a number in [0, 1e6), found {value!r}")
        # gRPC takes the age in int32 milliseconds (under 24 days); a watch for a receive timeout under
        # 0.1 s would spin
        _seconds_or_none("max_connection_age_s", self.max_connection_age_s, 0.0, low_allowed=False)
        _seconds_or_none("receive_timeout_s", self.receive_timeout_s, 0.1, low_allowed=True)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both tls_cert and tls_key (PEM); pass both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key for the server too")
        if self.token is not None and (not isinstance(self.token, str) or not self.token.strip()):
            raise ConfigError("token must be a non-empty string or None")
        check_token(self.token)

    @property
    def stream_limit(self) -> int:
        """The most ModelStreamInfer streams open at once (``max_streams`` or its default)."""
        if self.max_streams is None:  # half the slots at most: the rest for unary calls
            return min(DEFAULT_MAX_STREAMS, max(1, self.max_concurrency // 2))
        return self.max_streams

    @property
    def inflight_limit(self) -> int:
        """The in-flight byte budget in force (``max_inflight_bytes`` or its default)."""
        if self.max_inflight_bytes is not None:
            return self.max_inflight_bytes
        return max(DEFAULT_INFLIGHT_BYTES, self.max_message_bytes + self.max_decoded_bytes)


def _seconds_or_none(name: str, value: Any, low: float, *, low_allowed: bool) -> None:
    """None, or a number of seconds from ``low`` (itself allowed or not) to under 1e6."""
    if value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value < 1e6
    if not (ok and (value >= low if low_allowed else value > low)):
        span = f"{'[' if low_allowed else '('}{low:g}, 1e6)"
        raise ConfigError(f"{name} must be a number of seconds in {span} or None (no limit), found {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, found {value!r}")


# --------------------------------------------------------------------------------------------------
# model loading


def load_served(
    spec: str | ModelSpec, device: torch.device, tail_cache_size: int, check_batching: bool = True
) -> ServedModel:
    """Build (or take), trace and wrap one model to serve, named by ``name``, the zoo name or the spec."""
    ms = spec if isinstance(spec, ModelSpec) else ModelSpec(spec.strip())
    if ms.module is not None:
        model, name = ms.module.eval(), ms.served_name
    else:
        model, display = load_model(ms.spec, kwargs=dict(ms.kwargs), weights=ms.weights)
        name = ms.name or (ms.spec if ms.spec in ZOO else display)
    shapes = ms.input_shapes
    if shapes is None:
        if ms.spec not in ZOO:
            raise ConfigError(
                f"model {ms.spec!r} is not in the zoo, so its input shape is unknown; serve it with "
                f"ModelSpec({ms.spec!r}, input_shapes=((1, 3, 224, 224),)) (--input-shape on the CLI)"
            )
        shapes = ((1, *ZOO[ms.spec].input_shape_for(ms.kwargs)),)
    traced = trace(model, example_inputs(model, shapes), name=name)
    return ServedModel(name, traced, device, tail_cache_size=tail_cache_size, check_batching=check_batching)


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def bare_host(host: str) -> str:
    """``host`` without the brackets of an IPv6 literal ("[::]" -> "::"), as sockets take it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def check_port_free(host: str, port: int, what: str) -> None:
    """ConfigError when ``host`` does not resolve or ``port`` is already listened on there.

    A best-effort check before the models load (each takes seconds, a profile at start minutes), so
    that a port in use is said at once; binding for real can still fail later (a race), and says so.
    Port 0 (any free port) passes.
    """
    if not port:
        return
    bare = bare_host(host)
    try:
        found = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            f"cannot listen on {host_port(host, port)} ({what}): the host {host!r} does not resolve "
            f"({exc}); give an address of this machine, 127.0.0.1 or 0.0.0.0"
        ) from exc
    for family, kind, proto, _, addr in found:
        with socket.socket(family, kind, proto) as sock:
            # as servers bind: a port in TIME_WAIT is no conflict
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # "::" is bound dual-stack (as gRPC does), the rest not
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr[0] == "::" else 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"cannot listen on {host_port(host, port)} ({what}): the port is in use; stop "
                        f"what listens there or pick another port (0: any free one)"
                    ) from exc
                # anything else (an address family this machine lacks, ...) is left to the real bind


def device_of(spec: str) -> torch.device:
    """The torch device ``spec`` names, refused with a ConfigError unless it is usable here."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {spec!r}: expected 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available here; use device='cpu'")
    check_cuda_index(spec, device)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {spec!r} is not supported; use 'cpu' or 'cuda[:N]'")
    return device
