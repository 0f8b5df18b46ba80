"""The broker going away mid-stream, and `kill -9` of a real `cirelay serve` mid-stream: nothing
lost, nothing stored twice, the outbox published after the crash; and CI's TDMQ delivery end to end
(the emulator publishing through the broker) exactly once across a `kill -9`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pulsar
import pytest

from tests.e2e import procs
from tests.e2e.procs import AUTH
from tests.events.support import task_finish_json, task_finish_xml
from tests.pulsar.support import (
    Broker,
    db_path_of,
    event_rows,
    pulsar_settings,
    running_app,
    topic,
    wait_until,
)
from tests.queue.samples import BUCKET, REGION, request_tree

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]

WAIT = 120.0  # a broker restart takes tens of seconds on two cores


def callback(n: int) -> bytes:
    """The n-th event of a stream, alternating formats."""
    return task_finish_xml(f"js{n}") if n % 2 else task_finish_json(f"js{n}")


async def stream(
    client: Any,
    name: str,
    count: int,
    sent: list[int],
    *,
    pause_at: int | None = None,
    resume: asyncio.Event | None = None,
) -> None:
    """Publish events 0..count-1 one after the other, each one again right after every tenth
    (a duplicate), pausing before event ``pause_at`` until ``resume`` is set; sends wait through
    a broker outage (no send timeout) instead of failing."""
    producer = await client.create_producer(name, batching_enabled=False, send_timeout_millis=0)
    try:
        for n in range(count):
            if n == pause_at and resume is not None:
                await resume.wait()
            await producer.send(callback(n))
            if n % 10 == 0:
                await producer.send(callback(n))
            sent.append(n)
    finally:
        await producer.close()


async def output_event_ids(client: Any, name: str, expected: set[str]) -> set[str]:
    """Read the output topic until every expected event id was seen (at least once)."""
    consumer = await client.subscribe(
        name, "check", initial_position=pulsar.InitialPosition.Earliest
    )
    seen: set[str] = set()
    try:
        async with asyncio.timeout(WAIT):
            while not expected <= seen:
                message = await consumer.receive()
                seen.add(json.loads(message.data())["event_id"])
                await consumer.acknowledge(message)
    finally:
        await consumer.close()
    return seen


async def test_a_broker_restart_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path, pulsar_broker: Any, pulsar_client: Any
) -> None:
    events, output = topic("ci-restart"), topic("cirelay-out-restart")
    settings = pulsar_settings(
        tmp_path,
        pulsar_broker,
        CIRELAY_PULSAR_EVENTS_TOPIC=events,
        CIRELAY_PULSAR_OUTPUT_TOPIC=output,
    )
    db = db_path_of(settings)
    total = 600
    sent: list[int] = []
    readiness: list[int] = []
    async with running_app(settings) as client:

        async def watch_readiness() -> None:
            while True:
                resp = await client.get("/readyz")
                readiness.append(resp.status)
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch_readiness())
        # The second half of the stream is published while the broker stops and starts again.
        restarting = asyncio.Event()
        producing = asyncio.create_task(
            stream(pulsar_client, events, total, sent, pause_at=total // 2, resume=restarting)
        )
        try:
            await wait_until(lambda: len(event_rows(db)) >= total // 4, "a quarter stored", WAIT)
            restarting.set()
            await asyncio.to_thread(pulsar_broker.restart)
            await asyncio.wait_for(producing, WAIT)
            rows = await wait_until(
                lambda: (r := event_rows(db)) and len(r) >= total and r, "every event", WAIT
            )
            await wait_until(lambda: readiness[-1] == 200, "ready again", WAIT)
        finally:
            watcher.cancel()
            producing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(watcher, producing)
        assert sorted(int(r["job_id"][2:]) for r in rows) == list(range(total))
        assert 503 in readiness  # not ready while the broker was away
        assert await output_event_ids(pulsar_client, output, {r["event_id"] for r in rows})


@pytest.fixture
async def processes() -> AsyncIterator[list[procs.Process]]:
    started: list[procs.Process] = []
    yield started
    for process in started:
        await process.stop()


async def test_kill_9_of_the_service_mid_stream(
    tmp_path: Path, pulsar_broker: Broker, pulsar_client: Any, processes: list[procs.Process]
) -> None:
    events, output = topic("ci-kill"), topic("cirelay-out-kill")
    env = {
        "CIRELAY_PULSAR_URL": pulsar_broker.url,
        "CIRELAY_PULSAR_TOKEN": pulsar_broker.token,
        "CIRELAY_PULSAR_EVENTS_TOPIC": events,
        "CIRELAY_PULSAR_OUTPUT_TOPIC": output,
        "CIRELAY_SUBMITTER_ENABLED": "false",
        "CIRELAY_RECONCILE_ENABLED": "false",
    }
    db = tmp_path / "cirelay.db"
    total = 3000
    sent: list[int] = []
    first = procs.service(tmp_path, "http://127.0.0.1:9", **env)
    processes.append(first)
    await first.start("/readyz")
    producing = asyncio.create_task(stream(pulsar_client, events, total, sent))
    try:
        await wait_until(lambda: len(event_rows(db)) >= 300, "300 events stored", WAIT)
        await first.kill()
        at_kill = len(event_rows(db))
        assert at_kill < total, "the stream ended before the kill: make it longer"
        second = procs.service(tmp_path, "http://127.0.0.1:9", **env)
        processes.append(second)
        await second.start("/readyz")
        await asyncio.wait_for(producing, WAIT)
        rows = await wait_until(
            lambda: (r := event_rows(db)) and len(r) >= total and r, "every event", WAIT
        )
    finally:
        producing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producing
    assert sorted(int(r["job_id"][2:]) for r in rows) == list(range(total))
    # Events stored by the killed process but not yet published went out from the second.
    assert await output_event_ids(pulsar_client, output, {r["event_id"] for r in rows})


async def test_tdmq_callbacks_end_to_end_exactly_once_across_kill_9(
    tmp_path: Path, pulsar_broker: Broker, processes: list[procs.Process]
) -> None:
    """Jobs asking CI for ``CallBackType=TDMQ``: the emulator publishes each media job's
    TaskFinish to the broker, cirelay consumes them; cirelay is killed mid-way. Every job ends
    with each of its events exactly once, all from Pulsar (none rebuilt by polling)."""
    mq_name = topic("tdmq").rsplit("/", 1)[1]
    objects = 12
    emulator = procs.emulator(
        tmp_path,
        CIRELAY_EMULATOR_PULSAR_URL=pulsar_broker.url,
        CIRELAY_EMULATOR_PULSAR_TOKEN=pulsar_broker.token,
        CIRELAY_EMULATOR_OBJECTS_PER_PREFIX=str(objects),
        CIRELAY_EMULATOR_JOB_SECONDS="0.3",
        CIRELAY_EMULATOR_WORKERS="2",
    )
    processes.append(emulator)
    await emulator.start("/_emulator/stats")
    env = {
        "CIRELAY_PULSAR_URL": pulsar_broker.url,
        "CIRELAY_PULSAR_TOKEN": pulsar_broker.token,
        "CIRELAY_PULSAR_EVENTS_TOPIC": f"persistent://public/default/{mq_name}",
        "CIRELAY_RECONCILE_SECONDS": "0.5",
        # No media job is ever "missed": every event must come through the broker.
        "CIRELAY_RECONCILE_GRACE_SECONDS": "3600",
    }
    db = tmp_path / "cirelay.db"
    first = procs.service(tmp_path, emulator.url, **env)
    processes.append(first)
    await first.start("/readyz")
    job_ids = []
    async with aiohttp.ClientSession() as session:
        for n, fmt in enumerate(("JSON", "XML")):
            tree = request_tree(
                f"tdmq-{n}",
                CallBackType="TDMQ",
                CallBackFormat=fmt,
                CallBackMqConfig={"MqRegion": "gz", "MqMode": "Queue", "MqName": mq_name},
            )
            tree["Input"] = {"Prefix": "in/"}
            async with session.post(
                first.url + "/v1/jobs",
                json={"Request": tree},
                headers=AUTH,
                params={"bucket": BUCKET, "region": REGION},
            ) as resp:
                assert resp.status == 202, await resp.text()
                job_ids.append((await resp.json())["id"])
        await wait_until(lambda: len(event_rows(db)) >= 3, "the first TDMQ events", WAIT)
        await first.kill()
        assert len(event_rows(db)) < 2 * objects, "every event arrived before the kill"
        second = procs.service(tmp_path, emulator.url, **env)
        processes.append(second)
        await second.start("/readyz")
        for job_id in job_ids:
            job = await wait_until(
                functools.partial(_job_if_ended, session, second.url, job_id),
                f"job {job_id} to end",
                WAIT,
            )
            assert job["state"] == "succeeded"
            job_events = await _events_of(session, second.url, job_id)
            types = [e["event_type"] for e in job_events]
            assert types.count("TaskFinish") == objects
            assert types[-1] == "BatchFinish"
            assert len(types) == objects + 1
            tasks = [e for e in job_events if e["event_type"] == "TaskFinish"]
            assert {e["source"] for e in tasks} == {"pulsar"}
            assert len({e["job_id"] for e in tasks}) == objects  # each media job once
    rows = event_rows(db)
    assert len(rows) == len({r["event_id"] for r in rows}) == 2 * (objects + 1)


async def _job_if_ended(
    session: aiohttp.ClientSession, url: str, job_id: str
) -> dict[str, Any] | None:
    async with session.get(f"{url}/v1/jobs/{job_id}", headers=AUTH) as resp:
        job: dict[str, Any] = await resp.json()
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


async def _events_of(session: aiohttp.ClientSession, url: str, job_id: str) -> list[Any]:
    async with session.get(
        f"{url}/v1/events", params={"job_id": job_id, "limit": "1000"}, headers=AUTH
    ) as resp:
        assert resp.status == 200
        events: list[Any] = (await resp.json())["events"]
    return events
