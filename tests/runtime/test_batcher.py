"""The batcher on its own: a lone job runs on its caller's thread, others batch on the worker, and
never more than one run at a time."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

import pytest
import torch

from splitdnn.runtime._batcher import Batcher, BatcherStopped, BatchResult, Job


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


def test_a_job_that_is_never_batched_does_not_wait_for_company() -> None:
    """Other requests arriving make a batchable job wait up to the queue delay for them; a job of a
    model whose rows depend on each other (alone=True) gains nothing by waiting, and is never stacked
    with another of its key."""

    def alone(run: Recorder) -> Job:
        job = _job(run)
        job.alone = True
        return job

    batcher = Batcher(max_batch_size=8, max_queue_delay_s=2.0)
    try:
        run = Recorder()
        batcher.arriving()  # another request is being decoded (never submitted in this test)
        batcher.arriving()
        future = batcher.submit(alone(run))
        assert future.done() and future.result().queue_s < 0.5  # run at once, not after 2 s
        busy = Recorder(gate=threading.Event())
        with ThreadPoolExecutor(1) as pool:
            batcher.arriving()
            first = pool.submit(batcher.submit, alone(busy))  # inline on the pool's thread
            assert busy.entered.wait(10)
            for _ in range(2):
                batcher.arriving()
            futures = [batcher.submit(alone(run)) for _ in range(2)]  # queued behind it
            assert busy.gate is not None
            busy.gate.set()
            first.result(10)
            results = [f.result(1.5) for f in futures]  # not the 2 s delay, with one still arriving
        assert [r.batch_size for r in results] == [1, 1]
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


def test_queued_jobs_can_be_withdrawn_and_running_ones_cannot() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batches: list[tuple[str, int]] = []
    batcher = Batcher(max_batch_size=1, max_queue_delay_s=0.0, on_batch=lambda *b: batches.append(b))
    try:
        with ThreadPoolExecutor(1) as pool:
            first = _job(run)
            pool.submit(lambda: _arrive(batcher) and batcher.submit(first))
            assert run.entered.wait(20)  # running inline, held by the gate
            queued = [_job(run, value=float(i)) for i in range(3)]
            for job in queued:
                _arrive(batcher)
                batcher.submit(job)
            assert batcher.pending() == 3
            assert batcher.withdraw(queued[1]) is True  # out of the queue at once, its future cancelled
            assert batcher.pending() == 2 and queued[1].future.cancelled()
            assert batcher.withdraw(first) is False  # running: its inputs are in use until it ends
            assert not first.future.cancel() and first.future.running()
            gate.set()
            assert first.future.result(20).batch_size == 1
            assert batcher.withdraw(first) is True  # finished: holds nothing
            for job in (queued[0], queued[2]):
                assert job.future.result(20).batch_size == 1
        assert run.batch_rows == [1, 1, 1] and len(batches) == 3  # the withdrawn job never ran
    finally:
        gate.set()
        batcher.stop(5)


def test_a_failed_batch_reruns_only_jobs_whose_client_still_waits() -> None:
    gate = threading.Event()
    gone = threading.Event()
    rows_run: list[int] = []

    def run(xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        rows_run.append(int(xs[0].shape[0]))
        assert gate.wait(20)
        if xs[0].shape[0] > 1:
            gone.set()  # while the batch runs, two of its clients give up (their deadline passes)
            raise RuntimeError("the batch fails as a whole")
        return [xs[0] * 2]

    batcher = Batcher(max_batch_size=8, max_queue_delay_s=0.0)
    try:
        with ThreadPoolExecutor(1) as pool:
            blocker = pool.submit(lambda: _arrive(batcher) and batcher.submit(_job(run)).result(20))
            while not rows_run:
                threading.Event().wait(0.005)
            key = ("m", ("x",), ((torch.float32, (3,)),))
            waiting = lambda: not gone.is_set()  # noqa: E731
            jobs = [Job(key, [torch.ones(1, 3)], 1, run, is_active=waiting) for _ in range(2)]
            jobs += [Job(key, [torch.ones(1, 3)], 1, run) for _ in range(2)]
            for job in jobs:
                _arrive(batcher)
                batcher.submit(job)
            gate.set()
            blocker.result(20)
            for job in jobs[:2]:
                with pytest.raises(CancelledError):
                    job.future.result(20)
            for job in jobs[2:]:
                assert torch.equal(job.future.result(20).outputs[0], torch.full((1, 3), 2.0))
        assert rows_run == [1, 4, 1, 1]  # the blocker, the failed batch, then only the two still waiting
    finally:
        gate.set()
        batcher.stop(5)


def test_a_tail_raising_a_base_exception_does_not_end_the_worker() -> None:
    gate = threading.Event()
    blocking = Recorder(gate)

    def exits(xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        raise SystemExit(3)

    key = ("m", ("x",), ((torch.float32, (3,)),))
    batcher = Batcher(max_batch_size=1, max_queue_delay_s=0.0)
    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: _arrive(batcher) and batcher.submit(_job(blocking)))
            assert blocking.entered.wait(20)
            _arrive(batcher)
            bad = batcher.submit(Job(key, [torch.ones(1, 3)], 1, exits))  # queued: runs on the worker
            _arrive(batcher)
            after = batcher.submit(_job(Recorder(), value=5.0))
            gate.set()
            with pytest.raises(RuntimeError, match="the tail raised SystemExit: 3"):
                bad.result(20)
            assert torch.equal(after.result(20).outputs[0], torch.full((1, 3), 10.0))
    finally:
        gate.set()
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


def test_run_gives_a_lone_jobs_result_or_error_on_this_thread_with_no_future() -> None:
    batches: list[tuple[str, int]] = []
    batcher = Batcher(max_batch_size=8, max_queue_delay_s=0.05, on_batch=lambda *b: batches.append(b))
    try:
        run = Recorder()
        _arrive(batcher)
        job = _job(run, value=2.0)
        result = batcher.run(job)
        assert isinstance(result, BatchResult) and result.inline and result.batch_size == 1
        assert torch.equal(result.outputs[0], torch.full((1, 3), 4.0))
        assert job._future is None  # none was made
        assert batches == [] and run.threads == [threading.current_thread().name]

        def fails(xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            raise ValueError("bad rows")

        def exits(xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            raise SystemExit(3)

        _arrive(batcher)
        with pytest.raises(ValueError, match="bad rows"):
            batcher.run(Job("k", [torch.ones(1, 3)], 1, fails, label="m"))
        _arrive(batcher)
        with pytest.raises(RuntimeError, match="the tail raised SystemExit: 3"):
            batcher.run(Job("k", [torch.ones(1, 3)], 1, exits, label="m"))
        assert batches == [("m", 1), ("m", 1)]  # a run that fails still ran: on_batch counts it
        _arrive(batcher)
        with pytest.raises(CancelledError):  # its client is gone: not run
            batcher.run(Job("k", [torch.ones(1, 3)], 1, run, is_active=lambda: False))
        assert len(run.threads) == 1
        # the batcher is free again after each of them
        _arrive(batcher)
        assert isinstance(batcher.run(_job(run)), BatchResult)
    finally:
        batcher.stop(5)
    _arrive(batcher)
    with pytest.raises(BatcherStopped):
        batcher.run(_job(Recorder()))


def test_run_queues_a_job_behind_a_running_one_and_gives_its_future() -> None:
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(max_batch_size=8, max_queue_delay_s=0.05)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(lambda: _arrive(batcher) and batcher.run(_job(run)))
            assert run.entered.wait(20)
            _arrive(batcher)
            queued = batcher.run(_job(run, value=5.0))
            assert isinstance(queued, Future) and not queued.done() and batcher.pending() == 1
            gate.set()
            assert first.result(20).inline
            got = queued.result(20)
        assert not got.inline and torch.equal(got.outputs[0], torch.full((1, 3), 10.0))
        assert run.threads[1] == "splitdnn-batcher"
    finally:
        gate.set()
        batcher.stop(5)
