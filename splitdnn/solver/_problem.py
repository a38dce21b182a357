"""The solver's internal view of a model: a compact graph plus per-tier costs, built from profiles.

Everything here is indexed by *vertex ids* (ints) for speed, but every id comes from an fx node name
and is translated back to names at the API boundary. Vertices are the placeholders, the compute nodes
and the single output sink, in the profile's topological order with the sink moved last; ``get_attr``
nodes are not vertices (they are free and replicated into every piece) and only matter for the device
memory model.

The per-tensor wire cost goes through one seam, :data:`TensorCostFn`: given a :class:`TensorHop` (a
producer's value crossing one link) it returns a :class:`WireCost` (bytes on the wire, encode and
decode time, codec name). The default :func:`raw_tensor_cost` sends raw bytes for free; a codec-aware
function (the best allowed codec per boundary tensor) plugs in at exactly this point and every solver,
the evaluator and the oracle pick it up.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from splitdnn.errors import ConfigError, ProfileError, ProfileMismatchError
from splitdnn.schema import Link, PowerModel, Profile, check_same_model

__all__ = [
    "OBJECTIVES",
    "Constraints",
    "Graph",
    "Problem",
    "TensorCostFn",
    "TensorHop",
    "Weights",
    "WireCost",
    "derived",
    "raw_tensor_cost",
]

#: what a solve can optimise: end-to-end latency, device energy, streaming throughput
OBJECTIVES = ("latency", "energy", "throughput")

PLACEHOLDER, COMPUTE, OUTPUT = 0, 1, 2

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# public records: constraints and the tensor-cost seam


@dataclass(frozen=True)
class Constraints:
    """Limits a plan must respect. The default constrains nothing.

    Memory model for ``device_memory_bytes``: the device must hold, at once, the parameters of every
    head (tier-0) compute node (``param_bytes``, plus the tensors of any ``get_attr`` node a head node
    reads, counted once) and the largest single activation a head node produces (``output_bytes``).
    It ignores allocator overhead and activations that are alive at the same time (a residual's skip
    tensor beside its branch), so it is a lower bound on the real peak: leave headroom.
    """

    device_memory_bytes: int | None = None  # cap on the head's memory (model above); None = no cap
    keep_input_on_device: bool = False  # the raw input never leaves tier 0: its readers stay on tier 0
    device_min_nodes: int = 0  # the first k compute nodes (topological order) stay on tier 0

    def __post_init__(self) -> None:
        cap = self.device_memory_bytes
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ConfigError(f"device_memory_bytes must be an integer >= 0 or None, found {cap!r}")
        if not isinstance(self.keep_input_on_device, bool):
            raise ConfigError(
                f"keep_input_on_device must be True or False, found {self.keep_input_on_device!r}"
            )
        k = self.device_min_nodes
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"device_min_nodes must be an integer >= 0, found {k!r}")


@dataclass(frozen=True)
class TensorHop:
    """One producer's value crossing one link: the argument of a :data:`TensorCostFn`."""

    node: str  # producer's fx node name
    nbytes: int  # raw size of the value (output_bytes)
    link_index: int  # link i joins tier i (sender, encodes) and tier i + 1 (receiver, decodes)
    link: Link
    sender: Profile  # profile of tier i: where the encode runs
    receiver: Profile  # profile of tier i + 1: where the decode runs


@dataclass(frozen=True)
class WireCost:
    """What sending one tensor over one link costs, as chosen by a :data:`TensorCostFn`."""

    wire_bytes: int  # bytes on the wire
    encode_ms: float = 0.0  # on the sending tier
    decode_ms: float = 0.0  # on the receiving tier
    codec: str = "raw"


#: (hop) -> cost of sending that tensor over that link. Each hop is priced on its own: a value relayed
#: over two links pays each link's encode/transfer/decode.
TensorCostFn = Callable[[TensorHop], WireCost]


def raw_tensor_cost(hop: TensorHop) -> WireCost:
    """The default: send the raw bytes, no encode or decode time."""
    return WireCost(hop.nbytes, 0.0, 0.0, "raw")


# --------------------------------------------------------------------------------------------------
# values derived from a profile, kept per profile object

#: entries kept before the whole store is dropped (a planner needs a handful per pair of profiles)
DERIVED_MAX = 128
_DERIVED: dict[tuple[int, str], tuple[weakref.ref[Profile], Any]] = {}


def _forget(key: tuple[int, str]) -> Callable[[weakref.ref[Profile]], None]:
    def forget(ref: weakref.ref[Profile]) -> None:
        entry = _DERIVED.get(key)
        if entry is not None and entry[0] is ref:  # not an entry made since for a new object
            _DERIVED.pop(key, None)

    return forget


def derived(profile: Profile, what: str, build: Callable[[Profile], T]) -> T:
    """``build(profile)``, computed once per profile object and kept while that object lives.

    A client's planner prices and solves the same two profiles on every re-plan, under a new link
    each time; the graph and the per-node lookups built from them do not change (profiles are frozen
    records, and a changed profile is a new object). Entries are keyed by identity, not equality (a
    profile compares every node), and go when their profile is freed (a weak reference, so a closed
    client's profiles do not stay; ``build`` must not return something that refers to the profile
    object itself). Past ``DERIVED_MAX`` live entries the store is dropped whole: ``clear`` is one
    atomic step, so threads share it without a lock (two racing threads may both build; either
    result is the same).
    """
    key = (id(profile), what)
    hit = _DERIVED.get(key)
    if hit is not None and hit[0]() is profile:
        return hit[1]  # type: ignore[no-any-return]
    value = build(profile)
    if len(_DERIVED) >= DERIVED_MAX:
        _DERIVED.clear()
    _DERIVED[key] = (weakref.ref(profile, _forget(key)), value)
    return value


def calibrated_ms_by_name(profile: Profile) -> dict[str, float]:
    """Node name -> calibrated compute time (ms), kept per profile (see :func:`derived`)."""
    return derived(profile, "calibrated_ms", lambda p: {n.name: n.calibrated_ms for n in p.nodes})


# --------------------------------------------------------------------------------------------------
# graph structure (shared by all tiers)


class Graph:
    """The model's dataflow graph as the solver sees it (structure only, no costs)."""

    @staticmethod
    def of(profile: Profile) -> Graph:
        """The graph of ``profile``, built once per profile object (see :func:`derived`)."""
        return derived(profile, "graph", Graph)

    def __init__(self, profile: Profile) -> None:
        nodes = profile.nodes
        attr_index: dict[str, int] = {}
        attr_bytes: list[int] = []
        for n in nodes:
            if n.op == "get_attr":
                attr_index[n.name] = len(attr_bytes)
                attr_bytes.append(n.output_bytes)
        order = [n for n in nodes if n.op not in ("get_attr", "output")]
        order += [n for n in nodes if n.op == "output"]  # the sink last (nothing reads it)
        self.names: tuple[str, ...] = tuple(n.name for n in order)
        self.index: dict[str, int] = {name: i for i, name in enumerate(self.names)}
        kind: list[int] = []
        preds: list[tuple[int, ...]] = []
        attrs: list[tuple[int, ...]] = []
        for n in order:
            kind.append(PLACEHOLDER if n.op == "placeholder" else OUTPUT if n.op == "output" else COMPUTE)
            ps: list[int] = []
            ats: list[int] = []
            for src in n.inputs:
                if src in attr_index:
                    if attr_index[src] not in ats:
                        ats.append(attr_index[src])
                    continue
                if src not in self.index:
                    raise ProfileError(f"node {n.name!r} reads {src!r}, which the solver cannot place")
                j = self.index[src]
                if kind[j] == OUTPUT:
                    raise ProfileError(f"node {n.name!r} reads the output node {src!r}; nothing may")
                if j not in ps:
                    ps.append(j)
            if n.op == "placeholder" and ps:
                raise ProfileError(f"placeholder {n.name!r} has inputs {list(n.inputs)}; inputs have none")
            preds.append(tuple(ps))
            attrs.append(tuple(ats))
        self.kind: tuple[int, ...] = tuple(kind)
        self.preds: tuple[tuple[int, ...], ...] = tuple(preds)
        succs: list[list[int]] = [[] for _ in order]
        for v, reads in enumerate(preds):
            for u in reads:
                succs[u].append(v)
        self.succs: tuple[tuple[int, ...], ...] = tuple(tuple(s) for s in succs)
        self.attrs_read: tuple[tuple[int, ...], ...] = tuple(attrs)
        self.attr_bytes: tuple[int, ...] = tuple(attr_bytes)
        self.n = len(order)
        self.out = self.n - 1
        self.placeholders: tuple[int, ...] = tuple(i for i, k in enumerate(self.kind) if k == PLACEHOLDER)
        self.compute: tuple[int, ...] = tuple(i for i, k in enumerate(self.kind) if k == COMPUTE)
        self.nbytes: tuple[int, ...] = tuple(n.output_bytes for n in order)
        self.param_bytes: tuple[int, ...] = tuple(n.param_bytes for n in order)
        self.out_bytes = order[-1].output_bytes
        # compute vertices from which the sink cannot be reached (dead code): they change which
        # (output tier, highest tier) cases the cut solvers must try
        reach = [False] * self.n
        reach[self.out] = True
        for v in range(self.n - 1, -1, -1):
            if not reach[v] and any(reach[w] for w in self.succs[v]):
                reach[v] = True
        self.dangling: tuple[int, ...] = tuple(v for v in self.compute if not reach[v])
        self.is_chain = self._is_chain()
        self._blocks: list[Block] | None = None
        self._separators: list[int] | None = None

    def _is_chain(self) -> bool:
        """One input, then each vertex reads exactly the previous one and is read only by the next."""
        if len(self.placeholders) != 1 or self.placeholders[0] != 0:
            return False
        for v in range(1, self.n):
            if self.preds[v] != (v - 1,):
                return False
        return all(self.succs[v] == (v + 1,) for v in range(self.n - 1))

    # separators and blocks ------------------------------------------------------------------------

    def separators(self) -> list[int]:
        """Vertices that no edge jumps over in topological order (always includes first and sink).

        If ``s`` is a separator, every edge runs inside ``[..s]`` or inside ``[s..]``, so once the tier
        of ``s`` is fixed the two sides are independent problems. This is the QDMP cut-vertex idea,
        phrased so that it stays exact for any DAG (dead code, nodes without inputs, several inputs).
        """
        if self._separators is None:
            reach = 0  # furthest vertex any edge from a strictly earlier vertex reaches
            seps = []
            for v in range(self.n):
                if reach <= v:
                    seps.append(v)
                for w in self.succs[v]:
                    if w > reach:
                        reach = w
            self._separators = seps
        return self._separators

    def blocks(self) -> list[Block]:
        """The pieces between consecutive separators, each with its two end separators."""
        if self._blocks is None:
            seps = self.separators()
            self._blocks = [Block(self, a, b) for a, b in zip(seps, seps[1:], strict=False)]
        return self._blocks


class Block:
    """Vertices strictly between two consecutive separators ``left`` and ``right``.

    Every edge of the graph lies in exactly one closed block ``[left..right]``; producers of a block are
    ``left`` and the inner vertices (all their readers are inside the closed block).
    """

    __slots__ = ("left", "right", "inner", "runs")

    def __init__(self, graph: Graph, left: int, right: int) -> None:
        self.left = left
        self.right = right
        self.inner = list(range(left + 1, right))
        # runs of two or more inner vertices r1 -> r2 -> ... where each r_i (i > 1) reads only r_{i-1}
        # and is its only reader: only r1 has outside inputs, only the last has outside readers
        inner = set(self.inner)
        nxt: dict[int, int] = {}
        for v in self.inner:
            s = graph.succs[v]
            if len(s) == 1 and s[0] in inner and len(graph.preds[s[0]]) == 1:
                nxt[v] = s[0]
        has_prev = set(nxt.values())
        self.runs: list[list[int]] = []
        for v in self.inner:
            if v in nxt and v not in has_prev:
                run = [v]
                while run[-1] in nxt:
                    run.append(nxt[run[-1]])
                self.runs.append(run)


# --------------------------------------------------------------------------------------------------
# costs


class Problem:
    """A graph plus everything that costs time: per-tier compute, per-link wire costs, result return."""

    def __init__(
        self,
        graph: Graph,
        profiles: Sequence[Profile],
        links: Sequence[Link],
        tensor_cost: TensorCostFn | None = None,
    ) -> None:
        self.graph = graph
        self.profiles = tuple(profiles)
        self.links = tuple(links)
        self.K = K = len(profiles)
        g = graph
        # ms[v][t]: calibrated compute time of vertex v on tier t (0 for placeholders and the sink)
        per_tier = []
        for p in profiles:
            by_name = calibrated_ms_by_name(p)
            per_tier.append(
                [by_name[name] if g.kind[v] == COMPUTE else 0.0 for v, name in enumerate(g.names)]
            )
        self.ms: list[list[float]] = [[per_tier[t][v] for t in range(K)] for v in range(g.n)]
        # wire costs per (producer, link): enc[u][i], xfer[u][i] (uplink ms), dec[u][i], wire[u][i]
        n_links = K - 1
        self.wire: list[list[int]] = [[0] * n_links for _ in range(g.n)]
        self.enc: list[list[float]] = [[0.0] * n_links for _ in range(g.n)]
        self.dec: list[list[float]] = [[0.0] * n_links for _ in range(g.n)]
        self.xfer: list[list[float]] = [[0.0] * n_links for _ in range(g.n)]
        self.codec: list[list[str]] = [["raw"] * n_links for _ in range(g.n)]
        for u in range(g.n):
            if not g.succs[u]:
                continue
            for i, link in enumerate(links):
                if tensor_cost is None or tensor_cost is raw_tensor_cost:
                    wire = g.nbytes[u]  # the raw default, without building a TensorHop per tensor
                else:
                    hop = TensorHop(g.names[u], g.nbytes[u], i, link, profiles[i], profiles[i + 1])
                    cost = tensor_cost(hop)
                    _check_wire_cost(cost, hop)
                    wire = cost.wire_bytes
                    self.enc[u][i] = float(cost.encode_ms)
                    self.dec[u][i] = float(cost.decode_ms)
                    self.codec[u][i] = cost.codec
                self.wire[u][i] = wire
                self.xfer[u][i] = link.uplink_ms(wire)
        # result: the sink's value travels back down from the output tier, link by link
        self.down: list[float] = [link.downlink_ms(g.out_bytes) for link in links]

    # weights of the linear objectives -------------------------------------------------------------

    def weights(self, objective: str, power: PowerModel | None = None) -> Weights:
        """Per-vertex, per-tensor and per-link terms that add up to latency (ms) or energy (J)."""
        K, g = self.K, self.graph
        hop = [[self.enc[u][i] + self.xfer[u][i] + self.dec[u][i] for i in range(K - 1)] for u in range(g.n)]
        if objective == "latency":
            return Weights([row[:] for row in self.ms], hop, [lk.rtt_ms for lk in self.links], self.down[:])
        if objective != "energy":
            raise ValueError(objective)  # throughput is min-max, not linear
        pw = power or PowerModel()
        cw, rw, iw = pw.compute_w * 1e-3, pw.radio_w * 1e-3, pw.idle_w * 1e-3  # W x ms -> J
        a = [[row[0] * cw] + [x * iw for x in row[1:]] for row in self.ms]
        b = []
        for u in range(g.n):
            bu = [x * iw for x in hop[u]]
            if K > 1:
                bu[0] = cw * self.enc[u][0] + rw * self.xfer[u][0] + iw * self.dec[u][0]
            b.append(bu)
        r = [lk.rtt_ms * iw for lk in self.links]
        s = [x * iw for x in self.down]
        if K > 1:
            s[0] = self.down[0] * rw
        return Weights(a, b, r, s)


class Weights:
    """A linear objective: ``sum a[v][tier] + sum b[u][link] per link a value crosses`` plus constants
    ``r[i]`` (paid when any vertex is above tier i) and ``s[i]`` (paid when the output is above tier i)."""

    __slots__ = ("a", "b", "r", "s")

    def __init__(self, a: list[list[float]], b: list[list[float]], r: list[float], s: list[float]) -> None:
        self.a, self.b, self.r, self.s = a, b, r, s

    def rtt_upto(self, m: int) -> float:
        return sum(self.r[:m])

    def result_upto(self, k: int) -> float:
        return sum(self.s[:k])


def _check_wire_cost(cost: object, hop: TensorHop) -> None:
    if not isinstance(cost, WireCost):
        raise ConfigError(
            f"tensor_cost must return a WireCost, returned {type(cost).__name__} for {hop.node!r}"
        )
    wire, enc, dec = cost.wire_bytes, cost.encode_ms, cost.decode_ms
    ok = (  # once per tensor per solve: plain tests, no generator (NaN fails ``>= 0``)
        isinstance(wire, int) and wire >= 0 and enc >= 0 and dec >= 0 and math.isfinite(enc + dec)
    )
    if not ok:
        raise ConfigError(
            f"tensor_cost returned {cost} for {hop.node!r} on link {hop.link_index}: expected wire_bytes "
            f"an integer >= 0 and finite encode_ms, decode_ms >= 0"
        )


# --------------------------------------------------------------------------------------------------
# validation of the public arguments


def check_inputs(
    profiles: Sequence[Profile],
    links: Sequence[Link],
    objective: str,
    constraints: Constraints | None,
    power: PowerModel | None,
) -> None:
    """Refuse mismatched profiles, a wrong number of links, unknown objectives and bad records."""
    if isinstance(profiles, Profile) or not isinstance(profiles, Sequence):
        raise ConfigError("profiles must be a sequence of Profile records, one per tier (device first)")
    if len(profiles) < 1:
        raise ConfigError("need at least one profile (the device's); got none")
    for i, p in enumerate(profiles):
        if not isinstance(p, Profile):
            raise ConfigError(f"profiles[{i}] must be a Profile, found {type(p).__name__}")
    if isinstance(links, Link) or not isinstance(links, Sequence):
        raise ConfigError("links must be a sequence of Link records, one between each pair of tiers")
    if len(links) != len(profiles) - 1:
        raise ConfigError(
            f"{len(profiles)} profile(s) (tiers) need {len(profiles) - 1} link(s), one between each "
            f"pair of consecutive tiers; got {len(links)}"
        )
    for i, lk in enumerate(links):
        if not isinstance(lk, Link):
            raise ConfigError(f"links[{i}] must be a Link, found {type(lk).__name__}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if constraints is not None and not isinstance(constraints, Constraints):
        raise ConfigError(f"constraints must be a Constraints record, found {type(constraints).__name__}")
    if power is not None and not isinstance(power, PowerModel):
        raise ConfigError(f"power must be a PowerModel, found {type(power).__name__}")
    check_same_model(profiles)
    first = profiles[0]
    shape = [(n.name, n.op, n.inputs) for n in first.nodes]
    for t, p in enumerate(profiles[1:], start=1):
        other = [(n.name, n.op, n.inputs) for n in p.nodes]
        if other != shape:
            where = next(
                (
                    f"node {i}: {a} vs {b}"
                    for i, (a, b) in enumerate(zip(shape, other, strict=False))
                    if a != b
                ),
                f"{len(shape)} vs {len(other)} nodes",
            )
            raise ProfileMismatchError(
                f"profiles of {first.model!r} for tier 0 and tier {t} have different graphs ({where}) "
                f"despite equal fingerprints; re-profile both with the same splitdnn version"
            )
