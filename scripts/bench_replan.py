#!/usr/bin/env python3
"""Measure what re-planning costs a SplitClient: how often its requests re-plan, and what one re-plan takes.

A re-plan (re-price the current plan, solve for the best under the new link estimate) runs on the
request's path, before ``infer()`` returns. The client re-plans only when
``Planner.replan_due`` says it could change something (or on a step of the link); before that it
re-planned after every remote request. This script runs a zoo model's client against an in-process
tail server through the shaper (device emulated ``--slowdown`` x from a fresh 1-thread profile,
lossless codecs as in ``splitdnn bench``), counts the re-plans of ``--requests`` requests after a
warm-up and times each, then times ``--forced`` re-plans called directly (what every request paid
before). Reported: requests' median wall time [p10-p90], re-plans run, ms per re-plan.

    python scripts/bench_replan.py [--model mobilenet_v2] [--slowdown 4] [--uplink-mbps 100]
        [--rtt-ms 20] [--requests 40] [--warmup 5] [--forced 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from splitdnn.models.registry import ZOO


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from splitdnn.runtime.bench import BenchConfig, prepare_model
    from splitdnn.runtime.bench_config import LOSSLESS_CODECS
    from splitdnn.runtime.client import SplitClient
    from splitdnn.runtime.memory import keep_freed_memory
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
    from splitdnn.runtime.shaper import ShapedLink
    from splitdnn.schema import Link

    keep_freed_memory()
    config = BenchConfig(models=(args.model,), slowdowns=(args.slowdown,), uplinks_mbps=(args.uplink_mbps,),
                         device_threads=1, server_threads=1, profile_repeats=3)  # fmt: skip
    prepared = prepare_model(config, args.model, lambda _: None)
    spec = ModelSpec(args.model, module=prepared.module, input_shapes=(tuple(prepared.x.shape),))
    server_config = ServerConfig(models=(spec,), host="127.0.0.1", port=0, threads=1,
                                 profiles={args.model: prepared.server})  # fmt: skip
    link = Link(args.uplink_mbps, rtt_ms=args.rtt_ms)
    rates = {"uplink_mbps": args.uplink_mbps, "downlink_mbps": None, "rtt_ms": args.rtt_ms}
    with (
        TailServer(server_config) as server,
        ShapedLink(server.address, **rates) as shaped,
        SplitClient(
            shaped.address, prepared.traced, device_profile=prepared.devices[args.slowdown],
            emulate_slowdown=args.slowdown, threads=1, link=link, codecs=list(LOSSLESS_CODECS),
            probe_interval_s=None, timeout_s=600.0,
        ) as client,
    ):  # fmt: skip
        for _ in range(args.warmup):
            client.infer(prepared.x)
        planner, replan = client.planner, client.planner.replan
        replans_ms: list[float] = []

        def timed(link: Link, *, step: bool = False) -> Any:
            t = time.perf_counter()
            decision = replan(link, step=step)
            replans_ms.append((time.perf_counter() - t) * 1e3)
            return decision

        planner.replan = timed  # type: ignore[method-assign]
        walls = []
        for _ in range(args.requests):
            t = time.perf_counter()
            client.infer(prepared.x)
            walls.append((time.perf_counter() - t) * 1e3)
        in_requests = list(replans_ms)
        replans_ms.clear()
        for _ in range(args.forced):
            timed(client.estimator.link)
        plan = client.plan
    w = np.asarray(walls)
    return {
        "model": args.model, "slowdown": args.slowdown, "uplink_mbps": args.uplink_mbps,
        "rtt_ms": args.rtt_ms, "plan": plan.strategy, "cut": list(plan.boundary_nodes),
        "requests": args.requests,
        "request_ms": {"median": float(np.median(w)), "p10": float(np.percentile(w, 10)),
                       "p90": float(np.percentile(w, 90))},
        "replans_in_requests": len(in_requests),
        "replan_ms_in_requests": statistics.median(in_requests) if in_requests else None,
        "replan_ms_forced": statistics.median(replans_ms) if replans_ms else None,
    }  # fmt: skip


def add_client_options(p: argparse.ArgumentParser, *, uplink: str, uplink_mbps: float, rtt_ms: float) -> None:
    """The options of a zoo model's emulated client over the shaper (also scripts/bench_deadline.py);
    ``uplink``: what the rate is, for its help."""
    p.add_argument("--model", default="mobilenet_v2", help="zoo model (default mobilenet_v2)")
    p.add_argument("--slowdown", type=float, default=4.0, help="device emulation factor (default 4)")
    p.add_argument(
        "--uplink-mbps", type=float, default=uplink_mbps, help=f"{uplink} (default {uplink_mbps:g})"
    )
    p.add_argument("--rtt-ms", type=float, default=rtt_ms, help=f"round-trip time added (default {rtt_ms:g})")


def check_client_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what :func:`add_client_options` added and ``--warmup`` when out of range."""
    if args.model not in ZOO:
        p.error(f"expected a zoo model among {', '.join(sorted(ZOO))}, found {args.model!r}")
    if not args.slowdown >= 1:
        p.error(f"--slowdown must be >= 1, found {args.slowdown}")
    if not (args.uplink_mbps > 0 and args.rtt_ms >= 0):
        p.error(f"--uplink-mbps must be > 0 and --rtt-ms >= 0, found {args.uplink_mbps}, {args.rtt_ms}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, found {args.warmup}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_client_options(p, uplink="shaped link, both ways", uplink_mbps=100.0, rtt_ms=20.0)
    p.add_argument("--requests", type=int, default=40, help="timed requests (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="requests first, not timed (default 5)")
    p.add_argument("--forced", type=int, default=20, help="re-plans timed directly afterwards (default 20)")
    args = p.parse_args(argv)
    check_client_options(p, args)
    for name in ("requests", "forced"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, found {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    r = measure(args)
    q = r["request_ms"]
    in_req = r["replan_ms_in_requests"]
    print(
        f"{r['model']} x{r['slowdown']:g}, {r['uplink_mbps']:g} Mbit/s, RTT {r['rtt_ms']:g} ms: "
        f"plan {r['plan']} {','.join(r['cut']) or '-'}; {r['requests']} requests "
        f"{q['median']:.2f} ms [{q['p10']:.2f}-{q['p90']:.2f}]; re-planned {r['replans_in_requests']} time(s)"
        + (f" ({in_req:.2f} ms each)" if in_req is not None else "")
        + f"; one re-plan called directly {r['replan_ms_forced']:.2f} ms (median of {args.forced})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
