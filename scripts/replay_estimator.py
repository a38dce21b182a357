#!/usr/bin/env python3
"""Record every link observation of ``bench_deadline.py``'s clients, and replay them through estimators.

The clients of ``scripts/bench_deadline.py`` run on a link that flaps (``--uplink-mbps``, or
``--slow-factor`` x slower); how well their ``LinkEstimator`` follows it decides their plans. A run is
a closed loop (the estimate picks the plan, the plan the samples), so two runs of two estimators see
different samples and differ by more than the estimators do. ``record`` runs the benchmark once and
logs, per client, its prior link and every call it makes into its estimator (``observe``, ``remember``,
``observe_overdue``; pings are ``observe`` of 0 bytes; not the ``remember`` the first two make inside)
with its time, the shaper's rate at that moment and the estimate after it. ``replay`` feeds each
client's calls, in order and on their own clock, through this checkout's estimator and any others
named (``--estimator NAME=PATH``, a copy of ``splitdnn/runtime/_estimator.py`` from another commit:
``git show REF:splitdnn/runtime/_estimator.py > old.py``) and reports, over all clients of the logs:
how often the estimate was over ``--over`` x the link's nominal rate (the link is never faster), how
often under a half of it while the shaper ran at that rate, and how far off it was then (|log| of
estimate over rate: median, p75, p90).

    python scripts/replay_estimator.py record LOG.json [bench_deadline.py options]
    python scripts/replay_estimator.py replay LOG.json [LOG.json ...] [--estimator NAME=PATH] [--over 1.5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from functools import partial
from operator import getitem
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = ("observe", "remember", "observe_overdue")


def record(out: Path, argv: Sequence[str]) -> dict[str, Any]:
    """Run ``bench_deadline.measure`` with ``argv``, logging each estimator call; written to ``out``."""
    import bench_deadline
    import torch

    from splitdnn.runtime import _estimator, shaper

    args = bench_deadline.parse_args(list(argv))
    torch.set_num_threads(1)  # (as bench_deadline.py's main)
    rate: dict[str, float | None] = {"uplink_mbps": None}
    names: dict[int, str] = {}
    priors: dict[str, list[float]] = {}
    log: list[dict[str, Any]] = []
    set_rates, init = shaper.ShapedLink.set_rates, _estimator.LinkEstimator.__init__
    originals = {kind: getattr(_estimator.LinkEstimator, kind) for kind in KINDS}

    def set_rates_logged(self: Any, *a: Any, **k: Any) -> Any:
        rate["uplink_mbps"] = k.get("uplink_mbps")
        return set_rates(self, *a, **k)

    def init_named(self: Any, initial: Any, *a: Any, **k: Any) -> None:
        init(self, initial, *a, **k)
        n, kinds = len(names), bench_deadline.CLIENTS  # made in CLIENTS' order, one estimator each
        names[id(self)] = name = f"{kinds[n % len(kinds)]}#{n // len(kinds)}"
        priors[name] = [initial.uplink_mbps, initial.downlink_mbps, initial.rtt_ms]  # (the replay's start)

    depth: dict[int, int] = {}  # per estimator, its logged calls running now (under its client's lock)

    def logged(kind: str) -> Any:
        def call(self: Any, *a: Any) -> Any:
            # only the client's own calls: observe() and observe_overdue() call remember() inside,
            # which a replay of the outer call repeats (logged too, each sample would be fed twice)
            key, t = id(self), time.monotonic()
            depth[key] = depth.get(key, 0) + 1
            try:
                out = originals[kind](self, *a)
            finally:
                depth[key] -= 1
            if depth[key] == 0:
                log.append({
                    "client": names.get(key, "?"), "kind": kind, "args": list(a), "t": t,
                    "shaper_mbps": rate["uplink_mbps"], "estimate_mbps": self.link.uplink_mbps,
                })  # fmt: skip
            return out

        return call

    shaper.ShapedLink.set_rates = set_rates_logged  # type: ignore[method-assign]
    _estimator.LinkEstimator.__init__ = init_named  # type: ignore[method-assign]
    for kind in KINDS:
        setattr(_estimator.LinkEstimator, kind, logged(kind))
    try:
        result = bench_deadline.measure(args)
    finally:
        shaper.ShapedLink.set_rates = set_rates  # type: ignore[method-assign]
        _estimator.LinkEstimator.__init__ = init  # type: ignore[method-assign]
        for kind, fn in originals.items():
            setattr(_estimator.LinkEstimator, kind, fn)
    data = {"uplink_mbps": args.uplink_mbps, "priors": priors, "log": log, "result": result}
    out.write_text(json.dumps(data) + "\n")
    return data


def load_estimator(name: str, path: Path) -> ModuleType:
    """The module at ``path`` (an ``_estimator.py``), imported as ``replayed_NAME``."""
    spec = importlib.util.spec_from_file_location(f"replayed_{name}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"replay_estimator: cannot import {path} as an estimator module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def replayed(module: ModuleType, calls: Sequence[dict[str, Any]], prior: Sequence[float]) -> list[float]:
    """One client's logged ``calls`` through a fresh ``module.LinkEstimator`` from the client's
    ``prior`` link (uplink, downlink, RTT), on the log's clock: its uplink estimate after each call
    (Mbit/s)."""
    from splitdnn.schema import Link

    clock = [0.0]
    est = module.LinkEstimator(Link(*prior), clock=partial(getitem, clock, 0))
    out = []
    for call in calls:
        clock[0] = call["t"]
        getattr(est, call["kind"])(*call["args"])
        out.append(est.link.uplink_mbps)
    return out


def replay(logs: Sequence[dict[str, Any]], estimators: dict[str, ModuleType], over: float) -> dict[str, Any]:
    """Each log's clients' calls through each of ``estimators``: the summary per estimator."""
    out: dict[str, Any] = {}
    for name, module in estimators.items():
        over_share, under_share, errors = [], [], []
        for data in logs:
            nominal = float(data["uplink_mbps"])
            clients: dict[str, list[dict[str, Any]]] = {}
            for call in data["log"]:
                clients.setdefault(call["client"], []).append(call)
            priors = data.get("priors", {})
            for client, calls in clients.items():
                prior = priors.get(client, (nominal, 0.0, 5.0))  # (bench_deadline's defaults)
                n = high = at_rate = low = 0
                for call, mbps in zip(calls, replayed(module, calls, prior), strict=True):
                    if call["kind"] == "remember":  # kept for a later fit, no estimate of its own
                        continue
                    n += 1
                    high += mbps > over * nominal
                    if call["shaper_mbps"] == nominal:
                        at_rate += 1
                        low += mbps < nominal / 2
                        errors.append(abs(math.log(mbps / nominal)))
                if n:
                    over_share.append(high / n)
                    under_share.append(low / max(1, at_rate))
        errors.sort()
        quantiles = {f"p{q}": errors[min(len(errors) - 1, len(errors) * q // 100)] for q in (50, 75, 90)}
        out[name] = {
            "clients": len(over_share),
            "over_mean": statistics.mean(over_share) if over_share else math.nan,
            "clients_over_10pct": sum(s > 0.1 for s in over_share),
            "under_half_mean": statistics.mean(under_share) if under_share else math.nan,
            "abs_log_error": quantiles if errors else {},
        }  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run bench_deadline.py once, logging every estimator call")
    r.add_argument("out", type=Path)
    y = sub.add_parser("replay", help="replay logs through this checkout's estimator and others")
    y.add_argument("logs", nargs="+", type=Path)
    y.add_argument("--estimator", action="append", default=[], metavar="NAME=PATH")
    y.add_argument("--over", type=float, default=1.5, help="count estimates over this x the nominal rate")
    args, rest = p.parse_known_args(argv)
    if args.cmd == "record":
        record(args.out, rest)
        print(f"wrote {args.out}")
        return 0
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    here = Path(__file__).resolve().parent.parent / "splitdnn" / "runtime" / "_estimator.py"
    estimators = {"this checkout": load_estimator("this", here)}
    for spec in args.estimator:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            p.error(f"--estimator takes NAME=PATH of an existing _estimator.py, found {spec!r}")
        estimators[name] = load_estimator(name, Path(path))
    logs = [json.loads(path.read_text()) for path in args.logs]
    for name, s in replay(logs, estimators, args.over).items():
        err = " / ".join(f"{s['abs_log_error'].get(q, math.nan):.3f}" for q in ("p50", "p75", "p90"))
        print(
            f"{name}: {s['clients']} clients; estimate over {args.over:g} x the link after "
            f"{100 * s['over_mean']:.1f} % of their samples (mean; {s['clients_over_10pct']} clients over "
            f"10 %); under half of it while at it {100 * s['under_half_mean']:.1f} %; |log(estimate / "
            f"rate)| there p50 / p75 / p90 {err}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
