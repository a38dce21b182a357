#!/usr/bin/env python3
"""Measure how often requests with a deadline make it: the client's history rule, its probes, the medians.

``SplitClient.infer(x, deadline_ms=)`` decides after the head whether to send the rest, and how long
to wait for the answer before finishing on the device. It picks the wait that makes the deadline most
likely by how its recent requests and device runs went against their predictions
(``splitdnn.runtime._deadline``); before, it judged by the medians alone. This script runs them side
by side: three clients of one zoo model against an in-process tail server through the shaper (device
emulated ``--slowdown`` x from a fresh 1-thread profile, lossless codecs as in ``splitdnn bench``):
``history``, the client as it comes (the history rule, and deadline probes that keep its remote
window current while its deadlines finish on the device at once); ``no probes``, the same rule
without those probes; and ``medians``, one that keeps no history; on a link that flaps: every
period (exponential, mean ``--period-ms``) it is ``--slow-factor`` x slower with chance
``--slow-share``, else at ``--uplink-mbps``. The deadline is each of ``--deadlines`` times the
device's predicted time for the whole model. Per deadline, after ``--warmup`` requests each, the
clients take turns (a fresh random order per pair) for ``--pairs`` pairs. Reported per client: the
share of requests that made the deadline, wall time median, p90 and p99, and how many finished on the
device at once or after waiting, how many were also sent as a probe, and how many came before the
first one sent. ``--slow-first N`` puts N untimed requests each on the slow link before the timed
ones: with ``--slow-share 0`` that measures how the clients recover from a slow spell.

    python scripts/bench_deadline.py [--model mobilenet_v2] [--slowdown 4] [--uplink-mbps 50]
        [--rtt-ms 5] [--slow-share 0.2] [--slow-factor 6] [--period-ms 150]
        [--deadlines 1.1,1.5,2] [--pairs 150] [--warmup 10] [--slow-first 0] [--seed 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_replan import add_client_options, check_client_options  # noqa: E402

#: the client with its history rule and deadline probes (the default); the same without the probes; the
#: medians alone (no history, no probes: the rule before `082751c`)
CLIENTS = ("history", "no probes", "medians")


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    walls = np.asarray([r["total_ms"] for r in rows])
    n = len(rows)
    return {
        "requests": n,
        "met": sum(not r["missed"] for r in rows) / n,
        "median_ms": float(np.median(walls)), "p90_ms": float(np.percentile(walls, 90)),
        "p99_ms": float(np.percentile(walls, 99)),
        "device_at_once": sum(r["local"] and not r["sent"] for r in rows) / n,
        "device_after_wait": sum(r["local"] and r["sent"] for r in rows) / n,
        "probed": sum(r.get("probed", False) for r in rows) / n,
        # requests before the first one sent (its rest to the server, not as a probe): how soon a
        # client offloads again after a slow spell (--slow-first)
        "first_sent": next((i for i, r in enumerate(rows) if r["sent"] and not r["local"]), n),
    }  # fmt: skip


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from splitdnn._measure import cpu_model, git_state
    from splitdnn.runtime._deadline import Choice, History, median_rule_wait_ms
    from splitdnn.runtime.bench import BenchConfig, prepare_model
    from splitdnn.runtime.bench_config import LOSSLESS_CODECS
    from splitdnn.runtime.client import SplitClient
    from splitdnn.runtime.memory import keep_freed_memory
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
    from splitdnn.runtime.shaper import ShapedLink
    from splitdnn.schema import Link

    class Medians(History):
        """Decides by the medians, whatever the windows hold."""

        def choose(self, left_ms: float, rest_ms: float, local_ms: float) -> Choice:
            return Choice(median_rule_wait_ms(left_ms, rest_ms, local_ms), math.nan, False)

    code = git_state()  # now: a commit made while it runs is not the code it ran
    keep_freed_memory()
    config = BenchConfig(models=(args.model,), slowdowns=(args.slowdown,), uplinks_mbps=(args.uplink_mbps,),
                         device_threads=1, server_threads=1, profile_repeats=3)  # fmt: skip
    prepared = prepare_model(config, args.model, lambda _: None)
    device = prepared.devices[args.slowdown]
    spec = ModelSpec(args.model, module=prepared.module, input_shapes=(tuple(prepared.x.shape),))
    server_config = ServerConfig(models=(spec,), host="127.0.0.1", port=0, threads=1,
                                 profiles={args.model: prepared.server})  # fmt: skip
    rtt = args.rtt_ms
    order = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    rates: dict[str, Any] = {"downlink_mbps": None, "rtt_ms": rtt}
    with (
        TailServer(server_config) as server,
        ShapedLink(server.address, uplink_mbps=args.uplink_mbps, **rates) as shaped,
    ):

        def client(name: str) -> SplitClient:
            return SplitClient(
                shaped.address, prepared.traced, device_profile=device, emulate_slowdown=args.slowdown,
                threads=1, link=Link(args.uplink_mbps, rtt_ms=rtt), codecs=list(LOSSLESS_CODECS),
                timeout_s=600.0, **({} if name == "history" else {"deadline_probe_interval_s": None}),
            )  # fmt: skip

        for k, times in enumerate(args.deadlines):
            deadline_ms = times * device.total.median_ms
            stop = threading.Event()
            flaps = random.Random(args.seed * 1000 + k)

            def flap(stop: threading.Event = stop, flaps: random.Random = flaps) -> None:
                while not stop.is_set():
                    slow = flaps.random() < args.slow_share
                    rate = args.uplink_mbps / args.slow_factor if slow else args.uplink_mbps
                    shaped.set_rates(uplink_mbps=rate, **rates)
                    stop.wait(flaps.expovariate(1e3 / args.period_ms))

            clients = {name: client(name) for name in CLIENTS}
            rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CLIENTS}
            flapper = threading.Thread(target=flap, name="bench-deadline-flap", daemon=True)
            try:
                clients["medians"]._history = Medians()
                shaped.set_rates(uplink_mbps=args.uplink_mbps, **rates)
                for c in clients.values():  # a warm-up on the steady link; the history's first samples
                    for _ in range(args.warmup):
                        c.infer(prepared.x)
                if args.slow_first:  # a slow spell first, not timed: what it leaves in the windows
                    shaped.set_rates(uplink_mbps=args.uplink_mbps / args.slow_factor, **rates)
                    for _ in range(args.slow_first):
                        for name in order.sample(CLIENTS, len(CLIENTS)):
                            clients[name].infer(prepared.x, deadline_ms=deadline_ms)
                    shaped.set_rates(uplink_mbps=args.uplink_mbps, **rates)
                flapper.start()
                for _ in range(args.pairs):
                    for name in order.sample(CLIENTS, len(CLIENTS)):
                        c = clients[name]
                        c.infer(prepared.x, deadline_ms=deadline_ms)
                        b = c.last_breakdown
                        assert b is not None
                        rows[name].append({"total_ms": b.total_ms, "missed": b.deadline_missed,
                                           "local": b.local, "sent": b.bytes_sent > 0,
                                           "probed": b.probed})  # fmt: skip
            finally:
                stop.set()
                if flapper.is_alive():
                    flapper.join()
                for c in clients.values():
                    c.close()
            results.append({
                "deadline_x": times, "deadline_ms": deadline_ms,
                "plans": {name: clients[name].plan.strategy for name in CLIENTS},
                "link_mbps": {name: clients[name].link.uplink_mbps for name in CLIENTS},  # estimates
                # measured over predicted, by the history client's windows at the end: rest, device
                "ratios": {kind: {f"q{q}": getattr(clients["history"]._history, kind).quantile(q / 100)
                                  for q in (50, 90)} for kind in ("remote", "heads", "finishes")},
                **{name: _summary(rows[name]) for name in CLIENTS},
            })  # fmt: skip
    return {
        "model": args.model, "slowdown": args.slowdown, "uplink_mbps": args.uplink_mbps, "rtt_ms": rtt,
        "slow_share": args.slow_share, "slow_factor": args.slow_factor, "period_ms": args.period_ms,
        "pairs": args.pairs, "slow_first": args.slow_first, "seed": args.seed,
        "device_ms": device.total.median_ms, "deadlines": results,
        "code": code, "cpu": cpu_model(),
    }  # fmt: skip


def _multiples(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, found {text!r}") from None
    if not values or not all(v > 0 and np.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive multiples, e.g. 1.1,1.5,2; found {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_client_options(p, uplink="the link's rate when fast", uplink_mbps=50.0, rtt_ms=5.0)
    p.add_argument("--slow-share", type=float, default=0.2, help="chance a period is slow (default 0.2)")
    p.add_argument("--slow-factor", type=float, default=6.0, help="how much slower then (default 6)")
    p.add_argument("--period-ms", type=float, default=150.0, help="mean period of the link (default 150)")
    p.add_argument(
        "--deadlines",
        type=_multiples,
        default=(1.1, 1.5, 2.0),
        help="deadlines, times the device's predicted whole-model time (default 1.1,1.5,2)",
    )
    p.add_argument(
        "--pairs", type=int, default=150, help="timed requests per client and deadline (default 150)"
    )
    p.add_argument("--warmup", type=int, default=10, help="requests each first, steady link (default 10)")
    p.add_argument(
        "--slow-first", type=int, default=0,
        help="then this many requests each (with the deadline, not timed) on the link at 1/--slow-factor "
        "of its rate throughout, before the timed ones: how the clients recover from a slow spell "
        "(with --slow-share 0, onto a steady link; default 0)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="seed of the link's flaps and the order (default 1)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    check_client_options(p, args)
    if not (0 <= args.slow_share <= 1 and args.slow_factor >= 1 and args.period_ms > 0):
        p.error(
            f"--slow-share must be in [0, 1], --slow-factor >= 1 and --period-ms > 0, found "
            f"{args.slow_share}, {args.slow_factor}, {args.period_ms}"
        )
    if args.pairs < 1:
        p.error(f"--pairs must be >= 1, found {args.pairs}")
    if args.slow_first < 0:
        p.error(f"--slow-first must be >= 0, found {args.slow_first}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    r = measure(args)
    print(
        f"{r['model']} x{r['slowdown']:g}, {r['uplink_mbps']:g} Mbit/s (1/{r['slow_factor']:g} of it "
        f"{r['slow_share']:.0%} of the time, periods of {r['period_ms']:g} ms on average), RTT "
        f"{r['rtt_ms']:g} ms; the device's whole model predicted {r['device_ms']:.1f} ms; {r['pairs']} "
        f"requests per client and deadline"
        + (f", after {r['slow_first']} each on the slow link" if r["slow_first"] else "")
    )
    print(
        "| deadline | client | plan at the end | made it | median ms | p90 ms | p99 ms | device at once "
        "| device after a wait | probed | first sent |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for d in r["deadlines"]:
        ratios = "; ".join(
            f"{kind} " + "/".join("-" if v is None else f"{v:.2f}" for v in q.values())
            for kind, q in d["ratios"].items()
        )
        print(f"| {d['deadline_x']:g}x | measured / predicted, q50/q90: {ratios} | | | | | | | | | |")
        for name in CLIENTS:
            s = d[name]
            print(
                f"| {d['deadline_x']:g}x ({d['deadline_ms']:.1f} ms) | {name} | {d['plans'][name]} | "
                f"{s['met']:.1%} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['p99_ms']:.1f} | "
                f"{s['device_at_once']:.1%} | {s['device_after_wait']:.1%} | {s['probed']:.1%} | "
                f"{s['first_sent']} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
