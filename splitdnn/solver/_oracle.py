"""The brute-force oracle: every monotone assignment, priced by the shared cost model.

Deliberately simple (it is what every fast solver is tested against): compute nodes are visited in
topological order, each takes every tier no earlier than its inputs', and each complete assignment
that meets the constraints is priced by :func:`~splitdnn.solver._cost.evaluate_assignment`.
"""

from __future__ import annotations

from collections.abc import Iterator

from splitdnn.errors import ConfigError

from ._problem import Problem

__all__ = ["MAX_ORACLE_NODES", "monotone_assignments"]

#: brute force refuses graphs with more compute nodes than this (recursion depth, and sanity)
MAX_ORACLE_NODES = 200


def monotone_assignments(problem: Problem, limit: int) -> Iterator[list[int]]:
    """Yield every monotone assignment (the same list object, updated in place); refuse more than
    ``limit`` of them with a ConfigError."""
    g, K = problem.graph, problem.K
    order = g.compute
    if len(order) > MAX_ORACLE_NODES:
        raise ConfigError(
            f"brute_force enumerates every assignment and refuses graphs with more than "
            f"{MAX_ORACLE_NODES} compute nodes; this one has {len(order)}: use solve()"
        )
    tier = [0] * g.n
    count = 0

    def rec(i: int) -> Iterator[list[int]]:
        nonlocal count
        if i == len(order):
            count += 1
            if count > limit:
                raise ConfigError(
                    f"brute_force stops after max_assignments={limit} assignments; this graph "
                    f"({len(order)} compute nodes, {K} tiers) has more: use solve()"
                )
            yield tier
            return
        v = order[i]
        low = max((tier[u] for u in g.preds[v]), default=0)
        for t in range(low, K):
            tier[v] = t
            yield from rec(i + 1)
        tier[v] = 0

    yield from rec(0)
