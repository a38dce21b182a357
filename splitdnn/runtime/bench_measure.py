"""Timing one client's requests within a time budget: shared by `splitdnn demo` and `splitdnn bench`.

Both tools compare strategies side by side on a shared, noisy machine (DESIGN section 7), and both
meet strategies that are hopeless at a low bandwidth (cloud-only with a 224x224 input at 0.13 Mbit/s
takes about half a minute per request). :func:`requests_within` decides from the prediction how many
requests a strategy gets inside a time budget: all of them with warm-up, fewer without warm-up, or
none (then only the prediction is reported, and marked so). :func:`measure` runs them for one
client, :func:`measure_interleaved` for several side by side.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from splitdnn.runtime._client_report import Breakdown, predicted_parts
from splitdnn.runtime.client import SplitClient

__all__ = [
    "PARTS",
    "Timing",
    "measure",
    "measure_interleaved",
    "measured_parts",
    "predicted_parts",
    "requests_within",
]

_PROBE_WAIT_S = 30.0  # the longest wait for a client's background link probe between requests


@dataclass(frozen=True)
class Timing:
    """One strategy at one bandwidth: its prediction and the measured end-to-end latencies (ms)."""

    predicted_ms: float
    samples_ms: tuple[float, ...] = ()  # timed requests; empty = not run (prediction only)
    strategy: str = ""  # what actually ran (the last timed request's plan)
    local_runs: int = 0  # timed requests that finished locally against their plan (fallbacks)
    bytes_sent: tuple[int, ...] = ()  # serialized request bytes per timed request
    boundary: tuple[str, ...] = ()  # tensors the last timed request sent (empty: ran locally)
    codecs: tuple[str, ...] = ()  # their codecs
    predicted_live_ms: tuple[float, ...] = ()  # each request's prediction under the client's live estimate
    # where each timed request's time went (ms, from its Breakdown): the device's compute and encode
    # (emulated; a fallback's local tail too), the network (the RPC less the server's reported times,
    # plus building the request and parsing the answer), the server's queue, decode and compute
    # (reported by it); compared with the plan at the start even when the client switched plans
    device_ms: tuple[float, ...] = ()
    network_ms: tuple[float, ...] = ()
    server_ms: tuple[float, ...] = ()
    predicted_parts_ms: tuple[float, ...] = ()  # (device, network, server) of the plan at the start

    @property
    def measured(self) -> bool:
        return bool(self.samples_ms)

    def quantile(self, q: float) -> float:
        """Linear-interpolated quantile of the samples (NaN when not measured)."""
        if not self.samples_ms:
            return math.nan
        s = sorted(self.samples_ms)
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    @property
    def median_ms(self) -> float:
        return self.quantile(0.5)

    @property
    def p90_ms(self) -> float:
        return self.quantile(0.9)

    @property
    def value_ms(self) -> float:
        """The median when measured, else the prediction."""
        return self.median_ms if self.measured else self.predicted_ms

    @property
    def median_bytes_sent(self) -> int:
        return int(statistics.median(self.bytes_sent)) if self.bytes_sent else 0

    def text(self, *, with_prediction: bool = False) -> str:
        """``median [p10-p90] n=N`` (optionally with the prediction), or the prediction alone."""
        if not self.measured:
            return f"{self.predicted_ms:.0f} (predicted)"
        n = len(self.samples_ms)
        if n == 1:
            text = f"{self.samples_ms[0]:.0f} (n=1)"
        else:
            text = f"{self.median_ms:.0f} [{self.quantile(0.1):.0f}-{self.quantile(0.9):.0f}] n={n}"
        return f"{text}, pred {self.predicted_ms:.0f}" if with_prediction else text

    def parts(self) -> list[tuple[str, float, float]]:
        """``(part, median measured ms, predicted ms)`` for each of :data:`PARTS`; [] when nothing
        was measured."""
        if not self.device_ms or len(self.predicted_parts_ms) != len(PARTS):
            return []
        measured = (self.device_ms, self.network_ms, self.server_ms)
        return [
            (name, statistics.median(m) if m else 0.0, predicted)
            for name, m, predicted in zip(PARTS, measured, self.predicted_parts_ms, strict=True)
        ]

    def parts_text(self) -> str:
        """``device 15 / 13, network 257 / 261, server 56 / 30``: median measured / predicted ms of
        each part the requests spent time in (parts neither predicted nor measured left out); ""
        when nothing was measured."""
        return ", ".join(f"{name} {m:.0f} / {p:.0f}" for name, m, p in self.parts() if m > 0 or p > 0)


PARTS = ("device", "network", "server")


def measured_parts(b: Breakdown) -> tuple[float, float, float]:
    """``(device, network, server)`` ms of one request's :class:`Breakdown`."""
    return (
        b.head_ms + b.encode_ms + b.tail_local_ms,
        b.network_ms + b.client_ms,
        b.server_queue_ms + b.decode_ms + b.server_compute_ms,
    )


def requests_within(predicted_ms: float, warmup: int, requests: int, budget_s: float) -> tuple[int, int]:
    """``(warm-up, timed)`` requests that fit the budget at the predicted latency; (0, 0) = do not run.

    All requests with warm-up when they fit; otherwise no warm-up (the connection is already up) and
    as many timed requests as fit, at least one; none when a single request would exceed the budget.
    """
    per_s = max(predicted_ms, 1.0) / 1e3
    if per_s * (warmup + requests) <= budget_s:
        return warmup, requests
    if per_s > budget_s:
        return 0, 0
    return 0, max(1, min(requests, int(budget_s / per_s)))


def measure(client: SplitClient, x: torch.Tensor, warmup: int, requests: int, budget_s: float) -> Timing:
    """Run ``client`` on ``x``: the requests :func:`requests_within` allows at its current prediction.

    The prediction recorded is the plan's at the start (under the client's link estimate then).
    """
    return measure_interleaved({"client": client}, x, warmup, requests, budget_s)["client"]


def measure_interleaved(
    clients: Mapping[str, SplitClient], x: torch.Tensor, warmup: int, requests: int, budget_s: float
) -> dict[str, Timing]:
    """Measure several clients side by side: round-robin, one request of each per round.

    On a shared, noisy machine a slow minute then hits every strategy alike instead of whichever
    happened to be running, so ratios between strategies stay meaningful (DESIGN section 7). Each
    client gets its own :func:`requests_within` count at its own prediction; the warm-up rounds all
    come first. The order within a round is a permutation seeded by the round's number (the same in
    every run), so no strategy always runs right after another; a client's background link probe
    finishes before the next client's request.
    """
    keys = list(clients)
    predicted = {k: clients[k].plan.cost.total_ms for k in keys}
    parts = {k: predicted_parts(clients[k].plan.cost, clients[k].server_queue_ms) for k in keys}
    counts = {k: requests_within(predicted[k], warmup, requests, budget_s) for k in keys}
    rows: dict[str, list[Any]] = {k: [] for k in keys}

    def one(k: str) -> None:
        clients[k].infer(x)
        # an edge-only request may start a link probe in the background: the clients share one
        # link, so the next client's request must not cross it (it did, by up to 30 ms); the last
        # warm-up request's probe, the first timed one
        clients[k].wait_for_probe(_PROBE_WAIT_S)

    for r in range(max((w for w, _ in counts.values()), default=0)):
        for k in _shuffled(keys, r):
            if counts[k][0] > r:
                one(k)
    for r in range(max((n for _, n in counts.values()), default=0)):
        for k in _shuffled(keys, r):
            if counts[k][1] > r:
                one(k)
                b = clients[k].last_breakdown
                if b is None:  # pragma: no cover - infer() always sets it
                    raise RuntimeError("SplitClient.infer() finished without a breakdown")
                rows[k].append(b)
    out = {}
    for k in keys:
        bs = rows[k]
        last = bs[-1] if bs else None
        measured = [measured_parts(b) for b in bs]  # (device, network, server) per request
        out[k] = Timing(
            predicted[k],
            tuple(b.total_ms for b in bs),
            last.strategy if last is not None else clients[k].plan.strategy,
            sum(1 for b in bs if b.fallback),
            tuple(b.bytes_sent for b in bs),
            last.boundary if last is not None else (),
            last.codecs if last is not None else (),
            tuple(b.predicted_ms for b in bs),
            tuple(p[0] for p in measured),
            tuple(p[1] for p in measured),
            tuple(p[2] for p in measured),
            parts[k],
        )
    return out


def _shuffled(keys: list[str], r: int) -> list[str]:
    """Round ``r``'s order: the first round as given, then a permutation seeded by ``r``."""
    if r == 0:
        return list(keys)
    order = list(keys)
    random.Random(r).shuffle(order)
    return order
