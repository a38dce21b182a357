"""The measuring primitives behind :mod:`splitdnn.profiler` (torch): a measurement session, one
recorded run, timed calls, prepared head/tail pieces, value sizes. Private: import the profiler (the
runtime's server takes :func:`check_cuda_index` from here too, so both refuse a missing GPU alike).
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from splitdnn import graph
from splitdnn.errors import CodecError, ConfigError, PlanError
from splitdnn.schema import TensorMeta

#: A clock in seconds, like :func:`time.perf_counter`.
Timer = Callable[[], float]

#: bytes a non-tensor value (an int from ``x.size(0)``, a float, a bool) costs on the wire
SCALAR_BYTES = 8


def check_cuda_index(spec: str, device: torch.device) -> None:
    """Refuse ``cuda:N`` past this machine's CUDA devices (CUDA must be available), naming those there are."""
    if device.type != "cuda" or device.index is None:
        return
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ConfigError(
            f"device {spec!r} requested but this machine has {count} CUDA device(s), "
            f"cuda:0..cuda:{count - 1}; name one of those, or 'cuda' for the current one"
        )


@dataclass
class Session:
    device: torch.device
    inputs: tuple[Any, ...]  # the example inputs, cloned and on the device
    sync: Callable[[], None]


@contextlib.contextmanager
def session(traced: graph.TracedModel, *, device: str, threads: int | None) -> Iterator[Session]:
    """Threads, eval mode, device and inference mode for one measurement; all restored on exit."""
    module = traced.module
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # tensors report "cuda:N"
    old_threads = torch.get_num_threads()
    training = {name: m.training for name, m in module.named_modules()}
    tensors = [*module.parameters(), *module.buffers()]
    old_device = tensors[0].device if tensors else torch.device("cpu")
    moving = dev.type != "cpu" or old_device.type != "cpu"
    constants: list[tuple[nn.Module, str, torch.Tensor]] = []  # plain tensor attributes we moved
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        module.eval()
        if moving:
            module.to(dev)
            # fx keeps tensor constants (``_tensor_constant0``) as plain attributes: .to() skips them
            for node in module.graph.nodes:
                if node.op != "get_attr":
                    continue
                owner_path, _, attr = str(node.target).rpartition(".")
                owner = module.get_submodule(owner_path) if owner_path else module
                value = getattr(owner, attr, None)
                registered = attr in owner._parameters or attr in owner._buffers
                if isinstance(value, torch.Tensor) and not registered and value.device != dev:
                    constants.append((owner, attr, value))
                    setattr(owner, attr, value.to(dev))
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        with torch.inference_mode():
            inputs = tuple(
                x.detach().to(dev).clone() if isinstance(x, torch.Tensor) else x
                for x in traced.example_inputs
            )
            yield Session(device=dev, inputs=inputs, sync=sync)
    finally:
        if moving:
            module.to(old_device)
            for owner, attr, value in reversed(constants):
                setattr(owner, attr, value)
        for name, m in module.named_modules():
            m.training = training.get(name, m.training)
        torch.set_num_threads(old_threads)


# --------------------------------------------------------------------------------------------------
# recording and timing


class Recorder(fx.Interpreter):
    """Runs the graph once and keeps each node's ``(args, kwargs, result)``."""

    def __init__(self, module: fx.GraphModule, on_value: Callable[[str, Any], None] | None = None) -> None:
        super().__init__(module)
        self.record: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = {}
        self.on_value = on_value

    def run_node(self, n: fx.Node) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        result = super().run_node(n)
        self.record[n.name] = (args, kwargs, result)
        if self.on_value is not None:
            self.on_value(n.name, result)  # before any later in-place node can overwrite it
        return result


def record_values(
    module: fx.GraphModule,
    inputs: tuple[Any, ...],
    on_value: Callable[[str, Any], None] | None = None,
) -> tuple[dict[str, Any], Any]:
    """One interpreted run keeping every node's ``(args, kwargs, result)``; ``on_value(name, result)``
    is called as each node finishes, while its value is still exactly what the node produced."""
    rec = Recorder(module, on_value)
    result = rec.run(*inputs)
    return rec.record, result


class _EncodeTimer(fx.Interpreter):
    """Runs the graph once, encoding each watched node's value with one codec the moment the node
    has produced it, timed: the edge client encodes a boundary tensor right after the head computed
    it, on caches the head just filled, which costs more than encoding the same array again."""

    def __init__(self, module: fx.GraphModule, watched: frozenset[str], encode: Callable[[Any], None],
                 timer: Timer, sync: Callable[[], None]) -> None:  # fmt: skip
        super().__init__(module)
        self.watched, self.encode, self.timer, self.sync = watched, encode, timer, sync
        self.seconds: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.watched:
            self.sync()
            t0 = self.timer()
            ok = True
            try:
                self.encode(result)
            except CodecError:  # this codec refuses this value (fp16 beyond its range, ...)
                ok = False
            if ok:
                self.seconds[n.name] = self.timer() - t0
        return result


def time_encodes_in_run(
    module: fx.GraphModule,
    inputs: tuple[Any, ...],
    watched: Sequence[str],
    encoders: Mapping[str, Callable[[Any], None]],
    *,
    repeats: int,
    timer: Timer,
    sync: Callable[[], None],
) -> dict[tuple[str, str], list[float]]:
    """Seconds each encoder takes on each watched node's value inside a run of the model: ``repeats``
    rounds of one interpreted run per encoder (round-robin, each on a copy of ``inputs``), every
    watched value encoded right after its node. ``encoders`` maps a name (a codec spec) to a function
    of the node's value (the device-to-numpy step and the encode, as the client does them). Keys:
    ``(node, encoder name)``; a pair is missing when the encoder raised :class:`CodecError` on it."""
    names = frozenset(watched)
    out: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for key, encode in encoders.items():
            run = _EncodeTimer(module, names, encode, timer, sync)
            # a fresh copy each run: an in-place node may write to the model's input
            run.run(*(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs))
            for node, seconds in run.seconds.items():
                out.setdefault((node, key), []).append(seconds)
    return out


def node_callable(
    module: fx.GraphModule, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], Any]:
    """The node's computation on fixed inputs, as the generated forward would call it."""
    if node.op == "call_module":
        sub = module.get_submodule(str(node.target))
        return lambda: sub(*args, **kwargs)
    if node.op == "call_function":
        fn = node.target
        return lambda: fn(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        obj, rest, method = args[0], args[1:], str(node.target)
        return lambda: getattr(obj, method)(*rest, **kwargs)
    raise ConfigError(f"node {node.name!r} ({node.op}) is not a compute node")


def time_each(
    fns: Sequence[Callable[[], Any]],
    *,
    warmup: int,
    repeats: int,
    timer: Timer,
    sync: Callable[[], None],
    tick: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Seconds per call of each function: ``warmup`` untimed calls each, then ``repeats`` rounds
    timing every function once per round (round-robin, so drift on a shared machine hits all alike).
    ``tick`` is called after the warm-up and after every round."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    if tick:
        tick()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = timer()
            fn()
            sync()
            samples[i].append(timer() - t0)
        if tick:
            tick()
    return samples


SLEEP: Callable[[float], None] = time.sleep  # time_after_idle's sleep


def time_after_idle(
    fn: Callable[[], Any],
    *,
    padding: float,
    warmup: int,
    repeats: int,
    timer: Timer,
    sync: Callable[[], None],
    tick: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Seconds per call of ``fn`` back to back, and after an idle: ``repeats`` rounds (after
    ``warmup`` untimed calls, at least one), each one call right after the previous, then one after
    sleeping ``padding`` x the work of the last call after an idle (of the back-to-back call in
    the first round), as the emulation pads a request with its own work; ``tick`` after each round.

    The device emulation pads each piece of work with (slowdown - 1) x that work of sleep, so an
    emulated request starts on a core that has idled for most of the last one; on some hosts that
    computes markedly slower (``docs/benchmarks.md``, "idle gaps"). Alternating the two kinds
    round by round lets drift hit both alike. The sleep is :data:`SLEEP` (tests replace it)."""
    for _ in range(max(1, warmup)):
        fn()
    sync()
    back: list[float] = []
    idle: list[float] = []
    for _ in range(repeats):
        t0 = timer()
        fn()
        sync()
        back.append(timer() - t0)
        SLEEP(padding * (idle[-1] if idle else back[-1]))
        t0 = timer()
        fn()
        sync()
        idle.append(timer() - t0)
        if tick:
            tick()
    return back, idle


@dataclass
class Cut:
    position: int
    head: Callable[[], Any]
    tail: Callable[[], Any] | None  # None when the head is the whole model


def prepare_cut(
    traced: graph.TracedModel, compute: Sequence[str], position: int, inputs: tuple[Any, ...]
) -> Cut:
    """Head and tail pieces of the topological prefix of ``position`` compute nodes, with their
    inputs prepared once (the tail's are the head's real outputs)."""
    module = traced.module
    if position >= len(compute):
        return Cut(position, lambda: module(*inputs), None)
    head, tail = graph.head_tail(traced, compute[position - 1])
    values: dict[str, Any] = dict(zip(head.inputs, inputs, strict=True))  # the head reads the model inputs
    head_in = {name: values[name] for name in head.inputs}
    values.update(head(head_in))
    tail_in = {name: values[name] for name in tail.inputs}
    return Cut(position, lambda: head(head_in), lambda: tail(tail_in))


def prepare_segment(
    traced: graph.TracedModel, compute: Sequence[str], lo: int, hi: int, inputs: tuple[Any, ...]
) -> Callable[[], Any]:
    """The contiguous segment of compute nodes ``[lo, hi)`` (topological order) as one piece, with
    its inputs prepared once: the real values the nodes before it produce."""
    if not 0 <= lo < hi <= len(compute):
        raise ValueError(f"segment [{lo}, {hi}) is not within the {len(compute)} compute nodes")
    tiers = {name: 0 if i < lo else 1 if i < hi else 2 for i, name in enumerate(compute)}
    before, segment = graph.split(traced, tiers)[:2]
    values: dict[str, Any] = dict(zip(before.inputs, inputs, strict=True))  # the model's inputs
    values.update(before({name: values[name] for name in before.inputs}))
    seg_in = {name: values[name] for name in segment.inputs}
    return lambda: segment(seg_in)


def output_name(traced: graph.TracedModel) -> str:
    return next(n.name for n in traced.nodes if n.op == "output")


def cuttable(traced: graph.TracedModel, compute: Sequence[str], position: int) -> bool:
    """Whether the topological prefix of ``position`` compute nodes is a valid two-tier plan."""
    try:
        graph.check_tiers(traced, {name: int(i >= position) for i, name in enumerate(compute)})
    except PlanError:
        return False
    return True


def tensor_metas(value: Any) -> tuple[TensorMeta, ...]:
    """Every tensor in ``value`` (tuples, lists and dicts flattened, in order); a non-tensor scalar
    counts as a 0-d value of ``SCALAR_BYTES`` bytes; ``None`` counts nothing."""
    out: list[TensorMeta] = []
    _flatten_metas(value, out)
    return tuple(out)


def _flatten_metas(value: Any, out: list[TensorMeta]) -> None:
    if isinstance(value, torch.Tensor):
        shape = tuple(int(d) for d in value.shape)
        out.append(
            TensorMeta(
                shape=shape,
                dtype=str(value.dtype).removeprefix("torch."),
                nbytes=value.numel() * value.element_size(),
            )
        )
    elif value is None:
        return
    elif isinstance(value, (tuple, list)):  # torch.Size too: a tuple of ints
        for v in value:
            _flatten_metas(v, out)
    elif isinstance(value, Mapping):
        for v in value.values():
            _flatten_metas(v, out)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _flatten_metas(getattr(value, f.name), out)
    else:
        dtype = {bool: "bool", int: "int64", float: "float64"}.get(type(value), "object")
        out.append(TensorMeta(shape=(), dtype=dtype, nbytes=SCALAR_BYTES))


def param_bytes(module: fx.GraphModule) -> dict[str, int]:
    """Bytes of parameters and buffers owned by each node: a call_module node owns its module's
    tensors, a get_attr node the tensor it reads; each tensor counts once, at its first use."""
    seen: set[int] = set()
    out: dict[str, int] = {}

    def own(tensors: Iterator[torch.Tensor] | list[torch.Tensor]) -> int:
        total = 0
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    for node in module.graph.nodes:
        if node.op == "call_module":
            sub = module.get_submodule(str(node.target))
            out[node.name] = own([*sub.parameters(), *sub.buffers()])
        elif node.op == "get_attr":
            attr: Any = module
            for part in str(node.target).split("."):
                attr = getattr(attr, part)
            if isinstance(attr, torch.Tensor):
                out[node.name] = own([attr])
    return out


def target_str(target: Any) -> str:
    if isinstance(target, str):
        return target
    return fx.node._get_qualified_name(target) if callable(target) else str(target)


def git_state(root: Path | None = None) -> dict[str, Any]:
    """Which code a measurement ran: the git commit of the checkout at ``root`` (default: the one
    this splitdnn is imported from) and its uncommitted files (``git status --porcelain``, untracked
    ones too); ``git_head`` None where it is not a checkout or git is missing."""
    import subprocess

    where = root if root is not None else Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str | None:
        try:
            run = subprocess.run(
                ["git", "--no-optional-locks", *argv], cwd=where, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return run.stdout.rstrip() if run.returncode == 0 else None  # porcelain lines start with a space

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") or ""
    return {
        "git_head": head.strip() if head else None,
        "uncommitted": sorted(line[3:] for line in status.splitlines() if line),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
