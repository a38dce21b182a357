#!/usr/bin/env python3
"""Measure the link shaper's stalls in a busy process: in-process ShapedLink against ProcessLink.

The in-process shaper's threads need the interpreter lock of the process they run in. A process busy
in Python (the demo's client, server and link share one) makes them wait, and a transfer that should
take a few ms now and then takes tens. ``ProcessLink`` runs the same link in a child process. This
script runs a gRPC echo server in this process (a generic unary handler, the bytes in and out), one
link of each kind in front of it, and a thread spinning in pure Python beside them (``--busy``: the
share of every 10 ms it spins). It makes ``--calls`` calls of ``--size-kib`` KiB through each link,
alternating (a fresh random order per pair). Reported per link: the calls' median and p90/p99/max,
the time the bytes need at the link's rate (both ways, plus the RTT; a call within the links' burst
passes sooner), and how many calls took over 3x the median and over 30 ms.

    python scripts/bench_shaper.py [--size-kib 600] [--mbps 1000] [--rtt-ms 1] [--calls 300] [--busy 0.5]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import numpy as np

KINDS = ("in-process", "process")


def _echo_server() -> tuple[Any, str]:
    import grpc

    def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(4),
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _spin(stop: threading.Event, share: float) -> None:
    """Pure Python work ``share`` of every 10 ms, asleep the rest: while it works it holds the
    interpreter lock but for the switch interval."""
    x = 0
    while not stop.is_set():
        until = time.perf_counter() + share * 0.010
        while time.perf_counter() < until:
            for i in range(1000):
                x ^= i
        if share < 1:
            stop.wait((1 - share) * 0.010)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from splitdnn._measure import cpu_model, git_state
    from splitdnn.runtime.shaper import ShapedLink
    from splitdnn.runtime.shaper_process import ProcessLink

    code = git_state()
    payload = bytes(args.size_kib * 1024)
    server, address = _echo_server()
    rates: dict[str, Any] = {"uplink_mbps": args.mbps, "rtt_ms": args.rtt_ms}
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop, args.busy), name="bench-shaper-spin", daemon=True)
    walls: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        with ShapedLink(address, **rates) as local, ProcessLink(address, **rates) as child:
            options = [
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ]
            channels = {"in-process": grpc.insecure_channel(local.address, options=options),
                        "process": grpc.insecure_channel(child.address, options=options)}  # fmt: skip
            calls = {k: c.unary_unary("/bench.Echo/Echo") for k, c in channels.items()}
            for call in calls.values():  # connect and warm up
                for _ in range(args.warmup):
                    call(payload, timeout=60)
            if args.busy > 0:
                spinner.start()
            order = random.Random(args.seed)
            for _ in range(args.calls):
                for kind in order.sample(KINDS, len(KINDS)):
                    t = time.perf_counter()
                    answer = calls[kind](payload, timeout=60)
                    walls[kind].append((time.perf_counter() - t) * 1e3)
                    assert len(answer) == len(payload)
            for c in channels.values():
                c.close()
    finally:
        stop.set()
        if spinner.is_alive():
            spinner.join()
        server.stop(None)
    at_rate_ms = 2 * len(payload) * 8 / (args.mbps * 1e3) + args.rtt_ms  # (a burst passes sooner)
    out: dict[str, Any] = {"size_kib": args.size_kib, "mbps": args.mbps, "rtt_ms": args.rtt_ms,
                           "calls": args.calls, "busy": args.busy, "at_rate_ms": at_rate_ms, "code": code,
                           "cpu": cpu_model()}  # fmt: skip
    for kind, w in walls.items():
        a = np.asarray(w)
        median = float(np.median(a))
        out[kind] = {
            "median_ms": median, "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "over_3x_median": int((a > 3 * median).sum()),
            "over_30ms": int((a > 30).sum()),
        }  # fmt: skip
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-kib", type=int, default=600, help="bytes each way per call, KiB (default 600)")
    p.add_argument("--mbps", type=float, default=1000.0, help="the links' rate, both ways (default 1000)")
    p.add_argument("--rtt-ms", type=float, default=1.0, help="round-trip time added (default 1)")
    p.add_argument("--calls", type=int, default=300, help="timed calls per link (default 300)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per link first (default 10)")
    p.add_argument(
        "--busy",
        type=float,
        default=0.5,
        help="share of the time a Python thread beside the links spins (0: none; default 0.5)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the order (default 1)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if not 1 <= args.size_kib <= 32 * 1024:
        p.error(f"--size-kib must be in 1..32768, found {args.size_kib}")
    if not (args.mbps > 0 and args.rtt_ms >= 0):
        p.error(f"--mbps must be > 0 and --rtt-ms >= 0, found {args.mbps}, {args.rtt_ms}")
    if not 0 <= args.busy <= 1:
        p.error(f"--busy must be in [0, 1], found {args.busy}")
    if args.calls < 1 or args.warmup < 0:
        p.error(f"--calls must be >= 1 and --warmup >= 0, found {args.calls}, {args.warmup}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    r = measure(args)
    print(
        f"{r['size_kib']} KiB each way at {r['mbps']:g} Mbit/s, RTT {r['rtt_ms']:g} ms "
        f"({r['at_rate_ms']:.1f} ms at the rate, less within the links' burst), {r['calls']} calls per link, "
        f"a Python thread beside them spinning {r['busy']:.0%} of the time"
    )
    print("| link | median ms | p90 ms | p99 ms | max ms | calls > 3x median | calls > 30 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in KINDS:
        s = r[kind]
        print(
            f"| {kind} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.1f} | "
            f"{s['over_3x_median']} | {s['over_30ms']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
