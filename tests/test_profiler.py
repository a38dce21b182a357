"""The profiler: complete and valid profiles, exact calibration, honest scaling, restored state.

Timing-dependent checks run on a virtual clock: forward hooks on the model's leaf modules advance it
by a fixed cost per call, and the profiler reads it through its injectable ``timer``. Real-clock runs
only check structure and the calibration identities, never how long anything took.
"""

from __future__ import annotations

import io
import re
import sys
import warnings
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
import torch
from torch import fx, nn

from splitdnn import graph
from splitdnn.calibrate import split_prediction
from splitdnn.errors import ConfigError, ProfileError
from splitdnn.models.registry import ZOO, build_zoo_model
from splitdnn.profiler import machine_info, measure_cuts, profile, profile_model, profile_model_run
from splitdnn.progress import Progress
from splitdnn.schema import Profile, profile_from_json, profile_to_json

# two timed runs of a toy model on a shared machine are noisy by nature; the warning is tested in
# test_calibrate.py
pytestmark = pytest.mark.filterwarnings("ignore:profile of .* timings look unreliable:RuntimeWarning")

# one thread keeps toy models steady on a busy machine
FAST: dict[str, Any] = {"warmup": 1, "repeats": 2, "progress": False, "threads": 1}


class TinyChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act0 = nn.ReLU(inplace=True)  # modifies the model input: profiling must not touch the caller's
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(x)  # (B, 3, 8, 8)
        x = self.relu(self.bn(self.conv(x)))  # (B, 4, 8, 8)
        return self.fc(torch.flatten(x, 1))  # (B, 5)


class TinyDAG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 1)
        self.right = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))  # read by a get_attr node
        self.register_buffer("shift", torch.zeros(8, 1, 1))  # a buffer read by a get_attr node
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.stem(x))  # (B, 8, H, W)
        a, b = torch.chunk(y, 2, dim=1)  # a node whose value is a tuple
        s = self.left(y) + self.right(y) * self.scale + self.shift
        z = torch.cat([b, a], 1) + s
        n = z.size(0)  # a node whose value is an int
        pooled = z.mean(dim=(2, 3)).view(n, -1)  # (B, 8)
        return self.head(pooled), pooled  # the model's value is a tuple too


def _trace(model: nn.Module, shape: tuple[int, ...], name: str) -> graph.TracedModel:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return graph.trace(model.eval(), (x,), name=name)


@pytest.fixture
def chain() -> graph.TracedModel:
    return _trace(TinyChain(), (2, 3, 8, 8), "tiny_chain")


@pytest.fixture
def dag() -> graph.TracedModel:
    return _trace(TinyDAG(), (1, 3, 6, 6), "tiny_dag")


class VirtualClock:
    """Seconds that pass only when a charged module runs (and ``tick_s`` per reading)."""

    def __init__(self, tick_s: float = 0.0) -> None:
        self.now = 0.0
        self.tick_s = tick_s

    def __call__(self) -> float:
        t = self.now
        self.now += self.tick_s
        return t


def charge(traced: graph.TracedModel, clock: VirtualClock) -> dict[str, float]:
    """Make each call_module node cost 1, 2, 3, ... ms on ``clock``; returns ms per compute node."""
    costs: dict[str, float] = {}
    for node in traced.module.graph.nodes:
        if node.op == "call_module" and node.target not in costs:
            ms = float(len(costs) + 1)
            costs[node.target] = ms
            traced.module.get_submodule(node.target).register_forward_hook(
                lambda *_, s=ms / 1e3: setattr(clock, "now", clock.now + s)
            )
    return {
        n.name: costs[str(n.target)] if n.op == "call_module" else 0.0
        for n in traced.module.graph.nodes
        if n.op in ("call_module", "call_function", "call_method")
    }


def _independent_values(traced: graph.TracedModel) -> dict[str, Any]:
    """Every node's value from a plain fx.Interpreter run on a copy of the input."""
    values: dict[str, Any] = {}

    class Keep(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n.name] = super().run_node(n)
            return values[n.name]

    with torch.no_grad():
        Keep(traced.module).run(*(x.clone() for x in traced.example_inputs))
    return values


def _expected_bytes(value: Any) -> tuple[list[tuple[tuple[int, ...], str]], int]:
    if isinstance(value, torch.Tensor):
        return [
            (tuple(value.shape), str(value.dtype).removeprefix("torch."))
        ], value.nelement() * value.element_size()
    if isinstance(value, (tuple, list)):
        metas, total = [], 0
        for v in value:
            m, b = _expected_bytes(v)
            metas += m
            total += b
        return metas, total
    if isinstance(value, int):
        return [((), "int64")], 8
    raise AssertionError(f"unexpected value {value!r}")


def _model_bytes(module: nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.nelement() * t.element_size() for t in tensors.values())


# --------------------------------------------------------------------------------------------------
# structure


@pytest.mark.parametrize("which", ["chain", "dag"])
def test_profile_is_complete_and_round_trips(which: str, request: pytest.FixtureRequest) -> None:
    traced: graph.TracedModel = request.getfixturevalue(which)
    prof = profile_model(traced, **FAST)
    assert isinstance(prof, Profile)
    assert profile_from_json(profile_to_json(prof)) == prof
    assert [n.name for n in prof.nodes] == [n.name for n in traced.nodes]
    assert [(n.op, n.target, n.inputs) for n in prof.nodes] == [
        (n.op, n.target, n.inputs) for n in traced.nodes
    ]
    assert prof.model == traced.name and prof.fingerprint == traced.fingerprint
    assert prof.input_shapes == traced.input_shapes
    assert prof.batch_size == traced.input_shapes[0][0]
    assert (prof.warmup, prof.repeats, prof.slowdown) == (1, 2, 1.0)

    values = _independent_values(traced)
    for node in prof.nodes:
        metas, nbytes = _expected_bytes(values[node.name])
        assert [(m.shape, m.dtype) for m in node.outputs] == metas, node.name
        assert node.output_bytes == nbytes == sum(m.nbytes for m in node.outputs), node.name
        if node.is_compute:
            assert node.latency.repeats == 2
        else:
            assert node.latency.median_ms == node.calibrated_ms == 0.0, node.name
    assert sum(n.param_bytes for n in prof.nodes) == _model_bytes(traced.module)
    assert all(n.param_bytes == 0 for n in prof.nodes if n.op not in ("call_module", "get_attr"))


def test_dag_profile_flattens_tuples_and_counts_scalars(dag: graph.TracedModel) -> None:
    prof = profile_model(dag, **FAST)
    chunk = next(n for n in prof.nodes if n.target == "torch.chunk")
    assert len(chunk.outputs) == 2 and chunk.output_bytes == 2 * 4 * 36 * 4  # two (1, 4, 6, 6) float32
    size = next(n for n in prof.nodes if n.target == "size")
    assert [(m.shape, m.dtype, m.nbytes) for m in size.outputs] == [((), "int64", 8)]
    out = next(n for n in prof.nodes if n.op == "output")
    assert out.output_bytes == (3 + 8) * 4 and len(out.outputs) == 2
    attrs = {n.target: n.param_bytes for n in prof.nodes if n.op == "get_attr"}
    assert attrs == {"scale": 8 * 4, "shift": 8 * 4}


def test_calibration_identities_on_the_real_clock(dag: graph.TracedModel) -> None:
    run = profile_model_run(dag, **FAST)
    prof = run.profile
    cal = [n.calibrated_ms for n in prof.compute_nodes]
    assert run.anchors[-1].position == len(cal)
    assert len(run.anchors) == len(run.fitted_prefix_ms) == prof.calibration.segments
    for anchor, fitted in zip(run.anchors, run.fitted_prefix_ms, strict=True):
        assert sum(cal[: anchor.position]) == pytest.approx(fitted, rel=1e-9, abs=1e-12)
    assert run.fitted_prefix_ms[-1] == prof.total.median_ms
    assert sum(cal) == pytest.approx(prof.total.median_ms, rel=1e-9)
    assert all(b >= a for a, b in pairwise(run.fitted_prefix_ms))
    assert prof.calibration.cuts_checked == len(run.checks)
    assert not {c.cut for c in run.checks} & {a.cut for a in run.anchors}  # held out from the fit


def test_check_cuts_zero_fits_on_every_chain_cut(chain: graph.TracedModel) -> None:
    run = profile_model_run(chain, check_cuts=0, **FAST)
    assert run.checks == () and run.profile.calibration.cuts_checked == 0
    assert run.profile.calibration.mape_pct == 0.0
    assert {a.cut for a in run.anchors} >= set(graph.chain_cuts(chain))
    run = profile_model_run(chain, segments=1, **FAST)  # the whole model is the only segment
    assert [a.position for a in run.anchors] == [len(run.profile.compute_nodes)]


# --------------------------------------------------------------------------------------------------
# the virtual clock: exact numbers


@pytest.mark.parametrize("which", ["chain", "dag"])
@pytest.mark.parametrize("method", ["segment-prefix", "segment-head-tail"])
def test_calibration_is_exact_at_anchors(which: str, method: str, request: pytest.FixtureRequest) -> None:
    traced: graph.TracedModel = request.getfixturevalue(which)
    clock = VirtualClock()
    cost = charge(traced, clock)
    run = profile_model_run(traced, timer=clock, calibration=method, **FAST)
    prof = run.profile
    names = [n.name for n in prof.compute_nodes]
    costs = [cost[n] for n in names]
    for node in prof.compute_nodes:
        assert node.latency.median_ms == pytest.approx(cost[node.name])
    for anchor in run.anchors:  # measured heads == the fitted prefix == the calibrated sum
        assert anchor.head.median_ms == pytest.approx(sum(costs[: anchor.position]))
        assert sum(n.calibrated_ms for n in prof.compute_nodes[: anchor.position]) == pytest.approx(
            anchor.head.median_ms, rel=1e-12
        )
    assert prof.total.median_ms == pytest.approx(sum(costs))
    assert sum(n.calibrated_ms for n in prof.compute_nodes) == pytest.approx(prof.total.median_ms, rel=1e-12)
    assert prof.calibration.method == method
    assert prof.calibration.cuts_checked >= 1
    assert prof.calibration.max_abs_error_ms == pytest.approx(0.0, abs=1e-9)
    for check in run.checks:
        head, tail = split_prediction(prof, check.cut)
        assert (head, tail) == pytest.approx((check.head.median_ms, check.tail.median_ms), abs=1e-9)


@pytest.mark.parametrize("which", ["chain", "dag"])
def test_segment_direct_times_each_segment_and_predicts_every_cut(
    which: str, request: pytest.FixtureRequest
) -> None:
    traced: graph.TracedModel = request.getfixturevalue(which)
    clock = VirtualClock()
    cost = charge(traced, clock)
    run = profile_model_run(traced, timer=clock, calibration="segment-direct", **FAST)
    prof = run.profile
    costs = [cost[n.name] for n in prof.compute_nodes]
    start = 0
    for anchor, fitted in zip(run.anchors, run.fitted_prefix_ms, strict=True):
        # each anchor's measurement is the segment that ends there, timed as its own piece
        assert anchor.head.median_ms == pytest.approx(sum(costs[start : anchor.position]))
        assert fitted == pytest.approx(sum(costs[: anchor.position]))
        start = anchor.position
    assert start == len(costs)
    assert prof.calibration.method == "segment-direct" and prof.calibration.cuts_checked >= 1
    assert prof.calibration.max_abs_error_ms == pytest.approx(0.0, abs=1e-9)
    assert sum(n.calibrated_ms for n in prof.compute_nodes) == pytest.approx(prof.total.median_ms, rel=1e-12)


def test_segment_direct_is_the_default_and_survives_per_piece_overhead(chain: graph.TracedModel) -> None:
    clock = VirtualClock(tick_s=0.25e-3)  # every reading adds 0.25 ms: pieces cost more than the whole
    charge(chain, clock)
    run = profile_model_run(chain, timer=clock, **FAST)
    prof = run.profile
    assert prof.calibration.method == "segment-direct"
    assert sum(n.calibrated_ms for n in prof.compute_nodes) == pytest.approx(prof.total.median_ms, rel=1e-12)
    assert all(b >= a for a, b in pairwise(run.fitted_prefix_ms))


def test_slowdown_scales_times_errors_and_describe(chain: graph.TracedModel) -> None:
    profiles = {}
    for factor in (1.0, 2.5):
        clock = VirtualClock(tick_s=0.25e-3)  # every reading adds 0.25 ms: head + tail != total
        charge(chain, clock)
        profiles[factor] = profile_model(chain, timer=clock, slowdown=factor, **FAST)
    base, slow = profiles[1.0], profiles[2.5]
    assert slow.slowdown == 2.5 and base.slowdown == 1.0
    assert base.calibration.max_abs_error_ms > 0  # the check is not trivially exact
    for a, b in zip(base.nodes, slow.nodes, strict=True):
        for field in ("median_ms", "p10_ms", "p90_ms"):
            assert getattr(b.latency, field) == pytest.approx(2.5 * getattr(a.latency, field))
        assert b.calibrated_ms == pytest.approx(2.5 * a.calibrated_ms)
        assert (b.outputs, b.output_bytes, b.param_bytes) == (a.outputs, a.output_bytes, a.param_bytes)
    assert slow.total.median_ms == pytest.approx(2.5 * base.total.median_ms)
    assert slow.calibration.max_abs_error_ms == pytest.approx(2.5 * base.calibration.max_abs_error_ms)
    assert slow.calibration.median_abs_error_ms == pytest.approx(2.5 * base.calibration.median_abs_error_ms)
    assert slow.calibration.mape_pct == pytest.approx(base.calibration.mape_pct)
    assert "x2.5" in slow.describe() and "slowdown" in slow.describe()
    assert "slowdown" not in base.describe()


def test_measure_cuts(chain: graph.TracedModel) -> None:
    clock = VirtualClock()
    cost = charge(chain, clock)
    names = [n.name for n in chain.compute_nodes()]
    cuts = [*graph.chain_cuts(chain)[:2], names[-1]]
    timings = measure_cuts(chain, cuts, timer=clock, **FAST)
    assert [t.cut for t in timings] == cuts
    for t in timings:
        assert t.position == names.index(t.cut) + 1
        assert t.head.median_ms == pytest.approx(sum(cost[n] for n in names[: t.position]))
        assert t.tail.median_ms == pytest.approx(sum(cost[n] for n in names[t.position :]))
    assert timings[-1].tail.repeats == 0  # the last node's cut is the whole model, empty tail
    with pytest.raises(ConfigError, match="not compute nodes"):
        measure_cuts(chain, ["nope"], **FAST)


# --------------------------------------------------------------------------------------------------
# state restored, options refused


def test_threads_mode_and_tensors_restored(chain: graph.TracedModel) -> None:
    chain.module.train()
    before_threads = torch.get_num_threads()
    state = {k: v.clone() for k, v in chain.module.state_dict().items()}
    x = chain.example_inputs[0].clone()
    assert (x < 0).any()  # the model's in-place ReLU would change it
    prof = profile_model(chain, **FAST)  # threads=1
    assert prof.machine.threads == 1
    assert torch.get_num_threads() == before_threads
    assert all(m.training for m in chain.module.modules())  # profiled in eval mode, train mode back
    for k, v in chain.module.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, state[k]), k
    assert torch.equal(chain.example_inputs[0], x)


def test_state_restored_after_a_failure(chain: graph.TracedModel) -> None:
    before = torch.get_num_threads()
    chain.module.train()

    def broken_timer() -> float:
        raise RuntimeError("clock broke")

    with pytest.raises(RuntimeError, match="clock broke"):
        profile_model(chain, timer=broken_timer, **FAST)  # threads=1
    assert torch.get_num_threads() == before
    assert all(m.training for m in chain.module.modules())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"slowdown": 0.5}, "slowdown"),
        ({"slowdown": float("nan")}, "slowdown"),
        ({"slowdown": float("inf")}, "slowdown"),
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
        ({"threads": 0}, "threads"),
        ({"device": "tpu"}, "device"),
        ({"segments": 0}, "segments"),
        ({"check_cuts": -1}, "check_cuts"),
        ({"calibration": "magic"}, "calibration"),
        ({"progress": "yes"}, "progress"),
    ],
)
def test_bad_options_are_refused(chain: graph.TracedModel, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        profile_model(chain, **{**FAST, **options})


def test_cuda_when_unavailable(chain: graph.TracedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"torch.cuda.is_available\(\) is False"):
        profile_model(chain, device="cuda", **FAST)
    with pytest.raises(ConfigError, match="cuda"):
        measure_cuts(chain, [], device="cuda:0", **FAST)
    with pytest.raises(ConfigError, match="'cpu', 'cuda' or 'cuda:N', found 'cuda:x'"):
        profile_model(chain, device="cuda:x", **FAST)
    # a machine with two GPUs, as torch reports it: cuda:2 is refused by name before anything runs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"'cuda:2' requested but this machine has 2 CUDA device\(s\)"):
        profile_model(chain, device="cuda:2", **FAST)
    with pytest.raises(ConfigError, match="repeats"):
        measure_cuts(chain, [], repeats=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_on_cuda(dag: graph.TracedModel) -> None:
    prof = profile_model(dag, device="cuda", **FAST)
    assert prof.machine.device == "cuda" and prof.machine.accelerator
    assert all(p.device.type == "cpu" for p in dag.module.parameters())  # moved back
    assert profile_from_json(profile_to_json(prof)) == prof


# --------------------------------------------------------------------------------------------------
# progress, machine, convenience


def test_progress_bar_goes_to_stderr(chain: graph.TracedModel, capsys: pytest.CaptureFixture[str]) -> None:
    profile_model(chain, warmup=1, repeats=2, threads=1, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "profile tiny_chain" in err and "anchors" in err
    profile_model(chain, warmup=1, repeats=2, threads=1, progress=False)
    assert capsys.readouterr() == ("", "")


def test_progress_bar_redraws_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = Progress(True, label="profile m", stages={"nodes": 2})
    bar.stage("nodes")
    bar.advance()
    bar.advance()
    bar.close()
    text = term.getvalue()
    assert text.startswith("\rprofile m  nodes") and re.search(r"\] 100%  \d+\.\ds\n$", text)
    assert text.count("\n") == 1  # one line, redrawn with carriage returns


def test_progress_callback(chain: graph.TracedModel) -> None:
    calls: list[tuple[int, int, str]] = []
    report: Callable[[int, int, str], None] = lambda d, t, s: calls.append((d, t, s))  # noqa: E731
    profile_model(chain, warmup=1, repeats=2, threads=1, progress=report)
    done = [c[0] for c in calls]
    assert done == sorted(done)
    assert {c[1] for c in calls} == {calls[-1][1]}
    assert calls[-1] == (calls[-1][1], calls[-1][1], "done")
    assert {"record", "nodes", "anchors"} <= {c[2] for c in calls}


def test_machine_info() -> None:
    m = machine_info()
    assert m.device == "cpu" and m.accelerator == ""
    assert m.cpu_count >= 1 and m.threads == torch.get_num_threads()
    assert m.torch == torch.__version__ and m.python and m.processor


def test_profile_convenience_on_a_module() -> None:
    prof = profile(TinyChain(), (2, 3, 8, 8), name="conv", segments=3, check_cuts=1, **FAST)
    assert prof.model == "conv" and prof.input_shapes == ((2, 3, 8, 8),) and prof.batch_size == 2
    assert prof.calibration.segments <= 3
    with pytest.raises(ConfigError, match="input_shape"):
        profile(TinyChain())


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_zoo_models_profile(name: str) -> None:
    entry = ZOO[name]
    model = build_zoo_model(name, **entry.test_kwargs)
    traced = _trace(model, (1, *entry.test_input_shape), name)
    prof = profile_model(traced, warmup=0, repeats=1, segments=6, check_cuts=2, threads=1, progress=False)
    assert profile_from_json(profile_to_json(prof)) == prof
    assert sum(n.param_bytes for n in prof.nodes) == _model_bytes(traced.module)
    assert prof.calibration.segments == 6 and prof.calibration.cuts_checked == 2
    assert sum(n.calibrated_ms for n in prof.compute_nodes) == pytest.approx(prof.total.median_ms)


# --------------------------------------------------------------------------------------------------
# codec measurements on real activations


def test_codecs_are_measured_on_every_float_tensor_value(dag) -> None:
    from splitdnn.profiler import DEFAULT_CODECS

    prof = profile_model(dag, **FAST)  # default: every input and compute node with a float32 value
    measured = {n.name for n in prof.nodes if n.codecs}
    for n in prof.nodes:
        single_float = len(n.outputs) == 1 and n.outputs[0].dtype == "float32"
        candidate = n.op == "placeholder" or n.is_compute
        assert (n.name in measured) == (single_float and candidate), n.name
    for n in prof.nodes:
        if not n.codecs:
            continue
        assert [c.spec for c in n.codecs] == list(DEFAULT_CODECS)
        raw, zstd = n.codec("raw"), n.codec("zstd")
        assert raw.wire_bytes > n.output_bytes  # the frame header
        for c in (raw, zstd):
            assert c.max_abs_error == 0 and c.rel_mse == 0 and c.cosine == pytest.approx(1.0)
        int8 = n.codec("int8+zstd")
        assert int8.rel_mse < 1e-3 and int8.cosine > 0.999
        assert all(c.encode_ms >= 0 and c.decode_ms >= 0 for c in n.codecs)
    assert profile_from_json(profile_to_json(prof)) == prof


def test_codecs_see_the_value_before_an_in_place_node_overwrites_it(chain) -> None:
    import numpy as np

    from splitdnn import codec

    prof = profile_model(chain, codecs=("zstd", "int8"), **FAST)
    x = chain.example_inputs[0].numpy()
    assert (x < 0).any()  # act0 (in-place ReLU) would zero these in the recorded value
    (zstd,) = [c for c in prof.node("x").codecs if c.spec == "zstd"]
    assert zstd.wire_bytes == len(codec.encode(np.ascontiguousarray(x), "zstd"))
    (int8,) = [c for c in prof.node("x").codecs if c.spec == "int8"]
    assert int8.max_abs_error <= codec.error_bound("int8", x) + 1e-6


def test_codec_options(chain) -> None:
    assert all(not n.codecs for n in profile_model(chain, codecs=(), **FAST).nodes)
    only = profile_model(chain, codecs=("raw",), codec_nodes=["conv"], **FAST)
    assert [n.name for n in only.nodes if n.codecs] == ["conv"]
    chained = profile_model(chain, codecs=("raw",), codec_nodes="chain", **FAST)
    assert {n.name for n in chained.nodes if n.codecs} == {"x", *graph.chain_cuts(chain)}
    with pytest.raises(ConfigError, match="nope"):
        profile_model(chain, codecs=("nope+zstd",), **FAST)
    with pytest.raises(ConfigError, match="codec_nodes"):
        profile_model(chain, codec_nodes=["no_such_node"], **FAST)


def test_codec_times_are_medians_scaled_by_the_slowdown() -> None:
    import numpy as np

    from splitdnn.codec import measure

    ticks = iter(range(1000))
    results = measure(np.ones((2, 3), np.float32), ("raw", "int8"), repeats=3, factor=4.0,
                      timer=lambda: next(ticks) * 1e-3)  # fmt: skip
    assert [r.encode_ms for r in results] == pytest.approx([4.0, 4.0])  # 1 ms per reading, x4
    assert [r.decode_ms for r in results] == pytest.approx([4.0, 4.0])
    assert measure(np.array([1.0, np.nan], np.float32), ("raw",)) == ()


def test_encodes_are_timed_right_after_their_node_inside_a_model_run(chain) -> None:
    from splitdnn._measure import time_encodes_in_run
    from splitdnn.errors import CodecError

    clock = VirtualClock()
    charge(chain, clock)  # the modules cost 1, 2, 3 ... ms: none of it may count as encode time
    seen: list[tuple[str, float]] = []

    def slow(value: Any) -> None:  # 2 ms, and notes what it was given
        seen.append(("slow", float(value.min())))
        clock.now += 2e-3

    def refuses(value: Any) -> None:
        if value.dim() == 4:
            raise CodecError("4-d values refused")
        clock.now += 5e-3

    x = chain.example_inputs[0].clone()
    assert (x < 0).any()
    with torch.inference_mode():
        got = time_encodes_in_run(
            chain.module, (x,), ["x", "conv", "flatten"], {"slow": slow, "refuses": refuses},
            repeats=3, timer=clock, sync=lambda: None,
        )  # fmt: skip
    assert got[("x", "slow")] == pytest.approx([2e-3] * 3)
    assert got[("flatten", "refuses")] == pytest.approx([5e-3] * 3)
    assert ("x", "refuses") not in got and ("conv", "refuses") not in got
    assert set(got) == {("x", "slow"), ("conv", "slow"), ("flatten", "slow"), ("flatten", "refuses")}
    # the input is encoded as it arrived, before the in-place ReLU after it zeroes its negatives;
    # and every run starts from the caller's input, which stays untouched
    assert [m for name, m in seen[::3]] == pytest.approx([float(x.min())] * 3)
    assert torch.equal(x, chain.example_inputs[0])


def test_the_profile_keeps_the_encode_time_measured_inside_a_model_run(
    chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    import splitdnn.profiler as profiler

    asked: dict[str, Any] = {}

    def fake(module: Any, inputs: Any, watched: Any, encoders: Any, **kw: Any) -> Any:
        asked.update(watched=list(watched), encoders=sorted(encoders), repeats=kw["repeats"])
        return {("conv", "zstd"): [1e-3, 3e-3, 2e-3]}  # only this pair: the others keep theirs

    monkeypatch.setattr(profiler, "time_encodes_in_run", fake)
    prof = profile_model(chain, codecs=("raw", "zstd"), slowdown=4.0, codec_repeats=3, **FAST)
    assert asked["encoders"] == ["raw", "zstd"] and asked["repeats"] == 3
    assert set(asked["watched"]) == {n.name for n in prof.nodes if n.codecs}
    assert prof.node("conv").codec("zstd").encode_ms == pytest.approx(8.0)  # median 2 ms, x4
    # the rest is measure()'s, on a 2x4x8x8 array: microseconds, far under the fake's 8 ms
    assert prof.node("conv").codec("raw").encode_ms < 1.0
    assert prof.node("conv").codec("zstd").decode_ms < 1.0


def test_the_in_run_encoder_is_the_clients_send_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from splitdnn import codec
    from splitdnn.errors import CodecError
    from splitdnn.profiler import _encoder

    calls: list[np.ndarray] = []
    real = codec.encode
    monkeypatch.setattr(codec, "encode", lambda arr, spec: calls.append(arr) or real(arr, spec))
    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).transpose(1, 2)  # not contiguous
    _encoder("zstd")(t)
    assert calls[0].flags["C_CONTIGUOUS"] and np.array_equal(calls[0], t.numpy())
    with pytest.raises(CodecError, match="float32"):
        _encoder("zstd")(torch.ones(3, dtype=torch.int64))


# --------------------------------------------------------------------------------------------------
# device emulation: how much slower the model computes after the idle the emulation's padding leaves


def test_time_after_idle_alternates_back_to_back_and_after_the_paddings_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import splitdnn._measure as measure

    clock = VirtualClock()
    calls: list[str] = []
    cold = {"now": False}

    def run() -> None:  # 2 ms, 3 ms right after a sleep
        calls.append("cold" if cold["now"] else "warm")
        clock.now += 3e-3 if cold["now"] else 2e-3
        cold["now"] = False

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        cold["now"] = True

    slept: list[float] = []
    ticks: list[int] = []
    monkeypatch.setattr(measure, "SLEEP", sleep)
    back, after = measure.time_after_idle(
        run, padding=7.0, warmup=0, repeats=3, timer=clock, sync=lambda: None,
        tick=lambda: ticks.append(len(calls)),
    )  # fmt: skip
    assert back == pytest.approx([2e-3] * 3) and after == pytest.approx([3e-3] * 3)
    # 7x the work of the last run after an idle, as the emulation pads a request with its own
    # work; in the first round, 7x the back-to-back run
    assert slept == pytest.approx([14e-3, 21e-3, 21e-3])
    assert calls == ["warm"] + ["warm", "cold"] * 3  # one warm-up even at warmup=0
    assert ticks == [3, 5, 7]  # one per round


class _Cold:
    """Charges each call_module node half its cost again while the core is "cold" (right after
    ``sleep``, until the fused run ends); counts and keeps the sleeps."""

    def __init__(self, traced: graph.TracedModel, clock: VirtualClock) -> None:
        self.cost = charge(traced, clock)
        self.cold = False
        self.slept: list[float] = []
        for node in traced.module.graph.nodes:
            if node.op == "call_module":
                extra = self.cost[node.name] / 1e3 * 0.5
                traced.module.get_submodule(node.target).register_forward_hook(
                    lambda *_, s=extra: setattr(clock, "now", clock.now + (s if self.cold else 0.0))
                )
        self.burst_s = 0.0  # more time charged to the next fused run (a burst of load)
        traced.module.register_forward_hook(lambda *_: self._end_of_run(clock))

    def _end_of_run(self, clock: VirtualClock) -> None:
        clock.now += self.burst_s
        self.cold, self.burst_s = False, 0.0

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.cold = True


def test_an_emulated_profile_prices_its_compute_after_the_paddings_idle(
    chain: graph.TracedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that computes 1.5x slower right after an idle (as cores on some hosts do): the
    emulated profile measures that and prices every compute time with it, and no codec time."""
    import splitdnn._measure as measure
    import splitdnn.profiler as profiler
    from splitdnn.schema import CodecResult

    clock = VirtualClock()
    cold = _Cold(chain, clock)
    monkeypatch.setattr(measure, "SLEEP", cold.sleep)

    def codec_measure(arr: Any, specs: Any, *, repeats: int, factor: float, timer: Any) -> Any:
        return tuple(CodecResult(s, 100, 2.0 * factor, 3.0 * factor, 0.0, 0.0, 1.0) for s in specs)

    def encodes_in_run(module: Any, inputs: Any, watched: Any, encoders: Any, **kw: Any) -> Any:
        return {(name, spec): [4e-3] for name in watched for spec in encoders}

    monkeypatch.setattr(profiler._codec, "measure", codec_measure)
    monkeypatch.setattr(profiler, "time_encodes_in_run", encodes_in_run)
    whole = sum(cold.cost.values())

    back = profile_model(chain, timer=clock, slowdown=4.0, codecs=("raw",), **FAST)  # off by default
    assert back.idle_factor == 1.0 and cold.slept == []
    emulated = profile_model(chain, timer=clock, slowdown=4.0, codecs=("raw",), emulated_idle=True, **FAST)
    rounds = max(FAST["repeats"], profiler.IDLE_MIN_ROUNDS)
    # the padding of (4 - 1) x the work: the back-to-back run first, then the run after the idle
    assert cold.slept == pytest.approx([3 * whole / 1e3] + [3 * 1.5 * whole / 1e3] * (rounds - 1))
    assert emulated.idle_factor == pytest.approx(1.5)
    assert emulated.total.median_ms == pytest.approx(4 * 1.5 * whole)
    assert back.total.median_ms == pytest.approx(4 * whole)
    for a, b in zip(back.compute_nodes, emulated.compute_nodes, strict=True):
        assert b.latency.median_ms == pytest.approx(1.5 * a.latency.median_ms)
        assert b.calibrated_ms == pytest.approx(1.5 * a.calibrated_ms)
    assert emulated.calibration.mape_pct == pytest.approx(back.calibration.mape_pct)
    codecs = [c for n in emulated.nodes for c in n.codecs]
    assert codecs and codecs == [c for n in back.nodes for c in n.codecs]
    # the encode follows the head back to back: the slowdown only (4 ms in a run, 3 ms decode)
    assert all(c.encode_ms == pytest.approx(16.0) and c.decode_ms == pytest.approx(12.0) for c in codecs)
    assert "x1.50 after its padding's idle" in emulated.describe()
    assert "idle" not in back.describe()
    cold.slept.clear()
    plain = profile_model(chain, timer=clock, codecs=(), **FAST)  # no emulation: nothing idles
    assert plain.idle_factor == 1.0 and cold.slept == []


def test_the_idle_stage_reports_progress_and_warns_when_its_rounds_disagree(
    chain: graph.TracedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import splitdnn._measure as measure

    clock = VirtualClock()
    cold = _Cold(chain, clock)
    monkeypatch.setattr(measure, "SLEEP", cold.sleep)
    calls: list[tuple[int, int, str]] = []
    kw = {**FAST, "progress": lambda d, t, s: calls.append((d, t, s))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # steady rounds: no warning
        profile_model(chain, timer=clock, slowdown=4.0, codecs=(), emulated_idle=True, **kw)
    idle = [c for c in calls if c[2] == "idle"]
    assert len(idle) >= 5 and [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    assert calls[-1] == (calls[-1][1], calls[-1][1], "done")

    bursts = iter([0.0, 5.0, 0.0, 0.0, 9.0] * 4)  # ms of load in the run after each idle
    real_sleep = cold.sleep

    def bursty(seconds: float) -> None:
        real_sleep(seconds)
        cold.burst_s = next(bursts) / 1e3

    monkeypatch.setattr(measure, "SLEEP", bursty)
    with pytest.warns(RuntimeWarning, match=r"slowdown after its padding's idle varied from x1\.50 to x"):
        prof = profile_model(chain, timer=clock, slowdown=4.0, codecs=(), emulated_idle=True, **FAST)
    assert prof.idle_factor == pytest.approx(1.5)  # the median round, not the bursts


def test_a_model_too_quick_for_the_clock_gets_no_idle_factor(chain: graph.TracedModel) -> None:
    prof = profile_model(chain, timer=VirtualClock(), slowdown=2.0, codecs=(), emulated_idle=True, **FAST)
    assert prof.idle_factor == 1.0 and prof.slowdown == 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"emulated_idle": True}, "needs a device emulation"),
        ({"emulated_idle": True, "slowdown": 1.0}, "needs a device emulation"),
        ({"emulated_idle": "yes", "slowdown": 2.0}, "must be True or False"),
        ({"emulated_idle": 1, "slowdown": 2.0}, "must be True or False"),
        ({"emulated_idle": None, "slowdown": 2.0}, "must be True or False"),
    ],
)
def test_emulated_idle_refuses_what_means_nothing(
    chain: graph.TracedModel, kwargs: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        profile_model(chain, codecs=(), **FAST, **kwargs)


def test_the_idle_factor_is_saved_only_when_not_1(chain: graph.TracedModel) -> None:
    """Written only when not 1: readers from before the field refuse unknown fields, and still
    read every profile that does not use it."""
    import dataclasses
    import json

    from splitdnn.schema import to_dict

    prof = profile_model(chain, timer=VirtualClock(), codecs=(), **FAST)
    assert "idle_factor" not in to_dict(prof)
    assert profile_from_json(profile_to_json(prof)) == prof
    with pytest.raises(ProfileError, match="without a device emulation"):
        dataclasses.replace(prof, idle_factor=1.25)  # slowdown 1: nothing padded, nothing idled
    marked = dataclasses.replace(prof, idle_factor=1.25, slowdown=2.0)
    text = profile_to_json(marked)
    assert json.loads(text)["idle_factor"] == 1.25
    assert profile_from_json(text).idle_factor == 1.25
    for bad in ("1.2", 0, -1.0, float("inf")):
        data = json.loads(text)
        data["idle_factor"] = bad
        with pytest.raises(ProfileError, match="idle_factor"):
            profile_from_json(json.dumps(data))
