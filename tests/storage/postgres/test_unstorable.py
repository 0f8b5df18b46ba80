"""Values PostgreSQL text cannot hold (a NUL; SQLite's can). A lookup by one finds nothing, as on
SQLite (a 404 or an empty page); anything else PostgreSQL cannot take is ``UnstorableValue``, a
``ValueError`` (HTTP 400, never retried), not a driver error (a 500) nor ``StorageUnavailable``
(a 503, and a Pulsar message redelivered forever)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.storage import Storage, open_storage
from service.storage.errors import UnstorableValue
from tests.storage.samples import event


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[Storage]:
    opened = await open_storage(postgres_url, pool_size=2)
    yield opened
    await opened.close()


async def test_a_lookup_by_a_value_with_a_nul_finds_nothing(storage: Storage) -> None:
    queue, events = storage.queue, storage.events
    assert await queue.get("a\x00b") is None
    assert await queue.cancel_queued("a\x00", now=1.0) is None
    assert await queue.requeue_dead("a\x00", now=1.0) is None
    assert await events.feed(job_id="j\x00") == []
    assert await events.feed(event_type="\x00") == []
    assert await events.rejected(reason="\x00") == []
    assert await events.rejected(source="\x00") == []


async def test_values_postgres_cannot_take_are_unstorable_not_unavailable(
    storage: Storage,
) -> None:
    with pytest.raises(UnstorableValue):
        await storage.queue.get("a\udc80")  # not UTF-8
    with pytest.raises(UnstorableValue):
        await storage.events.get_rejected(2**63)  # beyond 64 bits
    with pytest.raises(UnstorableValue):
        await storage.events.store([event("e\x00")])
    assert issubclass(UnstorableValue, ValueError)  # what the HTTP layer answers 400 for
    # Nothing was broken by them: the pool and the writer serve the next call.
    assert await storage.events.store([event("after")]) == [True]
