"""The edge client's channel and its error translation (grpc; no torch).

Split out of :mod:`splitdnn.runtime.client` because it is the client's only contact with grpc's own
types: the channel (service-config retries with a retry buffer larger than the largest request,
round-robin over ``dns:///`` or ``ipv4:`` lists, TLS / mTLS) and the one function that turns a
``grpc.RpcError`` into the :mod:`splitdnn.errors` tree, so no ``RpcError`` escapes the client.
"""

from __future__ import annotations

import json
import threading
import weakref
from pathlib import Path
from typing import Any

import grpc

from splitdnn.errors import (
    AuthenticationError,
    ConfigError,
    DeadlineError,
    ModelMismatchError,
    RemoteError,
    ServerUnavailableError,
)
from splitdnn.runtime._credentials import read_pem
from splitdnn.runtime.serde import CONTROL_MESSAGE_BYTES, MODEL_INFER_METHOD

__all__ = [
    "connection_state",
    "is_over_size_cap",
    "is_transient",
    "make_channel",
    "model_infer",
    "translate_rpc_error",
]


_SERVICES = ("inference.GRPCInferenceService", "splitdnn.v1.SplitService")
_TRANSIENT = (ServerUnavailableError, DeadlineError)  # plus RESOURCE_EXHAUSTED, see is_transient
#: words of the server's FAILED_PRECONDITION messages that mean "another model than yours"
_MISMATCH_WORDS = ("fingerprint", "weights")


#: status -> (error class, what it means, the fix); FAILED_PRECONDITION only for a model mismatch
_TRANSLATIONS: dict[str, tuple[type[RemoteError], str, str]] = {
    "UNAVAILABLE": (
        ServerUnavailableError, "the server is unavailable",
        "check the address and that `splitdnn serve` is running, or keep fallback_local=True to run "
        "locally meanwhile",
    ),
    # the client never cancels its own calls (its give-up is a deadline): a cancelled call is the
    # server stopping, or dropping the connection, under it
    "CANCELLED": (
        ServerUnavailableError, "the server cancelled the call (stopping, or dropped the connection)",
        "retry shortly, or keep fallback_local=True to run locally meanwhile",
    ),
    "DEADLINE_EXCEEDED": (
        DeadlineError, "no answer within the deadline", "raise timeout_s or use a cut that sends fewer bytes"
    ),
    "UNAUTHENTICATED": (
        AuthenticationError, "the server refused the credentials",
        "pass the server's token (token=...) and, for mTLS, a client certificate it trusts",
    ),
    "FAILED_PRECONDITION": (
        ModelMismatchError, "the server serves a different model",
        "serve the same model (structure and weights file) the client splits",
    ),
}  # fmt: skip
_TRANSLATIONS["PERMISSION_DENIED"] = _TRANSLATIONS["UNAUTHENTICATED"]


def translate_rpc_error(exc: grpc.RpcError, what: str) -> RemoteError:
    """A :class:`~splitdnn.errors.RemoteError` subclass for a failed RPC; ``what`` names the call."""
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if name == "RESOURCE_EXHAUSTED" and _over_cap(details):  # a cap, either end
        return RemoteError(
            f"{what}: a message is over a size cap ({details}); raise max_message_bytes on the client "
            f"(SplitClient(max_message_bytes=...)) or on the server (splitdnn serve --max-message-mib), "
            f"or allow codecs that send less",
            code=name,
            details=details,
        )
    if name == "UNAVAILABLE" and is_handshake_failure(details):  # not transient: a setting to fix
        return AuthenticationError(
            f"{what}: the TLS handshake with the server failed ({details}); check the CA the client "
            f"trusts (root_cert), its certificate for mutual TLS, and that both ends use TLS or neither",
            code=name,
            details=details,
        )
    entry = _TRANSLATIONS.get(name)
    if name == "FAILED_PRECONDITION" and not any(w in details.lower() for w in _MISMATCH_WORDS):
        entry = None  # another precondition: no more specific class than RemoteError
    if entry is None:
        return RemoteError(f"{what}: the server answered {name}: {details}", code=name, details=details)
    cls, meaning, fix = entry
    return cls(f"{what}: {meaning} ({name}: {details or 'no details'}); {fix}", code=name, details=details)


def is_handshake_failure(details: str) -> bool:
    """gRPC's UNAVAILABLE details for a TLS handshake that failed (wrong CA, TLS to a plaintext port)."""
    return "handshake failed" in details.lower()


def is_transient(exc: RemoteError) -> bool:
    """Whether a failed request may succeed later (unreachable, too slow, overloaded): fall back.

    Not a message over either end's size cap (gRPC says RESOURCE_EXHAUSTED for that too): the same
    request would be refused again, so it is a configuration to fix, raised."""
    if exc.code == "RESOURCE_EXHAUSTED":
        return not is_over_size_cap(exc)
    return isinstance(exc, _TRANSIENT)


def is_over_size_cap(exc: RemoteError) -> bool:
    """A RESOURCE_EXHAUSTED that gRPC gave for a message over ``max_message_bytes`` (either end)."""
    return exc.code == "RESOURCE_EXHAUSTED" and _over_cap(exc.details or "")


def _over_cap(details: str) -> bool:
    """gRPC's words for a message over a cap, or the server's for an answer over its own."""
    return "message larger than max" in details or "max_message_bytes=" in details


def make_channel(
    address: str,
    *,
    secure: bool,
    root_cert: bytes | str | Path | None,
    client_cert: bytes | str | Path | None,
    client_key: bytes | str | Path | None,
    server_name: str | None,
    retries: int,
    max_message_bytes: int,
) -> grpc.Channel:
    """The client's channel: retries on UNAVAILABLE (``retries`` attempts), message caps, TLS."""
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
        # ModelInfer answers are checked against max_message_bytes by the client; the others (the
        # server's profile in GetModelInfo: 0.3 MB for ResNet-50) may be larger than a small cap
        ("grpc.max_receive_message_length", max(max_message_bytes, CONTROL_MESSAGE_BYTES)),
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
        root_certificates=None if root_cert is None else read_pem(root_cert, "root certificate"),
        private_key=None if client_key is None else read_pem(client_key, "client key"),
        certificate_chain=None if client_cert is None else read_pem(client_cert, "client certificate"),
    )
    return grpc.secure_channel(address, creds, options=options)


_MODEL_INFER: weakref.WeakKeyDictionary[grpc.Channel, grpc.UnaryUnaryMultiCallable] = (
    weakref.WeakKeyDictionary()
)
_MODEL_INFER_LOCK = threading.Lock()


def model_infer(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """``channel``'s ModelInfer at the bytes level (serialized request in, serialized response out).

    ``serde.encode_infer_request`` / ``serde.decode_infer_response`` do the conversions, with one copy
    of each tensor instead of protobuf's three. Same method, so the channel's retry policy applies.
    """
    with _MODEL_INFER_LOCK:
        call = _MODEL_INFER.get(channel)
        if call is None:
            call = _MODEL_INFER[channel] = channel.unary_unary(MODEL_INFER_METHOD)
        return call


def connection_state(channel: grpc.Channel) -> grpc.ChannelConnectivity | None:
    """``channel``'s connectivity now, without trying to connect (None: this gRPC cannot say).

    The public way, ``channel.subscribe``, starts a thread that polls the state every 0.2 s and that
    ``close()`` then waits for; this asks the core once, through the channel's private handle, and
    answers None where that handle is missing (a future gRPC, or an intercepted channel).
    """
    core = getattr(channel, "_channel", None)
    check = getattr(core, "check_connectivity_state", None)
    if check is None:
        return None
    try:
        from grpc._common import CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY as states
    except ImportError:  # pragma: no cover - a gRPC without the mapping
        return None
    try:
        return states.get(check(False))
    except Exception:  # noqa: BLE001 - a closed channel or a changed private API: unknown
        return None
