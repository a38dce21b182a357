#!/usr/bin/env python3
"""Time the two-tier latency solve against plain networkx min cut on the unreduced DADS graph.

For each graph: a synthetic ResNet-50-shaped DAG (175 compute nodes), a synthetic 1,000-node
network-like DAG (residual, inception and attention blocks), and every device/server pairing of real
profiles found in ``profiles/`` (``<model>-<machine>-t<threads>.json``: the fewest threads is the
device, the most the server), it times with warm-up and repeats, in the same run:

* ``solve``: the full public call (``splitdnn.solver.solve``, default method: separator reduction,
  small cuts, dynamic programme), from profiles to plan;
* ``solve unreduced``: the same call with ``method="mincut"`` (one cut over the whole graph, our
  pure-Python max flow);
* ``networkx``: ``networkx.minimum_cut`` alone on the same unreduced DADS graph (built once beforehand,
  so networkx is not charged for graph construction), the one-cut case "something runs on the server".

It checks that every method finds the same optimum and prints a Markdown table (``--json FILE`` also
writes the numbers). Goals: ResNet-50 <= 10 ms per solve, 1,000 nodes <= 50 ms, >= 4x networkx.
Synthetic graphs are not measurements of real models; machines here are shared, so read ratios.

    python scripts/bench_solver.py [--repeats 15] [--warmup 2] [--uplink-mbps 5.85] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from splitdnn.errors import SplitDNNError  # noqa: E402
from splitdnn.schema import Link, Profile, check_same_model, load_profile  # noqa: E402
from splitdnn.solver import solve  # noqa: E402
from splitdnn.solver._cut import build_cut_graph, propagate  # noqa: E402
from splitdnn.solver._problem import Graph, Problem  # noqa: E402
from splitdnn.solver.synthetic import make_profiles, network_dag, resnet50_like  # noqa: E402


def timed(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p10_ms": samples[int(0.1 * (len(samples) - 1))],
        "p90_ms": samples[math.ceil(0.9 * (len(samples) - 1))],
        "repeats": repeats,
    }


def dads_networkx(profiles: list[Profile], links: list[Link]):
    """The unreduced two-tier DADS graph with the output on the server, as a networkx DiGraph."""
    import networkx as nx

    problem = Problem(Graph(profiles[0]), profiles, links)
    g = problem.graph
    lo = [0] * g.n
    hi = [0 if g.kind[v] == 0 else 1 for v in range(g.n)]
    lo[g.out] = 1  # the case "the output (hence something) runs on the server"
    propagate(g, lo, hi)
    w = problem.weights("latency")
    cg = build_cut_graph(g, w, 2, 0, lo, hi, range(g.n), range(g.n))
    assert cg is not None
    graph = nx.DiGraph()
    graph.add_nodes_from(range(cg.n))
    for a, b, c in zip(cg.tails, cg.heads, cg.caps, strict=True):
        if graph.has_edge(a, b):
            old = graph[a][b].get("capacity", math.inf)
            if old + c == math.inf:
                graph[a][b].pop("capacity", None)
            else:
                graph[a][b]["capacity"] = old + c
        elif c == math.inf:
            graph.add_edge(a, b)
        else:
            graph.add_edge(a, b, capacity=c)
    constant = cg.const + w.rtt_upto(1) + w.result_upto(1)
    return graph, cg.n - 2, cg.n - 1, constant


def bench(name: str, profiles: list[Profile], link: Link, warmup: int, repeats: int) -> dict:
    import networkx as nx

    links = [link]
    plan = solve(profiles, links)
    unreduced = solve(profiles, links, method="mincut")
    graph, s, t, constant = dads_networkx(profiles, links)
    nx_value = nx.minimum_cut(graph, s, t)[0] + constant
    # networkx solves one case; the optimum is the better of it and edge-only
    edge_total = sum(n.calibrated_ms for n in profiles[0].compute_nodes)
    best_nx = min(nx_value, edge_total)
    agree = math.isclose(plan.cost.total_ms, unreduced.cost.total_ms, rel_tol=1e-9) and math.isclose(
        plan.cost.total_ms, best_nx, rel_tol=1e-9
    )
    row = {
        "graph": name,
        "compute_nodes": len(profiles[0].compute_nodes),
        "dads_vertices": graph.number_of_nodes(),
        "dads_edges": graph.number_of_edges(),
        "uplink_mbps": link.uplink_mbps,
        "rtt_ms": link.rtt_ms,
        "solve": timed(lambda: solve(profiles, links), warmup, repeats),
        "solve_unreduced": timed(lambda: solve(profiles, links, method="mincut"), warmup, repeats),
        "networkx_min_cut": timed(lambda: nx.minimum_cut(graph, s, t), warmup, repeats),
        "plan": {
            "strategy": plan.strategy,
            "boundary": list(plan.boundary_nodes),
            "total_ms": plan.cost.total_ms,
            "exact": plan.exact,
            "slowdown": plan.slowdown,
        },
        "optima_agree": agree,
    }
    row["speedup_vs_networkx"] = row["networkx_min_cut"]["median_ms"] / row["solve"]["median_ms"]
    return row


def profile_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    pattern = re.compile(r"^(?P<model>.+)-(?P<machine>[^-]+)-t(?P<threads>\d+)\.json$")
    groups: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(folder.glob("*.json")):
        m = pattern.match(path.name)
        if m:
            groups.setdefault(f"{m['model']}-{m['machine']}", []).append((int(m["threads"]), path))
    pairs = []
    for key, items in sorted(groups.items()):
        items.sort()
        if len(items) >= 2:
            pairs.append((key, items[0][1], items[-1][1]))
    return pairs


def fmt(stats: dict[str, float]) -> str:
    return f"{stats['median_ms']:.2f} [{stats['p10_ms']:.2f}–{stats['p90_ms']:.2f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--uplink-mbps", type=float, default=5.85, help="device uplink (default: 4G, 5.85)")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--nodes", type=int, default=1000, help="size of the network-like synthetic DAG")
    ap.add_argument("--profiles", type=Path, default=ROOT / "profiles")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    link = Link(args.uplink_mbps, rtt_ms=args.rtt_ms)
    cases: list[tuple[str, list[Profile]]] = [
        ("synthetic resnet50-like", make_profiles(resnet50_like(), (1.0, 10.0))),
        (f"synthetic network-{args.nodes}", make_profiles(network_dag(args.nodes), (1.0, 10.0))),
    ]
    notes = []
    for key, dev, srv in profile_pairs(args.profiles):
        try:
            pair = [load_profile(dev), load_profile(srv)]
            check_same_model(pair)
        except SplitDNNError as exc:
            notes.append(f"skipped {key}: {exc}")
            continue
        cases.append((f"{key} ({dev.name} / {srv.name})", pair))
    rows = [bench(name, profiles, link, args.warmup, args.repeats) for name, profiles in cases]
    print(
        f"Two-tier latency solve, uplink {args.uplink_mbps} Mbit/s, RTT {args.rtt_ms} ms; "
        f"median [p10–p90] ms over {args.repeats} runs after {args.warmup} warm-up\n"
    )
    print(
        "| graph | compute nodes | DADS graph (V/E) | solve | solve unreduced | networkx min cut | "
        "speed-up vs networkx | plan | optima agree |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        plan = r["plan"]
        where = plan["strategy"] + (
            f" after {', '.join(plan['boundary'])}" if plan["strategy"] == "split" else ""
        )
        cells = [
            r["graph"],
            str(r["compute_nodes"]),
            f"{r['dads_vertices']}/{r['dads_edges']}",
            fmt(r["solve"]),
            fmt(r["solve_unreduced"]),
            fmt(r["networkx_min_cut"]),
            f"{r['speedup_vs_networkx']:.1f}x",
            f"{where} ({plan['total_ms']:.1f} ms)",
            "yes" if r["optima_agree"] else "NO",
        ]
        print("| " + " | ".join(cells) + " |")
    for note in notes:
        print(f"\n{note}")
    print(
        "\nsolve = the whole public call from profiles to plan; networkx = minimum_cut only, on a prebuilt "
        "graph. Synthetic graphs have FLOP-based times, not measurements."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "link": {"uplink_mbps": args.uplink_mbps, "rtt_ms": args.rtt_ms},
                    "results": rows,
                    "notes": notes,
                },
                indent=1,
            )
            + "\n"
        )
    return 0 if all(r["optima_agree"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
