"""The batcher on its own: a lone job runs on its caller's thread, others batch on the worker, and
never more than one run at a time."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from splitdnn.runtime._batcher import Batcher, BatcherStopped, Job


class Recorder:
    """A tail that doubles its input and records on which thread it ran and how many ran at once."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.threads: list[str] = []
        self.batch_rows: list[int] = []
        self.running = 0
        self.most_at_once = 0
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.threads.append(threading.current_thread().name)
            self.batch_rows.append(int(xs[0].shape[0]))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(20)
        with self._lock:
            self.running -= 1
        return [xs[0] * 2]


def _job(run: Recorder, rows: int = 1, value: float = 1.0) -> Job:
    return Job(("m", ("x",), ((torch.float32, (3,)),)), [torch.full((rows, 3), value)], rows, run)


def test_a_lone_job_runs_on_the_submitting_thread() -> None:
    batcher = Batcher(max_batch_size=8, max_queue_delay_s=0.05)
    try:
        run = Recorder()
        future = batcher.submit(_job(run, value=3.0)) if _arrive(batcher) else None
        assert future is not None and future.done()  # already run when submit returns
        result = future.result()
        assert torch.equal(result.outputs[0], torch.full((1, 3), 6.0))
        assert result.batch_size == 1 and result.queue_s < 0.05
        assert run.threads == [threading.current_thread().name]
    finally:
        batcher.stop(5)


def test_a_lone_job_does_not_wake_the_idle_worker() -> None:
    """Nothing queued: waking the worker after an inline run would only make it compete for the
    interpreter lock with the request's handler (and find nothing to do)."""
    batcher = Batcher(max_batch_size=8, max_queue_delay_s=0.05)
    wakes: list[str] = []
    notify_all = batcher._cond.notify_all

    def counted() -> None:
        wakes.append(threading.current_thread().name)
        notify_all()

    batcher._cond.notify_all = counted  # type: ignore[method-assign]
    try:
        run = Recorder()
        for value in (1.0, 2.0, 3.0):
            assert _arrive(batcher)
            assert batcher.submit(_job(run, value=value)).result().batch_size == 1
        _arrive(batcher)
        batcher.arrived()  # a request refused after arriving: nothing queued, nothing to wake either
        assert wakes == []
    finally:
        batcher.stop(5)
    assert wakes  # stopping still wakes it


def test_jobs_arriving_while_one_runs_wait_and_batch_on_the_worker() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(max_batch_size=8, max_queue_delay_s=0.05)
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(lambda: _arrive(batcher) and batcher.submit(_job(run)).result(20))
            assert run.entered.wait(20)  # the first runs inline in a pool thread, holding the gate
            queued = []
            for i in range(3):
                _arrive(batcher)
                queued.append(batcher.submit(_job(run, rows=1 + i, value=float(i))))
            assert batcher.pending() == 3  # none of them started while the first runs
            gate.set()
            assert first.result(20).batch_size == 1
            results = [f.result(20) for f in queued]
        assert [r.batch_size for r in results] == [3, 3, 3]
        for i, r in enumerate(results):
            assert torch.equal(r.outputs[0], torch.full((1 + i, 3), 2.0 * i))
        assert run.batch_rows == [1, 6]
        assert run.threads[1] == "splitdnn-batcher"
        assert run.most_at_once == 1
    finally:
        gate.set()
        batcher.stop(5)


def test_never_two_runs_at_once_under_concurrent_load() -> None:
    run = Recorder()
    batcher = Batcher(max_batch_size=4, max_queue_delay_s=0.001)

    def one(i: int) -> torch.Tensor:
        _arrive(batcher)
        return batcher.submit(_job(run, value=float(i))).result(20).outputs[0]

    try:
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(one, range(200)))
        for i, out in enumerate(outs):
            assert torch.equal(out, torch.full((1, 3), 2.0 * i))
        assert run.most_at_once == 1
    finally:
        batcher.stop(5)


def test_submit_after_stop_is_refused() -> None:
    batcher = Batcher(max_batch_size=2, max_queue_delay_s=0.0)
    batcher.stop(5)
    _arrive(batcher)
    with pytest.raises(BatcherStopped):
        batcher.submit(_job(Recorder())).result(5)


def _arrive(batcher: Batcher) -> bool:
    batcher.arriving()  # as the server does before decoding a request
    return True
