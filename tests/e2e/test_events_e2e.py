"""Issue 5 end to end: `cirelay emulator` and `cirelay serve` as real processes.

Dozens of batch jobs, half asking for JSON callbacks and half for XML; the emulator duplicates some
callbacks, drops others and delivers each batch's callbacks in reverse order. Every job must end in
the state CI reports for its batch with exactly its events: one TaskFinish per media job (from the
callback, or rebuilt by polling when the callback was dropped) and one BatchFinish, last.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port
from prometheus_client.parser import text_string_to_metric_families

from service.ci.client import CIClient
from service.ci.signing import Credentials

pytestmark = pytest.mark.slow

SECRET_ID = "AKIDe2eevents"
SECRET_KEY = "e2e-events-secret"
API_TOKEN = "e2e-api-token"
BUCKET = "media-1250000000"
REGION = "ap-chongqing"
JOBS = 24
OBJECTS_PER_BATCH = 3
DEADLINE = 90.0  # seconds for everything to settle: a hang guard, not what is measured
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
END_STATES = {"Success": "succeeded", "Failed": "failed", "Cancel": "cancelled"}


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Stack:
    service_url: str
    emulator_url: str
    processes: list[Process]


def start(name: str, args: list[str], env: dict[str, str], tmp_path: Path) -> Process:
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Process(name, proc, log)


async def wait_http(session: aiohttp.ClientSession, url: str, process: Process) -> None:
    """Return once ``url`` answers 200; fail at once if the process died."""
    async with asyncio.timeout(30):
        while True:
            assert process.proc.poll() is None, f"{process.name} exited:\n{process.tail()}"
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[Stack]:
    emulator_port, service_port = unused_port(), unused_port()
    emulator = start(
        "emulator",
        ["emulator"],
        {
            "CIRELAY_EMULATOR_PORT": str(emulator_port),
            "CIRELAY_EMULATOR_CREDENTIALS": f"{SECRET_ID}:{SECRET_KEY}",
            "CIRELAY_EMULATOR_JOB_SECONDS": "0.05",
            "CIRELAY_EMULATOR_WORKERS": "8",
            "CIRELAY_EMULATOR_OBJECTS_PER_PREFIX": str(OBJECTS_PER_BATCH),
            "CIRELAY_EMULATOR_FAILURE_RATE": "0.1",
            "CIRELAY_EMULATOR_DUPLICATE_RATE": "0.3",
            "CIRELAY_EMULATOR_DROP_RATE": "0.2",
            "CIRELAY_EMULATOR_REORDER": "true",
            "CIRELAY_EMULATOR_SEED": "5",
            "CIRELAY_LOG_FORMAT": "json",
        },
        tmp_path,
    )
    service = start(
        "service",
        ["serve"],
        {
            "CIRELAY_HOST": "127.0.0.1",
            "CIRELAY_PORT": str(service_port),
            "CIRELAY_PUBLIC_URL": f"http://127.0.0.1:{service_port}",
            "CIRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cirelay.db'}",
            "CIRELAY_API_TOKEN": API_TOKEN,
            "CIRELAY_CALLBACK_SECRET": "e2e-callback-secret",
            "CIRELAY_CI_ENDPOINT": f"http://127.0.0.1:{emulator_port}",
            "CIRELAY_CI_SECRET_ID": SECRET_ID,
            "CIRELAY_CI_SECRET_KEY": SECRET_KEY,
            "CIRELAY_CI_BUCKET": BUCKET,
            "CIRELAY_CI_REGION": REGION,
            "CIRELAY_CI_RATE_LIMIT": "500",
            "CIRELAY_POLL_INTERVAL_SECONDS": "0.05",
            "CIRELAY_RECONCILE_SECONDS": "0.3",
            # Long enough that no delivered callback is mistaken for a missing one.
            "CIRELAY_RECONCILE_GRACE_SECONDS": "3",
            "CIRELAY_LOG_FORMAT": "json",
        },
        tmp_path,
    )
    stack = Stack(
        f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{emulator_port}", [emulator, service]
    )
    yield stack
    for process in reversed(stack.processes):
        process.proc.terminate()
        try:
            process.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            process.proc.wait()


@pytest.fixture
async def stack(stack_env: Stack) -> Stack:
    emulator, service = stack_env.processes
    async with aiohttp.ClientSession() as session:
        await wait_http(session, stack_env.emulator_url + "/", emulator)
        await wait_http(session, stack_env.service_url + "/healthz", service)
    return stack_env


def batch_request(index: int, callback_format: str) -> dict[str, Any]:
    return {
        "Request": {
            "Name": f"e2e-{index}",
            "Type": "Job",
            "Input": {"Prefix": f"in/{index}/"},
            "Operation": {
                "Tag": "Transcode",
                "QueueId": "p893bcda225bf4945a378da6662e81a89",
                "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
                "Output": {
                    "Region": REGION,
                    "Bucket": BUCKET,
                    "Object": "out/${InventoryTriggerJobId}/${InputName}.mp4",
                },
                "CallBackFormat": callback_format,
            },
        }
    }


async def get_json(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_batches_end_in_cis_state_with_exactly_their_events(stack: Stack) -> None:
    formats: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for index in range(JOBS):
            callback_format = "JSON" if index % 2 else "XML"
            async with session.post(
                stack.service_url + "/v1/jobs",
                json=batch_request(index, callback_format),
                headers=AUTH,
            ) as resp:
                assert resp.status == 202, await resp.text()
                formats[(await resp.json())["id"]] = callback_format.lower()

        # Event-driven wait: poll the API until every job has ended (or the deadline passes).
        views: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(DEADLINE):
            while len(views) < JOBS:
                for process in stack.processes:
                    assert process.proc.poll() is None, f"{process.name}:\n{process.tail()}"
                for job_id in formats.keys() - views.keys():
                    view = await get_json(session, f"{stack.service_url}/v1/jobs/{job_id}")
                    if view["state"] in ("succeeded", "failed", "cancelled", "dead"):
                        views[job_id] = view
                await asyncio.sleep(0.1)

        ci = CIClient(
            session, Credentials(SECRET_ID, SECRET_KEY), endpoint=stack.emulator_url, timeout=5
        )
        stats = await get_json(session, stack.emulator_url + "/_emulator/stats")
        sources: dict[str, int] = {"http": 0, "poll": 0}
        failed_jobs = 0
        for job_id, view in views.items():
            batch_id = view["ci_job_id"]
            batch = await ci.get(BUCKET, REGION, batch_id)
            assert batch is not None
            assert view["state"] == END_STATES[batch.state], view
            failed_jobs += view["state"] == "failed"
            listing = await ci.list_media_jobs(
                BUCKET, REGION, tag="Transcode", inventory_trigger_job_id=batch_id, size=100
            )
            media = {d["JobId"]: d["State"] for d in listing.jobs}
            assert len(media) == OBJECTS_PER_BATCH

            events = view["events"]
            tasks = [e for e in events if e["event_type"] == "TaskFinish"]
            assert sorted(e["job_id"] for e in tasks) == sorted(media)  # one each, no more
            for event in tasks:
                assert event["state"] == media[event["job_id"]]
                assert (event["cirelay_job_id"], event["batch_id"]) == (job_id, batch_id)
                # Callbacks come in the format the job asked for; rebuilt ones from CI's XML API.
                expected = formats[job_id] if event["source"] == "http" else "xml"
                assert event["format"] == expected
                sources[event["source"]] += 1
            assert [e["event_type"] for e in events].count("BatchFinish") == 1
            assert events[-1]["event_type"] == "BatchFinish"
            assert events[-1]["state"] == batch.state
            assert len({e["event_id"] for e in events}) == len(events)

        callbacks = stats["callbacks"]
        assert callbacks["due"] == JOBS * OBJECTS_PER_BATCH
        assert callbacks["failed"] == 0  # the service never refused a callback
        assert callbacks["dropped"] > 0
        assert callbacks["duplicated"] > 0
        assert failed_jobs > 0  # the failure knob made some batches fail
        # Every dropped callback was rebuilt by polling; every delivered one was stored as sent.
        assert sources == {
            "poll": callbacks["dropped"],
            "http": callbacks["due"] - callbacks["dropped"],
        }

        async with session.get(stack.service_url + "/metrics") as resp:
            metrics = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(await resp.text())
                for s in family.samples
            }
        assert (
            metrics[("cirelay_events_duplicate_total", (("source", "http"),))]
            == callbacks["duplicated"]
        )
        assert metrics[("cirelay_events_reconciled_total", ())] == callbacks["dropped"]

        # The feed holds the same events, each once, in a stable order.
        seen: list[str] = []
        cursor = ""
        while True:
            params = {"limit": "50", **({"after": cursor} if cursor else {})}
            page = await get_json(session, stack.service_url + "/v1/events", **params)
            if not page["events"]:
                break
            seen += [e["event_id"] for e in page["events"]]
            cursor = page["next_cursor"]
        every = [e["event_id"] for view in views.values() for e in view["events"]]
        assert sorted(seen) == sorted(every)
