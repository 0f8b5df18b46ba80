"""Sample rows for the storage tests."""

from __future__ import annotations

from typing import Any


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    """A canonical TaskFinish event of media job ``j-<event_id>``; ``fields`` override."""
    base: dict[str, Any] = {
        "event_id": event_id,
        "event_type": "TaskFinish",
        "source": "http",
        "format": "xml",
        "job_id": f"j-{event_id}",
        "batch_id": None,
        "cirelay_job_id": None,
        "received_at": "2024-01-01T00:00:00Z",
        "state": "Success",
    }
    base.update(fields)
    return base
