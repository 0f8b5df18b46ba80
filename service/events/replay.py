"""Replaying kept refused bodies through today's pipeline (``/v1/rejected``).

A replay that is accepted stores the body's events (with the ``source`` and ``received_at`` of the
original delivery) and forgets the body; one still refused stays, with today's reason and message.
A body kept only in part (it was over ``CIRELAY_REJECTED_BODY_MAX_BYTES``) cannot be replayed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.events.pipeline import EventPipeline
from service.ingest.parse import EventRejected
from service.storage import EventLog, RejectedCallback


async def replay(
    store: EventLog, pipeline: EventPipeline, kept: RejectedCallback
) -> dict[str, Any]:
    """Replay one kept body; the outcome as the API reports it."""
    outcome: dict[str, Any] = {"id": kept.id}
    if kept.body_bytes > len(kept.body):
        return {**outcome, "outcome": "truncated", "reason": kept.reason}
    try:
        result = await pipeline.replay(
            kept.body,
            kept.content_type,
            source=kept.source,
            received=datetime.fromisoformat(kept.received_at),
        )
    except EventRejected as exc:
        await store.update_rejected(kept.id, exc.reason, exc.message)
        return {**outcome, "outcome": "refused", "reason": exc.reason, "message": exc.message}
    await store.delete_rejected(kept.id)
    return {
        **outcome,
        "outcome": "accepted",
        "event_ids": list(result.event_ids),
        "new": result.new_events,
        "duplicates": result.duplicates,
    }
