"""Certificates made at test time for the TLS and mutual-TLS tests of the runtime (not a test module)."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

import pytest


def make_certs() -> dict[str, bytes]:
    """A test CA, a server certificate for localhost / 127.0.0.1 and a client certificate (PEM).

    Skips the calling test where the ``cryptography`` package is missing (it is in the test extra).
    """
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(
        name: str, issuer: Any, issuer_key: Any, *, ca: bool, san: bool
    ) -> tuple[bytes, bytes, Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), pem_key, subject, key

    ca_cert, _, ca_name, ca_key = make("splitdnn test CA", None, None, ca=True, san=False)
    server_cert, server_key, _, _ = make("localhost", ca_name, ca_key, ca=False, san=True)
    client_cert, client_key, _, _ = make("edge device", ca_name, ca_key, ca=False, san=False)
    return {
        "ca": ca_cert,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }
