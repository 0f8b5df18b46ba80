"""Canonical events published from the durable outbox: JSON keyed by job id, at least once, and
what was stored before a crash but never published goes out after the restart."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.appkeys import EVENT_STORE, METRICS
from service.ingest.normalize import normalize
from service.ingest.parse import parse_callback
from service.pulsar.publisher import encode, published_prefix
from service.storage.sqlite.database import Database
from service.storage.sqlite.events import SQLiteEventLog
from tests.events.support import STATIC_TOKEN, task_finish_json, task_finish_xml
from tests.pulsar.support import (
    Broker,
    publish,
    pulsar_settings,
    read_topic,
    running_app,
    topic,
    topic_is_quiet,
    wait_until,
)

pytestmark = pytest.mark.pulsar


def test_the_message_of_an_event() -> None:
    body, key, properties = encode({"event_id": "e1", "event_type": "TaskFinish", "job_id": "j1"})
    assert json.loads(body) == {"event_id": "e1", "event_type": "TaskFinish", "job_id": "j1"}
    assert key == "j1"
    assert properties == {"event_id": "e1", "event_type": "TaskFinish"}
    # No job id (a workflow's event): the event id keys it.
    assert encode({"event_id": "e2", "event_type": "WorkflowFinish", "job_id": None})[1] == "e2"


def test_rows_after_a_failed_send_are_sent_again() -> None:
    error = RuntimeError("timeout")
    assert published_prefix([1, 2, 3], [None, None, None]) == [1, 2, 3]
    assert published_prefix([1, 2, 3], [None, error, None]) == [1]
    assert published_prefix([1, 2, 3], [error, None, None]) == []


async def test_new_events_are_published_as_json_keyed_by_job(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any
) -> None:
    events, output = topic("ci-in"), topic("cirelay-out")
    settings = pulsar_settings(
        tmp_path,
        pulsar_broker,
        CIRELAY_PULSAR_EVENTS_TOPIC=events,
        CIRELAY_PULSAR_OUTPUT_TOPIC=output,
    )
    # From Pulsar and from a URL callback: the outbox carries every new event, whatever its source.
    await publish(pulsar_client, events, [task_finish_xml("jp1"), task_finish_json("jp2")])
    async with running_app(settings) as client:
        resp = await client.post(
            f"/v1/callbacks/{STATIC_TOKEN}",
            data=task_finish_json("jp3"),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 200
        # A duplicate is stored once and so published once.
        await publish(pulsar_client, events, [task_finish_json("jp1")])
        messages = await read_topic(pulsar_client, output, 3)
        published = {m.partition_key(): json.loads(m.data()) for m in messages}
        assert sorted(published) == ["jp1", "jp2", "jp3"]
        for key, event in published.items():
            assert event["job_id"] == key
            assert event["event_type"] == "TaskFinish"
            assert event["schema_version"] == 1
        assert {published["jp1"]["source"], published["jp3"]["source"]} == {"pulsar", "http"}
        assert all(m.properties()["event_id"] == json.loads(m.data())["event_id"] for m in messages)
        registry = client.app[METRICS].registry
        await wait_until(
            lambda: registry.get_sample_value("cirelay_outbox_pending") == 0, "outbox gauge 0"
        )
        assert await client.app[EVENT_STORE].outbox_pending() == 0
        assert await topic_is_quiet(pulsar_client, output, after=3)


async def test_events_stored_before_a_crash_are_published_after_the_restart(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any
) -> None:
    """The state a crash between commit and publish leaves: events and outbox rows, no messages.
    (tests/pulsar/test_resilience.py makes it with kill -9 of a real process.)"""
    output = topic("cirelay-out-crash")
    settings = pulsar_settings(tmp_path, pulsar_broker, CIRELAY_PULSAR_OUTPUT_TOPIC=output)
    db = await Database.open(settings.sqlite_path)
    store = await SQLiteEventLog.open(
        db, outbox=True, rejected_body_max_bytes=1024, rejected_max_count=10
    )
    received = datetime.now(UTC)
    stored = []
    for n in range(5):
        stored += normalize(
            parse_callback(task_finish_xml(f"jc{n}")), source="http", received_at=received
        )
    assert await store.store(stored) == [True] * 5
    assert await store.outbox_pending() == 5
    await store.close()
    await db.close()

    async with running_app(settings) as client:
        messages = await read_topic(pulsar_client, output, 5)
        # The outbox is drained in the order the events were stored.
        assert [m.partition_key() for m in messages] == [f"jc{n}" for n in range(5)]
        assert [json.loads(m.data())["event_id"] for m in messages] == [
            e["event_id"] for e in stored
        ]
        registry = client.app[METRICS].registry
        await wait_until(
            lambda: registry.get_sample_value("cirelay_outbox_pending") == 0, "outbox gauge 0"
        )
        assert await client.app[EVENT_STORE].outbox_pending() == 0


async def test_events_wait_in_the_outbox_while_the_broker_is_unreachable(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any
) -> None:
    output = topic("cirelay-out-later")
    unreachable = pulsar_settings(
        tmp_path,
        pulsar_broker,
        CIRELAY_PULSAR_URL="pulsar://127.0.0.1:9",
        CIRELAY_PULSAR_OUTPUT_TOPIC=output,
    )
    async with running_app(unreachable) as client:
        for n in range(3):
            resp = await client.post(
                f"/v1/callbacks/{STATIC_TOKEN}",
                data=task_finish_xml(f"jw{n}"),
                headers={"Content-Type": "application/xml"},
            )
            assert resp.status == 200
        registry = client.app[METRICS].registry
        await wait_until(
            lambda: registry.get_sample_value("cirelay_outbox_pending") == 3, "outbox gauge 3"
        )
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["components"]["pulsar"]["detail"] == "outbox: connecting"
    async with running_app(unreachable.replace(pulsar_url=pulsar_broker.url)):
        messages = await read_topic(pulsar_client, output, 3)
        assert sorted(m.partition_key() for m in messages) == ["jw0", "jw1", "jw2"]
