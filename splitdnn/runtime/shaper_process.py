"""The link shaper in a process of its own: :class:`ProcessLink`, the same link as
:class:`~splitdnn.runtime.shaper.ShapedLink`, whose threads do not wait for the caller's interpreter lock.

The in-process shaper's threads move every byte in Python. When the process that holds them is busy in
Python too (a client between requests, a server's handler), they wait for the interpreter lock, and a
transfer that should take 3 ms can take 30-90 ms (docs/bench.md, "Links"). A client then reads a
stall as the link falling. :class:`ProcessLink` runs a :class:`~splitdnn.runtime.shaper.ShapedLink`
in a child Python process (``python -m splitdnn.runtime.shaper_process``), which competes with the
caller for CPU cores only. It is controlled over the child's stdin and stdout, one JSON object a
line:

- the first line is the link's settings; the child answers ``{"ok": true, "address": ...}``;
- ``{"op": "set", ...}`` runs :meth:`~splitdnn.runtime.shaper.ShapedLink.set_rates`;
- ``{"op": "get"}`` answers the rates, the RTT, the byte counts and the open connections;
- ``{"op": "close"}`` closes the link and ends the child. So does the end of its stdin, so a caller
  that dies takes its link with it.

Errors come back as ``{"ok": false, "error": ...}`` and are raised as
:class:`~splitdnn.errors.ConfigError` with the child's message. The arguments are checked in the
caller first, with the in-process link's messages. Stdlib only, like the shaper; nothing is pickled;
POSIX (it waits on the child's pipe with ``select``).

What it removes is the link's own waits, not those of the code measured through it: a gRPC client
and server in the busy process still wait for its lock. Measured (``scripts/bench_shaper.py``,
docs/bench.md "Links"): beside a thread spinning all the time a 600 KiB echo took 37 ms at the
median through it against 153 ms in-process; spinning half the time, 8-10 % less at the median, with
the rare long calls left in both.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from typing import IO, Any

from splitdnn.errors import ConfigError
from splitdnn.runtime._schedule import _check_rate
from splitdnn.runtime.shaper import ShapedLink, _check_rtt, _format_address

__all__ = ["ProcessLink"]

#: how long the child may take to start (import, bind) and to answer a command
_START_TIMEOUT_S = 30.0
_CALL_TIMEOUT_S = 10.0
#: the longest line either end reads: a command or an answer is a few hundred bytes
_MAX_LINE = 64 * 1024


def _read_line(stream: IO[bytes], timeout_s: float, what: str) -> dict[str, Any]:
    """One JSON object from ``stream`` within ``timeout_s`` (a line of at most :data:`_MAX_LINE` bytes)."""
    ready, _, _ = select.select([stream], [], [], timeout_s)
    if not ready:
        raise ConfigError(
            f"the shaper process did not answer {what} within {timeout_s:g} s; is the machine overloaded?"
        )
    line = stream.readline(_MAX_LINE)
    if not line:
        raise ConfigError(f"the shaper process ended before answering {what}; run it in-process to see why")
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ConfigError(
            f"the shaper process answered {what} with {line[:80]!r}, not a JSON object"
        ) from exc
    if not isinstance(reply, dict):
        raise ConfigError(f"the shaper process answered {what} with {line[:80]!r}, not a JSON object")
    return reply


class ProcessLink:
    """A :class:`~splitdnn.runtime.shaper.ShapedLink` to ``target`` run in a child process (module
    docstring); the same constructor, :meth:`set_rates`, :attr:`address` and counters, and a context
    manager. Each read of a counter is one round trip to the child (tens of µs)."""

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        uplink_mbps: float,
        downlink_mbps: float | None = None,
        rtt_ms: float = 0.0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        # the in-process link checks every argument with its own messages; it is never started
        checked = ShapedLink(target, uplink_mbps=uplink_mbps, downlink_mbps=downlink_mbps, rtt_ms=rtt_ms,
                             listen_host=listen_host, listen_port=listen_port)  # fmt: skip
        self.target = checked.target
        self._settings = {
            "target": _format_address(*checked.target), "uplink_mbps": uplink_mbps,
            "downlink_mbps": downlink_mbps, "rtt_ms": rtt_ms, "listen_host": listen_host,
            "listen_port": listen_port,
        }  # fmt: skip
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._address = ""
        self._state = "new"

    def start(self) -> ProcessLink:
        """Start the child and wait for its link to listen; returns self."""
        with self._lock:
            if self._state != "new":
                raise ConfigError(
                    f"ProcessLink.start(): expected a new link, found one already {self._state}; "
                    "create a new ProcessLink"
                )
            self._state = "running"
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "splitdnn.runtime.shaper_process"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            )  # fmt: skip
            try:
                reply = self._exchange(self._settings, "its start", _START_TIMEOUT_S)
            except ConfigError:
                self._state = "closed"
                self._end()
                raise
            self._address = str(reply["address"])
        return self

    def _exchange(
        self, message: dict[str, Any], what: str, timeout_s: float = _CALL_TIMEOUT_S
    ) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise ConfigError(f"the shaper process is gone ({exc}); create a new ProcessLink") from exc
        reply = _read_line(proc.stdout, timeout_s, what)
        if not reply.get("ok"):
            raise ConfigError(str(reply.get("error", f"the shaper process refused {what}")))
        return reply

    def _call(self, message: dict[str, Any], what: str) -> dict[str, Any]:
        with self._lock:
            if self._state != "running":
                raise ConfigError(
                    f"ProcessLink: expected a running link for {what}, found one {self._state}; "
                    "use `with ProcessLink(...) as link:` or call start() first"
                )
            return self._exchange(message, what)

    def close(self) -> None:
        """Close the link and end the child (killed if it does not end within 5 s)."""
        with self._lock:
            was, self._state = self._state, "closed"
            if was == "running":
                try:
                    self._exchange({"op": "close"}, "close", 5.0)
                except ConfigError:
                    pass
            self._end()

    def _end(self) -> None:
        proc = self._proc
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> ProcessLink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """``"host:port"`` to dial instead of the target (the child's bound port)."""
        if not self._address:
            raise ConfigError(
                "ProcessLink.address: expected a started link, found one not started; "
                "use `with ProcessLink(...) as link:` or call start() first"
            )
        return self._address

    @property
    def pid(self) -> int | None:
        """The child's process id (None before start)."""
        return self._proc.pid if self._proc is not None else None

    def state(self) -> dict[str, Any]:
        """The child link's rates, RTT, byte counts and open connections, in one round trip."""
        return dict(self._call({"op": "get"}, "get")["state"])

    @property
    def uplink_mbps(self) -> float:
        return float(self.state()["uplink_mbps"])

    @property
    def downlink_mbps(self) -> float:
        return float(self.state()["downlink_mbps"])

    @property
    def rtt_ms(self) -> float:
        return float(self.state()["rtt_ms"])

    @property
    def bytes_up(self) -> int:
        return int(self.state()["bytes_up"])

    @property
    def bytes_down(self) -> int:
        return int(self.state()["bytes_down"])

    @property
    def connections(self) -> int:
        return int(self.state()["connections"])

    def set_rates(
        self, uplink_mbps: float, downlink_mbps: float | None = None, rtt_ms: float | None = None
    ) -> None:
        """:meth:`ShapedLink.set_rates <splitdnn.runtime.shaper.ShapedLink.set_rates>` in the child
        (checked here first, with its messages)."""
        _check_rate("uplink_mbps", uplink_mbps)
        if downlink_mbps is not None:
            _check_rate("downlink_mbps", downlink_mbps)
        if rtt_ms is not None:
            _check_rtt(rtt_ms)
        self._call(
            {"op": "set", "uplink_mbps": uplink_mbps, "downlink_mbps": downlink_mbps, "rtt_ms": rtt_ms}, "set"
        )

    def __repr__(self) -> str:
        where = self._address or "not started"
        return f"ProcessLink({where} -> {self._settings['target']}, pid {self.pid})"


# --------------------------------------------------------------------------------------------------
# the child


def _answer(out: IO[bytes], reply: dict[str, Any]) -> None:
    out.write(json.dumps(reply).encode() + b"\n")
    out.flush()


def _child(inp: IO[bytes], out: IO[bytes]) -> int:
    """Run one link by the commands on ``inp`` until ``close`` or the end of ``inp``."""
    first = inp.readline(_MAX_LINE)
    if not first:
        return 0
    try:
        s = json.loads(first)
        link = ShapedLink(
            s["target"], uplink_mbps=s["uplink_mbps"], downlink_mbps=s["downlink_mbps"], rtt_ms=s["rtt_ms"],
            listen_host=s["listen_host"], listen_port=s["listen_port"],
        ).start()  # fmt: skip
    except (ConfigError, ValueError, KeyError, TypeError) as exc:
        _answer(out, {"ok": False, "error": f"{exc}"})
        return 1
    _answer(out, {"ok": True, "address": link.address})
    try:
        while True:
            line = inp.readline(_MAX_LINE)
            if not line:
                return 0
            try:
                cmd = json.loads(line)
                op = cmd.get("op") if isinstance(cmd, dict) else None
                if op == "close":
                    link.close()
                    _answer(out, {"ok": True})
                    return 0
                if op == "set":
                    link.set_rates(cmd["uplink_mbps"], cmd.get("downlink_mbps"), cmd.get("rtt_ms"))
                    _answer(out, {"ok": True})
                elif op == "get":
                    state = {
                        "uplink_mbps": link.uplink_mbps, "downlink_mbps": link.downlink_mbps,
                        "rtt_ms": link.rtt_ms, "bytes_up": link.bytes_up, "bytes_down": link.bytes_down,
                        "connections": link.connections,
                    }  # fmt: skip
                    _answer(out, {"ok": True, "state": state})
                else:
                    _answer(
                        out,
                        {"ok": False, "error": f"expected an op among close, set, get; found {line[:80]!r}"},
                    )
            except (ConfigError, ValueError, KeyError, TypeError) as exc:
                _answer(out, {"ok": False, "error": f"{exc}"})
    finally:
        link.close()


if __name__ == "__main__":
    sys.exit(_child(sys.stdin.buffer, sys.stdout.buffer))
