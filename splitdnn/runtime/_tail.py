"""A served model and the tails it builds from the inputs of a request (torch; server side).

A request's inputs define its cut (DESIGN section 5): the server computes the nodes the output needs,
walking back from the output and stopping at the provided nodes. Those nodes, in graph order, become
one ``torch.fx.GraphModule`` whose placeholders are the provided nodes, sharing the traced model's
submodules and weights. A full request (the model's own inputs) gives the whole graph. Tails are cached
per set of input names in a bounded LRU.

:class:`ServedModel` also records the dtype and shape every node produced on the example input (one
forward pass at load time), so a request's tensors are checked against the node they claim to be
before anything runs: the dtype and the rank must match; the batch (first) dimension and, for models
that accept other input sizes, the other dimensions may differ, and a shape the tail then rejects is
reported as a :class:`~splitdnn.errors.WireError`.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.fx import Graph, GraphModule, Node
from torch.utils import _pytree as pytree

from splitdnn._capture import release_source_when_freed
from splitdnn.errors import ConfigError, WireError, first_line
from splitdnn.graph import TracedModel
from splitdnn.runtime._inplace import may_write_inputs
from splitdnn.runtime._weights import weights_digest
from splitdnn.runtime.serde import RAW_ALIGN, TensorSpec, datatype_of, output_names
from splitdnn.schema import COMPUTE_OPS, Profile

__all__ = ["NodeMeta", "ServedModel", "Tail", "from_numpy", "to_numpy"]

# torch warns when it wraps a read-only array; from_numpy does that only for consumers that never write
warnings.filterwarnings(
    "ignore", message="The given NumPy array is not writable", category=UserWarning, module=__name__
)

# torch dtype <-> v2 datatype name, for the dtypes both sides carry
_V2_BY_TORCH = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.bfloat16: "BF16",
}
#: the type characters of the numpy dtypes of the tensors above that numpy has (all but bfloat16; a
#: tensor's array is in native byte order)
_NUMPY_V2 = "".join(
    torch.empty(0, dtype=t).numpy().dtype.char for t in _V2_BY_TORCH if t is not torch.bfloat16
)


def shown_names(items: Sequence[str], limit: int = 6) -> str:
    """Names (maybe a client's), each quoted and cut short, the first ``limit`` of them, for a message."""
    shown = [repr(s if len(s) <= 60 else s[:60] + "...") for s in list(items)[:limit]]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(shown) + more


@dataclass(frozen=True)
class NodeMeta:
    """What one node produced on the example input: its v2 datatype and shape (batch included)."""

    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Tail:
    """The part of a model that computes the output from a fixed set of node values."""

    inputs: tuple[str, ...]  # provided node names, graph order: the module's positional arguments
    module: GraphModule
    num_nodes: int  # compute nodes it runs
    writes_inputs: bool = True  # may write into its input tensors (they must then be writable copies)
    # what the model's profile (ServedModel.profile) says of it: its inputs' profiled shapes, and its
    # compute (ms) for them; None without a profile, or when an input is not one profiled tensor
    profiled: tuple[tuple[tuple[int, ...], ...], float] | None = None


def _profiled(
    profile: Profile | None, inputs: Sequence[str], nodes: frozenset[str]
) -> tuple[tuple[tuple[int, ...], ...], float] | None:
    """A tail's :attr:`Tail.profiled`: the profiled shapes of its ``inputs`` and what ``profile`` says
    its ``nodes`` compute in (None when an input is not one tensor the profile timed)."""
    if profile is None:
        return None
    by_name = {n.name: n for n in profile.nodes}
    shapes = []
    for name in inputs:
        node = by_name.get(name)
        if node is None or len(node.outputs) != 1:
            return None
        shapes.append(tuple(node.outputs[0].shape))
    return tuple(shapes), sum(by_name[n].calibrated_ms for n in nodes if n in by_name)


ALIGN = RAW_ALIGN  # a CPU tail's inputs are aligned to this (serde.RAW_ALIGN says why)


def _misaligned(array: np.ndarray) -> bool:
    return array.__array_interface__["data"][0] % ALIGN != 0


def copied(array: np.ndarray, *, writable: bool = True, aligned: bool = True) -> bool:
    """Whether :func:`from_numpy` copies ``array`` (and so allocates its bytes again)."""
    flags = array.flags
    return (
        (writable and not flags.writeable)
        or not flags.c_contiguous
        or (aligned and _misaligned(array))
        or not array.dtype.isnative
    )


def _shared(array: np.ndarray, *, writable: bool, aligned: bool) -> torch.Tensor | None:
    """torch's view of ``array`` when :func:`from_numpy` shares its memory, else None.

    :func:`copied`'s test, asked of the tensor instead of the array: ``flags`` and
    ``__array_interface__`` build Python objects on every call. In a served process, where each
    request's megabytes have gone through the caches before its handler runs, those checks asked
    twice (for the lease, then here) took 91 us for a 1 MiB view against 55 for this, and 5.5
    against 1.8 us warm (interleaved micro-benchmark, 64 MiB copied before each call; see
    ``scripts/probe_handler.py --thrash-mib``).
    """
    if writable and not array.flags.writeable:
        return None
    try:
        tensor = torch.from_numpy(array)
    except (TypeError, ValueError):  # a byte order (or a dtype) torch does not view
        return None
    if not tensor.is_contiguous() or (aligned and tensor.data_ptr() % ALIGN):
        return None
    return tensor


def from_numpy(
    array: np.ndarray,
    *,
    bfloat16: bool = False,
    writable: bool = True,
    aligned: bool = True,
    reserve: Callable[[int, str], None] | None = None,
    name: str = "",
) -> torch.Tensor:
    """A CPU tensor with ``array``'s values; ``bfloat16``: uint16 bits -> bfloat16.

    With ``writable`` (the default), read-only arrays (views of a message's bytes) are copied;
    writable ones (decoded frames) are shared, not copied. Without it, a read-only array is shared
    too: only for a consumer that never writes into the tensor (a tail without in-place ops on its
    inputs, or a copy to another device). With ``aligned`` (the default; for a CPU tail), an array
    not :data:`ALIGN`-byte aligned is copied, into torch's own (aligned) memory. ``reserve(nbytes,
    what)``, if given, is called before a copy is allocated (not when the memory is shared) and may
    raise to refuse it; ``name`` is the tensor's, for ``what``.
    """
    if not bfloat16:
        tensor = _shared(array, writable=writable, aligned=aligned)
        if tensor is not None:
            return tensor  # (every aligned request's path: nothing to convert)
    # not shared: a copy follows (for bfloat16 bits, only where copied() says so)
    if reserve is not None and (not bfloat16 or copied(array, writable=writable, aligned=aligned)):
        reserve(array.nbytes, f"a copy of tensor {name!r}")
    dtype = np.dtype("<u2") if bfloat16 else array.dtype.newbyteorder("=")
    arr = np.asarray(array, dtype=dtype, order="C")  # (one copy for a byte swap and a layout both)
    arr = arr.view(np.int16) if bfloat16 else arr
    if not (aligned and _misaligned(arr)) and (arr.flags.writeable or not writable):
        tensor = torch.from_numpy(arr)
    else:  # into torch's allocation: aligned and writable (no torch view of the read-only array)
        tensor = torch.empty(arr.shape, dtype=torch.from_numpy(np.empty(0, dtype=arr.dtype)).dtype)
        tensor.numpy()[...] = arr
    return tensor.view(torch.bfloat16) if bfloat16 else tensor


def to_numpy(tensor: torch.Tensor) -> tuple[np.ndarray, bool]:
    """``tensor`` on the CPU as numpy, and whether it holds bfloat16 bits (as uint16)."""
    try:  # a CPU tensor that needs no grad, of a dtype numpy has: its array, with nothing asked first
        array = tensor.numpy()
    except (RuntimeError, TypeError):
        pass
    else:
        if array.dtype.char in _NUMPY_V2:
            return array, False
    t = tensor if tensor.device.type == "cpu" and not tensor.requires_grad else tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16), True
    if t.dtype not in _V2_BY_TORCH:
        raise ConfigError(f"the model returned a {t.dtype} tensor, which the v2 protocol cannot carry")
    return t.numpy(), False


class _Recorder(torch.fx.Interpreter):
    """Runs the graph once and keeps the dtype and shape of every tensor-valued node."""

    def __init__(self, module: GraphModule) -> None:
        super().__init__(module)
        self.meta: dict[str, NodeMeta] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.dtype in _V2_BY_TORCH:
            self.meta[n.name] = NodeMeta(_V2_BY_TORCH[out.dtype], tuple(out.shape))
        return out


# torch.inference_mode() enters exactly this guard, from a Python object built for each use and two
# calls more: entered directly, the mode costs a request 7 against 23 µs with the caches cold (the
# request's usual state on a server; ad-hoc, 2026-12-01). torch.inference_mode where it is missing.
_GUARD = getattr(torch._C, "_InferenceMode", None)
INFERENCE_MODE: Callable[[], AbstractContextManager[Any]] = (
    torch.inference_mode if _GUARD is None else partial(_GUARD, True)
)


def rows_independent(
    module: torch.nn.Module,
    example: Sequence[torch.Tensor],
    grad_mode: Callable[[], AbstractContextManager[Any]] = torch.inference_mode,
) -> tuple[bool, str]:
    """Whether ``module`` computes each row of a batch from that row alone, and why not if not.

    Dynamic batching stacks requests along the first dimension, which is exact (up to float rounding)
    only for such models: a model that normalises over the batch, or mixes rows in any other way,
    would answer each request with a result that depends on its neighbours. Checked once, on two
    random rows: the batch of both against each alone, element by element (relative tolerance 1e-4
    and 1e-5 of the output's largest magnitude: batched kernels round differently; NaN matches NaN).
    A model that cannot run the batch of two is not batchable either.
    """
    gen = torch.Generator().manual_seed(1)
    # fresh rows shaped like the example's (which load_served draws from a normal distribution too)
    rows = [[torch.randn((1, *t.shape[1:]), generator=gen).to(t.dtype) for t in example] for _ in range(2)]
    try:
        with grad_mode():
            alone = [pytree.tree_leaves(module(*r)) for r in rows]
            both = pytree.tree_leaves(module(*(torch.cat(pair) for pair in zip(*rows, strict=True))))
    except Exception as exc:  # noqa: BLE001 - any failure means: do not batch it
        return False, f"it fails on a batch of 2 ({type(exc).__name__}: {first_line(exc)[:120]})"
    for i, out in enumerate(both):
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != 2:
            return False, f"its output {i} is not batched along the first dimension"
        for r in range(2):
            single = alone[r][i]
            if single.shape[1:] != out.shape[1:]:
                return False, f"its output {i} changes shape with the batch size"
            if out.is_floating_point():
                row, single = out[r : r + 1].float(), single.float()
                finite = single[torch.isfinite(single)]
                scale = float(finite.abs().max()) if finite.numel() else 0.0
                close = torch.isclose(row, single, rtol=1e-4, atol=1e-5 * scale + 1e-6, equal_nan=True)
                if not bool(close.all()):
                    err = float((row - single)[~close].abs().max())
                    return (
                        False,
                        f"a row's output {i} changes with the other rows of its batch (by {err:.3g})",
                    )
            elif not torch.equal(out[r : r + 1], single):
                return False, f"a row's output {i} changes with the other rows of its batch"
    return True, ""


class ServedModel:
    """One traced model on one device, with its node metadata and a cache of tails."""

    def __init__(
        self,
        name: str,
        traced: TracedModel,
        device: torch.device,
        *,
        tail_cache_size: int = 64,
        check_batching: bool = True,
    ) -> None:
        self.name = name
        self.traced = traced
        self.device = device
        self.on_cpu = device.type == "cpu"  # (asked per request: a torch.device's type is not free)
        self.tail_cache_size = max(1, tail_cache_size)
        self.input_names = tuple(n.name for n in traced.nodes if n.op == "placeholder")
        # tails run under inference mode, as the profiler measures them, unless the model cannot: one
        # that takes gradients inside its forward (enable_grad, autograd.grad) runs under no_grad
        self.grad_mode: Callable[[], AbstractContextManager[Any]] = INFERENCE_MODE
        self.grad_mode_note = ""
        recorder = _Recorder(traced.module)
        try:
            with torch.inference_mode():
                example_out = recorder.run(*(t.clone() for t in traced.example_inputs))
        except Exception as exc:  # noqa: BLE001 - retried below; a model failing both ways raises there
            self.grad_mode = torch.no_grad
            self.grad_mode_note = (
                f"it runs under torch.no_grad, not torch.inference_mode, where it fails "
                f"({type(exc).__name__}: {first_line(exc)[:120]})"
            )
            recorder = _Recorder(traced.module)
            with torch.no_grad():
                example_out = recorder.run(*(t.clone() for t in traced.example_inputs))
        self.node_meta: Mapping[str, NodeMeta] = recorder.meta
        leaves = pytree.tree_leaves(example_out)
        if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
            raise ConfigError(
                f"model {name!r} returns {type(example_out).__name__} with non-tensor parts; a served model "
                f"must return a tensor or a tuple/list/dict of tensors"
            )
        self.output_names = output_names(example_out, lambda v: isinstance(v, torch.Tensor), len(leaves))

        def spec_shape(shape: Sequence[int]) -> tuple[int, ...]:  # any batch (-1) unless shapes are fixed
            return tuple(shape) if traced.static_shapes else (-1, *shape[1:])

        self.output_specs = tuple(
            TensorSpec(n, _V2_BY_TORCH.get(t.dtype, str(t.dtype)), spec_shape(t.shape))
            for n, t in zip(self.output_names, leaves, strict=True)
        )
        self.input_specs = tuple(
            TensorSpec(n, self.node_meta[n].datatype, spec_shape(self.node_meta[n].shape))
            for n in self.input_names
        )
        # whether requests may share a batch: only when a row's output does not depend on the others
        # (not checked, three more runs of the model, where nothing is batched: max_batch_size 1)
        if traced.static_shapes:  # a batch has other shapes than the graph holds for
            self.batchable, self.batching_note = False, "it was captured by torch.export at fixed shapes"
        else:
            self.batchable, self.batching_note = (
                rows_independent(traced.module, traced.example_inputs, self.grad_mode)
                if check_batching
                else (True, "")
            )
        # once per served model, before the move to the device (hashing reads CPU bytes): ~0.1 s per 100 MB
        self.weights = weights_digest(traced.module)
        traced.module.to(device)
        self._cache: OrderedDict[frozenset[str], Tail] = OrderedDict()
        self._lock = threading.Lock()
        self.profile: Profile | None = None  # the server's, once known (set_profile): tails price by it
        self.tail_builds = 0  # tails built so far (cache misses); rising steadily: the cache thrashes
        self._graph_nodes = {n.name: n for n in traced.module.graph.nodes}
        self._position = {n.name: i for i, n in enumerate(traced.module.graph.nodes)}

    @property
    def fingerprint(self) -> str:
        return self.traced.fingerprint

    # ----------------------------------------------------------------------------------------------

    def check_inputs(self, arrays: Mapping[str, np.ndarray], bfloat16: frozenset[str]) -> None:
        """Refuse inputs that are not tensor-valued nodes of this model, or whose dtype or rank differ.

        All inputs must agree on the batch (first) dimension, which must be at least 1.
        """
        output = [n for n in arrays if n in self._graph_nodes and self._graph_nodes[n].op == "output"]
        if output:
            raise WireError(
                f"input {output[0]!r} names the output node of model {self.name!r}, which no cut sends; "
                f"name the producer nodes of your cut's boundary tensors"
            )
        unknown = [n for n in arrays if n not in self.node_meta]
        if unknown:
            not_tensor = [n for n in unknown if n in self._graph_nodes]
            if not_tensor:
                raise WireError(
                    f"input(s) {shown_names(not_tensor)} of model {self.name!r} do not produce a tensor (a "
                    f"parameter, the output, or a non-tensor value); cut at tensor-valued nodes"
                )
            raise WireError(
                f"model {self.name!r} has no node(s) {shown_names(unknown)}; name inputs after the model's "
                f"inputs {list(self.input_names)} or the producer nodes of your cut's boundary tensors "
                f"(is the client splitting another model?)"
            )
        batch: set[int] = set()
        for name, arr in arrays.items():
            meta = self.node_meta[name]
            datatype = datatype_of(arr, bfloat16=name in bfloat16)
            if datatype != meta.datatype:
                raise WireError(
                    f"input {name!r} of model {self.name!r}: expected datatype {meta.datatype}, found "
                    f"{datatype}; send the tensor with the dtype the node produces (a lossy codec frame "
                    f"decodes to float32)"
                )
            if arr.ndim != len(meta.shape):
                raise WireError(
                    f"input {name!r} of model {self.name!r}: expected rank {len(meta.shape)} (shape like "
                    f"{[-1, *meta.shape[1:]]}), found shape {list(arr.shape)}"
                )
            if self.traced.static_shapes and tuple(arr.shape) != meta.shape:
                raise WireError(
                    f"input {name!r} of model {self.name!r}: expected shape {list(meta.shape)}, found "
                    f"{list(arr.shape)}; this model was captured by torch.export, whose graph holds only "
                    f"for the shapes it was traced at"
                )
            if arr.ndim == 0 or arr.shape[0] < 1:
                raise WireError(
                    f"input {name!r} of model {self.name!r} has shape {list(arr.shape)}; expected a batch "
                    f"(first) dimension of at least 1"
                )
            batch.add(int(arr.shape[0]))
        if len(batch) > 1:
            raise WireError(
                f"the inputs of one request disagree on the batch dimension: "
                f"{ {n: int(a.shape[0]) for n, a in arrays.items()} }; send one batch size per request"
            )

    def tail(self, provided: frozenset[str]) -> Tail:
        """The tail computing the output from the values of ``provided`` (cached; WireError if invalid)."""
        return self.tail_built(provided)[0]

    def tail_built(self, provided: frozenset[str]) -> tuple[Tail, float]:
        """:meth:`tail`, and the seconds this call spent building it (0 when it was cached): the
        server reports them, and clients leave such a request out of the server's pace."""
        with self._lock:
            cached = self._cache.get(provided)
            if cached is not None:
                self._cache.move_to_end(provided)
                return cached, 0.0
        start = time.perf_counter()
        tail = self._build_tail(provided)  # outside the lock: building may take a moment
        built_s = time.perf_counter() - start
        with self._lock:
            self.tail_builds += 1
            self._cache[provided] = tail
            self._cache.move_to_end(provided)
            while len(self._cache) > self.tail_cache_size:
                self._cache.popitem(last=False)
        return tail, built_s

    def set_profile(self, profile: Profile | None) -> None:
        """Price tails by ``profile`` (``Tail.profiled``) from now on; tails built before are dropped."""
        with self._lock:
            self.profile = profile
            self._cache.clear()

    def cached_tails(self) -> int:
        with self._lock:
            return len(self._cache)

    def _build_tail(self, provided: frozenset[str]) -> Tail:
        nodes = self._graph_nodes
        output = next(n for n in reversed(self.traced.module.graph.nodes) if n.op == "output")
        members: set[Node] = set()
        attrs: set[Node] = set()
        used: set[str] = set()
        missing: list[str] = []
        stack = list(output.all_input_nodes)
        seen: set[Node] = set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.name in provided:
                used.add(n.name)
            elif n.op == "get_attr":
                attrs.add(n)
            elif n.op == "placeholder":
                missing.append(n.name)
            else:
                members.add(n)
                stack.extend(n.all_input_nodes)
        if missing:
            raise WireError(
                f"model {self.name!r}: the tail from inputs {shown_names(sorted(provided))} also needs model "
                f"input(s) {shown_names(sorted(missing))}, which the request does not provide; send every "
                f"boundary tensor of the cut (every value the head computes and the tail reads)"
            )
        unused = sorted(provided - used)
        if unused:
            raise WireError(
                f"model {self.name!r}: input(s) {shown_names(unused)} are not read by the tail that "
                f"computes the output from the other inputs (they lie before another input on every "
                f"path); send only the boundary tensors of your cut"
            )
        order = sorted(provided, key=self._position.__getitem__)
        graph = Graph()
        env: dict[Node, Node] = {}
        for name in order:
            env[nodes[name]] = graph.placeholder(name)
        wanted = members | attrs
        for n in self.traced.module.graph.nodes:
            if n in wanted:
                env[n] = graph.node_copy(n, env.__getitem__)
        graph.node_copy(output, env.__getitem__)
        graph.lint()
        module = release_source_when_freed(
            GraphModule(self.traced.module, graph, f"{type(self.traced.module).__name__}_tail")
        )
        module.training = self.traced.module.training
        num = sum(1 for n in members if n.op in COMPUTE_OPS)
        names = frozenset(n.name for n in members)
        return Tail(
            tuple(order), module, num, may_write_inputs(module), _profiled(self.profile, order, names)
        )

    def run(self, tail: Tail, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``tail`` on ``inputs`` (its input order) on this model's device; the output leaves.

        Under ``torch.inference_mode``, as the profiler measures: it skips autograd's view and
        version bookkeeping that ``no_grad`` keeps (ViT-Tiny's whole model on an H200, launch-bound,
        took 1.26x as long under ``no_grad``; ``docs/benchmarks.md``). The outputs only ever become
        the answer's bytes, so that they are inference tensors is never seen. A model that failed
        under it at load (gradients taken inside its forward) runs under ``no_grad``:
        :attr:`grad_mode_note` says so.

        The outputs are on the CPU. The tail's ``forward`` is called without ``nn.Module``'s call
        wrapper: nothing registers hooks on a tail (its submodules' hooks still run), and on every
        request the wrapper's checks cost more than a small tail's own work."""
        if not self.on_cpu:  # (the inputs are on the CPU: decoded from the message)
            inputs = [t.to(self.device, non_blocking=True) for t in inputs]
        with self.grad_mode():
            out = tail.module.forward(*inputs)
        if type(out) is torch.Tensor and len(self.output_names) == 1 and self.on_cpu:
            return [out]  # (every request of a one-output model on the CPU: nothing to check or move)
        leaves = [out] if type(out) is torch.Tensor else pytree.tree_leaves(out)
        if len(leaves) != len(self.output_names) or not all(isinstance(t, torch.Tensor) for t in leaves):
            raise ConfigError(
                f"model {self.name!r} returned {len(leaves)} output part(s), expected "
                f"{len(self.output_names)} tensors as on its example input"
            )
        return leaves if self.on_cpu else [t.cpu() for t in leaves]
