"""Capture a model as a checked fx graph of named nodes, and fingerprint it (torch).

The implementation behind :func:`splitdnn.graph.trace` and :func:`splitdnn.graph.fingerprint`; import
them from :mod:`splitdnn.graph`. ``torch.fx`` symbolic tracing comes first; when it fails, or its graph
does not give the model's own output, ``torch.export`` is tried and its graph is rewritten into the
same form (positional inputs, fx node names, the model's output structure). A model neither captures
raises :class:`~splitdnn.errors.TraceError` naming the construct; example inputs the model itself
rejects raise :class:`~splitdnn.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import linecache
import logging
import os
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx import Graph, GraphModule, Node
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree

from splitdnn.errors import ConfigError, TraceError
from splitdnn.schema import COMPUTE_OPS

__all__ = ["GraphNode", "TracedModel", "fingerprint", "release_source_when_freed", "trace"]

_FINGERPRINT_VERSION = 1
_TORCH_DIR = os.path.dirname(torch.__file__)
_FX_SOURCE_PREFIX = "<eval_with_key>"


# --------------------------------------------------------------------------------------------------
# generated source: torch.fx keeps it for the process's lifetime unless told otherwise


def _source_key(gm: GraphModule) -> str | None:
    """The name torch.fx filed ``gm``'s generated forward under, or None (not fx-generated)."""
    code = getattr(type(gm).__dict__.get("forward"), "__code__", None)
    key = getattr(code, "co_filename", None)
    return key if isinstance(key, str) and key.startswith(_FX_SOURCE_PREFIX) else None


def _fx_source_keys() -> set[str]:
    return {key for key in list(linecache.cache) if key.startswith(_FX_SOURCE_PREFIX)}


def _drop_source(key: str) -> None:
    cache = getattr(getattr(torch.fx.graph_module, "_loader", None), "eval_cache", None)
    if isinstance(cache, dict):
        cache.pop(key, None)
    linecache.cache.pop(key, None)


def release_source_when_freed(gm: GraphModule) -> GraphModule:
    """``gm``, with its generated source dropped from torch.fx's caches once ``gm`` is freed.

    torch.fx files the source of every forward it generates (each GraphModule, each recompile) in a
    process-wide cache and in ``linecache``, for tracebacks, and never removes it: about 40 KB per
    ResNet-50 tail. A server that rebuilds tails evicted from its LRU cache, or an application that
    opens a client per session, would grow without bound. Call this after the module's last
    ``recompile()``; a module torch.fx did not generate is left alone.
    """
    key = _source_key(gm)
    if key is not None:
        weakref.finalize(gm, _drop_source, key).atexit = False  # nothing to tidy at exit
    return gm


# --------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class GraphNode:
    """A torch-free description of one fx node."""

    name: str  # fx node name: the key of everything
    op: str  # placeholder | get_attr | call_module | call_function | call_method | output
    target: str  # module path ("layer1.0.conv1"), function ("torch.add", "operator.add") or method
    inputs: tuple[str, ...]  # nodes whose values it reads, from args and kwargs, first-use order


@dataclass(eq=False)
class TracedModel:
    """A model captured as an fx graph whose nodes are keyed by name, checked against the model."""

    name: str
    module: torch.fx.GraphModule  # the traced module; same outputs as the original
    example_inputs: tuple[torch.Tensor, ...]
    method: str  # "fx" or "export"
    nodes: tuple[GraphNode, ...]  # topological (graph) order
    fingerprint: str  # see fingerprint()
    # the graph holds only for the example inputs' shapes: torch.export specializes every shape
    # (branches on a size, sizes baked into views) and its guards are dropped, as pieces see other
    # inputs; check_input_shapes refuses other shapes where a model input enters (pieces, the runtime)
    static_shapes: bool = False
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {n.name: i for i, n in enumerate(self.nodes)}

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shape of each example input, batch dimension included."""
        return tuple(tuple(t.shape) for t in self.example_inputs)

    def node(self, name: str) -> GraphNode:
        """The node called ``name``; ConfigError when the model has none."""
        try:
            return self.nodes[self._index[name]]
        except KeyError:
            raise ConfigError(
                f"model {self.name!r} has no node {name!r}; expected one of its fx node names, "
                f"e.g. {_names([n.name for n in self.compute_nodes()])}"
            ) from None

    def compute_nodes(self) -> tuple[GraphNode, ...]:
        """The nodes a plan assigns to tiers (call_module, call_function, call_method)."""
        return tuple(n for n in self.nodes if n.op in COMPUTE_OPS)

    def check_input_shapes(self, shapes: Sequence[Sequence[int]]) -> None:
        """ConfigError unless a model with ``static_shapes`` gets its example inputs' shapes (in order)."""
        if self.static_shapes:
            StaticShapes(self.name, self.input_shapes).check(shapes)


class StaticShapes:
    """Refuses inputs of other shapes than a graph was captured at; also the traced module's forward
    pre-hook. A copy of the module (deepcopy, pickle, torch.save) loses the hook, as torch copies a
    GraphModule without its hooks: ``TracedModel.check_input_shapes`` is what splitdnn itself calls."""

    def __init__(self, name: str, shapes: tuple[tuple[int, ...], ...]) -> None:
        self.name, self.shapes = name, shapes

    def check(self, shapes: Sequence[Sequence[int]]) -> None:
        found = tuple(tuple(int(d) for d in s) for s in shapes)
        if found != self.shapes:
            raise ConfigError(
                f"model {self.name!r} was captured by torch.export, whose graph holds only for the "
                f"example input shape(s) {[list(s) for s in self.shapes]}, found "
                f"{[list(s) for s in found]}; trace it with inputs of this shape, or make it traceable "
                f"by torch.fx (no branches or loops on sizes) to run it at any batch size"
            )

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.check([getattr(a, "shape", ()) for a in args])


# --------------------------------------------------------------------------------------------------
# tracing


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    name: str = "model",
    leaf_modules: tuple[type[nn.Module], ...] = (),
) -> TracedModel:
    """Capture ``model`` as a graph and check that it reproduces the model's output.

    Tries ``torch.fx`` symbolic tracing first (modules under ``torch.nn`` and ``leaf_modules`` stay
    single nodes); when that fails or its graph does not reproduce the output, falls back to
    ``torch.export``. The model runs (twice: as given and as traced, on clones of the inputs, with
    the same random seed) in the mode it is in: call ``model.eval()`` first for inference.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module to trace, found {type(model).__name__}")
    inputs = _input_tuple(example_inputs)
    shapes = ", ".join(str(list(t.shape)) for t in inputs)
    try:
        expected = _run(model, inputs)
    except Exception as exc:
        raise ConfigError(
            f"model {name!r} failed on example inputs of shape {shapes}: {_first_line(exc)}; pass "
            f"inputs the model accepts (number, shape and dtype)"
        ) from exc

    try:
        gm, method = _trace_fx(model, len(inputs), tuple(leaf_modules)), "fx"
        # the same kernels as eager: bit-exact on CPU; accelerators may pick kernels run to run
        _check_outputs(gm, inputs, expected, exact=all(t.device.type == "cpu" for t in inputs))
    except Exception as fx_exc:
        try:
            gm, method = _trace_export(model, inputs, expected), "export"
            # export may take another kernel path than eager (e.g. attention's fused fast path)
            _check_outputs(gm, inputs, expected, exact=False)
        except Exception as export_exc:
            raise TraceError(
                f"cannot trace model {name!r}: symbolic tracing failed: {_describe(fx_exc)}; "
                f"torch.export failed: {_describe(export_exc)}. Make the control flow static (no "
                f"Python branches or loops on tensor values), or hide the construct in a leaf "
                f"module (trace(..., leaf_modules=(MyBlock,))) or a function marked torch.fx.wrap"
            ) from export_exc
    gm.training = model.training
    for n in gm.graph.nodes:
        if isinstance(n.type, str):  # a PEP 563 annotation ("torch.Tensor"): fx cannot pickle it
            n.type = None
    generated = _source_key(gm)
    gm.recompile()
    if generated is not None:
        _drop_source(generated)  # the forward before this recompile; nothing runs it any more
    release_source_when_freed(gm)
    nodes = tuple(
        GraphNode(n.name, n.op, _target_str(n), tuple(i.name for i in n.all_input_nodes))
        for n in gm.graph.nodes
    )
    static = method == "export"
    if static:  # the whole traced module refuses other shapes; pieces check theirs (graph.split)
        gm.register_forward_pre_hook(StaticShapes(name, tuple(tuple(t.shape) for t in inputs)))
    return TracedModel(name, gm, inputs, method, nodes, fingerprint(gm), static_shapes=static)


def _input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    items = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(items, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in items):
        raise ConfigError(
            f"example inputs must be a tensor or a tuple of tensors, found {type(example_inputs).__name__}"
        )
    return tuple(items)


@contextlib.contextmanager
def _seeded(inputs: tuple[torch.Tensor, ...]) -> Iterator[None]:
    """Same random numbers for every run (a model with dropout in training mode), global RNG kept."""
    cuda = sorted({t.device.index or 0 for t in inputs if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        yield


def _run(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    with torch.no_grad(), _seeded(inputs):
        return module(*(t.clone() for t in inputs))  # clones: a model may modify its inputs


class _LeafTracer(torch.fx.Tracer):
    """fx's tracer, keeping ``leaf_modules`` whole, and confined to the thread that traces.

    While it traces, torch.fx replaces ``nn.Module.__call__`` and ``__getattr__`` for the whole
    process. Every other thread running any model then went through this tracer too: a server's
    tails or a client's head failed with "module is not installed as a submodule" (or computed
    garbage) whenever the same process traced a model. Calls from other threads now go straight
    to the module.
    """

    def __init__(self, leaf_modules: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self._leaf_modules = leaf_modules
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self._leaf_modules) or super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)  # another thread's model: the original Module.__call__
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _trace_fx(model: nn.Module, n_inputs: int, leaf_modules: tuple[type[nn.Module], ...]) -> GraphModule:
    tracer = _LeafTracer(leaf_modules)
    graph = tracer.trace(model)
    # forward(x, scale=2.0) called with x alone: bake the defaults in, so the graph's inputs are
    # exactly the example inputs
    for p in [n for n in graph.nodes if n.op == "placeholder"][n_inputs:]:
        default = p.args[0] if p.args else None
        if not p.args or not (default is None or isinstance(default, (bool, int, float, str))):
            raise RuntimeError(f"argument {p.target!r} has no plain default value to specialise to")
        for user in list(p.users):
            user.args = _substitute(user.args, p, default)
            user.kwargs = _substitute(user.kwargs, p, default)
        graph.erase_node(p)
    graph.lint()
    return GraphModule(tracer.root, graph, type(model).__name__)


def _substitute(arg: Any, old: Node, new: Any) -> Any:
    """``arg`` with every use of node ``old`` replaced by the constant ``new``."""

    def swap(n: Node) -> Any:
        return new if n is old else n

    return map_arg(arg, swap)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Keep a failing torch.export from printing its partial graph and warnings; its error says why."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _trace_export(model: nn.Module, inputs: tuple[torch.Tensor, ...], expected: Any) -> GraphModule:
    """torch.export's graph as a plain fx module: positional inputs, the model's output structure."""
    known = _fx_source_keys()
    with _quiet_export():
        unlifted = release_source_when_freed(torch.export.export(model, inputs).module())
    # export's intermediate modules (about 9 per call) are garbage now. Only tracebacks read this
    # source, so a module another thread generated meanwhile loses no more than its traceback lines.
    for key in _fx_source_keys() - known - {_source_key(unlifted)}:
        _drop_source(key)
    out_spec = pytree.tree_flatten(expected)[1]
    graph = Graph(owning_module=unlifted)
    env: dict[Node, Node] = {}
    for node in unlifted.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith("_guards_fn"):
            continue  # input-shape guards of the whole model; pieces see other inputs
        if node.op == "output":
            flat = map_arg(node.args[0], env.__getitem__)
            graph.output(pytree.tree_unflatten(list(flat), out_spec))
        else:
            env[node] = graph.node_copy(node, env.__getitem__)
    graph.eliminate_dead_code()  # export keeps dead views and unused buffers; mutating ops stay
    return GraphModule(unlifted, graph, type(model).__name__)


def _check_outputs(gm: GraphModule, inputs: tuple[torch.Tensor, ...], expected: Any, *, exact: bool) -> None:
    try:
        got = _run(gm, inputs)
    except Exception as exc:
        raise RuntimeError(f"the traced graph fails on the example inputs ({_first_line(exc)})") from exc
    problem = _difference(expected, got, exact=exact)
    if problem:
        raise RuntimeError(
            f"the traced graph's output differs from the model's at {problem} (a model in training "
            f"mode, randomness, or Python state frozen by tracing; call model.eval() first)"
        )


def _difference(a: Any, b: Any, *, exact: bool, path: str = "output") -> str:
    """Where two model outputs differ ('' if nowhere)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path} (a tensor and a {type(b if isinstance(a, torch.Tensor) else a).__name__})"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path} ({a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)})"
        same = torch.equal(a, b) or (
            a.is_floating_point()
            and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num())
        )
        if same or (not exact and torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)):
            return ""
        diff = (a.double() - b.double()).abs().nan_to_num(nan=float("inf")).max().item()
        return f"{path} (max abs difference {diff:.3g})"
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        if len(a) != len(b):
            return f"{path} ({len(a)} vs {len(b)} items)"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _difference(x, y, exact=exact, path=f"{path}[{i}]")
            if found:
                return found
        return ""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if list(a) != list(b):
            return f"{path} (keys {list(a)} vs {list(b)})"
        for k in a:
            found = _difference(a[k], b[k], exact=exact, path=f"{path}[{k!r}]")
            if found:
                return found
        return ""
    return "" if a == b else f"{path} ({a!r} vs {b!r})"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


def _describe(exc: BaseException) -> str:
    """First line of an error, the underlying cause's too, and the user code it points at."""
    text = _first_line(exc)
    cause = exc.__cause__
    if cause is not None:
        text += f" ({_first_line(cause)})"
    frame = _user_frame(cause or exc)
    if frame is not None:
        text += f" at {os.path.basename(frame.filename)}:{frame.lineno}"
        if frame.line:
            text += f" `{frame.line.strip()}`"
    return text


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the traceback outside torch and this module: the failing construct."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(_TORCH_DIR) and os.path.abspath(f.filename) != os.path.abspath(__file__)
    ]
    return frames[-1] if frames else None


# --------------------------------------------------------------------------------------------------
# names and fingerprint


def _callable_name(fn: Any) -> str:
    if isinstance(fn, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return f"torch.ops.{fn}"  # torch.ops.aten.conv2d.default
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__name__", None) or type(fn).__qualname__
    qualname = getattr(fn, "__qualname__", name)
    if module == "builtins":
        return name
    if module == "_operator":
        return f"operator.{name}"
    if module is None and qualname.startswith("TensorBase."):
        return f"torch.Tensor.{name}"
    if module == "torch" and qualname.startswith("_VariableFunctions"):
        return f"torch.{name}"
    return f"{module}.{qualname}" if module else qualname


def _target_str(node: Node) -> str:
    return node.target if isinstance(node.target, str) else _callable_name(node.target)


def _canonical(value: Any) -> Any:
    """A JSON-ready, address-free form of a node's arguments."""
    if isinstance(value, Node):
        return f"%{value.name}"
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, slice):
        return ["slice", _canonical(value.start), _canonical(value.stop), _canonical(value.step)]
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}:{value.dtype}"
    if value is Ellipsis:
        return "..."
    if callable(value):
        return _callable_name(value)
    return type(value).__qualname__


def fingerprint(gm: torch.fx.GraphModule) -> str:
    """SHA-256 (hex) identifying a graph's structure and parameter shapes, not its weight values.

    Hashed (canonical JSON): every node's name, op, target, input edges and constant arguments, the
    class and ``extra_repr`` of every called module (so a stride change shows), the shape and dtype
    of tensors read by ``get_attr``, and every parameter's and buffer's name, shape and dtype.
    """
    nodes = []
    for n in gm.graph.nodes:
        entry: dict[str, Any] = {
            "name": n.name,
            "op": n.op,
            "target": _target_str(n),
            "inputs": [i.name for i in n.all_input_nodes],
            "args": _canonical([n.args, n.kwargs]),
        }
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            entry["module"] = f"{type(mod).__qualname__}({mod.extra_repr()})"
        elif n.op == "get_attr":
            entry["value"] = _canonical(_get_attr(gm, n.target))
        nodes.append(entry)

    def tensors(items: Iterator[tuple[str, torch.Tensor]]) -> list[list[Any]]:
        return sorted([k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in items)

    payload = {
        "version": _FINGERPRINT_VERSION,
        "nodes": nodes,
        "parameters": tensors(gm.named_parameters()),
        "buffers": tensors(gm.named_buffers()),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _get_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
