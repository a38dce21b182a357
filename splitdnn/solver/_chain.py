"""Chain models: every plan is a set of cut positions, enumerated exactly with prefix sums.

A chain is one input followed by compute nodes that each read only the previous one (AlexNet, VGG as
traced). A K-tier plan is then ``p_1 <= ... <= p_{K-1}``: nodes ``1..p_1`` on tier 0, ``p_1+1..p_2`` on
tier 1, and so on. Every objective and every constraint is evaluated per candidate in O(K) from prefix
sums, so two tiers cost O(n) and three O(n^2); the winner is priced again by the shared cost model.
"""

from __future__ import annotations

import itertools
import math

from splitdnn.schema import Profile

from ._problem import COMPUTE, PLACEHOLDER, Constraints, Graph, Problem, Weights

__all__ = ["chain_cuts", "solve_chain"]


def chain_cuts(profile: Profile) -> list[str]:
    """Compute nodes after which the model can be cut with that node's value as the only tensor
    crossing: the prefix of the topological order up to and including ``v`` runs on the device,
    everything after it elsewhere, and only ``v``'s value is read across.

    The model's inputs count as on the device (so a model whose input is read late has few cuts);
    parameters are ignored; cuts that leave no compute node after them are not listed. Same
    definition as :func:`splitdnn.graph.chain_cuts`, computed from a profile instead of a trace.
    """
    g = Graph.of(profile)
    last_read = [max(rs) if rs else -1 for rs in g.succs]
    starts = [0] * (g.n + 1)
    ends = [0] * (g.n + 1)
    for u in range(g.n):
        start = 0 if g.kind[u] == PLACEHOLDER else u
        if last_read[u] > start:
            starts[start] += 1
            ends[last_read[u]] += 1
    last_compute = g.compute[-1] if g.compute else -1
    cuts = []
    open_count = 0  # values produced so far (inputs always) that are still read later
    for p in range(g.n - 1):
        open_count += starts[p] - ends[p]
        if open_count == 1 and p < last_compute and g.kind[p] == COMPUTE and last_read[p] > p:
            cuts.append(g.names[p])
    return cuts


def solve_chain(
    problem: Problem,
    objective: str,
    w: Weights | None,
    constraints: Constraints | None,
    min_head: int,
) -> list[int] | None:
    """Best assignment of a chain for the objective; None when constraints leave no candidate.

    ``w`` holds the linear weights for latency/energy (None for throughput); ``min_head`` is the
    number of leading compute nodes pinned to the device.
    """
    g, K = problem.graph, problem.K
    chain = list(g.compute)  # vertex ids 1..n in order
    n = len(chain)
    # prefix sums per tier: pre[t][p] = cost of chain[0:p] on tier t
    if w is not None:
        node_cost = [[w.a[v][t] for v in chain] for t in range(K)]
    else:
        node_cost = [[problem.ms[v][t] for v in chain] for t in range(K)]
    pre = [list(itertools.accumulate(row, initial=0.0)) for row in node_cost]
    tensor = [0, *chain]  # tensor[p]: the value crossing a cut after p nodes (0 = the input)
    cap = constraints.device_memory_bytes if constraints is not None else None
    max_p1 = n
    if cap is not None:
        params = 0
        act = 0
        attrs: set[int] = set()
        max_p1 = -1
        for p in range(n + 1):
            if p > 0:
                v = chain[p - 1]
                params += g.param_bytes[v]
                for x in g.attrs_read[v]:
                    if x not in attrs:
                        attrs.add(x)
                        params += g.attr_bytes[x]
                act = max(act, g.nbytes[v])
            if params + act > cap:
                break
            max_p1 = p
    best = math.inf
    best_cuts: tuple[int, ...] | None = None
    for cuts in itertools.combinations_with_replacement(range(n + 1), K - 1):
        if K > 1 and not (min_head <= cuts[0] <= max_p1):
            continue
        if K == 1 and cap is not None and max_p1 < n:
            continue
        bounds = (0, *cuts, n)
        top = sum(1 for c in cuts if c < n) if n else 0  # tier of the last node = output tier
        if w is not None:
            val = 0.0
            for t in range(K):
                val += pre[t][bounds[t + 1]] - pre[t][bounds[t]]
            for i in range(top):
                val += w.b[tensor[cuts[i]]][i] + w.r[i] + w.s[i]
        else:
            stages = []
            for t in range(K):
                s = pre[t][bounds[t + 1]] - pre[t][bounds[t]]
                if t < top:
                    s += problem.enc[tensor[cuts[t]]][t]
                if 0 < t <= top:
                    s += problem.dec[tensor[cuts[t - 1]]][t - 1]
                stages.append(s)
            for i in range(top):
                stages.append(problem.xfer[tensor[cuts[i]]][i])
                stages.append(problem.down[i])
            val = max(stages)
        if val < best:
            best = val
            best_cuts = cuts
    if best_cuts is None:
        return None
    tier = [0] * g.n
    bounds = (0, *best_cuts, n)
    for t in range(K):
        for p in range(bounds[t], bounds[t + 1]):
            tier[chain[p]] = t
    tier[g.out] = tier[chain[-1]] if chain else 0
    return tier
