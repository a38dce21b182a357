"""The request path of the edge client: one :meth:`SplitClient.infer` call, local or remote (torch, grpc).

Split out of :mod:`splitdnn.runtime.client`, which keeps the client's state (channel, planner, link
estimate, back-off) and decides *which* path a request takes; :class:`Run` carries one request
through it and records where the time went (a :class:`~splitdnn.runtime.client.Breakdown`). A
``Run`` belongs to one call on one thread; everything it shares with other calls goes through the
client's locked methods (``_observe``, ``_mark_up`` / ``_mark_down``, ``_count_fallback``,
``_pieces_for``).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
import torch
from torch.utils import _pytree as pytree

from splitdnn import codec as _codec
from splitdnn import graph
from splitdnn.errors import ConfigError, DeadlineError, PlanError, WireError
from splitdnn.runtime import serde
from splitdnn.runtime._client_report import Breakdown, predicted_parts
from splitdnn.runtime._client_rpc import connection_state, is_transient, model_infer, translate_rpc_error
from splitdnn.runtime._deadline import MIN_DEVICE_MS, PROBE_SHARE, Choice, Spread
from splitdnn.runtime.planner import remote_ms as planner_remote_ms
from splitdnn.schema import Plan

if TYPE_CHECKING:
    from splitdnn.runtime.client import SplitClient

__all__ = ["Pieces", "Run", "device_compute", "unsendable"]

T = TypeVar("T")

#: the least a request waits past its predicted remote time before it is finished on the device
_OVERDUE_MIN_MS = 50.0


@dataclass(frozen=True)
class Pieces:
    """The split model for one plan (cached by the client per set of device-side nodes)."""

    head: graph.Piece | None  # None for cloud-only
    tail: graph.Piece | None  # None for cloud-only (the local fallback runs the whole model)


# --------------------------------------------------------------------------------------------------
# device compute


class _ThreadLimit:
    """``torch.set_num_threads`` for the length of a device computation, safe under overlap.

    With torch's OpenMP backend the setting is two things at once: the calling OS thread's own
    OpenMP thread count, and the process default that threads starting later pick up. So every
    request sets the limit on its own thread (where its compute runs), and on exit sets its thread,
    and the default, back to the value found when no request was computing (saved by the first to
    enter). Restoring "the value I found" instead would leave the limit behind whenever requests
    overlap: a request entering while another computes finds the limit, not the real setting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = 0

    def enter(self, threads: int) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = torch.get_num_threads()
            self._users += 1
            torch.set_num_threads(threads)

    def exit(self) -> None:
        with self._lock:
            self._users -= 1
            torch.set_num_threads(self._saved)


_THREADS = _ThreadLimit()

#: torch's own switch of the (thread-local) grad mode, which ``torch.no_grad`` wraps in an object
#: built on every entry (``torch.set_grad_enabled``, which sets the mode when called, where missing)
_SET_GRAD_ENABLED: Callable[[bool], object] = getattr(torch._C, "_set_grad_enabled", torch.set_grad_enabled)


def emulation_clock(threads: int | None, slowdown: float) -> Callable[[], float]:
    """The clock that measures an emulated device's work (seconds): the computing thread's CPU time
    when the device is emulated (``slowdown`` > 1) on one thread, else the wall clock. The device's
    profile and the padding of its requests use the same one (see ``Run._timed_device``)."""
    return time.thread_time if slowdown > 1.0 and threads == 1 else time.perf_counter


class device_compute:  # noqa: N801 (used like a function: ``with device_compute(threads):``)
    """Device-side compute: the (shared, reference-counted) thread limit, no autograd. Not inference
    mode: its tensors refuse in-place changes and autograd later, and an app would get them from local
    runs only (a remote answer is a plain tensor), depending on the plan of the moment.

    A class with ``__enter__`` and ``__exit__`` rather than a generator under ``contextmanager``
    with ``torch.no_grad`` inside: it is entered on every request, and each object and frame the
    request path touches costs 10 to 30 µs there, in caches the request's megabytes have just
    evicted (measured: 66 µs cold for the generator and ``no_grad``, 11 µs for torch's own switch).
    ``no_grad=False`` leaves autograd as it is (a step that only hands tensors to numpy needs no switch).
    """

    __slots__ = ("_threads", "_no_grad", "_was")

    def __init__(self, threads: int | None, *, no_grad: bool = True) -> None:
        self._threads = threads
        self._no_grad = no_grad
        self._was = True

    def __enter__(self) -> None:
        if self._threads is not None:
            _THREADS.enter(self._threads)
        if self._no_grad:
            self._was = torch.is_grad_enabled()
            _SET_GRAD_ENABLED(False)

    def __exit__(self, *exc: object) -> None:
        try:
            if self._no_grad:
                _SET_GRAD_ENABLED(self._was)
        finally:
            if self._threads is not None:
                _THREADS.exit()


# --------------------------------------------------------------------------------------------------
# torch <-> numpy


def _to_numpy(value: Any, name: str) -> tuple[np.ndarray, bool]:
    """``(array, is_bfloat16)`` of a boundary value; bfloat16 travels as uint16 bit patterns."""
    if not isinstance(value, torch.Tensor):
        raise PlanError(
            f"boundary value {name!r} is a {type(value).__name__}, not a tensor: only tensors can be "
            f"sent; cut elsewhere (force_boundary=...) or keep that node on one side"
        )
    try:  # a plain CPU tensor: its own memory, in one call (each costs 10-30 µs cold on a request)
        plain = value.numpy()
    except (RuntimeError, TypeError):  # bfloat16, another device, needs grad, a conjugate or negative bit
        plain = None
    if plain is not None and plain.flags.c_contiguous:
        return plain, False
    t = value.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), True
    return t.numpy(), False


def _from_numpy(array: np.ndarray, bfloat16: bool) -> torch.Tensor:
    arr = np.array(array, copy=True)  # writable, owned: the response's buffer is read-only
    if bfloat16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


@dataclass(frozen=True)
class _Facts:
    """What one run of a traced module on its example input shows."""

    unsendable: frozenset[str]  # nodes whose value is not one tensor
    structure: pytree.TreeSpec  # how its output tensors nest
    names: tuple[str, ...]  # the v2 names the server gives them (serde.output_names)


#: _Facts per traced module, as each client asks for them
_FACTS: weakref.WeakKeyDictionary[torch.nn.Module, _Facts] = weakref.WeakKeyDictionary()


def _facts(traced: graph.TracedModel) -> _Facts:
    known = _FACTS.get(traced.module)
    if known is None:
        known = _FACTS[traced.module] = _run_once(traced)
    return known


def unsendable(traced: graph.TracedModel) -> frozenset[str]:
    """Nodes whose value is not one tensor (a tuple, a Python number), from one run on the example
    input: only tensors can cross the network, so no plan may cut right after these. Kept per traced
    module (one run of the model, ~70 ms for ResNet-50, per client otherwise)."""
    return _facts(traced).unsendable


def _run_once(traced: graph.TracedModel) -> _Facts:
    tensors: set[str] = set()

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                tensors.add(n.name)
            return value

    with torch.inference_mode():
        out = _Recorder(traced.module).run(*(t.clone() for t in traced.example_inputs))
    unsent = frozenset(n.name for n in traced.nodes if n.op != "get_attr" and n.name not in tensors)
    leaves = pytree.tree_leaves(out)
    names = serde.output_names(out, lambda v: isinstance(v, torch.Tensor), len(leaves))
    return _Facts(unsent, pytree.tree_structure(_plain(out)), names)


def _plain(value: Any) -> Any:
    """``value`` with fx's immutable containers (what an Interpreter returns) as the plain ``dict`` and
    ``list`` that calling the module returns."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        items = [_plain(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _output(data: serde.InferResponseData, facts: _Facts) -> Any:
    """The model output from the response, in the model's own structure (the server sends its tensors
    flat, named by :func:`serde.output_names`: ``output``, a flat dict's keys, or ``output_0``...)."""
    outs = data.outputs
    if len(outs) != len(facts.names) or not all(n in outs for n in facts.names):  # (names are unique)
        raise WireError(
            f"the server's response has outputs {sorted(outs)[:8]}; this model's are "
            f"{list(facts.names)[:8]}: is the server a splitdnn server of this model?"
        )
    items = [_from_numpy(outs[n], n in data.bfloat16) for n in facts.names]
    return pytree.tree_unflatten(items, facts.structure)


# --------------------------------------------------------------------------------------------------
# one request


class Run:
    """The bookkeeping of one infer() call: times, bytes, and the local and remote paths."""

    def __init__(
        self,
        client: SplitClient,
        plan: Plan,
        t0: float,
        scale: float = 1.0,
        server_factor: float = 1.0,
        profile_rows: bool = True,
        server_queue_ms: float = 0.0,
        deadline_ms: float | None = None,
    ) -> None:
        self.c = client
        self.plan = plan
        self.server_factor = server_factor  # the server's pace the plan was priced with (ServerPace)
        self.server_queue_ms = server_queue_ms  # and its queue, in the plan's round trip
        # the request has the profiles' batch: its server time is a sample of the server's pace (a
        # batch costs less than its rows alone, which would read as a faster server)
        self.profile_rows = profile_rows
        self.t0 = t0
        self.deadline_ms = deadline_ms  # the caller's, from t0 (None: none)
        self._cut_at: float | None = None  # for it: when to stop waiting and finish here (perf_counter)
        self._cut_sure = False  # ... and the device surely makes it from then (by the client's history)
        self.scale = scale  # the request's rows over the profiles' batch: predictions grow with it
        self.head_ms = self.encode_ms = self.tail_ms = self.client_ms = self.padding_ms = 0.0
        self._owed_ms = 0.0  # device padding not slept yet (see _timed_device's defer)
        self.network_ms = self.queue_ms = self.compute_ms = self.decode_ms = 0.0
        self.bytes_sent = self.bytes_received = self.batch = 0
        self.sent: tuple[str, ...] = ()
        self.codecs: tuple[str, ...] = ()
        self.is_local = False
        self.fallback = ""
        self.probed = False  # also sent in the background (_probe)

    def breakdown(self) -> Breakdown:
        return Breakdown(
            head_ms=self.head_ms, encode_ms=self.encode_ms, network_ms=self.network_ms,
            server_queue_ms=self.queue_ms, server_compute_ms=self.compute_ms, decode_ms=self.decode_ms,
            total_ms=(time.perf_counter() - self.t0) * 1e3, bytes_sent=self.bytes_sent,
            boundary=self.sent, local=self.is_local, bytes_received=self.bytes_received,
            tail_local_ms=self.tail_ms, client_ms=self.client_ms, padding_ms=self.padding_ms,
            predicted_ms=self.plan.cost.total_ms, strategy=self.plan.strategy, codecs=self.codecs,
            fallback=self.fallback, batch_size=self.batch, deadline_ms=self.deadline_ms,
            probed=self.probed,
        )  # fmt: skip

    def _timed_device(
        self, fn: Callable[[], T], *, defer: bool = False, no_grad: bool = True
    ) -> tuple[T, float]:
        """Run ``fn`` as device compute; returns its result and the emulated time in ms.

        Emulated (slowdown ``f`` > 1), the device's time is ``f`` x the work it did: with one device
        thread that is the CPU time of this thread (what the work cost, not how long other threads
        of this machine kept it waiting: the shaper, the server and the link probes are not on the
        emulated device), else the wall time. The wall time already spent counts toward it.

        ``defer``: owe the padding instead of sleeping now; the next device step sleeps it after its
        own work. Steps that follow each other on a real device (head, then encode) then run back to
        back, not with a long sleep between them that leaves the second one on cold caches.
        ``no_grad``: turn autograd off meanwhile (not needed by a step that computes nothing in torch)."""
        slowdown = self.c.emulate_slowdown
        clock = emulation_clock(self.c.threads, slowdown)
        with device_compute(self.c.threads, no_grad=no_grad):
            t, w = time.perf_counter(), clock()
            out = fn()
            ms = (time.perf_counter() - t) * 1e3
            work_ms = ms if clock is time.perf_counter else (clock() - w) * 1e3
        pad = max(0.0, slowdown * work_ms - ms) if slowdown > 1.0 else 0.0
        self.padding_ms += pad
        if defer:
            self._owed_ms += pad
        else:
            owed, self._owed_ms = self._owed_ms + pad, 0.0
            if owed > 0:
                time.sleep(owed / 1e3)
        return out, ms + pad

    def _fell_back(self, reason: str) -> None:
        self.is_local = True
        self.fallback = reason
        if reason:
            self.c._count_fallback()

    def local(self, inputs: Sequence[torch.Tensor], *, reason: str) -> Any:
        """The whole model on the device (``reason``: why, when the plan said otherwise)."""
        self._fell_back(reason)
        out, self.head_ms = self._timed_device(lambda: self.c.traced.module(*inputs))
        self._device_ran(
            self.c._history.finishes, self.head_ms, self.c.device_profile.total.median_ms * self.scale
        )
        return out

    @staticmethod
    def _device_ran(spread: Spread, measured_ms: float, predicted_ms: float) -> None:
        """Keep how a device computation went against its prediction, for deadlines (not the tiny ones)."""
        if predicted_ms >= MIN_DEVICE_MS:
            spread.add(measured_ms, predicted_ms)

    def _rest_ms(self) -> float:
        """The plan's predicted time for the request after its head (encode, network, server, decode),
        for the request's rows."""
        return max(0.0, self.plan.cost.total_ms - self.plan.cost.compute_ms[0]) * self.scale

    def _rest_done(self, *, censored: bool) -> None:
        """Keep how the rest of a remote request went against its prediction, for deadlines
        (``censored``: given up after that long, without an answer)."""
        measured = (time.perf_counter() - self.t0) * 1e3 - self.head_ms
        self.c._history.remote.add(measured, self._rest_ms(), censored=censored)

    def _finish_locally(
        self, inputs: Sequence[torch.Tensor], values: dict[str, Any] | None, reason: str
    ) -> Any:
        """The request's remaining work on the device: the tail if the head ran, else everything."""
        pieces = self.c._pieces_for(self.plan)
        if values is None or pieces.tail is None:
            head_ms = self.head_ms
            out = self.local(inputs, reason=reason)
            self.tail_ms, self.head_ms = self.head_ms, head_ms
            return out
        self._fell_back(reason)
        tail = pieces.tail
        out, self.tail_ms = self._timed_device(lambda: tail(values))
        self._device_ran(self.c._history.finishes, self.tail_ms, self._local_ms())
        return out

    def _encode(self, send: dict[str, Any]) -> tuple[dict[str, np.ndarray | bytes], list[str]]:
        """The wire form of each tensor to send: a real-typed array (``raw``) or a codec frame."""
        wire: dict[str, np.ndarray | bytes] = {}
        bf16: list[str] = []
        for name, spec in zip(self.sent, self.codecs, strict=True):
            arr, is_bf16 = _to_numpy(send[name], name)
            if spec == "raw":
                wire[name] = arr
                if is_bf16:
                    bf16.append(name)
            else:
                wire[name] = _codec.encode(arr, spec, bfloat16=is_bf16)
        return wire, bf16

    def _remote_ms(self) -> float:
        """The plan's predicted time from the request leaving to its answer arriving."""
        cost = self.plan.cost
        return max(0.0, cost.total_ms - cost.compute_ms[0] - cost.encode_ms)

    def _overdue_after_s(self, values: dict[str, Any] | None) -> float | None:
        """How long to wait for the answer before finishing on the device instead (None: no limit).

        When a link falls mid-run (18.88 -> 1.1 Mbit/s), the request already sent takes the new rate:
        a second instead of the 70 ms predicted, and nothing re-plans until it is back. Waiting past
        the prediction by as long as finishing locally would take, then finishing locally, is never
        more than twice the better of the two choices in hindsight (the rent-or-buy argument), and
        the abandoned transfer tells the estimator the link fell. The wait is at least twice the
        prediction and 50 ms over it, so a request merely slower than predicted (a scheduling hiccup
        on either end) is not given up. A server slowed by load looks the same from here; the
        client's probes see the link as it is and bring the remote plan back.
        """
        if values is None and self.plan.strategy != "cloud-only":
            return None
        remote_ms = self._remote_ms() * self.scale  # a batch of 48 takes longer than the profile's 1
        return max(2.0 * remote_ms, remote_ms + _OVERDUE_MIN_MS, remote_ms + self._local_ms()) / 1e3

    def _local_ms(self) -> float:
        """The device's predicted time to finish the request from the head's outputs (the whole model
        for a cloud-only plan, which runs no head), for the request's rows."""
        return max(0.0, self.c.device_profile.total.median_ms - self.plan.cost.compute_ms[0]) * self.scale

    def _left_ms(self) -> float:
        """Time left until the caller's deadline (ms; negative once past; infinite without one) once
        the device has slept the emulation padding it still owes (a head's, slept after the next
        device step whichever path follows: that time is gone for both)."""
        if self.deadline_ms is None:
            return math.inf
        return self.deadline_ms - (time.perf_counter() - self.t0) * 1e3 - self._owed_ms

    def _deadline_wait_s(self) -> float | None:
        """How long the call may wait for its answer, from now, for the caller's deadline (None: no
        deadline, or no limit from it). With a local fallback, until the moment chosen after the head
        (:meth:`_deadline_choice`); None when that is to wait for the answer. Without one, until the
        deadline itself."""
        left_ms = self._left_ms()
        if math.isinf(left_ms):
            return None
        if not self.c.fallback_local:
            return max(left_ms, 0.1) / 1e3  # (gRPC needs a deadline in the future)
        if self._cut_at is None:
            return None
        return max(self._cut_at - time.perf_counter(), 1e-4)

    def _deadline_choice(self) -> Choice:
        """For a request with a deadline and a local fallback, once its head has run: how long to
        wait for the answer before finishing on the device (ms; 0: finish there now; infinite: wait
        for it), the wait that makes the deadline most likely by the client's recent requests and
        device runs (:func:`splitdnn.runtime._deadline.deadline_wait_ms`; the medians until it has 8)."""
        return self.c._history.choose(self._left_ms(), self._rest_ms(), self._local_ms())

    def remote(self, inputs: Sequence[torch.Tensor]) -> Any:
        """The plan's head here, the rest on the server; finishes locally on a transient failure."""
        c, plan = self.c, self.plan
        pieces = c._pieces_for(plan)
        values: dict[str, Any] | None = None
        named: dict[str, Any] = dict(zip(c._placeholders, inputs, strict=True))
        send = named  # cloud-only: the model's own inputs
        if pieces.head is not None:
            head = pieces.head
            head_out, self.head_ms = self._timed_device(lambda: head(named), defer=True)
            self._device_ran(c._history.heads, self.head_ms, plan.cost.compute_ms[0] * self.scale)
            values = send = dict(head_out)
        codec_of = {b.node: b.codec for b in plan.boundary}
        self.sent = tuple(send)
        self.codecs = tuple(codec_of.get(n, "raw") for n in self.sent)

        remote_ms = planner_remote_ms(plan)
        if remote_ms > c.timeout_s * 1e3 and c.fallback_local:  # a forced plan (others are never chosen)
            return self._finish_locally(
                inputs, values, f"the remote part is predicted to take {remote_ms:.0f} ms, over the "
                f"{c.timeout_s * 1e3:.0f} ms deadline",
            )  # fmt: skip

        if self.deadline_ms is not None and c.fallback_local:
            choice = self._deadline_choice()
            wait_ms, self._cut_sure = choice.wait_ms, choice.sure
            if wait_ms <= 0:  # the device is likelier to make it (or as likely and sooner), or misses by less
                self._probe(send)  # (now and then: keep the record of the remote current)
                return self._finish_locally(
                    inputs, values, f"the {self.deadline_ms:g} ms deadline: {max(0.0, self._left_ms()):.0f} "
                    f"ms left, the rest of the plan predicted to take {self._rest_ms():.0f} ms, the device "
                    f"{self._local_ms():.0f} ms; finishing on the device now is the best bet"
                    + ("" if math.isnan(choice.made) else f" ({choice.made:.0%} made by recent requests)"),
                )  # fmt: skip
            if math.isfinite(wait_ms):  # (from when the owed padding is slept, as _left_ms counts)
                self._cut_at = time.perf_counter() + (self._owed_ms + wait_ms) / 1e3

        request = self._request(send)
        cap, whose = c.message_cap()
        if len(request) > cap:  # refused for certain: gRPC would say RESOURCE_EXHAUSTED (and not sent)
            over = (
                f"the request for plan {self.plan.strategy!r} (boundary {list(self.sent)[:3]}, codecs "
                f"{list(self.codecs)[:3]}) is {len(request)} bytes, over the {whose} max_message_bytes={cap}"
            )
            if not c.planner.forced and self.scale <= 1:  # the profile predicted smaller frames
                with c._lock:  # (a batch larger than the profile's may be over where one row is not)
                    c.planner.avoid(
                        plan, f"a request of it was {len(request)} bytes, over the {cap}-byte cap"
                    )
                over += "; this cut is not planned again"
            elif self.scale > 1:
                over += f"; the batch is {self.scale:g}x the profile's: send fewer rows per request"
            if not c.planner.forced and c.fallback_local:
                return self._finish_locally(inputs, values, over)
            raise ConfigError(
                f"{over}; raise it (SplitClient(max_message_bytes=...), splitdnn serve --max-message-mib), "
                f"send fewer rows, or allow codecs that send less"
            )
        self.bytes_sent = len(request)
        t_rpc = time.perf_counter()
        give_up_s = None
        by_deadline = False  # the call's deadline is the caller's (not the client's or a give-up)
        try:
            with c._awaiting_server(self.sent) as may_give_up:
                wait_s = self._overdue_after_s(values) if c.fallback_local and may_give_up else None
                if wait_s is not None and wait_s < c.timeout_s:
                    give_up_s = wait_s
                cut_s = self._deadline_wait_s()
                if cut_s is not None and cut_s < min(c.timeout_s, give_up_s or math.inf):
                    give_up_s, by_deadline = cut_s, True
                if c._deadline_probes is not None:
                    c._deadline_probes.give_way()  # (a probe in flight would share the uplink)
                # the give-up is the call's deadline (gRPC cancels it then): a blocking call, as
                # .future() would start a thread per call on an otherwise idle channel
                response = c._send(request, c.timeout_s if give_up_s is None else give_up_s)
        except grpc.RpcError as exc:
            # A deadline passed with the connection down (TRANSIENT_FAILURE: a connection attempt
            # failed; not IDLE or CONNECTING, which a connection closed for its age goes through while
            # the server is well): the server stopped or restarted while gRPC's own retries were still
            # reconnecting. That says nothing of the link's rate, so it is not taken as a slow
            # transfer (which would read as a link fallen to a fraction of a Mbit/s).
            late = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
            down = late and connection_state(c._channel) is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            dropped = "TRANSIENT_FAILURE" if down else None
            if late and dropped is None and (self._cut_sure if by_deadline else give_up_s is not None):
                # the answer would have come later than this. Not a deadline's cut the device might
                # miss after: the history chose it, and would hide from itself for good every answer
                # later than it (after a sure one, only whether answers beat it still counts)
                self._rest_done(censored=True)
            if by_deadline and late:
                # the caller's deadline, not a sign of the link or the server: nothing observed, no
                # back-off (the answer may merely be later than this request could wait)
                return self._missed_answer(inputs, values, (time.perf_counter() - t_rpc) * 1e3, exc)
            if give_up_s is not None and late and dropped is None:
                # no answer by the give-up time: the link fell (see _overdue_after_s)
                waited_ms = (time.perf_counter() - t_rpc) * 1e3
                self.network_ms = waited_ms
                c._observe(self.bytes_sent, 0, waited_ms, overdue=self._overdue_parts())
                return self._finish_locally(
                    inputs, values, f"no answer after {waited_ms:.0f} ms (predicted "
                    f"{self._remote_ms() * self.scale:.0f} ms): the link fell; finished on the device",
                )  # fmt: skip
            err = translate_rpc_error(exc, f"ModelInfer({c.model_name!r})")
            self.network_ms = (time.perf_counter() - t_rpc) * 1e3
            if c.closed:
                raise ConfigError(
                    f"the client was closed while request {self.sent[:3]} waited for the server ({err.code})"
                ) from exc
            if is_transient(err):  # unreachable, too slow or overloaded: leave it alone for a while
                c._mark_down(sent_at=time.monotonic() - self.network_ms / 1e3)
            if isinstance(err, DeadlineError) and dropped is None:
                # no answer in timeout_s: as slow a link as that, at least
                c._observe(self.bytes_sent, 0, self.network_ms, overdue=self._overdue_parts())
            if c.fallback_local and is_transient(err):
                why = f"{err.code}: {err.details or err}"
                if dropped is not None:
                    why = (
                        f"no answer after {self.network_ms:.0f} ms and the connection to the server is "
                        f"{dropped} (it stopped or restarted): {why}"
                    )
                return self._finish_locally(inputs, values, why[:200])
            raise err from exc
        rpc_ms = (time.perf_counter() - t_rpc) * 1e3
        if len(response) > c.max_message_bytes:  # gRPC's own receive cap is wider (control replies)
            raise ConfigError(
                f"the server's answer is {len(response)} bytes, over the client's max_message_bytes="
                f"{c.max_message_bytes}; raise it (SplitClient(max_message_bytes=...)) or send fewer rows"
            )
        # a cut's first answer from this client includes building the tail (also reported by the
        # server, which another replica, or a tail evicted from its cache, may need again)
        built = self._answered()
        t = time.perf_counter()
        data = c._response_decoder.decode(response, max_decoded_bytes=c.max_message_bytes)
        out = _output(data, _facts(c.traced))
        self.client_ms += (time.perf_counter() - t) * 1e3
        p = data.parameters
        batch = p.get(serde.PARAM_BATCH_SIZE, 1)
        self.batch = int(batch) if isinstance(batch, int) and not isinstance(batch, bool) else 1
        server_ms = self._server_times(data, rpc_ms)
        paced = built and self.profile_rows and serde.PARAM_TAIL_BUILD_MS not in p
        if built:  # (a cut's first answer also waited for the server to build its tail)
            self._rest_done(censored=False)
        c._observe(
            self.bytes_sent, self.bytes_received, self.network_ms,
            server=(self._predicted_parts()[1], server_ms, self.queue_ms) if paced else None,
        )  # fmt: skip
        return out

    def _probe(self, send: dict[str, Any]) -> None:
        """Send this request in the background as well, if a probe is due (:class:`RemoteProbes
        <splitdnn.runtime._deadline.RemoteProbes>`): its deadline finishes on the device at once, and
        only a sent request renews what the next choice knows of the remote path. Spaced so that
        probes take at most PROBE_SHARE of the time on the remote path, by the plan's prediction."""
        c = self.c
        probes = c._deadline_probes
        if probes is None:
            return
        gap_s = self._remote_ms() * self.scale / PROBE_SHARE / 1e3
        if not probes.due(c._history.remote, gap_s):
            return
        # copies: the device's tail may change its inputs in place while the probe encodes them
        copies = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in send.items()}
        probe = Run(
            c, self.plan, time.perf_counter(), self.scale, self.server_factor,
            profile_rows=self.profile_rows, server_queue_ms=self.server_queue_ms,
        )  # fmt: skip
        probe.sent, probe.codecs = self.sent, self.codecs
        self.probed = probes.start(c._history.remote, partial(probe._probed, copies), gap_s)

    def _probed(self, send: dict[str, Any]) -> bool:
        """A probe's request, on the probe's thread: encode and send it, and keep how its rest went
        against the plan's prediction (the remote window), and its transfer (the link estimate), as a
        request's; its answer is dropped. True when answered."""
        c = self.c
        request = self._request(send)
        if len(request) > c.message_cap()[0]:  # (the caller's requests meet that cap and say so)
            return False
        t_rpc = time.perf_counter()
        # a unary call of its own (not the client's stream), which a request of the client's own
        # cancels (RemoteProbes.give_way): a probe must not share the uplink with one
        call = model_infer(c._channel).future(request, timeout=c.timeout_s, metadata=c._metadata)
        if not c._deadline_probes.sending(call.cancel):  # type: ignore[union-attr]
            call.cancel()
            return False
        try:
            response = call.result()
        except grpc.FutureCancelledError:  # given way to a request, or the client closed
            if not c.closed:
                # its answer would have come later than this: a censored sample. Dropped instead, the
                # window would keep only the probes quicker than the gap to the client's next request,
                # and read the remote as faster than it is (the next request's moment does not
                # depend on the probe's time, so the censoring tells no more than that)
                self._rest_done(censored=True)
            return False
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                self._rest_done(censored=True)  # (no answer in timeout_s: later than that)
            return False
        rpc_ms = (time.perf_counter() - t_rpc) * 1e3
        built = self._answered()
        data = c._response_decoder.decode(response, max_decoded_bytes=c.max_message_bytes)
        self._server_times(data, rpc_ms)
        if built:  # (a cut's first answer also waited for the server to build its tail)
            self._rest_done(censored=False)
        c._observe(len(request), self.bytes_received, self.network_ms)
        return True

    def _request(self, send: dict[str, Any]) -> bytes:
        """The request's bytes: the tensors in ``send`` encoded on the device (``encode_ms``), then
        the message around them (``client_ms``)."""
        c = self.c
        # the encode moves detached tensors to numpy and runs the codecs there: no autograd to turn off
        (wire, bf16), self.encode_ms = self._timed_device(lambda: self._encode(send), no_grad=False)
        t = time.perf_counter()
        request = c._request_encoder.encode(
            c.model_name, wire, fingerprint=c.traced.fingerprint, request_id=c._request_ids.next(),
            bfloat16=bf16, weights=c.weights_digest,
        )  # fmt: skip
        self.client_ms = (time.perf_counter() - t) * 1e3
        return request

    def _answered(self) -> bool:
        """The server answered this request: it is up, and has the cut's tail built. True when it had
        it before (the answer did not also wait for the tail's build)."""
        built = frozenset(self.sent) in self.c._answered_cuts
        self.c._mark_up(answered=self.sent)
        return built

    def _server_times(self, data: serde.InferResponseData, rpc_ms: float) -> float:
        """The server's queue, compute and decode times from its answer, the answer's size, and the
        network's share of the call's ``rpc_ms``; returns the server's time in all."""
        p = data.parameters
        self.queue_ms = serde.param_ms(p, serde.PARAM_QUEUE_MS)
        self.compute_ms = serde.param_ms(p, serde.PARAM_COMPUTE_MS)
        self.decode_ms = serde.param_ms(p, serde.PARAM_DECODE_MS)
        self.bytes_received = data.wire_bytes
        server_ms = self.queue_ms + self.compute_ms + self.decode_ms
        self.network_ms = max(0.0, rpc_ms - server_ms)
        return server_ms

    def _missed_answer(
        self, inputs: Sequence[torch.Tensor], values: dict[str, Any] | None, waited_ms: float,
        exc: grpc.RpcError,
    ) -> Any:  # fmt: skip
        """No answer by the time the caller's deadline allowed: finish on the device, or say so."""
        self.network_ms = waited_ms
        if self.c.fallback_local:
            return self._finish_locally(
                inputs, values, f"the {self.deadline_ms:g} ms deadline: no answer after {waited_ms:.0f} "
                f"ms (predicted {self._remote_ms() * self.scale:.0f} ms), finished on the device to make it",
            )  # fmt: skip
        raise DeadlineError(
            f"no answer from the server within this request's deadline_ms={self.deadline_ms:g} (waited "
            f"{waited_ms:.0f} ms, predicted {self._remote_ms() * self.scale:.0f} ms); give it a longer "
            f"deadline, or let it finish on the device (fallback_local=True)",
            code="DEADLINE_EXCEEDED",
        ) from exc

    def _predicted_parts(self) -> tuple[float, float]:
        """``(network, server)`` ms of this request as the plan predicted them for its rows, neither
        with the server's queue (priced in the plan's round trip), the server part without the pace
        the plan was priced with either (ServerPace's ratios are against the profile)."""
        network = predicted_parts(self.plan.cost, self.server_queue_ms)[1]
        server = predicted_parts(self.plan.cost)[2]
        return network * self.scale, server * self.scale / self.server_factor

    def _overdue_parts(self) -> tuple[float, float, float]:
        """What a give-up is judged by (``SplitClient._attribute_overdue``): the predicted parts and
        the pace the server was priced with."""
        return (*self._predicted_parts(), self.server_factor)
