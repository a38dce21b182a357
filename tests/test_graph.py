"""Tracing and splitting: every cut of every model composes back to the model's own output, exactly."""

from __future__ import annotations

import pickle
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from resources import fx_sources  # noqa: E402
from torch import nn  # noqa: E402

from splitdnn._capture import StaticShapes  # noqa: E402
from splitdnn.errors import ConfigError, PlanError, TraceError  # noqa: E402
from splitdnn.graph import (  # noqa: E402
    GraphNode,
    Piece,
    TracedModel,
    boundary,
    chain_cuts,
    check_tiers,
    example_inputs,
    fingerprint,
    head_tail,
    input_dtype,
    run_pieces,
    split,
    trace,
)
from splitdnn.schema import COMPUTE_OPS, CostBreakdown, Plan  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread is fastest, and immune to a loaded, shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


# --------------------------------------------------------------------------------------------------
# helpers


def same(a: Any, b: Any) -> bool:
    """Exact equality of model outputs: tensors bit for bit, containers item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def random_ideal(traced: TracedModel, rng: random.Random, num_tiers: int) -> dict[str, int]:
    """A random monotone assignment: each node starts at the highest tier it reads, maybe one more."""
    p_up = min(0.5, 1.5 * (num_tiers - 1) / max(1, len(traced.compute_nodes())))
    tiers: dict[str, int] = {}
    for n in traced.compute_nodes():
        base = max((tiers.get(src, 0) for src in n.inputs), default=0)
        tiers[n.name] = min(num_tiers - 1, base + (rng.random() < p_up))
    return tiers


def random_prefix(traced: TracedModel, rng: random.Random, num_tiers: int) -> dict[str, int]:
    """Cut a random topological order (not the graph's own) at num_tiers - 1 random places."""
    compute = [n.name for n in traced.compute_nodes()]
    known = set(compute)
    deps = {n.name: known.intersection(n.inputs) for n in traced.compute_nodes()}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(compute):
        ready = [c for c in compute if c not in done and deps[c] <= done]
        pick = ready[rng.randrange(len(ready))]
        order.append(pick)
        done.add(pick)
    cuts = sorted(rng.sample(range(1, len(order)), num_tiers - 1))
    return {name: sum(i >= c for c in cuts) for i, name in enumerate(order)}


def check_composes(
    traced: TracedModel, tiers: dict[str, int], inputs: tuple[torch.Tensor, ...], ref: Any
) -> None:
    pieces = split(traced, tiers)
    assert [p.tier for p in pieces] == list(range(max(tiers.values(), default=0) + 1))
    out = run_pieces(pieces, *inputs)
    assert same(out, ref), f"split output differs from the model's for plan {tiers}"


# --------------------------------------------------------------------------------------------------
# small models, each covering a construct


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(self.conv(x)))), 1))


class Residual(nn.Module):
    """Two residual blocks, the second with a 1x1 projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(4, 8, 1, stride=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.a2(F.relu(self.a1(x))) + x)
        x = F.relu(self.b2(F.relu(self.b1(x))) + self.down(x))
        return self.fc(x.mean((2, 3)))


class Inception(nn.Module):
    """Parallel branches joined by one cat that reads a branch twice."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(3, 2, 1)
        self.b2a, self.b2b = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 3, padding=1)
        self.b3 = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = self.b1(x)
        two = self.b2b(F.relu(self.b2a(x)))
        three = self.b3(F.max_pool2d(x, 3, stride=1, padding=1))
        y = torch.cat([one, two, three, one], dim=1)
        return self.fc(F.relu(y).mean((2, 3)))


class Tokens(nn.Module):
    """ViT-like: a class token and positional embedding read by get_attr, an int batch size, an
    attention module returning a tuple, and chunk + getitem."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim))
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.qk = nn.Linear(dim, 2 * dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, 4, dim)
        n = x.size(0)
        x = torch.cat([self.cls.expand(n, -1, -1), x], dim=1) + self.pos  # (B, 5, dim)
        a, _ = self.attn(x, x, x, need_weights=False)
        x = self.norm(x + a)
        q, k = self.qk(x).chunk(2, dim=-1)
        x = x + q * k
        return self.head(x[:, 0]) + self.pos[0, 0, :3]


class SizeAcross(nn.Module):
    """An int (the batch size) read long after it is computed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n = y.size(0)
        y = torch.sigmoid(y)
        return self.fc(y.reshape(n, -1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fx, self.fy, self.out = nn.Linear(4, 3), nn.Linear(2, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fx(x)) * self.fy(y))


class TupleOut(nn.Module):
    """Returns a tuple whose second item is an early (device-side) tensor, and a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.f1, self.f2, self.f3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = torch.relu(self.f1(x))
        return self.f3(torch.relu(self.f2(h))), {"features": h, "input": x}


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc(x)
        b = a * 2  # reads a before add_ changes it
        a.add_(1)
        c = b + 1  # reads b before act changes it
        d = self.act(b)
        return a + c + d


Factory = Callable[[], nn.Module]
SMALL: dict[str, tuple[Factory, tuple[tuple[int, ...], ...]]] = {
    "chain": (Chain, ((2, 3, 8, 8),)),
    "residual": (Residual, ((1, 3, 8, 8),)),
    "inception": (Inception, ((1, 3, 6, 6),)),
    "tokens": (Tokens, ((2, 3, 8, 8),)),
    "size_across": (SizeAcross, ((2, 3, 8, 8),)),
    "two_inputs": (TwoInputs, ((2, 4), (2, 2))),
    "tuple_out": (TupleOut, ((3, 4),)),
}


def make(name: str) -> tuple[nn.Module, TracedModel, tuple[torch.Tensor, ...], Any]:
    factory, shapes = SMALL[name]
    torch.manual_seed(0)
    model = factory().eval()
    inputs = tuple(torch.randn(s) for s in shapes)
    traced = trace(model, inputs, name=name)
    ref = model(*inputs)
    assert same(traced.module(*inputs), ref)
    return model, traced, inputs, ref


def tiers_for(traced: TracedModel, server: set[str]) -> dict[str, int]:
    """Two tiers: ``server`` on tier 1, every other compute node on tier 0."""
    return {n.name: int(n.name in server) for n in traced.compute_nodes()}


# --------------------------------------------------------------------------------------------------
# property: every cut composes


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_chain_cut_and_random_plan_composes(name: str) -> None:
    _, traced, inputs, ref = make(name)
    for cut in chain_cuts(traced):
        head, tail = head_tail(traced, cut)
        assert head.outputs == (cut,) and tail.inputs == (cut,)
        assert same(run_pieces([head, tail], *inputs), ref), cut
    rng = random.Random(name)
    for num_tiers in (2, 2, 3, 3, 4):
        check_composes(traced, random_ideal(traced, rng, num_tiers), inputs, ref)
        check_composes(traced, random_prefix(traced, rng, num_tiers), inputs, ref)


def test_chain_cuts_of_a_chain_are_every_compute_node_but_the_last() -> None:
    _, traced, _, _ = make("chain")
    compute = [n.name for n in traced.compute_nodes()]
    assert compute == ["conv", "bn", "relu", "pool", "flatten", "fc"]
    assert chain_cuts(traced) == compute[:-1]


def test_chain_cuts_at_fractions_are_distinct_and_in_graph_order() -> None:
    from splitdnn.graph import chain_cuts_at

    _, traced, _, _ = make("residual")  # chain cuts: stem relu add relu_2 add_1 relu_4 mean
    assert chain_cuts_at(traced, [0.5, 0.0, 1.0, 0.99]) == ["stem", "relu_2", "mean"]
    assert chain_cuts_at(traced, []) == []
    for bad in ([1.5], [-0.1], [True]):
        with pytest.raises(ConfigError, match=r"fractions of the chain must lie in \[0, 1\]"):
            chain_cuts_at(traced, bad)


def test_chain_cuts_of_a_dag_are_its_cut_vertices() -> None:
    _, traced, _, _ = make("residual")
    # inside a block its input is still needed by the skip; from the add on it is not
    assert chain_cuts(traced) == ["stem", "relu", "add", "relu_2", "add_1", "relu_4", "mean"]
    _, traced, _, _ = make("inception")
    assert chain_cuts(traced) == ["cat", "relu_1", "mean"]
    _, traced, _, _ = make("size_across")
    assert chain_cuts(traced) == ["conv", "reshape"]  # not in between: the batch size is still open


# --------------------------------------------------------------------------------------------------
# the zoo: every chain cut exactly, a sample of DAG plans


def _zoo_names() -> list[str]:
    try:
        from splitdnn.models import zoo_names
    except ImportError:  # pragma: no cover - the zoo ships with the package
        return []
    return zoo_names()


@pytest.fixture(scope="module", params=_zoo_names())
def zoo(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any, TracedModel, torch.Tensor, Any]]:
    from splitdnn.models import ZOO, build_zoo_model

    entry = ZOO[request.param]
    torch.manual_seed(0)
    with torch.no_grad():
        model = build_zoo_model(entry.name, **entry.test_kwargs)
        x = torch.randn(1, *entry.test_input_shape)
        traced = trace(model, x, name=entry.name)
        ref = model(x)
    yield entry, model, traced, x, ref


def test_zoo_traces_with_fx_and_matches_the_model(zoo: Any) -> None:
    entry, model, traced, x, ref = zoo
    assert traced.method == "fx"
    assert traced.input_shapes == ((1, *entry.test_input_shape),)
    assert same(traced.module(x), ref)
    cuts = chain_cuts(traced)
    assert cuts, f"{entry.name} has no chain cut"
    if entry.kind == "chain":
        assert cuts == [n.name for n in traced.compute_nodes()][:-1]


def test_zoo_every_chain_cut_composes_exactly(zoo: Any) -> None:
    entry, _, traced, x, ref = zoo
    names = [n.name for n in traced.compute_nodes()]
    for cut in chain_cuts(traced):
        head, tail = head_tail(traced, cut)
        prefix = {n: int(i > names.index(cut)) for i, n in enumerate(names)}
        assert boundary(traced, prefix) == [(cut, 0, 1)]
        assert same(run_pieces([head, tail], x), ref), f"{entry.name}: cut after {cut!r}"


def test_zoo_random_dag_plans_compose_exactly(zoo: Any) -> None:
    entry, _, traced, x, ref = zoo
    rng = random.Random(entry.name)
    plans = [random_ideal(traced, rng, 2), random_ideal(traced, rng, 3)]
    if entry.kind == "dag":
        plans += [random_prefix(traced, rng, k) for k in (2, 2, 3, 3, 4)]
        plans += [random_ideal(traced, rng, k) for k in (2, 3, 4)]
        crossing = [b for tiers in plans for b in boundary(traced, tiers)]
        assert any(b[0] not in chain_cuts(traced) for b in crossing)  # real DAG cuts, not just chain cuts
    for tiers in plans:
        check_composes(traced, tiers, (x,), ref)


# --------------------------------------------------------------------------------------------------
# nodes and constructs


def test_graph_nodes_describe_the_fx_graph() -> None:
    _, traced, _, _ = make("inception")
    assert traced.method == "fx" and traced.name == "inception"
    assert traced.input_shapes == ((1, 3, 6, 6),)
    assert traced.nodes[0] == GraphNode("x", "placeholder", "x", ())
    cat = traced.node("cat")
    assert cat.op == "call_function" and cat.target == "torch.cat"
    assert cat.inputs == ("b1", "b2b", "b3")  # first-use order, no duplicates
    assert traced.node("b2a") == GraphNode("b2a", "call_module", "b2a", ("x",))
    assert traced.node("relu").target == "torch.nn.functional.relu"
    assert traced.node("mean").op == "call_method" and traced.node("mean").target == "mean"
    assert traced.nodes[-1].op == "output" and traced.nodes[-1].inputs == ("fc",)
    assert all(n.op in COMPUTE_OPS for n in traced.compute_nodes())
    with pytest.raises(ConfigError, match="has no node 'nope'"):
        traced.node("nope")
    _, traced, _, _ = make("tokens")
    assert traced.node("add").target == "operator.add"
    assert traced.node("cls").op == "get_attr"


def test_tuple_value_crosses_a_cut_and_is_unpacked_by_getitem() -> None:
    _, traced, inputs, ref = make("tokens")
    chunk = next(n.name for n in traced.nodes if n.target == "chunk")
    getitems = [n.name for n in traced.nodes if n.inputs == (chunk,)]
    assert len(getitems) == 2 and all(traced.node(g).target == "operator.getitem" for g in getitems)
    names = [n.name for n in traced.compute_nodes()]
    tiers = {n: int(i > names.index(chunk)) for i, n in enumerate(names)}
    assert (chunk, 0, 1) in boundary(traced, tiers)
    head, tail = split(traced, tiers)
    sent = head(dict(zip(head.inputs, inputs, strict=True)))
    assert isinstance(sent[chunk], tuple) and len(sent[chunk]) == 2
    assert same(tail(sent), ref)
    # the attention module's (output, weights) tuple crossing the cut
    tiers = {n: int(i > names.index("attn")) for i, n in enumerate(names)}
    assert ("attn", 0, 1) in boundary(traced, tiers)
    check_composes(traced, tiers, inputs, ref)


def test_get_attr_parameters_are_replicated_never_sent() -> None:
    model, traced, inputs, ref = make("tokens")
    # everything from the attention on runs on tier 1: pos (read on both tiers) and cls stay local
    names = [n.name for n in traced.compute_nodes()]
    tiers = {n: int(i >= names.index("attn")) for i, n in enumerate(names)}
    sent = [b[0] for b in boundary(traced, tiers)]
    assert "pos" not in sent and "cls" not in sent
    head, tail = split(traced, tiers)
    assert "pos" not in head.outputs and "pos" not in tail.inputs
    assert tail.module.pos is model.pos and head.module.pos is model.pos  # shared, not copied
    assert tail.module.head.weight is model.head.weight
    assert same(run_pieces([head, tail], *inputs), ref)
    # cls only on the tail: the token is read after the cut
    tiers = {n: int(i > names.index("size")) for i, n in enumerate(names)}
    head, tail = split(traced, tiers)
    assert "cls" in dict(tail.module.named_parameters()) and "cls" not in dict(head.module.named_parameters())
    assert same(run_pieces([head, tail], *inputs), ref)
    with pytest.raises(PlanError, match="'cls' reads a parameter or buffer"):
        check_tiers(traced, {**tiers, "cls": 0})


def test_an_int_crosses_the_cut() -> None:
    _, traced, inputs, ref = make("size_across")
    tiers = tiers_for(traced, {"sigmoid", "reshape", "fc"})
    assert boundary(traced, tiers) == [("conv", 0, 1), ("size", 0, 1)]
    head, tail = split(traced, tiers)
    sent = head(dict(zip(head.inputs, inputs, strict=True)))
    assert sent["size"] == 2 and isinstance(sent["size"], int)
    assert same(tail(sent), ref)


def test_two_model_inputs_and_an_input_read_only_on_the_server() -> None:
    _, traced, inputs, ref = make("two_inputs")
    tiers = tiers_for(traced, {"fy", "mul", "out"})
    assert boundary(traced, tiers) == [("y", 0, 1), ("tanh", 0, 1)]
    head, tail = split(traced, tiers)
    assert head.inputs == ("x", "y") and tail.inputs == ("y", "tanh")
    assert same(run_pieces([head, tail], *inputs), ref)
    with pytest.raises(ConfigError, match=r"expected 2 model input\(s\) \['x', 'y'\], found 1"):
        run_pieces([head, tail], inputs[0])
    with pytest.raises(PlanError, match="'y' is a model input, always on tier 0"):
        check_tiers(traced, {**tiers, "y": 1})
    assert check_tiers(traced, {**tiers, "y": 0})["y"] == 0


def test_output_reads_device_tensors_directly() -> None:
    _, traced, inputs, ref = make("tuple_out")
    assert isinstance(ref, tuple) and isinstance(ref[1], dict)
    tiers = tiers_for(traced, {"f2", "relu_1", "f3"})
    # the output sits on tier 1; h and the raw input are forwarded to it
    assert boundary(traced, tiers) == [("x", 0, 1), ("relu", 0, 1)]
    assert check_tiers(traced, tiers)["output"] == 1
    assert same(run_pieces(split(traced, tiers), *inputs), ref)


def test_three_tiers_relay_values_through_the_middle() -> None:
    _, traced, inputs, ref = make("residual")
    names = [n.name for n in traced.compute_nodes()]
    # tier 0: stem; tier 1: first block's convs; tier 2: the add reading the stem output, and on
    tiers = {
        n: 0 if i <= names.index("relu") else 1 if i < names.index("add") else 2 for i, n in enumerate(names)
    }
    assert boundary(traced, tiers) == [("relu", 0, 2), ("a2", 1, 2)]
    p0, p1, p2 = split(traced, tiers)
    assert p0.outputs == ("relu",) and p1.inputs == ("relu",) and p1.outputs == ("relu", "a2")
    assert p2.inputs == ("relu", "a2") and p2.is_last and not p1.is_last
    assert same(run_pieces([p0, p1, p2], *inputs), ref)
    # an empty middle tier is a pass-through piece
    tiers = {n: 2 * t for n, t in tiers_for(traced, set(names[names.index("a1") :])).items()}
    p0, p1, p2 = split(traced, tiers)
    assert p1.inputs == p1.outputs == ("relu",)
    assert not [n for n in p1.module.graph.nodes if n.op not in ("placeholder", "output")]
    assert same(run_pieces([p0, p1, p2], *inputs), ref)


def test_all_on_device_and_all_on_server() -> None:
    _, traced, inputs, ref = make("two_inputs")
    (only,) = split(traced, tiers_for(traced, set()))
    assert only.is_last and only.inputs == ("x", "y")
    assert same(only(dict(zip(only.inputs, inputs, strict=True))), ref)
    everything = {n.name for n in traced.compute_nodes()}
    head, tail = split(traced, tiers_for(traced, everything))
    assert head.inputs == head.outputs == ("x", "y")  # the raw inputs are sent
    assert same(run_pieces([head, tail], *inputs), ref)


def test_split_takes_a_plan_and_checks_its_model() -> None:
    _, traced, inputs, ref = make("chain")
    tiers = tiers_for(traced, {"flatten", "fc"})
    cost = CostBreakdown((1.0, 1.0), 0.0, (1.0,), (0.0,), 0.0, 0.0, 3.0, 0.1, 100.0)
    plan = Plan("chain", traced.fingerprint, 2, tiers, (), cost, "latency", "split", True)
    assert same(run_pieces(split(traced, plan), *inputs), ref)
    other = Plan("resnet", "0" * 64, 2, tiers, (), cost, "latency", "split", True)
    with pytest.raises(PlanError, match="the plan is for model 'resnet'"):
        split(traced, other)
    three = Plan("chain", traced.fingerprint, 2, {**tiers, "fc": 2}, (), cost, "latency", "split", True)
    with pytest.raises(PlanError, match="uses tier 2 but declares num_tiers=2"):
        split(traced, three)


def test_pieces_are_deterministic_standalone_and_share_weights() -> None:
    model, traced, inputs, ref = make("tokens")
    names = [n.name for n in traced.compute_nodes()]
    tiers = random_ideal(traced, random.Random(3), 3)
    first, second = split(traced, tiers), split(traced, tiers)
    assert [p.module.code for p in first] == [p.module.code for p in second]
    assert [(p.inputs, p.outputs) for p in first] == [(p.inputs, p.outputs) for p in second]
    # a tail rebuilt elsewhere from its own module alone (pickled, as a process boundary would)
    head, tail = head_tail(traced, names[len(names) // 2])
    sent = head(dict(zip(head.inputs, inputs, strict=True)))
    shipped = pickle.loads(pickle.dumps(tail.module))
    assert same(shipped(*(sent[n] for n in tail.inputs)), ref)
    assert tail.module.head is model.head and tail.module.qk.weight is model.qk.weight  # shared
    assert isinstance(tail, Piece) and "module" not in repr(tail)
    with pytest.raises(ConfigError, match="the tier-1 piece needs value"):
        tail({})


def test_pieces_and_traces_drop_their_generated_source_when_freed() -> None:
    """torch.fx files each generated forward's source for good; splitdnn's modules take theirs along
    when freed, so a process that splits (a client per session) or traces again does not grow."""
    model, traced, inputs, ref = make("tokens")
    branch, x = ShapeBranch().eval(), torch.randn(2, 4)
    trace(branch, x)
    before = fx_sources()
    for seed in range(8):
        pieces = split(traced, random_ideal(traced, random.Random(seed), 3))
        assert same(run_pieces(pieces, *inputs), ref)
        assert trace(model, inputs).method == "fx"
        assert trace(branch, x).method == "export"
    del pieces
    assert fx_sources() <= before


def test_tracing_leaves_models_running_in_other_threads_alone() -> None:
    """fx patches nn.Module.__call__ process-wide while it traces; splitdnn's tracer lets other
    threads' calls through, so a model running beside a trace computes exactly as alone (before:
    "module is not installed as a submodule", thousands of times in a second)."""
    from splitdnn.models import ZOO, build_zoo_model

    model, _, inputs, ref = make("tokens")
    other = build_zoo_model("resnet18").eval()  # a few hundred module calls per trace
    other_inputs = torch.randn(1, *ZOO["resnet18"].test_input_shape)
    errors: list[str] = []
    wrong = 0
    runs = 0
    done = threading.Event()

    def run() -> None:
        nonlocal wrong, runs
        while not done.is_set():
            try:
                with torch.no_grad():
                    out = model(*inputs)
                wrong += not same(out, ref)
            except Exception as exc:  # counted, then reported
                errors.append(f"{type(exc).__name__}: {exc}")
            runs += 1

    worker = threading.Thread(target=run)
    worker.start()
    try:
        for _ in range(8):
            assert trace(other, other_inputs).method == "fx"
    finally:
        done.set()
        worker.join()
    assert runs > 0 and not errors[:3] and wrong == 0


def test_in_place_modification_order_is_kept() -> None:
    torch.manual_seed(0)
    model, x = InPlace().eval(), torch.randn(2, 4)
    traced = trace(model, x, name="inplace")
    ref = model(x.clone())
    assert [n.name for n in traced.compute_nodes()] == ["fc", "mul", "add_", "add", "act", "add_1", "add_2"]
    ok = {"fc": 0, "mul": 0, "add_": 0, "add": 1, "act": 1, "add_1": 1, "add_2": 1}
    check_composes(traced, ok, (x,), ref)
    check_composes(traced, {**ok, "mul": 1, "add_": 1}, (x,), ref)
    # 'mul' reads fc before 'add_' modifies it: running add_ on an earlier tier would change that
    with pytest.raises(PlanError, match="'mul' on tier 1 reads 'fc' before node 'add_' on tier 0 modifies"):
        check_tiers(traced, {**ok, "mul": 1})
    # the same through a module built with inplace=True
    with pytest.raises(PlanError, match="'add' on tier 1 reads 'mul' before node 'act' on tier 0 modifies"):
        check_tiers(traced, {**ok, "act": 0})
    # prefixes in graph order never reorder anything: every one of them composes
    for cut in ["fc", "mul", "add_", "add", "act", "add_1"]:
        assert same(run_pieces(head_tail(traced, cut), x), ref)


# --------------------------------------------------------------------------------------------------
# refusals


def test_plans_that_are_not_downward_closed_are_refused() -> None:
    _, traced, _, _ = make("chain")
    tiers = tiers_for(traced, {"flatten"})  # fc on the device after flatten on the server
    with pytest.raises(PlanError) as info:
        check_tiers(traced, tiers)
    assert str(info.value) == (
        "node 'fc' on tier 0 reads 'flatten' on tier 1: a plan must be downward closed; move 'fc' "
        "to tier >= 1 or 'flatten' to tier 0"
    )
    with pytest.raises(PlanError, match="node 'fc' on tier 0 reads 'flatten' on tier 1"):
        split(traced, tiers)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conv9": 1}, r"names 1 node\(s\) that model 'chain' does not have: \['conv9'\]"),
        ({"fc": -1}, "node 'fc' has tier -1: expected an integer >= 0"),
        ({"fc": 1.5}, "node 'fc' has tier 1.5: expected an integer >= 0"),
        ({"fc": True}, "node 'fc' has tier True"),
        ({"output": 1}, "'output' is the output"),
    ],
)
def test_bad_tiers_are_refused(change: dict[str, Any], message: str) -> None:
    _, traced, _, _ = make("chain")
    with pytest.raises(PlanError, match=message):
        split(traced, {**tiers_for(traced, {"fc"}), **change})


def test_missing_nodes_are_refused() -> None:
    _, traced, _, _ = make("chain")
    tiers = tiers_for(traced, {"fc"})
    del tiers["bn"], tiers["pool"]
    with pytest.raises(
        PlanError, match=r"gives no tier to 2 compute node\(s\) of model 'chain': \['bn', 'pool'\]"
    ):
        boundary(traced, tiers)


def test_head_tail_refuses_non_compute_and_last_nodes() -> None:
    _, traced, _, _ = make("chain")
    with pytest.raises(PlanError, match="cannot cut after 'x': expected a compute node"):
        head_tail(traced, "x")
    with pytest.raises(PlanError, match="cannot cut after 'zzz'"):
        head_tail(traced, "zzz")
    with pytest.raises(PlanError, match="last compute node, leaves an empty tail"):
        head_tail(traced, "fc")


class Gate(nn.Module):
    """Data-dependent Python control flow: neither fx nor export can capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return -x


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(3, 3), Gate(), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gate(self.fc1(x)))


def test_untraceable_model_raises_trace_error_naming_the_construct() -> None:
    model, x = Gated().eval(), torch.randn(2, 3)
    with pytest.raises(TraceError) as info:
        trace(model, x, name="gated")
    text = str(info.value)
    assert "cannot trace model 'gated': symbolic tracing failed:" in text
    assert "cannot be used as inputs to control flow" in text
    assert "`if x.sum() > 0:`" in text  # the construct, from the user's source
    assert "torch.export failed:" in text and "data-dependent" in text
    assert "leaf_modules" in text and "torch.fx.wrap" in text
    assert "\n" not in text
    # declaring the block a leaf makes it one opaque node
    traced = trace(model, x, name="gated", leaf_modules=(Gate,))
    assert traced.method == "fx" and traced.node("gate").op == "call_module"
    assert same(run_pieces(head_tail(traced, "gate"), x), model(x))


class ShapeBranch(nn.Module):
    """Python control flow on a shape: fx cannot trace it, torch.export specialises it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc1(x)
        if x.shape[0] > 1:
            h = torch.relu(h) * self.scale
        return self.fc2(h), h


def test_export_fallback_gives_the_same_kind_of_graph() -> None:
    torch.manual_seed(0)
    model, x = ShapeBranch().eval(), torch.randn(2, 4)
    traced = trace(model, x, name="shape_branch")
    assert traced.method == "export"
    ref = model(x)
    assert same(traced.module(x), ref)  # the model's own (tuple) output structure
    assert [n.name for n in traced.nodes if n.op == "placeholder"] == ["x"]
    assert not [n for n in traced.nodes if "guard" in n.name]
    assert any(n.target.startswith("torch.ops.aten.linear") for n in traced.compute_nodes())
    cuts = chain_cuts(traced)
    assert cuts
    for cut in cuts:
        assert same(run_pieces(head_tail(traced, cut), x), ref)
    check_composes(traced, random_ideal(traced, random.Random(0), 3), (x,), ref)
    assert fingerprint(traced.module) == trace(model, x).fingerprint


def test_an_export_captured_model_refuses_other_input_shapes() -> None:
    # export specialises the graph to the example's shapes (here: the branch taken at batch 2) and its
    # guards are dropped; at batch 1 the graph computed the batch-2 branch, silently
    torch.manual_seed(0)
    model, x = ShapeBranch().eval(), torch.randn(2, 4)
    traced = trace(model, x, name="shape_branch")
    assert traced.static_shapes and not trace(Chain().eval(), torch.randn(2, 3, 8, 8)).static_shapes
    other = torch.randn(1, 4)
    message = (
        r"captured by torch.export, whose graph holds only for the example input shape\(s\) \[\[2, 4\]\]"
    )
    with pytest.raises(ConfigError, match=message + r", found \[\[1, 4\]\]"):
        traced.module(other)
    pieces = head_tail(traced, chain_cuts(traced)[0])
    with pytest.raises(ConfigError, match=message):
        run_pieces(pieces, other)
    with pytest.raises(ConfigError, match=message):
        traced.check_input_shapes([(1, 4)])
    traced.check_input_shapes([(2, 4)])
    assert same(run_pieces(pieces, x), model(x))
    hook = pickle.loads(pickle.dumps(StaticShapes("m", ((2, 4),))))  # a module-level class: picklable
    with pytest.raises(ConfigError, match=r"found \[\[1, 4\]\]"):
        hook(traced.module, (other,))


class AliasInPlace(nn.Module):
    """An in-place change through a view: the base tensor sees it, in the model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        v = h.view(-1)
        v.mul_(3)
        return h + 1


def test_an_in_place_change_through_a_view_is_not_split_from_the_viewed_tensor() -> None:
    torch.manual_seed(0)
    model, x = AliasInPlace().eval(), torch.randn(2, 4)
    traced = trace(model, x, name="alias")
    ref = model(x.clone())
    assert [n.name for n in traced.compute_nodes()] == ["fc", "view", "mul_", "add"]
    # cut after the view: 'fc' and 'view' would reach tier 1 as two copies, and mul_ changes only one
    with pytest.raises(
        PlanError, match=r"'mul_' on tier 1 modifies 'view' in place, but \['fc', 'view'\] may share"
    ):
        head_tail(traced, "view")
    for cut in ["fc", "mul_"]:  # the other cuts hand on one tensor, and copies of it compose exactly
        head, tail = head_tail(traced, cut)
        with torch.no_grad():
            sent = {k: v.clone() for k, v in head({"x": x.clone()}).items()}
            assert same(tail(sent), ref)


def test_wrong_example_inputs_raise_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"model 'chain' failed on example inputs of shape \[2, 5, 8, 8\]: "
        r"RuntimeError: .*; pass inputs the model accepts",
    ):
        trace(Chain().eval(), torch.randn(2, 5, 8, 8), name="chain")
    with pytest.raises(
        ConfigError, match="example inputs must be a tensor or a tuple of tensors, found list"
    ):
        trace(Chain().eval(), [torch.randn(1, 3, 8, 8), 3])
    with pytest.raises(ConfigError, match="expected a torch.nn.Module to trace, found function"):
        trace(lambda x: x, torch.randn(1))  # type: ignore[arg-type]


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, scale: float = 2.0, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(x) * scale


def test_arguments_with_defaults_are_specialised() -> None:
    model, x = Scaled().eval(), torch.randn(2, 3)
    traced = trace(model, x)
    assert traced.method == "fx"
    assert [n.name for n in traced.nodes if n.op == "placeholder"] == ["x"]
    assert same(run_pieces(head_tail(traced, "fc"), x), model(x))


def test_trace_leaves_the_model_inputs_and_global_rng_alone() -> None:
    model, x = InPlace().eval(), torch.randn(2, 4)
    kept, state = x.clone(), torch.random.get_rng_state()
    trace(model, x)
    assert torch.equal(x, kept) and torch.equal(torch.random.get_rng_state(), state)


# --------------------------------------------------------------------------------------------------
# fingerprint


class Net(nn.Module):
    def __init__(self, width: int = 4, stride: int = 1, skip: bool = False) -> None:
        super().__init__()
        self.skip = skip
        self.conv = nn.Conv2d(3, width, 3, stride=stride, padding=1)
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        if self.skip:
            h = h + self.conv(x)
        return self.fc(h.mean((2, 3)))


def test_fingerprint_tracks_structure_not_weights() -> None:
    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(0)
    a = trace(Net(), x)
    torch.manual_seed(1)
    b_model = Net()
    b = trace(b_model, x)
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0
    assert a.fingerprint == b.fingerprint == trace(b_model, x).fingerprint  # other weights, same model
    assert fingerprint(b.module) == b.fingerprint
    assert trace(Net(width=5), x).fingerprint != a.fingerprint  # a layer's shape
    assert trace(Net(stride=2), x).fingerprint != a.fingerprint  # a layer's setting
    assert trace(Net(skip=True), x).fingerprint != a.fingerprint  # an edge
    assert trace(Net(), torch.randn(2, 3, 16, 16)).fingerprint == a.fingerprint  # input shape is separate


def test_example_inputs_take_the_models_precision() -> None:
    half = nn.Linear(4, 2).to(torch.float16)
    (x,) = example_inputs(half, [(3, 4)])
    assert x.dtype == torch.float16 and x.shape == (3, 4)
    assert input_dtype(nn.ReLU()) == torch.float32  # no parameters: float32
    (y,) = example_inputs(nn.Linear(4, 2), [(3, 4)])
    assert torch.equal(y, torch.randn((3, 4), generator=torch.Generator().manual_seed(0)))  # as before
