"""Real kernel link shaping from Python: a veth pair between two network namespaces, `tc tbf` on each end.

The in-process :mod:`splitdnn.runtime.shaper` is portable; this is the check that its numbers hold on
the kernel's own TCP stack and qdisc (root only). :class:`NetnsLink` drives ``scripts/netns_link.sh``
(one implementation of the setup, usable by hand too) and runs programs on either side::

    with NetnsLink(uplink_mbps=5.85, edge_ns="sdnn-edge", server_ns="sdnn-srv") as link:
        server = link.popen("server", [sys.executable, "-m", "splitdnn", "serve", "--host", link.server_ip])
        link.run("edge", [sys.executable, "-m", "splitdnn", "run", f"{link.server_ip}:8001", ...])
        link.set_rate(1.1)                      # a bandwidth step, on the kernel's token bucket

The edge side is 10.77.0.1 and the server side 10.77.0.2 by default. ``tc netem`` is not available on
these machines, so the link adds no delay: add RTT in the application where an experiment needs it.
Leaving the ``with`` block always removes both namespaces, also when the body failed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from splitdnn.errors import ConfigError, SplitDNNError
from splitdnn.runtime._schedule import _check_rate

__all__ = ["NetnsError", "NetnsLink", "Side", "default_script", "unavailable_reason"]

#: Which end of the link a command runs on.
Side = Literal["edge", "server"]

_NS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Where the script lives in a source checkout; SDNN_NETNS_SCRIPT overrides it.
_SCRIPT_IN_CHECKOUT = Path(__file__).resolve().parents[2] / "scripts" / "netns_link.sh"
#: Seconds a script call may take before it is considered stuck.
_SCRIPT_TIMEOUT_S = 60.0


class NetnsError(SplitDNNError, RuntimeError):
    """Setting up, changing or tearing down the namespace link failed (the script's message says why)."""


def default_script() -> Path:
    """The netns_link.sh to run: ``$SDNN_NETNS_SCRIPT`` if set, else the one in this source checkout."""
    override = os.environ.get("SDNN_NETNS_SCRIPT")
    return Path(override) if override else _SCRIPT_IN_CHECKOUT


def unavailable_reason(script: Path | None = None) -> str | None:
    """Why namespace links cannot run here (not root, no iproute2, no script), or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    missing = [tool for tool in ("ip", "tc", "bash") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH (install iproute2)"
    path = script or default_script()
    if not path.is_file():
        return f"netns_link.sh not found at {path}; set SDNN_NETNS_SCRIPT to its path"
    return _kernel_refuses_netns()


def _kernel_refuses_netns() -> str | None:
    """Root in a container without CAP_SYS_ADMIN / CAP_NET_ADMIN cannot make namespaces: try once."""
    name = f"sdnn-probe-{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed to run: {exc}"
    if made.returncode != 0:
        return f"the kernel refused a network namespace: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None


def _check_interface(name: str, value: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError as exc:
        raise ConfigError(
            f"{name} must be an IPv4 address with prefix such as '10.77.0.1/24', found {value!r}"
        ) from exc
    return iface


class NetnsLink:
    """Two namespaces joined by a shaped veth pair; a context manager (see the module docstring).

    ``uplink_mbps`` shapes edge -> server (the edge's egress qdisc), ``downlink_mbps`` server -> edge
    (None: same as uplink). Namespace names default to the script's (``sdnn-edge``, ``sdnn-srv``); pass
    others to run several links side by side, e.g. one per test.
    """

    def __init__(
        self,
        uplink_mbps: float,
        downlink_mbps: float | None = None,
        *,
        edge_ns: str = "sdnn-edge",
        server_ns: str = "sdnn-srv",
        edge_addr: str = "10.77.0.1/24",
        server_addr: str = "10.77.0.2/24",
        script: str | os.PathLike[str] | None = None,
    ) -> None:
        self._up = _check_rate("uplink_mbps", uplink_mbps)
        self._down = self._up if downlink_mbps is None else _check_rate("downlink_mbps", downlink_mbps)
        for name, value in (("edge_ns", edge_ns), ("server_ns", server_ns)):
            if not isinstance(value, str) or not _NS_NAME.match(value):
                raise ConfigError(
                    f"{name} must be a namespace name of 1-64 letters, digits, '_', '.', '-', found {value!r}"
                )
        if edge_ns == server_ns:
            raise ConfigError(f"edge_ns and server_ns must differ, both are {edge_ns!r}")
        edge_if = _check_interface("edge_addr", edge_addr)
        server_if = _check_interface("server_addr", server_addr)
        if edge_if.network != server_if.network or edge_if.ip == server_if.ip:
            raise ConfigError(
                f"edge_addr and server_addr must be two addresses of one subnet, found {edge_addr} and "
                f"{server_addr}; use e.g. 10.77.0.1/24 and 10.77.0.2/24"
            )
        self.edge_ns = edge_ns
        self.server_ns = server_ns
        self.edge_ip = str(edge_if.ip)
        self.server_ip = str(server_if.ip)
        self._edge_addr = str(edge_if)
        self._server_addr = str(server_if)
        self.script = Path(script) if script is not None else default_script()

    # -- the script ----------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SDNN_NS_EDGE=self.edge_ns,
            SDNN_NS_SRV=self.server_ns,
            SDNN_EDGE_ADDR=self._edge_addr,
            SDNN_SRV_ADDR=self._server_addr,
            MBPS=repr(self._up),
            DOWN_MBPS=repr(self._down),
        )
        return env

    def _script(self, action: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        reason = unavailable_reason(self.script)
        if reason is not None:
            raise NetnsError(f"cannot run netns_link.sh {action}: {reason}")
        try:
            done = subprocess.run(
                ["bash", str(self.script), action],
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=_SCRIPT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NetnsError(
                f"netns_link.sh {action} took over {_SCRIPT_TIMEOUT_S:g} s; check `ip netns`"
            ) from exc
        if check and done.returncode != 0:
            message = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise NetnsError(
                f"netns_link.sh {action} failed (exit {done.returncode}): "
                f"{message[-1] if message else 'no message'}"
            )
        return done

    # -- lifecycle -----------------------------------------------------------------------------------

    def up(self) -> NetnsLink:
        """Create (or update) the namespaces, veth pair and qdiscs; the script tears down on failure."""
        self._script("up")
        return self

    def down(self) -> None:
        """Remove both namespaces (and so the veth pair); safe to call at any time, any number of times."""
        self._script("down")

    def __enter__(self) -> NetnsLink:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def is_up(self) -> bool:
        """True when both namespaces, the veth pair and both tbf qdiscs exist."""
        return self._script("status", check=False).returncode == 0

    def status(self) -> str:
        """The script's human-readable description of the link."""
        return self._script("status", check=False).stdout

    @property
    def uplink_mbps(self) -> float:
        """Edge -> server rate in Mbit/s."""
        return self._up

    @property
    def downlink_mbps(self) -> float:
        """Server -> edge rate in Mbit/s."""
        return self._down

    def set_rate(self, uplink_mbps: float, downlink_mbps: float | None = None) -> None:
        """Change both qdiscs in place (``tc qdisc replace``): a bandwidth step on a running link.

        ``downlink_mbps=None`` means the same as the uplink. Connections stay open.
        """
        up = _check_rate("uplink_mbps", uplink_mbps)
        down = up if downlink_mbps is None else _check_rate("downlink_mbps", downlink_mbps)
        previous = (self._up, self._down)
        self._up, self._down = up, down
        try:
            self._script("rate")
        except NetnsError:
            self._up, self._down = previous
            raise

    # -- running programs on a side ------------------------------------------------------------------

    def namespace(self, side: Side) -> str:
        """The namespace name of ``"edge"`` or ``"server"``."""
        if side == "edge":
            return self.edge_ns
        if side == "server":
            return self.server_ns
        raise ConfigError(f"side must be 'edge' or 'server', found {side!r}")

    def command(self, side: Side, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the namespace of ``side`` (``ip netns exec NS ...``)."""
        if isinstance(argv, str) or not argv:
            raise ConfigError(
                f"argv must be a non-empty list of arguments such as ['python', '-c', ...], found {argv!r}"
            )
        return ["ip", "netns", "exec", self.namespace(side), *argv]

    def run(
        self, side: Side, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace of ``side`` (keyword arguments passed on)."""
        return subprocess.run(self.command(side, argv), env=None if env is None else dict(env), **kwargs)

    def popen(
        self, side: Side, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace of ``side``, for servers; the caller ends it."""
        return subprocess.Popen(self.command(side, argv), env=None if env is None else dict(env), **kwargs)

    def __repr__(self) -> str:
        return (
            f"NetnsLink({self.edge_ns} {self.edge_ip} <-> {self.server_ns} {self.server_ip}, "
            f"up={self._up} Mbit/s, down={self._down} Mbit/s)"
        )
