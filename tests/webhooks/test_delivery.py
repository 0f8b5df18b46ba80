"""Deliveries end to end in one app on real sockets: CI's callbacks reach the job's own CallBack
byte for byte, subscriptions get canonical events, every delivery verifies with the
``standardwebhooks`` package, and failures retry, die, and can be delivered again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xmltodict
from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks import Webhook

from service.app import create_app
from service.appkeys import EVENT_PIPELINE, METRICS, QUEUE, SETTINGS
from service.ingest.normalize import batch_finish_event, normalize
from service.ingest.parse import ParsedCallback
from service.queue import JobRecord
from service.tokens import callback_token
from tests.events.support import API_TOKEN, sample, submitted_job, task_finish_json, task_finish_xml
from tests.queue.rig import until
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import (
    new_secret,
    post_callback,
    verify,
    wait_for_state,
    webhook_settings,
)

Client = TestClient[web.Request, web.Application]
StartApp = Callable[..., Awaitable[Client]]
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "service" / "schemas" / "event.v1.json").read_text()
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.stop()


@pytest.fixture
def start_app(tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]) -> StartApp:
    async def start(**environ: str) -> Client:
        return await aiohttp_client(
            create_app(webhook_settings(tmp_path, **environ)),
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )

    return start


async def test_ci_callbacks_reach_the_jobs_callback_byte_for_byte(
    start_app: StartApp, receiver: Receiver
) -> None:
    client = await start_app()
    queue = client.app[QUEUE]
    xml_job = await submitted_job(queue, callback=receiver.url, callback_format="XML")
    json_job = await submitted_job(queue, callback=receiver.url, callback_format="JSON")
    xml_body = task_finish_xml(f"j{'1' * 32}")
    # Odd spacing and key order: the CallBack must get these bytes, not a re-rendering.
    json_body = b'{ "Response":' + task_finish_json(f"j{'2' * 32}")[len(b'{"Response":') :]
    await post_callback(client, xml_job, xml_body, "application/xml")
    await post_callback(client, json_job, json_body, "application/json; charset=utf-8")

    await receiver.wait_until(lambda r: len(r.delivered) == 2)
    got = {r.body: r for r in receiver.delivered}
    assert set(got) == {xml_body, json_body}
    assert got[xml_body].content_type == "application/xml"
    assert got[json_body].content_type == "application/json; charset=utf-8"
    for delivered in got.values():
        # json_parse=False: the body is CI's document, XML or JSON, not necessarily JSON.
        Webhook(client.app[SETTINGS].webhook_secret).verify(
            delivered.body, delivered.headers, json_parse=False
        )
    listed = await client.get(f"/v1/jobs/{xml_job.id}/deliveries")
    [view] = (await listed.json())["deliveries"]
    assert view["kind"] == "callback"
    assert view["state"] == "delivered"
    assert view["attempts"] == 1
    assert view["last_status"] == 200
    assert view["id"] == got[xml_body].headers["webhook-id"]
    job_view = await (await client.get(f"/v1/jobs/{xml_job.id}")).json()
    assert job_view["deliveries"] == {"pending": 0, "delivered": 1, "dead": 0}


async def test_a_job_without_callback_owes_its_callback_nothing(
    start_app: StartApp, receiver: Receiver
) -> None:
    client = await start_app(CIRELAY_WEBHOOK_URLS=receiver.url)
    queue = client.app[QUEUE]
    plain = await submitted_job(queue)
    no = await submitted_job(queue, callback="no")
    await post_callback(client, plain, task_finish_xml(f"j{'3' * 32}"), "application/xml")
    await post_callback(client, no, task_finish_xml(f"j{'4' * 32}"), "application/xml")
    # The subscription hears of both events; nothing else is owed.
    await receiver.wait_until(lambda r: len(r.delivered) == 2)
    assert {r.content_type for r in receiver.delivered} == {"application/json"}
    for job in (plain, no):
        listed = await (await client.get(f"/v1/jobs/{job.id}/deliveries")).json()
        assert [d["kind"] for d in listed["deliveries"]] == ["subscription"]


def polled_event(job: JobRecord, media_job_id: str) -> dict[str, Any]:
    """The TaskFinish the reconciler rebuilds from CI's media-job query."""
    detail = xmltodict.parse(task_finish_xml(media_job_id))["Response"]["JobsDetail"]
    parsed = ParsedCallback(
        format="xml",
        event_name="TaskFinish",
        body={"EventName": "TaskFinish", "JobsDetail": [detail]},
    )
    [event] = normalize(parsed, source="poll", received_at=datetime.now(UTC))
    event["cirelay_job_id"] = job.id
    event["batch_id"] = job.ci_job_id
    return event


async def test_polled_events_are_rendered_in_the_jobs_format(
    start_app: StartApp, receiver: Receiver
) -> None:
    client = await start_app()
    queue, pipeline = client.app[QUEUE], client.app[EVENT_PIPELINE]
    xml_job = await submitted_job(queue, callback=receiver.url)  # XML: CI's default
    json_job = await submitted_job(queue, callback=receiver.url, callback_format="JSON")
    xml_media, json_media = f"j{'5' * 32}", f"j{'6' * 32}"
    await pipeline.store([polled_event(xml_job, xml_media)])
    await pipeline.store([polled_event(json_job, json_media)])

    await receiver.wait_until(lambda r: len(r.delivered) == 2)
    by_type = {r.content_type: r.body for r in receiver.delivered}
    xml_tree = xmltodict.parse(by_type["application/xml"])["Response"]
    assert xml_tree["EventName"] == "TaskFinish"
    assert xml_tree["JobsDetail"]["JobId"] == xml_media
    json_tree = json.loads(by_type["application/json"])
    assert json_tree["EventName"] == "TaskFinish"
    assert json_tree["JobsDetail"][0]["JobId"] == json_media
    # What CI would have sent parses to the same event as the polled one.
    for body, content_type in (
        (by_type["application/xml"], "application/xml"),
        (by_type["application/json"], "application/json"),
    ):
        resp = await client.post(
            f"/v1/callbacks/{callback_token(client.app[SETTINGS].callback_key, xml_job.id)}",
            data=body,
            headers={"Content-Type": content_type},
        )
        assert resp.status == 200


async def test_subscriptions_receive_canonical_events_signed(
    start_app: StartApp, receiver: Receiver
) -> None:
    other = await Receiver().start()
    try:
        client = await start_app(CIRELAY_WEBHOOK_URLS=f"{receiver.url},{other.url}")
        job = await submitted_job(client.app[QUEUE])
        await post_callback(client, job, task_finish_xml(f"j{'7' * 32}"), "application/xml")
        batch_finish = batch_finish_event(
            {},
            batch_id=job.ci_job_id or "",
            cirelay_job_id=job.id,
            tag="Transcode",
            state="Success",
            code=None,
            message=None,
            created_at=None,
            started_at=None,
            ended_at=None,
            received_at=datetime.now(UTC),
        )
        await client.app[EVENT_PIPELINE].store([batch_finish])

        stored = await (await client.get(f"/v1/jobs/{job.id}")).json()
        for destination in (receiver, other):
            await destination.wait_until(lambda r: len(r.delivered) == 2)
            events = [verify(client.app[SETTINGS], r) for r in destination.delivered]
            for event in events:
                jsonschema.validate(event, SCHEMA)
            # In storage order: each job's deliveries reach a destination in order.
            assert [e["event_type"] for e in events] == ["TaskFinish", "BatchFinish"]
            assert events == stored["events"]
            ids = [r.headers["webhook-id"] for r in destination.delivered]
            assert len(set(ids)) == 2
    finally:
        await other.stop()


async def test_every_secret_of_a_rotation_verifies(start_app: StartApp, receiver: Receiver) -> None:
    old, new = new_secret(), new_secret()
    client = await start_app(
        CIRELAY_WEBHOOK_URLS=receiver.url, CIRELAY_WEBHOOK_SECRET=f"{old} {new}"
    )
    job = await submitted_job(client.app[QUEUE])
    await post_callback(client, job, task_finish_xml(f"j{'8' * 32}"), "application/xml")
    await receiver.wait_until(lambda r: len(r.delivered) == 1)
    [delivered] = receiver.delivered
    assert len(delivered.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(delivered.body, delivered.headers)["event_type"] == (
            "TaskFinish"
        )


async def test_a_receiver_down_for_a_while_gets_everything_in_order(
    start_app: StartApp,
) -> None:
    down = Receiver()  # not listening yet: connections are refused
    client = await start_app(
        CIRELAY_WEBHOOK_URLS=down.url,
        CIRELAY_WEBHOOK_RETRY_SCHEDULE=",".join(["0.05"] * 200),
        CIRELAY_WEBHOOK_BREAKER_FAILURES="3",
        CIRELAY_WEBHOOK_BREAKER_SECONDS="0.1",
    )
    queue = client.app[QUEUE]
    jobs = [await submitted_job(queue) for _ in range(3)]
    sent: dict[str, list[str]] = {}
    for index, job in enumerate(jobs):
        for state in ("Success", "Failed"):  # two events per job, a given order
            media = f"j{index}{state[0]}{'0' * 30}"
            await post_callback(client, job, task_finish_xml(media, state), "application/xml")
            sent.setdefault(job.id, []).append(media)
    metrics = client.app[METRICS].registry

    async def retried() -> bool:
        return sample(metrics, "cirelay_webhook_deliveries_total", outcome="retried") >= 3

    await until(retried, "three failed attempts")
    await down.start()
    try:
        await down.wait_until(lambda r: len(r.delivered) == 6)
        got: dict[str, list[str]] = {}
        for delivered in down.delivered:
            event = verify(client.app[SETTINGS], delivered)
            got.setdefault(event["cirelay_job_id"], []).append(event["job_id"])
        assert got == sent
    finally:
        await down.stop()


async def test_dead_after_the_schedule_then_a_manual_retry_delivers(
    start_app: StartApp, receiver: Receiver
) -> None:
    receiver.status = 500
    client = await start_app(CIRELAY_WEBHOOK_RETRY_SCHEDULE="0.01,0.01")
    job = await submitted_job(client.app[QUEUE], callback=receiver.url)
    body = task_finish_xml(f"j{'9' * 32}")
    await post_callback(client, job, body, "application/xml")
    await receiver.wait_until(lambda r: len(r.received) == 3)
    [view] = await wait_for_state(client, job.id, "dead")
    assert view["attempts"] == 3
    assert view["last_status"] == 500
    assert view["last_error"].startswith("HTTP 500")
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {view["id"]}  # the same webhook-id on every retry
    assert {r.body for r in receiver.received} == {body}
    assert (
        sample(client.app[METRICS].registry, "cirelay_webhook_deliveries_total", outcome="dead")
        == 1
    )

    receiver.status = 204
    resp = await client.post(f"/v1/deliveries/{view['id']}/retry")
    assert resp.status == 200
    assert (await resp.json())["state"] == "pending"
    await receiver.wait_until(lambda r: len(r.delivered) == 1)
    assert receiver.delivered[0].body == body
    assert receiver.delivered[0].headers["webhook-id"] == view["id"]
    [view] = await wait_for_state(client, job.id, "delivered")
    assert view["last_status"] == 204


async def test_other_4xx_fail_at_once_and_retryable_ones_honour_retry_after(
    start_app: StartApp, receiver: Receiver
) -> None:
    receiver.status = 400
    client = await start_app()
    job = await submitted_job(client.app[QUEUE], callback=receiver.url)
    await post_callback(client, job, task_finish_xml(f"j{'a' * 32}"), "application/xml")
    [view] = await wait_for_state(client, job.id, "dead")
    assert view["attempts"] == 1
    assert view["last_status"] == 400

    receiver.status = 429
    receiver.headers = {"Retry-After": "3600"}
    job = await submitted_job(client.app[QUEUE], callback=receiver.url)
    await post_callback(client, job, task_finish_xml(f"j{'b' * 32}"), "application/xml")
    await receiver.wait_until(lambda r: r.received[-1].status == 429)
    [view] = await wait_for_attempts(client, job.id, 1)
    assert view["state"] == "pending"
    wait = datetime.fromisoformat(view["next_attempt_at"]) - datetime.now(UTC)
    assert wait.total_seconds() > 3000  # the hour asked for, not the schedule's 0.02 s
    resp = await client.post(f"/v1/deliveries/{view['id']}/retry")
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "delivery_pending"


async def test_unknown_job_and_delivery_are_404(start_app: StartApp) -> None:
    client = await start_app()
    resp = await client.get("/v1/jobs/nope/deliveries")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "job_not_found"
    resp = await client.post("/v1/deliveries/msg_nope/retry")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "delivery_not_found"


async def test_a_slow_receiver_does_not_stall_other_destinations(start_app: StartApp) -> None:
    slow, fast = Receiver(gate=asyncio.Event()), Receiver()
    await slow.start()
    await fast.start()
    try:
        client = await start_app(
            CIRELAY_WEBHOOK_URLS=f"{slow.url},{fast.url}",
            CIRELAY_WEBHOOK_CONCURRENCY="4",
            CIRELAY_WEBHOOK_DESTINATION_CONCURRENCY="2",
        )
        queue = client.app[QUEUE]
        for index in range(10):
            job = await submitted_job(queue)
            await post_callback(client, job, task_finish_xml(f"j{index:032d}"), "application/xml")
        await fast.wait_until(lambda r: len(r.delivered) == 10)
        await slow.wait_until(lambda r: r.held == 2)
        assert slow.received == []  # still held: it took only its two slots
        assert slow.gate is not None
        slow.gate.set()
        await slow.wait_until(lambda r: len(r.delivered) == 10)
    finally:
        await slow.stop()
        await fast.stop()


async def wait_for_attempts(client: Client, job_id: str, attempts: int) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []

    async def counted() -> bool:
        nonlocal listed
        listed = (await (await client.get(f"/v1/jobs/{job_id}/deliveries")).json())["deliveries"]
        return [d["attempts"] for d in listed] == [attempts]

    await until(counted, f"{attempts} attempt(s) recorded")
    return listed
