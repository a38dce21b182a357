"""Exact search for what a cut cannot express: the throughput objective and a binding memory cap.

Throughput is a min-max (the slowest pipeline stage) and the memory cap is a knapsack-like bound on
the head; neither is a min-cut. Both are solved by depth-first **branch and bound** over monotone
assignments in topological order: each node takes a tier no earlier than its inputs', costs are
added incrementally, and a subtree is dropped when a lower bound on its best objective reaches the
incumbent or its head already exceeds the memory cap (memory only grows as nodes join the head).
When the search finishes within its budget of node visits the result is proven optimal; otherwise
the best plan found is returned and marked inexact.

The incumbent comes from heuristics built on the exact linear solver:

* throughput: multiplicative weights over the stages: minimise a weighted sum of stage times by
  min cut, raise the weight of whichever stage came out slowest, repeat; keep the best plan seen;
* memory: Lagrangian relaxation: for a cap on the largest head activation (nodes producing more are
  pushed off the device) and a price per parameter byte on the device, solve by min cut; bisect the
  price until the head fits; keep the best plan that fits.
"""

from __future__ import annotations

import math
from typing import Any

from splitdnn.schema import PowerModel

from ._cost import device_memory, evaluate_assignment, objective_value, stage_times
from ._cut import propagate, solve_cases, solve_linear, suffix_bounds
from ._problem import COMPUTE, OUTPUT, PLACEHOLDER, Problem, Weights

__all__ = ["branch_and_bound", "memory_candidates", "throughput_candidates"]


def throughput_candidates(problem: Problem, lo: list[int], hi: list[int], iters: int = 12) -> list[list[int]]:
    """Plans from minimising weighted stage sums, re-weighting toward the slowest stage."""
    g, K = problem.graph, problem.K
    n_links = K - 1
    lam_t = [1.0] * K
    lam_l = [1.0] * n_links
    found: list[list[int]] = []
    ms, xfer, enc, dec = problem.ms, problem.xfer, problem.enc, problem.dec
    for _ in range(iters):
        a = [[lam_t[t] * ms[v][t] for t in range(K)] for v in range(g.n)]
        b = [
            [lam_l[i] * xfer[u][i] + lam_t[i] * enc[u][i] + lam_t[i + 1] * dec[u][i] for i in range(n_links)]
            for u in range(g.n)
        ]
        res = solve_linear(problem, Weights(a, b, [0.0] * n_links, [0.0] * n_links), lo, hi)
        if res is None:
            break
        tier = res[0]
        found.append(tier)
        stages_t, stages_l = stage_times(problem, tier)
        stages_l = stages_l[:n_links]
        top = max(stages_t + stages_l) or 1.0
        lam_t = [x * math.exp(2.0 * s / top) for x, s in zip(lam_t, stages_t, strict=True)]
        lam_l = [x * math.exp(2.0 * s / top) for x, s in zip(lam_l, stages_l, strict=True)]
        norm = sum(lam_t) + sum(lam_l)
        lam_t = [x / norm for x in lam_t]
        lam_l = [x / norm for x in lam_l]
    return found


def memory_candidates(
    problem: Problem,
    w: Weights,
    lo: list[int],
    hi: list[int],
    cap: int,
    *,
    thresholds: int = 12,
    steps: int = 12,
) -> list[list[int]]:
    """Plans whose head fits ``cap``, from the Lagrangian relaxation described in the module docstring."""
    g, K = problem.graph, problem.K
    sizes = sorted({g.nbytes[v] for v in g.compute if g.nbytes[v] <= cap}, reverse=True)
    if len(sizes) > thresholds:  # spread the tried activation caps over the range
        step = (len(sizes) - 1) / (thresholds - 1)
        sizes = sorted({sizes[round(i * step)] for i in range(thresholds)}, reverse=True)
    sizes.append(-1)  # empty head
    found: list[list[int]] = []
    scale_cost = sum(w.a[v][0] for v in g.compute) + 1e-12
    scale_bytes = sum(g.param_bytes[v] for v in g.compute) + 1
    for theta in sizes:
        lo2 = lo[:]
        for v in g.compute:
            if g.nbytes[v] > theta:
                lo2[v] = max(lo2[v], 1)
        hi2 = hi[:]
        if not propagate(g, lo2, hi2):
            continue

        def attempt(price: float, lo2: list[int] = lo2, hi2: list[int] = hi2) -> list[int] | None:
            a = [row[:] for row in w.a]
            for v in g.compute:
                a[v][0] += price * g.param_bytes[v]
            cands = solve_cases(problem, Weights(a, w.b, w.r, w.s), lo2, hi2)
            fits = [t for t, _ in cands if device_memory(problem, t) <= cap]
            found.extend(fits)
            return fits[0] if fits else None

        if attempt(0.0) is not None:
            continue
        price = scale_cost / scale_bytes
        for _ in range(40):
            if attempt(price) is not None:
                break
            price *= 4.0
        else:
            continue
        low, high = 0.0, price
        for _ in range(steps):
            mid = (low + high) / 2
            if attempt(mid) is not None:
                high = mid
            else:
                low = mid
    if K > 1:  # the minimal head, everything else one tier up: always fits if anything does
        found.append([0 if hi[v] == 0 else 1 if g.kind[v] == COMPUTE else 0 for v in range(g.n)])
    return found


def branch_and_bound(
    problem: Problem,
    objective: str,
    w: Weights | None,
    power: PowerModel | None,
    lo: list[int],
    hi: list[int],
    cap: int | None,
    incumbent: list[int] | None,
    budget: int,
) -> tuple[list[int] | None, bool]:
    """Best assignment within bounds (and memory cap); returns ``(tier, proven_optimal)``.

    ``w`` are the linear weights (latency/energy) or None for throughput. ``lo``/``hi`` must already be
    propagated. The incumbent, if any, must be feasible.
    """
    g, ms = problem.graph, problem.ms
    order = [v for v in range(g.n) if g.kind[v] != PLACEHOLDER]  # the order _Search decides in
    # rest[p]: lower bound on what the vertices from order[p] on still add
    rest = [0.0] * (len(order) + 1)
    if w is not None:
        by_vertex = suffix_bounds(problem, w, lo, hi)
        for p, v in enumerate(order):
            rest[p] = by_vertex[v]
    else:
        for p in range(len(order) - 1, -1, -1):
            v = order[p]
            rest[p] = rest[p + 1] + min(ms[v][t] for t in range(lo[v], hi[v] + 1))
    best = math.inf
    best_tier: list[int] | None = None
    if incumbent is not None:
        cost, _ = evaluate_assignment(problem, incumbent, power)
        best = objective_value(cost, objective)
        best_tier = list(incumbent)
    search = _Search(problem, w, lo, hi, incumbent)
    complete = search.run(rest, best, best_tier, cap, budget)
    return search.best_tier, complete


#: what undoes one assignment: the scalars before it and (list, index, old value) entries
_Undo = tuple[float, int, int, int, list[tuple[list[Any], int, Any]]]


class _Search:
    """Depth-first search state: the partial assignment and its running sums, undone by logs."""

    __slots__ = (
        "problem", "g", "K", "w", "lo", "hi", "hint", "order", "tier", "read_hi", "comp", "xl", "el", "dl",
        "lin", "top", "params", "act", "attr_count", "rtt_pre", "res_pre", "best_tier",
    )  # fmt: skip

    def __init__(
        self, problem: Problem, w: Weights | None, lo: list[int], hi: list[int], hint: list[int] | None
    ) -> None:
        g = problem.graph
        self.problem, self.g, self.K, self.w = problem, g, problem.K, w
        self.lo, self.hi, self.hint = lo, hi, hint
        self.order = [v for v in range(g.n) if g.kind[v] != PLACEHOLDER]  # compute vertices, then the sink
        self.tier = [0] * g.n
        self.read_hi = [0] * g.n  # per producer: its own tier, raised to its readers' highest so far
        n_links = max(problem.K - 1, 1)
        self.comp = [0.0] * problem.K  # compute ms per tier
        self.xl = [0.0] * n_links  # uplink ms per link
        self.el = [0.0] * n_links  # encode ms per link
        self.dl = [0.0] * n_links  # decode ms per link
        self.lin = 0.0  # linear objective so far (latency/energy)
        self.top = 0  # highest tier used so far
        self.params = 0  # head parameter bytes
        self.act = 0  # head's largest activation
        self.attr_count = [0] * len(g.attr_bytes)
        if w is not None:
            self.rtt_pre = [w.rtt_upto(m) for m in range(problem.K)]
            self.res_pre = [w.result_upto(k) for k in range(problem.K)]
        self.best_tier: list[int] | None = None

    def choices(self, p: int) -> list[int]:
        v = self.order[p]
        low = self.lo[v]
        for u in self.g.preds[v]:
            if self.tier[u] > low:
                low = self.tier[u]
        if self.g.kind[v] == OUTPUT:
            return [low] if low <= self.hi[v] else []
        opts = list(range(low, self.hi[v] + 1))
        hint = self.hint
        if hint is not None and hint[v] in opts and opts[0] != hint[v]:
            opts.remove(hint[v])
            opts.insert(0, hint[v])
        return opts

    def assign(self, v: int, t: int) -> _Undo:
        g, problem = self.g, self.problem
        log: list[tuple[list[Any], int, Any]] = []  # (list, index, old value)
        undo = (self.lin, self.top, self.params, self.act, log)
        self.tier[v] = t
        if g.kind[v] == COMPUTE:
            comp = self.comp
            log.append((comp, t, comp[t]))
            comp[t] += problem.ms[v][t]
            if self.w is not None:
                self.lin += self.w.a[v][t]
            if t > self.top:
                self.top = t
            if t == 0:
                self.params += g.param_bytes[v]
                for x in g.attrs_read[v]:
                    if self.attr_count[x] == 0:
                        self.params += g.attr_bytes[x]
                    self.attr_count[x] += 1
                if g.nbytes[v] > self.act:
                    self.act = g.nbytes[v]
        read_hi = self.read_hi
        for u in g.preds[v]:
            r = read_hi[u]
            if t > r:
                log.append((read_hi, u, r))
                read_hi[u] = t
                for i in range(r, t):
                    for target, cost in (
                        (self.xl, problem.xfer),
                        (self.el, problem.enc),
                        (self.dl, problem.dec),
                    ):
                        log.append((target, i, target[i]))
                        target[i] += cost[u][i]
                    if self.w is not None:
                        self.lin += self.w.b[u][i]
        log.append((read_hi, v, read_hi[v]))
        read_hi[v] = t
        return undo

    def undo(self, v: int, rec: _Undo) -> None:
        self.lin, self.top, self.params, self.act, log = rec
        for target, i, old in reversed(log):
            target[i] = old
        if self.g.kind[v] == COMPUTE and self.tier[v] == 0:
            for x in self.g.attrs_read[v]:
                self.attr_count[x] -= 1

    def slowest(self, top_out: int) -> float:
        K, n_links, down = self.K, self.K - 1, self.problem.down
        worst = 0.0
        for t in range(K):
            s = self.comp[t] + (self.el[t] if t < n_links else 0.0) + (self.dl[t - 1] if t > 0 else 0.0)
            worst = max(worst, s)
        for i in range(n_links):
            worst = max(worst, self.xl[i], down[i] if i < top_out else 0.0)
        return worst

    def run(
        self, rest: list[float], best: float, best_tier: list[int] | None, cap: int | None, budget: int
    ) -> bool:
        """Search; keeps ``best_tier``; True when the whole tree was explored (proof of optimality)."""
        self.best_tier = best_tier
        order, K, linear = self.order, self.K, self.w is not None
        out = self.g.out
        # frames: [position, choices, next choice, undo record of the current choice or None]
        frames: list[list] = [[0, self.choices(0), 0, None]] if order else []
        steps = 0
        while frames:
            frame = frames[-1]
            p = frame[0]
            v = order[p]
            if frame[3] is not None:
                self.undo(v, frame[3])
                frame[3] = None
            if frame[2] >= len(frame[1]):
                frames.pop()
                continue
            t = frame[1][frame[2]]
            frame[2] += 1
            frame[3] = self.assign(v, t)
            steps += 1
            if steps > budget:
                return False
            if cap is not None and self.params + self.act > cap:
                continue  # the head only grows deeper in the tree
            if linear:
                bound = self.lin + self.rtt_pre[self.top] + rest[p + 1]
            else:
                bound = max(self.slowest(0), (sum(self.comp) + rest[p + 1]) / K)
            if bound >= best:
                continue
            if p + 1 == len(order):
                value = (
                    self.lin + self.rtt_pre[self.top] + self.res_pre[self.tier[out]]
                    if linear
                    else (self.slowest(self.tier[out]))
                )
                if value < best:
                    best = value
                    self.best_tier = self.tier[:]
                continue
            frames.append([p + 1, self.choices(p + 1), 0, None])
        return True
