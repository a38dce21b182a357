"""Dynamic batching for the tail server: one worker thread runs queued jobs, joining compatible ones.

Jobs are compatible when they share a key (model, set of input names, and each input's dtype and
shape without the batch dimension); their inputs are concatenated along dim 0 (``(B_1 + B_2 + ..., C,
H, W)``), the tail runs once, and the outputs are split back by each job's batch size. A batch holds at
most ``max_batch_size`` rows. The oldest job waits at most ``max_queue_delay_s`` for company, and only
while other requests are still on their way in (decoding); a lone request runs at once, on the
thread that submits it (no hand-off to the worker and back), while the worker waits; :meth:`Batcher.run`
then gives its result or raises its error directly, with no future made for it.

Every job was validated on its own before it was queued, so a malformed request never reaches a
batch. If a batch still fails (or its outputs cannot be split by rows), each of its jobs whose client
still waits is rerun alone, so an error lands only on the job that causes it.

A job's future is *running* from the moment a batch takes it: it can no longer be cancelled, because
its tensors are in use until the batch ends. A job still queued can be withdrawn (:meth:`withdraw`,
for a request whose deadline passed), which takes it out of the queue at once, so that the queue never
holds requests whose handlers have gone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field

import torch

__all__ = ["BatchResult", "Batcher", "BatcherStopped", "Job"]


class BatcherStopped(RuntimeError):
    """A job was submitted after the batcher stopped (the server is shutting down)."""


@dataclass(frozen=True)
class BatchResult:
    """One job's share of a batch run."""

    outputs: list[torch.Tensor]  # the job's rows of each output leaf, on the CPU
    queue_s: float  # from submit to the start of its batch
    compute_s: float  # the batch's run time
    batch_size: int  # jobs in the batch
    inline: bool = False  # run alone on the submitting thread by Batcher.run: on_batch was not told


@dataclass(eq=False)
class Job:
    """One validated request waiting to run: its tensors in the tail's input order."""

    key: Hashable
    inputs: Sequence[torch.Tensor]  # each (B, ...) with the same B
    rows: int  # B
    # the tail, same for every job of a key: its outputs on the CPU
    run: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]
    is_active: Callable[[], bool] = lambda: True  # False once the client gave up (deadline, cancel)
    label: str = ""  # what on_batch is told (the server: the model's name)
    alone: bool = False  # never batched (a model whose rows depend on each other): runs without waiting
    submitted: float = 0.0  # (perf_counter) set when the batcher takes it
    _future: Future[BatchResult] | None = field(default=None, repr=False)

    @property
    def future(self) -> Future[BatchResult]:
        """The job's result once run (made when first asked: a job :meth:`Batcher.run` runs at once
        never needs one)."""
        if self._future is None:
            self._future = Future()
        return self._future


class Batcher:
    """Queues jobs and runs them on one worker thread, batching compatible jobs."""

    def __init__(
        self,
        max_batch_size: int,
        max_queue_delay_s: float,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self._on_batch = on_batch  # (label of its first job, jobs in it), once per batch that runs
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._arriving = 0  # requests being decoded that may soon submit a job
        self._busy = False  # a batch (or an inline job) is running: one run at a time
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="splitdnn-batcher", daemon=True)
        self._thread.start()

    # the request handlers tell the batcher that a job may be on its way, so the oldest job waits for it
    def arriving(self) -> None:
        with self._cond:
            self._arriving += 1

    def arrived(self) -> None:
        with self._cond:
            self._arriving -= 1
            self._wake_if_queued()

    def submit(self, job: Job) -> Future[BatchResult]:
        """Queue ``job``, which stops counting as arriving (``arrived()`` is only for refused requests);
        its future, done already when it ran at once on this thread."""
        try:
            inline = self._enter(job)
        except BatcherStopped as exc:
            job.future.set_exception(exc)
            return job.future
        if inline:
            job.future.set_running_or_notify_cancel()  # nobody else has the future yet
            try:
                if job.is_active():
                    self._run([job])
                else:
                    _gone(job)
            finally:
                self._leave()
        return job.future

    def run(self, job: Job) -> BatchResult | Future[BatchResult]:
        """:meth:`submit` without a future for a job that runs at once: its result (``inline``: not
        told to ``on_batch``, which the caller counts), or its error raised here (the tail's;
        CancelledError when its client is gone already; BatcherStopped once stopped). A queued job's
        future otherwise."""
        if not self._enter(job):
            return job.future
        try:
            if not job.is_active():
                raise CancelledError()
            start = time.perf_counter()
            try:
                outputs = _outputs(job)
            except Exception:  # a batch that ran, if only to fail: on_batch is told
                if self._on_batch is not None:
                    self._on_batch(job.label, 1)
                raise
            return BatchResult(outputs, start - job.submitted, time.perf_counter() - start, 1, inline=True)
        finally:
            self._leave()

    def _enter(self, job: Job) -> bool:
        """``job`` arrives: True when it is to run now on this thread (the batcher is then busy until
        :meth:`_leave`), False when it was queued (its future made first)."""
        with self._cond:
            self._arriving -= 1
            if self._stopping:
                raise BatcherStopped("the server is shutting down")
            job.submitted = time.perf_counter()
            if not self._busy and not self._queue and (self._arriving <= 0 or job.alone):
                self._busy = True  # alone and the worker idle: run here, saving two thread hand-offs
                return True
            _ = job.future  # made before the worker can see the job
            self._queue.append(job)
            self._cond.notify_all()
            return False

    def _leave(self) -> None:
        with self._cond:
            self._busy = False
            self._wake_if_queued()

    def _wake_if_queued(self) -> None:
        """Wake the worker after a change it may be waiting for, if it has jobs to look at.

        With an empty queue it has nothing to do but wait again; waking it anyway made it compete
        for the interpreter lock with the handler that just ran its request inline.
        """
        if self._queue or self._stopping:
            self._cond.notify_all()

    def withdraw(self, job: Job) -> bool:
        """Take ``job`` out of the queue if it is still there (its future is then cancelled).

        True when the job holds nothing any more (withdrawn, or already finished); False while a batch
        is running it, when its inputs are in use until ``job.future`` is done.
        """
        with self._cond:
            if job in self._queue:  # identity: Job compares by identity
                self._queue.remove(job)
                job.future.cancel()
                return True
            return job.future.done()

    def pending(self) -> int:
        """Jobs queued and not yet taken into a batch."""
        with self._cond:
            return len(self._queue)

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ----------------------------------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        """The next batch (None once stopped and drained); waits as the module docstring says."""
        with self._cond:
            while True:
                if not self._queue or self._busy:
                    if self._stopping and not self._queue:
                        return None
                    self._cond.wait()
                    continue
                head = self._queue[0]
                batch = [head] if head.alone else [j for j in self._queue if j.key == head.key]
                rows, chosen = 0, list[Job]()
                for j in batch:
                    if chosen and rows + j.rows > self.max_batch_size:
                        break
                    chosen.append(j)
                    rows += j.rows
                full = rows >= self.max_batch_size or len(chosen) < len(batch) or head.alone
                left = head.submitted + self.max_queue_delay_s - time.perf_counter()
                if full or left <= 0 or self._arriving <= 0 or self._stopping or self.max_batch_size == 1:
                    for j in chosen:
                        self._queue.remove(j)
                        j.future.set_running_or_notify_cancel()  # queued ones are never cancelled
                    self._busy = True
                    return chosen
                self._cond.wait(timeout=left)

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            active = []
            for j in jobs:
                if j.is_active():
                    active.append(j)
                else:
                    _gone(j)
            try:
                if active:
                    self._run(active)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _run(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        if self._on_batch is not None:
            self._on_batch(jobs[0].label, len(jobs))
        if len(jobs) == 1:
            self._run_alone(jobs[0], start)
            return
        try:
            inputs = [torch.cat(parts, dim=0) for parts in zip(*(j.inputs for j in jobs), strict=True)]
            outputs = jobs[0].run(inputs)
            total = sum(j.rows for j in jobs)
            if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
                raise _NotRowwise()
            pieces = [torch.split(o, [j.rows for j in jobs], dim=0) for o in outputs]
        except BaseException:  # a batch that fails as a whole: give every job its own run and its own error
            for j in jobs:
                if j.is_active():
                    self._run_alone(j, time.perf_counter(), queued_from=start)
                else:  # its client gave up while the batch ran: nobody waits for a run
                    _gone(j)
            return
        compute = time.perf_counter() - start
        for i, j in enumerate(jobs):
            result = BatchResult([p[i] for p in pieces], start - j.submitted, compute, len(jobs))
            j.future.set_result(result)  # running since its batch took it: nobody could cancel it

    def _run_alone(self, job: Job, start: float, queued_from: float | None = None) -> None:
        try:
            outputs = _outputs(job)
        except Exception as exc:  # handed to the request's handler, which maps it to a status
            job.future.set_exception(exc)
            return
        queue_s = (queued_from if queued_from is not None else start) - job.submitted
        job.future.set_result(BatchResult(outputs, queue_s, time.perf_counter() - start, 1))


def _outputs(job: Job) -> list[torch.Tensor]:
    """``job``'s tail run on its inputs. SystemExit & co. from a tail are an error of its request
    (a RuntimeError), not the end of the thread that runs it."""
    try:
        return job.run(job.inputs)
    except Exception:
        raise
    except BaseException as exc:
        raise RuntimeError(f"the tail raised {type(exc).__name__}: {exc}") from exc


class _NotRowwise(Exception):
    """The outputs of a batch do not have one row per input row, so they cannot be split by job."""


def _gone(job: Job) -> None:
    """The job's client gave up before it ran: no run, and its future says so."""
    job.future.set_exception(CancelledError())
