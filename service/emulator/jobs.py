"""Batch and media job lifecycle: expansion into media jobs, a priority worker pool, cancellation,
batch end states, callback hand-off (with reordering), and write-through persistence.

A batch goes Submitted → Running (its first media job starts) → Success, Failed (any media job
failed) or Cancel. Each media job runs CIRELAY_EMULATOR_JOB_SECONDS on one of
CIRELAY_EMULATOR_WORKERS workers, highest JobLevel first, then in creation order.

A batch may hold 100,000 media jobs, so nothing done per media job looks at all of them: each
batch keeps a tally of its ended children, the engine counts what is unfinished or has a callback
pending, and lists are kept in creation order per batch and per bucket for paging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from service.emulator.delivery import Dispatcher
from service.emulator.expand import expand_input, resolve_outputs
from service.emulator.randomness import Randomness
from service.emulator.records import (
    CANCEL,
    FAILED,
    FAILURE_CODE,
    FAILURE_MESSAGE,
    RUNNING,
    SUBMITTED,
    SUCCESS,
    Batch,
    MediaJob,
)
from service.emulator.spec import BatchSpec
from service.emulator.stats import Stats
from service.emulator.times import now
from service.settings import Settings
from service.storage.sqlite.emulator import StateStore

log = structlog.get_logger(__name__)


class CancelRefused(Exception):
    """The job already ended (Success or Failed) and cannot be cancelled."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(
            f"job {job_id} is {state}; only Submitted or Running jobs can be cancelled"
        )
        self.state = state


@dataclass(slots=True)
class _Tally:
    """What a batch's ended media jobs add up to."""

    total: int = 0
    ended: int = 0
    failed: int = 0
    cancelled: int = 0
    first_failure: str | None = None  # the Code of the first media job that failed

    def count(self, job: MediaJob) -> None:
        self.ended += 1
        if job.state == FAILED:
            self.failed += 1
            if self.first_failure is None:
                self.first_failure = job.code
        elif job.state == CANCEL:
            self.cancelled += 1


class Engine:
    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        stats: Stats,
        randomness: Randomness,
        store: StateStore | None = None,
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._stats = stats
        self._randomness = randomness
        self._ids = randomness.rng("ids")
        self._store = store
        self.batches: dict[str, Batch] = {}
        self.media: dict[str, MediaJob] = {}
        # Creation (seq) order, for paging without sorting or scanning.
        self._children: dict[str, list[MediaJob]] = {}
        self._by_bucket: dict[str, list[MediaJob]] = {}
        self._tallies: dict[str, _Tally] = {}
        self._unfinished = 0  # media jobs not ended
        self._undelivered = 0  # callbacks pending
        self._queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._running = asyncio.Event()
        self._running.set()
        self._cancel_events: dict[str, asyncio.Event] = {}
        self._held: dict[str, list[MediaJob]] = {}  # callbacks waiting for their batch to end
        self._tasks: set[asyncio.Task[None]] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._counter = 0
        self._changed = asyncio.Condition()

    # -- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load persisted state (if any), resume unfinished work, start the worker pool."""
        if self._store is not None:
            batches, jobs = await self._store.load()
            self.batches = {b.job_id: b for b in batches}
            self._counter = max(
                [0, *(b.seq for b in batches), *(max(j.seq, j.run_seq, j.end_seq) for j in jobs)]
            )
            for batch in batches:
                self._children[batch.job_id] = []
                self._tallies[batch.job_id] = _Tally()
            for job in sorted(jobs, key=lambda j: j.seq):
                self._add(job)
                if job.finished:
                    self._tallies[job.batch_id].count(job)
                self._undelivered += job.callback == "pending"
        resumed = 0
        for job in self.media.values():
            if not job.finished:
                # A job interrupted mid-run starts over, as if its worker had died.
                job.state, job.start_time, job.run_seq = SUBMITTED, None, 0
                self._enqueue(job)
                resumed += 1
        for batch in self.batches.values():
            children = self._children[batch.job_id]
            for job in sorted(children, key=lambda j: j.end_seq):
                if job.callback == "pending":
                    self._callback_due(batch, job)
            self._flush_held(batch)
        if self.batches:
            log.info("emulator_state_loaded", batches=len(self.batches), resumed=resumed)
        self._workers = [
            asyncio.create_task(self._worker()) for _ in range(self._settings.emulator_workers)
        ]

    async def stop(self) -> None:
        tasks = [*self._workers, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()

    def pause(self) -> None:
        """Stop starting media jobs (running ones finish); they stay Submitted until resume()."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    # -- queries ----------------------------------------------------------------------------

    def batch(self, bucket: str, job_id: str) -> Batch | None:
        batch = self.batches.get(job_id)
        return batch if batch is not None and batch.bucket == bucket else None

    def media_job(self, bucket: str, job_id: str) -> MediaJob | None:
        job = self.media.get(job_id)
        return job if job is not None and job.bucket == bucket else None

    def batches_of(self, bucket: str) -> list[Batch]:
        """The bucket's batches in creation order."""
        return sorted((b for b in self.batches.values() if b.bucket == bucket), key=_seq)

    def media_of(self, bucket: str) -> Sequence[MediaJob]:
        """The bucket's media jobs in creation order."""
        return self._by_bucket.get(bucket, ())

    def children(self, batch_id: str) -> Sequence[MediaJob]:
        """A batch's media jobs in creation order."""
        return self._children.get(batch_id, ())

    @property
    def idle(self) -> bool:
        """No media job unfinished and no callback left to deliver."""
        return self._unfinished == 0 and self._undelivered == 0

    async def wait_idle(self) -> None:
        await self.wait_until(lambda: self.idle)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every state change."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    # -- commands ---------------------------------------------------------------------------

    async def create(self, bucket: str, region: str, spec: BatchSpec) -> Batch:
        settings = self._settings
        keys = await asyncio.to_thread(
            expand_input,
            spec,
            objects_per_prefix=settings.emulator_objects_per_prefix,
            bucket_dir=settings.emulator_bucket_dir,
        )
        created = now()
        batch = Batch(
            job_id=self._new_id("b"),
            bucket=bucket,
            region=region,
            seq=self._next(),
            spec=spec,
            creation_time=created,
        )
        self.batches[batch.job_id] = batch
        self._children[batch.job_id] = []
        self._tallies[batch.job_id] = _Tally()
        jobs = []
        for key in keys:
            outputs = resolve_outputs(spec, batch_id=batch.job_id, input_key=key)
            job = MediaJob(
                job_id=self._new_id("j"),
                batch_id=batch.job_id,
                bucket=bucket,
                region=region,
                seq=self._next(),
                object_key=key,
                output_object=outputs.object,
                output_names=outputs.names,
                output_prefix=outputs.prefix,
                creation_time=created,
            )
            self._add(job)
            jobs.append(job)
        self._stats.batches_created[bucket] += 1
        self._stats.media_jobs_created += len(jobs)
        self._settle(batch)  # a batch that matched no object is done at once
        await self._save([batch], jobs)
        for job in jobs:
            self._enqueue(job)
        log.info("emulator_batch_created", job_id=batch.job_id, bucket=bucket, media_jobs=len(jobs))
        await self._notify()
        return batch

    async def cancel_batch(self, bucket: str, job_id: str) -> Batch | None:
        batch = self.batch(bucket, job_id)
        if batch is None or batch.state == CANCEL:
            return batch
        if batch.finished:
            raise CancelRefused(job_id, batch.state)
        batch.state = CANCEL
        batch.end_time = now()
        open_jobs = [j for j in self._children[batch.job_id] if not j.finished]
        await self._end(batch, open_jobs, CANCEL)
        return batch

    async def cancel_media(self, bucket: str, job_id: str) -> MediaJob | None:
        job = self.media_job(bucket, job_id)
        if job is None or job.state == CANCEL:
            return job
        if job.finished:
            raise CancelRefused(job_id, job.state)
        await self._end(self.batches[job.batch_id], [job], CANCEL)
        return job

    # -- the worker pool --------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self._running.wait()
            item = await self._queue.get()
            if not self._running.is_set():
                # Paused while this worker waited for work: put it back so that priority holds.
                self._queue.put_nowait(item)
                continue
            job = self.media.get(item[2])
            if job is None or job.state != SUBMITTED:
                continue  # cancelled while it waited
            try:
                await self._run(job)
            except Exception:  # one broken job (e.g. a failed state write) must not end the pool
                log.exception("emulator_job_error", job_id=job.job_id)

    async def _run(self, job: MediaJob) -> None:
        batch = self.batches[job.batch_id]
        cancelled = self._cancel_events[job.job_id] = asyncio.Event()
        started = now()
        job.state, job.start_time, job.run_seq = RUNNING, started, self._next()
        if batch.state == SUBMITTED:
            batch.state, batch.start_time = RUNNING, started
        try:
            await self._save([batch], [job])
            await self._notify()
            await asyncio.wait_for(cancelled.wait(), self._settings.emulator_job_seconds)
            return  # cancel_* already recorded the end
        except TimeoutError:
            pass
        finally:
            self._cancel_events.pop(job.job_id, None)
        if job.state != RUNNING:
            return
        fails = (
            self._randomness.rng(f"run/{job.job_id}").random()
            < self._settings.emulator_failure_rate
        )
        await self._end(batch, [job], FAILED if fails else SUCCESS)

    def _enqueue(self, job: MediaJob) -> None:
        level = self.batches[job.batch_id].spec.job_level
        self._queue.put_nowait((-level, job.seq, job.job_id))

    # -- ends, batch states, callbacks ------------------------------------------------------

    async def _end(self, batch: Batch, jobs: list[MediaJob], state: str) -> None:
        ended = now()
        tally = self._tallies[batch.job_id]
        for job in jobs:
            job.state, job.end_time, job.end_seq = state, ended, self._next()
            if state == FAILED:
                job.code, job.message = FAILURE_CODE, FAILURE_MESSAGE
            tally.count(job)
            self._unfinished -= 1
            # Cancelled jobs send no TaskFinish; only a finished one does.
            job.callback = "pending" if state != CANCEL and batch.spec.wants_callback else "none"
            self._undelivered += job.callback == "pending"
            self._stats.media_jobs_ended[state] += 1
            event = self._cancel_events.get(job.job_id)
            if event is not None:
                event.set()
        self._settle(batch)
        await self._save([batch], jobs)
        for job in jobs:
            if job.callback == "pending":
                self._callback_due(batch, job)
        self._flush_held(batch)
        await self._notify()

    def _settle(self, batch: Batch) -> None:
        """End the batch once every media job has ended (cancel_batch ends it itself)."""
        tally = self._tallies[batch.job_id]
        if batch.finished or tally.ended < tally.total:
            return
        if tally.total and tally.cancelled == tally.total:
            batch.state = CANCEL
        elif tally.failed:
            batch.state = FAILED
            batch.code = tally.first_failure or FAILURE_CODE
            batch.message = f"{tally.failed} of {tally.total} media jobs failed"
        else:
            batch.state = SUCCESS
        batch.end_time = now()
        if batch.start_time is None:
            batch.start_time = batch.end_time
        log.info("emulator_batch_ended", job_id=batch.job_id, state=batch.state)

    def _callback_due(self, batch: Batch, job: MediaJob) -> None:
        if self._settings.emulator_reorder:
            self._held.setdefault(batch.job_id, []).append(job)
        else:
            self._spawn(self._deliver(batch, [job]))

    def _flush_held(self, batch: Batch) -> None:
        """With reordering on, a batch's callbacks go out once it ends, latest-ended first."""
        if not batch.finished or batch.job_id not in self._held:
            return
        held = sorted(self._held.pop(batch.job_id), key=lambda j: j.end_seq, reverse=True)
        if len(held) > 1:
            self._stats.callbacks_reordered_batches += 1
        self._spawn(self._deliver(batch, held))

    async def _deliver(self, batch: Batch, jobs: list[MediaJob]) -> None:
        for job in jobs:
            await self._dispatcher.dispatch(batch, job)
            job.callback = "done"
            self._undelivered -= 1
            await self._save([], [job])
            await self._notify()

    # -- plumbing ---------------------------------------------------------------------------

    def _add(self, job: MediaJob) -> None:
        self.media[job.job_id] = job
        self._children[job.batch_id].append(job)
        self._by_bucket.setdefault(job.bucket, []).append(job)
        self._tallies[job.batch_id].total += 1
        self._unfinished += not job.finished

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _save(self, batches: Iterable[Batch], jobs: Iterable[MediaJob]) -> None:
        if self._store is not None:
            await self._store.save(batches, jobs)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _new_id(self, prefix: str) -> str:
        # CI ids: a letter (b = batch, j = media job) and 32 hex digits.
        while True:
            candidate = f"{prefix}{self._ids.getrandbits(128):032x}"
            if candidate not in self.batches and candidate not in self.media:
                return candidate


def _seq(batch: Batch) -> int:
    return batch.seq
