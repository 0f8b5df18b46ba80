"""Values PostgreSQL cannot hold or compare (a NUL in text, an integer beyond 64 bits) are the
caller's input: ``UnstorableValue``, a ``ValueError`` (HTTP 400, never retried), not a driver error
(a 500) nor ``StorageUnavailable`` (a 503, and a Pulsar message redelivered forever)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from service.storage import Storage, open_storage
from service.storage.errors import UnstorableValue
from tests.storage.samples import event


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[Storage]:
    opened = await open_storage(postgres_url, pool_size=2)
    yield opened
    await opened.close()


def calls(storage: Storage) -> dict[str, Callable[[], Awaitable[Any]]]:
    queue, events = storage.queue, storage.events
    return {
        "job id with a NUL": lambda: queue.get("a\x00b"),
        "cancel with a NUL": lambda: queue.cancel_queued("a\x00", now=1.0),
        "feed job id with a NUL": lambda: events.feed(job_id="a\x00"),
        "rejected reason with a NUL": lambda: events.rejected(reason="\x00"),
        "text that is not UTF-8": lambda: queue.get("a\udc80"),
        "id beyond 64 bits": lambda: events.get_rejected(2**63),
        "event id with a NUL": lambda: events.store([event("e\x00")]),
    }


async def test_values_postgres_cannot_take_are_unstorable_not_unavailable(
    storage: Storage,
) -> None:
    raised: dict[str, type[BaseException] | None] = {}
    for name, call in calls(storage).items():
        try:
            await call()
            raised[name] = None
        except Exception as exc:
            raised[name] = type(exc)
    assert raised == dict.fromkeys(raised, UnstorableValue)
    assert issubclass(UnstorableValue, ValueError)  # what the HTTP layer answers 400 for
    # Nothing was broken by them: the pool and the writer serve the next call.
    assert await storage.events.store([event("after")]) == [True]
    assert await storage.queue.get("after") is None
