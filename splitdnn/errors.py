"""The splitdnn exception tree (stdlib only).

Every error splitdnn raises on purpose derives from :class:`SplitDNNError`, so callers can catch one
type. Messages say what was expected, what was found and what to do about it::

    SplitDNNError
    ├── ConfigError            bad arguments or options (wrong input shape, unknown objective, ...)
    ├── ModelLoadError         a model name, `module:callable` or weights file that cannot be loaded
    ├── TraceError             a model that neither torch.fx nor torch.export can trace
    ├── PlanError              a plan that is not a valid partition of the graph (not downward closed, ...)
    ├── InfeasibleError        constraints (memory cap, privacy floor, ...) that no plan satisfies
    ├── ProfileError           a corrupt or invalid profile file
    │   └── ProfileMismatchError   a valid profile of another model, input shape or schema version
    ├── CodecError             a tensor frame that cannot be encoded or safely decoded (bad header,
    │                          unknown codec, size over the cap, corrupt payload, ...)
    ├── WireError              a wire message that is malformed or does not fit the model (wrong input
    │                          names, dtypes or shapes, bad parameters); the server answers INVALID_ARGUMENT
    └── RemoteError            the server answered with an error status (``.code`` names the gRPC status)
        ├── ServerUnavailableError   the server cannot be reached (UNAVAILABLE after retries)
        ├── DeadlineError            the request ran past its deadline (DEADLINE_EXCEEDED)
        ├── AuthenticationError      missing or wrong credentials (UNAUTHENTICATED, PERMISSION_DENIED)
        └── ModelMismatchError       the server's model is not the one the client split (fingerprint)

Lower-layer exceptions are chained (``raise ... from exc``) so the cause stays visible in a debugger,
while the command line prints only the one-line message.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CodecError",
    "ConfigError",
    "DeadlineError",
    "InfeasibleError",
    "ModelLoadError",
    "ModelMismatchError",
    "PlanError",
    "ProfileError",
    "ProfileMismatchError",
    "RemoteError",
    "ServerUnavailableError",
    "SplitDNNError",
    "TraceError",
    "WireError",
    "first_line",
]


class SplitDNNError(Exception):
    """Base of every error splitdnn raises on purpose."""


class ConfigError(SplitDNNError, ValueError):
    """An argument or option has a value splitdnn cannot use."""


class ModelLoadError(SplitDNNError):
    """A model could not be found, built or loaded with its weights."""


class TraceError(SplitDNNError):
    """Neither torch.fx symbolic tracing nor torch.export could capture the model's graph."""


class PlanError(SplitDNNError, ValueError):
    """A plan does not describe a valid partition of the model graph."""


class InfeasibleError(SplitDNNError):
    """No plan satisfies the given constraints."""


class ProfileError(SplitDNNError, ValueError):
    """A profile file is corrupt, incomplete or internally inconsistent."""


class ProfileMismatchError(ProfileError):
    """A well-formed profile that belongs to another model, input shape or schema version."""


class CodecError(SplitDNNError, ValueError):
    """A tensor frame cannot be encoded, or a received frame is malformed, unsupported or over a cap."""


class WireError(SplitDNNError, ValueError):
    """A request or response on the wire is malformed or does not fit the model it names."""


class RemoteError(SplitDNNError):
    """The server answered with an error status.

    ``code`` is the gRPC status name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ...) and ``details``
    the server's message; both are plain strings so this module stays free of grpc.
    """

    def __init__(self, message: str, *, code: str = "UNKNOWN", details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class ServerUnavailableError(RemoteError):
    """The server could not be reached, even after retrying."""


class DeadlineError(RemoteError):
    """A request did not finish within its deadline."""


class AuthenticationError(RemoteError):
    """The server refused the client's credentials (token, TLS client certificate)."""


class ModelMismatchError(RemoteError):
    """The server serves a different model (fingerprint) from the one the client traced and split."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (at most 500 characters) for another message, or its
    type's name where the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0][:500] if lines else type(exc).__name__
