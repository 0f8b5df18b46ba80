"""Group commit: many callers' writes share one transaction, each caller resumes after its commit.

Every ``submit()`` hands an item to one writer task and awaits a future. The writer takes whatever
queued up while the previous transaction ran and commits it as one batch, so under load one COMMIT
(one WAL or WAL-record sync) serves many requests, and at low load a lone item is written at once,
with no added wait. A future resolves only after COMMIT: callers answer (HTTP 2xx, Pulsar ack) only
once their write is durable. Both backends and both components (queue intake, event log) use it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from service.storage.errors import StorageUnavailable, StoreClosed

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class GroupCommit(Generic[T, R]):
    """``commit(items)`` writes a batch in one transaction and returns one result per item; a
    result that is an exception (say, an idempotency conflict) is raised in that item's caller.

    If a batch fails, each of its items is retried in a transaction of its own, so one bad item
    fails only its own caller; if it fails because storage is unavailable, every caller gets that
    at once. ``weight(item)`` counts an item's rows against ``max_rows``.
    """

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[list[R | Exception]]],
        *,
        name: str,
        max_rows: int,
        weight: Callable[[T], int] = lambda _: 1,
    ) -> None:
        self._commit = commit
        self._name = name
        self._max_rows = max_rows
        self._weight = weight
        self._pending: collections.deque[_Pending[T, R]] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        if self._closing:
            raise StoreClosed(f"{self._name} is closed")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._run(), name=self._name)
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Refuse new writes, commit everything already handed over, stop the writer."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    # One turn of the event loop first: requests already read and being parsed
                    # join this batch instead of each paying for a transaction of their own.
                    await asyncio.sleep(0)
                    await self._write(self._take_batch())
                if self._closing:
                    return
        finally:
            # Only reached with writes pending if the writer itself was cancelled.
            while self._pending:
                _settle(self._pending.popleft(), StoreClosed(f"{self._name} writer stopped"))

    def _take_batch(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        rows = 0
        while self._pending and (not batch or rows < self._max_rows):
            pending = self._pending.popleft()
            batch.append(pending)
            rows += self._weight(pending.item)
        return batch

    async def _write(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = await self._commit([p.item for p in batch])
        except asyncio.CancelledError:
            for pending in batch:
                _settle(pending, StoreClosed(f"{self._name} writer stopped"))
            raise
        except StorageUnavailable as exc:
            # The database takes no write now: retrying the items one by one would make each
            # caller wait for an attempt of its own (a connect or lock timeout each) to fail too.
            log.warning(
                "group_commit_unavailable", writer=self._name, rows=len(batch), error=str(exc)
            )
            for pending in batch:
                _settle(pending, exc)
            return
        except Exception as exc:
            if len(batch) > 1:
                for pending in batch:
                    await self._write([pending])
                return
            log.warning(
                "group_commit_failed", writer=self._name, error=f"{type(exc).__name__}: {exc}"
            )
            _settle(batch[0], exc)
            return
        if len(results) != len(batch):
            # A backend bug: which caller's write is which is unknown, so none is answered as
            # done (each retries and meets its own write as a duplicate); the writer goes on.
            log.error("group_commit_results_mismatch", writer=self._name, rows=len(batch))
            for pending in batch:
                _settle(pending, RuntimeError(f"{self._name}: {len(results)} results"))
            return
        for pending, result in zip(batch, results, strict=True):
            _settle(pending, result)


def _settle(pending: _Pending[T, R], outcome: R | BaseException) -> None:
    if pending.future.done():  # the caller went away; its write may still have been committed
        return
    if isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
