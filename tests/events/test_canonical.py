"""The canonical event's type says what the schema says: the same fields, at every level."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.events.canonical import (
    CanonicalEvent,
    ObjectRef,
    WorkflowRef,
    WorkflowTask,
    linked,
)
from service.ingest.normalize import batch_finish_event

SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "service" / "schemas" / "event.v1.json").read_text()
)


def test_the_type_has_every_field_of_the_schema_and_no_other() -> None:
    properties = SCHEMA["properties"]
    assert set(CanonicalEvent.__annotations__) == set(properties) == set(SCHEMA["required"])
    assert set(ObjectRef.__annotations__) == set(SCHEMA["$defs"]["object_ref"]["required"])
    assert set(WorkflowRef.__annotations__) == set(properties["workflow"]["required"])
    assert set(WorkflowTask.__annotations__) == set(properties["tasks"]["items"]["required"])


def test_linking_makes_a_new_event_and_leaves_the_built_one_as_it_was() -> None:
    built = batch_finish_event(
        {},
        batch_id="b1",
        cirelay_job_id=None,
        tag="Transcode",
        state="Success",
        code=None,
        message=None,
        created_at=None,
        started_at=None,
        ended_at=None,
        received_at=datetime.now(UTC),
    )
    attached = linked(built, cirelay_job_id="job1", batch_id="b1")
    assert (attached["cirelay_job_id"], attached["batch_id"]) == ("job1", "b1")
    assert built["cirelay_job_id"] is None
    assert {k: v for k, v in attached.items() if k != "cirelay_job_id"} == {
        k: v for k, v in built.items() if k != "cirelay_job_id"
    }
