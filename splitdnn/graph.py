"""Trace a model into a DAG of named nodes and split it into one runnable piece per tier (torch).

``trace`` captures a model with ``torch.fx`` symbolic tracing, falling back to ``torch.export``, and
checks that the captured graph gives the model's own output. Every node is keyed by its fx node name.
A plan assigns every compute node a tier (0 = device, 1 = next hop, ...), monotone along edges;
``split`` applies it and builds one ``torch.fx.GraphModule`` per tier. A value produced on tier ``a``
and read on tier ``c > a`` is handed from piece to piece (relayed through the tiers between), so the
pieces run in order compose to the whole model::

    traced = trace(model, torch.randn(1, 3, 32, 32), name="resnet18")
    head, tail = split(traced, {"conv1": 0, "bn1": 0, ..., "fc": 1})
    run_pieces([head, tail], x)            # == model(x), exactly

Parameters and buffers read directly (``get_attr`` nodes) are copied into every piece that reads them
and never cross a cut; pieces share the traced model's submodules and weights, none are copied.

Errors: :class:`~splitdnn.errors.TraceError` (a model neither tracer captures),
:class:`~splitdnn.errors.ConfigError` (example inputs the model rejects, values missing when running
a piece) and :class:`~splitdnn.errors.PlanError` (a plan that is not a valid partition of the graph).
"""

from __future__ import annotations

import itertools
import numbers
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx import Graph, GraphModule, Node

from splitdnn._aliasing import classify
from splitdnn._capture import GraphNode, TracedModel, _names, fingerprint, release_source_when_freed, trace
from splitdnn.errors import ConfigError, PlanError
from splitdnn.schema import COMPUTE_OPS, Plan

__all__ = [
    "GraphNode",
    "Piece",
    "TracedModel",
    "boundary",
    "chain_cuts",
    "chain_cuts_at",
    "example_inputs",
    "check_tiers",
    "fingerprint",
    "head_tail",
    "input_dtype",
    "modifies_in_place",
    "run_pieces",
    "split",
    "trace",
]

# Python's in-place operators, as fx records them; each mutates its first argument.
_INPLACE_OPERATORS = frozenset(
    getattr(operator, f"i{name}")
    for name in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "matmul",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
    )
) | {operator.setitem}


# --------------------------------------------------------------------------------------------------
# records


@dataclass
class Piece:
    """The part of a split model that runs on one tier."""

    tier: int
    module: torch.fx.GraphModule = field(repr=False)  # placeholders named after the producer nodes
    inputs: tuple[str, ...]  # producer nodes it reads from earlier tiers (the model inputs, tier 0)
    outputs: tuple[str, ...]  # producer nodes it hands on; empty for the last piece
    is_last: bool  # the last piece returns the model's output instead of named values
    # the model whose inputs the first piece takes, when its graph holds only for their example shapes
    static_inputs_of: TracedModel | None = field(default=None, repr=False)

    def __call__(self, values: Mapping[str, Any]) -> dict[str, Any] | Any:
        """Run on ``values`` (by producer node name; extra names are ignored).

        Returns ``{name: value}`` for each of ``outputs``, or the model's output for the last piece.
        """
        missing = [n for n in self.inputs if n not in values]
        if missing:
            raise ConfigError(
                f"the tier-{self.tier} piece needs value(s) {_names(missing)}, found only "
                f"{_names(sorted(values))}; pass the outputs of the previous piece"
            )
        if self.static_inputs_of is not None:
            self.static_inputs_of.check_input_shapes([getattr(values[n], "shape", ()) for n in self.inputs])
        result = self.module(*(values[n] for n in self.inputs))
        if self.is_last:
            return result
        return dict(zip(self.outputs, result, strict=True))


# --------------------------------------------------------------------------------------------------
# cuts and plans


def chain_cuts(traced: TracedModel) -> list[str]:
    """Compute nodes ``v`` after which the model can be cut with ``v``'s value as the only boundary.

    The head is every node up to and including ``v`` in topological order; ``v`` qualifies when no
    other head value (model inputs included; parameters excepted) is read after it and the tail
    holds at least one compute node. For a pure chain: every compute node but the last.
    """
    nodes = traced.nodes
    pos = {n.name: i for i, n in enumerate(nodes)}
    last_read: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for src in n.inputs:
            if traced.node(src).op != "get_attr":
                last_read[src] = i
    # a producer is "open" (would cross the cut) on positions [pos, last_read)
    delta = [0] * (len(nodes) + 1)
    for src, end in last_read.items():
        delta[pos[src]] += 1
        delta[end] -= 1
    compute_pos = [i for i, n in enumerate(nodes) if n.op in COMPUTE_OPS]
    last_compute = compute_pos[-1] if compute_pos else -1
    cuts, open_now = [], 0
    for i, n in enumerate(nodes):
        open_now += delta[i]
        if n.op in COMPUTE_OPS and i < last_compute and open_now == 1 and last_read.get(n.name, -1) > i:
            cuts.append(n.name)
    return cuts


def chain_cuts_at(traced: TracedModel, fractions: Sequence[float]) -> list[str]:
    """The chain cuts at ``fractions`` (0 = the first, 1 = the last) of the model's chain cuts,
    distinct and in graph order; [] when the model has none."""
    if any(isinstance(f, bool) or not 0 <= f <= 1 for f in fractions):
        raise ConfigError(f"fractions of the chain must lie in [0, 1], found {list(fractions)}")
    cuts = chain_cuts(traced)
    chosen = {cuts[min(len(cuts) - 1, int(f * len(cuts)))] for f in fractions} if cuts else set()
    return [c for c in cuts if c in chosen]


def check_tiers(traced: TracedModel, tiers: Mapping[str, int]) -> dict[str, int]:
    """Validate a tier assignment and complete it.

    Every compute node needs an integer tier >= 0; placeholders (model inputs) are tier 0 and may be
    listed as such; parameters (``get_attr``) and the output node must not be listed. Tiers must be
    monotone along edges (a node is never on an earlier tier than a node it reads). Returns the tier
    of every placeholder, compute node and the output node (on the highest tier), in graph order.
    Raises PlanError naming the offending node or edge.
    """
    if isinstance(tiers, Plan):
        tiers = tiers.tiers
    if not isinstance(tiers, Mapping):
        raise PlanError(f"expected a mapping of node name to tier, found {type(tiers).__name__}")
    unknown = [k for k in tiers if k not in traced._index]
    if unknown:
        raise PlanError(
            f"the plan names {len(unknown)} node(s) that model {traced.name!r} does not have: "
            f"{_names(unknown)}; expected fx node names of this model (is the plan for another model?)"
        )
    for key, tier in tiers.items():
        if isinstance(tier, bool) or not isinstance(tier, numbers.Integral) or tier < 0:
            raise PlanError(f"node {key!r} has tier {tier!r}: expected an integer >= 0")
        op = traced.node(key).op
        if op == "placeholder" and tier != 0:
            raise PlanError(
                f"node {key!r} is a model input, always on tier 0, found tier {tier}; set it to 0"
            )
        if op == "get_attr":
            raise PlanError(
                f"node {key!r} reads a parameter or buffer: it is copied into every piece that reads "
                f"it and must not appear in a plan; remove it"
            )
        if op == "output":
            raise PlanError(
                f"node {key!r} is the output: it sits on the highest tier of its inputs and must not "
                f"appear in a plan; remove it"
            )
    missing = [n.name for n in traced.compute_nodes() if n.name not in tiers]
    if missing:
        raise PlanError(
            f"the plan gives no tier to {len(missing)} compute node(s) of model {traced.name!r}: "
            f"{_names(missing)}; assign every compute node a tier >= 0"
        )

    full: dict[str, int] = {}
    output = None
    for n in traced.nodes:
        if n.op == "placeholder":
            full[n.name] = 0
        elif n.op in COMPUTE_OPS:
            full[n.name] = int(tiers[n.name])
            for src in n.inputs:
                if src in full and full[src] > full[n.name]:
                    raise PlanError(
                        f"node {n.name!r} on tier {full[n.name]} reads {src!r} on tier {full[src]}: a "
                        f"plan must be downward closed; move {n.name!r} to tier >= {full[src]} or "
                        f"{src!r} to tier {full[n.name]}"
                    )
        elif n.op == "output":
            output = n.name
    if output is not None:
        full[output] = max(full.values(), default=0)
    _check_inplace_order(traced, full)
    return full


def _mutated_inputs(node: Node, root: nn.Module) -> list[Node]:
    """Input nodes that ``node`` modifies in place (best effort: in-place ops, ``inplace=True``)."""
    first = [node.args[0]] if node.args and isinstance(node.args[0], Node) else []
    if node.op == "call_module":
        return first if getattr(root.get_submodule(str(node.target)), "inplace", False) is True else []
    if node.op == "call_method":
        name = str(node.target)
        return first if name.endswith("_") and not name.startswith("_") else []
    if node.op != "call_function":
        return []
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is not None and hasattr(schema, "arguments"):
        found = []
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
                if isinstance(value, Node):
                    found.append(value)
        return found
    fname = getattr(target, "__name__", "")
    if (
        target in _INPLACE_OPERATORS
        or node.kwargs.get("inplace") is True
        or (fname.endswith("_") and not fname.startswith("_"))
    ):
        return first
    return []


def modifies_in_place(traced: TracedModel) -> bool:
    """Whether some node of the model changes a tensor in place: only then can :func:`check_tiers`
    refuse a downward-closed plan (the profiles, and so the solver, do not show such changes)."""
    return any(_mutated_inputs(n, traced.module) for n in traced.module.graph.nodes if n.op in COMPUTE_OPS)


def _alias_groups(traced: TracedModel) -> dict[Node, list[Node]]:
    """Each value node's group of values that may share its memory (views, in-place results, and the
    results of ops not known to return a fresh tensor, with their arguments; conservative)."""
    parent: dict[Node, Node] = {}

    def find(n: Node) -> Node:
        while parent.get(n, n) is not n:
            parent[n] = n = parent.get(parent[n], parent[n])
        return n

    modules = dict(traced.module.named_modules())
    nodes = [n for n in traced.module.graph.nodes if n.op != "output"]
    for n in nodes:
        if n.op in COMPUTE_OPS and classify(n, modules) != "fresh":
            for a in n.all_input_nodes:
                if a.op != "get_attr":
                    parent[find(n)] = find(a)
    groups: dict[Node, list[Node]] = {}
    for n in nodes:
        groups.setdefault(find(n), []).append(n)
    return {n: groups[find(n)] for n in nodes}


def _check_inplace_order(traced: TracedModel, full: Mapping[str, int]) -> None:
    """Refuse plans under which an in-place modification would be seen differently than in the model.

    Pieces hand values on as copies, so memory shared by a value and its views holds on one tier only.
    Refused: a node reading a value (or a value sharing its memory) on another tier than the node that
    modifies it in place, when that makes it see the value before the change instead of after, or
    after instead of before; and two values sharing memory reaching, as separate copies, the tier
    that modifies one of them (the change would miss the other).
    """
    graph_nodes = list(traced.module.graph.nodes)
    mutations = [
        (m, v) for m in graph_nodes if m.op in COMPUTE_OPS for v in _mutated_inputs(m, traced.module)
    ]
    if not mutations:
        return
    pos = {n.name: i for i, n in enumerate(graph_nodes)}
    groups = _alias_groups(traced)
    dst = _readers(traced, full)
    for m, v in mutations:
        group = groups.get(v, [v])
        for g in group:
            for r in g.users:
                if r is m or r.name not in full:
                    continue
                before = pos[r.name] < pos[m.name]
                if (before and full[r.name] > full[m.name]) or (not before and full[r.name] < full[m.name]):
                    when = "before" if before else "after"
                    shared = "" if g is v else f" (which shares memory with {v.name!r})"
                    raise PlanError(
                        f"node {r.name!r} on tier {full[r.name]} reads {g.name!r}{shared} {when} node "
                        f"{m.name!r} on tier {full[m.name]} modifies it in place: the plan would change "
                        f"the value it sees; put {r.name!r} and {m.name!r} on one tier"
                    )
        t = full[m.name]
        arriving = [g.name for g in group if g.name in full and full[g.name] < t <= dst.get(g.name, -1)]
        if len(arriving) > 1:
            raise PlanError(
                f"node {m.name!r} on tier {t} modifies {v.name!r} in place, but {_names(arriving)} may share "
                f"memory in the model and would reach tier {t} as separate copies, so the change would "
                f"miss some of them; cut before {_names(arriving)} are computed, or after {m.name!r}"
            )


def _readers(traced: TracedModel, full: Mapping[str, int]) -> dict[str, int]:
    """Highest tier reading each placeholder or compute node's value (nodes with readers only)."""
    dst: dict[str, int] = {}
    for n in traced.nodes:
        if n.name in full:
            for src in n.inputs:
                if src in full:
                    dst[src] = max(dst.get(src, 0), full[n.name])
    return dst


def boundary(traced: TracedModel, tiers: Mapping[str, int]) -> list[tuple[str, int, int]]:
    """Values that cross tiers: ``(producer, src_tier, highest tier reading it)``, in graph order."""
    full = check_tiers(traced, tiers)
    dst = _readers(traced, full)
    return [
        (n.name, full[n.name], dst[n.name])
        for n in traced.nodes
        if n.name in dst and dst[n.name] > full[n.name]
    ]


# --------------------------------------------------------------------------------------------------
# splitting


def split(traced: TracedModel, plan: Plan | Mapping[str, int]) -> list[Piece]:
    """One piece per tier, from 0 to the highest tier of the plan, in order.

    A tier with no compute node of its own gives a pass-through piece. The same plan always gives
    the same piece graphs, so another process can rebuild any piece from the same model.
    """
    if isinstance(plan, Plan):
        if plan.fingerprint and plan.fingerprint != traced.fingerprint:
            raise PlanError(
                f"the plan is for model {plan.model!r} (fingerprint {plan.fingerprint[:12]}), not "
                f"for model {traced.name!r} (fingerprint {traced.fingerprint[:12]}); solve a plan "
                f"for this model"
            )
        tiers: Mapping[str, int] = plan.tiers
    else:
        tiers = plan
    full = check_tiers(traced, tiers)
    last = max(full.values(), default=0)
    if isinstance(plan, Plan) and last >= plan.num_tiers:
        raise PlanError(f"the plan uses tier {last} but declares num_tiers={plan.num_tiers}")
    dst = _readers(traced, full)
    order = [n.name for n in traced.nodes if n.name in dst]
    placeholders = tuple(n.name for n in traced.nodes if n.op == "placeholder")
    pieces = []
    for t in range(last + 1):
        inputs = placeholders if t == 0 else tuple(p for p in order if full[p] < t <= dst[p])
        outputs = () if t == last else tuple(p for p in order if full[p] <= t < dst[p])
        module = _piece_module(traced, full, t, inputs, outputs, is_last=t == last)
        static = traced if t == 0 and traced.static_shapes else None
        pieces.append(Piece(t, module, inputs, outputs, t == last, static))
    return pieces


def _piece_module(
    traced: TracedModel,
    full: Mapping[str, int],
    tier: int,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    *,
    is_last: bool,
) -> GraphModule:
    src_nodes = list(traced.module.graph.nodes)
    by_name = {n.name: n for n in src_nodes}
    members = [
        n
        for n in src_nodes
        if (n.op in COMPUTE_OPS and full[n.name] == tier) or (n.op == "output" and is_last)
    ]
    attrs = {i for n in members for i in n.all_input_nodes if i.op == "get_attr"}

    graph = Graph()
    env: dict[Node, Node] = {}
    for name in inputs:
        env[by_name[name]] = graph.placeholder(name)
    wanted = set(members) | attrs
    for n in src_nodes:
        if n in wanted:
            env[n] = graph.node_copy(n, env.__getitem__)
    if not is_last:
        graph.output(tuple(env[by_name[name]] for name in outputs))
    graph.lint()
    class_name = re.sub(r"\W", "_", f"{traced.name}_tier{tier}")
    module = release_source_when_freed(GraphModule(traced.module, graph, class_name))
    module.training = traced.module.training
    return module


def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's inputs should have: its first floating parameter's (or buffer's), float32
    without any. A float16 or bfloat16 model is traced, profiled and served at its own precision."""
    tensors = itertools.chain(model.parameters(), model.buffers())  # stops at the first floating one
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def example_inputs(
    model: nn.Module, shapes: Sequence[Sequence[int]], *, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Seeded N(0, 1) inputs of ``shapes`` (batch included) in ``model``'s :func:`input_dtype`; for a
    float32 model the very values ``torch.randn`` draws from ``seed``, so fingerprints stay as they were."""
    gen = torch.Generator().manual_seed(seed)
    dtype = input_dtype(model)
    return tuple(torch.randn(tuple(int(d) for d in s), generator=gen).to(dtype) for s in shapes)


def run_pieces(pieces: Sequence[Piece], *inputs: torch.Tensor) -> Any:
    """Run the pieces in order, each on the previous piece's outputs only; returns the model output."""
    if not pieces:
        raise ConfigError("expected at least one piece, found none")
    names = pieces[0].inputs
    if len(inputs) != len(names):
        raise ConfigError(f"expected {len(names)} model input(s) {list(names)}, found {len(inputs)}")
    values: Any = dict(zip(names, inputs, strict=True))
    for i, piece in enumerate(pieces):
        if piece.is_last != (i == len(pieces) - 1):
            raise ConfigError(
                f"piece {i} (tier {piece.tier}) is {'' if piece.is_last else 'not '}the last piece, "
                f"but is at position {i} of {len(pieces)}; pass all pieces of one split, in order"
            )
        values = piece(values)
    return values


def head_tail(traced: TracedModel, cut_after: str) -> tuple[Piece, Piece]:
    """The two-tier split whose head is every node up to and including ``cut_after``.

    Any compute node but the last gives a valid split; at a node of :func:`chain_cuts` its value is
    the only boundary tensor.
    """
    if cut_after not in traced._index or traced.node(cut_after).op not in COMPUTE_OPS:
        raise PlanError(
            f"cannot cut after {cut_after!r}: expected a compute node of model {traced.name!r}, e.g. "
            f"one of {_names(chain_cuts(traced))}"
        )
    compute = traced.compute_nodes()
    if compute[-1].name == cut_after:
        raise PlanError(
            f"cutting after {cut_after!r}, the last compute node, leaves an empty tail; cut earlier "
            f"or run the whole model on one tier"
        )
    cut = traced._index[cut_after]
    tiers = {n.name: int(traced._index[n.name] > cut) for n in compute}
    head, tail = split(traced, tiers)
    return head, tail
