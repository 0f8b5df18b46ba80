"""Batch jobs enqueued from the intake topic: valid ones queued then acknowledged, invalid ones
dead-lettered with their validation errors, redeliveries and repeated keys never a second job."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from service.appkeys import METRICS, QUEUE
from service.pulsar.intake import InvalidJob, read_job
from tests.events.support import sample
from tests.pulsar.support import (
    Admin,
    Broker,
    Client,
    publish,
    pulsar_settings,
    read_topic,
    running_app,
    settled_outcomes,
    topic,
    wait_until,
)
from tests.queue.samples import BUCKET, REGION, request_json, request_tree, request_xml

pytestmark = pytest.mark.pulsar

SUBSCRIPTION = "cirelay-test"
AUTH = {"Authorization": "Bearer test-api-token"}


def intake_env(name: str, **environ: str) -> dict[str, str]:
    return {"CIRELAY_PULSAR_INTAKE_TOPIC": name, **environ}


async def jobs(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/v1/jobs", headers=AUTH)
    assert resp.status == 200
    listed: list[dict[str, Any]] = (await resp.json())["jobs"]
    return listed


async def test_valid_jobs_are_queued_then_acknowledged(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    intake = topic("jobs")
    settings = pulsar_settings(
        tmp_path, pulsar_broker,
        **intake_env(intake, CIRELAY_CI_BUCKET=BUCKET, CIRELAY_CI_REGION=REGION),
    )
    await publish(
        pulsar_client, intake, [request_json("from-json", level=2)],
        {"content-type": "application/json", "idempotency-key": "k-1",
         "bucket": "other-1250000000", "region": "ap-beijing"},
    )
    # No properties at all: the format is sniffed, the target is the configured default.
    await publish(pulsar_client, intake, [request_xml("from-xml")])
    async with running_app(settings) as client:
        listed = await wait_until(lambda: _jobs_when(client, 2), "two jobs queued")
        by_name = {job["request"]["Name"]: job for job in listed}
        assert by_name["from-json"]["bucket"] == "other-1250000000"
        assert by_name["from-json"]["region"] == "ap-beijing"
        assert by_name["from-json"]["job_level"] == 2
        assert by_name["from-xml"]["bucket"] == BUCKET
        assert by_name["from-xml"]["region"] == REGION
        assert {job["state"] for job in listed} == {"queued"}
        await wait_until(lambda: _settled(admin, intake), "both messages acknowledged")
        registry = client.app[METRICS].registry
        assert sample(registry, "cirelay_jobs_enqueued_total", tag="Transcode", via="pulsar") == 2
        record = await client.app[QUEUE].get(by_name["from-json"]["id"])
        assert record is not None
        assert record.via == "pulsar"
        assert record.idempotency_key == "k-1"


async def test_a_repeated_idempotency_key_is_one_job(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    intake = topic("jobs-idem")
    settings = pulsar_settings(
        tmp_path, pulsar_broker,
        **intake_env(intake, CIRELAY_CI_BUCKET=BUCKET, CIRELAY_CI_REGION=REGION),
    )
    body = request_json("twice")
    await publish(pulsar_client, intake, [body, body], {"idempotency-key": "same-key"})
    async with running_app(settings) as client:
        await wait_until(lambda: _settled(admin, intake, delivered=2), "both acknowledged")
        assert [job["request"]["Name"] for job in await jobs(client)] == ["twice"]


async def test_invalid_jobs_are_dead_lettered_with_their_errors(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    intake = topic("jobs-bad")
    settings = pulsar_settings(
        tmp_path, pulsar_broker,
        **intake_env(intake, CIRELAY_CI_BUCKET=BUCKET, CIRELAY_CI_REGION=REGION),
    )
    no_tag = request_tree("no-tag")
    del no_tag["Operation"]["Tag"]
    cases = [
        (json.dumps({"Request": no_tag}).encode(), {"case": "rules"}),
        (b"<Request><Name>x</Name>", {"case": "document"}),
        (request_json("bad-bucket"), {"case": "target", "bucket": "Not_A_Bucket"}),
        (request_json("bad-key"), {"case": "key", "idempotency-key": "has space"}),
        (request_json("bad-type"), {"case": "media", "content-type": "text/plain"}),
        (request_json("first"), {"case": "first", "idempotency-key": "k-conflict"}),
        (request_json("second"), {"case": "conflict", "idempotency-key": "k-conflict"}),
    ]
    for body, properties in cases:
        await publish(pulsar_client, intake, [body], properties)
    async with running_app(settings) as client:
        dead = await read_topic(pulsar_client, intake + "-DLQ", len(cases) - 1)
        by_case = {m.properties()["case"]: m for m in dead}
        assert sorted(by_case) == ["conflict", "document", "key", "media", "rules", "target"]
        reasons = {case: m.properties()["cirelay-reason"] for case, m in by_case.items()}
        assert reasons == {
            "rules": "invalid_request",
            "document": "invalid_document",
            "target": "invalid_target",
            "key": "invalid_idempotency_key",
            "media": "unsupported_media_type",
            "conflict": "idempotency_conflict",
        }
        rules = json.loads(by_case["rules"].properties()["cirelay-errors"])
        assert rules == [{"path": "Request.Operation.Tag", "message": "is required"}]
        target = json.loads(by_case["target"].properties()["cirelay-errors"])
        assert target[0]["path"] == "bucket"
        assert by_case["document"].data() == b"<Request><Name>x</Name>"  # the body is kept
        await wait_until(
            lambda: _settled(admin, intake, delivered=len(cases)), "all acknowledged"
        )
        assert [job["request"]["Name"] for job in await jobs(client)] == ["first"]
        counts = await settled_outcomes(
            client.app[METRICS].registry, "intake", {"acked": 1, "dead_lettered": 6}
        )
        assert counts == {"acked": 1, "retried": 0, "refused": 0, "dead_lettered": 6}


async def test_a_database_failure_redelivers_the_job_until_it_is_queued(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, admin: Admin
) -> None:
    intake = topic("jobs-transient")
    settings = pulsar_settings(
        tmp_path, pulsar_broker,
        **intake_env(intake, CIRELAY_CI_BUCKET=BUCKET, CIRELAY_CI_REGION=REGION),
    )
    db = Path(settings.sqlite_path)
    async with running_app(settings):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON jobs"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
    async with running_app(settings) as client:
        await publish(pulsar_client, intake, [request_json("retried")])
        await wait_until(
            lambda: _delivered(admin, intake, at_least=3), "three deliveries of the job"
        )
        assert await jobs(client) == []
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER refuse")
        await wait_until(lambda: _jobs_when(client, 1), "the job queued")
        await wait_until(lambda: _settled(admin, intake, delivered=3), "the message acknowledged")
        counts = await settled_outcomes(client.app[METRICS].registry, "intake", {"acked": 1})
        assert (counts["retried"] or 0) >= 2  # the deliveries while the fault lasted
        assert (counts["refused"], counts["dead_lettered"]) == (0, 0)
    topics = await admin.get("/admin/v2/persistent/public/default")
    assert intake + "-DLQ" not in topics


def test_read_job_without_a_key_derives_one_from_the_message(tmp_path: Path) -> None:
    settings = pulsar_settings(
        tmp_path, _NoBroker(), CIRELAY_CI_BUCKET=BUCKET, CIRELAY_CI_REGION=REGION
    )
    first = read_job(request_json(), {}, "topic|(1,2,-1,0)", settings)
    again = read_job(request_json(), {}, "topic|(1,2,-1,0)", settings)
    other = read_job(request_json(), {}, "topic|(1,3,-1,0)", settings)
    assert first.idempotency_key == again.idempotency_key != other.idempotency_key
    assert first.idempotency_key.startswith("pulsar-")
    given = read_job(request_json(), {"Idempotency-Key": "mine"}, "topic|(1,2,-1,0)", settings)
    assert given.idempotency_key == "mine"


def test_read_job_needs_a_target(tmp_path: Path) -> None:
    settings = pulsar_settings(tmp_path, _NoBroker())
    with pytest.raises(InvalidJob) as caught:
        read_job(request_json(), {}, "ref", settings)
    assert caught.value.code == "missing_target"
    assert caught.value.errors == [
        {"path": "bucket", "message": "no bucket given and CIRELAY_CI_BUCKET is not set"}
    ]


def test_read_job_refuses_a_body_over_the_limit(tmp_path: Path) -> None:
    settings = pulsar_settings(
        tmp_path, _NoBroker(), CIRELAY_CI_BUCKET=BUCKET, CIRELAY_CI_REGION=REGION,
        CIRELAY_MAX_BODY_BYTES="64",
    )
    with pytest.raises(InvalidJob) as caught:
        read_job(request_json(), {}, "ref", settings)
    assert caught.value.code == "body_too_large"


def test_read_job_reports_the_first_hundred_errors(tmp_path: Path) -> None:
    settings = pulsar_settings(
        tmp_path, _NoBroker(), CIRELAY_CI_BUCKET=BUCKET, CIRELAY_CI_REGION=REGION
    )
    tree = request_tree()
    tree["Operation"].update({f"Unknown{n:03}": "x" for n in range(150)})
    with pytest.raises(InvalidJob) as caught:
        read_job(json.dumps({"Request": tree}).encode(), {}, "ref", settings)
    assert caught.value.code == "invalid_request"
    assert caught.value.message == "the Request breaks 150 rule(s); the first 100 are listed"
    paths = [error["path"] for error in caught.value.errors]
    assert paths == [f"Request.Operation.Unknown{n:03}" for n in range(100)]


class _NoBroker:
    url = "pulsar://127.0.0.1:9"
    admin_url = "http://127.0.0.1:9"
    token = ""


async def _jobs_when(client: Client, count: int) -> list[dict[str, Any]] | None:
    listed = await jobs(client)
    return listed if len(listed) == count else None


async def _delivered(admin: Admin, name: str, *, at_least: int) -> bool:
    stats = await admin.subscription(name, SUBSCRIPTION)
    return bool(stats) and stats["msgOutCounter"] >= at_least


async def _settled(admin: Admin, name: str, delivered: int = 1) -> bool:
    stats = await admin.subscription(name, SUBSCRIPTION)
    return (
        bool(stats)
        and stats["msgOutCounter"] >= delivered
        and stats["msgBacklog"] == 0
        and stats.get("unackedMessages", 0) == 0
    )


async def test_a_job_whose_parsing_raises_is_dead_lettered_not_retried(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any
) -> None:
    intake = topic("jobs-raises")
    settings = pulsar_settings(
        tmp_path, pulsar_broker,
        **intake_env(intake, CIRELAY_CI_BUCKET=BUCKET, CIRELAY_CI_REGION=REGION),
    )
    # An integer past Python's int-conversion limit: the parser raises, the message is at fault.
    body = b'{"Request": {"Name": ' + b"9" * 5000 + b"}}"
    await publish(pulsar_client, intake, [body], {"content-type": "application/json"})
    async with running_app(settings) as client:
        (dead,) = await read_topic(pulsar_client, intake + "-DLQ", 1)
        assert dead.data() == body
        counts = await settled_outcomes(
            client.app[METRICS].registry, "intake", {"dead_lettered": 1}
        )
        assert counts == {"acked": 0, "retried": 0, "refused": 0, "dead_lettered": 1}
