"""The hand-written max flow equals networkx's on random graphs, infinite edges included."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from splitdnn.solver._maxflow import min_cut, min_cut_networkx


@st.composite
def flow_graphs(draw: st.DrawFn):
    n = draw(st.integers(2, 12))
    m = draw(st.integers(0, 40))
    cap = st.one_of(st.just(math.inf), st.just(0.0), st.floats(1e-6, 1e6), st.floats(0, 10))
    edges = [(draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1)), draw(cap)) for _ in range(m)]
    edges = [(a, b, c) for a, b, c in edges if a != b]
    return n, edges


def _cut_value(n, edges, side) -> float:
    return sum(c for a, b, c in edges if side[a] and not side[b])


_TINY_BESIDE_HUGE = [
    (0, 1, 645678.0), (0, 1, 1e6), (0, 1, 76441.0), (0, 1, 1e6), (0, 1, 1e6), (0, 1, 1.0),
    (0, 1, 393241.0), (0, 1, 1e6), (0, 2, 5.960464477539063e-08), (0, 1, 845104.0),
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(flow_graphs())
@example((3, _TINY_BESIDE_HUGE))  # (found by hypothesis in CI, 2026-12-03)
@example((4, _TINY_BESIDE_HUGE))
def test_dinic_matches_networkx(graph) -> None:
    n, edges = graph
    tails, heads, caps = [e[0] for e in edges], [e[1] for e in edges], [e[2] for e in edges]
    value, side = min_cut(n, tails, heads, caps, 0, n - 1)
    ref, _ = min_cut_networkx(n, tails, heads, caps, 0, n - 1)
    if ref == math.inf:
        assert value == math.inf
        return
    # a residual counts as positive only above 1e-14 of the finite capacities' sum (the module's
    # tolerance): an edge under it, beside edges a million times larger, carries nothing (hypothesis
    # found 6e-8 beside 6e6 in all; the cut then differs by that edge, a few 1e-14 of the sum)
    tol = 1e-9 + 1e-12 * sum(c for c in caps if c != math.inf)
    assert math.isclose(value, ref, rel_tol=1e-9, abs_tol=tol)
    # the returned side is a real minimum cut separating s from t
    assert side[0] and not side[n - 1]
    assert math.isclose(_cut_value(n, edges, side), ref, rel_tol=1e-9, abs_tol=tol)


def test_unreachable_sink_and_parallel_edges() -> None:
    assert min_cut(3, [0], [1], [5.0], 0, 2) == (0.0, [True, True, False])
    value, side = min_cut(2, [0, 0, 0], [1, 1, 1], [1.0, 2.0, 3.5], 0, 1)
    assert value == 6.5 and side == [True, False]
    assert min_cut(2, [0], [1], [math.inf], 0, 1)[0] == math.inf
    # a finite edge parallel to an infinite one: the flow lands a rounding error below big-M
    tails, heads = [1, 1, 1, 1, 0, 1], [4, 4, 0, 4, 1, 0]
    caps = [228858.53026605377, 5.681487342266708, 716342.0, math.inf, math.inf, 217799.0]
    assert min_cut(5, tails, heads, caps, 0, 4)[0] == math.inf
