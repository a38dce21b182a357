"""Maximum flow / minimum s-t cut in pure Python (Dinic's algorithm, float capacities).

The cut graphs the solver builds are small after reduction (tens of vertices per block), where a tight
pure-Python Dinic is much faster than a general library; :func:`min_cut_networkx` computes the same
cut with networkx and is kept as a reference for tests and benchmarks.

Capacities are floats. "Infinite" edges are given as ``math.inf`` and replaced by a finite big-M larger
than the sum of all finite capacities, so arithmetic never produces ``inf - inf``; a residual capacity
counts as positive only above a tolerance relative to that sum.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["min_cut", "min_cut_networkx"]


def min_cut(
    n: int, tails: list[int], heads: list[int], caps: list[float], s: int, t: int
) -> tuple[float, list[bool]]:
    """Minimum s-t cut of a directed graph with ``n`` vertices and edges ``tails[k] -> heads[k]``.

    Returns ``(value, source_side)``: the cut capacity (``math.inf`` if every cut crosses an infinite
    edge) and, per vertex, whether it lies on the source side of a minimum cut (the vertices reachable
    from ``s`` in the final residual graph, i.e. the smallest source side).
    """
    finite = 0.0
    for c in caps:
        if c != math.inf:
            finite += c
    big = 2.0 * finite + 1.0
    eps = 1e-14 * (finite + 1e-300)  # ~100x above rounding noise on residuals of that magnitude
    # edge 2k is tails[k] -> heads[k], edge 2k + 1 its reverse; adj lists edge ids per vertex
    to: list[int] = []
    cap: list[float] = []
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b, c in zip(tails, heads, caps, strict=True):
        e = len(to)
        adj[a].append(e)
        adj[b].append(e + 1)
        to.append(b)
        to.append(a)
        cap.append(big if c == math.inf else c)
        cap.append(0.0)
    flow = 0.0
    while True:
        level = _levels(n, adj, to, cap, s, eps)
        if level[t] < 0:
            break
        it = [0] * n
        path: list[int] = []
        v = s
        while True:
            if v == t:
                f = min(cap[e] for e in path)
                flow += f
                cut_at = -1
                for k, e in enumerate(path):
                    cap[e] -= f
                    cap[e ^ 1] += f
                    if cut_at < 0 and cap[e] <= eps:
                        cut_at = k
                # resume from the tail of the first saturated edge
                del path[cut_at:]
                v = to[path[-1]] if path else s
                continue
            out = adj[v]
            i = it[v]
            lv = level[v] + 1
            while i < len(out):
                e = out[i]
                if cap[e] > eps and level[to[e]] == lv:
                    break
                i += 1
            it[v] = i
            if i < len(out):
                path.append(out[i])
                v = to[out[i]]
                continue
            # dead end: retreat
            if v == s:
                break
            level[v] = -1
            e = path.pop()
            v = to[e ^ 1]
            it[v] += 1
    side = [False] * n
    side[s] = True
    queue = deque([s])
    while queue:
        v = queue.popleft()
        for e in adj[v]:
            w = to[e]
            if not side[w] and cap[e] > eps:
                side[w] = True
                queue.append(w)
    if flow > 1.5 * finite + 0.5:  # more than any finite cut: every cut crosses an infinite edge
        return math.inf, side
    return flow, side


def _levels(n: int, adj: list[list[int]], to: list[int], cap: list[float], s: int, eps: float) -> list[int]:
    level = [-1] * n
    level[s] = 0
    queue = deque([s])
    while queue:
        v = queue.popleft()
        lv = level[v] + 1
        for e in adj[v]:
            w = to[e]
            if level[w] < 0 and cap[e] > eps:
                level[w] = lv
                queue.append(w)
    return level


def min_cut_networkx(
    n: int, tails: list[int], heads: list[int], caps: list[float], s: int, t: int
) -> tuple[float, list[bool]]:
    """The same cut computed with networkx's maximum flow (reference; imported lazily).

    The source side is recomputed from networkx's flow with a tolerance: ``networkx.minimum_cut``
    tests saturation with ``flow == capacity``, so float rounding on tiny edges can make it return a
    partition whose capacity exceeds the flow.
    """
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    for a, b, c in zip(tails, heads, caps, strict=True):
        if graph.has_edge(a, b):
            total = graph[a][b].get("capacity", math.inf) + c
            if total == math.inf:
                graph[a][b].pop("capacity", None)
            else:
                graph[a][b]["capacity"] = total
        elif c == math.inf:
            graph.add_edge(a, b)  # no capacity attribute = infinite in networkx
        else:
            graph.add_edge(a, b, capacity=c)
    try:
        # networkx's default preflow-push raises KeyError on graphs where the sink is unreachable
        # in its reverse BFS (seen with hypothesis); the reference needs correctness, not speed
        value, flows = nx.maximum_flow(graph, s, t, flow_func=nx.algorithms.flow.shortest_augmenting_path)
    except nx.NetworkXUnbounded:
        return math.inf, [v == s for v in range(n)]
    eps = 1e-14 * (sum(c for c in caps if c != math.inf) + 1e-300)
    residual: list[dict[int, float]] = [{} for _ in range(n)]
    for a, b, data in graph.edges(data=True):
        f = flows[a][b]
        residual[a][b] = residual[a].get(b, 0.0) + data.get("capacity", math.inf) - f
        residual[b][a] = residual[b].get(a, 0.0) + f
    side = [False] * n
    side[s] = True
    queue = deque([s])
    while queue:
        v = queue.popleft()
        for w, r in residual[v].items():
            if not side[w] and r > eps:
                side[w] = True
                queue.append(w)
    return float(value), side
