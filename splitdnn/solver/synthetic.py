"""Synthetic profiles for solver tests and benchmarks (stdlib only).

* :func:`make_profiles` turns a list of :class:`SynthNode` (name, op, inputs, device time, output and
  parameter bytes) into one valid :class:`~splitdnn.schema.Profile` per tier of the same "model";
* :func:`random_dag` draws small arbitrary DAGs (fan-out, fan-in, several model inputs, parameters,
  nodes without inputs, dead code, several values read by the output) for property tests;
* :func:`resnet50_like` and :func:`network_dag` build network-shaped graphs (residual, inception and
  attention blocks, with plausible FLOP-based times and activation sizes) for benchmarks.

Nothing here is measured: these profiles exercise the solver, they say nothing about real models.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from splitdnn.schema import (
    PROFILE_SCHEMA_VERSION,
    Calibration,
    LatencyStats,
    MachineInfo,
    NodeProfile,
    Profile,
    TensorMeta,
)

__all__ = [
    "SynthNode",
    "make_profiles",
    "network_dag",
    "random_dag",
    "random_profiles",
    "resnet50_like",
]


@dataclass(frozen=True)
class SynthNode:
    """One node of a synthetic graph; times are the device's (tier 0)."""

    name: str
    op: str = (
        "call_module"  # an fx op: placeholder, get_attr, call_module, call_function, call_method, output
    )
    inputs: tuple[str, ...] = ()
    ms: float = 0.0  # device compute time
    nbytes: int = 0  # output_bytes
    param_bytes: int = 0


def make_profiles(
    nodes: Sequence[SynthNode],
    speedups: Sequence[float] = (1.0, 10.0),
    *,
    tier_ms: Sequence[Sequence[float]] | None = None,
    model: str = "synthetic",
) -> list[Profile]:
    """One profile per tier; tier t runs every node ``speedups[t]`` times faster than the device, or
    takes the explicit times ``tier_ms[t][i]`` (one per node, in order) when given."""
    fp = hashlib.sha256(repr([(n.name, n.op, n.inputs) for n in nodes]).encode()).hexdigest()
    shapes = tuple((1, max(n.nbytes // 4, 1)) for n in nodes if n.op == "placeholder")
    count = len(tier_ms) if tier_ms is not None else len(speedups)
    profiles = []
    for t in range(count):
        recs = []
        for i, n in enumerate(nodes):
            compute = n.op in ("call_module", "call_function", "call_method")
            if tier_ms is not None:
                ms = float(tier_ms[t][i]) if compute else 0.0
            else:
                ms = n.ms / speedups[t] if compute else 0.0
            recs.append(
                NodeProfile(
                    name=n.name,
                    op=n.op,
                    target=n.op if n.op != "call_module" else n.name.replace("_", "."),
                    inputs=tuple(n.inputs),
                    outputs=(TensorMeta((max(n.nbytes // 4, 0),), "float32", n.nbytes),),
                    output_bytes=n.nbytes,
                    param_bytes=n.param_bytes,
                    latency=LatencyStats(ms, ms, ms, 1),
                    calibrated_ms=ms,
                )
            )
        total = sum(r.calibrated_ms for r in recs)
        profiles.append(
            Profile(
                schema_version=PROFILE_SCHEMA_VERSION,
                model=model,
                fingerprint=fp,
                input_shapes=shapes,
                batch_size=1,
                machine=MachineInfo(
                    hostname=f"synthetic-tier{t}",
                    platform="synthetic",
                    processor="synthetic",
                    cpu_count=1,
                    threads=1,
                    device="cpu",
                    accelerator="",
                    python="",
                    torch="",
                ),
                slowdown=1.0,
                warmup=0,
                repeats=1,
                total=LatencyStats(total, total, total, 1),
                calibration=Calibration("synthetic", 0, 0, 0.0, 0.0, 0.0),
                nodes=tuple(recs),
                created_utc="1970-01-01T00:00:00Z",
                notes="synthetic profile for solver tests; not a measurement",
            )
        )
    return profiles


# --------------------------------------------------------------------------------------------------
# small random DAGs


def random_dag(
    rng: random.Random,
    n_compute: int,
    *,
    n_inputs: int = 1,
    max_fan_in: int = 3,
    p_attr: float = 0.15,
    p_sourceless: float = 0.05,
    p_dead: float = 0.05,
    max_output_inputs: int = 3,
) -> list[SynthNode]:
    """A random DAG with random times and sizes (zeros and extremes included)."""
    nodes: list[SynthNode] = []
    values: list[str] = []  # names whose value can be read (inputs and compute nodes)
    for i in range(n_inputs):
        name = "x" if i == 0 else f"x{i}"
        nodes.append(SynthNode(name, "placeholder", (), 0.0, _rand_bytes(rng)))
        values.append(name)
    attrs: list[str] = []
    for i in range(n_compute):
        if rng.random() < p_attr:
            attr = f"p{len(attrs)}"
            nodes.append(SynthNode(attr, "get_attr", (), 0.0, rng.randint(0, 4096)))
            attrs.append(attr)
        if rng.random() < p_sourceless:
            inputs: list[str] = []
        else:
            k = rng.randint(1, max_fan_in)
            recent = values[-4:]
            pool = recent if rng.random() < 0.6 else values
            inputs = rng.sample(pool, min(k, len(pool)))
            # usually read the latest value, so the graph looks like a network rather than a soup
            if values[-1] not in inputs and rng.random() < 0.6:
                inputs[0] = values[-1]
                inputs = list(dict.fromkeys(inputs))
        if attrs and rng.random() < p_attr:
            inputs.append(rng.choice(attrs))
        op = rng.choice(("call_module", "call_function", "call_method"))
        name = f"n{i}"
        nodes.append(
            SynthNode(name, op, tuple(inputs), _rand_ms(rng), _rand_bytes(rng), rng.randint(0, 10_000))
        )
        values.append(name)
    computes = [n.name for n in nodes if n.op not in ("placeholder", "get_attr")]
    out_inputs = [computes[-1]] if computes else [values[0]]
    for _ in range(rng.randint(0, max_output_inputs - 1)):
        if rng.random() < p_dead * 4:
            continue  # leave some nodes unread: dead code
        cand = rng.choice(values)
        if cand not in out_inputs:
            out_inputs.append(cand)
    nodes.append(SynthNode("output", "output", tuple(out_inputs), 0.0, _rand_bytes(rng)))
    return nodes


def random_profiles(nodes: Sequence[SynthNode], rng: random.Random, tiers: int = 2) -> list[Profile]:
    """Profiles whose tiers have independent random times (not just a speed factor)."""
    tier_ms = [[n.ms if t == 0 else _rand_ms(rng) for n in nodes] for t in range(tiers)]
    return make_profiles(nodes, tier_ms=tier_ms)


def _rand_ms(rng: random.Random) -> float:
    r = rng.random()
    if r < 0.1:
        return 0.0
    if r < 0.2:
        return rng.uniform(0, 1e-3)
    if r < 0.3:
        return rng.uniform(100, 1000)
    return rng.uniform(0, 20)


def _rand_bytes(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.2:
        return rng.randint(1, 100)
    if r < 0.3:
        return rng.randint(10**6, 10**8)
    return rng.randint(100, 10**6)


# --------------------------------------------------------------------------------------------------
# network-shaped graphs


class _Builder:
    """Appends nodes with FLOP-based device times (``gflops`` device speed, ``gbps`` memory speed)."""

    def __init__(self, gflops: float = 20.0, gbps: float = 5.0) -> None:
        self.nodes: list[SynthNode] = []
        self.gflops = gflops
        self.gbps = gbps
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def add(
        self, stem: str, op: str, inputs: Sequence[str], nbytes: int, *, flops: float = 0.0, params: int = 0
    ) -> str:
        name = self.name(stem)
        ms = flops / (self.gflops * 1e9) * 1e3 + nbytes / (self.gbps * 1e9) * 1e3
        self.nodes.append(SynthNode(name, op, tuple(inputs), ms, int(nbytes), int(params)))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, hw: int, stem: str = "conv") -> str:
        nbytes = cout * hw * hw * 4
        return self.add(
            stem,
            "call_module",
            [x],
            nbytes,
            flops=2.0 * cin * cout * k * k * hw * hw,
            params=cin * cout * k * k * 4,
        )

    def cbr(self, x: str, cin: int, cout: int, k: int, hw: int, relu: bool = True) -> str:
        y = self.conv(x, cin, cout, k, hw)
        y = self.add("bn", "call_module", [y], cout * hw * hw * 4, params=cout * 16)
        if relu:
            y = self.add("relu", "call_module", [y], cout * hw * hw * 4)
        return y


def resnet50_like() -> list[SynthNode]:
    """A graph with ResNet-50's shape: stem, 16 bottleneck blocks (4 with a downsample), head; 175
    compute nodes with FLOP-based device times (~20 GFLOP/s) and real activation sizes."""
    b = _Builder()
    b.nodes.append(SynthNode("x", "placeholder", (), 0.0, 3 * 224 * 224 * 4))
    y = b.cbr("x", 3, 64, 7, 112)
    y = b.add("maxpool", "call_module", [y], 64 * 56 * 56 * 4)
    cin, hw = 64, 56
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for i in range(blocks):
            out_hw = hw // 2 if (i == 0 and stage > 0) else hw
            h = b.cbr(y, cin, width, 1, hw)
            h = b.cbr(h, width, width, 3, out_hw)
            h = b.cbr(h, width, width * 4, 1, out_hw, relu=False)
            short = y
            if i == 0:
                short = b.cbr(y, cin, width * 4, 1, out_hw, relu=False)
            y = b.add("add", "call_function", [h, short], width * 4 * out_hw * out_hw * 4)
            y = b.add("relu", "call_module", [y], width * 4 * out_hw * out_hw * 4)
            cin, hw = width * 4, out_hw
    y = b.add("avgpool", "call_module", [y], cin * 4)
    y = b.add("flatten", "call_function", [y], cin * 4)
    y = b.add("fc", "call_module", [y], 1000 * 4, flops=2.0 * cin * 1000, params=cin * 1000 * 4)
    b.nodes.append(SynthNode("output", "output", (y,), 0.0, 1000 * 4))
    return b.nodes


def network_dag(n_compute: int = 1000, seed: int = 0) -> list[SynthNode]:
    """A network-looking DAG of about ``n_compute`` compute nodes: a CNN trunk of residual and
    inception blocks, then transformer-encoder blocks (attention with a mask built from no inputs,
    a parameter read through ``get_attr``, a ``size`` call feeding a ``view``), then a head."""
    rng = random.Random(seed)
    b = _Builder()
    b.nodes.append(SynthNode("x", "placeholder", (), 0.0, 3 * 224 * 224 * 4))
    y = b.cbr("x", 3, 64, 7, 112)
    c, hw = 64, 56
    y = b.add("maxpool", "call_module", [y], c * hw * hw * 4)
    cnn_budget = n_compute * 0.55
    while len(b.nodes) < cnn_budget:
        if rng.random() < 0.6:
            down = hw > 7 and rng.random() < 0.25
            out_hw = hw // 2 if down else hw
            cout = c * 2 if down else c
            h = b.cbr(y, c, cout, 3, out_hw)
            h = b.cbr(h, cout, cout, 3, out_hw, relu=False)
            short = b.cbr(y, c, cout, 1, out_hw, relu=False) if down else y
            y = b.add("add", "call_function", [h, short], cout * out_hw * out_hw * 4)
            y = b.add("relu", "call_module", [y], cout * out_hw * out_hw * 4)
            c, hw = cout, out_hw
        else:
            q = c // 4
            br1 = b.cbr(y, c, q, 1, hw)
            br2 = b.cbr(b.cbr(y, c, q, 1, hw), q, q, 3, hw)
            br3 = b.cbr(b.cbr(b.cbr(y, c, q, 1, hw), q, q, 3, hw), q, q, 3, hw)
            br4 = b.cbr(b.add("pool", "call_module", [y], c * hw * hw * 4), c, q, 1, hw)
            y = b.add("cat", "call_function", [br1, br2, br3, br4], c * hw * hw * 4)
    # to tokens: size() feeding a view, then a projection
    tokens, dim = hw * hw, 256
    s = b.add("size", "call_method", [y], 8)
    y = b.add("view", "call_method", [y, s], c * hw * hw * 4)
    y = b.add("proj", "call_module", [y], tokens * dim * 4, flops=2.0 * c * dim * tokens, params=c * dim * 4)
    pos = b.name("pos_embedding")
    b.nodes.append(SynthNode(pos, "get_attr", (), 0.0, tokens * dim * 4))
    y = b.add("add_pos", "call_function", [y, pos], tokens * dim * 4)
    act = tokens * dim * 4
    while len(b.nodes) < n_compute - 4:
        ln = b.add("ln", "call_function", [y], act, params=dim * 8)
        qkv = [
            b.add(s_, "call_module", [ln], act, flops=2.0 * tokens * dim * dim, params=dim * dim * 4)
            for s_ in ("q", "k", "v")
        ]
        kt = b.add("transpose", "call_method", [qkv[1]], act)
        att = b.add(
            "matmul", "call_function", [qkv[0], kt], tokens * tokens * 4, flops=2.0 * tokens * tokens * dim
        )
        att = b.add("mul", "call_function", [att], tokens * tokens * 4)
        if rng.random() < 0.3:
            mask = b.add("mask", "call_function", [], tokens * tokens * 4)  # built from constants
            att = b.add("add_mask", "call_function", [att, mask], tokens * tokens * 4)
        att = b.add("softmax", "call_function", [att], tokens * tokens * 4)
        o = b.add("matmul", "call_function", [att, qkv[2]], act, flops=2.0 * tokens * tokens * dim)
        o = b.add("out_proj", "call_module", [o], act, flops=2.0 * tokens * dim * dim, params=dim * dim * 4)
        y = b.add("add", "call_function", [y, o], act)
        ln = b.add("ln", "call_function", [y], act, params=dim * 8)
        f = b.add("fc1", "call_module", [ln], act * 4, flops=8.0 * tokens * dim * dim, params=dim * dim * 16)
        f = b.add("gelu", "call_function", [f], act * 4)
        f = b.add("fc2", "call_module", [f], act, flops=8.0 * tokens * dim * dim, params=dim * dim * 16)
        y = b.add("add", "call_function", [y, f], act)
    y = b.add("mean", "call_method", [y], dim * 4)
    y = b.add("head", "call_module", [y], 1000 * 4, flops=2.0 * dim * 1000, params=dim * 1000 * 4)
    b.nodes.append(SynthNode("output", "output", (y,), 0.0, 1000 * 4))
    return b.nodes
