"""The cost model: the one function that prices any tier assignment (DESIGN section 4).

Every solver, the brute-force oracle and the public ``evaluate`` call :func:`evaluate_assignment`;
the fast solvers only decide *which* assignment, its reported cost always comes from here.

For tiers 0..K-1 and links 0..K-2 (link i joins tier i and i + 1):

* ``compute_ms[t]``: calibrated_ms of the compute nodes on tier t, from tier t's profile;
* boundary: a value produced on tier a and read (by a node or the output sink) on tiers up to b > a
  crosses links a..b-1 once each, however many readers it has (the DADS pay-once rule); each hop
  costs the :data:`~splitdnn.solver._problem.TensorCostFn`'s encode + wire bytes / uplink + decode;
* ``rtt_ms[i]``: link i's round trip when any node runs above tier i;
* ``result_ms``: the output's bytes travel back down from the output's tier to tier 0;
* ``total_ms``: the sum of all of the above (one request, nothing overlapped);
* device energy: compute_w x (device compute + device-side encode) + radio_w x (sending on link 0 +
  receiving the result on link 0) + idle_w x (the rest of the request);
* throughput: 1000 / slowest pipeline stage; stages are each tier's compute (plus the encodes it
  sends and the decodes it receives), each link's uplink transfer and each link's result downlink.
"""

from __future__ import annotations

from collections.abc import Sequence

from splitdnn.schema import BoundaryTensor, CostBreakdown, Plan, PowerModel

from ._problem import COMPUTE, Constraints, Problem

__all__ = [
    "device_memory",
    "evaluate_assignment",
    "make_plan",
    "objective_value",
    "stage_times",
    "strategy_of",
    "violations",
]


def evaluate_assignment(
    problem: Problem, tier: Sequence[int], power: PowerModel | None = None
) -> tuple[CostBreakdown, tuple[BoundaryTensor, ...]]:
    """Price an assignment. ``tier[v]`` is the tier of every vertex; the sink's entry is ignored and
    recomputed as the highest tier among its inputs. The assignment is assumed valid (monotone)."""
    g, K = problem.graph, problem.K
    n_links = K - 1
    tier = list(tier)
    out_tier = max((tier[u] for u in g.preds[g.out]), default=0)
    tier[g.out] = out_tier
    compute = [0.0] * K
    ms = problem.ms
    max_tier = 0
    for v in g.compute:
        t = tier[v]
        compute[t] += ms[v][t]
        if t > max_tier:
            max_tier = t
    transfer = [0.0] * n_links
    enc_link = [0.0] * n_links
    dec_link = [0.0] * n_links
    boundary = []
    for u in range(g.n - 1):
        readers = g.succs[u]
        if not readers:
            continue
        src = tier[u]
        dst = max(tier[w] for w in readers)
        if dst <= src:
            continue
        for i in range(src, dst):
            transfer[i] += problem.xfer[u][i]
            enc_link[i] += problem.enc[u][i]
            dec_link[i] += problem.dec[u][i]
        boundary.append(
            BoundaryTensor(
                node=g.names[u],
                nbytes=g.nbytes[u],
                wire_bytes=problem.wire[u][src],
                src_tier=src,
                dst_tier=dst,
                codec=problem.codec[u][src],
            )
        )
    rtt = tuple(problem.links[i].rtt_ms if max_tier > i else 0.0 for i in range(n_links))
    down = [problem.down[i] if out_tier > i else 0.0 for i in range(n_links)]
    result = sum(down)
    encode, decode = sum(enc_link), sum(dec_link)
    total = sum(compute) + encode + sum(transfer) + sum(rtt) + decode + result
    pw = power or PowerModel()
    if K > 1:
        device_busy = compute[0] + enc_link[0]
        radio = transfer[0] + down[0]
    else:
        device_busy, radio = compute[0], 0.0
    idle = max(total - device_busy - radio, 0.0)
    energy = (pw.compute_w * device_busy + pw.radio_w * radio + pw.idle_w * idle) * 1e-3
    tier_stages, link_stages = _stages(compute, enc_link, dec_link, transfer, down)
    slowest = max(tier_stages + link_stages)
    throughput = 1000.0 / slowest if slowest > 0 else float("inf")
    cost = CostBreakdown(
        compute_ms=tuple(compute),
        encode_ms=encode,
        transfer_ms=tuple(transfer),
        rtt_ms=rtt,
        decode_ms=decode,
        result_ms=result,
        total_ms=total,
        device_energy_j=energy,
        throughput_rps=throughput,
    )
    return cost, tuple(boundary)


def _stages(
    compute: list[float],
    enc_link: list[float],
    dec_link: list[float],
    transfer: list[float],
    down: list[float],
) -> tuple[list[float], list[float]]:
    """Pipeline stages: per tier (compute + encodes it sends + decodes it receives), per link (uplink
    transfer, result downlink)."""
    K, n_links = len(compute), len(transfer)
    tiers = [
        compute[t] + (enc_link[t] if t < n_links else 0.0) + (dec_link[t - 1] if t > 0 else 0.0)
        for t in range(K)
    ]
    return tiers, list(transfer) + list(down)


def stage_times(problem: Problem, tier: Sequence[int]) -> tuple[list[float], list[float]]:
    """``(tier stages, link stages)`` of an assignment; link stages are the K-1 uplinks then the K-1
    result downlinks."""
    g, K = problem.graph, problem.K
    n_links = K - 1
    tier = list(tier)
    out_tier = max((tier[u] for u in g.preds[g.out]), default=0)
    tier[g.out] = out_tier
    compute = [0.0] * K
    for v in g.compute:
        compute[tier[v]] += problem.ms[v][tier[v]]
    transfer = [0.0] * n_links
    enc_link = [0.0] * n_links
    dec_link = [0.0] * n_links
    for u in range(g.n - 1):
        readers = g.succs[u]
        if readers:
            for i in range(tier[u], max(tier[w] for w in readers)):
                transfer[i] += problem.xfer[u][i]
                enc_link[i] += problem.enc[u][i]
                dec_link[i] += problem.dec[u][i]
    down = [problem.down[i] if out_tier > i else 0.0 for i in range(n_links)]
    return _stages(compute, enc_link, dec_link, transfer, down)


def objective_value(cost: CostBreakdown, objective: str) -> float:
    """The number an objective minimises: total ms, device joules, or the slowest stage's ms."""
    if objective == "latency":
        return cost.total_ms
    if objective == "energy":
        return cost.device_energy_j
    return 1000.0 / cost.throughput_rps if cost.throughput_rps > 0 else float("inf")


def device_memory(problem: Problem, tier: Sequence[int]) -> int:
    """Bytes the head needs under the memory model of :class:`Constraints`."""
    g = problem.graph
    params = 0
    act = 0
    attrs: set[int] = set()
    for v in g.compute:
        if tier[v] == 0:
            params += g.param_bytes[v]
            attrs.update(g.attrs_read[v])
            if g.nbytes[v] > act:
                act = g.nbytes[v]
    return params + sum(g.attr_bytes[a] for a in attrs) + act


def violations(problem: Problem, tier: Sequence[int], constraints: Constraints | None) -> list[str]:
    """What an assignment breaks, in words (empty when it satisfies every constraint)."""
    if constraints is None:
        return []
    g = problem.graph
    found = []
    if constraints.keep_input_on_device:
        for p in g.placeholders:
            moved = [g.names[w] for w in g.succs[p] if g.kind[w] == COMPUTE and tier[w] != 0]
            if moved:
                found.append(f"input {g.names[p]!r} leaves the device: read on a later tier by {moved[:3]}")
            if g.out in g.succs[p] and max((tier[u] for u in g.preds[g.out]), default=0) > 0:
                found.append(f"input {g.names[p]!r} leaves the device: forwarded to the output")
    k = constraints.device_min_nodes
    moved = [g.names[v] for v in g.compute[:k] if tier[v] != 0]
    if moved:
        found.append(f"device_min_nodes={k} but {moved[:3]} run off the device")
    cap = constraints.device_memory_bytes
    if cap is not None:
        need = device_memory(problem, tier)
        if need > cap:
            found.append(f"the head needs {need} bytes, device_memory_bytes is {cap} (over by {need - cap})")
    return found


def strategy_of(problem: Problem, tier: Sequence[int]) -> str:
    g, K = problem.graph, problem.K
    on_device = [tier[v] == 0 for v in g.compute]
    if all(on_device):
        return "edge-only"
    if not any(on_device):
        return "cloud-only"
    return "split" if K == 2 else "three-tier" if K == 3 else "multi-tier"


def make_plan(
    problem: Problem, tier: Sequence[int], objective: str, power: PowerModel | None, exact: bool
) -> Plan:
    cost, boundary = evaluate_assignment(problem, tier, power)
    g = problem.graph
    device = problem.profiles[0]
    return Plan(
        model=device.model,
        fingerprint=device.fingerprint,
        num_tiers=problem.K,
        tiers={g.names[v]: tier[v] for v in g.compute},
        boundary=boundary,
        cost=cost,
        objective=objective,
        strategy=strategy_of(problem, tier),
        exact=exact,
        slowdown=device.slowdown,
    )
