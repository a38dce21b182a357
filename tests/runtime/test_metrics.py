"""The per-model series the server keeps as plain numbers read as prometheus_client's own would."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

from splitdnn.runtime._metrics import _BATCH_BUCKETS, _TIME_BUCKETS, UNKNOWN_MODEL, ServerMetrics


def _reference(observations: dict[str, list[float]]) -> CollectorRegistry:
    """The same observations through prometheus_client's labelled Counter and Histogram."""
    r = CollectorRegistry()
    counters = {
        "requests": Counter("splitdnn_requests", "", ["model"], registry=r),
        "bytes_in": Counter("splitdnn_request_bytes", "", ["model"], registry=r),
        "bytes_out": Counter("splitdnn_response_bytes", "", ["model"], registry=r),
    }
    histograms = {
        "decode": Histogram("splitdnn_decode_seconds", "", ["model"], buckets=_TIME_BUCKETS, registry=r),
        "queue": Histogram("splitdnn_queue_seconds", "", ["model"], buckets=_TIME_BUCKETS, registry=r),
        "compute": Histogram("splitdnn_compute_seconds", "", ["model"], buckets=_TIME_BUCKETS, registry=r),
        "batch": Histogram("splitdnn_batch_size", "", ["model"], buckets=_BATCH_BUCKETS, registry=r),
    }
    for key, values in observations.items():
        for v in values:
            if key in counters:
                counters[key].labels("m").inc(v)
            else:
                histograms[key].labels("m").observe(v)
    return r


def test_the_series_expose_what_prometheus_client_would_for_the_same_requests() -> None:
    metrics = ServerMetrics()
    series = metrics.of("m")
    # values on bucket bounds too: a bound is inclusive ("le")
    decode = [0.00005, 0.0001, 0.0003, 0.0025, 0.7, 31.0]
    queue = [0.0, 0.001, 0.001, 5.0, 12.0, 0.02]
    compute = [0.0001, 0.049, 0.05, 0.051, 2.5, 29.0]
    sizes_in, sizes_out = [100, 2000, 0, 7, 1 << 20, 3], [10, 20, 30, 40, 50, 60]
    for d, q, c, b_in, b_out in zip(decode, queue, compute, sizes_in, sizes_out, strict=True):
        series.arrived(b_in)
        series.served(d, q, c, b_out)
    batches = [1, 1, 2, 3, 8, 9, 128, 200]
    for jobs in batches:
        series.batch(jobs)
    want = _reference({
        "requests": [1] * len(sizes_in), "bytes_in": sizes_in, "bytes_out": sizes_out,
        "decode": decode, "queue": queue, "compute": compute, "batch": batches,
    })  # fmt: skip
    samples = [
        (s.name, s.labels, s.value)
        for family in want.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]
    assert len(samples) == 3 + 3 * (len(_TIME_BUCKETS) + 3) + len(_BATCH_BUCKETS) + 3
    for name, labels, value in samples:
        assert metrics.registry.get_sample_value(name, labels) == value, (name, labels)
    ours = {
        (s.name, tuple(sorted(s.labels.items())))
        for family in metrics.registry.collect()
        for s in family.samples
        if s.labels.get("model") == "m"
    }
    assert ours == {(name, tuple(sorted(labels.items()))) for name, labels, _ in samples}  # no more series


def test_every_request_counts_when_many_threads_count_at_once() -> None:
    metrics = ServerMetrics()

    def count() -> None:
        for _ in range(2000):
            metrics.of("m").arrived(3)  # the series made once, even when threads race to make it
            metrics.of(UNKNOWN_MODEL).decoded(0.001)

    threads = [threading.Thread(target=count) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.registry.get_sample_value("splitdnn_requests_total", {"model": "m"}) == 16000
    assert metrics.registry.get_sample_value("splitdnn_request_bytes_total", {"model": "m"}) == 48000
    got = metrics.registry.get_sample_value("splitdnn_decode_seconds_count", {"model": UNKNOWN_MODEL})
    assert got == 16000


def test_a_model_never_asked_for_has_no_series_and_a_refusal_counts_a_request() -> None:
    metrics = ServerMetrics()
    assert metrics.registry.get_sample_value("splitdnn_requests_total", {"model": "m"}) is None
    metrics.refused_unknown("INVALID_ARGUMENT", model_infer=True)
    metrics.refused_unknown("UNAUTHENTICATED", model_infer=False)
    assert metrics.registry.get_sample_value("splitdnn_requests_total", {"model": UNKNOWN_MODEL}) == 1
    failed = {"model": UNKNOWN_MODEL, "code": "UNAUTHENTICATED"}
    assert metrics.registry.get_sample_value("splitdnn_failures_total", failed) == 1
