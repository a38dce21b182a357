#!/usr/bin/env python3
"""A client pricing the server at its measured pace against one pricing it by its profile alone,
with the server idle and with other clients keeping it busy (``SplitClient(server_pace=)``).

The tail server runs in a child process (``splitdnn serve MODEL --threads --self-profile``: the
profile it gives clients is measured idle, before serving). For the "loaded" phase another child
process keeps it busy with ``--load-clients`` closed-loop clients, each sending the full model's
input (stock v2 requests, no splitdnn client code) as soon as its last answer came. The measured
client runs here: an emulated device (``--slowdown``, 1 thread, profiled once at the start), its
requests through the in-process shaper (``--uplink-mbps``, ``--rtt-ms``). Per phase and round, a
fresh client of each variant (their order rotated every round) runs one warm-up and
``--requests`` timed requests: "with pace" (SplitClient as it is: the server's compute priced at its
pace, its queue added to every remote plan), "one factor" (one factor for both, as before the queue
was priced apart: patched in by :func:`one_factor`) and "profile only" (``server_pace=False``).
Reported per phase and variant: the median latency over the rounds' timed requests, p10-p90, the
plans the client ended on, its plan switches and the server factor and queue it ended with.

    python scripts/bench_server_pace.py [--model resnet18] [--slowdown 3] [--uplink-mbps 100]
        [--rtt-ms 20] [--server-threads 1] [--load-clients 8] [--requests 15] [--rounds 2]
        [--long-s 0] [--after-s 30] [--gap-s 0.5] [--json FILE] [--md FILE]

With ``--long-s S``, a last phase: per source of the pace (the server's reports, or the client's own
requests alone), one client through S seconds of the same load and ``--after-s`` idle seconds after
it, a request every ``--gap-s``: its give-ups under load and how soon it is back on the server once
the load stops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# the client's pricing of the server: its compute pace and queue apart (as SplitClient does), one
# factor for both (the client before the queue was priced apart), or its profile alone
VARIANTS = (("with pace", "pace"), ("one factor", "factor"), ("profile only", None))
LONG_VARIANTS = {True: "the server's reports", False: "own requests only"}


# --------------------------------------------------------------------------------------------------
# the load: a child process of closed-loop stock v2 clients


def load_child(address: str, model: str, clients: int) -> int:
    """Send full-model requests from ``clients`` threads until stdin closes; print the counts at exit
    (requests answered, and failed: a thread that meets an error counts it and goes on)."""
    import grpc

    from splitdnn.models.registry import default_input_shape
    from splitdnn.runtime import serde
    from splitdnn.runtime._proto import grpc_service_pb2_grpc as v2_grpc

    x = np.random.default_rng(0).standard_normal(default_input_shape(model), dtype=np.float32)
    stop = threading.Event()
    done, failed = [0] * clients, [0] * clients
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]

    def loop(i: int) -> None:
        with grpc.insecure_channel(address, options=options) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            meta = stub.ModelMetadata(serde.v2_pb.ModelMetadataRequest(name=model), timeout=30)
            request = serde.build_infer_request(model, {meta.inputs[0].name: x})
            while not stop.is_set():
                try:
                    stub.ModelInfer(request, timeout=60)
                    done[i] += 1
                except grpc.RpcError:
                    failed[i] += 1
                    stop.wait(0.1)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    print("LOAD-READY", flush=True)
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    print(f"LOAD-DONE {sum(done)} {sum(failed)}", flush=True)
    return 0


class Load:
    """The load child process: started, and stopped with the number of requests it sent."""

    def __init__(self, address: str, model: str, clients: int) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--load-child", address, model, str(clients)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("LOAD-READY"):
            _end(self._proc)
            raise RuntimeError(f"the load process did not start (it printed {line!r})")
        self.started = time.monotonic()
        time.sleep(2.0)  # the load settles

    def stop(self) -> dict[str, float]:
        """Requests it had answered and failed, and for how many seconds."""
        try:
            out, _ = self._proc.communicate("", timeout=120)
        except subprocess.TimeoutExpired:
            _end(self._proc)
            raise RuntimeError("the load process did not stop within 120 s") from None
        seconds = time.monotonic() - self.started
        counts = [line.split()[1:] for line in out.splitlines() if line.startswith("LOAD-DONE")]
        if self._proc.returncode != 0 or not counts:
            raise RuntimeError(f"the load process failed (exit {self._proc.returncode}): {out[-500:]!r}")
        return {"requests": int(counts[0][0]), "failed": int(counts[0][1]), "seconds": round(seconds, 1)}


def _end(proc: subprocess.Popen[str]) -> None:
    """Stop a child process: terminate, then kill (imported here: the load child runs without torch)."""
    from splitdnn.runtime.bench_netns import stop_process

    stop_process(proc, timeout_s=30.0)


# --------------------------------------------------------------------------------------------------
# the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str, threads: int, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``splitdnn serve`` in a child process (its output into ``log``), once its health says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = _free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "splitdnn", "serve", model, "--port", str(port), "--threads",
             str(threads), "--self-profile"],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"splitdnn serve exited ({proc.returncode}): {log.read_text()[-1000:]}"
                    )
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                        return proc, address
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise RuntimeError(f"splitdnn serve did not become ready within 300 s: {log.read_text()[-1000:]}")
    except BaseException:
        _end(proc)
        raise


# --------------------------------------------------------------------------------------------------
# the measured client


def _client(
    stack: contextlib.ExitStack,
    address: str,
    traced: Any,
    device: Any,
    args: argparse.Namespace,
    pace: bool,
    force: str | None = None,
) -> Any:
    """The measured client: the emulated device, its requests through the in-process shaper."""
    from splitdnn.runtime.client import SplitClient
    from splitdnn.runtime.shaper import ShapedLink
    from splitdnn.schema import Link

    link = stack.enter_context(
        ShapedLink(address, uplink_mbps=args.uplink_mbps, downlink_mbps=None, rtt_ms=args.rtt_ms)
    )
    return stack.enter_context(
        SplitClient(
            link.address,
            traced,
            device_profile=device,
            link=Link(args.uplink_mbps, rtt_ms=args.rtt_ms),
            emulate_slowdown=args.slowdown,
            threads=1,
            timeout_s=120.0,
            server_pace=pace,
            force_boundary=force,
            fallback_local=force is None,
        )  # fmt: skip
    )


def one_factor() -> contextlib.ExitStack:
    """Patches that make SplitClient price the server with one factor for its queue and compute, as
    before they were priced apart: its own samples (answers, and requests held past a give-up) fold
    the queue into the ratio, and the server's reports are read for their single pace (as from a
    server that does not report the two)."""
    from unittest import mock

    from splitdnn.runtime import serde
    from splitdnn.runtime._server_pace import ServerPace

    parse, observe = serde.parse_server_load, ServerPace.observe

    def single(msg: Any) -> Any:
        load = parse(msg)
        return None if load is None else dataclasses.replace(load, compute_pace=0.0, queue_ms=0.0)

    def whole(self: ServerPace, predicted: float, reported: float, queue: float = 0.0) -> bool:
        """The ratio of the whole reported time, a tail too small to time not used at all."""
        return predicted >= self._min_predicted_ms and observe(self, predicted, reported)

    def held(self: ServerPace, predicted: float, at_least: float, factor: float) -> bool:
        """A request held past the give-up: a ratio of at least its wait, as before."""
        return whole(self, predicted, at_least)

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(serde, "parse_server_load", single))
    stack.enter_context(mock.patch.object(ServerPace, "observe", whole))
    stack.enter_context(mock.patch.object(ServerPace, "held", held))
    return stack


def run_variant(
    address: str, traced: Any, device: Any, x: Any, args: argparse.Namespace, pricing: str | None
) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        if pricing == "factor":
            stack.enter_context(one_factor())
        client = _client(stack, address, traced, device, args, pace=pricing is not None)
        first = client.plan.strategy
        # what the profiles say before any request (the server's at its pace, if a report set one)
        predicted = {k: round(client.planner.baseline(k).cost.total_ms, 1) for k in ("edge", "cloud")}
        client.infer(x)  # warm-up: the connection, the tail's build
        latencies, plans = [], []
        for _ in range(args.requests):
            client.infer(x)
            b = client.last_breakdown
            assert b is not None
            latencies.append(b.total_ms)
            plans.append(f"split after {b.boundary[0]}" if b.strategy == "split" else b.strategy)
        return {
            "latency_ms": [round(v, 2) for v in latencies],
            "first_plan": first,
            "predicted_at_start_ms": predicted,
            "plans": plans,
            "switches": client.planner.switches,
            "server_factor": round(client.server_factor, 3),
            "server_queue_ms": round(client.server_queue_ms, 1),
            # what its pricing says of cloud-only now, against cloud-only measured (measure_cloud)
            "predicted_cloud_at_end_ms": round(client.planner.baseline("cloud").cost.total_ms, 1),
        }


def measure_cloud(address: str, traced: Any, device: Any, x: Any, args: argparse.Namespace) -> list[float]:
    """Cloud-only's latency as it is now: a client forced to it, one warm-up and ``--requests`` timed."""
    with contextlib.ExitStack() as stack:
        client = _client(stack, address, traced, device, args, pace=False, force="cloud")
        client.infer(x)
        out = []
        for i in range(args.requests):
            client.infer(x)
            b = client.last_breakdown
            if b is None or b.local:
                why = b.fallback if b is not None else "no breakdown"
                raise RuntimeError(f"cloud-only request {i + 1} finished on the device ({why})")
            out.append(round(b.total_ms, 2))
        return out


def run_long(
    address: str, traced: Any, device: Any, x: Any, args: argparse.Namespace, reports: bool
) -> dict[str, Any]:
    """One client with the pace through ``--long-s`` seconds of load and ``--after-s`` seconds after
    it, a request every ``--gap-s``; ``reports=False``: the server's reports (a probe's ServerLoad)
    ignored, so the pace comes from the client's own requests alone (the client before d6d3629)."""
    from unittest import mock

    from splitdnn.runtime import serde

    ignore = mock.patch.object(serde, "parse_server_load", lambda msg: None)
    load: Load | None = Load(address, args.model, args.load_clients)
    events: list[dict[str, Any]] = []
    stopped_at, load_stats = None, None
    try:
        with contextlib.ExitStack() as stack:
            if not reports:
                stack.enter_context(ignore)
            client = _client(stack, address, traced, device, args, pace=True)
            start = time.monotonic()
            while True:
                now = time.monotonic() - start
                if load is not None and now >= args.long_s:
                    load_stats, load = load.stop(), None
                    stopped_at = now = time.monotonic() - start
                # idle for --after-s from when the load stopped (stopping it takes a while: timed
                # from --long-s, a slow machine's after-phase had no request at all)
                if stopped_at is not None and now >= stopped_at + args.after_s:
                    break
                client.infer(x)
                b = client.last_breakdown
                assert b is not None
                gave_up = bool(b.fallback) and b.bytes_sent > 0  # sent, then finished on the device
                events.append({
                    "t_s": round(now, 2), "strategy": b.strategy, "gave_up": gave_up, "remote": not b.local,
                    "total_ms": round(b.total_ms, 1),
                })  # fmt: skip
                time.sleep(args.gap_s)
    finally:
        if load is not None:
            load_stats = load.stop()
    assert stopped_at is not None
    during = [e for e in events if e["t_s"] < stopped_at]
    back = next((e["t_s"] for e in events if e["t_s"] >= stopped_at and e["remote"]), None)
    return {
        "events": events,
        "load": load_stats,
        "load_stopped_at_s": round(stopped_at, 2),
        "loaded_requests": len(during),
        "loaded_give_ups_at_s": [e["t_s"] for e in during if e["gave_up"]],
        "loaded_mean_ms": round(statistics.fmean(e["total_ms"] for e in during), 1) if during else None,
        "back_on_server_after_s": None if back is None else round(back - stopped_at, 2),
    }


def measure(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    import torch

    from splitdnn import graph
    from splitdnn.models.registry import build_zoo_model, default_input_shape
    from splitdnn.profiler import profile_model
    from splitdnn.runtime._client_request import emulation_clock

    torch.manual_seed(0)
    module = build_zoo_model(args.model).eval()
    x = torch.randn(default_input_shape(args.model), generator=torch.Generator().manual_seed(1))
    traced = graph.trace(module, x, name=args.model)
    say(f"profiling the device (x{args.slowdown:g}, 1 thread) ...")
    device = profile_model(
        traced, threads=1, slowdown=args.slowdown, repeats=3, codecs=("raw", "zstd"), codec_nodes="chain",
        progress=False, timer=emulation_clock(1, args.slowdown),
    )  # fmt: skip
    say("starting the server (it profiles itself first) ...")
    log = Path(tempfile.mkstemp(prefix="bench_server_pace-", suffix=".log")[1])
    server, address = start_server(args.model, args.server_threads, log)
    phases: dict[str, dict[str, list[dict[str, Any]]]] = {}
    loads: dict[str, dict[str, float]] = {}
    long: dict[str, dict[str, Any]] = {}
    cloud: dict[str, list[float]] = {}  # per phase: cloud-only measured after each round's variants
    try:
        for phase in ("idle", "loaded"):
            load = Load(address, args.model, args.load_clients) if phase == "loaded" else None
            try:
                for r in range(args.rounds):
                    first = r % len(VARIANTS)  # each variant first in turn
                    for label, pricing in VARIANTS[first:] + VARIANTS[:first]:
                        rec = run_variant(address, traced, device, x, args, pricing)
                        phases.setdefault(phase, {}).setdefault(label, []).append(rec)
                        say(
                            f"  {phase} round {r + 1} {label}: median "
                            f"{statistics.median(rec['latency_ms']):.0f} ms, first {rec['first_plan']}, last "
                            f"{rec['plans'][-1]}, {rec['switches']} switch(es), "
                            f"server factor {rec['server_factor']:.2f}, queue {rec['server_queue_ms']:.0f} ms"
                        )
                    cloud[phase] = [*cloud.get(phase, []), *measure_cloud(address, traced, device, x, args)]
            finally:
                if load is not None:
                    loads[phase] = load.stop()
        for reports in (True, False) if args.long_s else ():
            rec = run_long(address, traced, device, x, args, reports)
            long[LONG_VARIANTS[reports]] = rec
            say(
                f"  long, {LONG_VARIANTS[reports]}: {len(rec['loaded_give_ups_at_s'])} give-up(s) in "
                f"{rec['loaded_requests']} requests under load (mean {rec['loaded_mean_ms']} ms), back on "
                f"the server {rec['back_on_server_after_s']} s after the load stopped"
            )
    finally:
        _end(server)
        log.unlink(missing_ok=True)
    summary = {}
    for phase, variants in phases.items():
        for label, recs in variants.items():
            lat = [v for rec in recs for v in rec["latency_ms"]]
            summary[f"{phase}/{label}"] = {
                "median_ms": round(statistics.median(lat), 1),
                "mean_ms": round(statistics.fmean(lat), 1),
                "p10_ms": round(float(np.percentile(lat, 10)), 1),
                "p90_ms": round(float(np.percentile(lat, 90)), 1),
                "last_plans": [rec["plans"][-1] for rec in recs],
                "switches": [rec["switches"] for rec in recs],
                "server_factors": [rec["server_factor"] for rec in recs],
                "server_queues_ms": [rec["server_queue_ms"] for rec in recs],
                "predicted_cloud_at_end_ms": [rec["predicted_cloud_at_end_ms"] for rec in recs],
                "measured_cloud_median_ms": round(statistics.median(cloud[phase]), 1),
                "predicted_at_start": [
                    "{edge:.0f} / {cloud:.0f}".format(**rec["predicted_at_start_ms"]) for rec in recs
                ],
            }
    return {"phases": phases, "summary": summary, "load": loads, "long": long, "cloud_ms": cloud}


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    loads = ", ".join(
        f"({v['requests']} requests in {v['seconds']:g} s, {v.get('failed', 0)} failed)"
        for v in result["load"].values()
    )
    lines = [
        f"# The server's pace: priced at it against by the profile alone ({result['created_utc']})",
        "",
        f"`{result['command']}` on {result['machine']}; code {_code(result['code'])}. {s['model']}, "
        f"device x{s['slowdown']:g} (1 thread), uplink {s['uplink_mbps']:g} Mbit/s, RTT {s['rtt_ms']:g} ms, "
        f"server {s['server_threads']} thread(s); loaded: {s['load_clients']} closed-loop full-model "
        f"clients {loads}. {s['rounds']} round(s) of 1 warm-up + {s['requests']} timed requests per "
        "variant, the variants' order rotated every round. Latency: median [p10-p90] and mean over "
        "the rounds' timed requests (a client that flaps has two modes: the mean shows what it "
        "costs). The last column: what each client's pricing said cloud-only takes when it ended, "
        "against cloud-only measured by a client forced to it after each round (median over the "
        "phase): a pricing must be right for the plans it does not run, too.",
        "",
        "| server | client | latency ms | mean ms | plan at the end (per round) | switches | "
        "server factor / queue ms at the end | predicted edge-only / cloud-only ms at the start | "
        "cloud-only predicted at the end / measured ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, v in result["summary"].items():
        phase, label = key.split("/")
        spread = f"{v['median_ms']:.0f} [{v['p10_ms']:.0f}-{v['p90_ms']:.0f}]"
        priced = zip(
            v["server_factors"], v.get("server_queues_ms", [0.0] * len(v["server_factors"])), strict=True
        )
        lines.append(
            f"| {phase} | {label} | {spread} | {v['mean_ms']:.0f} | {' / '.join(v['last_plans'])} | "
            f"{' / '.join(map(str, v['switches']))} | "
            f"{' / '.join(f'{f:.2f}, {q:.0f}' for f, q in priced)} | "
            f"{', '.join(v.get('predicted_at_start', []))} | "
            f"{' / '.join(f'{c:.0f}' for c in v.get('predicted_cloud_at_end_ms', []))} / "
            f"{v.get('measured_cloud_median_ms', math.nan):.0f} |"
        )
    for phase in ("idle", "loaded"):
        a = result["summary"].get(f"{phase}/with pace")
        for other, what in (("one factor", "with one factor for queue and compute"),
                            ("profile only", "by the profile alone")):  # fmt: skip
            b = result["summary"].get(f"{phase}/{other}")
            if a and b:
                lines += [
                    "",
                    f"- {phase}: with the pace, median {a['median_ms']:.0f} and mean {a['mean_ms']:.0f} ms; "
                    f"{what} {b['median_ms']:.0f} and {b['mean_ms']:.0f} ms "
                    f"(x{b['median_ms'] / a['median_ms']:.2f} and x{b['mean_ms'] / a['mean_ms']:.2f})",
                ]
    if result.get("long"):
        lines += [
            "",
            f"Loaded for {s['long_s']:g} s, then idle for {s['after_s']:g} s: one client with the pace, "
            f'a request every {s["gap_s"]:g} s after the last one\'s end. "Own requests only" ignores '
            "the server's reports (a probe's ServerLoad), as the client did before `d6d3629`.",
            "",
            "| pace from | requests under load | give-ups under load (at s) | mean ms under load | "
            "back on the server after the load stopped |",
            "| --- | ---: | --- | ---: | ---: |",
        ]
        for label, rec in result["long"].items():
            at = ", ".join(f"{t:g}" for t in rec["loaded_give_ups_at_s"]) or "none"
            back = (
                "never" if rec["back_on_server_after_s"] is None else f"{rec['back_on_server_after_s']:.1f} s"
            )
            lines.append(
                f"| {label} | {rec['loaded_requests']} | {len(rec['loaded_give_ups_at_s'])} ({at}) | "
                f"{rec['loaded_mean_ms']} | {back} |"
            )
    return "\n".join(lines) + "\n"


def _code(code: dict[str, Any]) -> str:
    head = (code.get("git_head") or "unknown")[:7]
    changed = code.get("uncommitted") or []
    return head + (f" with {len(changed)} uncommitted file(s)" if changed else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from splitdnn.cli import _count, _nonneg, _positive
    from splitdnn.models.registry import ZOO

    _positive_int = _count(1, 1_000_000)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", choices=sorted(ZOO))
    p.add_argument("--slowdown", type=_positive, default=3.0, help="device emulation factor (default 3)")
    p.add_argument("--uplink-mbps", type=_positive, default=100.0, help="shaped uplink (default 100)")
    p.add_argument("--rtt-ms", type=_positive, default=20.0, help="round trip (default 20)")
    p.add_argument("--server-threads", type=_positive_int, default=1, help="server torch threads (default 1)")
    p.add_argument(
        "--load-clients", type=_positive_int, default=8, help="closed-loop load clients (default 8)"
    )
    p.add_argument(
        "--requests", type=_positive_int, default=15, help="timed requests per variant (default 15)"
    )
    p.add_argument("--rounds", type=_positive_int, default=2, help="rounds of both variants (default 2)")
    p.add_argument(
        "--long-s", type=_nonneg, default=0.0,
        help="then a phase loaded this long and idle --after-s, per pace source (default 0: none)",
    )  # fmt: skip
    p.add_argument("--after-s", type=_positive, default=30.0, help="the long phase's idle part (default 30)")
    p.add_argument("--gap-s", type=_positive, default=0.5, help="the long phase's pause between requests")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--md", type=Path, help="write the table here")
    args = p.parse_args(argv)
    if args.slowdown < 1:
        p.error(f"--slowdown must be >= 1, found {args.slowdown:g}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--load-child"]:
        return load_child(raw[1], raw[2], int(raw[3]))
    args = parse_args(raw)
    from splitdnn._measure import git_state
    from splitdnn.profiler import machine_info
    from splitdnn.runtime.memory import keep_freed_memory

    keep_freed_memory()
    code = git_state()

    def say(text: str) -> None:
        print(text, flush=True)

    started = time.monotonic()
    result = measure(args, say)
    info = machine_info(threads=1)
    result |= {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": ("python scripts/bench_server_pace.py " + " ".join(raw)).strip(),
        "machine": f"{info.processor} ({info.cpu_count} CPUs)",
        "code": code,
        "seconds": round(time.monotonic() - started, 1),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "md")},
    }
    md = to_markdown(result)
    print(md)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.md is not None:
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
