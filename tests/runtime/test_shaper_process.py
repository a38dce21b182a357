"""ProcessLink: the shaper in a child process, controlled over its stdin and stdout."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
from test_shaper import _echo_through, echo_server  # (pytest imports tests/runtime/ modules by this name)

from splitdnn.errors import ConfigError
from splitdnn.runtime.shaper_process import ProcessLink

__all__ = ["echo_server"]  # (a fixture used here)


def test_bytes_pass_unchanged_and_are_counted_by_the_child(echo_server: str) -> None:
    payloads = [os.urandom(size) for size in (1, 1500, 65_537, 300_000)]
    with ProcessLink(echo_server, uplink_mbps=800.0, downlink_mbps=400.0, rtt_ms=2.0) as link:
        assert link.pid is not None and link.pid != os.getpid()
        for payload in payloads:
            assert _echo_through(link.address, payload) == payload
        total = sum(len(p) for p in payloads)
        state = link.state()
        assert state["bytes_up"] == state["bytes_down"] == total
        assert (state["uplink_mbps"], state["downlink_mbps"], state["rtt_ms"]) == (800.0, 400.0, 2.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"uplink_mbps": 0}, "uplink_mbps must be a finite rate > 0"),
        ({"uplink_mbps": 1.0, "downlink_mbps": math.nan}, "downlink_mbps"),
        ({"uplink_mbps": 1.0, "rtt_ms": -1.0}, "rtt_ms must be a finite number >= 0"),
        ({"uplink_mbps": 1.0, "listen_port": 70000}, "listen_port"),
    ],
)
def test_bad_settings_are_refused_before_a_child_starts(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProcessLink("127.0.0.1:8001", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="add the server's port"):
        ProcessLink("127.0.0.1", uplink_mbps=1.0)


def test_misuse_and_the_child_s_own_refusals_say_what_to_do() -> None:
    link = ProcessLink("127.0.0.1:8001", uplink_mbps=5.85)
    with pytest.raises(ConfigError, match="not started"):
        _ = link.address
    with pytest.raises(ConfigError, match="expected a running link"):
        link.set_rates(2.0)
    with link:
        with pytest.raises(ConfigError, match="uplink_mbps"):
            link.set_rates(-1.0)
        with pytest.raises(ConfigError, match="already running"):
            link.start()
        link.set_rates(2.0, rtt_ms=3.0)
        assert link.state()["uplink_mbps"] == 2.0 and link.connections == 0
        proc = link._proc
    assert proc is not None and proc.poll() is not None  # the child ended with the link
    link.close()  # idempotent
    with pytest.raises(ConfigError, match="found one closed"):
        link.state()
    # a port the child cannot listen on: its error, raised here, and no child left behind
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        bad = ProcessLink("127.0.0.1:8001", uplink_mbps=1.0, listen_port=port)
        with pytest.raises(ConfigError, match="cannot listen"):
            bad.start()
        assert bad._proc is not None and bad._proc.poll() is not None


def test_the_child_ends_when_its_caller_goes_and_refuses_bad_commands() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "splitdnn.runtime.shaper_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    settings = {"target": "127.0.0.1:8001", "uplink_mbps": 1.0, "downlink_mbps": None, "rtt_ms": 0.0,
                "listen_host": "127.0.0.1", "listen_port": 0}  # fmt: skip
    for line in (json.dumps(settings), "[1, 2]", '{"op": "nope"}', '{"op": "set", "uplink_mbps": -1}', "{"):
        child.stdin.write(line.encode() + b"\n")
        child.stdin.flush()
        reply = json.loads(child.stdout.readline())
        assert reply["ok"] is (line == json.dumps(settings)), (line, reply)
        assert reply["ok"] or reply["error"]
    child.stdin.close()  # the caller is gone: the child closes its link and ends
    assert child.wait(10) == 0
    child.stdout.close()
