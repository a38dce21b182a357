"""The client's secure mode: TLS, mutual TLS and the bearer token together, with certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import torch

from splitdnn import graph
from splitdnn.errors import ServerUnavailableError
from splitdnn.models import ZOO, build_zoo_model
from splitdnn.profiler import profile_model
from splitdnn.runtime.client import SplitClient
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer


def _certs() -> dict[str, bytes]:
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


def test_mutual_tls_with_token(tmp_path: Path) -> None:
    c = _certs()
    for name, data in c.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    shape = (1, *ZOO["alexnet"].test_input_shape)
    torch.manual_seed(0)
    spec = ModelSpec("alexnet", module=build_zoo_model("alexnet"), input_shapes=(shape,))
    config = ServerConfig(
        models=(spec,),
        token="t0ken",
        tls_cert=c["server_cert"],
        tls_key=c["server_key"],
        tls_client_ca=c["ca"],
    )
    with TailServer(config) as server:
        traced = server.served_model("alexnet")
        device = profile_model(
            traced, threads=1, warmup=0, repeats=1, segments=4, check_cuts=0, progress=False, codecs=()
        )
        x = torch.randn(shape)
        with torch.inference_mode():
            ref = traced.module(x)
        cut = graph.chain_cuts(traced)[4]
        with SplitClient(
            server.address, traced, device_profile=device, token="t0ken", force_boundary=cut,
            root_cert=tmp_path / "ca.pem", client_cert=tmp_path / "client_cert.pem",
            client_key=tmp_path / "client_key.pem", fallback_local=False,
        ) as client:  # fmt: skip
            assert torch.equal(client.infer(x), ref)
            b = client.last_breakdown
            assert b is not None and not b.local and b.boundary == (cut,)
        # no client certificate: the handshake fails, the server is unreachable for this client
        with pytest.raises(ServerUnavailableError, match="cannot connect"):
            SplitClient(
                server.address, traced, device_profile=device, token="t0ken", root_cert=c["ca"],
                fallback_local=False, connect_timeout_s=1.0,
            )  # fmt: skip
