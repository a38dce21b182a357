"""Tests for scripts/netns_link.sh and splitdnn.runtime.netns: real namespaces, a real veth, real tbf.

Marked ``root``: they skip unless running as root with ip/tc. Each test uses its own namespace names
(with the pid), and the fixture removes them whatever happens, then checks that nothing is left.
Rates are measured by the receiver (first byte to EOF) and checked in a generous band: TCP/IP headers
take ~4% of a tbf rate, and the machine is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from splitdnn.errors import ConfigError
from splitdnn.runtime.netns import NetnsError, NetnsLink, default_script, unavailable_reason

SCRIPT = default_script()

_REASON = unavailable_reason()


def needs_root(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test ``root`` and skips it, saying why, where namespaces cannot be made."""
    return pytest.mark.root(pytest.mark.skipif(_REASON is not None, reason=f"netns link: {_REASON}")(test))


#: Receives one connection on the server side: counts and hashes what arrives until EOF, then sends
#: ``reply`` bytes back and prints one JSON line. Prints "ready" once listening, so no sleep-and-hope.
SERVER = textwrap.dedent(
    """
    import hashlib, json, os, socket, sys, time
    host, port, reply = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    srv = socket.create_server((host, port))
    print("ready", flush=True)
    conn, _ = srv.accept()
    digest, n, first = hashlib.sha256(), 0, None
    while data := conn.recv(1 << 16):
        first = first or time.monotonic()
        n += len(data)
        digest.update(data)
    seconds = time.monotonic() - first if first else 0.0
    conn.sendall(os.urandom(reply))
    conn.close()
    print(json.dumps({"bytes": n, "sha256": digest.hexdigest(), "seconds": seconds}), flush=True)
    """
)

#: Sends ``size`` random bytes, half-closes, then receives the reply; prints one JSON line.
CLIENT = textwrap.dedent(
    """
    import hashlib, json, os, socket, sys, time
    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    payload = os.urandom(size)
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    n, first = 0, None
    while data := sock.recv(1 << 16):
        first = first or time.monotonic()
        n += len(data)
    seconds = time.monotonic() - first if first else 0.0
    print(json.dumps({"sha256": hashlib.sha256(payload).hexdigest(), "reply_bytes": n, "seconds": seconds}))
    """
)

PORT = 5201


def _names(tag: str) -> tuple[str, str]:
    return f"sdnn-t{os.getpid()}-{tag}-e", f"sdnn-t{os.getpid()}-{tag}-s"


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


@pytest.fixture
def ns_names(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Unique namespace names, torn down (by the script) and checked gone after the test, pass or fail."""
    edge, server = _names(request.node.name.split("[")[0][-12:].strip("_"))
    yield edge, server
    env = dict(os.environ, SDNN_NS_EDGE=edge, SDNN_NS_SRV=server)
    subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=60, check=False)
    for ns in {edge, server} & _namespaces():  # belt and braces, should the script itself be broken
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert not {edge, server} & _namespaces(), "namespaces left behind"


def _transfer(link: NetnsLink, size: int, reply: int) -> tuple[dict[str, object], dict[str, object]]:
    """Send ``size`` bytes edge -> server and ``reply`` bytes back; returns (server report, client report)."""
    server = link.popen(
        "server",
        [sys.executable, "-c", SERVER, link.server_ip, str(PORT), str(reply)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        client = link.run(
            "edge",
            [sys.executable, "-c", CLIENT, link.server_ip, str(PORT), str(size)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        server_out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return json.loads(server_out.strip().splitlines()[-1]), json.loads(client.stdout.strip().splitlines()[-1])


def _mbps(nbytes: object, seconds: object) -> float:
    assert isinstance(nbytes, int) and isinstance(seconds, float) and seconds > 0
    return nbytes * 8 / 1e6 / seconds


@needs_root
def test_bytes_and_rates_cross_the_shaped_veth(ns_names: tuple[str, str]) -> None:
    """1 MB up at 8 Mbit/s (~1 s), 1 MB down at 32 Mbit/s (~0.25 s), unchanged and at the set rates."""
    edge, server = ns_names
    with NetnsLink(8.0, 32.0, edge_ns=edge, server_ns=server) as link:
        assert link.is_up()
        assert "rate 8Mbit" in link.status() and "rate 32Mbit" in link.status()
        srv, cli = _transfer(link, 1_000_000, 1_000_000)
        assert srv["bytes"] == 1_000_000 and srv["sha256"] == cli["sha256"]
        assert cli["reply_bytes"] == 1_000_000
        up = _mbps(srv["bytes"], srv["seconds"])
        down = _mbps(cli["reply_bytes"], cli["seconds"])
        assert 0.6 * 8.0 <= up <= 1.3 * 8.0, f"uplink {up:.2f} Mbit/s"
        assert 0.6 * 32.0 <= down <= 1.3 * 32.0, f"downlink {down:.2f} Mbit/s"
    assert not {edge, server} & _namespaces()


@needs_root
def test_set_rate_changes_the_running_link(ns_names: tuple[str, str]) -> None:
    edge, server = ns_names
    with NetnsLink(50.0, edge_ns=edge, server_ns=server) as link:
        link.set_rate(4.0)
        assert (link.uplink_mbps, link.downlink_mbps) == (4.0, 4.0)
        assert "rate 4Mbit" in link.status()
        srv, _ = _transfer(link, 500_000, 0)
        up = _mbps(srv["bytes"], srv["seconds"])
        assert 0.6 * 4.0 <= up <= 1.3 * 4.0, f"uplink {up:.2f} Mbit/s after set_rate(4)"
        with pytest.raises(ConfigError, match="uplink_mbps"):
            link.set_rate(0.0)


@needs_root
def test_script_is_idempotent_and_down_always_succeeds(ns_names: tuple[str, str]) -> None:
    edge, server = ns_names
    env = dict(os.environ, SDNN_NS_EDGE=edge, SDNN_NS_SRV=server, MBPS="5.85")

    def script(action: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), action], env={**env, **extra}, capture_output=True, text=True, timeout=60
        )

    assert script("down").returncode == 0  # nothing to remove: still fine
    assert script("status").returncode == 1
    assert script("rate").returncode == 2  # not up: says so
    assert script("up").returncode == 0
    again = script("up", MBPS="1.1", DOWN_MBPS="18.88")  # up twice = update in place
    assert again.returncode == 0, again.stderr
    status = script("status")
    assert status.returncode == 0 and "rate 1100Kbit" in status.stdout and "rate 18880Kbit" in status.stdout
    assert script("down").returncode == 0
    assert script("down").returncode == 0
    assert not {edge, server} & _namespaces()


@needs_root
def test_failed_up_leaves_nothing_behind(ns_names: tuple[str, str]) -> None:
    """The bad address fails after both namespaces exist: the trap must remove them."""
    edge, server = ns_names
    env = dict(os.environ, SDNN_NS_EDGE=edge, SDNN_NS_SRV=server, SDNN_EDGE_ADDR="10.77.0.999/24")
    failed = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0
    assert "tearing down" in failed.stderr
    assert not {edge, server} & _namespaces()


@needs_root
def test_body_failure_still_tears_down(ns_names: tuple[str, str]) -> None:
    edge, server = ns_names
    with pytest.raises(RuntimeError, match="boom"):
        with NetnsLink(10.0, edge_ns=edge, server_ns=server):
            assert {edge, server} <= _namespaces()
            raise RuntimeError("boom")
    assert not {edge, server} & _namespaces()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"uplink_mbps": 0.0}, "uplink_mbps must be a finite rate > 0"),
        ({"uplink_mbps": 1.0, "downlink_mbps": float("nan")}, "downlink_mbps"),
        ({"uplink_mbps": 1.0, "edge_ns": "bad name"}, "edge_ns must be a namespace name"),
        ({"uplink_mbps": 1.0, "edge_ns": "same", "server_ns": "same"}, "must differ"),
        ({"uplink_mbps": 1.0, "edge_addr": "10.77.0.1"}, "one subnet"),  # a /32 beside a /24
        ({"uplink_mbps": 1.0, "server_addr": "10.77.0.1/24"}, "two addresses"),
        ({"uplink_mbps": 1.0, "server_addr": "10.78.0.2/24"}, "one subnet"),
        ({"uplink_mbps": 1.0, "server_addr": "nonsense"}, "IPv4 address with prefix"),
    ],
)
def test_netns_link_validates_arguments_without_root(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NetnsLink(**kwargs)  # type: ignore[arg-type]


def test_commands_are_wrapped_in_ip_netns_exec() -> None:
    link = NetnsLink(5.85, edge_ns="a-edge", server_ns="a-srv")
    assert link.command("edge", ["python", "-V"]) == ["ip", "netns", "exec", "a-edge", "python", "-V"]
    assert link.command("server", ["true"])[3] == "a-srv"
    assert (link.edge_ip, link.server_ip, link.downlink_mbps) == ("10.77.0.1", "10.77.0.2", 5.85)
    with pytest.raises(ConfigError, match="'edge' or 'server'"):
        link.command("cloud", ["true"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="non-empty list"):
        link.command("edge", "python -V")


def test_missing_script_is_reported(tmp_path: Path) -> None:
    link = NetnsLink(1.0, edge_ns="x-edge", server_ns="x-srv", script=tmp_path / "nope.sh")
    with pytest.raises(NetnsError, match="cannot run netns_link.sh up"):
        link.up()
