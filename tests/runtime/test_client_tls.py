"""The client's secure mode: TLS, mutual TLS and the bearer token together, with certificates made here."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from tls_certs import make_certs

from splitdnn import graph
from splitdnn.errors import AuthenticationError, ServerUnavailableError
from splitdnn.models import ZOO, build_zoo_model
from splitdnn.profiler import profile_model
from splitdnn.runtime.client import SplitClient
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer


def test_mutual_tls_with_token(tmp_path: Path) -> None:
    c = make_certs()
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
        # these looked like a server that is down ("cannot connect ... within 1 s"), or ran locally
        other = make_certs()
        kw: dict[str, Any] = {"device_profile": device, "token": "t0ken", "connect_timeout_s": 1.0}
        sends_none = "most likely it requires a client certificate .* sends none"
        with pytest.raises(AuthenticationError, match=sends_none):
            SplitClient(server.address, traced, root_cert=c["ca"], fallback_local=False, **kw)
        # a TLS proxy whose backend is down closes the same way: with a fallback, noted, run locally
        with SplitClient(server.address, traced, root_cert=c["ca"], **kw) as local:
            assert any(re.search(sends_none, n) for n in local.notes), local.notes
            assert torch.equal(local.infer(x), ref) and local.last_breakdown.local  # type: ignore[union-attr]
        with pytest.raises(AuthenticationError, match="does not trust this client's .*; pass one signed by"):
            SplitClient(
                server.address, traced, root_cert=c["ca"], client_cert=other["client_cert"],
                client_key=other["client_key"], fallback_local=False, **kw,
            )  # fmt: skip
        for fallback in (True, False):  # certain: raised whatever the fallback
            with pytest.raises(
                AuthenticationError,
                match=r"speaks TLS and requires a client certificate \(mutual TLS\), but this client "
                r"connects in plaintext; connect with TLS: root_cert=.*, with client_cert= and client_key=",
            ):
                SplitClient(server.address, traced, fallback_local=fallback, **kw)
        # an encrypted key: gRPC fails as if the server were down (and Python's ssl would prompt)
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(c["client_key"], password=None)
        locked = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )  # fmt: skip
        with pytest.raises(AuthenticationError, match="cannot be loaded as a matching, unencrypted PEM pair"):
            SplitClient(
                server.address, traced, root_cert=c["ca"], client_cert=c["client_cert"], client_key=locked,
                **kw,
            )  # fmt: skip
    # a server that is really down is still said to be unreachable
    with pytest.raises(ServerUnavailableError, match="cannot connect"):
        SplitClient(server.address, traced, root_cert=c["ca"], fallback_local=False, **kw)


def test_a_failed_tls_handshake_is_raised_not_run_locally() -> None:
    """A wrong CA, or TLS to a plaintext port, waited out the connect timeout and then ran every request
    locally, silently (or said "the server is down"): the handshake error was only in gRPC's log."""
    c, other = make_certs(), make_certs()
    shape = (1, *ZOO["alexnet"].test_input_shape)
    torch.manual_seed(0)
    spec = ModelSpec("alexnet", module=build_zoo_model("alexnet"), input_shapes=(shape,))
    with TailServer(ServerConfig(models=(spec,), tls_cert=c["server_cert"], tls_key=c["server_key"])) as tls:
        traced = tls.served_model("alexnet")
        for fallback in (True, False):
            with pytest.raises(AuthenticationError, match="TLS handshake with the server failed"):
                SplitClient(tls.address, traced, root_cert=other["ca"], connect_timeout_s=1.0,
                            fallback_local=fallback, input_shape=shape)  # fmt: skip
        with pytest.raises(AuthenticationError, match="speaks TLS, but this client connects in plaintext"):
            SplitClient(tls.address, traced, connect_timeout_s=1.0, input_shape=shape)
    with TailServer(ServerConfig(models=(spec,))) as plain:
        with pytest.raises(AuthenticationError, match="both ends use TLS or neither"):
            SplitClient(plain.address, traced, root_cert=c["ca"], connect_timeout_s=1.0)


def test_the_tls_probe_reads_plain_addresses_and_finds_nothing_where_tls_is_not_the_matter() -> None:
    from splitdnn.runtime._tls_probe import _host_port, diagnose

    assert _host_port("localhost:8001") == ("localhost", 8001)
    assert _host_port("[::1]:8001") == ("::1", 8001)
    assert _host_port("dns:///server:9") == ("server", 9)
    assert _host_port("ipv4:10.0.0.1:5") == ("10.0.0.1", 5)
    for several in ("ipv4:10.0.0.1:5,10.0.0.2:5", "unix:/tmp/s", "server", "server:http"):
        assert _host_port(several) is None and diagnose(several, secure=False) is None
    # a name Python cannot even encode (IDNA) raised UnicodeError out of SplitClient's construction
    assert diagnose("a..b:8001", secure=False, timeout_s=0.5) is None
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert diagnose(f"127.0.0.1:{free}", secure=False, timeout_s=0.5) is None
    # a proxy whose backend is down accepts, then closes: that was read as a TLS server refusing us
    from splitdnn.runtime.shaper import ShapedLink

    with ShapedLink(f"127.0.0.1:{free}", uplink_mbps=100.0, rtt_ms=1.0) as proxy:
        for _ in range(3):
            assert diagnose(proxy.address, secure=False, timeout_s=0.5) is None
            assert diagnose(proxy.address, secure=True, timeout_s=0.5) is None
    torch.manual_seed(0)
    spec = ModelSpec("lin", module=torch.nn.Linear(4, 3), input_shapes=((1, 4),))
    with TailServer(ServerConfig(models=(spec,))) as plain:  # not TLS: a plaintext client is right
        assert diagnose(plain.address, secure=False, timeout_s=0.5) is None


def test_a_tls_1_2_server_refusing_the_handshake_for_a_certificate_is_diagnosed(tmp_path: Path) -> None:
    """TLS 1.2 asks for the client's certificate inside the handshake, which then fails with an alert:
    that read as "not TLS here" and found nothing."""
    import ssl
    import threading

    from splitdnn.runtime._tls_probe import diagnose

    c = make_certs()
    (tmp_path / "cert.pem").write_bytes(c["server_cert"])
    (tmp_path / "key.pem").write_bytes(c["server_key"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    ctx.load_verify_locations(cadata=c["ca"].decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        found = diagnose(f"127.0.0.1:{port}", secure=True, timeout_s=2.0)
        assert found is not None and not found.certain and "sends none" in found.message
        plain = diagnose(f"127.0.0.1:{port}", secure=False, timeout_s=2.0)
        assert plain is not None and plain.certain and "requires a client certificate" in plain.message
    finally:
        thread.join(timeout=5)
        listener.close()
