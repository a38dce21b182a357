"""Exact minimisation of the linear objectives (latency, energy) by minimum s-t cuts.

**Layered cut (any number of tiers; DADS for two).** Each vertex v gets one binary variable per tier
boundary, ``z[v][j] = [tier(v) >= j]`` for j = 1..K-1, represented by a graph vertex that lies on the
sink side exactly when the variable is 1 (Ishikawa's construction). With s the source and t the sink:

* tier costs, a chain per vertex: ``s -> v^{K-1}`` (cost of tier K-1), ``v^{j+1} -> v^j`` (cost of
  tier j), ``v^1 -> t`` (cost of tier 0), plus infinite ``v^j -> v^{j+1}`` so the chain is cut once;
* monotone dataflow, per layer: infinite ``w^j -> u^j`` for every edge u -> w (a reader never runs
  on an earlier tier than what it reads);
* pay-once transfer, per layer j (link j-1): the cost of u's value crossing the link is paid when
  ``u^j`` is on the source side and any reader's ``w^j`` is on the sink side: an edge to the single
  reader, or, for several readers, ``u^j -> x`` carrying the cost and infinite ``x -> w^j`` to each
  reader from one auxiliary vertex x (the DADS construction).

Vertices whose variable is fixed by bounds (pins, placeholders, the output's case) are contracted
into s or t; edges between s and t become constants.

**Reduction (exact).** A *separator* is a vertex no edge jumps over in topological order, so fixing
its tier splits the problem in two. Between consecutive separators lies a block; for every pair of
end tiers (a, b) the block's best inner assignment is one small layered cut (or a direct sum when the
bounds already fix every inner vertex, which is the common case), and a dynamic programme over the
separators' tiers combines the blocks. This is QDMP's cut-vertex decomposition, stated so that it
stays exact for any DAG; long single-input single-output runs become blocks of size zero.

**Per-plan constants.** The RTT of link i is paid when any vertex runs above tier i and the result
travels down from the output's tier: both are settled by solving one case per (output tier k,
highest tier m) with the output pinned to k and every vertex capped at m, adding the constants as if
they were paid, and keeping the best case. Each case over-estimates no assignment's true cost less
than it is (so the best case is a true optimum), and in graphs without dead code m = k.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._maxflow import min_cut
from ._problem import Block, Graph, Problem, Weights

__all__ = [
    "CutGraph",
    "FlowFn",
    "build_cut_graph",
    "propagate",
    "solve_cases",
    "solve_linear",
    "suffix_bounds",
]

FlowFn = Callable[[int, list[int], list[int], list[float], int, int], tuple[float, list[bool]]]

_SRC, _SNK = -1, -2
_INF = math.inf


def propagate(g: Graph, lo: list[int], hi: list[int]) -> bool:
    """Tighten tier bounds along the dataflow in place; False when they become contradictory."""
    preds, succs = g.preds, g.succs
    for v in range(g.n):
        m = lo[v]
        for u in preds[v]:
            if lo[u] > m:
                m = lo[u]
        lo[v] = m
    for v in range(g.n - 1, -1, -1):
        m = hi[v]
        for w in succs[v]:
            if hi[w] < m:
                m = hi[w]
        hi[v] = m
        if m < lo[v]:
            return False
    return True


def solve_linear(
    problem: Problem,
    w: Weights,
    lo: list[int],
    hi: list[int],
    *,
    reduce: bool = True,
    flow: FlowFn = min_cut,
) -> tuple[list[int], float] | None:
    """Minimise ``sum a[v][tier] + pay-once transfers`` over monotone assignments within bounds.

    Returns ``(tier per vertex, value)`` (the sink gets a tier too) or None when the bounds admit no
    assignment. Constants ``w.r`` and ``w.s`` are not included (see :func:`solve_cases`).
    """
    g, K = problem.graph, problem.K
    lo, hi = lo[:], hi[:]
    if not propagate(g, lo, hi):
        return None
    if all(lo[v] == hi[v] for v in range(g.n)):
        return lo, _fixed_cost(g, w, lo, 0, range(g.n), range(g.n))
    if not reduce:
        res = _layered(g, w, K, 0, lo, hi, range(g.n), range(g.n), flow)
        if res is None:
            return None
        value, tier = res
        return tier, value
    return _solve_blocks(g, w, K, lo, hi, flow)


def solve_cases(
    problem: Problem,
    w: Weights,
    lo: list[int],
    hi: list[int],
    *,
    reduce: bool = True,
    flow: FlowFn = min_cut,
) -> list[tuple[list[int], float]]:
    """One optimal assignment per (output tier, highest tier) case, with the case's constants added.

    The caller prices each with the true cost model and keeps the best; see the module docstring.
    """
    g, K = problem.graph, problem.K
    found = []
    for k in range(K):
        for m in range(k, K) if g.dangling else (k,):
            lo2 = lo[:]
            hi2 = [min(h, m) for h in hi]
            out = g.out
            lo2[out] = max(lo2[out], k)
            hi2[out] = min(hi2[out], k)
            if lo2[out] > hi2[out]:
                continue
            res = solve_linear(problem, w, lo2, hi2, reduce=reduce, flow=flow)
            if res is not None:
                tier, value = res
                found.append((tier, value + w.result_upto(k) + w.rtt_upto(m)))
    return found


# --------------------------------------------------------------------------------------------------
# blocks and the dynamic programme


def suffix_bounds(
    problem: Problem, w: Weights, lo: list[int], hi: list[int], flow: FlowFn = min_cut
) -> list[float]:
    """Per vertex v, a lower bound on what vertices from v on add to the linear objective once every
    earlier vertex is fixed: the exact unconstrained optimum beyond the next separator (a dynamic
    programme run backwards over the blocks) plus the cheapest tier of each vertex before it.

    Used as the branch-and-bound bound under a memory cap (which can only raise the optimum).
    ``lo``/``hi`` must be propagated. Entries are ``inf`` where no completion exists.
    """
    g, K = problem.graph, problem.K
    a = w.a
    seps = g.separators()
    blocks = g.blocks()
    last = seps[-1]
    after: list[dict[int, float]] = [{}] * len(seps)
    after[-1] = {t: 0.0 for t in range(lo[last], hi[last] + 1)}
    for i in range(len(blocks) - 1, -1, -1):
        blk = blocks[i]
        nxt = after[i + 1]
        here: dict[int, float] = {}
        for ta in range(lo[blk.left], hi[blk.left] + 1):
            best = _INF
            for tb, rest in nxt.items():
                if rest == _INF:
                    continue
                res = _block_cost(g, w, K, blk, ta, tb, lo, hi, flow)
                if res is not None:
                    best = min(best, res[0] + a[blk.right][tb] + rest)
            here[ta] = best
        after[i] = here
    bound = [0.0] * g.n
    for i, sep in enumerate(seps):
        bound[sep] = min((a[sep][t] + r for t, r in after[i].items()), default=_INF)
    for blk in blocks:
        acc = bound[blk.right]
        for v in reversed(blk.inner):
            acc += min(a[v][t] for t in range(lo[v], hi[v] + 1))
            bound[v] = acc
    return bound


def _solve_blocks(
    g: Graph, w: Weights, K: int, lo: list[int], hi: list[int], flow: FlowFn
) -> tuple[list[int], float] | None:
    a = w.a
    seps = g.separators()
    first = seps[0]
    f = {t: a[first][t] for t in range(lo[first], hi[first] + 1)}
    back: list[dict[int, tuple[int, list[int]]]] = []
    for blk in g.blocks():
        right = blk.right
        nf: dict[int, float] = {}
        ch: dict[int, tuple[int, list[int]]] = {}
        for tb in range(lo[right], hi[right] + 1):
            best = _INF
            pick: tuple[int, list[int]] | None = None
            for ta, fa in f.items():
                if fa >= best:
                    continue
                res = _block_cost(g, w, K, blk, ta, tb, lo, hi, flow)
                if res is None:
                    continue
                val = fa + res[0]
                if val < best:
                    best = val
                    pick = (ta, res[1])
            if pick is not None:
                nf[tb] = best + a[right][tb]
                ch[tb] = pick
        if not nf:
            return None
        f = nf
        back.append(ch)
    t_end = min(f, key=lambda t: f[t])
    value = f[t_end]
    tier = [0] * g.n
    tb = t_end
    for blk, ch in zip(reversed(g.blocks()), reversed(back), strict=True):
        tier[blk.right] = tb
        ta, inner = ch[tb]
        tier[blk.left + 1 : blk.right] = inner
        tb = ta
    tier[first] = tb
    return tier, value


def _block_cost(
    g: Graph,
    w: Weights,
    K: int,
    blk: Block,
    ta: int,
    tb: int,
    lo: list[int],
    hi: list[int],
    flow: FlowFn,
) -> tuple[float, list[int]] | None:
    """Best cost of a block's inner vertices and its producers' transfers with its ends at ta, tb."""
    left, right = blk.left, blk.right
    llo = lo[left : right + 1]
    lhi = hi[left : right + 1]
    llo[0] = lhi[0] = ta
    llo[-1] = lhi[-1] = tb
    size = right - left + 1
    preds, succs = g.preds, g.succs
    for i in range(1, size):
        m = llo[i]
        for u in preds[left + i]:
            x = llo[u - left]
            if x > m:
                m = x
        llo[i] = m
    if llo[-1] > tb:
        return None
    fixed = True
    for i in range(size - 2, -1, -1):
        m = lhi[i]
        for x in succs[left + i]:
            y = lhi[x - left]
            if y < m:
                m = y
        lhi[i] = m
        if m < llo[i]:
            return None
        if m != llo[i]:
            fixed = False
    costed = range(left + 1, right)
    producers = range(left, right)
    if fixed:
        return _fixed_cost(g, w, llo, left, costed, producers), llo[1:-1]
    res = _layered(g, w, K, left, llo, lhi, costed, producers, flow, runs=blk.runs if K == 2 else None)
    if res is None:
        return None
    value, tier = res
    return value, tier[1:-1]


def _fixed_cost(g: Graph, w: Weights, tier: list[int], base: int, costed: range, producers: range) -> float:
    """Cost of a fully fixed assignment; ``tier`` is indexed from vertex ``base``."""
    a, b, succs = w.a, w.b, g.succs
    total = 0.0
    for v in costed:
        total += a[v][tier[v - base]]
    for u in producers:
        readers = succs[u]
        if not readers:
            continue
        src = tier[u - base]
        dst = src
        for x in readers:
            t = tier[x - base]
            if t > dst:
                dst = t
        if dst > src:
            bu = b[u]
            for i in range(src, dst):
                total += bu[i]
    return total


# --------------------------------------------------------------------------------------------------
# the layered cut


class CutGraph:
    """A built layered cut graph: ``n`` vertices (source ``n - 2``, sink ``n - 1``), edges, a constant
    (cost of edges between contracted vertices) and, per local vertex and layer, its graph vertex
    (collapsed runs' inner vertices have none)."""

    __slots__ = ("n", "tails", "heads", "caps", "const", "ids", "runs")

    def __init__(
        self,
        n: int,
        tails: list[int],
        heads: list[int],
        caps: list[float],
        const: float,
        ids: list[list[int]],
        runs: list[tuple[list[int], int]],
    ) -> None:
        self.n, self.tails, self.heads, self.caps, self.const, self.ids = n, tails, heads, caps, const, ids
        self.runs = runs  # collapsed runs and, per run, the index of the last vertex before its best cut


def _layered(
    g: Graph,
    w: Weights,
    K: int,
    base: int,
    lo: list[int],
    hi: list[int],
    costed: range,
    producers: range,
    flow: FlowFn,
    runs: list[list[int]] | None = None,
) -> tuple[float, list[int]] | None:
    """Min cut over the vertices ``base .. base + len(lo) - 1`` with local bounds ``lo``/``hi``.

    Node costs count for ``costed`` vertices, transfers for ``producers`` (whose readers must all lie
    in the range). Returns ``(value, local tiers)`` or None when infeasible. ``runs`` (two tiers only)
    are collapsed into gadgets, see :func:`build_cut_graph`.
    """
    cg = build_cut_graph(g, w, K, base, lo, hi, costed, producers, runs)
    if cg is None:
        return None
    s, t = cg.n - 2, cg.n - 1
    if cg.tails:
        value, side = flow(cg.n, cg.tails, cg.heads, cg.caps, s, t)
    else:
        value, side = 0.0, [True] * (cg.n - 1) + [False]
    if value == _INF:
        return None
    tier = []
    for row in cg.ids:
        count = 0
        for j in range(1, K):
            x = row[j]
            if x == _SNK or (x >= 0 and not side[x]):
                count += 1
        tier.append(count)
    for run, cut_after in cg.runs:  # a collapsed run: both ends known, the inside follows
        first, last = tier[run[0] - base], tier[run[-1] - base]
        for k, v in enumerate(run):
            tier[v - base] = first if first == last else (0 if k <= cut_after else 1)
    return cg.const + value, tier


def build_cut_graph(
    g: Graph,
    w: Weights,
    K: int,
    base: int,
    lo: list[int],
    hi: list[int],
    costed: range,
    producers: range,
    runs: list[list[int]] | None = None,
) -> CutGraph | None:
    """The layered cut graph of the module docstring (None when the bounds contradict).

    With two tiers, each of ``runs`` whose vertices are all free is collapsed into a gadget on its
    first vertex f and last vertex l (a run is all on the device, all on the server, or cut once
    inside): ``s -> f`` carries the all-server cost, ``l -> t`` the all-device cost, ``f -> l`` the
    best cut inside (device prefix + transfer + server suffix), and ``l -> f`` is infinite.
    """
    size = len(lo)
    a = w.a
    collapsed: list[tuple[list[int], int]] = []
    skip: set[int] = set()  # run members whose own cost and transfers the gadget carries
    gadgets = []
    if K == 2 and runs:
        for run in runs:
            if any(lo[v - base] != 0 or hi[v - base] != 1 for v in run):
                continue
            all_dev = sum(a[v][0] for v in run)
            all_srv = sum(a[v][1] for v in run)
            best, cut_after, dev, srv_done = _INF, 0, 0.0, 0.0
            for k, v in enumerate(run[:-1]):
                dev += a[v][0]
                srv_done += a[v][1]
                inside = dev + (all_srv - srv_done) + w.b[v][0]  # run[:k+1] on the device, v's value sent
                if inside < best:
                    best, cut_after = inside, k
            collapsed.append((run, cut_after))
            gadgets.append((run[0], run[-1], all_dev, all_srv, best))
            skip.update(run)
    middle = {v for run, _ in collapsed for v in run[1:-1]}
    ids: list[list[int]] = []
    nid = 0
    for i in range(size):
        row = [_SNK] * K  # row[0] unused (z^0 = 1 always)
        if i + base in middle:
            ids.append(row)  # never referenced: middle vertices only touch their own run
            continue
        low, high = lo[i], hi[i]
        for j in range(1, K):
            if low >= j:
                row[j] = _SNK
            elif high < j:
                row[j] = _SRC
            else:
                row[j] = nid
                nid += 1
        ids.append(row)
    tails: list[int] = []
    heads: list[int] = []
    caps: list[float] = []
    const = 0.0

    def add(x: int, y: int, c: float) -> None:
        nonlocal const
        if x == _SNK or y == _SRC or x == y or c <= 0.0:
            return
        if x == _SRC and y == _SNK:
            const += c
            return
        tails.append(x)
        heads.append(y)
        caps.append(c)

    for first, last, all_dev, all_srv, inside in gadgets:
        f, lv = ids[first - base][1], ids[last - base][1]
        add(_SRC, f, all_srv)
        add(lv, _SNK, all_dev)
        add(f, lv, inside)
        add(lv, f, _INF)
    for v in costed:
        if v in skip:
            continue
        row = ids[v - base]
        av = a[v]
        add(_SRC, row[K - 1], av[K - 1])
        for j in range(1, K - 1):
            add(row[j + 1], row[j], av[j])
            add(row[j], row[j + 1], _INF)
        add(row[1], _SNK, av[0])
    succs, b = g.succs, w.b
    last_of_run = {run[-1] for run, _ in collapsed}
    for u in producers:
        readers = succs[u]
        if not readers or (u in skip and u not in last_of_run):
            continue
        urow = ids[u - base]
        bu = b[u]
        for j in range(1, K):
            uj = urow[j]
            for x in readers:
                add(ids[x - base][j], uj, _INF)
            cost = bu[j - 1]
            if uj == _SNK or cost <= 0.0:
                continue
            targets = []
            to_sink = False
            for x in readers:
                y = ids[x - base][j]
                if y == _SNK:
                    to_sink = True
                    break
                if y != _SRC and y not in targets:
                    targets.append(y)
            if to_sink:
                add(uj, _SNK, cost)
            elif len(targets) == 1:
                add(uj, targets[0], cost)
            elif targets:
                aux = nid
                nid += 1
                add(uj, aux, cost)
                for y in targets:
                    add(aux, y, _INF)
    if const == _INF:
        return None
    s, t = nid, nid + 1
    tails = [s if x == _SRC else t if x == _SNK else x for x in tails]
    heads = [s if y == _SRC else t if y == _SNK else y for y in heads]
    return CutGraph(nid + 2, tails, heads, caps, const, ids, collapsed)
