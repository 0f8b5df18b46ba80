"""The canonical event's type: one field per property of ``schemas/event.v1.json`` (all required).

Built once by the normaliser (or the reconciler, for BatchFinish); what cirelay learns about its
job afterwards is added by ``linked``, which returns a new event instead of changing the built one.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

EventType = Literal["TaskFinish", "WorkflowFinish", "BatchFinish"]
Source = Literal["http", "pulsar", "poll"]


class ObjectRef(TypedDict):
    bucket: str | None
    region: str | None
    object: str | None


class WorkflowRef(TypedDict):
    workflow_id: str | None
    workflow_name: str | None
    run_id: str | None
    name: str | None


class WorkflowTask(TypedDict):
    job_id: str | None
    tag: str | None
    state: str | None
    name: str | None
    created_at: str | None
    ended_at: str | None
    outputs: list[ObjectRef]


class CanonicalEvent(TypedDict):
    schema_version: int
    event_id: str
    event_type: str  # one of EventType; str because stored events are read back as JSON
    source: str  # one of Source
    format: str
    job_id: str | None
    batch_id: str | None
    cirelay_job_id: str | None
    tag: str | None
    state: str
    code: str | None
    message: str | None
    queue_id: str | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    input: ObjectRef
    outputs: list[ObjectRef]
    user_data: str | None
    job_level: int | None
    workflow: WorkflowRef | None
    tasks: list[WorkflowTask]
    received_at: str
    document: dict[str, Any]


def linked(
    event: CanonicalEvent, *, cirelay_job_id: str | None, batch_id: str | None
) -> CanonicalEvent:
    """The event attached to our job (and its CI batch, when known)."""
    return {**event, "cirelay_job_id": cirelay_job_id, "batch_id": batch_id}
