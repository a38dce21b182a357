"""What one edge-client request cost, and printing it: :class:`Breakdown` and the ``splitdnn run`` loop.

Split out of :mod:`splitdnn.runtime.client` (which re-exports every name here) so the record and its
reporting can be read, and imported by tools, without the request path. ``run_requests`` takes any
object with the client's ``infer`` / ``last_breakdown`` / ``traced`` (a :class:`SplitClient`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import torch

from splitdnn.errors import ConfigError
from splitdnn.schema import CostBreakdown

if TYPE_CHECKING:
    from splitdnn.runtime.client import SplitClient

__all__ = ["Breakdown", "format_breakdown", "predicted_parts", "run_requests"]


def predicted_parts(cost: CostBreakdown, queue_ms: float = 0.0) -> tuple[float, float, float]:
    """``(device, network, server)`` ms of a plan's predicted cost, split as a :class:`Breakdown`
    measures them (two tiers, as the runtime runs: a three-tier plan's middle tier would count as the
    server). ``queue_ms``: the server's queue the plan was priced with (the planner prices it in the
    round trip: ``Planner.set_server_queue``), moved here from the network part to the server's, where
    the server reports it; 0 for an edge-only plan, which waits for no server."""
    network = sum(cost.transfer_ms) + sum(cost.rtt_ms) + cost.result_ms
    queue = min(queue_ms, sum(cost.rtt_ms))  # none in a plan that sends nothing
    return cost.device_ms + cost.encode_ms, network - queue, cost.server_ms + cost.decode_ms + queue


@dataclass(frozen=True)
class Breakdown:
    """Where the time of one :meth:`SplitClient.infer` went (ms) and what crossed the network.

    ``head_ms`` + ``encode_ms`` + ``client_ms`` + (``network_ms`` + ``server_queue_ms`` +
    ``server_compute_ms`` + ``decode_ms``) + ``tail_local_ms`` ~ ``total_ms``. Device-side times include
    the emulation padding (``padding_ms`` of them is sleep).
    """

    head_ms: float  # device compute of the head (the whole model when local)
    encode_ms: float  # codec encoding of the boundary tensors on the device
    network_ms: float  # RPC wall time minus the server's queue, compute and decode time
    server_queue_ms: float  # waiting for a batch slot on the server (reported by it)
    server_compute_ms: float  # running the tail on the server (reported by it; its whole batch)
    decode_ms: float  # the server decoding the request's frames (reported by it)
    total_ms: float  # wall time of infer()
    bytes_sent: int  # serialized request size (0 when nothing was sent)
    boundary: tuple[str, ...]  # tensors sent: boundary node names, the model input(s) for cloud-only
    local: bool  # the output was computed on the device only
    bytes_received: int = 0  # serialized response size
    tail_local_ms: float = 0.0  # device compute of the tail after a fallback
    client_ms: float = 0.0  # building the request and parsing the response
    padding_ms: float = 0.0  # emulation sleep included in the device-side times above
    predicted_ms: float = 0.0  # the plan's predicted end-to-end latency when the request started
    strategy: str = ""  # "edge-only", "split" or "cloud-only": the plan the request started with
    codecs: tuple[str, ...] = ()  # codec per tensor in ``boundary``
    fallback: str = ""  # why the request finished locally against its plan ("" = as planned)
    batch_size: int = 0  # requests in the server's batch (0 when not sent)
    deadline_ms: float | None = None  # the caller's deadline for this request (infer's deadline_ms)
    probed: bool = False  # also sent in the background, to renew the deadline's remote window

    @property
    def deadline_missed(self) -> bool:
        """Whether the request had a deadline and took longer."""
        return self.deadline_ms is not None and self.total_ms > self.deadline_ms


def format_breakdown(b: Breakdown) -> str:
    """One line: where one request's time went."""
    if b.local and not b.bytes_sent:
        where = f"local {b.head_ms + b.tail_local_ms:.1f}"
    else:
        where = (
            f"head {b.head_ms:.1f} + encode {b.encode_ms:.1f} + network {b.network_ms:.1f} + server "
            f"queue {b.server_queue_ms:.1f} + compute {b.server_compute_ms:.1f} + decode {b.decode_ms:.1f}"
        )
        if b.tail_local_ms:
            where += f" + local tail {b.tail_local_ms:.1f}"
    tensors = ", ".join(f"{n}:{c}" for n, c in zip(b.boundary, b.codecs, strict=False))
    sent = f", sent {b.bytes_sent} B ({tensors})"
    text = (
        f"{b.strategy}: {b.total_ms:.1f} ms (predicted {b.predicted_ms:.1f}) = {where}"
        f"{sent if b.bytes_sent else ''}"
    )
    if b.padding_ms:
        text += f"; emulation padding {b.padding_ms:.1f} ms included"
    if b.fallback:
        text += f"; fell back: {b.fallback}"
    if b.deadline_ms is not None:
        text += f"; deadline {b.deadline_ms:g} ms {'missed' if b.deadline_missed else 'met'}"
    if b.probed:
        text += " (also sent in the background, to keep the remote's record current)"
    return text


def run_requests(
    client: SplitClient, requests: int, *, seed: int = 0, out: TextIO | None = None
) -> list[Breakdown]:
    """Run ``requests`` inferences on random inputs of the model's example shapes; print each
    request's breakdown to ``out`` (if given) and return them all."""
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise ConfigError(f"requests must be an integer >= 1, found {requests!r}")
    gen = torch.Generator().manual_seed(seed)
    kinds = [(tuple(t.shape), t.dtype) for t in client.traced.example_inputs]
    found = []
    for i in range(requests):
        inputs = [torch.randn(shape, generator=gen).to(dtype) for shape, dtype in kinds]
        client.infer(*inputs)
        b = client.last_breakdown
        if b is None:  # infer() always sets it; this keeps the type checker and -O honest
            raise ConfigError("the client recorded no breakdown for its request")
        found.append(b)
        if out is not None:
            print(f"request {i + 1}: {format_breakdown(b)}", file=out, flush=True)
    return found
