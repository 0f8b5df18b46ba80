"""The one boundary to persistence: ``open_storage(url)`` picks the backend by the URL's scheme.

``sqlite:///path`` (the embedded default) or ``postgresql://…`` / ``postgres://…`` (many replicas).
"""

from __future__ import annotations

from service.storage.errors import StorageUnavailable, StoreClosed
from service.storage.protocol import (
    DELIVERY_STATES,
    FEED_START,
    Accounting,
    BatchProgress,
    Deliveries,
    Delivery,
    DeliveryState,
    EventLog,
    FeedPosition,
    Leases,
    NewDelivery,
    RejectedCallback,
    Retention,
    Storage,
)

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


async def open_storage(
    url: str,
    *,
    pool_size: int = 10,
    outbox: bool = False,
    rejected_body_max_bytes: int = 65_536,
    rejected_max_count: int = 10_000,
    rejected_max_bytes: int = 64 * 1024 * 1024,
) -> Storage:
    """Open and migrate the backend ``url`` names. ``outbox``: keep outbox rows for a publisher
    (otherwise they would pile up with nobody to drain them)."""
    if url.startswith(SQLITE_PREFIX):
        from service.storage.sqlite import SQLiteStorage

        return await SQLiteStorage.open(
            url.removeprefix(SQLITE_PREFIX),
            outbox=outbox,
            rejected_body_max_bytes=rejected_body_max_bytes,
            rejected_max_count=rejected_max_count,
            rejected_max_bytes=rejected_max_bytes,
        )
    if url.startswith(POSTGRES_PREFIXES):
        from service.storage.postgres import PostgresStorage

        return await PostgresStorage.open(
            url,
            pool_size=pool_size,
            outbox=outbox,
            rejected_body_max_bytes=rejected_body_max_bytes,
            rejected_max_count=rejected_max_count,
            rejected_max_bytes=rejected_max_bytes,
        )
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")


__all__ = [
    "DELIVERY_STATES",
    "FEED_START",
    "Accounting",
    "BatchProgress",
    "Deliveries",
    "Delivery",
    "DeliveryState",
    "EventLog",
    "FeedPosition",
    "Leases",
    "NewDelivery",
    "RejectedCallback",
    "Retention",
    "Storage",
    "StorageUnavailable",
    "StoreClosed",
    "open_storage",
]
