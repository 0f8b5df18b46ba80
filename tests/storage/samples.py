"""Sample rows for the storage tests."""

from __future__ import annotations

from typing import Any

from service.storage import NewDelivery


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


def new_delivery(
    n: int, *, job: str = "job1", url: str = "http://hooks.example:80/a", kind: str = "subscription"
) -> NewDelivery:
    """Delivery ``n`` of one event to one destination, in chain (kind, url, job)."""
    return NewDelivery(
        id=f"msg_{kind}_{url}_{n}",
        job_id=job,
        event_id=f"ev{n}",
        event_type="TaskFinish",
        kind=kind,
        url=url,
        origin=url.rsplit("/", 1)[0],
        chain=f"{kind} {url} {job}",
        content_type="application/json",
        body=f'{{"n": {n}}}'.encode(),
    )
