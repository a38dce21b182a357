"""Why a server the client cannot reach may be a TLS setting, not a server down (stdlib only).

gRPC reports two TLS mistakes exactly as it reports a server that is down ("Socket closed"): a
plaintext client at a TLS port (the server drops the cleartext), and a server that wants a client
certificate this client does not send or the server does not trust (it completes the handshake, then
closes the connection without a word). A wrong CA, and TLS to a plaintext port, gRPC does name
("handshake failed"; see ``_client_rpc.is_handshake_failure``).

:func:`diagnose` connects once with Python's own TLS to tell these apart: it is run only after a
first call failed, never on the request path.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import tempfile
from dataclasses import dataclass

from splitdnn.errors import ConfigError
from splitdnn.runtime.shaper import _parse_target

__all__ = ["Diagnosis", "diagnose"]

log = logging.getLogger(__name__)

# HTTP/2's client connection preface and an empty SETTINGS frame: a gRPC server answers with its own
# SETTINGS; one refusing this client's certificate closes the connection instead
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class Diagnosis:
    """A TLS mistake found, in words; ``certain`` False where another cause looks the same."""

    message: str
    certain: bool


def diagnose(
    address: str,
    *,
    secure: bool,
    client_cert: bytes | None = None,
    client_key: bytes | None = None,
    server_name: str | None = None,
    timeout_s: float = 2.0,
) -> Diagnosis | None:
    """What TLS mistake keeps this client from ``address``, or None (none found: the server is
    down, unreachable, or the address is not one plain ``host:port``). Best effort: never raises.

    ``secure``: the client connects with TLS; ``client_cert`` / ``client_key``: its certificate for
    mutual TLS (PEM). The server's certificate is not verified here (gRPC does that, and names a
    failure itself): only what the server does with this client's connection is looked at.
    """
    try:
        return _diagnose(address, secure, client_cert, client_key, server_name, timeout_s)
    except Exception as exc:  # noqa: BLE001 - a diagnosis that fails finds nothing (a bad host name...)
        log.debug("TLS diagnosis of %s failed: %s: %s", address, type(exc).__name__, exc)
        return None


def _diagnose(
    address: str,
    secure: bool,
    client_cert: bytes | None,
    client_key: bytes | None,
    server_name: str | None,
    timeout_s: float,
) -> Diagnosis | None:
    target = _host_port(address)
    if target is None:
        return None
    host, port = target
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return None  # nothing listens there, or it cannot be reached: not a TLS matter
    with raw:
        ctx = _context(client_cert if secure else None, client_key if secure else None)
        if isinstance(ctx, str):
            return Diagnosis(
                f"this client's certificate and key cannot be loaded as a matching, unencrypted PEM pair "
                f"({ctx}); gRPC cannot use them either: pass the certificate and its key unencrypted",
                certain=True,
            )
        # the handshake is asked for explicitly: wrap_socket skips it on a socket the peer already
        # closed (a proxy whose backend is down), which then read as a TLS server refusing us
        tls = ctx.wrap_socket(raw, server_hostname=server_name or host, do_handshake_on_connect=False)
        with tls:
            try:
                tls.do_handshake()
            except ssl.SSLError as exc:
                if "ALERT" not in str(exc.reason or "").upper():
                    return None  # not TLS there: gRPC says so for a TLS client; a plaintext one is right
                answered = False  # TLS 1.2: the server refuses the handshake for the certificate
            except OSError:
                return None  # closed before any TLS: a server (or a proxy's backend) that is down
            else:
                if tls.version() is None:
                    return None
                answered = _answers_http2(tls, timeout_s)
    if not secure:
        wants = "" if answered else " and requires a client certificate (mutual TLS)"
        return Diagnosis(
            f"the server at {address} speaks TLS{wants}, but this client connects in plaintext; connect "
            f"with TLS: root_cert= (the CA of the server's certificate; `splitdnn run --tls-ca`), or "
            f"tls=True (--tls) for a certificate from a public CA"
            + ("" if answered else ", with client_cert= and client_key= (--tls-cert, --tls-key)"),
            certain=True,
        )
    if answered:
        return None
    # a TLS proxy whose backend is down closes the same way: likely, not certain
    closed = f"the server at {address} closed the connection right after the TLS handshake"
    proxy = "(or it is a TLS proxy whose backend is down)"
    if client_cert is None:
        return Diagnosis(
            f"{closed}: most likely it requires a client certificate (mutual TLS) and this client sends "
            f"none {proxy}; pass client_cert= and client_key= (--tls-cert, --tls-key) signed by the CA "
            f"the server trusts",
            certain=False,
        )
    return Diagnosis(
        f"{closed}: most likely it requires a client certificate (mutual TLS) and does not trust this "
        f"client's {proxy}; pass one signed by the CA the server was started with (splitdnn serve "
        f"--tls-client-ca)",
        certain=False,
    )


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port``, ``dns:///host:port`` or a one-address ``ipv4:``/``ipv6:`` target
    (the shaper's target parser, after gRPC's scheme); None for anything else."""
    for prefix in ("dns:///", "ipv4:", "ipv6:"):
        if address.startswith(prefix):
            address = address[len(prefix) :]
            break
    if "," in address or "/" in address:  # several addresses, a unix socket: not one host to probe
        return None
    try:
        return _parse_target(address)
    except ConfigError:
        return None


def _context(client_cert: bytes | None, client_key: bytes | None) -> ssl.SSLContext | str:
    """A client TLS context offering HTTP/2 that verifies nothing, with the client's certificate if
    any; instead, why that certificate and key cannot be loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if client_cert is None or client_key is None:
        return ctx
    # the ssl module loads a certificate chain from files only: a private directory, removed at once
    folder = tempfile.mkdtemp(prefix="splitdnn-tls-")
    problem = None
    try:
        cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for path, data in ((cert, client_cert), (key, client_key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
        try:  # an empty password: an encrypted key fails here instead of prompting on the terminal
            ctx.load_cert_chain(cert, key, password=lambda: b"")
        except ssl.SSLError as exc:
            problem = str(exc.reason or exc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ctx if problem is None else problem


def _answers_http2(tls: ssl.SSLSocket, timeout_s: float) -> bool:
    """Whether the server goes on with HTTP/2 on this connection (False: it closed it at once)."""
    tls.settimeout(timeout_s)
    try:
        tls.sendall(_H2_PREFACE)
        return bool(tls.recv(9))
    except TimeoutError:
        return True  # it keeps the connection open: not the refusal looked for
    except (ssl.SSLError, OSError):
        return False
