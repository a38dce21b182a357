"""The client's secure mode: TLS, mutual TLS and the bearer token together, with certificates made here."""

from __future__ import annotations

import socket
from pathlib import Path

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
        kw = {"device_profile": device, "token": "t0ken", "connect_timeout_s": 1.0}
        for fallback in (True, False):
            with pytest.raises(AuthenticationError, match="requires a client certificate .* sends none"):
                SplitClient(server.address, traced, root_cert=c["ca"], fallback_local=fallback, **kw)
        with pytest.raises(AuthenticationError, match="does not trust this client's; pass one signed by"):
            SplitClient(
                server.address, traced, root_cert=c["ca"], client_cert=other["client_cert"],
                client_key=other["client_key"], **kw,
            )  # fmt: skip
        with pytest.raises(
            AuthenticationError,
            match=r"speaks TLS and requires a client certificate \(mutual TLS\), but this client connects "
            r"in plaintext; pass root_cert=.* with client_cert= and client_key=",
        ):
            SplitClient(server.address, traced, **kw)
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
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert diagnose(f"127.0.0.1:{free}", secure=False, timeout_s=0.5) is None
    torch.manual_seed(0)
    spec = ModelSpec("lin", module=torch.nn.Linear(4, 3), input_shapes=((1, 4),))
    with TailServer(ServerConfig(models=(spec,))) as plain:  # not TLS: a plaintext client is right
        assert diagnose(plain.address, secure=False, timeout_s=0.5) is None
