"""CI events from a real Pulsar broker: both formats, ack after durability, redelivery on a
transient failure, dead-lettering of messages that never parse, topic lists and patterns,
readiness."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from service.appkeys import METRICS
from service.pulsar.consumer import parse_topics
from service.pulsar.deadletter import dead_letter_topic
from service.settings import Settings, SettingsError
from tests.events.support import sample, task_finish_json, task_finish_xml
from tests.pulsar.support import (
    Admin,
    Broker,
    db_path_of,
    event_rows,
    publish,
    pulsar_settings,
    read_topic,
    running_app,
    settled_outcomes,
    topic,
    wait_until,
)

pytestmark = pytest.mark.pulsar

SUBSCRIPTION = "cirelay-test"


def test_topic_setting_forms() -> None:
    assert parse_topics("a").names == ("a",)
    assert parse_topics(" a , persistent://t/n/b ,").names == ("a", "persistent://t/n/b")
    assert parse_topics("re:persistent://public/default/ci-.*").pattern == (
        "persistent://public/default/ci-.*"
    )
    for bad in ("", " , ", "re:", "re:  "):
        with pytest.raises(ValueError, match="topic"):
            parse_topics(bad)


async def test_xml_and_json_events_are_stored_and_acknowledged(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    events = topic("ci-events")
    settings = pulsar_settings(tmp_path, pulsar_broker, CIRELAY_PULSAR_EVENTS_TOPIC=events)
    db = db_path_of(settings)
    await publish(pulsar_client, events, [task_finish_xml("jxml1")], {"content-type": "text/xml"})
    await publish(pulsar_client, events, [task_finish_json("jjson1")], {"Content-Type": "json"})
    # No content-type property: the format is sniffed from the body, as for URL callbacks.
    await publish(pulsar_client, events, [task_finish_xml("jxml2"), task_finish_json("jjson2")])
    async with running_app(settings) as client:
        rows = await wait_until(lambda: len(event_rows(db)) == 4 and event_rows(db), "4 events")
        formats = {row["job_id"]: (row["format"], row["source"]) for row in rows}
        assert formats == {
            "jxml1": ("xml", "pulsar"),
            "jjson1": ("json", "pulsar"),
            "jxml2": ("xml", "pulsar"),
            "jjson2": ("json", "pulsar"),
        }
        stats = await wait_until(
            lambda: _settled(admin, events), "the subscription to have no backlog"
        )
        assert stats["msgBacklog"] == 0
        registry = client.app[METRICS].registry
        assert sample(
            registry, "cirelay_events_received_total",
            source="pulsar", format="xml", event_type="TaskFinish",
        ) == 2
        counts = await settled_outcomes(registry, "events", {"acked": 4})
        assert counts == {"acked": 4, "retried": 0, "refused": 0, "dead_lettered": 0}
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 200, body
        assert body["components"]["pulsar"]["ok"] is True
        await wait_until(
            lambda: registry.get_sample_value("cirelay_pulsar_connected") == 1, "gauge 1"
        )


async def test_the_same_event_twice_is_stored_once(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    events = topic("ci-dup")
    settings = pulsar_settings(tmp_path, pulsar_broker, CIRELAY_PULSAR_EVENTS_TOPIC=events)
    await publish(pulsar_client, events, [task_finish_xml("jd1"), task_finish_json("jd1")])
    async with running_app(settings) as client:
        await wait_until(lambda: _settled(admin, events), "both messages acknowledged")
        registry = client.app[METRICS].registry
        assert sample(registry, "cirelay_events_duplicate_total", source="pulsar") == 1
    assert [row["job_id"] for row in event_rows(db_path_of(settings))] == ["jd1"]


async def test_acknowledged_only_after_the_event_is_durable(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    """Another process holds the database's write lock, so the event cannot commit; the app is
    shut down meanwhile. The message must not have been acknowledged: the next app gets it."""
    events = topic("ci-durable")
    settings = pulsar_settings(
        tmp_path, pulsar_broker, CIRELAY_PULSAR_EVENTS_TOPIC=events,
        CIRELAY_SHUTDOWN_GRACE_SECONDS="0.2",
    )
    db = db_path_of(settings)
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        async with running_app(settings) as first:
            locker.execute("BEGIN IMMEDIATE")  # after start-up, which writes (migrations)
            await publish(pulsar_client, events, [task_finish_xml("jlocked")])
            await wait_until(
                lambda: _delivered_unacked(admin, events), "the message to reach the app"
            )
            closing = asyncio.create_task(first.close())
            # The consumer is gone (its unacknowledged message released) while the lock holds.
            await wait_until(lambda: _no_consumers(admin, events), "the consumer to close")
            assert event_rows_unlocked(locker) == []
            locker.execute("ROLLBACK")
            await closing
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
    async with running_app(settings) as second:
        await wait_until(lambda: _settled(admin, events), "the redelivered message acknowledged")
        registry = second.app[METRICS].registry
        # The first app may have committed the handed-over row after the lock went: then the
        # second one sees a duplicate; either way it was delivered again.
        again = sample(
            registry, "cirelay_events_received_total",
            source="pulsar", format="xml", event_type="TaskFinish",
        ) + sample(registry, "cirelay_events_duplicate_total", source="pulsar")
        assert again == 1
    assert [row["job_id"] for row in event_rows(db)] == ["jlocked"]


async def test_a_transient_failure_is_redelivered_until_it_succeeds(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    """A real fault in the real database (a trigger refusing inserts) fails the ingest: the message
    is negatively acknowledged and delivered again, never acked, dead-lettered or counted as
    rejected; once the fault is gone the next delivery stores it."""
    events = topic("ci-transient")
    settings = pulsar_settings(tmp_path, pulsar_broker, CIRELAY_PULSAR_EVENTS_TOPIC=events)
    db = db_path_of(settings)
    async with running_app(settings):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
    async with running_app(settings) as client:
        await publish(pulsar_client, events, [task_finish_json("jt1")])
        # Well past max_redeliveries (2): a transient failure never dead-letters.
        await wait_until(
            lambda: _out_counter(admin, events, at_least=5), "five deliveries of the message"
        )
        assert event_rows(db) == []
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER refuse")
        await wait_until(lambda: len(event_rows(db)) == 1, "the event stored")
        await wait_until(lambda: _settled(admin, events), "the message acknowledged")
        registry = client.app[METRICS].registry
        assert _rejections(registry) == 0
        counts = await settled_outcomes(registry, "events", {"acked": 1})
        assert (counts["retried"] or 0) >= 4  # the deliveries while the fault lasted
        assert (counts["refused"], counts["dead_lettered"]) == (0, 0)
    dead = await admin.get("/admin/v2/persistent/public/default")
    assert events + "-DLQ" not in dead


async def test_a_message_that_never_parses_is_dead_lettered_after_redeliveries(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    events = topic("ci-poison")
    settings = pulsar_settings(tmp_path, pulsar_broker, CIRELAY_PULSAR_EVENTS_TOPIC=events)
    db = db_path_of(settings)
    poison = b"<Response><EventName>TaskFinish</EventName><JobsDetail>"  # truncated XML
    await publish(
        pulsar_client, events, [poison], {"content-type": "application/xml", "trace": "t-1"}
    )
    await publish(pulsar_client, events, [task_finish_xml("jgood")])
    async with running_app(settings) as client:
        (dead,) = await read_topic(pulsar_client, events + "-DLQ", 1)
        assert dead.data() == poison
        props = dead.properties()
        assert props["cirelay-reason"] == "malformed_xml"
        assert "malformed XML" in props["cirelay-message"]
        assert props["cirelay-deliveries"] == "3"  # the first delivery and 2 redeliveries
        assert props["cirelay-source-topic"] == events
        assert props["trace"] == "t-1"  # the message's own properties are kept
        assert props["content-type"] == "application/xml"
        await wait_until(lambda: _settled(admin, events), "the poison message acknowledged")
        stats = await admin.subscription(events, SUBSCRIPTION)
        assert stats["msgOutCounter"] == 4  # 3 deliveries of the poison + the good one
        registry = client.app[METRICS].registry
        # Counted and kept once, though delivered three times.
        assert sample(
            registry, "cirelay_events_rejected_total", source="pulsar", reason="malformed_xml"
        ) == 1
        counts = await settled_outcomes(registry, "events", {"acked": 1, "dead_lettered": 1})
        assert counts == {"acked": 1, "retried": 0, "refused": 2, "dead_lettered": 1}
    assert [row["job_id"] for row in event_rows(db)] == ["jgood"]
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT source, reason, body FROM rejected_callbacks").fetchall()
    assert kept == [("pulsar", "malformed_xml", poison)]


async def test_an_oversized_message_is_refused_as_too_large(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any
) -> None:
    events = topic("ci-large")
    settings = pulsar_settings(
        tmp_path, pulsar_broker, CIRELAY_PULSAR_EVENTS_TOPIC=events,
        CIRELAY_PULSAR_MAX_REDELIVERIES="0", CIRELAY_MAX_BODY_BYTES="512",
    )
    body = task_finish_xml("jbig") + b" " * 1024
    await publish(pulsar_client, events, [body])
    async with running_app(settings) as client:
        (dead,) = await read_topic(pulsar_client, events + "-DLQ", 1)
        assert dead.properties()["cirelay-reason"] == "body_too_large"
        assert dead.properties()["cirelay-deliveries"] == "1"
        assert dead.data() == body
        registry = client.app[METRICS].registry
        assert sample(
            registry, "cirelay_events_rejected_total", source="pulsar", reason="body_too_large"
        ) == 1


@pytest.mark.parametrize("form", ["list", "pattern"])
async def test_several_topics_by_list_or_pattern(
    form: str, tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any
) -> None:
    prefix = topic("ci-multi")
    names = [f"{prefix}-a", f"{prefix}-b"]
    for n, name in enumerate(names):
        await publish(pulsar_client, name, [task_finish_xml(f"jm{n}")])
    setting = ",".join(names) if form == "list" else f"re:{prefix}-[ab]"
    settings = pulsar_settings(tmp_path, pulsar_broker, CIRELAY_PULSAR_EVENTS_TOPIC=setting)
    db = db_path_of(settings)
    async with running_app(settings):
        await wait_until(lambda: len(event_rows(db)) == 2, "events from both topics")
    assert sorted(row["job_id"] for row in event_rows(db)) == ["jm0", "jm1"]


async def test_not_ready_until_the_broker_answers(tmp_path: Path, pulsar_broker: Broker) -> None:
    """A broker address where nothing listens: the app starts, /readyz says why it is not ready."""
    settings = pulsar_settings(
        tmp_path, pulsar_broker, CIRELAY_PULSAR_URL="pulsar://127.0.0.1:9",
        CIRELAY_PULSAR_EVENTS_TOPIC=topic("ci-nobroker"),
    )
    async with running_app(settings) as client:
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503
        assert body["components"]["pulsar"] == {"ok": False, "detail": "events: connecting"}
        assert client.app[METRICS].registry.get_sample_value("cirelay_pulsar_connected") == 0


async def test_a_refused_token_is_reported_not_ready(
    tmp_path: Path, pulsar_broker: Broker
) -> None:
    settings = pulsar_settings(
        tmp_path, pulsar_broker, CIRELAY_PULSAR_TOKEN="not-a-token",
        CIRELAY_PULSAR_EVENTS_TOPIC=topic("ci-badtoken"),
    )
    async with running_app(settings) as client:

        async def refusal() -> str | None:
            resp = await client.get("/readyz")
            detail: str = (await resp.json())["components"]["pulsar"]["detail"]
            return detail if resp.status == 503 and "subscribe failed" in detail else None

        # The client reports a refused connection as a time-out of its operation (after
        # OPERATION_TIMEOUT_SECONDS), then cirelay retries with backoff.
        detail = await wait_until(refusal, "the refusal in /readyz")
        assert detail.startswith("events: subscribe failed: ")


def test_dead_letter_topic_names() -> None:
    assert dead_letter_topic("persistent://public/default/ci") == (
        "persistent://public/default/ci-DLQ"
    )
    # A partition's message goes to its whole topic's dead-letter topic.
    assert dead_letter_topic("persistent://public/default/ci-partition-3") == (
        "persistent://public/default/ci-DLQ"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CIRELAY_PULSAR_MAX_REDELIVERIES", "-1"),
        ("CIRELAY_PULSAR_REDELIVERY_DELAY_SECONDS", "0"),
        ("CIRELAY_PULSAR_CONSUMER_CONCURRENCY", "0"),
        ("CIRELAY_PULSAR_RECEIVER_QUEUE_SIZE", "0"),
        ("CIRELAY_PULSAR_SUBSCRIPTION_TYPE", "Queue"),
        ("CIRELAY_PULSAR_URL", "http://127.0.0.1:8080"),
    ],
)
def test_settings_refuse_bad_pulsar_values(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load({variable: value})
    assert caught.value.variable == variable


async def test_a_bad_topic_setting_stops_start_up(tmp_path: Path) -> None:
    settings = pulsar_settings(
        tmp_path, _Nowhere(), CIRELAY_PULSAR_EVENTS_TOPIC="re:"
    )
    with pytest.raises(SettingsError, match="CIRELAY_PULSAR_EVENTS_TOPIC"):
        async with running_app(settings):
            pass


class _Nowhere:
    url = "pulsar://127.0.0.1:9"
    admin_url = "http://127.0.0.1:9"
    token = ""


def event_rows_unlocked(conn: sqlite3.Connection) -> list[Any]:
    """Events as the lock holder sees them (its own connection: no second lock needed)."""
    return conn.execute("SELECT event_id FROM events").fetchall()


def _rejections(registry: Any) -> float:
    total: float = sum(
        s.value
        for metric in registry.collect()
        if metric.name == "cirelay_events_rejected"
        for s in metric.samples
        if s.name.endswith("_total")
    )
    return total


async def _settled(admin: Admin, name: str) -> dict[str, Any] | None:
    stats = await admin.subscription(name, SUBSCRIPTION)
    if stats and stats["msgBacklog"] == 0 and stats.get("unackedMessages", 0) == 0:
        return stats
    return None


async def _delivered_unacked(admin: Admin, name: str) -> bool:
    stats = await admin.subscription(name, SUBSCRIPTION)
    return bool(stats) and stats["msgOutCounter"] >= 1 and stats["msgBacklog"] == 1


async def _no_consumers(admin: Admin, name: str) -> bool:
    stats = await admin.subscription(name, SUBSCRIPTION)
    return bool(stats) and not stats["consumers"]


async def _out_counter(admin: Admin, name: str, *, at_least: int) -> bool:
    stats = await admin.subscription(name, SUBSCRIPTION)
    return bool(stats) and stats["msgOutCounter"] >= at_least


async def test_a_message_whose_parsing_raises_is_dead_lettered_not_retried(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any
) -> None:
    events = topic("ci-raises")
    settings = pulsar_settings(
        tmp_path, pulsar_broker, CIRELAY_PULSAR_EVENTS_TOPIC=events,
        CIRELAY_PULSAR_MAX_REDELIVERIES="0",
    )
    # An integer past Python's int-conversion limit: the parser raises, the message is at fault.
    huge = b'"Huge": ' + b"9" * 5000 + b', "JobId"'
    body = task_finish_json("jhuge").replace(b'"JobId"', huge, 1)
    await publish(pulsar_client, events, [body], {"content-type": "application/json"})
    async with running_app(settings) as client:
        (dead,) = await read_topic(pulsar_client, events + "-DLQ", 1)
        assert dead.data() == body
        assert dead.properties()["cirelay-deliveries"] == "1"
        registry = client.app[METRICS].registry
        counts = await settled_outcomes(registry, "events", {"dead_lettered": 1})
        assert counts == {"acked": 0, "retried": 0, "refused": 0, "dead_lettered": 1}
    with sqlite3.connect(db_path_of(settings)) as conn:
        (kept,) = conn.execute("SELECT COUNT(*) FROM rejected_callbacks").fetchone()
    assert kept == 1
