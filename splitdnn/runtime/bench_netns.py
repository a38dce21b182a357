"""`splitdnn bench --link netns`: the grid over a real kernel-shaped link between network namespaces (root).

Where the processes run, and why:

- this process (the *driver*, root namespace) builds, traces and profiles each model once, writes the
  profiles to a temporary directory, and brings up a :class:`~splitdnn.runtime.netns.NetnsLink` (a veth
  pair with ``tc tbf`` on both ends) under namespace names of its own (with the pid, so runs never
  collide);
- the *server* runs in the server namespace as a subprocess, ``ip netns exec NS python -m splitdnn
  serve MODEL --host 10.77.0.2 --profile MODEL=FILE``: the zoo's weights are seeded, so it computes
  with the same weights as the client without a weights file;
- for every cell the driver sets the kernel rate (``tc qdisc replace``) and re-executes the *client
  part* in the edge namespace, ``ip netns exec NS python -m splitdnn.runtime.bench_netns JOB RESULT``:
  it measures every strategy of the cell with :func:`~splitdnn.runtime.bench.measure_cell` exactly as
  the in-process run does and writes the :class:`~splitdnn.runtime.bench.CellResult` as JSON.

``tc netem`` is not available here, so the RTT is added by the application: the client dials an
in-process :class:`~splitdnn.runtime.shaper.ShapedLink` in the edge namespace that only delays
(half the RTT each way, at a rate far above any grid bandwidth); the bandwidth is the kernel's.
The link is torn down whatever happens (the ``with`` block of :class:`NetnsLink`), and the server
is stopped with SIGTERM (killed after a grace period).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitdnn.errors import ConfigError
from splitdnn.runtime.bench import (
    BenchConfig,
    CellResult,
    CutRun,
    DriftTracker,
    StrategyRun,
    format_cell_line,
    prepare_model,
    refresh_profiles,
)
from splitdnn.runtime.bench_measure import Timing

if TYPE_CHECKING:
    from splitdnn.runtime.netns import NetnsLink

__all__ = ["cell_from_dict", "cell_to_dict", "main", "run_netns_grid"]

#: The port the server binds in its own namespace (nothing else listens there).
SERVER_PORT = 8001
#: Rate of the RTT-only proxy in the edge namespace: far above any bandwidth the grid shapes.
_DELAY_ONLY_MBPS = 100_000.0
_SERVER_START_S = 120.0
_CELL_TIMEOUT_S = 1800.0


# --------------------------------------------------------------------------------------------------
# results across a process boundary


def _timing_from(d: dict[str, Any]) -> Timing:
    kw: dict[str, Any] = {
        f.name: tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name]
        for f in fields(Timing)
        if f.name in d
    }
    return Timing(**kw)


def cell_to_dict(cell: CellResult) -> dict[str, Any]:
    """A JSON-able form of a :class:`CellResult` (floats kept exact: JSON round-trips them)."""
    return asdict(cell)


def cell_from_dict(d: dict[str, Any]) -> CellResult:
    """The inverse of :func:`cell_to_dict`."""

    def run(r: dict[str, Any]) -> StrategyRun:
        kw: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in r.items() if k != "timing"
        }
        return StrategyRun(timing=_timing_from(r["timing"]), **kw)

    def cut(c: dict[str, Any]) -> CutRun:
        kw: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in c.items() if k != "timing"
        }
        return CutRun(timing=None if c["timing"] is None else _timing_from(c["timing"]), **kw)

    return CellResult(
        model=d["model"], slowdown=d["slowdown"], uplink_mbps=d["uplink_mbps"],
        runs={k: run(v) for k, v in d["runs"].items()}, cuts=tuple(cut(c) for c in d["cuts"]),
        notes=tuple(d.get("notes", ())), profile_scale=tuple(d.get("profile_scale", (1.0, 1.0))),
    )  # fmt: skip


def _config_dict(config: BenchConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(BenchConfig)}


# --------------------------------------------------------------------------------------------------
# the driver


def _wait_for_server(proc: subprocess.Popen[str], timeout_s: float) -> list[str]:
    """Read the server's output until it says it is serving; raise if it exits or takes too long."""
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("serving "):
                ready.set()
        ready.set()  # EOF: the server exited

    threading.Thread(target=pump, name="bench-netns-server-log", daemon=True).start()
    if not ready.wait(timeout_s) or proc.poll() is not None:
        raise ConfigError(
            f"the server in the server namespace did not start within {timeout_s:g} s (exit code "
            f"{proc.poll()}); its output: {' | '.join(lines[-8:]) or '(none)'}"
        )
    return lines


def stop_process(proc: subprocess.Popen[str], timeout_s: float = 15.0) -> None:
    """End a child process: terminate, then kill if it has not ended within ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


def run_netns_grid(
    config: BenchConfig, say: Callable[[str], None], on_cell: Callable[[CellResult], None] | None = None
) -> list[CellResult]:
    """The grid of ``config`` over a veth + tbf link (module docstring); root only (ConfigError otherwise)."""
    from splitdnn.runtime.netns import NetnsLink, unavailable_reason
    from splitdnn.schema import save_profile

    reason = unavailable_reason()
    if reason is not None:
        raise ConfigError(
            f"--link netns needs network namespaces, which this machine cannot make: {reason}; run as "
            f"root with iproute2 installed, or use the default in-process shaper (--link shaper)"
        )
    cells: list[CellResult] = []
    pid = os.getpid()
    with tempfile.TemporaryDirectory(prefix="sdnn-bench-") as tmp:
        work = Path(tmp)
        for model in config.models:
            prepared = prepare_model(config, model, say)
            drift = DriftTracker(config.refresh_pool)
            x, server_prof, devices = prepared.x, prepared.server, prepared.devices
            save_profile(server_prof, work / "server.json")
            for s, prof in devices.items():
                save_profile(prof, work / f"device_x{s:g}.json")
            shape = "x".join(str(d) for d in x.shape)
            up0 = config.uplinks_mbps[0]
            with NetnsLink(
                up0, downlink_mbps=config.downlink_of(up0), edge_ns=f"sdnn-be{pid}", server_ns=f"sdnn-bs{pid}"
            ) as link:
                argv = [
                    sys.executable, "-m", "splitdnn", "serve", model, "--host", link.server_ip,
                    "--port", str(SERVER_PORT), "--input-shape", shape,
                    "--profile", f"{model}={work / 'server.json'}",
                ]  # fmt: skip
                if config.server_threads:
                    argv += ["--threads", str(config.server_threads)]
                say(f"{model}: server in namespace {link.server_ns} at {link.server_ip}:{SERVER_PORT}; "
                    f"client runs in {link.edge_ns}; kernel tbf shapes the veth pair")  # fmt: skip
                proc = link.popen("server", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                try:
                    _wait_for_server(proc, _SERVER_START_S)
                    for slowdown in config.slowdowns:
                        for uplink in config.uplinks_mbps:
                            link.set_rate(uplink, config.downlink_of(uplink))
                            # the same CPUs in every namespace: the driver re-times for the cell
                            device, server, scale = refresh_profiles(prepared, config, slowdown, drift=drift)
                            save_profile(device, work / f"device_x{slowdown:g}.json")
                            save_profile(server, work / "server.json")
                            cell = _run_cell(link, work, model, slowdown, uplink, config, say)
                            cells.append(replace(cell, notes=prepared.notes, profile_scale=scale))
                            if on_cell is not None:
                                on_cell(cells[-1])
                finally:
                    stop_process(proc)
    return cells


def _run_cell(
    link: NetnsLink,
    work: Path,
    model: str,
    slowdown: float,
    uplink: float,
    config: BenchConfig,
    say: Callable[[str], None],
) -> CellResult:
    job = {
        "config": _config_dict(config),
        "model": model,
        "address": f"{link.server_ip}:{SERVER_PORT}",
        "server_profile": str(work / "server.json"),
        "device_profile": str(work / f"device_x{slowdown:g}.json"),
        "slowdown": slowdown,
        "uplink_mbps": uplink,
    }
    job_path, result_path = work / "job.json", work / "result.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "splitdnn.runtime.bench_netns", str(job_path), str(result_path)]
    done = link.run("edge", argv, capture_output=True, text=True, timeout=_CELL_TIMEOUT_S)
    if done.returncode != 0 or not result_path.is_file():
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-6:]
        raise ConfigError(
            f"the client part in namespace {link.edge_ns} failed for {model} at {uplink:g} Mbit/s "
            f"(exit code {done.returncode}): {' | '.join(tail) or '(no output)'}"
        )
    cell = cell_from_dict(json.loads(result_path.read_text(encoding="utf-8")))
    say(format_cell_line(cell, 0.0).removesuffix(" (0 s)") + " [netns]")
    return cell


# --------------------------------------------------------------------------------------------------
# the client part, in the edge namespace


def _client_part(job: dict[str, Any]) -> CellResult:
    import torch

    from splitdnn import graph
    from splitdnn.models import build_zoo_model
    from splitdnn.runtime.bench import measure_cell
    from splitdnn.runtime.shaper import ShapedLink
    from splitdnn.schema import load_profile

    raw = dict(job["config"])
    for key in ("models", "uplinks_mbps", "slowdowns", "input_shape"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    config = BenchConfig(**raw)
    model = job["model"]
    shape = config.shape_of(model)
    module = build_zoo_model(model).eval()  # seeded weights: the server's own
    traced = graph.trace(module, torch.randn(shape, generator=torch.Generator().manual_seed(0)), name=model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    device = load_profile(job["device_profile"])
    server = load_profile(job["server_profile"])
    # the RTT only (netem is not available): the kernel's tbf shapes the bandwidth
    with ShapedLink(job["address"], uplink_mbps=_DELAY_ONLY_MBPS, rtt_ms=config.rtt_ms) as delay:
        return measure_cell(
            delay.address, traced, device, server, job["uplink_mbps"], job["slowdown"], config, x
        )


def main(argv: list[str] | None = None) -> int:
    """Entry of the client part: ``python -m splitdnn.runtime.bench_netns JOB.json RESULT.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m splitdnn.runtime.bench_netns JOB.json RESULT.json", file=sys.stderr)
        return 2
    from splitdnn.runtime.memory import keep_freed_memory

    keep_freed_memory()  # the regime the profiles were measured in (the driver sets it for itself)
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    cell = _client_part(job)
    Path(args[1]).write_text(json.dumps(cell_to_dict(cell)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
