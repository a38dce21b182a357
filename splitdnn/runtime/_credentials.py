"""What both ends read to authenticate: PEM certificates and keys, and the bearer token (stdlib only)."""

from __future__ import annotations

import os
from pathlib import Path

from splitdnn.errors import ConfigError

__all__ = ["PathOrPem", "check_token", "read_pem"]

PathOrPem = str | os.PathLike[str] | bytes


def read_pem(value: PathOrPem, what: str) -> bytes:
    """PEM bytes given directly, or read from a file path; ConfigError unless it holds a PEM block.

    Checked here because gRPC itself only fails later and vaguely: a server cannot bind its port, a
    client's handshake fails as if the server were down."""
    if isinstance(value, bytes):
        data = value
    else:
        try:
            data = Path(value).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the {what} {str(value)!r}: {exc.strerror or exc}; pass a PEM file"
            ) from exc
    if b"-----BEGIN " not in data:
        shown = "the bytes given" if isinstance(value, bytes) else repr(str(value))
        raise ConfigError(f"the {what} ({shown}) is not PEM (no '-----BEGIN' line); pass a PEM file")
    return data


def check_token(token: str | None) -> None:
    """A bearer token travels as an HTTP/2 header value: printable ASCII only (ConfigError)."""
    if token is not None and not all(" " <= c <= "~" for c in token):
        raise ConfigError(
            "the token must be printable ASCII (it travels in an HTTP header); it holds other characters"
        )
