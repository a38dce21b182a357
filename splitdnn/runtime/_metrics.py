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
    splitdnn_inflight_bytes                        bytes those requests hold: messages and decoded
                                                   tensors, against max_inflight_bytes (gauge)
    splitdnn_receive_timeouts_total{method}        calls of any method ended because their request
                                                   message did not arrive within receive_timeout_s
                                                   (slow or stalled clients); ModelInfer ones also
                                                   count as DEADLINE_EXCEEDED failures under <unknown>
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

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["UNKNOWN_MODEL", "ModelSeries", "ServerMetrics"]

UNKNOWN_MODEL = "<unknown>"
# seconds: from 0.1 ms (a cached tail on a tiny tensor) to 30 s (a large model on a slow CPU)
_TIME_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ModelSeries:
    """One model's labelled series, looked up once: ``labels()`` takes a lock and a dict lookup per
    call, seven times per request otherwise."""

    requests: Any
    decode: Any
    queue: Any
    compute: Any
    bytes_in: Any
    bytes_out: Any
    batch_size: Any


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
        self.requests = Counter("splitdnn_requests", "ModelInfer requests received", ["model"], registry=r)
        self.failures = Counter(
            "splitdnn_failures", "requests answered with an error status", ["model", "code"], registry=r
        )
        self.decode = Histogram(
            "splitdnn_decode_seconds", "validating and decoding a request", ["model"],
            buckets=_TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue = Histogram(
            "splitdnn_queue_seconds", "waiting for a batch to start", ["model"],
            buckets=_TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute = Histogram(
            "splitdnn_compute_seconds", "running the batch a request was in", ["model"],
            buckets=_TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self.bytes_in = Counter("splitdnn_request_bytes", "serialized request bytes", ["model"], registry=r)
        self.bytes_out = Counter(
            "splitdnn_response_bytes", "serialized response bytes", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "splitdnn_batch_size",
            "requests per executed batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("splitdnn_in_flight", "ModelInfer requests being served", registry=r)
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
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def of(self, model: str) -> ModelSeries:
        """The series labelled ``model``. The caller keeps the label set bounded (served model names
        and :data:`UNKNOWN_MODEL`), as for ``labels()``."""
        series = self._series.get(model)
        if series is None:  # two threads may both get here: labels() gives both the same children
            families = (self.requests, self.decode, self.queue, self.compute, self.bytes_in,
                        self.bytes_out, self.batch_size)  # fmt: skip
            series = self._series[model] = ModelSeries(*(f.labels(model) for f in families))
        return series

    def refused_unknown(self, code: str, *, model_infer: bool) -> None:
        """A call refused before any model name was read: a failure with ``code`` under
        :data:`UNKNOWN_MODEL`, and for ModelInfer (``model_infer``) a request too."""
        if model_infer:
            self.of(UNKNOWN_MODEL).requests.inc()
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
