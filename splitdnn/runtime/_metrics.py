"""Prometheus metrics of one tail server, in a registry of its own (several servers per process work).

Exposed (Prometheus text) on an HTTP port when the server's ``metrics_port`` is set; every series is
labelled by model (requests for a model the server does not serve count under ``model="<unknown>"``,
so clients cannot grow the label set)::

    splitdnn_requests_total{model}                 ModelInfer requests received
    splitdnn_failures_total{model,code}            requests answered with an error, by gRPC status name
                                                   (calls without the token: UNAUTHENTICATED under
                                                   <unknown>; a message over max_message_bytes is
                                                   refused by gRPC itself, before any count)
    splitdnn_decode_seconds{model}                 validating and decoding a request (histogram)
    splitdnn_queue_seconds{model}                  waiting for a batch to start (histogram)
    splitdnn_compute_seconds{model}                running the batch a request was in (histogram)
    splitdnn_request_bytes_total{model}            serialized request bytes received
    splitdnn_response_bytes_total{model}           serialized response bytes sent
    splitdnn_batch_size{model}                     requests per executed batch (histogram)
    splitdnn_in_flight                             ModelInfer requests being served now (gauge)
    splitdnn_streams_open                          ModelStreamInfer streams open now, each holding a
                                                   handler thread (gauge; max_streams)
    splitdnn_inflight_bytes                        bytes those requests hold: messages and decoded
                                                   tensors, against max_inflight_bytes (gauge)
    splitdnn_receive_timeouts_total{method}        calls of any method ended because their request
                                                   message did not arrive within receive_timeout_s
                                                   (slow or stalled clients); ModelInfer ones also
                                                   count as DEADLINE_EXCEEDED failures under <unknown>;
                                                   ModelStreamInfer: streams ended idle after
                                                   stream_idle_timeout_s (their requests count as
                                                   ModelInfer ones, in every series above)
    splitdnn_receive_refused_total{method}         calls refused at once because their client's address
                                                   already had max_receiving_per_peer calls waiting for
                                                   their message; ModelInfer ones also count as
                                                   RESOURCE_EXHAUSTED failures under <unknown>
    splitdnn_tail_builds_total{model}              tails built (cut not in the cache); a steady rise
                                                   means clients use more cuts than tail_cache_size
    splitdnn_cached_tails{model}                   tails in the cache now (gauge)

Each served model's series exist from the start, at zero.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["UNKNOWN_MODEL", "ModelSeries", "ServerMetrics"]

UNKNOWN_MODEL = "<unknown>"
# seconds: from 0.1 ms (a cached tail on a tiny tensor) to 30 s (a large model on a slow CPU)
_TIME_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Buckets:
    """A histogram's counts: one per upper bound and one past the last (+Inf), and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' le
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations <= le) per bound, +Inf last, as Prometheus' text shows them."""
        out, seen = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            seen += count
            out.append((floatToGoString(bound), float(seen)))
        return out


class ModelSeries:
    """One model's per-request series: plain numbers under one lock, exposed at each scrape.

    prometheus_client's labelled children take a lock and several calls per update, and a request
    made 13 of them: 17 us of a 120 us request on a tiny tensor (measured in-process). Here an
    answered request takes this lock twice (:meth:`arrived`, then :meth:`served`; a refused one
    records what it got to apart) and the scrape reads a consistent copy.
    """

    __slots__ = ("_lock", "requests", "bytes_in", "bytes_out", "decode", "queue", "compute", "batch_size")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.decode = _Buckets(_TIME_BUCKETS)
        self.queue = _Buckets(_TIME_BUCKETS)
        self.compute = _Buckets(_TIME_BUCKETS)
        self.batch_size = _Buckets(_BATCH_BUCKETS)

    def arrived(self, nbytes: int) -> None:
        """A ModelInfer request of ``nbytes`` (serialized) was received."""
        with self._lock:
            self.requests += 1
            self.bytes_in += nbytes

    def decoded(self, seconds: float) -> None:
        """A request decoded and then refused (an answered one counts it in :meth:`served`)."""
        with self._lock:
            self.decode.add(seconds)

    def served(
        self, decode_s: float, queue_s: float, compute_s: float, bytes_out: int, batch: int = 0
    ) -> None:
        """An answered request, under the lock once: its decode time, how long it waited for its batch
        and how long the batch took, its answer's bytes, and :meth:`batch` when ``batch`` (a run of
        its own that the batcher did not count)."""
        with self._lock:
            self.decode.add(decode_s)
            self.queue.add(queue_s)
            self.compute.add(compute_s)
            self.bytes_out += bytes_out
            if batch:
                self.batch_size.add(batch)

    def batch(self, jobs: int) -> None:
        """A batch of ``jobs`` requests ran."""
        with self._lock:
            self.batch_size.add(jobs)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                **{k: (getattr(self, k).cumulative(), getattr(self, k).total) for k in _HISTOGRAMS},
            }


_HISTOGRAMS = {
    "decode": ("splitdnn_decode_seconds", "validating and decoding a request"),
    "queue": ("splitdnn_queue_seconds", "waiting for a batch to start"),
    "compute": ("splitdnn_compute_seconds", "running the batch a request was in"),
    "batch_size": ("splitdnn_batch_size", "requests per executed batch"),
}
_COUNTERS = {
    "requests": ("splitdnn_requests", "ModelInfer requests received"),
    "bytes_in": ("splitdnn_request_bytes", "serialized request bytes"),
    "bytes_out": ("splitdnn_response_bytes", "serialized response bytes"),
}


class _PerModel:
    """Exposes every model's :class:`ModelSeries` at each scrape."""

    def __init__(self, series: Mapping[str, ModelSeries]) -> None:
        self._series = series

    def collect(self) -> Iterator[Metric]:
        counters = {k: CounterMetricFamily(n, doc, labels=["model"]) for k, (n, doc) in _COUNTERS.items()}
        histograms = {
            k: HistogramMetricFamily(n, doc, labels=["model"]) for k, (n, doc) in _HISTOGRAMS.items()
        }
        for model, series in sorted(self._series.items()):
            snap = series.snapshot()
            for key, family in counters.items():
                family.add_metric([model], snap[key])
            for key, hist in histograms.items():
                buckets, total = snap[key]
                hist.add_metric([model], buckets, total)
        yield from counters.values()
        yield from histograms.values()


class _TailCaches:
    """Reads each model's tail-cache counts when scraped (nothing to do per request)."""

    def __init__(self, read: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        builds = CounterMetricFamily(
            "splitdnn_tail_builds", "tails built because the cut was not in the cache", labels=["model"]
        )
        cached = GaugeMetricFamily("splitdnn_cached_tails", "tails in the cache", labels=["model"])
        for model, (built, held) in sorted(self._read().items()):
            builds.add_metric([model], built)
            cached.add_metric([model], held)
        yield builds
        yield cached


class ServerMetrics:
    """The metric families of one server, and (optionally) the HTTP endpoint that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.failures = Counter(
            "splitdnn_failures", "requests answered with an error status", ["model", "code"], registry=r
        )
        self.in_flight = Gauge("splitdnn_in_flight", "ModelInfer requests being served", registry=r)
        self.streams_open = Gauge(
            "splitdnn_streams_open",
            "ModelStreamInfer streams open, each holding a handler thread",
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "splitdnn_inflight_bytes",
            "bytes that requests in flight hold (messages and decoded tensors; max_inflight_bytes)",
            registry=r,
        )
        self.receive_timeouts = Counter(
            "splitdnn_receive_timeouts",
            "calls ended because their request message did not arrive within receive_timeout_s",
            ["method"],
            registry=r,
        )
        self.receive_refused = Counter(
            "splitdnn_receive_refused",
            "calls refused because their address already had max_receiving_per_peer calls waiting",
            ["method"],
            registry=r,
        )
        self._series: dict[str, ModelSeries] = {}
        r.register(_PerModel(self._series))
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def of(self, model: str) -> ModelSeries:
        """The series labelled ``model``. The caller keeps the label set bounded (served model names
        and :data:`UNKNOWN_MODEL`)."""
        series = self._series.get(model)
        if series is None:  # two threads may both get here: setdefault keeps one for both
            series = self._series.setdefault(model, ModelSeries())
        return series

    def refused_unknown(self, code: str, *, model_infer: bool) -> None:
        """A call refused before any model name was read: a failure with ``code`` under
        :data:`UNKNOWN_MODEL`, and for ModelInfer (``model_infer``) a request too."""
        if model_infer:
            self.of(UNKNOWN_MODEL).arrived(0)
        self.failures.labels(UNKNOWN_MODEL, code).inc()

    def track_tails(self, read: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        """Expose ``read()`` (model -> (tails built, tails cached)) at every scrape."""
        self.registry.register(_TailCaches(read))

    def serve(self, host: str, port: int) -> int:
        """Expose the metrics over HTTP on ``host:port`` (0: a free port; an IPv6 host without
        brackets); returns the bound port."""
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint, if any."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
