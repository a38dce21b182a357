#!/usr/bin/env python3
"""Measure what an idle gap before a run costs: a piece of a model timed back to back, and after sleeping.

The profiler times every piece back to back (warm-up, then repeats), as profilers do. A split
client computes once per request, after waiting for the network and the server: its head and its
local runs start on caches other work has filled and on a core that may have idled. This script
measures the difference. For each model it times the whole model and the heads of a few chain cuts
(at ``--fractions`` of the chain), each in blocks of ``--repeats`` runs: back to back, and with a
sleep of each ``--gaps-ms`` before every run; the blocks alternate ``--rounds`` times (so drift hits
both alike). Times are the computing thread's CPU time with one thread (what the emulated device's
clock counts), wall time otherwise. Reported: per piece and gap, the median [p10-p90] over all
rounds, and the median's excess over back to back in ms and percent.

    python scripts/bench_idle_gap.py [--models mobilenet_v2 resnet18] [--threads 1]
        [--gaps-ms 20,50] [--fractions 0.25,0.5] [--repeats 30] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from splitdnn import graph
from splitdnn.errors import ConfigError, SplitDNNError
from splitdnn.models.registry import ZOO, build_zoo_model, default_input_shape


def pieces_of(model: str, fractions: Sequence[float]) -> list[tuple[str, Callable[[], Any]]]:
    """``[(label, run)]``: the heads at ``fractions`` of the model's chain cuts, then the whole model."""
    module = build_zoo_model(model).eval()
    x = torch.randn(default_input_shape(model), generator=torch.Generator().manual_seed(0))
    traced = graph.trace(module, x, name=model)
    compute = [n.name for n in traced.nodes if n.op in graph.COMPUTE_OPS]
    chosen = graph.chain_cuts_at(traced, fractions)
    out: list[tuple[str, Callable[[], Any]]] = []
    for cut in chosen:
        pos = compute.index(cut)
        head = graph.split(traced, {n: 0 if i <= pos else 1 for i, n in enumerate(compute)})[0]
        out.append((f"head to {cut} ({pos + 1}/{len(compute)} nodes)", lambda h=head: h.module(x)))
    out.append((f"whole model ({len(compute)} nodes)", lambda: traced.module(x)))
    return out


def time_block(run: Callable[[], Any], gap_s: float, repeats: int, clock: Callable[[], float]) -> list[float]:
    """``repeats`` timed runs (ms), each after sleeping ``gap_s`` (0: back to back); one untimed first."""
    samples = []
    with torch.inference_mode():
        run()
        for _ in range(repeats):
            if gap_s:
                time.sleep(gap_s)
            t = clock()
            run()
            samples.append((clock() - t) * 1e3)
    return samples


def measure(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    pieces = pieces_of(model, args.fractions)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    gaps = [0.0, *args.gaps_ms]
    samples: dict[tuple[str, float], list[float]] = {(label, g): [] for label, _ in pieces for g in gaps}
    for _ in range(args.rounds):
        for label, run in pieces:
            for g in gaps:
                samples[label, g] += time_block(run, g / 1e3, args.repeats, clock)
    rows = []
    for label, _ in pieces:
        warm = statistics.median(samples[label, 0.0])
        for g in gaps:
            v = np.asarray(samples[label, g])
            med = float(np.median(v))
            rows.append({
                "model": model, "piece": label, "gap_ms": g, "median_ms": med,
                "p10_ms": float(np.percentile(v, 10)), "p90_ms": float(np.percentile(v, 90)),
                "excess_ms": med - warm, "excess_pct": 100.0 * (med / warm - 1.0), "n": int(v.size),
            })  # fmt: skip
    return rows


def to_markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    clock = "thread CPU time" if args.threads == 1 else "wall time"
    lines = [
        f"torch {torch.__version__}, {args.threads} thread(s), {clock}; {args.repeats} runs per block, "
        f"{args.rounds} rounds; gap 0 = back to back",
        "",
        "| model | piece | gap ms | median ms [p10–p90] | over back to back |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        over = "-" if r["gap_ms"] == 0 else f"{r['excess_ms']:+.2f} ms ({r['excess_pct']:+.0f} %)"
        lines.append(
            f"| {r['model']} | {r['piece']} | {r['gap_ms']:g} | {r['median_ms']:.2f} "
            f"[{r['p10_ms']:.2f}–{r['p90_ms']:.2f}] | {over} |"
        )
    return "\n".join(lines) + "\n"


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, found {text!r}") from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"], help="zoo models")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the emulated device)")
    p.add_argument("--gaps-ms", type=_floats, default=[20.0, 50.0], help="sleeps before each run (20,50)")
    p.add_argument("--fractions", type=_floats, default=[0.25, 0.5], help="heads at these chain fractions")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per block (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the blocks (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in ZOO]
    if unknown:
        p.error(f"expected zoo models among {', '.join(sorted(ZOO))}, found {unknown}")
    for name in ("threads", "repeats", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, found {getattr(args, name)}")
    if not args.gaps_ms or any(not (0 < g <= 10_000) for g in args.gaps_ms):
        p.error(f"--gaps-ms must list sleeps in (0, 10000] ms, found {args.gaps_ms}")
    if not args.fractions or any(not (0 <= f < 1) for f in args.fractions):
        p.error(f"--fractions must lie in [0, 1), found {args.fractions}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    try:
        for model in args.models:
            rows += measure(model, args)
    except (SplitDNNError, ConfigError) as exc:
        print(f"bench_idle_gap: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(to_markdown(rows, args))
    if args.json:
        with open(args.json, "w") as f:
            doc = {"threads": args.threads, "repeats": args.repeats, "rounds": args.rounds, "rows": rows}
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
