"""PostgreSQL going away: every storage call raises ``StorageUnavailable`` (never a driver error),
and the same storage serves again by itself once the server is back, with nothing committed lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from service.storage import BatchProgress, Storage, StorageUnavailable, open_storage
from tests.postgres_server import PostgresServer
from tests.storage.samples import event


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[Storage]:
    opened = await open_storage(postgres_url, pool_size=4, outbox=True)
    yield opened
    await opened.close()


def calls(storage: Storage, tag: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each kind the service makes; ``tag`` keeps the writes new."""
    events, leases = storage.events, storage.leases
    return {
        "ping": storage.ping,
        "store": lambda: events.store([event(f"{tag}-stored")]),
        "reject": lambda: events.reject(
            received_at="2024-01-01T00:00:00Z",
            source="http",
            reason="malformed_xml",
            message=tag,
            content_type="application/xml",
            body=b"<",
        ),
        "batch_progress": lambda: events.batch_progress("job1"),
        "record_listing": lambda: events.record_listing(
            BatchProgress("job1", "b1"), [f"j-{tag}-stored"]
        ),
        "unaccounted": lambda: events.unaccounted("job1", "b1"),
        "missing_media": lambda: events.missing_media("job1", after="", limit=10),
        "feed": events.feed,
        "for_job": lambda: events.for_job("job1"),
        "count_for_job": lambda: events.count_for_job("job1"),
        "has_events": lambda: events.has_events("job1"),
        "job_ids_with": lambda: events.job_ids_with("TaskFinish", ["m1"]),
        "rejected": events.rejected,
        "outbox_pending": events.outbox_pending,
        "outbox_batch": lambda: events.outbox_batch(10),
        "outbox_done": lambda: events.outbox_done([1]),
        "acquire": lambda: leases.acquire("outbox", "r1", ttl=10, now=100),
        "release": lambda: leases.release("outbox", "r1"),
        "prune_jobs": lambda: storage.retention.prune_jobs(finished_before=0, limit=10),
        "prune_unattached_events": lambda: storage.retention.prune_unattached_events(
            received_before="2000-01-01T00:00:00.000Z", limit=10
        ),
        "prune_rejected": lambda: storage.retention.prune_rejected(
            received_before="2000-01-01T00:00:00.000Z", limit=10
        ),
    }


async def raised(call: Callable[[], Awaitable[Any]]) -> type[BaseException] | None:
    try:
        await call()
    except Exception as exc:
        return type(exc)
    return None


async def test_calls_are_unavailable_while_the_server_is_down_and_recover_after(
    storage: Storage, postgres_server: PostgresServer
) -> None:
    for call in calls(storage, "before").values():
        await call()
    await asyncio.to_thread(postgres_server.halt)
    down = {name: await raised(call) for name, call in calls(storage, "down").items()}
    assert down == dict.fromkeys(down, StorageUnavailable)
    await asyncio.to_thread(postgres_server.resume)
    for call in calls(storage, "after").values():
        await call()  # the same pool, reconnected: no reopening
    stored = {e["event_id"] for _, e in await storage.events.feed()}
    assert stored == {"before-stored", "after-stored"}
    assert [r.message for r in await storage.events.rejected()] == ["before", "after"]


async def test_opening_while_the_server_is_down_is_unavailable(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    await asyncio.to_thread(postgres_server.halt)
    with pytest.raises(StorageUnavailable):
        await open_storage(postgres_url)
