"""`cirelay emulator` and `cirelay serve --sandbox` as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.emulator.conftest import BUCKET, SECRET_ID, SECRET_KEY, WAIT, batch_request, sdk_for
from tests.emulator.test_sdk import create, get_batch
from tests.ports import free_port

CIRELAY = str(Path(sys.executable).with_name("cirelay"))

pytestmark = pytest.mark.slow


class Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def wait_for_log(
        self, event: str, count: int = 1, where: Callable[[dict[str, Any]], bool] = bool
    ) -> dict[str, Any]:
        """The ``count``-th JSON log line with this event, read as the process writes it."""
        assert self.proc.stderr is not None
        seen = [line for line in self.lines if line.get("event") == event and where(line)]
        async with asyncio.timeout(WAIT):
            while len(seen) < count:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"process ended before logging {event}: {self.lines}")
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                self.lines.append(line)
                if line.get("event") == event and where(line):
                    seen.append(line)
        return seen[count - 1]


@asynccontextmanager
async def cirelay(*args: str, env: dict[str, str]) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        CIRELAY,
        *args,
        env={**os.environ, "CIRELAY_LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Process(proc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT):
                await proc.wait()


async def test_the_emulator_command_serves_the_sdk(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "CIRELAY_EMULATOR_CREDENTIALS": f"{SECRET_ID}:{SECRET_KEY}",
        "CIRELAY_EMULATOR_JOB_SECONDS": "0.05",
    }
    async with cirelay("emulator", "--port", str(port), env=env) as process:
        started = await process.wait_for_log("emulator_started")
        sdk = sdk_for(port)
        batch = await create(sdk)
        await process.wait_for_log("emulator_batch_ended")
        answer = await get_batch(sdk, batch["JobId"])

        process.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            code = await process.proc.wait()

    assert started["url"] == f"http://127.0.0.1:{port}"
    assert answer["JobsDetail"][0]["State"] == "Success"
    assert code == 0


async def test_the_emulator_command_needs_credentials() -> None:
    async with cirelay("emulator", env={"CIRELAY_EMULATOR_CREDENTIALS": ""}) as process:
        async with asyncio.timeout(WAIT):
            code = await process.proc.wait()
        assert process.proc.stderr is not None
        message = (await process.proc.stderr.read()).decode()
    assert code == 2
    assert "CIRELAY_EMULATOR_CREDENTIALS" in message


async def test_serve_sandbox_runs_the_whole_loop(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "CIRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cirelay.db'}",
        "CIRELAY_EMULATOR_JOB_SECONDS": "0.05",
        "CIRELAY_API_TOKEN": "",
        "CIRELAY_CI_SECRET_ID": "",
        "CIRELAY_CI_SECRET_KEY": "",
    }
    async with cirelay("serve", "--sandbox", "--port", str(port), env=env) as process:
        ready = await process.wait_for_log("sandbox_ready")
        auth = {"Authorization": f"Bearer {ready['bearer']}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(ready["emulator_url"] + "/") as probe:
                assert probe.status == 200
            job = batch_request()
            job["Operation"]["Output"]["Bucket"] = BUCKET
            async with session.post(f"{ready['service_url']}/v1/jobs", json=job, headers=auth) as r:
                assert r.status in (200, 201, 202), await r.text()
                job_id = (await r.json())["id"]
            await process.wait_for_log("callback_delivered", count=3)
            # The sandbox polls its emulator every 2 s, not every 30 s as for real CI.
            finished = await process.wait_for_log("job_finished")
            async with session.get(f"{ready['service_url']}/v1/events", headers=auth) as r:
                events = (await r.json())["events"]
            async with session.get(f"{ready['service_url']}/v1/jobs/{job_id}", headers=auth) as r:
                state = (await r.json())["state"]

    assert ready["service_url"] == f"http://127.0.0.1:{port}"
    assert ready["bucket"] == "sandbox-1250000000"
    assert ready["region"] == "ap-guangzhou"
    assert ready["bearer"] == "sandbox"
    tasks = [e for e in events if e["event_type"] == "TaskFinish"]
    assert sorted(e["input"]["object"] for e in tasks) == [
        f"input/object-{n}.mp4" for n in (1, 2, 3)
    ]
    assert {e["state"] for e in tasks} == {"Success"}
    assert [e["event_type"] for e in events if e not in tasks] == ["BatchFinish"]
    assert (finished["job_id"], finished["state"], state) == (job_id, "succeeded", "succeeded")
